//! The panel tiles on AVX-512 F/BW/VL/VNNI.

use super::*;
use std::arch::x86_64::*;

/// The format switch of the tiles.
pub const Q8_0: u8 = 0;
pub const Q4_0: u8 = 1;
pub const Q4_1: u8 = 2;
pub const Q4K: u8 = 3;
pub const Q5_0: u8 = 4;
pub const Q5_1: u8 = 5;
pub const Q5K: u8 = 6;
pub const Q6K: u8 = 7;

/// Most tokens a Q6_K tile takes: its two chains a token (one per 16-value half) hold four
/// accumulators a token and half of the panel, which at six tokens would not fit the
/// registers.
const Q6K_TILE_TOKENS: usize = 4;

/// Whether format `f`'s blocks are K-quant sub-blocks ([`PanelFormat::k`]).
const fn k_quant(f: u8) -> bool {
    f == Q4K || f == Q5K
}

/// Whether format `f` keeps `d` per super-block ([`PanelFormat::supers`]).
const fn per_super(f: u8) -> bool {
    k_quant(f) || f == Q6K
}

/// Whether format `f`'s values carry a fifth bit ([`PanelFormat::five`]).
const fn fifth(f: u8) -> bool {
    f == Q5_0 || f == Q5_1 || f == Q5K
}

/// Panel `p` against every token of `a`: `out[t]` receives token `t`'s results for the
/// panel's first `out[t].len()` rows.
///
/// SAFETY: the CPU has AVX-512 F/BW/VL/VNNI; panel `p` exists; `a` holds one whole token
/// per output; each output holds at most the panel's rows that are rows of the matrix; `F`
/// is the matrix's format.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn panel<const F: u8>(m: &Panels, p: usize, a: &[BlockQ8], out: &mut [&mut [f32]]) {
    let blocks = m.blocks();
    let tokens = a.len() / blocks;
    let per = m.shares();
    let share = |len: usize| p * len..(p + 1) * len;
    let slices = Slices {
        w: &m.w[share(per.w)],
        d: &m.d[share(per.d)],
        m: &m.m[share(per.m)],
        sc: &m.sc[share(per.sc)],
        mn: &m.mn[share(per.mn)],
        hb: &m.hb[share(per.hb)],
    };
    let k = k_quant(F);
    let mut t0 = 0;
    while t0 < tokens {
        let n = (tokens - t0).min(if F == Q6K { Q6K_TILE_TOKENS } else { TILE_TOKENS });
        // The first tile asks for the weights ahead (the later tiles find them in the
        // cache). A lone token's Q8_0 weights come with scales a sixteenth their size, which
        // the hardware prefetchers keep up with (asking ahead lost 4-15% there); the other
        // formats' side streams are larger against their weights (Q4_0's scales an eighth)
        // or more (minima, the K-quants' 6-bit scales, the fifth bits), and asking ahead took
        // a lone token from 27-28 to 37-38 GB/s (Q4_K) and 35-37 to 40-42 (Q4_0); a lone
        // token asks for the weights alone ([`ahead`]).
        let first = t0 == 0 && (tokens > 1 || F != Q8_0);
        let a = &a[t0 * blocks..(t0 + n) * blocks];
        let acc = match n {
            // SAFETY (each): `a` holds `n` whole tokens; `slices` the panel's blocks.
            4 if F == Q6K => widen(unsafe { tile6::<4>(&slices, a, blocks, first) }),
            3 if F == Q6K => widen(unsafe { tile6::<3>(&slices, a, blocks, first) }),
            2 if F == Q6K => widen(unsafe { tile6::<2>(&slices, a, blocks, first) }),
            _ if F == Q6K => widen(unsafe { tile6::<1>(&slices, a, blocks, first) }),
            6 if k => widen(unsafe { tilek::<F, 6>(&slices, a, blocks, first) }),
            5 if k => widen(unsafe { tilek::<F, 5>(&slices, a, blocks, first) }),
            4 if k => widen(unsafe { tilek::<F, 4>(&slices, a, blocks, first) }),
            3 if k => widen(unsafe { tilek::<F, 3>(&slices, a, blocks, first) }),
            2 if k => widen(unsafe { tilek::<F, 2>(&slices, a, blocks, first) }),
            _ if k => widen(unsafe { tilek::<F, 1>(&slices, a, blocks, first) }),
            6 => widen(unsafe { tile::<F, 6>(&slices, a, blocks, first) }),
            5 => widen(unsafe { tile::<F, 5>(&slices, a, blocks, first) }),
            4 => widen(unsafe { tile::<F, 4>(&slices, a, blocks, first) }),
            3 => widen(unsafe { tile::<F, 3>(&slices, a, blocks, first) }),
            2 => widen(unsafe { tile::<F, 2>(&slices, a, blocks, first) }),
            _ => widen(unsafe { tile::<F, 1>(&slices, a, blocks, first) }),
        };
        for (acc, o) in acc.iter().zip(out[t0..t0 + n].iter_mut()) {
            let len = o.len();
            for (h, acc) in acc.iter().enumerate() {
                let lanes = len.saturating_sub(16 * h).min(16);
                if lanes > 0 {
                    // SAFETY: the mask admits only the first `lanes` floats from 16 h,
                    // which lie inside `o`.
                    unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr().add(16 * h), mask(lanes), *acc) };
                }
            }
        }
        t0 += n;
    }
}

/// Bytes of weights the first tile of a panel asks for ahead of the block it multiplies,
/// into L2: a block of 32 rows takes some hundred cycles with six tokens, a load from
/// memory some hundreds of nanoseconds. Into L1, with 4 KiB ahead (three Q8_0 blocks), the
/// weights streamed from memory at eight tokens ran well below the tile's rate in L2 (Q8_0
/// 107 against 178 GMAC/s a thread), and asking further ahead into L1 only lost more; into
/// L2, 8 KiB ahead ran at 169 (kernels bench, `panels`, one thread).
const AHEAD_BYTES: usize = 8192;

/// The pages the hardware prefetchers keep inside.
const PAGE: usize = 4096;

/// Ask for the weights some blocks ahead of block `b` (at `wb`), past the panel's end too:
/// the next panel follows it in memory, and a thread's next task is usually that panel. With
/// `side`, their scales, minima and fifth bits too: a tile of several tokens needs them (8
/// tokens streamed without: Q8_0 15-16 against 25-28 GB/s, Q5_K 16-17 against 20); a lone
/// token streams faster leaving those small sequential streams to the hardware prefetchers
/// (a request per block for lines that hold two to eight blocks' worth: Q4_K 27-38 -> 41-42
/// GB/s, Q4_1 32 -> 42, Q6_K 36-39 -> 42; kernels bench, `panels`, one token streamed).
///
/// A lone token's Q4_0, Q4_K and Q6_K weights are asked for only where a 4 KiB page starts,
/// and the hardware prefetchers, which stop at 4 KiB boundaries, take the rest of each page.
/// A lone token through 128 MiB of matrices (kernels bench, `sequence`, Zen 4) streamed Q4_0
/// at 25.7-27.8 GB/s against 22.3-24.2 with a request per cache line, Q4_K at 24.1-26.3
/// against 20.6-22.5, and Q6_K at 24.6-25.1 against 19.6-21.1 (its blocks read in order,
/// [`six_nibbles_at`]). Decode of a 1B Q4_K_M model at one thread went from 24.2 to 29.3
/// tokens/s. Q4_1 and Q5_K ran alike either way; Q5_0 and Q5_1 ran slower, and keep a
/// request per line.
#[inline(always)]
fn ahead<const F: u8>(sl: &Slices<'_>, wb: *const u8, b: usize, pbb: usize, side: bool) {
    let blocks_ahead = (AHEAD_BYTES / pbb).max(1);
    let w = wb.wrapping_add(blocks_ahead * pbb);
    if !side && (F == Q4_0 || F == Q4K || F == Q6K) {
        // The first page start inside the block ahead, if any.
        let page = (w as usize).next_multiple_of(PAGE) - w as usize;
        if page < pbb {
            // SAFETY: a prefetch is a hint that never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(page).cast()) };
        }
        return;
    }
    for off in (0..pbb).step_by(64) {
        // SAFETY: a prefetch is a hint that never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(off).cast()) };
    }
    if !side {
        return;
    }
    // The block's 32 scales (and minima): one cache line each; the K-quants' per
    // super-block, their 6-bit scales and minima per block (32 bytes each).
    let k = k_quant(F);
    let s = if per_super(F) {
        (b + blocks_ahead) / (QK_K / QK)
    } else {
        b + blocks_ahead
    } * PANEL_ROWS;
    // SAFETY (each): a prefetch is a hint that never faults.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.d.as_ptr().wrapping_add(s).cast()) };
    if F == Q4_1 || F == Q5_1 || k {
        unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.m.as_ptr().wrapping_add(s).cast()) };
    }
    if k {
        let at = (b + blocks_ahead) * PANEL_ROWS;
        unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.sc.as_ptr().wrapping_add(at).cast()) };
        unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.mn.as_ptr().wrapping_add(at).cast()) };
    }
    if F == Q6K {
        // The block's two halves' scales: 64 bytes.
        let at = 2 * (b + blocks_ahead) * PANEL_ROWS;
        unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.sc.as_ptr().wrapping_add(at).cast()) };
    }

    if fifth(F) {
        // The block's fifth-bit masks: two cache lines.
        let hb = sl
            .hb
            .as_ptr()
            .wrapping_add((b + blocks_ahead) * FIFTH_MASKS)
            .cast::<u8>();
        unsafe { _mm_prefetch::<_MM_HINT_T1>(hb.cast()) };
        unsafe { _mm_prefetch::<_MM_HINT_T1>(hb.wrapping_add(64).cast()) };
    }
}

fn mask(lanes: usize) -> __mmask16 {
    if lanes >= 16 {
        0xffff
    } else {
        ((1u32 << lanes) - 1) as __mmask16
    }
}

/// A tile's accumulators padded to six tokens (the unused ones are never read).
#[inline(always)]
fn widen<const N: usize>(acc: [[__m512; 2]; N]) -> [[__m512; 2]; TILE_TOKENS] {
    // SAFETY: an all-zero __m512 is a valid value.
    let mut out = [[unsafe { std::mem::zeroed::<__m512>() }; 2]; TILE_TOKENS];
    out[..N].copy_from_slice(&acc);
    out
}

/// Four of a token's block values (from `e`) in every lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn four(y: &BlockQ8, e: usize) -> __m512i {
    // SAFETY: e + 4 <= 32 (the callers' runs).
    _mm512_set1_epi32(unsafe { y.qs.as_ptr().add(e).cast::<i32>().read_unaligned() })
}

/// 32 f16 values at `p` as two vectors of f32.
///
/// SAFETY: 64 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn halves(p: *const u16) -> [__m512; 2] {
    // SAFETY: the caller's.
    unsafe {
        [
            _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
            _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16).cast())),
        ]
    }
}

/// One panel's share of a matrix's arrays (empty where the format has none).
struct Slices<'a> {
    w: &'a [u8],
    d: &'a [u16],
    m: &'a [u16],
    sc: &'a [u8],
    mn: &'a [u8],
    hb: &'a [u64],
}

impl Slices<'_> {
    /// Block `b`'s fifth-bit masks (empty where format `F` has none).
    #[inline(always)]
    fn masks<const F: u8>(&self, b: usize) -> &[u64] {
        if fifth(F) {
            &self.hb[b * FIFTH_MASKS..][..FIFTH_MASKS]
        } else {
            &[]
        }
    }
}

/// One panel (32 rows) by `N` tokens over every block.
///
/// SAFETY: AVX-512 F/BW/VL/VNNI; `sl` holds `blocks` panel blocks of format `F` with their
/// scales (and minima) and `a` `N` tokens of `blocks` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const F: u8, const N: usize>(
    sl: &Slices<'_>,
    a: &[BlockQ8],
    blocks: usize,
    prefetch: bool,
) -> [[__m512; 2]; N] {
    debug_assert!(!per_super(F), "super-block formats have their own tiles");
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let pbb = if F == Q8_0 {
        PANEL_ROWS * QK
    } else {
        PANEL_ROWS * QK / 2
    };
    let wp = sl.w.as_ptr();
    for b in 0..blocks {
        let ys: [&BlockQ8; N] = std::array::from_fn(|t| &a[t * blocks + b]);
        let mut dot: [[__m512i; 2]; N] = std::array::from_fn(|t| {
            let start = match F {
                Q8_0 => -128 * ys[t].sum,
                Q4_0 => -8 * ys[t].sum,
                Q5_0 => -16 * ys[t].sum,
                _ => 0,
            };
            let s = _mm512_set1_epi32(start);
            [s, s]
        });
        let wb = wp.wrapping_add(b * pbb);
        if prefetch {
            ahead::<F>(sl, wb, b, pbb, N > 1);
        }
        if F == Q8_0 {
            for s in 0..STEPS {
                // SAFETY: run `s` of block `b` lies inside `w` (the caller sized it).
                let (w0, w1) = unsafe {
                    (
                        _mm512_loadu_si512(wb.add(128 * s).cast()),
                        _mm512_loadu_si512(wb.add(128 * s + 64).cast()),
                    )
                };
                for t in 0..N {
                    let y = four(ys[t], 4 * s);
                    dot[t][0] = _mm512_dpbusd_epi32(dot[t][0], w0, y);
                    dot[t][1] = _mm512_dpbusd_epi32(dot[t][1], w1, y);
                }
            }
        } else {
            let hb = sl.masks::<F>(b);
            // SAFETY: block `b` lies inside `w` (the caller sized it).
            unsafe { nibble_dots::<F, N>(wb, hb, &ys, &mut dot) };
        }
        // SAFETY: the block's 32 row scales (and minima) lie inside `d` (and `m`).
        let ds = unsafe { halves(sl.d.as_ptr().add(b * PANEL_ROWS)) };
        for t in 0..N {
            let yd = _mm512_set1_ps(ys[t].d);
            for h in 0..2 {
                acc[t][h] = _mm512_fmadd_ps(_mm512_mul_ps(ds[h], yd), _mm512_cvtepi32_ps(dot[t][h]), acc[t][h]);
            }
        }
        if F == Q4_1 || F == Q5_1 {
            // SAFETY: as for `d`.
            let ms = unsafe { halves(sl.m.as_ptr().add(b * PANEL_ROWS)) };
            for t in 0..N {
                let s = _mm512_set1_ps(ys[t].s);
                for h in 0..2 {
                    acc[t][h] = _mm512_fmadd_ps(ms[h], s, acc[t][h]);
                }
            }
        }
    }
    acc
}

/// The nibbles (with their fifth bits) of run pair `s` of the panel block at `wb`, both halves
/// of the panel: `[low nibbles, high nibbles]` per half.
///
/// SAFETY: AVX-512 F/BW; run pair `s` of the block lies at `wb`; `hb` holds the block's
/// fifth-bit masks where the format has them.
#[inline(always)]
unsafe fn nibbles<const F: u8>(wb: *const u8, s: usize, hb: &[u64]) -> [[__m512i; 2]; 2] {
    let low = _mm512_set1_epi8(0x0f);
    // SAFETY: the caller's.
    let w = unsafe {
        [
            _mm512_loadu_si512(wb.add(128 * s).cast()),
            _mm512_loadu_si512(wb.add(128 * s + 64).cast()),
        ]
    };
    let mut out = w.map(|w| {
        [
            _mm512_and_si512(w, low),
            _mm512_and_si512(_mm512_srli_epi16::<4>(w), low),
        ]
    });
    if fifth(F) {
        let sixteen = _mm512_set1_epi8(16);
        for (h, v) in out.iter_mut().enumerate() {
            for (high, v) in v.iter_mut().enumerate() {
                *v = _mm512_mask_add_epi8(*v, hb[fifth_at(s, h, high)], *v, sixteen);
            }
        }
    }
    out
}

/// A 4- or 5-bit panel block (at `wb`, its fifth-bit masks `hb`) times `N` tokens' blocks
/// `ys`, chained onto `dot[t][half of the panel]`: per run pair, the low nibbles (values
/// `4 s..`) by one broadcast of four activations, the high ones (`16 + 4 s..`) by another.
///
/// SAFETY: AVX-512 F/BW/VNNI; the panel block lies at `wb`; `hb` holds its masks where the
/// format has them.
#[inline(always)]
// The halves of the panel index the chains of every token in lockstep.
#[allow(clippy::needless_range_loop)]
unsafe fn nibble_dots<const F: u8, const N: usize>(
    wb: *const u8,
    hb: &[u64],
    ys: &[&BlockQ8; N],
    dot: &mut [[__m512i; 2]; N],
) {
    for s in 0..STEPS / 2 {
        // SAFETY: the caller's.
        let v = unsafe { nibbles::<F>(wb, s, hb) };
        for t in 0..N {
            let (ylo, yhi) = (four(ys[t], 4 * s), four(ys[t], 16 + 4 * s));
            for h in 0..2 {
                dot[t][h] = _mm512_dpbusd_epi32(dot[t][h], v[h][0], ylo);
                dot[t][h] = _mm512_dpbusd_epi32(dot[t][h], v[h][1], yhi);
            }
        }
    }
}

/// One panel (32 rows) of Q4_K or Q5_K by `N` tokens over every block, the activations
/// scaled per 256 values ([`quantize_q8_k`](crate::quant::blocks::quantize_q8_k)). Per
/// sub-block the integer chains as in [`tile`] (from zero), times the rows' 6-bit scales and
/// summed over the super-block in integers; the minima times the sub-blocks' sums by
/// `vpdpwssd` (two sub-blocks a lane, as 16-bit pairs); then per super-block one multiply-add
/// by `d · d_a` and one by `−dmin · d_a` (as `scalar_super`).
///
/// SAFETY: AVX-512 F/BW/VL/VNNI; `sl` holds `blocks` panel blocks of format `F` (a K-quant)
/// with their scales and minima, and `a` `N` tokens of `blocks` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
// The halves of the panel index the accumulators of every token in lockstep.
#[allow(clippy::needless_range_loop)]
unsafe fn tilek<const F: u8, const N: usize>(
    sl: &Slices<'_>,
    a: &[BlockQ8],
    blocks: usize,
    prefetch: bool,
) -> [[__m512; 2]; N] {
    let subs = QK_K / QK;
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let pbb = PANEL_ROWS * QK / 2;
    let wp = sl.w.as_ptr();
    // −dmin: the sign bit flipped (an integer xor: AVX-512 F has no float one).
    let sign = _mm512_set1_epi32(i32::MIN);
    for sb in 0..blocks / subs {
        let mut scaled = [[_mm512_setzero_si512(); 2]; N];
        for j in 0..subs {
            let b = sb * subs + j;
            let ys: [&BlockQ8; N] = std::array::from_fn(|t| &a[t * blocks + b]);
            let mut dot = [[_mm512_setzero_si512(); 2]; N];
            let wb = wp.wrapping_add(b * pbb);
            if prefetch {
                ahead::<F>(sl, wb, b, pbb, N > 1);
            }
            let hb = sl.masks::<F>(b);
            // SAFETY: block `b` lies inside `w` (the caller sized it).
            unsafe { nibble_dots::<F, N>(wb, hb, &ys, &mut dot) };
            for h in 0..2 {
                // SAFETY: the block's 32 scales lie inside `sc`.
                let sc = _mm512_cvtepu8_epi32(unsafe {
                    _mm_loadu_si128(sl.sc.as_ptr().add(b * PANEL_ROWS + 16 * h).cast())
                });
                for t in 0..N {
                    scaled[t][h] = _mm512_add_epi32(scaled[t][h], _mm512_mullo_epi32(sc, dot[t][h]));
                }
            }
        }
        // The minima times the sub-blocks' sums, two sub-blocks a 32-bit lane.
        let mut mins = [[_mm512_setzero_si512(); 2]; N];
        for pair in 0..subs / 2 {
            let b = sb * subs + 2 * pair;
            for h in 0..2 {
                let at = |b: usize| {
                    // SAFETY: the block's 32 minima lie inside `mn`.
                    _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(sl.mn.as_ptr().add(b * PANEL_ROWS + 16 * h).cast()) })
                };
                let mn = _mm512_or_si512(at(b), _mm512_slli_epi32::<16>(at(b + 1)));
                for t in 0..N {
                    let (s0, s1) = (a[t * blocks + b].sum, a[t * blocks + b + 1].sum);
                    let y = _mm512_set1_epi32((s0 & 0xffff) | (s1 << 16));
                    mins[t][h] = _mm512_dpwssd_epi32(mins[t][h], mn, y);
                }
            }
        }
        // SAFETY: the super-block's 32 d and dmin lie inside the slices.
        let (d, dmin) = unsafe {
            (
                halves(sl.d.as_ptr().add(sb * PANEL_ROWS)),
                halves(sl.m.as_ptr().add(sb * PANEL_ROWS)),
            )
        };
        for h in 0..2 {
            let neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dmin[h]), sign));
            for t in 0..N {
                let yd = _mm512_set1_ps(a[t * blocks + sb * subs].d);
                acc[t][h] = _mm512_fmadd_ps(_mm512_mul_ps(d[h], yd), _mm512_cvtepi32_ps(scaled[t][h]), acc[t][h]);
                acc[t][h] = _mm512_fmadd_ps(_mm512_mul_ps(neg, yd), _mm512_cvtepi32_ps(mins[t][h]), acc[t][h]);
            }
        }
    }
    acc
}

/// One panel (32 rows) of Q6_K by `N` tokens (at most [`Q6K_TILE_TOKENS`]) over every block:
/// per run pair and half of the panel, the nibbles' vector unpacked into the low and the high
/// nibbles, each given its top bits from the plane (a shift and one ternary-logic or under
/// the 0x30 mask); the low nibbles (the block's first 16 values) chain into one accumulator,
/// the high ones into another, each from `−32 Σ a` of its values; per block the two chains
/// times their scales in integers, then one multiply-add by `d · d_a` (as `scalar_one`).
///
/// SAFETY: AVX-512 F/BW/VL/VNNI; `sl` holds `blocks` Q6_K panel blocks with their scales and
/// `a` `N` tokens of `blocks` blocks.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
// The halves of the panel index the chains of every token in lockstep.
#[allow(clippy::needless_range_loop)]
unsafe fn tile6<const N: usize>(sl: &Slices<'_>, a: &[BlockQ8], blocks: usize, prefetch: bool) -> [[__m512; 2]; N] {
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let pbb = PanelFormat::Q6K.panel_block_bytes();
    let wp = sl.w.as_ptr();
    let (low, m30) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0x30));
    // Bits `shift`, `shift + 1` of every byte of the plane moved to bits 4 and 5 (what the
    // 16-bit shifts bring in from the neighbouring byte lands outside them).
    let at_four = |plane: __m512i, shift: u32| match shift {
        0 => _mm512_slli_epi16::<4>(plane),
        2 => _mm512_slli_epi16::<2>(plane),
        4 => plane,
        _ => _mm512_srli_epi16::<2>(plane),
    };
    let subs = QK_K / QK;
    for sb in 0..blocks / subs {
        let mut scaled = [[_mm512_setzero_si512(); 2]; N];
        for b in sb * subs..(sb + 1) * subs {
            let ys: [&BlockQ8; N] = std::array::from_fn(|t| &a[t * blocks + b]);
            // dot[t][half of the block][half of the panel]
            let mut dot: [[[__m512i; 2]; 2]; N] = std::array::from_fn(|t| {
                let first = _mm512_set1_epi32(-32 * ys[t].sum_low);
                let second = _mm512_set1_epi32(-32 * (ys[t].sum - ys[t].sum_low));
                [[first, first], [second, second]]
            });
            let wb = wp.wrapping_add(b * pbb);
            if prefetch {
                ahead::<Q6K>(sl, wb, b, pbb, N > 1);
            }
            for s in 0..STEPS / 2 {
                for h in 0..2 {
                    let (at, shift) = six_plane_at(s, h, 0);
                    // SAFETY: run pair `s` of block `b` and its plane lie inside `w` (the
                    // caller sized it).
                    let (w, plane) = unsafe {
                        (
                            _mm512_loadu_si512(wb.add(six_nibbles_at(s, h)).cast()),
                            _mm512_loadu_si512(wb.add(at).cast()),
                        )
                    };
                    // a | (b & c): 0xf8.
                    let lo = _mm512_ternarylogic_epi32::<0xf8>(_mm512_and_si512(w, low), at_four(plane, shift), m30);
                    let hi = _mm512_ternarylogic_epi32::<0xf8>(
                        _mm512_and_si512(_mm512_srli_epi16::<4>(w), low),
                        at_four(plane, shift + 2),
                        m30,
                    );
                    for t in 0..N {
                        dot[t][0][h] = _mm512_dpbusd_epi32(dot[t][0][h], lo, four(ys[t], 4 * s));
                        dot[t][1][h] = _mm512_dpbusd_epi32(dot[t][1][h], hi, four(ys[t], 16 + 4 * s));
                    }
                }
            }
            for h in 0..2 {
                let scale = |sub: usize| {
                    // SAFETY: the block's two halves' 32 scales each lie inside `sc`.
                    let p = unsafe { sl.sc.as_ptr().add((2 * b + sub) * PANEL_ROWS + 16 * h) };
                    _mm512_cvtepi8_epi32(unsafe { _mm_loadu_si128(p.cast()) })
                };
                let (first, second) = (scale(0), scale(1));
                for t in 0..N {
                    let sum = _mm512_add_epi32(
                        _mm512_mullo_epi32(first, dot[t][0][h]),
                        _mm512_mullo_epi32(second, dot[t][1][h]),
                    );
                    scaled[t][h] = _mm512_add_epi32(scaled[t][h], sum);
                }
            }
        }
        // SAFETY: the super-block's 32 d lie inside `d`.
        let d = unsafe { halves(sl.d.as_ptr().add(sb * PANEL_ROWS)) };
        for h in 0..2 {
            for t in 0..N {
                let yd = _mm512_set1_ps(a[t * blocks + sb * subs].d);
                acc[t][h] = _mm512_fmadd_ps(_mm512_mul_ps(d[h], yd), _mm512_cvtepi32_ps(scaled[t][h]), acc[t][h]);
            }
        }
    }
    acc
}
