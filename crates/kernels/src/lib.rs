//! face-edge's own kernels for the operators where tract 0.23 spent the most time relative to
//! onnxruntime on our networks (`face-edge bench --profile`):
//! - 3x3 depthwise convolution (every MobileNet-style block of YuNet, MobileFaceNet and
//!   EfficientNetV2) and 2x2 max pooling (YuNet's backbone), on every CPU;
//! - with AVX-512 only (where they were measured faster than tract): 1x1 convolution from 28x28
//!   pixels, and the dense 3x3 convolution of a network's first layer (few input channels);
//! - in QDQ-quantized graphs (onnxruntime's static quantization: uint8 activations, int8 weights),
//!   which tract runs in f32 between a quantizer and a dequantizer at every layer: the same layers
//!   in integers with activations kept 8-bit between them (`rewrite_int8`, `ops::quantized`): 1x1
//!   and dense 3x3 convolutions as a uint8 x int8 product (`ops::int8_gemm`: SDOT on ARMv8.2 such
//!   as the Pi 5, SMULL/SADALP on the Pi 4's A72, VPDPBUSD with AVX512-VNNI), 3x3 depthwise, residual
//!   additions, and element-wise chains (SiLU, sigmoid) as tables of 256 values.
//!
//! The bias addition and the ReLU or clip after a convolution are folded into it. They are tract
//! operators: `install` swaps them into a decluttered graph (`declutter`) before tract optimises it,
//! so everything else stays tract's. Pure computation; tested against tract's own evaluation.
//!
//! Layout: `rewrite` and `rewrite_int8` find the patterns in the graph, `ops` holds one module per
//! operator, `cpu` is the one place that detects CPU features. This crate holds all of face-edge's
//! `unsafe` code (SIMD intrinsics and asm, tract's uninitialised tensors), each block with its
//! `// SAFETY:` argument.

mod cpu;
mod ops;
mod rewrite;
mod rewrite_int8;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_int8;

pub use cpu::{CpuFeatures, features as cpu_features};

use rewrite::{
    depthwise_for, first_layer_for, fusable_clamp, max_pool_for, patch_through, pointwise_for,
};
use tract_onnx::prelude::*;

/// tract's declutter, keeping a QDQ graph's layout planar: on aarch64 tract moves the channels of
/// depthwise convolutions last (for its own channels-last kernel), which would leave the integer
/// ops' patterns behind; in a QDQ graph the integer ops replace those convolutions anyway. Other
/// graphs are decluttered exactly as `into_decluttered` does.
pub fn declutter(model: TypedModel) -> TractResult<TypedModel> {
    let quantized = model.nodes().iter().any(|node| {
        node.op_is::<tract_onnx::tract_core::ops::quant::DequantizeLinearF32>()
            && model
                .outlet_fact(node.inputs[0])
                .is_ok_and(|f| f.datum_type == u8::datum_type())
    });
    if !quantized {
        return model.into_decluttered();
    }
    let mut optimizer = tract_onnx::tract_core::optim::Optimizer::declutter();
    optimizer
        .passes
        .retain(|pass| !format!("{pass:?}").starts_with("ChangeAxes"));
    let mut model = model;
    optimizer.session().optimize(&mut model)?;
    Ok(model)
}

/// Replaces every eligible convolution (with the ReLU or clip right after it) and 2x2/2 max pool of
/// an f32 graph with concrete shapes by face-edge's, and in a QDQ graph every eligible quantized
/// layer by its integer version; returns how many were replaced.
pub fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    // One pass: applying a patch appends the new node and rewires the old one's successors to it, so
    // the ids of the nodes still to visit stay valid (the old node is left dead for tract to prune).
    for id in model.eval_order()? {
        let node = model.node(id);
        // Integer ops first: a QDQ graph's depthwise convolutions would otherwise match the f32 one.
        let quantized = rewrite_int8::integer_patch(model, node)?;
        if let Some(patch) = quantized {
            patch.apply(model)?;
            replaced += 1;
            continue;
        }
        // Clamping each output as it is written saves the activation's own pass over the tensor.
        let patch = if let Some(mut op) = depthwise_for(model, node)? {
            let end;
            (op.clamp, end) = fusable_clamp(model, OutletId::new(id, 0))?;
            patch_through(model, node, &node.inputs, op, end)?
        } else if let Some(mut op) = first_layer_for(model, node)? {
            let end;
            (op.clamp, end) = fusable_clamp(model, OutletId::new(id, 0))?;
            patch_through(model, node, &node.inputs, op, end)?
        } else if let Some((mut op, bias, with_bias)) = pointwise_for(model, node)? {
            let end;
            (op.clamp, end) = fusable_clamp(model, with_bias)?;
            patch_through(
                model,
                node,
                &[node.inputs[0], node.inputs[1], bias],
                op,
                end,
            )?
        } else if let Some(op) = max_pool_for(model, node)? {
            TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?
        } else {
            continue;
        };
        patch.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}
