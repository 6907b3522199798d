//! `face-edge identify`: every face of every image named against the gallery, or "unknown".

use super::batch_exit;
use super::gallery::{GalleryOptions, open_gallery};
use super::output::{Progress, print_json_line};
use clap::Args;
use face_edge::image_io::{expand_inputs, load_rgb};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct IdentifyArgs {
    #[command(flatten)]
    gallery: GalleryOptions,
    /// One JSON object per image on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Image files or directories (walked recursively for .jpg, .jpeg, .png, .tif(f), .webp, .bmp; .heic is reported).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

/// One face of `identify --json` (a contract: keep it stable).
#[derive(Serialize)]
struct FaceIdentity {
    #[serde(rename = "box")]
    bbox: [f32; 4],
    score: f32,
    person: Option<String>,
    similarity: f32,
    second: f32,
    threshold: f32,
}

#[derive(Serialize)]
struct ImageIdentities {
    path: String,
    faces: Vec<FaceIdentity>,
    error: Option<String>,
}

pub fn run(args: IdentifyArgs) -> anyhow::Result<ExitCode> {
    let mut g = open_gallery(&args.gallery)?;
    let inputs = expand_inputs(&args.paths);
    let mut progress = Progress::new("identify", inputs.len());
    for path in &inputs {
        let result = load_rgb(path).map_err(|e| e.to_string()).and_then(|img| {
            let mut faces = g
                .pipeline
                .detector
                .detect(&img)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            faces.sort_by(|a, b| a.bbox[0].total_cmp(&b.bbox[0]));
            let embeddings = faces
                .iter()
                .map(|f| g.pipeline.embedder.embed_face(&img, &f.landmarks))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let decisions = g.gallery.identify(&embeddings);
            Ok(faces
                .iter()
                .zip(decisions)
                .map(|(f, d)| FaceIdentity {
                    bbox: f.bbox,
                    score: f.score,
                    person: d.person,
                    similarity: d.similarity,
                    second: d.second,
                    threshold: d.threshold,
                })
                .collect::<Vec<_>>())
        });
        progress.step(result.is_ok());
        let display = path.display().to_string();
        match result {
            Ok(faces) if args.json => print_json_line(&ImageIdentities {
                path: display,
                faces,
                error: None,
            }),
            Ok(faces) => {
                let names: Vec<String> = faces
                    .iter()
                    .map(|f| match &f.person {
                        Some(p) => format!("{p} ({:.2})", f.similarity),
                        None => format!("unknown (best {:.2})", f.similarity),
                    })
                    .collect();
                println!(
                    "{display}: {}",
                    if names.is_empty() {
                        "no face".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
            Err(e) => {
                eprintln!("face-edge: error: {e}");
                if args.json {
                    print_json_line(&ImageIdentities {
                        path: display,
                        faces: vec![],
                        error: Some(e),
                    });
                }
            }
        }
    }
    progress.finish();
    Ok(batch_exit(progress.failed()))
}
