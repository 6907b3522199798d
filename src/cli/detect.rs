//! `face-edge detect`: faces per image with box, score and landmarks.

use super::output::{FaceRecord, ImageRecord, Progress, print_json_line};
use super::{ModelOptions, batch_exit};
use clap::Args;
use face_edge::config::Config;
use face_edge::image_io::{expand_inputs, load_rgb};
use face_edge::models::load_detector;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct DetectArgs {
    #[command(flatten)]
    models: ModelOptions,
    /// One JSON object per image on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Image files or directories (walked recursively for .jpg, .jpeg, .png, .tif(f), .webp, .bmp; .heic is reported).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(args: DetectArgs) -> anyhow::Result<ExitCode> {
    let config = Config::default();
    let catalog = args.models.catalog(&config)?;
    let settings = args.models.detect_settings(&config)?;
    let mut detector = load_detector(
        &catalog,
        &args.models.detector_id(&config, &catalog),
        &settings,
    )?;
    let inputs = expand_inputs(&args.paths);
    let mut progress = Progress::new("detect", inputs.len());
    for path in &inputs {
        let result = load_rgb(path).map_err(|e| e.to_string()).and_then(|img| {
            let faces = detector
                .detect(&img)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((img.dimensions(), faces))
        });
        progress.step(result.is_ok());
        match (&result, args.json) {
            (Ok(((w, h), faces)), true) => print_json_line(&ImageRecord {
                path: path.display().to_string(),
                width: Some(*w),
                height: Some(*h),
                faces: faces
                    .iter()
                    .map(|d| FaceRecord {
                        detection: Some(d),
                        embedding: None,
                    })
                    .collect(),
                error: None,
            }),
            (Ok(((w, h), faces)), false) => {
                println!("{} ({w}x{h}): {} face(s)", path.display(), faces.len());
                for (i, f) in faces.iter().enumerate() {
                    let [x1, y1, x2, y2] = f.bbox;
                    let marks: Vec<String> = f
                        .landmarks
                        .iter()
                        .map(|p| format!("({:.1},{:.1})", p[0], p[1]))
                        .collect();
                    println!(
                        "  face {}: box [{x1:.1}, {y1:.1}, {x2:.1}, {y2:.1}] score {:.3} landmarks {}",
                        i + 1,
                        f.score,
                        marks.join(" ")
                    );
                }
            }
            (Err(e), json) => {
                eprintln!("face-edge: error: {e}");
                if json {
                    print_json_line(&ImageRecord::failed(path, e.clone()));
                }
            }
        }
    }
    progress.finish();
    Ok(batch_exit(progress.failed()))
}
