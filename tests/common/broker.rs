//! A real mosquitto on a free loopback port, started and stopped by the tests, and a subscriber that
//! records what arrives.
#![allow(dead_code)]

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Mosquitto {
    pub port: u16,
    pub dir: super::TempDir,
    extra: String,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Mosquitto {
    /// Starts mosquitto with `extra` lines added to its listener (TLS files, password file...). Its
    /// persistence file keeps sessions across a restart.
    pub fn start(extra: &str) -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: super::TempDir::new("mosquitto"),
            extra: extra.to_string(),
            child: None,
        };
        m.restart();
        m
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path(name)
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let conf = self.dir.path("mosquitto.conf");
        let anonymous = if self.extra.contains("password_file") {
            "false"
        } else {
            "true"
        };
        std::fs::write(
            &conf,
            format!(
                // `user root`: started as root, mosquitto would otherwise switch to its own user and
                // could not read the test's files or write its persistence file and log.
                "user root\nlistener {} 127.0.0.1\nallow_anonymous {anonymous}\npersistence true\npersistence_location {}/\nlog_dest file {}\nlog_type all\n{}\n",
                self.port,
                self.dir.0.display(),
                self.dir.path("mosquitto.log").display(),
                self.extra
            ),
        )
        .unwrap();
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto runs (apt-get install mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it with SIGTERM (it saves its persistence file) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("mosquitto.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn mosquitto_binary() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

/// Sends `signal` (TERM, KILL, HUP) to a process with kill(1).
pub fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

/// One received message.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: {:?}",
                self.topic,
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A subscriber on its own thread with a persistent session (it also gets what was published while it
/// was disconnected, as long as the broker kept the session).
pub struct Subscriber {
    pub received: Arc<Mutex<Vec<Received>>>,
    client: Client,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str) -> Subscriber {
        let mut o = MqttOptions::new(format!("test-sub-{}", free_port()), "127.0.0.1", port);
        o.set_clean_session(false);
        o.set_keep_alive(Duration::from_secs(5));
        // Large enough for the 10 MB messages of the oversized-message test, in both directions.
        o.set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut connection) = Client::new(o, 100);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (r, c, filter) = (received.clone(), client.clone(), filter.to_string());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = c.subscribe(filter.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => r.lock().unwrap().push(Received {
                        topic: p.topic.clone(),
                        payload: p.payload.to_vec(),
                        retain: p.retain,
                    }),
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("subscribed");
        Subscriber { received, client }
    }

    pub fn all(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    /// Waits until `done` holds for what arrived, or panics after `timeout` with what did arrive.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.all();
            if done(&all) {
                return all;
            }
            if Instant::now() > deadline {
                let topics: Vec<String> = all
                    .iter()
                    .map(|m| format!("{} {}", m.topic, m.text()))
                    .collect();
                panic!(
                    "timed out waiting for {what}; received:\n{}",
                    topics.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn publish(&self, topic: &str, payload: &str, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
            .unwrap();
    }
}
