//! Block-format weights (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K) times 8-bit activations for any number of tokens,
//! in panels of 32 output rows: the matrix products of prefill, of batched decode and of an
//! encoder (hundreds of tokens per call), where the decode-shaped tiles of [`super::ktile`]
//! (two rows by up to eight tokens, the sub-blocks spread over the lanes) spend most of their
//! instructions on scales rather than on integer dot products.
//!
//! Here the lanes are output rows. The weights are laid out once, in panels of 32 rows, block
//! by block: for each run of four values of a block, a 64-byte vector holds those four values
//! of sixteen rows as unsigned bytes (Q8_0 offset by 128; Q4_0 and Q4_1 as the file's nibbles,
//! one load giving a run of the block's first half and one of its second). One `vpdpbusd`
//! multiplies a vector by four of a token's signed activation values broadcast to every lane,
//! so a block takes eight of them per sixteen rows and token, chained in integers from a start
//! that takes the offset back out exactly (`−128 Σ a` for Q8_0, `−8 Σ a` for Q4_0, zero for
//! Q4_1). Then one multiply of the rows' and the token's scales and one multiply-add finish
//! the block (Q4_1 adds its minimum times the token's `d Σ a`, as llama.cpp does). A tile is 32
//! rows by up to six tokens: 12 integer and 12 float accumulators stay in registers for the
//! whole row.
//!
//! Every result is the same sequence of operations whatever tile it falls in, so a token's
//! numbers do not depend on how many tokens share the call (the engine's batches rely on it).
//! The scalar form (`Panels::scalar_one`) takes the same operations in the same order: the
//! SIMD results equal it bit for bit.

use super::blocks::{
    k_scales_mins, BlockQ8, K_SCALES_AT, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q4_K_QS_AT, Q5_0_BYTES, Q5_1_BYTES,
    Q5_K_BYTES, Q5_K_QH_AT, Q5_K_QS_AT, Q8_0_BYTES, QK, QK_K,
};
use super::kernels::Isa;
use super::QuantType;
use crate::util::HugeArray;

/// Rows a panel holds (two vectors of sixteen lanes).
pub const PANEL_ROWS: usize = 32;
/// Runs of four values in a block.
#[cfg(target_arch = "x86_64")]
const STEPS: usize = QK / 4;
/// Most tokens a tile takes.
pub const TILE_TOKENS: usize = 6;

/// The weight formats laid out in panels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelFormat {
    Q8_0,
    Q4_0,
    Q4_1,
    /// Q5_0 and Q5_1: Q4_0's and Q4_1's nibbles, and the fifth bits as byte masks (one bit per
    /// byte of a run's vector), added as 16 under the mask.
    Q5_0,
    Q5_1,
    /// Q4_K: each 32-value sub-block a block of the panel, its nibbles regrouped as Q4_0's; the
    /// 6-bit scales and minima kept per row and block, `d` and `dmin` per row and super-block.
    Q4K,
    /// Q5_K: Q4_K's layout with the fifth bits as Q5_0's masks.
    Q5K,
}

impl PanelFormat {
    pub fn of(dtype: QuantType) -> Option<Self> {
        match dtype {
            QuantType::Q8_0 => Some(Self::Q8_0),
            QuantType::Q4_0 => Some(Self::Q4_0),
            QuantType::Q4_1 => Some(Self::Q4_1),
            QuantType::Q5_0 => Some(Self::Q5_0),
            QuantType::Q5_1 => Some(Self::Q5_1),
            QuantType::Q4K => Some(Self::Q4K),
            QuantType::Q5K => Some(Self::Q5K),
            _ => None,
        }
    }

    /// Values of one block of the file (a super-block for Q4_K and Q5_K).
    fn file_block(self) -> usize {
        if self.k() {
            QK_K
        } else {
            QK
        }
    }

    /// Bytes of one block of one row in the file.
    fn file_bytes(self) -> usize {
        match self {
            Self::Q8_0 => Q8_0_BYTES,
            Self::Q4_0 => Q4_0_BYTES,
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q5_0 => Q5_0_BYTES,
            Self::Q5_1 => Q5_1_BYTES,
            Self::Q4K => Q4_K_BYTES,
            Self::Q5K => Q5_K_BYTES,
        }
    }

    /// Bytes of one block of one panel: 32 rows of 32 values, bytes or nibbles.
    fn panel_block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => PANEL_ROWS * QK,
            _ => PANEL_ROWS * QK / 2,
        }
    }

    /// Whether values carry a fifth bit.
    fn five(self) -> bool {
        matches!(self, Self::Q5_0 | Self::Q5_1 | Self::Q5K)
    }

    /// Whether blocks are the sub-blocks of K-quant super-blocks (6-bit scales and minima per
    /// block, `d` and `dmin` per super-block).
    fn k(self) -> bool {
        matches!(self, Self::Q4K | Self::Q5K)
    }

    /// Whether blocks carry a minimum (`d q + m`).
    fn has_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1)
    }

    /// Where each token's block chain starts, from its values' sum: the weights' offset.
    fn start(self, sum: i32) -> i32 {
        match self {
            Self::Q8_0 => -128 * sum,
            Self::Q4_0 => -8 * sum,
            Self::Q5_0 => -16 * sum,
            Self::Q4_1 | Self::Q5_1 | Self::Q4K | Self::Q5K => 0,
        }
    }

    /// The weight of block-value `e` (0..32) of a panel block as the tiles multiply it
    /// (unsigned), read from the laid-out bytes `pb` of the block (and its fifth-bit masks
    /// `hb`), row `lane` (0..32).
    fn weight(self, pb: &[u8], hb: &[u64], lane: usize, e: usize) -> u8 {
        let (half, lane16) = (lane / 16, lane % 16);
        if self == Self::Q8_0 {
            return pb[(e / 4) * 128 + half * 64 + lane16 * 4 + e % 4];
        }
        let byte = pb[((e % 16) / 4) * 128 + half * 64 + lane16 * 4 + e % 4];
        let nibble = if e < 16 { byte & 0x0f } else { byte >> 4 };
        if !self.five() {
            return nibble;
        }
        let bit = (hb[fifth_at((e % 16) / 4, half, e / 16)] >> (lane16 * 4 + e % 4)) & 1;
        nibble + 16 * bit as u8
    }
}

/// Fifth-bit masks per panel block: for each run pair, half and nibble (low, high).
const FIFTH_MASKS: usize = 4 * 2 * 2;

/// Where the mask of run pair `s` (0..4), half `h` and nibble `high` sits in a panel block's
/// [`FIFTH_MASKS`]: bit `4 lane16 + k` is the fifth bit of value `4 s + k` (`+ 16` for the high
/// nibble) of row `16 h + lane16`, byte for byte the run's vector.
fn fifth_at(s: usize, h: usize, high: usize) -> usize {
    (s * 2 + h) * 2 + high
}

/// Sets the fifth bits of row `16 half + lane16` in a panel block's masks `hb`: `bit(e)`, zero
/// or one, for each value `e` of the block. Each mask's four bits of the row are gathered in a
/// register and written once, without branches (the bits are random: a branch per bit missed
/// half the time, and loading a 1B model's Q5_K matrices took seconds).
fn set_fifth_bits(hb: &mut [u64], half: usize, lane16: usize, bit: impl Fn(usize) -> u64) {
    for high in 0..2 {
        for s in 0..4 {
            let e = 16 * high + 4 * s;
            let four = bit(e) | bit(e + 1) << 1 | bit(e + 2) << 2 | bit(e + 3) << 3;
            hb[fifth_at(s, half, high)] |= four << (lane16 * 4);
        }
    }
}

/// A block-format matrix (`rows` outputs by `cols` inputs) laid out in panels for
/// [`Panels::panel_times`].
pub struct Panels {
    format: PanelFormat,
    rows: usize,
    cols: usize,
    /// Weights, panel by panel, block by block, run by run (see the module's text).
    w: HugeArray<u8>,
    /// The rows' block scales (f16 bits, as in the file: the panels take the file's bytes),
    /// panel by panel, block by block, 32 rows each (zero past `rows`); the K-quants' `d`, per
    /// super-block.
    d: HugeArray<u16>,
    /// Q4_1's block minima (f16 bits), in the order of `d`; the K-quants' `dmin`, per super-block
    /// (empty for the other formats).
    m: HugeArray<u16>,
    /// The K-quants' 6-bit scales and minima, panel by panel, block (sub-block) by block, 32 rows each
    /// (empty for the other formats).
    sc: HugeArray<u8>,
    mn: HugeArray<u8>,
    /// Q5_0's, Q5_1's and Q5_K's fifth bits, [`FIFTH_MASKS`] per panel block (empty otherwise).
    hb: HugeArray<u64>,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Panels")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish_non_exhaustive()
    }
}

impl Panels {
    /// True where the SIMD tiles run (AVX-512 VNNI); elsewhere the products run the scalar
    /// form, and callers with another fast path should take it.
    pub fn fast() -> bool {
        Isa::detect() == Isa::Avx512
    }

    /// Lay out `rows` rows of `cols` values in `format` (the file's blocks, row after row), or
    /// `None` when the sizes disagree or `cols` is not whole blocks.
    pub fn from_blocks(format: PanelFormat, bytes: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let mut m = Self::zeroed(format, rows, cols)?;
        if rows.checked_mul(cols / format.file_block() * format.file_bytes()) != Some(bytes.len()) {
            return None;
        }
        m.fill_rows(0, bytes);
        Some(m)
    }

    /// A `rows` by `cols` matrix of zeros in `format`, to be filled by
    /// [`fill_rows`](Self::fill_rows); `None` when `cols` is not whole blocks or the size
    /// overflows.
    pub fn zeroed(format: PanelFormat, rows: usize, cols: usize) -> Option<Self> {
        if cols == 0 || !cols.is_multiple_of(format.file_block()) {
            return None;
        }
        let units = rows.div_ceil(PANEL_ROWS).checked_mul(cols / QK)?;
        // Zero weights: Q8_0's offset bytes of 128 (Q4_0's 8s need not be: their scales are
        // zero, as every scale past the last row stays).
        let fill = if format == PanelFormat::Q8_0 { 128 } else { 0x88 };
        let scales = units.checked_mul(PANEL_ROWS)?;
        let k = format.k();
        // K-quants: one d and dmin per super-block of eight blocks.
        let per_d = if k { scales / (QK_K / QK) } else { scales };
        // Every array is read end to end on each step: from memory advised for 2 MiB pages.
        Some(Self {
            format,
            rows,
            cols,
            w: HugeArray::filled(units.checked_mul(format.panel_block_bytes())?, fill)?,
            d: HugeArray::zeroed(per_d)?,
            m: HugeArray::zeroed(if format.has_min() || k { per_d } else { 0 })?,
            sc: HugeArray::zeroed(if k { scales } else { 0 })?,
            mn: HugeArray::zeroed(if k { scales } else { 0 })?,
            hb: HugeArray::zeroed(if format.five() {
                units.checked_mul(FIFTH_MASKS)?
            } else {
                0
            })?,
        })
    }

    /// Lay out whole rows `first..` from `bytes` (the file's blocks, `cols / 32` per row).
    /// Panics if they run past the matrix.
    pub fn fill_rows(&mut self, first: usize, bytes: &[u8]) {
        let blocks = self.blocks();
        let fb = self.format.file_bytes();
        let pbb = self.format.panel_block_bytes();
        let row_bytes = self.cols / self.format.file_block() * fb;
        assert!(
            bytes.len().is_multiple_of(row_bytes) && first + bytes.len() / row_bytes <= self.rows,
            "whole rows inside the matrix"
        );
        let f16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        for (i, row) in bytes.chunks_exact(row_bytes).enumerate() {
            let r = first + i;
            let (p, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
            let (half, lane16) = (lane / 16, lane % 16);
            if self.format.k() {
                self.fill_k_row(p, lane, row);
                continue;
            }
            for (b, block) in row.chunks_exact(fb).enumerate() {
                let pb = p * blocks + b;
                let w = &mut self.w[pb * pbb..(pb + 1) * pbb];
                self.d[pb * PANEL_ROWS + lane] = f16(block, 0);
                match self.format {
                    PanelFormat::Q8_0 => {
                        for (e, &q) in block[2..].iter().enumerate() {
                            w[(e / 4) * 128 + half * 64 + lane16 * 4 + e % 4] = (q as i8 as i16 + 128) as u8;
                        }
                    }
                    PanelFormat::Q4K | PanelFormat::Q5K => unreachable!("K-quant rows are laid out by fill_k_row"),
                    PanelFormat::Q5_0 | PanelFormat::Q5_1 => {
                        let at = if self.format == PanelFormat::Q5_1 {
                            self.m[pb * PANEL_ROWS + lane] = f16(block, 2);
                            4
                        } else {
                            2
                        };
                        let qh = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
                        for (e, &q) in block[at + 4..at + 20].iter().enumerate() {
                            w[(e / 4) * 128 + half * 64 + lane16 * 4 + e % 4] = q;
                        }
                        let hb = &mut self.hb[pb * FIFTH_MASKS..(pb + 1) * FIFTH_MASKS];
                        set_fifth_bits(hb, half, lane16, |e| u64::from((qh >> e) & 1));
                    }
                    PanelFormat::Q4_0 | PanelFormat::Q4_1 => {
                        let at = if self.format == PanelFormat::Q4_1 {
                            self.m[pb * PANEL_ROWS + lane] = f16(block, 2);
                            4
                        } else {
                            2
                        };
                        // Byte e holds value e (low nibble) and value e + 16 (high), as in the file.
                        for (e, &q) in block[at..at + 16].iter().enumerate() {
                            w[(e / 4) * 128 + half * 64 + lane16 * 4 + e % 4] = q;
                        }
                    }
                }
            }
        }
    }

    /// Row `lane` of panel `p` from a Q4_K or Q5_K row: each sub-block's 32 nibbles regrouped
    /// so that byte `e` holds value `e` (low) and `e + 16` (high), as Q4_0's; Q5_K's fifth
    /// bits into the block's masks, as Q5_0's.
    fn fill_k_row(&mut self, p: usize, lane: usize, row: &[u8]) {
        let (blocks, supers) = (self.blocks(), self.cols / QK_K);
        let (half, lane16) = (lane / 16, lane % 16);
        let pbb = self.format.panel_block_bytes();
        let five = self.format == PanelFormat::Q5K;
        let qs_at = if five { Q5_K_QS_AT } else { Q4_K_QS_AT };
        for (sb, block) in row.chunks_exact(self.format.file_bytes()).enumerate() {
            let at = (p * supers + sb) * PANEL_ROWS + lane;
            self.d[at] = u16::from_le_bytes([block[0], block[1]]);
            self.m[at] = u16::from_le_bytes([block[2], block[3]]);
            let (sc, mn) = k_scales_mins(&block[K_SCALES_AT..]);
            for j in 0..QK_K / QK {
                let pb = p * blocks + sb * (QK_K / QK) + j;
                self.sc[pb * PANEL_ROWS + lane] = sc[j];
                self.mn[pb * PANEL_ROWS + lane] = mn[j];
                let value = |l: usize| (block[qs_at + QK * (j / 2) + l] >> (4 * (j % 2))) & 0x0f;
                let w = &mut self.w[pb * pbb..(pb + 1) * pbb];
                for e in 0..16 {
                    w[(e / 4) * 128 + half * 64 + lane16 * 4 + e % 4] = value(e) | (value(e + 16) << 4);
                }
                if five {
                    let hb = &mut self.hb[pb * FIFTH_MASKS..(pb + 1) * FIFTH_MASKS];
                    set_fifth_bits(hb, half, lane16, |e| u64::from((block[Q5_K_QH_AT + e] >> j) & 1));
                }
            }
        }
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

    /// Bytes the laid-out weights, scales and minima take.
    pub fn size_bytes(&self) -> usize {
        self.w.len() + 2 * (self.d.len() + self.m.len()) + self.sc.len() + self.mn.len() + 8 * self.hb.len()
    }

    /// Panel `p` (rows `32 p..`) times every token of `a` (8-bit blocks, `cols / 32` per
    /// token): `out[t]` receives token `t`'s results for the panel's first `out[t].len()` rows
    /// (at most 32, fewer in the last panel).
    pub fn panel_times(&self, p: usize, a: &[BlockQ8], out: &mut [&mut [f32]]) {
        assert_eq!(
            a.len(),
            out.len() * self.blocks(),
            "one token of activations per output"
        );
        let live = self.rows.saturating_sub(p * PANEL_ROWS).min(PANEL_ROWS);
        assert!(out.iter().all(|o| o.len() <= live), "rows inside panel {p}");
        if out.is_empty() || live == 0 {
            return;
        }
        if Self::fast() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `fast` found AVX-512 F/BW/VL/VNNI; the panel exists (`live` > 0), `a`
            // holds one whole token per output and every output at most `live` rows.
            unsafe {
                match self.format {
                    PanelFormat::Q8_0 => avx512::panel::<{ avx512::Q8_0 }>(self, p, a, out),
                    PanelFormat::Q4_0 => avx512::panel::<{ avx512::Q4_0 }>(self, p, a, out),
                    PanelFormat::Q4_1 => avx512::panel::<{ avx512::Q4_1 }>(self, p, a, out),
                    PanelFormat::Q5_0 => avx512::panel::<{ avx512::Q5_0 }>(self, p, a, out),
                    PanelFormat::Q5_1 => avx512::panel::<{ avx512::Q5_1 }>(self, p, a, out),
                    PanelFormat::Q4K => avx512::panel::<{ avx512::Q4K }>(self, p, a, out),
                    PanelFormat::Q5K => avx512::panel::<{ avx512::Q5K }>(self, p, a, out),
                }
            };
            #[cfg(target_arch = "x86_64")]
            return;
        }
        for (tok, o) in a.chunks_exact(self.blocks()).zip(out.iter_mut()) {
            for (lane, y) in o.iter_mut().enumerate() {
                *y = self.scalar_one(p * PANEL_ROWS + lane, tok);
            }
        }
    }

    /// The scalar form of [`panel_times`](Self::panel_times) over every panel, `[n, rows]`:
    /// the reference the SIMD tiles are tested against (bit-identical to them).
    #[cfg(test)]
    fn matmul_scalar(&self, a: &[BlockQ8], n: usize) -> Vec<f32> {
        assert_eq!(a.len(), n * self.blocks(), "{n} tokens of {} blocks", self.blocks());
        let mut out = vec![0f32; n * self.rows];
        if self.rows == 0 {
            return out;
        }
        for (tok, o) in a.chunks_exact(self.blocks()).zip(out.chunks_exact_mut(self.rows)) {
            for (r, o) in o.iter_mut().enumerate() {
                *o = self.scalar_one(r, tok);
            }
        }
        out
    }

    /// Row `r` times one token's blocks, the tiles' operations one at a time.
    fn scalar_one(&self, r: usize, tok: &[BlockQ8]) -> f32 {
        let blocks = self.blocks();
        let pbb = self.format.panel_block_bytes();
        let (p, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
        let mut acc = 0f32;
        for (b, y) in tok.iter().enumerate() {
            let pb = p * blocks + b;
            let wb = &self.w[pb * pbb..(pb + 1) * pbb];
            let hb = if self.format.five() {
                &self.hb[pb * FIFTH_MASKS..(pb + 1) * FIFTH_MASKS]
            } else {
                &[]
            };
            let mut dot = self.format.start(y.sum);
            for (e, &q) in y.qs.iter().enumerate() {
                dot += i32::from(self.format.weight(wb, hb, lane, e)) * i32::from(q);
            }
            let f32_of = |bits: u16| half::f16::from_bits(bits).to_f32();
            if self.format.k() {
                let at = (p * (blocks / (QK_K / QK)) + b / (QK_K / QK)) * PANEL_ROWS + lane;
                let i = pb * PANEL_ROWS + lane;
                let ws = f32_of(self.d[at]) * f32::from(self.sc[i]);
                acc = (ws * y.d).mul_add(dot as f32, acc);
                let wm = -f32_of(self.m[at]) * f32::from(self.mn[i]);
                acc = wm.mul_add(y.d * y.sum as f32, acc);
                continue;
            }
            let scale = f32_of(self.d[pb * PANEL_ROWS + lane]) * y.d;
            acc = scale.mul_add(dot as f32, acc);
            if self.format.has_min() {
                acc = f32_of(self.m[pb * PANEL_ROWS + lane]).mul_add(y.s, acc);
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use std::arch::x86_64::*;

    /// The format switch of the tiles.
    pub const Q8_0: u8 = 0;
    pub const Q4_0: u8 = 1;
    pub const Q4_1: u8 = 2;
    pub const Q4K: u8 = 3;
    pub const Q5_0: u8 = 4;
    pub const Q5_1: u8 = 5;
    pub const Q5K: u8 = 6;

    /// Whether format `f`'s blocks are K-quant sub-blocks ([`PanelFormat::k`]).
    const fn k_quant(f: u8) -> bool {
        f == Q4K || f == Q5K
    }

    /// Whether format `f`'s values carry a fifth bit ([`PanelFormat::five`]).
    const fn fifth(f: u8) -> bool {
        f == Q5_0 || f == Q5_1 || f == Q5K
    }

    /// Panel `p` against every token of `a`: `out[t]` receives token `t`'s results for the
    /// panel's first `out[t].len()` rows.
    ///
    /// SAFETY: the CPU has AVX-512 F/BW/VL/VNNI; panel `p` exists; `a` holds one whole token
    /// per output; each output holds at most the panel's rows that are rows of the matrix; `F`
    /// is the matrix's format.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn panel<const F: u8>(m: &Panels, p: usize, a: &[BlockQ8], out: &mut [&mut [f32]]) {
        let blocks = m.blocks();
        let tokens = a.len() / blocks;
        let pbb = m.format.panel_block_bytes();
        // The K-quants keep d and dmin per super-block; the others a scale (and Q4_1 a minimum)
        // per block.
        let k = k_quant(F);
        let per_d = if k { blocks / (QK_K / QK) } else { blocks } * PANEL_ROWS;
        let per_block = blocks * PANEL_ROWS;
        let slices = Slices {
            w: &m.w[p * blocks * pbb..][..blocks * pbb],
            d: &m.d[p * per_d..][..per_d],
            m: if F == Q4_1 || F == Q5_1 || k {
                &m.m[p * per_d..][..per_d]
            } else {
                &[]
            },
            sc: if k { &m.sc[p * per_block..][..per_block] } else { &[] },
            mn: if k { &m.mn[p * per_block..][..per_block] } else { &[] },
            hb: if fifth(F) {
                &m.hb[p * blocks * FIFTH_MASKS..][..blocks * FIFTH_MASKS]
            } else {
                &[]
            },
        };
        let mut t0 = 0;
        while t0 < tokens {
            let n = (tokens - t0).min(TILE_TOKENS);
            // The first tile asks for the weights ahead (the later tiles find them in the
            // cache). A lone token's Q8_0 weights are one stream, which the hardware
            // prefetchers keep up with (asking ahead lost 5-10%); the other formats' scales
            // and minima are further streams beside the weights', and asking ahead took a lone
            // token from 27-28 to 37-38 GB/s (Q4_K) and 35-37 to 40-42 (Q4_0).
            let first = t0 == 0 && (tokens > 1 || F != Q8_0);
            let a = &a[t0 * blocks..(t0 + n) * blocks];
            let acc = match n {
                // SAFETY (each): `a` holds `n` whole tokens; `slices` the panel's blocks.
                6 => widen(unsafe { tile::<F, 6>(&slices, a, blocks, first) }),
                5 => widen(unsafe { tile::<F, 5>(&slices, a, blocks, first) }),
                4 => widen(unsafe { tile::<F, 4>(&slices, a, blocks, first) }),
                3 => widen(unsafe { tile::<F, 3>(&slices, a, blocks, first) }),
                2 => widen(unsafe { tile::<F, 2>(&slices, a, blocks, first) }),
                _ => widen(unsafe { tile::<F, 1>(&slices, a, blocks, first) }),
            };
            for (acc, o) in acc.iter().zip(out[t0..t0 + n].iter_mut()) {
                let len = o.len();
                for (h, acc) in acc.iter().enumerate() {
                    let lanes = len.saturating_sub(16 * h).min(16);
                    if lanes > 0 {
                        // SAFETY: the mask admits only the first `lanes` floats from 16 h,
                        // which lie inside `o`.
                        unsafe { _mm512_mask_storeu_ps(o.as_mut_ptr().add(16 * h), mask(lanes), *acc) };
                    }
                }
            }
            t0 += n;
        }
    }

    /// Bytes of weights the first tile of a panel asks for ahead of the block it multiplies,
    /// into L2: a block of 32 rows takes some hundred cycles with six tokens, a load from
    /// memory some hundreds of nanoseconds. Into L1, with 4 KiB ahead (three Q8_0 blocks), the
    /// weights streamed from memory at eight tokens ran well below the tile's rate in L2 (Q8_0
    /// 107 against 178 GMAC/s a thread), and asking further ahead into L1 only lost more; into
    /// L2, 8 KiB ahead ran at 169 (kernels bench, `panels`, one thread).
    const AHEAD_BYTES: usize = 8192;

    /// Ask for the weights (and their scales) some blocks ahead of block `b` (at `wb`), past
    /// the panel's end too: the next panel follows it in memory, and a thread's next task is
    /// usually that panel.
    #[inline(always)]
    fn ahead<const F: u8>(sl: &Slices<'_>, wb: *const u8, b: usize, pbb: usize) {
        let blocks_ahead = (AHEAD_BYTES / pbb).max(1);
        let w = wb.wrapping_add(blocks_ahead * pbb);
        for off in (0..pbb).step_by(64) {
            // SAFETY: a prefetch is a hint that never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(w.wrapping_add(off).cast()) };
        }
        // The block's 32 scales (and minima): one cache line each; the K-quants' per
        // super-block, their 6-bit scales and minima per block (32 bytes each).
        let k = k_quant(F);
        let s = if k {
            (b + blocks_ahead) / (QK_K / QK)
        } else {
            b + blocks_ahead
        } * PANEL_ROWS;
        // SAFETY (each): a prefetch is a hint that never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.d.as_ptr().wrapping_add(s).cast()) };
        if F == Q4_1 || F == Q5_1 || k {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.m.as_ptr().wrapping_add(s).cast()) };
        }
        if k {
            let at = (b + blocks_ahead) * PANEL_ROWS;
            unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.sc.as_ptr().wrapping_add(at).cast()) };
            unsafe { _mm_prefetch::<_MM_HINT_T0>(sl.mn.as_ptr().wrapping_add(at).cast()) };
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

    /// Four of a token's block values (from `e`) in every lane.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    fn four(y: &BlockQ8, e: usize) -> __m512i {
        // SAFETY: e + 4 <= 32 (the callers' runs).
        _mm512_set1_epi32(unsafe { y.qs.as_ptr().add(e).cast::<i32>().read_unaligned() })
    }

    /// 32 f16 values at `p` as two vectors of f32.
    ///
    /// SAFETY: 64 readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn halves(p: *const u16) -> [__m512; 2] {
        // SAFETY: the caller's.
        unsafe {
            [
                _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(16).cast())),
            ]
        }
    }

    /// One panel's share of a matrix's arrays (empty where the format has none).
    struct Slices<'a> {
        w: &'a [u8],
        d: &'a [u16],
        m: &'a [u16],
        sc: &'a [u8],
        mn: &'a [u8],
        hb: &'a [u64],
    }

    /// Sixteen bytes at `p` as f32.
    ///
    /// SAFETY: 16 readable bytes at `p`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn bytes_f32(p: *const u8) -> __m512 {
        // SAFETY: the caller's.
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(p.cast()) }))
    }

    /// One panel (32 rows) by `N` tokens over every block.
    ///
    /// SAFETY: AVX-512 F/BW/VL/VNNI; `sl` holds `blocks` panel blocks of format `F` with their
    /// scales (and minima) and `a` `N` tokens of `blocks` blocks.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const F: u8, const N: usize>(
        sl: &Slices<'_>,
        a: &[BlockQ8],
        blocks: usize,
        prefetch: bool,
    ) -> [[__m512; 2]; N] {
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        let pbb = if F == Q8_0 {
            PANEL_ROWS * QK
        } else {
            PANEL_ROWS * QK / 2
        };
        let wp = sl.w.as_ptr();
        let low = _mm512_set1_epi8(0x0f);
        for b in 0..blocks {
            let ys: [&BlockQ8; N] = std::array::from_fn(|t| &a[t * blocks + b]);
            let mut dot: [[__m512i; 2]; N] = std::array::from_fn(|t| {
                let start = match F {
                    Q8_0 => -128 * ys[t].sum,
                    Q4_0 => -8 * ys[t].sum,
                    Q5_0 => -16 * ys[t].sum,
                    _ => 0,
                };
                let s = _mm512_set1_epi32(start);
                [s, s]
            });
            let wb = wp.wrapping_add(b * pbb);
            if prefetch {
                ahead::<F>(sl, wb, b, pbb);
            }
            if F == Q8_0 {
                for s in 0..STEPS {
                    // SAFETY: run `s` of block `b` lies inside `w` (the caller sized it).
                    let (w0, w1) = unsafe {
                        (
                            _mm512_loadu_si512(wb.add(128 * s).cast()),
                            _mm512_loadu_si512(wb.add(128 * s + 64).cast()),
                        )
                    };
                    for t in 0..N {
                        let y = four(ys[t], 4 * s);
                        dot[t][0] = _mm512_dpbusd_epi32(dot[t][0], w0, y);
                        dot[t][1] = _mm512_dpbusd_epi32(dot[t][1], w1, y);
                    }
                }
            } else {
                for s in 0..STEPS / 2 {
                    // SAFETY: run pair `s` of block `b` lies inside `w` (the caller sized it).
                    let (w0, w1) = unsafe {
                        (
                            _mm512_loadu_si512(wb.add(128 * s).cast()),
                            _mm512_loadu_si512(wb.add(128 * s + 64).cast()),
                        )
                    };
                    // Low nibbles: values 4s..4s+4; high: 16+4s..16+4s+4.
                    let mut lo = [_mm512_and_si512(w0, low), _mm512_and_si512(w1, low)];
                    let mut hi = [
                        _mm512_and_si512(_mm512_srli_epi16::<4>(w0), low),
                        _mm512_and_si512(_mm512_srli_epi16::<4>(w1), low),
                    ];
                    if fifth(F) {
                        let sixteen = _mm512_set1_epi8(16);
                        for h in 0..2 {
                            let at = b * FIFTH_MASKS;
                            let (kl, kh) = (sl.hb[at + fifth_at(s, h, 0)], sl.hb[at + fifth_at(s, h, 1)]);
                            lo[h] = _mm512_mask_add_epi8(lo[h], kl, lo[h], sixteen);
                            hi[h] = _mm512_mask_add_epi8(hi[h], kh, hi[h], sixteen);
                        }
                    }
                    for t in 0..N {
                        let (ylo, yhi) = (four(ys[t], 4 * s), four(ys[t], 16 + 4 * s));
                        for h in 0..2 {
                            dot[t][h] = _mm512_dpbusd_epi32(dot[t][h], lo[h], ylo);
                            dot[t][h] = _mm512_dpbusd_epi32(dot[t][h], hi[h], yhi);
                        }
                    }
                }
            }
            if k_quant(F) {
                let at = b / (QK_K / QK) * PANEL_ROWS;
                // SAFETY: the super-block's 32 d and dmin, the block's 32 scales and minima lie
                // inside the slices.
                let (d, dmin, sc, mn) = unsafe {
                    (
                        halves(sl.d.as_ptr().add(at)),
                        halves(sl.m.as_ptr().add(at)),
                        [
                            bytes_f32(sl.sc.as_ptr().add(b * PANEL_ROWS)),
                            bytes_f32(sl.sc.as_ptr().add(b * PANEL_ROWS + 16)),
                        ],
                        [
                            bytes_f32(sl.mn.as_ptr().add(b * PANEL_ROWS)),
                            bytes_f32(sl.mn.as_ptr().add(b * PANEL_ROWS + 16)),
                        ],
                    )
                };
                // −dmin: the sign bit flipped (an integer xor: AVX-512 F has no float one).
                let sign = _mm512_set1_epi32(i32::MIN);
                for h in 0..2 {
                    let ws = _mm512_mul_ps(d[h], sc[h]);
                    let neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(dmin[h]), sign));
                    let wm = _mm512_mul_ps(neg, mn[h]);
                    for t in 0..N {
                        let yd = _mm512_set1_ps(ys[t].d);
                        acc[t][h] = _mm512_fmadd_ps(_mm512_mul_ps(ws, yd), _mm512_cvtepi32_ps(dot[t][h]), acc[t][h]);
                        let ysum = _mm512_set1_ps(ys[t].d * ys[t].sum as f32);
                        acc[t][h] = _mm512_fmadd_ps(wm, ysum, acc[t][h]);
                    }
                }
                continue;
            }
            // SAFETY: the block's 32 row scales (and minima) lie inside `d` (and `m`).
            let ds = unsafe { halves(sl.d.as_ptr().add(b * PANEL_ROWS)) };
            for t in 0..N {
                let yd = _mm512_set1_ps(ys[t].d);
                for h in 0..2 {
                    acc[t][h] = _mm512_fmadd_ps(_mm512_mul_ps(ds[h], yd), _mm512_cvtepi32_ps(dot[t][h]), acc[t][h]);
                }
            }
            if F == Q4_1 || F == Q5_1 {
                // SAFETY: as for `d`.
                let ms = unsafe { halves(sl.m.as_ptr().add(b * PANEL_ROWS)) };
                for t in 0..N {
                    let s = _mm512_set1_ps(ys[t].s);
                    for h in 0..2 {
                        acc[t][h] = _mm512_fmadd_ps(ms[h], s, acc[t][h]);
                    }
                }
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::blocks::quantize_q8;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    const FORMATS: [(PanelFormat, QuantType); 7] = [
        (PanelFormat::Q8_0, QuantType::Q8_0),
        (PanelFormat::Q4_0, QuantType::Q4_0),
        (PanelFormat::Q4_1, QuantType::Q4_1),
        (PanelFormat::Q5_0, QuantType::Q5_0),
        (PanelFormat::Q5_1, QuantType::Q5_1),
        (PanelFormat::Q4K, QuantType::Q4K),
        (PanelFormat::Q5K, QuantType::Q5K),
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

    /// `x` (`n` rows of `cols` values) as the 8-bit blocks the panels take.
    fn quantized(x: &[f32]) -> Vec<BlockQ8> {
        let mut a = vec![BlockQ8::default(); x.len() / QK];
        quantize_q8(x, &mut a);
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
            let shapes: &[(usize, usize)] = if format.k() {
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
                    let a = quantized(&x);
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
        let y = product(&m, &quantized(&x), n);
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
    }
}
