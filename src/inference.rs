//! Thin helpers over tract shared by the detector and the embedders: parse verified ONNX bytes, read the
//! input shape the file declares, and build an optimised plan for one fixed input shape.

use crate::models::{ModelError, VerifiedWeights};
use std::path::PathBuf;
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

pub type Plan = Arc<TypedSimplePlan>;

/// A parsed, not yet specialised ONNX model with the file it came from (for error messages).
#[derive(Clone)]
pub struct OnnxModel {
    pub path: PathBuf,
    pub model: InferenceModel,
}

impl OnnxModel {
    pub fn parse(weights: &VerifiedWeights) -> Result<OnnxModel, ModelError> {
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
        let onnx_err = |e: TractError| ModelError::Onnx {
            path: self.path.clone(),
            message: format!("{e:#}"),
        };
        self.model
            .clone()
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .map_err(onnx_err)
    }
}

/// Checks that every concrete declared input dim equals the expected one; symbolic dims pass.
pub fn check_declared_input(
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
