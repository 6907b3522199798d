//! Integer versions of the ops between a QDQ graph's quantize/dequantize pairs: uint8 activations in
//! and out, int8 weights, exact i32 sums, one multiply-add per output to requantize. They replace
//! `DequantizeLinear(u8) -> op -> QuantizeLinear(u8)` so that activations stay 8-bit between layers
//! and no f32 tensor is made for them.
//!
//! The requantization reproduces tract's `QuantizeLinearU8`: round half to even, add the zero point,
//! saturate to 0..=255 (which is also how a ReLU or ReLU6 before the quantizer is expressed).

use super::{Depthwise3x3, Window};
use super::{PackedWeights, gemm_u8};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// How an i32 sum of channel `o` becomes a uint8: `round((sum + offset[o]) * scale[o] + shift[o]) + zero`,
/// saturated. `offset` carries the input zero point's share of the sum, `scale` = input scale x
/// weight scale / output scale, `shift` = bias / output scale.
#[derive(Debug, Clone)]
pub(crate) struct Requantize {
    pub(crate) offset: Vec<i32>,
    pub(crate) scale: Vec<f32>,
    pub(crate) shift: Vec<f32>,
    pub(crate) zero: u8,
}

impl Requantize {
    /// Channel `o`'s i32 sums to uint8.
    #[inline(always)]
    pub(crate) fn row(&self, o: usize, sums: &[i32], out: &mut [u8]) {
        let (scale, shift, offset) = (self.scale[o], self.shift[o], self.offset[o]);
        #[cfg(target_arch = "aarch64")]
        let (sums, out) = {
            let whole = out.len().min(sums.len()) / 4 * 4;
            neon::requantize_i32(
                &sums[..whole],
                offset,
                scale,
                shift,
                self.zero,
                &mut out[..whole],
            );
            (&sums[whole..], &mut out[whole..])
        };
        for (y, &s) in out.iter_mut().zip(sums) {
            *y = to_u8((s + offset) as f32 * scale + shift, self.zero);
        }
    }

    /// One channel's f32 sums (exact integers) to uint8.
    fn channel(&self, o: usize, sums: &[f32], out: &mut [u8]) {
        let (scale, shift, offset) = (self.scale[o], self.shift[o], self.offset[o] as f32);
        #[cfg(target_arch = "aarch64")]
        let (sums, out) = {
            let whole = out.len().min(sums.len()) / 4 * 4;
            neon::requantize_f32(
                &sums[..whole],
                offset,
                scale,
                shift,
                self.zero,
                &mut out[..whole],
            );
            (&sums[whole..], &mut out[whole..])
        };
        for (y, &s) in out.iter_mut().zip(sums) {
            *y = to_u8((s + offset) * scale + shift, self.zero);
        }
    }
}

/// Rounded half to even (as tract's quantizer), plus the zero point, saturated to 0..=255.
#[inline(always)]
pub(crate) fn to_u8(v: f32, zero: u8) -> u8 {
    (round_even(v) + zero as i32).clamp(0, 255) as u8
}

/// `v.round_ties_even()` as an integer, without the libm call that `round_ties_even` becomes on
/// x86-64 CPUs below SSE4.1 (the baseline every build targets), and in a form that vectorises:
/// adding 1.5 x 2^23 leaves the integer part in the low mantissa bits, rounded by the FPU's
/// default mode, which is to nearest, ties to even. Exact for |v| < 2^22; larger values (never
/// near a uint8 after scaling) are first clamped to that range, which saturates them anyway.
#[inline(always)]
pub(crate) fn round_even(v: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 x 2^23
    let v = v.clamp(-4_000_000.0, 4_000_000.0);
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

// The ops hold their constants in `Arc`s and compare them by address: tract asks ops for `Eq`, and
// two rewrites of the same node share nothing, so identity is the right equality.
macro_rules! by_address {
    ($t:ty, $($field:ident),+) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                $(std::sync::Arc::ptr_eq(&self.$field, &other.$field))&&+
            }
        }
        impl Eq for $t {}
    };
}

/// 1x1 convolution on a planar uint8 image ([C, pixels]) with int8 weights, to uint8 [O, pixels].
#[derive(Debug, Clone)]
pub(crate) struct QuantizedPointwise {
    pub(crate) pixels: usize,
    pub(crate) output_shape: Vec<usize>,
    pub(crate) weights: Arc<PackedWeights>,
    pub(crate) requantize: Arc<Requantize>,
}

by_address!(QuantizedPointwise, weights, requantize);

impl Op for QuantizedPointwise {
    fn name(&self) -> StaticName {
        "FaceEdgeQuantizedPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "{} -> {} channels, {} pixels, u8 x i8 -> i32 ({})",
            self.weights.inputs,
            self.weights.outputs,
            self.pixels,
            self.weights.kind.name()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedPointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let data = u8_values(&inputs, self.weights.inputs * self.pixels)?;
        // SAFETY: u8 has no invalid bit patterns, and `gemm_u8` writes every output.
        let mut out = unsafe { Tensor::uninitialized::<u8>(&self.output_shape)? };
        gemm_u8(
            &self.weights,
            data,
            self.pixels,
            &self.requantize,
            u8_values_mut(&mut out)?,
        );
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizedPointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == u8::datum_type());
        ensure!(inputs[0].shape.volume() == (self.weights.inputs * self.pixels).to_dim());
        Ok(tvec!(u8::fact(&self.output_shape)))
    }

    as_op!();
}

/// 3x3 depthwise convolution on planar uint8 with int8 weights, to uint8. The sums are computed by
/// the f32 depthwise kernel on the integers themselves (input minus zero point, weights as int8
/// values): every product and sum stays below 2^24 (9 x 255 x 128), so f32 holds them exactly and
/// the result is the integer convolution, at the f32 kernel's speed.
#[derive(Debug, Clone)]
pub(crate) struct QuantizedDepthwise {
    pub(crate) conv: Depthwise3x3,
    pub(crate) input_zero: u8,
    /// Int8 weight values as f32, [C, 9]; and zeros for the bias, which `requantize` adds.
    pub(crate) kernel: Arc<Vec<f32>>,
    pub(crate) requantize: Arc<Requantize>,
}

by_address!(QuantizedDepthwise, kernel, requantize);

impl Op for QuantizedDepthwise {
    fn name(&self) -> StaticName {
        "FaceEdgeQuantizedDepthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.conv.window;
        Ok(vec![format!(
            "{:?} -> {:?}, stride {}, u8 x i8 (exact in f32)",
            w.input, w.output, w.stride
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let window = &self.conv.window;
        let data = u8_values(&inputs, window.input.iter().product())?;
        let zero = self.input_zero as f32;
        let centred: Vec<f32> = data.iter().map(|&x| x as f32 - zero).collect();
        let [_, c, _, _] = window.input;
        let [_, _, oh, ow] = window.output;
        let mut sums = vec![0f32; window.output.iter().product()];
        self.conv
            .compute(&centred, &self.kernel, &[0.0], &mut sums)?;
        // SAFETY: u8 has no invalid bit patterns, and every plane is requantized into below.
        let mut out = unsafe { Tensor::uninitialized::<u8>(&window.output_shape)? };
        let values = u8_values_mut(&mut out)?;
        for (i, (dst, src)) in values
            .chunks_exact_mut(oh * ow)
            .zip(sums.chunks_exact(oh * ow))
            .enumerate()
        {
            self.requantize.channel(i % c, src, dst);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizedDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.conv.window.output_facts(inputs, u8::datum_type())
    }

    as_op!();
}

/// Dense 3x3 convolution on planar uint8 with int8 weights, to uint8: the image's windows are laid
/// out as a [C x 9, pixels] uint8 matrix (im2col; outside the image, the input's zero point, the
/// real value 0) and multiplied by the GEMM of the 1x1 convolution.
#[derive(Debug, Clone)]
pub(crate) struct QuantizedConv3x3 {
    pub(crate) window: Window,
    pub(crate) input_zero: u8,
    pub(crate) weights: Arc<PackedWeights>,
    pub(crate) requantize: Arc<Requantize>,
}

by_address!(QuantizedConv3x3, weights, requantize);

impl Op for QuantizedConv3x3 {
    fn name(&self) -> StaticName {
        "FaceEdgeQuantizedConv3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.window;
        Ok(vec![format!(
            "{:?} -> {:?}, stride {}, u8 x i8 -> i32 ({})",
            w.input,
            w.output,
            w.stride,
            self.weights.kind.name()
        )])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedConv3x3 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let window = &self.window;
        let data = u8_values(&inputs, window.input.iter().product())?;
        let [_, _, oh, ow] = window.output;
        let columns = im2col(window, data, self.input_zero);
        // SAFETY: u8 has no invalid bit patterns, and `gemm_u8` writes every output.
        let mut out = unsafe { Tensor::uninitialized::<u8>(&window.output_shape)? };
        gemm_u8(
            &self.weights,
            &columns,
            oh * ow,
            &self.requantize,
            u8_values_mut(&mut out)?,
        );
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizedConv3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.window.output_facts(inputs, u8::datum_type())
    }

    as_op!();
}

/// Row (c, ky, kx) of the result holds, for every output pixel, the input it reads through tap (ky,
/// kx) of channel c, or `zero` where that falls outside the image.
fn im2col(window: &Window, data: &[u8], zero: u8) -> Vec<u8> {
    let [_, c, h, w] = window.input;
    let [_, _, oh, ow] = window.output;
    let s = window.stride;
    let mut columns = vec![zero; c * 9 * oh * ow];
    for (row, dst) in columns.chunks_exact_mut(oh * ow).enumerate() {
        let (ch, ky, kx) = (row / 9, row / 3 % 3, row % 3);
        let plane = &data[ch * h * w..][..h * w];
        for (oy, line) in dst.chunks_exact_mut(ow).enumerate() {
            let Some(iy) = (oy * s + ky).checked_sub(window.pad_top).filter(|&y| y < h) else {
                continue;
            };
            let src = &plane[iy * w..][..w];
            // Output columns whose input column ox * s + kx - pad_left lies inside the row.
            let first = (window.pad_left.saturating_sub(kx)).div_ceil(s);
            let end = ((w + window.pad_left).saturating_sub(kx))
                .div_ceil(s)
                .min(ow);
            if first >= end {
                continue;
            }
            let start = first * s + kx - window.pad_left;
            if s == 1 {
                line[first..end].copy_from_slice(&src[start..start + end - first]);
            } else {
                for (d, &v) in line[first..end]
                    .iter_mut()
                    .zip(src[start..].iter().step_by(s))
                {
                    *d = v;
                }
            }
        }
    }
    columns
}

/// The sum of two uint8 tensors of one shape, each with its own scale and zero point, to uint8: a
/// residual connection between quantized layers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantizedAdd {
    /// Input scales divided by the output scale, and the input zero points.
    pub(crate) scales: [f32; 2],
    pub(crate) zeros: [u8; 2],
    pub(crate) output_zero: u8,
}

impl Eq for QuantizedAdd {}

impl Op for QuantizedAdd {
    fn name(&self) -> StaticName {
        "FaceEdgeQuantizedAdd".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{self:?}")])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedAdd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2 && inputs[0].shape() == inputs[1].shape());
        let a = inputs[0].try_as_plain_ram()?.as_slice::<u8>()?;
        let b = inputs[1].try_as_plain_ram()?.as_slice::<u8>()?;
        // SAFETY: u8 has no invalid bit patterns, and every element is written below.
        let mut out = unsafe { Tensor::uninitialized::<u8>(inputs[0].shape())? };
        let [sa, sb] = self.scales;
        // (a - za) * sa + (b - zb) * sb, with the zero points' share folded into one constant.
        let constant = -(self.zeros[0] as f32 * sa) - self.zeros[1] as f32 * sb;
        for ((y, &a), &b) in u8_values_mut(&mut out)?.iter_mut().zip(a).zip(b) {
            *y = to_u8(a as f32 * sa + b as f32 * sb + constant, self.output_zero);
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizedAdd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.iter().all(|f| f.datum_type == u8::datum_type()));
        ensure!(inputs[0].shape == inputs[1].shape);
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The uint8 values of input 0, which must hold `len` of them.
fn u8_values(inputs: &[TValue], len: usize) -> TractResult<&[u8]> {
    ensure!(!inputs.is_empty() && inputs[0].len() == len);
    inputs[0].try_as_plain_ram()?.as_slice::<u8>()
}

/// The values of a tensor this module just made as uint8.
fn u8_values_mut(t: &mut Tensor) -> TractResult<&mut [u8]> {
    ensure!(t.datum_type() == u8::datum_type());
    // SAFETY: the datum type was just checked to be u8, the type of the slice.
    Ok(unsafe { t.as_slice_mut_unchecked::<u8>() })
}

/// The requantization four values at a time with NEON, whose FCVTNS converts rounding to nearest,
/// ties to even (tract's rounding) and whose narrowing moves saturate.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    /// out = saturate(round((sum + offset) * scale + shift) + zero); lengths multiples of 4.
    pub(super) fn requantize_i32(
        sums: &[i32],
        offset: i32,
        scale: f32,
        shift: f32,
        zero: u8,
        out: &mut [u8],
    ) {
        assert!(sums.len() == out.len() && sums.len().is_multiple_of(4));
        for (s, y) in sums.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            // SAFETY: NEON is part of every aarch64 CPU; 4 i32 are read and 4 bytes written.
            unsafe {
                let v = vcvtq_f32_s32(vaddq_s32(vld1q_s32(s.as_ptr()), vdupq_n_s32(offset)));
                store(v, scale, shift, zero, y);
            }
        }
    }

    /// The same for sums held exactly in f32.
    pub(super) fn requantize_f32(
        sums: &[f32],
        offset: f32,
        scale: f32,
        shift: f32,
        zero: u8,
        out: &mut [u8],
    ) {
        assert!(sums.len() == out.len() && sums.len().is_multiple_of(4));
        for (s, y) in sums.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            // SAFETY: as above, 4 f32 read, 4 bytes written.
            unsafe {
                store(
                    vaddq_f32(vld1q_f32(s.as_ptr()), vdupq_n_f32(offset)),
                    scale,
                    shift,
                    zero,
                    y,
                )
            };
        }
    }

    /// # Safety
    /// NEON must be available (it is on every aarch64 CPU); `y` holds 4 bytes.
    #[inline(always)]
    unsafe fn store(v: float32x4_t, scale: f32, shift: f32, zero: u8, y: &mut [u8]) {
        // SAFETY: NEON arithmetic on registers only; the result is copied into `y` safely.
        let four = unsafe {
            // A multiply then an add, not a fused multiply-add: the same rounding as the scalar code
            // (which Rust never fuses), so every CPU gives the same bytes.
            let scaled = vaddq_f32(vmulq_n_f32(v, scale), vdupq_n_f32(shift));
            let q = vaddq_s32(vcvtnq_s32_f32(scaled), vdupq_n_s32(zero as i32));
            let bytes = vqmovn_u16(vcombine_u16(vqmovun_s32(q), vdup_n_u16(0)));
            vget_lane_u32::<0>(vreinterpret_u32_u8(bytes))
        };
        y.copy_from_slice(&four.to_le_bytes());
    }
}
