//! The inference thread: takes the newest frame of each camera at its detection rate, decodes it, runs
//! it through that camera's `Recognizer` (the core's policy) and carries out the effects it returns:
//! messages to the sink, enrolment photos to the state directory, gallery syncs. It owns the models, the
//! recognizers and the gallery, so no lock is held while a frame is processed.

use super::{Answer, Event, Reply, announced};
use crate::camera::{CameraState, Frame, FrameBoard};
use crate::config::Config;
use crate::enrol::{collect_sources, enrolled_dir, load_gallery};
use crate::events::{DiscoveryInput, FaceEvent, Message, Topics, discovery};
use crate::mqtt::Sink;
use face_edge_core::command::CommandError;
use face_edge_core::detect::{DetectError, Detection};
use face_edge_core::gallery::Gallery;
use face_edge_core::pipeline::FacePipeline;
use face_edge_core::recognizer::{Effect, Enrolment, FaceModels, Recognizer, RecognizerOptions};
use face_edge_core::report::Reporter;
use image::RgbImage;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What the service loop asks of the inference thread.
pub enum Control {
    /// Re-read the gallery from this configuration (after a reload or a `reload_gallery` request).
    Resync(Box<Config>, Reply),
    /// Republish discovery and every person's state (Home Assistant restarted).
    Republish,
    /// Collect frames of `camera` for `enrolment`; save them if they pass its checks, then resync.
    /// Without a usable face for `timeout`, give up.
    Enrol {
        camera: String,
        enrolment: Enrolment,
        timeout: Duration,
        reply: Reply,
    },
    /// Publish the newest face crop of a camera as its snapshot.
    Snapshot {
        camera: String,
        reply: Reply,
    },
    /// New models (a Resync follows to re-embed the gallery with them).
    SetPipeline(Box<FacePipeline>),
    /// New camera list and, when cameras were added or removed, a new frame board.
    SetCameras(Box<Config>, Arc<FrameBoard>),
    Stop,
}

/// Figures shared with the main loop for STATUS=, stats and the watchdog.
#[derive(Debug, Clone, Default)]
pub struct WorkerStats {
    /// Last time the worker loop ran (a stuck worker stops the watchdog).
    pub heartbeat: Option<Instant>,
    pub frames: u64,
    pub faces_in_view: usize,
    pub detect_ms: f64,
    pub embed_ms: f64,
    pub decode_errors: u64,
    /// Frames not analysed because the scene was still (see `motion`).
    pub still_frames: u64,
    /// Faces embedded since the start.
    pub embeddings: u64,
}

/// One camera as the inference thread sees it: its recognizer and when its next frame is due.
struct CameraRuntime {
    recognizer: Recognizer,
    interval: Duration,
    next_due: Instant,
}

/// The enrolment in progress (its camera's recognizer collects the frames): who is waiting for the
/// answer, and until when.
struct PendingEnrolment {
    camera: String,
    reply: Reply,
    deadline: Instant,
    timeout: Duration,
}

/// Everything the inference thread needs at start.
pub struct WorkerSetup {
    pub config: Config,
    pub pipeline: FacePipeline,
    pub gallery: Gallery,
    pub board: Arc<FrameBoard>,
    pub sink: Arc<Sink>,
    pub topics: Topics,
    pub stats: Arc<Mutex<WorkerStats>>,
    /// The service loop's channel: answers and "every camera is done" go there.
    pub events: Sender<Event>,
}

/// Requests and other controls handled between two rounds of frames.
const CONTROLS_PER_ROUND: usize = 8;

pub struct Worker {
    config: Config,
    pipeline: FacePipeline,
    gallery: Gallery,
    cameras: Vec<CameraRuntime>,
    board: Arc<FrameBoard>,
    sink: Arc<Sink>,
    topics: Topics,
    reporter: Reporter,
    /// Components of the last discovery document (people and cameras that leave are removed).
    discovered: BTreeMap<String, &'static str>,
    /// People whose retained state is on the broker (cleared when they leave the gallery).
    published_people: BTreeSet<String>,
    stats: Arc<Mutex<WorkerStats>>,
    enrolment: Option<PendingEnrolment>,
    events: Sender<Event>,
    /// "Every camera is done" was reported (once).
    drained: bool,
}

/// Exponential moving average, for per-stage milliseconds.
fn ema(old: f64, new: f64) -> f64 {
    if old == 0.0 {
        new
    } else {
        old * 0.9 + new * 0.1
    }
}

fn recognizer_options(config: &Config) -> RecognizerOptions {
    RecognizerOptions {
        snapshots: config.mqtt.as_ref().is_some_and(|m| m.snapshots),
    }
}

fn camera_runtime(c: &crate::config::CameraConfig, config: &Config) -> CameraRuntime {
    CameraRuntime {
        recognizer: Recognizer::new(
            c.name(),
            config.tracking.clone(),
            recognizer_options(config),
        ),
        interval: Duration::from_secs_f32(1.0 / c.detect_fps()),
        next_due: Instant::now(),
    }
}

/// The pipeline with the time spent in detection and embedding counted, for the stats.
struct Timed<'a> {
    pipeline: &'a mut FacePipeline,
    detect: Duration,
    embed: Duration,
}

impl FaceModels for Timed<'_> {
    fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Detection>, DetectError> {
        let started = Instant::now();
        let faces = self.pipeline.detect(frame);
        self.detect += started.elapsed();
        faces
    }

    fn align(&mut self, frame: &RgbImage, face: &Detection) -> Option<RgbImage> {
        let started = Instant::now();
        let crop = self.pipeline.align(frame, face);
        self.embed += started.elapsed();
        crop
    }

    fn embed(&mut self, crop: &RgbImage) -> Option<Vec<f32>> {
        let started = Instant::now();
        let embedding = self.pipeline.embed(crop);
        self.embed += started.elapsed();
        embedding
    }
}

impl Worker {
    pub fn new(setup: WorkerSetup) -> Worker {
        let config = setup.config;
        let reporter = Reporter::new(
            setup.topics.clone(),
            setup.pipeline.embedder.id(),
            SystemTime::now(),
            Duration::from_secs(config.absence_s()),
        );
        let cameras = config
            .camera
            .iter()
            .map(|c| camera_runtime(c, &config))
            .collect();
        Worker {
            discovered: announced::load_discovered(&config.state_dir),
            published_people: announced::load_published_people(&config.state_dir),
            config,
            pipeline: setup.pipeline,
            gallery: setup.gallery,
            cameras,
            board: setup.board,
            sink: setup.sink,
            topics: setup.topics,
            reporter,
            stats: setup.stats,
            enrolment: None,
            events: setup.events,
            drained: false,
        }
    }

    fn send(&self, messages: impl IntoIterator<Item = Message>) {
        for m in messages {
            self.sink.send(m);
        }
    }

    /// Announces the device with these enrolled people (id -> name): every person's state (an empty
    /// retained state for people who left) and discovery when enabled.
    pub fn announce(&mut self, names: BTreeMap<String, String>) {
        // People who left while face-edge was stopped are unknown to the reporter: clear them here.
        let left_while_stopped: Vec<Message> = self
            .published_people
            .iter()
            .filter(|id| !names.contains_key(*id) && !self.reporter.names().contains_key(*id))
            .map(|id| Message::state(self.topics.person_state(id), vec![]))
            .collect();
        let people: BTreeSet<String> = names.keys().cloned().collect();
        let states = self.reporter.set_people(names);
        // Discovery first: Home Assistant drops a departed person's entities before their retained
        // state is cleared, so it never renders the empty payload that clears it.
        self.publish_discovery();
        self.send(left_while_stopped.into_iter().chain(states));
        if people != self.published_people {
            announced::save_published_people(&self.config.state_dir, &people);
            self.published_people = people;
        }
    }

    fn publish_discovery(&mut self) {
        let Some(mqtt) = self.config.mqtt.as_ref().filter(|m| m.discovery) else {
            return;
        };
        let input = DiscoveryInput {
            people: self
                .reporter
                .names()
                .iter()
                .map(|(id, name)| (id.clone(), name.clone()))
                .collect(),
            cameras: self
                .config
                .camera
                .iter()
                .map(|c| c.name().to_string())
                .collect(),
            snapshots: mqtt.snapshots,
            off_delay_s: mqtt.absence_s + mqtt.absence_s / 2,
        };
        let (message, current) = discovery(&self.topics, &input, &self.discovered);
        if current != self.discovered {
            announced::save_discovered(&self.config.state_dir, &current);
        }
        self.discovered = current;
        self.sink.send(message);
    }

    pub fn run(mut self, control: Receiver<Control>) {
        // Alive from the start: the first frame (and the models' first run) can take a while.
        self.stats.lock().expect("stats").heartbeat = Some(Instant::now());
        loop {
            // At most a few requests between two rounds of frames: a flood of requests delays
            // recognition by a round, never stops it.
            let mut more_waiting = false;
            for handled in 0.. {
                if handled == CONTROLS_PER_ROUND {
                    more_waiting = true;
                    break;
                }
                match control.try_recv() {
                    Ok(Control::Stop) => return self.stop(),
                    Ok(c) => self.on_control(c),
                    Err(_) => break,
                }
            }
            if !more_waiting {
                self.wait_for_frames();
            }
            let now = Instant::now();
            for i in 0..self.cameras.len() {
                if now < self.cameras[i].next_due {
                    continue;
                }
                if let Some(frame) = self.board.take(i) {
                    let camera = &mut self.cameras[i];
                    camera.next_due = now.max(camera.next_due) + camera.interval;
                    self.process(i, frame);
                }
            }
            self.end_visits_at_absent_cameras();
            let messages = self.reporter.tick(SystemTime::now());
            self.send(messages);
            let mut s = self.stats.lock().expect("stats");
            s.heartbeat = Some(Instant::now());
            s.faces_in_view = self
                .cameras
                .iter()
                .map(|c| c.recognizer.faces_in_view())
                .sum();
            drop(s);
            self.expire_enrolment();
            self.report_drained();
        }
    }

    /// A camera away (unplugged, its helper restarting) for `lost_after_s` shows nobody: the visits in
    /// its view end (`left`), so a face it shows when it is back is a new visit with its own
    /// `recognized`. A slow pipeline is not an absence: frames keep arriving, tracks go on.
    fn end_visits_at_absent_cameras(&mut self) {
        let lost_after = Duration::from_secs_f32(self.config.tracking.lost_after_s);
        let away = self.board.away_for(lost_after);
        for (i, away) in away.into_iter().enumerate() {
            if away && self.cameras[i].recognizer.faces_in_view() > 0 {
                for effect in self.cameras[i].recognizer.end_all(SystemTime::now()) {
                    self.carry_out(i, effect);
                }
            }
        }
    }

    /// Ends an enrolment that has not collected its frames in time, answering with an error.
    fn expire_enrolment(&mut self) {
        let Some(pending) = self.enrolment.take_if(|p| Instant::now() >= p.deadline) else {
            return;
        };
        let taken = self
            .cameras
            .iter_mut()
            .find(|c| c.recognizer.camera() == pending.camera)
            .and_then(|c| c.recognizer.take_enrolment());
        let (collected, wanted) = taken.map_or((0, 0), |e| (e.collected(), e.wanted()));
        log::warn!(
            "camera {}: enrolment timed out after {} s ({collected} of {wanted} frames)",
            pending.camera,
            pending.timeout.as_secs()
        );
        pending.reply.send(Err(CommandError::TimedOut {
            seconds: pending.timeout.as_secs(),
            collected,
            wanted,
        }));
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Stop => {}
            Control::Republish => {
                self.publish_discovery();
                let messages = self.reporter.all_states();
                self.send(messages);
            }
            Control::Resync(config, reply) => {
                let result = self.resync(*config);
                reply.send(result);
            }
            Control::Enrol {
                camera,
                enrolment,
                timeout,
                reply,
            } => self.start_enrolment(camera, enrolment, timeout, reply),
            Control::Snapshot { camera, reply } => reply.send(self.snapshot(&camera)),
            Control::SetPipeline(p) => {
                log::info!(
                    "models: detector {}, embedder {}",
                    p.detector.id(),
                    p.embedder.id()
                );
                self.pipeline = *p;
                self.reporter.set_model(self.pipeline.embedder.id());
            }
            Control::SetCameras(config, board) => {
                self.board = board;
                self.drained = false;
                self.set_cameras(&config);
            }
        }
    }

    /// Once every camera has finished and its last frame was processed, tells the service loop (once).
    fn report_drained(&mut self) {
        if self.drained {
            return;
        }
        let slots = self.board.slots.lock().expect("frame board");
        let done = !slots.is_empty()
            && slots
                .iter()
                .all(|s| s.state == CameraState::Finished && s.latest.is_none());
        drop(slots);
        if done {
            self.drained = true;
            let _ = self.events.send(Event::CamerasDone);
        }
    }

    /// Sleeps until a camera has a new frame or 100 ms pass.
    fn wait_for_frames(&self) {
        let slots = self.board.slots.lock().expect("frame board");
        if slots.iter().any(|s| s.latest.is_some()) {
            // Frames are waiting: sleep only until the next camera is due.
            let next = self
                .cameras
                .iter()
                .map(|c| c.next_due)
                .min()
                .unwrap_or_else(Instant::now);
            drop(slots);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait.min(Duration::from_millis(100)));
            }
            return;
        }
        let _ = self
            .board
            .wake
            .wait_timeout(slots, Duration::from_millis(100));
    }

    /// Decodes a frame, runs it through its camera's recognizer and carries out the effects.
    fn process(&mut self, index: usize, frame: Frame) {
        let rgb = match frame.payload.decode() {
            Ok(img) => img,
            Err(e) => return self.decode_failed(index, &e),
        };
        let mut models = Timed {
            pipeline: &mut self.pipeline,
            detect: Duration::ZERO,
            embed: Duration::ZERO,
        };
        let camera = &mut self.cameras[index].recognizer;
        let step = match camera.step(&rgb, frame.at, Instant::now(), &mut models, &self.gallery) {
            Ok(step) => step,
            Err(e) => {
                log::error!("camera {}: detection failed: {e}", camera.camera());
                return;
            }
        };
        let (detect, embed) = (models.detect, models.embed);
        for effect in step.effects {
            self.carry_out(index, effect);
        }
        let mut s = self.stats.lock().expect("stats");
        s.frames += 1;
        if !step.analysed {
            s.still_frames += 1;
            return;
        }
        s.embeddings += step.embedded as u64;
        s.detect_ms = ema(s.detect_ms, detect.as_secs_f64() * 1e3);
        if step.embedded > 0 {
            s.embed_ms = ema(s.embed_ms, embed.as_secs_f64() * 1e3 / step.embedded as f64);
        }
    }

    fn decode_failed(&self, index: usize, error: &str) {
        let mut s = self.stats.lock().expect("stats");
        s.decode_errors += 1;
        if s.decode_errors.is_power_of_two() {
            log::warn!(
                "camera {}: undecodable frame ({error}); {} so far",
                self.cameras[index].recognizer.camera(),
                s.decode_errors
            );
        }
    }

    fn carry_out(&mut self, index: usize, effect: Effect) {
        match effect {
            Effect::Track(e) => self.publish_event(&e),
            Effect::StillSeen { person, at } => {
                let message = self.reporter.still_seen(&person, at);
                self.send(message);
            }
            Effect::Snapshot(crop) => self.publish_snapshot(index, &crop),
            Effect::Enrol {
                person,
                photos,
                replace,
            } => self.save_enrolment(&person, &photos, replace),
            Effect::EnrolmentRefused { person, why } => {
                log::warn!("enrolment of {person} refused: {why}");
                if let Some(pending) = self.enrolment.take() {
                    pending
                        .reply
                        .send(Err(CommandError::Refused(why.to_string())));
                }
            }
        }
    }

    fn publish_event(&mut self, e: &FaceEvent) {
        let who = e.person.as_deref().unwrap_or("unknown");
        log::info!(
            "camera {}: track {} {:?} {who} (score {:.3})",
            e.camera,
            e.track_id,
            e.kind,
            e.score
        );
        let messages = self.reporter.track_event(e);
        self.send(messages);
    }

    fn publish_snapshot(&self, index: usize, crop: &RgbImage) {
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85);
        if crop.write_with_encoder(encoder).is_ok() {
            let camera = self.cameras[index].recognizer.camera();
            self.sink
                .send(Message::state(self.topics.camera_snapshot(camera), jpeg));
        }
    }

    fn camera_index(&self, camera: &str) -> Result<usize, CommandError> {
        self.cameras
            .iter()
            .position(|c| c.recognizer.camera() == camera)
            .ok_or_else(|| CommandError::NoCamera(camera.to_string()))
    }

    fn snapshot(&self, camera: &str) -> Answer {
        if !recognizer_options(&self.config).snapshots {
            return Err(CommandError::SnapshotsOff);
        }
        let index = self.camera_index(camera)?;
        let crop = self.cameras[index]
            .recognizer
            .last_crop()
            .ok_or_else(|| CommandError::NoFaceYet(camera.to_string()))?;
        self.publish_snapshot(index, crop);
        Ok(json!({"camera": camera, "topic": self.topics.camera_snapshot(camera)}))
    }

    /// Syncs the gallery with `config` and swaps it in; people who left are erased from the store and
    /// from Home Assistant. Cameras, MQTT and service settings stay as they run.
    fn resync(&mut self, config: Config) -> Answer {
        // A long sync is progress, not a hang: each photo counts as a heartbeat for the watchdog.
        let stats = self.stats.clone();
        let loaded = load_gallery(&config, &mut self.pipeline, |_, _| {
            stats.lock().expect("stats").heartbeat = Some(Instant::now());
        })
        .map_err(|e| CommandError::Failed(e.to_string()))?;
        self.gallery = loaded.gallery;
        let options = recognizer_options(&self.config);
        for c in &mut self.cameras {
            c.recognizer.set_settings(config.tracking.clone(), options);
        }
        self.config = Config {
            camera: self.config.camera.clone(),
            mqtt: self.config.mqtt.clone(),
            ..config
        };
        let people = loaded.names.len();
        self.announce(loaded.names);
        let report = loaded.report;
        log::info!(
            "gallery: {people} people, {} photos embedded, {} unchanged, threshold {:.3}",
            report.computed,
            report.reused,
            self.gallery.threshold()
        );
        Ok(json!({
            "people": people, "embedded": report.computed, "unchanged": report.reused,
            "rejected": report.rejected.len(), "forgotten": report.removed_people, "threshold": self.gallery.threshold(),
        }))
    }

    fn start_enrolment(
        &mut self,
        camera: String,
        enrolment: Enrolment,
        timeout: Duration,
        reply: Reply,
    ) {
        let index = match self.camera_index(&camera) {
            Ok(index) if self.enrolment.is_none() => index,
            Ok(_) => return reply.send(Err(CommandError::Busy)),
            Err(e) => return reply.send(Err(e)),
        };
        if enrolment.replace()
            && let Some(photo) = self.configured_photo(enrolment.person())
        {
            return reply.send(Err(CommandError::Refused(format!(
                "{} has photos in the configured gallery ({}); replace them there",
                enrolment.person(),
                photo.display()
            ))));
        }
        self.cameras[index].recognizer.start_enrolment(enrolment);
        self.enrolment = Some(PendingEnrolment {
            camera,
            reply,
            deadline: Instant::now() + timeout,
            timeout,
        });
    }

    /// A photo of `person` from the configuration (not taken by an enrolment), if there is one.
    fn configured_photo(&self, person: &str) -> Option<std::path::PathBuf> {
        let enrolled = enrolled_dir(&self.config.state_dir);
        collect_sources(&self.config)
            .ok()?
            .people
            .into_iter()
            .filter(|p| p.id == person)
            .flat_map(|p| p.images)
            .find(|path| !path.starts_with(&enrolled))
    }

    /// Saves the enrolment's photos under `<state_dir>/enrolled/<person>/` (readable by the service
    /// only: they are biometric data), removes the person's earlier enrolment photos when replacing
    /// (after the new ones are safely written), syncs the gallery and answers the request.
    fn save_enrolment(&mut self, person: &str, photos: &[Vec<u8>], replace: bool) {
        let Some(pending) = self.enrolment.take() else {
            return;
        };
        let dir = enrolled_dir(&self.config.state_dir).join(person);
        let saved = match write_enrolment_photos(&dir, photos, replace) {
            Ok(saved) => saved,
            Err(err) => {
                return pending.reply.send(Err(CommandError::Failed(format!(
                    "cannot save enrolment photos: {err}"
                ))));
            }
        };
        let result = self.resync(self.config.clone()).map(
            |sync| json!({"person": person, "photos": saved, "replaced": replace, "gallery": sync}),
        );
        pending.reply.send(result);
    }

    fn stop(mut self) {
        let now = SystemTime::now();
        for i in 0..self.cameras.len() {
            for effect in self.cameras[i].recognizer.end_all(now) {
                self.carry_out(i, effect);
            }
        }
        if let Some(pending) = self.enrolment.take() {
            pending.reply.send(Err(CommandError::Stopping));
        }
    }

    /// Cameras whose configuration changed get fresh recognizers (their tracks end); others keep theirs.
    fn set_cameras(&mut self, config: &Config) {
        let now = SystemTime::now();
        let mut old: Vec<(crate::config::CameraConfig, CameraRuntime)> = self
            .config
            .camera
            .iter()
            .cloned()
            .zip(self.cameras.drain(..))
            .collect();
        let mut cameras = Vec::with_capacity(config.camera.len());
        for c in &config.camera {
            match old.iter().position(|(o, _)| o == c) {
                Some(i) => cameras.push(old.remove(i).1),
                None => cameras.push(camera_runtime(c, config)),
            }
        }
        for (_, mut runtime) in old {
            for effect in runtime.recognizer.end_all(now) {
                if let Effect::Track(e) = effect {
                    self.publish_event(&e);
                }
            }
            // An enrolment follows its camera when only the camera's settings changed.
            let Some(enrolment) = runtime.recognizer.take_enrolment() else {
                continue;
            };
            let camera = runtime.recognizer.camera().to_string();
            match cameras.iter_mut().find(|c| c.recognizer.camera() == camera) {
                Some(restarted) => restarted.recognizer.start_enrolment(enrolment),
                None => {
                    if let Some(pending) = self.enrolment.take() {
                        pending.reply.send(Err(CommandError::NoCamera(camera)));
                    }
                }
            }
        }
        self.cameras = cameras;
        self.config.camera = config.camera.clone();
        self.publish_discovery();
    }
}

/// True while no streaming camera has gone quiet for longer than the stall timeout.
pub fn cameras_healthy(board: &FrameBoard, stall: Duration) -> bool {
    !board.states_seen(stall).contains(&CameraState::Stalled)
}

/// Writes `photos` into `dir` (created 0700) with the store's atomic writer (mode 0600, fsync of the
/// file and the directory); with `replace`, then removes the JPEGs that were there before. Returns the
/// paths written.
fn write_enrolment_photos(
    dir: &std::path::Path,
    photos: &[Vec<u8>],
    replace: bool,
) -> Result<Vec<String>, String> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |e: std::io::Error| format!("{}: {e}", dir.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let earlier: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    let stamp = humantime::format_rfc3339_millis(SystemTime::now())
        .to_string()
        .replace([':', '.'], "-");
    let mut saved = vec![];
    for (i, jpeg) in photos.iter().enumerate() {
        let name = format!("{stamp}-{i}.jpg");
        crate::store::write_atomically(dir, &name, jpeg).map_err(|e| e.to_string())?;
        saved.push(dir.join(name).display().to_string());
    }
    if replace {
        for old in earlier {
            std::fs::remove_file(&old).map_err(|e| format!("{}: {e}", old.display()))?;
        }
    }
    Ok(saved)
}
