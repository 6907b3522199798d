//! `face-edge run`: the service (what systemd starts).

use super::EXIT_CONFIG;
use clap::Args;
use face_edge::config::DEFAULT_CONFIG_PATH;
use face_edge::models::MODELS_DIR_ENV;
use face_edge::service::{ConfigSource, Ending, Overrides, run as run_service};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct RunArgs {
    /// Configuration file [default: /etc/face-edge/face-edge.toml, unless --files is given without it].
    #[arg(long, env = "FACE_EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory holding the model weights [default: the config's models.dir, else
    /// /var/lib/face-edge/models].
    #[arg(long, env = MODELS_DIR_ENV)]
    models_dir: Option<PathBuf>,
    /// Embedder model id, overriding the config (run exactly: not a checked variant of it).
    #[arg(long)]
    model: Option<String>,
    /// Gallery directory (one sub-directory per person), overriding the config's.
    #[arg(long)]
    gallery: Option<PathBuf>,
    /// State directory (embedding store), overriding the config's [without --config: ~/.cache/face-edge].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Adds a camera named "files" replaying these images (a directory or a glob).
    #[arg(long)]
    files: Option<String>,
    /// Frames per second of the --files camera.
    #[arg(long, default_value_t = 4.0)]
    fps: f32,
    /// Seconds each --files image is shown (still photos need a moment to be tracked and voted on;
    /// 0 plays a recording frame by frame).
    #[arg(long, default_value_t = 2.0)]
    hold: f32,
}

pub fn run(args: RunArgs, log_level_fixed: bool) -> anyhow::Result<ExitCode> {
    let path = match (&args.config, &args.files) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(_)) => None,
        (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
    };
    let overrides = Overrides {
        models_dir: args.models_dir,
        embedder: args.model,
        gallery: args.gallery,
        state_dir: args.state_dir,
        files: args.files,
        files_fps: Some(args.fps),
        files_hold: Some(args.hold),
        log_level_fixed,
    };
    match run_service(ConfigSource { path, overrides }) {
        Ok(Ending::Stopped) | Ok(Ending::SourcesFinished) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            log::error!("{e}");
            eprintln!("face-edge: error: {e}");
            // EX_CONFIG: the unit's RestartPreventExitStatus keeps systemd from looping on it.
            Ok(ExitCode::from(EXIT_CONFIG))
        }
    }
}
