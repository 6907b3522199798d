//! `face-edge eval DIR`: open-set evaluation on a folder of people (LFW layout: one sub-directory per
//! person), comparing the gallery-calibrated threshold with the model's fixed one.

use super::output::Progress;
use super::{EmbedderOption, ModelOptions};
use clap::Args;
use face_edge::config::Config;
use face_edge::gallery::{Gallery, ThresholdSource};
use face_edge::image_io::{expand_inputs, load_rgb};
use face_edge::openset::{evaluate, gallery_people, split};
use face_edge::pipeline::FaceSelection;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    models: ModelOptions,
    #[command(flatten)]
    embedder: EmbedderOption,
    /// Photos enrolled per known person; people with more photos alternate between known and stranger.
    #[arg(long, default_value_t = 2)]
    enrol: usize,
    /// Margin rule used by both galleries.
    #[arg(long, default_value_t = 0.05)]
    margin: f32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Directory with one sub-directory of photos per person.
    dir: PathBuf,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.enrol >= 1, "--enrol must be at least 1");
    let (_, mut pipeline) = args.models.pipeline(&Config::default(), &args.embedder)?;
    let mut people: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in expand_inputs(std::slice::from_ref(&args.dir)) {
        let person = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned());
        people
            .entry(person.unwrap_or_default())
            .or_default()
            .push(path);
    }
    anyhow::ensure!(
        !people.is_empty(),
        "{}: no photos found",
        args.dir.display()
    );

    // Embed every photo's main face once; photos without a face drop out of the protocol.
    let total = people.values().map(Vec::len).sum();
    let mut progress = Progress::new("eval", total);
    let mut embedded: BTreeMap<String, Vec<Vec<f32>>> = BTreeMap::new();
    for (person, paths) in &people {
        for path in paths {
            let result = load_rgb(path).map_err(|e| e.to_string()).and_then(|img| {
                pipeline
                    .embed_faces(&img, FaceSelection::Main)
                    .map_err(|e| format!("{}: {e}", path.display()))
            });
            progress.step(result.is_ok());
            match result {
                Ok(mut faces) => embedded
                    .entry(person.clone())
                    .or_default()
                    .push(faces.remove(0).embedding),
                Err(e) => log::warn!("{e}"),
            }
        }
    }
    progress.finish();

    let s = split(&embedded, args.enrol);
    let people = gallery_people(&s.enrolled);
    let default = pipeline.embedder.spec().output.threshold;
    let calibrated = Gallery::new(people.clone(), default, None, args.margin);
    let fixed = Gallery::new(people, default, Some(default), args.margin);
    let probes = s.probes;
    let (rc, rf) = (evaluate(&calibrated, &probes), evaluate(&fixed, &probes));
    let source = match calibrated.threshold_source() {
        ThresholdSource::Calibrated => "calibrated",
        _ => "model default (calibration did not raise it)",
    };
    if args.json {
        let out = json!({
            "model": pipeline.embedder.id(), "enrolled_people": s.enrolled.len(), "photos_without_face": progress.failed(),
            "calibrated": rc, "fixed": rf,
        });
        println!("{out}");
    } else {
        println!(
            "{}: {} people enrolled with {} photos each; {} known probes, {} stranger probes; {} photos without a face",
            pipeline.embedder.id(),
            s.enrolled.len(),
            args.enrol,
            rc.known_probes,
            rc.unknown_probes,
            progress.failed()
        );
        println!(
            "{:<34} {:>9} {:>14} {:>12} {:>17}",
            "threshold", "value", "known correct", "known wrong", "stranger accepted"
        );
        for (label, r) in [
            (format!("gallery-calibrated ({source})"), rc),
            ("model default (fixed)".to_string(), rf),
        ] {
            println!(
                "{label:<34} {:>9.3} {:>13.1}% {:>11.1}% {:>16.1}%",
                r.threshold,
                r.known_correct * 100.0,
                r.known_wrong * 100.0,
                r.unknown_accepted * 100.0
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
