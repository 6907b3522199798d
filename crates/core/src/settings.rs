//! The settings the core's decisions follow, as the daemon's config file spells them (`[tracking]`).
//! The core owns them; the daemon's `Config` embeds them, so deciding never depends on the daemon.

use serde::Deserialize;

/// How faces are followed across frames and when they are decided.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackingSettings {
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

impl Default for TrackingSettings {
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
