//! Q8_0 weights times 8-bit activations for many tokens at once: the matrix products of an
//! encoder (hundreds of tokens per call), where the decode-shaped tiles of [`super::ktile`]
//! (two rows by up to eight tokens, the sub-blocks spread over the lanes) spend most of their
//! instructions on scales rather than on integer dot products.
//!
//! Here the lanes are output rows. The weights are laid out once, in panels of 32 rows: for
//! each 32-value block and each run of four values in it, two 64-byte vectors hold those four
//! values of sixteen rows each, offset by 128 to unsigned bytes. One `vpdpbusd` multiplies a
//! vector by four of a token's (signed) activation values broadcast to every lane, so a block
//! takes eight of them per sixteen rows and token, chained in integers from `−128 Σ a` (which
//! takes the offset back out, exactly). Then one multiply of the rows' and the token's scales
//! and one multiply-add finish the block. A tile is 32 rows by up to six tokens: 12 integer
//! and 12 float accumulators stay in registers for the whole row.
//!
//! Every result is the same sequence of operations whatever tile it falls in, so a token's
//! numbers do not depend on how many tokens share the call. The scalar form
//! ([`Q8Panels::matmul_scalar`]) takes the same operations in the same order: the SIMD results
//! equal it bit for bit.

use super::blocks::{quantize_q8, BlockQ8, QK, Q8_0_BYTES};
use super::kernels::Isa;

/// Rows a panel holds (two vectors of sixteen lanes).
pub const PANEL_ROWS: usize = 32;
/// Runs of four values in a block.
const STEPS: usize = QK / 4;
/// Bytes of one block of one panel: eight runs of four values for 32 rows.
const PANEL_BLOCK_BYTES: usize = STEPS * PANEL_ROWS * 4;
/// Most tokens a tile takes.
pub const TILE_TOKENS: usize = 6;

/// A Q8_0 matrix (`rows` outputs by `cols` inputs) laid out in panels for [`Q8Panels::matmul`].
#[derive(Clone)]
pub struct Q8Panels {
    rows: usize,
    cols: usize,
    /// Weights + 128, panel by panel, block by block, run by run (see the module's text).
    w: Vec<u8>,
    /// The rows' block scales, panel by panel, block by block, 32 rows each (zero past `rows`).
    d: Vec<f32>,
}

impl std::fmt::Debug for Q8Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Q8Panels")
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl Q8Panels {
    /// True where the SIMD tiles run (AVX-512 VNNI); elsewhere [`matmul`](Self::matmul) runs the
    /// scalar form, and callers with another fast path should take it.
    pub fn fast() -> bool {
        Isa::detect() == Isa::Avx512
    }

    /// Lay out `rows` Q8_0 rows of `cols` values (`rows · cols / 32` blocks of 34 bytes), or
    /// `None` when the sizes disagree or `cols` is not whole blocks.
    pub fn from_q8_0(bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let mut m = Self::zeroed(rows, cols)?;
        if rows.checked_mul(cols / QK * Q8_0_BYTES) != Some(bytes.len()) {
            return None;
        }
        m.fill_rows(0, bytes);
        Some(m)
    }

    /// A `rows` by `cols` matrix of zeros, to be filled by [`fill_rows`](Self::fill_rows);
    /// `None` when `cols` is not whole blocks or the size overflows.
    pub fn zeroed(rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(QK) {
            return None;
        }
        let panels = rows.div_ceil(PANEL_ROWS);
        let units = panels.checked_mul(cols / QK)?;
        // Zeros are offset bytes of 128 and scales of zero (also past the last row).
        Some(Self {
            rows,
            cols,
            w: vec![128u8; units.checked_mul(PANEL_BLOCK_BYTES)?],
            d: vec![0f32; units.checked_mul(PANEL_ROWS)?],
        })
    }

    /// Lay out whole Q8_0 rows `first..` from `bytes` (34-byte blocks, `cols / 32` per row).
    /// Panics if they run past the matrix.
    pub fn fill_rows(&mut self, first: usize, bytes: &[u8]) {
        let blocks = self.blocks();
        let row_bytes = blocks * Q8_0_BYTES;
        assert!(
            bytes.len().is_multiple_of(row_bytes) && first + bytes.len() / row_bytes <= self.rows,
            "whole rows inside the matrix"
        );
        for (i, row) in bytes.chunks_exact(row_bytes).enumerate() {
            let r = first + i;
            let (p, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
            let (half, lane16) = (lane / 16, lane % 16);
            for (b, block) in row.chunks_exact(Q8_0_BYTES).enumerate() {
                let pb = p * blocks + b;
                self.d[pb * PANEL_ROWS + lane] = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                for (e, &q) in block[2..].iter().enumerate() {
                    let at = pb * PANEL_BLOCK_BYTES + (e / 4) * 128 + half * 64 + lane16 * 4 + e % 4;
                    self.w[at] = (q as i8 as i16 + 128) as u8;
                }
            }
        }
    }

    /// Bytes the laid-out weights and scales take.
    pub fn size_bytes(&self) -> usize {
        self.w.len() + 4 * self.d.len()
    }

    /// Quantize a row-major f32 matrix to Q8_0 (as [`super::matmul::QMatrix::quantized`]
    /// does) and lay it out; `None` when the sizes disagree or `cols` is not whole blocks.
    pub fn quantize(data: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(QK) || rows.checked_mul(cols) != Some(data.len()) {
            return None;
        }
        let mut bytes = Vec::with_capacity(rows * cols / QK * Q8_0_BYTES);
        for row in data.chunks_exact(cols) {
            super::encode::encode_q8_0_fast(row, &mut bytes);
        }
        Self::from_q8_0(&bytes, rows, cols)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn blocks(&self) -> usize {
        self.cols / QK
    }

    /// `x` (`n` rows of `cols` values) quantized to 8-bit blocks, as [`matmul_q8_into`](Self::matmul_q8_into)
    /// takes them: one quantization serves every matrix that reads the same input.
    pub fn quantize_input(x: &[f32], n: usize, cols: usize) -> Vec<BlockQ8> {
        let mut a = Vec::new();
        Self::quantize_input_into(x, n, cols, &mut a);
        a
    }

    /// [`quantize_input`](Self::quantize_input) into a caller's buffer (resized, every block
    /// overwritten), parallel over rows on the current rayon pool.
    pub fn quantize_input_into(x: &[f32], n: usize, cols: usize, a: &mut Vec<BlockQ8>) {
        assert_eq!(x.len(), n * cols, "{n} rows of {cols} values");
        assert!(cols.is_multiple_of(QK), "whole 32-value blocks");
        a.resize(n * cols / QK, BlockQ8::default());
        if a.is_empty() {
            return;
        }
        use rayon::prelude::*;
        // Whole rows per task, a few hundred kilobytes of input each.
        let per = (64 * 1024 / cols).max(1);
        a.par_chunks_mut(per * cols / QK)
            .zip(x.par_chunks(per * cols))
            .for_each(|(a, x)| quantize_q8(x, a));
    }

    /// `x @ W^T (+ bias)` for `n` rows of `x`: `[n, rows]`.
    pub fn matmul(&self, x: &[f32], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let a = Self::quantize_input(x, n, self.cols);
        let mut out = vec![0f32; n * self.rows];
        self.matmul_q8_into(&a, n, bias, &mut out);
        out
    }

    /// `a @ W^T (+ bias)` on inputs quantized by [`quantize_input`](Self::quantize_input), into
    /// `out` (`[n, rows]`, overwritten whole); parallel over groups of tokens on the current
    /// rayon pool.
    pub fn matmul_q8_into(&self, a: &[BlockQ8], n: usize, bias: Option<&[f32]>, out: &mut [f32]) {
        self.check(a, n, bias);
        assert_eq!(out.len(), n * self.rows, "one [n, rows] result");
        if n == 0 || self.rows == 0 {
            return;
        }
        use rayon::prelude::*;
        let blocks = self.blocks();
        // Enough groups for the pool to balance, each whole tiles.
        let threads = rayon::current_num_threads().max(1);
        let per = n.div_ceil(4 * threads).div_ceil(TILE_TOKENS).max(1) * TILE_TOKENS;
        let fast = Self::fast();
        out.par_chunks_mut(per * self.rows)
            .zip(a.par_chunks(per * blocks))
            .for_each(|(out, a)| {
                if fast {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `fast` found AVX-512 F/BW/VL/VNNI; `check` sized every slice.
                    unsafe {
                        avx512::panels(self, a, bias, out)
                    };
                } else {
                    self.scalar_into(a, bias, out);
                }
            });
    }

    /// Panel `p` (rows `32 p..`) times every token of `a`: `out[t]` receives token `t`'s
    /// results for the panel's first `out[t].len()` rows (at most 32, fewer in the last panel).
    pub fn panel_times(&self, p: usize, a: &[BlockQ8], out: &mut [&mut [f32]]) {
        let blocks = self.blocks();
        assert_eq!(a.len(), out.len() * blocks, "one token of activations per output");
        let live = self.rows.saturating_sub(p * PANEL_ROWS).min(PANEL_ROWS);
        assert!(out.iter().all(|o| o.len() <= live), "rows inside panel {p}");
        let sink = |t: usize, y: &[f32; PANEL_ROWS]| {
            let o = &mut out[t];
            let len = o.len();
            o.copy_from_slice(&y[..len]);
        };
        if Self::fast() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `fast` found AVX-512 F/BW/VL/VNNI; the panel exists (`live` rows) and `a`
            // holds whole tokens.
            unsafe {
                avx512::panel(self, p, a, None, sink)
            };
        } else {
            let mut sink = sink;
            for (t, tok) in a.chunks_exact(blocks).enumerate() {
                let mut y = [0f32; PANEL_ROWS];
                for (lane, y) in y.iter_mut().enumerate().take(live) {
                    *y = self.scalar_one(p * PANEL_ROWS + lane, tok, None);
                }
                sink(t, &y);
            }
        }
    }

    fn check(&self, a: &[BlockQ8], n: usize, bias: Option<&[f32]>) {
        assert_eq!(a.len(), n * self.blocks(), "{n} tokens of {} blocks", self.blocks());
        if let Some(b) = bias {
            assert_eq!(b.len(), self.rows, "one bias per row");
        }
    }

    /// The scalar form of [`matmul_q8_into`](Self::matmul_q8_into), bit-identical to it: the reference
    /// the SIMD tiles are tested against, and what runs without AVX-512 VNNI.
    pub fn matmul_scalar(&self, a: &[BlockQ8], n: usize, bias: Option<&[f32]>) -> Vec<f32> {
        self.check(a, n, bias);
        let mut out = vec![0f32; n * self.rows];
        self.scalar_into(a, bias, &mut out);
        out
    }

    fn scalar_into(&self, a: &[BlockQ8], bias: Option<&[f32]>, out: &mut [f32]) {
        let blocks = self.blocks();
        if self.rows == 0 {
            return;
        }
        for (tok, o) in a.chunks_exact(blocks).zip(out.chunks_exact_mut(self.rows)) {
            for (r, o) in o.iter_mut().enumerate() {
                *o = self.scalar_one(r, tok, bias);
            }
        }
    }

    /// Row `r` times one token's blocks, the tiles' operations one at a time.
    fn scalar_one(&self, r: usize, tok: &[BlockQ8], bias: Option<&[f32]>) -> f32 {
        let blocks = self.blocks();
        let (p, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
        let (half, lane16) = (lane / 16, lane % 16);
        let mut acc = 0f32;
        for (b, y) in tok.iter().enumerate() {
            let pb = p * blocks + b;
            let mut dot = -128 * y.sum;
            for (e, &q) in y.qs.iter().enumerate() {
                let at = pb * PANEL_BLOCK_BYTES + (e / 4) * 128 + half * 64 + lane16 * 4 + e % 4;
                dot += i32::from(self.w[at]) * i32::from(q);
            }
            let scale = self.d[pb * PANEL_ROWS + lane] * y.d;
            acc = scale.mul_add(dot as f32, acc);
        }
        acc + bias.map_or(0.0, |b| b[r])
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// Every panel against every token of `a` (whole tokens of `blocks` blocks), into `out`
    /// (`[tokens, rows]`).
    ///
    /// SAFETY: the CPU has AVX-512 F/BW/VL/VNNI; `a` holds whole tokens and `out` one row of
    /// results per token; `bias`, if any, one value per row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn panels(m: &Q8Panels, a: &[BlockQ8], bias: Option<&[f32]>, out: &mut [f32]) {
        let rows = m.rows;
        for p in 0..rows.div_ceil(PANEL_ROWS) {
            let live = (rows - p * PANEL_ROWS).min(PANEL_ROWS);
            // SAFETY: as this function's.
            unsafe {
                panel(m, p, a, bias, |t, y| {
                    out[t * rows + p * PANEL_ROWS..][..live].copy_from_slice(&y[..live]);
                })
            };
        }
    }

    /// Panel `p` against every token of `a`: `sink(t, results)` per token, 32 results (those
    /// past the matrix's last row are zero).
    ///
    /// SAFETY: the CPU has AVX-512 F/BW/VL/VNNI; panel `p` exists; `a` holds whole tokens;
    /// `bias`, if any, one value per row.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn panel(
        m: &Q8Panels,
        p: usize,
        a: &[BlockQ8],
        bias: Option<&[f32]>,
        mut sink: impl FnMut(usize, &[f32; PANEL_ROWS]),
    ) {
        let blocks = m.blocks();
        let tokens = a.len() / blocks;
        let w = &m.w[p * blocks * PANEL_BLOCK_BYTES..][..blocks * PANEL_BLOCK_BYTES];
        let d = &m.d[p * blocks * PANEL_ROWS..][..blocks * PANEL_ROWS];
        // Lanes of this panel that are rows of the matrix, per half.
        let live = (m.rows - p * PANEL_ROWS).min(PANEL_ROWS);
        let masks = [mask(live.min(16)), mask(live.saturating_sub(16))];
        let mut bias_v = [_mm512_setzero_ps(); 2];
        if let Some(b) = bias {
            for (h, v) in bias_v.iter_mut().enumerate() {
                // SAFETY: the mask admits only lanes below `rows`.
                *v = unsafe { _mm512_maskz_loadu_ps(masks[h], b.as_ptr().add(p * PANEL_ROWS + 16 * h)) };
            }
        }
        let mut y = [0f32; PANEL_ROWS];
        let mut t0 = 0;
        while t0 < tokens {
            let n = (tokens - t0).min(TILE_TOKENS);
            let a = &a[t0 * blocks..(t0 + n) * blocks];
            let acc = match n {
                // SAFETY (each): `a` holds `n` whole tokens; `w` and `d` the panel's blocks.
                6 => widen(unsafe { tile::<6>(w, d, a, blocks) }),
                5 => widen(unsafe { tile::<5>(w, d, a, blocks) }),
                4 => widen(unsafe { tile::<4>(w, d, a, blocks) }),
                3 => widen(unsafe { tile::<3>(w, d, a, blocks) }),
                2 => widen(unsafe { tile::<2>(w, d, a, blocks) }),
                _ => widen(unsafe { tile::<1>(w, d, a, blocks) }),
            };
            for (t, acc) in acc.iter().take(n).enumerate() {
                for h in 0..2 {
                    let v = _mm512_maskz_mov_ps(masks[h], _mm512_add_ps(acc[h], bias_v[h]));
                    // SAFETY: sixteen floats inside `y`.
                    unsafe { _mm512_storeu_ps(y.as_mut_ptr().add(16 * h), v) };
                }
                sink(t0 + t, &y);
            }
            t0 += n;
        }
    }

    fn mask(lanes: usize) -> __mmask16 {
        if lanes >= 16 {
            0xffff
        } else {
            ((1u32 << lanes) - 1) as __mmask16
        }
    }

    /// A tile's accumulators padded to six tokens (the unused ones are never read).
    #[inline(always)]
    fn widen<const N: usize>(acc: [[__m512; 2]; N]) -> [[__m512; 2]; TILE_TOKENS] {
        // SAFETY: an all-zero __m512 is a valid value.
        let mut out = [[unsafe { std::mem::zeroed::<__m512>() }; 2]; TILE_TOKENS];
        out[..N].copy_from_slice(&acc);
        out
    }

    /// One panel (32 rows) by `N` tokens over every block: the results before the bias.
    ///
    /// SAFETY: AVX-512 F/BW/VL/VNNI; `w` holds `blocks` panel blocks, `d` their scales and `a`
    /// `N` tokens of `blocks` blocks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const N: usize>(w: &[u8], d: &[f32], a: &[BlockQ8], blocks: usize) -> [[__m512; 2]; N] {
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        let wp = w.as_ptr();
        for b in 0..blocks {
            let ys: [&BlockQ8; N] = std::array::from_fn(|t| &a[t * blocks + b]);
            let mut dot: [[__m512i; 2]; N] = std::array::from_fn(|t| {
                let s = _mm512_set1_epi32(-128 * ys[t].sum);
                [s, s]
            });
            let wb = wp.wrapping_add(b * PANEL_BLOCK_BYTES);
            for s in 0..STEPS {
                // SAFETY: run `s` of block `b` lies inside `w` (the caller sized it).
                let (w0, w1) = unsafe {
                    (
                        _mm512_loadu_si512(wb.add(128 * s).cast()),
                        _mm512_loadu_si512(wb.add(128 * s + 64).cast()),
                    )
                };
                for t in 0..N {
                    // SAFETY: four of the block's 32 values.
                    let four = unsafe { ys[t].qs.as_ptr().add(4 * s).cast::<i32>().read_unaligned() };
                    let y = _mm512_set1_epi32(four);
                    dot[t][0] = _mm512_dpbusd_epi32(dot[t][0], w0, y);
                    dot[t][1] = _mm512_dpbusd_epi32(dot[t][1], w1, y);
                }
            }
            // SAFETY: the block's 32 row scales lie inside `d`.
            let (d0, d1) = unsafe {
                (
                    _mm512_loadu_ps(d.as_ptr().add(b * PANEL_ROWS)),
                    _mm512_loadu_ps(d.as_ptr().add(b * PANEL_ROWS + 16)),
                )
            };
            for t in 0..N {
                let yd = _mm512_set1_ps(ys[t].d);
                acc[t][0] = _mm512_fmadd_ps(_mm512_mul_ps(d0, yd), _mm512_cvtepi32_ps(dot[t][0]), acc[t][0]);
                acc[t][1] = _mm512_fmadd_ps(_mm512_mul_ps(d1, yd), _mm512_cvtepi32_ps(dot[t][1]), acc[t][1]);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The float64 product of the Q8_0 weights and the 8-bit activations as their blocks say
    /// (each value times its block's scale), independent of any layout.
    /// Also the sum of the blocks' absolute values, which bounds the f32 rounding.
    fn oracle(w_bytes: &[u8], a: &[BlockQ8], rows: usize, cols: usize, n: usize) -> Vec<(f64, f64)> {
        let blocks = cols / QK;
        let mut out = vec![(0f64, 0f64); n * rows];
        for t in 0..n {
            for r in 0..rows {
                let (mut s, mut size) = (0f64, 0f64);
                for b in 0..blocks {
                    let wb = &w_bytes[(r * blocks + b) * Q8_0_BYTES..][..Q8_0_BYTES];
                    let wd = f64::from(half::f16::from_le_bytes([wb[0], wb[1]]).to_f32());
                    let y = &a[t * blocks + b];
                    let term: f64 = (0..QK)
                        .map(|e| wd * f64::from(wb[2 + e] as i8) * f64::from(y.d) * f64::from(y.qs[e]))
                        .sum();
                    s += term;
                    size += term.abs();
                }
                out[t * rows + r] = (s, size);
            }
        }
        out
    }

    #[test]
    fn panels_match_the_scalar_form_bit_for_bit_and_the_f64_oracle() {
        let mut seed = 7u64;
        // Rows that fill panels and that leave a partial one (in either half); token counts
        // that fill tiles and that leave every remainder.
        for &(rows, cols) in &[(32usize, 32usize), (45, 64), (17, 96), (96, 384), (7, 32)] {
            let data: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed) * 0.1).collect();
            let bias: Vec<f32> = (0..rows).map(|_| lcg(&mut seed)).collect();
            let mut bytes = Vec::new();
            for row in data.chunks_exact(cols) {
                crate::quant::encode::encode_q8_0_fast(row, &mut bytes);
            }
            let m = Q8Panels::from_q8_0(&bytes, rows, cols).expect("whole blocks");
            for n in [1usize, 5, 6, 7, 13, 40] {
                let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed) * 3.0).collect();
                let a = Q8Panels::quantize_input(&x, n, cols);
                let scalar = m.matmul_scalar(&a, n, Some(&bias));
                let mut fast = vec![f32::NAN; n * rows];
                m.matmul_q8_into(&a, n, Some(&bias), &mut fast);
                assert_eq!(fast.len(), n * rows);
                // Bit for bit (on a CPU without VNNI both run the scalar form).
                for (i, (f, s)) in fast.iter().zip(&scalar).enumerate() {
                    assert_eq!(f.to_bits(), s.to_bits(), "{rows}x{cols}, {n} tokens, result {i}: {f} vs {s}");
                }
                let exact = oracle(&bytes, &a, rows, cols, n);
                for (i, (s, &(e, size))) in scalar.iter().zip(&exact).enumerate() {
                    let bias = f64::from(bias[i % rows]);
                    let with_bias = e + bias;
                    // Per block a product of two scales, a multiply-add (two roundings each
                    // relative to the running sum, at most `size`), then the bias added.
                    let eps = f64::from(f32::EPSILON);
                    let bound = eps * ((cols / QK) as f64 * 2.0 * (size + bias.abs()) + with_bias.abs());
                    assert!(
                        (f64::from(*s) - with_bias).abs() <= bound,
                        "{rows}x{cols}, {n} tokens, result {i}: {s} vs {with_bias}"
                    );
                }
                // One token alone gives the numbers it gets among others.
                let mut alone = vec![f32::NAN; rows];
                m.matmul_q8_into(&a[(n - 1) * cols / QK..], 1, Some(&bias), &mut alone);
                assert_eq!(alone, fast[(n - 1) * rows..]);
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
        let m = Q8Panels::quantize(&data, rows, cols).expect("whole blocks");
        let y = m.matmul(&x, n, None);
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
        assert!(Q8Panels::from_q8_0(&[0u8; 34], 1, 31).is_none());
        assert!(Q8Panels::from_q8_0(&[0u8; 33], 1, 32).is_none());
        assert!(Q8Panels::quantize(&[0.0; 64], 2, 33).is_none());
        assert!(Q8Panels::quantize(&[0.0; 64], 3, 32).is_none());
    }
}
