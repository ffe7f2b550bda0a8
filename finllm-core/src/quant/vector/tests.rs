//! The f16 attention kernels against scalar and f64 oracles.

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
        let exact = |a: &[i8], b: &[i8]| -> i64 { a.iter().zip(b).map(|(&x, &y)| i64::from(x) * i64::from(y)).sum() };
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
