//! Integer versions of the ops between a QDQ graph's quantize/dequantize pairs: uint8 activations in
//! and out, int8 weights, exact i32 sums, one multiply-add per output to requantize. They replace
//! `DequantizeLinear(u8) -> op -> QuantizeLinear(u8)` so that activations stay 8-bit between layers
//! and no f32 tensor is made for them.
//!
//! The requantization reproduces tract's `QuantizeLinearU8`: round half to even, add the zero point,
//! saturate to 0..=255 (which is also how a ReLU or ReLU6 before the quantizer is expressed).

use super::Window;
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

/// 3x3 depthwise convolution on planar uint8 with int8 weights, to uint8, in integers: each plane is
/// copied into a border of the input's zero point (the real value 0), every output is the i32 sum of
/// nine uint8 x int8 products, and `requantize` subtracts the zero point's share (zero point x the
/// channel's weight sum, in its offset) before scaling.
#[derive(Debug, Clone)]
pub(crate) struct QuantizedDepthwise {
    pub(crate) window: Window,
    pub(crate) input_zero: u8,
    /// Int8 weight values, widened once, [C, 9].
    pub(crate) kernel: Arc<Vec<i16>>,
    pub(crate) requantize: Arc<Requantize>,
}

by_address!(QuantizedDepthwise, kernel, requantize);

impl Op for QuantizedDepthwise {
    fn name(&self) -> StaticName {
        "FaceEdgeQuantizedDepthwise3x3".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let w = &self.window;
        Ok(vec![format!(
            "{:?} -> {:?}, stride {}, u8 x i8 -> i32",
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
        let window = &self.window;
        let data = u8_values(&inputs, window.input.iter().product())?;
        let [_, c, h, w] = window.input;
        let [_, _, oh, ow] = window.output;
        let (ph, pw) = window.padded_size();
        // The plane is copied into rows of the padded width inside a border of the zero point.
        // Stride 1: the plane in one pass, output (y, x) computed at y * pw + x, so each tap is one
        // slice of the padded plane (the two columns past each row are computed and dropped).
        // Stride 2: row by row, each block of outputs reading its three padded rows' even and odd
        // columns. Either way in whole blocks of outputs, into `computed`; the padded plane has
        // slack so that the last block reads inside it.
        let computed_len = if window.stride == 1 {
            (oh - 1) * pw + ow
        } else {
            ow
        };
        // With the dot product, both strides read the plane as signed bytes x - 128; without,
        // stride 1 reads it widened to 16 bits (one conversion per input value instead of one per
        // tap) and stride 2 as bytes.
        let dot = DotDepthwise::available();
        let block = if dot {
            DotDepthwise::BLOCK
        } else {
            DEPTHWISE_BLOCK
        };
        let mut computed = vec![0u8; computed_len.next_multiple_of(block)];
        let zero = self.input_zero;
        let plane = |used: bool| if used { ph * pw + 3 * block } else { 0 };
        let mut signed = vec![(zero ^ 0x80) as i8; plane(dot)];
        let mut widened = vec![i16::from(zero); plane(!dot && window.stride == 1)];
        let mut padded = vec![zero; plane(!dot && window.stride != 1)];
        // SAFETY: u8 has no invalid bit patterns, and every output row is copied into below.
        let mut out = unsafe { Tensor::uninitialized::<u8>(&window.output_shape)? };
        let planes = data
            .chunks_exact(h * w)
            .zip(u8_values_mut(&mut out)?.chunks_exact_mut(oh * ow));
        for (i, (src, dst)) in planes.enumerate() {
            let ch = i % c;
            let k: &[i16; 9] = self.kernel[ch * 9..][..9].try_into()?;
            if dot {
                window.pad_rows(src, &mut signed);
            } else if window.stride == 1 {
                window.pad_rows(src, &mut widened);
            } else {
                window.pad_rows(src, &mut padded);
            }
            let dot = dot.then(|| DotDepthwise::new(k, &self.requantize, ch));
            if window.stride == 1 {
                match &dot {
                    Some(dot) => dot.plane(&mut computed, &signed, pw),
                    None => {
                        let sources = std::array::from_fn(|t| &widened[(t / 3) * pw + t % 3..]);
                        depthwise_blocks(&mut computed, sources, k, &self.requantize, ch);
                    }
                }
                for (row, plane_row) in dst.chunks_exact_mut(ow).zip(computed.chunks(pw)) {
                    row.copy_from_slice(&plane_row[..ow]);
                }
                continue;
            }
            for (oy, row) in dst.chunks_exact_mut(ow).enumerate() {
                let at = |ky: usize| (2 * oy + ky) * pw;
                match &dot {
                    Some(dot) => {
                        dot.stride2(&mut computed, std::array::from_fn(|ky| &signed[at(ky)..]))
                    }
                    None => {
                        let rows = std::array::from_fn(|ky| &padded[at(ky)..]);
                        depthwise_blocks_stride2(&mut computed, rows, k, &self.requantize, ch);
                    }
                }
                row.copy_from_slice(&computed[..ow]);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Outputs the depthwise kernel computes at a time.
const DEPTHWISE_BLOCK: usize = 8;

/// out[i] = requantized sum of k[t] * sources[t][i]; `out` a whole number of blocks, every source
/// at least as long.
fn depthwise_blocks(
    out: &mut [u8],
    sources: [&[i16]; 9],
    k: &[i16; 9],
    requantize: &Requantize,
    ch: usize,
) {
    assert!(out.len().is_multiple_of(DEPTHWISE_BLOCK));
    let sources = sources.map(|s| &s[..out.len()]);
    #[cfg(target_arch = "aarch64")]
    neon::depthwise_blocks(out, sources, k, requantize, ch);
    #[cfg(not(target_arch = "aarch64"))]
    portable::depthwise(out, sources.map(|s| (s, 1)), k, requantize, ch);
}

/// The depthwise convolution with the aarch64 dot product (ARMv8.2: the Pi 5's Cortex-A76), over
/// a padded plane of signed bytes x - 128: each kernel row's three taps (and a zero) are one SDOT
/// lane, so 4 loads and 4 SDOT give a row's share of 16 outputs. The sums are exact, as the other
/// kernels', so the bytes are the same on every CPU. One channel's taps and requantization.
#[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
pub(crate) struct DotDepthwise {
    /// Kernel row ky's taps in bytes 4ky..4ky + 2 (the dot product's lane ky), the fourth byte 0.
    taps: [i8; 16],
    offset: i32,
    scale: f32,
    shift: f32,
    zero: u8,
}

impl DotDepthwise {
    /// Outputs it computes at a time.
    const BLOCK: usize = 16;

    /// Whether this CPU runs it.
    pub(crate) fn available() -> bool {
        cfg!(target_arch = "aarch64") && crate::cpu::features().dotprod
    }

    /// Channel `ch` of a depthwise layer with kernel `k` (int8 values).
    pub(crate) fn new(k: &[i16; 9], requantize: &Requantize, ch: usize) -> DotDepthwise {
        assert!(Self::available());
        let mut taps = [0i8; 16];
        for (t, &w) in k.iter().enumerate() {
            taps[t / 3 * 4 + t % 3] = w as i8;
        }
        DotDepthwise {
            taps,
            // The 128 taken off each byte comes back through the offset: 128 x the weights' sum.
            offset: requantize.offset[ch] + 128 * k.iter().map(|&w| i32::from(w)).sum::<i32>(),
            scale: requantize.scale[ch],
            shift: requantize.shift[ch],
            zero: requantize.zero,
        }
    }

    /// Stride 1: out[i] = requantized sum over ky, kx of k[3ky + kx] * (plane[i + ky x row + kx] +
    /// 128); `out` a whole number of blocks, `plane` at least out.len() + 2 x row + 3 long.
    pub(crate) fn plane(&self, out: &mut [u8], plane: &[i8], row: usize) {
        assert!(plane.len() >= out.len() + 2 * row + 3);
        let rows = [0, row, 2 * row].map(|at| &plane[at..]);
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `new` asserted the dot-product extension; the lengths are asserted inside.
        unsafe {
            neon::depthwise_sdot::<1>(out, rows, self)
        };
        #[cfg(not(target_arch = "aarch64"))]
        let _ = (out, rows);
    }

    /// Stride 2: out[x] = requantized sum over ky, kx of k[3ky + kx] * (rows[ky][2x + kx] + 128);
    /// `out` a whole number of blocks, every row at least 2 x out.len() + 2 long.
    pub(crate) fn stride2(&self, out: &mut [u8], rows: [&[i8]; 3]) {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `new` asserted the dot-product extension; the lengths are asserted inside.
        unsafe {
            neon::depthwise_sdot::<2>(out, rows, self)
        };
        #[cfg(not(target_arch = "aarch64"))]
        let _ = (out, rows);
    }
}

/// The same at stride 2: out[x] = requantized sum over ky, kx of k[3ky + kx] * rows[ky][2x + kx];
/// every row at least 2 x out.len() + 2 long.
fn depthwise_blocks_stride2(
    out: &mut [u8],
    rows: [&[u8]; 3],
    k: &[i16; 9],
    requantize: &Requantize,
    ch: usize,
) {
    assert!(out.len().is_multiple_of(DEPTHWISE_BLOCK));
    let rows = rows.map(|r| &r[..2 * out.len() + 2]);
    #[cfg(target_arch = "aarch64")]
    neon::depthwise_blocks_stride2(out, rows, k, requantize, ch);
    #[cfg(not(target_arch = "aarch64"))]
    portable::depthwise(
        out,
        std::array::from_fn(|t| (&rows[t / 3][t % 3..], 2)),
        k,
        requantize,
        ch,
    );
}

/// The depthwise sums without NEON: per chunk of outputs, tap by tap over the chunk (a loop the
/// compiler vectorises), then `Requantize::row`. On x86-64 compiled twice, for the baseline and for
/// AVX2, picked at run time.
#[cfg(not(target_arch = "aarch64"))]
mod portable {
    use super::Requantize;

    const CHUNK: usize = 64;

    /// out[i] = requantized sum of k[t] * taps[t].0[i * taps[t].1] (the second: the stride).
    pub(super) fn depthwise<T: Copy + Into<i32>>(
        out: &mut [u8],
        taps: [(&[T], usize); 9],
        k: &[i16; 9],
        requantize: &Requantize,
        ch: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::features().avx2 {
            // SAFETY: only reached when the CPU reports AVX2.
            return unsafe { depthwise_avx2(out, taps, k, requantize, ch) };
        }
        chunks(out, taps, k, requantize, ch)
    }

    /// `depthwise` built for AVX2.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn depthwise_avx2<T: Copy + Into<i32>>(
        out: &mut [u8],
        taps: [(&[T], usize); 9],
        k: &[i16; 9],
        requantize: &Requantize,
        ch: usize,
    ) {
        chunks(out, taps, k, requantize, ch)
    }

    #[inline(always)]
    fn chunks<T: Copy + Into<i32>>(
        out: &mut [u8],
        taps: [(&[T], usize); 9],
        k: &[i16; 9],
        requantize: &Requantize,
        ch: usize,
    ) {
        let mut sums = [0i32; CHUNK];
        for (c, chunk) in out.chunks_mut(CHUNK).enumerate() {
            let start = c * CHUNK;
            let sums = &mut sums[..chunk.len()];
            sums.fill(0);
            for ((source, stride), &w) in taps.iter().zip(k) {
                let w = i32::from(w);
                if *stride == 1 {
                    let source = &source[start..start + sums.len()];
                    for (s, &x) in sums.iter_mut().zip(source) {
                        *s += w * x.into();
                    }
                } else {
                    let source = &source[start * stride..];
                    for (s, &x) in sums.iter_mut().zip(source.iter().step_by(*stride)) {
                        *s += w * x.into();
                    }
                }
            }
            requantize.row(ch, sums, chunk);
        }
    }
}

impl TypedOp for QuantizedDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.window.output_facts(inputs, u8::datum_type())
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
            } else if s == 2 {
                // Every other byte, as pairs: a loop compilers turn into de-interleaving loads. The
                // last column may have no partner.
                let (line, src) = (&mut line[first..end], &src[start..]);
                let pairs = (src.len() / 2).min(line.len());
                for (d, pair) in line[..pairs].iter_mut().zip(src.chunks_exact(2)) {
                    *d = pair[0];
                }
                if pairs < line.len() {
                    line[pairs] = src[2 * pairs];
                }
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
        let a = u8_slice(&inputs[0])?;
        let b = u8_slice(&inputs[1])?;
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

/// Any element-wise function of one uint8 tensor to uint8, as its 256 values (a SiLU or a sigmoid
/// between quantizers). On aarch64 16 bytes at a time with TBL/TBX over the table held in 16
/// registers; tract's own table op looks bytes up one at a time.
#[derive(Debug, Clone)]
pub(crate) struct Table256 {
    pub(crate) table: Arc<[u8; 256]>,
}

by_address!(Table256, table);

impl Op for Table256 {
    fn name(&self) -> StaticName {
        "FaceEdgeTable256".into()
    }

    op_as_typed_op!();
}

impl EvalOp for Table256 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1);
        let input = u8_slice(&inputs[0])?;
        // SAFETY: u8 has no invalid bit patterns, and `look_up` writes every element.
        let mut out = unsafe { Tensor::uninitialized::<u8>(inputs[0].shape())? };
        look_up(&self.table, input, u8_values_mut(&mut out)?);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Table256 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == u8::datum_type());
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// f32 to uint8 as tract's `QuantizeLinearU8` does it (times the multiplier, rounded half to even,
/// plus the zero point, saturated; NaN as 0): a QDQ graph's input quantizer, whose input is no uint8
/// tensor a table could start from. Vectorised, where tract's own loop emulates the rounding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantizeU8 {
    pub(crate) multiplier: f32,
    pub(crate) zero: u8,
}

impl Eq for QuantizeU8 {}

impl Op for QuantizeU8 {
    fn name(&self) -> StaticName {
        "FaceEdgeQuantizeU8".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeU8 {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1);
        let input = super::f32_values(&inputs[0])?;
        // SAFETY: u8 has no invalid bit patterns, and `quantize` writes every element.
        let mut out = unsafe { Tensor::uninitialized::<u8>(inputs[0].shape())? };
        quantize(input, self.multiplier, self.zero, u8_values_mut(&mut out)?);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizeU8 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type());
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// out[i] = saturate(round_half_even(input[i] x multiplier) + zero), NaN as 0.
pub(crate) fn quantize(input: &[f32], multiplier: f32, zero: u8, out: &mut [u8]) {
    assert_eq!(input.len(), out.len());
    #[cfg(target_arch = "aarch64")]
    let (input, out) = {
        let whole = input.len() / 16 * 16;
        neon::quantize(&input[..whole], multiplier, zero, &mut out[..whole]);
        (&input[whole..], &mut out[whole..])
    };
    for (y, &x) in out.iter_mut().zip(input) {
        let v = x * multiplier;
        *y = to_u8(if v.is_nan() { 0.0 } else { v }, zero);
    }
}

/// out[i] = table[input[i]].
pub(crate) fn look_up(table: &[u8; 256], input: &[u8], out: &mut [u8]) {
    assert_eq!(input.len(), out.len());
    #[cfg(target_arch = "aarch64")]
    let (input, out) = {
        let whole = input.len() / 16 * 16;
        neon::look_up(table, &input[..whole], &mut out[..whole]);
        (&input[whole..], &mut out[whole..])
    };
    for (y, &x) in out.iter_mut().zip(input) {
        *y = table[x as usize];
    }
}

/// A uint8 image [N, C, H, W] times a uint8 factor per channel [N, C, 1, 1], each with its scale and
/// zero point, to uint8: squeeze-and-excitation's gate. Computed as tract computes the graph it
/// replaces (dequantize both, multiply, quantize), in the same f32 operations, so the bytes are
/// tract's; only the f32 tensors are gone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QuantizedChannelMul {
    /// H x W.
    pub(crate) plane: usize,
    /// (scale, zero point) of the image, the gate and the output (its scale as tract's quantizer
    /// holds it: the reciprocal).
    pub(crate) image: (f32, u8),
    pub(crate) gate: (f32, u8),
    pub(crate) output: (f32, u8),
}

impl Eq for QuantizedChannelMul {}

impl Op for QuantizedChannelMul {
    fn name(&self) -> StaticName {
        "FaceEdgeQuantizedChannelMul".into()
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizedChannelMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2 && inputs[0].len() == inputs[1].len() * self.plane);
        let image = u8_slice(&inputs[0])?;
        let gates = u8_slice(&inputs[1])?;
        // SAFETY: u8 has no invalid bit patterns, and every element is written below.
        let mut out = unsafe { Tensor::uninitialized::<u8>(inputs[0].shape())? };
        let ((sx, zx), (sg, zg), (so, zo)) = (self.image, self.gate, self.output);
        let planes = u8_values_mut(&mut out)?
            .chunks_exact_mut(self.plane)
            .zip(image.chunks_exact(self.plane))
            .zip(gates);
        for ((dst, src), &g) in planes {
            let gate = (g as i32 - zg as i32) as f32 * sg;
            for (y, &x) in dst.iter_mut().zip(src) {
                *y = to_u8((x as i32 - zx as i32) as f32 * sx * gate * so, zo);
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for QuantizedChannelMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.iter().all(|f| f.datum_type == u8::datum_type()));
        Ok(tvec!(u8::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The uint8 values of input 0, which must hold `len` of them.
fn u8_values(inputs: &[TValue], len: usize) -> TractResult<&[u8]> {
    ensure!(!inputs.is_empty() && inputs[0].len() == len);
    u8_slice(&inputs[0])
}

/// The values of a uint8 input.
fn u8_slice(value: &TValue) -> TractResult<&[u8]> {
    value.try_as_plain_ram()?.as_slice::<u8>()
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

    /// The depthwise sums of `out.len()` outputs (a multiple of 8; every source as long), requantized:
    /// per block of 8, each tap is a load of 8 values (uint8 already widened to 16 bits) and two
    /// multiply-adds into 32-bit sums (a product fits 16 bits: 255 x 127); then the requantization.
    pub(super) fn depthwise_blocks(
        out: &mut [u8],
        sources: [&[i16]; 9],
        k: &[i16; 9],
        requantize: &super::Requantize,
        ch: usize,
    ) {
        let len = out.len();
        assert!(len.is_multiple_of(8) && sources.iter().all(|s| s.len() >= len));
        let (offset, scale, shift, zero) = channel(requantize, ch);
        let p = sources.map(|s| s.as_ptr());
        let (taps, last_tap) = tap_vectors(k);
        for block in (0..len).step_by(8) {
            // SAFETY: NEON is part of every aarch64 CPU; each source has `len` values (asserted), so
            // the 8 read at `block` (byte offset 2 x block) are inside it, and 8 bytes are written
            // inside `out`. The assembly only reads those values and writes its register operands.
            unsafe {
                let mut low = vdupq_n_s32(offset);
                let mut high = low;
                // Written out because the compiler turns the intrinsics' widening multiply-add
                // (SMLAL by element) into a widening to 32 bits and a 32-bit multiply-add: one
                // instruction more per tap.
                std::arch::asm!(
                    "ldr {x0:q}, [{p0}, {b}]",
                    "ldr {x1:q}, [{p1}, {b}]",
                    "smlal {lo:v}.4s, {x0:v}.4h, {k:v}.h[0]",
                    "smlal2 {hi:v}.4s, {x0:v}.8h, {k:v}.h[0]",
                    "ldr {x0:q}, [{p2}, {b}]",
                    "smlal {lo:v}.4s, {x1:v}.4h, {k:v}.h[1]",
                    "smlal2 {hi:v}.4s, {x1:v}.8h, {k:v}.h[1]",
                    "ldr {x1:q}, [{p3}, {b}]",
                    "smlal {lo:v}.4s, {x0:v}.4h, {k:v}.h[2]",
                    "smlal2 {hi:v}.4s, {x0:v}.8h, {k:v}.h[2]",
                    "ldr {x0:q}, [{p4}, {b}]",
                    "smlal {lo:v}.4s, {x1:v}.4h, {k:v}.h[3]",
                    "smlal2 {hi:v}.4s, {x1:v}.8h, {k:v}.h[3]",
                    "ldr {x1:q}, [{p5}, {b}]",
                    "smlal {lo:v}.4s, {x0:v}.4h, {k:v}.h[4]",
                    "smlal2 {hi:v}.4s, {x0:v}.8h, {k:v}.h[4]",
                    "ldr {x0:q}, [{p6}, {b}]",
                    "smlal {lo:v}.4s, {x1:v}.4h, {k:v}.h[5]",
                    "smlal2 {hi:v}.4s, {x1:v}.8h, {k:v}.h[5]",
                    "ldr {x1:q}, [{p7}, {b}]",
                    "smlal {lo:v}.4s, {x0:v}.4h, {k:v}.h[6]",
                    "smlal2 {hi:v}.4s, {x0:v}.8h, {k:v}.h[6]",
                    "ldr {x0:q}, [{p8}, {b}]",
                    "smlal {lo:v}.4s, {x1:v}.4h, {k:v}.h[7]",
                    "smlal2 {hi:v}.4s, {x1:v}.8h, {k:v}.h[7]",
                    "smlal {lo:v}.4s, {x0:v}.4h, {k8:v}.h[0]",
                    "smlal2 {hi:v}.4s, {x0:v}.8h, {k8:v}.h[0]",
                    p0 = in(reg) p[0],
                    p1 = in(reg) p[1],
                    p2 = in(reg) p[2],
                    p3 = in(reg) p[3],
                    p4 = in(reg) p[4],
                    p5 = in(reg) p[5],
                    p6 = in(reg) p[6],
                    p7 = in(reg) p[7],
                    p8 = in(reg) p[8],
                    b = in(reg) 2 * block,
                    k = in(vreg_low16) taps,
                    k8 = in(vreg_low16) last_tap,
                    lo = inout(vreg) low,
                    hi = inout(vreg) high,
                    x0 = out(vreg) _,
                    x1 = out(vreg) _,
                    options(pure, readonly, nostack),
                );
                vst1_u8(
                    out.as_mut_ptr().add(block),
                    requantized(low, high, scale, shift, zero),
                );
            }
        }
    }

    /// `DotDepthwise::plane` (STRIDE 1) and `stride2` (STRIDE 2): per block of 16 outputs and
    /// kernel row ky, four loads of 16 bytes from the block's start in row ky, each SDOT-ed by lane
    /// ky of the taps into its own accumulator. At stride 1 the loads are at offsets 0..3 and lane
    /// j of accumulator s sums output 4j + s; TBL puts the requantized bytes back in order. At
    /// stride 2 they are at 0, 2, 16 and 18: lane j of each sums outputs 2j, 2j + 1, 8 + 2j and 9 +
    /// 2j, and ST2 stores the even and odd outputs interleaved.
    #[target_feature(enable = "dotprod")]
    pub(super) unsafe fn depthwise_sdot<const STRIDE: usize>(
        out: &mut [u8],
        rows: [&[i8]; 3],
        dot: &super::DotDepthwise,
    ) {
        let blocks = out.len() / 16;
        assert!(out.len().is_multiple_of(16) && blocks > 0 && (STRIDE == 1 || STRIDE == 2));
        // The furthest byte block b reads is 16 x STRIDE x b + 15 + (3 or 18).
        let reads = STRIDE * out.len() + if STRIDE == 1 { 3 } else { 2 };
        assert!(rows.iter().all(|r| r.len() >= reads));
        // Byte n of the result is output n, which TBL takes from where the narrowing left it:
        // accumulators 0, 2, 1, 3 in that order.
        const ORDER: [u8; 16] = [0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15];
        macro_rules! kernel_row {
            ($r:literal, $lane:literal, $o1:literal, $o2:literal, $o3:literal) => {
                concat!(
                    "ldr q4, [{",
                    $r,
                    "}]\n",
                    "ldur q5, [{",
                    $r,
                    "}, #",
                    $o1,
                    "]\n",
                    "ldur q6, [{",
                    $r,
                    "}, #",
                    $o2,
                    "]\n",
                    "ldur q7, [{",
                    $r,
                    "}, #",
                    $o3,
                    "]\n",
                    "sdot v0.4s, v4.16b, v21.4b[",
                    $lane,
                    "]\n",
                    "sdot v1.4s, v5.16b, v21.4b[",
                    $lane,
                    "]\n",
                    "sdot v2.4s, v6.16b, v21.4b[",
                    $lane,
                    "]\n",
                    "sdot v3.4s, v7.16b, v21.4b[",
                    $lane,
                    "]\n",
                    "add {",
                    $r,
                    "}, {",
                    $r,
                    "}, {step}\n",
                )
            };
        }
        macro_rules! block {
            ($o1:literal, $o2:literal, $o3:literal, $store:expr) => {
                concat!(
                    "2:\n",
                    "mov v0.16b, v20.16b\n",
                    "mov v1.16b, v20.16b\n",
                    "mov v2.16b, v20.16b\n",
                    "mov v3.16b, v20.16b\n",
                    kernel_row!("r0", "0", $o1, $o2, $o3),
                    kernel_row!("r1", "1", $o1, $o2, $o3),
                    kernel_row!("r2", "2", $o1, $o2, $o3),
                    requantize_vector!("0", "22", "0", "23"),
                    requantize_vector!("1", "22", "0", "23"),
                    requantize_vector!("2", "22", "0", "23"),
                    requantize_vector!("3", "22", "0", "23"),
                    $store,
                    "subs {n}, {n}, #1\n",
                    "b.ne 2b\n",
                )
            };
        }
        // SAFETY: the caller guarantees the dot-product extension. Block b reads 16 bytes at 16 x
        // STRIDE x b + (0..=3 or 0, 2, 16, 18) of each row, inside it (asserted), and writes
        // out[16b..16b + 16].
        unsafe {
            let [r0, r1, r2] = rows.map(|r| r.as_ptr());
            let (out, n, step) = (out.as_mut_ptr(), blocks, 16 * STRIDE);
            let (offset, taps) = (vdupq_n_s32(dot.offset), vld1q_s8(dot.taps.as_ptr()));
            let (scale, shift) = (vdupq_n_f32(dot.scale), vdupq_n_f32(dot.shift));
            let zero = vdupq_n_s16(i16::from(dot.zero));
            if STRIDE == 1 {
                std::arch::asm!(
                    block!("1", "2", "3", concat!(
                        "sqxtn v16.4h, v0.4s\n", "sqxtn2 v16.8h, v2.4s\n",
                        "sqxtn v17.4h, v1.4s\n", "sqxtn2 v17.8h, v3.4s\n",
                        "sqadd v16.8h, v16.8h, v24.8h\n", "sqadd v17.8h, v17.8h, v24.8h\n",
                        "sqxtun v16.8b, v16.8h\n", "sqxtun2 v16.16b, v17.8h\n",
                        "tbl v16.16b, {{v16.16b}}, v25.16b\n",
                        "st1 {{v16.16b}}, [{out}], #16\n",
                    )),
                    r0 = inout(reg) r0 => _, r1 = inout(reg) r1 => _, r2 = inout(reg) r2 => _,
                    out = inout(reg) out => _, n = inout(reg) n => _, step = in(reg) step,
                    in("v20") offset, in("v21") taps, in("v22") scale, in("v23") shift,
                    in("v24") zero, in("v25") vld1q_u8(ORDER.as_ptr()),
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                    out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    out("v16") _, out("v17") _,
                    options(nostack),
                );
            } else {
                std::arch::asm!(
                    block!("2", "16", "18", concat!(
                        "sqxtn v16.4h, v0.4s\n", "sqxtn2 v16.8h, v2.4s\n",
                        "sqxtn v17.4h, v1.4s\n", "sqxtn2 v17.8h, v3.4s\n",
                        "sqadd v16.8h, v16.8h, v24.8h\n", "sqadd v17.8h, v17.8h, v24.8h\n",
                        "sqxtun v16.8b, v16.8h\n", "sqxtun v17.8b, v17.8h\n",
                        "st2 {{v16.8b, v17.8b}}, [{out}], #16\n",
                    )),
                    r0 = inout(reg) r0 => _, r1 = inout(reg) r1 => _, r2 = inout(reg) r2 => _,
                    out = inout(reg) out => _, n = inout(reg) n => _, step = in(reg) step,
                    in("v20") offset, in("v21") taps, in("v22") scale, in("v23") shift,
                    in("v24") zero,
                    out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                    out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                    out("v16") _, out("v17") _,
                    options(nostack),
                );
            }
        }
    }

    /// `depthwise_blocks` at stride 2 over plain padded rows (every row at least 2 x out.len() + 2
    /// bytes): per row, two de-interleaving loads give the even columns (kx = 0), the odd ones (kx
    /// = 1) and the even ones one further on (kx = 2).
    pub(super) fn depthwise_blocks_stride2(
        out: &mut [u8],
        rows: [&[u8]; 3],
        k: &[i16; 9],
        requantize: &super::Requantize,
        ch: usize,
    ) {
        let len = out.len();
        assert!(len.is_multiple_of(8) && rows.iter().all(|r| r.len() >= 2 * len + 2));
        let (offset, scale, shift, zero) = channel(requantize, ch);
        let (taps, last_tap) = tap_vectors(k);
        for block in (0..len).step_by(8) {
            // SAFETY: NEON is part of every aarch64 CPU; the loads read bytes 2 x block .. 2 x
            // block + 18 of each row, inside it since block + 8 <= len (asserted lengths), and 8
            // bytes are written inside `out`. The assembly writes only its register operands.
            unsafe {
                let mut low = vdupq_n_s32(offset);
                let mut high = low;
                std::arch::asm!(
                    "add {t}, {r0}, {b}",
                    "ld2 {{v16.8b, v17.8b}}, [{t}]",
                    "add {t}, {t}, #2",
                    "ld2 {{v18.8b, v19.8b}}, [{t}]",
                    "ushll v16.8h, v16.8b, #0", "ushll v17.8h, v17.8b, #0", "ushll v18.8h, v18.8b, #0",
                    "smlal v2.4s, v16.4h, v0.h[0]", "smlal2 v3.4s, v16.8h, v0.h[0]",
                    "smlal v2.4s, v17.4h, v0.h[1]", "smlal2 v3.4s, v17.8h, v0.h[1]",
                    "smlal v2.4s, v18.4h, v0.h[2]", "smlal2 v3.4s, v18.8h, v0.h[2]",
                    "add {t}, {r1}, {b}",
                    "ld2 {{v16.8b, v17.8b}}, [{t}]",
                    "add {t}, {t}, #2",
                    "ld2 {{v18.8b, v19.8b}}, [{t}]",
                    "ushll v16.8h, v16.8b, #0", "ushll v17.8h, v17.8b, #0", "ushll v18.8h, v18.8b, #0",
                    "smlal v2.4s, v16.4h, v0.h[3]", "smlal2 v3.4s, v16.8h, v0.h[3]",
                    "smlal v2.4s, v17.4h, v0.h[4]", "smlal2 v3.4s, v17.8h, v0.h[4]",
                    "smlal v2.4s, v18.4h, v0.h[5]", "smlal2 v3.4s, v18.8h, v0.h[5]",
                    "add {t}, {r2}, {b}",
                    "ld2 {{v16.8b, v17.8b}}, [{t}]",
                    "add {t}, {t}, #2",
                    "ld2 {{v18.8b, v19.8b}}, [{t}]",
                    "ushll v16.8h, v16.8b, #0", "ushll v17.8h, v17.8b, #0", "ushll v18.8h, v18.8b, #0",
                    "smlal v2.4s, v16.4h, v0.h[6]", "smlal2 v3.4s, v16.8h, v0.h[6]",
                    "smlal v2.4s, v17.4h, v0.h[7]", "smlal2 v3.4s, v17.8h, v0.h[7]",
                    "smlal v2.4s, v18.4h, v1.h[0]", "smlal2 v3.4s, v18.8h, v1.h[0]",
                    r0 = in(reg) rows[0].as_ptr(),
                    r1 = in(reg) rows[1].as_ptr(),
                    r2 = in(reg) rows[2].as_ptr(),
                    b = in(reg) 2 * block,
                    t = out(reg) _,
                    in("v0") taps,
                    in("v1") last_tap,
                    inout("v2") low,
                    inout("v3") high,
                    out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                    options(pure, readonly, nostack),
                );
                vst1_u8(
                    out.as_mut_ptr().add(block),
                    requantized(low, high, scale, shift, zero),
                );
            }
        }
    }

    /// `quantize` over whole blocks of 16: FCVTNS rounds half to even (NaN to 0) and the narrowing
    /// moves saturate.
    pub(super) fn quantize(input: &[f32], multiplier: f32, zero: u8, out: &mut [u8]) {
        assert!(input.len() == out.len() && input.len().is_multiple_of(16));
        // SAFETY: NEON is part of every aarch64 CPU; each block reads 16 f32 and writes 16 bytes,
        // inside the slices (lengths asserted above).
        unsafe {
            let m = vdupq_n_f32(multiplier);
            let z = vdupq_n_s16(i16::from(zero));
            for (x, y) in input.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
                let code = |at: usize| vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x.as_ptr().add(at)), m));
                let low = vqaddq_s16(vcombine_s16(vqmovn_s32(code(0)), vqmovn_s32(code(4))), z);
                let high = vqaddq_s16(vcombine_s16(vqmovn_s32(code(8)), vqmovn_s32(code(12))), z);
                vst1q_u8(
                    y.as_mut_ptr(),
                    vcombine_u8(vqmovun_s16(low), vqmovun_s16(high)),
                );
            }
        }
    }

    /// `look_up` over whole blocks of 16: TBL finds the values of indices 0..64 in the first quarter
    /// of the table (0 for the others), then TBX, which leaves lanes whose index is out of range
    /// alone, the values of each further quarter from the index minus 64, 128 and 192.
    pub(super) fn look_up(table: &[u8; 256], input: &[u8], out: &mut [u8]) {
        assert!(input.len() == out.len() && input.len().is_multiple_of(16));
        // SAFETY: NEON is part of every aarch64 CPU; the table's 256 bytes are read as 16 blocks
        // of 16, and each block of 16 input bytes read and output bytes written is inside its
        // slice (lengths asserted above).
        unsafe {
            let quarter = |q: usize| {
                let p = table.as_ptr().add(q * 64);
                uint8x16x4_t(
                    vld1q_u8(p),
                    vld1q_u8(p.add(16)),
                    vld1q_u8(p.add(32)),
                    vld1q_u8(p.add(48)),
                )
            };
            let (t0, t1, t2, t3) = (quarter(0), quarter(1), quarter(2), quarter(3));
            let sixty_four = vdupq_n_u8(64);
            for (x, y) in input.chunks_exact(16).zip(out.chunks_exact_mut(16)) {
                let i0 = vld1q_u8(x.as_ptr());
                let i1 = vsubq_u8(i0, sixty_four);
                let i2 = vsubq_u8(i1, sixty_four);
                let i3 = vsubq_u8(i2, sixty_four);
                let v = vqtbl4q_u8(t0, i0);
                let v = vqtbx4q_u8(v, t1, i1);
                let v = vqtbx4q_u8(v, t2, i2);
                let v = vqtbx4q_u8(v, t3, i3);
                vst1q_u8(y.as_mut_ptr(), v);
            }
        }
    }

    /// Channel `ch`'s requantization: offset, scale, shift and zero point.
    fn channel(requantize: &super::Requantize, ch: usize) -> (i32, f32, f32, i32) {
        (
            requantize.offset[ch],
            requantize.scale[ch],
            requantize.shift[ch],
            requantize.zero as i32,
        )
    }

    /// A depthwise kernel's taps 0..8 as one vector, and tap 8 in every lane of another.
    fn tap_vectors(k: &[i16; 9]) -> (int16x8_t, int16x8_t) {
        // SAFETY: NEON is part of every aarch64 CPU; 8 of the 9 values are read.
        unsafe { (vld1q_s16(k.as_ptr()), vdupq_n_s16(k[8])) }
    }

    /// Two vectors of sums (offset included) to 8 bytes, as `store` does it: a multiply then an
    /// add, rounding to nearest even, the zero point added, saturating.
    #[inline(always)]
    unsafe fn requantized(
        low: int32x4_t,
        high: int32x4_t,
        scale: f32,
        shift: f32,
        zero: i32,
    ) -> uint8x8_t {
        // SAFETY: NEON arithmetic on registers only.
        unsafe {
            let quantize = |sum: int32x4_t| {
                let scaled = vaddq_f32(vmulq_n_f32(vcvtq_f32_s32(sum), scale), vdupq_n_f32(shift));
                vqmovn_s32(vaddq_s32(vcvtnq_s32_f32(scaled), vdupq_n_s32(zero)))
            };
            vqmovun_s16(vcombine_s16(quantize(low), quantize(high)))
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
