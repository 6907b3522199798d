//! Following faces across the frames of one camera and deciding who they are by voting, so that a visit
//! produces one `recognized` (or `unknown`) and one `left`, not an event per frame. Pure: detections,
//! decisions and times in; which faces to embed and the resulting events out.

use crate::detect::Detection;
use crate::events::{EventType, FaceEvent};
use crate::gallery::Decision;
use crate::settings::TrackingSettings;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// Detections overlapping a track's last box by at least this IoU continue it.
const MIN_IOU: f32 = 0.3;
/// Or, failing overlap (fast movement, low frame rate), whose centre is within this many box widths.
const MAX_CENTRE_SHIFT: f32 = 0.6;
/// Recent decisions kept per track for voting.
pub(crate) const VOTE_WINDOW: usize = 6;

#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Pending,
    Recognized(String),
    Unknown,
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    bbox: [f32; 4],
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// Detections since the last embedding.
    since_embedding: u32,
    /// Face size at the last embedding: a clearly larger face is worth another look.
    embedded_size: f32,
    embeddings: usize,
    votes: VecDeque<Decision>,
    verdict: Verdict,
    /// The best decision so far, reported with unknown/left events.
    best: Option<Decision>,
}

/// What the caller should do with one detection of this frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Assignment {
    pub detection: usize,
    pub track_id: u64,
    pub embed: bool,
}

/// Why a face was not embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    TooSmall,
    Turned,
}

/// Checks a face's size and pose from its box and landmarks (blur is checked on the aligned crop).
pub(crate) fn face_quality(d: &Detection, config: &TrackingSettings) -> Result<(), Skip> {
    if d.width().max(d.height()) < config.min_face_px {
        Err(Skip::TooSmall)
    } else if turn(d) > config.max_turn {
        Err(Skip::Turned)
    } else {
        Ok(())
    }
}

/// How far the face is turned: horizontal offset of the nose from the eye midpoint, relative to the
/// distance between the eyes (0 = frontal, about 0.5 = profile).
pub(crate) fn turn(d: &Detection) -> f32 {
    let [le, re, nose, ..] = d.landmarks;
    let eye_distance = ((re[0] - le[0]).powi(2) + (re[1] - le[1]).powi(2))
        .sqrt()
        .max(1.0);
    ((nose[0] - (le[0] + re[0]) / 2.0) / eye_distance).abs()
}

/// Sharpness of a grey image: variance of its 4-neighbour Laplacian.
pub(crate) fn sharpness(img: &image::RgbImage) -> f32 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let grey: Vec<f32> = img
        .as_raw()
        .chunks_exact(3)
        .map(|p| 0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32)
        .collect();
    let (mut sum, mut sum_sq, mut n) = (0.0f64, 0.0f64, 0.0f64);
    for y in 1..h - 1 {
        for x in 1..w - 1 {
            let i = y * w + x;
            let l = (grey[i - 1] + grey[i + 1] + grey[i - w] + grey[i + w] - 4.0 * grey[i]) as f64;
            sum += l;
            sum_sq += l * l;
            n += 1.0;
        }
    }
    ((sum_sq / n) - (sum / n).powi(2)) as f32
}

#[derive(Debug)]
pub(crate) struct Tracker {
    camera: String,
    config: TrackingSettings,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(camera: &str, config: TrackingSettings) -> Tracker {
        Tracker {
            camera: camera.to_string(),
            config,
            tracks: vec![],
            next_id: 1,
        }
    }

    pub fn set_config(&mut self, config: TrackingSettings) {
        self.config = config;
    }

    pub fn active_tracks(&self) -> usize {
        self.tracks.len()
    }

    /// True when every face in view has been recognised or reported unknown (or none is in view):
    /// nothing more can be learnt from a frame that shows the same scene.
    pub fn all_decided(&self) -> bool {
        self.tracks.iter().all(|t| t.verdict != Verdict::Pending)
    }

    /// Matches this frame's detections to tracks (new faces start tracks), says which to embed, and
    /// ends tracks not seen for `lost_after_s` (their `left` events are returned).
    pub fn update(
        &mut self,
        detections: &[Detection],
        now: SystemTime,
    ) -> (Vec<Assignment>, Vec<FaceEvent>) {
        let track_of = self.match_detections(detections);
        let mut assignments = Vec::with_capacity(detections.len());
        for (di, d) in detections.iter().enumerate() {
            let ti = match track_of[di] {
                Some(ti) => ti,
                None => {
                    self.tracks.push(Track {
                        id: self.next_id,
                        bbox: d.bbox,
                        first_seen: now,
                        last_seen: now,
                        since_embedding: u32::MAX,
                        embedded_size: 0.0,
                        embeddings: 0,
                        votes: VecDeque::new(),
                        verdict: Verdict::Pending,
                        best: None,
                    });
                    self.next_id += 1;
                    self.tracks.len() - 1
                }
            };
            let config = &self.config;
            let t = &mut self.tracks[ti];
            t.bbox = d.bbox;
            t.last_seen = now;
            t.since_embedding = t.since_embedding.saturating_add(1);
            let size = d.width().max(d.height());
            let every = if t.verdict == Verdict::Pending {
                config.embed_every
            } else {
                config.recheck_every
            };
            let embed = t.since_embedding >= every || size > t.embedded_size * 1.33;
            assignments.push(Assignment {
                detection: di,
                track_id: t.id,
                embed,
            });
        }
        (assignments, self.end_lost(now))
    }

    /// The track each detection continues (None: a new face), greedily by affinity, one to one.
    fn match_detections(&self, detections: &[Detection]) -> Vec<Option<usize>> {
        let mut pairs: Vec<(f32, usize, usize)> = vec![]; // (affinity, track, detection)
        for (ti, t) in self.tracks.iter().enumerate() {
            for (di, d) in detections.iter().enumerate() {
                let a = affinity(&t.bbox, d);
                if a > 0.0 {
                    pairs.push((a, ti, di));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut track_of: Vec<Option<usize>> = vec![None; detections.len()];
        let mut taken = vec![false; self.tracks.len()];
        for (_, ti, di) in pairs {
            if !taken[ti] && track_of[di].is_none() {
                taken[ti] = true;
                track_of[di] = Some(ti);
            }
        }
        track_of
    }

    /// Ends the tracks not seen for `lost_after_s`; returns `left` for those that were decided.
    fn end_lost(&mut self, now: SystemTime) -> Vec<FaceEvent> {
        let lost_after = Duration::from_secs_f32(self.config.lost_after_s);
        let mut left = vec![];
        let camera = self.camera.clone();
        self.tracks.retain(|t| {
            let gone = now.duration_since(t.last_seen).unwrap_or_default() >= lost_after;
            if gone && t.verdict != Verdict::Pending {
                left.push(left_event(&camera, t));
            }
            !gone
        });
        left
    }

    /// Records that the face of `track_id` was not embedded after all (quality), so it is retried soon.
    pub fn skipped(&mut self, track_id: u64) {
        if let Some(t) = self.tracks.iter_mut().find(|t| t.id == track_id) {
            t.since_embedding = t
                .since_embedding
                .min(self.config.embed_every.saturating_sub(1));
        }
    }

    /// Feeds the gallery's decision for a track's new embedding; returns the events if the track's
    /// verdict changes (pending -> recognized or unknown, unknown -> recognized). When a recognised
    /// track's recent embeddings all name somebody else, the boxes swapped people (one walked off as
    /// another stepped in): the old visit is closed with `left` and a new track starts.
    pub fn observe(
        &mut self,
        track_id: u64,
        size: f32,
        decision: Decision,
        now: SystemTime,
    ) -> Vec<FaceEvent> {
        let needed = self.config.votes;
        let Some(index) = self.tracks.iter().position(|t| t.id == track_id) else {
            return vec![];
        };
        let swapped = match &self.tracks[index].verdict {
            Verdict::Recognized(p) => {
                let recent: Vec<&Decision> = self.tracks[index]
                    .votes
                    .iter()
                    .rev()
                    .take(needed - 1)
                    .collect();
                decision.person.as_ref().is_some_and(|q| q != p)
                    && recent.len() == needed - 1
                    && recent.iter().all(|d| d.person == decision.person)
            }
            _ => false,
        };
        let mut events = vec![];
        if swapped {
            let old = self.tracks[index].clone();
            events.push(left_event(&self.camera, &old));
            let t = &mut self.tracks[index];
            t.id = self.next_id;
            self.next_id += 1;
            t.first_seen = now;
            t.verdict = Verdict::Pending;
            t.embeddings = 0;
            t.best = None;
            // The decisions that revealed the newcomer are theirs.
            t.votes.retain(|d| d.person == decision.person);
        }
        events.extend(self.observe_in(index, size, decision, now));
        events
    }

    fn observe_in(
        &mut self,
        index: usize,
        size: f32,
        decision: Decision,
        now: SystemTime,
    ) -> Option<FaceEvent> {
        let config = &self.config;
        let t = &mut self.tracks[index];
        t.since_embedding = 0;
        t.embedded_size = size;
        t.embeddings += 1;
        if t.best
            .as_ref()
            .is_none_or(|b| decision.similarity > b.similarity)
        {
            t.best = Some(decision.clone());
        }
        t.votes.push_back(decision);
        if t.votes.len() > VOTE_WINDOW {
            t.votes.pop_front();
        }
        let winner = vote(t.votes.iter().map(|d| d.person.as_deref()), config.votes);
        let (kind, person) = match (&t.verdict, winner) {
            (Verdict::Recognized(_), _) => return None,
            (_, Some(person)) => {
                t.verdict = Verdict::Recognized(person.clone());
                (EventType::Recognized, Some(person))
            }
            (Verdict::Pending, None) if t.embeddings >= config.unknown_after => {
                t.verdict = Verdict::Unknown;
                (EventType::Unknown, None)
            }
            _ => return None,
        };
        let camera = self.camera.clone();
        Some(decision_event(&camera, t, kind, person, now))
    }

    /// People of the recognised tracks currently in view (for presence refreshes).
    pub fn recognized_people(&self) -> Vec<String> {
        self.tracks
            .iter()
            .filter_map(|t| match &t.verdict {
                Verdict::Recognized(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// Ends every track (camera stopped or service shutting down).
    pub fn end_all(&mut self, now: SystemTime) -> Vec<FaceEvent> {
        let camera = self.camera.clone();
        self.tracks
            .drain(..)
            .filter(|t| t.verdict != Verdict::Pending)
            .map(|mut t| {
                t.last_seen = t.last_seen.max(now);
                left_event(&camera, &t)
            })
            .collect()
    }
}

/// The person named by at least `needed` of the recent decisions and more often than anyone else.
pub(crate) fn vote<'a>(
    decisions: impl Iterator<Item = Option<&'a str>>,
    needed: usize,
) -> Option<String> {
    let mut counts: Vec<(&str, usize)> = vec![];
    for p in decisions.flatten() {
        match counts.iter_mut().find(|(q, _)| *q == p) {
            Some(c) => c.1 += 1,
            None => counts.push((p, 1)),
        }
    }
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    match counts.as_slice() {
        [(p, n), rest @ ..] if *n >= needed && rest.first().is_none_or(|(_, m)| m < n) => {
            Some(p.to_string())
        }
        _ => None,
    }
}

fn affinity(track_box: &[f32; 4], d: &Detection) -> f32 {
    let as_detection = Detection {
        bbox: *track_box,
        score: 0.0,
        landmarks: [[0.0; 2]; 5],
    };
    let iou = as_detection.iou(d);
    if iou >= MIN_IOU {
        return 1.0 + iou;
    }
    let [cx, cy] = as_detection.centre();
    let [dx, dy] = d.centre();
    let shift = ((cx - dx).powi(2) + (cy - dy).powi(2)).sqrt() / as_detection.width().max(1.0);
    if shift <= MAX_CENTRE_SHIFT {
        1.0 - shift
    } else {
        0.0
    }
}

fn decision_event(
    camera: &str,
    t: &Track,
    kind: EventType,
    person: Option<String>,
    now: SystemTime,
) -> FaceEvent {
    // Report the strongest decision for the named person (or the best guess for an unknown face).
    let best = t
        .votes
        .iter()
        .filter(|d| person.is_none() || d.person == person)
        .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
        .or(t.best.as_ref())
        .cloned()
        .expect("a decision was just recorded");
    FaceEvent {
        kind,
        camera: camera.to_string(),
        track_id: t.id,
        best_guess: best.best_guess.clone(),
        person,
        score: best.similarity,
        second: best.second,
        threshold: best.threshold,
        bbox: t.bbox,
        first_seen: t.first_seen,
        at: now,
    }
}

/// `left` is stamped with the moment the face was last seen: the visit's true end.
fn left_event(camera: &str, t: &Track) -> FaceEvent {
    let person = match &t.verdict {
        Verdict::Recognized(p) => Some(p.clone()),
        _ => None,
    };
    let best = t.best.clone();
    FaceEvent {
        kind: EventType::Left,
        camera: camera.to_string(),
        track_id: t.id,
        person,
        best_guess: best.as_ref().and_then(|b| b.best_guess.clone()),
        score: best.as_ref().map_or(0.0, |b| b.similarity),
        second: best.as_ref().map_or(0.0, |b| b.second),
        threshold: best.as_ref().map_or(0.0, |b| b.threshold),
        bbox: t.bbox,
        first_seen: t.first_seen,
        at: t.last_seen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(x: f32) -> Detection {
        let s = 100.0;
        Detection {
            bbox: [x, 50.0, x + s, 50.0 + s],
            score: 0.9,
            landmarks: [
                [x + 30.0, 90.0],
                [x + 70.0, 90.0],
                [x + 50.0, 110.0],
                [x + 35.0, 130.0],
                [x + 65.0, 130.0],
            ],
        }
    }

    fn decision(person: Option<&str>, similarity: f32) -> Decision {
        Decision {
            person: person.map(str::to_string),
            best_guess: Some("a".into()),
            similarity,
            second: 0.1,
            threshold: 0.4,
        }
    }

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn config() -> TrackingSettings {
        TrackingSettings {
            votes: 2,
            unknown_after: 3,
            embed_every: 2,
            lost_after_s: 1.0,
            ..TrackingSettings::default()
        }
    }

    #[test]
    fn one_visit_gives_one_recognized_and_one_left() {
        let mut t = Tracker::new("hall", config());
        let mut events = vec![];
        for frame in 0..10u64 {
            let (assign, left) = t.update(&[det(100.0 + frame as f32 * 5.0)], at(frame * 200));
            events.extend(left);
            assert_eq!(assign.len(), 1);
            assert_eq!(assign[0].track_id, 1, "the moving face stays one track");
            if assign[0].embed {
                events.extend(t.observe(1, 100.0, decision(Some("alice"), 0.7), at(frame * 200)));
            }
        }
        let (_, left) = t.update(&[], at(2000 + 1000));
        events.extend(left);
        let kinds: Vec<(EventType, Option<String>)> =
            events.iter().map(|e| (e.kind, e.person.clone())).collect();
        assert_eq!(
            kinds,
            vec![
                (EventType::Recognized, Some("alice".into())),
                (EventType::Left, Some("alice".into()))
            ]
        );
        assert_eq!(events[1].first_seen, at(0));
    }

    #[test]
    fn a_stranger_is_unknown_after_enough_embeddings_and_can_still_be_recognized() {
        let mut t = Tracker::new("hall", config());
        let mut events = vec![];
        for frame in 0..3u64 {
            t.update(&[det(100.0)], at(frame));
            events.extend(t.observe(1, 100.0, decision(None, 0.2), at(frame)));
        }
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventType::Unknown);
        assert_eq!(events[0].best_guess.as_deref(), Some("a"));
        for frame in 3..5u64 {
            t.update(&[det(100.0)], at(frame));
            events.extend(t.observe(1, 100.0, decision(Some("bob"), 0.6), at(frame)));
        }
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[1].kind, events[1].person.as_deref()),
            (EventType::Recognized, Some("bob"))
        );
    }

    #[test]
    fn two_people_are_two_tracks_and_split_votes_do_not_decide() {
        let mut t = Tracker::new("hall", config());
        let (a, _) = t.update(&[det(0.0), det(400.0)], at(0));
        assert_ne!(a[0].track_id, a[1].track_id);
        assert!(a.iter().all(|x| x.embed), "new tracks are embedded at once");
        assert!(
            t.observe(a[0].track_id, 100.0, decision(Some("alice"), 0.6), at(0))
                .is_empty()
        );
        t.update(&[det(0.0), det(400.0)], at(10));
        assert!(
            t.observe(a[0].track_id, 100.0, decision(Some("bob"), 0.6), at(10))
                .is_empty(),
            "1-1 tie"
        );
        let e = t
            .observe(a[0].track_id, 100.0, decision(Some("alice"), 0.8), at(20))
            .remove(0);
        assert_eq!(e.person.as_deref(), Some("alice"));
        assert_eq!(e.score, 0.8);
    }

    #[test]
    fn embedding_is_scheduled_not_every_frame() {
        let mut t = Tracker::new("hall", config());
        let mut embeds = vec![];
        for frame in 0..20u64 {
            let (a, _) = t.update(&[det(100.0)], at(frame));
            embeds.push(a[0].embed);
            if a[0].embed {
                t.observe(1, 100.0, decision(Some("alice"), 0.7), at(frame));
            }
        }
        let count = embeds.iter().filter(|e| **e).count();
        assert!(
            count <= 5,
            "decided tracks are re-checked rarely: {embeds:?}"
        );
        // A face that comes much closer is looked at again at once.
        let mut big = det(100.0);
        big.bbox[2] += 60.0;
        big.bbox[3] += 60.0;
        assert!(t.update(&[big], at(21)).0[0].embed);
    }

    #[test]
    fn quality_checks() {
        let c = TrackingSettings::default();
        assert_eq!(face_quality(&det(0.0), &c), Ok(()));
        let mut small = det(0.0);
        small.bbox = [0.0, 0.0, 20.0, 20.0];
        assert_eq!(face_quality(&small, &c), Err(Skip::TooSmall));
        let mut turned = det(0.0);
        turned.landmarks[2][0] = 72.0; // nose under the right eye
        assert_eq!(face_quality(&turned, &c), Err(Skip::Turned));
        let flat = image::RgbImage::from_pixel(20, 20, image::Rgb([90, 90, 90]));
        let checker = image::RgbImage::from_fn(20, 20, |x, y| {
            if (x + y) % 2 == 0 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255; 3])
            }
        });
        assert_eq!(sharpness(&flat), 0.0);
        assert!(sharpness(&checker) > 1000.0);
    }

    #[test]
    fn a_person_swap_in_one_box_closes_the_visit_and_starts_another() {
        let mut t = Tracker::new("hall", config());
        let mut events = vec![];
        for (frame, who) in ["alice", "alice", "bob", "bob"].iter().enumerate() {
            t.update(&[det(100.0)], at(frame as u64));
            events.extend(t.observe(1, 100.0, decision(Some(who), 0.7), at(frame as u64)));
        }
        let kinds: Vec<(EventType, Option<&str>, u64)> = events
            .iter()
            .map(|e| (e.kind, e.person.as_deref(), e.track_id))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (EventType::Recognized, Some("alice"), 1),
                (EventType::Left, Some("alice"), 1),
                (EventType::Recognized, Some("bob"), 2)
            ]
        );
    }
}
