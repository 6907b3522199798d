//! The configuration file (`/etc/face-edge/face-edge.toml` by default): strict TOML, unknown keys are
//! errors naming the key, and every value is validated at load so a running service never meets a bad
//! one. Loading again is how the service reloads it.

use crate::models::{DEFAULT_DETECTOR, DEFAULT_EMBEDDER};
use face_edge_core::authorise::AllowedCommands;
#[cfg(test)]
use face_edge_core::detect::DEFAULT_MAX_SIDE;
use face_edge_core::detect::DetectSettings;
pub use face_edge_core::gallery::ThresholdSetting;
use face_edge_core::inference::Precision;
pub use face_edge_core::settings::TrackingSettings;

mod broker;
mod camera;
pub use broker::BrokerAddress;
pub use camera::{CameraConfig, ExecCamera, ExecFormat, FilesCamera, V4l2Camera, V4l2Format};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/face-edge/face-edge.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/face-edge";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: {field}: {message}", path.display())]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub models: ModelsConfig,
    #[serde(default)]
    pub detection: DetectSettings,
    #[serde(default)]
    pub gallery: GalleryConfig,
    /// Explicit people, in addition to (or instead of) `gallery.dir`.
    #[serde(default)]
    pub person: Vec<PersonConfig>,
    /// Directory holding the store and other state (systemd's StateDirectory).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The broker; without this section events are printed on stdout.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    #[serde(default)]
    pub camera: Vec<CameraConfig>,
    #[serde(default)]
    pub tracking: TrackingSettings,
    #[serde(default)]
    pub service: ServiceConfig,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// off, error, warn, info, debug or trace; RUST_LOG and --log-level take precedence.
    #[serde(default, deserialize_with = "log_level")]
    pub log_level: Option<log::LevelFilter>,
    /// A camera that is streaming but delivers no frame for this long counts as stalled: an exec
    /// camera's helper is restarted; for other cameras the watchdog stops being fed so systemd
    /// restarts the service.
    #[serde(default = "default_stall")]
    pub stall_timeout_s: f32,
}

impl ServiceConfig {
    pub fn stall(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f32(self.stall_timeout_s)
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            log_level: None,
            stall_timeout_s: default_stall(),
        }
    }
}

fn log_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<log::LevelFilter>, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{name:?} is not a log level: off, error, warn, info, debug or trace"
        ))
    })
}

fn default_stall() -> f32 {
    10.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: BrokerAddress,
    /// Topic segment naming this device: `face-edge/<node_id>/...` [default: the host name as a slug].
    #[serde(default)]
    pub node_id: Option<String>,
    /// [default: face-edge-<node_id>-<a tag unique to the run>]
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (first line). Unset: `$CREDENTIALS_DIRECTORY/mqtt-password` when
    /// systemd provides it (LoadCredential=). Never on the command line, never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) for mqtts://; unset: the system's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for brokers that require one.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// Longest wait between reconnection attempts (the wait doubles from 1 s up to this).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_s: u64,
    /// Events kept while the broker is unreachable; beyond it the oldest are dropped (and counted).
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Publish Home Assistant device discovery.
    #[serde(default = "default_true")]
    pub discovery: bool,
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// Publish the last face crop per camera as a retained JPEG (off: it is a photo of a person).
    #[serde(default)]
    pub snapshots: bool,
    #[serde(default = "default_stats_interval")]
    pub stats_interval_s: u64,
    /// A person unseen this long is "not_home".
    #[serde(default = "default_absence")]
    pub absence_s: u64,
    /// Who may send requests, and which.
    #[serde(default)]
    pub requests: RequestsConfig,
}

/// `[mqtt.requests]`: the commands accepted over MQTT and the token every request must carry. The
/// switches repeat `AllowedCommands`' fields because serde cannot flatten into a struct that refuses
/// unknown keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsConfig {
    #[serde(default = "default_true")]
    pub reload_gallery: bool,
    #[serde(default = "default_true")]
    pub snapshot: bool,
    /// Enrolment changes who is recognised: off unless turned on.
    #[serde(default)]
    pub enroll: bool,
    /// File holding the request token (first line, at least 16 characters). Unset:
    /// `$CREDENTIALS_DIRECTORY/request-token` when systemd provides it. With no token no request runs.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for RequestsConfig {
    fn default() -> RequestsConfig {
        let allowed = AllowedCommands::default();
        RequestsConfig {
            reload_gallery: allowed.reload_gallery,
            snapshot: allowed.snapshot,
            enroll: allowed.enroll,
            token_file: None,
        }
    }
}

impl RequestsConfig {
    pub fn allowed(&self) -> AllowedCommands {
        AllowedCommands {
            reload_gallery: self.reload_gallery,
            snapshot: self.snapshot,
            enroll: self.enroll,
        }
    }
}

fn default_keep_alive() -> u64 {
    30
}
fn default_reconnect_max() -> u64 {
    60
}
fn default_queue_size() -> usize {
    1000
}
fn default_true() -> bool {
    true
}
fn default_discovery_prefix() -> String {
    "homeassistant".to_string()
}
fn default_stats_interval() -> u64 {
    60
}
fn default_absence() -> u64 {
    120
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    /// Models directory; `--models-dir` and FACE_EDGE_MODELS_DIR take precedence.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default = "default_detector")]
    pub detector: String,
    #[serde(default = "default_embedder")]
    pub embedder: String,
    /// The embedder's arithmetic: "f32", or "f16" on CPUs with half-precision arithmetic.
    #[serde(default)]
    pub precision: Precision,
    /// Whether a checked int8 variant of `embedder` runs in its place.
    #[serde(default)]
    pub variant: VariantChoice,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: None,
            detector: default_detector(),
            embedder: default_embedder(),
            precision: Precision::F32,
            variant: VariantChoice::default(),
        }
    }
}

/// `models.variant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum VariantChoice {
    /// The embedder's int8-qdq variant when the models directory has one whose recorded check
    /// passed and whose weights verify (and the precision is f32); else the embedder itself.
    #[default]
    CheckedInt8Qdq,
    /// Exactly the embedder named.
    None,
}

fn default_detector() -> String {
    DEFAULT_DETECTOR.to_string()
}
fn default_embedder() -> String {
    DEFAULT_EMBEDDER.to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum EnrolPolicy {
    /// Reject an enrolment photo with several faces of similar size: which one is meant is a guess.
    #[default]
    RejectAmbiguous,
    /// Take the main face (largest and most central) whatever else is in the photo.
    Largest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GalleryConfig {
    /// One sub-directory per person; the folder name is the person id.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    #[serde(default)]
    pub enrol_policy: EnrolPolicy,
    #[serde(default)]
    pub threshold: ThresholdSetting,
    /// A face is only given a name when its best person beats the second best by this much.
    #[serde(default = "default_margin")]
    pub margin: f32,
}

impl Default for GalleryConfig {
    fn default() -> Self {
        GalleryConfig {
            dir: None,
            enrol_policy: EnrolPolicy::default(),
            threshold: ThresholdSetting::Auto,
            margin: default_margin(),
        }
    }
}

fn default_margin() -> f32 {
    0.05
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonConfig {
    pub id: String,
    /// Display name; defaults to the id.
    #[serde(default)]
    pub name: Option<String>,
    /// Image paths or glob patterns; relative ones are relative to the config file.
    pub images: Vec<String>,
}

pub use face_edge_core::events::is_valid_id as is_valid_person_id;
use face_edge_core::events::{AWAY, NOT_HOME};

/// Where commands run without a configuration file keep the store: the user's cache directory
/// (`$XDG_CACHE_HOME/face-edge`, else `~/.cache/face-edge`, else a per-user directory under the
/// system's temporary directory), never the current directory.
pub fn user_state_dir() -> PathBuf {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(cache) = absolute(std::env::var_os("XDG_CACHE_HOME")) {
        return cache.join("face-edge");
    }
    if let Some(home) = absolute(std::env::var_os("HOME")) {
        return home.join(".cache").join("face-edge");
    }
    std::env::temp_dir().join(format!("face-edge-{}", rustix::process::getuid().as_raw()))
}

impl Config {
    /// The configuration of a command given no configuration file: the defaults, with the store in
    /// `user_state_dir()`.
    pub fn without_file() -> Config {
        Config {
            state_dir: user_state_dir(),
            ..Config::default()
        }
    }

    /// Seconds a person must be out of view to be not_home (`mqtt.absence_s`, also without a broker).
    pub fn absence_s(&self) -> u64 {
        self.mqtt
            .as_ref()
            .map_or_else(default_absence, |m| m.absence_s)
    }

    /// Seconds between stats messages.
    pub fn stats_interval_s(&self) -> u64 {
        self.mqtt
            .as_ref()
            .map_or_else(default_stats_interval, |m| m.stats_interval_s)
            .max(1)
    }

    /// The Home Assistant discovery prefix.
    pub fn discovery_prefix(&self) -> String {
        self.mqtt
            .as_ref()
            .map_or_else(default_discovery_prefix, |m| m.discovery_prefix.clone())
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_path_buf(),
            cause,
        })?;
        let config = Config::parse(&text, path)?;
        warn_if_others_can_write(path);
        Ok(config)
    }

    /// Parses and validates; relative paths are resolved against the config file's directory.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: parse_message(text, &e),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = config.gallery.dir.as_mut() {
            resolve(d);
        }
        if let Some(d) = config.models.dir.as_mut() {
            resolve(d);
        }
        if let Some(m) = config.mqtt.as_mut() {
            for p in [
                &mut m.password_file,
                &mut m.ca_file,
                &mut m.client_cert,
                &mut m.client_key,
                &mut m.requests.token_file,
            ]
            .into_iter()
            .flatten()
            {
                resolve(p);
            }
        }
        resolve(&mut config.state_dir);
        for c in &mut config.camera {
            c.resolve_paths(base);
        }
        for p in &mut config.person {
            for image in &mut p.images {
                if Path::new(image).is_relative() {
                    *image = base.join(&*image).display().to_string();
                }
            }
        }
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let problem = self
            .detection_problem()
            .or_else(|| self.mqtt.as_ref().and_then(MqttConfig::problem))
            .or_else(|| self.camera_problem())
            .or_else(|| self.tracking_problem())
            .or_else(|| self.service_problem())
            .or_else(|| self.person_problem());
        match problem {
            Some((field, message)) => Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                field,
                message,
            }),
            None => Ok(()),
        }
    }

    fn detection_problem(&self) -> Option<Problem> {
        if let Some(t) = self.detection.score_threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Some((
                "detection.score_threshold".into(),
                format!("{t} is outside 0..1"),
            ));
        }
        if let ThresholdSetting::Fixed(t) = self.gallery.threshold
            && !(-1.0..=1.0).contains(&t)
        {
            return Some(("gallery.threshold".into(), format!("{t} is outside -1..1")));
        }
        if !(0.0..=1.0).contains(&self.gallery.margin) {
            return Some((
                "gallery.margin".into(),
                format!("{} is outside 0..1", self.gallery.margin),
            ));
        }
        None
    }

    fn camera_problem(&self) -> Option<Problem> {
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.camera.iter().enumerate() {
            let field = |f: &str| format!("camera[{i}].{f}");
            if !is_valid_person_id(c.name()) {
                return Some((
                    field("name"),
                    format!("{:?}: use lowercase letters, digits, '_' or '-'", c.name()),
                ));
            }
            if [NOT_HOME, AWAY].contains(&c.name()) {
                return Some((
                    field("name"),
                    format!(
                        "{:?} is reserved: it is what a person's state says when they are not in view of any camera",
                        c.name()
                    ),
                ));
            }
            if !names.insert(c.name()) {
                return Some((field("name"), format!("{:?} is defined twice", c.name())));
            }
            if let Some((key, message)) = c.problem() {
                return Some((field(key), message));
            }
        }
        None
    }

    fn tracking_problem(&self) -> Option<Problem> {
        let t = &self.tracking;
        if t.votes == 0 || t.unknown_after == 0 || t.embed_every == 0 || t.recheck_every == 0 {
            return Some((
                "tracking".into(),
                "votes, unknown_after, embed_every and recheck_every must be at least 1".into(),
            ));
        }
        [
            (
                "tracking.lost_after_s",
                t.lost_after_s,
                0.05,
                3600.0,
                "seconds",
            ),
            (
                "tracking.still_recheck_s",
                t.still_recheck_s,
                0.05,
                3600.0,
                "seconds",
            ),
            (
                "tracking.still_threshold",
                t.still_threshold,
                0.0,
                255.0,
                "grey levels (0 analyses every frame)",
            ),
            (
                "tracking.min_face_px",
                t.min_face_px,
                0.0,
                10_000.0,
                "pixels",
            ),
            ("tracking.max_turn", t.max_turn, 0.0, 10.0, "eye distances"),
            (
                "tracking.min_sharpness",
                t.min_sharpness,
                0.0,
                1e6,
                "(Laplacian variance)",
            ),
        ]
        .into_iter()
        .find_map(|(field, value, low, high, unit)| out_of_range(field, value, low, high, unit))
    }

    fn service_problem(&self) -> Option<Problem> {
        out_of_range(
            "service.stall_timeout_s",
            self.service.stall_timeout_s,
            0.5,
            86_400.0,
            "seconds",
        )
    }

    fn person_problem(&self) -> Option<Problem> {
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.person.iter().enumerate() {
            let field = |f: &str| format!("person[{i}].{f}");
            if !is_valid_person_id(&p.id) {
                return Some((
                    field("id"),
                    format!(
                        "{:?}: use lowercase letters, digits, '_' or '-' (it becomes an MQTT topic segment)",
                        p.id
                    ),
                ));
            }
            if !seen.insert(&p.id) {
                return Some((field("id"), format!("{:?} is defined twice", p.id)));
            }
            if p.images.is_empty() {
                return Some((field("images"), "list at least one image or pattern".into()));
            }
        }
        None
    }
}

/// "line L, column C: what" without the toml crate's quotation of the offending text: that text may
/// be a secret (a password in a URL).
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim_end();
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - line_start + 1;
            // The key the error is about: the table (last header above) and the key on the line.
            let table = before
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| l.starts_with('['))
                .map(|h| h.trim_matches(|c| c == '[' || c == ']').trim());
            let key = before[line_start..].split_once('=').map(|(k, _)| k.trim());
            let name = match (table, key) {
                (Some(t), Some(k)) => format!(" ({t}.{k})"),
                (None, Some(k)) => format!(" ({k})"),
                _ => String::new(),
            };
            format!("line {line}, column {column}{name}: {what}")
        }
        None => what.to_string(),
    }
}

/// The configuration names programs to run (exec cameras) and where secrets are: a file every user
/// can change is worth a warning.
fn warn_if_others_can_write(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o002 != 0
    {
        log::warn!(
            "{}: every user can write this configuration (it can name programs to run); chmod o-w it",
            path.display()
        );
    }
}

/// A value that fails validation: (the key, as `section.key` or `camera[i].key`, and what is wrong).
type Problem = (String, String);

/// `value` unless it is a finite number from `low` to `high` (NaN and infinities are refused here, so
/// that no later conversion, e.g. to a Duration, can panic on them).
fn out_of_range(field: &str, value: f32, low: f32, high: f32, unit: &str) -> Option<Problem> {
    (!(value.is_finite() && (low..=high).contains(&value))).then(|| {
        (
            field.to_string(),
            format!("{value} is not a number from {low} to {high} {unit}"),
        )
    })
}

impl MqttConfig {
    fn problem(&self) -> Option<Problem> {
        if let Some(n) = &self.node_id
            && !is_valid_person_id(n)
        {
            return Some((
                "mqtt.node_id".into(),
                format!("{n:?}: use lowercase letters, digits, '_' or '-'"),
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Some((
                "mqtt.password_file".into(),
                "a password needs a username (mqtt.username)".into(),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Some((
                "mqtt.client_cert".into(),
                "client_cert and client_key go together".into(),
            ));
        }
        if self.queue_size == 0
            || self.keep_alive_s == 0
            || self.reconnect_max_s == 0
            || self.absence_s == 0
        {
            return Some((
                "mqtt".into(),
                "queue_size, keep_alive_s, reconnect_max_s and absence_s must be at least 1".into(),
            ));
        }
        // Seconds beyond a week are typing mistakes, and far larger ones overflow the timers; MQTT
        // carries the keep-alive in 16 bits.
        const WEEK: u64 = 7 * 86_400;
        for (field, value, max) in [
            ("mqtt.keep_alive_s", self.keep_alive_s, u64::from(u16::MAX)),
            ("mqtt.reconnect_max_s", self.reconnect_max_s, WEEK),
            ("mqtt.absence_s", self.absence_s, WEEK),
            ("mqtt.stats_interval_s", self.stats_interval_s, WEEK),
        ] {
            if value > max {
                return Some((field.into(), format!("{value} is more than {max} seconds")));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/face-edge/face-edge.toml"))
    }

    #[test]
    fn the_example_config_parses() {
        let c = parse(include_str!("../../config/face-edge.toml")).unwrap();
        assert_eq!(c.models.embedder, DEFAULT_EMBEDDER);
        assert_eq!(c.gallery.threshold, ThresholdSetting::Auto);
    }

    #[test]
    fn models_variant_takes_its_two_values_and_names_itself_otherwise() {
        assert_eq!(
            parse("").unwrap().models.variant,
            VariantChoice::CheckedInt8Qdq
        );
        let none = parse("[models]\nvariant = \"none\"\n").unwrap();
        assert_eq!(none.models.variant, VariantChoice::None);
        for bad in ["\"int4\"", "1", "true", "\"\""] {
            let err = parse(&format!("[models]\nvariant = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("face-edge.toml") && err.contains("variant"),
                "{bad}: {err}"
            );
        }
    }

    /// The commented examples of the example config (`# [[camera]]  # example` blocks) are valid too.
    #[test]
    fn the_example_config_commented_examples_parse() {
        let text = include_str!("../../config/face-edge.toml");
        let mut blocks: Vec<String> = vec![];
        let mut current: Option<String> = None;
        for line in text.lines() {
            let uncommented = line.strip_prefix("# ").unwrap_or("");
            if uncommented.starts_with('[') && uncommented.contains("# example") {
                blocks.extend(current.take());
                current = Some(format!(
                    "{}\n",
                    uncommented.split('#').next().unwrap().trim()
                ));
            } else if let Some(block) = current.as_mut() {
                let code = uncommented.split(" # ").next().unwrap_or("").trim();
                if line.trim().is_empty() {
                    blocks.extend(current.take());
                } else if (code.contains(" = ") && !code.starts_with("The "))
                    || (code.starts_with('[') && code.ends_with(']'))
                {
                    // A key, or a sub-table of the example (e.g. [mqtt.requests] inside [mqtt]).
                    block.push_str(code);
                    block.push('\n');
                }
            }
        }
        blocks.extend(current);
        assert!(blocks.len() >= 5, "{blocks:?}");
        for block in &blocks {
            let config = parse(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
            assert!(
                !config.camera.is_empty() || config.mqtt.is_some() || !config.person.is_empty(),
                "{block}"
            );
        }
    }

    #[test]
    fn reserved_camera_names_and_oversized_raw_frames_are_refused() {
        for (camera, field, words) in [
            (
                "name = \"away\"\nkind = \"files\"\npath = \"x\"",
                "camera[0].name",
                "reserved",
            ),
            (
                "name = \"not_home\"\nkind = \"files\"\npath = \"x\"",
                "camera[0].name",
                "reserved",
            ),
            (
                "name = \"cam\"\nkind = \"exec\"\ncommand = [\"x\"]\nformat = \"rgb24\"\nwidth = 16000\nheight = 16000",
                "camera[0].width",
                "16000x16000 is more than the 12.6 MP",
            ),
        ] {
            let e = parse(&format!("[[camera]]\n{camera}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains(words), "{e}");
        }
    }

    #[test]
    fn numbers_that_would_stop_the_service_are_refused_at_load_naming_key_and_unit() {
        for (text, field, unit) in [
            (
                "[service]\nstall_timeout_s = -1.0",
                "service.stall_timeout_s",
                "seconds",
            ),
            (
                "[service]\nstall_timeout_s = nan",
                "service.stall_timeout_s",
                "seconds",
            ),
            (
                "[tracking]\nstill_recheck_s = nan",
                "tracking.still_recheck_s",
                "seconds",
            ),
            (
                "[tracking]\nlost_after_s = nan",
                "tracking.lost_after_s",
                "seconds",
            ),
            (
                "[tracking]\nlost_after_s = inf",
                "tracking.lost_after_s",
                "seconds",
            ),
            (
                "[tracking]\nmin_sharpness = -3",
                "tracking.min_sharpness",
                "Laplacian",
            ),
            (
                "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"x\"\nfps = nan",
                "camera[0].fps",
                "frames per second",
            ),
            (
                "[[camera]]\nname = \"hall\"\nkind = \"exec\"\ncommand = [\"x\"]\ndetect_fps = nan",
                "camera[0].detect_fps",
                "frames per second",
            ),
            (
                "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"x\"\ndetect_fps = 1e-30",
                "camera[0].detect_fps",
                "frames per second",
            ),
            (
                "[mqtt]\nurl = \"mqtt://h\"\nkeep_alive_s = 70000",
                "mqtt.keep_alive_s",
                "seconds",
            ),
            (
                "[mqtt]\nurl = \"mqtt://h\"\nabsence_s = 18446744073709551615",
                "mqtt.absence_s",
                "seconds",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(unit), "{text}: {e}");
        }
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.detection.max_side, DEFAULT_MAX_SIDE);
        assert_eq!(c.gallery.enrol_policy, EnrolPolicy::RejectAmbiguous);
    }

    #[test]
    fn log_level_is_a_level_or_an_error_naming_the_key() {
        let c = parse("[service]\nlog_level = \"debug\"\n").unwrap();
        assert_eq!(c.service.log_level, Some(log::LevelFilter::Debug));
        let err = parse("[service]\nlog_level = \"verbose\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("log_level") && err.contains("not a log level"),
            "{err}"
        );
    }

    #[test]
    fn a_key_of_another_camera_kind_is_an_error() {
        let err = parse("[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"x\"\ndevice = \"/dev/video0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("device"), "{err}");
        let err = parse("[[camera]]\nname = \"hall\"\nkind = \"v4l2\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("device"), "{err}");
        let err = parse("[[camera]]\nname = \"hall\"\nkind = \"v4l2\"\ndevice = \"/dev/video0\"\nformat = \"rgb24\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rgb24"), "{err}");
        let err = parse(
            "[[camera]]\nname = \"hall\"\nkind = \"files\"\npath = \"x\"\ndetect_fps = nan\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("camera[0].detect_fps"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[gallery]\ndirr = \"x\"\n").unwrap_err().to_string();
        assert!(
            err.contains("dirr") && err.contains("face-edge.toml"),
            "{err}"
        );
        let err = parse("[[person]]\nid = \"a\"\nimages = [\"x\"]\nnickname = \"b\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nickname"), "{err}");
    }

    #[test]
    fn person_ids_must_be_topic_safe_and_unique() {
        let err = parse("[[person]]\nid = \"Alice/1\"\nimages = [\"a.jpg\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("person[0].id"), "{err}");
        let twice = "[[person]]\nid = \"a\"\nimages = [\"a.jpg\"]\n[[person]]\nid = \"a\"\nimages = [\"b.jpg\"]\n";
        assert!(
            parse(twice)
                .unwrap_err()
                .to_string()
                .contains("defined twice")
        );
    }

    #[test]
    fn threshold_is_auto_or_a_number() {
        assert_eq!(
            parse("[gallery]\nthreshold = 0.45\n")
                .unwrap()
                .gallery
                .threshold,
            ThresholdSetting::Fixed(0.45)
        );
        assert_eq!(
            parse("[gallery]\nthreshold = \"auto\"\n")
                .unwrap()
                .gallery
                .threshold,
            ThresholdSetting::Auto
        );
        assert!(parse("[gallery]\nthreshold = \"high\"\n").is_err());
        assert!(parse("[gallery]\nthreshold = 1.5\n").is_err());
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let c = parse("state_dir = \"state\"\n[gallery]\ndir = \"people\"\n[[person]]\nid = \"a\"\nimages = [\"a/*.jpg\"]\n").unwrap();
        assert_eq!(
            c.gallery.dir.unwrap(),
            PathBuf::from("/etc/face-edge/people")
        );
        assert_eq!(c.state_dir, PathBuf::from("/etc/face-edge/state"));
        assert_eq!(c.person[0].images[0], "/etc/face-edge/a/*.jpg");
    }
}
