//! `y = x · Wᵀ` for quantized `W` read in place from the model file, on the model's threads.
//!
//! The activations are quantized to 8-bit blocks once per call; weight rows are split into
//! chunks across threads, and each chunk is multiplied with every token while its rows are hot
//! in cache, so a prefill of many tokens reads the weights once rather than once per token.

use std::sync::Arc;

use rayon::prelude::*;

use super::blocks::{quantize_q8, BlockQ8, QK};
use super::kernels::{block_bytes, dot4_fn, dot_fn, Dot4Fn, DotFn, Isa};
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
    /// The matrix `name` of `file`, or `Ok(None)` when its format has no finllm kernel.
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
        let row_bytes = cols / QK * block_bytes(info.dtype);
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
        for (i, stripe) in out.chunks_mut(n).enumerate() {
            let r = first + i;
            let row = &data[r * self.row_bytes..(r + 1) * self.row_bytes];
            let mut groups = stripe.chunks_exact_mut(4);
            for (g, out4) in (&mut groups).enumerate() {
                let t = g * 4;
                out4.copy_from_slice(&(self.dot4)(row, [act(t), act(t + 1), act(t + 2), act(t + 3)]));
            }
            let done = n - groups.into_remainder().len();
            for (t, o) in stripe.iter_mut().enumerate().skip(done) {
                *o = (self.dot)(row, act(t));
            }
        }
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
