//! Splits a byte stream of concatenated JPEG images (what `rpicam-vid --codec mjpeg -o -`, ffmpeg's
//! `-f mjpeg` and GStreamer's `jpegenc ! fdsink` write) into single images: start-of-image FF D8 to the
//! first end-of-image FF D9 after the scan data.

/// Incremental splitter: feed bytes as they come, get complete JPEGs out.
#[derive(Debug, Default)]
pub struct MjpegSplitter {
    buffer: Vec<u8>,
    /// Where the search for the end marker resumes.
    scanned: usize,
}

/// A frame larger than this is garbage (no end marker found): the buffer is reset.
const MAX_FRAME: usize = 32 << 20;

impl MjpegSplitter {
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<Vec<u8>>) {
        self.buffer.extend_from_slice(bytes);
        loop {
            // Drop anything before the start-of-image marker.
            match find(&self.buffer, &[0xff, 0xd8], 0) {
                Some(0) => {}
                Some(start) => {
                    self.buffer.drain(..start);
                    self.scanned = 0;
                }
                None => {
                    let keep = usize::from(self.buffer.last() == Some(&0xff));
                    self.buffer.drain(..self.buffer.len() - keep);
                    self.scanned = 0;
                    return;
                }
            }
            let from = self.scanned.max(2);
            match find(&self.buffer, &[0xff, 0xd9], from) {
                Some(end) => {
                    out.push(self.buffer.drain(..end + 2).collect());
                    self.scanned = 0;
                }
                None => {
                    self.scanned = self.buffer.len().saturating_sub(1);
                    if self.buffer.len() > MAX_FRAME {
                        self.buffer.clear();
                        self.scanned = 0;
                    }
                    return;
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8; 2], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(2)
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_across_arbitrary_chunk_boundaries() {
        let a = [0xff, 0xd8, 1, 2, 0xff, 0xd9];
        let b = [0xff, 0xd8, 3, 0xff, 0x00, 4, 0xff, 0xd9];
        let mut stream = vec![9, 9];
        stream.extend_from_slice(&a);
        stream.extend_from_slice(&b);
        for chunk in 1..stream.len() {
            let mut s = MjpegSplitter::default();
            let mut out = vec![];
            for c in stream.chunks(chunk) {
                s.push(c, &mut out);
            }
            assert_eq!(out, vec![a.to_vec(), b.to_vec()], "chunk size {chunk}");
        }
    }
}
