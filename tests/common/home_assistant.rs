//! A real Home Assistant Core, started by the tests on a free loopback port with a throwaway config
//! directory, onboarded through its API (owner and access token) and connected to the test's mosquitto
//! through the MQTT integration's config flow. Read through its REST and websocket APIs.
#![allow(dead_code)]

use super::TempDir;
use super::broker::{free_port, send_signal};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The venv holding Home Assistant (tests/install-home-assistant.sh): `FACE_EDGE_TEST_HOME_ASSISTANT`,
/// else target/home-assistant. Err with the reason when it is not installed.
pub fn installed() -> Result<PathBuf, String> {
    let venv = std::env::var_os("FACE_EDGE_TEST_HOME_ASSISTANT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/home-assistant"));
    let hass = venv.join("bin/hass");
    if hass.is_file() {
        Ok(venv)
    } else {
        Err(format!(
            "{} not found: install Home Assistant with tests/install-home-assistant.sh (needs Python 3.13)",
            hass.display()
        ))
    }
}

pub struct HomeAssistant {
    pub venv: PathBuf,
    pub dir: TempDir,
    pub port: u16,
    child: Option<Child>,
    token: String,
    http: ureq::Agent,
}

impl HomeAssistant {
    /// Starts Home Assistant, creates the owner and a token, and adds the MQTT integration for the
    /// broker on `mqtt_port`. Automations come from automations.yaml (`set_automations`).
    pub fn start(venv: PathBuf, mqtt_port: u16) -> HomeAssistant {
        let dir = TempDir::new("home-assistant");
        let port = free_port();
        std::fs::write(
            dir.path("configuration.yaml"),
            format!(
                "homeassistant:\n  name: face-edge test\n  unit_system: metric\n  time_zone: UTC\n  latitude: 0\n  longitude: 0\n  elevation: 0\n  country: GB\n\
                 http:\n  server_host: 127.0.0.1\n  server_port: {port}\n\
                 api:\nconfig:\nonboarding:\nwebsocket_api:\nperson:\n\
                 automation: !include automations.yaml\n\
                 logger:\n  default: warning\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.path("automations.yaml"), "[]\n").unwrap();
        let http = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut ha = HomeAssistant {
            venv,
            dir,
            port,
            child: None,
            token: String::new(),
            http,
        };
        ha.restart();
        ha.onboard();
        ha.add_mqtt(mqtt_port);
        ha
    }

    pub fn version(&self) -> String {
        let out = Command::new(self.venv.join("bin/hass"))
            .arg("--version")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts Home Assistant (again) and waits until its HTTP API answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path("output.log"))
            .unwrap();
        // --skip-pip: every requirement was installed with Home Assistant; nothing is fetched now.
        self.child = Some(
            Command::new(self.venv.join("bin/hass"))
                .arg("--config")
                .arg(&self.dir.0)
                .arg("--skip-pip")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let answered = self
                .http
                .get(self.url("/api/onboarding"))
                .call()
                .is_ok_and(|r| r.status() == 200);
            if answered {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Home Assistant did not start in 120 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            send_signal(child.id(), "TERM");
            let _ = child.wait();
        }
    }

    /// Everything Home Assistant logged (stdout and stderr of every start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("output.log")).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Creates the owner through the onboarding API and exchanges the auth code for an access token.
    fn onboard(&mut self) {
        let client_id = self.url("/");
        let user = self.post(
            "/api/onboarding/users",
            &json!({"client_id": client_id, "name": "Test", "username": "test", "password": "face-edge-test-password", "language": "en"}),
        );
        let code = user["auth_code"].as_str().expect("auth code").to_string();
        let mut response = self
            .http
            .post(self.url("/auth/token"))
            .send_form([
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("client_id", client_id.as_str()),
            ])
            .unwrap();
        let body: Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        self.token = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access token: {body}"))
            .to_string();
    }

    /// The MQTT integration, added as a user would in the UI: its config flow with broker and port.
    fn add_mqtt(&self, mqtt_port: u16) {
        let flow = self.post(
            "/api/config/config_entries/flow",
            &json!({"handler": "mqtt"}),
        );
        assert_eq!(flow["step_id"], "broker", "{flow}");
        let flow_id = flow["flow_id"].as_str().unwrap();
        let done = self.post(
            &format!("/api/config/config_entries/flow/{flow_id}"),
            &json!({"broker": "127.0.0.1", "port": mqtt_port}),
        );
        assert_eq!(done["type"], "create_entry", "{done}");
        assert_eq!(done["result"]["state"], "loaded", "{done}");
    }

    /// Replaces the automations (a YAML list, as in automations.yaml) and reloads them, as the UI's
    /// automation editor does.
    pub fn set_automations(&self, yaml: &str) {
        std::fs::write(self.dir.path("automations.yaml"), yaml).unwrap();
        self.post("/api/services/automation/reload", &json!({}));
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let mut response = self
            .http
            .get(self.url(path))
            .header("authorization", format!("Bearer {}", self.token))
            .call()
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn post(&self, path: &str, body: &Value) -> Value {
        let mut request = self.http.post(self.url(path));
        if !self.token.is_empty() {
            request = request.header("authorization", format!("Bearer {}", self.token));
        }
        let mut response = request
            .content_type("application/json")
            .send(body.to_string())
            .unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        assert!(status < 300, "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap()
    }

    /// An entity's state object, or None when Home Assistant has no such entity.
    pub fn state(&self, entity_id: &str) -> Option<Value> {
        let (status, v) = self.get(&format!("/api/states/{entity_id}"));
        (status == 200).then_some(v)
    }

    /// Waits until `done` holds for the entity's state object (None: no such entity), or panics after
    /// `timeout` with the last state seen.
    pub fn wait_for(
        &self,
        what: &str,
        entity_id: &str,
        timeout: Duration,
        done: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state(entity_id);
            if done(state.as_ref()) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {entity_id} is {state:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the entity's state is `wanted`.
    pub fn wait_state(&self, entity_id: &str, wanted: &str, timeout: Duration) -> Value {
        self.wait_for(&format!("state {wanted:?}"), entity_id, timeout, |s| {
            s.is_some_and(|s| s["state"] == wanted)
        })
        .unwrap()
    }

    /// One command over the websocket API (after authenticating); its `result`.
    pub fn ws(&self, command: Value) -> Value {
        use tungstenite::Message;
        let (mut socket, _) =
            tungstenite::connect(format!("ws://127.0.0.1:{}/api/websocket", self.port)).unwrap();
        let read = |socket: &mut tungstenite::WebSocket<_>| -> Value {
            loop {
                if let Message::Text(text) = socket.read().unwrap() {
                    return serde_json::from_str(text.as_str()).unwrap();
                }
            }
        };
        assert_eq!(read(&mut socket)["type"], "auth_required");
        socket
            .send(Message::text(
                json!({"type": "auth", "access_token": self.token}).to_string(),
            ))
            .unwrap();
        assert_eq!(read(&mut socket)["type"], "auth_ok");
        let mut command = command;
        command["id"] = json!(1);
        socket.send(Message::text(command.to_string())).unwrap();
        let answer = read(&mut socket);
        let _ = socket.close(None);
        assert_eq!(answer["success"], true, "{command}: {answer}");
        answer["result"].clone()
    }

    /// The entity registry's entries of the MQTT integration.
    pub fn mqtt_entities(&self) -> Vec<Value> {
        let all = self.ws(json!({"type": "config/entity_registry/list"}));
        all.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["platform"] == "mqtt")
            .cloned()
            .collect()
    }

    pub fn devices(&self) -> Vec<Value> {
        self.ws(json!({"type": "config/device_registry/list"}))
            .as_array()
            .unwrap()
            .clone()
    }

    /// The messages of the persistent notifications shown now.
    pub fn notifications(&self) -> Vec<String> {
        self.ws(json!({"type": "persistent_notification/get"}))
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
