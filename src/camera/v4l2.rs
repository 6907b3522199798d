//! USB (UVC) and other V4L2 capture devices through the v4l crate, with mmap streaming: MJPEG at the
//! requested size and rate when the device offers it, else YUYV, else an error listing what it offers.
//! ENODEV (unplugged) and timeouts are reported to the capture thread, which reopens the device.

use super::{FrameSource, Payload, SourceError};
use crate::config::{V4l2Camera, V4l2Format};
use std::path::PathBuf;
use std::time::Duration;
use v4l::buffer::Type;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::video::capture::Parameters;
use v4l::{Device, FourCC};

const MJPEG: FourCC = FourCC { repr: *b"MJPG" };
const YUYV: FourCC = FourCC { repr: *b"YUYV" };
/// A streaming device that delivers nothing for this long is treated as failed.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

pub struct V4l2Source {
    path: PathBuf,
    /// Option so Drop can take it and contain a panic from the crate's own Drop.
    stream: Option<Stream<'static>>,
    fourcc: FourCC,
    width: u32,
    height: u32,
}

/// `/dev/...` paths are used as they are; other names are looked up in /dev/v4l/by-id (stable across
/// reboots and USB ports, unlike /dev/videoN).
pub fn device_path(device: &str) -> PathBuf {
    if device.starts_with('/') {
        PathBuf::from(device)
    } else {
        PathBuf::from("/dev/v4l/by-id").join(device)
    }
}

fn failed(path: &std::path::Path, what: &str, e: std::io::Error) -> SourceError {
    let cause = if e.raw_os_error() == Some(libc::ENODEV) {
        "device unplugged (ENODEV)".to_string()
    } else {
        e.to_string()
    };
    SourceError::Failed(format!("{}: {what}: {cause}", path.display()))
}

/// "MJPG 1280x720 640x480, YUYV 640x480" for error messages.
fn offered(dev: &Device) -> String {
    let formats = match dev.enum_formats() {
        Ok(formats) if formats.is_empty() => {
            return "no capture format at all (is it an output-only or metadata node?)".into();
        }
        Ok(formats) => formats,
        Err(e) => return format!("no format list ({e})"),
    };
    formats
        .iter()
        .map(|f| {
            let sizes: Vec<String> = dev
                .enum_framesizes(f.fourcc)
                .unwrap_or_default()
                .into_iter()
                .map(|s| match s.size {
                    FrameSizeEnum::Discrete(d) => format!("{}x{}", d.width, d.height),
                    FrameSizeEnum::Stepwise(s) => format!(
                        "{}x{}..{}x{}",
                        s.min_width, s.min_height, s.max_width, s.max_height
                    ),
                })
                .collect();
            format!("{} {}", f.fourcc, sizes.join(" "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl V4l2Source {
    pub fn open(config: &V4l2Camera) -> Result<V4l2Source, SourceError> {
        let path = device_path(&config.device);
        let dev = Device::with_path(&path).map_err(|e| failed(&path, "open", e))?;
        let formats: Vec<FourCC> = dev
            .enum_formats()
            .map_err(|e| failed(&path, "list formats", e))?
            .into_iter()
            .map(|f| f.fourcc)
            .collect();
        let wanted = match config.format {
            V4l2Format::Auto => [MJPEG, YUYV].into_iter().find(|f| formats.contains(f)),
            V4l2Format::Mjpeg => Some(MJPEG).filter(|f| formats.contains(f)),
            V4l2Format::Yuyv => Some(YUYV).filter(|f| formats.contains(f)),
        };
        let Some(fourcc) = wanted else {
            return Err(SourceError::Failed(format!(
                "{}: no usable format for {:?}; the device offers: {}",
                path.display(),
                config.format,
                offered(&dev)
            )));
        };
        let mut format = dev.format().map_err(|e| failed(&path, "get format", e))?;
        format.width = config.width;
        format.height = config.height;
        format.fourcc = fourcc;
        let format = dev
            .set_format(&format)
            .map_err(|e| failed(&path, "set format", e))?;
        if format.fourcc != fourcc {
            return Err(SourceError::Failed(format!(
                "{}: the device refused {fourcc} (it offers: {})",
                path.display(),
                offered(&dev)
            )));
        }
        if (format.width, format.height) != (config.width, config.height) {
            log::warn!(
                "{}: asked for {}x{}, the device gives {}x{}",
                path.display(),
                config.width,
                config.height,
                format.width,
                format.height
            );
        }
        let fps = config.fps.round().max(1.0) as u32;
        if let Err(e) = dev.set_params(&Parameters::with_fps(fps)) {
            log::warn!("{}: cannot set {fps} fps: {e}", path.display());
        }
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, 4)
            .map_err(|e| failed(&path, "map buffers", e))?;
        stream.set_timeout(FRAME_TIMEOUT);
        log::info!(
            "{}: {fourcc} {}x{}",
            path.display(),
            format.width,
            format.height
        );
        Ok(V4l2Source {
            path,
            stream: Some(stream),
            fourcc,
            width: format.width,
            height: format.height,
        })
    }
}

impl FrameSource for V4l2Source {
    fn next_frame(&mut self) -> Result<Payload, SourceError> {
        let stream = self.stream.as_mut().expect("open stream");
        let (buffer, meta) = match stream.next() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(SourceError::Failed(format!(
                    "{}: no frame for {} s",
                    self.path.display(),
                    FRAME_TIMEOUT.as_secs()
                )));
            }
            Err(e) => return Err(failed(&self.path, "capture", e)),
        };
        let used = (meta.bytesused as usize).min(buffer.len());
        let data = buffer[..used].to_vec();
        if self.fourcc == MJPEG {
            Ok(Payload::Encoded(data))
        } else {
            Ok(Payload::Yuyv {
                width: self.width,
                height: self.height,
                data,
            })
        }
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        // The crate's stream panics in Drop when STREAMOFF fails with anything but ENODEV; a broken
        // camera must not take the capture thread down with it.
        if let Some(stream) = self.stream.take() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(stream)));
        }
    }
}
