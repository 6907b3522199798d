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

use crate::inference::f32_values;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::{Add, Max, Min};
use tract_onnx::tract_core::ops::nn::DataFormat;

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

/// A patch computing `op` (named after `node`) from `inputs` in place of the value at `end`, which
/// `node` alone or with the nodes folded into `op` produced.
fn patch_through(
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
fn f32_image(
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
fn shape_like(format: DataFormat, [n, c, h, w]: [usize; 4]) -> Vec<usize> {
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
fn fusable_clamp(model: &TypedModel, outlet: OutletId) -> TractResult<(Clamp, OutletId)> {
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
fn explicit_padding(padding: &PaddingSpec) -> Option<([usize; 2], [usize; 2])> {
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
fn window_for(model: &TypedModel, node: &TypedNode) -> TractResult<Option<(Window, bool)>> {
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
fn kernel_and_bias(
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

fn depthwise_for(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Depthwise3x3>> {
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

fn first_layer_for(model: &TypedModel, node: &TypedNode) -> TractResult<Option<FirstLayer3x3>> {
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
fn pointwise_for(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Pointwise, OutletId, OutletId)>> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    let (ins, outs) = einsum.axes.to_strs();
    let planar = einsum.q_params.is_none()
        && einsum.operating_dt == f32::datum_type()
        && node.inputs.len() == 2
        && ins.len() == 2
        && ["IHW", "NIHW"].contains(&ins[0].as_str())
        && ins[1] == "OI"
        && outs.len() == 1
        && ["OHW", "NOHW"].contains(&outs[0].as_str());
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
    let readers = model.outlet_successors(product);
    if readers.len() != 1 || model.output_outlets()?.contains(&product) {
        return Ok(None);
    }
    let add = model.node(readers[0].node);
    let Some(bin) = add.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !bin.0.is::<Add>() || bin.1.is_some() || add.inputs.len() != 2 {
        return Ok(None);
    }
    let bias = add.inputs[1 - readers[0].slot];
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

fn max_pool_for(model: &TypedModel, node: &TypedNode) -> TractResult<Option<MaxPool2x2>> {
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

/// Bounds every output is clamped to: the activation folded into a kernel (none: infinite bounds).
/// Compared by bit pattern so that the op can be `Eq`, as tract requires.
#[derive(Debug, Clone, Copy)]
pub struct Clamp {
    low: f32,
    high: f32,
}

impl Clamp {
    const NONE: Clamp = Clamp {
        low: f32::NEG_INFINITY,
        high: f32::INFINITY,
    };

    /// max(low, min(high, v)) in the order ONNX Clip and a ReLU followed by a min apply them.
    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        let v = if v < self.low { self.low } else { v };
        if v > self.high { self.high } else { v }
    }
}

impl PartialEq for Clamp {
    fn eq(&self, other: &Clamp) -> bool {
        self.low.to_bits() == other.low.to_bits() && self.high.to_bits() == other.high.to_bits()
    }
}

impl Eq for Clamp {}

/// Where a 3x3 window reads: input and output as [N, C, H, W] whatever the layout, the output as the
/// graph has it, stride and the padding before each axis (the padding after follows from the sizes).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    input: [usize; 4],
    output: [usize; 4],
    output_shape: Vec<usize>,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Window {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.volume() == self.input.iter().product::<usize>().to_dim());
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    /// The padded input extent the outputs read: rows and columns.
    fn padded_size(&self) -> (usize, usize) {
        let [_, _, oh, ow] = self.output;
        ((oh - 1) * self.stride + 3, (ow - 1) * self.stride + 3)
    }

    /// Values per row of a padded plane: stride 1, the padded columns; stride 2, the even columns
    /// then the odd ones, each half rounded up.
    fn padded_row(&self) -> usize {
        let pw = self.padded_size().1;
        if self.stride == 1 {
            pw
        } else {
            2 * pw.div_ceil(2)
        }
    }

    fn padded_len(&self) -> usize {
        self.padded_size().0 * self.padded_row()
    }

    /// Copies one planar channel into `padded` with its zero border (and, for stride 2, its columns
    /// split into even and odd halves), so that every output row is the same nine-tap sum over
    /// contiguous slices (`taps`): no edge cases in the loops that compute.
    fn pad(&self, src: &[f32], padded: &mut [f32]) {
        let [_, _, h, w] = self.input;
        let (ph, pw) = self.padded_size();
        let p = self.pad_left;
        // Source columns past the padded width are never read.
        let columns = w.min(pw - p);
        for (y, out) in padded
            .chunks_exact_mut(self.padded_row())
            .take(ph)
            .enumerate()
        {
            out.fill(0.0);
            let Some(sy) = y.checked_sub(self.pad_top).filter(|&sy| sy < h) else {
                continue;
            };
            let line = &src[sy * w..][..columns];
            if self.stride == 1 {
                out[p..p + columns].copy_from_slice(line);
                continue;
            }
            // Source column x lands on padded column x + p: the even ones in the first half (at
            // (x + p) / 2), the odd ones in the second.
            let (even, odd) = out.split_at_mut(pw.div_ceil(2));
            let parity = p % 2;
            for (slot, &v) in even[(p + parity) / 2..]
                .iter_mut()
                .zip(line[parity..].iter().step_by(2))
            {
                *slot = v;
            }
            for (slot, &v) in odd[p / 2..]
                .iter_mut()
                .zip(line[1 - parity..].iter().step_by(2))
            {
                *slot = v;
            }
        }
    }

    /// The nine slices of a padded plane whose element x is tap (ky, kx) of output (oy, x).
    fn taps<'a>(&self, padded: &'a [f32], oy: usize) -> [&'a [f32]; 9] {
        let row = self.padded_row();
        let half = self.padded_size().1.div_ceil(2);
        let line = |ky: usize| &padded[(oy * self.stride + ky) * row..][..row];
        std::array::from_fn(|t| {
            let (ky, kx) = (t / 3, t % 3);
            let start = match (self.stride, kx) {
                (1, kx) => kx,
                // Column 2x + kx: kx = 0 -> even[x], 1 -> odd[x], 2 -> even[x + 1].
                (_, 0) => 0,
                (_, 1) => half,
                _ => 1,
            };
            &line(ky)[start..]
        })
    }
}

/// 3x3 depthwise convolution, f32, zero padding, then a clamp; planar (NCHW, CHW) at stride 1 or 2,
/// interleaved (NHWC, HWC) at stride 1. Inputs: data, kernel [C,1,3,3], bias [C] (or one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Depthwise3x3 {
    window: Window,
    channels_last: bool,
    clamp: Clamp,
}

impl Op for Depthwise3x3 {
    fn name(&self) -> StaticName {
        "FaceEdgeDepthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.window;
        Ok(vec![format!(
            "{:?} -> {:?} (NCHW{}), stride {}, pad top {} left {}, clamp {:?}",
            w.input,
            w.output,
            if self.channels_last { " as NHWC" } else { "" },
            w.stride,
            w.pad_top,
            w.pad_left,
            self.clamp
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Depthwise3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let window = &self.window;
        let [data, kernel, bias] = data_kernel_bias(&inputs, window.input.iter().product())?;
        let [_, c, h, w] = window.input;
        let [_, _, oh, ow] = window.output;
        ensure!(kernel.len() == c * 9 && (bias.len() == c || bias.len() == 1));
        // Every element is written below (rows start from the bias).
        let mut out = unsafe { Tensor::uninitialized::<f32>(&window.output_shape)? };
        if self.channels_last {
            self.interleaved(data, kernel, bias, out_values(&mut out)?);
            return Ok(tvec!(out.into_tvalue()));
        }
        // Stride 2 and small planes are copied into this padded buffer; larger planes at stride 1
        // are read in place and only need a row of zeros for the rows outside the plane.
        let whole_planes = window.stride == 1 && ow < WHOLE_PLANE_BELOW;
        let in_place = window.stride == 1 && !whole_planes;
        let padded_len = if in_place { w } else { window.padded_len() };
        let mut padded = vec![0f32; padded_len];
        let mut flat = vec![0f32; if whole_planes { padded_len } else { 0 }];
        let planes = data
            .chunks_exact(h * w)
            .zip(out_values(&mut out)?.chunks_exact_mut(oh * ow));
        for (i, (src, dst)) in planes.enumerate() {
            let ch = i % c;
            let taps: &[f32; 9] = kernel[ch * 9..ch * 9 + 9].try_into()?;
            let b = if bias.len() == 1 { bias[0] } else { bias[ch] };
            if in_place {
                self.unpadded(src, dst, taps, b, &padded);
                continue;
            }
            if whole_planes {
                window.pad(src, &mut padded);
                self.whole_plane(&padded, dst, taps, b, &mut flat);
                continue;
            }
            window.pad(src, &mut padded);
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                nine_taps(row, window.taps(&padded, oy), taps, b, self.clamp);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// The three inputs of a convolution op (data of `data_len` values, kernel, bias) as f32 values.
fn data_kernel_bias(inputs: &[TValue], data_len: usize) -> TractResult<[&[f32]; 3]> {
    ensure!(inputs.len() == 3 && inputs[0].len() == data_len);
    Ok([
        f32_values(&inputs[0])?,
        f32_values(&inputs[1])?,
        f32_values(&inputs[2])?,
    ])
}

/// The f32 values of a tensor this module just allocated as f32 (so the unchecked view is its type).
fn out_values(t: &mut Tensor) -> TractResult<&mut [f32]> {
    ensure!(t.datum_type() == f32::datum_type());
    Ok(unsafe { t.as_slice_mut_unchecked::<f32>() })
}

/// Planes narrower than this (at stride 1) are computed in one pass each (`whole_plane`): their
/// rows are too short for a vector loop per row.
const WHOLE_PLANE_BELOW: usize = 32;

impl Depthwise3x3 {
    /// One small padded plane at stride 1 as a single nine-tap pass: output (y, x) is computed at
    /// y * pw + x of `flat`, the padded width apart, so each tap is one slice of `padded` (the two
    /// columns past each row's end are computed and dropped); then the rows are copied out.
    fn whole_plane(
        &self,
        padded: &[f32],
        dst: &mut [f32],
        k: &[f32; 9],
        bias: f32,
        flat: &mut [f32],
    ) {
        let [_, _, oh, ow] = self.window.output;
        let pw = self.window.padded_size().1;
        let len = (oh - 1) * pw + ow;
        let sources: [&[f32]; 9] = std::array::from_fn(|t| &padded[(t / 3) * pw + t % 3..]);
        nine_taps(&mut flat[..len], sources, k, bias, self.clamp);
        for (row, computed) in dst.chunks_exact_mut(ow).zip(flat.chunks(pw)) {
            row.copy_from_slice(&computed[..ow]);
        }
    }

    /// One planar channel at stride 1, read in place (no padded copy, which cost as much as the
    /// arithmetic): rows above or below the plane are `zeros`; the columns whose window lies inside
    /// the plane are one nine-tap pass over the source rows, the few at the edges a plain sum.
    fn unpadded(&self, src: &[f32], dst: &mut [f32], k: &[f32; 9], bias: f32, zeros: &[f32]) {
        let [_, _, h, w] = self.window.input;
        let ow = self.window.output[3];
        let (top, left) = (self.window.pad_top, self.window.pad_left);
        // Output x reads source columns x - left .. x - left + 2.
        let first = left.min(ow);
        let end = (w + left).saturating_sub(2).clamp(first, ow);
        for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
            let lines: [&[f32]; 3] = std::array::from_fn(|ky| {
                (oy + ky)
                    .checked_sub(top)
                    .filter(|&sy| sy < h)
                    .map_or(zeros, |sy| &src[sy * w..][..w])
            });
            if first < end {
                let sources: [&[f32]; 9] =
                    std::array::from_fn(|t| &lines[t / 3][first + t % 3 - left..]);
                nine_taps(&mut row[first..end], sources, k, bias, self.clamp);
            }
            for x in (0..first).chain(end..ow) {
                let mut acc = bias;
                for (t, &kt) in k.iter().enumerate() {
                    let sx = (x + t % 3).checked_sub(left).filter(|&sx| sx < w);
                    if let Some(sx) = sx {
                        acc += kt * lines[t / 3][sx];
                    }
                }
                row[x] = self.clamp.apply(acc);
            }
        }
    }

    /// Every image of an interleaved (NHWC) input, stride 1. Each image is copied once into a
    /// zero-bordered buffer; then an output row is again a nine-tap sum over contiguous slices, with
    /// per-element weights (the kernel's taps repeated along the row, channel by channel).
    fn interleaved(&self, data: &[f32], kernel: &[f32], bias: &[f32], out: &mut [f32]) {
        let window = &self.window;
        let [_, c, h, w] = window.input;
        let [_, _, oh, ow] = window.output;
        let (ph, pw) = window.padded_size();
        let row = ow * c;
        let weight_rows: Vec<f32> = (0..9)
            .flat_map(|t| (0..row).map(move |i| kernel[(i % c) * 9 + t]))
            .collect();
        let bias_row: Vec<f32> = (0..row)
            .map(|i| {
                if bias.len() == 1 {
                    bias[0]
                } else {
                    bias[i % c]
                }
            })
            .collect();
        let weights: [&[f32]; 9] = std::array::from_fn(|t| &weight_rows[t * row..][..row]);
        let mut padded = vec![0f32; ph * pw * c];
        let columns = w.min(pw - window.pad_left);
        for (src, dst) in data
            .chunks_exact(h * w * c)
            .zip(out.chunks_exact_mut(oh * row))
        {
            for (sy, line) in src.chunks_exact(w * c).enumerate() {
                let py = sy + window.pad_top;
                if py < ph {
                    padded[(py * pw + window.pad_left) * c..][..columns * c]
                        .copy_from_slice(&line[..columns * c]);
                }
            }
            for (oy, out_row) in dst.chunks_exact_mut(row).enumerate() {
                let sources: [&[f32]; 9] =
                    std::array::from_fn(|t| &padded[((oy + t / 3) * pw + t % 3) * c..]);
                nine_weighted_taps(out_row, sources, weights, &bias_row, self.clamp);
            }
        }
    }
}

/// Whether this CPU runs the AVX2 builds of the loops below (x86-64; checked once).
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2"))
}

/// out[x] = clamp(bias + sum of k[t] * sources[t][x]). On x86-64 compiled twice, for the baseline
/// (SSE2) and for AVX2, picked at run time; aarch64's baseline already has NEON.
fn nine_taps(out: &mut [f32], sources: [&[f32]; 9], k: &[f32; 9], bias: f32, clamp: Clamp) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: only reached when the CPU reports AVX2.
        return unsafe { nine_taps_avx2(out, sources, k, bias, clamp) };
    }
    fused(out, sources, k, bias, clamp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nine_taps_avx2(
    out: &mut [f32],
    sources: [&[f32]; 9],
    k: &[f32; 9],
    bias: f32,
    clamp: Clamp,
) {
    fused(out, sources, k, bias, clamp)
}

/// out[i] = clamp(bias + sum of k[t] * sources[t][i]); every source at least as long as out.
#[inline(always)]
fn fused<const N: usize>(
    out: &mut [f32],
    sources: [&[f32]; N],
    k: &[f32; N],
    bias: f32,
    clamp: Clamp,
) {
    let len = out.len();
    let sources = sources.map(|s| &s[..len]);
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = bias;
        for t in 0..N {
            acc += k[t] * sources[t][i];
        }
        *o = clamp.apply(acc);
    }
}

/// As `nine_taps` with a weight and a bias per element: out[i] = clamp(bias[i] + sum of
/// weights[t][i] * sources[t][i]).
fn nine_weighted_taps(
    out: &mut [f32],
    sources: [&[f32]; 9],
    weights: [&[f32]; 9],
    bias: &[f32],
    clamp: Clamp,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: only reached when the CPU reports AVX2.
        return unsafe { nine_weighted_taps_avx2(out, sources, weights, bias, clamp) };
    }
    weighted(out, sources, weights, bias, clamp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nine_weighted_taps_avx2(
    out: &mut [f32],
    sources: [&[f32]; 9],
    weights: [&[f32]; 9],
    bias: &[f32],
    clamp: Clamp,
) {
    weighted(out, sources, weights, bias, clamp)
}

#[inline(always)]
fn weighted<const N: usize>(
    out: &mut [f32],
    sources: [&[f32]; N],
    weights: [&[f32]; N],
    bias: &[f32],
    clamp: Clamp,
) {
    let len = out.len();
    let sources = sources.map(|s| &s[..len]);
    let weights = weights.map(|s| &s[..len]);
    let bias = &bias[..len];
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = bias[i];
        for t in 0..N {
            acc += weights[t][i] * sources[t][i];
        }
        *o = clamp.apply(acc);
    }
}

impl TypedOp for Depthwise3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.window.output_facts(inputs)
    }

    as_op!();
}

/// 1x1 convolution, planar f32 (one image), plus a per-channel bias, then a clamp. Inputs: data
/// [I, pixels], weights [O, I], bias [O].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointwise {
    inputs: usize,
    outputs: usize,
    pixels: usize,
    /// The output as the graph has it (OHW or NOHW).
    output_shape: Vec<usize>,
    clamp: Clamp,
}

impl Op for Pointwise {
    fn name(&self) -> StaticName {
        "FaceEdgePointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels, {} pixels, clamp {:?}",
            self.inputs, self.outputs, self.pixels, self.clamp
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for Pointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (i, o, pixels) = (self.inputs, self.outputs, self.pixels);
        let [data, weights, bias] = data_kernel_bias(&inputs, i * pixels)?;
        ensure!(weights.len() == o * i && bias.len() == o);
        // Every element is written below.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        pointwise(
            data,
            weights,
            bias,
            pixels,
            self.clamp,
            out_values(&mut out)?,
        );
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Pointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.volume() == (self.inputs * self.pixels).to_dim());
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    as_op!();
}

/// Output channels and pixels one register tile of the 1x1 convolution computes: 4 x 32 is eight
/// AVX-512 accumulators, leaving registers for the inputs and the broadcast weights.
const TILE_CHANNELS: usize = 4;
const TILE_PIXELS: usize = 32;

/// Smaller images stay with tract: from 14x14 down, its packed product (which also absorbs a
/// following residual addition) was as fast or faster on MobileFaceNet and the stand-in; at 28x28
/// and above the tile won (`face-edge bench`, both models, thresholds 256 to 784 alternated).
const POINTWISE_MIN_PIXELS: usize = 784;

/// Whether the register-tiled kernels (`Pointwise`, `FirstLayer3x3`) run on this CPU. Only with
/// AVX-512 (x86-64): there they beat tract's own (`face-edge bench --profile`); an AVX2 build of the
/// 1x1 tile was slower than tract from 32 input channels up, and NEON builds cannot be timed here
/// (qemu), so elsewhere tract keeps these convolutions.
pub fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX512: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX512.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Where the tiles of an axis of `len` (>= `tile`) start: every `tile` apart, the last one moved
/// back to end at `len` (recomputing a few values, identically) so that there is no remainder loop.
#[cfg(target_arch = "x86_64")]
fn tile_starts(len: usize, tile: usize) -> impl Iterator<Item = usize> {
    let last = len - tile;
    (0..len.div_ceil(tile)).map(move |t| (t * tile).min(last))
}

/// out[o][p] = clamp(bias[o] + sum over i of weights[o][i] * data[i][p]) for one planar image.
fn pointwise(
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    pixels: usize,
    clamp: Clamp,
    out: &mut [f32],
) {
    let outputs = bias.len();
    if avx512_available() && outputs >= TILE_CHANNELS && pixels >= TILE_PIXELS {
        // SAFETY: AVX-512 is present and the axes hold at least one tile.
        #[cfg(target_arch = "x86_64")]
        return unsafe { pointwise_tiled(data, weights, bias, pixels, clamp, out) };
    }
    pointwise_plain(data, weights, bias, pixels, clamp, out)
}

/// `pointwise` in plain loops: only run if the op meets a CPU other than the one it was chosen for.
fn pointwise_plain(
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    pixels: usize,
    clamp: Clamp,
    out: &mut [f32],
) {
    let inputs = weights.len() / bias.len();
    for (o, (row, w)) in out
        .chunks_exact_mut(pixels)
        .zip(weights.chunks_exact(inputs))
        .enumerate()
    {
        row.fill(bias[o]);
        for (line, &w) in data.chunks_exact(pixels).zip(w) {
            for (acc, &x) in row.iter_mut().zip(line) {
                *acc += w * x;
            }
        }
        row.iter_mut().for_each(|v| *v = clamp.apply(*v));
    }
}

/// `pointwise` by register tiles. Requires AVX-512F, outputs >= TILE_CHANNELS and pixels >=
/// TILE_PIXELS.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pointwise_tiled(
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    pixels: usize,
    clamp: Clamp,
    out: &mut [f32],
) {
    let outputs = bias.len();
    let inputs = weights.len() / outputs;
    assert!(data.len() == inputs * pixels && out.len() == outputs * pixels);
    // The weights of each block of output channels, input channel by input channel, so that each
    // step of a tile reads its TILE_CHANNELS weights together.
    let blocks: Vec<usize> = tile_starts(outputs, TILE_CHANNELS).collect();
    let mut grouped = Vec::with_capacity(blocks.len() * inputs * TILE_CHANNELS);
    for &co in &blocks {
        for i in 0..inputs {
            grouped.extend((co..co + TILE_CHANNELS).map(|o| weights[o * inputs + i]));
        }
    }
    // Pixel tile by pixel tile, so that its inputs stay in cache while every output channel is made.
    for p in tile_starts(pixels, TILE_PIXELS) {
        for (&co, w) in blocks
            .iter()
            .zip(grouped.chunks_exact(inputs * TILE_CHANNELS))
        {
            let b: &[f32; TILE_CHANNELS] = bias[co..co + TILE_CHANNELS].try_into().unwrap();
            // SAFETY: the tile reads data[i][p..p + TILE_PIXELS] for every input i and
            // w[..inputs * TILE_CHANNELS], and writes out[co..co + TILE_CHANNELS][p..p +
            // TILE_PIXELS]: inside the slices, as p + TILE_PIXELS <= pixels and co + TILE_CHANNELS
            // <= outputs (asserted lengths above).
            unsafe {
                tile(
                    data.as_ptr().add(p),
                    pixels,
                    inputs,
                    w.as_ptr(),
                    b,
                    clamp,
                    out.as_mut_ptr().add(co * pixels + p),
                );
            }
        }
    }
}

/// One tile: TILE_CHANNELS outputs x TILE_PIXELS pixels accumulated in registers over every input
/// channel, then clamped and stored. `data` points at the tile's first pixel of input 0, `out` at
/// that of output co; `weights` holds TILE_CHANNELS weights per input.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile(
    data: *const f32,
    pixels: usize,
    inputs: usize,
    weights: *const f32,
    bias: &[f32; TILE_CHANNELS],
    clamp: Clamp,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY (whole body): the caller keeps every pointer offset inside its slice.
    unsafe {
        let mut acc: [[__m512; 2]; TILE_CHANNELS] = bias.map(|b| [_mm512_set1_ps(b); 2]);
        for i in 0..inputs {
            let line = data.add(i * pixels);
            let x = [_mm512_loadu_ps(line), _mm512_loadu_ps(line.add(16))];
            for (j, acc) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*weights.add(i * TILE_CHANNELS + j));
                acc[0] = _mm512_fmadd_ps(w, x[0], acc[0]);
                acc[1] = _mm512_fmadd_ps(w, x[1], acc[1]);
            }
        }
        let (low, high) = (_mm512_set1_ps(clamp.low), _mm512_set1_ps(clamp.high));
        for (j, acc) in acc.iter().enumerate() {
            for (h, &v) in acc.iter().enumerate() {
                let v = _mm512_min_ps(_mm512_max_ps(v, low), high);
                _mm512_storeu_ps(out.add(j * pixels + 16 * h), v);
            }
        }
    }
}

/// Most input channels a first-layer convolution may have (RGB and a spare), and its register tile:
/// 16 output channels x 16 pixels, sixteen AVX-512 accumulators.
const FIRST_LAYER_MAX_INPUTS: usize = 4;
const FIRST_LAYER_TILE_CHANNELS: usize = 16;
const FIRST_LAYER_TILE_PIXELS: usize = 16;

/// Dense 3x3 convolution of a planar f32 image with few channels (a network's first layer, as
/// YuNet's 3 -> 16 at stride 2, where tract's direct convolution took 10 % of the detector), plus
/// bias, then a clamp. Inputs: data, kernel [O, C, 3, 3], bias [O].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstLayer3x3 {
    window: Window,
    clamp: Clamp,
}

impl Op for FirstLayer3x3 {
    fn name(&self) -> StaticName {
        "FaceEdgeFirstLayer3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.window;
        Ok(vec![format!(
            "{:?} -> {:?}, stride {}, pad top {} left {}, clamp {:?}",
            w.input, w.output, w.stride, w.pad_top, w.pad_left, self.clamp
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for FirstLayer3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let window = &self.window;
        let [data, kernel, bias] = data_kernel_bias(&inputs, window.input.iter().product())?;
        let [_, c, h, w] = window.input;
        let [_, o, oh, ow] = window.output;
        ensure!(c <= FIRST_LAYER_MAX_INPUTS && kernel.len() == o * c * 9 && bias.len() == o);
        // The kernel reordered [input][tap][output], so that a tile's weights for one tap of one
        // input are together.
        let mut by_tap = vec![0f32; kernel.len()];
        for (i, &k) in kernel.iter().enumerate() {
            let (co, rest) = (i / (c * 9), i % (c * 9));
            by_tap[rest * o + co] = k;
        }
        let plane = window.padded_len();
        let mut padded = vec![0f32; c * plane];
        // Every element is written below.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&window.output_shape)? };
        let images = data
            .chunks_exact(c * h * w)
            .zip(out_values(&mut out)?.chunks_exact_mut(o * oh * ow));
        for (image, dst) in images {
            for (src, padded) in image
                .chunks_exact(h * w)
                .zip(padded.chunks_exact_mut(plane))
            {
                window.pad(src, padded);
            }
            #[cfg(target_arch = "x86_64")]
            if avx512_available() {
                // SAFETY: AVX-512 is present; the sizes were checked when the op was chosen.
                unsafe { first_layer_tiled(window, &padded, &by_tap, bias, self.clamp, dst) };
                continue;
            }
            first_layer_plain(window, &padded, &by_tap, bias, self.clamp, dst);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for FirstLayer3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.window.output_facts(inputs)
    }

    as_op!();
}

/// The nine tap slices of each input channel's padded plane for output row `oy`.
fn first_layer_taps<'a>(
    window: &Window,
    padded: &'a [f32],
    oy: usize,
) -> [[&'a [f32]; 9]; FIRST_LAYER_MAX_INPUTS] {
    let plane = window.padded_len();
    let mut taps = [[&[][..]; 9]; FIRST_LAYER_MAX_INPUTS];
    for (taps, padded) in taps.iter_mut().zip(padded.chunks_exact(plane)) {
        *taps = window.taps(padded, oy);
    }
    taps
}

/// One image of `FirstLayer3x3` in plain loops: only run if the op meets a CPU other than the one
/// it was chosen for. `by_tap` is the kernel as [input][tap][output].
fn first_layer_plain(
    window: &Window,
    padded: &[f32],
    by_tap: &[f32],
    bias: &[f32],
    clamp: Clamp,
    out: &mut [f32],
) {
    let [_, c, _, _] = window.input;
    let [_, o, oh, ow] = window.output;
    for oy in 0..oh {
        let taps = first_layer_taps(window, padded, oy);
        for (co, plane) in out.chunks_exact_mut(oh * ow).enumerate() {
            let row = &mut plane[oy * ow..][..ow];
            row.fill(bias[co]);
            for (ci, taps) in taps.iter().take(c).enumerate() {
                for (t, src) in taps.iter().enumerate() {
                    let k = by_tap[(ci * 9 + t) * o + co];
                    for (v, &x) in row.iter_mut().zip(*src) {
                        *v += k * x;
                    }
                }
            }
            row.iter_mut().for_each(|v| *v = clamp.apply(*v));
        }
    }
}

/// One image of `FirstLayer3x3` by tiles of 16 outputs x 16 pixels: each tile loads every tap of
/// every input once and feeds it to sixteen accumulators. Requires AVX-512F, at least 16 outputs
/// and 16 output columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn first_layer_tiled(
    window: &Window,
    padded: &[f32],
    by_tap: &[f32],
    bias: &[f32],
    clamp: Clamp,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    const CH: usize = FIRST_LAYER_TILE_CHANNELS;
    const PX: usize = FIRST_LAYER_TILE_PIXELS;
    let [_, c, _, _] = window.input;
    let [_, o, oh, ow] = window.output;
    assert!(out.len() == o * oh * ow && by_tap.len() == c * 9 * o && bias.len() == o);
    let (low, high) = (_mm512_set1_ps(clamp.low), _mm512_set1_ps(clamp.high));
    for oy in 0..oh {
        let taps = first_layer_taps(window, padded, oy);
        for x in tile_starts(ow, PX) {
            for co in tile_starts(o, CH) {
                let mut acc: [__m512; CH] = std::array::from_fn(|j| _mm512_set1_ps(bias[co + j]));
                for (ci, taps) in taps.iter().take(c).enumerate() {
                    for (t, src) in taps.iter().enumerate() {
                        // SAFETY: the slice bounds are checked; AVX-512 is enabled on this function.
                        let v = unsafe { _mm512_loadu_ps(src[x..x + PX].as_ptr()) };
                        let w = &by_tap[(ci * 9 + t) * o + co..][..CH];
                        for (acc, &w) in acc.iter_mut().zip(w) {
                            *acc = _mm512_fmadd_ps(_mm512_set1_ps(w), v, *acc);
                        }
                    }
                }
                for (j, &v) in acc.iter().enumerate() {
                    let dst = &mut out[(co + j) * oh * ow + oy * ow + x..][..PX];
                    let v = _mm512_min_ps(_mm512_max_ps(v, low), high);
                    // SAFETY: `dst` holds PX values.
                    unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) };
                }
            }
        }
    }
}

/// The larger of two values, as one vector max instruction (`f32::max`'s NaN rule costs a blend).
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if a > b { a } else { b }
}

/// 2x2 max pooling with stride 2 and no padding (floor), NCHW f32.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MaxPool2x2 {
    input: [usize; 4],
    output: [usize; 4],
    output_shape: Vec<usize>,
}

impl Op for MaxPool2x2 {
    fn name(&self) -> StaticName {
        "FaceEdgeMaxPool2x2".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?} -> {:?}", self.input, self.output)])
    }

    op_as_typed_op!();
}

impl EvalOp for MaxPool2x2 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 && inputs[0].len() == self.input.iter().product::<usize>());
        let data = f32_values(&inputs[0])?;
        let [_, _, h, w] = self.input;
        let [_, _, oh, ow] = self.output;
        // Every element is written below.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let mut vertical = vec![0f32; 2 * ow];
        for (src, dst) in data
            .chunks_exact(h * w)
            .zip(out_values(&mut out)?.chunks_exact_mut(oh * ow))
        {
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                let top = &src[2 * oy * w..][..2 * ow];
                let bottom = &src[(2 * oy + 1) * w..][..2 * ow];
                // Rows first (a plain vector loop), then neighbouring pairs.
                for ((v, &t), &b) in vertical.iter_mut().zip(top).zip(bottom) {
                    *v = larger(t, b);
                }
                for (o, pair) in row.iter_mut().zip(vertical.chunks_exact(2)) {
                    *o = larger(pair[0], pair[1]);
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MaxPool2x2 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.volume() == self.input.iter().product::<usize>().to_dim());
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::cnn::PoolSpec;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn pool_spec(c: usize, kernel: usize, stride: usize, padding: PaddingSpec) -> PoolSpec {
        PoolSpec {
            data_format: DataFormat::NCHW,
            kernel_shape: tvec![kernel, kernel],
            padding,
            dilations: None,
            strides: Some(tvec![stride, stride]),
            input_channels: c,
            output_channels: c,
        }
    }

    /// Runs `model` as tract optimises it, and with `install` first; returns both outputs and how many
    /// nodes `install` replaced.
    fn both(model: TypedModel, input: Tensor) -> (Vec<f32>, Vec<f32>, usize) {
        let run = |m: TypedModel| {
            let out = m
                .into_optimized()
                .unwrap()
                .into_runnable()
                .unwrap()
                .run(tvec!(input.clone().into_tvalue()))
                .unwrap();
            f32_values(&out[0]).unwrap().to_vec()
        };
        let reference = run(model.clone());
        let mut ours = model.into_decluttered().unwrap();
        let replaced = install(&mut ours).unwrap();
        (reference, run(ours), replaced)
    }

    fn depthwise(shape: [usize; 4], stride: usize, before: [usize; 2], after: [usize; 2]) {
        depthwise_in(DataFormat::NCHW, shape, stride, before, after)
    }

    /// `shape` is [N, C, H, W]; the input is laid out as `format` says.
    fn depthwise_in(
        format: DataFormat,
        shape: [usize; 4],
        stride: usize,
        before: [usize; 2],
        after: [usize; 2],
    ) {
        let [n, c, h, w] = shape;
        let layout = if format == DataFormat::NHWC {
            [n, h, w, c]
        } else {
            shape
        };
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(layout)).unwrap();
        let k = m
            .add_const(
                "k",
                Tensor::from_shape(&[c, 1, 3, 3], &values(c * 9, 1)).unwrap(),
            )
            .unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[c], &values(c, 2)).unwrap())
            .unwrap();
        let padding = PaddingSpec::Explicit(tvec![before[0], before[1]], tvec![after[0], after[1]]);
        let mut spec = pool_spec(c, 3, stride, padding);
        spec.data_format = format;
        let conv = Conv {
            pool_spec: spec,
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: None,
        };
        let y = m.wire_node("dw", conv, &[x, k, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(&layout, &values(n * c * h * w, 3)).unwrap();
        let (reference, ours, replaced) = both(m, input);
        assert_eq!(replaced, 1, "{format:?} {shape:?} stride {stride}");
        assert_eq!(reference.len(), ours.len());
        for (i, (r, o)) in reference.iter().zip(&ours).enumerate() {
            assert!(
                (r - o).abs() <= 1e-5,
                "{shape:?} stride {stride} pads {before:?}/{after:?}: [{i}] tract {r} ours {o}"
            );
        }
    }

    #[test]
    fn depthwise_matches_tract_for_every_stride_and_padding_seen_in_the_models() {
        // The models' cases: stride 1 pad 1; stride 2 pad 1; stride 2 pad bottom/right only.
        depthwise([1, 3, 7, 9], 1, [1, 1], [1, 1]);
        depthwise([1, 2, 8, 8], 2, [1, 1], [1, 1]);
        depthwise([1, 4, 9, 7], 2, [0, 0], [1, 1]);
        depthwise([1, 4, 10, 11], 2, [0, 0], [1, 1]);
        // And the corners: no padding, a single pixel, planes narrower than the kernel, a batch.
        depthwise([1, 2, 5, 6], 1, [0, 0], [0, 0]);
        depthwise([1, 1, 1, 1], 1, [1, 1], [1, 1]);
        depthwise([1, 5, 6, 2], 2, [1, 1], [1, 1]);
        depthwise([2, 3, 5, 5], 1, [2, 1], [0, 2]);
        // Stride 1, small planes in one pass: windows never wholly inside the plane, uneven pads.
        depthwise([1, 2, 2, 2], 1, [1, 1], [1, 1]);
        depthwise([1, 1, 4, 1], 1, [2, 2], [2, 2]);
        depthwise([1, 2, 6, 7], 1, [0, 2], [2, 0]);
        // Stride 1, planes from WHOLE_PLANE_BELOW columns read in place, with edge columns.
        depthwise([1, 2, 5, 40], 1, [1, 1], [1, 1]);
        depthwise([2, 1, 3, 33], 1, [0, 2], [2, 0]);
        depthwise([1, 1, 4, 35], 1, [2, 0], [0, 2]);
    }

    #[test]
    fn depthwise_matches_tract_on_interleaved_channels() {
        // YuNet's heads: NHWC, stride 1, 4 or 10 channels.
        depthwise_in(DataFormat::NHWC, [1, 4, 6, 8], 1, [1, 1], [1, 1]);
        depthwise_in(DataFormat::NHWC, [1, 10, 5, 3], 1, [1, 1], [1, 1]);
        depthwise_in(DataFormat::NHWC, [2, 3, 4, 4], 1, [2, 0], [0, 2]);
    }

    /// Appends ONNX Clip(0, 0.5) as tract declutters it, max(x, 0) then min(x, 0.5), with constants
    /// of the given rank; returns the clipped wire.
    fn clip(m: &mut TypedModel, wire: OutletId, rank: usize) -> OutletId {
        use tract_onnx::tract_core::ops::math;
        let ones = vec![1; rank];
        let low = m
            .add_const("low", Tensor::from_shape(&ones, &[0f32]).unwrap())
            .unwrap();
        let high = m
            .add_const("high", Tensor::from_shape(&ones, &[0.5f32]).unwrap())
            .unwrap();
        let wire = m.wire_node("clip.low", math::max(), &[wire, low]).unwrap()[0];
        m.wire_node("clip.high", math::min(), &[wire, high])
            .unwrap()[0]
    }

    /// A batch-1 NCHW model: x -> 3x3 depthwise (c channels) or 1x1 convolution (c -> outputs).
    fn conv_model(c: usize, outputs: usize, h: usize, w: usize) -> (TypedModel, OutletId) {
        let size = if outputs == 0 { 3 } else { 1 };
        let o = if outputs == 0 { c } else { outputs };
        let per_group = if outputs == 0 { 1 } else { c };
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let kernel = Tensor::from_shape(
            &[o, per_group, size, size],
            &values(o * per_group * size * size, 11),
        )
        .unwrap();
        let k = m.add_const("k", kernel).unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[o], &values(o, 12)).unwrap())
            .unwrap();
        let pad = size / 2;
        let mut spec = pool_spec(
            c,
            size,
            1,
            PaddingSpec::Explicit(tvec![pad; 2], tvec![pad; 2]),
        );
        spec.output_channels = o;
        let conv = Conv {
            pool_spec: spec,
            kernel_fmt: KernelFormat::OIHW,
            group: if outputs == 0 { c } else { 1 },
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
        (m, y)
    }

    fn assert_close(reference: &[f32], ours: &[f32], tolerance: f32, what: &str) {
        assert_eq!(reference.len(), ours.len(), "{what}");
        for (i, (r, o)) in reference.iter().zip(ours).enumerate() {
            assert!(
                (r - o).abs() <= tolerance,
                "{what}: [{i}] tract {r} ours {o}"
            );
        }
    }

    /// Operator names of the optimised model `install` was applied to.
    fn optimised_ops(model: TypedModel) -> Vec<String> {
        let mut ours = model.into_decluttered().unwrap();
        install(&mut ours).unwrap();
        let ours = ours.into_optimized().unwrap();
        ours.nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .collect()
    }

    #[test]
    fn a_clip_after_a_depthwise_convolution_is_folded_into_it() {
        let (mut m, y) = conv_model(3, 0, 8, 8);
        let clipped = clip(&mut m, y, 4);
        m.select_output_outlets(&[clipped]).unwrap();
        let input = Tensor::from_shape(&[1, 3, 8, 8], &values(192, 13)).unwrap();
        let (reference, ours, replaced) = both(m.clone(), input);
        assert_eq!(replaced, 1);
        assert_close(&reference, &ours, 1e-5, "depthwise + clip");
        // Both bounds acted, and no max or min is left for tract to run.
        assert!(ours.contains(&0.0) && ours.contains(&0.5), "{ours:?}");
        let ops = optimised_ops(m);
        assert!(
            ops.iter()
                .all(|op| !op.contains("Max") && !op.contains("Min")),
            "{ops:?}"
        );
    }

    #[test]
    fn a_clip_is_not_folded_when_the_unclipped_values_are_also_needed() {
        // The convolution's own output is a model output too: folding would lose it.
        let (mut m, y) = conv_model(3, 0, 6, 6);
        let clipped = clip(&mut m, y, 4);
        m.select_output_outlets(&[clipped, y]).unwrap();
        let input = Tensor::from_shape(&[1, 3, 6, 6], &values(108, 14)).unwrap();
        let (reference, ours, replaced) = both(m.clone(), input);
        assert_eq!(replaced, 1);
        assert_close(&reference, &ours, 1e-5, "clipped output");
        let ops = optimised_ops(m);
        assert!(ops.iter().any(|op| op.contains("Max")), "{ops:?}");
    }

    fn pointwise_case(c: usize, outputs: usize, h: usize, w: usize) {
        let (mut m, y) = conv_model(c, outputs, h, w);
        let clipped = clip(&mut m, y, 4);
        m.select_output_outlets(&[clipped]).unwrap();
        let input = Tensor::from_shape(&[1, c, h, w], &values(c * h * w, 15)).unwrap();
        let (reference, ours, replaced) = both(m, input);
        let used = avx512_available() && h * w >= POINTWISE_MIN_PIXELS && outputs >= TILE_CHANNELS;
        assert_eq!(replaced, usize::from(used), "{c} -> {outputs}, {h}x{w}");
        assert_close(
            &reference,
            &ours,
            1e-5,
            &format!("{c} -> {outputs}, {h}x{w}"),
        );
    }

    #[test]
    fn pointwise_matches_tract_where_it_is_used_and_is_left_to_tract_elsewhere() {
        // 900 pixels and 6 outputs: the last pixel tile and channel block overlap the previous.
        pointwise_case(16, 6, 30, 30);
        pointwise_case(64, 64, 28, 28);
        pointwise_case(3, 4, 32, 40);
        // Too small an image, too few outputs: tract's.
        pointwise_case(8, 8, 7, 7);
        pointwise_case(8, 3, 32, 32);
    }

    fn first_layer_case(c: usize, o: usize, stride: usize, h: usize, w: usize) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
        let kernel = Tensor::from_shape(&[o, c, 3, 3], &values(o * c * 9, 21)).unwrap();
        let k = m.add_const("k", kernel).unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[o], &values(o, 22)).unwrap())
            .unwrap();
        let mut spec = pool_spec(
            c,
            3,
            stride,
            PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]),
        );
        spec.output_channels = o;
        let conv = Conv {
            pool_spec: spec,
            kernel_fmt: KernelFormat::OIHW,
            group: 1,
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
        let clipped = clip(&mut m, y, 4);
        m.select_output_outlets(&[clipped]).unwrap();
        let input = Tensor::from_shape(&[1, c, h, w], &values(c * h * w, 23)).unwrap();
        let (reference, ours, replaced) = both(m, input);
        let what = format!("{c} -> {o}, stride {stride}, {h}x{w}");
        assert_eq!(replaced, usize::from(avx512_available()), "{what}");
        assert_close(&reference, &ours, 1e-5, &what);
    }

    #[test]
    fn first_layer_matches_tract() {
        // YuNet's: RGB -> 16 at stride 2; then overlapping channel and pixel tiles, stride 1, odd sizes.
        first_layer_case(3, 16, 2, 24, 40);
        first_layer_case(3, 20, 2, 33, 37);
        first_layer_case(1, 16, 1, 5, 18);
        first_layer_case(4, 24, 1, 17, 21);
    }

    #[test]
    fn tiled_and_plain_first_layer_agree() {
        let window = Window {
            input: [1, 3, 9, 40],
            output: [1, 18, 5, 20],
            output_shape: vec![1, 18, 5, 20],
            stride: 2,
            pad_top: 1,
            pad_left: 1,
        };
        let image = values(3 * 9 * 40, 24);
        let mut padded = vec![0f32; 3 * window.padded_len()];
        for (src, padded) in image
            .chunks_exact(9 * 40)
            .zip(padded.chunks_exact_mut(window.padded_len()))
        {
            window.pad(src, padded);
        }
        let (by_tap, bias) = (values(18 * 27, 25), values(18, 26));
        let clamp = Clamp {
            low: -0.5,
            high: 1.0,
        };
        let mut plain = vec![0f32; 18 * 100];
        first_layer_plain(&window, &padded, &by_tap, &bias, clamp, &mut plain);
        assert!(plain.contains(&-0.5) && plain.contains(&1.0));
        #[cfg(target_arch = "x86_64")]
        if avx512_available() {
            let mut tiled = vec![f32::NAN; 18 * 100];
            unsafe { first_layer_tiled(&window, &padded, &by_tap, &bias, clamp, &mut tiled) };
            assert_close(&plain, &tiled, 1e-5, "tiled vs plain");
        }
    }

    #[test]
    fn tiled_and_plain_pointwise_agree() {
        let (inputs, outputs, pixels) = (24, 10, 100);
        let data = values(inputs * pixels, 16);
        let weights = values(outputs * inputs, 17);
        let bias = values(outputs, 18);
        let clamp = Clamp {
            low: -0.5,
            high: 1.0,
        };
        let mut plain = vec![0f32; outputs * pixels];
        pointwise_plain(&data, &weights, &bias, pixels, clamp, &mut plain);
        let mut chosen = vec![f32::NAN; outputs * pixels];
        pointwise(&data, &weights, &bias, pixels, clamp, &mut chosen);
        assert_close(&plain, &chosen, 1e-5, "tiled vs plain");
        assert!(plain.contains(&-0.5) && plain.contains(&1.0));
    }

    #[test]
    fn max_pool_matches_tract_including_odd_sizes() {
        for shape in [[1, 3, 8, 6], [1, 2, 7, 5], [2, 1, 2, 2]] {
            let [n, c, h, w] = shape;
            let mut m = TypedModel::default();
            let x = m.add_source("x", f32::fact(shape)).unwrap();
            let pool = MaxPool {
                pool_spec: pool_spec(c, 2, 2, PaddingSpec::Valid),
                with_index_outputs: None,
            };
            let y = m.wire_node("pool", pool, &[x]).unwrap();
            m.select_output_outlets(&y).unwrap();
            let input = Tensor::from_shape(&shape, &values(n * c * h * w, 4)).unwrap();
            let (reference, ours, replaced) = both(m, input);
            assert_eq!(replaced, 1, "{shape:?}");
            assert_eq!(reference, ours, "{shape:?}");
        }
    }

    #[test]
    fn every_eligible_node_of_a_chain_is_replaced_in_one_pass() {
        // depthwise -> max pool -> depthwise: each replacement rewires the next node's input.
        let c = 3;
        let mut m = TypedModel::default();
        let mut wire = m.add_source("x", f32::fact([1, c, 8, 8])).unwrap();
        for (i, stage) in ["dw", "pool", "dw"].into_iter().enumerate() {
            let name = format!("{stage}{i}");
            wire = if stage == "pool" {
                let pool = MaxPool {
                    pool_spec: pool_spec(c, 2, 2, PaddingSpec::Valid),
                    with_index_outputs: None,
                };
                m.wire_node(name, pool, &[wire]).unwrap()[0]
            } else {
                let k = Tensor::from_shape(&[c, 1, 3, 3], &values(c * 9, i as u64)).unwrap();
                let k = m.add_const(format!("{name}.k"), k).unwrap();
                let b = m
                    .add_const(
                        format!("{name}.b"),
                        Tensor::from_shape(&[c], &values(c, 9)).unwrap(),
                    )
                    .unwrap();
                let padding = PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]);
                let conv = Conv {
                    pool_spec: pool_spec(c, 3, 1, padding),
                    kernel_fmt: KernelFormat::OIHW,
                    group: c,
                    q_params: None,
                };
                m.wire_node(name, conv, &[wire, k, b]).unwrap()[0]
            };
        }
        m.select_output_outlets(&[wire]).unwrap();
        let input = Tensor::from_shape(&[1, c, 8, 8], &values(c * 64, 7)).unwrap();
        let (reference, ours, replaced) = both(m, input);
        assert_eq!(replaced, 3);
        for (r, o) in reference.iter().zip(&ours) {
            assert!((r - o).abs() <= 1e-5, "tract {r} ours {o}");
        }
    }

    #[test]
    fn other_convolutions_are_left_to_tract() {
        // A grouped but not depthwise 3x3 convolution (2 channels per group) stays tract's.
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([1, 4, 6, 6])).unwrap();
        let k = m
            .add_const(
                "k",
                Tensor::from_shape(&[4, 2, 3, 3], &values(72, 5)).unwrap(),
            )
            .unwrap();
        let b = m
            .add_const("b", Tensor::from_shape(&[4], &values(4, 6)).unwrap())
            .unwrap();
        let mut spec = pool_spec(4, 3, 1, PaddingSpec::Explicit(tvec![1, 1], tvec![1, 1]));
        spec.output_channels = 4;
        let conv = Conv {
            pool_spec: spec,
            kernel_fmt: KernelFormat::OIHW,
            group: 2,
            q_params: None,
        };
        let y = m.wire_node("conv", conv, &[x, k, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let mut decluttered = m.into_decluttered().unwrap();
        assert_eq!(install(&mut decluttered).unwrap(), 0);
    }
}
