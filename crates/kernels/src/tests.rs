//! Every op against tract's own on the cases the models use and on corner cases, natively and under qemu.

use super::*;
use crate::ops::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::PoolSpec;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

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

pub(crate) fn pool_spec(c: usize, kernel: usize, stride: usize, padding: PaddingSpec) -> PoolSpec {
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
pub(crate) fn both(model: TypedModel, input: Tensor) -> (Vec<f32>, Vec<f32>, usize) {
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
pub(crate) fn optimised_ops(model: TypedModel) -> Vec<String> {
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
