//! Thin helpers over tract shared by the detector and the embedders: parse verified ONNX bytes, read the
//! input shape the file declares, and build an optimised plan for one fixed input shape.

use crate::error::ModelError;
use std::path::PathBuf;
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

pub type Plan = Arc<TypedSimplePlan>;

/// Arithmetic the embedder runs in. f16 halves memory traffic and doubles SIMD width on CPUs with
/// ARMv8.2 half-precision arithmetic; elsewhere it would be emulated and is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Precision, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(format!("{other:?}: precision is \"f32\" or \"f16\"")),
        }
    }
}

/// True when this CPU does half-precision arithmetic natively (aarch64 `fphp`/`asimdhp`).
pub fn cpu_has_half_precision() -> bool {
    face_edge_kernels::cpu_features().fp16
}

/// Which kernels f32 plans run: face-edge's own convolution and max-pool operators (`face-edge-kernels`)
/// swapped into tract's graph, or tract's alone (for comparing the two in `face-edge bench`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    #[default]
    FaceEdge,
    Tract,
}

/// Weights as the IO side read them, after it checked them against every checksum of their manifest.
/// The core never reads files: `path` only names the weights in error messages.
pub struct VerifiedWeights {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    /// The sha256 of `bytes`: the gallery keys its store on it and events name the model by it.
    pub sha256: String,
}

/// A parsed, not yet specialised ONNX model with the file it came from (for error messages).
#[derive(Clone)]
pub(crate) struct OnnxModel {
    pub path: PathBuf,
    pub model: InferenceModel,
    kernels: Kernels,
}

impl OnnxModel {
    pub fn parse(weights: &VerifiedWeights, kernels: Kernels) -> Result<OnnxModel, ModelError> {
        // Exported graphs often annotate intermediate values with a symbolic batch that would clash with the
        // fixed batch of 1 we set; tract infers every shape itself, so those annotations are dropped.
        let onnx = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .with_ignore_output_shapes(true);
        let model = onnx
            .model_for_read(&mut &weights.bytes[..])
            .map_err(|e| ModelError::Onnx {
                path: weights.path.clone(),
                message: format!("{e:#}"),
            })?;
        Ok(OnnxModel {
            path: weights.path.clone(),
            model,
            kernels,
        })
    }

    /// Dimensions of input 0 as the file declares them: `None` for symbolic or unknown ones.
    pub fn declared_input_dims(&self) -> Vec<Option<i64>> {
        match self.model.input_fact(0) {
            Ok(fact) => fact
                .shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
                .collect(),
            Err(_) => vec![],
        }
    }

    /// Names of the model outputs, in output order.
    pub fn output_names(&self) -> Vec<String> {
        let outlets = self
            .model
            .output_outlets()
            .map(|o| o.to_vec())
            .unwrap_or_default();
        outlets
            .iter()
            .map(|&o| {
                self.model
                    .outlet_label(o)
                    .unwrap_or(&self.model.node(o.node).name)
                    .to_string()
            })
            .collect()
    }

    /// Fixes input 0 to `shape` (f32) and optimises the graph into a runnable plan.
    pub fn plan_for_shape(&self, shape: &[usize]) -> Result<Plan, ModelError> {
        self.plan_with_precision(shape, Precision::F32)
    }

    /// As `plan_for_shape`; with `Precision::F16` the whole graph (weights, activations, input and
    /// output) is translated to half precision before optimisation, so tract picks its f16 kernels.
    pub fn plan_with_precision(
        &self,
        shape: &[usize],
        precision: Precision,
    ) -> Result<Plan, ModelError> {
        let onnx_err = |e: TractError| ModelError::Onnx {
            path: self.path.clone(),
            message: format!("{e:#}"),
        };
        let typed = self
            .model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_typed())
            .map_err(onnx_err)?;
        let typed = match precision {
            Precision::F32 if self.kernels == Kernels::FaceEdge => {
                face_edge_kernels::declutter(typed)
                    .and_then(|mut m| face_edge_kernels::install(&mut m).map(|_| m))
                    .map_err(onnx_err)?
            }
            Precision::F32 => typed,
            Precision::F16 => typed
                .into_decluttered()
                .and_then(|m| {
                    tract_onnx::tract_core::transform::get_transform("f32_to_f16")?
                        .ok_or_else(|| TractError::msg("tract has no f32_to_f16 transform"))?
                        .transform_into(m)
                })
                .map_err(onnx_err)?,
        };
        typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(onnx_err)
    }
}

/// Checks that every concrete declared input dim equals the expected one; symbolic dims pass.
pub(crate) fn check_declared_input(
    model: &OnnxModel,
    id: &str,
    expected: &[usize],
) -> Result<(), ModelError> {
    let declared = model.declared_input_dims();
    let fmt = |dims: Vec<String>| dims.join("x");
    let mismatch = declared.len() != expected.len()
        || declared
            .iter()
            .zip(expected)
            .any(|(d, &e)| d.is_some_and(|d| d != e as i64));
    if !declared.is_empty() && mismatch {
        return Err(ModelError::Contract {
            path: model.path.clone(),
            id: id.to_string(),
            message: format!(
                "input shape is {} but the manifest says {}",
                fmt(declared
                    .iter()
                    .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
                    .collect()),
                fmt(expected.iter().map(|d| d.to_string()).collect())
            ),
        });
    }
    Ok(())
}

/// The f32 values of a plain tensor.
pub fn f32_values(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}
