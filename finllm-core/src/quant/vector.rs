//! Dense vector kernels for attention over the KV cache: the dot product of an f32 query with a
//! cached key row, and `out += p * value_row`, for rows stored in f16 or f32.
//!
//! The f16 versions convert in registers (F16C) on x86-64 when the CPU has AVX2, FMA and F16C,
//! chosen at run time like the matrix kernels; the scalar versions are the reference.

use half::f16;

use super::kernels::Isa;

/// An element type the KV cache stores.
pub trait KvElem: Copy + Send + Sync + 'static {
    /// `Σ q[i] · row[i]` over the common length.
    fn dot(q: &[f32], row: &[Self]) -> f32;
    /// `out[i] += a · row[i]`.
    fn axpy(a: f32, row: &[Self], out: &mut [f32]);
}

impl KvElem for f32 {
    fn dot(q: &[f32], row: &[f32]) -> f32 {
        // Eight partial sums so the compiler can keep them in vector registers.
        let mut acc = [0f32; 8];
        let (qc, rc) = (q.chunks_exact(8), row.chunks_exact(8));
        let (qt, rt) = (qc.remainder(), rc.remainder());
        for (a, b) in qc.zip(rc) {
            for i in 0..8 {
                acc[i] += a[i] * b[i];
            }
        }
        let tail: f32 = qt.iter().zip(rt).map(|(a, b)| a * b).sum();
        acc.iter().sum::<f32>() + tail
    }

    fn axpy(a: f32, row: &[f32], out: &mut [f32]) {
        out.iter_mut().zip(row).for_each(|(o, &r)| *o += a * r);
    }
}

impl KvElem for f16 {
    fn dot(q: &[f32], row: &[f16]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() != Isa::Scalar {
            // SAFETY: `Isa::detect` returned a SIMD level, which implies AVX2, FMA and F16C.
            return unsafe { avx2::dot_f16(q, row) };
        }
        scalar::dot_f16(q, row)
    }

    fn axpy(a: f32, row: &[f16], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if Isa::detect() != Isa::Scalar {
            // SAFETY: as in `dot`.
            return unsafe { avx2::axpy_f16(a, row, out) };
        }
        scalar::axpy_f16(a, row, out)
    }
}

/// Reference versions.
pub mod scalar {
    use half::f16;

    pub fn dot_f16(q: &[f32], row: &[f16]) -> f32 {
        q.iter().zip(row).map(|(a, b)| a * b.to_f32()).sum()
    }

    pub fn axpy_f16(a: f32, row: &[f16], out: &mut [f32]) {
        out.iter_mut().zip(row).for_each(|(o, r)| *o += a * r.to_f32());
    }
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use half::f16;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(q: &[f32], row: &[f16]) -> f32 {
        let n = q.len().min(row.len());
        let (qp, rp) = (q.as_ptr(), row.as_ptr().cast::<u16>());
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        // SAFETY (all loads): `i + 8 <= n` (or `i + 16 <= n`) keeps every load inside both slices.
        while i + 16 <= n {
            for (j, a) in acc.iter_mut().enumerate() {
                let k = _mm256_cvtph_ps(_mm_loadu_si128(rp.add(i + 8 * j).cast()));
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i + 8 * j)), k, *a);
            }
            i += 16;
        }
        if i + 8 <= n {
            let k = _mm256_cvtph_ps(_mm_loadu_si128(rp.add(i).cast()));
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(i)), k, acc[0]);
            i += 8;
        }
        let mut sum = horizontal_sum(_mm256_add_ps(acc[0], acc[1]));
        for j in i..n {
            sum += q[j] * row[j].to_f32();
        }
        sum
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn axpy_f16(a: f32, row: &[f16], out: &mut [f32]) {
        let n = out.len().min(row.len());
        let (op, rp) = (out.as_mut_ptr(), row.as_ptr().cast::<u16>());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        // SAFETY (all loads and stores): `i + 8 <= n` keeps them inside both slices.
        while i + 8 <= n {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(rp.add(i).cast()));
            _mm256_storeu_ps(op.add(i), _mm256_fmadd_ps(av, v, _mm256_loadu_ps(op.add(i))));
            i += 8;
        }
        for j in i..n {
            out[j] += a * row[j].to_f32();
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn horizontal_sum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Rng;

    fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| (rng.next_f64() * 4.0 - 2.0) as f32).collect()
    }

    /// Lengths around the 8- and 16-wide steps, and typical head sizes.
    const LENGTHS: [usize; 12] = [0, 1, 7, 8, 9, 15, 16, 17, 33, 64, 128, 257];

    #[test]
    fn dot_and_axpy_match_a_float64_oracle() {
        let mut rng = Rng::new(3);
        for n in LENGTHS {
            let q = random(&mut rng, n);
            let row32 = random(&mut rng, n);
            let row16: Vec<f16> = row32.iter().map(|&x| f16::from_f32(x)).collect();
            let want16: f64 = q
                .iter()
                .zip(&row16)
                .map(|(a, b)| f64::from(*a) * f64::from(b.to_f32()))
                .sum();
            let want32: f64 = q.iter().zip(&row32).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            let tol = 1e-5 * (1.0 + n as f64);
            for (name, got, want) in [
                ("f16 dispatched", f64::from(f16::dot(&q, &row16)), want16),
                ("f16 scalar", f64::from(scalar::dot_f16(&q, &row16)), want16),
                ("f32", f64::from(f32::dot(&q, &row32)), want32),
            ] {
                assert!((got - want).abs() <= tol, "{name} n={n}: {got} vs {want}");
            }

            let a = 0.37f32;
            let start = random(&mut rng, n);
            let mut out16 = start.clone();
            f16::axpy(a, &row16, &mut out16);
            let mut out16_ref = start.clone();
            scalar::axpy_f16(a, &row16, &mut out16_ref);
            let mut out32 = start.clone();
            f32::axpy(a, &row32, &mut out32);
            for i in 0..n {
                let want = f64::from(start[i]) + f64::from(a) * f64::from(row16[i].to_f32());
                assert!((f64::from(out16[i]) - want).abs() <= 1e-6, "f16 axpy n={n} i={i}");
                assert!(
                    (f64::from(out16_ref[i]) - want).abs() <= 1e-6,
                    "f16 scalar axpy n={n} i={i}"
                );
                let want = f64::from(start[i]) + f64::from(a) * f64::from(row32[i]);
                assert!((f64::from(out32[i]) - want).abs() <= 1e-6, "f32 axpy n={n} i={i}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_f16_kernels_agree_with_scalar_on_unaligned_slices() {
        if !Isa::available().contains(&Isa::Avx2) {
            return;
        }
        let mut rng = Rng::new(8);
        let q = random(&mut rng, 300);
        let row: Vec<f16> = random(&mut rng, 300).iter().map(|&x| f16::from_f32(x)).collect();
        for offset in 0..4 {
            for n in LENGTHS.iter().map(|&n| n.min(300 - offset)) {
                let (q, r) = (&q[offset..offset + n], &row[offset..offset + n]);
                // SAFETY: AVX2 (with FMA and F16C) was detected above.
                let simd = unsafe { avx2::dot_f16(q, r) };
                let reference = scalar::dot_f16(q, r);
                assert!(
                    (simd - reference).abs() <= 1e-4 * (1.0 + n as f32),
                    "offset {offset} n={n}"
                );
                let mut a = vec![1f32; n];
                let mut b = a.clone();
                // SAFETY: as above.
                unsafe { avx2::axpy_f16(-0.5, r, &mut a) };
                scalar::axpy_f16(-0.5, r, &mut b);
                // -0.5 · r is exact, so the fused and the separate multiply-add round alike.
                assert_eq!(a, b, "offset {offset} n={n}");
            }
        }
    }
}
