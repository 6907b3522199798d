//! Face embedding: an aligned crop -> the manifest's normalisation and layout -> the ONNX embedder on
//! tract (fixed input shape) -> an L2-normalised vector, plus the cosine and display helpers around it.

use crate::align;
use crate::error::ModelError;
use crate::inference::{
    Kernels, OnnxModel, Plan, Precision, VerifiedWeights, check_declared_input,
    cpu_has_half_precision, f32_values,
};
use crate::manifest::{ColorOrder, EmbedderSpec, Manifest};
use image::RgbImage;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedder inference failed: {0:#}")]
    Inference(TractError),
    #[error("crop is {actual_w}x{actual_h}, the embedder takes {w}x{h}")]
    CropSize {
        actual_w: u32,
        actual_h: u32,
        w: u32,
        h: u32,
    },
    #[error("landmarks are degenerate (all in one point); cannot align")]
    Degenerate,
    #[error("embedder output is all zeros or not finite")]
    BadOutput,
}

pub struct Embedder {
    id: String,
    spec: EmbedderSpec,
    /// sha256 of the weights: identifies the model in stores and events.
    weights_sha256: String,
    plan: Plan,
    precision: Precision,
}

impl Embedder {
    /// Loads the weights into a plan specialised to the manifest's input size, running in `precision`;
    /// refuses a model whose declared input or actual output disagrees with the manifest, and f16 on
    /// CPUs without half-precision arithmetic.
    pub fn load(
        manifest: &Manifest,
        weights: &VerifiedWeights,
        precision: Precision,
        kernels: Kernels,
    ) -> Result<Embedder, ModelError> {
        if precision == Precision::F16 && !cpu_has_half_precision() {
            return Err(ModelError::NoHalfPrecision {
                id: manifest.id.clone(),
            });
        }
        let spec = manifest
            .embedder
            .clone()
            .ok_or_else(|| ModelError::WrongRole {
                id: manifest.id.clone(),
                actual: "detector",
                wanted: "embedder",
            })?;
        let model = OnnxModel::parse(weights, kernels)?;
        let [w, h] = spec.input_size;
        let shape = [1, 3, h as usize, w as usize];
        check_declared_input(&model, &manifest.id, &shape)?;
        let contract = |message: String| ModelError::Contract {
            path: weights.path.clone(),
            id: manifest.id.clone(),
            message,
        };
        let plan = model
            .plan_with_precision(&shape, precision)
            .map_err(|e| match e {
                ModelError::Onnx { message, .. } => {
                    contract(format!("it does not accept a 1x3x{h}x{w} input: {message}"))
                }
                other => other,
            })?;
        let out_fact = plan
            .model()
            .output_fact(0)
            .map_err(|e| contract(format!("{e:#}")))?;
        let out_len = out_fact
            .shape
            .as_concrete()
            .map(|s| s.iter().product::<usize>());
        if out_len != Some(spec.output.dim) {
            return Err(contract(format!(
                "output shape is {:?} but the manifest says {} values",
                out_fact.shape, spec.output.dim
            )));
        }
        Ok(Embedder {
            id: manifest.id.clone(),
            spec,
            weights_sha256: weights.sha256.clone(),
            plan,
            precision,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> &EmbedderSpec {
        &self.spec
    }

    pub fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }

    pub fn crop_size(&self) -> (u32, u32) {
        (self.spec.input_size[0], self.spec.input_size[1])
    }

    /// Warps the face in `frame` onto this model's template.
    pub fn align(
        &self,
        frame: &RgbImage,
        landmarks: &[[f32; 2]; 5],
    ) -> Result<RgbImage, EmbedError> {
        let (w, h) = self.crop_size();
        align::align_face(frame, landmarks, &self.spec.alignment.template, w, h)
            .ok_or(EmbedError::Degenerate)
    }

    /// The network input for an aligned crop of exactly the model's input size: NCHW, normalised.
    pub fn input_tensor(&self, crop: &RgbImage) -> Result<Tensor, EmbedError> {
        let (w, h) = self.crop_size();
        if crop.dimensions() != (w, h) {
            return Err(EmbedError::CropSize {
                actual_w: crop.width(),
                actual_h: crop.height(),
                w,
                h,
            });
        }
        Ok(crop_to_tensor(crop, &self.spec))
    }

    /// Embeds an aligned crop of exactly the model's input size; the result has unit L2 norm.
    pub fn embed_crop(&self, crop: &RgbImage) -> Result<Vec<f32>, EmbedError> {
        self.run_network(self.input_tensor(crop)?)
    }

    /// The network alone on an input made by `input_tensor`; the result has unit L2 norm.
    pub fn run_network(&self, input: Tensor) -> Result<Vec<f32>, EmbedError> {
        let input = match self.precision {
            Precision::F32 => input,
            Precision::F16 => input
                .cast_to::<f16>()
                .map_err(EmbedError::Inference)?
                .into_owned(),
        };
        let out = self
            .plan
            .run(tvec!(input.into_tvalue()))
            .map_err(EmbedError::Inference)?;
        let out = out[0].cast_to::<f32>().map_err(EmbedError::Inference)?;
        let raw = f32_values(&out).map_err(EmbedError::Inference)?;
        l2_normalized(raw).ok_or(EmbedError::BadOutput)
    }

    /// The optimised network (for profiling).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Aligns and embeds one face of a frame.
    pub fn embed_face(
        &self,
        frame: &RgbImage,
        landmarks: &[[f32; 2]; 5],
    ) -> Result<Vec<f32>, EmbedError> {
        self.embed_crop(&self.align(frame, landmarks)?)
    }

    /// The model's display value for a cosine (e.g. FACE01's percentage), if its manifest defines one.
    pub fn display(&self, cosine: f32) -> Option<(f32, &str, &str)> {
        self.spec
            .display
            .as_ref()
            .map(|d| (d.apply(cosine), d.label.as_str(), d.unit.as_str()))
    }
}

/// NCHW tensor in the model's colour order with value = gain * byte + bias per channel.
fn crop_to_tensor(crop: &RgbImage, spec: &EmbedderSpec) -> Tensor {
    let (w, h) = (crop.width() as usize, crop.height() as usize);
    let plane = w * h;
    let affine = spec.normalization.affine_per_channel();
    // Output channel c reads source channel order[c]; the manifest's mean/std are in the model's order.
    let order: [usize; 3] = match spec.color {
        ColorOrder::Rgb => [0, 1, 2],
        ColorOrder::Bgr => [2, 1, 0],
    };
    let mut data = vec![0f32; 3 * plane];
    for (i, px) in crop.as_raw().chunks_exact(3).enumerate() {
        for c in 0..3 {
            let (gain, bias) = affine[c];
            data[c * plane + i] = gain * px[order[c]] as f32 + bias;
        }
    }
    Tensor::from_shape(&[1, 3, h, w], &data).expect("shape matches data length")
}

/// `v / |v|`, or None for a zero or non-finite vector.
pub fn l2_normalized(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm <= f32::MIN_POSITIVE {
        return None;
    }
    Some(v.iter().map(|x| x / norm).collect())
}

/// Cosine similarity of two vectors (for unit vectors, their dot product).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    #[test]
    fn imagenet_preprocessing_matches_the_contract() {
        let m =
            Manifest::parse(include_str!("../../../models/japanese-face-v1.toml"), "t").unwrap();
        let spec = m.embedder.unwrap();
        let crop = RgbImage::from_pixel(2, 1, image::Rgb([255, 0, 128]));
        let t = crop_to_tensor(&crop, &spec);
        let d = f32_values(&t).unwrap();
        assert!((d[0] - (1.0 - 0.485) / 0.229).abs() < 1e-5);
        assert!((d[2] - (0.0 - 0.456) / 0.224).abs() < 1e-5);
        assert!((d[4] - (128.0 / 255.0 - 0.406) / 0.225).abs() < 1e-5);
    }

    #[test]
    fn arcface_preprocessing_is_x_minus_127_over_128() {
        let m = Manifest::parse(include_str!("../../../models/mobilefacenet.toml"), "t").unwrap();
        let crop = RgbImage::from_pixel(1, 1, image::Rgb([255, 127, 0]));
        let d = f32_values(&crop_to_tensor(&crop, &m.embedder.unwrap()))
            .unwrap()
            .to_vec();
        assert_eq!(d, vec![1.0, 0.0, -127.0 / 128.0]);
    }

    #[test]
    fn normalisation_and_cosine() {
        let v = l2_normalized(&[3.0, 4.0]).unwrap();
        assert_eq!(v, vec![0.6, 0.8]);
        assert!(l2_normalized(&[0.0, 0.0]).is_none());
        assert!(l2_normalized(&[f32::NAN, 1.0]).is_none());
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
    }
}
