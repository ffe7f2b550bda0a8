//! Multi-token tiles for the block formats and the K-quants (Q4_K, Q5_K, Q6_K) on AVX2 (on
//! AVX-512 VNNI every one of them runs on the panels of [`super::gemm`]).
//!
//! The layout is described in 64-byte vectors of sixteen 32-bit lanes, as the AVX-512 tiles that
//! read it first did; the AVX2 tiles read each vector as two 32-byte halves. The one-row kernels
//! in [`super::kernels`] read activations as 32-element blocks, so each
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

/// Tokens a tile call takes (but the last of a call, and short rows of the formats that take
/// [`MAX_TILE_TOKENS`] there).
pub const TILE_TOKENS: usize = 8;

/// Most tokens one tile call takes: the 4- and 5-bit block formats take sixteen on rows of at
/// most [`SHORT_ROW_GROUPS`] groups. A tile's accumulators live in memory (AVX2's sixteen
/// registers hold the row's unpacked group), so twice the tokens cost no registers, and the
/// row's own work (its scales, the lanes' sums, the walk) is shared by twice as many. On
/// SmolLM2's 576-value rows (three groups, the last of two blocks) that work was a third of a
/// tile's time: the kernels bench's 16-row tasks, 256 tokens, read Q4_0 89.6 → 97 GMAC/s,
/// Q4_1 88.5 → 96, Q5_0 80.2 → 87.5. Q8_0 read 76.5 → 72.5, and on longer rows, whose
/// runs of groups then no longer stay in L1, Q4_0 fell from 120 to 85 (8,192 values): those
/// keep eight.
pub const MAX_TILE_TOKENS: usize = 16;

/// Groups of the rows that the 4- and 5-bit block formats' tiles take [`MAX_TILE_TOKENS`] at
/// a time: 1,024 values, whose activations for sixteen tokens (22 KiB of what the tile reads
/// of the 32 KiB of their layouts) stay in L1 while a task's rows go by.
pub const SHORT_ROW_GROUPS: usize = CHUNK_GROUPS / 2;

/// Most groups a tile takes of its rows before the next rows take the same groups: a
/// 2,048-value run, whose activations for eight tokens (20 KiB of a Q4_K tile's reads) stay in
/// L1 while the rows of a task pass over them. Taken whole, the 8,192-value rows of a down
/// projection read 80 KiB of activations per row from L2, and the AVX2 tiles ran 17-35% slower
/// than on 2,048-value rows. The format with the most bytes per group (Q8_0) takes half runs.
pub const CHUNK_GROUPS: usize = 8;

/// Groups a tile of the format with the most bytes per group (Q8_0) takes per run.
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
    /// The values at `tile_position` for the group's [`group_width`] (zeros elsewhere).
    pub qs: [i8; QK_K],
    /// The scale of the block each 32-bit lane belongs to.
    pub d: [f32; LANES],
    /// Where Q6_K's sums start (its weights enter offset by 32), per lane `k` of the pair form
    /// ([`PAIR_ORDER`]): `sums16[2 k]` is the sum of values 0..16 of block `PAIR_ORDER[k]`,
    /// `sums16[2 k + 1]` of values 16..32 (at most 2,032 in size); one `vpmaddwd` by the
    /// row's sixteen scales gives each block's start. Zeros in a short group (Q6_K rows are
    /// whole groups).
    pub sums16: [i16; 2 * SUBS],
    /// Per lane `k` of AVX2's horizontal add of the two halves' lane pairs, which adds the
    /// products of lanes [`pair_lanes`]`(k)` and the next (one block's: in a whole group each
    /// block has one such lane, in [`PAIR_ORDER`]; in a short group two or four): the scale
    /// `d` of their block, ...
    pub d8: [f32; SUBS],
    /// ... `d · Σ` the values they multiply, ...
    pub ds8: [f32; SUBS],
    /// ... their share of the block's `s` (`d · Σ`, rounded through f16 as [`BlockQ8::s`]; a
    /// block's lanes share it evenly, exactly: by a power of two), ...
    pub s8: [f32; SUBS],
    /// ... and `−128 Σ` the values they multiply (zeros past the group's blocks): where Q4_0's
    /// and Q5_0's dot products start, shifted (their weights enter offset by 8 and 16).
    pub start8: [i32; SUBS],
    /// Blocks the group holds: eight, or fewer in a short last group.
    pub blocks: usize,
}

/// The order of a whole group's eight blocks after AVX2's `vphaddd` of the lane pairs of its
/// two halves (lanes `2j`, `2j + 1` of the first half hold block `j`, of the second block
/// `4 + j`; each 128-bit lane adds its pairs of the first operand, then of the second).
pub const PAIR_ORDER: [usize; SUBS] = [0, 1, 4, 5, 2, 3, 6, 7];

/// The first of the two lanes (of sixteen) whose products lane `k` (0..8) of AVX2's horizontal
/// add of a group's two halves' lane pairs holds: the first half's in lanes `k % 4 < 2`, the
/// second's in the others, each 128-bit lane its own four lanes of either half.
pub const fn pair_lanes(k: usize) -> usize {
    8 * (k % 4 / 2) + 4 * (k / 4) + 2 * (k % 2)
}

impl Default for SuperQ8 {
    fn default() -> Self {
        Self {
            qs: [0; QK_K],
            d: [0.0; LANES],
            sums16: [0; 2 * SUBS],
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
        let mut s = Self::default();
        s.set_blocks(blocks);
        s
    }

    /// [`Self::from_blocks`] in place (whatever the layout held before).
    pub fn set_blocks(&mut self, blocks: &[BlockQ8]) {
        assert!(
            (1..=SUBS).contains(&blocks.len()),
            "one to eight activation blocks in a group"
        );
        let width = group_width(blocks.len());
        let s = self;
        s.blocks = blocks.len();
        s.sums16 = [0; 2 * SUBS];
        s.d = [0.0; LANES];
        // Per lane: `−128 ·` the sum of the values it multiplies, and its block's `s` shared out
        // over the block's lanes; what the pair lanes below add up.
        let mut q8_start = [0i32; LANES];
        let mut shares = [0f32; LANES];
        if blocks.len() < SUBS {
            // Zeros wherever no block lands.
            s.qs = [0; QK_K];
        }
        let sum = |x: &[i8]| x.iter().map(|&q| i32::from(q)).sum::<i32>();
        for (j, b) in blocks.iter().enumerate() {
            let lanes = LANES / width;
            s.d[j * lanes..(j + 1) * lanes].fill(b.d);
            shares[j * lanes..(j + 1) * lanes].fill(b.s / lanes as f32);
            if width == SUBS {
                // Runs of eight values (the common case, without a division per value): lane
                // 2j takes the first four of each run, lane 2j + 1 the last four.
                let (mut lane, mut first) = ([0i32; 2], 0);
                for v in 0..QK / 8 {
                    let run = &b.qs[8 * v..8 * v + 8];
                    s.qs[64 * v + 8 * j..64 * v + 8 * j + 8].copy_from_slice(run);
                    let (low, high) = (sum(&run[..4]), sum(&run[4..]));
                    lane[0] += low;
                    lane[1] += high;
                    if v < 2 {
                        first += low + high;
                    }
                }
                q8_start[2 * j] = -128 * lane[0];
                q8_start[2 * j + 1] = -128 * lane[1];
                // PAIR_ORDER is its own inverse: block j's lane is PAIR_ORDER[j]. A sum of
                // sixteen values of at most 127 in size fits 16 bits.
                let k = PAIR_ORDER[j];
                s.sums16[2 * k] = first as i16;
                s.sums16[2 * k + 1] = (lane[0] + lane[1] - first) as i16;
            } else {
                for (e, &q) in b.qs.iter().enumerate() {
                    s.qs[tile_position(width, j, e)] = q;
                }
            }
        }
        if width < SUBS {
            for (l, start) in q8_start.iter_mut().enumerate() {
                let lane_sum: i32 = (0..width / 2)
                    .map(|v| sum(&s.qs[64 * v + 4 * l..64 * v + 4 * l + 4]))
                    .sum();
                *start = -128 * lane_sum;
            }
        }
        for k in 0..SUBS {
            // Both lanes belong to one block (a block owns two, four or eight lanes from an
            // even one), so these are exact: the starts are integers, `s` shared out by a power
            // of two.
            let l = pair_lanes(k);
            s.d8[k] = s.d[l];
            s.s8[k] = shares[l] + shares[l + 1];
            s.start8[k] = q8_start[l] + q8_start[l + 1];
            s.ds8[k] = s.d8[k] * (s.start8[k] / -128) as f32;
        }
    }
}

/// [`SuperQ8::from_blocks`] for every eight blocks of `blocks` (the last group may be short).
pub fn supers_from_blocks(blocks: &[BlockQ8], out: &mut [SuperQ8]) {
    assert_eq!(blocks.len().div_ceil(SUBS), out.len(), "eight blocks per super-block");
    for (s, b) in out.iter_mut().zip(blocks.chunks(SUBS)) {
        s.set_blocks(b);
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
/// `tile_position` as they are (signed), then every group's f16 scales, one per block of its
/// width (zeros past the row's last block). The tiles then load the values as they are: no
/// shuffles per call. `out` holds [`q8_0_packed_row_bytes`].
pub fn pack_q8_0_row(row: &[u8], out: &mut [u8]) {
    use super::blocks::Q8_0_BYTES;
    let blocks = row.len() / Q8_0_BYTES;
    let layout = PackedRow::new(blocks, QK, 2);
    assert!(
        row.len() == blocks * Q8_0_BYTES && out.len() == layout.bytes,
        "a Q8_0 row of whole blocks and room for its packed layout"
    );
    // Zero weights and zero scales wherever no block of the row lands.
    out.fill(0);
    for (g, group) in row.chunks(SUBS * Q8_0_BYTES).enumerate() {
        for (j, block) in group.chunks_exact(Q8_0_BYTES).enumerate() {
            for (e, &q) in block[2..].iter().enumerate() {
                out[g * QK_K + tile_position(layout.width(g), j, e)] = q;
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

/// A Q4_1 row (`blocks` 20-byte blocks) in the tile layout (`SmallFormat::pack_row`): the
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
/// `tile_position` kept as `nibble_at` says (two loads and masks give the four vectors, where
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
/// four bits of each value at `tile_position` kept as `nibble_at` says, then 64 bytes of
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
/// blocks as a token's groups hold. The kernel walks tiles of one row by up to
/// [`MAX_TILE_TOKENS`] tokens: rows in blocks of
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

/// The tile kernels for `dtype` on `isa`: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K on
/// AVX2. Other formats and ISAs use the one-row kernels of [`super::kernels`] (on AVX-512 VNNI
/// these formats run on 32-row panels, [`super::gemm`]).
pub fn super_kernels(dtype: QuantType, isa: Isa) -> Option<SuperKernels> {
    #[cfg(target_arch = "x86_64")]
    {
        use QuantType as Q;
        let tile: SuperTileFn = match (isa, dtype) {
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

/// The entry points of an x86 tile module for the 32-value block formats, Q4_K and Q5_K (on
/// AVX-512 VNNI those run on 32-row panels, [`super::gemm`]), one per format (the call's checks, then the
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
                TILE_TOKENS,
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
                MAX_TILE_TOKENS,
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
                MAX_TILE_TOKENS,
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
                MAX_TILE_TOKENS,
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
                MAX_TILE_TOKENS,
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
                TILE_TOKENS,
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
                TILE_TOKENS,
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

/// The entry point of Q6_K's tiles, as [`block_tile_entries`].
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
                TILE_TOKENS,
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

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
