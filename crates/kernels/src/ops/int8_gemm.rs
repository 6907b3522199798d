//! The uint8 x int8 -> i32 matrix product behind the quantized 1x1 convolution (and the dense 3x3
//! one, after im2col), in tiles of 4 output channels x 16 pixels with input channels taken 4 at a
//! time: the shape of one instruction on both CPUs that have a 4-way byte dot product (aarch64 SDOT
//! on ARMv8.2 cores such as the Pi 5's Cortex-A76: 4 pixels x 4 channels against one output's 4
//! weights; x86-64 AVX512-VNNI VPDPBUSD: 16 pixels x 4 channels). The Pi 4's Cortex-A72 has no dot
//! product: NEON SMULL/SADALP over the same layout. Elsewhere (x86-64 without VNNI) a plain loop,
//! left to the compiler's vectoriser.
//!
//! Layouts: the image is packed per tile of 16 pixels as [channel group][pixel][4 channels] (channels
//! and pixels past the end are zero); the weights as [output group][channel group][4 outputs][4
//! channels]. SDOT and SMULL multiply signed bytes, so for them the uint8 image is stored as x - 128
//! (the top bit flipped) and `Requantize::offset` gives the 128 back.

use super::quantized::Requantize;
use crate::cpu;

pub(crate) const TILE_PIXELS: usize = 16;
pub(crate) const TILE_OUTPUTS: usize = 4;
const GROUP: usize = 4;

/// Which code computes the tiles, chosen once when the weights are packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GemmKind {
    Portable,
    /// aarch64 SDOT (ARMv8.2 dot product).
    Sdot,
    /// x86-64 AVX512-VNNI VPDPBUSD.
    Vnni,
    /// aarch64 without the dot product (the Pi 4's Cortex-A72): SMULL (8 products of signed bytes
    /// to 16 bits) and SADALP (pairwise sums added into 32 bits).
    Widening,
}

impl GemmKind {
    pub(crate) fn detect() -> GemmKind {
        let features = cpu::features();
        if features.dotprod {
            GemmKind::Sdot
        } else if features.avx512vnni {
            GemmKind::Vnni
        } else if cfg!(target_arch = "aarch64") {
            GemmKind::Widening
        } else {
            GemmKind::Portable
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            GemmKind::Portable => "portable",
            GemmKind::Sdot => "SDOT",
            GemmKind::Vnni => "AVX512-VNNI",
            GemmKind::Widening => "NEON SMULL/SADALP",
        }
    }

    /// Whether the kernel multiplies signed bytes, so that the image is stored as x - 128.
    fn signed(self) -> bool {
        matches!(self, GemmKind::Sdot | GemmKind::Widening)
    }

    /// What the image's bytes are XORed with when packed.
    fn flip(self) -> u8 {
        if self.signed() { 0x80 } else { 0 }
    }
}

/// Int8 weights [outputs, inputs] in the tile layout, and each output's weight sum.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeights {
    pub(crate) inputs: usize,
    pub(crate) outputs: usize,
    pub(crate) kind: GemmKind,
    data: Vec<i8>,
    sums: Vec<i32>,
}

impl PackedWeights {
    pub(crate) fn new(weights: &[i8], outputs: usize, inputs: usize, kind: GemmKind) -> Self {
        assert_eq!(weights.len(), outputs * inputs);
        let groups = inputs.div_ceil(GROUP);
        let tiles = outputs.div_ceil(TILE_OUTPUTS);
        let mut data = vec![0i8; tiles * groups * TILE_OUTPUTS * GROUP];
        for o in 0..outputs {
            for i in 0..inputs {
                let (tile, lane) = (o / TILE_OUTPUTS, o % TILE_OUTPUTS);
                let (group, k) = (i / GROUP, i % GROUP);
                data[((tile * groups + group) * TILE_OUTPUTS + lane) * GROUP + k] =
                    weights[o * inputs + i];
            }
        }
        let sums = weights
            .chunks_exact(inputs)
            .map(|row| row.iter().map(|&w| w as i32).sum())
            .collect();
        PackedWeights {
            inputs,
            outputs,
            kind,
            data,
            sums,
        }
    }

    /// What `Requantize::offset` must hold for output `o` so that the tile sums become sums of
    /// (x - input_zero) * w: the zero point's share, and for SDOT the 128 taken off each byte.
    pub(crate) fn offset(&self, o: usize, input_zero: u8) -> i32 {
        let stored_zero = if self.kind.signed() { 128 } else { 0 };
        (stored_zero - input_zero as i32) * self.sums[o]
    }
}

/// out[o, p] = requantize(o, sum over i of x[i, p] * w[o, i]) for a planar uint8 image x [inputs,
/// pixels]; `out` is [outputs, pixels].
pub(crate) fn gemm_u8(
    weights: &PackedWeights,
    x: &[u8],
    pixels: usize,
    requantize: &Requantize,
    out: &mut [u8],
) {
    let groups = weights.inputs.div_ceil(GROUP);
    let tile_len = groups * TILE_PIXELS * GROUP;
    let mut packed = vec![0u8; tile_len];
    let mut sums = [[0i32; TILE_PIXELS]; TILE_OUTPUTS];
    for start in (0..pixels).step_by(TILE_PIXELS) {
        let width = TILE_PIXELS.min(pixels - start);
        pack_tile(
            x,
            weights.inputs,
            pixels,
            start,
            width,
            weights.kind.flip(),
            &mut packed,
        );
        for tile in 0..weights.outputs.div_ceil(TILE_OUTPUTS) {
            let w = &weights.data[tile * groups * TILE_OUTPUTS * GROUP..][..groups * 16];
            #[cfg(target_arch = "aarch64")]
            if weights.kind == GemmKind::Sdot
                && width == TILE_PIXELS
                && (tile + 1) * TILE_OUTPUTS <= weights.outputs
            {
                // A whole tile: requantized in registers, straight into its four output rows.
                let first = tile * TILE_OUTPUTS;
                let rows = &mut out[first * pixels + start..][..3 * pixels + TILE_PIXELS];
                // SAFETY: Sdot is only chosen when the CPU reports the dot-product extension; the
                // slices' lengths are asserted inside.
                unsafe {
                    sdot_tile_requantized(&packed, w, groups, requantize, first, rows, pixels)
                };
                continue;
            }
            tile_sums(weights, &packed, w, groups, &mut sums);
            for (lane, row) in sums.iter().enumerate() {
                let o = tile * TILE_OUTPUTS + lane;
                if o >= weights.outputs {
                    break;
                }
                requantize.row(o, row, &mut out[o * pixels + start..][..width]);
            }
        }
    }
}

/// Packs pixels start..start + width of every channel into one tile: [group][pixel][4 channels].
fn pack_tile(
    x: &[u8],
    inputs: usize,
    pixels: usize,
    start: usize,
    width: usize,
    flip: u8,
    packed: &mut [u8],
) {
    // Padded channels meet zero weights and padded pixels are never read back: any value would do.
    let pad = 0;
    for (group, block) in packed.chunks_exact_mut(TILE_PIXELS * GROUP).enumerate() {
        let channel = |k: usize| {
            let i = group * GROUP + k;
            (i < inputs).then(|| &x[i * pixels + start..][..width])
        };
        let rows = [channel(0), channel(1), channel(2), channel(3)];
        // The common case, a whole tile of four channels, as fixed-size arrays: an interleave the
        // compiler turns into byte shuffles (ST4 on aarch64).
        if let [Some(r0), Some(r1), Some(r2), Some(r3)] = rows
            && let (Ok(r0), Ok(r1), Ok(r2), Ok(r3)) = (
                <&[u8; TILE_PIXELS]>::try_from(r0),
                <&[u8; TILE_PIXELS]>::try_from(r1),
                <&[u8; TILE_PIXELS]>::try_from(r2),
                <&[u8; TILE_PIXELS]>::try_from(r3),
            )
        {
            interleave4(block, [r0, r1, r2, r3], flip);
            continue;
        }
        for (k, row) in rows.iter().enumerate() {
            for p in 0..TILE_PIXELS {
                block[p * GROUP + k] = row.and_then(|r| r.get(p)).map_or(pad, |&v| v ^ flip);
            }
        }
    }
}

/// block[4p + k] = rows[k][p] ^ flip for the 16 pixels p of four channels k.
#[cfg(target_arch = "aarch64")]
fn interleave4(block: &mut [u8], rows: [&[u8; TILE_PIXELS]; 4], flip: u8) {
    use std::arch::aarch64::*;
    assert!(block.len() >= TILE_PIXELS * GROUP);
    // SAFETY: NEON is part of every aarch64 CPU; each row is 16 bytes and the block at least 64
    // (asserted), which is what the loads and the one ST4 touch.
    unsafe {
        let f = vdupq_n_u8(flip);
        let lanes = uint8x16x4_t(
            veorq_u8(vld1q_u8(rows[0].as_ptr()), f),
            veorq_u8(vld1q_u8(rows[1].as_ptr()), f),
            veorq_u8(vld1q_u8(rows[2].as_ptr()), f),
            veorq_u8(vld1q_u8(rows[3].as_ptr()), f),
        );
        vst4q_u8(block.as_mut_ptr(), lanes);
    }
}

/// block[4p + k] = rows[k][p] ^ flip for the 16 pixels p of four channels k.
#[cfg(not(target_arch = "aarch64"))]
fn interleave4(block: &mut [u8], rows: [&[u8; TILE_PIXELS]; 4], flip: u8) {
    for (p, out) in block.chunks_exact_mut(GROUP).enumerate() {
        out.copy_from_slice(&[
            rows[0][p] ^ flip,
            rows[1][p] ^ flip,
            rows[2][p] ^ flip,
            rows[3][p] ^ flip,
        ]);
    }
}

/// The i32 sums of one tile: sums[lane][pixel] over all channel groups.
fn tile_sums(
    all: &PackedWeights,
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    sums: &mut [[i32; TILE_PIXELS]; TILE_OUTPUTS],
) {
    match all.kind {
        #[cfg(target_arch = "aarch64")]
        // SAFETY: Sdot is only chosen when the CPU reports the dot-product extension; the slices hold
        // `groups` blocks of 64 image bytes and 16 weights, as the asm reads.
        GemmKind::Sdot => unsafe { sdot_tile(packed, weights, groups, sums) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Vnni is only chosen when the CPU reports AVX512-VNNI and AVX512-F; the slices hold
        // `groups` blocks of 64 image bytes and 16 weights.
        GemmKind::Vnni => unsafe { vnni_tile(packed, weights, groups, sums) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON is part of every aarch64 CPU; the slices hold `groups` blocks of 64 image
        // bytes and 16 weights.
        GemmKind::Widening => unsafe { widening_tile(packed, weights, groups, sums) },
        _ => portable_tile(packed, weights, sums),
    }
}

/// Two outputs at a time over the tile's 16 pixels: per 4 pixels x 4 channels, SMULL of the low and
/// the high 8 bytes against the output's 4 weights repeated, SADALP into pairs of channels, and a
/// final pairwise add to one sum per pixel. A product of two signed bytes fits 16 bits; the pairs
/// are summed in 32. (Adding two groups' products in 16 bits before widening, which weights within
/// -127..=127 would allow, counted more instructions under qemu as written: register spills.)
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn widening_tile(
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    sums: &mut [[i32; TILE_PIXELS]; TILE_OUTPUTS],
) {
    use std::arch::aarch64::*;
    assert!(packed.len() >= groups * 64 && weights.len() >= groups * 16);
    // SAFETY (for the loads): group g's 64 image bytes and 16 weights are inside the slices
    // (asserted above), for every g < groups.
    let load = |g: usize| unsafe {
        let base = packed.as_ptr().add(g * 64).cast::<i8>();
        (
            [
                vld1q_s8(base),
                vld1q_s8(base.add(16)),
                vld1q_s8(base.add(32)),
                vld1q_s8(base.add(48)),
            ],
            vreinterpretq_s32_s8(vld1q_s8(weights.as_ptr().add(g * 16))),
        )
    };
    let lane_weights = |w: int32x4_t, lane: usize| {
        vreinterpretq_s8_s32(match lane {
            0 => vdupq_laneq_s32::<0>(w),
            1 => vdupq_laneq_s32::<1>(w),
            2 => vdupq_laneq_s32::<2>(w),
            _ => vdupq_laneq_s32::<3>(w),
        })
    };
    for pair in 0..TILE_OUTPUTS / 2 {
        // acc[lane][q][half]: output 2 x pair + lane, pixels 4q..4q+3, low or high two pixels.
        let mut acc = [[[vdupq_n_s32(0); 2]; 4]; 2];
        for g in 0..groups {
            let (x, w) = load(g);
            for (lane, acc) in acc.iter_mut().enumerate() {
                let wo = lane_weights(w, 2 * pair + lane);
                for (q, acc) in acc.iter_mut().enumerate() {
                    acc[0] = vpadalq_s16(acc[0], vmull_s8(vget_low_s8(x[q]), vget_low_s8(wo)));
                    acc[1] = vpadalq_s16(acc[1], vmull_high_s8(x[q], wo));
                }
            }
        }
        for (lane, acc) in acc.iter().enumerate() {
            for (q, acc) in acc.iter().enumerate() {
                let four = vpaddq_s32(acc[0], acc[1]);
                // SAFETY: pixels 4q..4q+3 of one row of 16.
                unsafe { vst1q_s32(sums[2 * pair + lane][4 * q..].as_mut_ptr(), four) };
            }
        }
    }
}

fn portable_tile(packed: &[u8], weights: &[i8], sums: &mut [[i32; TILE_PIXELS]; TILE_OUTPUTS]) {
    *sums = [[0; TILE_PIXELS]; TILE_OUTPUTS];
    for (block, w) in packed
        .chunks_exact(TILE_PIXELS * GROUP)
        .zip(weights.chunks_exact(TILE_OUTPUTS * GROUP))
    {
        for (lane, row) in sums.iter_mut().enumerate() {
            let w = &w[lane * GROUP..][..GROUP];
            for (s, x) in row.iter_mut().zip(block.chunks_exact(GROUP)) {
                *s += x[0] as i32 * w[0] as i32
                    + x[1] as i32 * w[1] as i32
                    + x[2] as i32 * w[2] as i32
                    + x[3] as i32 * w[3] as i32;
            }
        }
    }
}

/// The assembly of `sdot_tile`'s loop: {n} channel groups, each 64 image bytes from {x} and 16
/// weights from {w}, 16 SDOT into v0..v15 (v(4 x lane + q): pixels 4q..4q+3 of output `lane`).
#[cfg(target_arch = "aarch64")]
macro_rules! sdot_groups {
    () => {
        concat!(
            "2:\n",
            "ld1 {{v16.16b, v17.16b, v18.16b, v19.16b}}, [{x}], #64\n",
            "ld1 {{v20.16b}}, [{w}], #16\n",
            "sdot v0.4s, v16.16b, v20.4b[0]\n",
            "sdot v1.4s, v17.16b, v20.4b[0]\n",
            "sdot v2.4s, v18.16b, v20.4b[0]\n",
            "sdot v3.4s, v19.16b, v20.4b[0]\n",
            "sdot v4.4s, v16.16b, v20.4b[1]\n",
            "sdot v5.4s, v17.16b, v20.4b[1]\n",
            "sdot v6.4s, v18.16b, v20.4b[1]\n",
            "sdot v7.4s, v19.16b, v20.4b[1]\n",
            "sdot v8.4s, v16.16b, v20.4b[2]\n",
            "sdot v9.4s, v17.16b, v20.4b[2]\n",
            "sdot v10.4s, v18.16b, v20.4b[2]\n",
            "sdot v11.4s, v19.16b, v20.4b[2]\n",
            "sdot v12.4s, v16.16b, v20.4b[3]\n",
            "sdot v13.4s, v17.16b, v20.4b[3]\n",
            "sdot v14.4s, v18.16b, v20.4b[3]\n",
            "sdot v15.4s, v19.16b, v20.4b[3]\n",
            "subs {n}, {n}, #1\n",
            "b.ne 2b",
        )
    };
}

/// 16 SDOT per channel group: accumulator v(4 * lane + q) holds pixels 4q..4q+3 of output `lane`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "dotprod")]
unsafe fn sdot_tile(
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    sums: &mut [[i32; TILE_PIXELS]; TILE_OUTPUTS],
) {
    assert!(groups > 0 && packed.len() >= groups * 64 && weights.len() >= groups * 16);
    // SAFETY: the caller guarantees the dot-product extension; the loads stay within the lengths
    // asserted above, and `sums` is 64 i32 written in order by the four stores.
    unsafe {
        std::arch::asm!(
            "movi v0.4s, #0", "movi v1.4s, #0", "movi v2.4s, #0", "movi v3.4s, #0",
            "movi v4.4s, #0", "movi v5.4s, #0", "movi v6.4s, #0", "movi v7.4s, #0",
            "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
            "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
            sdot_groups!(),
            "st1 {{v0.4s, v1.4s, v2.4s, v3.4s}}, [{out}], #64",
            "st1 {{v4.4s, v5.4s, v6.4s, v7.4s}}, [{out}], #64",
            "st1 {{v8.4s, v9.4s, v10.4s, v11.4s}}, [{out}], #64",
            "st1 {{v12.4s, v13.4s, v14.4s, v15.4s}}, [{out}], #64",
            x = inout(reg) packed.as_ptr() => _,
            w = inout(reg) weights.as_ptr() => _,
            n = inout(reg) groups => _,
            out = inout(reg) sums.as_mut_ptr() => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _,
            options(nostack),
        );
    }
}

/// The assembly that requantizes output `r`'s 16 sums, in v`a`..v`d`, with the scales in v21, the
/// shifts in v22 and the zero point in v23 (8 x i16), and stores the 16 bytes at {out}.
#[cfg(target_arch = "aarch64")]
macro_rules! requantize_sdot_row {
    ($a:literal, $b:literal, $c:literal, $d:literal, $r:literal) => {
        concat!(
            "dup v24.4s, v22.s[",
            $r,
            "]\n",
            "scvtf v",
            $a,
            ".4s, v",
            $a,
            ".4s\n",
            "scvtf v",
            $b,
            ".4s, v",
            $b,
            ".4s\n",
            "scvtf v",
            $c,
            ".4s, v",
            $c,
            ".4s\n",
            "scvtf v",
            $d,
            ".4s, v",
            $d,
            ".4s\n",
            "fmul v",
            $a,
            ".4s, v",
            $a,
            ".4s, v21.s[",
            $r,
            "]\n",
            "fmul v",
            $b,
            ".4s, v",
            $b,
            ".4s, v21.s[",
            $r,
            "]\n",
            "fmul v",
            $c,
            ".4s, v",
            $c,
            ".4s, v21.s[",
            $r,
            "]\n",
            "fmul v",
            $d,
            ".4s, v",
            $d,
            ".4s, v21.s[",
            $r,
            "]\n",
            "fadd v",
            $a,
            ".4s, v",
            $a,
            ".4s, v24.4s\n",
            "fadd v",
            $b,
            ".4s, v",
            $b,
            ".4s, v24.4s\n",
            "fadd v",
            $c,
            ".4s, v",
            $c,
            ".4s, v24.4s\n",
            "fadd v",
            $d,
            ".4s, v",
            $d,
            ".4s, v24.4s\n",
            "fcvtns v",
            $a,
            ".4s, v",
            $a,
            ".4s\n",
            "fcvtns v",
            $b,
            ".4s, v",
            $b,
            ".4s\n",
            "fcvtns v",
            $c,
            ".4s, v",
            $c,
            ".4s\n",
            "fcvtns v",
            $d,
            ".4s, v",
            $d,
            ".4s\n",
            "sqxtn v25.4h, v",
            $a,
            ".4s\n",
            "sqxtn2 v25.8h, v",
            $b,
            ".4s\n",
            "sqxtn v26.4h, v",
            $c,
            ".4s\n",
            "sqxtn2 v26.8h, v",
            $d,
            ".4s\n",
            "sqadd v25.8h, v25.8h, v23.8h\n",
            "sqadd v26.8h, v26.8h, v23.8h\n",
            "sqxtun v25.8b, v25.8h\n",
            "sqxtun2 v25.16b, v26.8h\n",
            "st1 {{v25.16b}}, [{out}]",
        )
    };
}

/// `sdot_tile` for a whole tile (the 4 outputs from `first`, 16 pixels), requantized in registers
/// as `Requantize::row` does it: the sums start from the offset; a multiply then an add, rounded to
/// nearest even; the zero point added with saturation (after narrowing to 16 bits, which saturates
/// no differently); stored as 16 bytes into each of the four rows of `rows`, `stride` bytes apart.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "dotprod")]
unsafe fn sdot_tile_requantized(
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    requantize: &Requantize,
    first: usize,
    rows: &mut [u8],
    stride: usize,
) {
    assert!(groups > 0 && packed.len() >= groups * 64 && weights.len() >= groups * 16);
    assert!(rows.len() >= 3 * stride + TILE_PIXELS);
    let offsets = &requantize.offset[first..first + TILE_OUTPUTS];
    let scales = &requantize.scale[first..first + TILE_OUTPUTS];
    let shifts = &requantize.shift[first..first + TILE_OUTPUTS];
    // SAFETY: the caller guarantees the dot-product extension; the loads stay within the lengths
    // asserted above (and 4 offsets, scales and shifts, checked by the slicing), and the four
    // 16-byte stores, `stride` apart, within `rows` (asserted).
    unsafe {
        std::arch::asm!(
            "ld1 {{v21.4s}}, [{offsets}]",
            "dup v0.4s, v21.s[0]", "dup v1.4s, v21.s[0]", "dup v2.4s, v21.s[0]", "dup v3.4s, v21.s[0]",
            "dup v4.4s, v21.s[1]", "dup v5.4s, v21.s[1]", "dup v6.4s, v21.s[1]", "dup v7.4s, v21.s[1]",
            "dup v8.4s, v21.s[2]", "dup v9.4s, v21.s[2]", "dup v10.4s, v21.s[2]", "dup v11.4s, v21.s[2]",
            "dup v12.4s, v21.s[3]", "dup v13.4s, v21.s[3]", "dup v14.4s, v21.s[3]", "dup v15.4s, v21.s[3]",
            sdot_groups!(),
            "ld1 {{v21.4s}}, [{scales}]",
            "ld1 {{v22.4s}}, [{shifts}]",
            "dup v23.8h, {zero:w}",
            requantize_sdot_row!("0", "1", "2", "3", "0"),
            "add {out}, {out}, {stride}",
            requantize_sdot_row!("4", "5", "6", "7", "1"),
            "add {out}, {out}, {stride}",
            requantize_sdot_row!("8", "9", "10", "11", "2"),
            "add {out}, {out}, {stride}",
            requantize_sdot_row!("12", "13", "14", "15", "3"),
            offsets = in(reg) offsets.as_ptr(),
            scales = in(reg) scales.as_ptr(),
            shifts = in(reg) shifts.as_ptr(),
            zero = in(reg) u32::from(requantize.zero),
            stride = in(reg) stride,
            x = inout(reg) packed.as_ptr() => _,
            w = inout(reg) weights.as_ptr() => _,
            n = inout(reg) groups => _,
            out = inout(reg) rows.as_mut_ptr() => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _,
            out("v21") _, out("v22") _, out("v23") _, out("v24") _, out("v25") _, out("v26") _,
            options(nostack),
        );
    }
}

/// One VPDPBUSD per output and channel group: a 512-bit register is the tile's 16 pixels x 4
/// channels, multiplied as unsigned bytes by the output's 4 signed weights (broadcast).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn vnni_tile(
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    sums: &mut [[i32; TILE_PIXELS]; TILE_OUTPUTS],
) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_si512(); TILE_OUTPUTS];
    for g in 0..groups {
        // SAFETY: block g of 64 bytes is inside `packed` (its length is groups x 64).
        let x = unsafe { _mm512_loadu_si512(packed.as_ptr().add(g * 64).cast()) };
        let w = &weights[g * 16..][..16];
        for (lane, a) in acc.iter_mut().enumerate() {
            let four: [i8; 4] = w[lane * 4..][..4].try_into().unwrap_or_default();
            let four = i32::from_le_bytes(four.map(|b| b as u8));
            *a = _mm512_dpbusd_epi32(*a, x, _mm512_set1_epi32(four));
        }
    }
    for (row, a) in sums.iter_mut().zip(acc) {
        // SAFETY: a row is 16 i32, one 512-bit store.
        unsafe { _mm512_storeu_si512(row.as_mut_ptr().cast(), a) };
    }
}
