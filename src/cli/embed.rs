//! `face-edge embed`: detect, align and embed faces; `--jsonl` prints the stable per-image records.

use super::output::{FaceRecord, ImageRecord, Progress, print_json_line};
use super::{EmbedderOption, ModelOptions, batch_exit};
use clap::Args;
use face_edge::config::Config;
use face_edge::detect::Detection;
use face_edge::embed::Embedder;
use face_edge::image_io::{expand_inputs, load_rgb};
use face_edge::models::load_embedder;
use face_edge::pipeline::{EmbeddedFace, FaceSelection};
use image::RgbImage;
use std::path::{Path, PathBuf};
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
    #[arg(long, conflicts_with_all = ["largest", "save_crops"])]
    aligned: bool,
    /// Also write each face's aligned crop (the embedder's input) as PNG into this directory, e.g. to
    /// calibrate an int8 variant with models/quantize.py.
    #[arg(long, value_name = "DIR")]
    save_crops: Option<PathBuf>,
    /// Image files or directories (walked recursively for .jpg, .jpeg, .png, .tif(f), .webp, .bmp; .heic is reported).
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
    if let Some(dir) = &args.save_crops {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("--save-crops {}: {e}", dir.display()))?;
    }
    let model = pipeline.embedder.id().to_string();
    Ok(embed_each(&args, &model, |path| {
        let img = load_rgb(path).map_err(|e| e.to_string())?;
        let faces = pipeline
            .embed_faces(&img, selection)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(dir) = &args.save_crops {
            save_crops(&pipeline.embedder, &img, &faces, path, dir)?;
        }
        let faces = faces
            .into_iter()
            .map(|f| (Some(f.detection), f.embedding))
            .collect();
        Ok((img.dimensions(), faces))
    }))
}

/// `--aligned`: one face per input, the whole image.
fn run_aligned(args: &EmbedArgs) -> anyhow::Result<ExitCode> {
    let config = Config::default();
    let catalog = args.models.catalog(&config)?;
    let embedder = load_embedder(
        &catalog,
        &args.embedder.choose(&config, &catalog).id,
        args.embedder.precision(&config),
    )?;
    Ok(embed_each(args, embedder.id(), |path| {
        let crop = load_rgb(path).map_err(|e| e.to_string())?;
        let embedding = embedder
            .embed_crop(&crop)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((crop.dimensions(), vec![(None, embedding)]))
    }))
}

/// An input's size and its faces: the detection (None for an aligned crop) and the embedding.
type Embedded = ((u32, u32), Vec<(Option<Detection>, Vec<f32>)>);

/// Runs `embed` on every input and prints each result (text or `--jsonl`); a failed input is reported
/// and counted, and the batch goes on.
fn embed_each(
    args: &EmbedArgs,
    model: &str,
    mut embed: impl FnMut(&Path) -> Result<Embedded, String>,
) -> ExitCode {
    let inputs = expand_inputs(&args.paths);
    let mut progress = Progress::new("embed", inputs.len());
    for path in &inputs {
        let result = embed(path);
        progress.step(result.is_ok());
        match result {
            Ok(((w, h), faces)) if args.jsonl => print_json_line(&ImageRecord {
                path: path.display().to_string(),
                width: Some(w),
                height: Some(h),
                faces: faces
                    .iter()
                    .map(|(detection, embedding)| FaceRecord {
                        detection: detection.as_ref(),
                        embedding: Some(embedding),
                    })
                    .collect(),
                error: None,
            }),
            Ok(((w, h), faces)) => {
                println!(
                    "{} ({w}x{h}): {} face(s), model {model}",
                    path.display(),
                    faces.len()
                );
                for (i, (detection, embedding)) in faces.iter().enumerate() {
                    let head: Vec<String> = embedding
                        .iter()
                        .take(4)
                        .map(|v| format!("{v:.4}"))
                        .collect();
                    let found = detection.as_ref().map_or(String::new(), |d| {
                        let [x1, y1, x2, y2] = d.bbox;
                        format!(
                            "box [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}] score {:.3} ",
                            d.score
                        )
                    });
                    println!(
                        "  face {}: {found}embedding[{}] = [{}, ...]",
                        i + 1,
                        embedding.len(),
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
    batch_exit(progress.failed())
}

/// Writes each face's aligned crop as `<dir>/<input stem>.<face number>.png` (calibration material for
/// models/quantize.py, or a look at what the embedder sees).
fn save_crops(
    embedder: &Embedder,
    frame: &RgbImage,
    faces: &[EmbeddedFace],
    input: &Path,
    dir: &Path,
) -> Result<(), String> {
    let stem = input
        .file_stem()
        .map_or("input".into(), |s| s.to_string_lossy());
    for (i, face) in faces.iter().enumerate() {
        let out = dir.join(format!("{stem}.{}.png", i + 1));
        embedder
            .align(frame, &face.detection.landmarks)
            .map_err(|e| format!("{}: {e}", input.display()))?
            .save(&out)
            .map_err(|e| format!("--save-crops {}: {e}", out.display()))?;
    }
    Ok(())
}
