//! A camera behind a child process that writes frames to stdout: an MJPEG stream (libcamera's
//! `rpicam-vid --codec mjpeg -t 0 -o -`, `ffmpeg -i rtsp://... -f mjpeg -`, GStreamer ... `jpegenc !
//! fdsink`) or raw RGB24/YUYV frames of the configured size. The capture thread respawns it with backoff
//! when it exits, and also when no complete frame has come for the stall time (a helper that hangs,
//! or writes something that is not frames). Its stderr goes to the log, rate-limited; stopping it
//! ends its whole process group, with SIGKILL for whatever ignores SIGTERM.

use super::mjpeg::MjpegSplitter;
use super::{FrameSource, Payload, SourceError, StopSignal};
use crate::config::{ExecCamera, ExecFormat};
use std::collections::VecDeque;
use std::io::{BufRead, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a helper has to exit after SIGTERM before its process group gets SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// Helper stderr lines logged per `STDERR_WINDOW` (the rest are counted, not logged) and the longest
/// line kept: a helper printing without end must not fill the journal or the disk.
const STDERR_LINES: u32 = 20;
const STDERR_WINDOW: Duration = Duration::from_secs(60);
const STDERR_LINE_CHARS: usize = 500;

pub struct ExecSource {
    name: String,
    child: Child,
    stdout: ChildStdout,
    format: ExecFormat,
    width: u32,
    height: u32,
    splitter: MjpegSplitter,
    ready: VecDeque<Vec<u8>>,
    /// A complete frame must come within this of the previous one (or of the start), when set.
    stall: Option<Duration>,
    last_frame: Instant,
}

impl ExecSource {
    /// Starts the command in a process group of its own, so stopping the camera ends the whole
    /// pipeline it may start (a shell and its children).
    pub fn spawn(
        config: &ExecCamera,
        stop: &StopSignal,
        stall: Option<Duration>,
    ) -> Result<ExecSource, SourceError> {
        let (program, args) = config
            .command
            .split_first()
            .ok_or_else(|| SourceError::Failed("empty command".into()))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| SourceError::Failed(format!("cannot run {program}: {e}")))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let camera = config.name.clone();
        let _ = std::thread::Builder::new()
            .name(format!("camera-{camera}-stderr"))
            .spawn(move || log_stderr(&camera, stderr));
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
            stall,
            last_frame: Instant::now(),
        })
    }

    /// Reads what the helper wrote, waiting no later than the stall deadline (if any).
    fn read_some(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        if let Some(stall) = self.stall {
            let deadline = self.last_frame + stall;
            loop {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    return Err(SourceError::Failed(format!(
                        "{}: stalled: no complete frame for {} s",
                        self.name,
                        stall.as_secs_f32()
                    )));
                };
                let timeout = Timespec::try_from(left).unwrap_or(Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                });
                let mut fds = [PollFd::new(&self.stdout, PollFlags::IN)];
                match poll(&mut fds, Some(&timeout)) {
                    Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                    Ok(_) => break,
                    Err(e) => return Err(SourceError::Failed(format!("{}: {e}", self.name))),
                }
            }
        }
        self.stdout
            .read(buf)
            .map_err(|e| SourceError::Failed(format!("{}: {e}", self.name)))
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
        let mut filled = 0;
        while filled < frame.len() {
            match self.read_some(&mut frame[filled..])? {
                0 => return Err(self.ended()),
                n => filled += n,
            }
        }
        Ok(frame)
    }

    fn read_frame(&mut self) -> Result<Payload, SourceError> {
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
                    let n = self.read_some(&mut chunk)?;
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

impl FrameSource for ExecSource {
    fn next_frame(&mut self) -> Result<Payload, SourceError> {
        let frame = self.read_frame();
        if frame.is_ok() {
            self.last_frame = Instant::now();
        }
        frame
    }
}

impl Drop for ExecSource {
    fn drop(&mut self) {
        end_process_group(&mut self.child);
    }
}

/// Ends the process group `child` leads: SIGTERM, up to `TERM_GRACE` for the leader to exit, then
/// SIGKILL for every member still there (a helper, or a child of it, that ignores SIGTERM).
pub fn end_process_group(child: &mut Child) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let group = Pid::from_child(child);
    let _ = kill_process_group(group, Signal::TERM);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill_process_group(group, Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// Logs the helper's stderr line by line as warnings of its camera, at most `STDERR_LINES` per
/// `STDERR_WINDOW`, each cut to `STDERR_LINE_CHARS`; says how many lines it left out.
fn log_stderr(camera: &str, stderr: ChildStderr) {
    let mut reader = std::io::BufReader::new(stderr);
    let mut line = Vec::new();
    let mut window = Instant::now();
    let (mut logged, mut dropped) = (0u32, 0u64);
    loop {
        line.clear();
        // Read at most a bounded amount per line, so a line without end cannot grow memory.
        let read = (&mut reader).take(64 * 1024).read_until(b'\n', &mut line);
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if window.elapsed() >= STDERR_WINDOW {
            if dropped > 0 {
                log::warn!("camera {camera}: helper: {dropped} more stderr lines not logged");
            }
            (window, logged, dropped) = (Instant::now(), 0, 0);
        }
        if logged < STDERR_LINES {
            logged += 1;
            let text = String::from_utf8_lossy(&line);
            let text: String = text.trim_end().chars().take(STDERR_LINE_CHARS).collect();
            log::warn!("camera {camera}: helper: {text}");
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        log::warn!("camera {camera}: helper: {dropped} more stderr lines not logged");
    }
}
