//! `face-edge models list|verify|fetch|quantize`: what the catalog knows, what is on disk, downloading,
//! and making an int8 variant here.

use super::EXIT_PARTIAL;
use clap::{Args, Subcommand};
use face_edge::models::{Catalog, MODELS_DIR_ENV, WeightsStatus, role_name};
use face_edge::quantize::{HOLD_OUT_EVERY, QuantizeOptions, quantize};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ModelsArgs {
    /// Directory holding the model weights (and extra manifests).
    #[arg(long, env = MODELS_DIR_ENV, global = true)]
    models_dir: Option<PathBuf>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Every known model, its role, licence and whether verified weights are present.
    List,
    /// Check weights against their manifest checksums (all present models, or the ids given).
    Verify { ids: Vec<String> },
    /// Download weights from the manifest URL and verify them. Shows the licence terms first.
    Fetch {
        id: String,
        /// Confirm the terms of a model that is not redistributable.
        #[arg(long)]
        accept_license: bool,
    },
    /// Make the int8 variant of an embedder (QDQ: int8 weights, uint8 activations) from aligned
    /// crops, check it against the f32 model and write it with its manifest beside the weights.
    Quantize {
        id: String,
        /// Folder of aligned crops of the model's input size to calibrate on (`face-edge embed
        /// --save-crops DIR` makes them from photos, e.g. of the people you enrol).
        #[arg(long)]
        calibration: PathBuf,
        /// Folder of crops to check the variant on. Default: every fifth calibration crop, held out
        /// of calibration.
        #[arg(long)]
        check: Option<PathBuf>,
        /// At most this many calibration crops.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Refuse a variant whose embeddings' mean cosine to the f32 model's is lower.
        #[arg(long, default_value_t = 0.98)]
        min_cosine: f32,
        /// Where to write the weights and manifest. Default: the models directory.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

pub fn run(args: ModelsArgs) -> anyhow::Result<ExitCode> {
    let catalog = Catalog::load(&Catalog::resolve_dir(args.models_dir.as_deref(), None))?;
    match args.action {
        Action::List => {
            println!("models directory: {}", catalog.models_dir().display());
            println!(
                "{:<26} {:<9} {:<10} {:<32} licence",
                "id", "role", "weights", "file"
            );
            for m in catalog.manifests() {
                let state = match catalog.status(m) {
                    WeightsStatus::Verified { .. } => "ok",
                    WeightsStatus::Missing => "missing",
                    WeightsStatus::Bad(_) => "BAD",
                };
                let licence = if m.license.redistributable {
                    m.license.name.clone()
                } else {
                    format!("{} (not redistributable)", m.license.name)
                };
                println!(
                    "{:<26} {:<9} {:<10} {:<32} {licence}",
                    m.id,
                    role_name(m.role),
                    state,
                    m.weights
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Verify { ids } => {
            let explicit = !ids.is_empty();
            let manifests = if explicit {
                ids.iter()
                    .map(|id| catalog.get(id))
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                catalog.manifests().collect()
            };
            let mut failed = 0;
            for m in manifests {
                match catalog.status(m) {
                    WeightsStatus::Verified { sha256, size } => {
                        println!("{}: ok ({size} bytes, sha256 {sha256})", m.id)
                    }
                    WeightsStatus::Missing if !explicit => println!("{}: not present", m.id),
                    WeightsStatus::Missing => {
                        failed += 1;
                        println!("{}: missing ({})", m.id, catalog.weights_path(m).display());
                    }
                    WeightsStatus::Bad(e) => {
                        failed += 1;
                        println!("{}: FAILED: {e}", m.id);
                    }
                }
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_PARTIAL)
            })
        }
        Action::Fetch { id, accept_license } => {
            let m = catalog.get(&id)?;
            if !m.license.redistributable {
                eprintln!(
                    "{} is licensed under: {}\n{}\n",
                    m.id,
                    m.license.name,
                    m.license.terms.trim()
                );
            }
            let mut last_pct = u64::MAX;
            let path = catalog.fetch(m, accept_license, |done, total| {
                if let Some(total) = total.filter(|t| *t > 0) {
                    let pct = done * 100 / total;
                    if pct / 10 != last_pct / 10 {
                        last_pct = pct;
                        eprintln!("face-edge models fetch {}: {pct}% of {total} bytes", m.id);
                    }
                }
            })?;
            println!("{}: installed and verified at {}", m.id, path.display());
            Ok(ExitCode::SUCCESS)
        }
        Action::Quantize {
            id,
            calibration,
            check,
            limit,
            min_cosine,
            out_dir,
        } => {
            if !(0.0..=1.0).contains(&min_cosine) {
                anyhow::bail!("--min-cosine {min_cosine}: a cosine bound between 0 and 1");
            }
            let options = QuantizeOptions {
                calibration,
                check,
                limit: limit as usize,
                min_cosine,
                out_dir,
            };
            let r = quantize(&catalog, &id, &options, &mut |message| {
                eprintln!("face-edge models quantize {id}: {message}")
            })?;
            let held_out = if options.check.is_some() {
                "--check crops".to_string()
            } else {
                format!("every {HOLD_OUT_EVERY}th crop, held out")
            };
            println!(
                "{}: {} activations and {} weights quantized ({} Relu/Clip folded) on {} crops ({} files of other sizes skipped)",
                r.id,
                r.activations,
                r.weights,
                r.folded_activations,
                r.calibration_crops,
                r.skipped_files
            );
            println!(
                "{}: cosine to {id} on {} crops ({held_out}): mean {:.5}, min {:.5}",
                r.id, r.check_crops, r.mean_cosine, r.min_cosine
            );
            println!(
                "{}: {} bytes (base {}), sha256 {}",
                r.weights_path.display(),
                r.bytes,
                r.base_bytes,
                r.sha256
            );
            println!("{}: manifest for id {}", r.manifest_path.display(), r.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}
