//! Reading photos from disk into 8-bit RGB frames: format sniffed from content, EXIF orientation applied
//! (as OpenCV's imread does), alpha dropped, greyscale and 16-bit converted, oversized images refused
//! before their pixels are allocated. Also finds image files under directories.

use image::{ImageDecoder, ImageReader, RgbImage};
use std::path::{Path, PathBuf};

/// Largest accepted width or height. A 50 MP phone photo is about 8200 px wide.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoder allocation (bytes).
pub const MAX_ALLOC: u64 = 1 << 30;

/// File extensions treated as images when walking directories (explicit files are always tried).
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

#[derive(Debug, thiserror::Error)]
#[error("{}: {cause}", path.display())]
pub struct ImageLoadError {
    pub path: PathBuf,
    pub cause: String,
}

pub fn load_rgb(path: &Path) -> Result<RgbImage, ImageLoadError> {
    let err = |cause: String| ImageLoadError { path: path.to_path_buf(), cause };
    let reader = ImageReader::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let mut reader = reader.with_guessed_format().map_err(|e| err(format!("cannot read: {e}")))?;
    if reader.format().is_none() {
        return Err(err("not a JPEG or PNG image".to_string()));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| err(describe(e)))?;
    let orientation = decoder.orientation().ok();
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| err(describe(e)))?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    Ok(img.into_rgb8())
}

fn describe(e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => {
            format!("image too large ({l}; limit {MAX_SIDE}x{MAX_SIDE} pixels, {} MiB)", MAX_ALLOC >> 20)
        }
        image::ImageError::Unsupported(u) => format!("unsupported image: {u}"),
        image::ImageError::Decoding(d) => format!("corrupt or truncated image: {d}"),
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
