//! `[[camera]]` entries: one type per kind of camera (`kind = "v4l2"`, `"exec"` or `"files"`), so a key
//! that means nothing for a kind is an error naming it, like any unknown key.

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum CameraConfig {
    V4l2(V4l2Camera),
    Exec(ExecCamera),
    Files(FilesCamera),
}

/// A V4L2 capture device: a USB (UVC) webcam, or any driver with a capture node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Camera {
    /// Camera name: lowercase letters, digits, '_' and '-' (an MQTT topic segment).
    pub name: String,
    /// A device path (/dev/video0) or a name under /dev/v4l/by-id.
    pub device: String,
    #[serde(default)]
    pub format: V4l2Format,
    #[serde(default = "default_width")]
    pub width: u32,
    #[serde(default = "default_height")]
    pub height: u32,
    /// Capture rate asked of the device.
    #[serde(default = "default_fps")]
    pub fps: f32,
    /// How often frames of this camera are run through detection.
    #[serde(default = "default_detect_fps")]
    pub detect_fps: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum V4l2Format {
    /// MJPEG if the device offers it at the size, else YUYV.
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
}

/// A program writing frames to its stdout (rpicam-vid, ffmpeg, GStreamer).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecCamera {
    pub name: String,
    /// The program and its arguments, e.g. ["rpicam-vid", "--codec", "mjpeg", "-t", "0", "-o", "-"].
    pub command: Vec<String>,
    #[serde(default)]
    pub format: ExecFormat,
    /// Size of raw (rgb24, yuyv) frames; an MJPEG stream says its own.
    #[serde(default = "default_width")]
    pub width: u32,
    #[serde(default = "default_height")]
    pub height: u32,
    #[serde(default = "default_detect_fps")]
    pub detect_fps: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ExecFormat {
    /// A stream of JPEG images.
    #[default]
    Mjpeg,
    /// Raw 8-bit RGB frames of `width` x `height`.
    Rgb24,
    /// Raw packed YUYV 4:2:2 frames of `width` x `height`.
    Yuyv,
}

/// Image files played as a camera (replays, tests).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesCamera {
    pub name: String,
    /// A directory of images, or a glob.
    pub path: String,
    /// Start again from the first image at the end.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Frames each image is shown for (a slideshow of still photos needs several, so faces can be
    /// tracked and voted on; recordings use 1).
    #[serde(default = "default_repeat")]
    pub repeat: u32,
    /// The pace of the images.
    #[serde(default = "default_fps")]
    pub fps: f32,
    #[serde(default = "default_detect_fps")]
    pub detect_fps: f32,
}

pub(super) fn default_repeat() -> u32 {
    1
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> f32 {
    15.0
}
fn default_detect_fps() -> f32 {
    5.0
}

impl CameraConfig {
    pub fn name(&self) -> &str {
        match self {
            CameraConfig::V4l2(c) => &c.name,
            CameraConfig::Exec(c) => &c.name,
            CameraConfig::Files(c) => &c.name,
        }
    }

    pub fn detect_fps(&self) -> f32 {
        match self {
            CameraConfig::V4l2(c) => c.detect_fps,
            CameraConfig::Exec(c) => c.detect_fps,
            CameraConfig::Files(c) => c.detect_fps,
        }
    }

    /// A relative `path` of a files camera is relative to the config file's directory.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        if let CameraConfig::Files(c) = self
            && Path::new(&c.path).is_relative()
        {
            c.path = base.join(&c.path).display().to_string();
        }
    }

    /// The first problem with this camera's values: (key, message).
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        let positive = |key: &'static str, v: f32| {
            super::out_of_range(key, v, 0.01, 1000.0, "frames per second").map(|(_, m)| (key, m))
        };
        match self {
            CameraConfig::V4l2(c) => positive("fps", c.fps)
                .or_else(|| (c.device.is_empty()).then(|| ("device", "is empty".to_string())))
                .or_else(|| size_problem(c.width, c.height)),
            CameraConfig::Exec(c) => (c.command.is_empty() || c.command[0].is_empty())
                .then(|| ("command", "an exec camera needs a command".to_string()))
                .or_else(|| size_problem(c.width, c.height)),
            CameraConfig::Files(c) => positive("fps", c.fps)
                .or_else(|| (c.path.is_empty()).then(|| ("path", "is empty".to_string()))),
        }
        .or_else(|| positive("detect_fps", self.detect_fps()))
    }
}

fn size_problem(width: u32, height: u32) -> Option<(&'static str, String)> {
    let limit = crate::image_io::FRAME_PIXELS.max_pixels;
    if width == 0 || height == 0 {
        Some(("width", "width and height must be positive".to_string()))
    } else if u64::from(width) * u64::from(height) > limit {
        Some((
            "width",
            format!(
                "{width}x{height} is more than the {:.1} MP a camera frame may have",
                limit as f64 / 1e6
            ),
        ))
    } else {
        None
    }
}
