//! 16-bit float weight rows (bf16, f16) on AVX2: f32 activations, each pair's sum in two
//! independent chains; rows longer than a chunk packed at load and taken chunk by chunk.
//!
//! [`float`](super::float)'s AVX2 kernels give each row·token pair one accumulator: a one-token
//! product (decode) is then one chain of multiply-adds, and waits four cycles for each vector of
//! eight weights. That chain, not memory, bounded bf16 decode (llama-1b, one thread: 17 GB/s of
//! weights against 31 for two chains over the same mapping).
//!
//! Here each run of 16 weights (32 bytes) goes to two accumulators, eight weights each. For
//! bf16 the run is one load, split by a shift and a mask: a bf16 value is the top half of an
//! f32, so shifting a 32-bit lane left by 16 gives its low (even) element as an f32, and masking
//! off its low half gives its high (odd) element. Lane `l` of the first accumulator sums
//! elements `16k + 2l` and lane `l` of the second elements `16k + 2l + 1`, for every `k` in
//! order. The activations are laid out to match once per product ([`to_pair_order`]): in each
//! run of 16, the eight even-indexed values, then the eight odd-indexed ones, padded with zeros
//! to a whole run. For f16 the halves are the run's first and last eight weights (F16C converts
//! eight at a time), which meet the activations as they are. The two accumulators are added,
//! then the eight lanes in [`float`](super::float)'s fixed order. The activations stay f32
//! (unlike [`bf16dot`](super::bf16dot), which rounds them to bf16 for its instruction).
//!
//! Every tile shape takes the same operations in the same order for each pair, so a tile's
//! results are bit-identical to the one-row kernel's: the engine's batches never change a
//! token's numbers. A one-row product runs both accumulators at once; the prefill tile, three
//! rows by three tokens, takes the first halves of 32 runs, then their second halves, so that
//! its nine pairs keep one accumulator each in the 16 registers.
//!
//! A down projection's 8,192 f32 activations (32 KiB) fill L1 on their own, and its rows
//! streamed at half speed. Rows longer than [`CHUNK_WEIGHTS`] are packed at load, per task,
//! chunk by chunk ([`pack_chunks`]), and a product takes a chunk through every row of the task
//! before the next ([`chunk_rows_times`]), carrying the pairs' accumulators: each token's chunk
//! of activations stays in L1 and a decode reads the weights front to back.

use super::float::FloatKernels;
use super::kernels::Isa;
use super::{QuantType, TASK_ROWS};

/// Weights per load: one run of the pair order.
pub const RUN: usize = 16;

/// Format codes (as [`float`](super::float)'s, for its `by_shape!`).
#[cfg(target_arch = "x86_64")]
const F16: u8 = 1;
#[cfg(target_arch = "x86_64")]
const BF16: u8 = 2;

/// Whether the kernels for `dtype` read activations in pair order ([`to_pair_order`]): bf16's
/// do; f16's read them as they are (their halves are a run's first and last eight weights).
pub fn reads_pair_order(dtype: QuantType) -> bool {
    dtype == QuantType::BF16
}

/// Activation values per token the kernels for `dtype` read for rows of `cols` weights.
pub fn input_len(dtype: QuantType, cols: usize) -> usize {
    if reads_pair_order(dtype) {
        pair_len(cols)
    } else {
        cols
    }
}

/// Activation values per token in pair order for rows of `cols` weights: whole runs.
pub fn pair_len(cols: usize) -> usize {
    cols.div_ceil(RUN) * RUN
}

/// One token's activations `x` in pair order (see the module's notes): `out` holds
/// [`pair_len`]`(x.len())` values, zeros past the end of `x`.
pub fn to_pair_order(x: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), pair_len(x.len()), "whole runs of pair order");
    for (run, o) in out.chunks_exact_mut(RUN).enumerate() {
        let x = &x[run * RUN..x.len().min((run + 1) * RUN)];
        let (even, odd) = o.split_at_mut(RUN / 2);
        for (j, (e, d)) in even.iter_mut().zip(odd).enumerate() {
            *e = x.get(2 * j).copied().unwrap_or(0.0);
            *d = x.get(2 * j + 1).copied().unwrap_or(0.0);
        }
    }
}

/// The kernels for `dtype` on `isa`, or `None` where they do not apply: formats other than
/// bf16 and f16, and ISAs other than AVX2 (AVX-512 has its own float kernels, and a bf16 dot
/// product where the CPU has AVX-512 BF16).
///
/// Unlike [`float`](super::float)'s kernels, each row holds exactly the row's weights (its
/// length, in bytes, is twice their number) and each token [`input_len`] values.
pub fn pair_kernels(dtype: QuantType, isa: Isa) -> Option<FloatKernels<f32>> {
    if isa != Isa::Avx2 {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (dot, tile): (super::float::FloatDotFn, super::float::FloatTileFn) = match dtype {
            QuantType::BF16 => (avx2::dot::<BF16>, avx2::tile::<BF16>),
            QuantType::F16 => (avx2::dot::<F16>, avx2::tile::<F16>),
            _ => return None,
        };
        // Nine accumulators (one half of each pair's at a time), three activation vectors, the
        // weights and their half: 14 of 16 registers. SmolLM2 bf16 prefill (256 tokens, 2
        // threads, alternating) measured 690-758 tok/s at 3x3, 629-717 at 2x4 and 658-702 at 2x2
        // (both halves at once); llama-1b 90-94 at 3x3 and 88-92 at 2x2. f16 (llama-1b): 82-87
        // at 3x3, 85-86 at 4x2, 80 at 2x4, 62-65 at 1x4.
        Some(FloatKernels {
            dot,
            tile,
            tile_rows: 3,
            tile_tokens: 3,
            decode_rows: 1,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = dtype;
        None
    }
}

/// Weights per chunk of a long row: a token's chunk of activations (8 KiB of f32) stays in L1
/// while the rows' chunks go by.
pub const CHUNK_WEIGHTS: usize = 2048;

/// One pair's two accumulators (the runs' first halves', then their second halves') between
/// the chunks of its rows.
pub type Carry = [f32; 16];

/// [`FloatTileFn`](super::float::FloatTileFn) over one chunk of the rows: `rows` and `xs` hold
/// the chunk's weights and activations (a whole number of runs, except in a row's last chunk),
/// `carry[r * xs.len() + t]` each pair's accumulators, read first and written back; with `out`,
/// the chunk is the rows' last and the pairs' sums go there instead (as the tile would give).
pub type PairSpanFn = fn(rows: &[&[u8]], xs: &[&[f32]], carry: &mut [Carry], out: Option<&mut [f32]>);

/// The pair kernels for rows longer than [`CHUNK_WEIGHTS`], which take them chunk by chunk.
#[derive(Clone, Copy, Debug)]
pub struct ChunkKernels {
    pub span: PairSpanFn,
    /// The prefill tile: at most this many rows...
    pub tile_rows: usize,
    /// ...by at most this many tokens.
    pub tile_tokens: usize,
}

/// [`pair_kernels`]' chunked form (`None` where those are).
pub fn chunk_kernels(dtype: QuantType, isa: Isa) -> Option<ChunkKernels> {
    let k = pair_kernels(dtype, isa)?;
    #[cfg(target_arch = "x86_64")]
    {
        Some(ChunkKernels {
            span: if dtype == QuantType::F16 {
                avx2::span::<F16>
            } else {
                avx2::span::<BF16>
            },
            tile_rows: k.tile_rows,
            tile_tokens: k.tile_tokens,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = k;
        None
    }
}

/// The chunks of a row of `cols` weights: `(first weight, weights)`.
pub fn chunks(cols: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..cols)
        .step_by(CHUNK_WEIGHTS)
        .map(move |c0| (c0, CHUNK_WEIGHTS.min(cols - c0)))
}

/// `src`'s `count` 16-bit rows of `cols` weights (row-major) into `dst` chunk by chunk: chunk `k`
/// of every row, in row order, then chunk `k + 1`. A task reading the rows chunk by chunk then
/// reads `dst` front to back.
pub fn pack_chunks(src: &[u8], count: usize, cols: usize, dst: &mut [u8]) {
    assert!(
        src.len() == 2 * count * cols && dst.len() == src.len(),
        "{count} rows of {cols} 16-bit weights"
    );
    for (c0, len) in chunks(cols) {
        for r in 0..count {
            let at = 2 * (count * c0 + r * len);
            dst[at..at + 2 * len].copy_from_slice(&src[2 * (r * cols + c0)..][..2 * len]);
        }
    }
}

/// A task's rows (`out[0].len()` of them, at most [`TASK_ROWS`]) packed by [`pack_chunks`]
/// in `bytes`, times every token of `x` (as the kernels read them: [`input_len`]`(dtype, cols)`
/// values a token; one per `out[t]`): `out[t][i]` receives row `i` · token `t`. Per tile of tokens the
/// chunks go in order, each through every tile of rows, the pairs' accumulators carried from
/// chunk to chunk; a single token (decode) takes a row at a time, so the weights are read front
/// to back.
pub fn chunk_rows_times(
    bytes: &[u8],
    dtype: QuantType,
    cols: usize,
    out: &mut [&mut [f32]],
    x: &[f32],
    k: ChunkKernels,
) {
    use super::float::{MAX_TILE_ROWS, MAX_TILE_TOKENS};
    let (n, rows) = (out.len(), out[0].len());
    assert!(rows <= TASK_ROWS, "{rows} rows in one task");
    let input = |cols: usize| input_len(dtype, cols);
    let stride = input(cols);
    let (tile_rows, tile_tokens) = if n == 1 { (1, 1) } else { (k.tile_rows, k.tile_tokens) };
    let last = cols.saturating_sub(1) / CHUNK_WEIGHTS;
    let mut carry = [[0f32; 16]; TASK_ROWS * MAX_TILE_TOKENS];
    let mut results = [0f32; MAX_TILE_ROWS * MAX_TILE_TOKENS];
    for t0 in (0..n).step_by(tile_tokens) {
        let tn = tile_tokens.min(n - t0);
        carry[..rows * tn].fill([0f32; 16]);
        for (c, (c0, len)) in chunks(cols).enumerate() {
            // Unused slots repeat the last token or row; only the first `tn` / `rn` are passed.
            let xs: [&[f32]; MAX_TILE_TOKENS] =
                std::array::from_fn(|j| &x[(t0 + j).min(n - 1) * stride + c0..][..input(len)]);
            let chunk = &bytes[2 * rows * c0..][..2 * rows * len];
            for i0 in (0..rows).step_by(tile_rows) {
                let rn = tile_rows.min(rows - i0);
                let ws: [&[u8]; MAX_TILE_ROWS] =
                    std::array::from_fn(|j| &chunk[2 * (i0 + j).min(rows - 1) * len..][..2 * len]);
                let pairs = &mut carry[i0 * tn..(i0 + rn) * tn];
                if c < last {
                    (k.span)(&ws[..rn], &xs[..tn], pairs, None);
                    continue;
                }
                (k.span)(&ws[..rn], &xs[..tn], pairs, Some(&mut results[..rn * tn]));
                for (r, ys) in results[..rn * tn].chunks_exact(tn).enumerate() {
                    for (y, o) in ys.iter().zip(&mut out[t0..t0 + tn]) {
                        o[i0 + r] = *y;
                    }
                }
            }
        }
    }
}

/// Panics unless a tile call's arguments are in range; returns the rows' length in weights.
#[cfg(target_arch = "x86_64")]
fn check_tile<const D: u8>(rows: &[&[u8]], xs: &[&[f32]], results: usize) -> usize {
    use super::float::{MAX_TILE_ROWS, MAX_TILE_TOKENS};
    assert!(
        (1..=MAX_TILE_ROWS).contains(&rows.len()) && (1..=MAX_TILE_TOKENS).contains(&xs.len()),
        "tile of {} rows by {} tokens",
        rows.len(),
        xs.len()
    );
    let bytes = rows[0].len();
    assert!(
        bytes.is_multiple_of(2) && rows.iter().all(|r| r.len() == bytes),
        "rows of one whole number of 16-bit weights"
    );
    let cols = bytes / 2;
    let want = if D == BF16 { pair_len(cols) } else { cols };
    assert!(
        xs.iter().all(|x| x.len() == want),
        "tokens of {want} values for {cols} weights"
    );
    assert_eq!(results, rows.len() * xs.len(), "one result per row and token");
    cols
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::float::{by_shape, hsum256};
    use super::super::STREAM_AHEAD;
    use super::{check_tile, Carry, F16, RUN};
    use std::arch::x86_64::*;

    // The safe wrappers are only handed out by `pair_kernels` for `Isa::Avx2`, which
    // `Isa::detect` / `Isa::available` return only after confirming AVX2, FMA and F16C (F16C
    // only so that `hsum256` inlines).

    pub fn dot<const D: u8>(row: &[u8], x: &[f32]) -> f32 {
        let mut out = [0f32];
        tile::<D>(&[row], &[x], &mut out);
        out[0]
    }

    pub fn tile<const D: u8>(rows: &[&[u8]], xs: &[&[f32]], out: &mut [f32]) {
        check_tile::<D>(rows, xs, out.len());
        // SAFETY: AVX2, FMA and F16C are present (see above); `check_tile` bounds every load.
        unsafe { by_shape!(tile_impl, D, rows, xs, (None, Some(out))) }
    }

    pub fn span<const D: u8>(rows: &[&[u8]], xs: &[&[f32]], carry: &mut [Carry], out: Option<&mut [f32]>) {
        check_tile::<D>(rows, xs, carry.len());
        if let Some(out) = &out {
            assert_eq!(out.len(), carry.len(), "one result per pair");
        }
        // SAFETY: as for `tile`.
        unsafe { by_shape!(tile_impl, D, rows, xs, (Some(carry), out)) }
    }

    /// Half `H` of a run of 16 weights at `p` as f32: bf16's even (`H` = 0) or odd elements,
    /// f16's first or last eight.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load<const D: u8, const H: usize>(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 32 bytes readable at p.
        unsafe {
            if D == F16 {
                return _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * H).cast()));
            }
            let w = _mm256_loadu_si256(p.cast());
            if H == 0 {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
            } else {
                _mm256_castsi256_ps(_mm256_and_si256(w, _mm256_set1_epi32(0xffff_0000_u32 as i32)))
            }
        }
    }

    /// Runs of 16 a tile of more than four pairs takes in one half before the other.
    const CHUNK: usize = 32;

    /// `R` rows by `T` tokens: two accumulators per pair (even and odd weights of each run). Up
    /// to four pairs (eight accumulators) both halves of a run go in at once; larger tiles take
    /// the even halves of [`CHUNK`] runs, then their odd halves, with the other half's
    /// accumulators set aside meanwhile, so that only one accumulator per pair is in a register.
    /// Either way each accumulator takes the runs in order. A last partial run is copied into a
    /// zero-filled buffer, whose weights meet the tokens' zero padding. Every pair sees the same
    /// operations whatever `R` and `T`.
    // The row and token indices walk the pointer arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_impl<const D: u8, const R: usize, const T: usize>(
        rows: &[&[u8]],
        xs: &[&[f32]],
        (carry, out): (Option<&mut [Carry]>, Option<&mut [f32]>),
    ) {
        let _ = D;
        let cols = rows[0].len() / 2;
        let whole = cols / RUN * RUN;
        let mut acc = [[[_mm256_setzero_ps(); 2]; T]; R];
        if let Some(carry) = &carry {
            for r in 0..R {
                for t in 0..T {
                    let c = &carry[r * T + t];
                    // SAFETY: a carry is 16 f32.
                    acc[r][t] = unsafe { [_mm256_loadu_ps(c.as_ptr()), _mm256_loadu_ps(c.as_ptr().add(8))] };
                }
            }
        }
        let mut x = [[_mm256_setzero_ps(); 2]; T];
        let mut c = 0;
        if R * T > 4 {
            while c < whole {
                let end = (c + CHUNK * RUN).min(whole);
                // SAFETY: c..end are whole runs of every row and token (see below).
                unsafe {
                    half::<D, 0, R, T>(rows, xs, c, end, &mut acc);
                    half::<D, 1, R, T>(rows, xs, c, end, &mut acc);
                }
                c = end;
            }
        }
        while c < whole {
            for t in 0..T {
                // SAFETY: c + 16 <= whole <= pair_len(cols), the length of every token.
                unsafe {
                    x[t] = [
                        _mm256_loadu_ps(xs[t].as_ptr().add(c)),
                        _mm256_loadu_ps(xs[t].as_ptr().add(c + RUN / 2)),
                    ];
                }
            }
            for r in 0..R {
                // SAFETY: every row holds cols >= c + 16 weights (checked by the wrapper).
                let p = unsafe { rows[r].as_ptr().add(2 * c) };
                if T == 1 && c % (2 * RUN) == 0 {
                    // One token (decode) streams the rows: ask for them ahead, a cache line
                    // (two runs) at a time. A hint that never faults, even past the mapping.
                    _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(STREAM_AHEAD).cast());
                }
                // SAFETY: as above.
                let (even, odd) = unsafe { (load::<D, 0>(p), load::<D, 1>(p)) };
                for t in 0..T {
                    acc[r][t][0] = _mm256_fmadd_ps(even, x[t][0], acc[r][t][0]);
                    acc[r][t][1] = _mm256_fmadd_ps(odd, x[t][1], acc[r][t][1]);
                }
            }
            c += RUN;
        }
        if whole < cols {
            for t in 0..T {
                // The token's last run, zero-padded (bf16's pair order already is).
                let mut rest = [0f32; RUN];
                let have = xs[t].len() - whole;
                rest[..have].copy_from_slice(&xs[t][whole..]);
                // SAFETY: rest is 16 f32.
                unsafe {
                    x[t] = [
                        _mm256_loadu_ps(rest.as_ptr()),
                        _mm256_loadu_ps(rest.as_ptr().add(RUN / 2)),
                    ];
                }
            }
            for r in 0..R {
                let mut tail = [0u8; 2 * RUN];
                tail[..2 * (cols - whole)].copy_from_slice(&rows[r][2 * whole..]);
                // SAFETY: tail is 32 bytes.
                let (even, odd) = unsafe { (load::<D, 0>(tail.as_ptr()), load::<D, 1>(tail.as_ptr())) };
                for t in 0..T {
                    acc[r][t][0] = _mm256_fmadd_ps(even, x[t][0], acc[r][t][0]);
                    acc[r][t][1] = _mm256_fmadd_ps(odd, x[t][1], acc[r][t][1]);
                }
            }
        }
        match (out, carry) {
            (Some(out), _) => {
                for r in 0..R {
                    for t in 0..T {
                        out[r * T + t] = hsum256(_mm256_add_ps(acc[r][t][0], acc[r][t][1]));
                    }
                }
            }
            (None, Some(carry)) => {
                for r in 0..R {
                    for t in 0..T {
                        let c = &mut carry[r * T + t];
                        // SAFETY: a carry is 16 f32.
                        unsafe {
                            _mm256_storeu_ps(c.as_mut_ptr(), acc[r][t][0]);
                            _mm256_storeu_ps(c.as_mut_ptr().add(8), acc[r][t][1]);
                        }
                    }
                }
            }
            (None, None) => unreachable!("a tile call without a carry writes its results"),
        }
    }

    /// Half `H` (0: even weights, 1: odd) of runs `c..end` (whole runs, within every row and
    /// token) into `acc[..][..][H]`.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn half<const D: u8, const H: usize, const R: usize, const T: usize>(
        rows: &[&[u8]],
        xs: &[&[f32]],
        mut c: usize,
        end: usize,
        acc: &mut [[[__m256; 2]; T]; R],
    ) {
        let mut a = [[_mm256_setzero_ps(); T]; R];
        for r in 0..R {
            for t in 0..T {
                a[r][t] = acc[r][t][H];
            }
        }
        let mut x = [_mm256_setzero_ps(); T];
        while c < end {
            for t in 0..T {
                // SAFETY: c + 16 <= end, within every token (the caller's guarantee).
                x[t] = unsafe { _mm256_loadu_ps(xs[t].as_ptr().add(c + H * RUN / 2)) };
            }
            for r in 0..R {
                // SAFETY: as above, for every row's 2·end bytes.
                let w = unsafe { load::<D, H>(rows[r].as_ptr().add(2 * c)) };
                for t in 0..T {
                    a[r][t] = _mm256_fmadd_ps(w, x[t], a[r][t]);
                }
            }
            c += RUN;
        }
        for r in 0..R {
            for t in 0..T {
                acc[r][t][H] = a[r][t];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::float::{float_bytes, half_checks};
    use crate::util::Rng;

    /// Row lengths: one weight, around a run of 16, odd, SmolLM2's and llama-1b's sizes.
    const COLS: [usize; 10] = [1, 7, 15, 16, 17, 31, 33, 100, 576, 2048];

    fn uniform(rng: &mut Rng, n: usize, spread: f64) -> Vec<f32> {
        (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect()
    }

    fn paired(x: &[f32]) -> Vec<f32> {
        let mut out = vec![f32::NAN; pair_len(x.len())];
        to_pair_order(x, &mut out);
        out
    }

    /// The formats these kernels read.
    const FORMATS: [QuantType; 2] = [QuantType::BF16, QuantType::F16];

    /// The kernels for `dtype` on this CPU, or `None` (the test then checks nothing more and
    /// says so).
    fn kernels(dtype: QuantType) -> Option<FloatKernels<f32>> {
        let k = pair_kernels(dtype, Isa::Avx2).filter(|_| Isa::available().contains(&Isa::Avx2));
        if k.is_none() {
            eprintln!("no AVX2 on this CPU: the pair kernels are not run");
        }
        k
    }

    /// One token's activations as `dtype`'s kernels read them.
    fn input(dtype: QuantType) -> fn(&[f32]) -> Vec<f32> {
        if reads_pair_order(dtype) {
            paired
        } else {
            <[f32]>::to_vec
        }
    }

    #[test]
    fn pair_order_puts_even_then_odd_values_in_each_run() {
        let x: Vec<f32> = (0..37).map(|i| i as f32 + 1.0).collect();
        let p = paired(&x);
        assert_eq!(p.len(), 48);
        for (i, v) in p.iter().enumerate() {
            let (run, at) = (i / RUN, i % RUN);
            // Slot `at` of a run holds its element 2·at (first half) or 2·(at - 8) + 1.
            let src = run * RUN + if at < RUN / 2 { 2 * at } else { 2 * (at - RUN / 2) + 1 };
            let want = if src < x.len() { src as f32 + 1.0 } else { 0.0 };
            assert_eq!(*v, want, "slot {i}");
        }
    }

    #[test]
    fn kernels_match_the_f64_product() {
        for dtype in FORMATS {
            let Some(k) = kernels(dtype) else { return };
            half_checks::match_the_f64_product(&k, dtype, 51, &COLS, input(dtype), |x| x);
        }
    }

    #[test]
    fn tiles_are_bit_identical_to_the_one_row_kernel() {
        for dtype in FORMATS {
            let Some(k) = kernels(dtype) else { return };
            half_checks::tiles_match(&k, dtype, 52, &COLS, input(dtype));
        }
    }

    #[test]
    fn each_weight_meets_its_own_activation() {
        // A single weight of 1 at every position of rows 1..=40 long: the product must be that
        // position's activation exactly (a swapped half or a misplaced tail fails).
        for (dtype, one) in [(QuantType::BF16, 0x3f80u16), (QuantType::F16, 0x3c00)] {
            let Some(k) = kernels(dtype) else { return };
            for cols in 1..=40 {
                let x: Vec<f32> = (0..cols).map(|i| 1.0 + i as f32 / 64.0).collect();
                let px = input(dtype)(&x);
                for at in 0..cols {
                    let mut row = vec![0u16; cols];
                    row[at] = one;
                    let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                    assert_eq!((k.dot)(&bytes, &px), x[at], "{dtype} weight {at} of {cols}");
                }
            }
        }
    }

    #[test]
    fn special_weights_pass_through_exactly() {
        let Some(k) = kernels(QuantType::BF16) else { return };
        half_checks::special_weights_pass_through(&k, paired);
    }

    #[test]
    fn packed_chunks_hold_each_rows_chunks_in_order() {
        // Weight i of row r holds r * 10,000 + i (as u16 pairs), so every slot names its source.
        for (count, cols) in [(1, 5000), (3, 2048), (16, 4100)] {
            let src: Vec<u8> = (0..count * cols)
                .flat_map(|k| (((k / cols) * 10_000 + k % cols) as u32).to_le_bytes()[..2].to_vec())
                .collect();
            let mut dst = vec![0u8; src.len()];
            pack_chunks(&src, count, cols, &mut dst);
            let mut at = 0;
            for (c0, len) in chunks(cols) {
                for r in 0..count {
                    assert_eq!(
                        dst[at..at + 2 * len],
                        src[2 * (r * cols + c0)..][..2 * len],
                        "chunk at {c0}, row {r}"
                    );
                    at += 2 * len;
                }
            }
            assert_eq!(at, dst.len());
        }
    }

    #[test]
    fn a_row_taken_in_chunks_gives_the_tiles_bits() {
        let mut rng = Rng::new(53);
        // Two whole chunks and a last one of whole runs, or ending in a partial run.
        for (dtype, cols) in FORMATS
            .into_iter()
            .flat_map(|d| [(d, 2 * CHUNK_WEIGHTS + 48), (d, 2 * CHUNK_WEIGHTS + 7)])
        {
            let Some(k) = kernels(dtype) else { return };
            let c = chunk_kernels(dtype, Isa::Avx2).unwrap();
            let rows: Vec<Vec<u8>> = (0..2)
                .map(|_| float_bytes(&uniform(&mut rng, cols, 1.0), dtype).0)
                .collect();
            let xs: Vec<Vec<f32>> = (0..3).map(|_| input(dtype)(&uniform(&mut rng, cols, 2.0))).collect();
            let row_refs: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
            let x_refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();
            let mut whole = vec![0f32; 6];
            (k.tile)(&row_refs, &x_refs, &mut whole);
            let mut carry = vec![[0f32; 16]; 6];
            let mut out = [f32::NAN; 6];
            let last = chunks(cols).count() - 1;
            for (i, (c0, len)) in chunks(cols).enumerate() {
                let ws: Vec<&[u8]> = rows.iter().map(|r| &r[2 * c0..2 * (c0 + len)]).collect();
                let xc: Vec<&[f32]> = xs.iter().map(|x| &x[c0..c0 + input_len(dtype, len)]).collect();
                (c.span)(&ws, &xc, &mut carry, (i == last).then_some(&mut out[..]));
            }
            assert_eq!(
                out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{dtype} cols {cols}"
            );
        }
    }

    #[test]
    fn only_16_bit_float_rows_on_avx2_have_these_kernels() {
        for dtype in QuantType::ALL {
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                let want = FORMATS.contains(&dtype) && isa == Isa::Avx2 && cfg!(target_arch = "x86_64");
                assert_eq!(pair_kernels(dtype, isa).is_some(), want, "{dtype} on {isa:?}");
                assert_eq!(chunk_kernels(dtype, isa).is_some(), want, "{dtype} on {isa:?}, chunked");
            }
        }
    }
}
