//! The configuration file (`/etc/face-edge/face-edge.toml` by default): strict TOML, unknown keys are
//! errors naming the key, and every value is validated at load so a running service never meets a bad
//! one. Loading again is how the service reloads it.

use crate::detect::DEFAULT_MAX_SIDE;
use crate::inference::Precision;
use crate::models::{DEFAULT_DETECTOR, DEFAULT_EMBEDDER};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/face-edge/face-edge.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/face-edge";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
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
    pub detection: DetectionConfig,
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
    pub tracking: TrackingConfig,
    #[serde(default)]
    pub service: ServiceConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraKind {
    V4l2,
    Exec,
    Files,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// v4l2: MJPEG if the device offers it at the size, else YUYV.
    #[default]
    Auto,
    Mjpeg,
    Yuyv,
    /// exec: raw 8-bit RGB frames of `width` x `height`.
    Rgb24,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Camera name: lowercase letters, digits, '_' and '-' (an MQTT topic segment).
    pub name: String,
    pub kind: CameraKind,
    /// v4l2: a device path (/dev/video0) or a name under /dev/v4l/by-id.
    #[serde(default)]
    pub device: Option<String>,
    /// exec: the program and its arguments, e.g. ["rpicam-vid", "--codec", "mjpeg", "-t", "0", "-o", "-"].
    #[serde(default)]
    pub command: Vec<String>,
    /// files: a directory of images, or a glob.
    #[serde(default)]
    pub path: Option<String>,
    /// files: start again from the first image at the end.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// files: frames each image is shown for (a slideshow of still photos needs several, so faces can
    /// be tracked and voted on; recordings use 1).
    #[serde(default = "default_repeat")]
    pub repeat: u32,
    #[serde(default)]
    pub format: PixelFormat,
    #[serde(default = "default_width")]
    pub width: u32,
    #[serde(default = "default_height")]
    pub height: u32,
    /// Capture rate asked of the device (v4l2) or the pace of a files source.
    #[serde(default = "default_fps")]
    pub fps: f32,
    /// How often frames of this camera are run through detection.
    #[serde(default = "default_detect_fps")]
    pub detect_fps: f32,
}

fn default_repeat() -> u32 {
    1
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> f32 {
    15.0
}
fn default_detect_fps() -> f32 {
    5.0
}

/// How faces are followed across frames and when they are decided.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingConfig {
    /// Faces smaller than this (box side, pixels) are followed but not embedded.
    #[serde(default = "default_min_face")]
    pub min_face_px: f32,
    /// A face turned further than this (nose offset from the eye midpoint / eye distance) is not embedded.
    #[serde(default = "default_max_turn")]
    pub max_turn: f32,
    /// An aligned crop whose Laplacian variance is below this is too blurred to embed.
    #[serde(default = "default_min_sharpness")]
    pub min_sharpness: f32,
    /// Embeddings of a person among a track's recent ones needed to report `recognized`.
    #[serde(default = "default_votes")]
    pub votes: usize,
    /// Embeddings without a recognition before a track is reported `unknown`.
    #[serde(default = "default_unknown_after")]
    pub unknown_after: usize,
    /// While a track is undecided it is embedded every this many detections.
    #[serde(default = "default_embed_every")]
    pub embed_every: u32,
    /// Once decided, a track is re-embedded every this many detections (or when the face grows a third
    /// larger): enough to notice that somebody else stepped into the box.
    #[serde(default = "default_recheck_every")]
    pub recheck_every: u32,
    /// A frame in which no cell of a 32x24 grid changed its mean grey level by more than this since the
    /// last analysed frame is not analysed, while every face in view is decided: a still scene costs only
    /// its decoding. 0 analyses every frame.
    #[serde(default = "default_still_threshold")]
    pub still_threshold: f32,
    /// A still scene is analysed again at least this often (seconds).
    #[serde(default = "default_still_recheck")]
    pub still_recheck_s: f32,
    /// A track not seen for this long has `left`.
    #[serde(default = "default_track_timeout")]
    pub lost_after_s: f32,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        toml::from_str("").expect("defaults")
    }
}

fn default_min_face() -> f32 {
    40.0
}
fn default_max_turn() -> f32 {
    0.45
}
fn default_min_sharpness() -> f32 {
    15.0
}
fn default_votes() -> usize {
    2
}
fn default_unknown_after() -> usize {
    4
}
fn default_embed_every() -> u32 {
    2
}
fn default_recheck_every() -> u32 {
    8
}
fn default_still_threshold() -> f32 {
    6.0
}
fn default_still_recheck() -> f32 {
    2.0
}
fn default_track_timeout() -> f32 {
    2.0
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// error, warn, info, debug or trace; RUST_LOG and --log-level take precedence.
    #[serde(default)]
    pub log_level: Option<String>,
    /// A camera that is streaming but delivers no frame for this long counts as stalled: the watchdog
    /// stops being fed so systemd restarts the service.
    #[serde(default = "default_stall")]
    pub stall_timeout_s: f32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            log_level: None,
            stall_timeout_s: default_stall(),
        }
    }
}

fn default_stall() -> f32 {
    10.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub url: String,
    /// Topic segment naming this device: `face-edge/<node_id>/...` [default: the host name as a slug].
    #[serde(default)]
    pub node_id: Option<String>,
    /// [default: face-edge-<node_id>]
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
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig {
            dir: None,
            detector: default_detector(),
            embedder: default_embedder(),
            precision: Precision::F32,
        }
    }
}

fn default_detector() -> String {
    DEFAULT_DETECTOR.to_string()
}
fn default_embedder() -> String {
    DEFAULT_EMBEDDER.to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectionConfig {
    /// Overrides the detector manifest's score threshold.
    #[serde(default)]
    pub score_threshold: Option<f32>,
    #[serde(default = "default_max_side")]
    pub max_side: u32,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            score_threshold: None,
            max_side: DEFAULT_MAX_SIDE,
        }
    }
}

fn default_max_side() -> u32 {
    DEFAULT_MAX_SIDE
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

/// `threshold = "auto"` (calibrated from the gallery, floored at the model's default) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(untagged)]
pub enum ThresholdSetting {
    Fixed(f32),
    #[default]
    #[serde(deserialize_with = "auto_keyword")]
    Auto,
}

fn auto_keyword<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    let s = String::deserialize(d)?;
    if s == "auto" {
        Ok(())
    } else {
        Err(serde::de::Error::custom(format!(
            "expected \"auto\" or a number, got {s:?}"
        )))
    }
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

/// Person ids become MQTT topic segments and file keys: lowercase letters, digits, '_' and '-'.
pub fn is_valid_person_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates; relative paths are resolved against the config file's directory.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
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
            ]
            .into_iter()
            .flatten()
            {
                resolve(p);
            }
        }
        resolve(&mut config.state_dir);
        for c in &mut config.camera {
            if c.kind == CameraKind::Files
                && let Some(p) = c.path.as_mut()
                && Path::new(p).is_relative()
            {
                *p = base.join(&*p).display().to_string();
            }
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
        let invalid = |field: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        };
        if let Some(t) = self.detection.score_threshold
            && !(0.0..=1.0).contains(&t)
        {
            return Err(invalid(
                "detection.score_threshold".into(),
                format!("{t} is outside 0..1"),
            ));
        }
        if let ThresholdSetting::Fixed(t) = self.gallery.threshold
            && !(-1.0..=1.0).contains(&t)
        {
            return Err(invalid(
                "gallery.threshold".into(),
                format!("{t} is outside -1..1"),
            ));
        }
        if !(0.0..=1.0).contains(&self.gallery.margin) {
            return Err(invalid(
                "gallery.margin".into(),
                format!("{} is outside 0..1", self.gallery.margin),
            ));
        }
        if let Some(m) = &self.mqtt {
            crate::mqtt::BrokerAddress::parse(&m.url).map_err(|e| invalid("mqtt.url".into(), e))?;
            if let Some(n) = &m.node_id
                && !is_valid_person_id(n)
            {
                return Err(invalid(
                    "mqtt.node_id".into(),
                    format!("{n:?}: use lowercase letters, digits, '_' or '-'"),
                ));
            }
            if m.client_cert.is_some() != m.client_key.is_some() {
                return Err(invalid(
                    "mqtt.client_cert".into(),
                    "client_cert and client_key go together".into(),
                ));
            }
            if m.queue_size == 0
                || m.keep_alive_s == 0
                || m.reconnect_max_s == 0
                || m.absence_s == 0
            {
                return Err(invalid(
                    "mqtt".into(),
                    "queue_size, keep_alive_s, reconnect_max_s and absence_s must be at least 1"
                        .into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, c) in self.camera.iter().enumerate() {
            let field = |f: &str| format!("camera[{i}].{f}");
            if !is_valid_person_id(&c.name) {
                return Err(invalid(
                    field("name"),
                    format!("{:?}: use lowercase letters, digits, '_' or '-'", c.name),
                ));
            }
            if !names.insert(&c.name) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} is defined twice", c.name),
                ));
            }
            match c.kind {
                CameraKind::V4l2 if c.device.is_none() => {
                    return Err(invalid(
                        field("device"),
                        "a v4l2 camera needs a device".into(),
                    ));
                }
                CameraKind::Exec if c.command.is_empty() => {
                    return Err(invalid(
                        field("command"),
                        "an exec camera needs a command".into(),
                    ));
                }
                CameraKind::Files if c.path.is_none() => {
                    return Err(invalid(field("path"), "a files camera needs a path".into()));
                }
                _ => {}
            }
            if c.fps <= 0.0 || c.detect_fps <= 0.0 || c.width == 0 || c.height == 0 {
                return Err(invalid(
                    field("fps"),
                    "fps, detect_fps, width and height must be positive".into(),
                ));
            }
        }
        let t = &self.tracking;
        if t.votes == 0
            || t.unknown_after == 0
            || t.embed_every == 0
            || t.recheck_every == 0
            || t.lost_after_s <= 0.0
            || t.still_recheck_s <= 0.0
        {
            return Err(invalid(
                "tracking".into(),
                "votes, unknown_after, embed_every, recheck_every, lost_after_s and still_recheck_s must be positive".into(),
            ));
        }
        if !(0.0..=255.0).contains(&t.still_threshold) {
            return Err(invalid(
                "tracking.still_threshold".into(),
                "grey levels, 0..255 (0 analyses every frame)".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.person.iter().enumerate() {
            if !is_valid_person_id(&p.id) {
                return Err(invalid(
                    format!("person[{i}].id"),
                    format!(
                        "{:?}: use lowercase letters, digits, '_' or '-' (it becomes an MQTT topic segment)",
                        p.id
                    ),
                ));
            }
            if !seen.insert(&p.id) {
                return Err(invalid(
                    format!("person[{i}].id"),
                    format!("{:?} is defined twice", p.id),
                ));
            }
            if p.images.is_empty() {
                return Err(invalid(
                    format!("person[{i}].images"),
                    "list at least one image or pattern".into(),
                ));
            }
        }
        Ok(())
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
        let c = parse(include_str!("../config/face-edge.toml")).unwrap();
        assert_eq!(c.models.embedder, DEFAULT_EMBEDDER);
        assert_eq!(c.gallery.threshold, ThresholdSetting::Auto);
    }

    /// The commented examples of the example config (`# [[camera]]  # example` blocks) are valid too.
    #[test]
    fn the_example_config_commented_examples_parse() {
        let text = include_str!("../config/face-edge.toml");
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
                } else if code.contains(" = ") && !code.starts_with("The ") {
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
    fn defaults_apply_to_an_empty_file() {
        let c = parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.detection.max_side, DEFAULT_MAX_SIDE);
        assert_eq!(c.gallery.enrol_policy, EnrolPolicy::RejectAmbiguous);
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
