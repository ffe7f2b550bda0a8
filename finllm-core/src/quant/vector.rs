//! Dense vector kernels for attention over the KV cache: the dot product of an f32 query with a
//! cached key row, and `out += p * value_row`, for rows stored in f16 or f32.
//!
//! The f16 versions convert in registers (F16C) on x86-64 when the CPU has AVX2, FMA and F16C,
//! chosen at run time like the matrix kernels; the scalar versions are the reference.

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::kernels::Isa;

/// An element type the KV cache stores.
///
/// Both operations walk `n` rows of `d` values that lie `stride` elements apart in `rows`
/// (one KV head inside token-major cache rows), so a whole head is one call. The multi-head
/// forms take `fetch`: how many elements from each row's start the kernels ask the cache for
/// ahead of use (`d` when other calls, maybe on other threads, read the rest of each row;
/// `stride` when the caller walks every head of the rows, so one call brings whole rows in and
/// the other heads' calls find them cached).
pub trait KvElem: Copy + Send + Sync + 'static {
    /// `out[t] = scale · (q · row t)` for `t < out.len()`, rows `q.len()` long.
    fn scores(q: &[f32], rows: &[Self], stride: usize, scale: f32, out: &mut [f32]);
    /// `out += Σ_t p[t] · row t`, rows `out.len()` long.
    fn weighted_sum(p: &[f32], rows: &[Self], stride: usize, out: &mut [f32]);

    /// [`scores`](Self::scores) for several query heads of `d` values over the same rows (the
    /// heads of a grouped-query attention group): head `h` is `q[h·d..(h+1)·d]` and its `n`
    /// scores go to `out[h·out_stride..h·out_stride + n]`. Each head's scores have the same bits
    /// as [`scores`](Self::scores) gives it alone; kernels that share each loaded row between
    /// the heads are faster.
    #[allow(clippy::too_many_arguments)]
    fn scores_heads(
        q: &[f32],
        d: usize,
        rows: &[Self],
        stride: usize,
        scale: f32,
        out: &mut [f32],
        out_stride: usize,
        n: usize,
        _fetch: usize,
    ) {
        for (h, qh) in q.chunks_exact(d).enumerate() {
            Self::scores(qh, rows, stride, scale, &mut out[h * out_stride..h * out_stride + n]);
        }
    }

    /// [`weighted_sum`](Self::weighted_sum) for several heads over the same rows: head `h` adds
    /// `Σ_t p[h·p_stride + t] · row t` (`t < n`) into `out[h·d..(h+1)·d]`, with the bits
    /// [`weighted_sum`](Self::weighted_sum) gives it alone.
    #[allow(clippy::too_many_arguments)]
    fn weighted_sum_heads(
        p: &[f32],
        p_stride: usize,
        n: usize,
        rows: &[Self],
        stride: usize,
        out: &mut [f32],
        d: usize,
        _fetch: usize,
    ) {
        for (h, oh) in out.chunks_exact_mut(d).enumerate() {
            Self::weighted_sum(&p[h * p_stride..h * p_stride + n], rows, stride, oh);
        }
    }
}

/// Row `t` of `d` values, `stride` apart.
fn row<T>(rows: &[T], t: usize, stride: usize, d: usize) -> &[T] {
    &rows[t * stride..t * stride + d]
}

impl KvElem for f32 {
    fn scores(q: &[f32], rows: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        for (t, o) in out.iter_mut().enumerate() {
            *o = scale * dot_f32(q, row(rows, t, stride, q.len()));
        }
    }

    fn weighted_sum(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
        let d = out.len();
        for (t, &w) in p.iter().enumerate() {
            out.iter_mut()
                .zip(row(rows, t, stride, d))
                .for_each(|(o, &r)| *o += w * r);
        }
    }
}

/// `a · b` over the shorter of the two, with AVX2 and FMA when the CPU has them (vector search
/// over embeddings); [`dot_f32_scalar`] elsewhere.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512 {
        // SAFETY: the AVX-512 level implies AVX-512 F with AVX2, FMA and F16C.
        return unsafe { avx512::dot_f32(&a[..n], &b[..n]) };
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().implies_avx2() {
        // SAFETY: `Isa::detect` returned an x86 SIMD level, which implies AVX2, FMA and F16C.
        return unsafe { avx2::dot_f32(&a[..n], &b[..n]) };
    }
    dot_f32(&a[..n], &b[..n])
}

/// The portable dot product (eight partial sums).
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    dot_f32(&a[..n], &b[..n])
}

/// `Σ a_i · b_i` of two 8-bit vectors over the shorter one's length: the vector index's walk
/// compares quantized vectors with it. Exact: every product is at most 2^14 in size, so the
/// sum fits in an `i32` for any length below 2^17 (the index caps its dimension lower).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512 {
        // SAFETY: the AVX-512 level implies AVX-512 F, BW, VL and VNNI with AVX2.
        return unsafe { avx512::dot_i8(&a[..n], &b[..n]) };
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().implies_avx2() {
        // SAFETY: `Isa::detect` returned an x86 SIMD level, which implies AVX2.
        return unsafe { avx2::dot_i8(&a[..n], &b[..n]) };
    }
    dot_i8_scalar(a, b)
}

/// The portable [`dot_i8`], the reference of the SIMD ones.
pub fn dot_i8_scalar(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

fn dot_f32(q: &[f32], r: &[f32]) -> f32 {
    // Eight partial sums so the compiler can keep them in vector registers.
    let mut acc = [0f32; 8];
    let (qc, rc) = (q.chunks_exact(8), r.chunks_exact(8));
    let tail: f32 = qc.remainder().iter().zip(rc.remainder()).map(|(a, b)| a * b).sum();
    for (a, b) in qc.zip(rc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl KvElem for f16 {
    fn scores(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
        check_rows(rows, out.len(), stride, q.len());
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() == Isa::Avx512 && q.len().is_multiple_of(16) && !q.is_empty() {
            // SAFETY: the AVX-512 level implies AVX-512 F with AVX2, FMA and F16C; check_rows
            // bounded every row; the length is a non-zero multiple of 16.
            return unsafe { avx512::scores_f16(q, rows, stride, scale, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if Isa::detect().implies_avx2() {
            // SAFETY: `Isa::detect` returned an x86 SIMD level, which implies AVX2, FMA and F16C;
            // check_rows bounded every row.
            return unsafe { avx2::scores_f16(q, rows, stride, scale, out) };
        }
        scalar::scores_f16(q, rows, stride, scale, out)
    }

    fn weighted_sum(p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
        check_rows(rows, p.len(), stride, out.len());
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() == Isa::Avx512 {
            // SAFETY: as in `scores`.
            return unsafe { avx512::weighted_sum_f16(p, rows, stride, out) };
        }
        #[cfg(target_arch = "x86_64")]
        if Isa::detect().implies_avx2() {
            // SAFETY: as in `scores`.
            return unsafe { avx2::weighted_sum_f16(p, rows, stride, out) };
        }
        scalar::weighted_sum_f16(p, rows, stride, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn scores_heads(
        q: &[f32],
        d: usize,
        rows: &[f16],
        stride: usize,
        scale: f32,
        out: &mut [f32],
        out_stride: usize,
        n: usize,
        fetch: usize,
    ) {
        // Only the x86 kernels prefetch.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = fetch;
        #[cfg(target_arch = "x86_64")]
        {
            // AVX-512's kernels take heads of a multiple of 16 values, AVX2's of 8 (the ones
            // `scores` takes alone, so each head keeps its bits).
            let isa = Isa::detect();
            let wide = isa == Isa::Avx512 && d.is_multiple_of(16);
            if d > 0 && (wide || (isa.implies_avx2() && d.is_multiple_of(8))) {
                check_rows(rows, n, stride, d);
                let heads = q.len() / d;
                assert!(
                    heads == 0 || (heads - 1) * out_stride + n <= out.len(),
                    "scores of {heads} heads in {} values",
                    out.len()
                );
                head_groups(heads, wide, |h, take| {
                    let (qh, oh) = (&q[h * d..(h + take) * d], &mut out[h * out_stride..]);
                    // SAFETY: the AVX-512 level implies AVX-512 F with AVX2, FMA and F16C, and
                    // every x86 SIMD level `Isa::detect` returns implies AVX2, FMA and F16C; the
                    // rows and the outputs were bounded above; `d` is a non-zero multiple of 16
                    // (AVX-512) or 8 (AVX2).
                    unsafe {
                        match (wide, take) {
                            (true, 3) => {
                                avx512::scores_f16_heads::<3>(qh, rows, stride, scale, oh, out_stride, n, fetch)
                            }
                            (true, 2) => {
                                avx512::scores_f16_heads::<2>(qh, rows, stride, scale, oh, out_stride, n, fetch)
                            }
                            (true, _) => {
                                avx512::scores_f16_heads::<1>(qh, rows, stride, scale, oh, out_stride, n, fetch)
                            }
                            (false, 3) => {
                                avx2::scores_f16_heads::<3>(qh, rows, stride, scale, oh, out_stride, n, fetch)
                            }
                            (false, 2) => {
                                avx2::scores_f16_heads::<2>(qh, rows, stride, scale, oh, out_stride, n, fetch)
                            }
                            // One head: the one-head kernel's eight rows a group.
                            (false, _) => avx2::scores_f16(qh, rows, stride, scale, &mut oh[..n]),
                        }
                    }
                });
                return;
            }
        }
        for (h, qh) in q.chunks_exact(d).enumerate() {
            Self::scores(qh, rows, stride, scale, &mut out[h * out_stride..h * out_stride + n]);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn weighted_sum_heads(
        p: &[f32],
        p_stride: usize,
        n: usize,
        rows: &[f16],
        stride: usize,
        out: &mut [f32],
        d: usize,
        fetch: usize,
    ) {
        // Only the x86 kernels prefetch.
        #[cfg(not(target_arch = "x86_64"))]
        let _ = fetch;
        #[cfg(target_arch = "x86_64")]
        if Isa::detect().implies_avx2() && d > 0 {
            let wide = Isa::detect() == Isa::Avx512;
            check_rows(rows, n, stride, d);
            let heads = out.len() / d;
            assert!(
                heads == 0 || (heads - 1) * p_stride + n <= p.len(),
                "weights of {heads} heads in {} values",
                p.len()
            );
            head_groups(heads, wide, |h, take| {
                let (ph, oh) = (&p[h * p_stride..], &mut out[h * d..(h + take) * d]);
                // SAFETY: as in `scores_heads`.
                unsafe {
                    match (wide, take) {
                        (true, 3) => avx512::weighted_sum_f16_heads::<3>(ph, p_stride, n, rows, stride, oh, fetch),
                        (true, 2) => avx512::weighted_sum_f16_heads::<2>(ph, p_stride, n, rows, stride, oh, fetch),
                        (true, _) => avx512::weighted_sum_f16_heads::<1>(ph, p_stride, n, rows, stride, oh, fetch),
                        (false, 3) => avx2::weighted_sum_f16_heads::<3>(ph, p_stride, n, rows, stride, oh, fetch),
                        (false, 2) => avx2::weighted_sum_f16_heads::<2>(ph, p_stride, n, rows, stride, oh, fetch),
                        (false, _) => avx2::weighted_sum_f16(&ph[..n], rows, stride, oh),
                    }
                }
            });
            return;
        }
        for (h, oh) in out.chunks_exact_mut(d).enumerate() {
            Self::weighted_sum(&p[h * p_stride..h * p_stride + n], rows, stride, oh);
        }
    }
}

/// The body of a multi-head scores kernel (`scores_f16_heads` of `avx2` and `avx512`): the rows
/// `$step` (three or four) at a time by the module's `scores_group::<H, $step>`, the last ones
/// by a shorter group, each group's rows asked for [`AHEAD`](avx2::AHEAD) rows ahead (into L2:
/// the rows lie `stride` apart, a head's slice of each cache row, which the hardware prefetchers follow
/// late). A call told to fetch nothing (`fetch` 0: a block's later tokens, which find the rows
/// in L1) skips the prefetch code altogether. Unsafe: the kernel's own contract.
#[cfg(target_arch = "x86_64")]
macro_rules! scores_in_groups {
    ($step:expr, $q:expr, $rows:expr, $stride:expr, $scale:expr, $out:expr, $out_stride:expr, $n:expr, $fetch:expr) => {{
        let (q, rows, stride, scale, out, out_stride, n, fetch) =
            ($q, $rows, $stride, $scale, $out, $out_stride, $n, $fetch);
        let mut t = 0;
        let fetching = fetch > 0;
        if fetching {
            prefetch_rows(rows, stride, 0, AHEAD, fetch);
        }
        if $step == 3 {
            while t + 3 <= n {
                if fetching {
                    prefetch_rows(rows, stride, t + AHEAD, 3, fetch);
                }
                scores_group::<H, 3>(q, rows, stride, scale, out, out_stride, t);
                t += 3;
            }
        }
        while t + 4 <= n {
            if fetching {
                prefetch_rows(rows, stride, t + AHEAD, 4, fetch);
            }
            scores_group::<H, 4>(q, rows, stride, scale, out, out_stride, t);
            t += 4;
        }
        match n - t {
            3 => scores_group::<H, 3>(q, rows, stride, scale, out, out_stride, t),
            2 => scores_group::<H, 2>(q, rows, stride, scale, out, out_stride, t),
            1 => scores_group::<H, 1>(q, rows, stride, scale, out, out_stride, t),
            _ => {}
        }
    }};
}

/// `f(first, count)` for each group of consecutive heads the multi-head kernels take at once
/// (AVX-512's when `wide`, else AVX2's), in order.
#[cfg(target_arch = "x86_64")]
fn head_groups(heads: usize, wide: bool, mut f: impl FnMut(usize, usize)) {
    let most = if wide { avx512::HEADS } else { avx2::HEADS };
    let mut h = 0;
    while h < heads {
        let take = (heads - h).min(most);
        f(h, take);
        h += take;
    }
}

/// `n` rows of `d` values `stride` apart fit in `rows`.
fn check_rows<T>(rows: &[T], n: usize, stride: usize, d: usize) {
    assert!(
        n == 0 || (d <= stride && (n - 1) * stride + d <= rows.len()),
        "{n} rows of {d} values {stride} apart in {} values",
        rows.len()
    );
}

/// Reference versions.
pub mod scalar {
    use half::f16;

    use super::row;

    pub fn scores_f16(q: &[f32], rows: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
        for (t, o) in out.iter_mut().enumerate() {
            let dot: f32 = q
                .iter()
                .zip(row(rows, t, stride, q.len()))
                .map(|(a, b)| a * b.to_f32())
                .sum();
            *o = scale * dot;
        }
    }

    pub fn weighted_sum_f16(p: &[f32], rows: &[f16], stride: usize, out: &mut [f32]) {
        let d = out.len();
        for (t, &w) in p.iter().enumerate() {
            out.iter_mut()
                .zip(row(rows, t, stride, d))
                .for_each(|(o, r)| *o += w * r.to_f32());
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
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

    /// [`scores_f16_by_eight`] for `H` query heads of `q.len() / H` values over the same rows:
    /// each converted key vector feeds `H` FMAs (with one head per call, converting every row
    /// once per head of a grouped-query group was most of the work). Three rows at a time for
    /// three heads, four for fewer, the rows [`AHEAD`] asked for ahead (`fetch` values of each: a head's slice of each cache row,
    /// `stride` apart, which the hardware prefetchers follow late); a (row, head)'s sums take
    /// the same FMAs in the same order and the same reduction as alone, so its bits are the
    /// same.
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
}

/// AVX-512 F: sixteen f16 values converted per instruction (the conversions bound these
/// kernels at a head size of 64).
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
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
            let mut acc: [[__m512; 4]; H] = std::array::from_fn(|h| {
                std::array::from_fn(|j| unsafe { _mm512_loadu_ps(op.add(h * d + c + 16 * j)) })
            });
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect()
    }

    /// Head sizes around the 8-, 16- and 32-wide steps, and typical ones.
    const HEAD_DIMS: [usize; 11] = [1, 7, 8, 9, 16, 17, 33, 40, 64, 128, 130];

    /// Float64 oracles of both operations over rows `stride` apart starting at `offset`.
    fn oracle(q: &[f32], p: &[f32], rows: &[f64], stride: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
        let n = p.len();
        let scores = (0..n)
            .map(|t| (0..d).map(|i| f64::from(q[i]) * rows[t * stride + i]).sum())
            .collect();
        let sums = (0..d)
            .map(|i| (0..n).map(|t| f64::from(p[t]) * rows[t * stride + i]).sum())
            .collect();
        (scores, sums)
    }

    type DotFn = fn(&[f32], &[f32]) -> f32;

    /// Every dot product this CPU can run (the portable one, AVX2 and AVX-512 where present)
    /// against float64, at lengths around each vector width and the embedders' 384.
    #[test]
    fn dot_products_match_a_float64_oracle() {
        let mut rng = Rng::new(11);
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut kernels: Vec<(&str, DotFn)> = vec![("portable", dot_f32_scalar), ("dispatched", dot)];
        #[cfg(target_arch = "x86_64")]
        {
            let isas = crate::quant::kernels::Isa::available();
            if isas.contains(&Isa::Avx2) {
                // SAFETY: the CPU has AVX2, FMA and F16C.
                kernels.push(("avx2", |a, b| unsafe { avx2::dot_f32(a, b) }));
            }
            if isas.contains(&Isa::Avx512) {
                // SAFETY: the CPU has AVX-512 F with AVX2, FMA and F16C.
                kernels.push(("avx512", |a, b| unsafe { avx512::dot_f32(a, b) }));
            }
        }
        for n in (0..=80).chain([127, 128, 129, 383, 384, 385, 1000]) {
            let (a, b) = (random(&mut rng, n + 3), random(&mut rng, n));
            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
            let size: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (f64::from(x) * f64::from(y)).abs())
                .sum();
            for (name, k) in &kernels {
                // The longer slice is cut to the shorter one's length.
                let got = f64::from(k(&a, &b));
                assert!(
                    (got - exact).abs() <= 1e-6 * size.max(1.0),
                    "{name} n={n}: {got} vs {exact}"
                );
                assert_eq!(k(&b, &a).to_bits(), k(&a[..n], &b).to_bits(), "{name} n={n}: symmetric");
            }
        }
    }

    /// Every 8-bit dot product this CPU can run against the exact integer sum, at lengths
    /// around each vector width and the embedders' 384, with the extreme values included.
    #[test]
    fn int8_dot_products_are_exact() {
        let mut rng = Rng::new(12);
        type DotI8 = fn(&[i8], &[i8]) -> i32;
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut kernels: Vec<(&str, DotI8)> = vec![("portable", dot_i8_scalar), ("dispatched", dot_i8)];
        #[cfg(target_arch = "x86_64")]
        {
            let isas = crate::quant::kernels::Isa::available();
            if isas.contains(&Isa::Avx2) {
                // SAFETY: the CPU has AVX2.
                kernels.push(("avx2", |a, b| unsafe { avx2::dot_i8(a, b) }));
            }
            if isas.contains(&Isa::Avx512) {
                // SAFETY: the CPU has AVX-512 F, BW, VL and VNNI.
                kernels.push(("avx512", |a, b| unsafe { avx512::dot_i8(a, b) }));
            }
        }
        let byte = |rng: &mut Rng| (rng.next_u64() % 256) as u8 as i8;
        for n in (0..=130).chain([383, 384, 385, 1000, 4096]) {
            let a: Vec<i8> = (0..n + 5).map(|_| byte(&mut rng)).collect();
            let b: Vec<i8> = (0..n).map(|_| byte(&mut rng)).collect();
            let extremes = (vec![i8::MIN; n], vec![i8::MIN; n]);
            let exact =
                |a: &[i8], b: &[i8]| -> i64 { a.iter().zip(b).map(|(&x, &y)| i64::from(x) * i64::from(y)).sum() };
            for (name, k) in &kernels {
                assert_eq!(i64::from(k(&a, &b)), exact(&a, &b), "{name} n={n}");
                assert_eq!(k(&b, &a), k(&a[..n], &b), "{name} n={n}: symmetric");
                assert_eq!(
                    i64::from(k(&extremes.0, &extremes.1)),
                    16384 * n as i64,
                    "{name} n={n}: -128s"
                );
            }
        }
    }

    #[test]
    fn attention_kernels_match_a_float64_oracle() {
        let mut rng = Rng::new(3);
        for d in HEAD_DIMS {
            for (n, gap) in [(1, 0), (5, 3), (37, 24)] {
                let stride = d + gap;
                let q = random(&mut rng, d);
                let p: Vec<f32> = random(&mut rng, n).iter().map(|v| v.abs() / n as f32).collect();
                let values = random(&mut rng, (n - 1) * stride + d);
                let rows16: Vec<f16> = values.iter().map(|&x| f16::from_f32(x)).collect();
                let as64 = |r: &[f16]| r.iter().map(|v| f64::from(v.to_f32())).collect::<Vec<_>>();
                let (want_scores16, want_sums16) = oracle(&q, &p, &as64(&rows16), stride, d);
                let values64: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
                let (want_scores32, want_sums32) = oracle(&q, &p, &values64, stride, d);

                type Scores<T> = fn(&[f32], &[T], usize, f32, &mut [f32]);
                type Sums<T> = fn(&[f32], &[T], usize, &mut [f32]);
                #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
                let mut f16_impls: Vec<(&str, Scores<f16>, Sums<f16>)> = vec![
                    ("f16 dispatched", <f16 as KvElem>::scores, <f16 as KvElem>::weighted_sum),
                    ("f16 scalar", scalar::scores_f16, scalar::weighted_sum_f16),
                ];
                // The AVX2 kernels too where the dispatcher picks the AVX-512 ones.
                #[cfg(target_arch = "x86_64")]
                if Isa::detect().implies_avx2() {
                    // SAFETY (both): AVX2, FMA and F16C are present; the rows were made to fit.
                    f16_impls.push((
                        "f16 avx2",
                        |q, r, s, sc, o| unsafe { avx2::scores_f16(q, r, s, sc, o) },
                        |p, r, s, o| unsafe { avx2::weighted_sum_f16(p, r, s, o) },
                    ));
                }
                let tol = 1e-5 * (1.0 + d as f64);
                let close = |name: &str, got: &[f32], want: &[f64]| {
                    assert_eq!(got.len(), want.len());
                    for (i, (g, w)) in got.iter().zip(want).enumerate() {
                        assert!((f64::from(*g) - w).abs() <= tol, "{name} d={d} n={n} [{i}]: {g} vs {w}");
                    }
                };
                for (name, scores, sums) in f16_impls {
                    let mut s = vec![0f32; n];
                    scores(&q, &rows16, stride, 1.0, &mut s);
                    close(name, &s, &want_scores16);
                    let mut o = vec![0f32; d];
                    sums(&p, &rows16, stride, &mut o);
                    close(name, &o, &want_sums16);
                }
                let mut s = vec![0f32; n];
                f32::scores(&q, &values, stride, 0.5, &mut s);
                let half: Vec<f64> = want_scores32.iter().map(|v| v * 0.5).collect();
                close("f32", &s, &half);
                let mut o = vec![0f32; d];
                f32::weighted_sum(&p, &values, stride, &mut o);
                close("f32", &o, &want_sums32);
            }
        }
    }

    #[test]
    fn scores_do_not_depend_on_how_the_rows_are_split() {
        // A shared prefix and a sequence's own rows are scored in two calls; one call over all
        // rows must give the same bits, wherever the split falls in the groups of rows.
        let mut rng = Rng::new(8);
        for d in HEAD_DIMS.into_iter().chain([48, 96, 256]) {
            let (n, stride) = (29, d + 5);
            let q = random(&mut rng, d);
            let rows: Vec<f16> = random(&mut rng, (n - 1) * stride + d)
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect();
            let mut whole = vec![0f32; n];
            <f16 as KvElem>::scores(&q, &rows, stride, 0.125, &mut whole);
            for split in 0..=n {
                let mut parts = vec![0f32; n];
                let (a, b) = parts.split_at_mut(split);
                <f16 as KvElem>::scores(&q, &rows, stride, 0.125, a);
                <f16 as KvElem>::scores(&q, rows.get(split * stride..).unwrap_or(&[]), stride, 0.125, b);
                assert_eq!(parts, whole, "d={d} split at {split}");
            }
        }
    }

    /// Several query heads in one call (a grouped-query group) give every head the bits it
    /// gets alone, for f16 and f32 rows, any number of heads (the kernels take three at a
    /// time), head sizes around the vector widths, row counts that leave every remainder of
    /// the kernels' groups of three or four rows, and output strides wider than the rows.
    #[test]
    fn heads_together_give_the_bits_of_heads_alone() {
        fn check<T: KvElem>(rng: &mut Rng, to: impl Fn(f32) -> T) {
            for d in HEAD_DIMS.into_iter().chain([48, 96, 256]) {
                for heads in 1..=7 {
                    for n in [21, 22, 23] {
                        let (stride, out_stride) = (d + 3, 25);
                        let q = random(rng, heads * d);
                        let rows: Vec<T> = random(rng, (n - 1) * stride + d).into_iter().map(&to).collect();
                        let mut together = vec![f32::NAN; heads * out_stride];
                        T::scores_heads(&q, d, &rows, stride, 0.125, &mut together, out_stride, n, stride);
                        let p = random(rng, heads * out_stride);
                        let start = random(rng, heads * d);
                        let mut sums = start.clone();
                        T::weighted_sum_heads(&p, out_stride, n, &rows, stride, &mut sums, d, d);
                        for h in 0..heads {
                            let mut alone = vec![0f32; n];
                            T::scores(&q[h * d..(h + 1) * d], &rows, stride, 0.125, &mut alone);
                            let got = &together[h * out_stride..h * out_stride + n];
                            assert_eq!(
                                got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                                alone.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                                "scores d={d} heads={heads} h={h}"
                            );
                            assert!(
                                together[h * out_stride + n..(h + 1) * out_stride]
                                    .iter()
                                    .all(|x| x.is_nan()),
                                "wrote past its scores"
                            );
                            let mut sum = start[h * d..(h + 1) * d].to_vec();
                            T::weighted_sum(&p[h * out_stride..h * out_stride + n], &rows, stride, &mut sum);
                            assert_eq!(&sums[h * d..(h + 1) * d], &sum[..], "sums d={d} heads={heads} h={h}");
                        }
                    }
                }
            }
        }
        let mut rng = Rng::new(12);
        check::<f16>(&mut rng, f16::from_f32);
        check::<f32>(&mut rng, |x| x);
    }

    #[test]
    fn weighted_sum_adds_to_what_is_there() {
        let rows = [f16::from_f32(2.0); 10];
        let mut out = vec![1f32; 10];
        f16::weighted_sum(&[0.25], &rows, 10, &mut out);
        assert!(out.iter().all(|&v| v == 1.5));
    }

    #[test]
    #[should_panic(expected = "rows of")]
    fn rows_past_the_end_are_refused() {
        let rows = [f16::ZERO; 20];
        let mut out = vec![0f32; 3];
        // Three rows of 8 values 8 apart need 24 values.
        f16::scores(&[0.0; 8], &rows, 8, 1.0, &mut out);
    }
}
