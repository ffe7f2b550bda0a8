//! Dot products of one quantized weight row with 8-bit activation blocks, in a scalar reference
//! version and SIMD versions chosen at run time from the CPU's features.

use super::blocks::{f16_at, BlockQ8, Q4_0_BYTES, Q4_1_BYTES, Q8_0_BYTES, QK};
use super::QuantType;

/// A row · activations kernel: `row` holds `a.len()` blocks of the weight format.
pub type DotFn = fn(row: &[u8], a: &[BlockQ8]) -> f32;

/// One row against four tokens' activations at once (each unpacked weight block is reused four
/// times). Each result is bit-identical to [`DotFn`] on that token, so batching never changes
/// the numbers.
pub type Dot4Fn = fn(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4];

/// Instruction sets a kernel can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
}

impl Isa {
    /// The best ISA this CPU supports, unless `FINLLM_FORCE_SCALAR` is set (to test the scalar
    /// path, or to rule the SIMD kernels out when chasing a numerical question).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var_os("FINLLM_FORCE_SCALAR").is_some_and(|v| v != "0") {
                return Isa::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                return Isa::Avx2;
            }
            Isa::Scalar
        })
    }

    /// Every ISA usable on this CPU (for tests).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            v.push(Isa::Avx2);
        }
        v
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// The kernel for `dtype` on `isa`, or `None` if finllm has no kernel for the format.
pub fn dot_fn(dtype: QuantType, isa: Isa) -> Option<DotFn> {
    let f: DotFn = match (dtype, isa) {
        (QuantType::Q4_0, Isa::Scalar) => scalar::q4_0,
        (QuantType::Q4_1, Isa::Scalar) => scalar::q4_1,
        (QuantType::Q8_0, Isa::Scalar) => scalar::q8_0,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_0, Isa::Avx2) => avx2::q4_0,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_1, Isa::Avx2) => avx2::q4_1,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q8_0, Isa::Avx2) => avx2::q8_0,
        _ => return None,
    };
    Some(f)
}

/// The four-token kernel for `dtype` on `isa`.
pub fn dot4_fn(dtype: QuantType, isa: Isa) -> Option<Dot4Fn> {
    let f: Dot4Fn = match (dtype, isa) {
        (QuantType::Q4_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_0(r, a)),
        (QuantType::Q4_1, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_1(r, a)),
        (QuantType::Q8_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q8_0(r, a)),
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_0, Isa::Avx2) => avx2::q4_0_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_1, Isa::Avx2) => avx2::q4_1_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q8_0, Isa::Avx2) => avx2::q8_0_x4,
        _ => return None,
    };
    Some(f)
}

/// Bytes of one weight block of a format with a kernel.
pub fn block_bytes(dtype: QuantType) -> usize {
    match dtype {
        QuantType::Q4_0 => Q4_0_BYTES,
        QuantType::Q4_1 => Q4_1_BYTES,
        QuantType::Q8_0 => Q8_0_BYTES,
        _ => dtype.block_bytes() as usize,
    }
}

/// Integer dot products, block by block, in the order llama.cpp's reference code uses.
pub mod scalar {
    use super::*;

    pub fn q4_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q4_0_BYTES).zip(a) {
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                let lo = i32::from(b[2 + j] & 0x0f) - 8;
                let hi = i32::from(b[2 + j] >> 4) - 8;
                isum += lo * i32::from(y.qs[j]) + hi * i32::from(y.qs[j + QK / 2]);
            }
            acc += f16_at(b, 0) * y.d * isum as f32;
        }
        acc
    }

    pub fn q4_1(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q4_1_BYTES).zip(a) {
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                isum += i32::from(b[4 + j] & 0x0f) * i32::from(y.qs[j])
                    + i32::from(b[4 + j] >> 4) * i32::from(y.qs[j + QK / 2]);
            }
            acc += f16_at(b, 0) * y.d * isum as f32 + f16_at(b, 2) * y.s;
        }
        acc
    }

    pub fn q8_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q8_0_BYTES).zip(a) {
            let mut isum = 0i32;
            for j in 0..QK {
                isum += i32::from(b[2 + j] as i8) * i32::from(y.qs[j]);
            }
            acc += f16_at(b, 0) * y.d * isum as f32;
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
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

    /// 32 nibbles from 16 bytes: low nibbles in lanes 0..16, high nibbles in lanes 16..32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
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
    unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
        let p16 = _mm256_maddubs_epi16(u, s);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Ask for the weights a few cache lines ahead: on the VMs we run on, the hardware
    /// prefetcher alone leaves a single core at a third of its cache-resident speed.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn prefetch(p: *const u8) {
        // Prefetching never faults, even past the end of the mapping.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_DISTANCE).cast());
    }

    /// An f16 at `p` (unaligned) as f32, with the F16C instruction.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16(p: *const u8) -> f32 {
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
        unsafe { q4_0_x4_impl(row, a) }
    }

    pub fn q4_1_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_1_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q4_1_x4_impl(row, a) }
    }

    pub fn q8_0_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q8_0_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q8_0_x4_impl(row, a) }
    }

    // The x4 kernels repeat the single-token arithmetic per token, in the same order, so each
    // lane's result is bit-identical to the single-token kernel's.

    // The block index walks the row and four token arrays in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_x4_impl(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut correction = [0f32; 4];
        for i in 0..a[0].len() {
            // SAFETY: bounds asserted by the wrapper.
            let b = unsafe { row.as_ptr().add(i * Q4_0_BYTES) };
            prefetch(b);
            let d = unsafe { f16(b) };
            let q = unsafe { nibbles(b.add(2)) };
            for t in 0..4 {
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
    unsafe fn q4_1_x4_impl(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offsets = [0f32; 4];
        for i in 0..a[0].len() {
            // SAFETY: bounds asserted by the wrapper.
            let b = unsafe { row.as_ptr().add(i * Q4_1_BYTES) };
            prefetch(b);
            let q = unsafe { nibbles(b.add(4)) };
            let (d, m) = unsafe { (f16(b), f16(b.add(2))) };
            for t in 0..4 {
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
    unsafe fn q8_0_x4_impl(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in 0..a[0].len() {
            // SAFETY: bounds asserted by the wrapper.
            let b = unsafe { row.as_ptr().add(i * Q8_0_BYTES) };
            prefetch(b);
            let w = unsafe { _mm256_loadu_si256(b.add(2).cast()) };
            let d = unsafe { f16(b) };
            let aw = _mm256_sign_epi8(w, w);
            for t in 0..4 {
                let y = &a[t][i];
                let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                let p = dot_u8_i8(aw, _mm256_sign_epi8(s, w));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), p, acc[t]);
            }
        }
        std::array::from_fn(|t| hsum(acc[t]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Rng;
    use crate::quant::blocks::{dequantize_row, quantize_q8};

    fn random_row(rng: &mut Rng, dtype: QuantType, blocks: usize) -> Vec<u8> {
        let n = blocks * QK;
        let values: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
        crate::model::synthetic::encode(&values, &[1, n], dtype).unwrap()
    }

    fn f64_dot(dtype: QuantType, row: &[u8], a: &[BlockQ8]) -> f64 {
        let mut w = vec![0f32; a.len() * QK];
        dequantize_row(dtype, row, &mut w);
        let act = a
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| f64::from(q) * f64::from(b.d)));
        w.iter().zip(act).map(|(w, x)| f64::from(*w) * x).sum()
    }

    #[test]
    fn every_kernel_matches_the_f64_dequantized_dot() {
        let mut rng = Rng::new(99);
        // Awkward lengths: one block, odd counts, long rows.
        for blocks in [1, 2, 3, 7, 18, 48, 129] {
            let x: Vec<f32> = (0..blocks * QK).map(|_| (rng.next_f64() * 6.0 - 3.0) as f32).collect();
            let mut a = vec![BlockQ8::default(); blocks];
            quantize_q8(&x, &mut a);
            for dtype in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
                let row = random_row(&mut rng, dtype, blocks);
                // Q4_1's offset term uses s = d * sum rounded through f16.
                let want = f64_dot(dtype, &row, &a);
                let scalar = f64::from(dot_fn(dtype, Isa::Scalar).unwrap()(&row, &a));
                let tol = 1e-3 * (1.0 + want.abs()) * if dtype == QuantType::Q4_1 { 4.0 } else { 1.0 };
                assert!(
                    (scalar - want).abs() <= tol,
                    "{dtype} scalar {blocks} blocks: {scalar} vs {want}"
                );
                for isa in Isa::available() {
                    let got = f64::from(dot_fn(dtype, isa).unwrap()(&row, &a));
                    assert!(
                        (got - scalar).abs() <= 1e-5 * (1.0 + scalar.abs()),
                        "{dtype} {isa:?} {blocks} blocks: {got} vs scalar {scalar}"
                    );
                }
            }
        }
    }

    #[test]
    fn four_token_kernels_are_bit_identical_to_single_token_ones() {
        let mut rng = Rng::new(5);
        for blocks in [1, 5, 18, 48] {
            let acts: Vec<Vec<BlockQ8>> = (0..4)
                .map(|_| {
                    let x: Vec<f32> = (0..blocks * QK).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect();
                    let mut a = vec![BlockQ8::default(); blocks];
                    quantize_q8(&x, &mut a);
                    a
                })
                .collect();
            for dtype in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
                let row = random_row(&mut rng, dtype, blocks);
                for isa in Isa::available() {
                    let one = dot_fn(dtype, isa).unwrap();
                    let four = dot4_fn(dtype, isa).unwrap()(&row, [&acts[0], &acts[1], &acts[2], &acts[3]]);
                    for t in 0..4 {
                        assert_eq!(
                            four[t].to_bits(),
                            one(&row, &acts[t]).to_bits(),
                            "{dtype} {isa:?} token {t}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8_quantization_rounds_like_llama_cpp() {
        let mut x = vec![0f32; QK];
        x[0] = 127.0; // scale 1.0
        x[1] = -63.5; // exactly half a step: rounds away from zero
        x[2] = 0.4;
        let mut b = [BlockQ8::default()];
        quantize_q8(&x, &mut b);
        assert_eq!(b[0].qs[0], 127);
        assert_eq!(b[0].qs[1], -64);
        assert_eq!(b[0].qs[2], 0);
        assert_eq!(b[0].sum, 127 - 64);
        let zero = [0f32; QK];
        quantize_q8(&zero, &mut b);
        assert_eq!((b[0].d, b[0].sum), (0.0, 0));
    }
}
