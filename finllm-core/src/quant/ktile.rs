//! Multi-row, multi-token tiles for the block formats and the K-quants (Q4_K, Q5_K, Q6_K) on
//! AVX2, and for Q6_K on AVX-512 VNNI (where the others run on the panels of [`super::gemm`]).
//!
//! The one-row kernels in [`super::kernels`] read activations as 32-element blocks, so each
//! 64-byte `vpdpbusd` covers two sub-blocks and every product has to be scaled on its own before
//! the next sub-block's can be added. Here a super-block's activations are laid out once per call
//! ([`SuperQ8`]) so that in each of the four 64-byte vectors lanes `2j` and `2j + 1` hold eight
//! values of sub-block `j`, and the weights are put in the same order, once at load
//! ([`pack_q8_0_row`], [`pack_q4_1_row`], [`pack_q4_k_row`], [`pack_q5_k_row`],
//! [`pack_q6_k_row`]; regrouping them on every call cost more instructions than the dot
//! products). Every lane then belongs to one sub-block in all four vectors:
//! the four integer dot products chain into one accumulator, and one multiply by the per-lane
//! scales finishes the super-block. A Q8_0 row's short last group is laid out two or four blocks
//! wide, so it takes one or two vectors rather than four of mostly zeros.
//!
//! The activations are the same 8-bit blocks the other kernels use (per-32 scales, rearranged,
//! not requantized), so results agree with the scalar references to float rounding. Every result
//! of a tile is bit-identical to the one-row, one-token tile on that row and token: each takes the
//! same operations in the same order, so how rows and tokens are grouped never changes a number.

use super::blocks::{BlockQ8, QK, QK_K};
use super::kernels::Isa;
use super::QuantType;
#[cfg(target_arch = "x86_64")]
use super::STREAM_AHEAD;
#[cfg(any(target_arch = "x86_64", test))]
use super::TASK_ROWS;

/// Activation blocks (sub-blocks) per super-block.
pub const SUBS: usize = QK_K / QK;

/// 32-bit lanes of a 64-byte vector: the dot products' accumulators.
pub const LANES: usize = 16;

/// Most weight rows one tile call takes.
pub const MAX_TILE_ROWS: usize = 2;

/// Most tokens one tile call takes.
pub const MAX_TILE_TOKENS: usize = 8;

/// Most groups a tile takes of its rows before the next rows take the same groups: a
/// 2,048-value run, whose activations for eight tokens (20 KiB of a Q4_K tile's reads) stay in
/// L1 while the rows of a task pass over them. Taken whole, the 8,192-value rows of a down
/// projection read 80 KiB of activations per row from L2, and the AVX2 tiles ran 17-35% slower
/// than on 2,048-value rows. The formats with the most bytes per group (Q8_0, AVX2's Q6_K)
/// take half runs.
pub const CHUNK_GROUPS: usize = 8;

/// Groups a tile of the formats with the most bytes per group (Q8_0; AVX2's Q6_K) takes per run.
pub const HALF_CHUNK_GROUPS: usize = CHUNK_GROUPS / 2;

/// Blocks a group of `blocks` (1..=8) activation blocks is laid out as: every group but a
/// Q8_0 row's last holds eight; a short last group of one or two blocks is laid out as two, of
/// three or four as four, so that its dot products take one or two vectors instead of four.
pub fn group_width(blocks: usize) -> usize {
    match blocks {
        0..=2 => 2,
        3 | 4 => 4,
        _ => SUBS,
    }
}

/// Where value `e` (0..32) of block `j` of a group laid out `width` blocks wide sits: in each of
/// the group's `width / 2` vectors, block `j` takes `64 / width` consecutive bytes, and vector
/// `v` holds its values `v · 64 / width..`. So every 32-bit lane belongs to one block in all of
/// the group's vectors (block `j` owns lanes `j · 16 / width..`).
fn tile_position(width: usize, j: usize, e: usize) -> usize {
    let run = 64 / width;
    64 * (e / run) + run * j + e % run
}

/// The eight activation blocks of one group (a super-block's worth, 256 values), rearranged for
/// the tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
pub struct SuperQ8 {
    /// The values at [`tile_position`] for the group's [`group_width`] (zeros elsewhere).
    pub qs: [i8; QK_K],
    /// The scale of the block each 32-bit lane belongs to.
    pub d: [f32; LANES],
    /// Where Q6_K's two chains start (its weights enter offset by 32): `q6_start[0][2 j]` is
    /// `−32 ·` the sum of values 0..16 of block `j`, `q6_start[1][2 j + 1]` of values 16..32,
    /// every other lane zero; all zeros in a short group (Q6_K rows are whole groups).
    pub q6_start: [[i32; LANES]; 2],
    /// `−128 ·` the sum of the values each lane multiplies: where Q8_0's dot products start (its
    /// weights enter offset by 128).
    pub q8_start: [i32; LANES],
    /// The block's `s` (`d · Σ`, rounded through f16 as [`BlockQ8::s`]) shared out evenly over
    /// its lanes (exactly: a power of two): Q4_1's minimum term, one multiply-add per lane.
    pub s: [f32; LANES],
    /// Per block, in [`PAIR_ORDER`] (where AVX2's horizontal add of two halves' lane pairs
    /// leaves the blocks of a whole group): the scale `d`, ...
    pub d8: [f32; SUBS],
    /// ... `d · Σ values`, ...
    pub ds8: [f32; SUBS],
    /// ... `s`, ...
    pub s8: [f32; SUBS],
    /// ... and `−128 Σ values` (zeros past the group's blocks).
    pub start8: [i32; SUBS],
    /// Blocks the group holds: eight, or fewer in a short last group.
    pub blocks: usize,
}

/// The order of a whole group's eight blocks after AVX2's `vphaddd` of the lane pairs of its
/// two halves (lanes `2j`, `2j + 1` of the first half hold block `j`, of the second block
/// `4 + j`; each 128-bit lane adds its pairs of the first operand, then of the second).
pub const PAIR_ORDER: [usize; SUBS] = [0, 1, 4, 5, 2, 3, 6, 7];

impl Default for SuperQ8 {
    fn default() -> Self {
        Self {
            qs: [0; QK_K],
            d: [0.0; LANES],
            q6_start: [[0; LANES]; 2],
            q8_start: [0; LANES],
            s: [0.0; LANES],
            d8: [0.0; SUBS],
            ds8: [0.0; SUBS],
            s8: [0.0; SUBS],
            start8: [0; SUBS],
            blocks: 0,
        }
    }
}

impl SuperQ8 {
    /// The layout of `blocks` (one to eight activation blocks).
    pub fn from_blocks(blocks: &[BlockQ8]) -> Self {
        assert!(
            (1..=SUBS).contains(&blocks.len()),
            "one to eight activation blocks in a group"
        );
        let width = group_width(blocks.len());
        let mut s = Self {
            blocks: blocks.len(),
            ..Self::default()
        };
        for (j, b) in blocks.iter().enumerate() {
            if width == SUBS {
                // Runs of eight values: the common case, without a division per value.
                for v in 0..QK / 8 {
                    s.qs[64 * v + 8 * j..64 * v + 8 * j + 8].copy_from_slice(&b.qs[8 * v..8 * v + 8]);
                }
            } else {
                for (e, &q) in b.qs.iter().enumerate() {
                    s.qs[tile_position(width, j, e)] = q;
                }
            }
            let lanes = LANES / width;
            s.d[j * lanes..(j + 1) * lanes].fill(b.d);
            s.s[j * lanes..(j + 1) * lanes].fill(b.s / lanes as f32);
            if width == SUBS {
                let half = |r: std::ops::Range<usize>| b.qs[r].iter().map(|&q| i32::from(q)).sum::<i32>();
                s.q6_start[0][2 * j] = -32 * half(0..16);
                s.q6_start[1][2 * j + 1] = -32 * half(16..32);
            }
        }
        for (k, &j) in PAIR_ORDER.iter().enumerate() {
            if let Some(b) = blocks.get(j) {
                s.d8[k] = b.d;
                s.ds8[k] = b.d * b.sum as f32;
                s.s8[k] = b.s;
                s.start8[k] = -128 * b.sum;
            }
        }
        for (l, start) in s.q8_start.iter_mut().enumerate() {
            let mut sum = 0i32;
            for v in 0..width / 2 {
                sum += s.qs[64 * v + 4 * l..64 * v + 4 * l + 4]
                    .iter()
                    .map(|&q| i32::from(q))
                    .sum::<i32>();
            }
            *start = -128 * sum;
        }
        s
    }
}

/// [`SuperQ8::from_blocks`] for every eight blocks of `blocks` (the last group may be short).
pub fn supers_from_blocks(blocks: &[BlockQ8], out: &mut [SuperQ8]) {
    assert_eq!(blocks.len().div_ceil(SUBS), out.len(), "eight blocks per super-block");
    for (s, b) in out.iter_mut().zip(blocks.chunks(SUBS)) {
        *s = SuperQ8::from_blocks(b);
    }
}

/// The layout of a packed row of `blocks` blocks: each group's values (`value_bytes` per block,
/// a short last group at its [`group_width`]), then each group's tail of `tail_bytes` per block
/// of its width (scales and what else the format keeps per block). Nothing pads the row: a
/// packed row is the file's row in size (but for the blocks a short last group rounds up to),
/// so packing at load costs no memory beyond the file's.
#[derive(Clone, Copy, Debug, PartialEq)]
struct PackedRow {
    groups: usize,
    /// The width of the last group.
    last: usize,
    /// Where the tails start.
    scales_at: usize,
    bytes: usize,
}

impl PackedRow {
    fn new(blocks: usize, value_bytes: usize, tail_bytes: usize) -> Self {
        let groups = blocks.div_ceil(SUBS);
        let last = group_width(blocks - groups.saturating_sub(1) * SUBS);
        let laid_out = if groups == 0 { 0 } else { (groups - 1) * SUBS + last };
        let scales_at = laid_out * value_bytes;
        Self {
            groups,
            last,
            scales_at,
            bytes: scales_at + laid_out * tail_bytes,
        }
    }

    /// The width group `g` is laid out at.
    fn width(&self, g: usize) -> usize {
        if g + 1 == self.groups {
            self.last
        } else {
            SUBS
        }
    }
}

/// Bytes of a Q8_0 row of `blocks` blocks in the tile layout ([`pack_q8_0_row`]).
pub fn q8_0_packed_row_bytes(blocks: usize) -> usize {
    PackedRow::new(blocks, QK, 2).bytes
}

/// A Q8_0 row (`blocks` 34-byte blocks) in the tile layout: each group's values at
/// [`tile_position`], offset by 128 (`w ^ 0x80`, which VNNI reads unsigned as `w + 128`), then
/// every group's f16 scales, one per block of its width (zeros past the row's last block). The
/// tiles then load the values as they are: no shuffles per call. `out` holds
/// [`q8_0_packed_row_bytes`].
pub fn pack_q8_0_row(row: &[u8], out: &mut [u8]) {
    use super::blocks::Q8_0_BYTES;
    let blocks = row.len() / Q8_0_BYTES;
    let layout = PackedRow::new(blocks, QK, 2);
    assert!(
        row.len() == blocks * Q8_0_BYTES && out.len() == layout.bytes,
        "a Q8_0 row of whole blocks and room for its packed layout"
    );
    // Zero weights (0x80) and zero scales wherever no block of the row lands.
    out[..layout.scales_at].fill(0x80);
    out[layout.scales_at..].fill(0);
    for (g, group) in row.chunks(SUBS * Q8_0_BYTES).enumerate() {
        for (j, block) in group.chunks_exact(Q8_0_BYTES).enumerate() {
            for (e, &q) in block[2..].iter().enumerate() {
                out[g * QK_K + tile_position(layout.width(g), j, e)] = q ^ 0x80;
            }
            out[layout.scales_at + 16 * g + 2 * j..][..2].copy_from_slice(&block[..2]);
        }
    }
}

/// Where the 4-bit value at tile position `p` of a group `width` blocks wide is kept: the
/// group's `16 · width` bytes hold position `p` in byte `p % (16 · width)`, in the low nibble
/// for the first half of the positions and the high one for the second half. So one load and a
/// mask (and a shift) yields whole vectors of the tile layout.
fn nibble_at(width: usize, p: usize) -> (usize, u32) {
    let half = 16 * width;
    (p % half, 4 * (p / half) as u32)
}

/// Block `j`'s 32 four-bit values (`qs`: 16 bytes, low nibbles values 0..16, high 16..32, as
/// the GGUF blocks keep them) into group `g` of a packed row, at [`tile_position`] as
/// [`nibble_at`] keeps them; calls `at(e, p)` with each value's tile position.
fn place_nibbles(out: &mut [u8], g: usize, width: usize, j: usize, qs: &[u8], mut at: impl FnMut(usize, usize)) {
    for e in 0..QK {
        let q = if e < QK / 2 { qs[e] & 0x0f } else { qs[e - QK / 2] >> 4 };
        let p = tile_position(width, j, e);
        let (byte, shift) = nibble_at(width, p);
        out[g * SUBS * QK / 2 + byte] |= q << shift;
        at(e, p);
    }
}

/// The 4- and 5-bit block formats of the tiles: what a block keeps beside its 32 values
/// (16 bytes of low nibbles): an f16 scale `d`, for some an f16 minimum `m` after it, for some
/// 32 fifth bits (`qh`) before the nibbles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SmallFormat {
    pub(crate) minima: bool,
    pub(crate) fifth_bits: bool,
}

impl SmallFormat {
    pub(crate) const Q4_0: Self = Self {
        minima: false,
        fifth_bits: false,
    };
    pub(crate) const Q4_1: Self = Self {
        minima: true,
        fifth_bits: false,
    };
    pub(crate) const Q5_0: Self = Self {
        minima: false,
        fifth_bits: true,
    };
    pub(crate) const Q5_1: Self = Self {
        minima: true,
        fifth_bits: true,
    };

    /// Bytes of a block in the file.
    const fn block_bytes(self) -> usize {
        2 + 2 * self.minima as usize + 4 * self.fifth_bits as usize + QK / 2
    }

    /// Bytes of a packed group's tail per block of its width: its scale, its minimum, and
    /// four bytes of the fifth bits' 64-bit masks (one mask per 64 values).
    pub(crate) const fn tail_bytes(self) -> usize {
        self.block_bytes() - QK / 2
    }

    /// Where a group `width` blocks wide keeps its minima and its masks, from its tail's start.
    pub(crate) const fn minima_and_masks_at(self, width: usize) -> (usize, usize) {
        (2 * width, 2 * width * (1 + self.minima as usize))
    }

    fn name(self) -> &'static str {
        match (self.minima, self.fifth_bits) {
            (false, false) => "Q4_0",
            (true, false) => "Q4_1",
            (false, true) => "Q5_0",
            (true, true) => "Q5_1",
        }
    }

    /// Bytes of a row of `blocks` blocks in the tile layout.
    fn packed_row_bytes(self, blocks: usize) -> usize {
        PackedRow::new(blocks, QK / 2, self.tail_bytes()).bytes
    }

    /// A row of the format in the tile layout: each group's low four bits at [`tile_position`]
    /// kept as [`nibble_at`] says, then the group's tail: the f16 scales of its blocks, their
    /// f16 minima, and one 64-bit mask of fifth bits per 64 values (bit `i` of mask `v` for tile
    /// position `64 v + i`); zeros past the row's last block.
    fn pack_row(self, row: &[u8], out: &mut [u8]) {
        let bytes = self.block_bytes();
        let blocks = row.len() / bytes;
        let layout = PackedRow::new(blocks, QK / 2, self.tail_bytes());
        assert!(
            row.len() == blocks * bytes && out.len() == layout.bytes,
            "a {} row of whole blocks and room for its packed layout",
            self.name()
        );
        // The nibbles follow the scale, the minimum and the fifth bits.
        let qs_at = bytes - QK / 2;
        out.fill(0);
        for (g, group) in row.chunks(SUBS * bytes).enumerate() {
            let width = layout.width(g);
            let tail = layout.scales_at + SUBS * self.tail_bytes() * g;
            let (minima_at, masks_at) = self.minima_and_masks_at(width);
            let mut masks = [0u64; 4];
            for (j, block) in group.chunks_exact(bytes).enumerate() {
                let high = if self.fifth_bits {
                    u32::from_le_bytes(block[qs_at - 4..qs_at].try_into().expect("four bytes"))
                } else {
                    0
                };
                place_nibbles(out, g, width, j, &block[qs_at..], |e, p| {
                    masks[p / 64] |= u64::from((high >> e) & 1) << (p % 64);
                });
                out[tail + 2 * j..][..2].copy_from_slice(&block[..2]);
                if self.minima {
                    out[tail + minima_at + 2 * j..][..2].copy_from_slice(&block[2..4]);
                }
            }
            if self.fifth_bits {
                for (v, m) in masks[..width / 2].iter().enumerate() {
                    out[tail + masks_at + 8 * v..][..8].copy_from_slice(&m.to_le_bytes());
                }
            }
        }
    }
}

/// Bytes of a Q4_1 row of `blocks` blocks in the tile layout ([`pack_q4_1_row`]).
pub fn q4_1_packed_row_bytes(blocks: usize) -> usize {
    SmallFormat::Q4_1.packed_row_bytes(blocks)
}

/// A Q4_1 row (`blocks` 20-byte blocks) in the tile layout ([`SmallFormat::pack_row`]): the
/// 4-bit values, then per group the f16 scales `d` and f16 minima `m` of its blocks; the file's
/// size but for the blocks a short last group rounds up to. `out` holds
/// [`q4_1_packed_row_bytes`].
pub fn pack_q4_1_row(row: &[u8], out: &mut [u8]) {
    SmallFormat::Q4_1.pack_row(row, out);
}

/// Bytes of a Q4_0 row of `blocks` blocks in the tile layout ([`pack_q4_0_row`]).
pub fn q4_0_packed_row_bytes(blocks: usize) -> usize {
    SmallFormat::Q4_0.packed_row_bytes(blocks)
}

/// A Q4_0 row (`blocks` 18-byte blocks) in the tile layout: the 4-bit values (`q`, standing for
/// `q − 8`) and the scales `d`, read by the Q4_0 tile, which starts each lane's integer dot at
/// `−8 Σ y` so that it is exactly `Σ (q − 8) y`, as llama.cpp computes it. `out` holds
/// [`q4_0_packed_row_bytes`].
pub fn pack_q4_0_row(row: &[u8], out: &mut [u8]) {
    SmallFormat::Q4_0.pack_row(row, out);
}

/// Bytes of a Q5_0 row of `blocks` blocks in the tile layout ([`pack_q5_0_row`]).
pub fn q5_0_packed_row_bytes(blocks: usize) -> usize {
    SmallFormat::Q5_0.packed_row_bytes(blocks)
}

/// A Q5_0 row (`blocks` 22-byte blocks) in the tile layout: the low four bits of every value,
/// and per group the f16 scales `d` then the fifth bits' masks. The Q5_0 tile adds 16 where a
/// mask bit is set and starts each lane's dot at `−16 Σ y`, so the integer dot is
/// `Σ (q − 16) y` exactly, as llama.cpp computes it. `out` holds [`q5_0_packed_row_bytes`].
pub fn pack_q5_0_row(row: &[u8], out: &mut [u8]) {
    SmallFormat::Q5_0.pack_row(row, out);
}

/// Bytes of a Q5_1 row of `blocks` blocks in the tile layout ([`pack_q5_1_row`]).
pub fn q5_1_packed_row_bytes(blocks: usize) -> usize {
    SmallFormat::Q5_1.packed_row_bytes(blocks)
}

/// A Q5_1 row (`blocks` 24-byte blocks) in the tile layout: as [`pack_q5_0_row`], with the f16
/// minima `m` between a group's scales and its masks. The tile adds 16 where a mask bit is set
/// (values `q` in 0..32, no offset) and the minimum term `m · s` as Q4_1's. `out` holds
/// [`q5_1_packed_row_bytes`].
pub fn pack_q5_1_row(row: &[u8], out: &mut [u8]) {
    SmallFormat::Q5_1.pack_row(row, out);
}

/// Bytes of a Q4_K super-block in the tile layout ([`pack_q4_k_row`]): 128 of 4-bit values,
/// 16 of scales and minima, 4 of `d` and `dmin`.
pub const Q4_K_PACKED_BYTES: usize = 148;

/// Bytes of a Q5_K super-block in the tile layout ([`pack_q5_k_row`]): as Q4_K's, with the 32
/// bytes of fifth bits after the 4-bit values.
pub const Q5_K_PACKED_BYTES: usize = 180;

/// Where the fifth bits of a packed Q5_K super-block start: 32 bytes, bit `m` of byte `k` for
/// tile position `32 m + k` (so half `m % 2` of vector `m / 2` takes its fifth bits with one
/// shift and one mask of the same 32 bytes, as Q6_K's high bits).
const Q5_K_PACKED_HIGH_AT: usize = 128;

/// Bytes of a Q4_K row of `blocks` super-blocks in the tile layout.
pub fn q4_k_packed_row_bytes(blocks: usize) -> usize {
    blocks * Q4_K_PACKED_BYTES
}

/// Bytes of a Q5_K row of `blocks` super-blocks in the tile layout.
pub fn q5_k_packed_row_bytes(blocks: usize) -> usize {
    blocks * Q5_K_PACKED_BYTES
}

/// A Q4_K row in the tile layout, super-block by super-block: the 4-bit values at
/// [`tile_position`] kept as [`nibble_at`] says (two loads and masks give the four vectors, where
/// the file's order needs two permutes per vector), then the eight 6-bit scales and eight minima
/// as bytes (decoded from their 12-byte packing once, here, rather than on every call), then `d`
/// and `dmin` as in the file. `out` holds [`q4_k_packed_row_bytes`].
pub fn pack_q4_k_row(row: &[u8], out: &mut [u8]) {
    pack_k_row(row, out, false);
}

/// [`pack_q4_k_row`] for Q5_K: the fifth bits follow the 4-bit values as 32 bytes, bit `m` of
/// byte `k` for tile position `32 m + k`. `out` holds [`q5_k_packed_row_bytes`].
pub fn pack_q5_k_row(row: &[u8], out: &mut [u8]) {
    pack_k_row(row, out, true);
}

fn pack_k_row(row: &[u8], out: &mut [u8], high: bool) {
    use super::blocks::{k_scales_mins, K_SCALES_AT, Q4_K_BYTES, Q4_K_QS_AT, Q5_K_BYTES, Q5_K_QH_AT, Q5_K_QS_AT};
    let (bytes, packed, qs_at) = if high {
        (Q5_K_BYTES, Q5_K_PACKED_BYTES, Q5_K_QS_AT)
    } else {
        (Q4_K_BYTES, Q4_K_PACKED_BYTES, Q4_K_QS_AT)
    };
    assert!(
        row.len().is_multiple_of(bytes) && out.len() == row.len() / bytes * packed,
        "a K-quant row of whole super-blocks and room for its packed layout"
    );
    let tail = if high { Q5_K_PACKED_HIGH_AT + 32 } else { 128 };
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    const LOW_NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    const LOW_BITS: u64 = 0x0101_0101_0101_0101;
    for (b, o) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(packed)) {
        // Eight values at a time: values 8v..8v + 8 of sub-block j are the file's bytes
        // 32 (j / 2) + 8v.. (nibble j % 2) and go to tile positions 64 v + 8 j.. (see
        // `tile_position`), which `nibble_at` keeps in bytes 64 (v % 2) + 8 j.., nibble v / 2.
        let mut values = [0u64; 16];
        let mut high_bits = [0u64; 4];
        for j in 0..SUBS {
            for v in 0..4 {
                let nibbles = (word(b, qs_at + 32 * (j / 2) + 8 * v) >> (4 * (j % 2))) & LOW_NIBBLES;
                values[8 * (v % 2) + j] |= nibbles << (4 * (v / 2));
                if high {
                    // Bit j of qh bytes 8v..8v + 8 (values 8v.. of sub-block j, one bit a byte)
                    // for tile positions 64 v + 8 j + i: bit 2 v + j / 4 of bytes 8 (j % 4)...
                    let bits = (word(b, Q5_K_QH_AT + 8 * v) >> j) & LOW_BITS;
                    high_bits[j % 4] |= bits << (2 * v + j / 4);
                }
            }
        }
        for (dst, w) in o[..128].chunks_exact_mut(8).zip(values) {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        if high {
            let dst = &mut o[Q5_K_PACKED_HIGH_AT..Q5_K_PACKED_HIGH_AT + 32];
            for (dst, w) in dst.chunks_exact_mut(8).zip(high_bits) {
                dst.copy_from_slice(&w.to_le_bytes());
            }
        }
        let (sc, m) = k_scales_mins(&b[K_SCALES_AT..]);
        o[tail..tail + SUBS].copy_from_slice(&sc);
        o[tail + SUBS..tail + 2 * SUBS].copy_from_slice(&m);
        o[tail + 2 * SUBS..tail + 2 * SUBS + 4].copy_from_slice(&b[..4]);
    }
}

/// Bytes of a Q6_K row of `blocks` super-blocks in the tile layout: the file's size.
pub fn q6_k_packed_row_bytes(blocks: usize) -> usize {
    blocks * super::blocks::Q6_K_BYTES
}

/// A Q6_K row in the tile layout, super-block by super-block, in the file's 210 bytes: the low
/// four bits of each value at [`tile_position`] kept as [`nibble_at`] says, then 64 bytes of
/// high bits (bits `2 v, 2 v + 1` of byte `k` for tile position `64 v + k`), then the scales and
/// `d` where the file has them. One load and a shift give the high bits of all four vectors, where
/// the file's order needs a permute and two shifts per vector for each half.
pub fn pack_q6_k_row(row: &[u8], out: &mut [u8]) {
    use super::blocks::{Q6_K_BYTES, Q6_K_QH_AT, Q6_K_SCALES_AT};
    assert!(
        row.len().is_multiple_of(Q6_K_BYTES) && out.len() == row.len(),
        "a Q6_K row of whole super-blocks and room for its packed layout"
    );
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("eight bytes"));
    for (b, o) in row.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(Q6_K_BYTES)) {
        let (mut values, mut highs) = ([0u64; 16], [0u64; SUBS]);
        // Eight values at a time: values 8v..8v + 8 of sub-block j = 4 n + g (half n) are the
        // file's low nibbles at 64 n + 32 (g % 2) + 8v.. (nibble g / 2) and bits 2g, 2g + 1 of
        // its high bytes at 32 n + 8v..; they go to tile positions 64 v + 8 j...
        for j in 0..SUBS {
            let (n, g) = (j / 4, j % 4);
            for v in 0..4 {
                let low = (word(b, 64 * n + 32 * (g % 2) + 8 * v) >> (4 * (g / 2))) & 0x0f0f_0f0f_0f0f_0f0f;
                let high = (word(b, Q6_K_QH_AT + 32 * n + 8 * v) >> (2 * g)) & 0x0303_0303_0303_0303;
                values[8 * (v % 2) + j] |= low << (4 * (v / 2));
                highs[j] |= high << (2 * v);
            }
        }
        for (dst, w) in o[..Q6_K_QH_AT + 64]
            .chunks_exact_mut(8)
            .zip(values.iter().chain(&highs))
        {
            dst.copy_from_slice(&w.to_le_bytes());
        }
        o[Q6_K_SCALES_AT..].copy_from_slice(&b[Q6_K_SCALES_AT..]);
    }
}

/// Every row of `rows` (whole rows of `row_bytes`) times every token of `a` (`out.len()` tokens
/// of `a.len() / out.len()` groups each): `out[t][i]` receives row `i` · token `t`. A K-quant
/// row holds one super-block per group; a Q8_0 row is packed ([`pack_q8_0_row`]) for as many
/// blocks as a token's groups hold. The kernel walks tiles of up to [`MAX_TILE_ROWS`] rows by
/// [`MAX_TILE_TOKENS`] tokens (one row at a time for a single token): rows in blocks of
/// [`TASK_ROWS`], outermost, then tokens, then each row's groups in runs of at most
/// [`CHUNK_GROUPS`], so a run's activations stay in L1 while the block's rows go by; its checks
/// run once per call.
pub type SuperTileFn = fn(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]);

/// How a format's rows are rearranged once, at load, for its tile: the packed size of a row of
/// `n` blocks (of the format's own size: super-blocks for the K-quants), and the packing of one
/// row.
#[derive(Clone, Copy)]
pub struct Packing {
    pub row_bytes: fn(blocks: usize) -> usize,
    pub pack_row: fn(row: &[u8], out: &mut [u8]),
}

/// The tile kernel for one format.
#[derive(Clone, Copy)]
pub struct SuperKernels {
    pub tile: SuperTileFn,
    /// The layout the tile reads rows in (every tile reads rows packed at load: regrouping the
    /// file's blocks on every call took more instructions than the dot products).
    pub packing: Packing,
}

impl std::fmt::Debug for SuperKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SuperKernels").finish_non_exhaustive()
    }
}

/// The tile kernels for `dtype` on `isa`: Q6_K on AVX-512 VNNI; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
/// Q4_K, Q5_K and Q6_K on AVX2 (the same packed rows and activation layout). Other formats and ISAs use the
/// one-row kernels of [`super::kernels`].
pub fn super_kernels(dtype: QuantType, isa: Isa) -> Option<SuperKernels> {
    #[cfg(target_arch = "x86_64")]
    {
        use QuantType as Q;
        // On AVX-512 VNNI the block formats, Q4_K and Q5_K run on 32-row panels ([`super::gemm`]).
        let tile: SuperTileFn = match (isa, dtype) {
            (Isa::Avx512, Q::Q6K) => avx512::q6_k,
            (Isa::Avx2, Q::Q4_0) => avx2::q4_0,
            (Isa::Avx2, Q::Q5_0) => avx2::q5_0,
            (Isa::Avx2, Q::Q5_1) => avx2::q5_1,
            (Isa::Avx2, Q::Q4_1) => avx2::q4_1,
            (Isa::Avx2, Q::Q8_0) => avx2::q8_0,
            (Isa::Avx2, Q::Q4K) => avx2::q4_k,
            (Isa::Avx2, Q::Q5K) => avx2::q5_k,
            (Isa::Avx2, Q::Q6K) => avx2::q6_k,
            _ => return None,
        };
        let packing = |row_bytes, pack_row| Packing { row_bytes, pack_row };
        let packing = match dtype {
            Q::Q4_0 => packing(q4_0_packed_row_bytes, pack_q4_0_row),
            Q::Q5_0 => packing(q5_0_packed_row_bytes, pack_q5_0_row),
            Q::Q5_1 => packing(q5_1_packed_row_bytes, pack_q5_1_row),
            Q::Q4_1 => packing(q4_1_packed_row_bytes, pack_q4_1_row),
            Q::Q8_0 => packing(q8_0_packed_row_bytes, pack_q8_0_row),
            Q::Q4K => packing(q4_k_packed_row_bytes, pack_q4_k_row),
            Q::Q5K => packing(q5_k_packed_row_bytes, pack_q5_k_row),
            Q::Q6K => packing(q6_k_packed_row_bytes, pack_q6_k_row),
            _ => return None,
        };
        Some(SuperKernels { tile, packing })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dtype, isa);
        None
    }
}

/// The entry points of an x86 tile module for the 32-value block formats, Q4_K and Q5_K (AVX2 only:
/// on AVX-512 VNNI those run on 32-row panels, [`super::gemm`]), one per format (the call's checks, then the
/// module's own `run!`: its tile shapes), and the one-token loops of its `one_token!`. Expanded
/// inside each module, after its `run!` and `one_token!`.
#[cfg(target_arch = "x86_64")]
macro_rules! block_tile_entries {
    () => {
        pub fn q8_0(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_packed(rows, row_bytes, a, out, q8_0_packed_row_bytes);
            run!(
                q8_0_tile,
                false,
                q8_0_one_token,
                HALF_CHUNK_GROUPS,
                rows,
                row_bytes,
                a,
                out
            );
        }

        pub fn q4_1(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_packed(rows, row_bytes, a, out, q4_1_packed_row_bytes);
            run!(
                q4_tile,
                Q4_1,
                q4_1_one_token,
                CHUNK_GROUPS,
                rows,
                row_bytes,
                a,
                out
            );
        }

        pub fn q4_0(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_packed(rows, row_bytes, a, out, q4_0_packed_row_bytes);
            run!(
                q4_tile,
                Q4_0,
                q4_0_one_token,
                CHUNK_GROUPS,
                rows,
                row_bytes,
                a,
                out
            );
        }

        pub fn q5_0(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_packed(rows, row_bytes, a, out, q5_0_packed_row_bytes);
            run!(
                q4_tile,
                Q5_0,
                q5_0_one_token,
                CHUNK_GROUPS,
                rows,
                row_bytes,
                a,
                out
            );
        }

        pub fn q5_1(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_packed(rows, row_bytes, a, out, q5_1_packed_row_bytes);
            run!(
                q4_tile,
                Q5_1,
                q5_1_one_token,
                CHUNK_GROUPS,
                rows,
                row_bytes,
                a,
                out
            );
        }

        pub fn q4_k(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_k(rows, row_bytes, a, out, Q4_K_PACKED_BYTES);
            run!(
                q4_5_k_tile,
                false,
                q4_k_one_token,
                CHUNK_GROUPS,
                rows,
                row_bytes,
                a,
                out
            );
        }

        pub fn q5_k(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_k(rows, row_bytes, a, out, Q5_K_PACKED_BYTES);
            run!(
                q4_5_k_tile,
                true,
                q5_k_one_token,
                CHUNK_GROUPS,
                rows,
                row_bytes,
                a,
                out
            );
        }

        one_token!(q8_0_one_token, q8_0_tile, false);
        one_token!(q4_1_one_token, q4_tile, Q4_1);
        one_token!(q4_0_one_token, q4_tile, Q4_0);
        one_token!(q5_0_one_token, q4_tile, Q5_0);
        one_token!(q5_1_one_token, q4_tile, Q5_1);
        one_token!(q4_k_one_token, q4_5_k_tile, false);
        one_token!(q5_k_one_token, q4_5_k_tile, true);
    };
}

/// The entry point of the format with tiles on every x86 level (Q6_K), as
/// [`block_tile_entries`].
#[cfg(target_arch = "x86_64")]
macro_rules! k_tile_entries {
    () => {
        pub fn q6_k(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [&mut [f32]]) {
            check_k(rows, row_bytes, a, out, Q6_K_BYTES);
            run!(
                q6_k_tile,
                false,
                q6_k_one_token,
                Q6_K_CHUNK,
                rows,
                row_bytes,
                a,
                out
            );
        }

        one_token!(q6_k_one_token, q6_k_tile, false);
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
use x86::*;

/// What the x86 tiles share: the checks of a call, and the walk over its tiles.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// The formats the 4-bit tiles read (their `KIND` switch).
    pub(super) const Q4_1: u8 = 0;
    pub(super) const Q4_0: u8 = 1;
    pub(super) const Q5_0: u8 = 2;
    pub(super) const Q5_1: u8 = 3;

    /// Prefetch the `bytes` of weights at `b` ahead of use: for a lone row (`next` is `None`,
    /// streaming) [`STREAM_AHEAD`] ahead into L2; else the same place `next` bytes further on
    /// (in the rows the tile after this one takes) into L1.
    #[inline(always)]
    pub(super) fn prefetch_ahead(b: *const u8, bytes: usize, next: Option<usize>) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        for off in (0..bytes).step_by(64) {
            // SAFETY (both): a prefetch is a hint that never faults, even past the mapping; SSE
            // is part of x86-64.
            match next {
                None => unsafe { _mm_prefetch::<_MM_HINT_T1>(b.wrapping_add(STREAM_AHEAD + off).cast()) },
                Some(next) => unsafe { _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(next + off).cast()) },
            }
        }
    }

    /// The block format of `kind`.
    pub(super) const fn small(kind: u8) -> SmallFormat {
        match kind {
            Q4_0 => SmallFormat::Q4_0,
            Q5_0 => SmallFormat::Q5_0,
            Q5_1 => SmallFormat::Q5_1,
            _ => SmallFormat::Q4_1,
        }
    }

    /// The f16 values of a group of `2 V` blocks at `p` (8, 4 or 2 of them: a short group's
    /// tail holds no more), in the low lanes, zeros above.
    ///
    /// # Safety
    /// `4 V` bytes at `p` are readable.
    #[inline(always)]
    pub(super) unsafe fn load_f16s<const V: usize>(p: *const u8) -> std::arch::x86_64::__m128i {
        use std::arch::x86_64::*;
        // SAFETY: the caller's guarantee; SSE2 is part of x86-64.
        unsafe {
            match V {
                4 => _mm_loadu_si128(p.cast()),
                2 => _mm_loadl_epi64(p.cast()),
                _ => _mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()),
            }
        }
    }

    /// [`check`], and that every token's groups are whole but the last (of one size for all)
    /// and the rows are packed (`packed_bytes`) for that many blocks.
    pub(super) fn check_packed(
        rows: &[u8],
        row_bytes: usize,
        a: &[SuperQ8],
        out: &[&mut [f32]],
        packed_bytes: fn(usize) -> usize,
    ) {
        let groups = check(rows, row_bytes, a, out);
        let last = a.get(groups.wrapping_sub(1)).map_or(SUBS, |s| s.blocks);
        assert!(
            (1..=SUBS).contains(&last)
                && a.chunks(groups.max(1)).all(|x| x
                    .iter()
                    .enumerate()
                    .all(|(g, s)| s.blocks == if g + 1 == groups { last } else { SUBS })),
            "activations in whole groups but the last"
        );
        let bytes = packed_bytes(groups.saturating_sub(1) * SUBS + last);
        assert!(row_bytes == bytes || groups == 0, "packed rows of {bytes} bytes");
    }

    /// [`check`], and that the rows hold a super-block of `bytes` per group.
    pub(super) fn check_k(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &[&mut [f32]], bytes: usize) {
        let groups = check(rows, row_bytes, a, out);
        assert!(row_bytes >= groups * bytes, "rows of {groups} super-blocks");
    }

    /// Panics unless `rows` is whole rows, `a` holds as many groups for every token and `out`
    /// one result per row for each; returns the groups per token.
    pub(super) fn check(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &[&mut [f32]]) -> usize {
        let n = out.len();
        assert!(row_bytes > 0 && rows.len().is_multiple_of(row_bytes), "whole rows");
        assert!(n > 0 && a.len().is_multiple_of(n), "as many groups for every token");
        let nrows = rows.len() / row_bytes;
        assert!(out.iter().all(|o| o.len() == nrows), "one result per row and token");
        a.len() / n
    }

    /// The part of its rows a tile call takes: groups `first..end` of the tokens' `a[t].len()`,
    /// its accumulators' lanes carried in `carry` (rows by tokens, row-major) from the call
    /// before (when `first > 0`) to the next (when `end` is not the last group). Carrying every
    /// lane keeps each result's operations and their order those of one call over the whole
    /// row, so the bits do not change with the runs.
    pub(super) struct Span<'c> {
        pub first: usize,
        pub end: usize,
        pub carry: &'c mut [[f32; LANES]],
    }

    impl Span<'static> {
        /// All of a row's `groups` in one call.
        pub(super) fn whole(groups: usize) -> Self {
            Span {
                first: 0,
                end: groups,
                carry: &mut [],
            }
        }
    }

    /// The tiles of a call: rows in blocks of [`TASK_ROWS`], outermost; tokens in runs of up
    /// to eight; groups in runs of `chunk` (at most [`CHUNK_GROUPS`]); rows `tile_rows` (at most
    /// [`MAX_TILE_ROWS`]) a tile. A single token goes to `one_token`.
    #[inline(always)]
    pub(super) fn drive(
        rows: &[u8],
        row_bytes: usize,
        a: &[SuperQ8],
        out: &mut [&mut [f32]],
        (tile_rows, chunk): (usize, usize),
        tile: impl Fn(&[&[u8]], &[&[SuperQ8]], Span<'_>, &mut [f32]),
        one_token: impl Fn(&[u8], &[SuperQ8], &mut [f32]),
    ) {
        let n = out.len();
        let groups = a.len() / n;
        let nrows = rows.len() / row_bytes;
        if groups == 0 {
            out.iter_mut().for_each(|o| o.fill(0.0));
            return;
        }
        if n == 1 {
            one_token(rows, a, out[0]);
            return;
        }
        // On AVX-512 two rows by eight tokens: the weights' unpacking (shuffles, scales) is shared
        // by eight tokens, the activations' by two rows (2x8 measured 10-20% faster than 2x4 on
        // llama-1b Q4_K/Q5_K prefill when those ran on these tiles; 1x8, 1x12 and 1x16 in
        // between).
        let mut results = [0f32; MAX_TILE_ROWS * MAX_TILE_TOKENS];
        let mut carry = [[0f32; LANES]; TASK_ROWS * MAX_TILE_TOKENS];
        for r0 in (0..nrows).step_by(TASK_ROWS) {
            let r1 = nrows.min(r0 + TASK_ROWS);
            for t0 in (0..n).step_by(MAX_TILE_TOKENS) {
                let tn = MAX_TILE_TOKENS.min(n - t0);
                let ys: [&[SuperQ8]; MAX_TILE_TOKENS] =
                    std::array::from_fn(|j| &a[(t0 + j.min(tn - 1)) * groups..][..groups]);
                for first in (0..groups).step_by(chunk) {
                    let end = groups.min(first + chunk);
                    for i0 in (r0..r1).step_by(tile_rows) {
                        let rn = tile_rows.min(r1 - i0);
                        let ws: [&[u8]; MAX_TILE_ROWS] =
                            std::array::from_fn(|j| &rows[(i0 + j.min(rn - 1)) * row_bytes..][..row_bytes]);
                        // Tiles of `tile_rows` rows start `tile_rows` rows apart: their carries
                        // (at most `tile_rows` by eight) do not overlap.
                        let at = (i0 - r0) * MAX_TILE_TOKENS;
                        let span = Span {
                            first,
                            end,
                            carry: &mut carry[at..at + rn * tn],
                        };
                        tile(&ws[..rn], &ys[..tn], span, &mut results[..rn * tn]);
                        if end < groups {
                            continue;
                        }
                        for (r, res) in results[..rn * tn].chunks_exact(tn).enumerate() {
                            for (y, o) in res.iter().zip(&mut out[t0..t0 + tn]) {
                                o[i0 + r] = *y;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::*;
    use crate::quant::blocks::{Q6_K_BYTES, Q6_K_D_AT, Q6_K_QH_AT, Q6_K_SCALES_AT};
    use std::arch::x86_64::*;

    /// Calls `$imp::<$c, R, T>` for the tile's shape (checked first); `$c` is the kernel's
    /// format switch (unused by Q6_K).
    macro_rules! by_shape {
        ($imp:ident, $c:expr, $rows:expr, $a:expr, $span:expr, $out:expr) => {
            match ($rows.len(), $a.len()) {
                (1, 1) => $imp::<{ $c }, 1, 1>($rows, $a, $span, $out),
                (1, 2) => $imp::<{ $c }, 1, 2>($rows, $a, $span, $out),
                (1, 3) => $imp::<{ $c }, 1, 3>($rows, $a, $span, $out),
                (1, 4) => $imp::<{ $c }, 1, 4>($rows, $a, $span, $out),
                (1, 5) => $imp::<{ $c }, 1, 5>($rows, $a, $span, $out),
                (1, 6) => $imp::<{ $c }, 1, 6>($rows, $a, $span, $out),
                (1, 7) => $imp::<{ $c }, 1, 7>($rows, $a, $span, $out),
                (1, 8) => $imp::<{ $c }, 1, 8>($rows, $a, $span, $out),
                (2, 1) => $imp::<{ $c }, 2, 1>($rows, $a, $span, $out),
                (2, 2) => $imp::<{ $c }, 2, 2>($rows, $a, $span, $out),
                (2, 3) => $imp::<{ $c }, 2, 3>($rows, $a, $span, $out),
                (2, 4) => $imp::<{ $c }, 2, 4>($rows, $a, $span, $out),
                (2, 5) => $imp::<{ $c }, 2, 5>($rows, $a, $span, $out),
                (2, 6) => $imp::<{ $c }, 2, 6>($rows, $a, $span, $out),
                (2, 7) => $imp::<{ $c }, 2, 7>($rows, $a, $span, $out),
                (2, 8) => $imp::<{ $c }, 2, 8>($rows, $a, $span, $out),
                (r, t) => unreachable!("tile of {r} rows by {t} tokens passed the check"),
            }
        };
    }

    // The safe wrappers are only handed out by `super_kernels` after `Isa::detect` confirmed
    // AVX-512 F/BW/VL/VNNI (with AVX2, FMA and F16C) on this CPU.

    /// Groups a Q6_K tile takes per run (two rows share each token's activations: half the
    /// runs measured slower on 2,048-value rows, 127 against 159 GMAC/s).
    const Q6_K_CHUNK: usize = CHUNK_GROUPS;

    /// Every row of a call through `drive`, tiles by `$imp::<$c, R, N>`, a single token by
    /// `$one`. SAFETY (of the expansion): only called after the entry's checks, which bound
    /// every load of the tile; the features are present (see above).
    macro_rules! run {
        ($imp:ident, $c:expr, $one:ident, $chunk:expr, $rows:expr, $row_bytes:expr, $a:expr, $out:expr) => {
            drive(
                $rows,
                $row_bytes,
                $a,
                $out,
                (MAX_TILE_ROWS, $chunk),
                |w, y, s, o| unsafe { by_shape!($imp, $c, w, y, s, o) },
                |w, y, o| unsafe { $one(w, $row_bytes, y, o) },
            )
        };
    }

    /// `$name(rows, row_bytes, a, out)`: every row times a single token, one row at a time
    /// (the weights stream in one sequential run; two or four interleaved rows measured 30-35%
    /// slower), each by the format's one-row, one-token tile `$imp`, inlined into the loop so
    /// that nothing but its own work runs per row.
    macro_rules! one_token {
        ($name:ident, $imp:ident, $c:expr) => {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
            unsafe fn $name(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [f32]) {
                for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
                    let mut y = [0f32];
                    // SAFETY: as for the tile's caller: the rows and activations were checked.
                    unsafe { $imp::<{ $c }, 1, 1>(&[row], &[a], Span::whole(a.len()), &mut y) };
                    *o = y[0];
                }
            }
        };
    }

    // Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q5_K run on 32-row panels here ([`super::gemm`]).
    k_tile_entries!();

    /// An f16 at `p` (unaligned) as f32.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn f16(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees 2 readable bytes at p.
        let bits = unsafe { p.cast::<u16>().read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// A group's per-lane scales.
    #[inline(always)]
    fn lanes_f32(y: &SuperQ8) -> __m512 {
        // SAFETY: d holds sixteen f32, 64-byte aligned (`repr(align(64))`, offset 256).
        unsafe { _mm512_load_ps(y.d.as_ptr()) }
    }

    /// Vector `v` (0..4) of a super-block's activations.
    #[inline(always)]
    fn act(y: &SuperQ8, v: usize) -> __m512i {
        // SAFETY: qs holds 256 bytes, 64-byte aligned (`repr(align(64))`).
        unsafe { _mm512_load_si512(y.qs.as_ptr().add(64 * v).cast()) }
    }

    /// The low and high nibbles of every byte of `x`.
    #[inline(always)]
    fn nibbles(x: __m512i, m4: __m512i) -> (__m512i, __m512i) {
        // SAFETY: only inlined into the tiles, which run where AVX-512 BW is present.
        unsafe { (_mm512_and_si512(x, m4), _mm512_and_si512(_mm512_srli_epi16::<4>(x), m4)) }
    }

    /// The 6-bit values (0..64, before the −32) of a super-block packed by [`pack_q6_k_row`]:
    /// vector `v` is its low nibbles (two loads, a shift and masks, as Q4_K's) with bits
    /// `2 v, 2 v + 1` of the high bytes as bits 4 and 5.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn values_q6_k(b: *const u8) -> [__m512i; 4] {
        // SAFETY: the caller guarantees a whole super-block at b.
        let (lo, hi, hb) = unsafe {
            (
                _mm512_loadu_si512(b.cast()),
                _mm512_loadu_si512(b.add(64).cast()),
                _mm512_loadu_si512(b.add(Q6_K_QH_AT).cast()),
            )
        };
        let m4 = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi32(0x3030_3030);
        let ((l0, h0), (l1, h1)) = (nibbles(lo, m4), nibbles(hi, m4));
        let low = [l0, l1, h0, h1];
        // Bits 2v, 2v + 1 of every byte moved to bits 4, 5 (the mask drops what the 16-bit
        // shifts carry in from neighbouring bytes).
        let high = [
            _mm512_slli_epi16::<4>(hb),
            _mm512_slli_epi16::<2>(hb),
            hb,
            _mm512_srli_epi16::<2>(hb),
        ];
        // low | (high & 0x30): ternary-logic table 0xf8 (A | B & C).
        std::array::from_fn(|v| _mm512_ternarylogic_epi32::<0xf8>(low[v], high[v], m30))
    }

    /// Q6_K, `R` rows by `N` tokens: `d · Σ_g sc_g · Σ (q − 32)·y` over the sixteen 16-value
    /// groups, then times each block's `dy`. In the tile layout vectors 0 and 1 hold the first
    /// group of each sub-block and vectors 2 and 3 the second, so each pair chains into one
    /// integer sum; the −32 enters as the start of that chain (`−32 Σ y` of the group, in one
    /// of its two lanes) and the i8 scales as one integer multiply per group.
    // The row and token indices walk their arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn q6_k_tile<const _UNUSED: bool, const R: usize, const N: usize>(
        rows: &[&[u8]],
        a: &[&[SuperQ8]],
        span: Span<'_>,
        out: &mut [f32],
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        if span.first > 0 {
            for r in 0..R {
                for t in 0..N {
                    // SAFETY: a carry holds sixteen f32.
                    acc[r][t] = unsafe { _mm512_loadu_ps(span.carry[r * N + t].as_ptr()) };
                }
            }
        }
        for i in span.first..span.end {
            let mut q = [[_mm512_setzero_si512(); 4]; R];
            let mut sc = [[_mm512_setzero_si512(); 2]; R];
            let mut d = [_mm512_setzero_ps(); R];
            for r in 0..R {
                let blk = &rows[r][i * Q6_K_BYTES..(i + 1) * Q6_K_BYTES];
                let b = blk.as_ptr();
                // A lone row streams; a tile's rows ask for the next tile's same block.
                prefetch_ahead(b, Q6_K_BYTES, (R > 1).then(|| R * rows[r].len()));
                // SAFETY: blk holds a whole super-block.
                d[r] = _mm512_set1_ps(unsafe { f16(b.add(Q6_K_D_AT)) });
                q[r] = unsafe { values_q6_k(b) };
                // Scales 2j (first group of sub-block j) and 2j + 1, each in both of j's lanes.
                let scales = unsafe { _mm_loadu_si128(b.add(Q6_K_SCALES_AT).cast()) };
                let first = _mm_shuffle_epi8(
                    scales,
                    _mm_set_epi8(14, 14, 12, 12, 10, 10, 8, 8, 6, 6, 4, 4, 2, 2, 0, 0),
                );
                let second = _mm_shuffle_epi8(
                    scales,
                    _mm_set_epi8(15, 15, 13, 13, 11, 11, 9, 9, 7, 7, 5, 5, 3, 3, 1, 1),
                );
                sc[r] = [_mm512_cvtepi8_epi32(first), _mm512_cvtepi8_epi32(second)];
            }
            for t in 0..N {
                let y = &a[t][i];
                let ys = [act(y, 0), act(y, 1), act(y, 2), act(y, 3)];
                let yd = lanes_f32(y);
                // SAFETY: q6_start holds two vectors of sixteen i32.
                let start = unsafe {
                    [
                        _mm512_loadu_si512(y.q6_start[0].as_ptr().cast()),
                        _mm512_loadu_si512(y.q6_start[1].as_ptr().cast()),
                    ]
                };
                for r in 0..R {
                    let first = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start[0], q[r][0], ys[0]), q[r][1], ys[1]);
                    let second = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(start[1], q[r][2], ys[2]), q[r][3], ys[3]);
                    let sum = _mm512_add_epi32(
                        _mm512_mullo_epi32(first, sc[r][0]),
                        _mm512_mullo_epi32(second, sc[r][1]),
                    );
                    let scale = _mm512_mul_ps(d[r], yd);
                    acc[r][t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(sum), acc[r][t]);
                }
            }
        }
        for r in 0..R {
            for t in 0..N {
                if span.end < a[0].len() {
                    // SAFETY: a carry holds sixteen f32.
                    unsafe { _mm512_storeu_ps(span.carry[r * N + t].as_mut_ptr(), acc[r][t]) };
                } else {
                    out[r * N + t] = _mm512_reduce_add_ps(acc[r][t]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::kernels::tests::{activations, block_counts, f64_dot, random_bytes, random_row};
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
    #[test]
    fn every_row_and_token_count_is_bit_identical_to_one_row_by_one_token() {
        let mut rng = Rng::new(22);
        // Past a block of rows whose sums are carried, and (the longest rows) several runs of
        // groups, the last one short; for the 32-value formats a last run of whole groups and a
        // short group, three and one blocks wide (laid out four and two wide).
        let (most_rows, most_tokens) = (TASK_ROWS + MAX_TILE_ROWS + 1, 2 * MAX_TILE_TOKENS + 1);
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
                    for nr in [1, 2, 3, 2 * MAX_TILE_ROWS + 1, most_rows] {
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
                let shared: f32 = s.s[j * per_lane..(j + 1) * per_lane].iter().sum();
                assert_eq!(shared, b.s, "{count} blocks: block {j}'s s over its lanes");
                if width == SUBS {
                    let first: i32 = b.qs[..16].iter().map(|&q| i32::from(q)).sum();
                    assert_eq!(
                        (s.q6_start[0][2 * j], s.q6_start[1][2 * j + 1]),
                        (-32 * first, -32 * (b.sum - first))
                    );
                    assert_eq!((s.q6_start[0][2 * j + 1], s.q6_start[1][2 * j]), (0, 0));
                }
                // The lanes' starts add up to −128 times the block's sum.
                let starts: i32 = s.q8_start[j * per_lane..(j + 1) * per_lane].iter().sum();
                assert_eq!(starts, -128 * b.sum, "{count} blocks: block {j}");
            }
            // Per block in the order AVX2's horizontal add leaves them: lane k of vphaddd(x, y)
            // on 128-bit lanes is x's pair k (k = 0, 1), y's pair k − 2 (k = 2, 3), then the
            // same in the upper lane; x's lane pairs hold blocks 0..4, y's blocks 4..8.
            for k in 0..SUBS {
                let (lane, pair) = (k / 4, k % 4);
                let j = if pair < 2 {
                    2 * lane + pair
                } else {
                    4 + 2 * lane + pair - 2
                };
                let (d, ds, shared, start) = match a.get(j) {
                    Some(b) => (b.d, b.d * b.sum as f32, b.s, -128 * b.sum),
                    None => (0.0, 0.0, 0.0, 0),
                };
                assert_eq!(
                    (s.d8[k], s.ds8[k], s.s8[k], s.start8[k]),
                    (d, ds, shared, start),
                    "{count} blocks: {k}"
                );
            }
            assert!(seen.iter().zip(s.qs).all(|(&seen, q)| seen || q == 0));
            assert!(s.q8_start[count * per_lane..].iter().all(|&x| x == 0));
        }
    }

    /// The packed row holds every weight (offset by 128) where the activations hold the value it
    /// multiplies, and every block's scale where its lanes find it.
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
                    assert_eq!(
                        packed[g * QK_K + tile_position(width, j, e)],
                        q ^ 0x80,
                        "block {i} value {e}"
                    );
                }
                assert_eq!(packed[scales_at + 16 * g + 2 * j..][..2], block[..2], "block {i} scale");
            }
            // Past the last block: zero weights, zero scales.
            let filled = blocks - (groups - 1) * SUBS;
            for j in filled..last {
                for e in 0..QK {
                    assert_eq!(packed[(groups - 1) * QK_K + tile_position(last, j, e)], 0x80);
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
            let k = super_kernels(dtype, Isa::Avx512)
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
            let pack: fn(&[u8], &mut [u8]) = match super_kernels(QuantType::Q6K, Isa::Avx512).map(|k| k.packing) {
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
}
