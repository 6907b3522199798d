//! Subcommands and their shared options.

mod bench;
mod compare;
mod detect;
mod embed;
mod eval;
mod gallery;
mod identify;
mod models;
mod npy;
mod output;
mod profile;
mod run;

use clap::{Args, Parser, Subcommand};
use face_edge::config::{Config, VariantChoice};
use face_edge::detect::DetectSettings;
use face_edge::inference::Precision;
use face_edge::models::{Catalog, MODELS_DIR_ENV, ModelChoice};
use face_edge::pipeline::FacePipeline;
use std::path::PathBuf;
use std::process::ExitCode;

/// Some inputs failed; the others were processed.
pub const EXIT_PARTIAL: u8 = 1;
/// Configuration or model problem (sysexits EX_CONFIG): retrying will not help.
pub const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "face-edge",
    version,
    about = "Face recognition for edge boards: detect, embed, compare, run"
)]
pub struct Cli {
    /// Log level (off, error, warn, info, debug, trace); overrides RUST_LOG and the config's
    /// service.log_level.
    #[arg(long, global = true, env = "FACE_EDGE_LOG")]
    pub log_level: Option<log::LevelFilter>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service: cameras -> recognition -> MQTT (or stdout). What systemd starts.
    Run(run::RunArgs),
    /// Detect faces in images: box, score and 5 landmarks per face.
    Detect(detect::DetectArgs),
    /// Detect, align and embed faces; one JSON object per image with --jsonl.
    Embed(embed::EmbedArgs),
    /// Cosine similarity of the main faces of two images, and the same/different decision.
    Compare(compare::CompareArgs),
    /// List, verify or fetch model weights.
    Models(models::ModelsArgs),
    /// Enrol the configured people (sync), show them (list), or check config, photos and models (check).
    Gallery(gallery::GalleryArgs),
    /// Name every face in images against the gallery ("unknown" for anyone else).
    Identify(identify::IdentifyArgs),
    /// Open-set evaluation on a folder of people: calibrated versus fixed threshold.
    Eval(eval::EvalArgs),
    /// Time every stage on frames rendered from photos; end-to-end frames per second; peak memory.
    Bench(bench::BenchArgs),
}

/// Where models are and how to detect; shared by every command that runs the pipeline. Unset values
/// come from the config file when the command has one, else from the defaults.
#[derive(Args, Clone)]
pub struct ModelOptions {
    /// Directory holding the model weights (and extra manifests) [default: config's models.dir, else
    /// /var/lib/face-edge/models].
    #[arg(long, env = MODELS_DIR_ENV)]
    pub models_dir: Option<PathBuf>,
    /// Detector model id [default: yunet-2023mar].
    #[arg(long)]
    pub detector: Option<String>,
    /// Minimum detection score [default: the detector manifest's].
    #[arg(long)]
    pub score_threshold: Option<f32>,
    /// Scale frames down so their longer side is at most this for detection; 0 = native resolution
    /// [default: 640].
    #[arg(long)]
    pub max_side: Option<u32>,
}

impl ModelOptions {
    pub fn catalog(&self, config: &Config) -> anyhow::Result<Catalog> {
        Ok(Catalog::load(&Catalog::resolve_dir(
            self.models_dir.as_deref(),
            config.models.dir.as_deref(),
        ))?)
    }

    /// `--detector` exactly; else the config's detector, or its checked int8 variant as the service
    /// would run it (`Catalog::detector_for`, logged when it replaces the detector).
    pub fn detector_id(&self, config: &Config, catalog: &Catalog) -> String {
        let choice = self.detector_choice(config, catalog);
        if let Some(note) = choice.note() {
            log::info!("{note}");
        }
        choice.id
    }

    /// What `detector_id` chooses, and why.
    pub fn detector_choice(&self, config: &Config, catalog: &Catalog) -> ModelChoice {
        match &self.detector {
            Some(id) => ModelChoice::named(id),
            None => catalog.detector_for(
                &config.models.detector,
                config.models.variant == VariantChoice::CheckedInt8Qdq,
            ),
        }
    }

    pub fn detect_settings(&self, config: &Config) -> anyhow::Result<DetectSettings> {
        let score_threshold = self.score_threshold.or(config.detection.score_threshold);
        if let Some(t) = score_threshold
            && !(0.0..=1.0).contains(&t)
        {
            anyhow::bail!("--score-threshold {t} is outside 0..1");
        }
        Ok(DetectSettings {
            score_threshold,
            max_side: self.max_side.unwrap_or(config.detection.max_side),
        })
    }

    /// Loads the detector and `embedder` with these options over `config`.
    pub fn pipeline(
        &self,
        config: &Config,
        embedder: &EmbedderOption,
    ) -> anyhow::Result<(Catalog, FacePipeline)> {
        let catalog = self.catalog(config)?;
        let pipeline = face_edge::models::load_pipeline(
            &catalog,
            &self.detector_id(config, &catalog),
            &self.detect_settings(config)?,
            &embedder.choose(config, &catalog).id,
            embedder.precision(config),
        )?;
        Ok((catalog, pipeline))
    }
}

/// The embedder to use; defaults to the config's, else the product's model.
#[derive(Args, Clone)]
pub struct EmbedderOption {
    /// Embedder model id (see `face-edge models list`) [default: japanese-face-v1].
    #[arg(long)]
    pub model: Option<String>,
    /// The embedder's arithmetic: f32, or f16 on CPUs with half-precision arithmetic (e.g. Raspberry
    /// Pi 5) [default: the config's models.precision, else f32].
    #[arg(long)]
    pub precision: Option<Precision>,
}

impl EmbedderOption {
    /// `--model` exactly; else the config's embedder, or its checked int8 variant as the service
    /// would run it (`Catalog::embedder_for`, logged when it replaces the embedder).
    pub fn choose(&self, config: &Config, catalog: &Catalog) -> ModelChoice {
        if let Some(id) = &self.model {
            return ModelChoice::named(id);
        }
        let models = &config.models;
        let choice = catalog.embedder_for(
            &models.embedder,
            self.precision(config),
            models.variant == VariantChoice::CheckedInt8Qdq,
        );
        if let Some(note) = choice.note() {
            log::info!("{note}");
        }
        choice
    }

    pub fn precision(&self, config: &Config) -> Precision {
        self.precision.unwrap_or(config.models.precision)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The config's service.log_level applies only when neither --log-level nor RUST_LOG chose one.
    let log_level_fixed = cli.log_level.is_some() || std::env::var_os("RUST_LOG").is_some();
    match cli.command {
        Command::Run(a) => run::run(a, log_level_fixed),
        Command::Detect(a) => detect::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Models(a) => models::run(a),
        Command::Gallery(a) => gallery::run(a),
        Command::Identify(a) => identify::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Bench(a) => bench::run(a),
    }
}

/// Logging: to the journal when systemd connected stderr to it (JOURNAL_STREAM), else to stderr.
/// `--log-level` wins over RUST_LOG, which wins over the config's `service.log_level` (applied later by
/// the service through `log::set_max_level`); the default is "info" for `run` and "warn" otherwise.
pub fn init_logging(level: Option<log::LevelFilter>, service: bool) {
    let default = if service {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    if systemd_journal_logger::connected_to_journal()
        && let Ok(journal) = systemd_journal_logger::JournalLog::new()
        && journal.install().is_ok()
    {
        let from_env = rust_log.and_then(|v| v.parse().ok());
        log::set_max_level(level.or(from_env).unwrap_or(default));
        return;
    }
    let mut builder = env_logger::Builder::new();
    match (level, rust_log) {
        (Some(level), _) => {
            builder.filter_level(level);
        }
        (None, Some(filters)) => {
            builder.parse_filters(&filters);
        }
        // Nothing chosen yet: let every record through the logger and gate with the global maximum,
        // which the config's level may still raise or lower.
        (None, None) => {
            builder.filter_level(log::LevelFilter::Trace);
        }
    }
    builder.format_timestamp_millis().init();
    if level.is_none() && std::env::var_os("RUST_LOG").is_none() {
        log::set_max_level(default);
    }
}

impl Cli {
    pub fn is_service(&self) -> bool {
        matches!(self.command, Command::Run(_))
    }
}

/// Exit status of a batch: 0 when every input succeeded.
pub fn batch_exit(failed: usize) -> ExitCode {
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    }
}
