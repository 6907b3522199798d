//! The inference worker: takes the newest frame of each camera at its detection rate, detects, tracks,
//! embeds only the faces that need it, matches them against the gallery and turns track changes into
//! messages. It owns the models, the trackers, presence and the gallery, so no lock is held while a frame
//! is processed.

use crate::camera::{CameraState, FrameBoard};
use crate::config::{Config, TrackingConfig};
use crate::detect::Detection;
use crate::enrol::{collect_sources, gallery_from_store, sync};
use crate::events::{
    DiscoveryInput, EventBuilder, EventType, FaceEvent, Message, Presence, Topics, discovery,
};
use crate::gallery::Gallery;
use crate::motion::{StillnessGate, Thumbnail};
use crate::mqtt::Sink;
use crate::pipeline::FacePipeline;
use crate::track::{Tracker, face_quality, sharpness};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Requests from the service's main loop.
pub enum Control {
    /// Re-read the gallery from this configuration (after a reload or a `reload_gallery` request).
    Resync(Box<Config>, Sender<Result<Value, String>>),
    /// Republish discovery and every person's state (Home Assistant restarted).
    Republish,
    /// Save the next `frames` frames of `camera` that show exactly one usable face as enrolment photos of
    /// `person`, then resync.
    Enroll {
        person: String,
        camera: String,
        frames: usize,
        reply: Sender<Result<Value, String>>,
    },
    /// Publish the newest face crop of a camera as its snapshot.
    Snapshot {
        camera: String,
        reply: Sender<Result<Value, String>>,
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

pub struct CameraRuntime {
    pub name: String,
    pub interval: Duration,
    pub next_due: Instant,
    pub tracker: Tracker,
    pub last_crop: Option<image::RgbImage>,
    pub stillness: StillnessGate,
    /// The faces of the last analysed frame: a still frame shows them where they were.
    pub last_faces: Vec<Detection>,
}

struct PendingEnroll {
    person: String,
    camera: String,
    remaining: usize,
    saved: Vec<String>,
    reply: Sender<Result<Value, String>>,
}

pub struct Worker {
    pub config: Config,
    pub pipeline: FacePipeline,
    pub gallery: Gallery,
    pub names: BTreeMap<String, String>,
    pub cameras: Vec<CameraRuntime>,
    pub board: Arc<FrameBoard>,
    pub sink: Arc<Sink>,
    pub topics: Topics,
    pub builder: EventBuilder,
    pub presence: Presence,
    pub discovered: BTreeMap<String, &'static str>,
    pub stats: Arc<Mutex<WorkerStats>>,
    enroll: Option<PendingEnroll>,
}

/// Exponential moving average, for per-stage milliseconds.
fn ema(old: f64, new: f64) -> f64 {
    if old == 0.0 {
        new
    } else {
        old * 0.9 + new * 0.1
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        pipeline: FacePipeline,
        gallery: Gallery,
        names: BTreeMap<String, String>,
        board: Arc<FrameBoard>,
        sink: Arc<Sink>,
        topics: Topics,
        stats: Arc<Mutex<WorkerStats>>,
    ) -> Worker {
        let absence = Duration::from_secs(config.mqtt.as_ref().map_or(120, |m| m.absence_s));
        let builder = EventBuilder::new(topics.clone(), pipeline.embedder.id(), SystemTime::now());
        let config_state_dir = config.state_dir.clone();
        let cameras = config
            .camera
            .iter()
            .map(|c| camera_runtime(c, &config.tracking))
            .collect();
        Worker {
            presence: Presence::new(topics.clone(), absence),
            config,
            pipeline,
            gallery,
            names,
            cameras,
            board,
            sink,
            topics,
            builder,
            discovered: load_discovered(&config_state_dir),
            stats,
            enroll: None,
        }
    }

    /// Announces the device: discovery (when enabled) and every enrolled person's state.
    pub fn announce(&mut self) {
        let ids: Vec<String> = self.names.keys().cloned().collect();
        for m in self.presence.set_people(&ids) {
            self.sink.send(m);
        }
        self.publish_discovery();
    }

    fn publish_discovery(&mut self) {
        let Some(mqtt) = self.config.mqtt.as_ref().filter(|m| m.discovery) else {
            return;
        };
        let input = DiscoveryInput {
            people: self
                .names
                .iter()
                .map(|(id, name)| (id.clone(), name.clone()))
                .collect(),
            cameras: self.config.camera.iter().map(|c| c.name.clone()).collect(),
            snapshots: mqtt.snapshots,
            off_delay_s: mqtt.absence_s + mqtt.absence_s / 2,
        };
        let (message, current) = discovery(&self.topics, &input, &self.discovered);
        if current != self.discovered {
            save_discovered(&self.config.state_dir, &current);
        }
        self.discovered = current;
        self.sink.send(message);
    }

    pub fn run(mut self, control: Receiver<Control>) -> Self {
        loop {
            while let Ok(c) = control.try_recv() {
                match c {
                    Control::Stop => return self.stop(),
                    Control::Republish => {
                        self.publish_discovery();
                        for m in self.presence.all() {
                            self.sink.send(m);
                        }
                    }
                    Control::Resync(config, reply) => {
                        let result = self.resync(*config);
                        let _ = reply.send(result);
                    }
                    Control::Enroll {
                        person,
                        camera,
                        frames,
                        reply,
                    } => self.start_enroll(person, camera, frames, reply),
                    Control::Snapshot { camera, reply } => {
                        let _ = reply.send(self.snapshot(&camera));
                    }
                    Control::SetPipeline(p) => {
                        log::info!(
                            "models: detector {}, embedder {}",
                            p.detector.id(),
                            p.embedder.id()
                        );
                        self.pipeline = *p;
                        self.builder.set_model(self.pipeline.embedder.id());
                    }
                    Control::SetCameras(config, board) => {
                        self.board = board;
                        self.set_cameras(&config);
                    }
                }
            }
            self.wait_for_frames();
            let now = Instant::now();
            for i in 0..self.cameras.len() {
                if now < self.cameras[i].next_due {
                    continue;
                }
                if let Some(frame) = self.board.take(i) {
                    self.cameras[i].next_due =
                        now.max(self.cameras[i].next_due) + self.cameras[i].interval;
                    self.process(i, frame);
                }
            }
            for m in self.presence.tick(SystemTime::now()) {
                self.sink.send(m);
            }
            let mut s = self.stats.lock().expect("stats");
            s.heartbeat = Some(Instant::now());
            s.faces_in_view = self.cameras.iter().map(|c| c.tracker.active_tracks()).sum();
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

    fn process(&mut self, index: usize, frame: crate::camera::Frame) {
        let rgb = match frame.payload.decode() {
            Ok(img) => img,
            Err(e) => {
                let mut s = self.stats.lock().expect("stats");
                s.decode_errors += 1;
                if s.decode_errors.is_power_of_two() {
                    log::warn!(
                        "camera {}: undecodable frame ({e}); {} so far",
                        self.cameras[index].name,
                        s.decode_errors
                    );
                }
                return;
            }
        };
        let at = frame.at;
        let thumbnail = Thumbnail::of(&rgb);
        let enrolling = self
            .enroll
            .as_ref()
            .is_some_and(|e| e.camera == self.cameras[index].name);
        let camera = &mut self.cameras[index];
        if !enrolling
            && camera.tracker.all_decided()
            && camera.stillness.is_still(&thumbnail, Instant::now())
        {
            // Same scene, nobody undecided: the faces are where they were; only keep them alive.
            let (_, left) = camera.tracker.update(&camera.last_faces, at);
            for e in left {
                self.emit(&e);
            }
            self.still_seen(index, at);
            let mut s = self.stats.lock().expect("stats");
            s.frames += 1;
            s.still_frames += 1;
            return;
        }
        let started = Instant::now();
        let faces = match self.pipeline.detector.detect(&rgb) {
            Ok(f) => f,
            Err(e) => {
                log::error!("camera {}: detection failed: {e}", self.cameras[index].name);
                return;
            }
        };
        let detect_ms = started.elapsed().as_secs_f64() * 1e3;
        self.cameras[index]
            .stillness
            .analysed(thumbnail, Instant::now());
        self.cameras[index].last_faces = faces.clone();
        let (assignments, left) = self.cameras[index].tracker.update(&faces, at);
        for e in left {
            self.emit(&e);
        }
        // Embed the faces that need it and pass the gallery's joint decision back to the tracker.
        let embed_started = Instant::now();
        let mut embedded = vec![];
        for a in assignments.iter().filter(|a| a.embed) {
            let face = &faces[a.detection];
            let ok = face_quality(face, &self.config.tracking)
                .ok()
                .and_then(|_| self.pipeline.embedder.align(&rgb, &face.landmarks).ok())
                .filter(|crop| sharpness(crop) >= self.config.tracking.min_sharpness)
                .and_then(|crop| {
                    self.pipeline
                        .embedder
                        .embed_crop(&crop)
                        .ok()
                        .map(|e| (crop, e))
                });
            match ok {
                Some((crop, embedding)) => {
                    embedded.push((a.track_id, face.width().max(face.height()), crop, embedding))
                }
                None => self.cameras[index].tracker.skipped(a.track_id),
            }
        }
        let embeddings: Vec<Vec<f32>> = embedded.iter().map(|e| e.3.clone()).collect();
        let decisions = self.gallery.identify(&embeddings);
        for ((track_id, size, crop, _), decision) in embedded.into_iter().zip(decisions) {
            let events = self.cameras[index]
                .tracker
                .observe(track_id, size, decision, at);
            let decided = events.iter().any(|e| e.kind != EventType::Left);
            if decided && self.config.mqtt.as_ref().is_some_and(|m| m.snapshots) {
                self.publish_snapshot(index, &crop);
            }
            if decided || self.cameras[index].last_crop.is_none() {
                self.cameras[index].last_crop = Some(crop);
            }
            for e in &events {
                self.emit(e);
            }
        }
        self.still_seen(index, at);
        if self
            .enroll
            .as_ref()
            .is_some_and(|e| e.camera == self.cameras[index].name)
        {
            self.enroll_frame(&rgb, &faces);
        }
        let embed_ms = embed_started.elapsed().as_secs_f64() * 1e3;
        let mut s = self.stats.lock().expect("stats");
        s.frames += 1;
        s.embeddings += embeddings.len() as u64;
        s.detect_ms = ema(s.detect_ms, detect_ms);
        if !embeddings.is_empty() {
            s.embed_ms = ema(s.embed_ms, embed_ms / embeddings.len() as f64);
        }
    }

    /// Presence: the recognised people in view of camera `index` are still there.
    fn still_seen(&mut self, index: usize, at: SystemTime) {
        for person in self.cameras[index].tracker.recognized_people() {
            if let Some(m) = self.presence.still_seen(&person, at) {
                self.sink.send(m);
            }
        }
    }

    fn emit(&mut self, e: &FaceEvent) {
        match (e.kind, &e.person) {
            (EventType::Recognized, Some(p)) => {
                if let Some(m) = self.presence.recognized(p, &e.camera, e.score, e.at) {
                    self.sink.send(m);
                }
            }
            (EventType::Left, Some(p)) => self.presence.track_ended(p, e.at),
            _ => {}
        }
        let who = e.person.as_deref().unwrap_or("unknown");
        log::info!(
            "camera {}: track {} {:?} {who} (score {:.3})",
            e.camera,
            e.track_id,
            e.kind,
            e.score
        );
        for m in self.builder.messages(e, &self.names) {
            self.sink.send(m);
        }
    }

    fn publish_snapshot(&self, index: usize, crop: &image::RgbImage) {
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85);
        if crop.write_with_encoder(encoder).is_ok() {
            self.sink.send(Message::state(
                self.topics.camera_snapshot(&self.cameras[index].name),
                jpeg,
            ));
        }
    }

    fn snapshot(&self, camera: &str) -> Result<Value, String> {
        let index = self
            .cameras
            .iter()
            .position(|c| c.name == camera)
            .ok_or_else(|| format!("no camera {camera:?}"))?;
        let crop = self.cameras[index]
            .last_crop
            .as_ref()
            .ok_or_else(|| format!("camera {camera:?} has seen no face yet"))?;
        self.publish_snapshot(index, crop);
        Ok(json!({"camera": camera, "topic": self.topics.camera_snapshot(camera)}))
    }

    /// Syncs the gallery with `config` and swaps it in; people who left are erased from the store and
    /// from Home Assistant.
    fn resync(&mut self, config: Config) -> Result<Value, String> {
        let sources = collect_sources(&config);
        for w in &sources.warnings {
            log::warn!("{w}");
        }
        let (data, report) = sync(
            &sources.people,
            &mut self.pipeline,
            config.gallery.enrol_policy,
            &config.state_dir,
            |_, _| {},
        )
        .map_err(|e| e.to_string())?;
        for (person, path, reason) in &report.rejected {
            log::warn!("{path}: not enrolled for {person}: {reason}");
        }
        self.gallery = gallery_from_store(
            &data,
            self.pipeline.embedder.spec().output.threshold,
            &config,
        );
        self.names = data
            .people
            .iter()
            .map(|p| (p.id.clone(), p.name.clone()))
            .collect();
        for c in &mut self.cameras {
            c.tracker.set_config(config.tracking.clone());
            c.stillness = stillness_gate(&config.tracking);
        }
        self.config = Config {
            camera: self.config.camera.clone(),
            mqtt: self.config.mqtt.clone(),
            ..config
        };
        self.announce();
        log::info!(
            "gallery: {} people, {} photos embedded, {} unchanged, threshold {:.3}",
            data.people.len(),
            report.computed,
            report.reused,
            self.gallery.threshold()
        );
        Ok(json!({
            "people": data.people.len(), "embedded": report.computed, "unchanged": report.reused,
            "rejected": report.rejected.len(), "forgotten": report.removed_people, "threshold": self.gallery.threshold(),
        }))
    }

    fn start_enroll(
        &mut self,
        person: String,
        camera: String,
        frames: usize,
        reply: Sender<Result<Value, String>>,
    ) {
        let check = || -> Result<(), String> {
            if !crate::config::is_valid_person_id(&person) {
                return Err(format!(
                    "{person:?} is not a valid person id (lowercase letters, digits, '_', '-')"
                ));
            }
            if !self.cameras.iter().any(|c| c.name == camera) {
                return Err(format!("no camera {camera:?}"));
            }
            if !(1..=50).contains(&frames) {
                return Err("frames must be 1 to 50".into());
            }
            if self.enroll.is_some() {
                return Err("an enrolment is already running".into());
            }
            Ok(())
        };
        match check() {
            Ok(()) => {
                self.enroll = Some(PendingEnroll {
                    person,
                    camera,
                    remaining: frames,
                    saved: vec![],
                    reply,
                })
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Saves a frame showing exactly one usable face under `<state_dir>/enrolled/<person>/`.
    fn enroll_frame(&mut self, rgb: &image::RgbImage, faces: &[crate::detect::Detection]) {
        let usable = faces.len() == 1 && face_quality(&faces[0], &self.config.tracking).is_ok();
        if !usable {
            return;
        }
        let Some(e) = self.enroll.as_mut() else {
            return;
        };
        let dir = enrolled_dir(&self.config).join(&e.person);
        let name = format!(
            "{}.jpg",
            humantime::format_rfc3339_millis(SystemTime::now())
                .to_string()
                .replace([':', '.'], "-")
        );
        let saved = std::fs::create_dir_all(&dir)
            .map_err(|err| err.to_string())
            .and_then(|_| {
                let mut file =
                    std::fs::File::create(dir.join(&name)).map_err(|err| err.to_string())?;
                let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 92);
                rgb.write_with_encoder(encoder)
                    .map_err(|err| err.to_string())
            });
        if let Err(err) = saved {
            let e = self.enroll.take().expect("pending");
            let _ = e.reply.send(Err(format!(
                "cannot save enrolment photo in {}: {err}",
                dir.display()
            )));
            return;
        }
        e.saved.push(dir.join(&name).display().to_string());
        e.remaining -= 1;
        if e.remaining == 0 {
            let e = self.enroll.take().expect("pending");
            let result = self
                .resync(self.config.clone())
                .map(|sync| json!({"person": e.person, "photos": e.saved, "gallery": sync}));
            let _ = e.reply.send(result);
        }
    }

    fn stop(mut self) -> Self {
        let now = SystemTime::now();
        for i in 0..self.cameras.len() {
            for e in self.cameras[i].tracker.end_all(now) {
                self.emit(&e);
            }
        }
        if let Some(e) = self.enroll.take() {
            let _ = e.reply.send(Err("the service is stopping".into()));
        }
        self
    }

    /// Cameras whose configuration changed get fresh trackers (their tracks end); others keep theirs.
    pub fn set_cameras(&mut self, config: &Config) {
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
                None => cameras.push(camera_runtime(c, &config.tracking)),
            }
        }
        let ended: Vec<FaceEvent> = old
            .iter_mut()
            .flat_map(|(_, rt)| rt.tracker.end_all(now))
            .collect();
        for e in &ended {
            self.emit(e);
        }
        self.cameras = cameras;
        self.config.camera = config.camera.clone();
        self.publish_discovery();
    }
}

fn camera_runtime(c: &crate::config::CameraConfig, tracking: &TrackingConfig) -> CameraRuntime {
    CameraRuntime {
        name: c.name.clone(),
        interval: Duration::from_secs_f32(1.0 / c.detect_fps),
        next_due: Instant::now(),
        tracker: Tracker::new(&c.name, tracking.clone()),
        last_crop: None,
        stillness: stillness_gate(tracking),
        last_faces: vec![],
    }
}

fn stillness_gate(tracking: &TrackingConfig) -> StillnessGate {
    StillnessGate::new(
        tracking.still_threshold,
        Duration::from_secs_f32(tracking.still_recheck_s),
    )
}

/// The Home Assistant components announced last, kept in the state directory so that people removed
/// while face-edge was stopped are still removed from Home Assistant at the next start.
const DISCOVERED_FILE: &str = "discovery.json";

fn load_discovered(state_dir: &std::path::Path) -> BTreeMap<String, &'static str> {
    let Ok(text) = std::fs::read_to_string(state_dir.join(DISCOVERED_FILE)) else {
        return BTreeMap::new();
    };
    let Ok(map) = serde_json::from_str::<BTreeMap<String, String>>(&text) else {
        log::warn!(
            "{}: unreadable, ignored",
            state_dir.join(DISCOVERED_FILE).display()
        );
        return BTreeMap::new();
    };
    map.into_iter()
        .filter_map(|(k, p)| crate::events::platform(&p).map(|p| (k, p)))
        .collect()
}

fn save_discovered(state_dir: &std::path::Path, components: &BTreeMap<String, &'static str>) {
    let json = serde_json::to_vec(components).expect("map serialises");
    if let Err(e) = crate::store::write_atomically(state_dir, DISCOVERED_FILE, &json) {
        log::warn!("cannot remember the announced Home Assistant components: {e}");
    }
}

/// Photos taken by the `enroll` command live in the state directory, as a gallery directory of their own.
pub fn enrolled_dir(config: &Config) -> std::path::PathBuf {
    config.state_dir.join("enrolled")
}

/// True while no streaming camera has gone quiet for longer than the stall timeout.
pub fn cameras_healthy(board: &FrameBoard, stall: Duration) -> bool {
    let slots = board.slots.lock().expect("frame board");
    slots.iter().all(|s| match s.state {
        CameraState::Streaming => {
            s.last_frame.map_or(s.since, |t| t.max(s.since)).elapsed() < stall
        }
        _ => true,
    })
}
