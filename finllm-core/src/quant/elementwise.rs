//! The element-wise work of the forward pass: softmax over attention scores, the gated
//! activations of the feed-forward block (SiLU, tanh-GELU), the exact (erf) GELU of
//! BERT-family encoders, and RMS normalisation of token rows.
//!
//! libm's `expf` is one call per value (about 5 ns here: at 300 cached positions, softmax alone
//! cost more than the scores it normalises). Where the CPU has FMA (x86-64 AVX2 level, AArch64
//! NEON) these run a vector `exp` instead: a power of two from the exponent bits times a degree-7
//! polynomial on the remainder, within 2 ulp of the true value over the whole f32 range. The
//! scalar versions keep libm's `exp` and are the reference; `FINLLM_FORCE_SCALAR` selects them.

use super::kernels::Isa;

/// `x · log2(e)` rounds to the exponent `n`; `ln 2` in two parts so that `x − n · ln 2` is exact
/// to about 2^-40 for every `n` in range.
const LOG2_E: f32 = std::f32::consts::LOG2_E;
const LN_2_HI: f32 = 0.693_145_75;
const LN_2_LO: f32 = 1.428_606_8e-6;
/// 1.5 · 2^23: adding it rounds to an integer (the sum's ulp is 1) and leaves that integer in
/// the low mantissa bits.
const ROUNDER: f32 = 12_582_912.0;
/// Inputs are clamped to this (where 2^n, n = 127, is the largest power of two f32 holds;
/// ln(f32::MAX) ≈ 88.72); below [`EXP_MIN`] the result is below the smallest normal float and
/// returned as zero.
const EXP_MAX: f32 = 88.0;
const EXP_MIN: f32 = -87.3;

/// `e^x`: exact-to-2-ulp for `EXP_MIN <= x <= EXP_MAX`, zero below, `e^EXP_MAX` above (no
/// infinities: callers divide by `1 + e^x`), NaN for NaN. Inlined into loops that the compiler
/// vectorises in the `target_feature` functions below.
#[inline(always)]
fn exp_poly(x: f32) -> f32 {
    // NaN fails both comparisons and stays NaN.
    let c = if x > EXP_MAX { EXP_MAX } else { x };
    let c = if c < EXP_MIN { EXP_MIN } else { c };
    let t = c.mul_add(LOG2_E, ROUNDER);
    let n = t - ROUNDER;
    // |n| <= 128 fits the low mantissa bits of t; 2^n is n + 127 in the exponent field.
    let e = t.to_bits().wrapping_sub(ROUNDER.to_bits()).wrapping_add(127) << 23;
    let r = n.mul_add(-LN_2_LO, n.mul_add(-LN_2_HI, c));
    // Taylor series of e^r to r^7: |r| <= ln(2) / 2, so the first term left out is below 2^-27.
    let mut p: f32 = 1.0 / 5040.0;
    let k: [f32; 7] = [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0];
    for k in k {
        p = p.mul_add(r, 1.0 / k);
    }
    let y = p * f32::from_bits(e);
    if x < EXP_MIN {
        0.0
    } else {
        y
    }
}

/// What the activation of a gated feed-forward block applies to the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `v · σ(v)`.
    Silu,
    /// `0.5 · v · (1 + tanh(√(2/π) · (v + 0.044715 v³)))`, computed as `v · σ(2 u)`.
    GeluTanh,
}

const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

/// The argument `z` of the logistic function each activation is `v · σ(z)` of.
#[inline(always)]
fn logistic_arg(v: f32, gate: Gate) -> f32 {
    match gate {
        Gate::Silu => v,
        Gate::GeluTanh => 2.0 * SQRT_TWO_OVER_PI * (v + 0.044715 * v * v * v),
    }
}

/// `gate[i] = act(gate[i]) · up[i]`.
pub fn gate_in_place(gate: &mut [f32], up: &[f32], act: Gate) {
    assert_eq!(gate.len(), up.len(), "gate and up projections of one size");
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512 {
        // SAFETY: the AVX-512 level implies AVX-512 F, AVX2 and FMA.
        return unsafe { x86::gate_avx512(gate, up, act) };
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().implies_avx2() {
        // SAFETY: the AVX2 level implies AVX2 and FMA, which the function is compiled for.
        return unsafe { x86::gate(gate, up, act) };
    }
    if neon() {
        return gate_with(gate, up, act, exp_poly);
    }
    gate_with(gate, up, act, f32::exp)
}

#[inline(always)]
fn gate_with(gate: &mut [f32], up: &[f32], act: Gate, exp: impl Fn(f32) -> f32) {
    // One branch per call, not per value, so that each loop vectorises.
    match act {
        Gate::Silu => gate_loop(gate, up, |v| logistic_arg(v, Gate::Silu), exp),
        Gate::GeluTanh => gate_loop(gate, up, |v| logistic_arg(v, Gate::GeluTanh), exp),
    }
}

#[inline(always)]
fn gate_loop(gate: &mut [f32], up: &[f32], arg: impl Fn(f32) -> f32, exp: impl Fn(f32) -> f32) {
    for (g, &u) in gate.iter_mut().zip(up) {
        let v = *g;
        *g = v / (1.0 + exp(-arg(v))) * u;
    }
}

/// `x = softmax(x)`: `e^(x_i − max) / Σ`. An empty slice stays empty.
pub fn softmax_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512 {
        // SAFETY: as in `gate_in_place`.
        return unsafe { x86::softmax_avx512(x) };
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().implies_avx2() {
        // SAFETY: as in `gate_in_place`.
        return unsafe { x86::softmax(x) };
    }
    if neon() {
        return softmax_with(x, exp_poly);
    }
    softmax_with(x, f32::exp)
}

#[inline(always)]
fn softmax_with(x: &mut [f32], exp: impl Fn(f32) -> f32) {
    let max = max_of(x);
    // Eight partial sums, so that the loop vectorises.
    let mut sums = [0f32; 8];
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        for (v, s) in c.iter_mut().zip(&mut sums) {
            *v = exp(*v - max);
            *s += *v;
        }
    }
    let mut sum: f32 = 0.0;
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / (sums.iter().sum::<f32>() + sum);
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `x = 0.5 · x · (1 + erf(x / √2))`, the exact GELU of BERT-family encoders, within about
/// 2e-7 · max(1, |x|) of the float64 value.
pub fn gelu_erf_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().implies_avx2() {
        // SAFETY: as in `gate_in_place`.
        return unsafe { x86::gelu_erf(x) };
    }
    if neon() {
        return gelu_erf_with(x, exp_poly);
    }
    gelu_erf_with(x, f32::exp)
}

/// Abramowitz & Stegun 7.1.26: for z >= 0, erfc(z) ≈ t (a1 + t (a2 + t (a3 + t (a4 + t a5))))
/// e^(−z²) with t = 1 / (1 + p z), absolute error below 1.5e-7.
const ERFC_P: f32 = 0.327_591_1;
const ERFC_A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];

#[inline(always)]
fn gelu_erf_with(x: &mut [f32], exp: impl Fn(f32) -> f32) {
    for v in x.iter_mut() {
        let x = *v;
        let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
        let t = 1.0 / ERFC_P.mul_add(z, 1.0);
        let mut p = ERFC_A[4];
        for a in [ERFC_A[3], ERFC_A[2], ERFC_A[1], ERFC_A[0]] {
            p = p.mul_add(t, a);
        }
        // erfc(|x| / √2): 1 + erf(x / √2) is that for x < 0 and 2 minus it otherwise, so a
        // negative input keeps its relative accuracy (no cancellation).
        let q = p * t * exp(-z * z);
        let one_plus_erf = if x < 0.0 { q } else { 2.0 - q };
        // Far enough below zero the product is 0 (and for −∞, 0 rather than NaN).
        *v = if one_plus_erf == 0.0 {
            0.0
        } else {
            0.5 * x * one_plus_erf
        };
    }
}

/// Rows whose sums of squares [`rms_norm_rows`] adds side by side.
pub const NORM_ROWS_TOGETHER: usize = 8;

/// RMS-normalise every row of `x` (rows as long as `w`) into `out`: `v / √(Σv²/dim + eps) · w`.
/// Each row's squares are added one after another from its first value, as a plain sum (and
/// candle's CPU kernel) does, so a row's bits depend on that row alone; eight rows at a time
/// share the walk (one row alone waits on each add's latency), with AVX2 as columns of an 8×8
/// transpose (the rows' values are `dim` apart: read one by one they cost a fifth of a batched
/// decode step's serial work).
pub fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "RMS norm input and output of one size");
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().implies_avx2() {
        // SAFETY: the AVX2 level implies AVX2 and FMA, which the function is compiled for.
        return unsafe { x86::rms_norm_rows(x, w, eps, out) };
    }
    norm_rows_with(x, w, eps, out, plain_squares)
}

/// [`rms_norm_rows`] in place.
pub fn rms_norm_rows_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().implies_avx2() {
        // SAFETY: as in `rms_norm_rows`.
        return unsafe { x86::rms_norm_rows_in_place(x, w, eps) };
    }
    norm_rows_in_place_with(x, w, eps, plain_squares)
}

/// Each row's sum of squares of a group of rows (at most [`NORM_ROWS_TOGETHER`]; the entries
/// past them are unused), in each row's order.
type Squares = fn(&[f32], usize) -> [f32; NORM_ROWS_TOGETHER];

#[inline(always)]
fn norm_rows_with(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], squares: Squares) {
    let dim = w.len().max(1);
    let group = NORM_ROWS_TOGETHER * dim;
    for (rows, dst) in x.chunks(group).zip(out.chunks_mut(group)) {
        let scales = squares(rows, dim).map(|s| (s / dim as f32 + eps).sqrt());
        for ((row, dst), &m) in rows.chunks_exact(dim).zip(dst.chunks_exact_mut(dim)).zip(&scales) {
            for ((d, &v), &w) in dst.iter_mut().zip(row).zip(w) {
                *d = v / m * w;
            }
        }
    }
}

#[inline(always)]
fn norm_rows_in_place_with(x: &mut [f32], w: &[f32], eps: f32, squares: Squares) {
    let dim = w.len().max(1);
    for rows in x.chunks_mut(NORM_ROWS_TOGETHER * dim) {
        let scales = squares(rows, dim).map(|s| (s / dim as f32 + eps).sqrt());
        for (row, &m) in rows.chunks_exact_mut(dim).zip(&scales) {
            for (v, &w) in row.iter_mut().zip(w) {
                *v = *v / m * w;
            }
        }
    }
}

/// [`Squares`] without SIMD: a whole group's rows share the walk, so that their dependency
/// chains run side by side.
fn plain_squares(rows: &[f32], dim: usize) -> [f32; NORM_ROWS_TOGETHER] {
    let n = rows.len() / dim;
    let mut sum2 = [0f32; NORM_ROWS_TOGETHER];
    if n == NORM_ROWS_TOGETHER {
        for i in 0..dim {
            for (r, s) in sum2.iter_mut().enumerate() {
                let v = rows[r * dim + i];
                *s += v * v;
            }
        }
    } else {
        for (row, s) in rows.chunks_exact(dim).zip(sum2.iter_mut()) {
            *s = row.iter().map(|v| v * v).sum();
        }
    }
    sum2
}

/// The largest value (NaN if any is NaN, as the sum that follows would be).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut nan = false;
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            nan |= v.is_nan();
            *a = if v > *a { v } else { *a };
        }
    }
    for &v in rest {
        nan |= v.is_nan();
        acc[0] = if v > acc[0] { v } else { acc[0] };
    }
    if nan {
        return f32::NAN;
    }
    acc.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// AArch64 NEON (which has FMA): the baseline build vectorises the polynomial as it is.
fn neon() -> bool {
    matches!(Isa::detect(), Isa::Neon | Isa::NeonDot)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gate(gate: &mut [f32], up: &[f32], act: Gate) {
        gate_with(gate, up, act, exp_poly)
    }

    /// [`gate`] compiled for AVX-512: sixteen values at a time, each value's operations (and
    /// bits) the same as eight at a time (a batched decode step's activation took 0.19 ms).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn gate_avx512(gate: &mut [f32], up: &[f32], act: Gate) {
        gate_with(gate, up, act, exp_poly)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn softmax(x: &mut [f32]) {
        softmax_with(x, exp_poly)
    }

    /// [`softmax`] compiled for AVX-512: the same eight partial sums, so the same bits.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn softmax_avx512(x: &mut [f32]) {
        softmax_with(x, exp_poly)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gelu_erf(x: &mut [f32]) {
        gelu_erf_with(x, exp_poly)
    }

    /// [`super::rms_norm_rows`].
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        norm_rows_with(x, w, eps, out, squares)
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rms_norm_rows_in_place(x: &mut [f32], w: &[f32], eps: f32) {
        norm_rows_in_place_with(x, w, eps, squares)
    }

    /// [`super::plain_squares`] with eight rows' values read eight at a time and transposed,
    /// so that each of the eight columns adds one square to every row's sum (a multiply, then
    /// an add: the plain sum's roundings); the columns past a multiple of eight one by one.
    fn squares(rows: &[f32], dim: usize) -> [f32; NORM_ROWS_TOGETHER] {
        if rows.len() != NORM_ROWS_TOGETHER * dim {
            return plain_squares(rows, dim);
        }
        // SAFETY: this module's callers run only where AVX2 is present.
        unsafe { squares_avx2(rows, dim) }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn squares_avx2(rows: &[f32], dim: usize) -> [f32; NORM_ROWS_TOGETHER] {
        use std::arch::x86_64::*;
        let p = rows.as_ptr();
        let mut s = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= dim {
            // SAFETY: row k's values i..i + 8 lie inside `rows` (eight rows of `dim`).
            let r: [__m256; 8] = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(p.add(k * dim + i)) });
            // Pairs of rows interleaved, then quads; each 128-bit half then holds four rows'
            // values of one column (low half: columns i..i+4, high: i+4..i+8).
            let t: [__m256; 8] = std::array::from_fn(|k| {
                let (a, b) = (r[k / 2 * 2], r[k / 2 * 2 + 1]);
                if k % 2 == 0 {
                    _mm256_unpacklo_ps(a, b)
                } else {
                    _mm256_unpackhi_ps(a, b)
                }
            });
            // u[4h + j]: rows 4h..4h+4, column j (and j + 4 in the high half).
            let u: [__m256; 8] = std::array::from_fn(|k| {
                let (h, j) = (k / 4, k % 4);
                let (lo, hi) = (t[4 * h + j / 2], t[4 * h + 2 + j / 2]);
                if j % 2 == 0 {
                    _mm256_shuffle_ps::<0x44>(lo, hi)
                } else {
                    _mm256_shuffle_ps::<0xee>(lo, hi)
                }
            });
            for j in 0..8 {
                let (a, b) = (u[j % 4], u[4 + j % 4]);
                let col = if j < 4 {
                    _mm256_permute2f128_ps::<0x20>(a, b)
                } else {
                    _mm256_permute2f128_ps::<0x31>(a, b)
                };
                s = _mm256_add_ps(s, _mm256_mul_ps(col, col));
            }
            i += 8;
        }
        let mut sum2 = [0f32; NORM_ROWS_TOGETHER];
        // SAFETY: eight floats.
        unsafe { _mm256_storeu_ps(sum2.as_mut_ptr(), s) };
        for i in i..dim {
            for (r, s) in sum2.iter_mut().enumerate() {
                let v = rows[r * dim + i];
                *s += v * v;
            }
        }
        sum2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    /// The AVX-512 builds of the activation and the softmax give the AVX2 builds' bits (a
    /// machine's result must not depend on its vector width), at lengths around both widths.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sixteen_values_at_a_time_give_the_bits_of_eight() {
        if !std::arch::is_x86_feature_detected!("avx512f") || !Isa::detect().implies_avx2() {
            return;
        }
        let mut rng = Rng::new(23);
        for n in [1, 7, 8, 15, 16, 17, 33, 100, 1536] {
            let x: Vec<f32> = (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * 12.0) as f32).collect();
            let up: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            for act in [Gate::Silu, Gate::GeluTanh] {
                let (mut wide, mut narrow) = (x.clone(), x.clone());
                // SAFETY: AVX-512 F, AVX2 and FMA were checked above.
                unsafe {
                    x86::gate_avx512(&mut wide, &up, act);
                    x86::gate(&mut narrow, &up, act);
                }
                assert_eq!(bits(&wide), bits(&narrow), "{act:?} n={n}");
            }
            let (mut wide, mut narrow) = (x.clone(), x.clone());
            // SAFETY: as above.
            unsafe {
                x86::softmax_avx512(&mut wide);
                x86::softmax(&mut narrow);
            }
            assert_eq!(bits(&wide), bits(&narrow), "softmax n={n}");
        }
    }

    /// |a − b| in units of b's last place (f32).
    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = f64::from(f32::from_bits(b32.abs().to_bits() + 1) - b32.abs());
        (f64::from(a) - b).abs() / ulp
    }

    #[test]
    fn vector_exp_is_within_two_ulp_of_the_float64_exp() {
        // Every 997th f32 up to 88, both signs, and the edges.
        let mut worst = 0f64;
        let mut bits = 0u32;
        while bits <= EXP_MAX.to_bits() {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                if (EXP_MIN..=EXP_MAX).contains(&x) {
                    let got = exp_poly(x);
                    let want = f64::from(x).exp();
                    worst = worst.max(ulps(got, want));
                }
            }
            bits += 997;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_poly(0.0), 1.0);
        assert_eq!(exp_poly(-100.0), 0.0);
        assert_eq!(exp_poly(f32::NEG_INFINITY), 0.0);
        assert!(ulps(exp_poly(EXP_MAX), f64::from(EXP_MAX).exp()) <= 2.0);
        assert!(ulps(exp_poly(EXP_MIN), f64::from(EXP_MIN).exp()) <= 2.0);
        assert!(exp_poly(1000.0).is_finite() && exp_poly(1000.0) > 1e38);
        assert!(exp_poly(f32::INFINITY).is_finite());
        assert!(exp_poly(f32::NAN).is_nan());
    }

    /// Both paths (the dispatched one and libm's) of both operations against float64, over
    /// lengths around the eight-wide steps.
    #[test]
    fn softmax_and_gates_match_float64() {
        let mut rng = Rng::new(5);
        for n in [0, 1, 7, 8, 9, 31, 300] {
            let x: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 60.0 - 30.0) as f32).collect();
            let up: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
            // The oracle takes x − max as the kernels do, in f32: its rounding is the input's.
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f64> = x.iter().map(|&v| f64::from(v - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let mut fast = x.clone();
            softmax_in_place(&mut fast);
            let mut libm = x.clone();
            softmax_with(&mut libm, f32::exp);
            for (i, want) in e.iter().map(|v| v / total).enumerate() {
                for (name, got) in [("dispatched", fast[i]), ("libm", libm[i])] {
                    assert!(
                        (f64::from(got) - want).abs() <= 1e-6 * want + 1e-30,
                        "{name} softmax n={n} [{i}]"
                    );
                }
            }
            for act in [Gate::Silu, Gate::GeluTanh] {
                let mut fast = x.clone();
                gate_in_place(&mut fast, &up, act);
                let mut libm = x.clone();
                gate_with(&mut libm, &up, act, f32::exp);
                for i in 0..n {
                    let v = f64::from(x[i]);
                    let a = match act {
                        Gate::Silu => v / (1.0 + (-v).exp()),
                        Gate::GeluTanh => {
                            0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh())
                        }
                    };
                    let want = a * f64::from(up[i]);
                    for (name, got) in [("dispatched", fast[i]), ("libm", libm[i])] {
                        let err = (f64::from(got) - want).abs();
                        assert!(
                            err <= 1e-6 * want.abs() + 1e-6,
                            "{name} {act:?} n={n} [{i}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn erf_gelu_matches_float64() {
        // Dense over the range that matters, then wide random values, infinities and NaN.
        let mut rng = Rng::new(9);
        let mut x: Vec<f32> = (-1200..=1200).map(|i| i as f32 / 100.0).collect();
        x.extend((0..999).map(|_| (rng.next_f64() * 200.0 - 100.0) as f32));
        let mut fast = x.clone();
        gelu_erf_in_place(&mut fast);
        let mut libm = x.clone();
        gelu_erf_with(&mut libm, f32::exp);
        let mut worst = 0f64;
        for (i, &v) in x.iter().enumerate() {
            let v64 = f64::from(v);
            let want = 0.5 * v64 * (1.0 + libm::erf(v64 / std::f64::consts::SQRT_2));
            for got in [fast[i], libm[i]] {
                let err = (f64::from(got) - want).abs() / v64.abs().max(1.0);
                worst = worst.max(err);
            }
        }
        assert!(worst <= 2e-7, "worst scaled error {worst:e}");
        let mut edge = [f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.0, -0.0];
        gelu_erf_in_place(&mut edge);
        assert_eq!(edge[0], f32::INFINITY);
        assert_eq!(edge[1], 0.0);
        assert!(edge[2].is_nan());
        assert_eq!((edge[3], edge[4]), (0.0, 0.0));
    }

    #[test]
    fn softmax_survives_extremes() {
        // One huge score takes all the weight; -inf scores take none; a NaN poisons the row.
        let mut x = vec![1e30, 0.0, f32::NEG_INFINITY, -1e30];
        softmax_in_place(&mut x);
        assert_eq!(x, [1.0, 0.0, 0.0, 0.0]);
        let mut x = vec![0.5, f32::NAN, 1.0];
        softmax_in_place(&mut x);
        assert!(x.iter().all(|v| v.is_nan()));
    }
}
