//! Where the graph rewrite looks in a QDQ graph (onnxruntime's static quantizer, uint8 activations,
//! int8 weights): `DequantizeLinear(u8) -> layer -> QuantizeLinear(u8)` for a 1x1 convolution with
//! its bias, a planar 3x3 depthwise or dense convolution with its bias, a residual addition of two
//! dequantized tensors, and any element-wise chain that depends on one uint8 tensor (a table of 256
//! values). tract declutters the weights' own DequantizeLinear into f32 constants; their int8 values
//! and per-channel scales are recovered from them (and a weight that is not an int8 multiple of its
//! channel's scale leaves the node to tract).

use crate::ops::*;
use crate::rewrite::{
    added_after, depthwise_for, kernel_and_bias, max_pool_for, patch_through, planar_pointwise,
    window_for,
};
use std::collections::HashMap;
use std::sync::Arc;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::ensure;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::cnn::Conv;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Mul};
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, QuantizeLinearU8};

type Rewrite = fn(&TypedModel, &TypedNode) -> TractResult<Option<TypedModelPatch>>;

/// The patch computing `node` (and the quantizer after it) in integers, if one of the patterns
/// starts there.
pub(crate) fn integer_patch(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    let rewrites: [Rewrite; 8] = [
        quantized_max_pool,
        quantized_pointwise,
        quantized_depthwise,
        quantized_conv3x3,
        quantized_add,
        quantized_channel_mul,
        lookup_table,
        input_quantizer,
    ];
    for rewrite in rewrites {
        if let Some(patch) = rewrite(model, node)? {
            return Ok(Some(patch));
        }
    }
    Ok(None)
}

/// A uint8 tensor and how it maps to real values: value = (x - zero) * scale.
#[derive(Debug, Clone, Copy)]
struct Quantized {
    outlet: OutletId,
    scale: f32,
    zero: u8,
}

/// The uint8 tensor a DequantizeLinear node producing `outlet` reads.
fn dequantized(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Quantized>> {
    let node = model.node(outlet.node);
    let Some(dq) = node.op_as::<DequantizeLinearF32>() else {
        return Ok(None);
    };
    let source = node.inputs[0];
    let zero = u8::try_from(dq.zero_point).ok();
    Ok(zero
        .filter(|_| {
            model
                .outlet_fact(source)
                .is_ok_and(|f| f.datum_type == u8::datum_type())
        })
        .map(|zero| Quantized {
            outlet: source,
            scale: dq.scale,
            zero,
        }))
}

/// When the one reader of `outlet` is a QuantizeLinear to uint8: its output, its multiplier (the
/// inverse of the ONNX scale, as tract stores it) and its zero point.
fn quantized_after(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Quantized>> {
    let readers = model.outlet_successors(outlet);
    if readers.len() != 1 || model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    let node = model.node(readers[0].node);
    let q = node
        .op_as::<ElementWiseOp>()
        .and_then(|op| op.0.downcast_ref::<QuantizeLinearU8>());
    Ok(q.map(|q| Quantized {
        outlet: OutletId::new(node.id, 0),
        scale: q.scale,
        zero: q.zero_point,
    }))
}

/// The int8 values and the scale of each row of `weights` (rows of `per_row` values), when every
/// value is an int8 multiple of its row's scale, as symmetric per-channel quantization makes them.
/// The scale is the row's largest magnitude over 127 or over 128 (a -128 weight), whichever fits.
pub(crate) fn int8_rows(weights: &[f32], per_row: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    let mut values = Vec::with_capacity(weights.len());
    let mut scales = Vec::new();
    for row in weights.chunks_exact(per_row) {
        let largest = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        if largest == 0.0 {
            values.extend(std::iter::repeat_n(0i8, per_row));
            scales.push(1.0);
            continue;
        }
        let fits = |divisor: f32| {
            let scale = largest / divisor;
            let q: Option<Vec<i8>> = row
                .iter()
                .map(|&v| {
                    let q = (v / scale).round();
                    let exact = ((v / scale) - q).abs() < 1e-3;
                    (exact && (-128.0..=127.0).contains(&q)).then_some(q as i8)
                })
                .collect();
            q.map(|q| (q, scale))
        };
        let (q, scale) = fits(127.0).or_else(|| fits(128.0))?;
        values.extend(q);
        scales.push(scale);
    }
    Some((values, scales))
}

/// The constant f32 values of `outlet`.
fn constant(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    Ok(match &fact.konst {
        Some(k) if k.datum_type() == f32::datum_type() => Some(f32_values(k)?.to_vec()),
        _ => None,
    })
}

/// A per-channel bias of `channels` values (or one shared value) broadcast over a tensor of `rank`
/// axes whose channel axis is `rank - 3`.
fn channel_bias(
    model: &TypedModel,
    outlet: OutletId,
    channels: usize,
) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    let Some(values) = constant(model, outlet)? else {
        return Ok(None);
    };
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    let along_channels = shape.len() >= 3
        && shape[shape.len() - 2..] == [1, 1]
        && shape[..shape.len() - 3].iter().all(|&d| d == 1);
    Ok(match values.len() {
        1 => Some(vec![values[0]; channels]),
        n if n == channels && along_channels => Some(values),
        _ => None,
    })
}

fn requantize(
    input: Quantized,
    output: Quantized,
    weight_scales: &[f32],
    bias: &[f32],
    offsets: Vec<i32>,
) -> Arc<Requantize> {
    Arc::new(Requantize {
        offset: offsets,
        scale: weight_scales
            .iter()
            .map(|s| input.scale * s * output.scale)
            .collect(),
        shift: bias.iter().map(|b| b * output.scale).collect(),
        zero: output.zero,
    })
}

/// The f32 weights of `outputs` rows as packed int8 for the GEMM, and the requantization that takes
/// its sums to the output; `None` when they are not int8 multiples of per-row scales.
fn gemm_weights(
    weights: &[f32],
    outputs: usize,
    input: Quantized,
    output: Quantized,
    bias: &[f32],
) -> Option<(Arc<PackedWeights>, Arc<Requantize>)> {
    let per_row = weights.len() / outputs;
    let (int8, scales) = int8_rows(weights, per_row)?;
    let packed = PackedWeights::new(&int8, outputs, per_row, GemmKind::detect());
    let offsets = (0..outputs).map(|o| packed.offset(o, input.zero)).collect();
    let requantize = requantize(input, output, &scales, bias, offsets);
    Some((Arc::new(packed), requantize))
}

/// A 1x1 convolution (tract's planar EinSum `IHW,OI->OHW` plus its bias) between a dequantized
/// input and a quantizer: the patch that computes it in integers.
pub(crate) fn quantized_pointwise(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    if !planar_pointwise(node) {
        return Ok(None);
    }
    let Some(input) = dequantized(model, node.inputs[0])? else {
        return Ok(None);
    };
    let data = model.outlet_fact(input.outlet)?;
    let weights_fact = model.outlet_fact(node.inputs[1])?;
    let (Some(data_shape), Some(&[o, i])) =
        (data.shape.as_concrete(), weights_fact.shape.as_concrete())
    else {
        return Ok(None);
    };
    let pixels = match *data_shape {
        [1, c, h, w] | [c, h, w] if c == i => h * w,
        _ => return Ok(None),
    };
    let Some(weights) = constant(model, node.inputs[1])? else {
        return Ok(None);
    };
    // The bias: the one reader of the product, an Add of a constant along the channels.
    let product = OutletId::new(node.id, 0);
    let Some((add, bias)) = added_after(model, product)? else {
        return Ok(None);
    };
    let Some(bias) = channel_bias(model, bias, o)? else {
        return Ok(None);
    };
    let sum = OutletId::new(add.id, 0);
    if model.outlet_fact(sum)?.shape != model.outlet_fact(product)?.shape {
        return Ok(None);
    }
    let Some(output) = quantized_after(model, sum)? else {
        return Ok(None);
    };
    let Some((weights, requantize)) = gemm_weights(&weights, o, input, output, &bias) else {
        return Ok(None);
    };
    let output_shape = model
        .outlet_fact(output.outlet)?
        .shape
        .as_concrete()
        .map(|s| s.to_vec());
    let Some(output_shape) = output_shape else {
        return Ok(None);
    };
    let op = QuantizedPointwise {
        pixels,
        output_shape,
        weights,
        requantize,
    };
    Ok(Some(patch_through(
        model,
        node,
        &[input.outlet],
        op,
        output.outlet,
    )?))
}

/// What a convolution node [data, kernel, bias] between a dequantizer and a quantizer needs to run in
/// integers.
struct QuantizedConv {
    input: Quantized,
    kernel: Vec<f32>,
    /// One value per output channel.
    bias: Vec<f32>,
    output: Quantized,
}

/// The dequantized input, constant kernel, bias (`outputs` values, or one shared) and the quantizer
/// of convolution `node`.
fn quantized_conv(
    model: &TypedModel,
    node: &TypedNode,
    outputs: usize,
) -> TractResult<Option<QuantizedConv>> {
    let Some(input) = dequantized(model, node.inputs[0])? else {
        return Ok(None);
    };
    let (Some(kernel), Some(bias)) = (
        constant(model, node.inputs[1])?,
        constant(model, node.inputs[2])?,
    ) else {
        return Ok(None);
    };
    let bias = match bias.len() {
        1 => vec![bias[0]; outputs],
        n if n == outputs => bias,
        _ => return Ok(None),
    };
    let Some(output) = quantized_after(model, OutletId::new(node.id, 0))? else {
        return Ok(None);
    };
    Ok(Some(QuantizedConv {
        input,
        kernel,
        bias,
        output,
    }))
}

/// A planar 3x3 depthwise convolution with constant weights and bias between a dequantized input
/// and a quantizer.
pub(crate) fn quantized_depthwise(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    if !node.op_is::<Conv>() {
        return Ok(None);
    }
    let Some(conv) = depthwise_for(model, node)?.filter(|d| !d.channels_last) else {
        return Ok(None);
    };
    let c = conv.window.input[1];
    let Some(QuantizedConv {
        input,
        kernel,
        bias,
        output,
    }) = quantized_conv(model, node, c)?
    else {
        return Ok(None);
    };
    let Some((int8, scales)) = int8_rows(&kernel, 9) else {
        return Ok(None);
    };
    // The sums run over the stored uint8 values: the zero point's share, zero point x the
    // channel's weight sum, is taken off in the requantization.
    let zero_share = int8
        .chunks_exact(9)
        .map(|taps| -(input.zero as i32) * taps.iter().map(|&w| w as i32).sum::<i32>())
        .collect();
    let op = QuantizedDepthwise {
        window: conv.window,
        input_zero: input.zero,
        kernel: Arc::new(int8.iter().map(|&w| w as i16).collect()),
        requantize: requantize(input, output, &scales, &bias, zero_share),
    };
    Ok(Some(patch_through(
        model,
        node,
        &[input.outlet],
        op,
        output.outlet,
    )?))
}

/// A planar dense 3x3 convolution with constant weights and bias between a dequantized input and a
/// quantizer (EfficientNetV2's fused blocks, a network's first layer).
pub(crate) fn quantized_conv3x3(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    if node.op_as::<Conv>().is_none_or(|conv| conv.group != 1) {
        return Ok(None);
    }
    let Some((window, false)) = window_for(model, node)? else {
        return Ok(None);
    };
    let [_, c, _, _] = window.input;
    let o = window.output[1];
    if !kernel_and_bias(model, node, &[o, c, 3, 3], &[o, 1])? {
        return Ok(None);
    }
    let Some(QuantizedConv {
        input,
        kernel,
        bias,
        output,
    }) = quantized_conv(model, node, o)?
    else {
        return Ok(None);
    };
    let Some((weights, requantize)) = gemm_weights(&kernel, o, input, output, &bias) else {
        return Ok(None);
    };
    let op = QuantizedConv3x3 {
        window,
        input_zero: input.zero,
        weights,
        requantize,
    };
    Ok(Some(patch_through(
        model,
        node,
        &[input.outlet],
        op,
        output.outlet,
    )?))
}

/// The two uint8 tensors read by `node` when it is the binary op `Op` of two dequantized values.
fn dequantized_operands<Op: BinMiniOp>(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(Quantized, Quantized)>> {
    let is_op = node
        .op_as::<TypedBinOp>()
        .is_some_and(|b| b.0.is::<Op>() && b.1.is_none() && node.inputs.len() == 2);
    if !is_op {
        return Ok(None);
    }
    Ok(dequantized(model, node.inputs[0])?.zip(dequantized(model, node.inputs[1])?))
}

/// The sum of two dequantized tensors of one shape, quantized again.
pub(crate) fn quantized_add(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    let Some((a, b)) = dequantized_operands::<Add>(model, node)? else {
        return Ok(None);
    };
    if model.outlet_fact(a.outlet)?.shape != model.outlet_fact(b.outlet)?.shape {
        return Ok(None);
    }
    let Some(output) = quantized_after(model, OutletId::new(node.id, 0))? else {
        return Ok(None);
    };
    let op = QuantizedAdd {
        scales: [a.scale * output.scale, b.scale * output.scale],
        zeros: [a.zero, b.zero],
        output_zero: output.zero,
    };
    Ok(Some(patch_through(
        model,
        node,
        &[a.outlet, b.outlet],
        op,
        output.outlet,
    )?))
}

/// The product of a dequantized image [N, C, H, W] and a dequantized factor per channel [N, C, 1,
/// 1] (squeeze-and-excitation's gate in EfficientNet blocks) before a quantizer.
pub(crate) fn quantized_channel_mul(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    let Some((a, b)) = dequantized_operands::<Mul>(model, node)? else {
        return Ok(None);
    };
    let shape = |q: &Quantized| -> TractResult<Option<Vec<usize>>> {
        Ok(model
            .outlet_fact(q.outlet)?
            .shape
            .as_concrete()
            .map(|s| s.to_vec()))
    };
    let (Some(sa), Some(sb)) = (shape(&a)?, shape(&b)?) else {
        return Ok(None);
    };
    let gates = |image: &[usize], gate: &[usize]| {
        image.len() == 4 && gate == [image[0], image[1], 1, 1] && image[2] * image[3] > 1
    };
    let (image, gate, plane) = if gates(&sa, &sb) {
        (a, b, sa[2] * sa[3])
    } else if gates(&sb, &sa) {
        (b, a, sb[2] * sb[3])
    } else {
        return Ok(None);
    };
    let Some(output) = quantized_after(model, OutletId::new(node.id, 0))? else {
        return Ok(None);
    };
    let op = QuantizedChannelMul {
        plane,
        image: (image.scale, image.zero),
        gate: (gate.scale, gate.zero),
        output: (output.scale, output.zero),
    };
    Ok(Some(patch_through(
        model,
        node,
        &[image.outlet, gate.outlet],
        op,
        output.outlet,
    )?))
}

/// `DequantizeLinear(u8) -> 2x2 max pool -> QuantizeLinear(u8)`: the pool on the codes (the largest
/// code is the largest value's), then the codes from the input's quantization to the output's as a
/// table of 256 values (none when the two are the same), made by tract's own two quantizer ops.
fn quantized_max_pool(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    let Some(pool) = max_pool_for(model, node)? else {
        return Ok(None);
    };
    let Some(input) = dequantized(model, node.inputs[0])? else {
        return Ok(None);
    };
    let Some(output) = quantized_after(model, OutletId::new(node.id, 0))? else {
        return Ok(None);
    };
    let mut table_model = TypedModel::default();
    let codes = table_model.add_source("codes", u8::fact([256]))?;
    let dequantizer = model.node(node.inputs[0].node).op.clone();
    let real = table_model.wire_node("dq", dequantizer, &[codes])?[0];
    let quantizer = model.node(output.outlet.node).op.clone();
    let requantized = table_model.wire_node("q", quantizer, &[real])?[0];
    let table = run_on_codes(table_model, requantized, &[256])?;
    let mut patch = TypedModelPatch::default();
    let source = patch.tap_model(model, input.outlet)?;
    let mut pooled = patch.wire_node(&node.name, pool, &[source])?[0];
    if table
        .iter()
        .enumerate()
        .any(|(code, &to)| code != to as usize)
    {
        let op = Table256 {
            table: Arc::new(table),
        };
        pooled = patch.wire_node(format!("{}.requantized", node.name), op, &[pooled])?[0];
    }
    patch.shunt_outside(model, output.outlet, pooled)?;
    Ok(Some(patch))
}

/// Whether `node` computes each output value from the values at the same place of its inputs (of
/// the output's shape) and scalar constants only: what a table of 256 entries can stand for.
fn element_wise(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let shaped = node.op_is::<DequantizeLinearF32>()
        || node.op_is::<ElementWiseOp>()
        || node.op_is::<Table256>()
        || node.op_as::<TypedBinOp>().is_some_and(|b| b.1.is_none());
    if !shaped || node.outputs.len() != 1 {
        return Ok(false);
    }
    let shape = &model.outlet_fact(OutletId::new(node.id, 0))?.shape;
    for &input in &node.inputs {
        let fact = model.outlet_fact(input)?;
        let scalar = fact.konst.as_ref().is_some_and(|k| k.len() == 1);
        if !scalar && fact.shape != *shape {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The uint8 tensors the value at `outlet` is an element-wise function of, walking back through
/// element-wise nodes and stopping at uint8 values; false when the walk meets anything else.
fn element_wise_leaves(
    model: &TypedModel,
    outlet: OutletId,
    leaves: &mut Vec<OutletId>,
) -> TractResult<bool> {
    let node = model.node(outlet.node);
    if !element_wise(model, node)? {
        return Ok(false);
    }
    for &input in &node.inputs {
        let fact = model.outlet_fact(input)?;
        if fact.konst.is_some() {
            continue;
        }
        if fact.datum_type == u8::datum_type() {
            if !leaves.contains(&input) {
                leaves.push(input);
            }
        } else if !element_wise_leaves(model, input, leaves)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A QuantizeLinear(u8) whose input is an element-wise function of a single uint8 tensor (through
/// dequantizers, activations such as Sigmoid, products and sums of those, and other quantizers):
/// the whole of it as one table of 256 values, computed by tract itself on the 256 possible
/// inputs. This is how SiLU (x * sigmoid(x), each side with its own quantizers) becomes one lookup,
/// which tract's own rewrite cannot do since x is read twice.
pub(crate) fn lookup_table(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<TypedModelPatch>> {
    let is_quantizer = node
        .op_as::<ElementWiseOp>()
        .is_some_and(|op| op.0.is::<QuantizeLinearU8>());
    let output = OutletId::new(node.id, 0);
    if !is_quantizer
        || (model.outlet_successors(output).is_empty()
            && !model.output_outlets()?.contains(&output))
    {
        return Ok(None);
    }
    // The quantizer's input is f32, so a successful walk passes at least one node before a leaf.
    let mut leaves = vec![];
    if !element_wise_leaves(model, node.inputs[0], &mut leaves)? {
        return Ok(None);
    }
    // More than one leaf: follow those that are themselves made element-wise from others (a
    // quantizer's output, an earlier table's) until one remains.
    let mut settled = vec![];
    while leaves.len() > 1 {
        let Some(leaf) = leaves.iter().copied().find(|l| !settled.contains(l)) else {
            return Ok(None);
        };
        let mut more_leaves = vec![];
        if element_wise_leaves(model, leaf, &mut more_leaves)? {
            leaves.retain(|&l| l != leaf);
            for l in more_leaves {
                if !leaves.contains(&l) {
                    leaves.push(l);
                }
            }
        } else {
            settled.push(leaf);
        }
    }
    let [source] = leaves[..] else {
        return Ok(None);
    };
    let rank = model.outlet_fact(source)?.rank();
    if rank == 0 {
        return Ok(None);
    }
    // An op that cannot be evaluated on the 256 values alone leaves the node to tract: the model
    // still loads.
    let Ok(table) = table_of(model, source, rank, output) else {
        return Ok(None);
    };
    let op = Table256 {
        table: Arc::new(table),
    };
    let mut patch = TypedModelPatch::default();
    let tapped = patch.tap_model(model, source)?;
    let looked_up = patch.wire_node(format!("{}.table", node.name), op, &[tapped])?[0];
    patch.shunt_outside(model, output, looked_up)?;
    Ok(Some(patch))
}

/// A QuantizeLinear(u8) of any other f32 tensor (the graph's input): tract's op, vectorised.
fn input_quantizer(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    let Some(q) = node
        .op_as::<ElementWiseOp>()
        .and_then(|op| op.0.downcast_ref::<QuantizeLinearU8>())
    else {
        return Ok(None);
    };
    if model.outlet_fact(node.inputs[0])?.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let op = QuantizeU8 {
        multiplier: q.scale,
        zero: q.zero_point,
    };
    Ok(Some(TypedModelPatch::replace_single_op(
        model,
        node,
        &node.inputs,
        op,
    )?))
}

/// The uint8 values `output` takes for each of the 256 values of `source`: the nodes between them
/// copied onto a tensor holding the 256 values along its first axis, and run by tract.
fn table_of(
    model: &TypedModel,
    source: OutletId,
    rank: usize,
    output: OutletId,
) -> TractResult<[u8; 256]> {
    let mut table_model = TypedModel::default();
    let mut shape = vec![1usize; rank];
    shape[0] = 256;
    let mut wired = HashMap::new();
    wired.insert(source, table_model.add_source("values", u8::fact(&shape))?);
    let end = wire_copy(model, &mut table_model, output, &mut wired)?;
    run_on_codes(table_model, end, &shape)
}

/// `table_model`'s uint8 `output` for its one source holding the 256 codes along its first axis
/// (`shape`): a table from each code to what the copied ops make of it.
fn run_on_codes(
    mut table_model: TypedModel,
    output: OutletId,
    shape: &[usize],
) -> TractResult<[u8; 256]> {
    table_model.select_output_outlets(&[output])?;
    let values = Tensor::from_shape(shape, &(0..=255u8).collect::<Vec<u8>>())?;
    let table = table_model
        .into_runnable()?
        .run(tvec!(values.into_tvalue()))?
        .remove(0);
    let table = table.try_as_plain_ram()?.as_slice::<u8>()?;
    ensure!(table.len() == 256);
    Ok(table.try_into()?)
}

/// Copies the node producing `outlet` and everything it depends on (up to the outlets already in
/// `wired`) from `model` into `into`.
fn wire_copy(
    model: &TypedModel,
    into: &mut TypedModel,
    outlet: OutletId,
    wired: &mut HashMap<OutletId, OutletId>,
) -> TractResult<OutletId> {
    if let Some(&done) = wired.get(&outlet) {
        return Ok(done);
    }
    let node = model.node(outlet.node);
    let copied = if let Some(k) = &model.outlet_fact(outlet)?.konst {
        into.add_const(format!("{}.{}", node.name, outlet.slot), k.clone())?
    } else {
        let mut inputs = tvec![];
        for &input in &node.inputs {
            inputs.push(wire_copy(model, into, input, wired)?);
        }
        into.wire_node(&node.name, node.op.clone(), &inputs)?[outlet.slot]
    };
    wired.insert(outlet, copied);
    Ok(copied)
}
