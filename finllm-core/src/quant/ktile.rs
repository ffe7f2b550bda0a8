//! Multi-row, multi-token tiles for Q8_0 and the K-quant formats (Q4_K, Q5_K, Q6_K) on AVX-512
//! VNNI.
//!
//! The one-row kernels in [`super::kernels`] read activations as 32-element blocks, so each
//! 64-byte `vpdpbusd` covers two sub-blocks and every product has to be scaled on its own before
//! the next sub-block's can be added. Here a super-block's activations are laid out once per call
//! ([`SuperQ8`]) so that in each of the four 64-byte vectors lanes `2j` and `2j + 1` hold eight
//! values of sub-block `j`, and the weights are shuffled to match as they are unpacked. Every
//! lane then belongs to one sub-block in all four vectors: the four integer dot products chain
//! into one accumulator, and one multiply by the per-lane scales finishes the super-block.
//!
//! The activations are the same 8-bit blocks the other kernels use (per-32 scales, rearranged,
//! not requantized), so results agree with the scalar references to float rounding. Every result
//! of a tile is bit-identical to the one-row, one-token tile on that row and token: each takes the
//! same operations in the same order, so how rows and tokens are grouped never changes a number.

use super::blocks::{BlockQ8, QK, QK_K};
use super::kernels::Isa;
use super::QuantType;

/// Activation blocks (sub-blocks) per super-block.
pub const SUBS: usize = QK_K / QK;

/// Most weight rows one tile call takes.
pub const MAX_TILE_ROWS: usize = 2;

/// Most tokens one tile call takes.
pub const MAX_TILE_TOKENS: usize = 8;

/// The eight activation blocks of one super-block, rearranged for the tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct SuperQ8 {
    /// `qs[64 v + 8 j + k]` is value `8 v + k` of block `j`.
    pub qs: [i8; QK_K],
    /// Block `j`'s scale.
    pub d: [f32; SUBS],
    /// `d[j] · Σ` block `j`'s values (the exact integer sum, scaled once).
    pub ds: [f32; SUBS],
    /// Sums of sixteen values: `[2 j]` over values 0..16 of block `j`, `[2 j + 1]` over 16..32.
    pub half_sums: [i32; 2 * SUBS],
}

impl Default for SuperQ8 {
    fn default() -> Self {
        Self {
            qs: [0; QK_K],
            d: [0.0; SUBS],
            ds: [0.0; SUBS],
            half_sums: [0; 2 * SUBS],
        }
    }
}

impl SuperQ8 {
    /// The layout of `blocks` (up to eight activation blocks; missing ones are zeros).
    pub fn from_blocks(blocks: &[BlockQ8]) -> Self {
        assert!(blocks.len() <= SUBS, "one super-block of activation blocks");
        let mut s = Self::default();
        for (j, b) in blocks.iter().enumerate() {
            for v in 0..QK / 8 {
                s.qs[64 * v + 8 * j..64 * v + 8 * j + 8].copy_from_slice(&b.qs[8 * v..8 * v + 8]);
            }
            s.d[j] = b.d;
            s.ds[j] = b.d * b.sum as f32;
            let half = |r: std::ops::Range<usize>| b.qs[r].iter().map(|&q| i32::from(q)).sum();
            s.half_sums[2 * j] = half(0..16);
            s.half_sums[2 * j + 1] = half(16..32);
        }
        s
    }
}

/// [`SuperQ8::from_blocks`] for every eight blocks of `blocks` (the last group may be short).
pub fn supers_from_blocks(blocks: &[BlockQ8], out: &mut [SuperQ8]) {
    assert_eq!(blocks.len().div_ceil(SUBS), out.len(), "eight blocks per super-block");
    for (s, b) in out.iter_mut().zip(blocks.chunks(SUBS)) {
        *s = SuperQ8::from_blocks(b);
    }
}

/// `rows.len()` weight rows (1..=[`MAX_TILE_ROWS`]) times `a.len()` tokens (1..=
/// [`MAX_TILE_TOKENS`]) of super-block activations, all of one length: `out[r * a.len() + t]` is
/// row `r` · token `t`. A K-quant row holds `a[0].len()` super-blocks; a Q8_0 row is exactly its
/// blocks (the activations' last group padded with zeros where the row's blocks run out).
pub type SuperTileFn = fn(rows: &[&[u8]], a: &[&[SuperQ8]], out: &mut [f32]);

/// The tile kernel for one K-quant format, and the shapes it runs best at.
#[derive(Clone, Copy)]
pub struct SuperKernels {
    pub tile: SuperTileFn,
    /// Rows by tokens per tile when there are several tokens...
    pub tile_rows: usize,
    pub tile_tokens: usize,
    /// ...and rows per tile for a single token (decode).
    pub decode_rows: usize,
    /// A one-row kernel over plain activation blocks that serves a single token instead of
    /// the tile, where that is faster (Q8_0). Its results agree with the tile's to float
    /// rounding, not bit for bit.
    pub single_token: Option<super::kernels::DotFn>,
}

impl std::fmt::Debug for SuperKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuperKernels")
            .field("tile_rows", &self.tile_rows)
            .field("tile_tokens", &self.tile_tokens)
            .field("decode_rows", &self.decode_rows)
            .finish_non_exhaustive()
    }
}

/// The tile kernels for `dtype` on `isa`: Q8_0, Q4_K, Q5_K and Q6_K on AVX-512 VNNI. Other
/// formats and ISAs use the one-row kernels of [`super::kernels`].
pub fn super_kernels(dtype: QuantType, isa: Isa) -> Option<SuperKernels> {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        let tile: SuperTileFn = match dtype {
            QuantType::Q8_0 => avx512::q8_0,
            QuantType::Q4K => avx512::q4_k,
            QuantType::Q5K => avx512::q5_k,
            QuantType::Q6K => avx512::q6_k,
            _ => return None,
        };
        // Two rows by eight tokens: the weights' unpacking (shuffles, scales) is shared by eight
        // tokens, the activations' by two rows (2x8 measured 10-20% faster than 2x4 on llama-1b
        // Q4_K/Q5_K prefill; 1x8, 1x12 and 1x16 in between). One row for decode streams the
        // weights in one sequential run (two or four interleaved rows measured 30-35% slower).
        // Q8_0 decodes one token with its one-row kernel, which streams the rows 15-25% faster
        // than the tile at one token (llama-1b and SmolLM2 Q8_0 decode); the K-quants' one-row
        // kernels are no faster than their tiles, so they keep one kernel for every batch size.
        let single_token = match dtype {
            QuantType::Q8_0 => super::kernels::dot_fn(dtype, isa),
            _ => None,
        };
        return Some(SuperKernels {
            tile,
            tile_rows: 2,
            tile_tokens: 8,
            decode_rows: 1,
            single_token,
        });
    }
    let _ = (dtype, isa);
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::quant::blocks::{
        k_scales_mins, K_SCALES_AT, Q4_K_BYTES, Q4_K_QS_AT, Q5_K_BYTES, Q5_K_QH_AT, Q5_K_QS_AT, Q6_K_BYTES, Q6_K_D_AT,
        Q6_K_QH_AT, Q6_K_SCALES_AT, Q8_0_BYTES,
    };
    use std::arch::x86_64::*;

    /// Calls `$imp::<$c, R, T>` for the tile's shape (checked first); `$c` is the kernel's
    /// format switch (unused by Q6_K).
    macro_rules! by_shape {
        ($imp:ident, $c:expr, $rows:expr, $a:expr, $out:expr) => {
            match ($rows.len(), $a.len()) {
                (1, 1) => $imp::<{ $c }, 1, 1>($rows, $a, $out),
                (1, 2) => $imp::<{ $c }, 1, 2>($rows, $a, $out),
                (1, 3) => $imp::<{ $c }, 1, 3>($rows, $a, $out),
                (1, 4) => $imp::<{ $c }, 1, 4>($rows, $a, $out),
                (1, 5) => $imp::<{ $c }, 1, 5>($rows, $a, $out),
                (1, 6) => $imp::<{ $c }, 1, 6>($rows, $a, $out),
                (1, 7) => $imp::<{ $c }, 1, 7>($rows, $a, $out),
                (1, 8) => $imp::<{ $c }, 1, 8>($rows, $a, $out),
                (2, 1) => $imp::<{ $c }, 2, 1>($rows, $a, $out),
                (2, 2) => $imp::<{ $c }, 2, 2>($rows, $a, $out),
                (2, 3) => $imp::<{ $c }, 2, 3>($rows, $a, $out),
                (2, 4) => $imp::<{ $c }, 2, 4>($rows, $a, $out),
                (2, 5) => $imp::<{ $c }, 2, 5>($rows, $a, $out),
                (2, 6) => $imp::<{ $c }, 2, 6>($rows, $a, $out),
                (2, 7) => $imp::<{ $c }, 2, 7>($rows, $a, $out),
                (2, 8) => $imp::<{ $c }, 2, 8>($rows, $a, $out),
                (r, t) => unreachable!("tile of {r} rows by {t} tokens passed the check"),
            }
        };
    }

    // The safe wrappers are only handed out by `super_kernels` after `Isa::detect` confirmed
    // AVX-512 F/BW/VL/VNNI (with AVX2, FMA and F16C) on this CPU.

    /// How far ahead of a lone row the weights are prefetched.
    const PREFETCH_DISTANCE: usize = 1024;

    pub fn q8_0(rows: &[&[u8]], a: &[&[SuperQ8]], out: &mut [f32]) {
        check_shape(rows, a, out);
        let blocks = rows[0].len() / Q8_0_BYTES;
        assert!(
            rows.iter().all(|r| r.len() == blocks * Q8_0_BYTES) && a[0].len() == blocks.div_ceil(SUBS),
            "Q8_0 rows of {blocks} blocks against {} super-blocks",
            a[0].len()
        );
        // SAFETY: as for q4_k.
        unsafe { by_shape!(q8_0_tile, false, rows, a, out) }
    }

    pub fn q4_k(rows: &[&[u8]], a: &[&[SuperQ8]], out: &mut [f32]) {
        check(rows, a, out, Q4_K_BYTES);
        // SAFETY: the features are present (see above); `check` bounds every load.
        unsafe { by_shape!(q4_5_k_tile, false, rows, a, out) }
    }

    pub fn q5_k(rows: &[&[u8]], a: &[&[SuperQ8]], out: &mut [f32]) {
        check(rows, a, out, Q5_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { by_shape!(q4_5_k_tile, true, rows, a, out) }
    }

    pub fn q6_k(rows: &[&[u8]], a: &[&[SuperQ8]], out: &mut [f32]) {
        check(rows, a, out, Q6_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { by_shape!(q6_k_tile, false, rows, a, out) }
    }

    /// Panics unless the tile's shape is in range, every token has as many super-blocks as the
    /// first, and every row holds that many super-blocks of `bytes`.
    fn check(rows: &[&[u8]], a: &[&[SuperQ8]], out: &[f32], bytes: usize) {
        check_shape(rows, a, out);
        let n = a[0].len();
        assert!(
            rows.iter().all(|r| r.len() >= n * bytes),
            "weight rows hold {n} super-blocks"
        );
    }

    /// Panics unless the tile's shape is in range and every token has as many super-blocks as
    /// the first.
    fn check_shape(rows: &[&[u8]], a: &[&[SuperQ8]], out: &[f32]) {
        assert!(
            (1..=MAX_TILE_ROWS).contains(&rows.len()) && (1..=MAX_TILE_TOKENS).contains(&a.len()),
            "tile of {} rows by {} tokens",
            rows.len(),
            a.len()
        );
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n), "tokens of one length");
        assert_eq!(out.len(), rows.len() * a.len(), "one result per row and token");
    }

    /// Prefetch the cache lines of the super-block at `b` ahead of use: a lone row streams, so
    /// a fixed distance ahead of it; in a tile of several rows the same block of the tile after
    /// this one (`rows` rows further on).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn ahead(b: *const u8, bytes: usize, rows: usize, row_len: usize) {
        let skip = if rows == 1 { PREFETCH_DISTANCE } else { rows * row_len };
        for off in (0..bytes).step_by(64) {
            // Prefetching never faults, even past the end of the mapping.
            _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(skip + off).cast());
        }
    }

    /// An f16 at `p` (unaligned) as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn f16(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees 2 readable bytes at p.
        let bits = unsafe { p.cast::<u16>().read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// Eight per-sub-block values, each in two adjacent lanes (`[v0, v0, v1, v1, ...]`), times `d`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn spread_times(d: f32, v: [u8; SUBS]) -> __m512 {
        let x = _mm_cvtsi64_si128(i64::from_le_bytes(v));
        let pairs = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(x, x));
        _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(pairs))
    }

    /// Eight f32 at `p`, each in two adjacent lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    fn spread(v: &[f32; SUBS]) -> __m512 {
        let dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        // SAFETY: v holds eight f32.
        _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(unsafe { _mm256_loadu_ps(v.as_ptr()) }))
    }

    /// Vector `v` (0..4) of a super-block's activations.
    #[inline(always)]
    fn act(y: &SuperQ8, v: usize) -> __m512i {
        // SAFETY: qs holds 256 bytes, 64-byte aligned (`repr(align(64))`).
        unsafe { _mm512_load_si512(y.qs.as_ptr().add(64 * v).cast()) }
    }

    /// The 4-bit values of a Q4_K / Q5_K super-block in the tile layout: vector `v`, 64-bit lane
    /// `j` holds values `8 v..8 v + 8` of sub-block `j`. Sub-blocks `2p` and `2p + 1` share bytes
    /// `32 p..32 p + 32` of `qs` (low and high nibbles), so lane `j` of vector `v` is the `v`-th
    /// eight bytes of that run, shifted down by four bits for odd `j`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn nibbles_k(qs: *const u8) -> [__m512i; 4] {
        // SAFETY: the caller guarantees 128 bytes at qs.
        let (lo, hi) = unsafe { (_mm512_loadu_si512(qs.cast()), _mm512_loadu_si512(qs.add(64).cast())) };
        let shifts = _mm512_set_epi64(4, 0, 4, 0, 4, 0, 4, 0);
        let m4 = _mm512_set1_epi8(0x0f);
        std::array::from_fn(|v| {
            let v = v as i64;
            // Indices 8.. pick from `hi`: the runs p = 0, 1 are in `lo`, p = 2, 3 in `hi`.
            let pick = _mm512_set_epi64(12 + v, 12 + v, 8 + v, 8 + v, 4 + v, 4 + v, v, v);
            let x = _mm512_permutex2var_epi64(lo, pick, hi);
            _mm512_and_si512(_mm512_srlv_epi64(x, shifts), m4)
        })
    }

    /// Q4_K (`HIGH = false`) and Q5_K (`HIGH = true`: a fifth bit per value, bit `j` of byte `l`
    /// of `qh` for value `l` of sub-block `j`), `R` rows by `N` tokens:
    /// `Σ_j d·sc_j·dy_j·(q·y)_j − dmin·m_j·dy_j·Σy_j` with the four dot products of a super-block
    /// chained in integers and both terms spread over the sub-block's two lanes.
    // The row and token indices walk their arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn q4_5_k_tile<const HIGH: bool, const R: usize, const N: usize>(
        rows: &[&[u8]],
        a: &[&[SuperQ8]],
        out: &mut [f32],
    ) {
        let (bytes, qs_at) = if HIGH {
            (Q5_K_BYTES, Q5_K_QS_AT)
        } else {
            (Q4_K_BYTES, Q4_K_QS_AT)
        };
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        // Byte masks 1 << j in 64-bit lane j.
        let bit_of_lane = _mm512_set_epi64(
            0x8080_8080_8080_8080u64 as i64,
            0x4040_4040_4040_4040,
            0x2020_2020_2020_2020,
            0x1010_1010_1010_1010,
            0x0808_0808_0808_0808,
            0x0404_0404_0404_0404,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
        );
        for i in 0..a[0].len() {
            let mut q = [[_mm512_setzero_si512(); 4]; R];
            let mut sc = [_mm512_setzero_ps(); R];
            let mut mins = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let blk = &rows[r][i * bytes..(i + 1) * bytes];
                let b = blk.as_ptr();
                ahead(b, bytes, R, rows[r].len());
                // SAFETY: blk holds a whole super-block.
                let (d, dmin) = unsafe { (f16(b), f16(b.add(2))) };
                let (s8, m8) = k_scales_mins(&blk[K_SCALES_AT..]);
                sc[r] = spread_times(d, s8);
                // Half in each of the sub-block's two lanes (exact: a power of two).
                mins[r] = spread_times(dmin * 0.5, m8);
                q[r] = unsafe { nibbles_k(b.add(qs_at)) };
                if HIGH {
                    for v in 0..4 {
                        // The eight bytes of qh for values 8v..8v + 8 in every lane; lane j
                        // keeps bit j of each byte as bit 4.
                        let h = _mm512_set1_epi64(unsafe { b.add(Q5_K_QH_AT + 8 * v).cast::<i64>().read_unaligned() });
                        let set = _mm512_test_epi8_mask(h, bit_of_lane);
                        q[r][v] = _mm512_mask_add_epi8(q[r][v], set, q[r][v], _mm512_set1_epi8(16));
                    }
                }
            }
            for t in 0..N {
                let y = &a[t][i];
                let ys = [act(y, 0), act(y, 1), act(y, 2), act(y, 3)];
                let yd = spread(&y.d);
                let yds = spread(&y.ds);
                for r in 0..R {
                    let mut dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q[r][0], ys[0]);
                    dot = _mm512_dpbusd_epi32(dot, q[r][1], ys[1]);
                    dot = _mm512_dpbusd_epi32(dot, q[r][2], ys[2]);
                    dot = _mm512_dpbusd_epi32(dot, q[r][3], ys[3]);
                    let scale = _mm512_mul_ps(sc[r], yd);
                    acc[r][t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r][t]);
                    acc[r][t] = _mm512_fnmadd_ps(mins[r], yds, acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..N {
                out[r * N + t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }

    /// Q8_0, `R` rows by `N` tokens, eight blocks at a time: each block's 32 bytes are loaded
    /// and the 8-byte runs regrouped into the tile layout (two 64-bit permutes per vector), so
    /// the four dot products of eight blocks chain into one accumulator, scaled once by
    /// `d_w·d_y` per block. VNNI multiplies unsigned by signed bytes: the weights go in offset by
    /// 128 (`w ^ 0x80` read unsigned is `w + 128`) and the chain starts at `−128 Σ y` of the
    /// block (spread over its two lanes), so the integer dot is exact.
    // The row and token indices walk their arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn q8_0_tile<const _UNUSED: bool, const R: usize, const N: usize>(
        rows: &[&[u8]],
        a: &[&[SuperQ8]],
        out: &mut [f32],
    ) {
        let blocks = rows[0].len() / Q8_0_BYTES;
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let flip = _mm512_set1_epi8(i8::MIN);
        let dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        for g in 0..a[0].len() {
            let first = g * SUBS;
            let count = (blocks - first).min(SUBS);
            let mut w = [[_mm512_setzero_si512(); 4]; R];
            let mut wd = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let run = &rows[r][first * Q8_0_BYTES..(first + count) * Q8_0_BYTES];
                let b = run.as_ptr();
                ahead(b, run.len(), R, rows[r].len());
                // Block j's scale bits and values (zeros past the row's last block). The scales
                // go straight into a vector: staged through memory they stalled store forwarding.
                // SAFETY (both): block j < count lies inside `run`.
                let bits = |j: usize| {
                    if j < count {
                        unsafe { b.add(j * Q8_0_BYTES).cast::<i16>().read_unaligned() }
                    } else {
                        0
                    }
                };
                let q: [__m256i; SUBS] = std::array::from_fn(|j| {
                    if j < count {
                        unsafe { _mm256_loadu_si256(b.add(j * Q8_0_BYTES + 2).cast()) }
                    } else {
                        _mm256_setzero_si256()
                    }
                });
                let d8 = _mm256_cvtph_ps(_mm_set_epi16(
                    bits(7),
                    bits(6),
                    bits(5),
                    bits(4),
                    bits(3),
                    bits(2),
                    bits(1),
                    bits(0),
                ));
                wd[r] = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(d8));
                let pair = |x: __m256i, y: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(x), y);
                let z = [pair(q[0], q[1]), pair(q[2], q[3]), pair(q[4], q[5]), pair(q[6], q[7])];
                for v in 0..4 {
                    let v = v as i64;
                    // Run v of blocks 0..4 into the low half, of blocks 4..8 into the high half.
                    let low =
                        _mm512_permutex2var_epi64(z[0], _mm512_set_epi64(0, 0, 0, 0, 12 + v, 8 + v, 4 + v, v), z[1]);
                    let high =
                        _mm512_permutex2var_epi64(z[2], _mm512_set_epi64(12 + v, 8 + v, 4 + v, v, 0, 0, 0, 0), z[3]);
                    w[r][v as usize] = _mm512_xor_si512(_mm512_mask_blend_epi64(0xf0, low, high), flip);
                }
            }
            for t in 0..N {
                let y = &a[t][g];
                let ys = [act(y, 0), act(y, 1), act(y, 2), act(y, 3)];
                let yd = spread(&y.d);
                // SAFETY: half_sums holds sixteen i32.
                let halves = unsafe { _mm512_loadu_si512(y.half_sums.as_ptr().cast()) };
                let start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<7>(halves));
                for r in 0..R {
                    let mut dot = _mm512_dpbusd_epi32(start, w[r][0], ys[0]);
                    dot = _mm512_dpbusd_epi32(dot, w[r][1], ys[1]);
                    dot = _mm512_dpbusd_epi32(dot, w[r][2], ys[2]);
                    dot = _mm512_dpbusd_epi32(dot, w[r][3], ys[3]);
                    let scale = _mm512_mul_ps(wd[r], yd);
                    acc[r][t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..N {
                out[r * N + t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }

    /// The 6-bit values (0..64, before the −32) of a Q6_K super-block in the tile layout.
    /// Sub-block `j = 4 n + g` of half `n` takes value `l` from byte `64 n + 32 (g % 2) + l` of
    /// `ql` (low nibble for g < 2, high for g >= 2) and bits `2 g, 2 g + 1` of byte `32 n + l`
    /// of `qh`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn values_q6_k(b: *const u8) -> [__m512i; 4] {
        // SAFETY: the caller guarantees a whole super-block at b.
        let (ql0, ql1, qh) = unsafe {
            (
                _mm512_loadu_si512(b.cast()),
                _mm512_loadu_si512(b.add(64).cast()),
                _mm512_loadu_si512(b.add(Q6_K_QH_AT).cast()),
            )
        };
        let low_shifts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
        let high_shifts = _mm512_set_epi64(6, 4, 2, 0, 6, 4, 2, 0);
        let m4 = _mm512_set1_epi8(0x0f);
        let m2 = _mm512_set1_epi8(0x03);
        std::array::from_fn(|v| {
            let v = v as i64;
            let pick_low = _mm512_set_epi64(12 + v, 8 + v, 12 + v, 8 + v, 4 + v, v, 4 + v, v);
            let low = _mm512_and_si512(
                _mm512_srlv_epi64(_mm512_permutex2var_epi64(ql0, pick_low, ql1), low_shifts),
                m4,
            );
            let pick_high = _mm512_set_epi64(4 + v, 4 + v, 4 + v, 4 + v, v, v, v, v);
            let high = _mm512_and_si512(
                _mm512_srlv_epi64(_mm512_permutexvar_epi64(pick_high, qh), high_shifts),
                m2,
            );
            _mm512_or_si512(low, _mm512_slli_epi64::<4>(high))
        })
    }

    /// Q6_K, `R` rows by `N` tokens: `d · Σ_g sc_g · Σ (q − 32)·y` over the sixteen 16-value
    /// groups, then times each block's `dy`. In the tile layout vectors 0 and 1 hold the first
    /// group of each sub-block and vectors 2 and 3 the second, so each pair chains into one
    /// integer sum; the −32 enters as the start of that chain (`−32 Σ y` of the group, in one
    /// of its two lanes) and the i8 scales as one integer multiply per group.
    // The row and token indices walk their arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn q6_k_tile<const _UNUSED: bool, const R: usize, const N: usize>(
        rows: &[&[u8]],
        a: &[&[SuperQ8]],
        out: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        for i in 0..a[0].len() {
            let mut q = [[_mm512_setzero_si512(); 4]; R];
            let mut sc = [[_mm512_setzero_si512(); 2]; R];
            let mut d = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let blk = &rows[r][i * Q6_K_BYTES..(i + 1) * Q6_K_BYTES];
                let b = blk.as_ptr();
                ahead(b, Q6_K_BYTES, R, rows[r].len());
                // SAFETY: blk holds a whole super-block.
                d[r] = _mm512_set1_ps(unsafe { f16(b.add(Q6_K_D_AT)) });
                q[r] = unsafe { values_q6_k(b) };
                // Scales 2j (first group of sub-block j) and 2j + 1, each in both of j's lanes.
                let scales = unsafe { _mm_loadu_si128(b.add(Q6_K_SCALES_AT).cast()) };
                let first = _mm_shuffle_epi8(
                    scales,
                    _mm_set_epi8(14, 14, 12, 12, 10, 10, 8, 8, 6, 6, 4, 4, 2, 2, 0, 0),
                );
                let second = _mm_shuffle_epi8(
                    scales,
                    _mm_set_epi8(15, 15, 13, 13, 11, 11, 9, 9, 7, 7, 5, 5, 3, 3, 1, 1),
                );
                sc[r] = [_mm512_cvtepi8_epi32(first), _mm512_cvtepi8_epi32(second)];
            }
            for t in 0..N {
                let y = &a[t][i];
                let ys = [act(y, 0), act(y, 1), act(y, 2), act(y, 3)];
                let yd = spread(&y.d);
                // −32 Σ y of group 2j in lane 2j, of group 2j + 1 in lane 2j + 1.
                // SAFETY: half_sums holds sixteen i32.
                let halves = unsafe { _mm512_loadu_si512(y.half_sums.as_ptr().cast()) };
                let neg = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32::<5>(halves));
                let start = [_mm512_maskz_mov_epi32(0x5555, neg), _mm512_maskz_mov_epi32(0xaaaa, neg)];
                for r in 0..R {
                    let first = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start[0], q[r][0], ys[0]), q[r][1], ys[1]);
                    let second = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start[1], q[r][2], ys[2]), q[r][3], ys[3]);
                    let sum = _mm512_add_epi32(
                        _mm512_mullo_epi32(first, sc[r][0]),
                        _mm512_mullo_epi32(second, sc[r][1]),
                    );
                    let scale = _mm512_mul_ps(d[r], yd);
                    acc[r][t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..N {
                out[r * N + t] = _mm512_reduce_add_ps(acc[r][t]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Rng;
    use crate::quant::kernels::tests::{activations, block_counts, f64_dot, random_bytes, random_row};
    use crate::quant::kernels::{dot_fn, Isa};

    const FORMATS: [QuantType; 4] = [QuantType::Q8_0, QuantType::Q4K, QuantType::Q5K, QuantType::Q6K];

    fn supers(blocks: &[BlockQ8]) -> Vec<SuperQ8> {
        let mut s = vec![SuperQ8::default(); blocks.len().div_ceil(SUBS)];
        supers_from_blocks(blocks, &mut s);
        s
    }

    /// The tiles take other operations than the scalar references (integer sums over whole
    /// super-blocks, sixteen lanes), so they agree to float rounding, relative to the products'
    /// magnitudes; the references themselves are checked against an f64 oracle in `kernels`.
    #[test]
    fn tiles_match_the_scalar_kernels_and_the_f64_oracle() {
        let mut rng = Rng::new(21);
        let isas: Vec<Isa> = Isa::available();
        for dtype in FORMATS {
            for &count in block_counts(dtype) {
                let n = count * dtype.block_size() as usize;
                let a = activations(&mut rng, n / QK, 3.0);
                let sa = supers(&a);
                for row in [random_row(&mut rng, dtype, n), random_bytes(&mut rng, dtype, n)] {
                    let scalar = f64::from(dot_fn(dtype, Isa::Scalar).unwrap()(&row, &a));
                    let (want, magnitude) = f64_dot(dtype, &row, &a);
                    for &isa in &isas {
                        let Some(k) = super_kernels(dtype, isa) else { continue };
                        let mut out = [0f32];
                        (k.tile)(&[&row], &[&sa], &mut out);
                        let got = f64::from(out[0]);
                        assert!(
                            (got - scalar).abs() <= 1e-6 * (1.0 + magnitude),
                            "{dtype} {isa:?} {count} blocks: {got} vs scalar {scalar}"
                        );
                        assert!(
                            (got - want).abs() <= 1e-3 * (1.0 + want.abs()),
                            "{dtype} {isa:?} {count} blocks: {got} vs f64 {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_tile_shape_is_bit_identical_to_one_row_by_one_token() {
        let mut rng = Rng::new(22);
        for dtype in FORMATS {
            for isa in Isa::available() {
                let Some(k) = super_kernels(dtype, isa) else { continue };
                for count in [1, 3, 11] {
                    let n = count * dtype.block_size() as usize;
                    let rows: Vec<Vec<u8>> = (0..MAX_TILE_ROWS).map(|_| random_bytes(&mut rng, dtype, n)).collect();
                    let acts: Vec<Vec<SuperQ8>> = (0..MAX_TILE_TOKENS)
                        .map(|_| supers(&activations(&mut rng, n / QK, 2.0)))
                        .collect();
                    let single = |r: usize, t: usize| {
                        let mut out = [0f32];
                        (k.tile)(&[&rows[r]], &[&acts[t]], &mut out);
                        out[0].to_bits()
                    };
                    for nr in 1..=MAX_TILE_ROWS {
                        for nt in 1..=MAX_TILE_TOKENS {
                            let rs: Vec<&[u8]> = rows[..nr].iter().map(|r| &r[..]).collect();
                            let ts: Vec<&[SuperQ8]> = acts[..nt].iter().map(|a| &a[..]).collect();
                            let mut out = vec![0f32; nr * nt];
                            (k.tile)(&rs, &ts, &mut out);
                            for r in 0..nr {
                                for t in 0..nt {
                                    assert_eq!(
                                        out[r * nt + t].to_bits(),
                                        single(r, t),
                                        "{dtype} {isa:?} {nr}x{nt} tile, row {r} token {t}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_layout_holds_every_value_once_with_its_sums() {
        let mut rng = Rng::new(23);
        let a = activations(&mut rng, SUBS, 5.0);
        let s = SuperQ8::from_blocks(&a);
        for (j, b) in a.iter().enumerate() {
            for (e, &q) in b.qs.iter().enumerate() {
                assert_eq!(s.qs[64 * (e / 8) + 8 * j + e % 8], q, "block {j} value {e}");
            }
            let first: i32 = b.qs[..16].iter().map(|&q| i32::from(q)).sum();
            assert_eq!(s.half_sums[2 * j] + s.half_sums[2 * j + 1], b.sum);
            assert_eq!(s.half_sums[2 * j], first);
            assert_eq!(s.ds[j], b.d * b.sum as f32);
        }
    }
}
