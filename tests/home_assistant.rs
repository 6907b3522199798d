//! face-edge as Home Assistant users run it: a real Home Assistant Core (tests/install-home-assistant.sh)
//! with its MQTT integration, a real mosquitto and `face-edge run` with discovery, on a files camera
//! whose one photo the test swaps. Everything is asserted through Home Assistant's REST and websocket
//! APIs: the README's entity table and automations, states following the camera, availability, a Home
//! Assistant restart, removals, and a log without warnings about face-edge's entities.

mod common;

use common::broker::{Mosquitto, Subscriber, send_signal};
use common::home_assistant::{HomeAssistant, installed};
use common::scene::picture_640x480;
use common::{TempDir, data, face_edge};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

const NODE: &str = "hall-pi";
/// How long face-edge waits before a person unseen is "away" (Home Assistant's off_delay is 1.5x).
const ABSENCE_S: u64 = 3;
const WAIT: Duration = Duration::from_secs(40);

/// The README's Home Assistant automations, verbatim: the items of its `automation:` block (what
/// automations.yaml holds).
fn readme_automations() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```yaml\nautomation:\n")
        .expect("README has the automations block")
        + "```yaml\nautomation:\n".len();
    let len = readme[start..].find("```").unwrap();
    readme[start..start + len]
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
        .collect()
}

/// The entity ids of the README's entity table.
fn readme_entities() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme.find("## Home Assistant").unwrap()..];
    section
        .lines()
        .take_while(|l| !l.starts_with("Two automations"))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

/// The camera: one file, `frame.jpg`, played in a loop; `show` replaces it atomically.
struct Camera {
    dir: PathBuf,
}

impl Camera {
    fn show(&self, photo: Option<&str>) {
        let tmp = self.dir.join("next.jpeg");
        picture_640x480(photo).save(&tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("frame.jpg")).unwrap();
    }
}

struct FaceEdge {
    config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl FaceEdge {
    fn start(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            face_edge()
                .args(["run", "--config"])
                .arg(&self.config)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn signal(&mut self, signal: &str) {
        let child = self.child.as_ref().unwrap();
        send_signal(child.id(), signal);
        if signal != "HUP" {
            let _ = self.child.take().unwrap().wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FaceEdge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A gallery of three people: "Alice" (Obama's photos: the README's example person), kit_harington and
/// rose_leslie (folders named like ids).
fn gallery(dir: &TempDir) -> PathBuf {
    let people = dir.path("people");
    for (folder, source) in [
        ("Alice", "obama"),
        ("kit_harington", "kit_harington"),
        ("rose_leslie", "rose_leslie"),
    ] {
        std::fs::create_dir_all(people.join(folder)).unwrap();
        for photo in std::fs::read_dir(data("photos/gallery").join(source)).unwrap() {
            let photo = photo.unwrap().path();
            std::fs::copy(&photo, people.join(folder).join(photo.file_name().unwrap())).unwrap();
        }
    }
    people
}

fn write_config(dir: &TempDir, people: &Path, frames: &Path, broker: &Mosquitto) -> PathBuf {
    let path = dir.path("face-edge.toml");
    std::fs::write(
        &path,
        format!(
            "state_dir = \"{state}\"\n[models]\nembedder = \"mobilefacenet\"\n[gallery]\ndir = \"{people}\"\n\
             [tracking]\nlost_after_s = 1.0\n\
             [mqtt]\nurl = \"{url}\"\nnode_id = \"{NODE}\"\nreconnect_max_s = 1\nstats_interval_s = 1\nabsence_s = {ABSENCE_S}\nsnapshots = true\n\
             [[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"{frames}/frame.jpg\"\nloop = true\nfps = 5\n",
            state = dir.path("state").display(),
            people = people.display(),
            url = broker.url(),
            frames = frames.display(),
        ),
    )
    .unwrap();
    path
}

/// Entities of a person (by the id part of their entity ids) in Home Assistant's entity registry.
fn entities_of(ha: &HomeAssistant, person: &str) -> Vec<String> {
    ha.mqtt_entities()
        .iter()
        .filter_map(|e| e["entity_id"].as_str())
        .filter(|id| id.contains(&format!("_{person}")))
        .map(str::to_string)
        .collect()
}

/// Waits until Home Assistant has no entity of `person` any more.
fn wait_until_gone(ha: &HomeAssistant, person: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !entities_of(ha, person).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{person}'s entities are still there: {:?}",
            entities_of(ha, person)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// True when the broker holds a retained message on `topic` (a fresh subscriber gets it at once).
fn retained_on(broker: &Mosquitto, topic: &str) -> bool {
    let sub = Subscriber::start(broker.port, topic);
    std::thread::sleep(Duration::from_millis(500));
    !sub.on(topic).is_empty()
}

fn attribute<'a>(state: &'a Value, name: &str) -> &'a Value {
    &state["attributes"][name]
}

/// Home Assistant's warnings and errors that concern face-edge's entities or MQTT (its own start-up
/// complaints about the machine, such as a missing libturbojpeg, are not face-edge's).
fn warnings_about_face_edge(log: &str) -> Vec<&str> {
    const LOGGERS: &[&str] = &[
        "[homeassistant.components.mqtt",
        "[homeassistant.helpers.template]",
        "[homeassistant.helpers.entity",
        "[homeassistant.components.automation",
        "[homeassistant.components.binary_sensor",
        "[homeassistant.components.sensor",
        "[homeassistant.components.device_tracker",
        "[homeassistant.components.event",
        "[homeassistant.components.image",
        "[homeassistant.components.person",
    ];
    log.lines()
        .filter(|l| l.contains(" WARNING ") || l.contains(" ERROR ") || l.contains(" CRITICAL "))
        .filter(|l| {
            LOGGERS.iter().any(|logger| l.contains(logger))
                || l.contains("face_edge")
                || l.contains("face-edge")
        })
        .collect()
}

#[test]
fn home_assistant_sees_people_cameras_availability_and_removals_as_documented() {
    let venv = match installed() {
        Ok(venv) => venv,
        Err(missing) => {
            assert!(
                std::env::var_os("FACE_EDGE_TEST_REQUIRE_HOME_ASSISTANT").is_none(),
                "{missing} (FACE_EDGE_TEST_REQUIRE_HOME_ASSISTANT is set)"
            );
            println!("not run: {missing}");
            return;
        }
    };
    let broker = Mosquitto::start("");
    let mut ha = HomeAssistant::start(venv, broker.port);
    ha.set_automations(&readme_automations());
    println!("{}", ha.version());
    let dir = TempDir::new("ha-face-edge");
    let people = gallery(&dir);
    let frames = dir.path("camera");
    std::fs::create_dir_all(&frames).unwrap();
    let camera = Camera {
        dir: frames.clone(),
    };
    camera.show(None);
    let mut fe = FaceEdge {
        config: write_config(&dir, &people, &frames, &broker),
        child: None,
        log: dir.path("face-edge.log"),
    };
    fe.start();

    // At start: one device, every entity of the README's table with its name, class and category.
    let present = "binary_sensor.face_edge_hall_pi_alice_present";
    let location = "sensor.face_edge_hall_pi_alice_location";
    let tracker = "device_tracker.face_edge_hall_pi_alice";
    let event = "event.face_edge_hall_pi_hall_face";
    ha.wait_state(present, "off", WAIT);
    let registry = ha.mqtt_entities();
    for id in readme_entities() {
        assert!(
            registry.iter().any(|e| e["entity_id"] == id.as_str()),
            "the README's {id} is not in Home Assistant: {:?}",
            registry.iter().map(|e| &e["entity_id"]).collect::<Vec<_>>()
        );
    }
    let devices: Vec<Value> = ha
        .devices()
        .into_iter()
        .filter(|d| d["manufacturer"] == "face-edge")
        .collect();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["name"], format!("face-edge {NODE}"));
    assert!(
        registry.iter().all(|e| e["device_id"] == devices[0]["id"]),
        "every entity belongs to the device"
    );
    let category = |id: &str| {
        registry
            .iter()
            .find(|e| e["entity_id"] == id)
            .map(|e| e["entity_category"].clone())
    };
    assert_eq!(
        category("sensor.face_edge_hall_pi_frames_per_second"),
        Some(Value::from("diagnostic"))
    );
    assert_eq!(category(present), Some(Value::Null));
    let p = ha.state(present).unwrap();
    assert_eq!(attribute(&p, "device_class"), "occupancy");
    assert_eq!(
        attribute(&p, "friendly_name"),
        "face-edge hall-pi Alice present"
    );
    let kit = ha
        .state("binary_sensor.face_edge_hall_pi_kit_harington_present")
        .unwrap();
    assert_eq!(
        attribute(&kit, "friendly_name"),
        "face-edge hall-pi Kit Harington present",
        "display names, not ids"
    );
    assert_eq!(ha.state(location).unwrap()["state"], "away");
    assert_eq!(ha.state(tracker).unwrap()["state"], "not_home");

    // Alice walks in: present, at the hall camera, home; the "Welcome home" automation runs as written.
    camera.show(Some("probes/obama1.jpg"));
    ha.wait_state(present, "on", WAIT);
    let here = ha.wait_state(location, "hall", WAIT);
    let score = attribute(&here, "score").as_f64().unwrap();
    assert!(score > 0.5, "{here}");
    assert!(
        attribute(&here, "last_seen")
            .as_str()
            .unwrap()
            .starts_with("20")
    );
    assert!(
        attribute(&here, "state").is_null(),
        "only last_seen and score: {here}"
    );
    ha.wait_state(tracker, "home", WAIT);
    let recognised = ha.wait_for("a recognised face", event, WAIT, |s| {
        s.is_some_and(|s| attribute(s, "event_type") == "recognized")
    });
    assert_eq!(attribute(recognised.as_ref().unwrap(), "person"), "alice");
    assert!(
        ha.notifications()
            .contains(&"Alice seen by the hall camera".to_string()),
        "{:?}",
        ha.notifications()
    );
    let snapshot = ha.state("image.face_edge_hall_pi_hall_last_face").unwrap();
    assert_ne!(snapshot["state"], "unknown", "{snapshot}");

    // Alice leaves (her track ends after lost_after_s) and a stranger comes: an `unknown` event and the
    // "Stranger at the door" automation.
    camera.show(None);
    std::thread::sleep(Duration::from_secs(2));
    camera.show(Some("probes/lin-manuel-miranda.png"));
    ha.wait_for("an unknown face", event, WAIT, |s| {
        s.is_some_and(|s| attribute(s, "event_type") == "unknown")
    });
    let deadline = std::time::Instant::now() + WAIT;
    while !ha
        .notifications()
        .contains(&"Unknown face on hall".to_string())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}\n{}",
            ha.notifications(),
            ha.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Nobody: Alice is away after the absence time.
    camera.show(None);
    ha.wait_state(location, "away", WAIT);
    ha.wait_state(tracker, "not_home", WAIT);
    ha.wait_state(present, "off", WAIT);

    // Availability: a clean stop and a kill both make every entity unavailable; a start brings them back.
    for signal in ["TERM", "KILL"] {
        fe.signal(signal);
        for id in [present, location, tracker, event] {
            ha.wait_state(id, "unavailable", WAIT);
        }
        fe.start();
        ha.wait_state(present, "off", WAIT);
        ha.wait_state(location, "away", WAIT);
    }

    // Home Assistant restarts: the device and the states are back (face-edge answers its birth message).
    ha.stop();
    ha.restart();
    ha.wait_state(present, "off", WAIT);
    ha.wait_state(location, "away", WAIT);
    ha.wait_state(tracker, "not_home", WAIT);

    // Removed while running (reload): the entities go, the retained state goes, and the reload, which
    // nobody asked for over MQTT, is answered only in the log.
    let responses = Subscriber::start(broker.port, &format!("face-edge/{NODE}/response/#"));
    assert!(retained_on(
        &broker,
        &format!("face-edge/{NODE}/person/rose_leslie/state")
    ));
    std::fs::remove_dir_all(people.join("rose_leslie")).unwrap();
    fe.signal("HUP");
    wait_until_gone(&ha, "rose_leslie");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!retained_on(
        &broker,
        &format!("face-edge/{NODE}/person/rose_leslie/state")
    ));
    assert!(responses.all().is_empty(), "{:?}", responses.all());
    assert!(fe.log().contains("reload done"), "{}", fe.log());

    // Removed while face-edge was stopped: gone at the next start, retained state included.
    fe.signal("TERM");
    std::fs::remove_dir_all(people.join("kit_harington")).unwrap();
    fe.start();
    wait_until_gone(&ha, "kit_harington");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!retained_on(
        &broker,
        &format!("face-edge/{NODE}/person/kit_harington/state")
    ));
    ha.wait_state(present, "off", WAIT);

    fe.signal("TERM");
    ha.stop();
    let log = ha.log();
    let warnings = warnings_about_face_edge(&log);
    assert!(
        warnings.is_empty(),
        "Home Assistant logged:\n{}",
        warnings.join("\n")
    );
    println!(
        "Home Assistant log: {} lines, none about face-edge's entities",
        log.lines().count()
    );
}
