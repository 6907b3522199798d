//! One camera's recognition policy, frame by frame: is the scene still -> detect -> track -> which faces
//! to embed -> quality gates (size and turn, then alignment, then sharpness) -> embed -> identify against
//! the gallery -> vote -> snapshot and enrolment rules. `Recognizer::step` takes a decoded frame and the
//! time, and returns the `Effect`s the daemon must carry out (publish this event, save this photo); it
//! performs none of them itself.

use crate::detect::{DetectError, Detection};
use crate::embed::Embedder;
use crate::enrolment::{EnrolmentRefused, check_enrolment};
use crate::events::{EventType, FaceEvent};
use crate::gallery::Gallery;
use crate::motion::{StillnessGate, Thumbnail};
use crate::pipeline::FacePipeline;
use crate::settings::TrackingSettings;
use crate::track::{Tracker, face_quality, sharpness};
use image::RgbImage;
use std::time::{Duration, Instant, SystemTime};

/// The networks a recognizer runs. `FacePipeline` is the real one; the daemon wraps it to time each
/// call, and tests script detections and embeddings with it.
pub trait FaceModels {
    /// The faces in a frame.
    fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Detection>, DetectError>;
    /// The face warped onto the embedder's template; `None` when its landmarks are degenerate.
    fn align(&mut self, frame: &RgbImage, face: &Detection) -> Option<RgbImage>;
    /// The L2-normalised embedding of an aligned crop; `None` when the network fails on it.
    fn embed(&mut self, crop: &RgbImage) -> Option<Vec<f32>>;
}

impl FaceModels for FacePipeline {
    fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Detection>, DetectError> {
        self.detector.detect(frame)
    }

    fn align(&mut self, frame: &RgbImage, face: &Detection) -> Option<RgbImage> {
        Embedder::align(&self.embedder, frame, &face.landmarks).ok()
    }

    fn embed(&mut self, crop: &RgbImage) -> Option<Vec<f32>> {
        self.embedder.embed_crop(crop).ok()
    }
}

/// What the daemon must do after a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A track changed: recognized, unknown or left. Publish it and update the person's presence.
    Track(FaceEvent),
    /// A recognised person is still in view at `at` (keeps their presence from expiring).
    StillSeen { person: String, at: SystemTime },
    /// Publish this face crop as the camera's snapshot (a track was just decided, snapshots are on).
    Snapshot(RgbImage),
    /// The enrolment collected its frames and they passed the poisoning checks: save these JPEG
    /// photos of `person` (replacing the photos earlier enrolments saved, with `replace`) and sync.
    Enrol {
        person: String,
        photos: Vec<Vec<u8>>,
        replace: bool,
    },
    /// The enrolment collected its frames and they failed a check: nothing is to be saved.
    EnrolmentRefused {
        person: String,
        why: EnrolmentRefused,
    },
}

/// The outcome of one frame.
#[derive(Debug, Default)]
pub struct Step {
    pub effects: Vec<Effect>,
    /// False when the frame was the still scene of the last analysed one and was not run through the
    /// networks.
    pub analysed: bool,
    /// Faces embedded in this frame.
    pub embedded: usize,
}

/// The policy's switches that do not belong to tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecognizerOptions {
    /// Emit `Effect::Snapshot` when a track is decided.
    pub snapshots: bool,
}

/// An enrolment in progress: the frames wanted and the ones collected so far (JPEG, with the face's
/// embedding). Moved as a whole to a restarted camera.
#[derive(Debug)]
pub struct Enrolment {
    person: String,
    wanted: usize,
    replace: bool,
    photos: Vec<Vec<u8>>,
    faces: Vec<Vec<f32>>,
}

impl Enrolment {
    pub fn new(person: &str, frames: usize, replace: bool) -> Enrolment {
        Enrolment {
            person: person.to_string(),
            wanted: frames.max(1),
            replace,
            photos: vec![],
            faces: vec![],
        }
    }

    pub fn person(&self) -> &str {
        &self.person
    }

    /// Frames collected so far.
    pub fn collected(&self) -> usize {
        self.faces.len()
    }

    pub fn wanted(&self) -> usize {
        self.wanted
    }

    pub fn replace(&self) -> bool {
        self.replace
    }
}

/// The recognition state of one camera: its tracks, the stillness gate, the newest face crop and a
/// running enrolment.
#[derive(Debug)]
pub struct Recognizer {
    camera: String,
    settings: TrackingSettings,
    options: RecognizerOptions,
    tracker: Tracker,
    stillness: StillnessGate,
    /// The faces of the last analysed frame: a still frame shows them where they were.
    last_faces: Vec<Detection>,
    last_crop: Option<RgbImage>,
    enrolment: Option<Enrolment>,
}

fn stillness_gate(settings: &TrackingSettings) -> StillnessGate {
    StillnessGate::new(
        settings.still_threshold,
        Duration::from_secs_f32(settings.still_recheck_s),
    )
}

impl Recognizer {
    pub fn new(camera: &str, settings: TrackingSettings, options: RecognizerOptions) -> Recognizer {
        Recognizer {
            camera: camera.to_string(),
            tracker: Tracker::new(camera, settings.clone()),
            stillness: stillness_gate(&settings),
            settings,
            options,
            last_faces: vec![],
            last_crop: None,
            enrolment: None,
        }
    }

    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// New tracking settings (a reload); tracks in progress keep their votes.
    pub fn set_settings(&mut self, settings: TrackingSettings, options: RecognizerOptions) {
        self.tracker.set_config(settings.clone());
        self.stillness = stillness_gate(&settings);
        self.settings = settings;
        self.options = options;
    }

    /// Faces currently followed.
    pub fn faces_in_view(&self) -> usize {
        self.tracker.active_tracks()
    }

    /// The newest face crop: of the last decided track, else of the first face embedded.
    pub fn last_crop(&self) -> Option<&RgbImage> {
        self.last_crop.as_ref()
    }

    /// Starts collecting the next frames that show exactly one usable face for `enrolment`.
    pub fn start_enrolment(&mut self, enrolment: Enrolment) {
        self.enrolment = Some(enrolment);
    }

    /// Stops a running enrolment (it timed out, or the service stops).
    pub fn cancel_enrolment(&mut self) -> bool {
        self.take_enrolment().is_some()
    }

    /// Ends a running enrolment and hands it over (to carry it to a restarted camera).
    pub fn take_enrolment(&mut self) -> Option<Enrolment> {
        self.enrolment.take()
    }

    pub fn is_enrolling(&self) -> bool {
        self.enrolment.is_some()
    }

    /// Runs one frame captured at `captured` (wall clock, for events) and handled at `now` (monotonic,
    /// for the stillness gate) through the policy.
    pub fn step(
        &mut self,
        frame: &RgbImage,
        captured: SystemTime,
        now: Instant,
        models: &mut impl FaceModels,
        gallery: &Gallery,
    ) -> Result<Step, DetectError> {
        let thumbnail = Thumbnail::of(frame);
        let mut step = Step::default();
        if self.enrolment.is_none()
            && self.tracker.all_decided()
            && self.stillness.is_still(&thumbnail, now)
        {
            // Same scene, nobody undecided: the faces are where they were; only keep them alive.
            let (_, left) = self.tracker.update(&self.last_faces, captured);
            step.effects.extend(left.into_iter().map(Effect::Track));
            self.still_seen(captured, &mut step.effects);
            return Ok(step);
        }
        let faces = models.detect(frame)?;
        step.analysed = true;
        self.stillness.analysed(thumbnail, now);
        let (assignments, left) = self.tracker.update(&faces, captured);
        step.effects.extend(left.into_iter().map(Effect::Track));
        let embedded = self.embed_assigned(frame, &faces, &assignments, models);
        step.embedded = embedded.len();
        // An enrolment reuses the embedding the tracker made of the frame's only face, if it made one.
        let only_face_embedding = embedded
            .iter()
            .find(|e| faces.len() == 1 && e.detection == 0)
            .map(|e| e.embedding.clone());
        self.decide(embedded, gallery, captured, &mut step.effects);
        self.still_seen(captured, &mut step.effects);
        if self.enrolment.is_some() {
            self.enrolment_photo(
                frame,
                &faces,
                only_face_embedding,
                models,
                gallery,
                &mut step.effects,
            );
        }
        self.last_faces = faces;
        Ok(step)
    }

    /// Ends every track (the service stops or the camera is replaced).
    pub fn end_all(&mut self, now: SystemTime) -> Vec<Effect> {
        // Nobody is where they were: a still frame must not bring the old faces back.
        self.last_faces.clear();
        self.tracker
            .end_all(now)
            .into_iter()
            .map(Effect::Track)
            .collect()
    }

    /// The quality gates in order (size and turn, alignment, sharpness), then the embedding, for each
    /// face the tracker wants embedded. A face that fails a gate is retried soon.
    fn embed_assigned(
        &mut self,
        frame: &RgbImage,
        faces: &[Detection],
        assignments: &[crate::track::Assignment],
        models: &mut impl FaceModels,
    ) -> Vec<EmbeddedTrack> {
        let mut embedded = vec![];
        for a in assignments.iter().filter(|a| a.embed) {
            let face = &faces[a.detection];
            match self.gated_embedding(frame, face, models) {
                Some((crop, embedding)) => embedded.push(EmbeddedTrack {
                    track_id: a.track_id,
                    detection: a.detection,
                    size: face.width().max(face.height()),
                    crop,
                    embedding,
                }),
                None => self.tracker.skipped(a.track_id),
            }
        }
        embedded
    }

    /// The quality gates in order (size and turn, alignment, sharpness), then the embedding: the crop
    /// and its embedding, or None when a gate refuses the face or the network fails.
    fn gated_embedding(
        &self,
        frame: &RgbImage,
        face: &Detection,
        models: &mut impl FaceModels,
    ) -> Option<(RgbImage, Vec<f32>)> {
        face_quality(face, &self.settings).ok()?;
        let crop = models
            .align(frame, face)
            .filter(|crop| sharpness(crop) >= self.settings.min_sharpness)?;
        let embedding = models.embed(&crop)?;
        Some((crop, embedding))
    }

    /// The gallery's joint decision for this frame's embeddings, voted on per track; a decided track's
    /// crop becomes the snapshot.
    fn decide(
        &mut self,
        embedded: Vec<EmbeddedTrack>,
        gallery: &Gallery,
        captured: SystemTime,
        effects: &mut Vec<Effect>,
    ) {
        let embeddings: Vec<Vec<f32>> = embedded.iter().map(|e| e.embedding.clone()).collect();
        let decisions = gallery.identify(&embeddings);
        for (face, decision) in embedded.into_iter().zip(decisions) {
            let events = self
                .tracker
                .observe(face.track_id, face.size, decision, captured);
            let decided = events.iter().any(|e| e.kind != EventType::Left);
            if decided && self.options.snapshots {
                effects.push(Effect::Snapshot(face.crop.clone()));
            }
            if decided || self.last_crop.is_none() {
                self.last_crop = Some(face.crop);
            }
            effects.extend(events.into_iter().map(Effect::Track));
        }
    }

    /// Presence: the recognised people in view are still there.
    fn still_seen(&self, at: SystemTime, effects: &mut Vec<Effect>) {
        for person in self.tracker.recognized_people() {
            effects.push(Effect::StillSeen { person, at });
        }
    }

    /// While enrolling, a frame showing exactly one usable face (the tracker's gates) is collected;
    /// once enough are, they are checked against poisoning and the verdict returned. `embedded`: the
    /// face's embedding when the tracker already made it this frame.
    fn enrolment_photo(
        &mut self,
        frame: &RgbImage,
        faces: &[Detection],
        embedded: Option<Vec<f32>>,
        models: &mut impl FaceModels,
        gallery: &Gallery,
        effects: &mut Vec<Effect>,
    ) {
        let [face] = faces else { return };
        let Some(embedding) = embedded.or_else(|| {
            self.gated_embedding(frame, face, models)
                .map(|(_, embedding)| embedding)
        }) else {
            return;
        };
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 92);
        if frame.write_with_encoder(encoder).is_err() {
            return;
        }
        let Some(enrolment) = self.enrolment.as_mut() else {
            return;
        };
        enrolment.photos.push(jpeg);
        enrolment.faces.push(embedding);
        if enrolment.faces.len() < enrolment.wanted {
            return;
        }
        let e = self.enrolment.take().expect("checked above");
        effects.push(
            match check_enrolment(&e.person, &e.faces, gallery, e.replace) {
                Ok(()) => Effect::Enrol {
                    person: e.person,
                    photos: e.photos,
                    replace: e.replace,
                },
                Err(why) => Effect::EnrolmentRefused {
                    person: e.person,
                    why,
                },
            },
        );
    }
}

/// A face of this frame that passed the gates and was embedded.
struct EmbeddedTrack {
    track_id: u64,
    /// Its index among the frame's detections.
    detection: usize,
    size: f32,
    crop: RgbImage,
    embedding: Vec<f32>,
}

#[cfg(test)]
mod tests {
    //! The policy with scripted networks: each scene says which faces the detector finds in a frame and
    //! whose face each one is; no model, file, thread or clock is involved.

    use super::*;
    use crate::gallery::GalleryPerson;
    use image::Rgb;

    /// A person's (or a stranger's) embedding: a unit vector along its own axis.
    fn identity(axis: usize) -> Vec<f32> {
        let mut v = vec![0.0; 8];
        v[axis] = 1.0;
        v
    }

    const OBAMA: usize = 0;
    const KIT: usize = 1;
    const STRANGER: usize = 5;

    fn gallery() -> Gallery {
        let person = |id: &str, axis| GalleryPerson {
            id: id.into(),
            name: id.into(),
            embeddings: vec![identity(axis)],
        };
        Gallery::new(
            vec![person("obama", OBAMA), person("kit", KIT)],
            0.3,
            None,
            0.05,
        )
    }

    /// A frontal face of `size` pixels at x = `left` whose identity is the axis `who`.
    #[derive(Clone, Copy)]
    struct Face {
        left: f32,
        size: f32,
        who: usize,
    }

    fn detection(f: Face) -> Detection {
        let (x, y, s) = (f.left, 100.0, f.size);
        Detection {
            bbox: [x, y, x + s, y + s],
            score: 0.9,
            landmarks: [
                [x + 0.3 * s, y + 0.4 * s],
                [x + 0.7 * s, y + 0.4 * s],
                [x + 0.5 * s, y + 0.6 * s],
                [x + 0.35 * s, y + 0.8 * s],
                [x + 0.65 * s, y + 0.8 * s],
            ],
        }
    }

    /// Scripted networks: the detector reports `faces`; a face's crop carries its identity, which the
    /// embedder turns into that identity's vector. Counts the detector's runs.
    #[derive(Default)]
    struct Scripted {
        faces: Vec<Face>,
        detections: usize,
    }

    impl FaceModels for Scripted {
        fn detect(&mut self, _frame: &RgbImage) -> Result<Vec<Detection>, DetectError> {
            self.detections += 1;
            Ok(self.faces.iter().map(|&f| detection(f)).collect())
        }

        fn align(&mut self, _frame: &RgbImage, face: &Detection) -> Option<RgbImage> {
            let who = self
                .faces
                .iter()
                .find(|f| f.left == face.bbox[0])
                .map(|f| f.who)?;
            // A checkerboard (sharp) whose first pixel says who it is.
            let mut crop = RgbImage::from_fn(16, 16, |x, y| {
                Rgb([if (x + y) % 2 == 0 { 0 } else { 255 }; 3])
            });
            crop.put_pixel(0, 0, Rgb([who as u8, 0, 0]));
            Some(crop)
        }

        fn embed(&mut self, crop: &RgbImage) -> Option<Vec<f32>> {
            Some(identity(crop.get_pixel(0, 0)[0] as usize))
        }
    }

    /// Drives a recognizer through frames 200 ms apart; every frame differs from the last (the scene is
    /// never still) unless the scene says otherwise.
    struct Scene {
        recognizer: Recognizer,
        models: Scripted,
        gallery: Gallery,
        frame: u32,
        start: SystemTime,
        clock: Instant,
    }

    impl Scene {
        fn new(options: RecognizerOptions) -> Scene {
            Scene {
                recognizer: Recognizer::new("hall", TrackingSettings::default(), options),
                models: Scripted::default(),
                gallery: gallery(),
                frame: 0,
                start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                clock: Instant::now(),
            }
        }

        /// The effects of `frames` frames showing `faces`; `moving`: each frame differs from the last.
        fn show(&mut self, faces: &[Face], frames: u32, moving: bool) -> Vec<Effect> {
            self.models.faces = faces.to_vec();
            let mut effects = vec![];
            for _ in 0..frames {
                self.frame += 1;
                let grey = if moving {
                    (self.frame * 40 % 256) as u8
                } else {
                    128
                };
                let image = RgbImage::from_pixel(64, 48, Rgb([grey; 3]));
                let at = Duration::from_millis(200 * self.frame as u64);
                let step = self
                    .recognizer
                    .step(
                        &image,
                        self.start + at,
                        self.clock + at,
                        &mut self.models,
                        &self.gallery,
                    )
                    .unwrap();
                effects.extend(step.effects);
            }
            effects
        }
    }

    /// The track events among the effects, as (kind, person).
    fn track_events(effects: &[Effect]) -> Vec<(EventType, Option<String>)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Track(e) => Some((e.kind, e.person.clone())),
                _ => None,
            })
            .collect()
    }

    fn at(left: f32, who: usize) -> Face {
        Face {
            left,
            size: 120.0,
            who,
        }
    }

    #[test]
    fn three_visits_give_recognized_unknown_recognized_each_with_left() {
        let mut scene = Scene::new(RecognizerOptions::default());
        let mut effects = vec![];
        for who in [OBAMA, STRANGER, KIT] {
            effects.extend(scene.show(&[at(200.0, who)], 12, true));
            effects.extend(scene.show(&[], 15, true));
        }
        use EventType::*;
        let some = |p: &str| Some(p.to_string());
        assert_eq!(
            track_events(&effects),
            vec![
                (Recognized, some("obama")),
                (Left, some("obama")),
                (Unknown, None),
                (Left, None),
                (Recognized, some("kit")),
                (Left, some("kit")),
            ]
        );
        // Presence is refreshed while a recognised person is in view, never for the stranger.
        let seen: Vec<&str> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::StillSeen { person, .. } => Some(person.as_str()),
                _ => None,
            })
            .collect();
        assert!(seen.contains(&"obama") && seen.contains(&"kit"), "{seen:?}");
        assert!(seen.iter().all(|p| *p == "obama" || *p == "kit"));
    }

    #[test]
    fn two_people_in_one_frame_are_both_named() {
        let mut scene = Scene::new(RecognizerOptions::default());
        let effects = scene.show(&[at(50.0, OBAMA), at(400.0, KIT)], 8, true);
        let mut named: Vec<String> = track_events(&effects)
            .into_iter()
            .filter(|(kind, _)| *kind == EventType::Recognized)
            .filter_map(|(_, p)| p)
            .collect();
        named.sort();
        assert_eq!(named, vec!["kit", "obama"]);
        assert_eq!(scene.recognizer.faces_in_view(), 2);
    }

    #[test]
    fn a_small_face_is_followed_but_never_named() {
        let mut scene = Scene::new(RecognizerOptions::default());
        let small = Face {
            left: 200.0,
            size: 20.0,
            who: OBAMA,
        };
        let effects = scene.show(&[small], 12, true);
        assert!(track_events(&effects).is_empty(), "{effects:?}");
        assert_eq!(scene.recognizer.faces_in_view(), 1);
        assert!(scene.recognizer.last_crop().is_none());
    }

    #[test]
    fn a_still_scene_skips_the_networks_once_everyone_is_decided() {
        let mut scene = Scene::new(RecognizerOptions::default());
        scene.show(&[at(200.0, OBAMA)], 6, true);
        let before = scene.models.detections;
        // Same picture for a second (5 frames, under the 2 s recheck): nobody is detected again, the
        // person stays in view.
        let effects = scene.show(&[at(200.0, OBAMA)], 5, false);
        assert_eq!(
            scene.models.detections,
            before + 1,
            "only the first still frame is analysed"
        );
        assert!(track_events(&effects).is_empty());
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::StillSeen { person, .. } if person == "obama"))
        );
        // A still scene is analysed again after still_recheck_s (2 s = 10 frames).
        scene.show(&[at(200.0, OBAMA)], 10, false);
        assert!(scene.models.detections >= before + 2);
    }

    #[test]
    fn an_undecided_face_is_analysed_even_in_a_still_scene() {
        let mut scene = Scene::new(RecognizerOptions::default());
        scene.show(&[at(200.0, STRANGER)], 1, false);
        let before = scene.models.detections;
        scene.show(&[at(200.0, STRANGER)], 3, false);
        assert_eq!(scene.models.detections, before + 3);
    }

    #[test]
    fn snapshots_follow_the_setting() {
        let mut off = Scene::new(RecognizerOptions::default());
        let effects = off.show(&[at(200.0, OBAMA)], 6, true);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Snapshot(_))));
        assert!(
            off.recognizer.last_crop().is_some(),
            "kept for the snapshot command"
        );
        let mut on = Scene::new(RecognizerOptions { snapshots: true });
        let effects = on.show(&[at(200.0, OBAMA)], 6, true);
        let snapshots = effects
            .iter()
            .filter(|e| matches!(e, Effect::Snapshot(_)))
            .count();
        assert_eq!(snapshots, 1, "one snapshot when the track is decided");
    }

    /// (person, photos) of the enrolments saved and (person, refusal) of those refused.
    type Enrolments = (Vec<(String, usize)>, Vec<(String, EnrolmentRefused)>);

    fn enrolments(effects: &[Effect]) -> Enrolments {
        let mut saved = vec![];
        let mut refused = vec![];
        for e in effects {
            match e {
                Effect::Enrol { person, photos, .. } => saved.push((person.clone(), photos.len())),
                Effect::EnrolmentRefused { person, why } => {
                    refused.push((person.clone(), why.clone()))
                }
                _ => {}
            }
        }
        (saved, refused)
    }

    #[test]
    fn enrolment_takes_frames_with_exactly_one_usable_face() {
        let mut scene = Scene::new(RecognizerOptions::default());
        scene
            .recognizer
            .start_enrolment(Enrolment::new("ada", 2, false));
        // Two faces, or one too small: nothing collected.
        let effects = scene.show(&[at(50.0, STRANGER), at(400.0, KIT)], 3, true);
        assert_eq!(enrolments(&effects), (vec![], vec![]));
        let tiny = Face {
            left: 200.0,
            size: 20.0,
            who: STRANGER,
        };
        scene.show(&[tiny], 3, true);
        assert!(scene.recognizer.is_enrolling());
        // One usable face, even in a still scene: the enrolment ends once it has its frames.
        let effects = scene.show(&[at(200.0, STRANGER)], 4, false);
        assert_eq!(enrolments(&effects), (vec![("ada".to_string(), 2)], vec![]));
        assert!(!scene.recognizer.is_enrolling());
        let Some(Effect::Enrol { photos, .. }) =
            effects.iter().find(|e| matches!(e, Effect::Enrol { .. }))
        else {
            unreachable!()
        };
        assert!(image::load_from_memory(&photos[0]).is_ok(), "JPEG photos");
        scene
            .recognizer
            .start_enrolment(Enrolment::new("ada", 3, false));
        scene.show(&[at(200.0, STRANGER)], 1, true);
        let taken = scene.recognizer.take_enrolment().unwrap();
        assert_eq!((taken.person(), taken.collected()), ("ada", 1));
        scene.recognizer.start_enrolment(taken);
        assert!(scene.recognizer.cancel_enrolment());
        assert_eq!(
            enrolments(&scene.show(&[at(200.0, STRANGER)], 3, true)),
            (vec![], vec![])
        );
    }

    #[test]
    fn enrolment_of_two_people_or_of_a_stranger_as_someone_enrolled_is_refused() {
        let mut scene = Scene::new(RecognizerOptions::default());
        // Frames of two different people (each alone in view) for one new person.
        scene
            .recognizer
            .start_enrolment(Enrolment::new("ada", 2, false));
        scene.show(&[at(200.0, STRANGER)], 1, true);
        let effects = scene.show(&[at(200.0, 6)], 1, true);
        let (saved, refused) = enrolments(&effects);
        assert!(saved.is_empty());
        assert!(
            matches!(refused[..], [(_, EnrolmentRefused::NotOnePerson { .. })]),
            "{refused:?}"
        );
        // A stranger's frames added to obama.
        scene
            .recognizer
            .start_enrolment(Enrolment::new("obama", 2, false));
        let effects = scene.show(&[at(200.0, STRANGER)], 2, true);
        let (_, refused) = enrolments(&effects);
        assert!(
            matches!(refused[..], [(_, EnrolmentRefused::NotThatPerson { .. })]),
            "{refused:?}"
        );
        // Kit's face enrolled as somebody new.
        scene
            .recognizer
            .start_enrolment(Enrolment::new("eve", 2, false));
        let effects = scene.show(&[at(200.0, KIT)], 2, true);
        let (_, refused) = enrolments(&effects);
        assert!(
            matches!(&refused[..], [(_, EnrolmentRefused::TooSimilar { other, .. })] if other == "kit"),
            "{refused:?}"
        );
    }

    #[test]
    fn enrolment_analyses_a_still_scene() {
        let mut scene = Scene::new(RecognizerOptions::default());
        scene.show(&[at(200.0, OBAMA)], 6, true);
        scene.show(&[at(200.0, OBAMA)], 1, false);
        scene
            .recognizer
            .start_enrolment(Enrolment::new("obama", 3, false));
        let effects = scene.show(&[at(200.0, OBAMA)], 3, false);
        assert_eq!(
            enrolments(&effects),
            (vec![("obama".to_string(), 3)], vec![])
        );
    }

    #[test]
    fn ending_all_tracks_reports_left_for_decided_ones() {
        let mut scene = Scene::new(RecognizerOptions::default());
        scene.show(&[at(50.0, OBAMA), at(400.0, STRANGER)], 12, true);
        let effects = scene
            .recognizer
            .end_all(scene.start + Duration::from_secs(60));
        let mut left = track_events(&effects);
        left.sort_by_key(|(_, p)| p.clone());
        assert_eq!(
            left,
            vec![
                (EventType::Left, None),
                (EventType::Left, Some("obama".into()))
            ]
        );
    }
}
