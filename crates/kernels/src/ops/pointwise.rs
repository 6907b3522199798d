//! 1x1 convolution as an AVX-512 register tile (4 output channels x 32 pixels), bias and activation folded.

use super::{Clamp, data_kernel_bias, out_values};
use crate::cpu;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// 1x1 convolution, planar f32 (one image), plus a per-channel bias, then a clamp. Inputs: data
/// [I, pixels], weights [O, I], bias [O].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointwise {
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
    pub(crate) pixels: usize,
    /// The output as the graph has it (OHW or NOHW).
    pub(crate) output_shape: Vec<usize>,
    pub(crate) clamp: Clamp,
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
        // SAFETY: f32 has no invalid bit patterns, and every element is written below before the tensor
        // is returned.
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
pub(crate) const TILE_CHANNELS: usize = 4;
pub(crate) const TILE_PIXELS: usize = 32;

/// Smaller images stay with tract: from 14x14 down, its packed product (which also absorbs a
/// following residual addition) was as fast or faster on MobileFaceNet and the stand-in; at 28x28
/// and above the tile won (`face-edge bench`, both models, thresholds 256 to 784 alternated).
pub(crate) const POINTWISE_MIN_PIXELS: usize = 784;

/// Whether the register-tiled kernels (`Pointwise`, `FirstLayer3x3`) run on this CPU. Only with
/// AVX-512 (x86-64): there they beat tract's own (`face-edge bench --profile`); an AVX2 build of the
/// 1x1 tile was slower than tract from 32 input channels up, and NEON builds cannot be timed here
/// (qemu), so elsewhere tract keeps these convolutions.
pub(crate) fn avx512_available() -> bool {
    cpu::features().avx512f
}

/// Where the tiles of an axis of `len` (>= `tile`) start: every `tile` apart, the last one moved
/// back to end at `len` (recomputing a few values, identically) so that there is no remainder loop.
#[cfg(target_arch = "x86_64")]
pub(crate) fn tile_starts(len: usize, tile: usize) -> impl Iterator<Item = usize> {
    let last = len - tile;
    (0..len.div_ceil(tile)).map(move |t| (t * tile).min(last))
}

/// out[o][p] = clamp(bias[o] + sum over i of weights[o][i] * data[i][p]) for one planar image.
pub(crate) fn pointwise(
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
pub(crate) fn pointwise_plain(
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
///
/// # Safety
/// The CPU must support AVX-512F, and the sizes must be as stated above.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn pointwise_tiled(
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
///
/// # Safety
/// The CPU must support AVX-512F, and every pointer offset the tile reads or writes must lie
/// inside the slice the pointer came from.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn tile(
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
