//! NEON (AArch64) kernels, for CPUs with and without the dot-product extension.
//!
//! The integer work is vectorised: weights are unpacked to signed bytes and multiplied with the
//! activations into four i32 lanes per 16 bytes, lane `i` summing bytes `4i..4i + 4`, by SDOT
//! where the CPU has `dotprod` and by widening multiplies and pairwise adds where it does not
//! (the same lane sums either way). Each block's (or sub-block's) integer sum is then reduced
//! to one exact i32 and enters the f32 arithmetic exactly as in [`super::scalar`], operation for
//! operation: every NEON result is bit-identical to the scalar reference, on both levels, for
//! one token or four.

use std::arch::aarch64::*;
use std::arch::asm;

use super::{
    f16_at, k_scales_mins, BlockQ8, Dot4Fn, DotFn, QuantType, K_SCALES_AT, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES,
    Q4_K_QS_AT, Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q5_K_QH_AT, Q5_K_QS_AT, Q6_K_BYTES, Q6_K_D_AT, Q6_K_QH_AT,
    Q6_K_SCALES_AT, Q8_0_BYTES, SUBS,
};

/// The one- and four-token kernels for `dtype`, using SDOT when `sdot` is set (only for CPUs
/// with `dotprod`: `Isa::NeonDot`), or `None` if finllm has no kernel for the format.
pub(super) fn kernels(dtype: QuantType, sdot: bool) -> Option<(DotFn, Dot4Fn)> {
    fn pick<F: Format>(sdot: bool) -> (DotFn, Dot4Fn) {
        if sdot {
            (dot::<F, true>, dot4::<F, true>)
        } else {
            (dot::<F, false>, dot4::<F, false>)
        }
    }
    Some(match dtype {
        QuantType::Q4_0 => pick::<Q4_0>(sdot),
        QuantType::Q4_1 => pick::<Q4_1>(sdot),
        QuantType::Q5_0 => pick::<Q5_0>(sdot),
        QuantType::Q5_1 => pick::<Q5_1>(sdot),
        QuantType::Q8_0 => pick::<Q8_0>(sdot),
        QuantType::Q4K => pick::<Q4K>(sdot),
        QuantType::Q5K => pick::<Q5K>(sdot),
        QuantType::Q6K => pick::<Q6K>(sdot),
        _ => return None,
    })
}

/// A weight format's kernel body: one row against `N` tokens, generic over the byte dot
/// product (`SDOT`). The same body serves one and four tokens, so every token sees the same
/// operations whatever `N`.
trait Format {
    /// Bytes per weight block.
    const BYTES: usize;
    /// Activation blocks per weight block (1, or 8 for the K-quants).
    const SUBS: usize;
    /// # Safety
    /// The CPU must have NEON, and `dotprod` if `SDOT`; `row` must hold `a[0].len() / SUBS`
    /// blocks and every token `a[0].len()` activation blocks ([`check`]).
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N];
}

fn dot<F: Format, const SDOT: bool>(row: &[u8], a: &[BlockQ8]) -> f32 {
    check::<F>(row, &[a]);
    // SAFETY: `kernels` is only asked for `Isa::Neon` / `Isa::NeonDot` kernels once
    // `Isa::detect` or `Isa::available` found NEON, and hands out SDOT = true only for
    // `Isa::NeonDot`, which they report only when the CPU has `dotprod`; checked above.
    unsafe { F::body::<SDOT, 1>(row, [a])[0] }
}

fn dot4<F: Format, const SDOT: bool>(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    check::<F>(row, &a);
    // SAFETY: as in `dot`.
    unsafe { F::body::<SDOT, 4>(row, a) }
}

/// Whole weight blocks, every token as long as the first, and the row long enough.
fn check<F: Format>(row: &[u8], a: &[&[BlockQ8]]) {
    let n = a[0].len();
    assert!(
        n.is_multiple_of(F::SUBS) && a.iter().all(|x| x.len() == n) && row.len() >= n / F::SUBS * F::BYTES,
        "row of {} bytes against {n} activation blocks",
        row.len()
    );
}

/// `acc` plus the dot products of the signed bytes of `w` and `y`, four at a time: lane `i`
/// adds `Σ w[k]·y[k]` over `k` in `4i..4i + 4`. With `SDOT` the CPU must have `dotprod`.
#[inline]
#[target_feature(enable = "neon")]
fn dot16<const SDOT: bool>(acc: int32x4_t, w: int8x16_t, y: int8x16_t) -> int32x4_t {
    if SDOT {
        let mut acc = acc;
        // Rust's `vdotq_s32` is still unstable. The assembler takes SDOT only in functions
        // compiled for `dotprod`, or after this directive: one body serves both levels here,
        // so every function of this module is compiled for NEON alone.
        // SAFETY: SDOT = true comes only from `Isa::NeonDot`, found on CPUs with `dotprod`
        // (see `dot`); the instruction touches registers only.
        unsafe {
            asm!(
                ".arch_extension dotprod",
                "sdot {acc:v}.4s, {w:v}.16b, {y:v}.16b",
                acc = inout(vreg) acc,
                w = in(vreg) w,
                y = in(vreg) y,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        acc
    } else {
        // |w·y| <= 128 · 128 fits in i16; pairs, then pairs of pairs, give SDOT's lanes.
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(y)));
        let hi = vpaddlq_s16(vmull_high_s8(w, y));
        vaddq_s32(acc, vpaddq_s32(lo, hi))
    }
}

/// The 32 signed bytes of an activation block, elements 0..16 and 16..32.
#[inline]
#[target_feature(enable = "neon")]
fn activations(y: &BlockQ8) -> [int8x16_t; 2] {
    // SAFETY: BlockQ8::qs is 32 bytes.
    unsafe { [vld1q_s8(y.qs.as_ptr()), vld1q_s8(y.qs.as_ptr().add(16))] }
}

/// The exact integer dot product of 32 weights (as signed bytes) with an activation block.
#[inline]
#[target_feature(enable = "neon")]
fn dot32<const SDOT: bool>(w: &[int8x16_t; 2], y: &BlockQ8) -> int32x4_t {
    let [y0, y1] = activations(y);
    dot16::<SDOT>(dot16::<SDOT>(vdupq_n_s32(0), w[0], y0), w[1], y1)
}

/// Lane `j` of the result is the sum of the lanes of `v[j]`.
#[inline]
#[target_feature(enable = "neon")]
fn lane_sums(v: [int32x4_t; 4]) -> int32x4_t {
    vpaddq_s32(vpaddq_s32(v[0], v[1]), vpaddq_s32(v[2], v[3]))
}

/// Eight sums of the lanes of `v[j]`, as an array.
#[inline]
#[target_feature(enable = "neon")]
fn sums8(v: [int32x4_t; 8]) -> [i32; 8] {
    let mut out = [0i32; 8];
    // SAFETY: out holds eight i32.
    unsafe {
        vst1q_s32(out.as_mut_ptr(), lane_sums([v[0], v[1], v[2], v[3]]));
        vst1q_s32(out.as_mut_ptr().add(4), lane_sums([v[4], v[5], v[6], v[7]]));
    }
    out
}

/// 16 bytes of `b` from `at`.
#[inline]
#[target_feature(enable = "neon")]
fn load16(b: &[u8], at: usize) -> uint8x16_t {
    let bytes: &[u8; 16] = b[at..at + 16].try_into().expect("16 bytes");
    // SAFETY: bytes is 16 bytes long.
    unsafe { vld1q_u8(bytes.as_ptr()) }
}

/// The low and high nibbles of 16 bytes.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(raw: uint8x16_t) -> [uint8x16_t; 2] {
    [vandq_u8(raw, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(raw)]
}

/// 32 nibbles from 16 bytes at `at`: element `j` in the low nibble of byte `j`, element
/// `j + 16` in its high nibble.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles32(b: &[u8], at: usize) -> [uint8x16_t; 2] {
    nibbles(load16(b, at))
}

/// `bit` (one bit set) in the lanes of `v` that have any bit of `mask` set, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn bit_where(v: uint8x16_t, mask: u8, bit: u8) -> uint8x16_t {
    vandq_u8(vtstq_u8(v, vdupq_n_u8(mask)), vdupq_n_u8(bit))
}

/// 0x10 in lane `j` of 32 where bit `j` of the little-endian u32 at `b[at]` is set.
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits(b: &[u8], at: usize) -> [uint8x16_t; 2] {
    // Lane j tests bit j % 8 of byte j / 8.
    const BIT_OF_LANE: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: the constant is 16 bytes long.
    let bit = unsafe { vld1q_u8(BIT_OF_LANE.as_ptr()) };
    let spread = |lo: u8, hi: u8| vcombine_u8(vdup_n_u8(lo), vdup_n_u8(hi));
    let set = |v| vandq_u8(vtstq_u8(v, bit), vdupq_n_u8(0x10));
    [set(spread(b[at], b[at + 1])), set(spread(b[at + 2], b[at + 3]))]
}

/// Unsigned byte values as signed bytes, minus `offset`.
#[inline]
#[target_feature(enable = "neon")]
fn signed(q: [uint8x16_t; 2], offset: i8) -> [int8x16_t; 2] {
    q.map(|v| vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(offset)))
}

/// The 32-element formats for `N` tokens: `unpack` gives a block's 32 weights as signed bytes;
/// with `MIN` the block has an f16 minimum after `d` (Q4_1, Q5_1). Per block and token:
/// `acc += d·y.d·Σq·y (+ m·y.s)`, as `scalar::q4_0` and `scalar::q4_1` write it.
#[inline]
#[target_feature(enable = "neon")]
fn blocks32<const SDOT: bool, const N: usize, const MIN: bool>(
    row: &[u8],
    a: [&[BlockQ8]; N],
    bytes: usize,
    unpack: impl Fn(&[u8]) -> [int8x16_t; 2],
) -> [f32; N] {
    let mut acc = [0f32; N];
    for (i, b) in row.chunks_exact(bytes).take(a[0].len()).enumerate() {
        let w = unpack(b);
        let (d, m) = (f16_at(b, 0), if MIN { f16_at(b, 2) } else { 0.0 });
        for (acc, a) in acc.iter_mut().zip(a) {
            let y = &a[i];
            // |isum| <= 32 · 128 · 128 = 2^19: exact in f32.
            let isum = vaddvq_s32(dot32::<SDOT>(&w, y));
            let scaled = d * y.d * isum as f32;
            *acc += if MIN { scaled + m * y.s } else { scaled };
        }
    }
    acc
}

// One type per format, named as `QuantType` names them.
struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;
struct Q4K;
struct Q5K;
struct Q6K;

impl Format for Q4_0 {
    const BYTES: usize = Q4_0_BYTES;
    const SUBS: usize = 1;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        blocks32::<SDOT, N, false>(row, a, Q4_0_BYTES, |b| signed(nibbles32(b, 2), 8))
    }
}

impl Format for Q4_1 {
    const BYTES: usize = Q4_1_BYTES;
    const SUBS: usize = 1;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        blocks32::<SDOT, N, true>(row, a, Q4_1_BYTES, |b| signed(nibbles32(b, 4), 0))
    }
}

/// The 32 five-bit values of a Q5_0 / Q5_1 block whose fifth bits start at `b[at]`.
#[inline]
#[target_feature(enable = "neon")]
fn q5_values(b: &[u8], at: usize) -> [uint8x16_t; 2] {
    let [lo, hi] = nibbles32(b, at + 4);
    let [flo, fhi] = fifth_bits(b, at);
    [vorrq_u8(lo, flo), vorrq_u8(hi, fhi)]
}

impl Format for Q5_0 {
    const BYTES: usize = Q5_0_BYTES;
    const SUBS: usize = 1;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        blocks32::<SDOT, N, false>(row, a, Q5_0_BYTES, |b| signed(q5_values(b, 2), 16))
    }
}

impl Format for Q5_1 {
    const BYTES: usize = Q5_1_BYTES;
    const SUBS: usize = 1;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        blocks32::<SDOT, N, true>(row, a, Q5_1_BYTES, |b| signed(q5_values(b, 4), 0))
    }
}

impl Format for Q8_0 {
    const BYTES: usize = Q8_0_BYTES;
    const SUBS: usize = 1;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        blocks32::<SDOT, N, false>(row, a, Q8_0_BYTES, |b| signed([load16(b, 2), load16(b, 18)], 0))
    }
}

/// The eight sub-blocks of a Q4_K (`HIGH = false`) or Q5_K (`HIGH = true`) super-block as
/// signed bytes (0..16 or 0..32).
#[inline]
#[target_feature(enable = "neon")]
fn unpack_q4_5_k<const HIGH: bool>(b: &[u8]) -> [[int8x16_t; 2]; SUBS] {
    let qs_at = if HIGH { Q5_K_QS_AT } else { Q4_K_QS_AT };
    let qh = if HIGH {
        [load16(b, Q5_K_QH_AT), load16(b, Q5_K_QH_AT + 16)]
    } else {
        [vdupq_n_u8(0); 2]
    };
    std::array::from_fn(|j| {
        // Sub-blocks 2p and 2p + 1 are the low and high nibbles of the 32 bytes p.
        let at = qs_at + 32 * (j / 2);
        let q: [uint8x16_t; 2] = std::array::from_fn(|h| {
            let nib = nibbles(load16(b, at + 16 * h))[j % 2];
            // Bit j of byte l is the fifth bit of element l of sub-block j.
            if HIGH {
                vorrq_u8(nib, bit_where(qh[h], 1 << j, 0x10))
            } else {
                nib
            }
        });
        signed(q, 0)
    })
}

/// Q4_K and Q5_K for `N` tokens: the eight sub-block dot products of a super-block are exact
/// integers; the scales, mins and `d`s then combine as in `scalar::q4_5_k`.
#[inline]
#[target_feature(enable = "neon")]
fn q4_5_k<const SDOT: bool, const N: usize, const HIGH: bool>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let bytes = if HIGH { Q5_K_BYTES } else { Q4_K_BYTES };
    let mut acc = [0f32; N];
    for (i, b) in row.chunks_exact(bytes).take(a[0].len() / SUBS).enumerate() {
        let q = unpack_q4_5_k::<HIGH>(b);
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = k_scales_mins(&b[K_SCALES_AT..]);
        for (acc, a) in acc.iter_mut().zip(a) {
            let ys = &a[SUBS * i..SUBS * (i + 1)];
            let mut v = [vdupq_n_s32(0); SUBS];
            for ((v, q), y) in v.iter_mut().zip(&q).zip(ys) {
                *v = dot32::<SDOT>(q, y);
            }
            let dots = sums8(v);
            let (mut scaled, mut mins) = (0f32, 0f32);
            for (j, y) in ys.iter().enumerate() {
                // |dot| <= 32 * 31 * 127 and |sum| <= 32 * 127: both exact in f32.
                scaled += f32::from(sc[j]) * y.d * dots[j] as f32;
                mins += f32::from(m[j]) * y.d * y.sum as f32;
            }
            *acc += d * scaled - dmin * mins;
        }
    }
    acc
}

impl Format for Q4K {
    const BYTES: usize = Q4_K_BYTES;
    const SUBS: usize = SUBS;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        q4_5_k::<SDOT, N, false>(row, a)
    }
}

impl Format for Q5K {
    const BYTES: usize = Q5_K_BYTES;
    const SUBS: usize = SUBS;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        q4_5_k::<SDOT, N, true>(row, a)
    }
}

/// The eight runs of 32 elements of a Q6_K super-block (run `k` against activation block `k`)
/// as signed bytes, value - 32. In each half `n` of 128 elements, runs `4n + g` take the low
/// nibbles of `ql[0..32]`, of `ql[32..64]`, then their high nibbles, with bit pairs 0-1, 2-3,
/// 4-5, 6-7 of `qh[0..32]` on top (see `q6_k_value` in blocks.rs).
#[inline]
#[target_feature(enable = "neon")]
fn unpack_q6_k(b: &[u8]) -> [[int8x16_t; 2]; SUBS] {
    std::array::from_fn(|k| {
        let (n, g) = (k / 4, k % 4);
        let q: [uint8x16_t; 2] = std::array::from_fn(|h| {
            let low = nibbles(load16(b, 64 * n + 32 * (g % 2) + 16 * h))[g / 2];
            let qh = load16(b, Q6_K_QH_AT + 32 * n + 16 * h);
            // Bits 2g and 2g + 1 of qh become bits 4 and 5.
            let high = vorrq_u8(bit_where(qh, 1 << (2 * g), 0x10), bit_where(qh, 2 << (2 * g), 0x20));
            vorrq_u8(low, high)
        });
        signed(q, 32)
    })
}

/// Q6_K for `N` tokens: each activation block covers two 16-element sub-blocks with their own
/// i8 scales, applied to the exact integer sums before `y.d`, as in `scalar::q6_k`.
#[inline]
#[target_feature(enable = "neon")]
fn q6_k<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [0f32; N];
    for (i, b) in row.chunks_exact(Q6_K_BYTES).take(a[0].len() / SUBS).enumerate() {
        let w = unpack_q6_k(b);
        let d = f16_at(b, Q6_K_D_AT);
        // The scales are i8 stored as bytes.
        let scale = |s: usize| i32::from(b[Q6_K_SCALES_AT + s] as i8);
        for (acc, a) in acc.iter_mut().zip(a) {
            let ys = &a[SUBS * i..SUBS * (i + 1)];
            let mut v = [vdupq_n_s32(0); SUBS];
            for (k, v) in v.iter_mut().enumerate() {
                let [y0, y1] = activations(&ys[k]);
                let zero = vdupq_n_s32(0);
                let (first, second) = (dot16::<SDOT>(zero, w[k][0], y0), dot16::<SDOT>(zero, w[k][1], y1));
                // |lane| <= 4 * 32 * 128 per half: the scaled sums stay far inside i32.
                *v = vmlaq_n_s32(vmulq_n_s32(first, scale(2 * k)), second, scale(2 * k + 1));
            }
            let isums = sums8(v);
            let mut scaled = 0f32;
            for (y, &isum) in ys.iter().zip(&isums) {
                // |isum| <= 2 * 16 * 32 * 127 * 128 < 2^24: exact in f32.
                scaled += y.d * isum as f32;
            }
            *acc += d * scaled;
        }
    }
    acc
}

impl Format for Q6K {
    const BYTES: usize = Q6_K_BYTES;
    const SUBS: usize = SUBS;
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn body<const SDOT: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        q6_k::<SDOT, N>(row, a)
    }
}
