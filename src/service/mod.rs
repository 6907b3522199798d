//! `face-edge run`: the service. Loads config and models, syncs the gallery, starts the capture threads,
//! the inference worker and the MQTT connection (or stdout), then runs the control loop: signals
//! (SIGTERM/SIGINT stop, SIGHUP reloads), requests from MQTT, statistics, systemd notifications and the
//! watchdog.

pub mod health;
pub mod worker;

use crate::camera::{CameraState, Capture, FrameBoard};
use crate::config::Config;
use crate::detect::DetectSettings;
use crate::enrol::{collect_sources, gallery_from_store, sync};
use crate::events::{self, Message, Topics, slug};
use crate::models::Catalog;
use crate::mqtt::{Incoming, Publisher, Sink};
use crate::pipeline::FacePipeline;
use anyhow::Context;
use serde_json::{Value, json};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use worker::{Control, Worker, WorkerStats};

/// Command-line choices that override the config file (or stand in for one).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub models_dir: Option<PathBuf>,
    pub embedder: Option<String>,
    pub gallery: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// Adds a `files` camera named "files" reading this directory or glob at `files_fps`.
    pub files: Option<String>,
    pub files_fps: Option<f32>,
    /// Seconds each --files image is shown.
    pub files_hold: Option<f32>,
}

/// Where the configuration comes from; loading it again is a reload.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// None: defaults plus the overrides.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut config = match &self.path {
            Some(p) => Config::load(p)?,
            None => Config::default(),
        };
        let o = &self.overrides;
        if let Some(e) = &o.embedder {
            config.models.embedder = e.clone();
        }
        if let Some(g) = &o.gallery {
            config.gallery.dir = Some(g.clone());
        }
        if let Some(s) = &o.state_dir {
            config.state_dir = s.clone();
        }
        if let Some(files) = &o.files {
            let fps = o.files_fps.unwrap_or(4.0);
            let repeat = (o.files_hold.unwrap_or(0.0) * fps).round().max(1.0) as u32;
            let text = format!(
                "[[camera]]\nname = \"files\"\nkind = \"files\"\npath = {files:?}\nfps = {fps}\ndetect_fps = {fps}\nrepeat = {repeat}\n"
            );
            let camera = Config::parse(&text, Path::new("command line"))?
                .camera
                .remove(0);
            config.camera.retain(|c| c.name != "files");
            config.camera.push(camera);
        }
        Ok(config)
    }

    fn describe(&self) -> String {
        self.path
            .as_ref()
            .map_or("the command line".to_string(), |p| p.display().to_string())
    }
}

/// How the service ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// SIGTERM or SIGINT.
    Stopped,
    /// Every camera was a finite source and is done.
    SourcesFinished,
}

/// A model or configuration problem found at start: systemd should not restart into it.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct StartupError(pub anyhow::Error);

fn node_id(config: &Config) -> String {
    config
        .mqtt
        .as_ref()
        .and_then(|m| m.node_id.clone())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            slug(&host)
        })
}

fn load_pipeline(config: &Config, overrides: &Overrides) -> anyhow::Result<FacePipeline> {
    // --models-dir / FACE_EDGE_MODELS_DIR, then the config's models.dir, then the default.
    let catalog = Catalog::load(&Catalog::resolve_dir(
        overrides.models_dir.as_deref(),
        config.models.dir.as_deref(),
    ))?;
    let settings = DetectSettings {
        score_threshold: config.detection.score_threshold,
        max_side: config.detection.max_side,
    };
    Ok(FacePipeline::load(
        &catalog,
        &config.models.detector,
        &settings,
        &config.models.embedder,
        config.models.precision,
    )?)
}

/// A request waiting for the worker: (command, transaction, where the answer will come).
type PendingReply = (String, Option<Value>, Receiver<Result<Value, String>>);

struct Running {
    source: ConfigSource,
    config: Config,
    board: Arc<FrameBoard>,
    captures: Vec<Option<Capture>>,
    control: Sender<Control>,
    worker: Option<std::thread::JoinHandle<Worker>>,
    stats: Arc<Mutex<WorkerStats>>,
    sink: Arc<Sink>,
    topics: Topics,
    camera_states: Vec<Option<CameraState>>,
    /// Requests waiting for the worker's answer: (command, transaction, reply).
    pending: Vec<PendingReply>,
    started: Instant,
}

pub fn run(source: ConfigSource) -> Result<Ending, StartupError> {
    let startup = |e: anyhow::Error| StartupError(e);
    let config = source.load().map_err(startup)?;
    if config.camera.is_empty() {
        return Err(startup(anyhow::anyhow!(
            "{}: no [[camera]] configured (or pass --files)",
            source.describe()
        )));
    }
    if std::env::var_os("RUST_LOG").is_none()
        && let Some(level) = config
            .service
            .log_level
            .as_deref()
            .and_then(|l| l.parse::<log::LevelFilter>().ok())
    {
        log::set_max_level(level);
    }
    let (signal_tx, signal_rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| startup(e.into()))?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            if signal_tx.send(s).is_err() {
                break;
            }
        }
    });

    let mut pipeline = load_pipeline(&config, &source.overrides).map_err(startup)?;
    log::info!(
        "models: detector {}, embedder {}",
        pipeline.detector.id(),
        pipeline.embedder.id()
    );
    let sources = collect_sources(&config);
    for w in &sources.warnings {
        log::warn!("{w}");
    }
    let (data, report) = sync(
        &sources.people,
        &mut pipeline,
        config.gallery.enrol_policy,
        &config.state_dir,
        |_, _| {},
    )
    .context("gallery store")
    .map_err(startup)?;
    for (person, path, reason) in &report.rejected {
        log::warn!("{path}: not enrolled for {person}: {reason}");
    }
    let gallery = gallery_from_store(&data, pipeline.embedder.spec().output.threshold, &config);
    let names = data
        .people
        .iter()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    log::info!(
        "gallery: {} people, threshold {:.3}",
        data.people.len(),
        gallery.threshold()
    );

    let topics = Topics::new(
        &node_id(&config),
        config
            .mqtt
            .as_ref()
            .map_or("homeassistant", |m| &m.discovery_prefix),
    );
    let (incoming_tx, incoming_rx) = mpsc::channel();
    let sink = Arc::new(match &config.mqtt {
        Some(m) => Sink::Mqtt(
            Publisher::start(m, topics.clone(), incoming_tx).map_err(|e| startup(e.into()))?,
        ),
        None => {
            log::info!("no [mqtt] section: events go to stdout");
            Sink::Stdout
        }
    });

    let board = FrameBoard::new(config.camera.len());
    let captures = config
        .camera
        .iter()
        .enumerate()
        .map(|(i, c)| Some(Capture::start(c.clone(), i, board.clone())))
        .collect();
    let stats = Arc::new(Mutex::new(WorkerStats::default()));
    let mut worker = Worker::new(
        config.clone(),
        pipeline,
        gallery,
        names,
        board.clone(),
        sink.clone(),
        topics.clone(),
        stats.clone(),
    );
    worker.announce();
    let (control, control_rx) = mpsc::channel();
    let worker = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || worker.run(control_rx))
        .map_err(|e| startup(e.into()))?;

    let mut running = Running {
        source,
        camera_states: vec![None; config.camera.len()],
        config,
        board,
        captures,
        control,
        worker: Some(worker),
        stats,
        sink,
        topics,
        pending: vec![],
        started: Instant::now(),
    };
    running.wait_for_cameras(Duration::from_secs(10));
    health::notify_ready();
    let ending = running.control_loop(&signal_rx, &incoming_rx);
    running.shutdown();
    Ok(ending)
}

impl Running {
    /// READY=1 waits until every camera has either opened or failed once (so "active" means the
    /// cameras were tried), at most `limit`.
    fn wait_for_cameras(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline && self.board.states().contains(&CameraState::Opening) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn control_loop(&mut self, signals: &Receiver<i32>, incoming: &Receiver<Incoming>) -> Ending {
        let mut health =
            health::Health::new(Duration::from_secs_f32(self.config.service.stall_timeout_s));
        let stats_interval = Duration::from_secs(
            self.config
                .mqtt
                .as_ref()
                .map_or(60, |m| m.stats_interval_s.max(1)),
        );
        let mut next_stats = Instant::now() + stats_interval;
        let mut frames_at_last_stats = 0u64;
        loop {
            match signals.recv_timeout(Duration::from_millis(100)) {
                Ok(SIGHUP) => self.reload(),
                Ok(_) => return Ending::Stopped,
                Err(_) => {}
            }
            while let Ok(message) = incoming.try_recv() {
                self.on_incoming(message);
            }
            self.answer_pending();
            self.publish_camera_states();
            let stats = self.stats.lock().expect("stats").clone();
            health.tick(&stats, &self.board, &self.status_line(&stats));
            if Instant::now() >= next_stats {
                let fps =
                    (stats.frames - frames_at_last_stats) as f64 / stats_interval.as_secs_f64();
                frames_at_last_stats = stats.frames;
                next_stats += stats_interval;
                self.sink.send(self.stats_message(&stats, fps));
            }
            let states = self.board.states();
            if !states.is_empty()
                && states.iter().all(|s| *s == CameraState::Finished)
                && self.pending.is_empty()
            {
                // Give the worker a moment to process the last frames.
                std::thread::sleep(Duration::from_millis(500));
                if self
                    .board
                    .slots
                    .lock()
                    .expect("frame board")
                    .iter()
                    .all(|s| s.latest.is_none())
                {
                    log::info!("every camera has finished; stopping");
                    return Ending::SourcesFinished;
                }
            }
        }
    }

    fn status_line(&self, stats: &WorkerStats) -> String {
        let states = self.board.states();
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
        let link = self.sink.status();
        let slots = self.board.slots.lock().expect("frame board");
        let cameras: serde_json::Map<String, Value> = self
            .config
            .camera
            .iter()
            .zip(slots.iter())
            .map(|(c, s)| (c.name.clone(), json!({"state": state_name(&s.state), "frames": s.frames, "dropped": s.dropped})))
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
        Message::event(self.topics.stats(), &payload)
    }

    fn publish_camera_states(&mut self) {
        let states = self.board.states();
        for (i, state) in states.into_iter().enumerate() {
            if self.camera_states.get(i).and_then(|s| s.as_ref()) != Some(&state) {
                let error = match &state {
                    CameraState::Retrying(e) => Some(e.clone()),
                    _ => None,
                };
                let payload = json!({"state": state_name(&state), "error": error});
                let topic = self.topics.camera_status(&self.config.camera[i].name);
                self.sink
                    .send(Message::state(topic, payload.to_string().into_bytes()));
                self.camera_states[i] = Some(state);
            }
        }
    }

    fn on_incoming(&mut self, message: Incoming) {
        match message {
            Incoming::HomeAssistantOnline => {
                let _ = self.control.send(Control::Republish);
            }
            Incoming::BadRequest { command, error } => {
                self.sink
                    .send(events::response(&self.topics, &command, None, Err(error)))
            }
            Incoming::Request(r) => {
                let (tx, rx) = mpsc::channel();
                let body = &r.body;
                let control = match r.command.as_str() {
                    "reload_gallery" => match self.source.load() {
                        Ok(config) => Ok(Control::Resync(
                            Box::new(self.with_runtime_parts(config)),
                            tx,
                        )),
                        Err(e) => Err(e.to_string()),
                    },
                    "enroll" => {
                        let person = body
                            .get("person")
                            .or(body.get("name"))
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        let camera = body
                            .get("camera")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .or_else(|| {
                                (self.config.camera.len() == 1)
                                    .then(|| self.config.camera[0].name.clone())
                            });
                        let frames =
                            body.get("frames").and_then(Value::as_u64).unwrap_or(5) as usize;
                        match (person, camera) {
                            (Some(person), Some(camera)) => Ok(Control::Enroll {
                                person,
                                camera,
                                frames,
                                reply: tx,
                            }),
                            (None, _) => Err("enroll needs \"person\"".to_string()),
                            (_, None) => {
                                Err("enroll needs \"camera\" when there are several".to_string())
                            }
                        }
                    }
                    "snapshot" => match body.get("camera").and_then(Value::as_str) {
                        Some(camera) => Ok(Control::Snapshot {
                            camera: camera.to_string(),
                            reply: tx,
                        }),
                        None => Err("snapshot needs \"camera\"".to_string()),
                    },
                    other => Err(format!(
                        "unknown command {other:?} (reload_gallery, enroll, snapshot)"
                    )),
                };
                match control {
                    Ok(c) => {
                        let _ = self.control.send(c);
                        self.pending.push((r.command, r.transaction, rx));
                    }
                    Err(e) => self.sink.send(events::response(
                        &self.topics,
                        &r.command,
                        r.transaction.as_ref(),
                        Err(e),
                    )),
                }
            }
        }
    }

    fn answer_pending(&mut self) {
        let mut still = vec![];
        for (command, transaction, rx) in self.pending.drain(..) {
            match rx.try_recv() {
                Ok(result) => self.sink.send(events::response(
                    &self.topics,
                    &command,
                    transaction.as_ref(),
                    result,
                )),
                Err(mpsc::TryRecvError::Empty) => still.push((command, transaction, rx)),
                Err(mpsc::TryRecvError::Disconnected) => self.sink.send(events::response(
                    &self.topics,
                    &command,
                    transaction.as_ref(),
                    Err("dropped".into()),
                )),
            }
        }
        self.pending = still;
    }

    /// A freshly loaded config with the parts that only a restart changes kept as they run now.
    fn with_runtime_parts(&self, config: Config) -> Config {
        Config {
            mqtt: self.config.mqtt.clone(),
            service: self.config.service.clone(),
            ..config
        }
    }

    /// SIGHUP: gallery and tracking apply live; a changed camera is restarted alone; changed models are
    /// reloaded (and the gallery re-embedded); MQTT and service settings need a restart.
    fn reload(&mut self) {
        let new = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload refused, keeping the running configuration: {e:#}");
                return;
            }
        };
        log::info!("reloading {}", self.source.describe());
        if new.mqtt.as_ref().map(|m| &m.url) != self.config.mqtt.as_ref().map(|m| &m.url)
            || new.service != self.config.service
            || new.state_dir != self.config.state_dir
        {
            log::warn!("changes to [mqtt], [service] and state_dir take effect after a restart");
        }
        if new.models != self.config.models
            || new.detection.max_side != self.config.detection.max_side
            || new.detection.score_threshold != self.config.detection.score_threshold
        {
            match load_pipeline(&new, &self.source.overrides) {
                Ok(p) => {
                    let _ = self.control.send(Control::SetPipeline(Box::new(p)));
                }
                Err(e) => log::error!("reload: models not changed: {e:#}"),
            }
        }
        if new.camera != self.config.camera {
            self.restart_cameras(&new);
        }
        let (tx, rx) = mpsc::channel();
        let _ = self.control.send(Control::Resync(
            Box::new(self.with_runtime_parts(new.clone())),
            tx,
        ));
        self.pending.push(("reload".into(), None, rx));
        self.config = self.with_runtime_parts(new);
    }

    fn restart_cameras(&mut self, new: &Config) {
        let same_layout = new.camera.len() == self.config.camera.len()
            && new
                .camera
                .iter()
                .zip(&self.config.camera)
                .all(|(a, b)| a.name == b.name);
        if same_layout {
            for (i, (a, b)) in new.camera.iter().zip(&self.config.camera).enumerate() {
                if a != b {
                    log::info!("camera {}: configuration changed; restarting it", a.name);
                    if let Some(c) = self.captures[i].take() {
                        c.stop();
                    }
                    self.captures[i] = Some(Capture::start(a.clone(), i, self.board.clone()));
                }
            }
            let _ = self.control.send(Control::SetCameras(
                Box::new(new.clone()),
                self.board.clone(),
            ));
        } else {
            log::info!("cameras added or removed; restarting all cameras");
            for c in self.captures.drain(..).flatten() {
                c.stop();
            }
            self.board = FrameBoard::new(new.camera.len());
            self.captures = new
                .camera
                .iter()
                .enumerate()
                .map(|(i, c)| Some(Capture::start(c.clone(), i, self.board.clone())))
                .collect();
            self.camera_states = vec![None; new.camera.len()];
            let _ = self.control.send(Control::SetCameras(
                Box::new(new.clone()),
                self.board.clone(),
            ));
        }
    }

    fn shutdown(mut self) {
        health::notify_stopping();
        let _ = self.control.send(Control::Stop);
        // Capture threads may sit in a blocking read: tell them to stop but do not wait for them.
        for c in self.captures.drain(..).flatten() {
            c.request_stop();
        }
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        self.answer_pending();
        match Arc::try_unwrap(self.sink) {
            Ok(sink) => sink.shutdown(Duration::from_secs(3)),
            Err(_) => log::warn!("events still referenced at shutdown; not flushed"),
        }
    }
}

fn state_name(s: &CameraState) -> &'static str {
    match s {
        CameraState::Opening => "opening",
        CameraState::Streaming => "streaming",
        CameraState::Retrying(_) => "retrying",
        CameraState::Finished => "finished",
    }
}
