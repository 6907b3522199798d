//! The service loop: one event at a time from one channel. Signals stop or reload, MQTT requests are
//! parsed into commands and handed to the worker, answers are published, camera states are published
//! when they change, and the tick drives statistics, STATUS= and the watchdog.

use super::worker::{Control, WorkerStats, cameras_healthy};
use super::{
    Answer, ConfigSource, Ending, Event, Origin, Reply, Requester, frame_board, health,
    model_choices, pipeline_with, start_captures,
};
use crate::camera::{CameraState, Capture, FrameBoard};
use crate::config::Config;
use crate::events::{self, Message, Topics};
use crate::mqtt::{Incoming, Sink};
use face_edge_core::authorise::Authoriser;
use face_edge_core::command::Command;
use face_edge_core::recognizer::Enrolment;
use serde_json::{Value, json};
use signal_hook::consts::SIGHUP;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// READY=1 waits at most this long for every camera to open or fail once.
const READY_WAIT: Duration = Duration::from_secs(10);

/// The MQTT spelling of the gallery reload request.
const RELOAD_GALLERY: &str = "reload_gallery";

/// MQTT gallery reloads: whether one is running, who else it answers, who waits for the next.
#[derive(Default)]
struct Reloads {
    running: bool,
    riders: Vec<Requester>,
    waiting: Vec<Requester>,
}

/// What `run` hands the loop.
pub struct Parts {
    pub source: ConfigSource,
    pub config: Config,
    /// The ids of the detector and embedder running (the configured ones or their checked
    /// variants).
    pub models: (String, String),
    pub board: Arc<FrameBoard>,
    pub captures: Vec<Option<Capture>>,
    pub to_worker: Sender<Control>,
    pub worker: JoinHandle<()>,
    pub stats: Arc<Mutex<WorkerStats>>,
    pub sink: Arc<Sink>,
    pub topics: Topics,
    pub events: Sender<Event>,
    /// Which requests may run.
    pub authoriser: Authoriser,
}

pub struct Service {
    parts: Parts,
    /// The state each camera was last published with.
    camera_states: Vec<Option<CameraState>>,
    /// Requests handed to the worker and not answered yet.
    outstanding: usize,
    /// Gallery reloads over MQTT, coalesced: at most one runs, and the requests that arrive meanwhile
    /// wait for one more, which answers them all (a flood of reloads costs two syncs, not thousands).
    reloads: Reloads,
    /// Every camera has finished: stop once the outstanding requests are answered.
    cameras_done: bool,
    ready: bool,
    health: health::Health,
    stats_interval: Duration,
    next_stats: Instant,
    frames_at_last_stats: u64,
    started: Instant,
}

impl Service {
    pub fn new(parts: Parts) -> Service {
        let health = health::Health::new(Duration::from_secs_f32(
            parts.config.service.stall_timeout_s,
        ));
        let stats_interval = Duration::from_secs(parts.config.stats_interval_s());
        Service {
            camera_states: vec![None; parts.config.camera.len()],
            parts,
            outstanding: 0,
            reloads: Reloads::default(),
            cameras_done: false,
            ready: false,
            health,
            stats_interval,
            next_stats: Instant::now() + stats_interval,
            frames_at_last_stats: 0,
            started: Instant::now(),
        }
    }

    /// Handles events until a stop signal, or until every camera has finished and every request is
    /// answered.
    pub fn run(&mut self, inbox: &Receiver<Event>) -> Ending {
        self.publish_camera_states();
        while let Ok(event) = inbox.recv() {
            match event {
                Event::Signal(SIGHUP) => self.reload(),
                Event::Signal(_) => return Ending::Stopped,
                Event::Mqtt(message) => self.on_incoming(message),
                Event::Answered { request, answer } => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    if request.origin == Origin::Mqtt && request.command == RELOAD_GALLERY {
                        self.reload_answered(request, answer);
                    } else {
                        self.respond(&request, answer);
                    }
                }
                Event::CameraChanged => self.publish_camera_states(),
                Event::CamerasDone => self.cameras_done = true,
                Event::Tick => self.tick(),
            }
            self.notify_ready_once();
            if self.cameras_done && self.outstanding == 0 {
                log::info!("every camera has finished; stopping");
                return Ending::SourcesFinished;
            }
        }
        Ending::Stopped
    }

    /// READY=1 once every camera has either opened or failed once (so "active" means the cameras were
    /// tried), or after `READY_WAIT`.
    fn notify_ready_once(&mut self) {
        if !self.ready
            && (self.started.elapsed() >= READY_WAIT
                || !self.parts.board.states().contains(&CameraState::Opening))
        {
            health::notify_ready();
            self.ready = true;
        }
    }

    fn tick(&mut self) {
        let stats = self.parts.stats.lock().expect("stats").clone();
        let status = self.status_line(&stats);
        let healthy = cameras_healthy(&self.parts.board, self.health.stall());
        self.health.tick(&stats, healthy, self.ready, &status);
        // A stall is no capture thread's event: it shows only by the clock.
        self.publish_camera_states();
        if Instant::now() >= self.next_stats {
            let fps = (stats.frames - self.frames_at_last_stats) as f64
                / self.stats_interval.as_secs_f64();
            self.frames_at_last_stats = stats.frames;
            self.next_stats += self.stats_interval;
            self.parts.sink.send(self.stats_message(&stats, fps));
        }
    }

    fn status_line(&self, stats: &WorkerStats) -> String {
        let states = self.parts.board.states();
        let streaming = states
            .iter()
            .filter(|s| **s == CameraState::Streaming)
            .count();
        format!(
            "{} of {} cameras streaming, {} faces in view, {} frames, detect {:.0} ms, embed {:.0} ms",
            streaming,
            states.len(),
            stats.faces_in_view,
            stats.frames,
            stats.detect_ms,
            stats.embed_ms
        )
    }

    fn stats_message(&self, stats: &WorkerStats, fps: f64) -> Message {
        let link = self.parts.sink.status();
        let slots = self.parts.board.slots.lock().expect("frame board");
        let cameras: serde_json::Map<String, Value> = self
            .parts
            .config
            .camera
            .iter()
            .zip(slots.iter())
            .map(|(c, s)| {
                let state =
                    json!({"state": s.state.name(), "frames": s.frames, "dropped": s.dropped});
                (c.name().to_string(), state)
            })
            .collect();
        let dropped_frames: u64 = slots.iter().map(|s| s.dropped).sum();
        drop(slots);
        let payload = json!({
            "fps": (fps * 100.0).round() / 100.0,
            "detect_ms": (stats.detect_ms * 10.0).round() / 10.0,
            "embed_ms": (stats.embed_ms * 10.0).round() / 10.0,
            "faces": stats.faces_in_view,
            "queue_depth": link.as_ref().map_or(0, |l| l.queued),
            "dropped_frames": dropped_frames,
            "still_frames": stats.still_frames,
            "embeddings": stats.embeddings,
            "dropped_events": link.as_ref().map_or(0, |l| l.dropped_events),
            "uptime_s": self.started.elapsed().as_secs(),
            "cpu_temp_c": health::cpu_temperature(),
            "cameras": cameras,
        });
        Message::event(self.parts.topics.stats(), &payload)
    }

    fn publish_camera_states(&mut self) {
        let states = self.parts.board.states_seen(self.health.stall());
        for (i, state) in states.into_iter().enumerate() {
            if self.camera_states.get(i).and_then(|s| s.as_ref()) == Some(&state) {
                continue;
            }
            let error = match &state {
                CameraState::Retrying(e) => Some(e.clone()),
                CameraState::Stalled => Some(format!(
                    "no frame for more than {} s",
                    self.health.stall().as_secs_f32()
                )),
                _ => None,
            };
            let payload = json!({"state": state.name(), "error": error});
            let topic = self
                .parts
                .topics
                .camera_status(self.parts.config.camera[i].name());
            self.parts
                .sink
                .send(Message::state(topic, payload.to_string().into_bytes()));
            self.camera_states[i] = Some(state);
        }
    }

    fn respond(&self, request: &Requester, answer: Answer) {
        match (request.origin, answer) {
            (Origin::Mqtt, answer) => {
                self.parts
                    .sink
                    .send(response(&self.parts.topics, request, answer))
            }
            (Origin::Signal, Ok(data)) => log::info!("{} done: {data}", request.command),
            (Origin::Signal, Err(e)) => log::error!("{} failed: {e}", request.command),
        }
    }

    /// A reply handle for `request`, counted until it is answered.
    fn reply(&mut self, request: Requester) -> Reply {
        self.outstanding += 1;
        Reply::new(request, self.parts.events.clone())
    }

    fn on_incoming(&mut self, message: Incoming) {
        let mut request = match message {
            Incoming::HomeAssistantOnline => {
                let _ = self.parts.to_worker.send(Control::Republish);
                return;
            }
            Incoming::BadRequest { command, error } => {
                log::warn!("request {command:?} refused: {error}");
                return self.parts.sink.send(events::response(
                    &self.parts.topics,
                    &command,
                    None,
                    Err(error),
                ));
            }
            Incoming::Request(r) => r,
        };
        let requester = Requester {
            command: request.command.clone(),
            transaction: request.transaction.clone(),
            origin: Origin::Mqtt,
        };
        if let Err(e) = self.parts.authoriser.check(&mut request) {
            log::warn!("request {:?} refused: {e}", request.command);
            return self.respond(&requester, Err(e));
        }
        let cameras: Vec<&str> = self.parts.config.camera.iter().map(|c| c.name()).collect();
        match Command::parse(&request, &cameras) {
            Ok(command) => self.execute(command, requester),
            Err(e) => self.respond(&requester, Err(e)),
        }
    }

    fn execute(&mut self, command: Command, requester: Requester) {
        let control = match command {
            Command::ReloadGallery if self.reloads.running => {
                return self.reloads.waiting.push(requester);
            }
            Command::ReloadGallery => return self.start_reload(requester, vec![]),
            Command::Enrol {
                person,
                camera,
                frames,
                replace,
                timeout_s,
            } => Control::Enrol {
                camera,
                enrolment: Enrolment::new(&person, frames, replace),
                timeout: Duration::from_secs(timeout_s),
                reply: self.reply(requester),
            },
            Command::Snapshot { camera } => Control::Snapshot {
                camera,
                reply: self.reply(requester),
            },
        };
        // A worker that is gone drops the reply, which answers "dropped".
        let _ = self.parts.to_worker.send(control);
    }

    /// Reloads the configuration's gallery for `requester`, whose answer also goes to `riders`.
    fn start_reload(&mut self, requester: Requester, riders: Vec<Requester>) {
        match self.parts.source.load() {
            Ok(config) => {
                let config = Box::new(self.with_runtime_parts(config));
                let reply = self.reply(requester);
                let _ = self.parts.to_worker.send(Control::Resync(config, reply));
                self.reloads.running = true;
                self.reloads.riders = riders;
            }
            Err(e) => {
                let error = face_edge_core::command::CommandError::Failed(e.to_string());
                for r in std::iter::once(requester).chain(riders) {
                    self.respond(&r, Err(error.clone()));
                }
            }
        }
    }

    /// The running reload is done: answers everyone it served, then starts the one the requests that
    /// came meanwhile wait for.
    fn reload_answered(&mut self, request: Requester, answer: Answer) {
        for r in std::mem::take(&mut self.reloads.riders) {
            self.respond(&r, answer.clone());
        }
        self.respond(&request, answer);
        self.reloads.running = false;
        let mut waiting = std::mem::take(&mut self.reloads.waiting).into_iter();
        if let Some(first) = waiting.next() {
            self.start_reload(first, waiting.collect());
        }
    }

    /// A freshly loaded config with the parts that only a restart changes kept as they run now.
    fn with_runtime_parts(&self, config: Config) -> Config {
        Config {
            mqtt: self.parts.config.mqtt.clone(),
            service: self.parts.config.service.clone(),
            ..config
        }
    }

    /// SIGHUP: gallery and tracking apply live; a changed camera is restarted alone; changed models are
    /// reloaded (and the gallery re-embedded); MQTT and service settings need a restart.
    fn reload(&mut self) {
        let new = match self.parts.source.load() {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload refused, keeping the running configuration: {e:#}");
                return;
            }
        };
        log::info!("reloading {}", self.parts.source.describe());
        let running = &self.parts.config;
        if new.mqtt.as_ref().map(|m| &m.url) != running.mqtt.as_ref().map(|m| &m.url)
            || new.service != running.service
            || new.state_dir != running.state_dir
        {
            log::warn!("changes to [mqtt], [service] and state_dir take effect after a restart");
        }
        // A checked variant made since (or removed) changes the models with the same configuration.
        let choices = model_choices(&new, &self.parts.source.overrides);
        let other_models = choices
            .as_ref()
            .is_ok_and(|(_, choices)| choices.ids() != self.parts.models);
        if new.models != running.models || new.detection != running.detection || other_models {
            let pipeline =
                choices.and_then(|(catalog, choices)| pipeline_with(&catalog, &new, &choices));
            match pipeline {
                Ok(p) => {
                    self.parts.models = (p.detector.id().to_string(), p.embedder.id().to_string());
                    let _ = self.parts.to_worker.send(Control::SetPipeline(Box::new(p)));
                }
                Err(e) => log::error!("reload: models not changed: {e:#}"),
            }
        }
        if new.camera != running.camera {
            self.restart_cameras(&new);
        }
        let reply = self.reply(Requester {
            command: "reload".into(),
            transaction: None,
            origin: Origin::Signal,
        });
        let config = Box::new(self.with_runtime_parts(new.clone()));
        let _ = self.parts.to_worker.send(Control::Resync(config, reply));
        self.parts.config = self.with_runtime_parts(new);
    }

    /// Restarts the cameras whose configuration changed, or all of them when cameras were added or
    /// removed (a new frame board).
    fn restart_cameras(&mut self, new: &Config) {
        let running = &self.parts.config.camera;
        let same_layout = new.camera.len() == running.len()
            && new
                .camera
                .iter()
                .zip(running)
                .all(|(a, b)| a.name() == b.name());
        if same_layout {
            for (i, (a, b)) in new.camera.iter().zip(running).enumerate() {
                if a != b {
                    log::info!("camera {}: configuration changed; restarting it", a.name());
                    if let Some(c) = self.parts.captures[i].take() {
                        c.stop();
                    }
                    self.parts.captures[i] = Some(Capture::start(
                        a.clone(),
                        i,
                        self.parts.board.clone(),
                        health::helper_stall(self.health.stall()),
                    ));
                }
            }
        } else {
            log::info!("cameras added or removed; restarting all cameras");
            for c in self.parts.captures.drain(..).flatten() {
                c.stop();
            }
            self.parts.board = frame_board(new.camera.len(), &self.parts.events);
            self.parts.captures = start_captures(
                &new.camera,
                &self.parts.board,
                health::helper_stall(self.health.stall()),
            );
            self.camera_states = vec![None; new.camera.len()];
        }
        // Restarted cameras are not done; the worker reports again once they are.
        self.cameras_done = false;
        let _ = self.parts.to_worker.send(Control::SetCameras(
            Box::new(new.clone()),
            self.parts.board.clone(),
        ));
    }

    /// Stops the worker (its open tracks end with `left`), answers what it left unanswered and flushes
    /// the events.
    pub fn shutdown(mut self, inbox: &Receiver<Event>) {
        health::notify_stopping();
        let _ = self.parts.to_worker.send(Control::Stop);
        // Capture threads may sit in a blocking read (a V4L2 device): tell them to stop now, and
        // after the flush kill what an exec helper left running, without waiting for the threads.
        let captures: Vec<Capture> = self.parts.captures.drain(..).flatten().collect();
        for c in &captures {
            c.request_stop();
        }
        let parts = self.parts;
        let _ = parts.worker.join();
        for event in inbox.try_iter() {
            if let Event::Answered { request, answer } = event
                && request.origin == Origin::Mqtt
            {
                parts.sink.send(response(&parts.topics, &request, answer));
            }
        }
        match Arc::try_unwrap(parts.sink) {
            Ok(sink) => sink.shutdown(Duration::from_secs(3)),
            Err(_) => log::warn!("events still referenced at shutdown; not flushed"),
        }
        for c in captures {
            c.finish_within(crate::camera::exec::TERM_GRACE);
        }
    }
}

/// The message on `response/<command>` that answers `request`.
fn response(topics: &Topics, request: &Requester, answer: Answer) -> Message {
    events::response(
        topics,
        &request.command,
        request.transaction.as_ref(),
        answer.map_err(|e| e.to_string()),
    )
}
