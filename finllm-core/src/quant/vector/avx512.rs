//! AVX-512 F: sixteen f16 values converted per instruction (the conversions bound these
//! kernels at a head size of 64).

use super::avx2::{prefetch_rows, AHEAD};
use half::f16;
use std::arch::x86_64::*;

/// Query heads one call takes at a time: four rows' sums for three heads are 12 of the 32
/// vector registers, beside the heads' queries and four converted keys.
pub const HEADS: usize = 3;

/// [`super::avx2::scores_f16`] sixteen values at a time: four rows per group, each row's
/// sixteen partial sums folded to eight (low half + high half) and reduced with the same
/// tree as the AVX2 kernel's; a row's value depends on that row alone.
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C; `q.len()` a non-zero multiple of
/// 16; `rows` must hold `out.len()` rows of `q.len()` values `stride` apart.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn scores_f16(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    let n = out.len();
    // SAFETY: forwarded; one head.
    unsafe { scores_f16_heads::<1>(q, rows, stride, scale, out, n, n, q.len()) }
}

/// [`scores_f16`] for `H` query heads of `q.len() / H` values at once: each converted key
/// vector feeds `H` FMAs (the conversions bounded the one-head kernel). Head `h`'s sums go
/// through the same FMAs and the same reduction as alone, so its bits are the same.
///
/// # Safety
/// As [`scores_f16`] for each head; `out` holds `(H - 1) · out_stride + n` values. `fetch`
/// as in [`super::KvElem`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
pub unsafe fn scores_f16_heads<const H: usize>(
    q: &[f32],
    rows: &[f16],
    stride: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
    n: usize,
    fetch: usize,
) {
    // SAFETY: forwarded (the caller's bounds).
    unsafe { scores_in_groups!(4, q, rows, stride, scale, out, out_stride, n, fetch) }
}

/// `M` (at most four) rows from `t` of [`scores_f16_heads`]: the sums of all `H · M`
/// (head, row) pairs stay in registers (with eight rows they did not: 24 accumulators,
/// eight converted keys and the queries spilled to the stack on every FMA); each row's
/// sixteen partial sums are folded to eight, and two heads' rows are reduced together, the
/// first head's in the low four lanes and the second's in the high four (rows past `M` as
/// zeros, not stored).
///
/// # Safety
/// As [`scores_f16_heads`], with rows `t..t + M` inside `rows` and `out`.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)]
unsafe fn scores_group<const H: usize, const M: usize>(
    q: &[f32],
    rows: &[f16],
    stride: usize,
    scale: f32,
    out: &mut [f32],
    out_stride: usize,
    t: usize,
) {
    let d = q.len() / H;
    let (qp, base, op) = (q.as_ptr(), rows.as_ptr().cast::<u16>(), out.as_mut_ptr());
    let mut acc = [[_mm512_setzero_ps(); M]; H];
    let mut i = 0;
    while i < d {
        // SAFETY: `i + 16 <= d`, inside every head of `q` and inside each of the `M` rows.
        let qv: [__m512; H] = std::array::from_fn(|h| unsafe { _mm512_loadu_ps(qp.add(h * d + i)) });
        for r in 0..M {
            let k = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(base.add((t + r) * stride + i).cast())) };
            for h in 0..H {
                acc[h][r] = _mm512_fmadd_ps(qv[h], k, acc[h][r]);
            }
        }
        i += 16;
    }
    let sv = _mm256_set1_ps(scale);
    let fold = |h: usize, r: usize| {
        if h < H && r < M {
            _mm256_add_ps(_mm512_castps512_ps256(acc[h][r]), _mm512_extractf32x8_ps_f(acc[h][r]))
        } else {
            _mm256_setzero_ps()
        }
    };
    for h in (0..H).step_by(2) {
        let halves: [__m256; 8] = std::array::from_fn(|j| fold(h + j / 4, j % 4));
        let sums = _mm256_mul_ps(super::avx2::sum_each(&halves), sv);
        for (k, sums) in [_mm256_castps256_ps128(sums), _mm256_extractf128_ps::<1>(sums)]
            .into_iter()
            .enumerate()
            .take(H - h)
        {
            let at = (h + k) * out_stride + t;
            if M == 4 {
                // SAFETY: out[at..at + 4] is inside `out`.
                unsafe { _mm_storeu_ps(op.add(at), sums) };
            } else {
                let mut lanes = [0f32; 4];
                // SAFETY: `lanes` holds four floats.
                unsafe { _mm_storeu_ps(lanes.as_mut_ptr(), sums) };
                out[at..at + M].copy_from_slice(&lanes[..M]);
            }
        }
    }
}

/// `a · b` over the shorter of the two: four sixteen-float partial sums, the last partial
/// vector loaded under a mask (vector search over 384-float embeddings: 24 FMAs).
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let d = a.len().min(b.len());
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (every load): `i + 16 * (j + 1) <= d` keeps it inside both slices.
    while i + 64 <= d {
        for (j, s) in acc.iter_mut().enumerate() {
            let (x, y) = unsafe { (_mm512_loadu_ps(ap.add(i + 16 * j)), _mm512_loadu_ps(bp.add(i + 16 * j))) };
            *s = _mm512_fmadd_ps(x, y, *s);
        }
        i += 64;
    }
    let mut j = 0;
    while i + 16 <= d {
        let (x, y) = unsafe { (_mm512_loadu_ps(ap.add(i)), _mm512_loadu_ps(bp.add(i))) };
        acc[j] = _mm512_fmadd_ps(x, y, acc[j]);
        j += 1;
        i += 16;
    }
    if i < d {
        let mask: __mmask16 = (1u16 << (d - i)) - 1;
        // SAFETY: the mask loads only the `d - i` (< 16) values left in each slice.
        let (x, y) = unsafe {
            (
                _mm512_maskz_loadu_ps(mask, ap.add(i)),
                _mm512_maskz_loadu_ps(mask, bp.add(i)),
            )
        };
        acc[3] = _mm512_fmadd_ps(x, y, acc[3]);
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(v)
}

/// [`super::dot_i8`] with AVX-512: thirty-two bytes at a time widened to 16 bits and
/// multiplied and added in pairs into 32-bit lanes by one VNNI instruction; the tail is a
/// masked load.
///
/// # Safety
/// The CPU must support AVX-512 F, BW, VL and VNNI with AVX2; `a` and `b` have the same
/// length.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let d = a.len().min(b.len());
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_si512(); 2];
    let mut i = 0;
    // SAFETY (every load): `i + 32 * (j + 1) <= d` keeps it inside both slices.
    while i + 64 <= d {
        for (j, s) in acc.iter_mut().enumerate() {
            let (x, y) = unsafe {
                (
                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(ap.add(i + 32 * j).cast())),
                    _mm512_cvtepi8_epi16(_mm256_loadu_si256(bp.add(i + 32 * j).cast())),
                )
            };
            *s = _mm512_dpwssd_epi32(*s, x, y);
        }
        i += 64;
    }
    if i < d {
        let mask: __mmask32 = u32::MAX >> (32 - (d - i).min(32));
        // SAFETY: the mask loads only the `min(d - i, 32)` values left in each slice.
        let (x, y) = unsafe {
            (
                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, ap.add(i))),
                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, bp.add(i))),
            )
        };
        acc[0] = _mm512_dpwssd_epi32(acc[0], x, y);
        i += 32;
    }
    if i < d {
        let mask: __mmask32 = u32::MAX >> (32 - (d - i));
        // SAFETY: as above, for the last fewer than 32 values.
        let (x, y) = unsafe {
            (
                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, ap.add(i))),
                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(mask, bp.add(i))),
            )
        };
        acc[1] = _mm512_dpwssd_epi32(acc[1], x, y);
    }
    _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))
}

/// The high eight floats of `v` (AVX-512 F has no float form of this extract; the bits
/// move through the integer one).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn _mm512_extractf32x8_ps_f(v: __m512) -> __m256 {
    _mm256_castsi256_ps(_mm512_extracti64x4_epi64::<1>(_mm512_castps_si512(v)))
}

/// `out += Σ_t p[t] · row t`: 64 columns at a time in registers while every row is added in,
/// each column in row order with one FMA per row (the same operations, and so the same
/// bits, as the AVX2 kernel).
///
/// # Safety
/// The CPU must support AVX-512 F, AVX2, FMA and F16C, and `rows` must hold `p.len()` rows
/// of `out.len()` values `stride` apart.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn weighted_sum_f16(p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
    // SAFETY: forwarded; one head.
    unsafe { weighted_sum_f16_heads::<1>(p, p.len(), p.len(), rows, stride, out, out.len()) }
}

/// [`weighted_sum_f16`] for `H` heads of `out.len() / H` values: head `h`'s weights are
/// `p[h · p_stride..][..n]`; each converted value vector feeds `H` FMAs, and every head's
/// columns see the same FMAs in the same order as alone.
///
/// # Safety
/// As [`weighted_sum_f16`] for each head; `p` holds `(H - 1) · p_stride + n` values.
/// `fetch` as in [`super::KvElem`].
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub unsafe fn weighted_sum_f16_heads<const H: usize>(
    p: &[f32],
    p_stride: usize,
    n: usize,
    rows: &[f16],
    stride: usize,
    out: &mut [f32],
    fetch: usize,
) {
    let d = out.len() / H;
    let base = rows.as_ptr().cast::<u16>();
    let (pp, op) = (p.as_ptr(), out.as_mut_ptr());
    let mut c = 0;
    prefetch_rows(rows, stride, 0, AHEAD, fetch);
    while c + 64 <= d {
        // SAFETY: columns c..c + 64 are inside every head of `out` and inside every row;
        // `h * p_stride + t < p.len()` for t < n.
        let mut acc: [[__m512; 4]; H] =
            std::array::from_fn(|h| std::array::from_fn(|j| unsafe { _mm512_loadu_ps(op.add(h * d + c + 16 * j)) }));
        for t in 0..n {
            if c == 0 {
                prefetch_rows(rows, stride, t + AHEAD, 1, fetch);
            }
            let rp = unsafe { base.add(t * stride + c) };
            let v: [__m512; 4] =
                std::array::from_fn(|j| unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(rp.add(16 * j).cast())) });
            for (h, acc) in acc.iter_mut().enumerate() {
                let wv = _mm512_set1_ps(unsafe { *pp.add(h * p_stride + t) });
                for (a, v) in acc.iter_mut().zip(&v) {
                    *a = _mm512_fmadd_ps(wv, *v, *a);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (j, a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(op.add(h * d + c + 16 * j), *a) };
            }
        }
        c += 64;
    }
    while c + 16 <= d {
        // SAFETY: as above, for columns c..c + 16.
        let mut acc: [__m512; H] = std::array::from_fn(|h| unsafe { _mm512_loadu_ps(op.add(h * d + c)) });
        for t in 0..n {
            let v = unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(base.add(t * stride + c).cast())) };
            for (h, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(unsafe { *pp.add(h * p_stride + t) }), v, *a);
            }
        }
        for (h, a) in acc.iter().enumerate() {
            unsafe { _mm512_storeu_ps(op.add(h * d + c), *a) };
        }
        c += 16;
    }
    if c < d {
        for h in 0..H {
            // SAFETY: the rest of head h's columns, with the AVX2 kernel (the same operations).
            unsafe {
                super::avx2::weighted_sum_f16(
                    &p[h * p_stride..h * p_stride + n],
                    rows.get(c..).unwrap_or(&[]),
                    stride,
                    &mut out[h * d + c..(h + 1) * d],
                )
            };
        }
    }
}
