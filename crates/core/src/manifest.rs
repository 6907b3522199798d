//! Model manifests (`models/<id>.toml`): what a weights file is, where it comes from, and the exact
//! input/output contract face-edge must honour to run it. Parsed strictly and validated on load.

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{source_name}: {message}")]
    Parse {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: {field}: {message}")]
    Invalid {
        source_name: String,
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Detector,
    Embedder,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub id: String,
    pub role: Role,
    pub description: String,
    /// File name of the weights inside the models directory.
    pub weights: String,
    #[serde(default)]
    pub sha256: Option<String>,
    /// Git blob id (sha1 of `"blob <len>\0" + content`), for upstreams that publish no sha256.
    #[serde(default)]
    pub git_blob_sha1: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    pub license: License,
    #[serde(default)]
    pub detector: Option<DetectorSpec>,
    #[serde(default)]
    pub embedder: Option<EmbedderSpec>,
    /// Set when the weights were derived from another model (`face-edge models quantize` and
    /// models/quantize.py write it).
    #[serde(default)]
    pub variant: Option<Variant>,
}

/// How a variant was made (`face-edge models quantize` or models/quantize.py).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VariantMethod {
    /// int8 weights behind DequantizeLinear, f32 activations.
    Int8Weights,
    /// Static quantisation, QDQ format (onnxruntime's, or face-edge's own recipe after it).
    Int8Qdq,
}

/// Where a derived model (an int8 or smaller copy of another) comes from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// id of the model it was made from.
    pub base: String,
    pub method: VariantMethod,
    /// The command that made the weights, so a user without them can make the same file.
    pub made_by: String,
    /// The mean cosine of the variant's embeddings to the base model's on the crops its maker
    /// checked it on (`face-edge models quantize`: held-out crops). A variant that records one of at
    /// least `MIN_CHECKED_COSINE` may run in its base's place (`checked_int8_variants`).
    #[serde(default)]
    pub checked_cosine: Option<f32>,
    /// For a detector: how alike the variant's and the base's faces were on the photos its maker
    /// checked it on, as 2 x faces found by both (IoU >= 0.5) / (faces of one + faces of the
    /// other). A variant that records at least `MIN_CHECKED_AGREEMENT` may run in its base's place.
    #[serde(default)]
    pub checked_agreement: Option<f32>,
}

impl Variant {
    /// The recorded check that decides whether a variant of a `role` model may replace its base.
    pub fn check(&self, role: Role) -> Option<f32> {
        match role {
            Role::Embedder => self.checked_cosine,
            Role::Detector => self.checked_agreement,
        }
    }
}

/// The lowest recorded check for an int8 variant to run in place of its base by default: the
/// threshold `face-edge models quantize` and models/quantize.py refuse variants under unless told
/// otherwise.
pub const MIN_CHECKED_COSINE: f32 = 0.98;

/// The same for a detector's variant (`Variant::checked_agreement`), the bound `face-edge models
/// quantize` refuses detector variants under unless told otherwise.
pub const MIN_CHECKED_AGREEMENT: f32 = 0.95;

/// The lowest check a variant of a `role` model needs to run in its base's place.
pub fn min_check(role: Role) -> f32 {
    match role {
        Role::Embedder => MIN_CHECKED_COSINE,
        Role::Detector => MIN_CHECKED_AGREEMENT,
    }
}

/// The int8-qdq variants of model `base` (an embedder or a detector) among `manifests` whose
/// recorded check passed (`min_check` of their role), the best checked first (ties by id, so the
/// choice never depends on order). Whether their weights are present is the caller's to see.
pub fn checked_int8_variants<'a>(
    manifests: impl IntoIterator<Item = &'a Manifest>,
    base: &str,
) -> Vec<&'a Manifest> {
    let mut found: Vec<(&Manifest, f32)> = manifests
        .into_iter()
        .filter_map(|m| {
            let v = m.variant.as_ref()?;
            let check = v.check(m.role)?;
            (v.base == base && v.method == VariantMethod::Int8Qdq && check >= min_check(m.role))
                .then_some((m, check))
        })
        .collect();
    found.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
    found.into_iter().map(|(m, _)| m).collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct License {
    pub name: String,
    /// false: face-edge must never ship the weights and shows `terms` before fetching them.
    pub redistributable: bool,
    pub terms: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectorKind {
    Yunet,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    pub kind: DetectorKind,
    pub color: ColorOrder,
    pub input_multiple: u32,
    pub strides: Vec<u32>,
    pub score_threshold: f32,
    pub nms_iou: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedderSpec {
    /// [width, height] of the network input, which is also the aligned crop size.
    pub input_size: [u32; 2],
    pub layout: Layout,
    pub color: ColorOrder,
    pub normalization: Normalization,
    pub alignment: Alignment,
    pub output: OutputSpec,
    #[serde(default)]
    pub display: Option<DisplayCalibration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PixelUnits {
    /// mean/std (or offset) are stated for pixels scaled to 0..1.
    #[serde(rename = "0..1")]
    Unit,
    /// mean/std (or offset) are stated for raw 0..255 pixels.
    #[serde(rename = "0..255")]
    Byte,
}

/// Either `(x - mean) / std` or `(x - offset) * scale`, per channel in the model's colour order, with x in
/// `units`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    pub units: PixelUnits,
    #[serde(default)]
    pub mean: Option<[f32; 3]>,
    #[serde(default)]
    pub std: Option<[f32; 3]>,
    #[serde(default)]
    pub offset: Option<[f32; 3]>,
    #[serde(default)]
    pub scale: Option<[f32; 3]>,
}

impl Normalization {
    /// Per-channel (gain, bias) such that value = gain * byte + bias for a 0..255 byte.
    pub fn affine_per_channel(&self) -> [(f32, f32); 3] {
        let unit = match self.units {
            PixelUnits::Unit => 1.0 / 255.0,
            PixelUnits::Byte => 1.0,
        };
        let (offset, scale) = match (self.mean, self.std, self.offset, self.scale) {
            (Some(m), Some(s), _, _) => (m, s.map(|s| 1.0 / s)),
            (_, _, Some(o), Some(s)) => (o, s),
            _ => unreachable!("validated: mean/std or offset/scale present"),
        };
        std::array::from_fn(|c| (unit * scale[c], -offset[c] * scale[c]))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alignment {
    /// The five landmarks (image-left eye, image-right eye, nose, image-left and image-right mouth corner)
    /// in output-crop pixels.
    pub template: [[f32; 2]; 5],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub dim: usize,
    pub metric: Metric,
    /// Default same-person threshold on the metric.
    pub threshold: f32,
    /// Mean and standard deviation of the similarity between photos of different people, measured on
    /// a public face set; they anchor the gallery's calibrated threshold when the gallery has few
    /// people. Unset: centred on 0 with the threshold three deviations above.
    #[serde(default)]
    pub impostor_mean: Option<f32>,
    #[serde(default)]
    pub impostor_sd: Option<f32>,
}

impl OutputSpec {
    pub fn stranger_model(&self) -> crate::gallery::StrangerModel {
        let guess = crate::gallery::StrangerModel::from(self.threshold);
        crate::gallery::StrangerModel {
            threshold: self.threshold,
            impostor_mean: self.impostor_mean.unwrap_or(guess.impostor_mean),
            impostor_sd: self.impostor_sd.unwrap_or(guess.impostor_sd),
        }
    }
}

/// A presentation score derived from the cosine, e.g. FACE01's "percentage".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayCalibration {
    pub label: String,
    /// Coefficients from the constant term up: c0 + c1*x + c2*x^2 + ...
    pub polynomial: Vec<f32>,
    pub unit: String,
}

impl DisplayCalibration {
    /// The display value for a cosine, clamped to 0..100 when the unit is a percentage.
    pub fn apply(&self, cosine: f32) -> f32 {
        let value = self
            .polynomial
            .iter()
            .rev()
            .fold(0.0f32, |acc, c| acc * cosine + c);
        if self.unit == "%" {
            value.clamp(0.0, 100.0)
        } else {
            value
        }
    }
}

impl Manifest {
    /// Parses and validates a manifest; `source_name` (a path or "builtin:<id>") names it in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            source_name: source_name.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        manifest.validate(source_name)?;
        Ok(manifest)
    }

    pub fn embedder_spec(&self) -> Option<&EmbedderSpec> {
        self.embedder.as_ref()
    }

    fn validate(&self, source_name: &str) -> Result<(), ManifestError> {
        let problem = self
            .identity_problem()
            .err()
            .or_else(|| self.checksum_problem().err())
            .or_else(|| self.role_problem().err());
        match problem {
            Some((field, message)) => Err(ManifestError::Invalid {
                source_name: source_name.to_string(),
                field,
                message,
            }),
            None => Ok(()),
        }
    }

    /// The id, the weights' file name and the variant's base.
    fn identity_problem(&self) -> Result<(), FieldError> {
        let is_slug = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        };
        if !is_slug(&self.id) {
            return Err((
                "id",
                format!(
                    "{:?} must be lowercase letters, digits, '-' or '_'",
                    self.id
                ),
            ));
        }
        if self.weights.is_empty() || self.weights.contains('/') || self.weights.contains('\\') {
            return Err((
                "weights",
                format!("{:?} must be a plain file name", self.weights),
            ));
        }
        if let Some(v) = &self.variant
            && !is_slug(&v.base)
        {
            return Err((
                "variant.base",
                format!("{:?} must be the id of the model it was made from", v.base),
            ));
        }
        if let Some(c) = self.variant.as_ref().and_then(|v| v.checked_cosine)
            && !(-1.0..=1.0).contains(&c)
        {
            return Err((
                "variant.checked_cosine",
                format!("{c} is not a cosine (-1 to 1)"),
            ));
        }
        if let Some(a) = self.variant.as_ref().and_then(|v| v.checked_agreement)
            && !(0.0..=1.0).contains(&a)
        {
            return Err((
                "variant.checked_agreement",
                format!("{a} is not a share of faces (0 to 1)"),
            ));
        }
        Ok(())
    }

    fn checksum_problem(&self) -> Result<(), FieldError> {
        let is_hex =
            |s: &str, len: usize| s.len() == len && s.chars().all(|c| c.is_ascii_hexdigit());
        match (&self.sha256, &self.git_blob_sha1) {
            (None, None) => Err((
                "sha256",
                "a manifest needs sha256 or git_blob_sha1".to_string(),
            )),
            (Some(s), _) if !is_hex(s, 64) => {
                Err(("sha256", format!("{s:?} is not 64 hex digits")))
            }
            (_, Some(s)) if !is_hex(s, 40) => {
                Err(("git_blob_sha1", format!("{s:?} is not 40 hex digits")))
            }
            _ => Ok(()),
        }
    }

    fn role_problem(&self) -> Result<(), FieldError> {
        match (self.role, &self.detector, &self.embedder) {
            (Role::Detector, Some(d), None) => validate_detector(d),
            (Role::Embedder, None, Some(e)) => validate_embedder(e),
            (Role::Detector, _, _) => Err((
                "role",
                "a detector needs a [detector] section and no [embedder]".to_string(),
            )),
            (Role::Embedder, _, _) => Err((
                "role",
                "an embedder needs an [embedder] section and no [detector]".to_string(),
            )),
        }
    }
}

type FieldError = (&'static str, String);

fn validate_detector(d: &DetectorSpec) -> Result<(), FieldError> {
    if d.input_multiple == 0 || d.strides.is_empty() {
        return Err((
            "detector.strides",
            "input_multiple and strides must be non-zero".into(),
        ));
    }
    if let Some(s) = d
        .strides
        .iter()
        .find(|&&s| s == 0 || !d.input_multiple.is_multiple_of(s))
    {
        return Err((
            "detector.strides",
            format!(
                "stride {s} does not divide input_multiple {}",
                d.input_multiple
            ),
        ));
    }
    if !(0.0..=1.0).contains(&d.score_threshold) {
        return Err((
            "detector.score_threshold",
            format!("{} is outside 0..1", d.score_threshold),
        ));
    }
    if !(0.0..=1.0).contains(&d.nms_iou) {
        return Err(("detector.nms_iou", format!("{} is outside 0..1", d.nms_iou)));
    }
    Ok(())
}

fn validate_embedder(e: &EmbedderSpec) -> Result<(), FieldError> {
    let [w, h] = e.input_size;
    if w == 0 || h == 0 || w > 4096 || h > 4096 {
        return Err((
            "embedder.input_size",
            format!("{w}x{h} is not a plausible input size"),
        ));
    }
    let n = &e.normalization;
    let divisors = match (n.mean, n.std, n.offset, n.scale) {
        (Some(_), Some(std), None, None) => std,
        (None, None, Some(_), Some(scale)) => scale,
        _ => {
            return Err((
                "embedder.normalization",
                "give either mean and std, or offset and scale (not both, not one alone)".into(),
            ));
        }
    };
    if divisors.iter().any(|v| !v.is_finite() || *v == 0.0) {
        return Err((
            "embedder.normalization",
            "std/scale values must be finite and non-zero".into(),
        ));
    }
    if e.alignment
        .template
        .iter()
        .flatten()
        .any(|v| !v.is_finite())
    {
        return Err((
            "embedder.alignment.template",
            "points must be finite".into(),
        ));
    }
    if e.output.dim == 0 {
        return Err(("embedder.output.dim", "must be at least 1".into()));
    }
    if !(-1.0..=1.0).contains(&e.output.threshold) {
        return Err((
            "embedder.output.threshold",
            format!("{} is outside -1..1", e.output.threshold),
        ));
    }
    if let Some(m) = e.output.impostor_mean
        && !(-1.0..=1.0).contains(&m)
    {
        return Err((
            "embedder.output.impostor_mean",
            format!("{m} is outside -1..1"),
        ));
    }
    if let Some(sd) = e.output.impostor_sd
        && !(sd > 0.0 && sd <= 1.0)
    {
        return Err((
            "embedder.output.impostor_sd",
            format!("{sd} is not in (0, 1]"),
        ));
    }
    if let Some(d) = &e.display
        && d.polynomial.is_empty()
    {
        return Err((
            "embedder.display.polynomial",
            "needs at least one coefficient".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILTIN: &str = include_str!("../../../models/japanese-face-v1.toml");

    #[test]
    fn japanese_face_manifest_carries_the_face01_contract() {
        let m = Manifest::parse(BUILTIN, "builtin").unwrap();
        let e = m.embedder_spec().unwrap();
        assert_eq!(e.input_size, [224, 224]);
        assert_eq!(e.output.dim, 512);
        assert!(!m.license.redistributable);
        // x/255 then ImageNet mean/std: byte 255 on the red channel gives (1 - 0.485) / 0.229.
        let (g, b) = e.normalization.affine_per_channel()[0];
        assert!((g * 255.0 + b - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        let pct = e.display.as_ref().unwrap();
        assert!((pct.apply(0.4) - (-23.71 * 0.16 + 49.98 * 0.4 + 73.69)).abs() < 1e-4);
        assert_eq!(pct.apply(-1.0), 0.0);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let text = BUILTIN.replace("threshold = 0.4", "threshold = 0.4\nthreshhold = 0.5");
        let err = Manifest::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(
            err.contains("threshhold") && err.contains("x.toml"),
            "{err}"
        );
    }

    #[test]
    fn half_given_normalization_is_refused() {
        let text = BUILTIN.replace("std = [0.229, 0.224, 0.225]\n", "");
        let err = Manifest::parse(&text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("embedder.normalization"), "{err}");
    }

    #[test]
    fn offset_scale_form_matches_mean_std_form() {
        let text = include_str!("../../../models/mobilefacenet.toml")
            .replace(
                "mean = [127.0, 127.0, 127.0]",
                "offset = [127.0, 127.0, 127.0]",
            )
            .replace(
                "std = [128.0, 128.0, 128.0]",
                "scale = [0.0078125, 0.0078125, 0.0078125]",
            );
        let a = Manifest::parse(&text, "a").unwrap();
        let b = Manifest::parse(include_str!("../../../models/mobilefacenet.toml"), "b").unwrap();
        assert_eq!(
            a.embedder_spec()
                .unwrap()
                .normalization
                .affine_per_channel(),
            b.embedder_spec()
                .unwrap()
                .normalization
                .affine_per_channel()
        );
    }

    #[test]
    fn a_variant_names_its_base_and_a_known_method() {
        let text = include_str!("../../../models/mobilefacenet-int8-weights.toml");
        let v = Manifest::parse(text, "v").unwrap().variant.unwrap();
        assert_eq!(
            (v.base.as_str(), v.method),
            ("mobilefacenet", VariantMethod::Int8Weights)
        );
        let bad = text.replace("method = \"int8-weights\"", "method = \"int4\"");
        let err = Manifest::parse(&bad, "v.toml").unwrap_err().to_string();
        assert!(err.contains("v.toml") && err.contains("int4"), "{err}");
        let bad = text.replace("base = \"mobilefacenet\"", "base = \"Mobile FaceNet\"");
        let err = Manifest::parse(&bad, "v.toml").unwrap_err().to_string();
        assert!(err.contains("variant.base"), "{err}");
    }

    #[test]
    fn only_a_checked_int8_qdq_variant_of_the_base_may_replace_it() {
        let base = include_str!("../../../models/mobilefacenet-int8-qdq.toml");
        let with = |id: &str, extra: &str| {
            let text = base
                .replace("id = \"mobilefacenet-int8-qdq\"", &format!("id = \"{id}\""))
                .replace("[variant]", &format!("[variant]\n{extra}"));
            Manifest::parse(&text, id).unwrap()
        };
        let unchecked = with("a", "");
        let low = with("b", "checked_cosine = 0.97");
        let good = with("c", "checked_cosine = 0.99");
        let better = with("d", "checked_cosine = 0.995");
        let weights_only = {
            let text = include_str!("../../../models/mobilefacenet-int8-weights.toml")
                .replace("[variant]", "[variant]\nchecked_cosine = 0.999");
            Manifest::parse(&text, "w").unwrap()
        };
        let all = [&unchecked, &low, &good, &better, &weights_only];
        let ids = |base: &str| -> Vec<String> {
            checked_int8_variants(all.iter().copied(), base)
                .iter()
                .map(|m| m.id.clone())
                .collect()
        };
        assert_eq!(ids("mobilefacenet"), ["d", "c"]);
        assert!(ids("japanese-face-v1").is_empty());
        // An embedder's variant is judged by its cosine, a detector's by its agreement.
        let agreeing = with("e", "checked_agreement = 0.999");
        let detector = |id: &str, agreement: &str| {
            let text = include_str!("../../../models/yunet-2023mar.toml")
                .replace("id = \"yunet-2023mar\"", &format!("id = \"{id}\""))
                .replace("url =", "# url =")
                + &format!(
                    "\n[variant]\nbase = \"yunet-2023mar\"\nmethod = \"int8-qdq\"\nmade_by = \"x\"\n{agreement}\n"
                );
            Manifest::parse(&text, id).unwrap()
        };
        let (fair, close, cosine_only) = (
            detector("f", "checked_agreement = 0.94"),
            detector("g", "checked_agreement = 0.97"),
            detector("h", "checked_cosine = 0.999"),
        );
        let all = [&agreeing, &good, &fair, &close, &cosine_only];
        let ids = |base: &str| -> Vec<String> {
            checked_int8_variants(all.iter().copied(), base)
                .iter()
                .map(|m| m.id.clone())
                .collect()
        };
        assert_eq!(ids("mobilefacenet"), ["c"]);
        assert_eq!(ids("yunet-2023mar"), ["g"]);
        for value in ["1.5", "-0.1", "nan"] {
            let bad = base.replace(
                "[variant]",
                &format!("[variant]\nchecked_agreement = {value}"),
            );
            let err = Manifest::parse(&bad, "v.toml").unwrap_err().to_string();
            assert!(err.contains("variant.checked_agreement"), "{value}: {err}");
        }
        for value in ["1.5", "-2.0", "nan", "inf"] {
            let bad = base.replace("[variant]", &format!("[variant]\nchecked_cosine = {value}"));
            let err = Manifest::parse(&bad, "v.toml").unwrap_err().to_string();
            assert!(err.contains("variant.checked_cosine"), "{value}: {err}");
        }
    }

    #[test]
    fn a_checksum_is_required() {
        let text =
            include_str!("../../../models/mobilefacenet.toml").replace("sha256 =", "# sha256 =");
        let err = Manifest::parse(&text, "m").unwrap_err().to_string();
        assert!(err.contains("sha256"), "{err}");
    }
}
