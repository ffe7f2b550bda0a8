//! `y = x · Wᵀ` kernels for weight rows stored as f32, f16 or bf16, in a scalar reference version
//! and SIMD versions chosen at run time from the CPU's features.
//!
//! Weight rows are the file's little-endian bytes, read in place at any alignment; activations
//! stay f32 (they are never rounded to the weights' precision) and products are summed in f32.
//! Every result of a tile call is bit-identical to the one-row, one-token kernel on that row and
//! token, so how rows and tokens are grouped into tiles never changes the numbers. On a CPU with
//! AVX-512 BF16, bf16 rows take [`bf16dot`](super::bf16dot)'s kernels instead, which round the
//! activations to bf16; on AVX2, bf16 and f16 rows take [`halfpair`](super::halfpair)'s, which
//! sum each pair in two chains (matrices pick their kernels in [`matmul`](super::matmul)).

use super::kernels::Isa;
use super::QuantType;

/// Most weight rows one tile call takes.
pub const MAX_TILE_ROWS: usize = 4;

/// Most tokens one tile call takes.
pub const MAX_TILE_TOKENS: usize = 4;

/// The float formats these kernels read.
pub const FLOAT_FORMATS: [QuantType; 3] = [QuantType::F32, QuantType::F16, QuantType::BF16];

/// One weight row · one token: `row` holds `x.len()` weights in the format (and may be longer).
/// Activations are f32, or bf16 bits for [`bf16dot`](super::bf16dot)'s kernels.
pub type FloatDotFn<A = f32> = fn(row: &[u8], x: &[A]) -> f32;

/// `rows.len()` weight rows (1..=[`MAX_TILE_ROWS`]) times `xs.len()` tokens
/// (1..=[`MAX_TILE_TOKENS`]), all `xs` of one length: `out[r * xs.len() + t]` is row `r` ·
/// token `t`, bit-identical to [`FloatDotFn`] on that pair. Each converted weight vector is used
/// for every token of the tile, each loaded activation vector for every row.
pub type FloatTileFn<A = f32> = fn(rows: &[&[u8]], xs: &[&[A]], out: &mut [f32]);

/// The kernels for one float format on one ISA, over activations of type `A`.
#[derive(Clone, Copy)]
pub struct FloatKernels<A = f32> {
    pub dot: FloatDotFn<A>,
    pub tile: FloatTileFn<A>,
    /// The tile shape that runs best on this ISA (the largest that keeps every accumulator in a
    /// register): at most this many rows...
    pub tile_rows: usize,
    /// ...by at most this many tokens.
    pub tile_tokens: usize,
    /// Rows per tile for a single token (decode). One: the weights then stream from memory in
    /// one sequential run, which measured over twice as fast as four interleaved rows (kernels
    /// bench, "streamed"); the tiles' gain in L2 does not apply to a model's weights.
    pub decode_rows: usize,
}

impl<A> std::fmt::Debug for FloatKernels<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FloatKernels")
            .field("tile_rows", &self.tile_rows)
            .field("tile_tokens", &self.tile_tokens)
            .field("decode_rows", &self.decode_rows)
            .finish_non_exhaustive()
    }
}

/// Format codes for the const-generic kernels (one monomorphized kernel per format).
const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

/// Bytes per element of the format code `D`.
const fn elem_bytes(d: u8) -> usize {
    if d == F32 {
        4
    } else {
        2
    }
}

/// The kernels for `dtype` on `isa`, or `None` when `dtype` is not a float format.
pub fn float_kernels(dtype: QuantType, isa: Isa) -> Option<FloatKernels> {
    Some(match dtype {
        QuantType::F32 => kernels_for::<F32>(isa),
        QuantType::F16 => kernels_for::<F16>(isa),
        QuantType::BF16 => kernels_for::<BF16>(isa),
        _ => return None,
    })
}

fn kernels_for<const D: u8>(isa: Isa) -> FloatKernels {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // 16 accumulators, four activation vectors and a weight vector: 21 of 32 registers.
        return FloatKernels {
            dot: avx512::dot::<D>,
            tile: avx512::tile::<D>,
            tile_rows: 4,
            tile_tokens: 4,
            decode_rows: 1,
        };
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // 8 accumulators, four activation vectors and a weight vector: 13 of 16 registers. 4x3
        // fills all 16 and measured half as fast for f16 (kernels bench).
        return FloatKernels {
            dot: avx2::dot::<D>,
            tile: avx2::tile::<D>,
            tile_rows: 2,
            tile_tokens: 4,
            decode_rows: 1,
        };
    }
    // Other ISAs (and `FINLLM_FORCE_SCALAR`) use the reference.
    let _ = isa;
    FloatKernels {
        dot: scalar::dot::<D>,
        tile: scalar::tile::<D>,
        tile_rows: 4,
        tile_tokens: 4,
        decode_rows: 1,
    }
}

/// Panics unless a tile call's arguments are in range; returns the row length in elements.
pub(super) fn check_tile<const D: u8, A>(rows: &[&[u8]], xs: &[&[A]], out: &[f32]) -> usize {
    assert!(
        (1..=MAX_TILE_ROWS).contains(&rows.len()) && (1..=MAX_TILE_TOKENS).contains(&xs.len()),
        "tile of {} rows by {} tokens",
        rows.len(),
        xs.len()
    );
    let cols = xs[0].len();
    assert!(xs.iter().all(|x| x.len() == cols), "tokens of one length");
    assert!(
        rows.iter().all(|r| r.len() >= cols * elem_bytes(D)),
        "weight rows hold {cols} elements"
    );
    assert_eq!(out.len(), rows.len() * xs.len(), "one result per row and token");
    cols
}

/// Calls `$imp::<$d, R, T>` for the tile's shape (checked by [`check_tile`] first).
#[cfg(target_arch = "x86_64")]
macro_rules! by_shape {
    ($imp:ident, $d:ident, $rows:expr, $xs:expr, $out:expr) => {
        match ($rows.len(), $xs.len()) {
            (1, 1) => $imp::<$d, 1, 1>($rows, $xs, $out),
            (1, 2) => $imp::<$d, 1, 2>($rows, $xs, $out),
            (1, 3) => $imp::<$d, 1, 3>($rows, $xs, $out),
            (1, 4) => $imp::<$d, 1, 4>($rows, $xs, $out),
            (2, 1) => $imp::<$d, 2, 1>($rows, $xs, $out),
            (2, 2) => $imp::<$d, 2, 2>($rows, $xs, $out),
            (2, 3) => $imp::<$d, 2, 3>($rows, $xs, $out),
            (2, 4) => $imp::<$d, 2, 4>($rows, $xs, $out),
            (3, 1) => $imp::<$d, 3, 1>($rows, $xs, $out),
            (3, 2) => $imp::<$d, 3, 2>($rows, $xs, $out),
            (3, 3) => $imp::<$d, 3, 3>($rows, $xs, $out),
            (3, 4) => $imp::<$d, 3, 4>($rows, $xs, $out),
            (4, 1) => $imp::<$d, 4, 1>($rows, $xs, $out),
            (4, 2) => $imp::<$d, 4, 2>($rows, $xs, $out),
            (4, 3) => $imp::<$d, 4, 3>($rows, $xs, $out),
            (4, 4) => $imp::<$d, 4, 4>($rows, $xs, $out),
            (r, t) => unreachable!("tile of {r} rows by {t} tokens passed the check"),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use by_shape;

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::hsum as hsum256;
#[cfg(target_arch = "x86_64")]
pub(super) use avx512::hsum as hsum512;

/// The reference: element by element in eight interleaved f32 partial sums (lane `l` takes
/// elements `8k + l`), added pairwise at the end. The lanes keep the sum as accurate as the SIMD
/// versions' and let compilers vectorize it on CPUs finllm has no SIMD kernel for.
pub mod scalar {
    use super::*;

    const LANES: usize = 8;

    /// Element `i` of a row in format `D`.
    #[inline(always)]
    fn value<const D: u8>(row: &[u8], i: usize) -> f32 {
        match D {
            F32 => f32::from_le_bytes([row[4 * i], row[4 * i + 1], row[4 * i + 2], row[4 * i + 3]]),
            F16 => f16_to_f32(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])),
            // bf16 is the top half of an f32.
            _ => f32::from_bits(u32::from(u16::from_le_bytes([row[2 * i], row[2 * i + 1]])) << 16),
        }
    }

    /// f16 bits as f32, exactly (subnormals, infinities and NaNs included), without branches,
    /// so the loop vectorizes on any CPU (`half` converts in software where F16C is not enabled
    /// at build time, ten times slower here).
    #[inline(always)]
    pub(super) fn f16_to_f32(bits: u16) -> f32 {
        let bits = u32::from(bits);
        let sign = (bits & 0x8000) << 16;
        let magnitude = (bits & 0x7fff) << 13;
        // Exponent and mantissa in f32 position, rescaled by 2^112 from f16's exponent bias (15)
        // to f32's (127); subnormals come out normalised from the (exact) multiplication.
        let finite = (f32::from_bits(magnitude) * f32::from_bits(0x7780_0000)).to_bits();
        // Infinity and NaN keep their mantissa under an all-ones exponent.
        let special = magnitude | 0x7f80_0000;
        f32::from_bits(sign | if magnitude >= 0x7c00 << 13 { special } else { finite })
    }

    pub fn dot<const D: u8>(row: &[u8], x: &[f32]) -> f32 {
        let size = elem_bytes(D);
        assert!(row.len() >= x.len() * size, "weight row shorter than the activations");
        let mut acc = [0f32; LANES];
        let whole = x.len() / LANES * LANES;
        let (w_chunks, x_chunks) = (
            row[..whole * size].chunks_exact(LANES * size),
            x[..whole].chunks_exact(LANES),
        );
        for (w, x) in w_chunks.zip(x_chunks) {
            step::<D>(&mut acc, w, x);
        }
        if whole < x.len() {
            // The rest padded with zeros (which add nothing), so every lane is indexed by a
            // constant and the sums stay in registers.
            let rest = x.len() - whole;
            let mut w = [0u8; LANES * 4];
            w[..rest * size].copy_from_slice(&row[whole * size..x.len() * size]);
            let mut xs = [0f32; LANES];
            xs[..rest].copy_from_slice(&x[whole..]);
            step::<D>(&mut acc, &w, &xs);
        }
        let quads = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
        (quads[0] + quads[2]) + (quads[1] + quads[3])
    }

    /// Eight weights (`w`) times eight activations (`x`) into the eight partial sums.
    #[inline(always)]
    fn step<const D: u8>(acc: &mut [f32; LANES], w: &[u8], x: &[f32]) {
        // Decoding all lanes before multiplying lets compilers vectorize both steps.
        let mut v = [0f32; LANES];
        for (l, v) in v.iter_mut().enumerate() {
            *v = value::<D>(w, l);
        }
        for ((a, v), x) in acc.iter_mut().zip(v).zip(x) {
            *a += v * x;
        }
    }

    pub fn tile<const D: u8>(rows: &[&[u8]], xs: &[&[f32]], out: &mut [f32]) {
        check_tile::<D, f32>(rows, xs, out);
        for (row, out) in rows.iter().zip(out.chunks_exact_mut(xs.len())) {
            for (x, o) in xs.iter().zip(out) {
                *o = dot::<D>(row, x);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    // The safe wrappers are only handed out by `float_kernels` for `Isa::Avx2` / `Isa::Avx512`,
    // which `Isa::detect` / `Isa::available` return only after confirming AVX2, FMA and F16C.

    /// f32 lanes per vector.
    const W: usize = 8;

    pub fn dot<const D: u8>(row: &[u8], x: &[f32]) -> f32 {
        let mut out = [0f32];
        tile::<D>(&[row], &[x], &mut out);
        out[0]
    }

    pub fn tile<const D: u8>(rows: &[&[u8]], xs: &[&[f32]], out: &mut [f32]) {
        check_tile::<D, f32>(rows, xs, out);
        // SAFETY: AVX2, FMA and F16C are present (see above); `check_tile` bounds every load.
        unsafe { by_shape!(tile_impl, D, rows, xs, out) }
    }

    /// Eight weights in format `D` at `p`, as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load<const D: u8>(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 8 elements (32 or 16 bytes) readable at p.
        unsafe {
            match D {
                F32 => _mm256_loadu_ps(p.cast()),
                F16 => _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(
                    p.cast(),
                )))),
            }
        }
    }

    /// The sum of the eight lanes, in a fixed order: lanes `l` and `l + 4`, then `l` and
    /// `l + 2`, then `l` and `l + 1`. Explicit operations, so the compiler cannot reorder it.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `R` rows by `T` tokens: one f32 accumulator vector per pair, lane `l` summing elements
    /// `8k + l`. The last partial vector is copied into zero-filled buffers, so padding lanes
    /// add exact zeros. Every pair sees the same operations whatever `R` and `T`.
    // The row and token indices walk the pointer arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_impl<const D: u8, const R: usize, const T: usize>(rows: &[&[u8]], xs: &[&[f32]], out: &mut [f32]) {
        let size = elem_bytes(D);
        let cols = xs[0].len();
        let whole = cols / W * W;
        let mut w_at = [std::ptr::null::<u8>(); R];
        for r in 0..R {
            w_at[r] = rows[r].as_ptr();
        }
        let mut x_at = [std::ptr::null::<f32>(); T];
        for t in 0..T {
            x_at[t] = xs[t].as_ptr();
        }
        let mut acc = [[_mm256_setzero_ps(); T]; R];
        let mut x = [_mm256_setzero_ps(); T];
        let mut c = 0;
        while c < whole {
            for t in 0..T {
                // SAFETY: c + 8 <= cols, the length of every token.
                x[t] = unsafe { _mm256_loadu_ps(x_at[t].add(c)) };
            }
            for r in 0..R {
                // SAFETY: every row holds at least cols elements (checked by the wrapper).
                let w = unsafe { load::<D>(w_at[r].add(c * size)) };
                for t in 0..T {
                    acc[r][t] = _mm256_fmadd_ps(w, x[t], acc[r][t]);
                }
            }
            c += W;
        }
        if whole < cols {
            let rest = cols - whole;
            let mut x_tail = [[0f32; W]; T];
            for t in 0..T {
                x_tail[t][..rest].copy_from_slice(&xs[t][whole..]);
                // SAFETY: x_tail[t] is 8 f32.
                x[t] = unsafe { _mm256_loadu_ps(x_tail[t].as_ptr()) };
            }
            for r in 0..R {
                let mut w_tail = [0u8; W * 4];
                w_tail[..rest * size].copy_from_slice(&rows[r][whole * size..cols * size]);
                // SAFETY: w_tail holds 8 elements of any format.
                let w = unsafe { load::<D>(w_tail.as_ptr()) };
                for t in 0..T {
                    acc[r][t] = _mm256_fmadd_ps(w, x[t], acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r * T + t] = hsum(acc[r][t]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    // The safe wrappers are only handed out by `float_kernels` for `Isa::Avx512`, which
    // `Isa::detect` / `Isa::available` return only after confirming AVX-512 F/BW/VL (with AVX2,
    // FMA and F16C).

    /// f32 lanes per vector.
    const W: usize = 16;

    pub fn dot<const D: u8>(row: &[u8], x: &[f32]) -> f32 {
        let mut out = [0f32];
        tile::<D>(&[row], &[x], &mut out);
        out[0]
    }

    pub fn tile<const D: u8>(rows: &[&[u8]], xs: &[&[f32]], out: &mut [f32]) {
        check_tile::<D, f32>(rows, xs, out);
        // SAFETY: the features are present (see above); `check_tile` bounds every load.
        unsafe { by_shape!(tile_impl, D, rows, xs, out) }
    }

    /// The weights in format `D` at `p` whose lanes are set in `keep`, as f32; the other lanes
    /// are zero and their memory is not read. With all lanes kept, plain loads.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn load<const D: u8>(p: *const u8, keep: __mmask16) -> __m512 {
        // SAFETY: the caller guarantees the kept lanes' elements readable at p; masked-off lanes
        // are not accessed.
        unsafe {
            if D == F32 {
                return if keep == 0xffff {
                    _mm512_loadu_ps(p.cast())
                } else {
                    _mm512_maskz_loadu_ps(keep, p.cast())
                };
            }
            let bits = if keep == 0xffff {
                _mm256_loadu_si256(p.cast())
            } else {
                _mm256_maskz_loadu_epi16(keep, p.cast())
            };
            if D == F16 {
                _mm512_cvtph_ps(bits)
            } else {
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
            }
        }
    }

    /// `R` rows by `T` tokens: one f32 accumulator vector per pair, lane `l` summing elements
    /// `16k + l`; the last partial vector is read with a mask, so padding lanes add exact zeros.
    /// Every pair sees the same operations whatever `R` and `T`.
    // The row and token indices walk the pointer arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn tile_impl<const D: u8, const R: usize, const T: usize>(rows: &[&[u8]], xs: &[&[f32]], out: &mut [f32]) {
        let size = elem_bytes(D);
        let cols = xs[0].len();
        let mut w_at = [std::ptr::null::<u8>(); R];
        for r in 0..R {
            w_at[r] = rows[r].as_ptr();
        }
        let mut x_at = [std::ptr::null::<f32>(); T];
        for t in 0..T {
            x_at[t] = xs[t].as_ptr();
        }
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let mut x = [_mm512_setzero_ps(); T];
        let whole = cols / W * W;
        let mut c = 0;
        // Whole vectors with plain loads (masked loads measured 20% slower in this loop)...
        while c < whole {
            for t in 0..T {
                // SAFETY: c + 16 <= cols, the length of every token.
                x[t] = unsafe { _mm512_loadu_ps(x_at[t].add(c)) };
            }
            for r in 0..R {
                // SAFETY: every row holds at least cols elements (checked by the wrapper).
                let w = unsafe { load::<D>(w_at[r].add(c * size), 0xffff) };
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(w, x[t], acc[r][t]);
                }
            }
            c += W;
        }
        // ...then the rest with masked ones.
        if whole < cols {
            let keep: __mmask16 = (1u16 << (cols - whole)) - 1;
            for t in 0..T {
                // SAFETY: the kept lanes are elements whole..cols of the token.
                x[t] = unsafe { _mm512_maskz_loadu_ps(keep, x_at[t].add(whole)) };
            }
            for r in 0..R {
                // SAFETY: as above; masked-off lanes are not read.
                let w = unsafe { load::<D>(w_at[r].add(whole * size), keep) };
                for t in 0..T {
                    acc[r][t] = _mm512_fmadd_ps(w, x[t], acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r * T + t] = hsum(acc[r][t]);
            }
        }
    }

    /// The sum of the sixteen lanes, in a fixed order: lanes `l` and `l + 8`, then as
    /// [`avx2::hsum`](super::avx2::hsum).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(crate) fn hsum(v: __m512) -> f32 {
        let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        super::avx2::hsum(_mm256_add_ps(_mm512_castps512_ps256(v), high))
    }
}

/// (Tests) `values` in the float format `dtype`, little-endian, and the values the bytes hold
/// exactly.
#[cfg(test)]
pub(crate) fn float_bytes(values: &[f32], dtype: QuantType) -> (Vec<u8>, Vec<f32>) {
    match dtype {
        QuantType::F32 => (values.iter().flat_map(|v| v.to_le_bytes()).collect(), values.to_vec()),
        QuantType::F16 => {
            let h: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        QuantType::BF16 => {
            let h: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
            (
                h.iter().flat_map(|v| v.to_le_bytes()).collect(),
                h.iter().map(|v| v.to_f32()).collect(),
            )
        }
        other => unreachable!("{other} is not a float format"),
    }
}

/// (Tests) Every tile shape of `k` over the first rows of `rows` and tokens of `xs` gives, bit
/// for bit, the one-row kernel's result for each pair.
#[cfg(test)]
pub(crate) fn tiles_match_the_one_row_kernel<A>(k: &FloatKernels<A>, rows: &[&[u8]], xs: &[Vec<A>], what: &str) {
    for r in 1..=MAX_TILE_ROWS.min(rows.len()) {
        for t in 1..=MAX_TILE_TOKENS.min(xs.len()) {
            let x_refs: Vec<&[A]> = xs[..t].iter().map(Vec::as_slice).collect();
            let mut out = vec![f32::NAN; r * t];
            (k.tile)(&rows[..r], &x_refs, &mut out);
            for i in 0..r {
                for j in 0..t {
                    let one = (k.dot)(rows[i], x_refs[j]);
                    assert_eq!(
                        out[i * t + j].to_bits(),
                        one.to_bits(),
                        "{what}: tile {r}x{t} row {i} token {j}"
                    );
                }
            }
        }
    }
}

/// (Tests) The checks every kernel set for 16-bit float rows (bf16, f16) takes, whatever form
/// its activations come in (`prepare`: from f32 values, one token) and however it reads them
/// (`as_read`: the value each activation is multiplied as).
#[cfg(test)]
pub(crate) mod half_checks {
    use super::*;
    use crate::util::Rng;

    fn uniform(rng: &mut Rng, n: usize, spread: f64) -> Vec<f32> {
        (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect()
    }

    /// A copy of `bytes` one byte into a buffer, so that no load is aligned.
    fn misaligned(bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![0xa5];
        v.extend_from_slice(bytes);
        v
    }

    /// The one-row kernel within `(n + 1)·ε·Σ|w·x|` of the f64 product of the weights and the
    /// activations as read (the products of bf16 weights and activations as read are exact).
    pub(crate) fn match_the_f64_product<A>(
        k: &FloatKernels<A>,
        dtype: QuantType,
        seed: u64,
        cols_list: &[usize],
        prepare: impl Fn(&[f32]) -> Vec<A>,
        as_read: impl Fn(f32) -> f32,
    ) {
        let mut rng = Rng::new(seed);
        for &cols in cols_list {
            let (bytes, w) = float_bytes(&uniform(&mut rng, cols, 1.0), dtype);
            let bytes = misaligned(&bytes);
            let x = uniform(&mut rng, cols, 3.0);
            let (want, magnitude) = w
                .iter()
                .zip(&x)
                .map(|(w, x)| f64::from(*w) * f64::from(as_read(*x)))
                .fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()));
            let got = f64::from((k.dot)(&bytes[1..], &prepare(&x)));
            let bound = (cols as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude + 1e-30;
            assert!((got - want).abs() <= bound, "{dtype} cols {cols}: {got} vs {want}");
        }
    }

    /// Every tile shape bit-identical to the one-row kernel, on misaligned rows.
    pub(crate) fn tiles_match<A>(
        k: &FloatKernels<A>,
        dtype: QuantType,
        seed: u64,
        cols_list: &[usize],
        prepare: impl Fn(&[f32]) -> Vec<A>,
    ) {
        let mut rng = Rng::new(seed);
        for &cols in cols_list {
            let rows: Vec<Vec<u8>> = (0..MAX_TILE_ROWS)
                .map(|_| misaligned(&float_bytes(&uniform(&mut rng, cols, 1.0), dtype).0))
                .collect();
            let xs: Vec<Vec<A>> = (0..MAX_TILE_TOKENS)
                .map(|_| prepare(&uniform(&mut rng, cols, 2.0)))
                .collect();
            let rows: Vec<&[u8]> = rows.iter().map(|v| &v[1..]).collect();
            tiles_match_the_one_row_kernel(k, &rows, &xs, &format!("{dtype} cols {cols}"));
        }
    }

    /// bf16 rows: largest finite, negative zero, infinity and a value just above one, each
    /// alone in a row of zeros times ones, at the start, inside a whole vector and in the tail:
    /// exactly itself.
    pub(crate) fn special_weights_pass_through<A>(k: &FloatKernels<A>, prepare: impl Fn(&[f32]) -> Vec<A>) {
        for bits in [0x7f7fu16, 0x8000, 0x7f80, 0x3f81] {
            for (cols, at) in [(1, 0), (32, 5), (40, 37)] {
                let mut row = vec![0u16; cols];
                row[at] = bits;
                let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                let got = (k.dot)(&bytes, &prepare(&vec![1.0; cols]));
                assert_eq!(
                    got,
                    f32::from_bits(u32::from(bits) << 16),
                    "{bits:#06x} at {at} of {cols}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    /// Row lengths: one element, around the 8- and 16-lane vectors, odd, SmolLM2's hidden size.
    const COLS: [usize; 9] = [1, 7, 8, 15, 16, 17, 33, 100, 576];

    fn uniform(rng: &mut Rng, n: usize, spread: f64) -> Vec<f32> {
        (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect()
    }

    /// The exact dot product (in f64) and the sum of the products' magnitudes, which bounds any
    /// f32 summation's error: at most `(n + 1) · ε · Σ|w·x|` in any order.
    fn f64_dot(w: &[f32], x: &[f32]) -> (f64, f64) {
        w.iter()
            .zip(x)
            .map(|(w, x)| f64::from(*w) * f64::from(*x))
            .fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()))
    }

    fn error_bound(cols: usize, magnitude: f64) -> f64 {
        (cols as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude + 1e-30
    }

    /// A copy of `bytes` starting one byte into a buffer, so no load is aligned.
    fn misaligned(bytes: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(bytes.len() + 1);
        v.push(0xa5);
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn scalar_kernels_match_the_f64_dot_product() {
        let mut rng = Rng::new(31);
        for dtype in FLOAT_FORMATS {
            let dot = float_kernels(dtype, Isa::Scalar).unwrap().dot;
            for cols in COLS {
                let (bytes, w) = float_bytes(&uniform(&mut rng, cols, 1.0), dtype);
                let x = uniform(&mut rng, cols, 3.0);
                let (want, magnitude) = f64_dot(&w, &x);
                let got = f64::from(dot(&bytes, &x));
                assert!(
                    (got - want).abs() <= error_bound(cols, magnitude),
                    "{dtype} cols {cols}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn simd_kernels_match_the_scalar_reference() {
        let mut rng = Rng::new(32);
        for dtype in FLOAT_FORMATS {
            let reference = float_kernels(dtype, Isa::Scalar).unwrap().dot;
            for cols in COLS {
                let (bytes, w) = float_bytes(&uniform(&mut rng, cols, 1.0), dtype);
                let bytes = misaligned(&bytes);
                let x = uniform(&mut rng, cols, 3.0);
                let (_, magnitude) = f64_dot(&w, &x);
                let want = f64::from(reference(&bytes[1..], &x));
                for isa in Isa::available() {
                    let got = f64::from((float_kernels(dtype, isa).unwrap().dot)(&bytes[1..], &x));
                    // Both sums are within the bound of the exact value.
                    assert!(
                        (got - want).abs() <= 2.0 * error_bound(cols, magnitude),
                        "{dtype} {isa:?} cols {cols}: {got} vs scalar {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn tiles_are_bit_identical_to_the_one_row_kernel() {
        let mut rng = Rng::new(33);
        for dtype in FLOAT_FORMATS {
            for cols in COLS {
                let rows: Vec<Vec<u8>> = (0..MAX_TILE_ROWS)
                    .map(|_| misaligned(&float_bytes(&uniform(&mut rng, cols, 1.0), dtype).0))
                    .collect();
                let xs: Vec<Vec<f32>> = (0..MAX_TILE_TOKENS).map(|_| uniform(&mut rng, cols, 2.0)).collect();
                for isa in Isa::available() {
                    let k = float_kernels(dtype, isa).unwrap();
                    let rows: Vec<&[u8]> = rows.iter().map(|v| &v[1..]).collect();
                    tiles_match_the_one_row_kernel(&k, &rows, &xs, &format!("{dtype} {isa:?} cols {cols}"));
                }
            }
        }
    }

    #[test]
    fn special_values_convert_exactly() {
        // Subnormal, largest finite, negative zero and infinity, each alone in a row of zeros
        // (times ones, so no 0 · inf), at the start, in a whole vector and in the tail.
        let value = |dtype: QuantType, bits: u16| match dtype {
            QuantType::F16 => half::f16::from_bits(bits).to_f32(),
            _ => half::bf16::from_bits(bits).to_f32(),
        };
        let cases = [
            (QuantType::F16, [0x0001, 0x7bff, 0x8000, 0x7c00]),
            (QuantType::BF16, [0x0001, 0x7f7f, 0x8000, 0x7f80]),
        ];
        for (dtype, specials) in cases {
            for isa in Isa::available() {
                let k = float_kernels(dtype, isa).unwrap();
                for bits in specials {
                    for (cols, at) in [(1, 0), (16, 5), (19, 18)] {
                        let mut row = vec![0u16; cols];
                        row[at] = bits;
                        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
                        let got = (k.dot)(&bytes, &vec![1.0; cols]);
                        assert_eq!(got, value(dtype, bits), "{dtype} {isa:?} {bits:#06x} at {at} of {cols}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_half_precision_value_converts_exactly() {
        for bits in 0..=u16::MAX {
            let bytes = bits.to_le_bytes();
            for (dtype, want) in [
                (QuantType::F16, half::f16::from_bits(bits).to_f32()),
                (QuantType::BF16, half::bf16::from_bits(bits).to_f32()),
            ] {
                if dtype == QuantType::F16 {
                    let got = scalar::f16_to_f32(bits);
                    assert!(
                        got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
                        "{bits:#06x}"
                    );
                }
                for isa in Isa::available() {
                    // Times one: exact, NaN stays NaN, -0 stays -0 only as a sum's first term,
                    // so compare values (+0 == -0).
                    let got = (float_kernels(dtype, isa).unwrap().dot)(&bytes, &[1.0]);
                    assert!(
                        got == want || got.is_nan() && want.is_nan(),
                        "{dtype} {isa:?} {bits:#06x}"
                    );
                }
            }
        }
    }

    #[test]
    fn only_float_formats_have_float_kernels() {
        for dtype in QuantType::ALL {
            assert_eq!(
                float_kernels(dtype, Isa::Scalar).is_some(),
                FLOAT_FORMATS.contains(&dtype),
                "{dtype}"
            );
        }
    }
}
