//! `y = x · Wᵀ` for quantized `W` read in place from the model file, on the model's threads.
//!
//! The activations are quantized to 8-bit blocks once per call; weight rows are split into
//! chunks across threads, and each chunk is multiplied with every token while its rows are hot
//! in cache, so a prefill of many tokens reads the weights once rather than once per token.

use std::sync::Arc;

use rayon::prelude::*;

use super::blocks::{quantize_q8, BlockQ8, QK};
use super::kernels::{block_bytes, dot4_fn, dot_fn, rows2x4_fn, rows4_fn, Dot4Fn, DotFn, Isa, Rows2x4Fn, Rows4Fn};
use super::QuantType;
use crate::error::{Error, Result};
use crate::model::GgufFile;

/// Weight rows handed to one task.
const ROWS_PER_TASK: usize = 16;

/// A quantized matrix `[rows, cols]` in a GGUF file, in a format finllm has kernels for.
pub struct QMatrix {
    file: Arc<GgufFile>,
    start: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    dtype: QuantType,
    dot: DotFn,
    dot4: Dot4Fn,
    rows4: Option<Rows4Fn>,
    rows2x4: Option<Rows2x4Fn>,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl QMatrix {
    /// The matrix `name` of `file`, or `Ok(None)` when its format has no finllm kernel (or its
    /// rows are not whole blocks of the format: 32 elements, 256 for the K-quants).
    pub fn from_gguf(file: &Arc<GgufFile>, name: &str, rows: usize, cols: usize) -> Result<Option<Self>> {
        let info = file
            .tensor(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string() })?;
        let isa = Isa::detect();
        let (Some(dot), Some(dot4)) = (dot_fn(info.dtype, isa), dot4_fn(info.dtype, isa)) else {
            return Ok(None);
        };
        if info.shape() != [rows, cols] {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: vec![rows, cols],
                found: info.shape(),
            });
        }
        // The GGUF reader already rejects rows that are not whole blocks; should one get
        // through, candle serves it.
        let block = info.dtype.block_size() as usize; // at most 256
        if !cols.is_multiple_of(block) {
            return Ok(None);
        }
        let row_bytes = cols / block * block_bytes(info.dtype);
        Ok(Some(Self {
            file: file.clone(),
            // In bounds: the reader checked start + n_bytes against the file size.
            start: info.start as usize,
            rows,
            cols,
            row_bytes,
            dtype: info.dtype,
            dot,
            dot4,
            rows4: rows4_fn(info.dtype, isa),
            rows2x4: rows2x4_fn(info.dtype, isa),
        }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> QuantType {
        self.dtype
    }

    fn data(&self) -> &[u8] {
        let all = self.file.tensor_bytes_from(self.start);
        &all[..self.rows * self.row_bytes]
    }

    /// `x` is `[n, cols]` row-major; returns `[n, rows]` row-major.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        matmul_group(&[self], x, n)
            .pop()
            .expect("one matrix in, one result out")
    }

    /// Rows `first..first + out.len() / n` times every token, into `out` as `[rows, n]`.
    fn rows_times(&self, first: usize, out: &mut [f32], xq: &[BlockQ8], n: usize) {
        let blocks = self.cols / QK;
        let data = self.data();
        let act = |t: usize| &xq[t * blocks..(t + 1) * blocks];
        let row = |i: usize| {
            let r = first + i;
            &data[r * self.row_bytes..(r + 1) * self.row_bytes]
        };
        let rows = out.len() / n;
        let tiled = self.tiled_rows(out, &row, &act, n);
        for i in tiled..rows {
            let stripe = &mut out[i * n..(i + 1) * n];
            let mut groups = stripe.chunks_exact_mut(4);
            for (g, out4) in (&mut groups).enumerate() {
                let t = g * 4;
                out4.copy_from_slice(&(self.dot4)(row(i), [act(t), act(t + 1), act(t + 2), act(t + 3)]));
            }
            let done = n - groups.into_remainder().len();
            for (t, o) in stripe.iter_mut().enumerate().skip(done) {
                *o = (self.dot)(row(i), act(t));
            }
        }
    }

    /// The leading rows of `out` (`[rows, n]`) that the multi-row kernels cover, if the format
    /// has them: four rows at a time for one token, two rows by four tokens for more. Returns
    /// how many rows are done.
    fn tiled_rows<'a>(
        &self,
        out: &mut [f32],
        row: &dyn Fn(usize) -> &'a [u8],
        act: &dyn Fn(usize) -> &'a [BlockQ8],
        n: usize,
    ) -> usize {
        let rows = out.len() / n;
        let mut i = 0;
        match (n, self.rows4, self.rows2x4) {
            (1, Some(rows4), _) => {
                while i + 4 <= rows {
                    out[i..i + 4].copy_from_slice(&rows4(std::array::from_fn(|k| row(i + k)), act(0)));
                    i += 4;
                }
            }
            (4.., _, Some(rows2x4)) => {
                while i + 2 <= rows {
                    let whole = n / 4 * 4;
                    for t in (0..whole).step_by(4) {
                        let y = rows2x4([row(i), row(i + 1)], [act(t), act(t + 1), act(t + 2), act(t + 3)]);
                        for (k, yk) in y.iter().enumerate() {
                            out[(i + k) * n + t..(i + k) * n + t + 4].copy_from_slice(yk);
                        }
                    }
                    for k in 0..2 {
                        for t in whole..n {
                            out[(i + k) * n + t] = (self.dot)(row(i + k), act(t));
                        }
                    }
                    i += 2;
                }
            }
            _ => {}
        }
        i
    }
}

/// Multiply the same activations `x` (`[n, cols]`) by several matrices with `cols` columns in
/// one parallel pass (Q/K/V, gate/up): the activations are quantized once and every thread
/// draws row chunks from all matrices, so there is one fork-join instead of one per matrix.
/// Returns one `[n, rows]` row-major result per matrix.
pub fn matmul_group(mats: &[&QMatrix], x: &[f32], n: usize) -> Vec<Vec<f32>> {
    let cols = mats.first().map_or(0, |m| m.cols);
    assert!(
        mats.iter().all(|m| m.cols == cols),
        "matrices in a group share their input size"
    );
    assert_eq!(x.len(), n * cols, "activation shape");
    let blocks = cols / QK;
    let mut xq = vec![BlockQ8::default(); n * blocks];
    xq.par_chunks_mut(blocks.max(1))
        .zip(x.par_chunks(cols.max(1)))
        .for_each(|(q, row)| quantize_q8(row, q));
    // Results are built transposed ([rows, n]) so each task writes one contiguous stripe.
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; m.rows * n]).collect();
    let mut tasks: Vec<(&QMatrix, usize, &mut [f32])> = Vec::new();
    for (m, out) in mats.iter().zip(outs.iter_mut()) {
        for (c, chunk) in out.chunks_mut(ROWS_PER_TASK * n).enumerate() {
            tasks.push((m, c * ROWS_PER_TASK, chunk));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(m, first, out)| m.rows_times(first, out, &xq, n));
    if n == 1 {
        return outs;
    }
    outs.iter()
        .zip(mats)
        .map(|(yt, m)| {
            let mut y = vec![0f32; n * m.rows];
            for (r, stripe) in yt.chunks(n).enumerate() {
                for (t, v) in stripe.iter().enumerate() {
                    y[t * m.rows + r] = *v;
                }
            }
            y
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Rng;
    use crate::model::GgufWriter;
    use crate::quant::blocks::dequantize_row;

    fn file_with(shape: &[usize], dtype: QuantType, data: Vec<u8>) -> Arc<GgufFile> {
        let mut g = GgufWriter::new();
        g.tensor("w", shape, dtype, data).unwrap();
        Arc::new(GgufFile::from_vec("test.gguf", g.to_bytes()).unwrap())
    }

    #[test]
    fn every_kernel_format_multiplies_like_its_dequantized_matrix() {
        let mut rng = Rng::new(11);
        let (rows, cols) = (37, 512);
        let mut uniform = |n: usize, spread: f64| -> Vec<f32> {
            (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32).collect()
        };
        for dtype in crate::quant::kernels::KERNEL_FORMATS {
            let data = crate::model::synthetic::encode(&uniform(rows * cols, 1.0), &[rows, cols], dtype).unwrap();
            let row_bytes = data.len() / rows;
            let mut w = vec![0f32; rows * cols];
            for (r, out) in w.chunks_exact_mut(cols).enumerate() {
                dequantize_row(dtype, &data[r * row_bytes..(r + 1) * row_bytes], out);
            }
            let m = QMatrix::from_gguf(&file_with(&[rows, cols], dtype, data), "w", rows, cols)
                .unwrap()
                .unwrap_or_else(|| panic!("{dtype} has a kernel"));
            // Q4_1's and Q5_1's offset terms take d * sum rounded through f16, as llama.cpp does; the
            // K-quants' minimum terms take the exact sum.
            let tol = if matches!(dtype, QuantType::Q4_1 | QuantType::Q5_1) {
                3e-2
            } else {
                2e-3
            };
            // 1 token, fewer than four, the four-token kernel with a remainder, two groups of four.
            for n in [1, 3, 6, 8] {
                let x = uniform(n * cols, 2.0);
                let y = m.matmul(&x, n);
                for t in 0..n {
                    // The kernels see the activations quantized to 8 bits.
                    let mut xq = vec![BlockQ8::default(); cols / QK];
                    quantize_q8(&x[t * cols..(t + 1) * cols], &mut xq);
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
}
