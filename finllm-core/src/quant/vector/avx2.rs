//! AVX2 with FMA and F16C: eight f16 values converted per instruction.

use half::f16;
use std::arch::x86_64::*;

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let d = a.len().min(b.len());
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (every load): `i + 8 * (j + 1) <= d` keeps it inside both slices.
    while i + 32 <= d {
        for (j, s) in acc.iter_mut().enumerate() {
            let (x, y) = unsafe { (_mm256_loadu_ps(ap.add(i + 8 * j)), _mm256_loadu_ps(bp.add(i + 8 * j))) };
            *s = _mm256_fmadd_ps(x, y, *s);
        }
        i += 32;
    }
    while i + 8 <= d {
        let (x, y) = unsafe { (_mm256_loadu_ps(ap.add(i)), _mm256_loadu_ps(bp.add(i))) };
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut sum = horizontal_sum(v);
    for j in i..d {
        sum += a[j] * b[j];
    }
    sum
}

/// [`super::dot_i8`] with AVX2: sixteen bytes at a time widened to 16 bits, multiplied
/// and added in pairs into 32-bit lanes.
///
/// # Safety
/// The CPU must support AVX2; `a` and `b` have the same length.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let d = a.len().min(b.len());
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_si256(); 2];
    let mut i = 0;
    // SAFETY (every load): `i + 16 * (j + 1) <= d` keeps it inside both slices.
    while i + 32 <= d {
        for (j, s) in acc.iter_mut().enumerate() {
            let (x, y) = unsafe {
                (
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(ap.add(i + 16 * j).cast())),
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(i + 16 * j).cast())),
                )
            };
            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(x, y));
        }
        i += 32;
    }
    let v = _mm256_add_epi32(acc[0], acc[1]);
    let v = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    let v = _mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v));
    _mm_cvtsi128_si32(v) + super::dot_i8_scalar(&a[i..d], &b[i..d])
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `rows` must hold `out.len()` rows of
/// `q.len()` values `stride` apart.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn scores_f16(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    if q.len().is_multiple_of(8) && !q.is_empty() {
        // SAFETY: forwarded.
        return unsafe { scores_f16_by_eight(q, rows, stride, scale, out) };
    }
    // SAFETY: forwarded.
    unsafe { scores_f16_rows(q, rows, stride, scale, out) }
}

/// [`scores_f16`] for rows a multiple of eight long: eight rows at a time, each row's eight
/// partial sums in a register of its own, the eight reduced together (a transposing tree of
/// horizontal adds) and scaled in one store. A row's value depends on that row alone (its
/// sums and their reduction order are the same in any group, a short last group padded
/// with zero rows), so splitting the rows across calls changes no bit.
///
/// # Safety
/// As [`scores_f16`], and `q.len()` a non-zero multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_f16_by_eight(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    let (qp, base, op) = (q.as_ptr(), rows.as_ptr().cast::<u16>(), out.as_mut_ptr());
    let n = out.len();
    let sv = _mm256_set1_ps(scale);
    let mut t = 0;
    while t < n {
        let m = (n - t).min(8);
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < d {
            // SAFETY: `i + 8 <= d`, inside `q` and inside each of the `m` rows, which the
            // caller guarantees lie in `rows`.
            let qv = unsafe { _mm256_loadu_ps(qp.add(i)) };
            for (r, a) in acc.iter_mut().enumerate().take(m) {
                let k = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(base.add((t + r) * stride + i).cast())) };
                *a = _mm256_fmadd_ps(qv, k, *a);
            }
            i += 8;
        }
        let sums = _mm256_mul_ps(sum_each(&acc), sv);
        if m == 8 {
            // SAFETY: out[t..t + 8] is inside `out`.
            unsafe { _mm256_storeu_ps(op.add(t), sums) };
        } else {
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds eight floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sums) };
            out[t..].copy_from_slice(&lanes[..m]);
        }
        t += m;
    }
}

/// Lane `r` of the result: the sum of the eight lanes of `acc[r]`, as
/// ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)) whatever the other registers hold.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn sum_each(acc: &[__m256; 8]) -> __m256 {
    let h01 = _mm256_hadd_ps(acc[0], acc[1]);
    let h23 = _mm256_hadd_ps(acc[2], acc[3]);
    let h45 = _mm256_hadd_ps(acc[4], acc[5]);
    let h67 = _mm256_hadd_ps(acc[6], acc[7]);
    let lo4 = _mm256_hadd_ps(h01, h23);
    let hi4 = _mm256_hadd_ps(h45, h67);
    let first_halves = _mm256_permute2f128_ps::<0x20>(lo4, hi4);
    let second_halves = _mm256_permute2f128_ps::<0x31>(lo4, hi4);
    _mm256_add_ps(first_halves, second_halves)
}

/// One row at a time (rows of any length).
///
/// # Safety
/// As [`scores_f16`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_f16_rows(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    let (qp, base) = (q.as_ptr(), rows.as_ptr().cast::<u16>());
    for (t, o) in out.iter_mut().enumerate() {
        // SAFETY: the caller guarantees row t lies in `rows`; `i + 8 <= d` keeps every
        // load inside it and inside `q`.
        let rp = unsafe { base.add(t * stride) };
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= d {
            for (j, a) in acc.iter_mut().enumerate() {
                let k = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(rp.add(i + 8 * j).cast())) };
                *a = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + 8 * j)), k, *a) };
            }
            i += 16;
        }
        if i + 8 <= d {
            let k = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(rp.add(i).cast())) };
            acc[0] = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), k, acc[0]) };
            i += 8;
        }
        let mut sum = horizontal_sum(_mm256_add_ps(acc[0], acc[1]));
        for (j, &qj) in q.iter().enumerate().skip(i) {
            sum += qj * f16::from_bits(unsafe { *rp.add(j) }).to_f32();
        }
        *o = scale * sum;
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C, and `rows` must hold `p.len()` rows of
/// `out.len()` values `stride` apart.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn weighted_sum_f16(p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
    let d = out.len();
    let base = rows.as_ptr().cast::<u16>();
    let op = out.as_mut_ptr();
    // 32 output columns at a time stay in registers while every row is added in.
    let mut c = 0;
    while c + 32 <= d {
        // SAFETY: columns c..c + 32 are inside `out` and inside every row.
        let mut acc: [__m256; 4] = std::array::from_fn(|j| unsafe { _mm256_loadu_ps(op.add(c + 8 * j)) });
        for (t, &w) in p.iter().enumerate() {
            let wv = _mm256_set1_ps(w);
            let rp = unsafe { base.add(t * stride + c) };
            for (j, a) in acc.iter_mut().enumerate() {
                let v = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(rp.add(8 * j).cast())) };
                *a = _mm256_fmadd_ps(wv, v, *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            unsafe { _mm256_storeu_ps(op.add(c + 8 * j), *a) };
        }
        c += 32;
    }
    while c + 8 <= d {
        // SAFETY: as above, for columns c..c + 8.
        let mut acc = unsafe { _mm256_loadu_ps(op.add(c)) };
        for (t, &w) in p.iter().enumerate() {
            let v = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(base.add(t * stride + c).cast())) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(w), v, acc);
        }
        unsafe { _mm256_storeu_ps(op.add(c), acc) };
        c += 8;
    }
    for (j, o) in out.iter_mut().enumerate().skip(c) {
        for (t, &w) in p.iter().enumerate() {
            *o += w * f16::from_bits(unsafe { *base.add(t * stride + j) }).to_f32();
        }
    }
}

/// Rows the attention kernels ask the cache for ahead of use, into L2 (into L1 the 8-stream
/// attention of a decode step took 8-10% longer): a row's 64 f16 values take about ten
/// cycles, a load from memory some hundreds.
pub(super) const AHEAD: usize = 24;

/// Start loading the first `d` f16 values of rows `first..first + count` (`stride` apart)
/// into the cache, those inside `rows` (which may hold rows past the ones a call uses: the
/// next call's).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_rows(rows: &[f16], stride: usize, first: usize, count: usize, d: usize) {
    let base = rows.as_ptr();
    let len = rows.len();
    for r in first..first + count {
        if r * stride + d > len {
            break;
        }
        let row = base.wrapping_add(r * stride).cast::<i8>();
        for off in (0..2 * d).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults.
            _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(off));
        }
    }
}

/// Query heads one call takes at a time: three rows' sums for three heads are 9 of the 16
/// vector registers, beside the heads' queries and one converted key.
pub const HEADS: usize = 3;

/// `scores_f16_by_eight` for `H` query heads of `q.len() / H` values over the same rows:
/// each converted key vector feeds `H` FMAs (with one head per call, converting every row
/// once per head of a grouped-query group was most of the work). Three rows at a time for
/// three heads, four for fewer, the rows `AHEAD` asked for ahead (`fetch` values of each: a
/// head's slice of each cache row, `stride` apart, which the hardware prefetchers follow
/// late); a (row, head)'s sums take the same FMAs in the same order and the same reduction as
/// alone, so its bits are the same.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `q.len() / H` a non-zero multiple of 8; `rows`
/// must hold `n` rows of `q.len() / H` values `stride` apart, and `out` head `h`'s `n`
/// scores at `h · out_stride`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma,f16c")]
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
    debug_assert!((q.len() / H).is_multiple_of(8) && !q.is_empty());
    debug_assert!(H == 0 || (H - 1) * out_stride + n <= out.len());
    // Three heads take rows three at a time: with four, twelve sums, three queries and a
    // key were all sixteen registers, and one sum went to the stack and back on every step.
    let step = if H >= 3 { 3 } else { 4 };
    // SAFETY: forwarded (the caller's bounds).
    unsafe { scores_in_groups!(step, q, rows, stride, scale, out, out_stride, n, fetch) }
}

/// `M` (at most four) rows from `t` of [`scores_f16_heads`], the `H · M` sums in
/// registers; two heads' rows reduced together (the first head's in lanes 0..4, the
/// second's in lanes 4..8, missing rows and heads as zeros, not stored): a lane's value
/// depends on its own register alone.
///
/// # Safety
/// As [`scores_f16_heads`], with rows `t..t + M` inside `rows` and `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
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
    let mut acc = [[_mm256_setzero_ps(); M]; H];
    let mut i = 0;
    while i < d {
        // SAFETY: `i + 8 <= d`: inside each head's query and inside each of the `M` rows.
        let qv: [__m256; H] = std::array::from_fn(|h| unsafe { _mm256_loadu_ps(qp.add(h * d + i)) });
        for r in 0..M {
            let k = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(base.add((t + r) * stride + i).cast())) };
            for h in 0..H {
                acc[h][r] = _mm256_fmadd_ps(qv[h], k, acc[h][r]);
            }
        }
        i += 8;
    }
    let sv = _mm256_set1_ps(scale);
    let mut h = 0;
    while h < H {
        let all: [__m256; 8] = std::array::from_fn(|j| {
            let (head, r) = (h + j / 4, j % 4);
            if head < H && r < M {
                acc[head][r]
            } else {
                _mm256_setzero_ps()
            }
        });
        let sums = _mm256_mul_ps(sum_each(&all), sv);
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds eight floats; out[head · out_stride + t..][..M] lies in
        // `out` for each head < H (the caller's bound).
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
            for k in 0..2 {
                if h + k < H {
                    std::ptr::copy_nonoverlapping(lanes.as_ptr().add(4 * k), op.add((h + k) * out_stride + t), M);
                }
            }
        }
        h += 2;
    }
}

/// [`weighted_sum_f16`] for `H` heads over the same rows: head `h` adds
/// `Σ_t p[h · p_stride + t] · row t` into `out[h · d..(h + 1) · d]`, each converted value
/// feeding `H` FMAs. Sixteen columns at a time; a column's sum is the same chain of FMAs,
/// rows in order from what `out` held, as in the one-head kernel, so the bits are the same.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `rows` must hold `n` rows of `out.len() / H`
/// values `stride` apart, and `p` head `h`'s `n` weights at `h · p_stride`.
#[target_feature(enable = "avx2,fma,f16c")]
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
    debug_assert!(H == 0 || (H - 1) * p_stride + n <= p.len());
    let (pp, base, op) = (p.as_ptr(), rows.as_ptr().cast::<u16>(), out.as_mut_ptr());
    let mut c = 0;
    let fetching = fetch > 0;
    if fetching {
        prefetch_rows(rows, stride, 0, AHEAD, fetch);
    }
    while c + 16 <= d {
        // SAFETY: columns c..c + 16 lie in every head's output and in every row; the
        // weights p[h · p_stride + t] for t < n lie in `p` (the caller's bound).
        let mut acc: [[__m256; 2]; H] =
            std::array::from_fn(|h| std::array::from_fn(|j| unsafe { _mm256_loadu_ps(op.add(h * d + c + 8 * j)) }));
        for t in 0..n {
            if fetching && c == 0 {
                prefetch_rows(rows, stride, t + AHEAD, 1, fetch);
            }
            let rp = unsafe { base.add(t * stride + c) };
            let v: [__m256; 2] =
                std::array::from_fn(|j| unsafe { _mm256_cvtph_ps(_mm_loadu_si128(rp.add(8 * j).cast())) });
            for (h, acc) in acc.iter_mut().enumerate() {
                let wv = unsafe { _mm256_broadcast_ss(&*pp.add(h * p_stride + t)) };
                for (a, v) in acc.iter_mut().zip(v) {
                    *a = _mm256_fmadd_ps(wv, v, *a);
                }
            }
        }
        for (h, acc) in acc.iter().enumerate() {
            for (j, a) in acc.iter().enumerate() {
                unsafe { _mm256_storeu_ps(op.add(h * d + c + 8 * j), *a) };
            }
        }
        c += 16;
    }
    if c < d {
        // The last columns (fewer than sixteen) head by head, as the one-head kernel takes
        // them.
        for h in 0..H {
            // SAFETY: forwarded (the rows from column c on hold the same rows' last columns).
            unsafe {
                weighted_sum_f16(
                    &p[h * p_stride..][..n],
                    &rows[c..],
                    stride,
                    &mut out[h * d + c..(h + 1) * d],
                )
            };
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}
