//! `face-edge eval DIR`: open-set evaluation on a folder of people (LFW layout: one sub-directory per
//! person), comparing the gallery-calibrated threshold with the previous rule and the model's fixed one,
//! per image and per visit (a person's photos voted on as the tracker votes on a visit's frames).

use super::output::Progress;
use super::{EmbedderOption, ModelOptions};
use clap::Args;
use face_edge::config::Config;
use face_edge::gallery::{Gallery, max_impostor_similarity};
use face_edge::image_io::{expand_inputs, load_rgb};
use face_edge::openset::{OpenSetRates, evaluate, evaluate_visits, gallery_people, split};
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
    /// Margin rule used by every rule.
    #[arg(long, default_value_t = 0.05)]
    margin: f32,
    /// Decisions that must agree to name a visit (the daemon's `[tracking] votes`).
    #[arg(long, default_value_t = 2)]
    votes: usize,
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
    let model = pipeline.embedder.spec().output.stranger_model();
    let rules = [
        (
            "calibrated",
            Gallery::new(people.clone(), model, None, args.margin),
        ),
        (
            "previous rule (closest pair + 0.1)",
            Gallery::new(
                people.clone(),
                model,
                Some(previous_rule(&people, model.threshold)),
                args.margin,
            ),
        ),
        (
            "model default (fixed)",
            Gallery::new(people, model, Some(model.threshold), args.margin),
        ),
    ];
    let results: Vec<(&str, f32, OpenSetRates, OpenSetRates)> = rules
        .iter()
        .map(|(label, g)| {
            (
                *label,
                g.threshold(),
                evaluate(g, &s.probes),
                evaluate_visits(g, &s.visits, args.votes),
            )
        })
        .collect();
    if args.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(label, t, image, visit)| json!({"rule": label, "threshold": t, "per_image": image, "per_visit": visit}))
            .collect();
        let out = json!({
            "model": pipeline.embedder.id(), "enrolled_people": s.enrolled.len(), "photos_per_person": args.enrol,
            "photos_without_face": progress.failed(), "votes": args.votes, "rules": rows,
        });
        println!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let (image, visit) = (&results[0].2, &results[0].3);
    println!(
        "{}: {} people enrolled with {} photos each; {} known probes, {} stranger probes; {} known visits, {} stranger visits (of {}+ photos, {} votes decide); {} photos without a face",
        pipeline.embedder.id(),
        s.enrolled.len(),
        args.enrol,
        image.known_probes,
        image.unknown_probes,
        visit.known_probes,
        visit.unknown_probes,
        args.votes.max(1),
        args.votes,
        progress.failed()
    );
    println!(
        "{:<36} {:>9} {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10}",
        "threshold", "value", "known ok", "wrong", "strangers", "visits ok", "wrong", "strangers"
    );
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    for (label, t, i, v) in &results {
        println!(
            "{label:<36} {t:>9.3} {:>10} {:>10} {:>10} | {:>10} {:>10} {:>10}",
            pct(i.known_correct),
            pct(i.known_wrong),
            pct(i.unknown_accepted),
            pct(v.known_correct),
            pct(v.known_wrong),
            pct(v.unknown_accepted)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The calibration face-edge used until December 2026, for comparison: the most similar pair of different
/// enrolled people plus 0.1, floored at the model's threshold, at most 0.8.
fn previous_rule(people: &[face_edge::gallery::GalleryPerson], floor: f32) -> f32 {
    max_impostor_similarity(people).map_or(floor, |m| (m + 0.1).clamp(floor, 0.8_f32.max(floor)))
}
