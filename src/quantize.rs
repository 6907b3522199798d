//! `face-edge models quantize`: makes the int8 QDQ variant of an embedder on the machine that will run
//! it, from the user's own aligned crops, so a model whose licence forbids sharing variants (JAPANESE
//! FACE v1) can still run in integer arithmetic. The quantization itself is the core's
//! (`face_edge_core::quantize`); here are the files: crops in, the held-out check, and the new weights
//! and manifest written beside the base model's.

use crate::image_io::{expand_inputs, load_rgb};
use crate::models::{Catalog, kernels_from_env, sha256_hex};
use crate::store::write_atomically_with_mode;
use anyhow::{Context, bail};
use face_edge_core::detect::{DetectSettings, Detector, FaceAgreement};
use face_edge_core::embed::{Embedder, cosine};
use face_edge_core::inference::{Precision, VerifiedWeights};
use face_edge_core::manifest::{Manifest, Role};
use face_edge_core::quantize::{Heads, QdqQuantizer};
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The method name in file names, manifest ids and `[variant]`.
pub const METHOD: &str = "int8-qdq";
/// Without `--check`, every this-many-th crop is held out of calibration to check the variant on.
pub const HOLD_OUT_EVERY: usize = 5;

pub struct QuantizeOptions {
    /// Aligned crops of the model's input size to calibrate an embedder on; photos for a detector.
    pub calibration: PathBuf,
    /// Crops (photos) to check the variant on; default: every fifth calibration input, held out.
    pub check: Option<PathBuf>,
    /// At most this many calibration crops.
    pub limit: usize,
    /// An embedder variant whose mean cosine to the base model on the check crops is lower is
    /// refused.
    pub min_cosine: f32,
    /// A detector variant that finds fewer of the same faces as its base on the check photos
    /// (`FaceAgreement::share`) is refused.
    pub min_agreement: f32,
    /// Where to write the weights and manifest (default: the models directory).
    pub out_dir: Option<PathBuf>,
}

/// How the variant compared with its base on the held-out inputs.
pub enum Check {
    /// An embedder's: cosines of the two embeddings of each crop.
    Cosine { crops: usize, mean: f32, min: f32 },
    /// A detector's: the faces both found in the photos.
    Faces {
        photos: usize,
        agreement: FaceAgreement,
    },
}

pub struct QuantizeReport {
    pub id: String,
    pub weights_path: PathBuf,
    pub manifest_path: PathBuf,
    pub bytes: usize,
    pub base_bytes: usize,
    pub sha256: String,
    /// Calibration inputs: crops for an embedder, photos for a detector.
    pub calibration_inputs: usize,
    pub skipped_files: usize,
    pub check: Check,
    pub activations: usize,
    pub weights: usize,
    pub folded_activations: usize,
}

/// Quantizes the embedder or detector `id`; `progress` hears about long steps. Writes nothing
/// unless the variant passes the check.
pub fn quantize(
    catalog: &Catalog,
    id: &str,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<QuantizeReport> {
    let manifest = catalog.get(id)?;
    if let Some(v) = &manifest.variant {
        bail!(
            "{id} is already a variant (of {}); quantize the base model instead",
            v.base
        );
    }
    for dir in std::iter::once(&options.calibration).chain(&options.check) {
        if !dir.is_dir() {
            let what = match manifest.role {
                Role::Embedder => "aligned crops",
                Role::Detector => "photos",
            };
            bail!("{}: not a folder of {what}", dir.display());
        }
    }
    match manifest.role {
        Role::Embedder => quantize_embedder(catalog, manifest, options, progress),
        Role::Detector => quantize_detector(catalog, manifest, options, progress),
    }
}

/// The embedder's side of `quantize`: calibrated on aligned crops, checked by the cosine of the two
/// models' embeddings of held-out crops.
fn quantize_embedder(
    catalog: &Catalog,
    manifest: &Manifest,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<QuantizeReport> {
    let id = &manifest.id;
    let weights = catalog.read_verified(manifest)?;
    let base = Embedder::load(manifest, &weights, Precision::F32, kernels_from_env())?;
    let (w, h) = base.crop_size();
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
    let made = VariantFiles::new(catalog, manifest, options, quantizer)?;
    let variant = Embedder::load(
        &made.unchecked_manifest()?,
        &made.weights,
        Precision::F32,
        kernels_from_env(),
    )?;
    progress(format!(
        "checking {} against {id} on {} held-out crops",
        made.id,
        held_out.len()
    ));
    let mut cosines = Vec::with_capacity(held_out.len());
    for crop in &held_out {
        cosines.push(cosine(&base.embed_crop(crop)?, &variant.embed_crop(crop)?));
    }
    let mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    let min = cosines.iter().copied().fold(f32::INFINITY, f32::min);
    if mean < options.min_cosine {
        bail!(
            "the int8 variant's embeddings of {} held-out crops have a mean cosine of {mean:.5} (min {min:.5}) to {id}'s, under --min-cosine {}: it would not recognise the same people; nothing written",
            held_out.len(),
            options.min_cosine
        );
    }
    let crops = held_out.len();
    made.write(skipped_files, Check::Cosine { crops, mean, min })
}

/// A variant being made: its id, file names and weights, and what its manifest is made from.
struct VariantFiles<'a> {
    id: String,
    base: &'a Manifest,
    base_text: &'a str,
    base_bytes: usize,
    out_dir: PathBuf,
    weights_name: String,
    made_by: String,
    /// The new weights, under the path they will be written to.
    weights: VerifiedWeights,
    qdq: QdqSummary,
}

/// What the quantizer reports besides the bytes.
struct QdqSummary {
    calibration_inputs: usize,
    activations: usize,
    weights: usize,
    folded_activations: usize,
}

impl<'a> VariantFiles<'a> {
    /// Finishes the quantization of `base` (calibrated) and names its files.
    fn new(
        catalog: &'a Catalog,
        base: &'a Manifest,
        options: &QuantizeOptions,
        quantizer: QdqQuantizer,
    ) -> anyhow::Result<VariantFiles<'a>> {
        let base_weights = catalog.read_verified(base)?;
        let qdq = quantizer
            .finish()
            .with_context(|| format!("{}", base_weights.path.display()))?;
        let out_dir = options
            .out_dir
            .clone()
            .unwrap_or_else(|| catalog.models_dir().to_path_buf());
        let stem = Path::new(&base.weights)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or(&base.id);
        let weights_name = format!("{stem}.{METHOD}.onnx");
        let base_text = catalog
            .manifest_text(&base.id)
            .context("the base manifest's text is not known")?;
        Ok(VariantFiles {
            id: format!("{}-{METHOD}", base.id),
            base,
            base_text,
            base_bytes: base_weights.bytes.len(),
            weights: VerifiedWeights {
                path: out_dir.join(&weights_name),
                sha256: sha256_hex(&qdq.bytes),
                bytes: qdq.bytes,
            },
            out_dir,
            weights_name,
            made_by: made_by(&base.id, options),
            qdq: QdqSummary {
                calibration_inputs: qdq.calibration_inputs,
                activations: qdq.activations,
                weights: qdq.weights,
                folded_activations: qdq.folded_activations,
            },
        })
    }

    /// The manifest's text, recording `check` when it passed.
    fn manifest_text(&self, check: Option<&Check>) -> String {
        variant_manifest(
            self.base_text,
            self.base,
            &self.weights_name,
            &self.weights.sha256,
            &self.made_by,
            check,
        )
    }

    /// The manifest without a check, to load the variant with for checking it.
    fn unchecked_manifest(&self) -> anyhow::Result<Manifest> {
        let text = self.manifest_text(None);
        Ok(Manifest::parse(
            &text,
            &format!("the manifest made for {}", self.id),
        )?)
    }

    /// Writes the weights and the manifest recording `check` (which passed): the variant may then
    /// run in the base's place (`models.variant`).
    fn write(self, skipped_files: usize, check: Check) -> anyhow::Result<QuantizeReport> {
        let text = self.manifest_text(Some(&check));
        // The weights first: a manifest never names a file that is not there yet. Each through a
        // temporary file, fsync and rename (an interrupted run leaves the old file or none),
        // readable like fetched weights.
        write_atomically_with_mode(
            &self.out_dir,
            &self.weights_name,
            &self.weights.bytes,
            0o644,
        )?;
        let manifest_name = format!("{}.toml", self.id);
        write_atomically_with_mode(&self.out_dir, &manifest_name, text.as_bytes(), 0o644)?;
        Ok(QuantizeReport {
            manifest_path: self.out_dir.join(manifest_name),
            weights_path: self.weights.path,
            bytes: self.weights.bytes.len(),
            base_bytes: self.base_bytes,
            sha256: self.weights.sha256,
            id: self.id,
            calibration_inputs: self.qdq.calibration_inputs,
            skipped_files,
            check,
            activations: self.qdq.activations,
            weights: self.qdq.weights,
            folded_activations: self.qdq.folded_activations,
        })
    }
}

/// The detector's side of `quantize`: calibrated on photos (any size; each scaled as the detector
/// scales frames at the default detection size, then zero-padded to one square shape, as the network
/// pads frames), checked on held-out photos by how many faces the variant and the base find alike
/// (`FaceAgreement`), both at the default detection size and score threshold.
fn quantize_detector(
    catalog: &Catalog,
    manifest: &Manifest,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(String),
) -> anyhow::Result<QuantizeReport> {
    let id = &manifest.id;
    let weights = catalog.read_verified(manifest)?;
    let settings = DetectSettings::default();
    let mut base = Detector::new(manifest, &weights, &settings, kernels_from_env())?;
    let multiple = manifest.detector.as_ref().map_or(1, |d| d.input_multiple) as usize;
    let side = (settings.max_side as usize).next_multiple_of(multiple.max(1));
    let mut quantizer = QdqQuantizer::with_heads(&weights.bytes, &[1, 3, side, side], Heads::F32)
        .with_context(|| format!("{}", weights.path.display()))?;
    progress(format!(
        "calibrating {} activations of {id} on photos from {} (scaled to at most {} px, padded to {side}x{side})",
        quantizer.activation_count(),
        options.calibration.display(),
        settings.max_side
    ));
    let mut held_out = vec![];
    let mut calibrated = 0;
    let photos = expand_inputs(std::slice::from_ref(&options.calibration));
    for (n, path) in photos.into_iter().enumerate() {
        if calibrated >= options.limit {
            break;
        }
        if options.check.is_none() && (n + 1).is_multiple_of(HOLD_OUT_EVERY) {
            held_out.push(path);
            continue;
        }
        let photo = load_rgb(&path)?;
        let tensor = base
            .square_input_tensor(&photo, side)
            .with_context(|| format!("{}: larger than {side}x{side}", path.display()))?;
        quantizer
            .observe(tensor)
            .with_context(|| format!("{}", path.display()))?;
        calibrated += 1;
        if calibrated.is_multiple_of(50) {
            progress(format!("calibrated on {calibrated} photos"));
        }
    }
    if calibrated == 0 {
        bail!(
            "{}: no photos to calibrate on",
            options.calibration.display()
        );
    }
    if let Some(dir) = &options.check {
        held_out = expand_inputs(std::slice::from_ref(dir));
        held_out.truncate(options.limit);
    }
    if held_out.is_empty() {
        bail!(
            "no photos left to check the variant on: give --check DIR or at least {HOLD_OUT_EVERY} calibration photos"
        );
    }
    let made = VariantFiles::new(catalog, manifest, options, quantizer)?;
    let mut variant = Detector::new(
        &made.unchecked_manifest()?,
        &made.weights,
        &settings,
        kernels_from_env(),
    )?;
    progress(format!(
        "checking {} against {id} on {} held-out photos",
        made.id,
        held_out.len()
    ));
    let mut agreement = FaceAgreement::default();
    for path in &held_out {
        let photo = load_rgb(path)?;
        let detect = |d: &mut Detector| {
            d.detect(&photo)
                .with_context(|| format!("{}", path.display()))
        };
        let reference = detect(&mut base)?;
        agreement.add(&reference, &detect(&mut variant)?);
    }
    let Some(share) = agreement.share() else {
        bail!(
            "neither {id} nor its int8 variant finds a face in the {} check photos: nothing to check it on; nothing written",
            held_out.len()
        );
    };
    if share < options.min_agreement {
        bail!(
            "the int8 variant finds {} of {id}'s {} faces in {} held-out photos ({} faces in all): {:.1} % alike, under --min-agreement {}: it would not find the same people; nothing written",
            agreement.alike,
            agreement.reference_faces,
            held_out.len(),
            agreement.other_faces,
            100.0 * share,
            options.min_agreement
        );
    }
    let photos = held_out.len();
    made.write(0, Check::Faces { photos, agreement })
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
    check: Option<&Check>,
) -> String {
    let mut lines = vec![format!(
        "# Made by `{made_by}` on this machine: int8 per-channel weights, uint8 activations calibrated\n# (min/max) on the crops or photos named there. Not to be shared where the base model's licence forbids it."
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
    match check {
        Some(Check::Cosine { mean, .. }) => lines.push(format!("checked_cosine = {mean:.5}")),
        Some(Check::Faces { agreement, .. }) => {
            let share = agreement.share().unwrap_or_default();
            lines.push(format!("checked_agreement = {share:.5}"));
        }
        None => {}
    }
    lines.push(String::new());
    lines.join("\n")
}

fn quote(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}
