//! Change detection between camera frames, so that a still scene costs almost nothing: each frame is
//! reduced to a coarse grid of mean grey levels and compared with the last frame that was analysed. When
//! no cell moved by more than a threshold, detection can be skipped: the faces in view are where they
//! were. A per-cell test (not a frame-wide average) keeps a small face entering at the edge of a wide
//! view from being averaged away; block means average sensor noise down by the block's pixel count.

use image::RgbImage;
use std::time::{Duration, Instant};

/// Grid of the thumbnail: 32 x 24 cells (20 x 20 pixels at 640x480, 40 x 30 at 1280x720).
const CELLS_X: usize = 32;
const CELLS_Y: usize = 24;

/// Mean grey level (0..255) of each grid cell of a frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Thumbnail {
    width: u32,
    height: u32,
    cells: Vec<f32>,
}

impl Thumbnail {
    /// Every second pixel of every second row, grey = (R + 2G + B) / 4: about 0.1 ms at 640x480.
    pub fn of(frame: &RgbImage) -> Thumbnail {
        let (w, h) = (frame.width() as usize, frame.height() as usize);
        let mut sums = vec![0u32; CELLS_X * CELLS_Y];
        let mut counts = vec![0u32; CELLS_X * CELLS_Y];
        let raw = frame.as_raw();
        let column_cell: Vec<usize> = (0..w).map(|x| x * CELLS_X / w.max(1)).collect();
        for y in (0..h).step_by(2) {
            let row_cells = &mut sums[(y * CELLS_Y / h) * CELLS_X..][..CELLS_X];
            let row_counts = &mut counts[(y * CELLS_Y / h) * CELLS_X..][..CELLS_X];
            let row = &raw[y * w * 3..(y + 1) * w * 3];
            for x in (0..w).step_by(2) {
                let p = &row[x * 3..x * 3 + 3];
                let grey = p[0] as u32 + 2 * p[1] as u32 + p[2] as u32;
                row_cells[column_cell[x]] += grey;
                row_counts[column_cell[x]] += 4;
            }
        }
        let cells = sums
            .iter()
            .zip(&counts)
            .map(|(&s, &n)| if n == 0 { 0.0 } else { s as f32 / n as f32 })
            .collect();
        Thumbnail {
            width: frame.width(),
            height: frame.height(),
            cells,
        }
    }

    /// The largest change of any cell's mean grey level; infinite for frames of different sizes.
    pub fn max_change(&self, other: &Thumbnail) -> f32 {
        if (self.width, self.height) != (other.width, other.height) {
            return f32::INFINITY;
        }
        self.cells
            .iter()
            .zip(&other.cells)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}

/// Remembers the last analysed frame of one camera and says whether a new frame is still the same scene.
#[derive(Debug, Clone)]
pub(crate) struct StillnessGate {
    threshold: f32,
    recheck: Duration,
    last: Option<(Thumbnail, Instant)>,
}

impl StillnessGate {
    /// `threshold`: grey levels a cell must change by for the scene to count as changed (0 disables the
    /// gate); `recheck`: a still scene is analysed again at least this often.
    pub fn new(threshold: f32, recheck: Duration) -> StillnessGate {
        StillnessGate {
            threshold,
            recheck,
            last: None,
        }
    }

    /// True when `frame` shows the scene of the last analysed frame and that analysis is recent.
    pub fn is_still(&self, frame: &Thumbnail, now: Instant) -> bool {
        match &self.last {
            Some((last, at)) if self.threshold > 0.0 => {
                now.duration_since(*at) < self.recheck && last.max_change(frame) <= self.threshold
            }
            _ => false,
        }
    }

    /// Records the frame that was just analysed.
    pub fn analysed(&mut self, frame: Thumbnail, now: Instant) {
        self.last = Some((frame, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn hallway() -> RgbImage {
        RgbImage::from_fn(640, 480, |x, y| {
            Rgb([(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8])
        })
    }

    #[test]
    fn sensor_noise_is_still_but_a_small_face_at_the_edge_is_a_change() {
        let base = hallway();
        // +-3 levels of pseudo-random noise on every pixel.
        let mut noisy = base.clone();
        let mut state = 12345u32;
        for p in noisy.pixels_mut() {
            for c in p.0.iter_mut() {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                *c = c.saturating_add_signed(((state >> 16) % 7) as i8 - 3);
            }
        }
        let a = Thumbnail::of(&base);
        assert!(a.max_change(&Thumbnail::of(&noisy)) < 1.0);
        // A 40x40 darker patch in a bright corner (a face of the minimum embedded size).
        let mut face = base.clone();
        for y in 430..470 {
            for x in 590..630 {
                face.put_pixel(x, y, Rgb([120, 80, 60]));
            }
        }
        assert!(a.max_change(&Thumbnail::of(&face)) > 50.0);
        assert_eq!(
            a.max_change(&Thumbnail::of(&RgbImage::new(320, 240))),
            f32::INFINITY
        );
    }

    #[test]
    fn the_gate_skips_only_recent_unchanged_scenes() {
        let t0 = Instant::now();
        let frame = Thumbnail::of(&hallway());
        let mut gate = StillnessGate::new(6.0, Duration::from_secs(2));
        assert!(!gate.is_still(&frame, t0), "nothing analysed yet");
        gate.analysed(frame.clone(), t0);
        assert!(gate.is_still(&frame, t0 + Duration::from_secs(1)));
        assert!(
            !gate.is_still(&frame, t0 + Duration::from_secs(2)),
            "rechecked"
        );
        let dark = Thumbnail::of(&RgbImage::from_pixel(640, 480, Rgb([5, 5, 5])));
        assert!(!gate.is_still(&dark, t0 + Duration::from_millis(100)));
        let off = StillnessGate {
            threshold: 0.0,
            ..gate
        };
        assert!(!off.is_still(&frame, t0), "threshold 0 disables the gate");
    }
}
