//! The kernels against their scalar references and f64 oracles.

use super::*;
use crate::quant::blocks::Q6_K_D_AT;
use crate::quant::blocks::{dequantize_row, quantize_q8};
use crate::util::Rng;

/// Every format with a kernel.
/// A row of `n` weights quantized by candle from uniform values.
pub(crate) fn random_row(rng: &mut Rng, dtype: QuantType, n: usize) -> Vec<u8> {
    let values: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
    crate::tools::synthetic::encode(&values, &[1, n], dtype).unwrap()
}

/// A row of `n` weights as random bytes, with finite f16 scales: reaches bit patterns a
/// quantizer may never write (all 6-bit scales and mins, every sign of `d`).
pub(crate) fn random_bytes(rng: &mut Rng, dtype: QuantType, n: usize) -> Vec<u8> {
    bytes_row(rng, dtype, n, None)
}

/// A row of `n` weights whose bytes are all `fill` (random where `None`) but the f16 scales,
/// which are random and finite.
pub(crate) fn bytes_row(rng: &mut Rng, dtype: QuantType, n: usize, fill: Option<u8>) -> Vec<u8> {
    let bytes = block_bytes(dtype);
    let scale_at: &[usize] = match dtype {
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
        QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
        QuantType::Q6K => &[Q6_K_D_AT],
        other => unreachable!("{other} has no kernel"),
    };
    let mut row: Vec<u8> = (0..n / dtype.block_size() as usize * bytes)
        .map(|_| fill.unwrap_or_else(|| rng.next_u64() as u8))
        .collect();
    for b in row.chunks_exact_mut(bytes) {
        for &at in scale_at {
            let v = half::f16::from_f32(((rng.next_f64() * 2.0 - 1.0) * 0.05) as f32);
            b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        }
    }
    row
}

pub(crate) fn activations(rng: &mut Rng, blocks: usize, spread: f64) -> Vec<BlockQ8> {
    let x: Vec<f32> = (0..blocks * QK)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
        .collect();
    let mut a = vec![BlockQ8::default(); blocks];
    quantize_q8(&x, &mut a);
    a
}

/// Awkward lengths in weight blocks: one block, odd counts, long rows.
pub(crate) fn block_counts(dtype: QuantType) -> &'static [usize] {
    if dtype.block_size() as usize == QK {
        &[1, 2, 3, 7, 18, 48, 129]
    } else {
        &[1, 2, 3, 5, 18]
    }
}

/// The f64 dot product of the dequantized row with the activations, and the sum of the
/// products' magnitudes (what f32 rounding errors scale with when terms cancel).
pub(crate) fn f64_dot(dtype: QuantType, row: &[u8], a: &[BlockQ8]) -> (f64, f64) {
    let mut w = vec![0f32; a.len() * QK];
    dequantize_row(dtype, row, &mut w);
    let act = a
        .iter()
        .flat_map(|b| b.qs.iter().map(move |&q| f64::from(q) * f64::from(b.d)));
    w.iter()
        .zip(act)
        .map(|(w, x)| f64::from(*w) * x)
        .fold((0.0, 0.0), |(sum, mag), p| (sum + p, mag + p.abs()))
}

#[test]
fn every_kernel_matches_the_f64_dequantized_dot() {
    let mut rng = Rng::new(99);
    for dtype in KERNEL_FORMATS {
        for &blocks in block_counts(dtype) {
            let n = blocks * dtype.block_size() as usize;
            let a = activations(&mut rng, n / QK, 3.0);
            let rows = [random_row(&mut rng, dtype, n), random_bytes(&mut rng, dtype, n)];
            for (source, row) in ["quantized", "random bytes"].iter().zip(&rows) {
                // Q4_1's offset term uses s = d * sum rounded through f16.
                let (want, magnitude) = f64_dot(dtype, row, &a);
                let scalar = f64::from(dot_fn(dtype, Isa::Scalar).unwrap()(row, &a));
                let tol = 1e-3
                    * (1.0 + want.abs())
                    * if matches!(dtype, QuantType::Q4_1 | QuantType::Q5_1) {
                        4.0
                    } else {
                        1.0
                    };
                assert!(
                    (scalar - want).abs() <= tol,
                    "{dtype} scalar {blocks} blocks ({source}): {scalar} vs {want}"
                );
                for isa in Isa::available() {
                    let got = f64::from(dot_fn(dtype, isa).unwrap()(row, &a));
                    assert!(
                        (got - scalar).abs() <= 1e-6 * (1.0 + magnitude),
                        "{dtype} {isa:?} {blocks} blocks ({source}): {got} vs scalar {scalar}"
                    );
                }
            }
        }
    }
}

#[test]
fn four_three_and_two_token_kernels_are_bit_identical_to_single_token_ones() {
    let mut rng = Rng::new(5);
    for dtype in KERNEL_FORMATS {
        for &blocks in &block_counts(dtype)[..5] {
            let n = blocks * dtype.block_size() as usize;
            let acts: Vec<Vec<BlockQ8>> = (0..4).map(|_| activations(&mut rng, n / QK, 2.0)).collect();
            let row = random_row(&mut rng, dtype, n);
            for isa in Isa::available() {
                let one = dot_fn(dtype, isa).unwrap();
                let four = dot4_fn(dtype, isa).unwrap()(&row, [&acts[0], &acts[1], &acts[2], &acts[3]]);
                for t in 0..4 {
                    assert_eq!(
                        four[t].to_bits(),
                        one(&row, &acts[t]).to_bits(),
                        "{dtype} {isa:?} {blocks} blocks token {t}"
                    );
                }
                if let Some(dot2) = dotn_fn::<2>(dtype, isa) {
                    let two = dot2(&row, [&acts[1], &acts[3]]);
                    for (t, y) in [1, 3].into_iter().zip(two) {
                        assert_eq!(
                            y.to_bits(),
                            one(&row, &acts[t]).to_bits(),
                            "{dtype} {isa:?} {blocks} blocks, two tokens, token {t}"
                        );
                    }
                } else {
                    assert!(
                        matches!(isa, Isa::Neon | Isa::NeonDot),
                        "{dtype} {isa:?} has no two-token kernel"
                    );
                }
                if let Some(dot3) = dotn_fn::<3>(dtype, isa) {
                    let three = dot3(&row, [&acts[2], &acts[0], &acts[3]]);
                    for (t, y) in [2, 0, 3].into_iter().zip(three) {
                        assert_eq!(
                            y.to_bits(),
                            one(&row, &acts[t]).to_bits(),
                            "{dtype} {isa:?} {blocks} blocks, three tokens, token {t}"
                        );
                    }
                } else {
                    assert!(
                        matches!(isa, Isa::Neon | Isa::NeonDot),
                        "{dtype} {isa:?} has no three-token kernel"
                    );
                }
            }
        }
    }
}

/// Scripts that run these tests on several (emulated) CPUs name the best level each must
/// offer (`FINLLM_EXPECT_ISA=NeonDot`): a CPU that lacks it, or has more, fails instead of
/// quietly leaving a level's kernels untested.
#[test]
fn the_best_level_is_the_expected_one() {
    let Ok(want) = std::env::var("FINLLM_EXPECT_ISA") else {
        return;
    };
    let available = Isa::available();
    let best = available.last().expect("scalar is always available");
    assert_eq!(format!("{best:?}"), want, "levels on this CPU: {available:?}");
}

/// The NEON kernels keep the scalar reference's f32 operations and order (only the exact
/// integer sums are vectorised), so they reproduce it bit for bit, on every bit pattern.
#[cfg(target_arch = "aarch64")]
#[test]
fn neon_kernels_are_bit_identical_to_scalar() {
    let neon: Vec<Isa> = Isa::available()
        .into_iter()
        .filter(|isa| matches!(isa, Isa::Neon | Isa::NeonDot))
        .collect();
    assert!(!neon.is_empty(), "no NEON level detected on an AArch64 CPU");
    let mut rng = Rng::new(7);
    for dtype in KERNEL_FORMATS {
        for &blocks in block_counts(dtype) {
            let n = blocks * dtype.block_size() as usize;
            let acts: Vec<Vec<BlockQ8>> = (0..4).map(|_| activations(&mut rng, n / QK, 3.0)).collect();
            let a = [&acts[0][..], &acts[1], &acts[2], &acts[3]];
            for row in [random_row(&mut rng, dtype, n), random_bytes(&mut rng, dtype, n)] {
                let want = a.map(|a| dot_fn(dtype, Isa::Scalar).unwrap()(&row, a).to_bits());
                for &isa in &neon {
                    let one = a.map(|a| dot_fn(dtype, isa).unwrap()(&row, a).to_bits());
                    let four = dot4_fn(dtype, isa).unwrap()(&row, a).map(f32::to_bits);
                    assert_eq!(one, want, "{dtype} {isa:?} {blocks} blocks, one token");
                    assert_eq!(four, want, "{dtype} {isa:?} {blocks} blocks, four tokens");
                }
            }
        }
    }
}

#[test]
fn dequantization_equals_candles() {
    use candle_core::quantized::ggml_file::qtensor_from_ggml;
    use candle_core::Device;
    let mut rng = Rng::new(17);
    for dtype in KERNEL_FORMATS {
        let (rows, cols) = (3, 2 * dtype.block_size() as usize);
        let bytes = random_bytes(&mut rng, dtype, rows * cols);
        let q = qtensor_from_ggml(dtype.to_candle(), &bytes, vec![rows, cols], &Device::Cpu).unwrap();
        let want = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut got = vec![0f32; rows * cols];
        let row_bytes = bytes.len() / rows;
        for (r, out) in got.chunks_exact_mut(cols).enumerate() {
            dequantize_row(dtype, &bytes[r * row_bytes..(r + 1) * row_bytes], out);
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{dtype} element {i}: {g} vs candle {w}");
        }
    }
}

#[test]
fn rounding_equals_roundf() {
    let mut rng = Rng::new(12);
    let halves = (-300..=300).map(|i| i as f32 * 0.5);
    let near_halves = (-300..=300).flat_map(|i| {
        let h = i as f32 * 0.5;
        [
            f32::from_bits(h.to_bits() + 1),
            f32::from_bits(h.to_bits().saturating_sub(1)),
        ]
    });
    let random = (0..100_000).map(|_| ((rng.next_f64() * 2.0 - 1.0) * 130.0) as f32);
    for y in halves
        .chain(near_halves)
        .chain(random)
        .chain([0.0, -0.0, 0.49999997, -0.49999997])
    {
        assert_eq!(crate::quant::blocks::round_half_away(y), y.round() as i32, "{y:e}");
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
