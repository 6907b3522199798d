//! face-edge's tract operators, one module each, and what they share: the folded activation
//! (`Clamp`), the geometry of a 3x3 window (`Window`) and typed access to tensor values.

/// The assembly that requantizes 4 sums (offset included) in v`v` to rounded i32, as
/// `Requantize::row` does: to f32, times lane `r` of the scales in v`scales`, plus the shift in every
/// lane of v`shift`, converted rounding to nearest, ties to even.
// Defined before the modules that use it (the int8 GEMM and depthwise kernels).
#[cfg(target_arch = "aarch64")]
macro_rules! requantize_vector {
    ($v:literal, $scales:literal, $r:literal, $shift:literal) => {
        concat!(
            "scvtf v", $v, ".4s, v", $v, ".4s\n", "fmul v", $v, ".4s, v", $v, ".4s, v", $scales,
            ".s[", $r, "]\n", "fadd v", $v, ".4s, v", $v, ".4s, v", $shift, ".4s\n", "fcvtns v",
            $v, ".4s, v", $v, ".4s\n",
        )
    };
}

mod depthwise;
mod first_layer;
mod int8_gemm;
mod max_pool;
mod pointwise;
mod quantized;

pub(crate) use depthwise::Depthwise3x3;
pub(crate) use first_layer::*;
#[cfg(test)]
pub(crate) use int8_gemm::gemm_i32;
pub(crate) use int8_gemm::{GemmKind, PackedWeights, gemm_u8};
pub(crate) use max_pool::MaxPool2x2;
pub(crate) use pointwise::*;
pub(crate) use quantized::*;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// The f32 values of a plain tensor.
pub(crate) fn f32_values(t: &Tensor) -> TractResult<&[f32]> {
    t.try_as_plain_ram()?.as_slice::<f32>()
}

/// Bounds every output is clamped to: the activation folded into a kernel (none: infinite bounds).
/// Compared by bit pattern so that the op can be `Eq`, as tract requires.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clamp {
    pub(crate) low: f32,
    pub(crate) high: f32,
}

impl Clamp {
    pub(crate) const NONE: Clamp = Clamp {
        low: f32::NEG_INFINITY,
        high: f32::INFINITY,
    };

    /// max(low, min(high, v)) in the order ONNX Clip and a ReLU followed by a min apply them.
    #[inline(always)]
    pub(crate) fn apply(self, v: f32) -> f32 {
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
pub(crate) struct Window {
    pub(crate) input: [usize; 4],
    pub(crate) output: [usize; 4],
    pub(crate) output_shape: Vec<usize>,
    pub(crate) stride: usize,
    pub(crate) pad_top: usize,
    pub(crate) pad_left: usize,
}

impl Window {
    /// The op's output fact, of `datum_type` (its input's, which must be that type too).
    pub(crate) fn output_facts(
        &self,
        inputs: &[&TypedFact],
        datum_type: DatumType,
    ) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == datum_type);
        ensure!(inputs[0].shape.volume() == self.input.iter().product::<usize>().to_dim());
        Ok(tvec!(datum_type.fact(&self.output_shape)))
    }

    /// The padded input extent the outputs read: rows and columns.
    pub(crate) fn padded_size(&self) -> (usize, usize) {
        let [_, _, oh, ow] = self.output;
        ((oh - 1) * self.stride + 3, (ow - 1) * self.stride + 3)
    }

    /// Values per row of a padded plane: stride 1, the padded columns; stride 2, the even columns
    /// then the odd ones, each half rounded up.
    pub(crate) fn padded_row(&self) -> usize {
        let pw = self.padded_size().1;
        if self.stride == 1 {
            pw
        } else {
            2 * pw.div_ceil(2)
        }
    }

    pub(crate) fn padded_len(&self) -> usize {
        self.padded_size().0 * self.padded_row()
    }

    /// Copies one planar channel into the image area of `padded` (and, for stride 2, its columns
    /// split into even and odd halves), so that every output row is the same nine-tap sum over
    /// contiguous slices (`taps`): no edge cases in the loops that compute. The border is never
    /// written: the caller makes the buffer filled with zeros and reuses it for every plane of this
    /// window.
    pub(crate) fn pad(&self, src: &[f32], padded: &mut [f32]) {
        let w = self.input[3];
        let (ph, pw) = self.padded_size();
        let p = self.pad_left;
        // Source columns past the padded width are never read.
        let columns = w.min(pw - p);
        if self.stride == 1 {
            return self.pad_rows(src, padded);
        }
        let rows = padded.chunks_exact_mut(self.padded_row()).take(ph);
        for (out, line) in rows.skip(self.pad_top).zip(src.chunks_exact(w)) {
            let line = &line[..columns];
            // Source column x lands on padded column x + p: the even ones in the first half (at
            // (x + p) / 2), the odd ones in the second.
            let (even, odd) = out.split_at_mut(pw.div_ceil(2));
            let parity = p % 2;
            if parity == 1 {
                odd[p / 2] = line[0];
            }
            // From there on, source columns come in (even, odd) pairs that share an index: one
            // loop over pairs, which compilers turn into de-interleaving loads.
            let rest = &line[parity..];
            let at = (p + parity) / 2;
            let pairs = rest.len() / 2;
            for ((e, o), pair) in even[at..at + pairs]
                .iter_mut()
                .zip(&mut odd[at..at + pairs])
                .zip(rest.chunks_exact(2))
            {
                *e = pair[0];
                *o = pair[1];
            }
            if let [.., last] = rest[2 * pairs..] {
                even[at + pairs] = last;
            }
        }
    }

    /// Copies one planar channel into the image area of `padded`, in rows of the padded width at
    /// any stride (`pad`'s layout at stride 1), converting each value (e.g. uint8 to i16); the
    /// border, as for `pad`, is the caller's (filled with the padding value: 0, or a uint8 input's
    /// zero point).
    pub(crate) fn pad_rows<S: Copy, T: PadFrom<S>>(&self, src: &[S], padded: &mut [T]) {
        let w = self.input[3];
        let (ph, pw) = self.padded_size();
        let p = self.pad_left;
        let columns = w.min(pw - p);
        let rows = (ph - self.pad_top).min(src.len() / w);
        let first = self.pad_top * pw + p;
        if rows == 0 || columns == 0 {
            return;
        }
        // Row r of the source to row r of the image area; every padded row but the last is whole,
        // and that one is at least `columns` long.
        let padded = &mut padded[first..first + (rows - 1) * pw + columns];
        for (line, out) in src.chunks_exact(w).zip(padded.chunks_mut(pw)) {
            T::copy_row(&line[..columns], &mut out[..columns]);
        }
    }

    /// The nine slices of a padded plane whose element x is tap (ky, kx) of output (oy, x).
    pub(crate) fn taps<'a, T>(&self, padded: &'a [T], oy: usize) -> [&'a [T]; 9] {
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

/// How `Window::pad_rows` copies a row of S values into a padded plane of Self values.
pub(crate) trait PadFrom<S>: Copy {
    fn copy_row(src: &[S], dst: &mut [Self]);
}

impl<T: Copy> PadFrom<T> for T {
    #[inline]
    fn copy_row(src: &[T], dst: &mut [T]) {
        dst.copy_from_slice(src);
    }
}

/// Widened: the uint8 depthwise kernel at stride 1 reads 16-bit values.
impl PadFrom<u8> for i16 {
    #[inline]
    fn copy_row(src: &[u8], dst: &mut [i16]) {
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "aarch64")]
        if src.len() >= 4 {
            use std::arch::aarch64::*;
            let chunk = if src.len() >= 8 { 8 } else { 4 };
            return overlapping_chunks(src.len(), chunk, |start| {
                // SAFETY: NEON is part of every aarch64 CPU; start + chunk <= the length of both
                // slices (asserted).
                unsafe {
                    let (from, to) = (src.as_ptr().add(start), dst.as_mut_ptr().add(start));
                    if chunk == 8 {
                        vst1q_s16(to, vreinterpretq_s16_u16(vmovl_u8(vld1_u8(from))));
                    } else {
                        let four = vld1_lane_u32::<0>(from.cast(), vdup_n_u32(0));
                        let wide = vmovl_u8(vreinterpret_u8_u32(four));
                        vst1_s16(to, vreinterpret_s16_u16(vget_low_u16(wide)));
                    }
                }
            });
        }
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = i16::from(v);
        }
    }
}

/// Offset: the dot-product depthwise kernel at stride 1 reads signed bytes x - 128 (the top bit
/// flipped).
impl PadFrom<u8> for i8 {
    #[inline]
    fn copy_row(src: &[u8], dst: &mut [i8]) {
        assert_eq!(src.len(), dst.len());
        #[cfg(target_arch = "aarch64")]
        if src.len() >= 4 {
            use std::arch::aarch64::*;
            let chunk = [16, 8, 4]
                .into_iter()
                .find(|&c| src.len() >= c)
                .unwrap_or(4);
            return overlapping_chunks(src.len(), chunk, |start| {
                // SAFETY: NEON is part of every aarch64 CPU; start + chunk <= the length of both
                // slices (asserted).
                unsafe {
                    let (from, to) = (src.as_ptr().add(start), dst.as_mut_ptr().add(start));
                    match chunk {
                        16 => vst1q_u8(to.cast(), veorq_u8(vld1q_u8(from), vdupq_n_u8(0x80))),
                        8 => vst1_u8(to.cast(), veor_u8(vld1_u8(from), vdup_n_u8(0x80))),
                        _ => {
                            let four = from.cast::<u32>().read_unaligned() ^ 0x8080_8080;
                            to.cast::<u32>().write_unaligned(four);
                        }
                    }
                }
            });
        }
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (v ^ 0x80) as i8;
        }
    }
}

/// Calls `copy(start)` for chunks of `chunk` values that cover 0..len (len >= chunk): whole chunks,
/// and a last one that ends at `len`, overlapping the one before, instead of a scalar tail (the
/// padded rows are short: 7 to 56 values here).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn overlapping_chunks(len: usize, chunk: usize, mut copy: impl FnMut(usize)) {
    let last = len - chunk;
    let mut at = 0;
    loop {
        let start = at.min(last);
        copy(start);
        if start == last {
            break;
        }
        at += chunk;
    }
}

/// acc + a * b: fused (one rounding, one FMLA per 4 lanes) on aarch64, where every core has it; in
/// two steps elsewhere, since the x86-64 baseline has no fused multiply-add (it would be a library
/// call per element).
#[inline(always)]
pub(crate) fn multiply_add(acc: f32, a: f32, b: f32) -> f32 {
    #[cfg(target_arch = "aarch64")]
    return a.mul_add(b, acc);
    #[cfg(not(target_arch = "aarch64"))]
    return acc + a * b;
}

/// The three inputs of a convolution op (data of `data_len` values, kernel, bias) as f32 values.
pub(crate) fn data_kernel_bias(inputs: &[TValue], data_len: usize) -> TractResult<[&[f32]; 3]> {
    ensure!(inputs.len() == 3 && inputs[0].len() == data_len);
    Ok([
        f32_values(&inputs[0])?,
        f32_values(&inputs[1])?,
        f32_values(&inputs[2])?,
    ])
}

/// The f32 values of a tensor this module just allocated as f32 (so the unchecked view is its type).
pub(crate) fn out_values(t: &mut Tensor) -> TractResult<&mut [f32]> {
    ensure!(t.datum_type() == f32::datum_type());
    // SAFETY: the datum type was just checked to be f32, the type of the slice.
    Ok(unsafe { t.as_slice_mut_unchecked::<f32>() })
}
