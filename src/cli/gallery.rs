//! `face-edge gallery sync|list|check`, and the gallery set-up shared with `identify`.

use super::{EXIT_PARTIAL, EmbedderOption, ModelOptions};
use anyhow::Context;
use clap::{Args, Subcommand};
use face_edge::config::{Config, DEFAULT_CONFIG_PATH};
use face_edge::enrol::{SyncReport, collect_sources, gallery_from_store, sync};
use face_edge::gallery::{Gallery, StrangerModel, ThresholdSource, max_impostor_similarity};
use face_edge::manifest::Role;
use face_edge::pipeline::FacePipeline;
use face_edge::store::{self, StoreData, StoreError, store_path};
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;

/// Where the gallery is defined and stored.
#[derive(Args, Clone)]
pub struct GalleryOptions {
    /// Configuration file [default: /etc/face-edge/face-edge.toml when neither --config nor --gallery is
    /// given].
    #[arg(long, env = "FACE_EDGE_CONFIG")]
    pub config: Option<PathBuf>,
    /// A gallery directory (one sub-directory per person) to use instead of, or on top of, the config's.
    #[arg(long)]
    pub gallery: Option<PathBuf>,
    /// Directory for the embedding store [default: the config's state_dir (/var/lib/face-edge); with
    /// --gallery and no --config, ~/.cache/face-edge].
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub models: ModelOptions,
    #[command(flatten)]
    pub embedder: EmbedderOption,
}

impl GalleryOptions {
    /// The config file (or defaults when only --gallery is given) with the command-line overrides.
    pub fn config(&self) -> anyhow::Result<Config> {
        let path = match (&self.config, &self.gallery) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_PATH)),
        };
        let mut config = match path {
            Some(p) if self.config.is_none() => Config::load(&p)
                .context("no --config or --gallery given, so the default config was tried")?,
            Some(p) => Config::load(&p)?,
            None => Config::without_file(),
        };
        if let Some(g) = &self.gallery {
            config.gallery.dir = Some(g.clone());
        }
        if let Some(s) = &self.state_dir {
            config.state_dir = s.clone();
        }
        Ok(config)
    }
}

/// A synced gallery, ready to match.
pub struct OpenGallery {
    pub config: Config,
    pub pipeline: FacePipeline,
    pub data: StoreData,
    pub report: SyncReport,
    pub gallery: Gallery,
}

/// Loads config and models, syncs the store (showing progress on long runs) and builds the matcher.
pub fn open_gallery(options: &GalleryOptions) -> anyhow::Result<OpenGallery> {
    let config = options.config()?;
    let (_, mut pipeline) = options.models.pipeline(&config, &options.embedder)?;
    let sources = collect_sources(&config)?;
    for w in &sources.warnings {
        log::warn!("{w}");
    }
    let started = std::time::Instant::now();
    let mut last = started;
    let (data, report) = sync(
        &sources.people,
        &mut pipeline,
        config.gallery.enrol_policy,
        &config.state_dir,
        |done, total| {
            if last.elapsed().as_secs() >= 1 {
                last = std::time::Instant::now();
                eprintln!("face-edge gallery: enrolled {done}/{total} images");
            }
        },
    )?;
    for (person, path, reason) in &report.rejected {
        log::warn!("{path}: not enrolled for {person}: {reason}");
    }
    if let Some(why) = &report.rebuilt {
        log::info!("gallery store rebuilt: {why}");
    }
    let gallery = gallery_from_store(
        &data,
        pipeline.embedder.spec().output.stranger_model(),
        &config,
    );
    Ok(OpenGallery {
        config,
        pipeline,
        data,
        report,
        gallery,
    })
}

#[derive(Args)]
pub struct GalleryArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Embed new or changed enrolment photos, forget people and photos no longer configured.
    Sync(GalleryOptions),
    /// People, image counts, rejected photos, the model and the threshold, from the store.
    List(GalleryOptions),
    /// Check config, enrolment photos, models and store without changing anything.
    Check(GalleryOptions),
}

pub fn run(args: GalleryArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Sync(o) => run_sync(&o),
        Action::List(o) => run_list(&o),
        Action::Check(o) => run_check(&o),
    }
}

fn run_sync(options: &GalleryOptions) -> anyhow::Result<ExitCode> {
    let g = open_gallery(options)?;
    let r = &g.report;
    let images: Vec<_> = g.data.people.iter().flat_map(|p| &p.images).collect();
    let usable = images.iter().filter(|i| i.embedding.is_some()).count();
    println!(
        "{} people, {} images: {usable} usable, {} rejected; {} analysed now, {} reused from the store",
        g.data.people.len(),
        images.len(),
        images.len() - usable,
        r.computed,
        r.reused,
    );
    if !r.removed_people.is_empty() || r.removed_images > 0 {
        println!(
            "forgotten: people [{}], {} images of remaining people",
            r.removed_people.join(", "),
            r.removed_images
        );
    }
    if let Some(why) = &r.rebuilt {
        println!("store rebuilt: {why}");
    }
    let state = if r.written { "written" } else { "unchanged" };
    println!(
        "store {state}: {}",
        store_path(&g.config.state_dir).display()
    );
    print_threshold(&g.gallery);
    Ok(ExitCode::SUCCESS)
}

fn print_threshold(gallery: &Gallery) {
    let how = match gallery.threshold_source() {
        ThresholdSource::Fixed => "fixed in config",
        ThresholdSource::Model => "model default; the gallery's people are dissimilar enough",
        ThresholdSource::Calibrated => "calibrated from the gallery",
    };
    println!(
        "threshold {:.3} ({how}), margin {:.3}",
        gallery.threshold(),
        gallery.margin()
    );
}

fn run_list(options: &GalleryOptions) -> anyhow::Result<ExitCode> {
    let config = options.config()?;
    let Some(data) = store::load(&config.state_dir)? else {
        anyhow::bail!(
            "{}: no gallery store yet; run `face-edge gallery sync`",
            store_path(&config.state_dir).display()
        );
    };
    let catalog = options.models.catalog(&config)?;
    let embedder = catalog.get_role(&data.key.embedder, Role::Embedder)?;
    let default = embedder
        .embedder_spec()
        .map_or(StrangerModel::from(0.0), |e| e.output.stranger_model());
    let gallery = gallery_from_store(&data, default, &config);
    println!("store: {}", store_path(&config.state_dir).display());
    println!(
        "model: {} (weights sha256 {}), detector {}",
        data.key.embedder, data.key.weights_sha256, data.key.detector
    );
    let configured = options.embedder.choose(&config, &catalog).id;
    if configured != data.key.embedder {
        println!(
            "note: the configuration now names embedder {configured}; run `face-edge gallery sync`"
        );
    }
    println!(
        "{:<24} {:<24} {:>6} {:>8}",
        "id", "name", "images", "rejected"
    );
    for p in &data.people {
        let rejected = p.images.iter().filter(|i| i.rejected.is_some()).count();
        println!(
            "{:<24} {:<24} {:>6} {:>8}",
            p.id,
            p.name,
            p.images.len() - rejected,
            rejected
        );
    }
    for p in &data.people {
        for i in p.images.iter().filter(|i| i.rejected.is_some()) {
            println!(
                "rejected: {} ({}): {}",
                i.path,
                p.id,
                i.rejected.as_deref().unwrap_or_default()
            );
        }
    }
    if let Some(m) = max_impostor_similarity(gallery.people()) {
        println!("most similar different people: cosine {m:.3}");
    }
    print_threshold(&gallery);
    Ok(ExitCode::SUCCESS)
}

fn run_check(options: &GalleryOptions) -> anyhow::Result<ExitCode> {
    let config = options.config()?;
    println!("config: ok");
    let mut problems = 0;
    let sources = collect_sources(&config)?;
    let images: usize = sources.people.iter().map(|p| p.images.len()).sum();
    println!("gallery: {} people, {images} images", sources.people.len());
    for w in &sources.warnings {
        problems += 1;
        println!("warning: {w}");
    }
    let catalog = options.models.catalog(&config)?;
    let mut hashes = Vec::new();
    let detector = options.models.detector_choice(&config, &catalog);
    let embedder = options.embedder.choose(&config, &catalog);
    for note in [detector.note(), embedder.note()].into_iter().flatten() {
        println!("note: {note}");
    }
    for (id, role) in [
        (detector.id.as_str(), Role::Detector),
        (embedder.id.as_str(), Role::Embedder),
    ] {
        match catalog
            .get_role(id, role)
            .and_then(|m| catalog.read_verified(m))
        {
            Ok(w) => {
                println!("model {id}: ok");
                hashes.push(w.sha256);
            }
            Err(e) => {
                problems += 1;
                println!("model {id}: {e}");
            }
        }
    }
    match store::load(&config.state_dir) {
        Ok(None) => println!("store: none yet (`face-edge gallery sync` creates it)"),
        Err(StoreError::Corrupt { reason, .. }) => {
            problems += 1;
            println!("store: corrupt ({reason}); the next sync rebuilds it");
        }
        Err(e) => {
            problems += 1;
            println!("store: {e}");
        }
        Ok(Some(data)) => {
            let stale_model = hashes.len() == 2
                && (data.key.weights_sha256 != hashes[1] || data.key.detector_sha256 != hashes[0]);
            let stored: HashSet<&str> = data
                .people
                .iter()
                .flat_map(|p| &p.images)
                .map(|i| i.path.as_str())
                .collect();
            let wanted: HashSet<String> = sources
                .people
                .iter()
                .flat_map(|p| &p.images)
                .map(|i| i.display().to_string())
                .collect();
            let new = wanted
                .iter()
                .filter(|p| !stored.contains(p.as_str()))
                .count();
            let gone = stored.iter().filter(|p| !wanted.contains(**p)).count();
            if stale_model {
                println!("store: made with other models; the next sync rebuilds it");
            } else if new + gone > 0 {
                println!(
                    "store: out of date ({new} images to add, {gone} to forget); run `face-edge gallery sync`"
                );
            } else {
                println!(
                    "store: up to date with the configured photos (content changes are found by sync)"
                );
            }
        }
    }
    Ok(if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PARTIAL)
    })
}
