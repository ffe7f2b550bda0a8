//! The block kernels on AVX2 with FMA and F16C.

use super::*;
use std::arch::x86_64::*;

const PREFETCH_DISTANCE: usize = 1024;

// The safe wrappers are only handed out by `dot_fn` after `Isa::detect` / `Isa::available`
// confirmed AVX2, FMA and F16C on this CPU.

pub fn q4_0(row: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(row.len() >= a.len() * Q4_0_BYTES);
    // SAFETY: AVX2+FMA present (see above); the assert bounds every load.
    unsafe { q4_0_impl(row, a) }
}

pub fn q4_1(row: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(row.len() >= a.len() * Q4_1_BYTES);
    // SAFETY: AVX2+FMA present (see above); the assert bounds every load.
    unsafe { q4_1_impl(row, a) }
}

pub fn q8_0(row: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(row.len() >= a.len() * Q8_0_BYTES);
    // SAFETY: AVX2+FMA present (see above); the assert bounds every load.
    unsafe { q8_0_impl(row, a) }
}

pub fn q5_0(row: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(row.len() >= a.len() * Q5_0_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
    unsafe { q5_impl::<false, 1>(row, [a])[0] }
}

pub fn q5_0_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_0_BYTES);
    // SAFETY: as for q5_0.
    unsafe { q5_impl::<false, 4>(row, a) }
}

pub fn q5_0_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_0_BYTES);
    // SAFETY: as for q5_0.
    unsafe { q5_impl::<false, N>(row, a) }
}

pub fn q5_1(row: &[u8], a: &[BlockQ8]) -> f32 {
    assert!(row.len() >= a.len() * Q5_1_BYTES);
    // SAFETY: as for q5_0.
    unsafe { q5_impl::<true, 1>(row, [a])[0] }
}

pub fn q5_1_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_1_BYTES);
    // SAFETY: as for q5_0.
    unsafe { q5_impl::<true, 4>(row, a) }
}

pub fn q5_1_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_1_BYTES);
    // SAFETY: as for q5_0.
    unsafe { q5_impl::<true, N>(row, a) }
}

/// 0xff in lane `j` where bit `j` of the little-endian u32 at `p` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bit_lanes(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes at p.
    let bits = unsafe { p.cast::<u32>().read_unaligned() };
    // Lane j takes byte j / 8 of the word...
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
    );
    // ...and is all ones once every bit but j % 8 is set too.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
}

/// Q5_0 (`MIN = false`: weights `d·(q - 16)`) and Q5_1 (`MIN = true`: `d·q + m`) for `N`
/// tokens. The 5-bit values are unsigned, so they multiply the signed activations directly;
/// Q5_0's `- 16` comes off as `16·Σy` per block, as Q4_0's `- 8` does. The same operations
/// run per token whatever `N`, so the four-token results equal the one-token ones.
// The token index walks the token arrays and their accumulators in lockstep.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_impl<const MIN: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let (bytes, qh_at) = if MIN { (Q5_1_BYTES, 4) } else { (Q5_0_BYTES, 2) };
    let mut acc = [_mm256_setzero_ps(); N];
    let mut scalar_terms = [0f32; N];
    for i in 0..a[0].len() {
        // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
        let b = unsafe { row.as_ptr().add(i * bytes) };
        prefetch(b);
        let d = unsafe { f16(b) };
        let fifth = _mm256_and_si256(unsafe { bit_lanes(b.add(qh_at)) }, _mm256_set1_epi8(0x10));
        let q = _mm256_or_si256(unsafe { nibbles(b.add(qh_at + 4)) }, fifth);
        for t in 0..N {
            let y = &a[t][i];
            let dd = d * y.d;
            let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8_i8(q, s), acc[t]);
            if MIN {
                scalar_terms[t] += unsafe { f16(b.add(2)) } * y.s;
            } else {
                scalar_terms[t] -= dd * (16 * y.sum) as f32;
            }
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + scalar_terms[t])
}

/// 32 nibbles from 16 bytes: low nibbles in lanes 0..16, high nibbles in lanes 16..32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at p.
    let raw = unsafe { _mm_loadu_si128(p.cast()) };
    let mask = _mm_set1_epi8(0x0f);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// Sum of u8 × i8 products as 8 i32 lanes converted to f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(u, s);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Ask for the weights a few cache lines ahead: on the VMs we run on, the hardware
/// prefetcher alone leaves a single core at a third of its cache-resident speed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch(p: *const u8) {
    // Prefetching never faults, even past the end of the mapping.
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_DISTANCE).cast());
}

/// An f16 at `p` (unaligned) as f32, with the F16C instruction.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes at p.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_impl(row: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut correction = 0f32;
    for (i, y) in a.iter().enumerate() {
        // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
        let b = unsafe { row.as_ptr().add(i * Q4_0_BYTES) };
        prefetch(b);
        let dd = unsafe { f16(b) } * y.d;
        let q = unsafe { nibbles(b.add(2)) };
        let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8_i8(q, s), acc);
        // The weights are nibble - 8: subtract 8 * sum(activations).
        correction += dd * (8 * y.sum) as f32;
    }
    hsum(acc) - correction
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_impl(row: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    let mut offsets = 0f32;
    for (i, y) in a.iter().enumerate() {
        // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
        let b = unsafe { row.as_ptr().add(i * Q4_1_BYTES) };
        prefetch(b);
        let q = unsafe { nibbles(b.add(4)) };
        let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
        let d = unsafe { f16(b) };
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), dot_u8_i8(q, s), acc);
        offsets += unsafe { f16(b.add(2)) } * y.s;
    }
    hsum(acc) + offsets
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_impl(row: &[u8], a: &[BlockQ8]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (i, y) in a.iter().enumerate() {
        // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
        let b = unsafe { row.as_ptr().add(i * Q8_0_BYTES) };
        prefetch(b);
        let w = unsafe { _mm256_loadu_si256(b.add(2).cast()) };
        let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
        // |w| as unsigned times activations carrying w's sign.
        let p = dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(unsafe { f16(b) } * y.d), p, acc);
    }
    hsum(acc)
}

pub fn q4_0_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_0_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
    unsafe { q4_0_xn_impl::<4>(row, a) }
}

pub fn q4_0_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_0_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
    unsafe { q4_0_xn_impl::<N>(row, a) }
}

pub fn q4_1_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_1_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
    unsafe { q4_1_xn_impl::<4>(row, a) }
}

pub fn q4_1_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_1_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
    unsafe { q4_1_xn_impl::<N>(row, a) }
}

pub fn q8_0_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q8_0_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
    unsafe { q8_0_xn_impl::<4>(row, a) }
}

pub fn q8_0_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let n = a[0].len();
    assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q8_0_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
    unsafe { q8_0_xn_impl::<N>(row, a) }
}

// The x4 and xn (2 or 3 tokens) kernels repeat the single-token arithmetic per token, in the
// same order, so each lane's result is bit-identical to the single-token kernel's.

// The block index walks the row and four token arrays in lockstep.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_xn_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut correction = [0f32; N];
    for i in 0..a[0].len() {
        // SAFETY: bounds asserted by the wrapper.
        let b = unsafe { row.as_ptr().add(i * Q4_0_BYTES) };
        prefetch(b);
        let d = unsafe { f16(b) };
        let q = unsafe { nibbles(b.add(2)) };
        for t in 0..N {
            let y = &a[t][i];
            let dd = d * y.d;
            let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8_i8(q, s), acc[t]);
            correction[t] += dd * (8 * y.sum) as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) - correction[t])
}

// The block index walks the row and four token arrays in lockstep.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_1_xn_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut offsets = [0f32; N];
    for i in 0..a[0].len() {
        // SAFETY: bounds asserted by the wrapper.
        let b = unsafe { row.as_ptr().add(i * Q4_1_BYTES) };
        prefetch(b);
        let q = unsafe { nibbles(b.add(4)) };
        let (d, m) = unsafe { (f16(b), f16(b.add(2))) };
        for t in 0..N {
            let y = &a[t][i];
            let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), dot_u8_i8(q, s), acc[t]);
            offsets[t] += m * y.s;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + offsets[t])
}

// The block index walks the row and four token arrays in lockstep.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_xn_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    for i in 0..a[0].len() {
        // SAFETY: bounds asserted by the wrapper.
        let b = unsafe { row.as_ptr().add(i * Q8_0_BYTES) };
        prefetch(b);
        let w = unsafe { _mm256_loadu_si256(b.add(2).cast()) };
        let d = unsafe { f16(b) };
        let aw = _mm256_sign_epi8(w, w);
        for t in 0..N {
            let y = &a[t][i];
            let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let p = dot_u8_i8(aw, _mm256_sign_epi8(s, w));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), p, acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

// K-quants: one generic body serves the single-token kernel (N = 1) and the four-token one,
// so every token sees exactly the same sequence of operations.

pub fn q4_k(row: &[u8], a: &[BlockQ8]) -> f32 {
    check_k(row, &[a], Q4_K_BYTES);
    // SAFETY: AVX2+FMA+F16C present (see above); loads stay inside bounds-checked slices.
    unsafe { q4_5_k_impl::<1, false>(row, [a])[0] }
}

pub fn q4_k_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    check_k(row, &a, Q4_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q4_5_k_impl::<4, false>(row, a) }
}

pub fn q4_k_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    check_k(row, &a, Q4_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q4_5_k_impl::<N, false>(row, a) }
}

pub fn q5_k(row: &[u8], a: &[BlockQ8]) -> f32 {
    check_k(row, &[a], Q5_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q4_5_k_impl::<1, true>(row, [a])[0] }
}

pub fn q5_k_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    check_k(row, &a, Q5_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q4_5_k_impl::<4, true>(row, a) }
}

pub fn q5_k_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    check_k(row, &a, Q5_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q4_5_k_impl::<N, true>(row, a) }
}

pub fn q6_k(row: &[u8], a: &[BlockQ8]) -> f32 {
    check_k(row, &[a], Q6_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q6_k_impl::<1>(row, [a])[0] }
}

pub fn q6_k_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
    check_k(row, &a, Q6_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q6_k_impl::<4>(row, a) }
}

pub fn q6_k_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    check_k(row, &a, Q6_K_BYTES);
    // SAFETY: as for q4_k.
    unsafe { q6_k_impl::<N>(row, a) }
}

/// Whole super-blocks, every token as long as the first, and the row long enough.
pub(super) fn check_k(row: &[u8], a: &[&[BlockQ8]], bytes: usize) {
    let n = a[0].len();
    assert!(
        n.is_multiple_of(SUBS) && a.iter().all(|x| x.len() == n) && row.len() >= n / SUBS * bytes,
        "K-quant row of {} bytes against {n} activation blocks",
        row.len()
    );
}

/// Prefetch every cache line of a super-block (see [`prefetch`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch_block(b: *const u8, bytes: usize) {
    for off in (0..bytes).step_by(64) {
        prefetch(b.wrapping_add(off));
    }
}

/// `d * v[j]` for eight 6-bit scales or mins.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn times8(d: f32, v: [u8; SUBS]) -> __m256 {
    let w = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(v))));
    _mm256_mul_ps(_mm256_set1_ps(d), w)
}

/// The scales `d` and the exact sums of a super-block's eight activation blocks, as two
/// vectors (lane `j` from block `j`): the first 16 bytes of each block are `d, s, sum, pad`,
/// and a 4 × 4 transpose brings the `d`s and the `sum`s together.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales_and_sums(ys: &[BlockQ8; SUBS]) -> (__m256, __m256) {
    let p = ys.as_ptr().cast::<f32>();
    let stride = size_of::<BlockQ8>() / size_of::<f32>();
    // SAFETY: each load reads the first 16 bytes of one of the eight blocks, which are
    // 16-byte aligned (`repr(align(16))`).
    let (v04, v15, v26, v37) = unsafe {
        let head = |j: usize| p.add(j * stride);
        (
            _mm256_set_m128(_mm_load_ps(head(4)), _mm_load_ps(head(0))),
            _mm256_set_m128(_mm_load_ps(head(5)), _mm_load_ps(head(1))),
            _mm256_set_m128(_mm_load_ps(head(6)), _mm_load_ps(head(2))),
            _mm256_set_m128(_mm_load_ps(head(7)), _mm_load_ps(head(3))),
        )
    };
    // [d0 d1 s0 s1 | d4 d5 s4 s5], [d2 d3 s2 s3 | d6 d7 s6 s7] -> [d0 d1 d2 d3 | d4 d5 d6 d7]
    let lo = (_mm256_unpacklo_ps(v04, v15), _mm256_unpacklo_ps(v26, v37));
    let d = _mm256_shuffle_ps::<0b01_00_01_00>(lo.0, lo.1);
    let hi = (_mm256_unpackhi_ps(v04, v15), _mm256_unpackhi_ps(v26, v37));
    let sum_bits = _mm256_castps_si256(_mm256_shuffle_ps::<0b01_00_01_00>(hi.0, hi.1));
    // |sum| <= 32 * 127: exact in f32.
    (d, _mm256_cvtepi32_ps(sum_bits))
}

/// The eight sub-blocks of a Q4_K / Q5_K super-block as unsigned bytes (0..16 or 0..32).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q4_5_k<const HIGH: bool>(b: *const u8) -> [__m256i; SUBS] {
    let m4 = _mm256_set1_epi8(0x0f);
    let qs_at = if HIGH { Q5_K_QS_AT } else { Q4_K_QS_AT };
    let mut q = [_mm256_setzero_si256(); SUBS];
    // SAFETY (all loads): the caller guarantees a whole super-block at b.
    let qh = if HIGH {
        unsafe { _mm256_loadu_si256(b.add(Q5_K_QH_AT).cast()) }
    } else {
        _mm256_setzero_si256()
    };
    for p in 0..SUBS / 2 {
        let raw = unsafe { _mm256_loadu_si256(b.add(qs_at + QK * p).cast()) };
        q[2 * p] = _mm256_and_si256(raw, m4);
        q[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        if HIGH {
            // Bits 2p and 2p + 1 of each qh byte are the fifth bits of this pair; a 16-bit
            // shift by at most 6 leaves them uncontaminated by the next byte.
            let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * p as i32));
            let one = _mm256_and_si256(h, _mm256_set1_epi8(1));
            let two = _mm256_and_si256(h, _mm256_set1_epi8(2));
            q[2 * p] = _mm256_or_si256(q[2 * p], _mm256_slli_epi16(one, 4));
            q[2 * p + 1] = _mm256_or_si256(q[2 * p + 1], _mm256_slli_epi16(two, 3));
        }
    }
    q
}

/// The activation blocks of super-block `i` for one token.
#[inline(always)]
pub(super) fn super_block(a: &[BlockQ8], i: usize) -> &[BlockQ8; SUBS] {
    a[SUBS * i..SUBS * (i + 1)].try_into().expect("eight blocks")
}

/// Q4_K (`HIGH = false`) and Q5_K (`HIGH = true`, the fifth bits in 32 bytes before the
/// nibbles) for `N` tokens. Per token the weights of a super-block are unpacked once and its
/// eight sub-blocks run in order, into two accumulators (even and odd sub-blocks, halving
/// the FMA dependency chain); the minimum term `-Σ_j dmin·min_j · d_j·sum_j` joins them as
/// one vector FMA per super-block, since only the sum of their lanes matters.
// The token index walks the token arrays and their accumulators in lockstep.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_5_k_impl<const N: usize, const HIGH: bool>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let bytes = if HIGH { Q5_K_BYTES } else { Q4_K_BYTES };
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (i, blk) in row.chunks_exact(bytes).take(a[0].len() / SUBS).enumerate() {
        let b = blk.as_ptr();
        prefetch_block(b, bytes);
        // SAFETY: blk holds a whole super-block.
        let (d, dmin) = unsafe { (f16(b), f16(b.add(2))) };
        let q = unsafe { unpack_q4_5_k::<HIGH>(b) };
        let (sc, m) = k_scales_mins(&blk[K_SCALES_AT..]);
        let (dsc, dmm) = (times8(d, sc), times8(dmin, m));
        for t in 0..N {
            let ys = super_block(a[t], i);
            let (yd, ysum) = scales_and_sums(ys);
            let mut scale = [0f32; SUBS];
            // SAFETY: scale holds eight f32.
            unsafe { _mm256_storeu_ps(scale.as_mut_ptr(), _mm256_mul_ps(dsc, yd)) };
            let [mut even, mut odd] = acc[t];
            even = _mm256_fnmadd_ps(dmm, _mm256_mul_ps(yd, ysum), even);
            for p in 0..SUBS / 2 {
                let (j, k) = (2 * p, 2 * p + 1);
                // SAFETY: BlockQ8::qs is 32 bytes.
                let (sj, sk) = unsafe {
                    (
                        _mm256_loadu_si256(ys[j].qs.as_ptr().cast()),
                        _mm256_loadu_si256(ys[k].qs.as_ptr().cast()),
                    )
                };
                even = _mm256_fmadd_ps(_mm256_set1_ps(scale[j]), dot_u8_i8(q[j], sj), even);
                odd = _mm256_fmadd_ps(_mm256_set1_ps(scale[k]), dot_u8_i8(q[k], sk), odd);
            }
            acc[t] = [even, odd];
        }
    }
    std::array::from_fn(|t| hsum(_mm256_add_ps(acc[t][0], acc[t][1])))
}

/// One half (128 elements) of a Q6_K super-block: four runs of 32 six-bit values minus 32,
/// as signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_q6_k_half(b: *const u8, n: usize) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0x0f);
    // SAFETY: the caller guarantees a whole super-block at b.
    let (ql0, ql1, qh) = unsafe {
        (
            _mm256_loadu_si256(b.add(64 * n).cast()),
            _mm256_loadu_si256(b.add(64 * n + QK).cast()),
            _mm256_loadu_si256(b.add(Q6_K_QH_AT + QK * n).cast()),
        )
    };
    // The bit pairs of qh moved to bits 4-5 of each byte (16-bit shifts, masked after the
    // shift so nothing leaks in from the neighbouring byte).
    let q = [
        _mm256_or_si256(
            _mm256_and_si256(ql0, m4),
            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4),
        ),
        _mm256_or_si256(
            _mm256_and_si256(ql1, m4),
            _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c)), 2),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
            _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
            _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30)),
        ),
    ];
    let m32 = _mm256_set1_epi8(32);
    [
        _mm256_sub_epi8(q[0], m32),
        _mm256_sub_epi8(q[1], m32),
        _mm256_sub_epi8(q[2], m32),
        _mm256_sub_epi8(q[3], m32),
    ]
}

/// Q6_K for `N` tokens. The 6-bit values minus 32 are signed, so (as for Q8_0) their
/// magnitudes multiply activations that carry their signs; the two i8 scales of the
/// 16-element halves of an activation block enter through the pairwise i16 → i32 sum.
// The token index walks the token arrays and their accumulators in lockstep.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    for (i, blk) in row.chunks_exact(Q6_K_BYTES).take(a[0].len() / SUBS).enumerate() {
        let b = blk.as_ptr();
        prefetch_block(b, Q6_K_BYTES);
        // SAFETY: blk holds a whole super-block.
        let d = unsafe { f16(b.add(Q6_K_D_AT)) };
        let scales = unsafe { _mm_loadu_si128(b.add(Q6_K_SCALES_AT).cast()) };
        for n in 0..2 {
            let w = unsafe { unpack_q6_k_half(b, n) };
            let aw = [
                _mm256_abs_epi8(w[0]),
                _mm256_abs_epi8(w[1]),
                _mm256_abs_epi8(w[2]),
                _mm256_abs_epi8(w[3]),
            ];
            // Scales 2k and 2k + 1 as i16, each spread over the eight pair sums of its
            // 16 elements (k = 4n + g <= 7, so the byte patterns fit).
            let mut sc = [_mm256_setzero_si256(); 4];
            for (g, sc) in sc.iter_mut().enumerate() {
                let k = (4 * n + g) as i64;
                let pick = _mm_set_epi64x(0x0101_0101_0101_0101 * (2 * k + 1), 0x0101_0101_0101_0101 * (2 * k));
                *sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
            }
            for t in 0..N {
                let ys = super_block(a[t], i);
                let [mut even, mut odd] = acc[t];
                for g in 0..4 {
                    let y = &ys[4 * n + g];
                    // SAFETY: BlockQ8::qs is 32 bytes.
                    let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[g], _mm256_sign_epi8(s, w[g])), sc[g]);
                    let dd = _mm256_set1_ps(d * y.d);
                    if g % 2 == 0 {
                        even = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), even);
                    } else {
                        odd = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), odd);
                    }
                }
                acc[t] = [even, odd];
            }
        }
    }
    std::array::from_fn(|t| hsum(_mm256_add_ps(acc[t][0], acc[t][1])))
}
