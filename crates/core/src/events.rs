//! What face-edge tells the outside world, as messages: recognition events, per-person presence, camera
//! events for Home Assistant `event` entities, statistics, command responses and the Home Assistant
//! device discovery document. Pure: facts in, (topic, payload, retain) out; `mqtt` or stdout deliver them.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// Version of the event payloads; bumped on any incompatible change.
pub const EVENT_SCHEMA: u32 = 1;

/// One message to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub kind: MessageKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A moment in time (an event, a response, stats): queued in order, the oldest dropped when full.
    Event,
    /// The latest value of something (presence, discovery, availability, snapshot): only the newest per
    /// topic matters, so it replaces an older queued one and is never dropped.
    State,
}

impl Message {
    pub fn event(topic: String, payload: &Value) -> Message {
        Message {
            topic,
            payload: payload.to_string().into_bytes(),
            retain: false,
            kind: MessageKind::Event,
        }
    }

    pub fn state(topic: String, payload: Vec<u8>) -> Message {
        Message {
            topic,
            payload,
            retain: true,
            kind: MessageKind::State,
        }
    }
}

/// RFC 3339 UTC time with milliseconds.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The topics of one face-edge node.
#[derive(Debug, Clone, PartialEq)]
pub struct Topics {
    pub base: String,
    pub discovery_prefix: String,
    pub node_id: String,
}

impl Topics {
    pub fn new(node_id: &str, discovery_prefix: &str) -> Topics {
        Topics {
            base: format!("face-edge/{node_id}"),
            discovery_prefix: discovery_prefix.to_string(),
            node_id: node_id.to_string(),
        }
    }
    pub fn availability(&self) -> String {
        format!("{}/availability", self.base)
    }
    pub fn events(&self) -> String {
        format!("{}/events", self.base)
    }
    pub fn camera_event(&self, camera: &str) -> String {
        format!("{}/cam/{camera}/event", self.base)
    }
    pub fn camera_snapshot(&self, camera: &str) -> String {
        format!("{}/cam/{camera}/snapshot", self.base)
    }
    pub fn camera_status(&self, camera: &str) -> String {
        format!("{}/cam/{camera}/status", self.base)
    }
    pub fn person_state(&self, person: &str) -> String {
        format!("{}/person/{person}/state", self.base)
    }
    pub fn stats(&self) -> String {
        format!("{}/stats", self.base)
    }
    pub fn request_filter(&self) -> String {
        format!("{}/request/+", self.base)
    }
    pub fn request_command<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic.strip_prefix(&self.base)?.strip_prefix("/request/")
    }
    pub fn response(&self, command: &str) -> String {
        format!("{}/response/{command}", self.base)
    }
    pub fn discovery(&self) -> String {
        format!("{}/device/{}/config", self.discovery_prefix, self.node_id)
    }
    pub fn ha_status(&self) -> String {
        format!("{}/status", self.discovery_prefix)
    }
}

/// Turns a host name into a node id: lowercase letters, digits, '_' and '-'.
pub fn slug(s: &str) -> String {
    let out: String = s
        .trim()
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let out = out.trim_matches('-').to_string();
    if out.is_empty() {
        "face-edge".to_string()
    } else {
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Recognized,
    Unknown,
    Left,
}

/// A track's state change, as the tracker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceEvent {
    pub kind: EventType,
    pub camera: String,
    pub track_id: u64,
    /// The person recognised (None for an unknown face or a track that was never recognised).
    pub person: Option<String>,
    /// For unknown faces: the most similar enrolled person.
    pub best_guess: Option<String>,
    pub score: f32,
    pub second: f32,
    pub threshold: f32,
    pub bbox: [f32; 4],
    pub first_seen: SystemTime,
    pub at: SystemTime,
}

/// Builds event payloads with ids unique across restarts: `<start time in ms, hex>-<sequence>`.
#[derive(Debug)]
pub struct EventBuilder {
    topics: Topics,
    model: String,
    run_id: String,
    sequence: u64,
}

impl EventBuilder {
    pub fn new(topics: Topics, model: &str, started: SystemTime) -> EventBuilder {
        let ms = started
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        EventBuilder {
            topics,
            model: model.to_string(),
            run_id: format!("{ms:x}"),
            sequence: 0,
        }
    }

    pub fn set_model(&mut self, model: &str) {
        self.model = model.to_string();
    }

    /// The `events` message and, for recognized/unknown, the camera's `event` message.
    pub fn messages(&mut self, e: &FaceEvent, names: &BTreeMap<String, String>) -> Vec<Message> {
        self.sequence += 1;
        let id = format!("{}-{}", self.run_id, self.sequence);
        let name = e.person.as_ref().and_then(|p| names.get(p)).cloned();
        let mut payload = json!({
            "schema": EVENT_SCHEMA,
            "id": id,
            "type": e.kind,
            "camera": e.camera,
            "track_id": e.track_id,
            "person": e.person,
            "name": name,
            "first_seen": timestamp(e.first_seen),
            "ts": timestamp(e.at),
        });
        let fields = payload.as_object_mut().expect("object");
        match e.kind {
            EventType::Left => {
                let duration = e.at.duration_since(e.first_seen).unwrap_or_default();
                fields.insert("duration_s".into(), json!(round3(duration.as_secs_f64())));
            }
            EventType::Recognized | EventType::Unknown => {
                fields.insert("score".into(), json!(round3(e.score as f64)));
                fields.insert("second".into(), json!(round3(e.second as f64)));
                fields.insert("threshold".into(), json!(round3(e.threshold as f64)));
                fields.insert("box".into(), json!(e.bbox.map(|v| v.round() as i64)));
                fields.insert(
                    "face_size".into(),
                    json!((e.bbox[2] - e.bbox[0]).max(e.bbox[3] - e.bbox[1]).round() as i64),
                );
                fields.insert("model".into(), json!(self.model));
                if e.kind == EventType::Unknown {
                    fields.insert("best_guess".into(), json!(e.best_guess));
                }
            }
        }
        let mut out = vec![Message::event(self.topics.events(), &payload)];
        if e.kind != EventType::Left {
            let mut cam = payload.clone();
            cam.as_object_mut()
                .expect("object")
                .insert("event_type".into(), json!(e.kind));
            out.push(Message::event(self.topics.camera_event(&e.camera), &cam));
        }
        out
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Where each enrolled person is, published retained on `person/<id>/state` so automations always see a
/// value: a camera name while they are in view or were seen recently, else "not_home".
#[derive(Debug)]
pub struct Presence {
    topics: Topics,
    absence: Duration,
    people: BTreeMap<String, PersonPresence>,
}

#[derive(Debug, Clone, PartialEq)]
struct PersonPresence {
    state: Whereabouts,
    last_seen: Option<SystemTime>,
    score: Option<f32>,
    active_tracks: usize,
    last_published: Option<SystemTime>,
}

pub const NOT_HOME: &str = "not_home";

/// Where a person is, as `person/<id>/state` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Whereabouts {
    NotHome,
    /// In view of this camera, or seen there within the absence time.
    Camera(String),
}

impl Whereabouts {
    fn as_str(&self) -> &str {
        match self {
            Whereabouts::NotHome => NOT_HOME,
            Whereabouts::Camera(name) => name,
        }
    }
}

impl Presence {
    pub fn new(topics: Topics, absence: Duration) -> Presence {
        Presence {
            topics,
            absence,
            people: BTreeMap::new(),
        }
    }

    /// Sets the enrolled people; returns the state of each newly added one (for startup) and an empty
    /// retained message for each removed one (clearing it from the broker).
    pub fn set_people(&mut self, ids: &[String]) -> Vec<Message> {
        let mut out = vec![];
        let removed: Vec<String> = self
            .people
            .keys()
            .filter(|k| !ids.contains(k))
            .cloned()
            .collect();
        for id in removed {
            self.people.remove(&id);
            out.push(Message::state(self.topics.person_state(&id), vec![]));
        }
        for id in ids {
            if !self.people.contains_key(id) {
                self.people.insert(
                    id.clone(),
                    PersonPresence {
                        state: Whereabouts::NotHome,
                        last_seen: None,
                        score: None,
                        active_tracks: 0,
                        last_published: None,
                    },
                );
                out.push(self.message(id));
            }
        }
        out
    }

    /// Every person's current state (for a Home Assistant restart or a reconnect).
    pub fn all(&self) -> Vec<Message> {
        self.people.keys().map(|id| self.message(id)).collect()
    }

    pub fn recognized(
        &mut self,
        person: &str,
        camera: &str,
        score: f32,
        at: SystemTime,
    ) -> Option<Message> {
        let p = self.people.get_mut(person)?;
        p.active_tracks += 1;
        p.state = Whereabouts::Camera(camera.to_string());
        p.last_seen = Some(at);
        p.score = Some(score);
        p.last_published = Some(at);
        Some(self.message(person))
    }

    /// A recognised person's track is still in view: refreshes `last_seen`, republishing at most every
    /// third of the absence time so Home Assistant's off_delay never lapses while they are there.
    pub fn still_seen(&mut self, person: &str, at: SystemTime) -> Option<Message> {
        let refresh = self.absence / 3;
        let p = self.people.get_mut(person)?;
        p.last_seen = Some(at);
        let due = p
            .last_published
            .is_none_or(|t| at.duration_since(t).unwrap_or_default() >= refresh);
        if due {
            p.last_published = Some(at);
            return Some(self.message(person));
        }
        None
    }

    pub fn track_ended(&mut self, person: &str, at: SystemTime) {
        if let Some(p) = self.people.get_mut(person) {
            p.active_tracks = p.active_tracks.saturating_sub(1);
            p.last_seen = Some(at);
        }
    }

    /// People out of view for the absence time become "not_home".
    pub fn tick(&mut self, now: SystemTime) -> Vec<Message> {
        let absence = self.absence;
        let gone: Vec<String> = self
            .people
            .iter()
            .filter(|(_, p)| {
                p.active_tracks == 0
                    && p.state != Whereabouts::NotHome
                    && p.last_seen
                        .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= absence)
            })
            .map(|(id, _)| id.clone())
            .collect();
        gone.iter()
            .map(|id| {
                let p = self.people.get_mut(id).expect("present");
                p.state = Whereabouts::NotHome;
                p.last_published = Some(now);
                self.message(id)
            })
            .collect()
    }

    fn message(&self, id: &str) -> Message {
        let p = &self.people[id];
        let payload = json!({
            "state": p.state.as_str(),
            "last_seen": p.last_seen.map(timestamp),
            "score": p.score.map(|s| round3(s as f64)),
        });
        Message::state(
            self.topics.person_state(id),
            payload.to_string().into_bytes(),
        )
    }
}

pub use crate::discovery::{AWAY, DiscoveryInput, discovery, platform};

/// A request received on `request/<command>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub command: String,
    pub transaction: Option<Value>,
    pub body: Value,
}

/// Parses a request; a body that is not a JSON object is answered with an error by the caller.
pub fn parse_request(command: &str, payload: &[u8]) -> Result<Request, String> {
    let body: Value = if payload.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(payload).map_err(|e| format!("request body is not JSON: {e}"))?
    };
    if !body.is_object() {
        return Err("request body must be a JSON object".into());
    }
    Ok(Request {
        command: command.to_string(),
        transaction: body.get("transaction").cloned(),
        body,
    })
}

/// The answer on `response/<command>`.
pub fn response(
    topics: &Topics,
    command: &str,
    transaction: Option<&Value>,
    result: Result<Value, String>,
) -> Message {
    let payload = match result {
        Ok(data) => json!({"status": "ok", "data": data, "transaction": transaction}),
        Err(e) => json!({"status": "error", "error": e, "transaction": transaction}),
    };
    Message::event(topics.response(command), &payload)
}

/// Ids of people and cameras become MQTT topic segments and file names: lowercase letters, digits, '_'
/// and '-', at most 64 characters.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("hall-pi", "homeassistant")
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    #[test]
    fn slugs_are_topic_safe() {
        assert_eq!(slug("Hall Pi.local"), "hall-pi-local");
        assert_eq!(slug("  "), "face-edge");
    }

    #[test]
    fn recognized_events_carry_the_schema_and_unique_ids() {
        let mut b = EventBuilder::new(topics(), "japanese-face-v1", at(0));
        let e = FaceEvent {
            kind: EventType::Recognized,
            camera: "hall".into(),
            track_id: 3,
            person: Some("alice".into()),
            best_guess: Some("alice".into()),
            score: 0.71234,
            second: 0.2,
            threshold: 0.4,
            bbox: [10.0, 20.0, 110.0, 140.0],
            first_seen: at(1),
            at: at(2),
        };
        let names = BTreeMap::from([("alice".to_string(), "Alice".to_string())]);
        let m = b.messages(&e, &names);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].topic, "face-edge/hall-pi/events");
        assert!(!m[0].retain);
        let v: Value = serde_json::from_slice(&m[0].payload).unwrap();
        assert_eq!(v["schema"], 1);
        assert_eq!(v["type"], "recognized");
        assert_eq!(v["name"], "Alice");
        assert_eq!(v["score"], 0.712);
        assert_eq!(v["face_size"], 120);
        assert_eq!(v["model"], "japanese-face-v1");
        let cam: Value = serde_json::from_slice(&m[1].payload).unwrap();
        assert_eq!(m[1].topic, "face-edge/hall-pi/cam/hall/event");
        assert_eq!(cam["event_type"], "recognized");
        let second = b.messages(
            &FaceEvent {
                kind: EventType::Left,
                ..e
            },
            &names,
        );
        let left: Value = serde_json::from_slice(&second[0].payload).unwrap();
        assert_ne!(left["id"], v["id"]);
        assert_eq!(left["duration_s"], 1.0);
        assert_eq!(second.len(), 1, "left has no camera event");
    }

    #[test]
    fn presence_follows_tracks_and_absence() {
        let mut p = Presence::new(topics(), Duration::from_secs(60));
        let start = p.set_people(&["alice".into(), "bob".into()]);
        assert_eq!(start.len(), 2);
        assert!(
            start
                .iter()
                .all(|m| m.retain && String::from_utf8_lossy(&m.payload).contains("not_home"))
        );
        let m = p.recognized("alice", "hall", 0.8, at(0)).unwrap();
        assert!(String::from_utf8_lossy(&m.payload).contains("\"state\":\"hall\""));
        assert!(
            p.still_seen("alice", at(10)).is_none(),
            "refresh at most every 20 s"
        );
        assert!(p.still_seen("alice", at(21)).is_some());
        assert!(p.tick(at(500)).is_empty(), "in view: stays present");
        p.track_ended("alice", at(30));
        assert!(p.tick(at(60)).is_empty());
        let gone = p.tick(at(90));
        assert_eq!(gone.len(), 1);
        assert!(String::from_utf8_lossy(&gone[0].payload).contains("not_home"));
        let removed = p.set_people(&["alice".into()]);
        assert_eq!(
            removed,
            vec![Message::state(
                "face-edge/hall-pi/person/bob/state".into(),
                vec![]
            )]
        );
        assert!(
            p.recognized("carol", "hall", 0.9, at(0)).is_none(),
            "not enrolled"
        );
    }

    #[test]
    fn discovery_lists_components_and_removes_departed_ones() {
        let input = DiscoveryInput {
            people: vec![
                ("alice".into(), "Alice".into()),
                ("bob".into(), "Bob".into()),
            ],
            cameras: vec!["hall".into()],
            snapshots: false,
            off_delay_s: 90,
        };
        let (m, ids) = discovery(&topics(), &input, &BTreeMap::new());
        assert_eq!(m.topic, "homeassistant/device/hall-pi/config");
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["cmps"]["alice_presence"]["off_delay"], 90);
        assert_eq!(
            v["cmps"]["hall_event"]["event_types"],
            json!(["recognized", "unknown"])
        );
        assert!(v["cmps"].get("hall_snapshot").is_none());
        let fewer = DiscoveryInput {
            people: vec![("alice".into(), "Alice".into())],
            ..input
        };
        let (m, _) = discovery(&topics(), &fewer, &ids);
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["cmps"]["bob_presence"], json!({"p": "binary_sensor"}));
        assert_eq!(v["cmps"]["bob_tracker"], json!({"p": "device_tracker"}));
        assert_eq!(v["cmps"]["bob_location"], json!({"p": "sensor"}));
        assert_eq!(v["cmps"]["alice_location"]["name"], "Alice location");
    }

    #[test]
    fn requests_and_responses() {
        let t = topics();
        assert_eq!(
            t.request_command("face-edge/hall-pi/request/enroll"),
            Some("enroll")
        );
        assert_eq!(t.request_command("face-edge/other/request/enroll"), None);
        let r = parse_request("enroll", br#"{"name":"carol","transaction":"t1"}"#).unwrap();
        assert_eq!(r.transaction, Some(json!("t1")));
        assert!(parse_request("x", b"[1]").is_err());
        assert!(parse_request("x", b"").is_ok());
        let m = response(
            &t,
            "enroll",
            r.transaction.as_ref(),
            Err("no camera".into()),
        );
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            (v["status"].as_str(), v["transaction"].as_str()),
            (Some("error"), Some("t1"))
        );
    }
}
