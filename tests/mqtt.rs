//! MQTT delivery against a real mosquitto started on a free loopback port: payloads, discovery, requests,
//! a broker outage, TLS and authentication.

mod common;

use common::TempDir;
use common::broker::{Mosquitto, Subscriber};
use face_edge::config::MqttConfig;
use face_edge::events::{
    self, DiscoveryInput, EventBuilder, EventType, FaceEvent, Message, Presence, Topics,
};
use face_edge::mqtt::{Incoming, LinkStatus, Publisher};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

fn config(url: &str) -> MqttConfig {
    let text = format!("[mqtt]\nurl = \"{url}\"\nnode_id = \"test-node\"\nreconnect_max_s = 2\n");
    face_edge::config::Config::parse(&text, std::path::Path::new("/tmp/x.toml"))
        .unwrap()
        .mqtt
        .unwrap()
}

fn topics() -> Topics {
    Topics::new("test-node", "homeassistant")
}

fn face_event(n: u64, kind: EventType) -> FaceEvent {
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + n);
    FaceEvent {
        kind,
        camera: "hall".into(),
        track_id: n,
        person: (kind == EventType::Recognized).then(|| "alice".to_string()),
        best_guess: Some("alice".into()),
        score: 0.7,
        second: 0.1,
        threshold: 0.4,
        bbox: [10.0, 10.0, 110.0, 130.0],
        first_seen: t,
        at: t,
    }
}

/// Waits until the publisher's status satisfies `until`; panics with the status after `timeout`.
fn wait_status(p: &Publisher, timeout: Duration, until: impl Fn(&LinkStatus) -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !until(&p.status()) {
        assert!(std::time::Instant::now() < deadline, "{:?}", p.status());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_connected(p: &Publisher) {
    wait_status(p, Duration::from_secs(15), |s| s.connected);
}

#[test]
fn availability_discovery_states_events_and_requests_arrive_as_documented() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "#");
    let (tx, rx) = mpsc::channel();
    let publisher = Publisher::start(&config(&broker.url()), topics(), tx).unwrap();
    wait_connected(&publisher);

    let t = topics();
    let input = DiscoveryInput {
        people: vec![
            ("alice".into(), "Alice".into()),
            ("bob".into(), "Bob".into()),
        ],
        cameras: vec!["hall".into()],
        snapshots: true,
        off_delay_s: 150,
    };
    let (doc, _) = events::discovery(&t, &input, &BTreeMap::new());
    publisher.send(doc);
    let mut presence = Presence::new(t.clone(), Duration::from_secs(120));
    for m in presence.set_people(&["alice".into(), "bob".into()]) {
        publisher.send(m);
    }
    let mut builder = EventBuilder::new(t.clone(), "mobilefacenet", SystemTime::now());
    let names = BTreeMap::from([("alice".to_string(), "Alice".to_string())]);
    let e = face_event(1, EventType::Recognized);
    for m in builder.messages(&e, &names) {
        publisher.send(m);
    }
    publisher.send(presence.recognized("alice", "hall", 0.7, e.at).unwrap());

    sub.wait_for("event and states", Duration::from_secs(10), |all| {
        all.iter().any(|m| m.topic.ends_with("/cam/hall/event"))
            && all
                .iter()
                .any(|m| m.topic.ends_with("/alice/state") && m.text().contains("hall"))
            && all.iter().any(|m| m.topic.ends_with("/bob/state"))
    });
    // What a client connecting later gets: the retained messages, and no events.
    let late = Subscriber::start(broker.port, "#");
    let retained = late.wait_for("retained messages", Duration::from_secs(10), |all| {
        all.len() >= 4
    });
    let mut retained_topics: Vec<&str> = retained
        .iter()
        .filter(|m| m.retain)
        .map(|m| m.topic.as_str())
        .collect();
    retained_topics.sort();
    assert_eq!(
        retained_topics,
        vec![
            "face-edge/test-node/availability",
            "face-edge/test-node/person/alice/state",
            "face-edge/test-node/person/bob/state",
            "homeassistant/device/test-node/config"
        ]
    );
    assert_eq!(late.on(&t.availability())[0].text(), "online");

    let discovery = sub.on(&t.discovery());
    assert_eq!(discovery.len(), 1);
    let d = discovery[0].json();
    assert_eq!(d["dev"]["ids"], json!(["face_edge_test-node"]));
    assert_eq!(d["dev"]["name"], "face-edge test-node");
    assert_eq!(d["o"]["name"], "face-edge");
    assert_eq!(d["avty_t"], t.availability());
    let cmps = d["cmps"].as_object().unwrap();
    let mut keys: Vec<&String> = cmps.keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "alice_location",
            "alice_presence",
            "alice_tracker",
            "bob_location",
            "bob_presence",
            "bob_tracker",
            "embed_ms",
            "fps",
            "hall_event",
            "hall_snapshot"
        ]
    );
    let presence_cmp = &cmps["alice_presence"];
    assert_eq!(presence_cmp["p"], "binary_sensor");
    assert_eq!(presence_cmp["device_class"], "occupancy");
    assert_eq!(
        presence_cmp["state_topic"],
        "face-edge/test-node/person/alice/state"
    );
    assert_eq!(presence_cmp["off_delay"], 150);
    assert_eq!(
        presence_cmp["unique_id"],
        "face_edge_test-node_alice_presence"
    );
    assert_eq!(cmps["bob_tracker"]["p"], "device_tracker");
    // The tracker says only home / not_home; the location sensor says where.
    assert_eq!(
        cmps["bob_tracker"]["value_template"],
        "{{ ('home' if value_json.state != 'not_home' else 'not_home') if value_json is defined else '' }}"
    );
    assert_eq!(cmps["bob_location"]["p"], "sensor");
    assert_eq!(cmps["hall_event"]["p"], "event");
    assert_eq!(
        cmps["hall_event"]["state_topic"],
        "face-edge/test-node/cam/hall/event"
    );
    assert_eq!(cmps["hall_snapshot"]["p"], "image");
    assert_eq!(
        cmps["hall_snapshot"]["image_topic"],
        "face-edge/test-node/cam/hall/snapshot"
    );
    assert_eq!(cmps["fps"]["entity_category"], "diagnostic");
    let unique: std::collections::HashSet<&str> = cmps
        .values()
        .map(|c| c["unique_id"].as_str().unwrap())
        .collect();
    assert_eq!(unique.len(), cmps.len(), "unique ids are unique");

    let bob = sub.on("face-edge/test-node/person/bob/state");
    assert_eq!(
        bob[0].json(),
        json!({"state": "not_home", "last_seen": null, "score": null})
    );
    let alice = sub
        .on("face-edge/test-node/person/alice/state")
        .last()
        .unwrap()
        .json();
    assert_eq!(alice["state"], "hall");
    assert_eq!(alice["score"], 0.7);
    assert!(alice["last_seen"].as_str().unwrap().ends_with('Z'));

    let event = sub.on("face-edge/test-node/events")[0].json();
    for key in [
        "schema",
        "id",
        "type",
        "person",
        "score",
        "second",
        "threshold",
        "camera",
        "box",
        "face_size",
        "track_id",
        "first_seen",
        "ts",
        "model",
    ] {
        assert!(event.get(key).is_some(), "event has {key}: {event}");
    }
    assert_eq!(event["type"], "recognized");
    let cam = sub.on("face-edge/test-node/cam/hall/event")[0].json();
    assert_eq!(cam["event_type"], "recognized");

    // A request is handed to the service and its response published with the same transaction.
    sub.publish(
        "face-edge/test-node/request/reload_gallery",
        r#"{"transaction": "abc-1"}"#,
        false,
    );
    let Incoming::Request(r) = rx.recv_timeout(Duration::from_secs(10)).unwrap() else {
        panic!("not a request")
    };
    assert_eq!(r.command, "reload_gallery");
    publisher.send(events::response(
        &t,
        &r.command,
        r.transaction.as_ref(),
        Ok(json!({"people": 2})),
    ));
    let responses = sub.wait_for("response", Duration::from_secs(10), |all| {
        all.iter()
            .any(|m| m.topic.ends_with("/response/reload_gallery"))
    });
    let resp = responses
        .iter()
        .find(|m| m.topic.ends_with("/response/reload_gallery"))
        .unwrap()
        .json();
    assert_eq!(
        resp,
        json!({"status": "ok", "data": {"people": 2}, "transaction": "abc-1"})
    );
    sub.publish("face-edge/test-node/request/enroll", "not json", false);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Incoming::BadRequest { .. }
    ));

    // Home Assistant's birth message is passed on.
    sub.publish("homeassistant/status", "online", false);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(10)).unwrap(),
        Incoming::HomeAssistantOnline
    );

    // A clean shutdown publishes offline.
    publisher.shutdown(Duration::from_secs(5));
    sub.wait_for("offline", Duration::from_secs(10), |all| {
        all.iter()
            .rfind(|m| m.topic == "face-edge/test-node/availability")
            .is_some_and(|m| m.payload == b"offline")
    });
}

#[test]
fn no_event_is_lost_while_the_broker_is_away() {
    let mut broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "face-edge/test-node/events");
    let (tx, _rx) = mpsc::channel();
    let publisher = Publisher::start(&config(&broker.url()), topics(), tx).unwrap();
    wait_connected(&publisher);
    let mut builder = EventBuilder::new(topics(), "mobilefacenet", SystemTime::now());
    let mut produced = vec![];
    let mut produce = |n: u64, publisher: &Publisher| {
        for m in builder.messages(&face_event(n, EventType::Unknown), &BTreeMap::new()) {
            if m.topic.ends_with("/events") {
                produced.push(
                    serde_json::from_slice::<Value>(&m.payload).unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
            }
            publisher.send(m);
        }
    };
    for n in 0..10 {
        produce(n, &publisher);
    }
    sub.wait_for(
        "10 events before the outage",
        Duration::from_secs(10),
        |all| all.len() >= 10,
    );

    broker.stop();
    // 100 events over 30 s without a broker.
    for n in 10..110 {
        produce(n, &publisher);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(!publisher.status().connected);
    assert!(publisher.status().queued >= 100, "{:?}", publisher.status());
    broker.restart();

    let all = sub.wait_for("all 110 events", Duration::from_secs(60), |all| {
        let ids: std::collections::HashSet<String> = all
            .iter()
            .map(|m| m.json()["id"].as_str().unwrap().to_string())
            .collect();
        ids.len() >= 110
    });
    // QoS 1 may deliver twice: de-duplicate by event id, keeping the first arrival.
    let mut seen = std::collections::HashSet::new();
    let arrived: Vec<String> = all
        .iter()
        .map(|m| m.json()["id"].as_str().unwrap().to_string())
        .filter(|id| seen.insert(id.clone()))
        .collect();
    assert_eq!(arrived, produced, "every event, in the order produced");
    assert_eq!(publisher.status().dropped_events, 0);
    assert!(publisher.status().failures >= 1);
    publisher.shutdown(Duration::from_secs(5));
}

#[test]
fn a_full_queue_drops_the_oldest_events_and_counts_them() {
    let broker = Mosquitto::start("");
    let sub = Subscriber::start(broker.port, "face-edge/test-node/#");
    let (tx, _rx) = mpsc::channel();
    // A port with nothing listening: every message waits in the queue.
    let dead = format!("mqtt://127.0.0.1:{}", common::broker::free_port());
    let mut cfg = config(&dead);
    cfg.queue_size = 5;
    let publisher = Publisher::start(&cfg, topics(), tx).unwrap();
    let mut builder = EventBuilder::new(topics(), "m", SystemTime::now());
    let mut ids = vec![];
    for n in 0..8 {
        for m in builder.messages(&face_event(n, EventType::Left), &BTreeMap::new()) {
            ids.push(
                serde_json::from_slice::<Value>(&m.payload).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            publisher.send(m);
        }
    }
    publisher.send(Message::state(
        "face-edge/test-node/person/alice/state".into(),
        b"{\"state\":\"hall\"}".to_vec(),
    ));
    publisher.send(Message::state(
        "face-edge/test-node/person/alice/state".into(),
        b"{\"state\":\"not_home\"}".to_vec(),
    ));
    wait_status(&publisher, Duration::from_secs(10), |s| {
        s.dropped_events >= 3
    });
    let status = publisher.status();
    assert_eq!(status.dropped_events, 3);
    assert_eq!(status.queued, 6, "5 events + the latest state");
    assert!(
        status.last_error.as_deref().unwrap().contains("network"),
        "{status:?}"
    );
    publisher.shutdown(Duration::from_secs(1));
    drop(sub);
    let _ = ids;
}

fn openssl(args: &[&str], dir: &TempDir) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(&dir.0)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, plus an unrelated CA.
fn make_certificates(dir: &TempDir) {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=face-edge test CA",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other-ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=unrelated CA",
        ],
        dir,
    );
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        dir,
    );
    std::fs::write(
        dir.path("san.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n",
    )
    .unwrap();
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
        dir,
    );
}

/// A mosquitto TLS listener with the test CA's server certificate (plus `extra` lines); returns the
/// broker and its mqtts:// URL.
fn tls_broker(certs: &TempDir, extra: &str) -> (Mosquitto, String) {
    let broker = Mosquitto::start(&format!(
        "cafile {}\ncertfile {}\nkeyfile {}\n{extra}",
        certs.path("ca.pem").display(),
        certs.path("server.pem").display(),
        certs.path("server.key").display()
    ));
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    (broker, url)
}

#[test]
fn tls_connects_with_the_right_ca_and_refuses_the_wrong_one() {
    let certs = TempDir::new("certs");
    make_certificates(&certs);
    let (_broker, url) = tls_broker(&certs, "");

    let mut good = config(&url);
    good.ca_file = Some(certs.path("ca.pem"));
    let (tx, _rx) = mpsc::channel();
    let publisher = Publisher::start(&good, topics(), tx).unwrap();
    wait_connected(&publisher);
    publisher.shutdown(Duration::from_secs(2));

    let mut bad = config(&url);
    bad.ca_file = Some(certs.path("other-ca.pem"));
    let (tx, _rx) = mpsc::channel();
    let publisher = Publisher::start(&bad, topics(), tx).unwrap();
    wait_status(&publisher, Duration::from_secs(15), |s| {
        s.last_error.is_some()
    });
    let status = publisher.status();
    assert!(!status.connected);
    let error = status.last_error.unwrap();
    assert!(
        error.starts_with("TLS:")
            && error.contains("UnknownIssuer")
            && error.contains("mqtt.ca_file"),
        "{error}"
    );
    publisher.shutdown(Duration::from_secs(1));

    // A CA file that is not PEM is refused at start, naming the file.
    let mut broken = config(&url);
    std::fs::write(certs.path("broken.pem"), "not a certificate").unwrap();
    broken.ca_file = Some(certs.path("broken.pem"));
    let (tx, _rx) = mpsc::channel();
    let err = Publisher::start(&broken, topics(), tx)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("broken.pem"), "{err}");
}

#[test]
fn a_wrong_password_is_reported_and_retried_with_backoff() {
    let dir = TempDir::new("auth");
    let passwords = dir.path("passwd");
    let status = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&passwords)
        .args(["edge", "right-secret"])
        .status()
        .unwrap();
    assert!(status.success());
    let broker = Mosquitto::start(&format!("password_file {}\n", passwords.display()));

    let secret = dir.path("mqtt-password");
    std::fs::write(&secret, "wrong-secret\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut cfg = config(&broker.url());
    cfg.username = Some("edge".into());
    cfg.password_file = Some(secret.clone());
    let (tx, _rx) = mpsc::channel();
    let publisher = Publisher::start(&cfg, topics(), tx).unwrap();
    wait_status(&publisher, Duration::from_secs(20), |s| s.failures >= 3);
    let s = publisher.status();
    assert_eq!(s.connections, 0);
    assert!(
        !s.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("wrong-secret"),
        "the password is never shown"
    );
    let error = s.last_error.unwrap();
    assert!(
        error.starts_with("the broker refused the connection:"),
        "{error}"
    );
    assert!(
        error.contains("bad user name or password") || error.contains("not authorised"),
        "{error}"
    );
    publisher.shutdown(Duration::from_secs(1));

    // The right password connects.
    std::fs::write(&secret, "right-secret\n").unwrap();
    let (tx, _rx) = mpsc::channel();
    let publisher = Publisher::start(&cfg, topics(), tx).unwrap();
    wait_connected(&publisher);
    publisher.shutdown(Duration::from_secs(1));
    assert!(!broker.log().contains("right-secret"));
}

#[test]
fn a_broker_requiring_client_certificates_accepts_the_configured_one() {
    let certs = TempDir::new("client-certs");
    make_certificates(&certs);
    // An X.509 v3 client certificate (webpki refuses v1).
    std::fs::write(certs.path("client.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
    openssl(
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=face-edge",
        ],
        &certs,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.pem",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
        &certs,
    );
    let (_broker, url) = tls_broker(&certs, "require_certificate true\n");
    let mut cfg = config(&url);
    cfg.ca_file = Some(certs.path("ca.pem"));

    // Without a client certificate the broker closes the connection.
    let (tx, _rx) = mpsc::channel();
    let anonymous = Publisher::start(&cfg, topics(), tx).unwrap();
    wait_status(&anonymous, Duration::from_secs(15), |s| s.failures >= 1);
    assert_eq!(anonymous.status().connections, 0);
    anonymous.shutdown(Duration::from_secs(1));

    cfg.client_cert = Some(certs.path("client.pem"));
    cfg.client_key = Some(certs.path("client.key"));
    let (tx, _rx) = mpsc::channel();
    let publisher = Publisher::start(&cfg, topics(), tx).unwrap();
    wait_connected(&publisher);
    publisher.shutdown(Duration::from_secs(2));
}

/// A client logged in as `user`, recording what it receives on `filter`.
fn client_as(
    port: u16,
    user: &str,
    password: &str,
    filter: &str,
) -> (rumqttc::Client, Arc<Mutex<Vec<String>>>) {
    let mut o = rumqttc::MqttOptions::new(
        format!("{user}-{}", common::broker::free_port()),
        "127.0.0.1",
        port,
    );
    o.set_credentials(user, password);
    let (client, mut connection) = rumqttc::Client::new(o, 10);
    let received = Arc::new(Mutex::new(vec![]));
    let (c, r, filter) = (client.clone(), received.clone(), filter.to_string());
    let (ready, subscribed) = mpsc::channel();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    c.subscribe(filter.clone(), rumqttc::QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = ready.send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    r.lock().unwrap().push(p.topic.clone());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    subscribed
        .recv_timeout(Duration::from_secs(10))
        .expect("connected and subscribed");
    (client, received)
}

/// The mosquitto ACL the README documents, taken from the README itself, on a real broker: only Home
/// Assistant's account can send face-edge requests, and no other account can read them (or their token).
#[test]
fn the_readme_acl_lets_only_home_assistants_account_send_or_read_requests() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("```\n# /etc/mosquitto/acl")
        .expect("the README's ACL example")
        + 4;
    let acl_text = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = TempDir::new("acl");
    let (passwords, acl) = (dir.path("passwd"), dir.path("acl"));
    std::fs::write(&acl, acl_text).unwrap();
    for (i, user) in ["face-edge", "homeassistant", "intruder"]
        .into_iter()
        .enumerate()
    {
        let mut cmd = Command::new("mosquitto_passwd");
        if i == 0 {
            cmd.arg("-c");
        }
        let status = cmd
            .arg("-b")
            .arg(&passwords)
            .args([user, &format!("{user}-pw")])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let broker = Mosquitto::start(&format!(
        "password_file {}\nacl_file {}\n",
        passwords.display(),
        acl.display()
    ));
    let secret = dir.path("mqtt-password");
    std::fs::write(&secret, "face-edge-pw\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut cfg = config(&broker.url());
    cfg.username = Some("face-edge".into());
    cfg.password_file = Some(secret);
    let (tx, rx) = mpsc::channel();
    let publisher = Publisher::start(&cfg, topics(), tx).unwrap();
    wait_connected(&publisher);

    let (intruder, intruder_saw) = client_as(broker.port, "intruder", "intruder-pw", "face-edge/#");
    let (automation, _) = client_as(
        broker.port,
        "homeassistant",
        "homeassistant-pw",
        "face-edge/+/response/#",
    );
    let request = "face-edge/test-node/request/reload_gallery";
    let qos = rumqttc::QoS::AtLeastOnce;
    intruder
        .publish(request, qos, false, r#"{"transaction":"intruder"}"#)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    automation
        .publish(request, qos, false, r#"{"transaction":"automation"}"#)
        .unwrap();
    let Incoming::Request(first) = rx.recv_timeout(Duration::from_secs(10)).unwrap() else {
        panic!("not a request")
    };
    assert_eq!(
        first.transaction,
        Some(json!("automation")),
        "the intruder's request never arrived"
    );
    publisher.send(events::response(
        &topics(),
        "reload_gallery",
        None,
        Ok(json!({})),
    ));
    std::thread::sleep(Duration::from_millis(500));
    let saw = intruder_saw.lock().unwrap().clone();
    assert!(
        !saw.iter()
            .any(|t| t.contains("/request/") || t.contains("/response/")),
        "{saw:?}"
    );
    publisher.shutdown(Duration::from_secs(1));
}

/// Another client using the id face-edge used to take by default does not knock face-edge off.
#[test]
fn a_client_with_the_old_default_id_does_not_disconnect_face_edge() {
    let broker = Mosquitto::start("");
    let (tx, _rx) = mpsc::channel();
    let publisher = Publisher::start(&config(&broker.url()), topics(), tx).unwrap();
    wait_connected(&publisher);
    let o = rumqttc::MqttOptions::new("face-edge-test-node", "127.0.0.1", broker.port);
    let (_client, mut connection) = rumqttc::Client::new(o, 10);
    let connected = connection
        .iter()
        .take(5)
        .any(|e| matches!(e, Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))));
    assert!(connected);
    std::thread::sleep(Duration::from_secs(2));
    let s = publisher.status();
    assert!(
        s.connected && s.connections == 1 && s.failures == 0,
        "{s:?}"
    );
    publisher.shutdown(Duration::from_secs(1));
}
