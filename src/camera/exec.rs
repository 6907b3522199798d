//! A camera behind a child process that writes frames to stdout: an MJPEG stream (libcamera's
//! `rpicam-vid --codec mjpeg -t 0 -o -`, `ffmpeg -i rtsp://... -f mjpeg -`, GStreamer ... `jpegenc !
//! fdsink`) or raw RGB24/YUYV frames of the configured size. The capture thread respawns it with backoff
//! when it exits.

use super::mjpeg::MjpegSplitter;
use super::{FrameSource, Payload, SourceError, StopSignal};
use crate::config::{ExecCamera, ExecFormat};
use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};

pub struct ExecSource {
    name: String,
    child: Child,
    stdout: ChildStdout,
    format: ExecFormat,
    width: u32,
    height: u32,
    splitter: MjpegSplitter,
    ready: VecDeque<Vec<u8>>,
}

impl ExecSource {
    /// Starts the command in a process group of its own, so stopping the camera ends the whole
    /// pipeline it may start (a shell and its children).
    pub fn spawn(config: &ExecCamera, stop: &StopSignal) -> Result<ExecSource, SourceError> {
        let (program, args) = config
            .command
            .split_first()
            .ok_or_else(|| SourceError::Failed("empty command".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| SourceError::Failed(format!("cannot run {program}: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        stop.set_child_group(child.id() as i32);
        Ok(ExecSource {
            name: program.clone(),
            child,
            stdout,
            format: config.format,
            width: config.width,
            height: config.height,
            splitter: MjpegSplitter::default(),
            ready: VecDeque::new(),
        })
    }

    fn ended(&mut self) -> SourceError {
        let status = self
            .child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        SourceError::Failed(format!("{} exited ({status})", self.name))
    }

    fn read_raw(&mut self, bytes_per_pixel: usize) -> Result<Vec<u8>, SourceError> {
        let mut frame = vec![0u8; self.width as usize * self.height as usize * bytes_per_pixel];
        match self.stdout.read_exact(&mut frame) {
            Ok(()) => Ok(frame),
            Err(_) => Err(self.ended()),
        }
    }
}

impl FrameSource for ExecSource {
    fn next_frame(&mut self) -> Result<Payload, SourceError> {
        match self.format {
            ExecFormat::Rgb24 => {
                let data = self.read_raw(3)?;
                let img =
                    image::RgbImage::from_raw(self.width, self.height, data).expect("exact size");
                Ok(Payload::Rgb(img))
            }
            ExecFormat::Yuyv => {
                let data = self.read_raw(2)?;
                Ok(Payload::Yuyv {
                    width: self.width,
                    height: self.height,
                    data,
                })
            }
            ExecFormat::Mjpeg => {
                let mut chunk = vec![0u8; 1 << 16];
                while self.ready.is_empty() {
                    let n = self
                        .stdout
                        .read(&mut chunk)
                        .map_err(|e| SourceError::Failed(format!("{}: {e}", self.name)))?;
                    if n == 0 {
                        return Err(self.ended());
                    }
                    let mut out = Vec::new();
                    self.splitter.push(&chunk[..n], &mut out);
                    self.ready.extend(out);
                }
                // Only the newest complete frame matters; older ones in the same read are stale.
                let newest = self.ready.pop_back().expect("non-empty");
                self.ready.clear();
                Ok(Payload::Encoded(newest))
            }
        }
    }
}

impl Drop for ExecSource {
    fn drop(&mut self) {
        // The process group created at spawn: its leader is our child.
        let group = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::TERM);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
