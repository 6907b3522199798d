//! The dense 3x3 convolution of a network's first layer (few input channels) as an AVX-512 tile.

#[cfg(target_arch = "x86_64")]
use super::pointwise::{avx512_available, tile_starts};
use super::{Clamp, Window, data_kernel_bias, out_values};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// Most input channels a first-layer convolution may have (RGB and a spare), and its register tile:
/// 16 output channels x 16 pixels, sixteen AVX-512 accumulators.
pub(crate) const FIRST_LAYER_MAX_INPUTS: usize = 4;
pub(crate) const FIRST_LAYER_TILE_CHANNELS: usize = 16;
pub(crate) const FIRST_LAYER_TILE_PIXELS: usize = 16;

/// Dense 3x3 convolution of a planar f32 image with few channels (a network's first layer, as
/// YuNet's 3 -> 16 at stride 2, where tract's direct convolution took 10 % of the detector), plus
/// bias, then a clamp. Inputs: data, kernel [O, C, 3, 3], bias [O].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FirstLayer3x3 {
    pub(crate) window: Window,
    pub(crate) clamp: Clamp,
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
        // SAFETY: f32 has no invalid bit patterns, and every element is written below before the tensor
        // is returned.
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
        self.window.output_facts(inputs, f32::datum_type())
    }

    as_op!();
}

/// The nine tap slices of each input channel's padded plane for output row `oy`.
pub(crate) fn first_layer_taps<'a>(
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
pub(crate) fn first_layer_plain(
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
///
/// # Safety
/// The CPU must support AVX-512F, and the sizes must be as stated above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn first_layer_tiled(
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
