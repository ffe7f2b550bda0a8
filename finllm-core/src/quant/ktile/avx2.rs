//! The tiles on AVX2 with FMA and F16C (no VNNI): the same packed rows and the same activation
//! layout ([`SuperQ8`]) that the AVX-512 tiles read (before the panels took their formats),
//! read as 32-byte halves.
//!
//! Each 64-byte vector of the layout is two halves: the low halves of a group's vectors hold the
//! values of lanes 0..8 (one block per lane, as on AVX-512), the high halves those of lanes
//! 8..16, so each half chains on its own. `vpmaddubsw` multiplies unsigned weight bytes by
//! signed activation bytes into 16-bit pair sums; for weights below 32 (the 4- and 5-bit
//! formats) four of those add up in 16 bits without overflow (4 · 2 · 31 · 128 = 31,744), so a
//! chain takes one `vpmaddwd` to 32 bits, one conversion and one multiply-add by its lanes'
//! scales per group, where a block-at-a-time kernel takes those per block. Q6_K's 6-bit values
//! chain two at a time and take their 8-bit scales in the `vpmaddwd`; Q8_0's signed weights go
//! through the sign trick and widen per half.
//!
//! A tile is one row by up to eight tokens, sixteen on short rows of the 4- and 5-bit block
//! formats (the row's unpacked group takes eight of the sixteen registers, so a second row would
//! not fit; the tokens' accumulators stay in memory). Every result is bit-identical to
//! the one-row, one-token tile on that row and token: each takes the same operations in the same
//! order. The integer sums are exact, so the results agree with the scalar references to float
//! rounding.

// Indices walk the halves, vectors and tokens in lockstep; iterator adaptors would bring
// closures, which do not take the target features of the function around them.
#![allow(clippy::needless_range_loop)]

use super::*;
use crate::quant::blocks::{Q6_K_BYTES, Q6_K_D_AT, Q6_K_QH_AT, Q6_K_SCALES_AT};
use std::arch::x86_64::*;

// The safe wrappers are only handed out by `super_kernels` after `Isa::detect` /
// `Isa::available` confirmed AVX2, FMA and F16C on this CPU.

/// Groups a Q6_K tile takes per run: its groups are the largest of the 4- to 6-bit formats (210
/// bytes of weights). With the sums per 16 values read from the token's 64 bytes of
/// [`SuperQ8::sums16`] (no longer the 256 bytes of per-lane starts), whole runs read 90-94
/// GMAC/s in the kernels bench against half runs' 88-90 (the half runs had read 81 against 70).
const Q6_K_CHUNK: usize = CHUNK_GROUPS;

/// Calls `$imp::<$c, N>` for the tile's token count (checked first): one to eight, or
/// `$short`, the format's count on short rows (only the formats that take sixteen there have a
/// tile of sixteen built).
macro_rules! by_tokens {
    ($imp:ident, $c:expr, $short:expr, $row:expr, $a:expr, $span:expr, $out:expr) => {
        match $a.len() {
            1 => $imp::<{ $c }, 1>($row, $a, $span, $out),
            2 => $imp::<{ $c }, 2>($row, $a, $span, $out),
            3 => $imp::<{ $c }, 3>($row, $a, $span, $out),
            4 => $imp::<{ $c }, 4>($row, $a, $span, $out),
            5 => $imp::<{ $c }, 5>($row, $a, $span, $out),
            6 => $imp::<{ $c }, 6>($row, $a, $span, $out),
            7 => $imp::<{ $c }, 7>($row, $a, $span, $out),
            8 => $imp::<{ $c }, 8>($row, $a, $span, $out),
            t if t == $short => $imp::<{ $c }, { $short }>($row, $a, $span, $out),
            t => unreachable!("tile of {t} tokens passed the check"),
        }
    };
}

/// Every row of a call through `drive`, one row by up to eight tokens at a time (`$short` on
/// short rows) by `$imp::<$c, N>` over runs of `$chunk` groups, a single token by `$one`.
/// SAFETY (of the expansion): only called after the entry's checks, which bound every load of
/// the tile; the features are present (see above).
macro_rules! run {
    ($imp:ident, $c:expr, $one:ident, $chunk:expr, $short:expr, $rows:expr, $row_bytes:expr, $a:expr, $out:expr) => {
        drive(
            $rows,
            $row_bytes,
            $a,
            $out,
            Walk {
                chunk: $chunk,
                short_row_tokens: $short,
            },
            |w, y, s, o| unsafe { by_tokens!($imp, $c, $short, w, y, s, o) },
            |w, y, o| unsafe { $one(w, $row_bytes, y, o) },
        )
    };
}

/// `$name(rows, row_bytes, a, out)`: every row times a single token, one row at a time, by the
/// format's one-token tile `$imp`, inlined into the loop.
macro_rules! one_token {
    ($name:ident, $imp:ident, $c:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(rows: &[u8], row_bytes: usize, a: &[SuperQ8], out: &mut [f32]) {
            for (o, row) in out.iter_mut().zip(rows.chunks_exact(row_bytes)) {
                let mut y = [0f32];
                // SAFETY: as for the tile's caller: the rows and activations were checked.
                unsafe { $imp::<{ $c }, 1>(row, &[a], Span::whole(a.len()), &mut y) };
                *o = y[0];
            }
        }
    };
}

block_tile_entries!();
k_tile_entries!();

/// Prefetch `bytes` at `b` ahead of use ([`prefetch_ahead`]): a lone token streams the rows; a
/// tile of several tokens asks for the same place in the next row.
#[inline(always)]
fn ahead<const N: usize>(b: *const u8, bytes: usize, row_len: usize) {
    prefetch_ahead(b, bytes, (N > 1).then_some(row_len));
}

/// An f16 at `p` (unaligned) as f32.
#[inline(always)]
unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees 2 readable bytes at p.
    let bits = unsafe { p.cast::<u16>().read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// Half `h` of vector `v` (0..4) of a group's activations.
#[inline(always)]
unsafe fn act(y: &SuperQ8, v: usize, h: usize) -> __m256i {
    // SAFETY: qs holds 256 bytes, 64-byte aligned (`repr(align(64))`).
    unsafe { _mm256_load_si256(y.qs.as_ptr().add(64 * v + 32 * h).cast()) }
}

/// Lanes `8 h..8 h + 8` of sixteen per-lane values.
#[inline(always)]
unsafe fn half_f32(x: &[f32; LANES], h: usize) -> __m256 {
    // SAFETY: x holds sixteen f32.
    unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * h)) }
}

/// The sum of the eight lanes, in the order [`sums_of_eight`] takes for each of its vectors:
/// neighbouring lanes in pairs, neighbouring pairs, then the two 128-bit halves.
#[inline(always)]
unsafe fn sum_lanes(x: __m256) -> f32 {
    let q = _mm256_hadd_ps(_mm256_hadd_ps(x, x), _mm256_hadd_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(q), _mm256_extractf128_ps::<1>(q)))
}

/// The sums of the eight lanes of eight vectors at once (a transpose by horizontal adds), each
/// added in the same order as [`sum_lanes`] adds one vector's, so a tile of eight tokens gives
/// the bits of eight one-token tiles: nine instructions where eight [`sum_lanes`] take about
/// forty (the kernels bench's tiles on 576-value rows read within noise of the old sums).
#[inline(always)]
unsafe fn sums_of_eight(x: &[__m256; 8]) -> __m256 {
    let q0 = _mm256_hadd_ps(_mm256_hadd_ps(x[0], x[1]), _mm256_hadd_ps(x[2], x[3]));
    let q1 = _mm256_hadd_ps(_mm256_hadd_ps(x[4], x[5]), _mm256_hadd_ps(x[6], x[7]));
    // Lane t of q0 (t < 4) holds the first half's sum of x[t], lane 4 + t its second half's.
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(q0, q1),
        _mm256_permute2f128_ps::<0x31>(q0, q1),
    )
}

/// A tile's accumulators at the start of its span: zero at the row's first group, else the
/// lanes carried from the span before.
#[inline(always)]
unsafe fn carried<const N: usize>(span: &Span<'_>) -> [__m256; N] {
    let mut acc = [_mm256_setzero_ps(); N];
    if span.first > 0 {
        for t in 0..N {
            // SAFETY: a carry holds sixteen f32 (the tile uses eight).
            acc[t] = unsafe { _mm256_loadu_ps(span.carry[t].as_ptr()) };
        }
    }
    acc
}

/// A tile's accumulators at the end of its span: carried to the next span, or after the row's
/// last group (of `groups`) each token's lanes summed into `out`.
#[inline(always)]
unsafe fn finish<const N: usize>(acc: [__m256; N], span: Span<'_>, groups: usize, out: &mut [f32]) {
    if span.end < groups {
        for t in 0..N {
            // SAFETY: a carry holds sixteen f32.
            unsafe { _mm256_storeu_ps(span.carry[t].as_mut_ptr(), acc[t]) };
        }
    } else if N.is_multiple_of(8) {
        for (o, eight) in out.chunks_exact_mut(8).zip(acc.chunks_exact(8)) {
            let eight: &[__m256; 8] = eight.try_into().expect("eight tokens");
            // SAFETY: o holds 8 results.
            unsafe { _mm256_storeu_ps(o.as_mut_ptr(), sums_of_eight(eight)) };
        }
    } else {
        for t in 0..N {
            out[t] = unsafe { sum_lanes(acc[t]) };
        }
    }
}

/// The low and high nibbles of every byte of `x`.
#[inline(always)]
unsafe fn nibbles(x: __m256i) -> (__m256i, __m256i) {
    let m4 = _mm256_set1_epi8(0x0f);
    (_mm256_and_si256(x, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(x), m4))
}

/// The 4-bit values of a group of `V` vectors at `b`, kept as `nibble_at` says for a group
/// `2 V` blocks wide, as `[half][vector]`. (No closures here or in the tiles: a closure does
/// not take the features of the function around it, and its intrinsics would become calls.)
#[inline(always)]
unsafe fn q4_values<const V: usize>(b: *const u8) -> [[__m256i; V]; 2] {
    let mut w = [[_mm256_setzero_si256(); V]; 2];
    // SAFETY: the caller guarantees the group's 32 V bytes of values at b.
    let (l0, h0) = nibbles(unsafe { _mm256_loadu_si256(b.cast()) });
    if V == 1 {
        // Positions 0..32 in the low nibbles, 32..64 in the high ones.
        (w[0][0], w[1][0]) = (l0, h0);
        return w;
    }
    let (l1, h1) = nibbles(unsafe { _mm256_loadu_si256(b.add(32).cast()) });
    if V == 2 {
        // Vector 0 in the low nibbles of the 64 bytes, vector 1 in the high ones.
        (w[0][0], w[1][0], w[0][1], w[1][1]) = (l0, l1, h0, h1);
        return w;
    }
    // Bytes 0..64 hold vectors 0 (low nibbles) and 2 (high), bytes 64..128 vectors 1 and 3.
    let (l2, h2) = nibbles(unsafe { _mm256_loadu_si256(b.add(64).cast()) });
    let (l3, h3) = nibbles(unsafe { _mm256_loadu_si256(b.add(96).cast()) });
    (w[0][0], w[1][0], w[0][1], w[1][1]) = (l0, l1, l2, l3);
    (w[0][2], w[1][2], w[0][3], w[1][3]) = (h0, h1, h2, h3);
    w
}

/// 16 in every byte `k` whose bit `k` of `bits` is set, 0 in the others.
#[inline(always)]
unsafe fn sixteen_where(bits: u32) -> __m256i {
    // Byte k takes byte k / 8 of the bits (each 128-bit lane has all four), then its own bit.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

/// Adds 16 to the values whose fifth bit is set: one 64-bit mask per vector at `masks`, bit `i`
/// for byte `i` of the vector (the low 32 bits the first half's).
#[inline(always)]
unsafe fn add_fifth_bits<const V: usize>(w: &mut [[__m256i; V]; 2], masks: *const u8) {
    for v in 0..V {
        // SAFETY: the caller guarantees V masks at `masks`.
        let m = unsafe { masks.add(8 * v).cast::<u64>().read_unaligned() };
        w[0][v] = _mm256_add_epi8(w[0][v], sixteen_where(m as u32));
        w[1][v] = _mm256_add_epi8(w[1][v], sixteen_where((m >> 32) as u32));
    }
}

/// Adds 16 to the values of a whole group whose fifth bit is set, from 32 bytes at `planes`:
/// bit `m` of byte `k` for tile position `32 m + k`, half `m % 2` of vector `m / 2` (a shift
/// moves each half's bit to bit 4 of every byte; the mask drops what the 16-bit shifts carry
/// in from the neighbouring byte, which lands below bit 4 on a left shift of at most four and
/// above it on a right shift of at most three).
#[inline(always)]
unsafe fn add_fifth_planes(w: &mut [[__m256i; 4]; 2], planes: *const u8) {
    // SAFETY: the caller guarantees 32 bytes at `planes`.
    let p = unsafe { _mm256_loadu_si256(planes.cast()) };
    let m10 = _mm256_set1_epi8(0x10);
    let at_four = [
        _mm256_slli_epi16::<4>(p),
        _mm256_slli_epi16::<3>(p),
        _mm256_slli_epi16::<2>(p),
        _mm256_slli_epi16::<1>(p),
        p,
        _mm256_srli_epi16::<1>(p),
        _mm256_srli_epi16::<2>(p),
        _mm256_srli_epi16::<3>(p),
    ];
    for v in 0..4 {
        for h in 0..2 {
            // The nibbles leave bit 4 clear: or adds the 16.
            w[h][v] = _mm256_or_si256(w[h][v], _mm256_and_si256(at_four[2 * v + h], m10));
        }
    }
}

/// Eight per-block f32 values spread to the lanes of half `h`: lane `l` takes block
/// `(8 h + l) / per` (`per` lanes a block: 2 in a whole group, 4 or 8 in a short one).
#[inline(always)]
unsafe fn spread(x: __m256, per: usize, h: usize) -> __m256 {
    let idx = match (per, h) {
        (2, 0) => _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3),
        (2, _) => _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7),
        (4, 0) => _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1),
        (4, _) => _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3),
        (_, 0) => _mm256_setzero_si256(),
        _ => _mm256_set1_epi32(1),
    };
    _mm256_permutevar8x32_ps(x, idx)
}

/// Eight per-block values (in block order) in [`PAIR_ORDER`].
#[inline(always)]
unsafe fn in_pair_order(x: __m256) -> __m256 {
    _mm256_permutevar8x32_ps(x, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7))
}

/// Per-block values of a group `2 V` blocks wide (in block order) spread to the lanes of the
/// halves' lane pairs added ([`pair_lanes`]): [`PAIR_ORDER`] for a whole group, each block
/// twice (four blocks) or four times (two).
#[inline(always)]
unsafe fn in_pair_lanes<const V: usize>(x: __m256) -> __m256 {
    match V {
        4 => unsafe { in_pair_order(x) },
        2 => _mm256_permutevar8x32_ps(x, _mm256_setr_epi32(0, 0, 2, 2, 1, 1, 3, 3)),
        _ => _mm256_permutevar8x32_ps(x, _mm256_setr_epi32(0, 0, 1, 1, 0, 0, 1, 1)),
    }
}

/// Eight per-block floats of the activations, already in [`PAIR_ORDER`].
#[inline(always)]
unsafe fn pair_f32(x: &[f32; SUBS]) -> __m256 {
    // SAFETY: x holds eight f32.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// Eight per-block integers of the activations, already in [`PAIR_ORDER`].
#[inline(always)]
unsafe fn pair_i32(x: &[i32; SUBS]) -> __m256i {
    // SAFETY: x holds eight i32.
    unsafe { _mm256_loadu_si256(x.as_ptr().cast()) }
}

/// Eight per-sub-block bytes in [`PAIR_ORDER`], times `d`.
#[inline(always)]
unsafe fn pair_times(d: f32, v: [u8; SUBS]) -> __m256 {
    let x = _mm_cvtsi64_si128(i64::from_le_bytes(v));
    let ordered = _mm_shuffle_epi8(x, _mm_setr_epi8(0, 1, 4, 5, 2, 3, 6, 7, -1, -1, -1, -1, -1, -1, -1, -1));
    _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(ordered)))
}

/// Chain `h`'s pair sums: the `V` halves' `vpmaddubsw` added in 16 bits (exact for weights
/// below 32: 4 · 2 · 31 · 128 < 2^15).
#[inline(always)]
unsafe fn pair_sums<const V: usize>(w: &[__m256i; V], y: &SuperQ8, h: usize) -> __m256i {
    let mut sum = _mm256_maddubs_epi16(w[0], act(y, 0, h));
    for v in 1..V {
        sum = _mm256_add_epi16(sum, _mm256_maddubs_epi16(w[v], act(y, v, h)));
    }
    sum
}

/// The integer dot of chain `h`: its [`pair_sums`] widened to the eight lanes.
#[inline(always)]
unsafe fn chain<const V: usize>(w: &[__m256i; V], y: &SuperQ8, h: usize) -> __m256i {
    _mm256_madd_epi16(unsafe { pair_sums(w, y, h) }, _mm256_set1_epi16(1))
}

/// The integer dots of a group's two chains, their lanes added in pairs: what
/// `vphaddd(chain(w[0]), chain(w[1]))` gives. Where the sums fit (`in_16_bits`: weights below
/// 16, 8 · 2 · 15 · 128 < 2^15; or below 32 in a short group, 4 · 2 · 31 · 128 < 2^15) the
/// pairs are added in 16 bits first: one `vphaddw` and one widening instead of two widenings
/// and a `vphaddd`, the same integers with one multiply less per token and group, on the
/// ports the `vpmaddubsw` need.
#[inline(always)]
unsafe fn group_dot<const V: usize>(w: &[[__m256i; V]; 2], y: &SuperQ8, in_16_bits: bool) -> __m256i {
    if in_16_bits {
        let pairs = _mm256_hadd_epi16(unsafe { pair_sums(&w[0], y, 0) }, unsafe { pair_sums(&w[1], y, 1) });
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    } else {
        _mm256_hadd_epi32(unsafe { chain(&w[0], y, 0) }, unsafe { chain(&w[1], y, 1) })
    }
}

/// The body of a packed format's tile (one row by `N` tokens) over its span's groups: each whole
/// group by `$group::<4, N>`, the row's last group (in the span that ends the row) at its width
/// (4, 2 or 1 vectors); then the lanes carried to the next span, or each result's lanes summed.
/// `$value_bytes`: bytes of values per block in the packed row.
macro_rules! packed_groups {
    ($group:ident $(:: <$kind:ident>)?, $value_bytes:expr, $row:expr, $a:expr, $span:expr, $out:expr) => {{
        let groups = $a[0].len();
        let width = group_width($a[0][groups - 1].blocks);
        let scales_at = ((groups - 1) * SUBS + width) * $value_bytes;
        let mut acc = unsafe { carried::<N>(&$span) };
        // SAFETY (all four calls): the wrapper checked the rows' packed length.
        for g in $span.first..$span.end.min(groups - 1) {
            unsafe { $group::<4, N $(, $kind)?>($row, $a, g, scales_at, &mut acc) };
        }
        if $span.end == groups {
            let last = groups - 1;
            match width {
                SUBS => unsafe { $group::<4, N $(, $kind)?>($row, $a, last, scales_at, &mut acc) },
                4 => unsafe { $group::<2, N $(, $kind)?>($row, $a, last, scales_at, &mut acc) },
                _ => unsafe { $group::<1, N $(, $kind)?>($row, $a, last, scales_at, &mut acc) },
            }
        }
        unsafe { finish(acc, $span, groups, $out) };
    }};
}

/// Q4_1, Q4_0, Q5_0 and Q5_1 (`KIND`), one row by `N` tokens, on rows packed by
/// [`pack_q4_1_row`], [`pack_q4_0_row`], [`pack_q5_0_row`] and [`pack_q5_1_row`]: each chain
/// scaled once by `d_w·d_y` per lane, Q4_1's and Q5_1's minimum term
/// `m · s` per lane, Q4_0's and Q5_0's dots started at `−8 Σ y` and `−16 Σ y`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_tile<const KIND: u8, const N: usize>(row: &[u8], a: &[&[SuperQ8]], span: Span<'_>, out: &mut [f32]) {
    packed_groups!(q4_group::<KIND>, QK / 2, row, a, span, out);
}

/// Group `g` of a [`q4_tile`]: `32 V` bytes of values at `g · 128`, the scales (and minima, or
/// fifth bits) at `scales_at` plus the group's tail.
#[inline(always)]
unsafe fn q4_group<const V: usize, const N: usize, const KIND: u8>(
    row: &[u8],
    a: &[&[SuperQ8]],
    g: usize,
    scales_at: usize,
    acc: &mut [__m256; N],
) {
    let b = row.as_ptr();
    let at = g * SUBS * QK / 2;
    ahead::<N>(b.wrapping_add(at), 32 * V, row.len());
    // SAFETY (loads): the caller guarantees the group's values and scales inside the row.
    let mut w = unsafe { q4_values::<V>(b.add(at)) };
    let f = small(KIND);
    let scales = b.wrapping_add(scales_at + SUBS * f.tail_bytes() * g);
    // The tails lie apart from the values, at the row's end: asked for alike.
    ahead::<N>(scales, 2 * V * f.tail_bytes(), row.len());
    let (minima_at, masks_at) = f.minima_and_masks_at(2 * V);
    if f.fifth_bits {
        unsafe { add_fifth_bits(&mut w, scales.add(masks_at)) };
    }
    let d8 = _mm256_cvtph_ps(unsafe { load_f16s::<V>(scales) });
    let m8 = if f.minima {
        _mm256_cvtph_ps(unsafe { load_f16s::<V>(scales.add(minima_at)) })
    } else {
        _mm256_setzero_ps()
    };
    // The halves' lane pairs added into eight lanes (one per block of a whole group, in
    // PAIR_ORDER; two or four per block of a short one), so the conversion and the scaling run
    // once per group and token, not per half. Five-bit values overflow 16 bits only in a whole
    // group.
    let (wd, wm) = (in_pair_lanes::<V>(d8), in_pair_lanes::<V>(m8));
    let in_16_bits = V < 4 || !f.fifth_bits;
    for (t, acc) in acc.iter_mut().enumerate() {
        let y = &a[t][g];
        let mut dot = group_dot(&w, y, in_16_bits);
        // −8 Σ y (Q4_0) or −16 Σ y (Q5_0) per lane, exact: start8 is −128 Σ y.
        match KIND {
            Q4_0 => dot = _mm256_add_epi32(dot, _mm256_srai_epi32::<4>(pair_i32(&y.start8))),
            Q5_0 => dot = _mm256_add_epi32(dot, _mm256_srai_epi32::<3>(pair_i32(&y.start8))),
            _ => {}
        }
        let scale = _mm256_mul_ps(wd, pair_f32(&y.d8));
        *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), *acc);
        if f.minima {
            *acc = _mm256_fmadd_ps(wm, pair_f32(&y.s8), *acc);
        }
    }
}

/// Q8_0, one row by `N` tokens, on rows packed by [`pack_q8_0_row`]: `|w|` once per row and
/// group; per token `|w| · sign(y, w)` in pair sums, widened per half (8-bit products overflow
/// 16 bits two halves at a time), then scaled once by `d_w·d_y` per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_0_tile<const _UNUSED: bool, const N: usize>(
    row: &[u8],
    a: &[&[SuperQ8]],
    span: Span<'_>,
    out: &mut [f32],
) {
    packed_groups!(q8_0_group, QK, row, a, span, out);
}

/// Group `g` of a [`q8_0_tile`]: `V` vectors of values at `g · 256`, eight f16 scales at
/// `scales_at + 16 g`.
#[inline(always)]
unsafe fn q8_0_group<const V: usize, const N: usize>(
    row: &[u8],
    a: &[&[SuperQ8]],
    g: usize,
    scales_at: usize,
    acc: &mut [__m256; N],
) {
    let b = row.as_ptr();
    ahead::<N>(b.wrapping_add(g * QK_K), 64 * V, row.len());
    // The scales lie apart from the values, at the row's end: asked for alike.
    ahead::<N>(b.wrapping_add(scales_at + 16 * g), 4 * V, row.len());
    let mut w = [[_mm256_setzero_si256(); V]; 2];
    let mut aw = w;
    for h in 0..2 {
        for v in 0..V {
            // SAFETY: the caller guarantees the group's values and scales inside the row.
            w[h][v] = unsafe { _mm256_loadu_si256(b.add(g * QK_K + 64 * v + 32 * h).cast()) };
            aw[h][v] = _mm256_sign_epi8(w[h][v], w[h][v]);
        }
    }
    let d8 = _mm256_cvtph_ps(unsafe { load_f16s::<V>(b.add(scales_at + 16 * g)) });
    let ones = _mm256_set1_epi16(1);
    for h in 0..2 {
        let wd = spread(d8, SUBS / V, h);
        for (t, acc) in acc.iter_mut().enumerate() {
            let y = &a[t][g];
            let mut dot = _mm256_setzero_si256();
            for v in 0..V {
                let p = _mm256_maddubs_epi16(aw[h][v], _mm256_sign_epi8(act(y, v, h), w[h][v]));
                dot = _mm256_add_epi32(dot, _mm256_madd_epi16(p, ones));
            }
            let scale = _mm256_mul_ps(wd, half_f32(&y.d, h));
            *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), *acc);
        }
    }
}

/// Q4_K (`HIGH = false`) and Q5_K (`HIGH = true`), one row by `N` tokens, on rows packed by
/// [`pack_q4_k_row`] / [`pack_q5_k_row`]: `Σ_j d·sc_j·dy_j·(q·y)_j − dmin·m_j·dy_j·Σy_j`, each
/// chain's four pair sums added in 16 bits, the two halves' lane pairs into one lane per
/// sub-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_5_k_tile<const HIGH: bool, const N: usize>(row: &[u8], a: &[&[SuperQ8]], span: Span<'_>, out: &mut [f32]) {
    let (bytes, tail) = if HIGH {
        (Q5_K_PACKED_BYTES, Q5_K_PACKED_HIGH_AT + 32)
    } else {
        (Q4_K_PACKED_BYTES, 128)
    };
    let mut acc = unsafe { carried::<N>(&span) };
    for i in span.first..span.end {
        // SAFETY (this block): the wrapper checked that the row holds a packed super-block per
        // group, `bytes` long.
        let b = unsafe { row.as_ptr().add(i * bytes) };
        ahead::<N>(b, bytes, row.len());
        let mut w = unsafe { q4_values::<4>(b) };
        if HIGH {
            unsafe { add_fifth_planes(&mut w, b.add(Q5_K_PACKED_HIGH_AT)) };
        }
        let (s8, m8, d, dmin) = unsafe {
            (
                b.add(tail).cast::<[u8; SUBS]>().read_unaligned(),
                b.add(tail + SUBS).cast::<[u8; SUBS]>().read_unaligned(),
                f16(b.add(tail + 2 * SUBS)),
                f16(b.add(tail + 2 * SUBS + 2)),
            )
        };
        // The halves' lane pairs added into one lane per sub-block, in PAIR_ORDER.
        let (sc, mins) = (pair_times(d, s8), pair_times(dmin, m8));
        for (t, acc) in acc.iter_mut().enumerate() {
            let y = &a[t][i];
            let dot = group_dot(&w, y, !HIGH);
            let scale = _mm256_mul_ps(sc, pair_f32(&y.d8));
            *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), *acc);
            *acc = _mm256_fnmadd_ps(mins, pair_f32(&y.ds8), *acc);
        }
    }
    unsafe { finish(acc, span, a[0].len(), out) };
}

/// Q6_K, one row by `N` tokens, on rows packed by [`pack_q6_k_row`]: per half, the first
/// 16-value group of each sub-block (vectors 0 and 1) and the second (2 and 3) chain two pair
/// sums each in 16 bits (6-bit values: 2 · 2 · 63 · 128 < 2^15) and take their i8 scales in the
/// widening `vpmaddwd`; the halves' lane pairs are added into one lane per sub-block (in
/// [`PAIR_ORDER`]), where the −32 enters as `−32 Σ sc · Σ y` (one `vpmaddwd` of the row's
/// scales by the token's 16-value sums, [`SuperQ8::sums16`]) and `d · dy` once per lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k_tile<const _UNUSED: bool, const N: usize>(
    row: &[u8],
    a: &[&[SuperQ8]],
    span: Span<'_>,
    out: &mut [f32],
) {
    let mut acc = unsafe { carried::<N>(&span) };
    let m30 = _mm256_set1_epi8(0x30);
    for i in span.first..span.end {
        let blk = &row[i * Q6_K_BYTES..(i + 1) * Q6_K_BYTES];
        let b = blk.as_ptr();
        ahead::<N>(b, Q6_K_BYTES, row.len());
        // SAFETY (loads): blk holds a whole super-block.
        let d = _mm256_set1_ps(unsafe { f16(b.add(Q6_K_D_AT)) });
        let low = unsafe { q4_values::<4>(b) };
        let scales = unsafe { _mm_loadu_si128(b.add(Q6_K_SCALES_AT).cast()) };
        let mut q = [[_mm256_setzero_si256(); 4]; 2];
        let mut first = [_mm256_setzero_si256(); 2];
        let mut second = [_mm256_setzero_si256(); 2];
        for h in 0..2 {
            // Bits 2v, 2v + 1 of the high bytes of tile positions 64 v + 32 h.. moved to bits 4
            // and 5 (the mask drops what the 16-bit shifts carry in from neighbouring bytes).
            let hb = unsafe { _mm256_loadu_si256(b.add(Q6_K_QH_AT + 32 * h).cast()) };
            let high = [
                _mm256_slli_epi16::<4>(hb),
                _mm256_slli_epi16::<2>(hb),
                hb,
                _mm256_srli_epi16::<2>(hb),
            ];
            for v in 0..4 {
                q[h][v] = _mm256_or_si256(low[h][v], _mm256_and_si256(high[v], m30));
            }
            // 16-bit lane k of the half belongs to sub-block 4 h + k / 4, whose first group's
            // scale is byte 2 (4 h + k / 4), its second's the byte after.
            let (first_at, second_at) = if h == 0 {
                (
                    _mm_setr_epi8(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6),
                    _mm_setr_epi8(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7),
                )
            } else {
                (
                    _mm_setr_epi8(8, 8, 8, 8, 10, 10, 10, 10, 12, 12, 12, 12, 14, 14, 14, 14),
                    _mm_setr_epi8(9, 9, 9, 9, 11, 11, 11, 11, 13, 13, 13, 13, 15, 15, 15, 15),
                )
            };
            first[h] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, first_at));
            second[h] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, second_at));
        }
        // The scales of each sub-block's two groups side by side, sub-blocks in PAIR_ORDER (as
        // the token's sums16).
        let paired = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
            scales,
            _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15),
        ));
        for (t, acc) in acc.iter_mut().enumerate() {
            let y = &a[t][i];
            let mut sums = [_mm256_setzero_si256(); 2];
            for h in 0..2 {
                let p0 = _mm256_maddubs_epi16(q[h][0], act(y, 0, h));
                let p1 = _mm256_maddubs_epi16(q[h][1], act(y, 1, h));
                let p2 = _mm256_maddubs_epi16(q[h][2], act(y, 2, h));
                let p3 = _mm256_maddubs_epi16(q[h][3], act(y, 3, h));
                sums[h] = _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_add_epi16(p0, p1), first[h]),
                    _mm256_madd_epi16(_mm256_add_epi16(p2, p3), second[h]),
                );
            }
            // SAFETY: sums16 holds sixteen i16.
            let ysums = unsafe { _mm256_loadu_si256(y.sums16.as_ptr().cast()) };
            let start = _mm256_slli_epi32::<5>(_mm256_madd_epi16(paired, ysums));
            let sum = _mm256_sub_epi32(_mm256_hadd_epi32(sums[0], sums[1]), start);
            let scale = _mm256_mul_ps(d, pair_f32(&y.d8));
            *acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sum), *acc);
        }
    }
    unsafe { finish(acc, span, a[0].len(), out) };
}
