//! `face-edge run` end to end: scenes of people walking in and out through the files and exec sources,
//! events on a real mosquitto, signals (SIGTERM, SIGKILL, SIGHUP) and the systemd watchdog.

mod common;

use common::broker::{Mosquitto, Subscriber, send_signal};
use common::scene::{
    REQUEST_TOKEN, THREE_VISITS, add_to_mqtt, config, events, pair, three_visits_expected,
    write_frames,
};
use common::{TempDir, data, face_edge, patience, slowdown};
use serde_json::{Value, json};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn start(config: &std::path::Path) -> Child {
    face_edge()
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr_of(child: Child) -> String {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn gallery() -> std::path::PathBuf {
    data("photos/gallery")
}

#[test]
fn files_source_one_event_per_visit_with_person_states() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("files-e2e");
    let frames = write_frames(&dir, THREE_VISITS);
    let camera = format!(
        "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"{}\"\nfps = 10\ndetect_fps = 10\n",
        frames.display()
    );
    let cfg = config(&dir, &gallery(), &camera, Some(&broker.url()), "");
    let child = start(&cfg);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let all = sub.wait_for("offline", patience(10), |all| {
        all.iter()
            .rfind(|m| m.topic == "face-edge/e2e/availability")
            .is_some_and(|m| m.text() == "offline")
    });
    assert_eq!(events(&all), three_visits_expected(), "stderr:\n{stderr}");

    let recognized: Vec<Value> = all
        .iter()
        .filter(|m| m.topic == "face-edge/e2e/events")
        .map(|m| m.json())
        .filter(|v| v["type"] == "recognized")
        .collect();
    assert_eq!(recognized[0]["camera"], "hall");
    assert!(recognized[0]["score"].as_f64().unwrap() > 0.5);
    let left = all
        .iter()
        .filter(|m| m.topic == "face-edge/e2e/events")
        .map(|m| m.json())
        .find(|v| v["type"] == "left")
        .unwrap();
    assert!(left["duration_s"].as_f64().unwrap() > 0.5, "{left}");
    let cam: Vec<String> = all
        .iter()
        .filter(|m| m.topic == "face-edge/e2e/cam/hall/event")
        .map(|m| m.json()["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cam, vec!["recognized", "unknown", "recognized"]);

    // Obama: not_home at start, "hall" on recognition, not_home after the absence time.
    let obama: Vec<String> = all
        .iter()
        .filter(|m| m.topic == "face-edge/e2e/person/obama/state")
        .map(|m| m.json()["state"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(obama.first().map(String::as_str), Some("not_home"));
    assert!(
        obama
            .windows(2)
            .any(|w| w[0] == "hall" && w[1] == "not_home"),
        "{obama:?}"
    );
    let biden = all
        .iter()
        .filter(|m| m.topic == "face-edge/e2e/person/biden/state")
        .count();
    assert!(biden >= 1, "every enrolled person gets a state at start");
    let stats = all
        .iter()
        .find(|m| m.topic == "face-edge/e2e/stats")
        .expect("stats published")
        .json();
    for key in [
        "fps",
        "detect_ms",
        "embed_ms",
        "queue_depth",
        "dropped_frames",
        "dropped_events",
        "uptime_s",
    ] {
        assert!(stats.get(key).is_some(), "stats has {key}: {stats}");
    }
    assert!(
        all.iter()
            .any(|m| m.topic == "homeassistant/device/e2e/config"),
        "discovery published"
    );
}

/// An exec source: a shell script writing the scene's JPEGs to stdout as an MJPEG stream, then idling.
fn exec_camera(frames: &std::path::Path, fps: u32) -> String {
    let script = format!(
        "for f in {}/*.jpg; do cat \"$f\"; sleep {}; done; exec sleep 600",
        frames.display(),
        1.0 / fps as f32
    );
    format!("{}detect_fps = {fps}\n", sh_camera(&script))
}

/// An exec camera "hall" running `script` with sh.
fn sh_camera(script: &str) -> String {
    format!(
        "[[camera]]\nname = \"hall\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\n"
    )
}

#[test]
fn exec_source_and_sigterm() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("exec-e2e");
    let frames = write_frames(&dir, THREE_VISITS);
    let cfg = config(
        &dir,
        &gallery(),
        &exec_camera(&frames, 10),
        Some(&broker.url()),
        "",
    );
    let child = start(&cfg);
    let all = sub.wait_for("three visits", patience(60), |all| events(all).len() >= 6);
    assert_eq!(events(&all), three_visits_expected());

    // SIGTERM: offline is published and the process exits 0 within 5 s.
    let pid = child.id();
    let asked = Instant::now();
    send_signal(pid, "TERM");
    let out = child.wait_with_output().unwrap();
    let took = asked.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < patience(5), "stopping took {took:?}");
    sub.wait_for("offline", patience(5), |all| {
        all.iter()
            .rfind(|m| m.topic == "face-edge/e2e/availability")
            .is_some_and(|m| m.text() == "offline")
    });
}

#[test]
fn sigkill_leaves_the_last_will() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "face-edge/e2e/availability");
    let dir = TempDir::new("kill");
    let frames = write_frames(&dir, &[(Some("probes/obama1.jpg"), 3), (None, 3)]);
    let camera = format!(
        "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"{}\"\nloop = true\n",
        frames.display()
    );
    let cfg = config(&dir, &gallery(), &camera, Some(&broker.url()), "");
    let child = start(&cfg);
    sub.wait_for("online", patience(30), |all| {
        all.iter().any(|m| m.text() == "online")
    });
    send_signal(child.id(), "KILL");
    let stderr = stderr_of(child);
    let all = sub.wait_for("offline from the last will", patience(20), |all| {
        all.last().is_some_and(|m| m.text() == "offline")
    });
    assert!(
        !stderr.contains("publishing offline"),
        "nothing ran after SIGKILL"
    );
    assert_eq!(all.last().unwrap().text(), "offline");
}

/// A gallery of Obama alone and a looping camera showing Kit Harington, who is therefore a stranger
/// until he is added. Returns the gallery directory and the config.
fn stranger_in_the_hall(
    dir: &TempDir,
    broker: &Mosquitto,
) -> (std::path::PathBuf, std::path::PathBuf) {
    obama_and_a_looping_hall(dir, "probes/johnsnow_test1.jpg", Some(&broker.url()))
}

/// A gallery of Obama alone and a camera "hall" looping on `probe` (under photos) at 10 fps, events to
/// `mqtt_url` (else stdout). Returns the gallery directory and the config.
fn obama_and_a_looping_hall(
    dir: &TempDir,
    probe: &'static str,
    mqtt_url: Option<&str>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let people = dir.path("people");
    std::fs::create_dir_all(people.join("obama")).unwrap();
    std::fs::copy(
        gallery().join("obama/obama.jpg"),
        people.join("obama/obama.jpg"),
    )
    .unwrap();
    let frames = write_frames(dir, &[(Some(probe), 10)]);
    let camera = format!(
        "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"{}\"\nloop = true\nfps = 10\ndetect_fps = 10\n",
        frames.display()
    );
    let cfg = config(dir, &people, &camera, mqtt_url, "");
    (people, cfg)
}

#[test]
fn sighup_makes_a_newly_added_person_recognisable() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("hup");
    let (people, cfg) = stranger_in_the_hall(&dir, &broker);
    let child = start(&cfg);
    sub.wait_for("unknown", patience(30), |all| {
        events(all).contains(&pair("unknown", None))
    });
    assert!(!events(&sub.all()).iter().any(|e| e.0 == "recognized"));

    std::fs::create_dir_all(people.join("kit_harington")).unwrap();
    std::fs::copy(
        gallery().join("kit_harington/john1.jpeg"),
        people.join("kit_harington/john1.jpeg"),
    )
    .unwrap();
    send_signal(child.id(), "HUP");
    let all = sub.wait_for("recognized after reload", patience(30), |all| {
        events(all).contains(&pair("recognized", Some("kit_harington")))
    });
    // Discovery now lists the new person; their state was published.
    let discovery = all
        .iter()
        .rfind(|m| m.topic == "homeassistant/device/e2e/config")
        .unwrap()
        .json();
    assert!(discovery["cmps"].get("kit_harington_presence").is_some());
    assert!(
        all.iter()
            .any(|m| m.topic == "face-edge/e2e/person/kit_harington/state")
    );
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    assert!(stderr.contains("reloading"), "{stderr}");
}

#[test]
fn watchdog_is_fed_only_while_frames_flow() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("watchdog");
    let socket_path = dir.path("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // 3 s of frames, then the source goes quiet while staying open (a hung camera).
    let frames = write_frames(&dir, &[(Some("probes/obama1.jpg"), 30)]);
    let cfg = config(
        &dir,
        &gallery(),
        &exec_camera(&frames, 10),
        None,
        &format!("[service]\nstall_timeout_s = {}\n", 1.5 * slowdown() as f32),
    );
    let child = face_edge()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", (400_000 * slowdown()).to_string())
        .stdout(std::fs::File::create(dir.path("stdout.jsonl")).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log: Vec<(Instant, String)> = vec![];
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    while started.elapsed() < patience(12) {
        if let Ok(n) = socket.recv(&mut buf) {
            log.push((
                Instant::now(),
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            ));
        }
    }
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    let ready = log
        .iter()
        .position(|(_, m)| m.contains("READY=1"))
        .expect("READY=1 sent");
    let pings: Vec<Instant> = log
        .iter()
        .filter(|(_, m)| m.contains("WATCHDOG=1"))
        .map(|(t, _)| *t)
        .collect();
    assert!(pings.len() >= 3, "fed while frames flow: {log:?}");
    // While the gallery (in a new state directory) was embedded, before READY: progress, and systemd's
    // start timeout extended by a minute from it.
    assert!(
        log[..ready]
            .iter()
            .any(|(_, m)| m.contains("EXTEND_TIMEOUT_USEC=60000000")
                && m.contains("STATUS=embedding gallery photos: ")),
        "start-up progress: {log:?}"
    );
    assert!(
        log[..ready].iter().all(|(_, m)| !m.contains("WATCHDOG=1")),
        "no ping before READY"
    );
    // After the last ping there must be a long silence (the stall), while the service keeps running
    // (its STATUS= updates still arrive).
    let last_ping = *pings.last().unwrap();
    let end = log.last().unwrap().0.max(started + patience(12));
    assert!(
        end.duration_since(last_ping) > patience(4),
        "pings stopped: {pings:?}"
    );
    assert!(
        log.iter()
            .any(|(t, m)| *t > last_ping && m.contains("STATUS=")),
        "still alive: {log:?}"
    );
    assert!(stderr.contains("pipeline stalled"), "{stderr}");
    // The camera's status said so: streaming, then stalled (the helper is still running).
    let stdout = std::fs::read_to_string(dir.path("stdout.jsonl")).unwrap();
    let states: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|m| {
            m["topic"]
                .as_str()
                .is_some_and(|t| t.ends_with("/cam/hall/status"))
        })
        .map(|m| m["payload"]["state"].as_str().unwrap().to_string())
        .collect();
    let streaming = states.iter().position(|s| s == "streaming");
    let stalled = states.iter().position(|s| s == "stalled");
    assert!(
        streaming.is_some() && stalled > streaming,
        "camera states: {states:?}"
    );
}

/// Publishes a request carrying the configured token (or `token`, when given) and a transaction id.
fn request(sub: &Subscriber, command: &str, body: Value, token: Option<&str>, transaction: &str) {
    let mut body = body;
    body["transaction"] = transaction.into();
    body["token"] = token.unwrap_or(REQUEST_TOKEN).into();
    if token == Some("") {
        body.as_object_mut().unwrap().remove("token");
    }
    sub.publish(
        &format!("face-edge/e2e/request/{command}"),
        &body.to_string(),
        false,
    );
}

/// Waits for the response to `transaction` on `response/<command>` and returns it.
fn response(sub: &Subscriber, command: &str, transaction: &str, secs: u64) -> Value {
    let topic = format!("face-edge/e2e/response/{command}");
    let all = sub.wait_for(
        &format!("{command} response {transaction}"),
        patience(secs),
        |all| {
            all.iter()
                .any(|m| m.topic == topic && m.json()["transaction"] == transaction)
        },
    );
    all.iter()
        .rfind(|m| m.topic == topic && m.json()["transaction"] == transaction)
        .unwrap()
        .json()
}

/// Sends an authorised request and returns its error, asserting that it failed and says `expected`.
fn refusal(
    sub: &Subscriber,
    command: &str,
    body: Value,
    transaction: &str,
    expected: &str,
) -> String {
    request(sub, command, body, None, transaction);
    let answer = response(sub, command, transaction, 60);
    assert_eq!(answer["status"], "error", "{answer}");
    let error = answer["error"].as_str().unwrap().to_string();
    assert!(error.contains(expected), "{command}: {error}");
    error
}

/// Every file under `dir` with its bytes (what a refused request must leave as it was).
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn mqtt_requests_enroll_snapshot_and_reload() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("requests");
    let (people, cfg) = stranger_in_the_hall(&dir, &broker);
    add_to_mqtt(&cfg, "snapshots = true");
    let child = start(&cfg);
    sub.wait_for("the stranger", patience(30), |all| {
        events(all).contains(&pair("unknown", None))
    });

    // The last face crop of the camera, on request.
    request(&sub, "snapshot", json!({"camera": "hall"}), None, "s1");
    assert_eq!(response(&sub, "snapshot", "s1", 20)["status"], "ok");
    let jpeg = sub
        .all()
        .into_iter()
        .rfind(|m| m.topic == "face-edge/e2e/cam/hall/snapshot")
        .expect("snapshot published");
    let crop = image::load_from_memory(&jpeg.payload).unwrap();
    assert_eq!(
        (crop.width(), crop.height()),
        (112, 112),
        "the aligned crop"
    );

    // Errors are answered, not ignored.
    request(&sub, "enroll", json!({"person": "Kit!"}), None, "bad");
    assert_eq!(response(&sub, "enroll", "bad", 20)["status"], "error");
    request(&sub, "dance", json!({}), None, "d");
    let dance = response(&sub, "dance", "d", 20);
    assert!(dance["error"].as_str().unwrap().contains("unknown command"));

    // The stranger's frames may not be added to obama: refused, nothing saved.
    refusal(
        &sub,
        "enroll",
        json!({"person": "obama", "camera": "hall", "frames": 2}),
        "poison",
        "does not match obama",
    );
    assert!(!dir.path("state/enrolled/obama").exists());

    // Enrol the stranger from the camera: photos are saved (readable by the service only), the
    // gallery re-synced, and the open track is recognised from then on.
    request(
        &sub,
        "enroll",
        json!({"person": "kit_harington", "camera": "hall", "frames": 3}),
        None,
        "e1",
    );
    let enrolled = response(&sub, "enroll", "e1", 60);
    assert_eq!(enrolled["status"], "ok", "{enrolled}");
    assert_eq!(enrolled["data"]["photos"].as_array().unwrap().len(), 3);
    let photos: Vec<_> = dir
        .path("state/enrolled/kit_harington")
        .read_dir()
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(photos.len(), 3);
    for photo in &photos {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&photo.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "{:?}", photo.path());
    }
    sub.wait_for("recognized after enrolment", patience(30), |all| {
        events(all).contains(&pair("recognized", Some("kit_harington")))
    });

    // reload_gallery re-reads the configuration: removing obama's folder forgets him.
    std::fs::remove_dir_all(people.join("obama")).unwrap();
    request(&sub, "reload_gallery", json!({}), None, "r1");
    let reloaded = response(&sub, "reload_gallery", "r1", 30);
    assert_eq!(reloaded["status"], "ok");
    assert_eq!(reloaded["data"]["forgotten"], json!(["obama"]));
    assert_eq!(reloaded["data"]["people"], 1);
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    assert!(
        !stderr.contains("pipeline stalled"),
        "no false alarm at start: {stderr}"
    );
}

#[test]
fn requests_without_the_token_retained_or_turned_off_change_nothing() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("unauthorised");
    let (_, cfg) = stranger_in_the_hall(&dir, &broker);
    // The shipped default: enrolment off (snapshots are off too).
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("enroll = true", "enroll = false")).unwrap();
    // A retained request waiting on the broker, with the right token: delivered at connection, never run.
    let retained = json!({"token": REQUEST_TOKEN, "transaction": "kept"}).to_string();
    sub.publish("face-edge/e2e/request/reload_gallery", &retained, true);
    let child = start(&cfg);
    sub.wait_for("the stranger", patience(30), |all| {
        events(all).contains(&pair("unknown", None))
    });
    let refused = sub.wait_for("the retained request refused", patience(10), |all| {
        all.iter()
            .any(|m| m.topic == "face-edge/e2e/response/reload_gallery")
    });
    let refused = refused
        .iter()
        .find(|m| m.topic == "face-edge/e2e/response/reload_gallery")
        .unwrap()
        .json();
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("retained request is never run"),
        "{refused}"
    );
    let state = dir.path("state");
    let before = files_under(&state);
    assert!(before.iter().any(|(p, _)| p.ends_with("gallery.json")));

    // No token, a wrong one, a token of the wrong type: refused, whatever the command.
    let cases = [
        (
            "enroll",
            json!({"person": "kit_harington", "frames": 1}),
            Some(""),
            "t1",
        ),
        (
            "enroll",
            json!({"person": "kit_harington", "frames": 1}),
            Some("guess-guess-guess-1"),
            "t2",
        ),
        ("snapshot", json!({"camera": "hall"}), Some("x"), "t3"),
        ("reload_gallery", json!({}), Some(""), "t4"),
    ];
    for (command, body, token, transaction) in cases {
        request(&sub, command, body, token, transaction);
        let answer = response(&sub, command, transaction, 20);
        assert_eq!(answer["status"], "error", "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with("not authorised"), "{error}");
        assert!(
            !error.contains("guess"),
            "the token is never echoed: {error}"
        );
    }
    let mut body = json!({"token": REQUEST_TOKEN, "transaction": "big"});
    body["padding"] = "x".repeat(5000).into();
    sub.publish(
        "face-edge/e2e/request/reload_gallery",
        &body.to_string(),
        false,
    );
    sub.wait_for("the oversized request refused", patience(20), |all| {
        all.iter().any(|m| {
            m.topic == "face-edge/e2e/response/reload_gallery"
                && m.json()["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("at most 4096"))
        })
    });
    // Authorised, but turned off in the configuration; snapshots off: nothing published.
    let body = json!({"person": "kit_harington", "frames": 1});
    refusal(&sub, "enroll", body, "off", "turned off");
    let body = json!({"camera": "hall"});
    refusal(&sub, "snapshot", body, "snap", "snapshots are off");
    assert!(sub.on("face-edge/e2e/cam/hall/snapshot").is_empty());
    // Nothing in the state directory changed (store bytes, photos).
    assert_eq!(files_under(&state), before);
    // An authorised request that is turned on works.
    request(&sub, "reload_gallery", json!({}), None, "ok");
    assert_eq!(response(&sub, "reload_gallery", "ok", 30)["status"], "ok");
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    assert!(
        stderr.contains("request \"enroll\" refused: not authorised"),
        "{stderr}"
    );
    assert!(!stderr.contains("guess-guess"), "the token is never logged");
    assert!(!stderr.contains(REQUEST_TOKEN), "the token is never logged");
}

#[test]
fn oversized_messages_on_the_broker_never_cost_the_connection() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("oversized");
    let (_, cfg) = stranger_in_the_hall(&dir, &broker);
    // 10 MB, retained, on a request topic and on Home Assistant's status topic, waiting before face-edge
    // connects: MQTT 3.1.1 would have to take them whole or drop the connection at every reconnect.
    let huge = "x".repeat(10 << 20);
    sub.publish("face-edge/e2e/request/reload_gallery", &huge, true);
    sub.publish("homeassistant/status", &huge, true);
    let child = start(&cfg);
    sub.wait_for("the stranger", patience(30), |all| {
        events(all).contains(&pair("unknown", None))
    });
    // And live ones, while it is connected.
    for _ in 0..3 {
        sub.publish("face-edge/e2e/request/snapshot", &huge, false);
    }
    sub.publish("homeassistant/status", &huge, false);
    // The session goes on: a request sent after them is answered.
    request(&sub, "reload_gallery", json!({}), None, "after");
    assert_eq!(
        response(&sub, "reload_gallery", "after", 30)["status"],
        "ok"
    );
    let availability: Vec<String> = sub
        .on("face-edge/e2e/availability")
        .iter()
        .map(|m| m.text())
        .collect();
    assert_eq!(availability, ["online"], "connected once, never dropped");
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    assert_eq!(stderr.matches("MQTT connected").count(), 1, "{stderr}");
}

#[test]
fn a_face_seen_again_after_the_camera_was_away_is_a_new_visit() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("camera-away");
    // A helper that shows Obama for 2 s, then dies: restarted after 1 s, then 2 s (backoff), each
    // time showing the same face in the same place.
    let frames = write_frames(&dir, &[(Some("probes/obama1.jpg"), 20)]);
    let script = format!(
        "for f in {}/*.jpg; do cat \"$f\"; sleep 0.1; done; exit 1",
        frames.display()
    );
    let camera = format!("{}detect_fps = 10\n", sh_camera(&script));
    let url = broker.url();
    let cfg = config(&dir, &gallery(), &camera, Some(&url), "");
    let child = start(&cfg);
    let visits = [
        pair("recognized", Some("obama")),
        pair("left", Some("obama")),
        pair("recognized", Some("obama")),
    ];
    sub.wait_for("two visits", patience(40), |all| {
        events(all).starts_with(&visits)
    });
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    assert!(stderr.contains("retrying in 1 s"), "{stderr}");
}

#[test]
fn enrolments_of_two_people_or_of_nobody_save_nothing() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let dir = TempDir::new("enrol-guards");
    let people = dir.path("people");
    std::fs::create_dir_all(people.join("obama")).unwrap();
    std::fs::copy(
        gallery().join("obama/obama.jpg"),
        people.join("obama/obama.jpg"),
    )
    .unwrap();
    // "door": one person at a time, but two different people taking turns; "attic": nobody.
    let door = write_frames(
        &dir,
        &[
            (Some("probes/johnsnow_test1.jpg"), 3),
            (Some("probes/lin-manuel-miranda.png"), 3),
        ],
    );
    let attic = dir.path("attic");
    std::fs::create_dir_all(&attic).unwrap();
    common::scene::picture_640x480(None)
        .save(attic.join("empty.jpg"))
        .unwrap();
    let camera = format!(
        "[[camera]]\nname = \"door\"\nkind = \"files\"\npath = \"{}\"\nloop = true\nfps = 10\ndetect_fps = 10\n\
         [[camera]]\nname = \"attic\"\nkind = \"files\"\npath = \"{}\"\nloop = true\nfps = 5\ndetect_fps = 5\n",
        door.display(),
        attic.display()
    );
    let cfg = config(&dir, &people, &camera, Some(&broker.url()), "");
    let child = start(&cfg);
    sub.wait_for("the stranger", patience(30), |all| {
        events(all).contains(&pair("unknown", None))
    });
    let body = json!({"person": "carol", "camera": "door", "frames": 6});
    refusal(&sub, "enroll", body, "mixed", "more than one person");
    let body = json!({"person": "carol", "camera": "attic", "timeout_s": 2});
    let nobody = refusal(&sub, "enroll", body, "nobody", "no usable face");
    assert_eq!(
        nobody,
        "no usable face for 2 s (0 of 5 frames collected); nothing was saved"
    );
    assert!(!dir.path("state/enrolled").exists());
    // The next enrolment is not blocked by the one that timed out.
    let body = json!({"person": "carol", "camera": "attic", "timeout_s": 1});
    refusal(&sub, "enroll", body, "again", "no usable face");
    send_signal(child.id(), "TERM");
    stderr_of(child);
}

#[test]
fn a_person_removed_while_stopped_is_removed_from_home_assistant_at_the_next_start() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "homeassistant/device/e2e/config");
    let dir = TempDir::new("ha-removal");
    let people = dir.path("people");
    for (person, photo) in [
        ("obama", "obama/obama.jpg"),
        ("kit_harington", "kit_harington/john1.jpeg"),
    ] {
        std::fs::create_dir_all(people.join(person)).unwrap();
        std::fs::copy(gallery().join(photo), people.join(photo)).unwrap();
    }
    let frames = write_frames(&dir, &[(None, 2)]);
    let camera = format!(
        "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"{}\"\n",
        frames.display()
    );
    let cfg = config(&dir, &people, &camera, Some(&broker.url()), "");
    let run_once = || {
        let out = start(&cfg).wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run_once();
    let first = sub.wait_for("first discovery", patience(20), |all| !all.is_empty());
    assert!(first[0].json()["cmps"]["kit_harington_presence"]["p"] == "binary_sensor");

    std::fs::remove_dir_all(people.join("kit_harington")).unwrap();
    run_once();
    let all = sub.wait_for("second discovery", patience(20), |all| all.len() >= 2);
    let cmps = all.last().unwrap().json()["cmps"].clone();
    assert_eq!(
        cmps["kit_harington_presence"],
        serde_json::json!({"p": "binary_sensor"}),
        "removed: {cmps}"
    );
    assert_eq!(
        cmps["kit_harington_tracker"],
        serde_json::json!({"p": "device_tracker"})
    );
    assert!(cmps["obama_presence"].get("state_topic").is_some());
    // Their retained state is cleared too (tests/home_assistant.rs checks the order against Home
    // Assistant itself).
    let states = Subscriber::start(broker.port, "face-edge/e2e/person/+/state");
    std::thread::sleep(Duration::from_millis(500));
    let retained: Vec<String> = states.all().iter().map(|m| m.topic.clone()).collect();
    assert_eq!(retained, vec!["face-edge/e2e/person/obama/state"]);
}

#[test]
fn sighup_restarts_only_a_changed_camera() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "face-edge/e2e/#");
    let dir = TempDir::new("hup-camera");
    let obama_dir = TempDir::new("obama-frames");
    let obama = write_frames(&obama_dir, &[(Some("probes/obama1.jpg"), 5)]);
    let kit_dir = TempDir::new("kit-frames");
    let kit = write_frames(&kit_dir, &[(Some("probes/johnsnow_test1.jpg"), 5)]);
    let blank_dir = TempDir::new("blank-frames");
    let blank = write_frames(&blank_dir, &[(None, 5)]);
    let camera = |name: &str, path: &std::path::Path| {
        format!(
            "[[camera]]\nname = \"{name}\"\nkind = \"files\"\npath = \"{}\"\nloop = true\nfps = 10\ndetect_fps = 10\n",
            path.display()
        )
    };
    let cfg = config(
        &dir,
        &gallery(),
        &(camera("hall", &obama) + &camera("porch", &blank)),
        Some(&broker.url()),
        "",
    );
    let child = start(&cfg);
    sub.wait_for("obama in the hall", patience(30), |all| {
        events(all).contains(&pair("recognized", Some("obama")))
    });

    // Point the hall camera at other frames; the porch camera is unchanged.
    config(
        &dir,
        &gallery(),
        &(camera("hall", &kit) + &camera("porch", &blank)),
        Some(&broker.url()),
        "",
    );
    send_signal(child.id(), "HUP");
    let all = sub.wait_for("kit in the hall", patience(30), |all| {
        events(all).contains(&pair("recognized", Some("kit_harington")))
    });
    let seen = events(&all);
    let obama_left = seen
        .iter()
        .position(|e| *e == pair("left", Some("obama")))
        .expect("the hall's track ended");
    let kit = seen
        .iter()
        .position(|e| *e == pair("recognized", Some("kit_harington")))
        .unwrap();
    assert!(obama_left < kit, "{seen:?}");
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    assert!(
        stderr.contains("camera hall: configuration changed; restarting it"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("camera porch: configuration changed"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("camera porch: streaming").count(),
        1,
        "the porch camera kept running: {stderr}"
    );
}

#[test]
fn the_broker_password_comes_from_systemd_credentials() {
    let dir = TempDir::new("credentials");
    let passwords = dir.path("passwd");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["edge", "s3cret-from-credentials"])
        .status()
        .unwrap();
    assert!(made.success());
    let broker = Mosquitto::start(&format!("password_file {}\n", passwords.display()));
    let credentials = dir.path("creds");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(
        credentials.join("mqtt-password"),
        "s3cret-from-credentials\n",
    )
    .unwrap();
    let frames = write_frames(&dir, &[(None, 2)]);
    let camera = format!(
        "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"{}\"\nloop = true\n",
        frames.display()
    );
    let cfg = config(&dir, &gallery(), &camera, Some(&broker.url()), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "node_id = \"e2e\"\n",
        "node_id = \"e2e\"\nusername = \"edge\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let child = face_edge()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("CREDENTIALS_DIRECTORY", &credentials)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + patience(30);
    while !broker.log().contains("u'edge'") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    let log = broker.log();
    assert!(
        log.contains("as face-edge-e2e") && log.contains("u'edge'"),
        "connected with the user: {log}\n{stderr}"
    );
    assert!(stderr.contains("MQTT connected"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "the password is never logged");
}

/// The log level is the first of `--log-level`, RUST_LOG and `[service] log_level` that is set: a run
/// logs INFO lines only when the source that wins allows them.
#[test]
fn log_level_precedence_is_flag_then_rust_log_then_config() {
    let dir = TempDir::new("log-level");
    let people = dir.path("people");
    std::fs::create_dir_all(&people).unwrap();
    let mut probes: Vec<_> = std::fs::read_dir(data("photos/probes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    probes.sort();
    let camera = format!(
        "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"{}\"\nfps = 10\ndetect_fps = 10\n",
        probes[0].display()
    );
    let cfg = config(
        &dir,
        &people,
        &camera,
        None,
        "[service]\nlog_level = \"warn\"\n",
    );
    let run = |rust_log: Option<&str>, flag: Option<&str>| {
        let mut cmd = face_edge();
        cmd.arg("run");
        if let Some(level) = flag {
            cmd.args(["--log-level", level]);
        }
        cmd.arg("--config").arg(&cfg);
        cmd.env_remove("RUST_LOG").env_remove("FACE_EDGE_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let config_alone = run(None, None);
    assert!(!config_alone.contains(" INFO "), "{config_alone}");
    let rust_log_over_config = run(Some("info"), None);
    assert!(
        rust_log_over_config.contains(" INFO ")
            && rust_log_over_config.contains("models: detector"),
        "{rust_log_over_config}"
    );
    let flag_over_rust_log = run(Some("info"), Some("error"));
    assert!(
        !flag_over_rust_log.contains(" INFO ") && !flag_over_rust_log.contains(" WARN "),
        "{flag_over_rust_log}"
    );
}

#[test]
fn a_flood_of_reloads_costs_two_syncs_and_every_request_is_answered() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "face-edge/e2e/#");
    let dir = TempDir::new("reload-flood");
    let (_, cfg) = stranger_in_the_hall(&dir, &broker);
    let child = start(&cfg);
    sub.wait_for("online", patience(30), |all| {
        all.iter().any(|m| m.text() == "online")
    });
    const FLOOD: usize = 300;
    for i in 0..FLOOD {
        request(&sub, "reload_gallery", json!({}), None, &format!("r{i}"));
    }
    let topic = "face-edge/e2e/response/reload_gallery";
    let answered = |all: &[common::broker::Received]| {
        all.iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.json()["transaction"].as_str().unwrap().to_string())
            .collect::<std::collections::HashSet<_>>()
    };
    let all = sub.wait_for("every reload answered", patience(60), |all| {
        answered(all).len() == FLOOD
    });
    assert!(
        all.iter()
            .filter(|m| m.topic == topic)
            .all(|m| m.json()["status"] == "ok"),
        "every reload succeeded"
    );
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    // One sync at start, then the first request's and one for each batch that arrived while a sync
    // ran: a handful, where each request used to cost its own.
    let syncs = stderr.matches("gallery: 1 people").count();
    assert!(
        syncs >= 2 && syncs * 10 <= FLOOD,
        "{syncs} syncs for {FLOOD} requests:\n{stderr}"
    );
}

#[test]
fn a_helper_that_keeps_dying_is_restarted_ever_more_slowly() {
    let dir = TempDir::new("dying-helper");
    let frames = write_frames(&dir, &[(Some("probes/obama1.jpg"), 1)]);
    // One frame, then exit: a stream that never lasts.
    let script = format!("cat {}/00001.jpg", frames.display());
    let camera = sh_camera(&script);
    let cfg = config(&dir, &gallery(), &camera, None, "");
    let child = start(&cfg);
    std::thread::sleep(Duration::from_secs(9));
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    // Waits of 1, 2, 4 s: started at about 0, 1, 3 and 7 s (it was every second before).
    let starts = stderr.matches("camera hall: streaming").count();
    assert!(
        (3..=5).contains(&starts),
        "{starts} starts in 9 s:\n{stderr}"
    );
}

/// The exec helper from hell: ignores SIGTERM (and so does the child it starts), sends one frame and
/// then only noise on stderr.
#[test]
fn a_stalled_noisy_helper_that_ignores_sigterm_is_restarted_bounded_and_killed() {
    let dir = TempDir::new("hostile-helper");
    let frames = write_frames(&dir, &[(Some("probes/obama1.jpg"), 1)]);
    let pids = dir.path("pids");
    let script = format!(
        "echo $$ >> {pids}; trap '' TERM; sh -c 'echo $$ >> {pids}; exec sleep 600' & cat {frame}; i=0; while :; do echo \"noise $i\" >&2; i=$((i+1)); done",
        pids = pids.display(),
        frame = frames.join("00001.jpg").display()
    );
    let camera = sh_camera(&script);
    let cfg = config(
        &dir,
        &gallery(),
        &camera,
        None,
        "[service]\nstall_timeout_s = 2.0\n",
    );
    let child = start(&cfg);
    // Stalled at 2 s, SIGKILLed after 2 s of grace, restarted after 1 s: wait for the second helper.
    let deadline = Instant::now() + patience(30);
    while std::fs::read_to_string(&pids).map_or(0, |p| p.lines().count()) < 4 {
        assert!(Instant::now() < deadline, "never restarted");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    send_signal(child.id(), "TERM");
    let stderr = stderr_of(child);
    assert!(
        stderr.contains("stalled: no complete frame for 2 s"),
        "{}",
        &stderr[..stderr.len().min(4000)]
    );
    let starts = stderr.matches("camera hall: streaming").count();
    assert!(
        starts >= 2,
        "restarted: {starts} starts:\n{}",
        stderr
            .lines()
            .filter(|l| !l.contains("noise"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each helper's stderr: at most 20 lines a minute in the log, the rest counted.
    let noise = stderr.matches("camera hall: helper: noise").count();
    assert!(
        noise <= 20 * starts,
        "{noise} noise lines for {starts} helpers"
    );
    assert!(stderr.contains("more stderr lines not logged"), "counted");
    // No helper outlives face-edge, SIGTERM or not.
    std::thread::sleep(Duration::from_millis(300));
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // A zombie (Z) awaiting its parent's reaper is gone too.
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "helper {pid} still runs: {stat}"
        );
    }
}

/// Waits until the file at `path` holds `needle`; panics with its text after `patience`.
fn wait_for_line(path: &std::path::Path, needle: &str, patience: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(start.elapsed() < patience, "no {needle:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_checked_variant_made_while_running_takes_over_at_reload() {
    let dir = TempDir::new("variant-reload");
    std::fs::create_dir_all(dir.path("nothing")).unwrap();
    // The shared models, linked into a directory `models quantize` can write into.
    let models = common::models_dir_plus(&dir.path("nothing"));
    let (_, cfg) = obama_and_a_looping_hall(&dir, "probes/obama1.jpg", None);
    let log = dir.path("stderr.log");
    let child = face_edge()
        .env("FACE_EDGE_MODELS_DIR", &models.0)
        .env("RUST_LOG", "info")
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_line(&log, "embedder mobilefacenet\n", patience(60));

    let (code, stdout, stderr) = common::run(
        face_edge()
            .env("FACE_EDGE_MODELS_DIR", &models.0)
            .args(["models", "quantize", "mobilefacenet", "--calibration"])
            .arg(data("golden/crops"))
            .arg("--out-dir")
            .arg(&models.0),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    send_signal(child.id(), "HUP");
    wait_for_line(
        &log,
        "embedder mobilefacenet: running its checked int8 variant mobilefacenet-int8-qdq",
        patience(60),
    );
    send_signal(child.id(), "TERM");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
}
