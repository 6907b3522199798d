//! Delivery of messages to an MQTT broker with rumqttc, on a thread of its own: connection with the
//! last will `offline`, `online` and every retained state re-published at each (re)connect, queued messages
//! sent in order and kept until acknowledged, reconnection with capped exponential backoff, requests
//! received on `request/+` and Home Assistant's birth message passed to the service. TLS uses rustls with
//! the ring provider: pure Rust plus a little C/assembly that every cross toolchain builds, where the
//! default aws-lc-rs needs cmake and a per-target C build.

use crate::config::MqttConfig;
use crate::events::{Message, MessageKind, Request, Topics, parse_request};
use crate::outbox::Outbox;
use face_edge_core::authorise::{MAX_REQUEST_BYTES, RequestToken};
use face_edge_core::command::CommandError;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, LastWill, Packet};
use rumqttc::v5::{Client, Connection, ConnectionError, Event, MqttOptions, RecvTimeoutError};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError as ChannelTimeout, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages handed to the connection before their acknowledgements come back.
const MAX_IN_FLIGHT: usize = 20;
const POLL: Duration = Duration::from_millis(50);
/// The largest packet face-edge accepts from the broker: requests are at most 4 KiB, Home Assistant's
/// birth message a few bytes; 64 KiB leaves room for MQTT 5 properties a broker may add.
pub const MAX_INCOMING_PACKET: u32 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("TLS set-up: {0}")]
    Tls(String),
}

/// Where the connection thread delivers what it receives: the service's event channel, or a plain
/// channel of `Incoming` (tests).
pub trait IncomingHandler: Send + 'static {
    fn handle(&self, message: Incoming);
}

impl IncomingHandler for Sender<Incoming> {
    fn handle(&self, message: Incoming) {
        let _ = self.send(message);
    }
}

/// What the connection reports to the service.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request(Request),
    /// A request whose body could not be parsed: answer it with this error.
    BadRequest {
        command: String,
        error: String,
    },
    /// Home Assistant (re)started: discovery and states should be re-sent.
    HomeAssistantOnline,
}

/// The connection's state, for statistics, logs and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkStatus {
    pub connected: bool,
    pub connections: u64,
    /// Failed connection attempts and lost connections.
    pub failures: u64,
    pub last_error: Option<String>,
    pub queued: usize,
    pub dropped_events: u64,
}

enum Command {
    Send(Message),
    Shutdown(Sender<()>),
}

/// Handle to the publishing thread.
pub struct Publisher {
    tx: Sender<Command>,
    status: Arc<Mutex<LinkStatus>>,
    thread: Option<JoinHandle<()>>,
}

/// Reads the broker password: the configured file, else systemd's credential `mqtt-password`; an empty
/// file means no password (the package installs one so the unit's LoadCredential= finds it).
pub fn read_password(config: &MqttConfig) -> Result<Option<String>, MqttError> {
    let secret = read_secret(
        config.password_file.as_deref(),
        "mqtt-password",
        "password file",
    )?;
    Ok(secret.map(|(_, text)| text))
}

/// Reads the token requests must carry: `[mqtt.requests] token_file`, else systemd's credential
/// `request-token`. None (and every request refused) when neither exists or the file is empty.
pub fn read_request_token(config: &MqttConfig) -> Result<Option<RequestToken>, MqttError> {
    let file = config.requests.token_file.as_deref();
    let Some((path, secret)) = read_secret(file, "request-token", "request token file")? else {
        return Ok(None);
    };
    RequestToken::new(secret.trim())
        .map(Some)
        .map_err(|e| MqttError::File {
            path,
            message: e.to_string(),
        })
}

fn credential(name: &str) -> PathBuf {
    Path::new(&std::env::var_os("CREDENTIALS_DIRECTORY").unwrap_or_default()).join(name)
}

/// The file read and its first line: `file`, else systemd's credential `name` when it exists. Warns
/// when the file is readable by other users.
fn read_secret(
    file: Option<&Path>,
    name: &str,
    what: &str,
) -> Result<Option<(PathBuf, String)>, MqttError> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None if std::env::var_os("CREDENTIALS_DIRECTORY").is_some()
            && credential(name).exists() =>
        {
            credential(name)
        }
        None => return Ok(None),
    };
    let file_err = |message: String| MqttError::File {
        path: path.clone(),
        message,
    };
    let meta = std::fs::metadata(&path).map_err(|e| file_err(format!("{what}: {e}")))?;
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o004 != 0 {
        log::warn!(
            "{}: the {what} is readable by every user; chmod 600 it",
            path.display()
        );
    }
    let text = std::fs::read_to_string(&path).map_err(|e| file_err(format!("{what}: {e}")))?;
    let first = text.lines().next().filter(|line| !line.is_empty());
    Ok(first.map(|line| (path, line.to_string())))
}

fn tls_config(config: &MqttConfig) -> Result<rustls::ClientConfig, MqttError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| MqttError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| pem_err(ca, &e))? {
                roots
                    .add(cert.map_err(|e| pem_err(ca, &e))?)
                    .map_err(|e| pem_err(ca, &e))?;
            }
            if roots.is_empty() {
                return Err(pem_err(ca, &"no certificate in the CA file"));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(MqttError::Tls(
                    "no system CA certificates found; set mqtt.ca_file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&config.client_cert, &config.client_key) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_err(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_err(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| MqttError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Connection options: client id, keep-alive, credentials, TLS and the last will `offline`.
pub fn options(config: &MqttConfig, topics: &Topics) -> Result<MqttOptions, MqttError> {
    let address = &config.url;
    let client_id = config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("face-edge-{}-{}", topics.node_id, run_tag()));
    let mut o = MqttOptions::new(client_id, address.host.clone(), address.port);
    o.set_keep_alive(Duration::from_secs(config.keep_alive_s.max(5)));
    // A clean start: face-edge keeps its own queue, so nothing depends on the broker's session state.
    o.set_clean_start(true);
    // MQTT 5's Maximum Packet Size, sent in CONNECT: the broker drops a larger message for this client
    // instead of sending it (MQTT 3.1.1 has no way to say so: the client could only read it whole or
    // drop the connection, and a retained one would come back at every reconnect).
    o.set_max_packet_size(Some(MAX_INCOMING_PACKET));
    o.set_last_will(LastWill::new(
        topics.availability(),
        "offline",
        QoS::AtLeastOnce,
        true,
        None,
    ));
    if let Some(user) = &config.username {
        o.set_credentials(user.clone(), read_password(config)?.unwrap_or_default());
    }
    if address.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls_config(config)?),
        )));
    }
    Ok(o)
}

/// A tag unique to this run (process id and start time), so that the default client id is not one
/// another client can take by accident: a broker disconnects the older of two clients with one id.
fn run_tag() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff)
    })
    .clone()
}

/// A readable cause for a failed connection.
pub fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            "the broker refused the connection: bad user name or password".into()
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            "the broker refused the connection: not authorised (check mqtt.username and the password)".into()
        }
        ConnectionError::ConnectionRefused(code) => format!("the broker refused the connection: {code:?}"),
        ConnectionError::Tls(t) => format!("TLS: {t} (check mqtt.ca_file and the broker's certificate)"),
        ConnectionError::Io(io) => format!("network: {io}"),
        other => other.to_string(),
    }
}

impl Publisher {
    /// Starts the connection thread. `incoming` receives requests and Home Assistant's birth messages.
    pub fn start(
        config: &MqttConfig,
        topics: Topics,
        incoming: impl IncomingHandler,
    ) -> Result<Publisher, MqttError> {
        let options = options(config, &topics)?;
        let (client, connection) = Client::new(options, 64);
        let (tx, rx) = mpsc::channel();
        let status = Arc::new(Mutex::new(LinkStatus::default()));
        let link = Link {
            client,
            connection,
            topics,
            outbox: Outbox::new(config.queue_size),
            retained: BTreeMap::new(),
            incoming: Box::new(incoming),
            status: status.clone(),
            backoff: Backoff::new(Duration::from_secs(config.reconnect_max_s.max(1))),
            connected: false,
        };
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || link.run(rx))
            .expect("spawn mqtt thread");
        Ok(Publisher {
            tx,
            status,
            thread: Some(thread),
        })
    }

    pub fn send(&self, m: Message) {
        let _ = self.tx.send(Command::Send(m));
    }

    pub fn status(&self) -> LinkStatus {
        self.status.lock().expect("status lock").clone()
    }

    /// Publishes `offline`, flushes what it can within `grace` and disconnects.
    pub fn shutdown(mut self, grace: Duration) {
        let (done_tx, done_rx) = mpsc::channel();
        if self.tx.send(Command::Shutdown(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(grace);
        }
        if let Some(t) = self.thread.take() {
            drop(self.tx);
            let _ = t.join();
        }
    }
}

/// How long a connection (or a camera's stream) must last before the waits start again from one
/// second: one that is dropped right after connecting, again and again (a broker that rejects
/// something face-edge does, a helper that dies after its first frame), is retried ever more slowly
/// instead of every second.
pub const STABLE: Duration = Duration::from_secs(30);

/// Doubling waits from one second up to a cap, starting again from one second after a connection
/// that lasted `STABLE`.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
    up_since: Option<Instant>,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        Backoff {
            next: Duration::from_secs(1).min(cap),
            cap,
            up_since: None,
        }
    }

    /// The connection is up (now).
    pub fn up(&mut self) {
        self.up_at(Instant::now());
    }

    pub fn up_at(&mut self, at: Instant) {
        self.up_since = Some(at);
    }

    /// The wait before the next attempt, the connection having just failed.
    pub fn next_wait(&mut self) -> Duration {
        self.next_wait_at(Instant::now())
    }

    pub fn next_wait_at(&mut self, failed: Instant) -> Duration {
        if self
            .up_since
            .take()
            .is_some_and(|since| failed.duration_since(since) >= STABLE)
        {
            self.next = Duration::from_secs(1).min(self.cap);
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.cap);
        wait
    }
}

/// The connection thread: rumqttc's event loop, face-edge's own outbox and the reconnect backoff.
struct Link {
    client: Client,
    connection: Connection,
    topics: Topics,
    outbox: Outbox,
    /// The latest retained message per topic, re-published at every connection (a restarted broker
    /// without persistence has forgotten them).
    retained: BTreeMap<String, Message>,
    incoming: Box<dyn IncomingHandler>,
    status: Arc<Mutex<LinkStatus>>,
    backoff: Backoff,
    connected: bool,
}

impl Link {
    fn run(mut self, rx: Receiver<Command>) {
        loop {
            match self.connection.recv_timeout(POLL) {
                Ok(Ok(event)) => self.on_event(event),
                Ok(Err(e)) => {
                    let wait = self.on_error(&e);
                    // Keep accepting messages while waiting to reconnect.
                    let until = Instant::now() + wait;
                    while let Some(left) = until.checked_duration_since(Instant::now()) {
                        match rx.recv_timeout(left) {
                            Ok(Command::Send(m)) => self.enqueue(m),
                            Ok(Command::Shutdown(done)) => return self.finish(done, false),
                            Err(ChannelTimeout::Timeout) => break,
                            Err(ChannelTimeout::Disconnected) => return,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            loop {
                match rx.try_recv() {
                    Ok(Command::Send(m)) => self.enqueue(m),
                    Ok(Command::Shutdown(done)) => {
                        let connected = self.connected;
                        return self.finish(done, connected);
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.pump();
            self.update_status();
        }
    }

    fn enqueue(&mut self, m: Message) {
        if m.retain {
            if m.payload.is_empty() {
                self.retained.remove(&m.topic);
            } else {
                self.retained.insert(m.topic.clone(), m.clone());
            }
        }
        self.outbox.push(m);
    }

    fn pump(&mut self) {
        while self.connected && self.outbox.in_flight() < MAX_IN_FLIGHT {
            let Some(m) = self.outbox.next_to_send() else {
                break;
            };
            if self
                .client
                .try_publish(
                    m.topic.clone(),
                    QoS::AtLeastOnce,
                    m.retain,
                    m.payload.clone(),
                )
                .is_err()
            {
                // The request channel is full: put it back and let the connection drain.
                self.outbox.unsend_last();
                break;
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(_)) => self.on_connected(),
            Event::Outgoing(Outgoing::Publish(pkid)) => self.outbox.written(pkid),
            Event::Incoming(Packet::PubAck(ack)) => {
                self.outbox.acknowledged(ack.pkid);
            }
            Event::Incoming(Packet::Publish(p)) => match std::str::from_utf8(&p.topic) {
                Ok(topic) => self.on_publish(topic, &p.payload, p.retain),
                Err(_) => log::warn!("MQTT: ignored a message whose topic is not UTF-8"),
            },
            _ => {}
        }
    }

    fn on_connected(&mut self) {
        self.connected = true;
        self.backoff.up();
        {
            let mut s = self.status.lock().expect("status lock");
            s.connections += 1;
            s.last_error = None;
        }
        log::info!("MQTT connected");
        let _ = self
            .client
            .try_subscribe(self.topics.request_filter(), QoS::AtLeastOnce);
        let _ = self
            .client
            .try_subscribe(self.topics.ha_status(), QoS::AtLeastOnce);
        // `online` first, then the retained states the queue does not already carry, then the queue.
        self.outbox.requeue_in_flight();
        let mut birth = vec![Message::state(
            self.topics.availability(),
            b"online".to_vec(),
        )];
        birth.extend(
            self.retained
                .values()
                .filter(|m| !self.outbox.is_queued(&m.topic))
                .cloned(),
        );
        for m in birth.into_iter().rev() {
            self.outbox.push_front(m);
        }
    }

    fn on_publish(&mut self, topic: &str, payload: &[u8], retained: bool) {
        if topic == self.topics.ha_status() {
            if payload == b"online" {
                self.incoming.handle(Incoming::HomeAssistantOnline);
            }
        } else if let Some(command) = self.topics.request_command(topic) {
            // The broker marks a message retained only when it replays a stored one to a new
            // subscription, i.e. at every (re)connect: running it would repeat it each time.
            let request = if retained {
                Err(CommandError::Retained.to_string())
            } else if payload.len() > MAX_REQUEST_BYTES {
                Err(CommandError::TooLarge(payload.len()).to_string())
            } else {
                parse_request(command, payload)
            };
            self.incoming.handle(match request {
                Ok(r) => Incoming::Request(r),
                Err(error) => Incoming::BadRequest {
                    command: command.to_string(),
                    error,
                },
            });
        }
    }

    fn on_error(&mut self, e: &ConnectionError) -> Duration {
        let was_connected = std::mem::replace(&mut self.connected, false);
        self.outbox.requeue_in_flight();
        let cause = describe(e);
        let wait = self.backoff.next_wait();
        if was_connected {
            log::warn!(
                "MQTT connection lost ({cause}); reconnecting in {} s",
                wait.as_secs()
            );
        } else {
            log::warn!(
                "MQTT connection failed ({cause}); retrying in {} s",
                wait.as_secs()
            );
        }
        {
            let mut s = self.status.lock().expect("status lock");
            s.last_error = Some(cause);
            s.failures += 1;
        }
        self.update_status();
        wait
    }

    fn update_status(&self) {
        let mut s = self.status.lock().expect("status lock");
        s.connected = self.connected;
        s.queued = self.outbox.queued() + self.outbox.in_flight();
        s.dropped_events = self.outbox.dropped_events();
    }

    /// Clean shutdown: flush the queue for a moment, publish `offline`, disconnect.
    fn finish(mut self, done: Sender<()>, connected: bool) {
        if connected {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && (self.outbox.queued() + self.outbox.in_flight()) > 0
            {
                self.pump();
                match self.connection.recv_timeout(POLL) {
                    Ok(Ok(event)) => self.on_event(event),
                    Ok(Err(_)) => break,
                    Err(_) => {}
                }
            }
            let _ = self.client.try_publish(
                self.topics.availability(),
                QoS::AtLeastOnce,
                true,
                "offline",
            );
            let _ = self.client.try_disconnect();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                match self.connection.recv_timeout(POLL) {
                    Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                    _ => {}
                }
            }
        }
        let _ = done.send(());
    }
}

/// Where messages go: a broker, or stdout as JSON lines when no broker is configured.
pub enum Sink {
    Mqtt(Publisher),
    Stdout,
}

impl Sink {
    pub fn send(&self, m: Message) {
        match self {
            Sink::Mqtt(p) => p.send(m),
            Sink::Stdout => print_message(&m),
        }
    }

    pub fn status(&self) -> Option<LinkStatus> {
        match self {
            Sink::Mqtt(p) => Some(p.status()),
            Sink::Stdout => None,
        }
    }

    pub fn shutdown(self, grace: Duration) {
        if let Sink::Mqtt(p) = self {
            p.shutdown(grace);
        }
    }
}

fn print_message(m: &Message) {
    use std::io::Write;
    let payload = match serde_json::from_slice::<serde_json::Value>(&m.payload) {
        Ok(v) => v,
        Err(_) => match std::str::from_utf8(&m.payload) {
            Ok(s) => serde_json::Value::String(s.to_string()),
            Err(_) => serde_json::json!({"binary_bytes": m.payload.len()}),
        },
    };
    let line = serde_json::json!({"topic": m.topic, "retain": m.retain, "state": m.kind == MessageKind::State, "payload": payload});
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_restarts_only_after_a_stable_connection() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let waits: Vec<u64> = (0..5).map(|_| b.next_wait_at(t0).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        // Connected, dropped 10 s later: still the long wait.
        b.up_at(t0);
        assert_eq!(b.next_wait_at(t0 + Duration::from_secs(10)).as_secs(), 5);
        // Connected for STABLE: from one second again.
        b.up_at(t0);
        assert_eq!(b.next_wait_at(t0 + STABLE).as_secs(), 1);
        assert_eq!(b.next_wait_at(t0 + STABLE).as_secs(), 2);
    }
}
