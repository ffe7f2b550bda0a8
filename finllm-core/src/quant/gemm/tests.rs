//! The panels against the scalar kernels.

use super::*;
use crate::quant::blocks::{q6_k_value, quantize_q8, quantize_q8_k};

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

const FORMATS: [(PanelFormat, QuantType); 8] = [
    (PanelFormat::Q8_0, QuantType::Q8_0),
    (PanelFormat::Q4_0, QuantType::Q4_0),
    (PanelFormat::Q4_1, QuantType::Q4_1),
    (PanelFormat::Q5_0, QuantType::Q5_0),
    (PanelFormat::Q5_1, QuantType::Q5_1),
    (PanelFormat::Q4K, QuantType::Q4K),
    (PanelFormat::Q5K, QuantType::Q5K),
    (PanelFormat::Q6K, QuantType::Q6K),
];

/// The float64 product of the file's blocks and the 8-bit activations as their blocks say,
/// read from the file's bytes (independent of any layout): Q8_0 `d q`, Q4_0 `d (q − 8)`,
/// Q4_1 `d q` plus the minimum times the token's `s` (its `d Σ a`, rounded as llama.cpp
/// rounds it). Also the sum of the blocks' absolute values, which bounds the f32 rounding.
fn oracle(dtype: QuantType, w: &[u8], a: &[BlockQ8], rows: usize, cols: usize, n: usize) -> Vec<(f64, f64)> {
    let blocks = cols / QK;
    let fb = PanelFormat::of(dtype).unwrap().file_bytes();
    let f16 = |b: &[u8], at: usize| f64::from(half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32());
    let mut out = vec![(0f64, 0f64); n * rows];
    for t in 0..n {
        for r in 0..rows {
            let (mut s, mut size) = (0f64, 0f64);
            for b in 0..blocks {
                let y = &a[t * blocks + b];
                if dtype == QuantType::Q6K {
                    // Super-block b / 8: d scale_(e / 16) (q − 32), q from the file's bytes
                    // (`q6_k_value`, the dequantizer's reading), the scales i8.
                    let supers = cols / QK_K;
                    let sbb = &w[(r * supers + b / 8) * fb..][..fb];
                    let d = f16(sbb, Q6_K_D_AT);
                    for (e, &q) in y.qs.iter().enumerate() {
                        let at = QK * (b % 8) + e;
                        let scale = f64::from(sbb[Q6_K_SCALES_AT + at / 16] as i8);
                        let v = f64::from(q6_k_value(sbb, at)) - 32.0;
                        let term = d * scale * v * f64::from(q) * f64::from(y.d);
                        s += term;
                        size += term.abs();
                    }
                    continue;
                }
                if matches!(dtype, QuantType::Q4K | QuantType::Q5K) {
                    // Super-block b / 8, sub-block j: d sc_j q − dmin m_j, q from the
                    // sub-block pair's 32 bytes (low nibbles for even j, high for odd),
                    // Q5_K's fifth bit from bit j of the high bytes.
                    let supers = cols / QK_K;
                    let sbb = &w[(r * supers + b / 8) * fb..][..fb];
                    let j = b % 8;
                    let (sc, mn) = k_scales_mins(&sbb[K_SCALES_AT..]);
                    let q = |l: usize| {
                        if dtype == QuantType::Q5K {
                            let low = (sbb[Q5_K_QS_AT + QK * (j / 2) + l] >> (4 * (j % 2))) & 15;
                            f64::from(low) + 16.0 * f64::from((sbb[Q5_K_QH_AT + l] >> j) & 1)
                        } else {
                            f64::from((sbb[Q4_K_QS_AT + QK * (j / 2) + l] >> (4 * (j % 2))) & 15)
                        }
                    };
                    let dot: f64 = (0..QK).map(|e| q(e) * f64::from(y.qs[e])).sum();
                    let sum: f64 = y.qs.iter().map(|&v| f64::from(v)).sum();
                    let scale = f16(sbb, 0) * f64::from(sc[j]) * f64::from(y.d);
                    let min = f16(sbb, 2) * f64::from(mn[j]) * f64::from(y.d);
                    s += scale * dot - min * sum;
                    size += (scale * dot).abs() + (min * sum).abs();
                    continue;
                }
                let wb = &w[(r * blocks + b) * fb..][..fb];
                let nibble = |at: usize, e: usize| if e < 16 { wb[at + e] & 15 } else { wb[at + e - 16] >> 4 };
                let fifth = |at: usize, e: usize| {
                    let qh = u32::from_le_bytes([wb[at], wb[at + 1], wb[at + 2], wb[at + 3]]);
                    f64::from((qh >> e) & 1) * 16.0
                };
                let value = |e: usize| -> f64 {
                    match dtype {
                        QuantType::Q8_0 => f64::from(wb[2 + e] as i8),
                        QuantType::Q4_0 => f64::from(nibble(2, e)) - 8.0,
                        QuantType::Q5_0 => f64::from(nibble(6, e)) + fifth(2, e) - 16.0,
                        QuantType::Q5_1 => f64::from(nibble(8, e)) + fifth(4, e),
                        _ => f64::from(nibble(4, e)),
                    }
                };
                let dot: f64 = (0..QK).map(|e| value(e) * f64::from(y.qs[e])).sum();
                let mut term = f16(wb, 0) * f64::from(y.d) * dot;
                let mut mag = term.abs();
                if matches!(dtype, QuantType::Q4_1 | QuantType::Q5_1) {
                    let min = f16(wb, 2) * f64::from(y.s);
                    term += min;
                    mag += min.abs();
                }
                s += term;
                size += mag;
            }
            out[t * rows + r] = (s, size);
        }
    }
    out
}

fn file_bytes(dtype: QuantType, data: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    crate::tools::synthetic::encode(data, &[rows, cols], dtype).expect("an encoder for the format")
}

/// `x` (`n` rows of `cols` values) as the 8-bit blocks the panels of `format` take.
fn quantized(format: PanelFormat, x: &[f32]) -> Vec<BlockQ8> {
    let mut a = vec![BlockQ8::default(); x.len() / QK];
    if format.supers() {
        quantize_q8_k(x, &mut a);
    } else {
        quantize_q8(x, &mut a);
    }
    a
}

/// Every panel times every token through [`Panels::panel_times`], as `[n, rows]`.
fn product(m: &Panels, a: &[BlockQ8], n: usize) -> Vec<f32> {
    let rows = m.rows();
    let mut out = vec![f32::NAN; n * rows];
    let mut columns: Vec<Vec<f32>> = vec![Vec::new(); n];
    for p in 0..rows.div_ceil(PANEL_ROWS) {
        let live = (rows - p * PANEL_ROWS).min(PANEL_ROWS);
        for c in &mut columns {
            c.clear();
            c.resize(live, f32::NAN);
        }
        let mut views: Vec<&mut [f32]> = columns.iter_mut().map(|c| c.as_mut_slice()).collect();
        m.panel_times(p, a, &mut views);
        for (t, c) in columns.iter().enumerate() {
            out[t * rows + p * PANEL_ROWS..][..live].copy_from_slice(c);
        }
    }
    out
}

#[test]
fn panels_match_the_scalar_form_bit_for_bit_and_the_f64_oracle() {
    let mut seed = 7u64;
    for (format, dtype) in FORMATS {
        // Rows that fill panels and that leave a partial one (in either half); token counts
        // that fill tiles and that leave every remainder.
        let shapes: &[(usize, usize)] = if format.supers() {
            &[(32, 256), (45, 512), (17, 256), (7, 768)]
        } else {
            &[(32, 32), (45, 64), (17, 96), (96, 384), (7, 32)]
        };
        for &(rows, cols) in shapes {
            let data: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed) * 0.1).collect();
            let bytes = file_bytes(dtype, &data, rows, cols);
            let m = Panels::from_blocks(format, &bytes, rows, cols).expect("whole blocks");
            for n in [1usize, 5, 6, 7, 8, 9, 13, 40] {
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 3.0).collect();
                let a = quantized(format, &x);
                let scalar = m.matmul_scalar(&a, n);
                let fast = product(&m, &a, n);
                // Bit for bit (on a CPU without VNNI both run the scalar form).
                for (i, (f, s)) in fast.iter().zip(&scalar).enumerate() {
                    assert_eq!(
                        f.to_bits(),
                        s.to_bits(),
                        "{format:?} {rows}x{cols}, {n} tokens, result {i}: {f} vs {s}"
                    );
                }
                let exact = oracle(dtype, &bytes, &a, rows, cols, n);
                for (i, (s, &(e, size))) in scalar.iter().zip(&exact).enumerate() {
                    // Per block a product of two scales and one or two multiply-adds, each
                    // rounding relative to the running sum (at most `size`).
                    let eps = f64::from(f32::EPSILON);
                    let bound = eps * ((cols / QK) as f64 * 3.0 * size + e.abs());
                    assert!(
                        (f64::from(*s) - e).abs() <= bound,
                        "{format:?} {rows}x{cols}, {n} tokens, result {i}: {s} vs {e}"
                    );
                }
                // One token alone gives the numbers it gets among others.
                let last = &a[(n - 1) * cols / QK..];
                assert_eq!(product(&m, last, 1), fast[(n - 1) * rows..]);
                // A shorter output takes the panel's first rows and writes nothing past them.
                let mut short = [f32::NAN; 4];
                m.panel_times(0, last, &mut [&mut short[..3]]);
                assert_eq!(short[..3], fast[(n - 1) * rows..][..3]);
                assert!(short[3].is_nan());
            }
        }
    }
}

#[test]
fn close_to_the_float_product() {
    // Against the f32 weights and inputs themselves: 8-bit rounding of both sides.
    let mut seed = 11u64;
    let (rows, cols, n) = (40usize, 256usize, 9usize);
    let data: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
    let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
    let bytes = file_bytes(QuantType::Q8_0, &data, rows, cols);
    let m = Panels::from_blocks(PanelFormat::Q8_0, &bytes, rows, cols).expect("whole blocks");
    let y = product(&m, &quantized(PanelFormat::Q8_0, &x), n);
    for t in 0..n {
        for r in 0..rows {
            let exact: f64 = (0..cols)
                .map(|k| f64::from(data[r * cols + k]) * f64::from(x[t * cols + k]))
                .sum();
            // Each side's error is at most half a step of 1/127 of its block's largest
            // value; summed over 256 products of values below 1 that is at most 2.1.
            let bound = cols as f64 * (1.0 / 127.0);
            let got = f64::from(y[t * rows + r]);
            assert!((got - exact).abs() <= bound, "row {r} token {t}: {got} vs {exact}");
        }
    }
}

#[test]
fn bad_shapes_are_refused() {
    assert!(Panels::from_blocks(PanelFormat::Q8_0, &[0u8; 34], 1, 31).is_none());
    assert!(Panels::from_blocks(PanelFormat::Q8_0, &[0u8; 33], 1, 32).is_none());
    assert!(Panels::from_blocks(PanelFormat::Q4_1, &[0u8; 18], 1, 32).is_none());
    assert!(Panels::zeroed(PanelFormat::Q8_0, 2, 33).is_none());
    assert!(Panels::zeroed(PanelFormat::Q4K, 2, 128).is_none());
    assert!(Panels::zeroed(PanelFormat::Q5K, 2, 128).is_none());
    assert!(Panels::from_blocks(PanelFormat::Q5K, &[0u8; Q4_K_BYTES], 1, QK_K).is_none());
    assert!(Panels::zeroed(PanelFormat::Q6K, 2, 128).is_none());
    assert!(Panels::from_blocks(PanelFormat::Q6K, &[0u8; Q5_K_BYTES], 1, QK_K).is_none());
}

/// The one-pass decoding of a Q6_K super-block gives every value as the scalar reader does.
#[test]
fn q6_k_values_in_one_pass_equal_the_scalar_reader() {
    let mut seed = 7u64;
    for _ in 0..64 {
        let block: Vec<u8> = (0..crate::quant::blocks::Q6_K_BYTES)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 56) as u8
            })
            .collect();
        let all = q6_k_values(&block);
        for (e, v) in all.iter().enumerate() {
            assert_eq!(*v, q6_k_value(&block, e), "value {e}");
        }
    }
}

/// A matrix laid out in uneven runs (one starting mid-panel, one large enough to be laid out
/// in parallel) holds the same bytes, array by array, as one laid out a row at a time; the
/// last panel's rows past the matrix keep the fill.
#[test]
fn rows_laid_out_in_parallel_runs_equal_rows_laid_out_one_at_a_time() {
    let (rows, cols) = (300, 8192);
    let mut seed = 11u64;
    let data: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
    for (format, dtype) in FORMATS {
        let bytes = file_bytes(dtype, &data, rows, cols);
        let row_bytes = bytes.len() / rows;
        let mut runs = Panels::zeroed(format, rows, cols).unwrap();
        let cuts = [0, 13, 45, rows];
        for w in cuts.windows(2) {
            runs.fill_rows(w[0], &bytes[w[0] * row_bytes..w[1] * row_bytes]);
        }
        assert!(
            (rows - 45) * row_bytes >= PARALLEL_FILL_BYTES,
            "one run is laid out in parallel"
        );
        let mut single = Panels::zeroed(format, rows, cols).unwrap();
        for (r, row) in bytes.chunks_exact(row_bytes).enumerate() {
            single.fill_rows(r, row);
        }
        assert_eq!(&runs.w[..], &single.w[..], "{format:?} weights");
        assert_eq!(&runs.d[..], &single.d[..], "{format:?} scales");
        assert_eq!(&runs.m[..], &single.m[..], "{format:?} minima");
        assert_eq!(&runs.sc[..], &single.sc[..], "{format:?} sub-block scales");
        assert_eq!(&runs.mn[..], &single.mn[..], "{format:?} sub-block minima");
        assert_eq!(&runs.hb[..], &single.hb[..], "{format:?} fifth bits");
        // Rows 300..320 of the last panel: never written, so the weight bytes there keep the
        // fill (the offset zero of Q8_0, 0x88 elsewhere) in every block of that panel.
        let fill = if format == PanelFormat::Q8_0 { 128 } else { 0x88 };
        let pbb = format.panel_block_bytes();
        let last = &runs.w[(rows / PANEL_ROWS) * (cols / QK) * pbb..];
        let lane = rows % PANEL_ROWS; // 12: rows 12..32 of the last panel are padding
        for block in last.chunks_exact(pbb) {
            for r in 0..4 {
                for l in lane..PANEL_ROWS {
                    let at = r * 128 + (l / 16) * 64 + (l % 16) * 4;
                    assert!(
                        block[at..at + 4].iter().all(|b| *b == fill),
                        "{format:?} padding row {l}"
                    );
                }
            }
        }
    }
}
