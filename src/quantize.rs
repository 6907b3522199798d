//! `face-edge models quantize`: makes the int8 QDQ variant of an embedder on the machine that will run
//! it, from the user's own aligned crops, so a model whose licence forbids sharing variants (JAPANESE
//! FACE v1) can still run in integer arithmetic. The quantization itself is the core's
//! (`face_edge_core::quantize`); here are the files: crops in, the held-out check, and the new weights
//! and manifest written beside the base model's.

use crate::image_io::{expand_inputs, load_rgb};
use crate::models::{Catalog, kernels_from_env, sha256_hex};
use crate::store::write_atomically_with_mode;
use anyhow::{Context, bail};
use face_edge_core::embed::{Embedder, cosine};
use face_edge_core::inference::{Precision, VerifiedWeights};
use face_edge_core::manifest::{Manifest, Role};
use face_edge_core::quantize::QdqQuantizer;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The method name in file names, manifest ids and `[variant]`.
pub const METHOD: &str = "int8-qdq";
/// Without `--check`, every this-many-th crop is held out of calibration to check the variant on.
pub const HOLD_OUT_EVERY: usize = 5;

pub struct QuantizeOptions {
    /// Aligned crops of the model's input size to calibrate on.
    pub calibration: PathBuf,
    /// Crops to check the variant on; default: every fifth calibration crop, held out.
    pub check: Option<PathBuf>,
    /// At most this many calibration crops.
    pub limit: usize,
    /// A variant whose mean cosine to the base model on the check crops is lower is refused.
    pub min_cosine: f32,
    /// Where to write the weights and manifest (default: the models directory).
    pub out_dir: Option<PathBuf>,
}

pub struct QuantizeReport {
    pub id: String,
    pub weights_path: PathBuf,
    pub manifest_path: PathBuf,
    pub bytes: usize,
    pub base_bytes: usize,
    pub sha256: String,
    pub calibration_crops: usize,
    pub skipped_files: usize,
    pub check_crops: usize,
    pub mean_cosine: f32,
    pub min_cosine: f32,
    pub activations: usize,
    pub weights: usize,
    pub folded_activations: usize,
}

/// Quantizes the embedder `id`; `progress` hears about long steps. Writes nothing unless the variant
/// passes the check.
pub fn quantize(
    catalog: &Catalog,
    id: &str,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<QuantizeReport> {
    let manifest = catalog.get_role(id, Role::Embedder)?;
    if let Some(v) = &manifest.variant {
        bail!(
            "{id} is already a variant (of {}); quantize the base model instead",
            v.base
        );
    }
    let weights = catalog.read_verified(manifest)?;
    let base = Embedder::load(manifest, &weights, Precision::F32, kernels_from_env())?;
    let (w, h) = base.crop_size();
    for dir in std::iter::once(&options.calibration).chain(&options.check) {
        if !dir.is_dir() {
            bail!("{}: not a folder of aligned crops", dir.display());
        }
    }

    let mut quantizer = QdqQuantizer::new(&weights.bytes, &[1, 3, h as usize, w as usize])
        .with_context(|| format!("{}", weights.path.display()))?;
    progress(format!(
        "calibrating {} activations of {id} on {}x{} crops from {}",
        quantizer.activation_count(),
        w,
        h,
        options.calibration.display()
    ));
    let mut held_out = vec![];
    let mut crops = Crops::new(&options.calibration, (w, h));
    let mut calibrated = 0;
    while calibrated < options.limit {
        let Some(crop) = crops.next()? else { break };
        if options.check.is_none() && crops.used.is_multiple_of(HOLD_OUT_EVERY) {
            held_out.push(crop);
            continue;
        }
        quantizer
            .observe(base.input_tensor(&crop)?)
            .with_context(|| format!("{}", crops.last_path().display()))?;
        calibrated += 1;
        if calibrated.is_multiple_of(50) {
            progress(format!("calibrated on {calibrated} crops"));
        }
    }
    let mut skipped_files = crops.skipped;
    if calibrated == 0 {
        bail!(
            "{}: no {w}x{h} crops to calibrate on ({} files of other sizes; `face-edge embed --save-crops DIR` makes crops from photos)",
            options.calibration.display(),
            crops.skipped
        );
    }
    if let Some(dir) = &options.check {
        let mut check = Crops::new(dir, (w, h));
        while held_out.len() < options.limit {
            let Some(crop) = check.next()? else { break };
            held_out.push(crop);
        }
        skipped_files += check.skipped;
    }
    if held_out.is_empty() {
        bail!(
            "no crops left to check the variant on: give --check DIR or at least {HOLD_OUT_EVERY} calibration crops"
        );
    }
    let qdq = quantizer
        .finish()
        .with_context(|| format!("{}", weights.path.display()))?;

    let out_dir = options
        .out_dir
        .clone()
        .unwrap_or_else(|| catalog.models_dir().to_path_buf());
    let stem = Path::new(&manifest.weights)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(&manifest.id);
    let weights_name = format!("{stem}.{METHOD}.onnx");
    let variant_id = format!("{}-{METHOD}", manifest.id);
    let sha256 = sha256_hex(&qdq.bytes);
    let base_text = catalog
        .manifest_text(&manifest.id)
        .context("the base manifest's text is not known")?;
    let made_by = made_by(id, options);
    let manifest_for = |checked_cosine| {
        variant_manifest(
            base_text,
            manifest,
            &weights_name,
            &sha256,
            &made_by,
            checked_cosine,
        )
    };
    let unchecked = manifest_for(None);
    let variant_manifest =
        Manifest::parse(&unchecked, &format!("the manifest made for {variant_id}"))?;
    let weights_path = out_dir.join(&weights_name);
    let variant_weights = VerifiedWeights {
        path: weights_path.clone(),
        bytes: qdq.bytes,
        sha256: sha256.clone(),
    };
    let variant = Embedder::load(
        &variant_manifest,
        &variant_weights,
        Precision::F32,
        kernels_from_env(),
    )?;

    progress(format!(
        "checking {variant_id} against {id} on {} held-out crops",
        held_out.len()
    ));
    let mut cosines = Vec::with_capacity(held_out.len());
    for crop in &held_out {
        cosines.push(cosine(&base.embed_crop(crop)?, &variant.embed_crop(crop)?));
    }
    let mean_cosine = cosines.iter().sum::<f32>() / cosines.len() as f32;
    let min_cosine = cosines.iter().copied().fold(f32::INFINITY, f32::min);
    if mean_cosine < options.min_cosine {
        bail!(
            "the int8 variant's embeddings of {} held-out crops have a mean cosine of {mean_cosine:.5} (min {min_cosine:.5}) to {id}'s, under --min-cosine {}: it would not recognise the same people; nothing written",
            held_out.len(),
            options.min_cosine
        );
    }

    // The check passed: the manifest records it, so that the variant may run in the base's place
    // (`models.variant`).
    let text = manifest_for(Some(mean_cosine));

    // The weights first: a manifest never names a file that is not there yet. Each through a
    // temporary file, fsync and rename (an interrupted run leaves the old file or none), readable
    // like fetched weights.
    write_atomically_with_mode(&out_dir, &weights_name, &variant_weights.bytes, 0o644)?;
    let manifest_name = format!("{variant_id}.toml");
    write_atomically_with_mode(&out_dir, &manifest_name, text.as_bytes(), 0o644)?;
    Ok(QuantizeReport {
        id: variant_id,
        weights_path,
        manifest_path: out_dir.join(manifest_name),
        bytes: variant_weights.bytes.len(),
        base_bytes: weights.bytes.len(),
        sha256,
        calibration_crops: qdq.calibration_inputs,
        skipped_files,
        check_crops: held_out.len(),
        mean_cosine,
        min_cosine,
        activations: qdq.activations,
        weights: qdq.weights,
        folded_activations: qdq.folded_activations,
    })
}

/// The crops of a folder (recursively, in name order, so a folder always gives the same file), one at a
/// time; images of another size are counted and skipped.
struct Crops {
    paths: std::vec::IntoIter<PathBuf>,
    size: (u32, u32),
    last: PathBuf,
    /// Crops of the right size returned so far.
    used: usize,
    skipped: usize,
}

impl Crops {
    fn new(dir: &Path, size: (u32, u32)) -> Crops {
        Crops {
            paths: expand_inputs(&[dir.to_path_buf()]).into_iter(),
            size,
            last: dir.to_path_buf(),
            used: 0,
            skipped: 0,
        }
    }

    fn next(&mut self) -> anyhow::Result<Option<RgbImage>> {
        for path in self.paths.by_ref() {
            let image = load_rgb(&path)?;
            self.last = path;
            if image.dimensions() == self.size {
                self.used += 1;
                return Ok(Some(image));
            }
            self.skipped += 1;
        }
        Ok(None)
    }

    fn last_path(&self) -> &Path {
        &self.last
    }
}

/// The command that makes the same file again (the catalog appends `--models-dir`).
fn made_by(id: &str, options: &QuantizeOptions) -> String {
    let mut words = vec![
        "face-edge models quantize".to_string(),
        id.to_string(),
        "--calibration".into(),
        options.calibration.display().to_string(),
        "--limit".into(),
        options.limit.to_string(),
    ];
    if let Some(check) = &options.check {
        words.extend(["--check".into(), check.display().to_string()]);
    }
    words.join(" ")
}

/// The base manifest with a new id, description, weights and sha256 and a `[variant]` table. The
/// base's top-level comments (where to download it) and its download keys do not describe the variant.
fn variant_manifest(
    base_text: &str,
    base: &Manifest,
    weights_name: &str,
    sha256: &str,
    made_by: &str,
    checked_cosine: Option<f32>,
) -> String {
    let mut lines = vec![format!(
        "# Made by `{made_by}` on this machine: int8 per-channel weights, uint8 activations calibrated\n# (min/max) on the crops named there. Not to be shared where the base model's licence forbids it."
    )];
    let mut top_level = true;
    for line in base_text.lines() {
        if line.starts_with('[') {
            top_level = false;
        }
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if top_level && line.trim_start().starts_with('#') {
            continue;
        }
        match (top_level, key) {
            (true, Some("url" | "git_blob_sha1" | "sha256")) => continue,
            (true, Some("id")) => {
                lines.push(format!("id = {}", quote(&format!("{}-{METHOD}", base.id))))
            }
            (true, Some("description")) => lines.push(format!(
                "description = {}",
                quote(&format!("{} ({METHOD} variant)", base.description))
            )),
            (true, Some("weights")) => {
                lines.push(format!("weights = {}", quote(weights_name)));
                lines.push(format!("sha256 = {}", quote(sha256)));
            }
            _ => lines.push(line.to_string()),
        }
    }
    lines.extend([
        String::new(),
        "[variant]".into(),
        format!("base = {}", quote(&base.id)),
        format!("method = {}", quote(METHOD)),
        format!("made_by = {}", quote(made_by)),
    ]);
    if let Some(c) = checked_cosine {
        lines.push(format!("checked_cosine = {c:.5}"));
    }
    lines.push(String::new());
    lines.join("\n")
}

fn quote(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}
