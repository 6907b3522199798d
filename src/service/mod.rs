//! `face-edge run`: the service. Loads config and models, syncs the gallery, starts the capture threads,
//! the inference worker and the MQTT connection (or stdout), then runs one event loop (`control`):
//! signals, requests from MQTT, the worker's answers, camera state changes and a one-second tick all
//! arrive on one channel.

mod announced;
mod control;
pub mod health;
mod worker;

use crate::camera::{Capture, FrameBoard};
use crate::config::{CameraConfig, Config, FilesCamera, VariantChoice};
use crate::enrol::load_gallery;
use crate::events::{Topics, slug};
use crate::models::{Catalog, ModelChoice, load_pipeline};
use crate::mqtt::{Incoming, IncomingHandler, Publisher, Sink};
use crate::pipeline::FacePipeline;
use anyhow::Context;
use face_edge_core::authorise::Authoriser;
use face_edge_core::command::CommandError;
use serde_json::Value;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use worker::{Control, Worker, WorkerSetup, WorkerStats};

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
    /// `--log-level` or RUST_LOG chose the log level: the config's `service.log_level` yields to them.
    pub log_level_fixed: bool,
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
            None => Config::without_file(),
        };
        let o = &self.overrides;
        if let Some(e) = &o.embedder {
            // A model named on the command line runs as named, not a variant of it.
            config.models.embedder = e.clone();
            config.models.variant = VariantChoice::None;
        }
        if let Some(g) = &o.gallery {
            config.gallery.dir = Some(g.clone());
        }
        if let Some(s) = &o.state_dir {
            config.state_dir = s.clone();
        }
        if let Some(files) = &o.files {
            let fps = o.files_fps.unwrap_or(4.0);
            anyhow::ensure!(
                fps.is_finite() && fps > 0.0,
                "--fps {fps}: must be a positive number"
            );
            let repeat = (o.files_hold.unwrap_or(0.0) * fps).round().max(1.0) as u32;
            config.camera.retain(|c| c.name() != "files");
            config.camera.push(CameraConfig::Files(FilesCamera {
                name: "files".into(),
                path: files.clone(),
                looping: false,
                repeat,
                fps,
                detect_fps: fps,
            }));
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

/// Everything the service loop reacts to, on one channel.
enum Event {
    /// SIGTERM, SIGINT or SIGHUP.
    Signal(i32),
    /// A request or Home Assistant's birth message from the broker.
    Mqtt(Incoming),
    /// The worker finished a request.
    Answered { request: Requester, answer: Answer },
    /// A camera changed state (opening, streaming, retrying, finished).
    CameraChanged,
    /// Every camera has finished and its last frame was processed.
    CamerasDone,
    /// Once a second: statistics, STATUS= and the watchdog.
    Tick,
}

/// The outcome of a request: data for the response, or why it failed.
type Answer = Result<Value, CommandError>;

/// Who asked: the command (the MQTT spelling, also the response topic), its transaction, and whether
/// the answer goes back over MQTT (a request) or only to the log (SIGHUP: nobody asked on the broker).
#[derive(Debug, Clone)]
struct Requester {
    command: String,
    transaction: Option<Value>,
    origin: Origin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Mqtt,
    Signal,
}

/// Where the worker sends the answer to one request. Dropped unanswered, it answers "dropped", so the
/// service never waits for an answer that cannot come.
pub struct Reply {
    request: Option<Requester>,
    events: Sender<Event>,
}

impl Reply {
    fn new(request: Requester, events: Sender<Event>) -> Reply {
        Reply {
            request: Some(request),
            events,
        }
    }

    pub fn send(mut self, answer: Answer) {
        self.answer(answer);
    }

    fn answer(&mut self, answer: Answer) {
        if let Some(request) = self.request.take() {
            let _ = self.events.send(Event::Answered { request, answer });
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.answer(Err(CommandError::Failed("dropped".into())));
    }
}

/// The MQTT connection delivers into the service loop.
struct ToServiceLoop(Sender<Event>);

impl IncomingHandler for ToServiceLoop {
    fn handle(&self, message: Incoming) {
        let _ = self.0.send(Event::Mqtt(message));
    }
}

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

/// The models catalog the configuration and overrides point at (--models-dir / FACE_EDGE_MODELS_DIR,
/// then the config's models.dir, then the default), and the detector and embedder that run for it:
/// the configured ones or their checked int8 variants (`Catalog::detector_for`, `embedder_for`).
fn model_choices(config: &Config, overrides: &Overrides) -> anyhow::Result<(Catalog, Choices)> {
    let catalog = Catalog::load(&Catalog::resolve_dir(
        overrides.models_dir.as_deref(),
        config.models.dir.as_deref(),
    ))?;
    let models = &config.models;
    let variants = models.variant == VariantChoice::CheckedInt8Qdq;
    let choices = Choices {
        detector: catalog.detector_for(&models.detector, variants),
        embedder: catalog.embedder_for(&models.embedder, models.precision, variants),
    };
    Ok((catalog, choices))
}

/// The detector and embedder that run (`model_choices`).
#[derive(Debug, Clone, PartialEq)]
pub struct Choices {
    pub detector: ModelChoice,
    pub embedder: ModelChoice,
}

impl Choices {
    /// The ids that run, to compare with the running pipeline's.
    pub fn ids(&self) -> (String, String) {
        (self.detector.id.clone(), self.embedder.id.clone())
    }
}

fn pipeline_for(config: &Config, overrides: &Overrides) -> anyhow::Result<FacePipeline> {
    let (catalog, choices) = model_choices(config, overrides)?;
    pipeline_with(&catalog, config, &choices)
}

/// The models `choices` names (as `model_choices` resolved them) from `catalog`, with the
/// configuration's detection settings and precision.
fn pipeline_with(
    catalog: &Catalog,
    config: &Config,
    choices: &Choices,
) -> anyhow::Result<FacePipeline> {
    for note in [choices.detector.note(), choices.embedder.note()]
        .into_iter()
        .flatten()
    {
        log::info!("{note}");
    }
    Ok(load_pipeline(
        catalog,
        &choices.detector.id,
        &config.detection,
        &choices.embedder.id,
        config.models.precision,
    )?)
}

/// The capture threads of `cameras`, writing into `board`; an exec helper silent for `stall` (when
/// set) is restarted.
fn start_captures(
    cameras: &[CameraConfig],
    board: &Arc<FrameBoard>,
    stall: Option<Duration>,
) -> Vec<Option<Capture>> {
    cameras
        .iter()
        .enumerate()
        .map(|(i, c)| Some(Capture::start(c.clone(), i, board.clone(), stall)))
        .collect()
}

/// A frame board whose state changes arrive in the service loop.
fn frame_board(cameras: usize, events: &Sender<Event>) -> Arc<FrameBoard> {
    let events = events.clone();
    FrameBoard::new(
        cameras,
        Some(Box::new(move || {
            let _ = events.send(Event::CameraChanged);
        })),
    )
}

/// Signals and the tick, forwarded into the service loop by two small threads.
fn start_event_sources(events: &Sender<Event>) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let tx = events.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send(Event::Signal(s)).is_err() {
                    break;
                }
            }
        })?;
    let tx = events.clone();
    std::thread::Builder::new()
        .name("tick".into())
        .spawn(move || {
            while tx.send(Event::Tick).is_ok() {
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
    Ok(())
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
    if let Some(level) = config.service.log_level
        && !source.overrides.log_level_fixed
    {
        log::set_max_level(level);
    }
    let (events, inbox) = mpsc::channel();
    start_event_sources(&events).map_err(startup)?;
    let mut progress = health::StartProgress::default();
    progress.loading_models();
    let mut pipeline = pipeline_for(&config, &source.overrides).map_err(startup)?;
    let models = (
        pipeline.detector.id().to_string(),
        pipeline.embedder.id().to_string(),
    );
    log::info!("models: detector {}, embedder {}", models.0, models.1);
    let loaded = load_gallery(&config, &mut pipeline, |done, total| {
        progress.update(done, total)
    })
    .context("gallery store")
    .map_err(startup)?;
    log::info!(
        "gallery: {} people, threshold {:.3}",
        loaded.names.len(),
        loaded.gallery.threshold()
    );
    let authoriser = authoriser(&config).map_err(startup)?;
    let topics = Topics::new(&node_id(&config), &config.discovery_prefix());
    let sink = Arc::new(start_sink(&config, &topics, &events).map_err(startup)?);
    let board = frame_board(config.camera.len(), &events);
    let captures = start_captures(
        &config.camera,
        &board,
        health::helper_stall(config.service.stall()),
    );
    let stats = Arc::new(Mutex::new(WorkerStats::default()));
    let setup = WorkerSetup {
        config: config.clone(),
        pipeline,
        gallery: loaded.gallery,
        board: board.clone(),
        sink: sink.clone(),
        topics: topics.clone(),
        stats: stats.clone(),
        events: events.clone(),
    };
    let (to_worker, worker) = start_worker(setup, loaded.names).map_err(startup)?;
    let parts = control::Parts {
        models,
        source,
        config,
        board,
        captures,
        to_worker,
        worker,
        stats,
        sink,
        topics,
        events,
        authoriser,
    };
    let mut service = control::Service::new(parts);
    let ending = service.run(&inbox);
    service.shutdown(&inbox);
    Ok(ending)
}

/// The inference thread, after it has announced the device with the enrolled people (`names`).
fn start_worker(
    setup: WorkerSetup,
    names: BTreeMap<String, String>,
) -> anyhow::Result<(Sender<Control>, JoinHandle<()>)> {
    let mut worker = Worker::new(setup);
    worker.announce(names);
    let (to_worker, inbox) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("inference".into())
        .spawn(move || worker.run(inbox))?;
    Ok((to_worker, thread))
}

/// The request gate from `[mqtt.requests]` and the token it names.
fn authoriser(config: &Config) -> anyhow::Result<Authoriser> {
    let Some(mqtt) = &config.mqtt else {
        return Ok(Authoriser::new(None, Default::default()));
    };
    let token = crate::mqtt::read_request_token(mqtt)?;
    if token.is_none() {
        log::warn!(
            "no request token ([mqtt.requests] token_file or the credential request-token): MQTT requests are refused"
        );
    }
    Ok(Authoriser::new(token, mqtt.requests.allowed()))
}

/// The MQTT connection, or stdout without a broker.
fn start_sink(config: &Config, topics: &Topics, events: &Sender<Event>) -> anyhow::Result<Sink> {
    Ok(match &config.mqtt {
        Some(m) => Sink::Mqtt(Publisher::start(
            m,
            topics.clone(),
            ToServiceLoop(events.clone()),
        )?),
        None => {
            log::info!("no [mqtt] section: events go to stdout");
            Sink::Stdout
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Requester {
        Requester {
            command: "snapshot".into(),
            transaction: Some(serde_json::json!(7)),
            origin: Origin::Mqtt,
        }
    }

    fn answers(inbox: &std::sync::mpsc::Receiver<Event>) -> Vec<(String, Answer)> {
        inbox
            .try_iter()
            .filter_map(|e| match e {
                Event::Answered { request, answer } => Some((request.command, answer)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_reply_answers_once() {
        let (events, inbox) = mpsc::channel();
        Reply::new(request(), events).send(Ok(serde_json::json!({"camera": "hall"})));
        let got = answers(&inbox);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "snapshot");
        assert!(got[0].1.is_ok());
    }

    #[test]
    fn a_reply_dropped_unanswered_answers_dropped() {
        let (events, inbox) = mpsc::channel();
        drop(Reply::new(request(), events));
        let got = answers(&inbox);
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].1.as_ref().unwrap_err().to_string(),
            "dropped",
            "the service would otherwise wait for it forever"
        );
    }

    #[test]
    fn the_files_option_adds_a_typed_files_camera() {
        let source = ConfigSource {
            path: None,
            overrides: Overrides {
                files: Some("/photos/*.jpg".into()),
                files_fps: Some(4.0),
                files_hold: Some(2.0),
                ..Overrides::default()
            },
        };
        let config = source.load().unwrap();
        assert_eq!(
            config.camera,
            vec![CameraConfig::Files(FilesCamera {
                name: "files".into(),
                path: "/photos/*.jpg".into(),
                looping: false,
                repeat: 8,
                fps: 4.0,
                detect_fps: 4.0,
            })]
        );
        let bad = ConfigSource {
            path: None,
            overrides: Overrides {
                files: Some("x".into()),
                files_fps: Some(0.0),
                ..Overrides::default()
            },
        };
        assert!(bad.load().unwrap_err().to_string().contains("--fps"));
    }
}
