//! `face-edge models list|verify|fetch|quantize`: what the catalog knows, what is on disk, downloading,
//! and making an int8 variant here.

use super::EXIT_PARTIAL;
use clap::{Args, Subcommand};
use face_edge::manifest::{MIN_CHECKED_AGREEMENT, MIN_CHECKED_COSINE};
use face_edge::models::{Catalog, MODELS_DIR_ENV, WeightsStatus, role_name};
use face_edge::quantize::{Check, HOLD_OUT_EVERY, QuantizeOptions, quantize};
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
    /// Make the int8 variant of an embedder or a detector (QDQ: int8 weights, uint8 activations),
    /// check it against the f32 model and write it with its manifest beside the weights.
    Quantize {
        id: String,
        /// Folder to calibrate on: for an embedder, aligned crops of its input size (`face-edge
        /// embed --save-crops DIR` makes them from photos, e.g. of the people you enrol); for a
        /// detector, photos with faces, best taken by the cameras that will run it.
        #[arg(long)]
        calibration: PathBuf,
        /// Folder of crops (photos) to check the variant on. Default: every fifth calibration input,
        /// held out of calibration.
        #[arg(long)]
        check: Option<PathBuf>,
        /// At most this many calibration inputs.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Refuse an embedder variant whose embeddings' mean cosine to the f32 model's is lower.
        #[arg(long, default_value_t = MIN_CHECKED_COSINE)]
        min_cosine: f32,
        /// Refuse a detector variant that finds fewer of the same faces as the f32 model: 2 x faces
        /// both find / all faces either finds, on the check photos.
        #[arg(long, default_value_t = MIN_CHECKED_AGREEMENT)]
        min_agreement: f32,
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
            min_agreement,
            out_dir,
        } => {
            if !(0.0..=1.0).contains(&min_cosine) {
                anyhow::bail!("--min-cosine {min_cosine}: a cosine bound between 0 and 1");
            }
            if !(0.0..=1.0).contains(&min_agreement) {
                anyhow::bail!("--min-agreement {min_agreement}: a share between 0 and 1");
            }
            let options = QuantizeOptions {
                calibration,
                check,
                limit: limit as usize,
                min_cosine,
                min_agreement,
                out_dir,
            };
            let r = quantize(&catalog, &id, &options, &mut |message| {
                eprintln!("face-edge models quantize {id}: {message}")
            })?;
            let held_out = |what: &str| {
                if options.check.is_some() {
                    format!("--check {what}")
                } else {
                    format!("every {HOLD_OUT_EVERY}th {what}, held out")
                }
            };
            println!(
                "{}: {} activations and {} weights quantized ({} Relu/Clip folded) on {} inputs ({} files of other sizes skipped)",
                r.id,
                r.activations,
                r.weights,
                r.folded_activations,
                r.calibration_inputs,
                r.skipped_files
            );
            match &r.check {
                Check::Cosine { crops, mean, min } => println!(
                    "{}: cosine to {id} on {crops} crops ({}): mean {mean:.5}, min {min:.5}",
                    r.id,
                    held_out("crop")
                ),
                Check::Faces { photos, agreement } => println!(
                    "{}: faces found alike with {id} on {photos} photos ({}): {:.1} % ({} of its {} faces, {} in all); IoU mean {:.3}, min {:.3}; landmarks off by {:.3} of the box width on average, {:.3} at most",
                    r.id,
                    held_out("photo"),
                    100.0 * agreement.share().unwrap_or_default(),
                    agreement.alike,
                    agreement.reference_faces,
                    agreement.other_faces,
                    agreement.mean_iou(),
                    agreement.worst_iou,
                    agreement.mean_landmark(),
                    agreement.worst_landmark
                ),
            }
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
