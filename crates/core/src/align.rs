//! Face alignment: the least-squares similarity transform (Umeyama, no reflection) taking the detected
//! landmarks onto a manifest template, and a bilinear warp with a black border, as OpenCV's warpAffine.
//! Pixel centres sit on integer coordinates, the same convention as the templates and OpenCV.

use image::{Rgb, RgbImage};

/// dst = [a -b; b a] * src + [tx, ty]: rotation with uniform scale, then translation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Similarity {
    pub a: f64,
    pub b: f64,
    pub tx: f64,
    pub ty: f64,
}

impl Similarity {
    /// Maps a point (the tests check transforms with it; the warp inlines it).
    #[cfg(test)]
    fn apply(&self, [x, y]: [f64; 2]) -> [f64; 2] {
        [
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        ]
    }

    /// The transform undoing this one; None when degenerate (zero scale).
    pub fn inverse(&self) -> Option<Similarity> {
        let det = self.a * self.a + self.b * self.b;
        if det <= f64::EPSILON {
            return None;
        }
        let (a, b) = (self.a / det, -self.b / det);
        Some(Similarity {
            a,
            b,
            tx: -(a * self.tx - b * self.ty),
            ty: -(b * self.tx + a * self.ty),
        })
    }
}

/// Least-squares similarity mapping `src` points onto `dst` points. In 2-D the optimum over rotation and
/// scale has a closed form: treating points as complex numbers, (a + ib) = sum(conj(p) q) / sum(|p|^2) on
/// centred points, which is what Umeyama's SVD solution reduces to when reflections are excluded.
pub(crate) fn similarity_from_points(src: &[[f32; 2]], dst: &[[f32; 2]]) -> Option<Similarity> {
    if src.len() != dst.len() || src.len() < 2 {
        return None;
    }
    let n = src.len() as f64;
    let mean = |pts: &[[f32; 2]]| {
        let (sx, sy) = pts.iter().fold((0.0, 0.0), |(sx, sy), p| {
            (sx + p[0] as f64, sy + p[1] as f64)
        });
        (sx / n, sy / n)
    };
    let (msx, msy) = mean(src);
    let (mdx, mdy) = mean(dst);
    let (mut dot, mut cross, mut norm) = (0.0, 0.0, 0.0);
    for (p, q) in src.iter().zip(dst) {
        let (px, py) = (p[0] as f64 - msx, p[1] as f64 - msy);
        let (qx, qy) = (q[0] as f64 - mdx, q[1] as f64 - mdy);
        dot += px * qx + py * qy;
        cross += px * qy - py * qx;
        norm += px * px + py * py;
    }
    if norm <= f64::EPSILON {
        return None;
    }
    let (a, b) = (dot / norm, cross / norm);
    Some(Similarity {
        a,
        b,
        tx: mdx - (a * msx - b * msy),
        ty: mdy - (b * msx + a * msy),
    })
}

/// Sub-pixel resolution of sampling positions: 1/32 px, as OpenCV's INTER_BITS.
const FRAC_BITS: i64 = 5;
const FRAC: i64 = 1 << FRAC_BITS;
/// Fixed-point scale of the transform's terms before they are reduced to 1/32 px (OpenCV's AB_BITS).
const AB_SCALE: f64 = 1024.0;

/// Samples `img` at every output pixel mapped back through `to_output.inverse()`, bilinearly; neighbours
/// outside the image count as black (OpenCV's BORDER_CONSTANT). The arithmetic is OpenCV's warpAffine
/// INTER_LINEAR for 8-bit images: positions rounded to 1/32 px, integer weights summing to 2^15, rounded
/// result. Matching it keeps crops within a grey level of the reference, which matters for models that
/// are sensitive to tiny input changes.
pub(crate) fn warp_similarity(
    img: &RgbImage,
    to_output: &Similarity,
    out_w: u32,
    out_h: u32,
) -> Option<RgbImage> {
    let inv = to_output.inverse()?;
    // src = [m0 m1; m3 m4] * dst + [m2, m5]
    let (m0, m1, m2, m3, m4, m5) = (inv.a, -inv.b, inv.tx, inv.b, inv.a, inv.ty);
    let (w, h) = (img.width() as i64, img.height() as i64);
    let raw = img.as_raw();
    let fetch = |x: i64, y: i64, c: usize| -> i64 {
        if x < 0 || y < 0 || x >= w || y >= h {
            0
        } else {
            raw[((y * w + x) * 3) as usize + c] as i64
        }
    };
    let fixed = |v: f64| (v * AB_SCALE).round() as i64;
    let round_delta = (AB_SCALE as i64) / FRAC / 2;
    let shift = (AB_SCALE as i64).trailing_zeros() as i64 - FRAC_BITS;
    let mut out = RgbImage::new(out_w, out_h);
    for v in 0..out_h {
        let row_x = fixed(m1 * v as f64 + m2) + round_delta;
        let row_y = fixed(m4 * v as f64 + m5) + round_delta;
        for u in 0..out_w {
            let sx = (row_x + fixed(m0 * u as f64)) >> shift;
            let sy = (row_y + fixed(m3 * u as f64)) >> shift;
            let (x0, y0) = (sx >> FRAC_BITS, sy >> FRAC_BITS);
            if x0 < -1 || y0 < -1 || x0 >= w || y0 >= h {
                continue; // all four neighbours outside: stays black
            }
            let (fx, fy) = (sx & (FRAC - 1), sy & (FRAC - 1));
            // Weights in units of 2^-15: (FRAC - f) * FRAC-scaled products, exact for 1/32 positions.
            let weights = [
                (FRAC - fx) * (FRAC - fy),
                fx * (FRAC - fy),
                (FRAC - fx) * fy,
                fx * fy,
            ]
            .map(|k| k * FRAC);
            let rgb = std::array::from_fn(|c| {
                let sum = weights[0] * fetch(x0, y0, c)
                    + weights[1] * fetch(x0 + 1, y0, c)
                    + weights[2] * fetch(x0, y0 + 1, c)
                    + weights[3] * fetch(x0 + 1, y0 + 1, c);
                ((sum + (1 << 14)) >> 15).clamp(0, 255) as u8
            });
            out.put_pixel(u, v, Rgb(rgb));
        }
    }
    Some(out)
}

/// Aligns a face: landmarks onto `template`, warped into an `out_w` x `out_h` crop.
pub fn align_face(
    img: &RgbImage,
    landmarks: &[[f32; 2]; 5],
    template: &[[f32; 2]; 5],
    out_w: u32,
    out_h: u32,
) -> Option<RgbImage> {
    let m = similarity_from_points(landmarks, template)?;
    warp_similarity(img, &m, out_w, out_h)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCFACE: [[f32; 2]; 5] = [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ];

    #[test]
    fn recovers_a_known_similarity_exactly() {
        let truth = Similarity {
            a: 0.8 * 0.3f64.cos(),
            b: 0.8 * 0.3f64.sin(),
            tx: 12.5,
            ty: -4.0,
        };
        let src: Vec<[f32; 2]> = ARCFACE.to_vec();
        let dst: Vec<[f32; 2]> = src
            .iter()
            .map(|p| truth.apply([p[0] as f64, p[1] as f64]))
            .map(|[x, y]| [x as f32, y as f32])
            .collect();
        let m = similarity_from_points(&src, &dst).unwrap();
        assert!(
            (m.a - truth.a).abs() < 1e-5 && (m.b - truth.b).abs() < 1e-5,
            "{m:?}"
        );
        assert!(
            (m.tx - truth.tx).abs() < 1e-3 && (m.ty - truth.ty).abs() < 1e-3,
            "{m:?}"
        );
        let back = m.inverse().unwrap().apply(m.apply([3.0, 7.0]));
        assert!((back[0] - 3.0).abs() < 1e-9 && (back[1] - 7.0).abs() < 1e-9);
    }

    #[test]
    fn least_squares_beats_any_perturbation() {
        // Noisy correspondences: the fitted transform must have lower squared error than nearby ones.
        let src = ARCFACE;
        let dst = [
            [140.0, 210.0],
            [215.0, 205.0],
            [180.0, 250.0],
            [150.0, 290.0],
            [210.0, 287.0],
        ];
        let m = similarity_from_points(&src, &dst).unwrap();
        let err = |t: &Similarity| {
            src.iter()
                .zip(&dst)
                .map(|(p, q)| {
                    let [x, y] = t.apply([p[0] as f64, p[1] as f64]);
                    (x - q[0] as f64).powi(2) + (y - q[1] as f64).powi(2)
                })
                .sum::<f64>()
        };
        let best = err(&m);
        for (da, db, dx, dy) in [
            (0.01, 0.0, 0.0, 0.0),
            (0.0, 0.01, 0.0, 0.0),
            (0.0, 0.0, 0.5, 0.0),
            (0.0, 0.0, 0.0, -0.5),
        ] {
            let t = Similarity {
                a: m.a + da,
                b: m.b + db,
                tx: m.tx + dx,
                ty: m.ty + dy,
            };
            assert!(err(&t) > best);
        }
    }

    #[test]
    fn identity_warp_copies_and_pads_black() {
        let img = RgbImage::from_fn(4, 3, |x, y| Rgb([(x * 10) as u8, (y * 20) as u8, 7]));
        let id = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.0,
            ty: 0.0,
        };
        let out = warp_similarity(&img, &id, 5, 3).unwrap();
        for y in 0..3 {
            for x in 0..4 {
                assert_eq!(out.get_pixel(x, y), img.get_pixel(x, y));
            }
            assert_eq!(out.get_pixel(4, y).0, [0, 0, 0]);
        }
    }

    #[test]
    fn half_pixel_shift_interpolates_and_blends_border_with_black() {
        let img = RgbImage::from_fn(2, 1, |x, _| Rgb([if x == 0 { 100 } else { 200 }, 0, 0]));
        // dst = src - 0.5 in x, so output u samples source u + 0.5.
        let shift = Similarity {
            a: 1.0,
            b: 0.0,
            tx: -0.5,
            ty: 0.0,
        };
        let out = warp_similarity(&img, &shift, 2, 1).unwrap();
        assert_eq!(out.get_pixel(0, 0).0[0], 150);
        assert_eq!(out.get_pixel(1, 0).0[0], 100); // half of 200, half black border
    }

    #[test]
    fn degenerate_landmarks_are_refused() {
        assert!(similarity_from_points(&[[1.0, 1.0]; 5], &ARCFACE).is_none());
    }
}
