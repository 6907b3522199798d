//! Reading photos from disk into 8-bit RGB frames: format sniffed from content, EXIF orientation applied
//! (as OpenCV's imread does), alpha dropped, greyscale and 16-bit converted, oversized images refused
//! before their pixels are allocated. Also finds image files under directories.

use image::{ImageDecoder, ImageFormat, ImageReader, RgbImage};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Largest accepted width or height. A 50 MP phone photo is about 8200 px wide.
pub const MAX_SIDE: u32 = 16_384;

/// How many pixels an image may have, checked from its header before any pixel is allocated: a tiny
/// file can declare a huge image (a 235 KB JPEG of 16000 x 16000 decodes to 768 MB), and a 1 GB board
/// must survive it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelLimit {
    pub max_pixels: u64,
    /// What the limit is for, in the error message.
    pub what: &'static str,
}

/// Photos (gallery, command line): 50 MP, a phone's full-resolution photo (about 150 MB as RGB).
pub const PHOTO_PIXELS: PixelLimit = PixelLimit {
    max_pixels: 50_500_000,
    what: "photos",
};

/// Camera frames: 12 MP, above 4K UHD (8.3 MP); detection scales frames to 640 px anyway.
pub const FRAME_PIXELS: PixelLimit = PixelLimit {
    max_pixels: 12_600_000,
    what: "camera frames",
};

/// File extensions treated as images when walking directories (explicit files are always tried).
/// HEIC/HEIF are listed so that a gallery folder's iPhone photos are reported, not silently skipped.
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "tif", "tiff", "webp", "bmp", "heic", "heif",
];

#[derive(Debug, thiserror::Error)]
#[error("{}: {cause}", path.display())]
pub struct ImageLoadError {
    pub path: PathBuf,
    pub cause: String,
}

/// Largest accepted file: far above any real photo, small enough to read whole on a 1 GB board.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageLoadError> {
    let err = |cause: String| ImageLoadError {
        path: path.to_path_buf(),
        cause,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot open: {e}")))?;
    if meta.is_dir() {
        return Err(err("is a directory".to_string()));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(err(format!(
            "file too large ({} MiB; limit {} MiB)",
            meta.len() >> 20,
            MAX_FILE_BYTES >> 20
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    decode_rgb(&bytes).map_err(err)
}

/// Decodes a photo: JPEG, PNG, TIFF, WebP or BMP bytes (sniffed from content, never from a file name)
/// into 8-bit RGB, within `PHOTO_PIXELS`.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    decode_rgb_within(bytes, PHOTO_PIXELS)
}

/// Decodes like `decode_rgb`, refusing images of more than `limit` pixels before decoding them.
pub fn decode_rgb_within(bytes: &[u8], limit: PixelLimit) -> Result<RgbImage, String> {
    let format = sniff(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // Decoders pad a cut-off JPEG with grey and report success; a half image is not a photo.
        return Err(
            "corrupt or truncated image: JPEG data ends before its end-of-image marker".to_string(),
        );
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // Room for the decoded image at 16 bits per channel with alpha, plus the decoder's own planes.
    limits.max_alloc = Some(limit.max_pixels * 8 * 2);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(describe)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limit.max_pixels {
        return Err(format!(
            "image too large ({width}x{height} = {:.1} MP; {} are limited to {:.1} MP)",
            pixels as f64 / 1e6,
            limit.what,
            limit.max_pixels as f64 / 1e6
        ));
    }
    let orientation = decoder.orientation().ok();
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(describe)?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.into_rgb8())
}

fn sniff(bytes: &[u8]) -> Result<ImageFormat, String> {
    const KINDS: &str = "not a JPEG, PNG, TIFF, WebP or BMP image";
    if bytes.is_empty() {
        return Err(format!("{KINDS} (empty file)"));
    }
    let head = |n: usize| bytes.get(..n).unwrap_or_default();
    if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Ok(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Ok(ImageFormat::Png)
    } else if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        Ok(ImageFormat::Tiff)
    } else if bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Ok(ImageFormat::WebP)
    } else if bytes.starts_with(b"BM") && head(14).len() == 14 {
        Ok(ImageFormat::Bmp)
    } else if bytes.get(4..8) == Some(b"ftyp") {
        // HEIC/HEIF (iPhone photos) and AVIF: patented codecs this build does not carry.
        Err(
            "a HEIC/HEIF or AVIF photo, which face-edge does not read: convert it to JPEG"
                .to_string(),
        )
    } else {
        Err(format!("{KINDS} (unrecognised content)"))
    }
}

/// True when an end-of-image marker (FF D9) follows the last start-of-scan (FF DA). Byte stuffing keeps
/// both sequences out of entropy-coded data, and an EXIF thumbnail's markers come before the main scan.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    let last_eoi = bytes.windows(2).rposition(|w| w == [0xff, 0xd9]);
    matches!((last_sos, last_eoi), (Some(s), Some(e)) if e > s)
}

fn describe(e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => {
            format!("image too large ({l}; limit {MAX_SIDE} pixels a side)")
        }
        image::ImageError::Unsupported(u) => format!("unsupported image: {u}"),
        image::ImageError::Decoding(d) => format!("corrupt or truncated image: {d}"),
        image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "corrupt or truncated image: data ends early".to_string()
        }
        other => other.to_string(),
    }
}

/// Expands directories (recursively, sorted, image extensions only) and keeps files as given.
pub fn expand_inputs(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = walkdir::WalkDir::new(p)
                .follow_links(true)
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_file() && has_image_extension(e.path()))
                .map(|e| e.into_path())
                .collect();
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    out
}

pub fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_frames_have_a_smaller_pixel_limit_than_photos() {
        // A real JPEG claiming 4000 x 4000 (16 MP) in its frame header.
        let mut bytes = Vec::new();
        image::DynamicImage::new_rgb8(16, 16)
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Jpeg)
            .unwrap();
        let sof = bytes.windows(2).position(|m| m == [0xff, 0xc0]).unwrap();
        bytes[sof + 5..sof + 9].copy_from_slice(&[0x0f, 0xa0, 0x0f, 0xa0]);
        let frame = decode_rgb_within(&bytes, FRAME_PIXELS).unwrap_err();
        assert!(
            frame.contains("camera frames are limited to 12.6 MP"),
            "{frame}"
        );
        // As a photo its size is allowed (whatever its missing pixels then decode to).
        if let Err(photo) = decode_rgb(&bytes) {
            assert!(!photo.contains("too large"), "{photo}");
        }
    }

    #[test]
    fn truncated_jpeg_is_detected_by_its_missing_end_marker() {
        let mut jpeg = Vec::new();
        let img = image::DynamicImage::new_rgb8(32, 16);
        img.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        assert!(decode_rgb(&jpeg).is_ok());
        let err = decode_rgb(&jpeg[..jpeg.len() - 10]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn content_not_name_decides_the_format() {
        assert!(
            sniff(b"GIF89a....")
                .unwrap_err()
                .contains("not a JPEG, PNG, TIFF, WebP or BMP")
        );
        assert!(sniff(b"").unwrap_err().contains("empty"));
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert!(sniff(heic).unwrap_err().contains("convert it to JPEG"));
    }

    #[test]
    fn tiff_webp_and_bmp_decode_to_the_same_pixels_as_png() {
        let img =
            image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 15, 77]));
        for format in [ImageFormat::Tiff, ImageFormat::WebP, ImageFormat::Bmp] {
            let mut bytes = Vec::new();
            image::DynamicImage::ImageRgb8(img.clone())
                .write_to(&mut Cursor::new(&mut bytes), format)
                .unwrap();
            assert_eq!(sniff(&bytes), Ok(format));
            assert_eq!(decode_rgb(&bytes).unwrap(), img, "{format:?} is lossless");
        }
    }
}
