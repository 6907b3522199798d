//! Frame sources (V4L2 devices, a child process's stdout, image files) and the capture threads that
//! keep only the newest frame of each camera for the inference worker. Frames stay encoded (JPEG) or raw
//! (YUYV) until the worker decides to use them, so skipped frames cost no decoding.

pub mod exec;
pub mod files;
pub mod mjpeg;
pub mod v4l2;
pub mod yuyv;

use crate::config::CameraConfig;
use crate::image_io::{FRAME_PIXELS, decode_rgb_within};
use crate::mqtt::Backoff;
use image::RgbImage;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// A frame as the source delivered it.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JPEG or PNG image.
    Encoded(Vec<u8>),
    /// Packed YUYV 4:2:2.
    Yuyv {
        width: u32,
        height: u32,
        data: Vec<u8>,
    },
    Rgb(RgbImage),
}

impl Payload {
    pub fn decode(&self) -> Result<RgbImage, String> {
        match self {
            Payload::Encoded(bytes) => decode_rgb_within(bytes, FRAME_PIXELS),
            Payload::Yuyv {
                width,
                height,
                data,
            } => yuyv::to_rgb(data, *width, *height),
            Payload::Rgb(img) => Ok(img.clone()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Frame {
    /// When the frame was captured (wall clock: events carry it).
    pub at: SystemTime,
    pub payload: Payload,
}

/// Why a source stopped delivering.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    /// A finite source (files without loop) is done: not an error, the camera just ends.
    #[error("end of frames")]
    Finished,
    /// The device or process went away or failed; the capture thread reopens it with backoff.
    #[error("{0}")]
    Failed(String),
}

pub trait FrameSource: Send {
    fn next_frame(&mut self) -> Result<Payload, SourceError>;
}

/// Opens the source a camera config describes.
pub fn open_source(
    config: &CameraConfig,
    stop: &StopSignal,
    stall: Option<Duration>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    match config {
        CameraConfig::V4l2(c) => Ok(Box::new(v4l2::V4l2Source::open(c)?)),
        CameraConfig::Exec(c) => Ok(Box::new(exec::ExecSource::spawn(c, stop, stall)?)),
        CameraConfig::Files(c) => Ok(Box::new(files::FilesSource::open(c)?)),
    }
}

/// What a camera is doing, for stats, MQTT and the watchdog.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraState {
    Opening,
    Streaming,
    /// Waiting to reopen after this error.
    Retrying(String),
    Finished,
    /// Streaming, but no frame for longer than the stall timeout (a hung device or helper). Never set
    /// by a capture thread: `FrameBoard::states_seen` derives it.
    Stalled,
}

impl CameraState {
    /// The state as `cam/<name>/status` and the stats name it.
    pub fn name(&self) -> &'static str {
        match self {
            CameraState::Opening => "opening",
            CameraState::Streaming => "streaming",
            CameraState::Retrying(_) => "retrying",
            CameraState::Finished => "finished",
            CameraState::Stalled => "stalled",
        }
    }
}

/// The newest frame and the state of one camera.
#[derive(Debug)]
pub struct Slot {
    pub latest: Option<Frame>,
    pub state: CameraState,
    /// When `state` last changed.
    pub since: Instant,
    /// Frames replaced by a newer one before the worker took them.
    pub dropped: u64,
    pub last_frame: Option<Instant>,
    pub frames: u64,
}

/// Called whenever a camera's state changes (the service publishes it).
pub type StateWatcher = Box<dyn Fn() + Send + Sync>;

/// Slots of every camera plus the condition variable that wakes the worker.
pub struct FrameBoard {
    pub slots: Mutex<Vec<Slot>>,
    pub wake: Condvar,
    watcher: Option<StateWatcher>,
}

impl std::fmt::Debug for FrameBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBoard")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

impl FrameBoard {
    /// A board for `cameras` cameras; `watcher` hears of every state change.
    pub fn new(cameras: usize, watcher: Option<StateWatcher>) -> Arc<FrameBoard> {
        let slots = (0..cameras)
            .map(|_| Slot {
                latest: None,
                state: CameraState::Opening,
                since: Instant::now(),
                dropped: 0,
                last_frame: None,
                frames: 0,
            })
            .collect();
        Arc::new(FrameBoard {
            slots: Mutex::new(slots),
            wake: Condvar::new(),
            watcher,
        })
    }

    fn set_state(&self, index: usize, state: CameraState) {
        self.update(index, |s| {
            s.state = state;
            s.since = Instant::now();
        });
        if let Some(watcher) = &self.watcher {
            watcher();
        }
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut Slot)) {
        let mut slots = self.slots.lock().expect("frame board");
        f(&mut slots[index]);
        drop(slots);
        self.wake.notify_all();
    }

    /// Takes the newest frame of camera `index` if one arrived since the last take.
    pub fn take(&self, index: usize) -> Option<Frame> {
        self.slots.lock().expect("frame board")[index].latest.take()
    }

    pub fn states(&self) -> Vec<CameraState> {
        self.slots
            .lock()
            .expect("frame board")
            .iter()
            .map(|s| s.state.clone())
            .collect()
    }

    /// For each camera: is it away (opening or retrying) with no frame for at least `d`? Counted from
    /// the last frame across the retrying/opening changes (each resets `since`), unlike a stall.
    pub fn away_for(&self, d: Duration) -> Vec<bool> {
        let slots = self.slots.lock().expect("frame board");
        slots
            .iter()
            .map(|s| {
                matches!(s.state, CameraState::Opening | CameraState::Retrying(_))
                    && s.last_frame.unwrap_or(s.since).elapsed() >= d
            })
            .collect()
    }

    /// The states as the outside sees them: a streaming camera without a frame for `stall` is stalled.
    pub fn states_seen(&self, stall: Duration) -> Vec<CameraState> {
        let slots = self.slots.lock().expect("frame board");
        slots
            .iter()
            .map(|s| {
                let quiet = s.last_frame.map_or(s.since, |t| t.max(s.since)).elapsed();
                match &s.state {
                    CameraState::Streaming if quiet >= stall => CameraState::Stalled,
                    state => state.clone(),
                }
            })
            .collect()
    }
}

/// Tells a capture thread to stop, and ends the process group of an exec source so a thread blocked
/// reading its pipe wakes up.
#[derive(Debug, Default)]
pub struct StopSignal {
    requested: AtomicBool,
    /// Process group of the running exec child (0: none).
    child_group: AtomicI32,
}

impl StopSignal {
    pub fn is_set(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub fn set_child_group(&self, pgid: i32) {
        self.child_group.store(pgid, Ordering::SeqCst);
    }

    /// Asks the thread to stop and sends SIGTERM to the exec helper's process group, which wakes a
    /// thread reading its pipe.
    fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        self.signal_group(rustix::process::Signal::TERM);
    }

    fn signal_group(&self, signal: rustix::process::Signal) {
        let group = self.child_group.load(Ordering::SeqCst);
        if let Some(group) = rustix::process::Pid::from_raw(group) {
            let _ = rustix::process::kill_process_group(group, signal);
        }
    }
}

/// A running capture thread.
pub struct Capture {
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    /// Starts capturing camera `index` into `board`; a source that fails is reopened with backoff
    /// (1 s doubling to 30 s, from 1 s again after a stream that lasted `mqtt::STABLE`) for as long
    /// as the service runs.
    /// An exec helper that delivers no complete frame for `stall` (when set) is restarted.
    pub fn start(
        config: CameraConfig,
        index: usize,
        board: Arc<FrameBoard>,
        stall: Option<Duration>,
    ) -> Capture {
        let stop = Arc::new(StopSignal::default());
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("camera-{}", config.name()))
            .spawn(move || capture_loop(&config, index, &board, &flag, stall))
            .expect("spawn camera thread");
        Capture {
            stop,
            thread: Some(thread),
        }
    }

    /// Asks the thread to stop without waiting (it may be blocked reading a device or a pipe).
    pub fn request_stop(&self) {
        self.stop.request();
    }

    /// After `request_stop`: waits up to `grace` for the thread, then SIGKILLs the exec helper's
    /// process group, so a helper that ignores SIGTERM does not outlive face-edge.
    pub fn finish_within(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.signal_group(rustix::process::Signal::KILL);
    }

    pub fn stop(mut self) {
        self.stop.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn capture_loop(
    config: &CameraConfig,
    index: usize,
    board: &FrameBoard,
    stop: &StopSignal,
    stall: Option<Duration>,
) {
    let mut backoff = Backoff::new(Duration::from_secs(30));
    while !stop.is_set() {
        board.set_state(index, CameraState::Opening);
        // None: asked to stop while streaming.
        let error = match open_source(config, stop, stall) {
            Err(e) => Some(e),
            Ok(mut source) => {
                log::info!("camera {}: streaming", config.name());
                board.set_state(index, CameraState::Streaming);
                backoff.up();
                loop {
                    if stop.is_set() {
                        break None;
                    }
                    match source.next_frame() {
                        Ok(payload) => {
                            let frame = Frame {
                                at: SystemTime::now(),
                                payload,
                            };
                            board.update(index, |s| {
                                s.dropped += u64::from(s.latest.is_some());
                                s.latest = Some(frame);
                                s.last_frame = Some(Instant::now());
                                s.frames += 1;
                            });
                        }
                        Err(e) => break Some(e),
                    }
                }
            }
        };
        // The helper's group is gone (the source, dropped above, ended it): never signal that number
        // again, it may be reused.
        stop.set_child_group(0);
        let Some(error) = error else {
            return;
        };
        if error == SourceError::Finished {
            log::info!("camera {}: no more frames", config.name());
            board.set_state(index, CameraState::Finished);
            return;
        }
        let wait = backoff.next_wait();
        log::warn!(
            "camera {}: {error}; retrying in {} s",
            config.name(),
            wait.as_secs()
        );
        board.set_state(index, CameraState::Retrying(error.to_string()));
        let until = Instant::now() + wait;
        while Instant::now() < until && !stop.is_set() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
