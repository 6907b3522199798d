//! YUYV 4:2:2 (as UVC webcams send it) to RGB, with BT.601 limited-range coefficients in fixed point.
//! Measured in `cargo bench --bench stages`.

use image::RgbImage;

/// Converts packed YUYV (Y0 U Y1 V per two pixels) to RGB.
pub fn to_rgb(data: &[u8], width: u32, height: u32) -> Result<RgbImage, String> {
    let (w, h) = (width as usize, height as usize);
    if w % 2 != 0 || data.len() < w * h * 2 {
        return Err(format!(
            "YUYV frame of {} bytes is too short for {width}x{height}",
            data.len()
        ));
    }
    let mut rgb = vec![0u8; w * h * 3];
    for (src, dst) in data[..w * h * 2]
        .chunks_exact(4)
        .zip(rgb.chunks_exact_mut(6))
    {
        let (u, v) = (src[1] as i32 - 128, src[3] as i32 - 128);
        // R = 1.164 (Y-16) + 1.596 V; G = 1.164 (Y-16) - 0.392 U - 0.813 V; B = 1.164 (Y-16) + 2.017 U (x256)
        let (rv, guv, bu) = (409 * v, -100 * u - 208 * v, 516 * u);
        for (k, y) in [src[0], src[2]].into_iter().enumerate() {
            let c = 298 * (y as i32 - 16) + 128;
            dst[k * 3] = ((c + rv) >> 8).clamp(0, 255) as u8;
            dst[k * 3 + 1] = ((c + guv) >> 8).clamp(0, 255) as u8;
            dst[k * 3 + 2] = ((c + bu) >> 8).clamp(0, 255) as u8;
        }
    }
    RgbImage::from_raw(width, height, rgb).ok_or_else(|| "YUYV conversion size".to_string())
}

/// RGB to YUYV (for tests and the fake camera's frames): the inverse of `to_rgb`, averaging chroma of
/// each pixel pair.
pub fn from_rgb(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::with_capacity(img.width() as usize * img.height() as usize * 2);
    for pair in img.as_raw().chunks_exact(6) {
        let yuv = |p: &[u8]| {
            let (r, g, b) = (p[0] as i32, p[1] as i32, p[2] as i32);
            let y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16;
            let u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128;
            let v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128;
            (y, u, v)
        };
        let (y0, u0, v0) = yuv(&pair[..3]);
        let (y1, u1, v1) = yuv(&pair[3..]);
        out.extend_from_slice(&[
            y0 as u8,
            ((u0 + u1) / 2) as u8,
            y1 as u8,
            ((v0 + v1) / 2) as u8,
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_colours_close() {
        let img = RgbImage::from_fn(8, 2, |x, y| {
            image::Rgb([(x * 30) as u8, (y * 100 + 20) as u8, 200 - (x * 10) as u8])
        });
        let back = to_rgb(&from_rgb(&img), 8, 2).unwrap();
        let worst = img
            .as_raw()
            .iter()
            .zip(back.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 12, "worst channel error {worst}");
    }

    #[test]
    fn known_values() {
        // Black, white and mid grey in limited range.
        let out = to_rgb(&[16, 128, 235, 128], 2, 1).unwrap();
        assert_eq!(out.as_raw(), &[0, 0, 0, 255, 255, 255]);
        assert!(to_rgb(&[0; 3], 2, 1).is_err());
    }
}
