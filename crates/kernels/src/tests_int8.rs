//! The integer ops of a QDQ graph against tract's own evaluation of the same graph (in f32 between
//! its quantizers), natively and under qemu (as Cortex-A72 without and Cortex-A76 with SDOT).

use crate::ops::*;
use crate::rewrite_int8::int8_rows;
use crate::tests::{both, optimised_ops};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::conv::KernelFormat;
use tract_onnx::tract_core::ops::cnn::{Conv, MaxPool, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::math;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::quant::{DequantizeLinearF32, quantize_linear_u8};

/// Deterministic integers in low..=high.
fn integers(n: usize, seed: u64, low: i32, high: i32) -> Vec<i32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            low + (state % (high - low + 1) as u64) as i32
        })
        .collect()
}

/// `wire` quantized to uint8 and back, as onnxruntime's QDQ format writes every activation.
fn qdq(m: &mut TypedModel, name: &str, wire: OutletId, scale: f32, zero: u8) -> OutletId {
    let q = m
        .wire_node(
            format!("{name}.q"),
            quantize_linear_u8(1.0 / scale, zero),
            &[wire],
        )
        .unwrap()[0];
    m.wire_node(
        format!("{name}.dq"),
        DequantizeLinearF32::new(scale, zero as i32),
        &[q],
    )
    .unwrap()[0]
}

/// Per-channel int8 weights as the dequantized f32 constants tract makes of them: `rows` rows of
/// `per_row`, row r scaled by 0.01 x (r + 1). As symmetric quantization makes them, each row's
/// largest magnitude is 127, except row 0 whose is -128 (the scale is then its magnitude over 128);
/// the last row is all zeros when there are more than two.
fn weights(rows: usize, per_row: usize) -> Vec<f32> {
    let mut q = integers(rows * per_row, 5, -126, 126);
    for (r, row) in q.chunks_exact_mut(per_row).enumerate() {
        row[r % per_row] = if r % 2 == 0 { 127 } else { -127 };
    }
    q[0] = -128;
    if rows > 2 {
        q[(rows - 1) * per_row..].fill(0);
    }
    q.iter()
        .enumerate()
        .map(|(i, &v)| v as f32 * 0.01 * (i / per_row + 1) as f32)
        .collect()
}

/// An image of uint8 codes (as f32 values that quantize exactly to them) with scale 0.05, zero 117.
fn image(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    let values: Vec<f32> = integers(n, seed, 0, 255)
        .into_iter()
        .map(|q| (q - 117) as f32 * 0.05)
        .collect();
    Tensor::from_shape(shape, &values).unwrap()
}

/// Runs `model` with tract alone and with `install`; asserts that `op` was installed `expected`
/// times and that every output is within one quantization step of tract's (the f32 sums between
/// tract's quantizers round differently now and then), almost all of them equal.
fn compare(model: TypedModel, input: Tensor, op: &str, expected: usize, step: f32) {
    let count = optimised_ops(model.clone())
        .iter()
        .filter(|name| *name == op)
        .count();
    assert_eq!(count, expected, "{op} installed");
    let (reference, ours, _) = both(model, input);
    assert_eq!(reference.len(), ours.len());
    let mut differ = 0;
    for (i, (r, o)) in reference.iter().zip(&ours).enumerate() {
        assert!((r - o).abs() <= step * 1.01, "[{i}] tract {r} ours {o}");
        differ += usize::from(r != o);
    }
    assert!(
        differ * 100 <= reference.len(),
        "{differ} of {} outputs differ by a step",
        reference.len()
    );
}

fn pool_spec(c: usize, o: usize, kernel: usize, stride: usize) -> PoolSpec {
    let pad = kernel / 2;
    PoolSpec {
        data_format: DataFormat::NCHW,
        kernel_shape: tvec![kernel, kernel],
        padding: PaddingSpec::Explicit(tvec![pad; 2], tvec![pad; 2]),
        dilations: None,
        strides: Some(tvec![stride, stride]),
        input_channels: c,
        output_channels: o,
    }
}

/// x -> QDQ -> convolution (`size` x `size`, c -> o, or 3x3 depthwise when `o` is 0) with bias ->
/// QDQ, and ReLU6 expressed as the output quantizer's range (scale 6/255, zero 0) when `relu6`.
fn quantized_conv(
    c: usize,
    (o, size): (usize, usize),
    (h, w): (usize, usize),
    stride: usize,
    relu6: bool,
) -> TypedModel {
    let (outputs, group, per_group) = if o == 0 { (c, c, 1) } else { (o, 1, c) };
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
    let x = qdq(&mut m, "x", x, 0.05, 117);
    let kernel = weights(outputs, per_group * size * size);
    let kernel = Tensor::from_shape(&[outputs, per_group, size, size], &kernel).unwrap();
    let k = m.add_const("k", kernel).unwrap();
    let bias: Vec<f32> = integers(outputs, 9, -300, 300)
        .iter()
        .map(|&b| b as f32 * 0.01)
        .collect();
    let b = m
        .add_const("b", Tensor::from_shape(&[outputs], &bias).unwrap())
        .unwrap();
    let conv = Conv {
        pool_spec: pool_spec(c, outputs, size, stride),
        kernel_fmt: KernelFormat::OIHW,
        group,
        q_params: None,
    };
    let y = m.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
    let (scale, zero) = if relu6 { (6.0 / 255.0, 0) } else { (0.2, 128) };
    let y = qdq(&mut m, "y", y, scale, zero);
    m.select_output_outlets(&[y]).unwrap();
    m
}

#[test]
fn quantized_pointwise_matches_tract_on_the_models_shapes_and_ragged_edges() {
    // MobileFaceNet's expansions and projections, then channels, outputs and pixels that are not
    // multiples of the tile (4 channels, 4 outputs, 16 pixels).
    for (c, o, h, w, relu6) in [
        (64, 128, 28, 28, true),
        (128, 64, 14, 14, false),
        (512, 128, 7, 7, false),
        (3, 5, 7, 7, true),
        (13, 9, 5, 3, false),
    ] {
        let model = quantized_conv(c, (o, 1), (h, w), 1, relu6);
        let input = image(&[1, c, h, w], 21);
        let step = if relu6 { 6.0 / 255.0 } else { 0.2 };
        compare(model, input, "FaceEdgeQuantizedPointwise", 1, step);
    }
}

#[test]
fn quantized_depthwise_matches_tract_at_both_strides() {
    for (c, h, w, stride) in [(8, 56, 56, 1), (8, 56, 56, 2), (6, 14, 14, 1), (5, 7, 9, 2)] {
        let model = quantized_conv(c, (0, 3), (h, w), stride, stride == 1);
        let input = image(&[1, c, h, w], 22);
        let step = if stride == 1 { 6.0 / 255.0 } else { 0.2 };
        compare(model, input, "FaceEdgeQuantizedDepthwise3x3", 1, step);
    }
}

#[test]
fn quantized_dense_3x3_matches_tract_at_both_strides_and_from_three_channels() {
    // EfficientNetV2's fused blocks (16 -> 64 at stride 2, 24 -> 96 at 1) and a first layer.
    for (c, o, h, w, stride) in [(16, 64, 28, 28, 2), (24, 96, 14, 14, 1), (3, 8, 11, 9, 2)] {
        let model = quantized_conv(c, (o, 3), (h, w), stride, stride == 1);
        let input = image(&[1, c, h, w], 25);
        let step = if stride == 1 { 6.0 / 255.0 } else { 0.2 };
        compare(model, input, "FaceEdgeQuantizedConv3x3", 1, step);
    }
}

#[test]
fn quantized_residual_addition_matches_tract() {
    let shape = [1, 16, 14, 14];
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(shape)).unwrap();
    let a = qdq(&mut m, "a", x, 0.05, 117);
    let scaled = m
        .add_const(
            "half",
            Tensor::from_shape(&[1, 1, 1, 1], &[0.5f32]).unwrap(),
        )
        .unwrap();
    let other = m.wire_node("mul", math::mul(), &[x, scaled]).unwrap()[0];
    let b = qdq(&mut m, "b", other, 0.03, 140);
    let sum = m.wire_node("add", math::add(), &[a, b]).unwrap()[0];
    let y = qdq(&mut m, "y", sum, 0.07, 125);
    m.select_output_outlets(&[y]).unwrap();
    compare(m, image(&shape, 23), "FaceEdgeQuantizedAdd", 1, 0.07);
}

#[test]
fn weights_that_are_not_int8_multiples_stay_in_f32() {
    assert!(int8_rows(&[1.27, -0.64, 0.01], 3).is_some());
    // 0.3 is not a multiple of 0.5 / 127 or 0.5 / 128.
    assert!(int8_rows(&[0.5, 0.3, 0.001], 3).is_none());
    let (values, scales) = int8_rows(&[0.0, 0.0, -1.28, 0.64], 2).unwrap();
    assert_eq!(values, [0, 0, -128, 64]);
    assert_eq!(scales, [1.0, 0.01]);

    let mut m = TypedModel::default();
    let (c, o, h, w) = (8, 8, 7, 7);
    let x = m.add_source("x", f32::fact([1, c, h, w])).unwrap();
    let x = qdq(&mut m, "x", x, 0.05, 117);
    let float: Vec<f32> = (0..o * c).map(|i| (i as f32 * 0.37).sin()).collect();
    let k = m
        .add_const("k", Tensor::from_shape(&[o, c, 1, 1], &float).unwrap())
        .unwrap();
    let b = m
        .add_const("b", Tensor::from_shape(&[o], &vec![0.1f32; o]).unwrap())
        .unwrap();
    let conv = Conv {
        pool_spec: pool_spec(c, o, 1, 1),
        kernel_fmt: KernelFormat::OIHW,
        group: 1,
        q_params: None,
    };
    let y = m.wire_node("conv", conv, &[x, k, b]).unwrap()[0];
    let y = qdq(&mut m, "y", y, 0.2, 128);
    m.select_output_outlets(&[y]).unwrap();
    compare(
        m,
        image(&[1, c, h, w], 24),
        "FaceEdgeQuantizedPointwise",
        0,
        0.0,
    );
}

#[test]
fn every_gemm_kernel_this_cpu_runs_gives_the_portable_sums() {
    // Weights down to -128 (which the widening kernel leaves to the portable one) and without.
    for lowest in [-128, -127] {
        // Channel groups of 4 (and pairs of groups) odd and even, whole and partial tiles.
        for (o, i, pixels) in [
            (12, 37, 45),
            (8, 64, 32),
            (3, 5, 17),
            (5, 9, 40),
            (4, 20, 16),
        ] {
            gemm_kernels_agree(o, i, pixels, lowest);
        }
    }
}

fn gemm_kernels_agree(o: usize, i: usize, pixels: usize, lowest: i32) {
    let w: Vec<i8> = integers(o * i, 31, lowest, 127)
        .into_iter()
        .map(|v| v as i8)
        .collect();
    let x: Vec<u8> = integers(i * pixels, 32, 0, 255)
        .into_iter()
        .map(|v| v as u8)
        .collect();
    // The requantization is the identity on sums that fit a byte: scale 1/4096, zero 128.
    let run = |kind: GemmKind| {
        let packed = PackedWeights::new(&w, o, i, kind);
        let requantize = Requantize {
            offset: (0..o).map(|c| packed.offset(c, 101)).collect(),
            scale: vec![1.0 / 4096.0; o],
            shift: vec![0.0; o],
            zero: 128,
        };
        let mut out = vec![0u8; o * pixels];
        gemm_u8(&packed, &x, pixels, &requantize, &mut out);
        (out, packed.kind)
    };
    let expected: Vec<u8> = (0..o)
        .flat_map(|oc| {
            let (w, x) = (&w, &x);
            (0..pixels).map(move |p| {
                let sum: i32 = (0..i)
                    .map(|k| (x[k * pixels + p] as i32 - 101) * w[oc * i + k] as i32)
                    .sum();
                to_u8(sum as f32 / 4096.0, 128)
            })
        })
        .collect();
    assert_eq!(run(GemmKind::Portable).0, expected);
    let detected = GemmKind::detect();
    let (out, used) = run(detected);
    let exact: Vec<i32> = (0..o * pixels)
        .map(|n| {
            let (oc, p) = (n / pixels, n % pixels);
            (0..i)
                .map(|k| (x[k * pixels + p] as i32 - 101) * w[oc * i + k] as i32)
                .sum()
        })
        .collect();
    let packed = PackedWeights::new(&w, o, i, detected);
    assert_eq!(
        gemm_i32(&packed, &x, pixels, 101),
        exact,
        "{} sums",
        used.name()
    );
    eprintln!(
        "this CPU's int8 kernel: {} ({} for weights from {lowest})",
        detected.name(),
        used.name()
    );
    assert_eq!(out, expected, "{} {o}x{i}x{pixels}", used.name());
}

#[test]
fn rounding_is_half_to_even_like_tracts_quantizer() {
    for v in [
        0.5f32, 1.5, 2.5, -0.5, -1.5, 254.5, 255.5, 3.4999, -7.5001, 1e9, -1e9,
    ] {
        let tract = (v.round_ties_even() + 3.0).clamp(0.0, 255.0) as u8;
        assert_eq!(to_u8(v, 3), tract, "{v}");
    }
}

#[test]
fn silu_between_quantizers_becomes_one_table() {
    // x * sigmoid(x) as onnxruntime quantizes it: x is read twice, so tract's own rewrite (which
    // needs a chain of single readers) leaves it in f32.
    let shape = [1, 8, 9, 9];
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(shape)).unwrap();
    let x = qdq(&mut m, "x", x, 0.05, 117);
    let s = m
        .wire_node("sigmoid", tract_onnx::tract_core::ops::nn::sigmoid(), &[x])
        .unwrap()[0];
    let s = qdq(&mut m, "s", s, 1.0 / 255.0, 0);
    let y = m.wire_node("mul", math::mul(), &[x, s]).unwrap()[0];
    let y = qdq(&mut m, "y", y, 0.04, 20);
    m.select_output_outlets(&[y]).unwrap();
    compare(m, image(&shape, 26), "FaceEdgeTable256", 1, 0.04);
}

#[test]
fn a_squeeze_and_excitation_gate_is_one_integer_op() {
    // EfficientNetV2's blocks: the image times a factor per channel (sigmoid of its mean), each
    // between quantizers as onnxruntime writes them.
    let shape = [1, 8, 9, 9];
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(shape)).unwrap();
    let x = qdq(&mut m, "x", x, 0.05, 117);
    let mean = m
        .wire_node(
            "mean",
            tract_onnx::tract_core::ops::nn::Reduce::new(
                tvec![2, 3],
                tract_onnx::tract_core::ops::nn::Reducer::Sum,
            ),
            &[x],
        )
        .unwrap()[0];
    let gate = m
        .wire_node(
            "sigmoid",
            tract_onnx::tract_core::ops::nn::sigmoid(),
            &[mean],
        )
        .unwrap()[0];
    let gate = qdq(&mut m, "gate", gate, 1.0 / 255.0, 0);
    let y = m.wire_node("mul", math::mul(), &[x, gate]).unwrap()[0];
    let y = qdq(&mut m, "y", y, 0.03, 90);
    m.select_output_outlets(&[y]).unwrap();
    compare(m, image(&shape, 27), "FaceEdgeQuantizedChannelMul", 1, 0.03);
}

#[test]
fn the_table_looks_up_every_byte_at_every_length() {
    let table: [u8; 256] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    for len in [0, 1, 15, 16, 17, 64, 100] {
        let input: Vec<u8> = (0..len).map(|i| (i * 97 % 256) as u8).collect();
        let mut out = vec![0u8; len];
        look_up(&table, &input, &mut out);
        let expected: Vec<u8> = input.iter().map(|&x| table[x as usize]).collect();
        assert_eq!(out, expected, "length {len}");
    }
    let every: Vec<u8> = (0..=255).collect();
    let mut out = vec![0u8; 256];
    look_up(&table, &every, &mut out);
    assert_eq!(out, table);
}

#[test]
fn every_depthwise_kernel_this_cpu_runs_gives_the_exact_sums() {
    // Both strides, both paddings (1 on every side; TensorFlow's stride-2 "same": none before),
    // rows shorter and longer than a block (8 or 16 outputs), planes whose last block is partial.
    for (c, h, w, stride, pad) in [
        (3, 9, 7, 1, 1),
        (2, 14, 14, 1, 1),
        (4, 6, 40, 1, 1),
        (1, 1, 5, 1, 1),
        (2, 14, 14, 2, 1),
        (3, 15, 33, 2, 1),
        (2, 14, 14, 2, 0),
        (2, 56, 56, 2, 0),
    ] {
        depthwise_is_exact(c, (h, w), stride, pad);
    }
}

/// The quantized depthwise op on uint8 codes against the integer sums of (x - zero) x k computed
/// here, through the same requantization formula: every byte equal.
fn depthwise_is_exact(c: usize, (h, w): (usize, usize), stride: usize, pad: usize) {
    let (oh, ow) = (
        (h + 2 * pad - 3) / stride + 1,
        (w + 2 * pad - 3) / stride + 1,
    );
    let (oh, ow) = if pad == 0 {
        (h.div_ceil(2), w.div_ceil(2))
    } else {
        (oh, ow)
    };
    let window = Window {
        input: [1, c, h, w],
        output: [1, c, oh, ow],
        output_shape: vec![1, c, oh, ow],
        stride,
        pad_top: pad,
        pad_left: pad,
    };
    let input_zero = 101u8;
    let k: Vec<i16> = integers(c * 9, 41, -128, 127)
        .iter()
        .map(|&v| v as i16)
        .collect();
    let requantize = Requantize {
        offset: k
            .chunks_exact(9)
            .map(|k| -(input_zero as i32) * k.iter().map(|&v| v as i32).sum::<i32>())
            .collect(),
        scale: (0..c).map(|ch| 1.0 / (96 + 16 * ch) as f32).collect(),
        shift: (0..c).map(|ch| ch as f32 * 0.25 - 0.5).collect(),
        zero: 128,
    };
    let x: Vec<u8> = integers(c * h * w, 42, 0, 255)
        .iter()
        .map(|&v| v as u8)
        .collect();
    let expected: Vec<u8> = (0..c * oh * ow)
        .map(|n| {
            let (ch, oy, ox) = (n / (oh * ow), n / ow % oh, n % ow);
            let mut sum = 0i32;
            for t in 0..9 {
                let iy = (oy * stride + t / 3).checked_sub(pad).filter(|&y| y < h);
                let ix = (ox * stride + t % 3).checked_sub(pad).filter(|&x| x < w);
                if let (Some(iy), Some(ix)) = (iy, ix) {
                    let v = x[(ch * h + iy) * w + ix] as i32 - input_zero as i32;
                    sum += v * k[ch * 9 + t] as i32;
                }
            }
            to_u8(
                sum as f32 * requantize.scale[ch] + requantize.shift[ch],
                128,
            )
        })
        .collect();
    let op = QuantizedDepthwise {
        window,
        input_zero,
        kernel: Arc::new(k),
        requantize: Arc::new(requantize),
    };
    let mut m = TypedModel::default();
    let source = m.add_source("x", u8::fact([1, c, h, w])).unwrap();
    let y = m.wire_node("dw", op, &[source]).unwrap()[0];
    m.select_output_outlets(&[y]).unwrap();
    let input = Tensor::from_shape(&[1, c, h, w], &x).unwrap();
    let out = m
        .into_runnable()
        .unwrap()
        .run(tvec!(input.into_tvalue()))
        .unwrap();
    let kernel = if DotDepthwise::available() {
        "SDOT"
    } else {
        "NEON or portable"
    };
    assert_eq!(
        out[0].try_as_plain_ram().unwrap().as_slice::<u8>().unwrap(),
        expected,
        "{kernel} depthwise {c}x{h}x{w}, stride {stride}, padding {pad}"
    );
}

#[test]
fn a_max_pool_between_quantizers_pools_the_codes() {
    // The output quantized like the input (the codes pooled as they are), or with its own scale and
    // zero point (then a table from one to the other); odd sizes drop the last row and column.
    for ((scale, zero), table) in [((0.05, 117), 0), ((0.03, 90), 1)] {
        let shape = [1, 3, 9, 12];
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let x = qdq(&mut m, "x", x, 0.05, 117);
        let pool = MaxPool {
            pool_spec: crate::tests::pool_spec(3, 2, 2, PaddingSpec::Valid),
            with_index_outputs: None,
        };
        let y = m.wire_node("pool", pool, &[x]).unwrap()[0];
        let y = qdq(&mut m, "y", y, scale, zero);
        m.select_output_outlets(&[y]).unwrap();
        let ops = optimised_ops(m.clone());
        let count = |name: &str| ops.iter().filter(|op| *op == name).count();
        assert_eq!(count("FaceEdgeMaxPool2x2"), 1, "{ops:?}");
        assert_eq!(count("FaceEdgeTable256"), table, "{ops:?}");
        let (reference, ours, _) = both(m, image(&shape, 23));
        assert_eq!(reference, ours, "scale {scale}, zero {zero}");
    }
}

#[test]
fn the_input_quantizer_rounds_and_saturates_as_tracts() {
    // Half steps (ties go to the even code), both ends of the range and past them, NaN; 37 values
    // so that the vector loop and the scalar tail both run. (Not 1e9: tract's own loop wraps it to
    // code 0 on x86-64, where this op saturates it to 255 as ONNX says.)
    let mut values: Vec<f32> = (-8..29).map(|i| i as f32 * 0.025).collect();
    values[..6].copy_from_slice(&[1e5, -1e9, -5.85, 6.9, f32::NAN, 6.375]);
    let shape = [1, 1, 1, values.len()];
    let mut m = TypedModel::default();
    let x = m.add_source("x", f32::fact(shape)).unwrap();
    let y = qdq(&mut m, "x", x, 0.05, 117);
    m.select_output_outlets(&[y]).unwrap();
    let ops = optimised_ops(m.clone());
    assert!(ops.iter().any(|op| op == "FaceEdgeQuantizeU8"), "{ops:?}");
    let input = Tensor::from_shape(&shape, &values).unwrap();
    let (reference, ours, _) = both(m, input);
    assert_eq!(reference, ours);
}
