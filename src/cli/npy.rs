//! NumPy .npy files (format version 1.0) for handing exact tensors to Python tools.

use std::io::Write;
use std::path::Path;
use tract_onnx::prelude::Tensor;

/// Writes an f32 tensor as a little-endian C-order .npy file.
pub fn write_f32(path: &Path, tensor: &Tensor) -> anyhow::Result<()> {
    let values = face_edge::inference::f32_values(tensor)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, encode(tensor.shape(), &bytes))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The file's bytes: magic, version, header length, a Python dict literal padded with spaces so the
/// data starts on a 64-byte boundary, then the raw values.
fn encode(shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_text}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.write_all(&(header.len() as u16).to_le_bytes()).unwrap();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_64_bytes_and_describes_the_shape() {
        let bytes = encode(&[1, 3, 2, 2], &[0u8; 48]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (1, 3, 2, 2)"), "{header}");
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + header_len + 48);
        let one_dim = encode(&[5], &[]);
        assert!(String::from_utf8_lossy(&one_dim[10..]).contains("'shape': (5,)"));
    }
}
