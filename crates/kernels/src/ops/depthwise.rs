//! 3x3 depthwise convolution (every MobileNet-style block of YuNet, MobileFaceNet and EfficientNetV2),
//! planar or interleaved, with its bias and activation folded.

use super::{Clamp, Window, data_kernel_bias, multiply_add, out_values};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// 3x3 depthwise convolution, f32, zero padding, then a clamp; planar (NCHW, CHW) at stride 1 or 2,
/// interleaved (NHWC, HWC) at stride 1. Inputs: data, kernel [C,1,3,3], bias [C] (or one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Depthwise3x3 {
    pub(crate) window: Window,
    pub(crate) channels_last: bool,
    pub(crate) clamp: Clamp,
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
        let [data, kernel, bias] = data_kernel_bias(&inputs, self.window.input.iter().product())?;
        // SAFETY: f32 has no invalid bit patterns, and `compute` writes every element (rows start
        // from the bias) before the tensor is returned.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&self.window.output_shape)? };
        self.compute(data, kernel, bias, out_values(&mut out)?)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Planes narrower than this (at stride 1) are computed in one pass each (`whole_plane`): their
/// rows are too short for a vector loop per row.
pub(crate) const WHOLE_PLANE_BELOW: usize = 32;

impl Depthwise3x3 {
    /// The convolution of `data` into `out` (every element written), for callers holding slices.
    pub(crate) fn compute(
        &self,
        data: &[f32],
        kernel: &[f32],
        bias: &[f32],
        out: &mut [f32],
    ) -> TractResult<()> {
        let window = &self.window;
        let [_, c, h, w] = window.input;
        let [_, _, oh, ow] = window.output;
        ensure!(kernel.len() == c * 9 && (bias.len() == c || bias.len() == 1));
        ensure!(data.len() == window.input.iter().product::<usize>());
        ensure!(out.len() == window.output.iter().product::<usize>());
        if self.channels_last {
            self.interleaved(data, kernel, bias, out);
            return Ok(());
        }
        // Stride 2 and small planes are copied into this padded buffer; larger planes at stride 1
        // are read in place and only need a row of zeros for the rows outside the plane.
        let whole_planes = window.stride == 1 && ow < WHOLE_PLANE_BELOW;
        let in_place = window.stride == 1 && !whole_planes;
        let padded_len = if in_place { w } else { window.padded_len() };
        let mut padded = vec![0f32; padded_len];
        let mut flat = vec![0f32; if whole_planes { padded_len } else { 0 }];
        let planes = data.chunks_exact(h * w).zip(out.chunks_exact_mut(oh * ow));
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
        Ok(())
    }

    /// One small padded plane at stride 1 as a single nine-tap pass: output (y, x) is computed at
    /// y * pw + x of `flat`, the padded width apart, so each tap is one slice of `padded` (the two
    /// columns past each row's end are computed and dropped); then the rows are copied out.
    pub(crate) fn whole_plane(
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
    pub(crate) fn unpadded(
        &self,
        src: &[f32],
        dst: &mut [f32],
        k: &[f32; 9],
        bias: f32,
        zeros: &[f32],
    ) {
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
    pub(crate) fn interleaved(&self, data: &[f32], kernel: &[f32], bias: &[f32], out: &mut [f32]) {
        let window = &self.window;
        let [_, c, h, w] = window.input;
        let [_, _, oh, ow] = window.output;
        let (ph, pw) = window.padded_size();
        let row = ow * c;
        // Each tap's weights of the c channels, repeated along the row: whole copies of c values
        // (an element-wise index modulo c here cost more than the convolution of YuNet's
        // interleaved layers).
        let mut weight_rows = Vec::with_capacity(9 * row);
        for t in 0..9 {
            let tap: Vec<f32> = (0..c).map(|ch| kernel[ch * 9 + t]).collect();
            for _ in 0..ow {
                weight_rows.extend_from_slice(&tap);
            }
        }
        let bias_row = if bias.len() == 1 {
            vec![bias[0]; row]
        } else {
            bias.repeat(ow)
        };
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

/// out[x] = clamp(bias + sum of k[t] * sources[t][x]). On x86-64 compiled twice, for the baseline
/// (SSE2) and for AVX2, picked at run time; aarch64's baseline already has NEON.
pub(crate) fn nine_taps(
    out: &mut [f32],
    sources: [&[f32]; 9],
    k: &[f32; 9],
    bias: f32,
    clamp: Clamp,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx2 {
        // SAFETY: only reached when the CPU reports AVX2.
        return unsafe { nine_taps_avx2(out, sources, k, bias, clamp) };
    }
    fused(out, sources, k, bias, clamp)
}

/// `nine_taps` built for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn nine_taps_avx2(
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
pub(crate) fn fused<const N: usize>(
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
            acc = multiply_add(acc, k[t], sources[t][i]);
        }
        *o = clamp.apply(acc);
    }
}

/// As `nine_taps` with a weight and a bias per element: out[i] = clamp(bias[i] + sum of
/// weights[t][i] * sources[t][i]).
pub(crate) fn nine_weighted_taps(
    out: &mut [f32],
    sources: [&[f32]; 9],
    weights: [&[f32]; 9],
    bias: &[f32],
    clamp: Clamp,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::features().avx2 {
        // SAFETY: only reached when the CPU reports AVX2.
        return unsafe { nine_weighted_taps_avx2(out, sources, weights, bias, clamp) };
    }
    weighted(out, sources, weights, bias, clamp)
}

/// `nine_weighted_taps` built for AVX2.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn nine_weighted_taps_avx2(
    out: &mut [f32],
    sources: [&[f32]; 9],
    weights: [&[f32]; 9],
    bias: &[f32],
    clamp: Clamp,
) {
    weighted(out, sources, weights, bias, clamp)
}

#[inline(always)]
pub(crate) fn weighted<const N: usize>(
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
            acc = multiply_add(acc, weights[t][i], sources[t][i]);
        }
        *o = clamp.apply(acc);
    }
}

impl TypedOp for Depthwise3x3 {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.window.output_facts(inputs, f32::datum_type())
    }

    as_op!();
}
