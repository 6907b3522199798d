//! `face-edge embed`: detect, align and embed faces; `--jsonl` prints the stable per-image records.

use super::output::{FaceRecord, ImageRecord, Progress, print_json_line};
use super::{EmbedderOption, ModelOptions, batch_exit};
use clap::Args;
use face_edge::config::Config;
use face_edge::image_io::{expand_inputs, load_rgb};
use face_edge::pipeline::{EmbeddedFace, FaceSelection, load_embedder_in};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    models: ModelOptions,
    #[command(flatten)]
    embedder: EmbedderOption,
    /// Keep only the main face: the one maximising area - 2*|box centre - image centre|^2.
    #[arg(long)]
    largest: bool,
    /// One JSON object per image on stdout (path, width, height, faces with embeddings, error).
    #[arg(long)]
    jsonl: bool,
    /// The inputs are already aligned crops of the model's input size (e.g. made by another tool):
    /// embed them as they are, without detection or alignment.
    #[arg(long, conflicts_with = "largest")]
    aligned: bool,
    /// Image files or directories (walked recursively for .jpg/.jpeg/.png).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    if args.aligned {
        return run_aligned(&args);
    }
    let (_, mut pipeline) = args.models.pipeline(&Config::default(), &args.embedder)?;
    let selection = if args.largest {
        FaceSelection::Main
    } else {
        FaceSelection::All
    };
    let inputs = expand_inputs(&args.paths);
    let mut progress = Progress::new("embed", inputs.len());
    for path in &inputs {
        let result = load_rgb(path).map_err(|e| e.to_string()).and_then(|img| {
            let faces = pipeline
                .embed_faces(&img, selection)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((img.dimensions(), faces))
        });
        progress.step(result.is_ok());
        match result {
            Ok(((w, h), faces)) if args.jsonl => print_json_line(&ImageRecord {
                path: path.display().to_string(),
                width: Some(w),
                height: Some(h),
                faces: faces.iter().map(face_record).collect(),
                error: None,
            }),
            Ok(((w, h), faces)) => {
                println!(
                    "{} ({w}x{h}): {} face(s), model {}",
                    path.display(),
                    faces.len(),
                    pipeline.embedder.id()
                );
                for (i, f) in faces.iter().enumerate() {
                    let head: Vec<String> = f
                        .embedding
                        .iter()
                        .take(4)
                        .map(|v| format!("{v:.4}"))
                        .collect();
                    let [x1, y1, x2, y2] = f.detection.bbox;
                    println!(
                        "  face {}: box [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}] score {:.3} embedding[{}] = [{}, ...]",
                        i + 1,
                        f.detection.score,
                        f.embedding.len(),
                        head.join(", ")
                    );
                }
            }
            Err(e) => {
                eprintln!("face-edge: error: {e}");
                if args.jsonl {
                    print_json_line(&ImageRecord::failed(path, e));
                }
            }
        }
    }
    progress.finish();
    Ok(batch_exit(progress.failed()))
}

/// `--aligned`: one face per input, the whole image.
fn run_aligned(args: &EmbedArgs) -> anyhow::Result<ExitCode> {
    let config = Config::default();
    let catalog = args.models.catalog(&config)?;
    let embedder = load_embedder_in(
        &catalog,
        args.embedder.id(&config),
        args.embedder.precision(&config),
    )?;
    let inputs = expand_inputs(&args.paths);
    let mut progress = Progress::new("embed", inputs.len());
    for path in &inputs {
        let result = load_rgb(path).map_err(|e| e.to_string()).and_then(|crop| {
            let embedding = embedder
                .embed_crop(&crop)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((crop.dimensions(), embedding))
        });
        progress.step(result.is_ok());
        match result {
            Ok(((w, h), embedding)) if args.jsonl => print_json_line(&ImageRecord {
                path: path.display().to_string(),
                width: Some(w),
                height: Some(h),
                faces: vec![FaceRecord {
                    detection: None,
                    embedding: Some(&embedding),
                }],
                error: None,
            }),
            Ok((_, embedding)) => {
                let head: Vec<String> = embedding
                    .iter()
                    .take(4)
                    .map(|v| format!("{v:.4}"))
                    .collect();
                println!(
                    "{}: embedding[{}] = [{}, ...], model {}",
                    path.display(),
                    embedding.len(),
                    head.join(", "),
                    embedder.id()
                );
            }
            Err(e) => {
                eprintln!("face-edge: error: {e}");
                if args.jsonl {
                    print_json_line(&ImageRecord::failed(path, e));
                }
            }
        }
    }
    progress.finish();
    Ok(batch_exit(progress.failed()))
}

fn face_record(f: &EmbeddedFace) -> FaceRecord<'_> {
    FaceRecord {
        detection: Some(&f.detection),
        embedding: Some(&f.embedding),
    }
}
