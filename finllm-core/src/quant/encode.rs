//! Encoding f32 weight rows into the 32-element GGML formats, choosing each block's scale (and
//! minimum) by a weighted least-squares search instead of taking it from the block's extremes.
//!
//! The reference encoders (llama.cpp's `quantize_row_*_ref`, candle's `from_float`) map the
//! largest value onto the end of the grid; that scale is rarely the one with the least error.
//! Here each block tries a fan of scales around it, rounds the values onto each grid, solves for
//! the scale (and minimum) that fit those integers best, and keeps the candidate with the least
//! error. Errors are weighted per column: with an importance vector from calibration (the mean
//! square of the activations each column meets), error where the activations are large counts
//! for more, since that is what reaches the layer's output.

use half::f16;

use super::blocks::QK;
use super::QuantType;

/// Scale candidates tried on each side of the reference scale, in steps of a tenth of a level.
const FAN: i32 = 12;

/// Whether [`encode_row`] has an encoder for `dtype`.
pub fn has_encoder(dtype: QuantType) -> bool {
    matches!(
        dtype,
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q8_0
    )
}

/// Append the Q8_0 blocks of `row` (a whole number of 32-element blocks) to `out` with the
/// reference scale (the block's largest magnitude onto ±127): one pass, for weights quantized
/// as they are loaded, where [`encode_row`]'s search (about 25 candidate scales per block) would
/// cost seconds and gains little at 8 bits.
pub(crate) fn encode_q8_0_fast(row: &[f32], out: &mut Vec<u8>) {
    assert!(row.len().is_multiple_of(QK), "rows are whole blocks");
    for x in row.chunks_exact(QK) {
        let amax = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
        // The scale as stored (f16), so that values are rounded against the scale used.
        let d = f16::from_f32(amax / 127.0);
        let df = d.to_f32();
        let inv = if df > 0.0 && df.is_finite() { 1.0 / df } else { 0.0 };
        out.extend_from_slice(&d.to_le_bytes());
        out.extend(x.iter().map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8 as u8));
    }
}

/// Append the blocks of `row` (a whole number of 32-element blocks) in `dtype` to `out`.
/// `importance` (one non-negative weight per column, or `None` for equal weights) says how much
/// an error in each column costs.
///
/// # Panics
/// If `dtype` has no encoder ([`has_encoder`]), `row` is not whole blocks, or `importance` has
/// another length: callers check these.
pub fn encode_row(dtype: QuantType, row: &[f32], importance: Option<&[f32]>, out: &mut Vec<u8>) {
    assert!(row.len().is_multiple_of(QK), "rows are whole blocks");
    if let Some(imp) = importance {
        assert_eq!(imp.len(), row.len(), "one importance per column");
    }
    let ones = [1f32; QK];
    for (b, x) in row.chunks_exact(QK).enumerate() {
        let x: &[f32; QK] = x.try_into().expect("32 values");
        let w: &[f32; QK] = match importance {
            // A block no calibration token reached still has to serve other inputs.
            Some(imp) if imp[b * QK..(b + 1) * QK].iter().any(|&v| v > 0.0 && v.is_finite()) => {
                imp[b * QK..(b + 1) * QK].try_into().expect("32 weights")
            }
            _ => &ones,
        };
        match dtype {
            QuantType::Q4_0 => {
                let (d, q) = symmetric(x, w, 8, 7);
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend((0..16).map(|j| ((q[j] + 8) as u8) | (((q[j + 16] + 8) as u8) << 4)));
            }
            QuantType::Q5_0 => {
                let (d, q) = symmetric(x, w, 16, 15);
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                push_q5(out, &q.map(|v| (v + 16) as u8));
            }
            QuantType::Q8_0 => {
                let (d, q) = symmetric(x, w, 127, 127);
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(q.iter().map(|&v| v as i8 as u8));
            }
            QuantType::Q4_1 => {
                let (d, m, q) = affine(x, w, 15);
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
                out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
            }
            QuantType::Q5_1 => {
                let (d, m, q) = affine(x, w, 31);
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(m).to_le_bytes());
                push_q5(out, &q);
            }
            other => panic!("no encoder for {other}"),
        }
    }
}

/// The fifth bits (bit `j`: element `j`), then the nibbles (element `j` low, `j + 16` high).
fn push_q5(out: &mut Vec<u8>, q: &[u8; QK]) {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &v)| acc | (u32::from(v >> 4) << j));
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4)));
}

/// Weighted squared error of `d * q` against `x`.
fn error(x: &[f32; QK], w: &[f32; QK], d: f32, q: &[i32; QK]) -> f64 {
    (0..QK)
        .map(|j| f64::from(w[j]) * (f64::from(x[j]) - f64::from(d) * f64::from(q[j])).powi(2))
        .sum()
}

/// The scale `d` (an f16 value) and integers `q` in `-lo..=hi` with the least weighted error of
/// `d * q` against `x` among the candidates tried.
fn symmetric(x: &[f32; QK], w: &[f32; QK], lo: i32, hi: i32) -> (f32, [i32; QK]) {
    let Some(top) = x.iter().copied().max_by(|a, b| a.abs().total_cmp(&b.abs())) else {
        return (0.0, [0; QK]);
    };
    if top == 0.0 || !top.is_finite() {
        return (0.0, [0; QK]);
    }
    let grid = |d: f32| -> [i32; QK] {
        if d == 0.0 {
            return [0; QK];
        }
        let inv = 1.0 / d;
        std::array::from_fn(|j| (x[j] * inv).round().clamp(-(lo as f32), hi as f32) as i32)
    };
    // The reference puts the value of largest magnitude on the grid's longer end (-lo); the
    // other end (hi) is tried too.
    let mut best = (f64::INFINITY, 0f32, [0i32; QK]);
    for end in [-(lo as f32), hi as f32] {
        for k in -FAN..=FAN {
            let levels = end + end.signum() * 0.1 * k as f32;
            if levels.abs() < 0.5 {
                continue;
            }
            let q = grid(top / levels);
            // The least-squares scale for these integers.
            let (num, den) = (0..QK).fold((0f64, 0f64), |(n, d), j| {
                let (wq, xq) = (f64::from(w[j]) * f64::from(q[j]), f64::from(q[j]));
                (n + wq * f64::from(x[j]), d + wq * xq)
            });
            if den <= 0.0 {
                continue;
            }
            // What is stored is an f16 scale: judge the candidate by it, re-rounded onto its grid.
            let d = f16::from_f32((num / den) as f32).to_f32();
            let q = grid(d);
            let e = error(x, w, d, &q);
            if e < best.0 {
                best = (e, d, q);
            }
        }
    }
    (best.1, best.2)
}

/// Scale `d`, minimum `m` (f16 values) and integers `q` in `0..=hi` with the least weighted
/// error of `d * q + m` against `x` among the candidates tried.
fn affine(x: &[f32; QK], w: &[f32; QK], hi: u8) -> (f32, f32, [u8; QK]) {
    let (min, max) = x
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if !(min.is_finite() && max.is_finite()) || max == min {
        let m = if min.is_finite() {
            f16::from_f32(min).to_f32()
        } else {
            0.0
        };
        return (0.0, m, [0; QK]);
    }
    let top = f32::from(hi);
    let grid = |d: f32, m: f32| -> [u8; QK] {
        if d <= 0.0 {
            return [0; QK];
        }
        let inv = 1.0 / d;
        std::array::from_fn(|j| ((x[j] - m) * inv).round().clamp(0.0, top) as u8)
    };
    let err = |d: f32, m: f32, q: &[u8; QK]| -> f64 {
        (0..QK)
            .map(|j| f64::from(w[j]) * (f64::from(x[j]) - f64::from(d) * f64::from(q[j]) - f64::from(m)).powi(2))
            .sum()
    };
    let stored = |v: f64| f16::from_f32(v as f32).to_f32();
    let mut best = {
        let (d, m) = (stored(f64::from((max - min) / top)), stored(f64::from(min)));
        let q = grid(d, m);
        let e = err(d, m, &q);
        (if e.is_nan() { f64::INFINITY } else { e }, d, m, q)
    };
    for k in -FAN..=FAN {
        let levels = top + 0.1 * k as f32;
        let mut q = grid((max - min) / levels, min);
        // Alternate: the least-squares (d, m) for these integers, then the integers for them.
        for _ in 0..3 {
            let (mut sw, mut sq, mut sqq, mut sx, mut sqx) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for j in 0..QK {
                let (wj, qj, xj) = (f64::from(w[j]), f64::from(q[j]), f64::from(x[j]));
                sw += wj;
                sq += wj * qj;
                sqq += wj * qj * qj;
                sx += wj * xj;
                sqx += wj * qj * xj;
            }
            let det = sw * sqq - sq * sq;
            if det <= 0.0 || sw <= 0.0 {
                break;
            }
            let d = (sw * sqx - sq * sx) / det;
            let m = (sqq * sx - sq * sqx) / det;
            if d <= 0.0 {
                break;
            }
            let (d, m) = (stored(d), stored(m));
            let next = grid(d, m);
            let e = err(d, m, &next);
            if e < best.0 {
                best = (e, d, m, next);
            }
            if next == q {
                break;
            }
            q = next;
        }
    }
    (best.1, best.2, best.3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::dequantize_row;
    use crate::tools::synthetic;
    use crate::util::Rng;

    const FORMATS: [QuantType; 5] = [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
    ];

    fn decode(dtype: QuantType, bytes: &[u8], n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        dequantize_row(dtype, bytes, &mut out);
        out
    }

    fn weighted_error(x: &[f32], y: &[f32], w: &[f32]) -> f64 {
        x.iter()
            .zip(y)
            .zip(w)
            .map(|((a, b), w)| f64::from(*w) * (f64::from(*a) - f64::from(*b)).powi(2))
            .sum()
    }

    /// Rows of awkward blocks: Gaussian-ish, all positive (an offset), one outlier, all zero.
    fn rows(rng: &mut Rng) -> Vec<Vec<f32>> {
        let mut v = Vec::new();
        for kind in 0..4 {
            let row: Vec<f32> = (0..QK * 64)
                .map(|j| {
                    let g = (0..4).map(|_| rng.next_f64() - 0.5).sum::<f64>() as f32;
                    match kind {
                        0 => g * 0.1,
                        1 => 0.5 + g * 0.05,
                        2 if j % 97 == 0 => 3.0,
                        2 => g * 0.1,
                        _ => 0.0,
                    }
                })
                .collect();
            v.push(row);
        }
        v
    }

    #[test]
    fn search_never_loses_to_the_reference_encoder() {
        let mut rng = Rng::new(5);
        for dtype in FORMATS {
            for (i, x) in rows(&mut rng).iter().enumerate() {
                let ones = vec![1f32; x.len()];
                let mut ours = Vec::new();
                encode_row(dtype, x, None, &mut ours);
                let reference = synthetic::encode(x, &[1, x.len()], dtype).unwrap();
                assert_eq!(ours.len(), reference.len(), "{dtype}: block size");
                let e_ours = weighted_error(x, &decode(dtype, &ours, x.len()), &ones);
                let e_ref = weighted_error(x, &decode(dtype, &reference, x.len()), &ones);
                assert!(
                    e_ours <= e_ref * 1.0001 + 1e-12,
                    "{dtype} row {i}: {e_ours} vs reference {e_ref}"
                );
                if i < 2 && dtype != QuantType::Q8_0 {
                    // A real gain on real-looking rows (centred, offset), not a tie.
                    assert!(e_ours < e_ref * 0.97, "{dtype} row {i}: {e_ours} vs reference {e_ref}");
                }
            }
        }
    }

    #[test]
    fn values_on_the_grid_come_back_exactly() {
        let mut rng = Rng::new(9);
        for dtype in FORMATS {
            let (lo, hi, affine) = match dtype {
                QuantType::Q4_0 => (-8, 7, false),
                QuantType::Q5_0 => (-16, 15, false),
                QuantType::Q8_0 => (-127, 127, false),
                QuantType::Q4_1 => (0, 15, true),
                _ => (0, 31, true),
            };
            // Per block: a power-of-two scale (exact in f16), a minimum, both grid ends present.
            let mut x = Vec::new();
            for b in 0..16 {
                let d = 2f32.powi(-(b % 7) - 3);
                let m = if affine { -0.25 * (b as f32) } else { 0.0 };
                for j in 0..QK {
                    let q = match j {
                        0 => lo,
                        1 => hi,
                        _ => lo + (rng.next_f64() * f64::from(hi - lo + 1)) as i32,
                    };
                    x.push(m + d * q.min(hi) as f32);
                }
            }
            let mut bytes = Vec::new();
            encode_row(dtype, &x, None, &mut bytes);
            assert_eq!(decode(dtype, &bytes, x.len()), x, "{dtype}");
        }
    }

    #[test]
    fn importance_moves_the_error_to_unimportant_columns() {
        let mut rng = Rng::new(3);
        let x: Vec<f32> = (0..QK * 32).map(|_| (rng.next_f64() - 0.5) as f32).collect();
        // Even columns matter a hundred times more than odd ones.
        let imp: Vec<f32> = (0..x.len()).map(|j| if j % 2 == 0 { 100.0 } else { 1.0 }).collect();
        for dtype in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q5_0] {
            let (mut plain, mut weighted) = (Vec::new(), Vec::new());
            encode_row(dtype, &x, None, &mut plain);
            encode_row(dtype, &x, Some(&imp), &mut weighted);
            let e_plain = weighted_error(&x, &decode(dtype, &plain, x.len()), &imp);
            let e_weighted = weighted_error(&x, &decode(dtype, &weighted, x.len()), &imp);
            assert!(e_weighted < e_plain * 0.95, "{dtype}: {e_weighted} vs {e_plain}");
        }
    }

    #[test]
    fn hostile_values_encode_without_panicking() {
        for dtype in FORMATS {
            for v in [f32::NAN, f32::INFINITY, f32::MAX, 1e-30] {
                let mut x = vec![0.5f32; QK];
                x[3] = v;
                let mut bytes = Vec::new();
                encode_row(dtype, &x, None, &mut bytes);
                assert_eq!(
                    bytes.len(),
                    synthetic::encode(&[0.0; QK], &[1, QK], dtype).unwrap().len()
                );
            }
        }
    }
}
