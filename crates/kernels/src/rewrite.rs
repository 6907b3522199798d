//! Where the graph rewrite looks: which convolutions and pools of a decluttered f32 graph face-edge
//! replaces, with the activation after them when it can be folded.

use crate::ops::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Max, Min};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// A patch computing `op` (named after `node`) from `inputs` in place of the value at `end`, which
/// `node` alone or with the nodes folded into `op` produced.
pub(crate) fn patch_through(
    model: &TypedModel,
    node: &TypedNode,
    inputs: &[OutletId],
    op: impl TypedOp,
    end: OutletId,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::default();
    let inputs = patch.taps(model, inputs)?;
    let fused = patch.wire_node(&node.name, op, &inputs)?[0];
    patch.shunt_outside(model, end, fused)?;
    Ok(patch)
}

/// The concrete shape of an f32 input as [N, C, H, W] (N = 1 for CHW and HWC, which tract's
/// decluttering makes of a batch of one), and whether its channels are interleaved (NHWC, HWC).
pub(crate) fn f32_image(
    model: &TypedModel,
    outlet: OutletId,
    format: DataFormat,
) -> TractResult<Option<([usize; 4], bool)>> {
    let fact = model.outlet_fact(outlet)?;
    if fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    Ok(match (format, fact.shape.as_concrete()) {
        (DataFormat::NCHW, Some(&[n, c, h, w])) => Some(([n, c, h, w], false)),
        (DataFormat::CHW, Some(&[c, h, w])) => Some(([1, c, h, w], false)),
        (DataFormat::NHWC, Some(&[n, h, w, c])) => Some(([n, c, h, w], true)),
        (DataFormat::HWC, Some(&[h, w, c])) => Some(([1, c, h, w], true)),
        _ => None,
    })
}

/// The output shape in the input's layout.
pub(crate) fn shape_like(format: DataFormat, [n, c, h, w]: [usize; 4]) -> Vec<usize> {
    match format {
        DataFormat::NCHW => vec![n, c, h, w],
        DataFormat::CHW => vec![c, h, w],
        DataFormat::NHWC => vec![n, h, w, c],
        DataFormat::HWC => vec![h, w, c],
    }
}

/// The clamp that the nodes right after `outlet` apply to it, when they can be folded into the op
/// producing it: at most one `max(x, c)` (ReLU, a clip's lower bound) and one `min(x, c)` (a clip's
/// upper bound) with a constant scalar `c`, each the only reader of its input and not a model
/// output. Returns the clamp and the outlet whose readers should read the fused op instead.
pub(crate) fn fusable_clamp(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<(Clamp, OutletId)> {
    let mut clamp = Clamp::NONE;
    let mut end = outlet;
    loop {
        let readers = model.outlet_successors(end);
        if readers.len() != 1 || model.output_outlets()?.contains(&end) {
            break;
        }
        let next = model.node(readers[0].node);
        let Some(bin) = next.op_as::<TypedBinOp>() else {
            break;
        };
        if bin.1.is_some() || next.inputs.len() != 2 || next.outputs.len() != 1 {
            break;
        }
        let other = model.outlet_fact(next.inputs[1 - readers[0].slot])?;
        let Some(bound) = other.konst.as_ref().filter(|k| k.len() == 1) else {
            break;
        };
        let Ok(&[bound]) = f32_values(bound) else {
            break;
        };
        let next_out = OutletId::new(next.id, 0);
        if model.outlet_fact(next_out)?.shape != model.outlet_fact(end)?.shape {
            break;
        }
        if bin.0.is::<Max>() && clamp.low == f32::NEG_INFINITY {
            clamp.low = bound;
        } else if bin.0.is::<Min>() && clamp.high == f32::INFINITY {
            clamp.high = bound;
        } else {
            break;
        }
        end = next_out;
    }
    Ok((clamp, end))
}

/// (before, after) padding per spatial axis, when explicit (or none).
pub(crate) fn explicit_padding(padding: &PaddingSpec) -> Option<([usize; 2], [usize; 2])> {
    match padding {
        PaddingSpec::Valid => Some(([0, 0], [0, 0])),
        PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false)
            if b.len() == 2 && a.len() == 2 =>
        {
            Some(([b[0], b[1]], [a[0], a[1]]))
        }
        _ => None,
    }
}

/// The geometry of a 3x3 convolution node with constant f32 kernel and bias, stride 1 or 2 on both
/// axes, no dilation and explicit zero padding of at most 2, and whether its channels are interleaved.
pub(crate) fn window_for(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Window, bool)>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let Some(([n, c, h, w], channels_last)) = f32_image(model, node.inputs[0], spec.data_format)?
    else {
        return Ok(None);
    };
    let strides = spec.strides.as_deref().unwrap_or(&[1, 1]);
    let eligible = conv.q_params.is_none()
        && node.inputs.len() == 3
        && conv.kernel_fmt == KernelFormat::OIHW
        && spec.input_channels == c
        && *spec.kernel_shape == [3, 3]
        && spec
            .dilations
            .as_deref()
            .is_none_or(|d| d.iter().all(|&d| d == 1))
        && strides.len() == 2
        && strides[0] == strides[1]
        && (1..=2).contains(&strides[0]);
    let Some((before, after)) = explicit_padding(&spec.padding) else {
        return Ok(None);
    };
    let consts = node.inputs[1..].iter().all(|&input| {
        model
            .outlet_fact(input)
            .is_ok_and(|f| f.konst.is_some() && f.datum_type == f32::datum_type())
    });
    if !eligible || !consts || before.iter().chain(&after).any(|&p| p > 2) {
        return Ok(None);
    }
    let stride = strides[0];
    let out =
        |size: usize, b: usize, a: usize| (size + b + a).checked_sub(3).map(|s| s / stride + 1);
    let (Some(oh), Some(ow)) = (out(h, before[0], after[0]), out(w, before[1], after[1])) else {
        return Ok(None);
    };
    let o = spec.output_channels;
    let window = Window {
        input: [n, c, h, w],
        output: [n, o, oh, ow],
        output_shape: shape_like(spec.data_format, [n, o, oh, ow]),
        stride,
        pad_top: before[0],
        pad_left: before[1],
    };
    Ok(Some((window, channels_last)))
}

/// Whether the kernel and bias inputs of `node` have these shapes (the bias: this many values).
pub(crate) fn kernel_and_bias(
    model: &TypedModel,
    node: &TypedNode,
    kernel: &[usize],
    bias: &[usize],
) -> TractResult<bool> {
    let k = model.outlet_fact(node.inputs[1])?;
    let b = model.outlet_fact(node.inputs[2])?;
    Ok(k.shape.as_concrete() == Some(kernel)
        && b.shape
            .volume()
            .as_i64()
            .is_some_and(|v| bias.contains(&(v as usize))))
}

pub(crate) fn depthwise_for(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<Depthwise3x3>> {
    let Some((window, channels_last)) = window_for(model, node)? else {
        return Ok(None);
    };
    let c = window.input[1];
    let depthwise = node.op_as::<Conv>().is_some_and(|conv| conv.group == c)
        && window.output[1] == c
        // Interleaved channels only appear in YuNet's small stride-1 heads.
        && (!channels_last || window.stride == 1)
        && kernel_and_bias(model, node, &[c, 1, 3, 3], &[c, 1])?;
    Ok(depthwise.then_some(Depthwise3x3 {
        window,
        channels_last,
        clamp: Clamp::NONE,
    }))
}

pub(crate) fn first_layer_for(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<FirstLayer3x3>> {
    let Some((window, channels_last)) = window_for(model, node)? else {
        return Ok(None);
    };
    let [_, c, _, _] = window.input;
    let [_, o, _, ow] = window.output;
    let eligible = avx512_available()
        && node.op_as::<Conv>().is_some_and(|conv| conv.group == 1)
        && !channels_last
        && c <= FIRST_LAYER_MAX_INPUTS
        && o >= FIRST_LAYER_TILE_CHANNELS
        && ow >= FIRST_LAYER_TILE_PIXELS
        && kernel_and_bias(model, node, &[o, c, 3, 3], &[o])?;
    Ok(eligible.then_some(FirstLayer3x3 {
        window,
        clamp: Clamp::NONE,
    }))
}

/// A 1x1 convolution as tract's decluttering leaves it: an f32 EinSum `[N]IHW,OI->[N]OHW` (batch of
/// one) with constant weights, whose only reader adds a constant per-channel bias. Returns the op,
/// the bias and the outlet of the sum.
/// Whether `node` is a 1x1 convolution as tract's declutter leaves it on a planar image: the EinSum
/// `IHW,OI->OHW` (or with a batch axis N) of the data and a weight matrix, unquantized.
pub(crate) fn planar_pointwise(node: &TypedNode) -> bool {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return false;
    };
    let (ins, outs) = einsum.axes.to_strs();
    einsum.q_params.is_none()
        && node.inputs.len() == 2
        && ins.len() == 2
        && ["IHW", "NIHW"].contains(&ins[0].as_str())
        && ins[1] == "OI"
        && outs.len() == 1
        && ["OHW", "NOHW"].contains(&outs[0].as_str())
}

/// When the one reader of `product` (not a model output) is a plain two-input Add: that node and
/// its other input (a convolution's bias, when it is constant).
pub(crate) fn added_after(
    model: &TypedModel,
    product: OutletId,
) -> TractResult<Option<(&TypedNode, OutletId)>> {
    let readers = model.outlet_successors(product);
    if readers.len() != 1 || model.output_outlets()?.contains(&product) {
        return Ok(None);
    }
    let add = model.node(readers[0].node);
    let is_add = add
        .op_as::<TypedBinOp>()
        .is_some_and(|b| b.0.is::<Add>() && b.1.is_none() && add.inputs.len() == 2);
    Ok(is_add.then(|| (add, add.inputs[1 - readers[0].slot])))
}

pub(crate) fn pointwise_for(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Pointwise, OutletId, OutletId)>> {
    let planar = node
        .op_as::<EinSum>()
        .is_some_and(|e| e.operating_dt == f32::datum_type() && planar_pointwise(node));
    if !planar {
        return Ok(None);
    }
    let data = model.outlet_fact(node.inputs[0])?;
    let weights = model.outlet_fact(node.inputs[1])?;
    let (Some(data_shape), Some(&[o, i])) = (data.shape.as_concrete(), weights.shape.as_concrete())
    else {
        return Ok(None);
    };
    let pixels = match *data_shape {
        [1, c, h, w] | [c, h, w] if c == i => h * w,
        _ => return Ok(None),
    };
    if !avx512_available() || pixels < POINTWISE_MIN_PIXELS || o < TILE_CHANNELS {
        return Ok(None);
    }
    if data.datum_type != f32::datum_type()
        || weights.datum_type != f32::datum_type()
        || weights.konst.is_none()
    {
        return Ok(None);
    }
    let product = OutletId::new(node.id, 0);
    let Some((add, bias)) = added_after(model, product)? else {
        return Ok(None);
    };
    let bias_fact = model.outlet_fact(bias)?;
    let Some(output_shape) = model
        .outlet_fact(product)?
        .shape
        .as_concrete()
        .map(|s| s.to_vec())
    else {
        return Ok(None);
    };
    // A bias broadcast along the channel axis only: the output's shape with every other axis 1.
    let channel_axis = output_shape.len() - 3;
    let per_channel: Vec<usize> = (0..output_shape.len())
        .map(|axis| if axis == channel_axis { o } else { 1 })
        .collect();
    let sum = OutletId::new(add.id, 0);
    if bias_fact.konst.is_none()
        || bias_fact.datum_type != f32::datum_type()
        || bias_fact.shape.as_concrete() != Some(&per_channel[..])
        || model.outlet_fact(sum)?.shape.as_concrete() != Some(&output_shape[..])
    {
        return Ok(None);
    }
    let op = Pointwise {
        inputs: i,
        outputs: o,
        pixels,
        output_shape,
        clamp: Clamp::NONE,
    };
    Ok(Some((op, bias, sum)))
}

pub(crate) fn max_pool_for(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<MaxPool2x2>> {
    let Some(pool) = node.op_as::<MaxPool>() else {
        return Ok(None);
    };
    let spec = &pool.pool_spec;
    let Some(([n, c, h, w], false)) = f32_image(model, node.inputs[0], spec.data_format)? else {
        return Ok(None);
    };
    let no_padding = explicit_padding(&spec.padding) == Some(([0, 0], [0, 0]));
    let eligible = pool.with_index_outputs.is_none()
        && *spec.kernel_shape == [2, 2]
        && spec.strides.as_deref() == Some(&[2, 2][..])
        && spec
            .dilations
            .as_deref()
            .is_none_or(|d| d.iter().all(|&d| d == 1))
        && no_padding
        && h >= 2
        && w >= 2;
    Ok(eligible.then_some(MaxPool2x2 {
        input: [n, c, h, w],
        output: [n, c, h / 2, w / 2],
        output_shape: shape_like(spec.data_format, [n, c, h / 2, w / 2]),
    }))
}
