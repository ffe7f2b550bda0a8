//! Block-format weights (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K) times 8-bit activations for any number of tokens,
//! in panels of 32 output rows: the matrix products of prefill, of batched decode and of an
//! encoder (hundreds of tokens per call), where the decode-shaped tiles of [`super::ktile`]
//! (one row by up to eight tokens, the sub-blocks spread over the lanes) spend most of their
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
//! whole row (Q6_K's two chains a token take tiles of up to four: 16 and 8).
//!
//! The formats with super-blocks (Q4_K, Q5_K, Q6_K) take activations scaled per 256 values
//! ([`quantize_q8_k`](super::blocks::quantize_q8_k), as llama.cpp's Q8_K): a super-block's
//! sub-block dots are multiplied by their integer scales and summed in integers (the K-quants'
//! minima times the sub-blocks' sums too, by `vpdpwssd`), and the float scales apply once per
//! super-block rather than once per sub-block.
//!
//! Every result is the same sequence of operations whatever tile it falls in, so a token's
//! numbers do not depend on how many tokens share the call (the engine's batches rely on it).
//! The scalar form (`Panels::scalar_one`) takes the same operations in the same order: the
//! SIMD results equal it bit for bit.

use rayon::prelude::*;

use super::blocks::{
    k_scales_mins, BlockQ8, K_SCALES_AT, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q4_K_QS_AT, Q5_0_BYTES, Q5_1_BYTES,
    Q5_K_BYTES, Q5_K_QH_AT, Q5_K_QS_AT, Q6_K_BYTES, Q6_K_D_AT, Q6_K_SCALES_AT, Q8_0_BYTES, QK, QK_K,
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
    /// Q6_K: each 32-value block's low four bits as Q4_0's nibbles and its top two bits as a
    /// plane, their vectors interleaved in the order the tiles read them (`six_nibbles_at`,
    /// `six_plane_at`); the i8 scales of the block's two 16-value halves kept per row and
    /// block, `d` per row and super-block. The low nibbles are the first half, the high ones
    /// the second, so each half chains on its own (from `−32 Σ a` of its values) and the two
    /// chains meet in integers, times their scales.
    Q6K,
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
            QuantType::Q6K => Some(Self::Q6K),
            _ => None,
        }
    }

    /// Values of one block of the file (a super-block for Q4_K and Q5_K).
    fn file_block(self) -> usize {
        if self.supers() {
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
            Self::Q6K => Q6_K_BYTES,
        }
    }

    /// Bytes of one block of one panel: 32 rows of 32 values, bytes or nibbles (Q6_K's
    /// followed by their top bits, two a value).
    fn panel_block_bytes(self) -> usize {
        match self {
            Self::Q8_0 => PANEL_ROWS * QK,
            Self::Q6K => PANEL_ROWS * QK / 2 + SIX_PLANE_BYTES,
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

    /// Whether `d` is kept per super-block of 256 values (the K-quants and Q6_K): these
    /// formats take activations scaled per 256 values
    /// ([`quantize_q8_k`](super::blocks::quantize_q8_k)).
    pub fn supers(self) -> bool {
        self.k() || self == Self::Q6K
    }

    /// Whether blocks carry a minimum (`d q + m`).
    fn has_min(self) -> bool {
        matches!(self, Self::Q4_1 | Self::Q5_1)
    }

    /// How many elements of each of [`Panels`]' arrays one panel of `blocks` blocks takes
    /// (zero where the format has no such array): panel `p`'s share of an array starts at `p`
    /// times its length. `None` where a share overflows.
    fn shares(self, blocks: usize) -> Option<Shares> {
        let per_block = blocks.checked_mul(PANEL_ROWS)?;
        // The K-quants and Q6_K keep d (and dmin) per super-block of eight blocks.
        let per_d = if self.supers() {
            per_block / (QK_K / QK)
        } else {
            per_block
        };
        let k = self.k();
        Some(Shares {
            w: blocks.checked_mul(self.panel_block_bytes())?,
            d: per_d,
            m: if self.has_min() || k { per_d } else { 0 },
            // Q6_K: two scales per row and block, one per 16-value half.
            sc: match self {
                _ if k => per_block,
                Self::Q6K => per_block.checked_mul(2)?,
                _ => 0,
            },
            mn: if k { per_block } else { 0 },
            hb: if self.five() {
                blocks.checked_mul(FIFTH_MASKS)?
            } else {
                0
            },
        })
    }

    /// Where each token's block chain starts, from its values' sum: the weights' offset
    /// (Q6_K's two chains start from their halves' sums, in `scalar_one`).
    fn start(self, sum: i32) -> i32 {
        match self {
            Self::Q8_0 => -128 * sum,
            Self::Q4_0 => -8 * sum,
            Self::Q5_0 => -16 * sum,
            Self::Q4_1 | Self::Q5_1 | Self::Q4K | Self::Q5K | Self::Q6K => 0,
        }
    }

    /// The weight of block-value `e` (0..32) of a panel block as the tiles multiply it
    /// (unsigned), read from the laid-out bytes `pb` of the block (and its fifth-bit masks
    /// `hb`), row `lane` (0..32).
    fn weight(self, pb: &[u8], hb: &[u64], lane: usize, e: usize) -> u8 {
        let (half, lane16) = (lane / 16, lane % 16);
        if self == Self::Q8_0 {
            return pb[run_at(e / 4, half) + lane16 * 4 + e % 4];
        }
        let run = if self == Self::Q6K {
            six_nibbles_at((e % 16) / 4, half)
        } else {
            run_at((e % 16) / 4, half)
        };
        let byte = pb[run + lane16 * 4 + e % 4];
        let nibble = if e < 16 { byte & 0x0f } else { byte >> 4 };
        if self == Self::Q6K {
            let (at, shift) = six_plane_at((e % 16) / 4, half, e / 16);
            return nibble | ((pb[at + lane16 * 4 + e % 4] >> shift) & 3) << 4;
        }
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

/// Bytes of a Q6_K panel block's plane of top bits: two bits for each of 32 rows by 32 values.
const SIX_PLANE_BYTES: usize = PANEL_ROWS * QK / 4;

/// Where the nibbles of run pair `s` (0..4) and half `h` of the panel sit in a Q6_K panel
/// block: a 64-byte vector laid out as Q4_0's (byte `4 lane16 + k` holds value `4 s + k` low,
/// `16 + 4 s + k` high, of row `16 h + lane16`). A block's twelve vectors lie in the order a
/// tile first reads them: run pairs 0 and 1's nibbles, then the plane vectors both take, run
/// pairs 2 and 3 with theirs likewise (vectors 0-1, plane 2-3, 4-5, 6-7, plane 8-9, 10-11).
/// Read in order, with requests ahead only where a page starts, a lone token streamed Q6_K at
/// 24.6-25.1 GB/s; with the planes after all the nibbles, 17.9-18.6 that way and 20.4-23.1
/// with a request per cache line (Zen 4, kernels bench `sequence`).
fn six_nibbles_at(s: usize, h: usize) -> usize {
    const VECTOR: [usize; 4] = [0, 4, 6, 10];
    (VECTOR[s] + h) * 64
}

/// Where the top two bits of the values of run pair `s` (0..4), half `h` and nibble `high`
/// (low, high) sit in a Q6_K panel block: the 64-byte vector at the returned offset (see
/// [`six_nibbles_at`]), at the returned bit of byte `4 lane16 + k` for value `4 s + k`
/// (`+ 16` for the high nibble) of row `16 h + lane16`, byte for byte the run's vector. One
/// vector holds two run pairs' four nibble vectors, so a 16-bit shift and a mask move each
/// one's bits to bits 4 and 5 of its bytes.
fn six_plane_at(s: usize, h: usize, high: usize) -> (usize, u32) {
    const VECTOR: [usize; 2] = [2, 8];
    ((VECTOR[s / 2] + h) * 64, (4 * (s % 2) + 2 * high) as u32)
}

/// Bytes of file rows from which [`Panels::fill_rows`] lays panels out in parallel.
const PARALLEL_FILL_BYTES: usize = 1 << 20;

/// `count` slices of `per` elements from slice `first` of `per` on (empty ones where `per` is
/// zero: the format has no such array).
fn split<T>(a: &mut [T], per: usize, first: usize, count: usize) -> Vec<&mut [T]> {
    if per == 0 {
        return (0..count).map(|_| <&mut [T]>::default()).collect();
    }
    a[first * per..(first + count) * per].chunks_mut(per).collect()
}

/// One panel's share of a matrix's arrays, as [`Panels`] holds them, to lay rows out in.
struct PanelMut<'a> {
    w: &'a mut [u8],
    d: &'a mut [u16],
    m: &'a mut [u16],
    sc: &'a mut [u8],
    mn: &'a mut [u8],
    hb: &'a mut [u64],
}

/// One panel's share of each of [`Panels`]' arrays, in elements ([`PanelFormat::shares`]).
#[derive(Clone, Copy)]
struct Shares {
    w: usize,
    d: usize,
    m: usize,
    sc: usize,
    mn: usize,
    hb: usize,
}

impl PanelMut<'_> {
    /// Row `lane` of the panel from the file's `row` (whole blocks of `format`).
    fn fill_row(&mut self, format: PanelFormat, lane: usize, row: &[u8]) {
        if format.k() {
            return self.fill_k_row(format, lane, row);
        }
        if format == PanelFormat::Q6K {
            return self.fill_q6_k_row(lane, row);
        }
        let (half, lane16) = (lane / 16, lane % 16);
        let fb = format.file_bytes();
        let pbb = format.panel_block_bytes();
        let f16 = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        for (b, block) in row.chunks_exact(fb).enumerate() {
            let w = &mut self.w[b * pbb..(b + 1) * pbb];
            self.d[b * PANEL_ROWS + lane] = f16(block, 0);
            match format {
                PanelFormat::Q8_0 => {
                    for (e, &q) in block[2..].iter().enumerate() {
                        w[run_at(e / 4, half) + lane16 * 4 + e % 4] = (q as i8 as i16 + 128) as u8;
                    }
                }
                PanelFormat::Q4K | PanelFormat::Q5K | PanelFormat::Q6K => {
                    unreachable!("K-quant rows are laid out by fill_k_row and fill_q6_k_row")
                }
                PanelFormat::Q5_0 | PanelFormat::Q5_1 => {
                    let at = if format == PanelFormat::Q5_1 {
                        self.m[b * PANEL_ROWS + lane] = f16(block, 2);
                        4
                    } else {
                        2
                    };
                    let qh = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
                    put_run_bytes(w, lane16, le_u128(&block[at + 4..at + 20]), |r| run_at(r, half));
                    let hb = &mut self.hb[b * FIFTH_MASKS..(b + 1) * FIFTH_MASKS];
                    set_fifth_bits(hb, half, lane16, |e| u64::from((qh >> e) & 1));
                }
                PanelFormat::Q4_0 | PanelFormat::Q4_1 => {
                    let at = if format == PanelFormat::Q4_1 {
                        self.m[b * PANEL_ROWS + lane] = f16(block, 2);
                        4
                    } else {
                        2
                    };
                    // Byte e holds value e (low nibble) and value e + 16 (high), as in the file.
                    put_run_bytes(w, lane16, le_u128(&block[at..at + 16]), |r| run_at(r, half));
                }
            }
        }
    }

    /// Row `lane` of the panel from a Q4_K or Q5_K row: each sub-block's 32 nibbles regrouped
    /// so that byte `e` holds value `e` (low) and `e + 16` (high), as Q4_0's; Q5_K's fifth
    /// bits into the block's masks, as Q5_0's.
    fn fill_k_row(&mut self, format: PanelFormat, lane: usize, row: &[u8]) {
        let (half, lane16) = (lane / 16, lane % 16);
        let pbb = format.panel_block_bytes();
        let five = format == PanelFormat::Q5K;
        let qs_at = if five { Q5_K_QS_AT } else { Q4_K_QS_AT };
        for (sb, block) in row.chunks_exact(format.file_bytes()).enumerate() {
            let at = sb * PANEL_ROWS + lane;
            self.d[at] = u16::from_le_bytes([block[0], block[1]]);
            self.m[at] = u16::from_le_bytes([block[2], block[3]]);
            let (sc, mn) = k_scales_mins(&block[K_SCALES_AT..]);
            for j in 0..QK_K / QK {
                let pb = sb * (QK_K / QK) + j;
                self.sc[pb * PANEL_ROWS + lane] = sc[j];
                self.mn[pb * PANEL_ROWS + lane] = mn[j];
                // The sub-block's 32 nibbles are the low (even `j`) or high (odd) halves of 32
                // bytes; byte `e` of the panel's takes value `e` low and `e + 16` high, as
                // sixteen bytes at once.
                let qs = &block[qs_at + QK * (j / 2)..][..QK];
                let (lo, hi) = (le_u128(&qs[..16]), le_u128(&qs[16..]));
                let nibbles = if j % 2 == 0 {
                    (lo & LOW_NIBBLES) | ((hi & LOW_NIBBLES) << 4)
                } else {
                    ((lo >> 4) & LOW_NIBBLES) | (hi & !LOW_NIBBLES)
                };
                put_run_bytes(&mut self.w[pb * pbb..(pb + 1) * pbb], lane16, nibbles, |r| {
                    run_at(r, half)
                });
                if five {
                    let hb = &mut self.hb[pb * FIFTH_MASKS..(pb + 1) * FIFTH_MASKS];
                    set_fifth_bits(hb, half, lane16, |e| u64::from((block[Q5_K_QH_AT + e] >> j) & 1));
                }
            }
        }
    }

    /// Row `lane` of the panel from a Q6_K row: per 32-value block, the values' low nibbles
    /// as Q4_0's, their top bits into the block's plane ([`six_plane_at`]), the two halves'
    /// scales (i8) per row.
    fn fill_q6_k_row(&mut self, lane: usize, row: &[u8]) {
        let (half, lane16) = (lane / 16, lane % 16);
        let pbb = PanelFormat::Q6K.panel_block_bytes();
        for (sb, block) in row.chunks_exact(Q6_K_BYTES).enumerate() {
            self.d[sb * PANEL_ROWS + lane] = u16::from_le_bytes([block[Q6_K_D_AT], block[Q6_K_D_AT + 1]]);
            let values = q6_k_values(block);
            for j in 0..QK_K / QK {
                let pb = sb * (QK_K / QK) + j;
                for sub in 0..2 {
                    self.sc[(2 * pb + sub) * PANEL_ROWS + lane] = block[Q6_K_SCALES_AT + 2 * j + sub];
                }
                let v = &values[QK * j..][..QK];
                let w = &mut self.w[pb * pbb..(pb + 1) * pbb];
                let (lo, hi) = (le_u128(&v[..16]), le_u128(&v[16..]));
                let nibbles = (lo & LOW_NIBBLES) | ((hi & LOW_NIBBLES) << 4);
                put_run_bytes(w, lane16, nibbles, |s| six_nibbles_at(s, half));
                // Each plane byte holds four values of this row only: built whole, then set.
                for pair in 0..2 {
                    for k in 0..4 {
                        let mut byte = 0u8;
                        for s in [2 * pair, 2 * pair + 1] {
                            for high in 0..2 {
                                let (_, shift) = six_plane_at(s, half, high);
                                byte |= (v[16 * high + 4 * s + k] >> 4) << shift;
                            }
                        }
                        let (at, _) = six_plane_at(2 * pair, half, 0);
                        w[at + lane16 * 4 + k] = byte;
                    }
                }
            }
        }
    }
}

/// The low nibble of every byte of a `u128`.
const LOW_NIBBLES: u128 = u128::from_le_bytes([0x0f; 16]);

/// Sixteen bytes as one little-endian integer.
fn le_u128(b: &[u8]) -> u128 {
    let mut x = [0u8; 16];
    x.copy_from_slice(&b[..16]);
    u128::from_le_bytes(x)
}

/// The sixteen nibble bytes of row `16 half + lane16` into a panel block `w`, four at a time:
/// byte `e` at `run(e / 4) + lane16 · 4 + e % 4`, where `run(r)` is where the vector of run
/// `r` of the row's half starts ([`run_at`], [`six_nibbles_at`]).
fn put_run_bytes(w: &mut [u8], lane16: usize, bytes: u128, run: impl Fn(usize) -> usize) {
    for (r, four) in bytes.to_le_bytes().chunks_exact(4).enumerate() {
        w[run(r) + lane16 * 4..][..4].copy_from_slice(four);
    }
}

/// Where the 64-byte vector of run `r` and half `h` starts in a panel block: four values of
/// each of 16 rows (Q8_0's runs 0..8 of bytes, the 4-bit formats' 0..4 of nibble pairs).
fn run_at(r: usize, h: usize) -> usize {
    r * 128 + h * 64
}

/// The 256 six-bit values (0..64) of a Q6_K super-block, as
/// [`q6_k_value`](super::blocks::q6_k_value) reads each, decoded in one pass: value
/// `128 n + 32 g + l` takes the low or high nibble of byte `l` of one of the half's two 32-byte
/// runs of low bits and bits `2 g..` of byte `l` of its run of top bits.
fn q6_k_values(block: &[u8]) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for (n, out) in v.chunks_exact_mut(128).enumerate() {
        let ql = &block[64 * n..][..64];
        let qh = &block[super::blocks::Q6_K_QH_AT + QK * n..][..QK];
        for l in 0..QK {
            let (a, b, h) = (ql[l], ql[QK + l], qh[l]);
            out[l] = (a & 0x0f) | (h & 3) << 4;
            out[QK + l] = (b & 0x0f) | ((h >> 2) & 3) << 4;
            out[2 * QK + l] = (a >> 4) | ((h >> 4) & 3) << 4;
            out[3 * QK + l] = (b >> 4) | ((h >> 6) & 3) << 4;
        }
    }
    v
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
    /// One panel's share of each array.
    per: Shares,
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
        let panels = rows.div_ceil(PANEL_ROWS);
        let per = format.shares(cols / QK)?;
        let array = |share: usize| panels.checked_mul(share);
        // Zero weights: Q8_0's offset bytes of 128 (Q4_0's 8s need not be: their scales are
        // zero, as every scale past the last row stays).
        let fill = if format == PanelFormat::Q8_0 { 128 } else { 0x88 };
        // Every array is read end to end on each step: from memory advised for 2 MiB pages.
        // `fill_rows` writes every weight byte of a matrix row, so only the last panel's rows
        // past `rows` keep the fill, which is all written here: the rest of the memory is
        // first touched where a row is laid out (by the thread that lays it out).
        let mut w = HugeArray::zeroed(array(per.w)?)?;
        w[panels.saturating_sub(1) * per.w..].fill(fill);
        Some(Self {
            format,
            rows,
            cols,
            w,
            d: HugeArray::zeroed(array(per.d)?)?,
            m: HugeArray::zeroed(array(per.m)?)?,
            sc: HugeArray::zeroed(array(per.sc)?)?,
            mn: HugeArray::zeroed(array(per.mn)?)?,
            hb: HugeArray::zeroed(array(per.hb)?)?,
            per,
        })
    }

    /// Lay out whole rows `first..` from `bytes` (the file's blocks, `cols / 32` per row).
    /// Panics if they run past the matrix. Each panel's share of the arrays is its own, so the
    /// panels of a large span are laid out in parallel.
    pub fn fill_rows(&mut self, first: usize, bytes: &[u8]) {
        let format = self.format;
        let row_bytes = self.cols / format.file_block() * format.file_bytes();
        assert!(
            bytes.len().is_multiple_of(row_bytes) && first + bytes.len() / row_bytes <= self.rows,
            "whole rows inside the matrix"
        );
        let count = bytes.len() / row_bytes;
        if count == 0 {
            return;
        }
        let (p0, p1) = (first / PANEL_ROWS, (first + count - 1) / PANEL_ROWS + 1);
        // Each panel with the file's rows that fall in it (from its lane `first % 32` on).
        let mut jobs: Vec<(PanelMut<'_>, usize, &[u8])> = Vec::with_capacity(p1 - p0);
        let mut rest = bytes;
        for (i, panel) in self.panels_mut(p0, p1 - p0).into_iter().enumerate() {
            let lane = if i == 0 { first % PANEL_ROWS } else { 0 };
            let take = ((PANEL_ROWS - lane) * row_bytes).min(rest.len());
            let (these, after) = rest.split_at(take);
            jobs.push((panel, lane, these));
            rest = after;
        }
        let fill = |(panel, lane, rows): (PanelMut<'_>, usize, &[u8])| {
            let mut panel = panel;
            for (i, row) in rows.chunks_exact(row_bytes).enumerate() {
                panel.fill_row(format, lane + i, row);
            }
        };
        // Parallel only where the work outweighs handing it out (a run of a model's rows).
        if bytes.len() >= PARALLEL_FILL_BYTES {
            jobs.into_par_iter().for_each(fill);
        } else {
            jobs.into_iter().for_each(fill);
        }
    }

    /// Panels `first..first + count`, each its own share of every array.
    fn panels_mut(&mut self, first: usize, count: usize) -> Vec<PanelMut<'_>> {
        let per = self.shares();
        let w = split(&mut self.w, per.w, first, count);
        let d = split(&mut self.d, per.d, first, count);
        let m = split(&mut self.m, per.m, first, count);
        let sc = split(&mut self.sc, per.sc, first, count);
        let mn = split(&mut self.mn, per.mn, first, count);
        let hb = split(&mut self.hb, per.hb, first, count);
        w.into_iter()
            .zip(d)
            .zip(m)
            .zip(sc)
            .zip(mn)
            .zip(hb)
            .map(|(((((w, d), m), sc), mn), hb)| PanelMut { w, d, m, sc, mn, hb })
            .collect()
    }

    /// How many elements of each array one panel takes ([`PanelFormat::shares`]).
    fn shares(&self) -> Shares {
        self.per
    }

    pub fn format(&self) -> PanelFormat {
        self.format
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
    /// token; scaled per 256 values, [`quantize_q8_k`](super::blocks::quantize_q8_k), where
    /// the format has super-blocks, [`PanelFormat::supers`]): `out[t]` receives token `t`'s
    /// results for the panel's first `out[t].len()` rows (at most 32, fewer in the last panel).
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
                    PanelFormat::Q6K => avx512::panel::<{ avx512::Q6K }>(self, p, a, out),
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

    /// Panel block `pb`'s laid-out bytes and its fifth-bit masks (empty where the format has
    /// none).
    fn panel_block(&self, pb: usize) -> (&[u8], &[u64]) {
        let pbb = self.format.panel_block_bytes();
        let hb: &[u64] = if self.format.five() {
            &self.hb[pb * FIFTH_MASKS..(pb + 1) * FIFTH_MASKS]
        } else {
            &[]
        };
        (&self.w[pb * pbb..(pb + 1) * pbb], hb)
    }

    /// Row `r` times one token's blocks, the tiles' operations one at a time.
    fn scalar_one(&self, r: usize, tok: &[BlockQ8]) -> f32 {
        if self.format.supers() {
            return self.scalar_super(r, tok);
        }
        let blocks = self.blocks();
        let (p, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
        let mut acc = 0f32;
        for (b, y) in tok.iter().enumerate() {
            let pb = p * blocks + b;
            let (wb, hb) = self.panel_block(pb);
            let mut dot = self.format.start(y.sum);
            for (e, &q) in y.qs.iter().enumerate() {
                dot += i32::from(self.format.weight(wb, hb, lane, e)) * i32::from(q);
            }
            let scale = f32_of(self.d[pb * PANEL_ROWS + lane]) * y.d;
            acc = scale.mul_add(dot as f32, acc);
            if self.format.has_min() {
                acc = f32_of(self.m[pb * PANEL_ROWS + lane]).mul_add(y.s, acc);
            }
        }
        acc
    }

    /// [`scalar_one`](Self::scalar_one) for the formats with super-blocks, whose activations
    /// share one scale per 256 values ([`quantize_q8_k`](super::blocks::quantize_q8_k)): per
    /// super-block, the sub-blocks' integer dots times their scales summed in integers (and
    /// the K-quants' minima times the sub-blocks' sums), then one multiply-add by `d · d_a` (and
    /// one by `−dmin · d_a`).
    fn scalar_super(&self, r: usize, tok: &[BlockQ8]) -> f32 {
        let blocks = self.blocks();
        let (p, lane) = (r / PANEL_ROWS, r % PANEL_ROWS);
        let subs = QK_K / QK;
        let mut acc = 0f32;
        for (sb, ys) in tok.chunks_exact(subs).enumerate() {
            // The row's `d` (and `dmin`) of the super-block.
            let at = (p * (blocks / subs) + sb) * PANEL_ROWS + lane;
            let (mut scaled, mut mins) = (0i32, 0i32);
            for (j, y) in ys.iter().enumerate() {
                let pb = p * blocks + sb * subs + j;
                let (wb, hb) = self.panel_block(pb);
                if self.format == PanelFormat::Q6K {
                    // Each half's chain from −32 Σ a of its values, times its scale.
                    let mut halves = [-32 * y.sum_low, -32 * (y.sum - y.sum_low)];
                    for (e, &q) in y.qs.iter().enumerate() {
                        halves[e / 16] += i32::from(self.format.weight(wb, hb, lane, e)) * i32::from(q);
                    }
                    let scale = |sub: usize| i32::from(self.sc[(2 * pb + sub) * PANEL_ROWS + lane] as i8);
                    scaled += scale(0) * halves[0] + scale(1) * halves[1];
                    continue;
                }
                let mut dot = 0;
                for (e, &q) in y.qs.iter().enumerate() {
                    dot += i32::from(self.format.weight(wb, hb, lane, e)) * i32::from(q);
                }
                let i = pb * PANEL_ROWS + lane;
                scaled += i32::from(self.sc[i]) * dot;
                mins += i32::from(self.mn[i]) * y.sum;
            }
            let yd = ys[0].d;
            acc = (f32_of(self.d[at]) * yd).mul_add(scaled as f32, acc);
            if self.format.k() {
                acc = (-f32_of(self.m[at]) * yd).mul_add(mins as f32, acc);
            }
        }
        acc
    }
}

/// An f16's bits as f32.
fn f32_of(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests;
