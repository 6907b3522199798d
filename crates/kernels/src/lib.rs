//! face-edge's own kernels for the operators where tract 0.23 spent the most time relative to
//! onnxruntime on our networks (`face-edge bench --profile`):
//! - 3x3 depthwise convolution (every MobileNet-style block of YuNet, MobileFaceNet and
//!   EfficientNetV2) and 2x2 max pooling (YuNet's backbone), on every CPU;
//! - with AVX-512 only (where they were measured faster than tract): 1x1 convolution from 28x28
//!   pixels, and the dense 3x3 convolution of a network's first layer (few input channels).
//!
//! The bias addition and the ReLU or clip after a convolution are folded into it. They are tract
//! operators: `install` swaps them into a decluttered f32 graph before tract optimises it, so
//! everything else stays tract's. Pure computation; tested against tract's own ops.
//!
//! Layout: `rewrite` finds the patterns in the graph, `ops` holds one module per operator, `cpu` is
//! the one place that detects CPU features. This crate holds all of face-edge's `unsafe` code (SIMD
//! intrinsics and tract's uninitialised tensors), each block with its `// SAFETY:` argument.

mod cpu;
mod ops;
mod rewrite;
#[cfg(test)]
mod tests;

pub use cpu::{CpuFeatures, features as cpu_features};

use rewrite::{
    depthwise_for, first_layer_for, fusable_clamp, max_pool_for, patch_through, pointwise_for,
};
use tract_onnx::prelude::*;

/// Replaces every eligible convolution (with the ReLU or clip right after it) and 2x2/2 max pool of
/// an f32 graph with concrete shapes by face-edge's; returns how many were replaced.
pub fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    // One pass: applying a patch appends the new node and rewires the old one's successors to it, so
    // the ids of the nodes still to visit stay valid (the old node is left dead for tract to prune).
    for id in model.eval_order()? {
        let node = model.node(id);
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
