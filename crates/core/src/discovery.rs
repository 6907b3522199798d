//! Home Assistant MQTT discovery: one device document listing every entity face-edge publishes, and the
//! removal of entities that are gone.

use crate::events::{Message, NOT_HOME, Topics};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The location sensor's state when the person has not been seen for the absence time.
pub const AWAY: &str = "away";
/// The device tracker's state while the person is in view (or was, within the absence time).
const HOME: &str = "home";

/// The component platforms face-edge announces, as static names (discovery keeps them per component).
pub fn platform(name: &str) -> Option<&'static str> {
    [
        "binary_sensor",
        "device_tracker",
        "event",
        "image",
        "sensor",
    ]
    .into_iter()
    .find(|p| *p == name)
}

/// What the Home Assistant discovery document describes.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryInput {
    /// (id, display name)
    pub people: Vec<(String, String)>,
    pub cameras: Vec<String>,
    pub snapshots: bool,
    /// Seconds after the last "present" update before Home Assistant turns occupancy off by itself.
    pub off_delay_s: u64,
}

/// Builds the device-based discovery document. Components of people or cameras that were in the previous
/// document but are gone now are sent with only their platform, which tells Home Assistant to remove them.
pub fn discovery(
    topics: &Topics,
    input: &DiscoveryInput,
    previous: &BTreeMap<String, &'static str>,
) -> (Message, BTreeMap<String, &'static str>) {
    let node = &topics.node_id;
    let version = env!("CARGO_PKG_VERSION");
    let components = person_components(topics, input)
        .into_iter()
        .chain(camera_components(topics, input))
        .chain(diagnostic_components(topics));
    let mut cmps = serde_json::Map::new();
    let mut current: BTreeMap<String, &'static str> = BTreeMap::new();
    for Component {
        key,
        platform,
        config,
    } in components
    {
        current.insert(key.clone(), platform);
        cmps.insert(key, config);
    }
    for (key, platform) in previous {
        if !current.contains_key(key) {
            cmps.insert(key.clone(), json!({ "p": platform }));
        }
    }
    let doc = json!({
        "dev": {"ids": [format!("face_edge_{node}")], "name": format!("face-edge {node}"), "mf": "face-edge", "mdl": "face-edge", "sw": version},
        "o": {"name": "face-edge", "sw": version},
        "avty_t": topics.availability(),
        "qos": 1,
        "cmps": cmps,
    });
    (
        Message::state(topics.discovery(), doc.to_string().into_bytes()),
        current,
    )
}

/// One entity of the device: its key in the document, its platform and its configuration.
struct Component {
    key: String,
    platform: &'static str,
    config: Value,
}

/// Renders a person's state payload for one entity. The payload is empty when face-edge clears the
/// retained state of somebody removed from the gallery: the guard renders nothing then, which Home
/// Assistant ignores, instead of logging a template error in the instant before the entity is gone.
fn from_state(expression: &str) -> String {
    format!("{{{{ {expression} if value_json is defined else '' }}}}")
}

/// Per person: occupancy (in view of a camera lately or not), where they were seen (the camera, or
/// away) and a device tracker that says only home / not_home, the two states Home Assistant's `person`
/// integration understands.
fn person_components(topics: &Topics, input: &DiscoveryInput) -> Vec<Component> {
    let node = &topics.node_id;
    let mut out = vec![];
    let seen = format!("value_json.state != '{NOT_HOME}'");
    for (id, name) in &input.people {
        let state = topics.person_state(id);
        let unique_id = |key: &str| format!("face_edge_{node}_{id}_{key}");
        out.push(Component {
            key: format!("{id}_presence"),
            platform: "binary_sensor",
            config: json!({
                "p": "binary_sensor", "name": format!("{name} present"), "unique_id": unique_id("presence"),
                "device_class": "occupancy", "state_topic": state,
                "value_template": from_state(&format!("('ON' if {seen} else 'OFF')")),
                "off_delay": input.off_delay_s,
            }),
        });
        out.push(Component {
            key: format!("{id}_location"),
            platform: "sensor",
            config: json!({
                "p": "sensor", "name": format!("{name} location"), "unique_id": unique_id("location"),
                "icon": "mdi:cctv", "state_topic": state,
                "value_template": from_state(&format!("(value_json.state if {seen} else '{AWAY}')")),
                "json_attributes_topic": state,
                "json_attributes_template": format!(
                    "{{{{ {{'last_seen': value_json.last_seen, 'score': value_json.score}} | tojson if value_json is defined else '{{}}' }}}}"
                ),
            }),
        });
        out.push(Component {
            key: format!("{id}_tracker"),
            platform: "device_tracker",
            config: json!({
                "p": "device_tracker", "name": name.clone(), "unique_id": unique_id("tracker"),
                "state_topic": state, "source_type": "router",
                "value_template": from_state(&format!("('{HOME}' if {seen} else '{NOT_HOME}')")),
                "payload_home": HOME, "payload_not_home": NOT_HOME,
            }),
        });
    }
    out
}

/// Per camera: its face events and, when snapshots are on, its last face.
fn camera_components(topics: &Topics, input: &DiscoveryInput) -> Vec<Component> {
    let node = &topics.node_id;
    let mut out = vec![];
    for camera in &input.cameras {
        out.push(Component {
            key: format!("{camera}_event"),
            platform: "event",
            config: json!({
                "p": "event", "name": format!("{camera} face"), "unique_id": format!("face_edge_{node}_{camera}_event"),
                "state_topic": topics.camera_event(camera), "event_types": ["recognized", "unknown"],
            }),
        });
        if input.snapshots {
            out.push(Component {
                key: format!("{camera}_snapshot"),
                platform: "image",
                config: json!({
                    "p": "image", "name": format!("{camera} last face"), "unique_id": format!("face_edge_{node}_{camera}_snapshot"),
                    "image_topic": topics.camera_snapshot(camera), "content_type": "image/jpeg",
                }),
            });
        }
    }
    out
}

/// The device's diagnostic sensors, read from the stats message.
fn diagnostic_components(topics: &Topics) -> Vec<Component> {
    let node = &topics.node_id;
    [
        ("fps", "fps", "fps", "Frames per second"),
        ("embed_ms", "ms", "embed_ms", "Embedding time"),
    ]
    .into_iter()
    .map(|(key, unit, field, name)| Component {
        key: key.to_string(),
        platform: "sensor",
        config: json!({
            "p": "sensor", "name": name, "unique_id": format!("face_edge_{node}_{key}"), "entity_category": "diagnostic",
            "state_topic": topics.stats(), "value_template": format!("{{{{ value_json.{field} }}}}"),
            "unit_of_measurement": unit, "state_class": "measurement",
        }),
    })
    .collect()
}
