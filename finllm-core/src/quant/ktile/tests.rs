//! The tiles against the scalar kernels and an f64 oracle, and the packed layouts' invariants.

use super::*;
use crate::quant::kernels::tests::{activations, block_counts, bytes_row, f64_dot, random_bytes, random_row};
use crate::quant::kernels::{dot_fn, Isa};
use crate::util::Rng;

const FORMATS: [QuantType; 8] = [
    QuantType::Q4_0,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q4_1,
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

/// `row` as the tile reads it: packed.
fn tile_row(k: &SuperKernels, row: &[u8], blocks: usize) -> Vec<u8> {
    let mut out = vec![0; (k.packing.row_bytes)(blocks)];
    (k.packing.pack_row)(row, &mut out);
    out
}

/// Block counts for the tiles: the kernels' awkward lengths, and for Q8_0 every width of a
/// short last group.
fn counts(dtype: QuantType) -> Vec<usize> {
    let mut c = block_counts(dtype).to_vec();
    if dtype.block_size() as usize == QK {
        c.extend([4, 5, 12, 13, 16, 20]);
    }
    c
}

/// How far Q4_1's and Q5_1's minimum term may be from the oracle's: each block's `m · s`, with `s`
/// rounded through f16 (relative error at most 2^-11). Zero for the other formats.
fn s_rounding(dtype: QuantType, row: &[u8], a: &[BlockQ8]) -> f64 {
    let bytes = match dtype {
        QuantType::Q4_1 => crate::quant::blocks::Q4_1_BYTES,
        QuantType::Q5_1 => crate::quant::blocks::Q5_1_BYTES,
        _ => return 0.0,
    };
    row.chunks_exact(bytes)
        .zip(a)
        .map(|(b, y)| {
            let m = half::f16::from_le_bytes([b[2], b[3]]).to_f64();
            (m * f64::from(y.d) * f64::from(y.sum)).abs() * 2f64.powi(-11)
        })
        .sum()
}

fn supers(blocks: &[BlockQ8]) -> Vec<SuperQ8> {
    let mut s = vec![SuperQ8::default(); blocks.len().div_ceil(SUBS)];
    supers_from_blocks(blocks, &mut s);
    s
}

/// The tiles take other operations than the scalar references (integer sums over whole
/// super-blocks, sixteen lanes), so they agree to float rounding, relative to the products'
/// magnitudes; the references themselves are checked against an f64 oracle in `kernels`
/// (Q4_1's minimum term takes `s` rounded through f16, as the references do, so it is
/// further from the oracle).
#[test]
fn tiles_match_the_scalar_kernels_and_the_f64_oracle() {
    let mut rng = Rng::new(21);
    let isas: Vec<Isa> = Isa::available();
    for dtype in FORMATS {
        for count in counts(dtype) {
            let n = count * dtype.block_size() as usize;
            let a = activations(&mut rng, n / QK, 3.0);
            let sa = supers(&a);
            for row in [random_row(&mut rng, dtype, n), random_bytes(&mut rng, dtype, n)] {
                let scalar = f64::from(dot_fn(dtype, Isa::Scalar).unwrap()(&row, &a));
                let (want, magnitude) = f64_dot(dtype, &row, &a);
                for &isa in &isas {
                    let Some(k) = super_kernels(dtype, isa) else { continue };
                    let mut out = [0f32];
                    let w = tile_row(&k, &row, count);
                    (k.tile)(&w, w.len(), &sa, &mut [&mut out[..]]);
                    let got = f64::from(out[0]);
                    assert!(
                        (got - scalar).abs() <= 1e-6 * (1.0 + magnitude),
                        "{dtype} {isa:?} {count} blocks: {got} vs scalar {scalar}"
                    );
                    assert!(
                        (got - want).abs() <= 1e-3 * (1.0 + want.abs()) + s_rounding(dtype, &row, &a),
                        "{dtype} {isa:?} {count} blocks: {got} vs f64 {want}"
                    );
                }
            }
        }
    }
}

/// Any number of rows and tokens (whole 2x8 tiles and every remainder) gives each row and
/// token the bits of a call with that row and token alone.
/// The tiles add integer products in 16 bits wherever the formats' largest values allow it
/// (whole groups of 4-bit weights, short groups of 5-bit ones, Q6_K's pairs, Q8_0's sign
/// trick): at those largest values, weights every bit set (Q8_0's −128) times activations all
/// ±127, they still give the scalar kernels' 32-bit sums. A wrapped sum would be off by
/// 65,536 products' worth.
#[test]
fn the_largest_values_do_not_overflow_the_tiles_sums() {
    let mut rng = Rng::new(24);
    for dtype in FORMATS {
        let fill = if dtype == QuantType::Q8_0 { 0x80 } else { 0xff };
        for count in [1, 2, 3, 4, 8, 9, 11] {
            let n = count * dtype.block_size() as usize;
            let row = bytes_row(&mut rng, dtype, n, Some(fill));
            for sign in [1.0f32, -1.0] {
                let mut a = vec![BlockQ8::default(); n / QK];
                crate::quant::blocks::quantize_q8(&vec![sign; n], &mut a);
                assert!(a.iter().all(|b| b.qs.iter().all(|&q| q == 127 * sign as i8)));
                let scalar = f64::from(dot_fn(dtype, Isa::Scalar).unwrap()(&row, &a));
                let (_, magnitude) = f64_dot(dtype, &row, &a);
                for isa in Isa::available() {
                    let Some(k) = super_kernels(dtype, isa) else { continue };
                    let w = tile_row(&k, &row, count);
                    let sa = supers(&a);
                    // One token and a tile of sixteen (the short rows' widest).
                    for tokens in [1, MAX_TILE_TOKENS] {
                        let acts = sa.repeat(tokens);
                        let mut out = vec![[0f32]; tokens];
                        let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| &mut o[..]).collect();
                        (k.tile)(&w, w.len(), &acts, &mut views);
                        for got in out {
                            assert!(
                                (f64::from(got[0]) - scalar).abs() <= 1e-6 * (1.0 + magnitude),
                                "{dtype} {isa:?} {count} blocks, {tokens} tokens, sign {sign}: {} vs {scalar}",
                                got[0]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn every_row_and_token_count_is_bit_identical_to_one_row_by_one_token() {
    let mut rng = Rng::new(22);
    // Past a block of rows whose sums are carried, and (the longest rows) several runs of
    // groups, the last one short; for the 32-value formats a last run of whole groups and a
    // short group, three and one blocks wide (laid out four and two wide).
    let (most_rows, most_tokens) = (TASK_ROWS + 2, 2 * MAX_TILE_TOKENS + 1);
    let runs = |dtype: QuantType| match dtype.block_size() as usize {
        QK => [2 * CHUNK_GROUPS * SUBS + SUBS + 3, 2 * CHUNK_GROUPS * SUBS + SUBS + 1],
        _ => [2 * CHUNK_GROUPS + 3, 2 * CHUNK_GROUPS + 1],
    };
    for dtype in FORMATS {
        for isa in Isa::available() {
            let Some(k) = super_kernels(dtype, isa) else { continue };
            for count in [1, 3, 11, 12].into_iter().chain(runs(dtype)) {
                let n = count * dtype.block_size() as usize;
                let rows: Vec<Vec<u8>> = (0..most_rows)
                    .map(|_| tile_row(&k, &random_bytes(&mut rng, dtype, n), count))
                    .collect();
                let row_bytes = rows[0].len();
                let acts: Vec<Vec<SuperQ8>> = (0..most_tokens)
                    .map(|_| supers(&activations(&mut rng, n / QK, 2.0)))
                    .collect();
                let single = |r: usize, t: usize| {
                    let mut out = [0f32];
                    (k.tile)(&rows[r], row_bytes, &acts[t], &mut [&mut out[..]]);
                    out[0].to_bits()
                };
                for nr in [1, 2, 3, most_rows] {
                    for nt in 1..=most_tokens {
                        let w = rows[..nr].concat();
                        let a = acts[..nt].concat();
                        let mut out = vec![vec![f32::NAN; nr]; nt];
                        let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| &mut o[..]).collect();
                        (k.tile)(&w, row_bytes, &a, &mut views);
                        for (t, results) in out.iter().enumerate() {
                            for (r, y) in results.iter().enumerate() {
                                assert_eq!(
                                    y.to_bits(),
                                    single(r, t),
                                    "{dtype} {isa:?} {nr} rows by {nt} tokens, row {r} token {t}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn the_layout_holds_every_value_once_with_its_sums() {
    let mut rng = Rng::new(23);
    for count in 1..=SUBS {
        let a = activations(&mut rng, count, 5.0);
        let s = SuperQ8::from_blocks(&a);
        // Laid out over another group's layout (a buffer kept between calls), the same.
        for other in [1, SUBS] {
            let mut reused = SuperQ8::from_blocks(&activations(&mut rng, other, 5.0));
            reused.set_blocks(&a);
            assert_eq!(reused, s, "{count} blocks over {other}");
        }
        let width = group_width(count);
        assert_eq!((s.blocks, width), (count, [2, 2, 4, 4, 8, 8, 8, 8][count - 1]));
        // Every value once, at its place; zeros everywhere else.
        let mut seen = [false; QK_K];
        let per_lane = LANES / width;
        for (j, b) in a.iter().enumerate() {
            for (e, &q) in b.qs.iter().enumerate() {
                let at = tile_position(width, j, e);
                assert!(at < 32 * width && !seen[at], "{count} blocks: block {j} value {e}");
                seen[at] = true;
                assert_eq!(s.qs[at], q, "{count} blocks: block {j} value {e}");
                // Its lane belongs to block j.
                assert_eq!(at % 64 / 4 / per_lane, j, "{count} blocks: block {j} value {e}");
            }
            for l in j * per_lane..(j + 1) * per_lane {
                assert_eq!(s.d[l], b.d, "{count} blocks: lane {l}");
            }
            if width == SUBS {
                let first: i32 = b.qs[..16].iter().map(|&q| i32::from(q)).sum();
                let k = PAIR_ORDER.iter().position(|&x| x == j).unwrap();
                assert_eq!(
                    (i32::from(s.sums16[2 * k]), i32::from(s.sums16[2 * k + 1])),
                    (first, b.sum - first)
                );
            }
            // Over the pair lanes of its lanes, the starts add up to −128 times the block's
            // sum, and the shares of `s` to the block's `s`.
            let pairs: Vec<usize> = (0..SUBS).filter(|&k| pair_lanes(k) / per_lane == j).collect();
            let starts: i32 = pairs.iter().map(|&k| s.start8[k]).sum();
            let shared: f32 = pairs.iter().map(|&k| s.s8[k]).sum();
            assert_eq!((starts, shared), (-128 * b.sum, b.s), "{count} blocks: block {j}");
        }
        // Per lane of AVX2's horizontal add of the halves' lane pairs: lane k of vphaddd(x, y)
        // on 128-bit lanes is x's pair k (k = 0, 1), y's pair k − 2 (k = 2, 3), then the same
        // in the upper lane; pair p of a half is its lanes 2p, 2p + 1, and a half is eight of
        // the sixteen lanes. From the values at those lanes' positions, independently of the
        // lane sums above.
        for (k, &whole_group_block) in PAIR_ORDER.iter().enumerate() {
            let (upper, pair) = (k / 4, k % 4);
            let half = pair / 2;
            let first = 8 * half + 4 * upper + 2 * (pair % 2);
            assert_eq!(pair_lanes(k), first, "{k}");
            let j = first / per_lane;
            let values: i32 = (0..width / 2)
                .flat_map(|v| (0..8).map(move |i| 64 * v + 4 * first + i))
                .map(|at| i32::from(s.qs[at]))
                .sum();
            let (d, ds, shared, start) = match a.get(j) {
                // Two of the block's `per_lane` lanes: its s shared out.
                Some(b) => (b.d, b.d * values as f32, 2.0 * b.s / per_lane as f32, -128 * values),
                None => (0.0, 0.0, 0.0, 0),
            };
            assert_eq!(
                (s.d8[k], s.ds8[k], s.s8[k], s.start8[k]),
                (d, ds, shared, start),
                "{count} blocks: {k}"
            );
            if width == SUBS {
                // A whole group: one lane per block, in PAIR_ORDER.
                assert_eq!(j, whole_group_block);
                assert_eq!(values, a.get(j).map_or(0, |b| b.sum), "{count} blocks: {k}");
            }
        }
        // Q6_K's sums: zeros for every block a group lacks, and in a short group.
        for (k, &j) in PAIR_ORDER.iter().enumerate() {
            if j >= count || width < SUBS {
                assert_eq!((s.sums16[2 * k], s.sums16[2 * k + 1]), (0, 0), "{count} blocks: {k}");
            }
        }
        assert!(seen.iter().zip(s.qs).all(|(&seen, q)| seen || q == 0));
    }
}

/// The packed row holds every weight where the activations hold the value it multiplies, and
/// every block's scale where its lanes find it.
#[test]
fn a_packed_q8_0_row_lines_up_with_its_activations() {
    use crate::quant::blocks::Q8_0_BYTES;
    let mut rng = Rng::new(24);
    for blocks in [1, 2, 3, 4, 5, 8, 9, 18, 20, 48] {
        let row = random_bytes(&mut rng, QuantType::Q8_0, blocks * QK);
        let mut packed = vec![0xee; q8_0_packed_row_bytes(blocks)];
        pack_q8_0_row(&row, &mut packed);
        let groups = blocks.div_ceil(SUBS);
        let last = group_width(blocks - (groups - 1) * SUBS);
        let scales_at = (groups - 1) * QK_K + last * QK;
        for (i, block) in row.chunks_exact(Q8_0_BYTES).enumerate() {
            let (g, j) = (i / SUBS, i % SUBS);
            let width = if g + 1 == groups { last } else { SUBS };
            for (e, &q) in block[2..].iter().enumerate() {
                assert_eq!(packed[g * QK_K + tile_position(width, j, e)], q, "block {i} value {e}");
            }
            assert_eq!(packed[scales_at + 16 * g + 2 * j..][..2], block[..2], "block {i} scale");
        }
        // Past the last block: zero weights, zero scales.
        let filled = blocks - (groups - 1) * SUBS;
        for j in filled..last {
            for e in 0..QK {
                assert_eq!(packed[(groups - 1) * QK_K + tile_position(last, j, e)], 0);
            }
        }
        assert!(packed[scales_at + 16 * (groups - 1) + 2 * filled..]
            .iter()
            .all(|&b| b == 0));
    }
}

/// The same for Q4_1: every 4-bit value where the activation it multiplies sits, every
/// block's scale and minimum where its lanes find them.
/// Packing at load costs no memory beyond the file's: a packed row of the block formats is
/// the file's row in size whenever its last group needs no rounding up (a whole group, or
/// two or four blocks), and at most two blocks' worth larger otherwise.
#[test]
fn a_packed_row_is_the_size_of_the_files_row() {
    for dtype in [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
    ] {
        let k = super_kernels(dtype, Isa::Avx2)
            .map(|k| k.packing)
            .unwrap_or_else(|| match dtype {
                QuantType::Q4_0 => Packing {
                    row_bytes: q4_0_packed_row_bytes,
                    pack_row: pack_q4_0_row,
                },
                QuantType::Q4_1 => Packing {
                    row_bytes: q4_1_packed_row_bytes,
                    pack_row: pack_q4_1_row,
                },
                QuantType::Q5_0 => Packing {
                    row_bytes: q5_0_packed_row_bytes,
                    pack_row: pack_q5_0_row,
                },
                QuantType::Q5_1 => Packing {
                    row_bytes: q5_1_packed_row_bytes,
                    pack_row: pack_q5_1_row,
                },
                _ => Packing {
                    row_bytes: q8_0_packed_row_bytes,
                    pack_row: pack_q8_0_row,
                },
            });
        let file = crate::quant::kernels::block_bytes(dtype);
        for blocks in 1..=50 {
            let rounded = match blocks % SUBS {
                0 | 2 | 4 => 0,
                1 | 3 => 1,
                r => SUBS - r,
            };
            assert_eq!(
                (k.row_bytes)(blocks),
                (blocks + rounded) * file,
                "{dtype} row of {blocks} blocks"
            );
        }
    }
}

/// A packed Q4_K / Q5_K row, read back value by value from its layout, is the row the
/// reference dequantization gives.
#[test]
fn a_packed_k_quant_row_holds_the_same_weights() {
    use crate::quant::blocks::dequantize_row;
    let mut rng = Rng::new(26);
    for (dtype, packed_bytes, high) in [
        (QuantType::Q4K, Q4_K_PACKED_BYTES, false),
        (QuantType::Q5K, Q5_K_PACKED_BYTES, true),
    ] {
        for blocks in [1, 2, 6] {
            let row = random_bytes(&mut rng, dtype, blocks * QK_K);
            let mut want = vec![0f32; blocks * QK_K];
            dequantize_row(dtype, &row, &mut want);
            let kernels = super_kernels(dtype, Isa::Avx2).map(|k| k.packing);
            let bytes = if high {
                q5_k_packed_row_bytes(blocks)
            } else {
                q4_k_packed_row_bytes(blocks)
            };
            let mut packed = vec![0xee; bytes];
            assert_eq!(bytes, blocks * packed_bytes);
            // The packing the tiles are handed where the CPU runs them, else the function.
            let pack: fn(&[u8], &mut [u8]) = match kernels {
                Some(p) => {
                    assert_eq!((p.row_bytes)(blocks), bytes);
                    p.pack_row
                }
                None if high => pack_q5_k_row,
                None => pack_q4_k_row,
            };
            pack(&row, &mut packed);
            let tail = if high { Q5_K_PACKED_HIGH_AT + 32 } else { 128 };
            for (i, b) in packed.chunks_exact(packed_bytes).enumerate() {
                let f16 = |at: usize| half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32();
                let (d, dmin) = (f16(tail + 2 * SUBS), f16(tail + 2 * SUBS + 2));
                for j in 0..SUBS {
                    for e in 0..QK {
                        let p = tile_position(SUBS, j, e);
                        let (byte, shift) = nibble_at(SUBS, p);
                        let mut q = (b[byte] >> shift) & 15;
                        if high {
                            q |= ((b[Q5_K_PACKED_HIGH_AT + p % 32] >> (p / 32)) & 1) << 4;
                        }
                        let (sc, m) = (f32::from(b[tail + j]), f32::from(b[tail + SUBS + j]));
                        let got = d * sc * f32::from(q) - dmin * m;
                        assert_eq!(
                            got.to_bits(),
                            want[i * QK_K + j * QK + e].to_bits(),
                            "{dtype} {i} {j} {e}"
                        );
                    }
                }
            }
        }
    }
}

/// A packed Q6_K row, read back value by value, is the row the reference dequantization
/// gives, and the tiles are handed this packing where the CPU runs them.
#[test]
fn a_packed_q6_k_row_holds_the_same_weights() {
    use crate::quant::blocks::{dequantize_row, Q6_K_BYTES, Q6_K_D_AT, Q6_K_QH_AT, Q6_K_SCALES_AT};
    let mut rng = Rng::new(27);
    for blocks in [1, 2, 6] {
        let row = random_bytes(&mut rng, QuantType::Q6K, blocks * QK_K);
        let mut want = vec![0f32; blocks * QK_K];
        dequantize_row(QuantType::Q6K, &row, &mut want);
        let mut packed = vec![0xee; q6_k_packed_row_bytes(blocks)];
        let pack: fn(&[u8], &mut [u8]) = match super_kernels(QuantType::Q6K, Isa::Avx2).map(|k| k.packing) {
            Some(p) => {
                assert_eq!((p.row_bytes)(blocks), packed.len());
                p.pack_row
            }
            None => pack_q6_k_row,
        };
        pack(&row, &mut packed);
        for (i, b) in packed.chunks_exact(Q6_K_BYTES).enumerate() {
            let d = half::f16::from_le_bytes([b[Q6_K_D_AT], b[Q6_K_D_AT + 1]]).to_f32();
            for j in 0..SUBS {
                for e in 0..QK {
                    let p = tile_position(SUBS, j, e);
                    let (byte, shift) = nibble_at(SUBS, p);
                    let high = (b[Q6_K_QH_AT + p % 64] >> (2 * (p / 64))) & 3;
                    let q = ((b[byte] >> shift) & 15) | (high << 4);
                    let scale = f32::from(b[Q6_K_SCALES_AT + (j * QK + e) / 16] as i8);
                    let got = d * scale * (f32::from(q) - 32.0);
                    assert_eq!(got.to_bits(), want[i * QK_K + j * QK + e].to_bits(), "{i} {j} {e}");
                }
            }
        }
    }
}

#[test]
fn a_packed_q4_1_row_lines_up_with_its_activations() {
    use crate::quant::blocks::Q4_1_BYTES;
    let mut rng = Rng::new(25);
    for blocks in [1, 2, 3, 4, 5, 8, 9, 18, 20, 48] {
        let row = random_bytes(&mut rng, QuantType::Q4_1, blocks * QK);
        let layout = PackedRow::new(blocks, QK / 2, 4);
        let mut packed = vec![0xee; q4_1_packed_row_bytes(blocks)];
        assert_eq!(packed.len(), layout.bytes);
        pack_q4_1_row(&row, &mut packed);
        for (i, block) in row.chunks_exact(Q4_1_BYTES).enumerate() {
            let (g, j) = (i / SUBS, i % SUBS);
            let width = layout.width(g);
            for e in 0..QK {
                let want = if e < 16 {
                    block[4 + e] & 15
                } else {
                    block[4 + e - 16] >> 4
                };
                let (byte, shift) = nibble_at(width, tile_position(width, j, e));
                assert!(byte < 16 * width, "block {i} value {e}");
                assert_eq!((packed[g * 128 + byte] >> shift) & 15, want, "block {i} value {e}");
            }
            let scales = layout.scales_at + 32 * g;
            assert_eq!(packed[scales + 2 * j..][..2], block[..2], "block {i} scale");
            assert_eq!(
                packed[scales + 2 * width + 2 * j..][..2],
                block[2..4],
                "block {i} minimum"
            );
        }
        // Past the last block: zero values, scales and minima.
        let (g, filled) = (layout.groups - 1, blocks - (layout.groups - 1) * SUBS);
        for j in filled..layout.last {
            for e in 0..QK {
                let (byte, shift) = nibble_at(layout.last, tile_position(layout.last, j, e));
                assert_eq!((packed[g * 128 + byte] >> shift) & 15, 0);
            }
        }
        let (scales, last) = (layout.scales_at + 32 * g, layout.last);
        assert!(packed[scales + 2 * filled..scales + 2 * last].iter().all(|&b| b == 0));
        assert!(packed[scales + 2 * last + 2 * filled..].iter().all(|&b| b == 0));
    }
}
