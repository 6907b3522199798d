//! The uint8 x int8 -> i32 matrix product behind the quantized 1x1 convolution (and the dense 3x3
//! one, after im2col), in tiles of 4 output channels x 16 pixels with input channels taken 4 at a
//! time: the shape of one instruction on both CPUs that have a 4-way byte dot product (aarch64 SDOT
//! on ARMv8.2 cores such as the Pi 5's Cortex-A76: 4 pixels x 4 channels against one output's 4
//! weights; x86-64 AVX512-VNNI VPDPBUSD: 16 pixels x 4 channels). The Pi 4's Cortex-A72 has no dot
//! product: NEON SMULL/SMLAL/SADALP over the same image layout, two channel groups at a time.
//! Elsewhere (x86-64 without VNNI) a plain loop, left to the compiler's vectoriser.
//!
//! Layouts: the image is packed per tile of 16 pixels as [channel group][pixel][4 channels] (channels
//! and pixels past the end are zero); the weights as [output tile][channel group][4 outputs][4
//! channels], except for the widening kernel (below). SDOT and SMULL multiply signed bytes, so for
//! them the uint8 image is stored as x - 128 (the top bit flipped) and `Requantize::offset` gives the
//! 128 back.

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
    /// aarch64 without the dot product (the Pi 4's Cortex-A72): SMULL and SMLAL (8 products of
    /// signed bytes, two channel groups' summed in 16 bits) and SADALP (pairwise sums added into
    /// 32 bits). Two products of bytes in -128..=127 and -127..=127 fit 16 bits (|sum| <= 32512), so
    /// this kernel takes weights without -128 only; others go to the portable one.
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
            GemmKind::Widening => "NEON SMULL/SMLAL/SADALP",
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

    /// Channel groups the image and the weights are padded to: the widening kernel takes two at a
    /// time.
    fn groups(self, inputs: usize) -> usize {
        let groups = inputs.div_ceil(GROUP);
        if self == GemmKind::Widening {
            groups.next_multiple_of(2)
        } else {
            groups
        }
    }

    /// How many times each output's 4 weights of a group are stored: the widening kernel multiplies
    /// 4 pixels' bytes by a register of the output's weights repeated 4 times, loaded as they lie.
    fn repeats(self) -> usize {
        if self == GemmKind::Widening { 4 } else { 1 }
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
        let kind = if kind == GemmKind::Widening && weights.contains(&i8::MIN) {
            GemmKind::Portable
        } else {
            kind
        };
        let (groups, repeats) = (kind.groups(inputs), kind.repeats());
        let tiles = outputs.div_ceil(TILE_OUTPUTS);
        let mut data = vec![0i8; tiles * groups * TILE_OUTPUTS * GROUP * repeats];
        for o in 0..outputs {
            for i in 0..inputs {
                let (tile, lane) = (o / TILE_OUTPUTS, o % TILE_OUTPUTS);
                let (group, k) = (i / GROUP, i % GROUP);
                let w = weights[o * inputs + i];
                if kind == GemmKind::Widening {
                    // [tile][group pair][lane][group in pair][repeat][k]: one 64-byte load is the
                    // pair's weights of two outputs.
                    let (pair, second) = (group / 2, group % 2);
                    let block = ((tile * groups / 2 + pair) * TILE_OUTPUTS + lane) * 2 + second;
                    for r in 0..repeats {
                        data[(block * repeats + r) * GROUP + k] = w;
                    }
                } else {
                    data[((tile * groups + group) * TILE_OUTPUTS + lane) * GROUP + k] = w;
                }
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

    fn groups(&self) -> usize {
        self.kind.groups(self.inputs)
    }

    /// Output tile `tile`'s weights.
    fn tile(&self, tile: usize) -> &[i8] {
        let len = self.groups() * TILE_OUTPUTS * GROUP * self.kind.repeats();
        &self.data[tile * len..][..len]
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
    let groups = weights.groups();
    let mut sums = [[0i32; TILE_PIXELS]; TILE_OUTPUTS];
    for_each_tile(weights, x, pixels, |packed, start, width| {
        let out = &mut out[start..];
        let done = if width == TILE_PIXELS {
            whole_tiles_requantized(weights, packed, requantize, out, pixels)
        } else {
            0
        };
        for tile in done..weights.outputs.div_ceil(TILE_OUTPUTS) {
            tile_sums(weights, packed, weights.tile(tile), groups, &mut sums);
            for (lane, row) in sums.iter().enumerate() {
                let o = tile * TILE_OUTPUTS + lane;
                if o >= weights.outputs {
                    break;
                }
                requantize.row(o, row, &mut out[o * pixels..][..width]);
            }
        }
    });
}

/// The whole output tiles of one packed tile of 16 pixels, computed and requantized in registers
/// straight into their rows of `out` (from the tile's first pixel, rows `pixels` apart) by the
/// kernels that can: how many tiles, from the first, are done.
fn whole_tiles_requantized(
    weights: &PackedWeights,
    packed: &[u8],
    requantize: &Requantize,
    out: &mut [u8],
    pixels: usize,
) -> usize {
    let tiles = weights.outputs / TILE_OUTPUTS;
    if tiles == 0 {
        return 0;
    }
    match weights.kind {
        #[cfg(target_arch = "aarch64")]
        GemmKind::Sdot => {
            // SAFETY: Sdot is only chosen when the CPU reports the dot-product extension; the
            // slices' lengths are asserted inside.
            unsafe {
                sdot_tiles_requantized(
                    packed,
                    &weights.data,
                    weights.groups(),
                    tiles,
                    requantize,
                    out,
                    pixels,
                )
            };
            tiles
        }
        #[cfg(target_arch = "aarch64")]
        GemmKind::Widening => {
            for tile in 0..tiles {
                let first = tile * TILE_OUTPUTS;
                let rows = &mut out[first * pixels..][..3 * pixels + TILE_PIXELS];
                let w = weights.tile(tile);
                // SAFETY: NEON is part of every aarch64 CPU; the slices' lengths are asserted
                // inside.
                unsafe {
                    widening_tile_requantized(
                        packed,
                        w,
                        weights.groups(),
                        requantize,
                        first,
                        rows,
                        pixels,
                    )
                };
            }
            tiles
        }
        _ => {
            let _ = (packed, requantize, out, pixels);
            0
        }
    }
}

/// The i32 sums sum over i of (x[i, p] - input_zero) * w[o, i], [outputs, pixels], tile by tile
/// through `tile_sums`: what the tests compare across kernels exactly, before any rounding.
#[cfg(test)]
pub(crate) fn gemm_i32(
    weights: &PackedWeights,
    x: &[u8],
    pixels: usize,
    input_zero: u8,
) -> Vec<i32> {
    let groups = weights.groups();
    let mut sums = [[0i32; TILE_PIXELS]; TILE_OUTPUTS];
    let mut out = vec![0i32; weights.outputs * pixels];
    for_each_tile(weights, x, pixels, |packed, start, width| {
        for tile in 0..weights.outputs.div_ceil(TILE_OUTPUTS) {
            tile_sums(weights, packed, weights.tile(tile), groups, &mut sums);
            for (lane, row) in sums.iter().enumerate() {
                let o = tile * TILE_OUTPUTS + lane;
                if o < weights.outputs {
                    let offset = weights.offset(o, input_zero);
                    for (p, s) in row[..width].iter().enumerate() {
                        out[o * pixels + start + p] = s + offset;
                    }
                }
            }
        }
    });
    out
}

/// The GEMM's walk: each tile of up to 16 pixels is packed (`pack_tile`), then `visit(packed, first
/// pixel, pixels in the tile)`, which computes every output tile from it.
#[inline(always)]
fn for_each_tile(
    weights: &PackedWeights,
    x: &[u8],
    pixels: usize,
    mut visit: impl FnMut(&[u8], usize, usize),
) {
    let mut packed = vec![0u8; weights.groups() * TILE_PIXELS * GROUP];
    let flip = weights.kind.flip();
    for start in (0..pixels).step_by(TILE_PIXELS) {
        let width = TILE_PIXELS.min(pixels - start);
        pack_tile(x, weights.inputs, pixels, start, width, flip, &mut packed);
        visit(&packed, start, width);
    }
}

/// Packs pixels start..start + width of every channel into one tile: [group][pixel][4 channels].
/// Only the pixels and channels that exist are written: padded channels meet zero weights and padded
/// pixels are never read back, so whatever `packed` held there before does.
fn pack_tile(
    x: &[u8],
    inputs: usize,
    pixels: usize,
    start: usize,
    width: usize,
    flip: u8,
    packed: &mut [u8],
) {
    // The common case, whole groups of four channels over a whole tile, as one interleaving loop.
    let whole = if width == TILE_PIXELS {
        inputs / GROUP
    } else {
        0
    };
    let (interleaved, rest) = packed.split_at_mut(whole * TILE_PIXELS * GROUP);
    interleave_groups(&x[start..], pixels, whole, flip, interleaved);
    for (group, block) in (whole..).zip(rest.chunks_exact_mut(TILE_PIXELS * GROUP)) {
        for k in 0..GROUP {
            let i = group * GROUP + k;
            if i >= inputs {
                break;
            }
            for (p, &v) in x[i * pixels + start..][..width].iter().enumerate() {
                block[p * GROUP + k] = v ^ flip;
            }
        }
    }
}

/// packed[64g + 4p + k] = x[(4g + k) x pixels + p] ^ flip for `groups` groups of four channels and
/// the 16 pixels p: four loads and one ST4 per group.
#[cfg(target_arch = "aarch64")]
fn interleave_groups(x: &[u8], pixels: usize, groups: usize, flip: u8, packed: &mut [u8]) {
    use std::arch::aarch64::*;
    if groups == 0 {
        return;
    }
    assert!(packed.len() >= groups * TILE_PIXELS * GROUP);
    assert!(x.len() >= (groups * GROUP - 1) * pixels + TILE_PIXELS);
    // SAFETY: NEON is part of every aarch64 CPU; group g reads 16 bytes at (4g + k) x pixels for k <
    // 4, the last of which ends inside `x`, and writes 64 bytes at 64g, inside `packed` (asserted).
    unsafe {
        let f = vdupq_n_u8(flip);
        let (mut src, mut dst) = (x.as_ptr(), packed.as_mut_ptr());
        for _ in 0..groups {
            let lanes = uint8x16x4_t(
                veorq_u8(vld1q_u8(src), f),
                veorq_u8(vld1q_u8(src.add(pixels)), f),
                veorq_u8(vld1q_u8(src.add(2 * pixels)), f),
                veorq_u8(vld1q_u8(src.add(3 * pixels)), f),
            );
            vst4q_u8(dst, lanes);
            src = src.add(GROUP * pixels);
            dst = dst.add(TILE_PIXELS * GROUP);
        }
    }
}

/// packed[64g + 4p + k] = x[(4g + k) x pixels + p] ^ flip for `groups` groups of four channels and
/// the 16 pixels p.
#[cfg(not(target_arch = "aarch64"))]
fn interleave_groups(x: &[u8], pixels: usize, groups: usize, flip: u8, packed: &mut [u8]) {
    for (g, block) in packed
        .chunks_exact_mut(TILE_PIXELS * GROUP)
        .take(groups)
        .enumerate()
    {
        let row = |k: usize| -> &[u8; TILE_PIXELS] {
            x[(g * GROUP + k) * pixels..][..TILE_PIXELS]
                .try_into()
                .unwrap()
        };
        let rows = [row(0), row(1), row(2), row(3)];
        for (p, out) in block.chunks_exact_mut(GROUP).enumerate() {
            out.copy_from_slice(&[
                rows[0][p] ^ flip,
                rows[1][p] ^ flip,
                rows[2][p] ^ flip,
                rows[3][p] ^ flip,
            ]);
        }
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

/// The assembly of a loop over {n} steps (channel groups, or pairs of them) of `$step`'s
/// assembly, two per turn (an odd one first): one loop branch per two steps.
#[cfg(target_arch = "aarch64")]
macro_rules! two_per_turn {
    ($step:expr) => {
        concat!(
            "tbz {n}, #0, 3f\n",
            $step,
            "3:\n",
            "lsr {n}, {n}, #1\n",
            "cbz {n}, 4f\n",
            "2:\n",
            $step,
            $step,
            "subs {n}, {n}, #1\n",
            "b.ne 2b\n",
            "4:\n",
        )
    };
}

/// The assembly of one output's share of a pair of channel groups in `widening_tile`: the image's
/// half-tile in v16, v17 (first group) and v18, v19 (second), the output's weights of the two groups
/// in v`w0` and v`w1`, its four accumulators v`a`..v`d`.
#[cfg(target_arch = "aarch64")]
macro_rules! widening_output {
    ($a:literal, $b:literal, $c:literal, $d:literal, $w0:literal, $w1:literal) => {
        concat!(
            "smull v28.8h, v16.8b, v",
            $w0,
            ".8b\n",
            "smull2 v29.8h, v16.16b, v",
            $w0,
            ".16b\n",
            "smull v30.8h, v17.8b, v",
            $w0,
            ".8b\n",
            "smull2 v31.8h, v17.16b, v",
            $w0,
            ".16b\n",
            "smlal v28.8h, v18.8b, v",
            $w1,
            ".8b\n",
            "smlal2 v29.8h, v18.16b, v",
            $w1,
            ".16b\n",
            "smlal v30.8h, v19.8b, v",
            $w1,
            ".8b\n",
            "smlal2 v31.8h, v19.16b, v",
            $w1,
            ".16b\n",
            "sadalp v",
            $a,
            ".4s, v28.8h\n",
            "sadalp v",
            $b,
            ".4s, v29.8h\n",
            "sadalp v",
            $c,
            ".4s, v30.8h\n",
            "sadalp v",
            $d,
            ".4s, v31.8h\n",
        )
    };
}

/// The assembly of one pair of channel groups for one half-tile in `widening_tile`: the image's
/// bytes from {x} (32 of each group's 64, {step} = 64 apart), 128 weights from {w}.
#[cfg(target_arch = "aarch64")]
macro_rules! widening_pair {
    () => {
        concat!(
            "ld1 {{v16.16b, v17.16b}}, [{x}], {step}\n",
            "ld1 {{v18.16b, v19.16b}}, [{x}], {step}\n",
            "ld1 {{v20.16b, v21.16b, v22.16b, v23.16b}}, [{w}], #64\n",
            "ld1 {{v24.16b, v25.16b, v26.16b, v27.16b}}, [{w}], #64\n",
            widening_output!("0", "1", "2", "3", "20", "21"),
            widening_output!("4", "5", "6", "7", "22", "23"),
            widening_output!("8", "9", "10", "11", "24", "25"),
            widening_output!("12", "13", "14", "15", "26", "27"),
        )
    };
}

/// The assembly of `widening_tile`'s loop over {n} pairs of channel groups, then the pairwise adds
/// that leave output `lane`'s 8 sums in v(4 x lane) and v(4 x lane + 1).
#[cfg(target_arch = "aarch64")]
macro_rules! widening_pairs {
    () => {
        concat!(
            two_per_turn!(widening_pair!()),
            "addp v0.4s, v0.4s, v1.4s\n",
            "addp v1.4s, v2.4s, v3.4s\n",
            "addp v4.4s, v4.4s, v5.4s\n",
            "addp v5.4s, v6.4s, v7.4s\n",
            "addp v8.4s, v8.4s, v9.4s\n",
            "addp v9.4s, v10.4s, v11.4s\n",
            "addp v12.4s, v12.4s, v13.4s\n",
            "addp v13.4s, v14.4s, v15.4s",
        )
    };
}

/// The tile in two halves of 8 pixels. Per pair of channel groups and per 2 pixels x 4 channels
/// x output: SMULL of one group's bytes by the output's weights, SMLAL of the other group's (the
/// sum fits 16 bits: `GemmKind::Widening`), SADALP into that output's pair of 32-bit sums for the 2
/// pixels; v(4 x lane + 2 x q + high) holds pixels 4q..4q+3 (2 each, the low or the high two) of
/// output `lane`, and a pairwise add at the end gives one sum per pixel.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn widening_tile(
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    sums: &mut [[i32; TILE_PIXELS]; TILE_OUTPUTS],
) {
    assert!(groups > 0 && groups.is_multiple_of(2));
    assert!(packed.len() >= groups * 64 && weights.len() >= groups * 64);
    for half in 0..2 {
        // SAFETY: NEON is part of every aarch64 CPU. The image loads read bytes 32 x half.. +32 of
        // each group's 64, the weight loads 64 x groups bytes, within the lengths asserted above;
        // the stores write 8 i32 at pixel 8 x half of each of the four rows of 16.
        unsafe {
            std::arch::asm!(
                "movi v0.4s, #0", "movi v1.4s, #0", "movi v2.4s, #0", "movi v3.4s, #0",
                "movi v4.4s, #0", "movi v5.4s, #0", "movi v6.4s, #0", "movi v7.4s, #0",
                "movi v8.4s, #0", "movi v9.4s, #0", "movi v10.4s, #0", "movi v11.4s, #0",
                "movi v12.4s, #0", "movi v13.4s, #0", "movi v14.4s, #0", "movi v15.4s, #0",
                widening_pairs!(),
                "st1 {{v0.4s, v1.4s}}, [{out}]",
                "add {out}, {out}, #64",
                "st1 {{v4.4s, v5.4s}}, [{out}]",
                "add {out}, {out}, #64",
                "st1 {{v8.4s, v9.4s}}, [{out}]",
                "add {out}, {out}, #64",
                "st1 {{v12.4s, v13.4s}}, [{out}]",
                x = inout(reg) packed.as_ptr().add(32 * half) => _,
                w = inout(reg) weights.as_ptr() => _,
                n = inout(reg) groups / 2 => _,
                step = in(reg) 64usize,
                out = inout(reg) sums.as_mut_ptr().cast::<i32>().add(8 * half) => _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nostack),
            );
        }
    }
}

/// The assembly that requantizes one output's 8 sums of a half-tile, in v`a` and v`b`, with the
/// scales in v16, the shifts in v17 and the zero point in v18 (8 x i16), and stores the 8 bytes at
/// {out}, then steps {out} to the next row.
#[cfg(target_arch = "aarch64")]
macro_rules! requantize_widening_row {
    ($a:literal, $b:literal, $r:literal) => {
        concat!(
            "dup v19.4s, v17.s[",
            $r,
            "]\n",
            requantize_vector!($a, "16", $r, "19"),
            requantize_vector!($b, "16", $r, "19"),
            "sqxtn v20.4h, v",
            $a,
            ".4s\n",
            "sqxtn2 v20.8h, v",
            $b,
            ".4s\n",
            "sqadd v20.8h, v20.8h, v18.8h\n",
            "sqxtun v20.8b, v20.8h\n",
            "st1 {{v20.8b}}, [{out}]\n",
            "add {out}, {out}, {stride}\n",
        )
    };
}

/// `widening_tile` for a whole tile (the 4 outputs from `first`, 16 pixels), requantized in
/// registers as `sdot_tiles_requantized` does it: each output's sums start from its offset (in the
/// first of each pair of lanes that the final pairwise add joins), and each half-tile's 8 bytes go
/// into the four rows of `rows`, `stride` bytes apart.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn widening_tile_requantized(
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    requantize: &Requantize,
    first: usize,
    rows: &mut [u8],
    stride: usize,
) {
    assert!(groups > 0 && groups.is_multiple_of(2));
    assert!(packed.len() >= groups * 64 && weights.len() >= groups * 64);
    assert!(rows.len() >= 3 * stride + TILE_PIXELS);
    let offsets = &requantize.offset[first..first + TILE_OUTPUTS];
    let scales = &requantize.scale[first..first + TILE_OUTPUTS];
    let shifts = &requantize.shift[first..first + TILE_OUTPUTS];
    for half in 0..2 {
        // SAFETY: NEON is part of every aarch64 CPU. The loads stay within the lengths asserted
        // above (and 4 offsets, scales and shifts, checked by the slicing); the four 8-byte stores,
        // `stride` apart from byte 8 x half, within `rows` (asserted).
        unsafe {
            std::arch::asm!(
                "ld1 {{v16.4s}}, [{offsets}]",
                "movi v17.4s, #0",
                "zip1 v18.4s, v16.4s, v17.4s",
                "zip2 v19.4s, v16.4s, v17.4s",
                "dup v0.2d, v18.d[0]", "dup v1.2d, v18.d[0]", "dup v2.2d, v18.d[0]", "dup v3.2d, v18.d[0]",
                "dup v4.2d, v18.d[1]", "dup v5.2d, v18.d[1]", "dup v6.2d, v18.d[1]", "dup v7.2d, v18.d[1]",
                "dup v8.2d, v19.d[0]", "dup v9.2d, v19.d[0]", "dup v10.2d, v19.d[0]", "dup v11.2d, v19.d[0]",
                "dup v12.2d, v19.d[1]", "dup v13.2d, v19.d[1]", "dup v14.2d, v19.d[1]", "dup v15.2d, v19.d[1]",
                widening_pairs!(),
                "ld1 {{v16.4s}}, [{scales}]",
                "ld1 {{v17.4s}}, [{shifts}]",
                "dup v18.8h, {zero:w}",
                requantize_widening_row!("0", "1", "0"),
                requantize_widening_row!("4", "5", "1"),
                requantize_widening_row!("8", "9", "2"),
                requantize_widening_row!("12", "13", "3"),
                offsets = in(reg) offsets.as_ptr(),
                scales = in(reg) scales.as_ptr(),
                shifts = in(reg) shifts.as_ptr(),
                zero = in(reg) u32::from(requantize.zero),
                stride = in(reg) stride,
                step = in(reg) 64usize,
                x = inout(reg) packed.as_ptr().add(32 * half) => _,
                w = inout(reg) weights.as_ptr() => _,
                n = inout(reg) groups / 2 => _,
                out = inout(reg) rows.as_mut_ptr().add(8 * half) => _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _,
                out("v4") _, out("v5") _, out("v6") _, out("v7") _,
                out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _,
                out("v16") _, out("v17") _, out("v18") _, out("v19") _,
                out("v20") _, out("v21") _, out("v22") _, out("v23") _,
                out("v24") _, out("v25") _, out("v26") _, out("v27") _,
                out("v28") _, out("v29") _, out("v30") _, out("v31") _,
                options(nostack),
            );
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

/// The assembly of one channel group in `sdot_tile`: 64 image bytes from {x} and 16 weights from
/// {w}, 16 SDOT into v0..v15 (v(4 x lane + q): pixels 4q..4q+3 of output `lane`).
#[cfg(target_arch = "aarch64")]
macro_rules! sdot_group {
    () => {
        concat!(
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
            two_per_turn!(sdot_group!()),
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
            requantize_vector!($a, "21", $r, "24"),
            requantize_vector!($b, "21", $r, "24"),
            requantize_vector!($c, "21", $r, "24"),
            requantize_vector!($d, "21", $r, "24"),
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

/// `sdot_tile` for `tiles` whole output tiles (4 outputs each, from output 0, 16 pixels) in one
/// loop, requantized in registers as `Requantize::row` does it: the sums start from the offset; a
/// multiply then an add, rounded to nearest even; the zero point added with saturation (after
/// narrowing to 16 bits, which saturates no differently); each output's 16 bytes stored into its row
/// of `out`, rows `stride` bytes apart. `weights` holds the tiles' weights one after another.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "dotprod")]
unsafe fn sdot_tiles_requantized(
    packed: &[u8],
    weights: &[i8],
    groups: usize,
    tiles: usize,
    requantize: &Requantize,
    out: &mut [u8],
    stride: usize,
) {
    let outputs = tiles * TILE_OUTPUTS;
    assert!(groups > 0 && tiles > 0 && packed.len() >= groups * 64);
    assert!(weights.len() >= tiles * groups * 16);
    assert!(out.len() >= (outputs - 1) * stride + TILE_PIXELS);
    let offsets = &requantize.offset[..outputs];
    let scales = &requantize.scale[..outputs];
    let shifts = &requantize.shift[..outputs];
    // SAFETY: the caller guarantees the dot-product extension. Tile t reads the `groups` blocks of
    // `packed` and of its weights (16 x groups bytes from 16 x groups x t), 4 offsets, scales and
    // shifts from 4t (all inside the lengths asserted or sliced above), and stores 16 bytes at the
    // start of rows 4t..4t + 3 of `out` (asserted).
    unsafe {
        std::arch::asm!(
            "dup v23.8h, {zero:w}",
            "1:",
            "mov {x}, {packed}",
            "mov {n}, {groups}",
            "ld1 {{v27.4s}}, [{offsets}], #16",
            "dup v0.4s, v27.s[0]", "dup v1.4s, v27.s[0]", "dup v2.4s, v27.s[0]", "dup v3.4s, v27.s[0]",
            "dup v4.4s, v27.s[1]", "dup v5.4s, v27.s[1]", "dup v6.4s, v27.s[1]", "dup v7.4s, v27.s[1]",
            "dup v8.4s, v27.s[2]", "dup v9.4s, v27.s[2]", "dup v10.4s, v27.s[2]", "dup v11.4s, v27.s[2]",
            "dup v12.4s, v27.s[3]", "dup v13.4s, v27.s[3]", "dup v14.4s, v27.s[3]", "dup v15.4s, v27.s[3]",
            two_per_turn!(sdot_group!()),
            "ld1 {{v21.4s}}, [{scales}], #16",
            "ld1 {{v22.4s}}, [{shifts}], #16",
            requantize_sdot_row!("0", "1", "2", "3", "0"),
            "add {out}, {out}, {stride}",
            requantize_sdot_row!("4", "5", "6", "7", "1"),
            "add {out}, {out}, {stride}",
            requantize_sdot_row!("8", "9", "10", "11", "2"),
            "add {out}, {out}, {stride}",
            requantize_sdot_row!("12", "13", "14", "15", "3"),
            "add {out}, {out}, {stride}",
            "subs {tiles}, {tiles}, #1",
            "b.ne 1b",
            packed = in(reg) packed.as_ptr(),
            groups = in(reg) groups,
            zero = in(reg) u32::from(requantize.zero),
            stride = in(reg) stride,
            offsets = inout(reg) offsets.as_ptr() => _,
            scales = inout(reg) scales.as_ptr() => _,
            shifts = inout(reg) shifts.as_ptr() => _,
            tiles = inout(reg) tiles => _,
            x = out(reg) _,
            n = out(reg) _,
            w = inout(reg) weights.as_ptr() => _,
            out = inout(reg) out.as_mut_ptr() => _,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _,
            out("v4") _, out("v5") _, out("v6") _, out("v7") _,
            out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _,
            out("v16") _, out("v17") _, out("v18") _, out("v19") _, out("v20") _,
            out("v21") _, out("v22") _, out("v23") _, out("v24") _, out("v25") _, out("v26") _,
            out("v27") _,
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
