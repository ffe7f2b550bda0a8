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
pub mod avx2;

#[cfg(target_arch = "x86_64")]
pub mod avx512;

#[cfg(test)]
mod tests;
