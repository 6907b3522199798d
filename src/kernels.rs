//! face-edge's own kernels for the two operators where tract 0.23 spends the most time relative to
//! onnxruntime on our networks (`face-edge bench --profile`): 3x3 depthwise convolution (every
//! MobileNet-style block of YuNet, MobileFaceNet and EfficientNetV2) and 2x2 max pooling (YuNet's
//! backbone). They are tract operators: `install` swaps them into a decluttered f32 graph before tract
//! optimises it, so everything else stays tract's. Pure computation; tested against tract's own ops.

use crate::inference::f32_values;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Replaces every eligible depthwise 3x3 convolution and 2x2/2 max pool of an f32 NCHW graph with
/// concrete shapes; returns how many nodes were replaced.
pub fn install(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    // One pass: applying a patch appends the new node and rewires the old one's successors to it, so
    // the ids of the nodes still to visit stay valid (the old node is left dead for tract to prune).
    for id in model.eval_order()? {
        let node = model.node(id);
        let patch = if let Some(op) = depthwise_for(model, node)? {
            TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?
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

/// The concrete shape of an f32 input as [N, C, H, W] (N = 1 for CHW, which tract's decluttering
/// makes of a batch of one), if it is one of those layouts.
fn f32_nchw(
    model: &TypedModel,
    outlet: OutletId,
    format: DataFormat,
) -> TractResult<Option<[usize; 4]>> {
    let fact = model.outlet_fact(outlet)?;
    if fact.datum_type != f32::datum_type() {
        return Ok(None);
    }
    Ok(match (format, fact.shape.as_concrete()) {
        (DataFormat::NCHW, Some(&[n, c, h, w])) => Some([n, c, h, w]),
        (DataFormat::CHW, Some(&[c, h, w])) => Some([1, c, h, w]),
        _ => None,
    })
}

/// The output shape in the input's layout.
fn shape_like(format: DataFormat, [n, c, h, w]: [usize; 4]) -> Vec<usize> {
    if format == DataFormat::CHW {
        vec![c, h, w]
    } else {
        vec![n, c, h, w]
    }
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

fn depthwise_for(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Depthwise3x3>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let Some([n, c, h, w]) = f32_nchw(model, node.inputs[0], spec.data_format)? else {
        return Ok(None);
    };
    let strides = spec.strides.as_deref().unwrap_or(&[1, 1]);
    let eligible = conv.q_params.is_none()
        && node.inputs.len() == 3
        && conv.kernel_fmt == KernelFormat::OIHW
        && conv.group == c
        && spec.input_channels == c
        && spec.output_channels == c
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
    let kernel = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let consts = kernel.konst.is_some()
        && bias.konst.is_some()
        && kernel.datum_type == f32::datum_type()
        && bias.datum_type == f32::datum_type()
        && kernel.shape.as_concrete() == Some(&[c, 1, 3, 3][..])
        && bias
            .shape
            .volume()
            .as_i64()
            .is_some_and(|v| v == c as i64 || v == 1);
    if !eligible || !consts || before.iter().chain(&after).any(|&p| p > 2) {
        return Ok(None);
    }
    let stride = strides[0];
    let out =
        |size: usize, b: usize, a: usize| (size + b + a).checked_sub(3).map(|s| s / stride + 1);
    let (Some(oh), Some(ow)) = (out(h, before[0], after[0]), out(w, before[1], after[1])) else {
        return Ok(None);
    };
    Ok(Some(Depthwise3x3 {
        input: [n, c, h, w],
        output: [n, c, oh, ow],
        output_shape: shape_like(spec.data_format, [n, c, oh, ow]),
        stride,
        pad_top: before[0],
        pad_left: before[1],
    }))
}

fn max_pool_for(model: &TypedModel, node: &TypedNode) -> TractResult<Option<MaxPool2x2>> {
    let Some(pool) = node.op_as::<MaxPool>() else {
        return Ok(None);
    };
    let spec = &pool.pool_spec;
    let Some([n, c, h, w]) = f32_nchw(model, node.inputs[0], spec.data_format)? else {
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

/// 3x3 depthwise convolution, NCHW f32, stride 1 or 2, zero padding; inputs: data, kernel [C,1,3,3],
/// bias [C] (or one value).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Depthwise3x3 {
    /// As [N, C, H, W], whatever the layout's rank.
    input: [usize; 4],
    output: [usize; 4],
    /// The output as the graph has it (NCHW or CHW).
    output_shape: Vec<usize>,
    stride: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Op for Depthwise3x3 {
    fn name(&self) -> StaticName {
        "FaceEdgeDepthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{:?} -> {:?}, stride {}, pad top {} left {}",
            self.input, self.output, self.stride, self.pad_top, self.pad_left
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
        ensure!(inputs.len() == 3 && inputs[0].len() == self.input.iter().product::<usize>());
        let data = f32_values(&inputs[0])?;
        let kernel = f32_values(&inputs[1])?;
        let bias = f32_values(&inputs[2])?;
        let [_, c, h, w] = self.input;
        let [_, _, oh, ow] = self.output;
        ensure!(kernel.len() == c * 9 && (bias.len() == c || bias.len() == 1));
        // Every element is written below (rows start from the bias).
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        let (ph, pw) = self.padded_size();
        let mut scratch = vec![0f32; ph * 2 * pw.div_ceil(2)];
        let planes = data
            .chunks_exact(h * w)
            .zip(out_values(&mut out)?.chunks_exact_mut(oh * ow));
        for (i, (src, dst)) in planes.enumerate() {
            let ch = i % c;
            let taps: &[f32; 9] = kernel[ch * 9..ch * 9 + 9].try_into()?;
            let b = if bias.len() == 1 { bias[0] } else { bias[ch] };
            self.plane(src, dst, taps, b, &mut scratch);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// The f32 values of a tensor this module just allocated as f32 (so the unchecked view is its type).
fn out_values(t: &mut Tensor) -> TractResult<&mut [f32]> {
    ensure!(t.datum_type() == f32::datum_type());
    Ok(unsafe { t.as_slice_mut_unchecked::<f32>() })
}

impl Depthwise3x3 {
    /// The padded input extent the outputs read: rows and columns of `padded`.
    fn padded_size(&self) -> (usize, usize) {
        let [_, _, oh, ow] = self.output;
        ((oh - 1) * self.stride + 3, (ow - 1) * self.stride + 3)
    }

    /// One channel. The plane is first copied into `padded` with its zero border (and, for stride 2,
    /// its columns split into even and odd halves), so that every output is the same fused nine-tap
    /// sum over contiguous rows: no edge cases in the loop the compiler vectorises.
    fn plane(&self, src: &[f32], dst: &mut [f32], taps: &[f32; 9], bias: f32, padded: &mut [f32]) {
        let [_, _, h, w] = self.input;
        let ow = self.output[3];
        let (ph, pw) = self.padded_size();
        // Stride 1: one padded row of pw values. Stride 2: even columns then odd columns.
        let half = pw.div_ceil(2);
        let stride_row = if self.stride == 1 { pw } else { 2 * half };
        for (y, out) in padded.chunks_exact_mut(stride_row).take(ph).enumerate() {
            out.fill(0.0);
            let Some(sy) = y.checked_sub(self.pad_top).filter(|&sy| sy < h) else {
                continue;
            };
            let line = &src[sy * w..(sy + 1) * w];
            for (x, &v) in line.iter().enumerate() {
                let px = x + self.pad_left;
                if px >= pw {
                    break;
                }
                let at = if self.stride == 1 {
                    px
                } else if px.is_multiple_of(2) {
                    px / 2
                } else {
                    half + px / 2
                };
                out[at] = v;
            }
        }
        for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
            let line = |ky: usize| &padded[(oy * self.stride + ky) * stride_row..][..stride_row];
            let (l0, l1, l2) = (line(0), line(1), line(2));
            let sources: [&[f32]; 9] = if self.stride == 1 {
                [
                    &l0[0..],
                    &l0[1..],
                    &l0[2..],
                    &l1[0..],
                    &l1[1..],
                    &l1[2..],
                    &l2[0..],
                    &l2[1..],
                    &l2[2..],
                ]
            } else {
                // Column 2x + kx: kx = 0 -> even[x], 1 -> odd[x], 2 -> even[x + 1].
                [
                    &l0[0..],
                    &l0[half..],
                    &l0[1..],
                    &l1[0..],
                    &l1[half..],
                    &l1[1..],
                    &l2[0..],
                    &l2[half..],
                    &l2[1..],
                ]
            };
            nine_taps(row, sources, taps, bias);
        }
    }
}

/// out[x] = bias + sum of k[t] * sources[t][x]. On x86-64 compiled twice, for the baseline (SSE2) and
/// for AVX2, picked once at run time; aarch64's baseline already has NEON.
fn nine_taps(out: &mut [f32], sources: [&[f32]; 9], k: &[f32; 9], bias: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *AVX2.get_or_init(|| std::arch::is_x86_feature_detected!("avx2")) {
            // SAFETY: only reached when the CPU reports AVX2.
            return unsafe { nine_taps_avx2(out, sources, k, bias) };
        }
    }
    fused(out, sources, k, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn nine_taps_avx2(out: &mut [f32], sources: [&[f32]; 9], k: &[f32; 9], bias: f32) {
    fused(out, sources, k, bias)
}

/// out[i] = bias + sum of k[t] * sources[t][i]; every source at least as long as out.
#[inline(always)]
fn fused<const N: usize>(out: &mut [f32], sources: [&[f32]; N], k: &[f32; N], bias: f32) {
    let len = out.len();
    let sources = sources.map(|s| &s[..len]);
    for (i, o) in out.iter_mut().enumerate() {
        let mut acc = bias;
        for t in 0..N {
            acc += k[t] * sources[t][i];
        }
        *o = acc;
    }
}

impl TypedOp for Depthwise3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].shape.volume() == self.input.iter().product::<usize>().to_dim());
        Ok(tvec!(f32::fact(&self.output_shape)))
    }

    as_op!();
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
        for (src, dst) in data
            .chunks_exact(h * w)
            .zip(out_values(&mut out)?.chunks_exact_mut(oh * ow))
        {
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                let top = &src[2 * oy * w..][..2 * ow];
                let bottom = &src[(2 * oy + 1) * w..][..2 * ow];
                for ((o, t), b) in row
                    .iter_mut()
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                {
                    *o = t[0].max(t[1]).max(b[0].max(b[1]));
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
        let [n, c, h, w] = shape;
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
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
        let conv = Conv {
            pool_spec: pool_spec(c, 3, stride, padding),
            kernel_fmt: KernelFormat::OIHW,
            group: c,
            q_params: None,
        };
        let y = m.wire_node("dw", conv, &[x, k, b]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let input = Tensor::from_shape(&shape, &values(n * c * h * w, 3)).unwrap();
        let (reference, ours, replaced) = both(m, input);
        assert_eq!(replaced, 1, "{shape:?} stride {stride}");
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
