//! The matrices' products against the scalar kernels and an f64 oracle.

use super::*;
use crate::quant::blocks::dequantize_row;
use crate::util::Rng;

struct Bytes(Vec<u8>);

impl WeightBytes for Bytes {
    fn weight_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The `[rows, cols]` matrix held by `data`, at an offset so that `start` is exercised.
fn matrix_with(dtype: QuantType, rows: usize, cols: usize, data: Vec<u8>) -> Option<QMatrix> {
    let mut shifted = vec![0xA5u8; 96];
    shifted.extend_from_slice(&data);
    let bytes: Arc<dyn WeightBytes> = Arc::new(Bytes(shifted));
    QMatrix::in_shared(&bytes, 96, dtype, rows, cols)
}

#[test]
fn every_kernel_format_multiplies_like_its_dequantized_matrix() {
    let mut rng = Rng::new(11);
    let (rows, cols) = (37, 512);
    let mut uniform = |n: usize, spread: f64| -> Vec<f32> {
        (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect()
    };
    for dtype in crate::quant::kernels::KERNEL_FORMATS {
        let data = crate::tools::synthetic::encode(&uniform(rows * cols, 1.0), &[rows, cols], dtype).unwrap();
        let row_bytes = data.len() / rows;
        let mut w = vec![0f32; rows * cols];
        for (r, out) in w.chunks_exact_mut(cols).enumerate() {
            dequantize_row(dtype, &data[r * row_bytes..(r + 1) * row_bytes], out);
        }
        let m = matrix_with(dtype, rows, cols, data).unwrap_or_else(|| panic!("{dtype} has a kernel"));
        // Q4_1's and Q5_1's offset terms take d * sum rounded through f16, as llama.cpp does; the
        // K-quants' minimum terms take the exact sum.
        let tol = if matches!(dtype, QuantType::Q4_1 | QuantType::Q5_1) {
            3e-2
        } else {
            2e-3
        };
        // 1 token, fewer than four, the four-token kernel with a remainder, two groups of four,
        // two six-token panel tiles and one more.
        for n in [1, 3, 6, 8, 13] {
            let x = uniform(n * cols, 2.0);
            let y = m.matmul(&x, n);
            for t in 0..n {
                // A token's results do not depend on the others in the call (the engine's
                // batches rely on it).
                let alone = m.matmul(&x[t * cols..(t + 1) * cols], 1);
                assert_eq!(alone, y[t * rows..(t + 1) * rows], "{dtype} n={n} token {t}");
                // The kernels see the activations quantized to 8 bits (the K-quant and Q6_K
                // panels with one scale per 256 values).
                let mut xq = vec![BlockQ8::default(); cols / QK];
                if m.input() == Input::BlocksK {
                    quantize_q8_k(&x[t * cols..(t + 1) * cols], &mut xq);
                } else {
                    quantize_q8(&x[t * cols..(t + 1) * cols], &mut xq);
                }
                let xd: Vec<f64> = xq
                    .iter()
                    .flat_map(|b| b.qs.iter().map(move |&q| f64::from(q) * f64::from(b.d)))
                    .collect();
                for r in 0..rows {
                    let want: f64 = w[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&xd)
                        .map(|(w, x)| f64::from(*w) * x)
                        .sum();
                    let got = f64::from(y[t * rows + r]);
                    assert!(
                        (got - want).abs() <= tol * (1.0 + want.abs()),
                        "{dtype} n={n} token {t} row {r}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

fn uniform(rng: &mut Rng, n: usize, spread: f64) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect()
}

#[test]
fn float_matrices_equal_the_one_row_kernel_and_the_exact_product() {
    let mut rng = Rng::new(12);
    // 37 rows: two whole 16-row tasks and a remainder, whole 4-row tiles and a remainder.
    let rows = 37;
    for dtype in crate::quant::float::FLOAT_FORMATS {
        // Where the CPU has a bf16 dot product, bf16 rows meet activations rounded to bf16.
        let bf16_dot = bf16_dot_kernels(dtype, Isa::detect());
        // On AVX2, bf16 and f16 rows have the pair kernels (bf16's activations in pair order).
        let pairs_dot = pair_kernels(dtype, Isa::detect()).map(|k| k.dot);
        let f32_dot = float_kernels(dtype, Isa::detect()).unwrap().dot;
        let as_read = |x: &[f32]| -> Vec<f32> {
            match bf16_dot {
                Some(_) => x.iter().map(|&v| crate::quant::bf16dot::bf16_rounded(v)).collect(),
                None => x.to_vec(),
            }
        };
        let one_row = |row: &[u8], x: &[f32]| match bf16_dot {
            Some(k) => {
                let mut b = vec![0u16; x.len()];
                round_to_bf16(x, &mut b);
                (k.dot)(row, &b)
            }
            None => match pairs_dot {
                Some(dot) if reads_pair_order(dtype) => {
                    let mut p = vec![0f32; pair_len(x.len())];
                    to_pair_order(x, &mut p);
                    dot(row, &p)
                }
                Some(dot) => dot(row, x),
                None => f32_dot(row, x),
            },
        };
        // 4,100: rows longer than a chunk (AVX2 bf16), the last chunk a partial run.
        for cols in [1, 15, 17, 33, 100, 576, 4100] {
            let (bytes, w) = crate::quant::float::float_bytes(&uniform(&mut rng, rows * cols, 1.0), dtype);
            let m = matrix_with(dtype, rows, cols, bytes.clone()).unwrap_or_else(|| panic!("{dtype} has a kernel"));
            assert_eq!(m.size_bytes(), bytes.len());
            // One token, whole tiles of tokens, and every remainder.
            for n in 1..=9 {
                let x = uniform(&mut rng, n * cols, 2.0);
                let y = m.matmul(&x, n);
                assert_eq!(y.len(), n * rows);
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for r in 0..rows {
                        let got = y[t * rows + r];
                        let row = &bytes[r * bytes.len() / rows..(r + 1) * bytes.len() / rows];
                        assert_eq!(
                            got.to_bits(),
                            one_row(row, xt).to_bits(),
                            "{dtype} cols {cols} n={n} token {t} row {r}"
                        );
                        let (want, magnitude) = w[r * cols..(r + 1) * cols]
                            .iter()
                            .zip(&as_read(xt))
                            .map(|(w, x)| f64::from(*w) * f64::from(*x))
                            .fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()));
                        let bound = (cols as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude;
                        assert!(
                            (f64::from(got) - want).abs() <= bound,
                            "{dtype} cols {cols} n={n} token {t} row {r}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

/// One matrix per `(format, rows)` of uniform values in [-1, 1), `cols` wide.
fn random_matrices(rng: &mut Rng, formats: &[(QuantType, usize)], cols: usize) -> Vec<QMatrix> {
    formats
        .iter()
        .map(|&(dtype, rows)| {
            let values = uniform(rng, rows * cols, 1.0);
            let data = crate::tools::synthetic::encode(&values, &[rows, cols], dtype).unwrap();
            matrix_with(dtype, rows, cols, data).unwrap()
        })
        .collect()
}

/// A call longer than a pass ([`token_block`]) runs in several passes over the matrices;
/// every token's results are still those of the token alone, bit for bit, in every kind of
/// kernel (panels, K-quant tiles, float and bf16 rows), with the last pass short.
#[test]
fn a_call_in_several_passes_gives_each_token_its_own_results() {
    let mut rng = Rng::new(17);
    let cols = 8192;
    let n = 2 * token_block(cols) + 7;
    assert!(token_block(cols) < n, "the call takes several passes");
    let formats = [
        (QuantType::Q8_0, 33),
        (QuantType::Q5K, 5),
        (QuantType::Q6K, 4),
        (QuantType::BF16, 6),
        (QuantType::F32, 3),
    ];
    let mats = random_matrices(&mut rng, &formats, cols);
    let group: Vec<&QMatrix> = mats.iter().collect();
    let x = uniform(&mut rng, n * cols, 2.0);
    let together = matmul_group(&group, &x, n);
    for (m, y) in group.iter().zip(&together) {
        for t in 0..n {
            let alone = m.matmul(&x[t * cols..(t + 1) * cols], 1);
            let got = &y[t * m.rows()..(t + 1) * m.rows()];
            assert!(
                got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{} token {t}",
                m.dtype()
            );
        }
    }
}

#[test]
fn a_group_of_mixed_formats_equals_separate_calls() {
    let mut rng = Rng::new(13);
    let cols = 512;
    let formats = [
        (QuantType::Q8_0, 20),
        (QuantType::F16, 37),
        (QuantType::Q4K, 16),
        (QuantType::BF16, 5),
        (QuantType::F32, 33),
        (QuantType::Q4_1, 3),
    ];
    let mats = random_matrices(&mut rng, &formats, cols);
    let all: Vec<&QMatrix> = mats.iter().collect();
    let floats: Vec<&QMatrix> = mats.iter().filter(|m| m.dtype().block_size() == 1).collect();
    // One scratch and one set of output buffers, poisoned with NaN before every call, through
    // calls that grow and shrink: what a forward pass reuses layer after layer.
    let mut scratch = Scratch::default();
    let mut reused: Vec<Vec<f32>> = vec![Vec::new(); mats.len()];
    for n in [9, 1, 5, 2, 4] {
        let x = uniform(&mut rng, n * cols, 2.0);
        for group in [&all, &floats] {
            let together = matmul_group(group, &x, n);
            assert_eq!(together.len(), group.len());
            let mut views: Vec<&mut [f32]> = reused
                .iter_mut()
                .zip(group.iter())
                .map(|(b, m)| {
                    b.resize(n * m.rows(), 0.0);
                    b.fill(f32::NAN);
                    b.as_mut_slice()
                })
                .collect();
            matmul_group_into(group, &x, n, &mut views, &mut scratch);
            for ((m, y), r) in group.iter().zip(&together).zip(&views) {
                let alone = m.matmul(&x, n);
                let same =
                    |a: &[f32]| a.len() == alone.len() && a.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same(y), "{} n={n}", m.dtype());
                assert!(same(r), "{} n={n}, reused buffers", m.dtype());
            }
        }
    }
}

/// Resident bytes of the mapping that starts at `addr`, from `/proc/self/smaps`.
#[cfg(target_os = "linux")]
fn mapping_rss(addr: usize) -> Option<usize> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut in_map = false;
    for line in smaps.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((start, _)) = range.split_once('-') {
                if let Ok(start) = usize::from_str_radix(start, 16) {
                    in_map = start == addr;
                    continue;
                }
            }
        }
        if in_map {
            if let Some(kb) = line.strip_prefix("Rss:") {
                return kb
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .map(|k| k * 1024);
            }
        }
    }
    None
}

/// Released pages leave the process's resident memory and read back unchanged from the file;
/// a span past the map's end is ignored; sparse reading leaves the bytes as they are.
#[cfg(target_os = "linux")]
#[test]
fn advised_pages_leave_memory_and_read_back_unchanged() {
    let path = std::env::temp_dir().join(format!("finllm-advise-{}.bin", std::process::id()));
    let bytes: Vec<u8> = (0..(1usize << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: the file is this test's own and is not changed while mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
    let addr = map.as_ptr() as usize;
    let touch = |m: &memmap2::Mmap| m.iter().step_by(4096).map(|b| *b as usize).sum::<usize>();
    let sum = touch(&map);
    let all = mapping_rss(addr).expect("the map is listed in smaps");
    assert_eq!(all, bytes.len(), "every page touched is resident");

    // Out of bounds: nothing happens.
    advise_pages(&map, bytes.len() - 4096, 8192, PageAdvice::Release);
    advise_pages(&map, usize::MAX, 2, PageAdvice::Release);
    assert_eq!(mapping_rss(addr), Some(all));

    // The second half goes back; the first stays.
    let half = bytes.len() / 2;
    WeightBytes::advise(&map, half, half, PageAdvice::Release);
    assert_eq!(mapping_rss(addr), Some(half));
    WeightBytes::advise(&map, 0, half, PageAdvice::ReadSparsely);
    assert_eq!(&map[..], &bytes[..], "the bytes read back unchanged from the file");
    assert_eq!(touch(&map), sum);
    drop(map);
    let _ = std::fs::remove_file(&path);
}
