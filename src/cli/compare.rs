//! `face-edge compare A B`: cosine of the two main faces, the manifest's decision and display value.

use super::{EmbedderOption, ModelOptions};
use anyhow::Context;
use clap::Args;
use face_edge::config::Config;
use face_edge::embed::cosine;
use face_edge::image_io::load_rgb;
use face_edge::pipeline::FaceSelection;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    models: ModelOptions,
    #[command(flatten)]
    embedder: EmbedderOption,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    a: PathBuf,
    b: PathBuf,
}

pub fn run(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let (_, mut pipeline) = args.models.pipeline(&Config::default(), &args.embedder)?;
    let mut main_embedding = |path: &Path| -> Result<Vec<f32>, String> {
        let img = load_rgb(path).map_err(|e| e.to_string())?;
        let mut faces = pipeline
            .embed_faces(&img, FaceSelection::Main)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(faces.remove(0).embedding)
    };
    let (a, b) = match (main_embedding(&args.a), main_embedding(&args.b)) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            for e in [a.err(), b.err()].into_iter().flatten() {
                eprintln!("face-edge: error: {e}");
            }
            return Ok(ExitCode::from(super::EXIT_PARTIAL));
        }
    };
    let c = cosine(&a, &b);
    let threshold = pipeline.embedder.spec().output.threshold;
    let same = c >= threshold;
    let display = pipeline.embedder.display(c);
    if args.json {
        let display = display
            .map(|(value, label, unit)| json!({"label": label, "value": value, "unit": unit}));
        let out = json!({
            "a": args.a.display().to_string(), "b": args.b.display().to_string(), "model": pipeline.embedder.id(),
            "cosine": c, "threshold": threshold, "same_person": same, "display": display,
        });
        println!(
            "{}",
            serde_json::to_string(&out).context("serialising result")?
        );
    } else {
        let verdict = if same {
            "same person"
        } else {
            "different people"
        };
        println!(
            "cosine similarity {c:.4}: {verdict} (threshold {threshold}, model {})",
            pipeline.embedder.id()
        );
        if let Some((value, label, unit)) = display {
            println!("{label}: {value:.1}{unit}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
