//! What the x86 tiles share: the checks of a call, and the walk over its tiles.

use super::*;

/// The formats the 4-bit tiles read (their `KIND` switch).
pub(super) const Q4_1: u8 = 0;
pub(super) const Q4_0: u8 = 1;
pub(super) const Q5_0: u8 = 2;
pub(super) const Q5_1: u8 = 3;

/// Prefetch the `bytes` of weights at `b` ahead of use: where the caller streams (`next` is
/// `None`: a lone row, or a lone token) [`STREAM_AHEAD`] ahead into L2; else the same place
/// `next` bytes further on (where the caller's next tile reads) into L1.
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
///
/// The first token's groups are checked on every call; the others' only in debug builds. The
/// tiles take the row's layout from the first token's groups and read every token's
/// activations as fixed-size arrays, so what bounds their loads is checked always. A token
/// whose groups differed could only give wrong numbers, and the activations of a call come
/// from one [`supers_from_blocks`] per token over the same count of blocks. Reading every
/// group of every token for every 16-row task was 2% of a prefill profile (SmolLM2 Q4_0, 256
/// tokens: 768 cache lines a task).
pub(super) fn check_packed(
    rows: &[u8],
    row_bytes: usize,
    a: &[SuperQ8],
    out: &[&mut [f32]],
    packed_bytes: fn(usize) -> usize,
) {
    let groups = check(rows, row_bytes, a, out);
    let last = a.get(groups.wrapping_sub(1)).map_or(SUBS, |s| s.blocks);
    let whole_but_last = |x: &[SuperQ8]| {
        x.iter()
            .enumerate()
            .all(|(g, s)| s.blocks == if g + 1 == groups { last } else { SUBS })
    };
    assert!(
        (1..=SUBS).contains(&last) && whole_but_last(&a[..groups]),
        "activations in whole groups but the last"
    );
    debug_assert!(
        a.chunks(groups.max(1)).all(whole_but_last),
        "every token's activations in whole groups but the last, as the first's"
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

/// How [`drive`] walks a format's tiles: groups in runs of `chunk` (at most
/// [`CHUNK_GROUPS`]), tokens [`TILE_TOKENS`] at a time, or `short_row_tokens` (at most
/// [`MAX_TILE_TOKENS`]) on rows of at most [`SHORT_ROW_GROUPS`] groups.
pub(super) struct Walk {
    pub chunk: usize,
    pub short_row_tokens: usize,
}

/// The tiles of a call: rows in blocks of [`TASK_ROWS`], outermost; then tokens, as many a tile
/// as `walk` says; then groups in runs; one row a tile (on AVX2 a second row's unpacked group
/// would not fit the registers). A single token goes to `one_token`.
#[inline(always)]
pub(super) fn drive(
    rows: &[u8],
    row_bytes: usize,
    a: &[SuperQ8],
    out: &mut [&mut [f32]],
    walk: Walk,
    tile: impl Fn(&[u8], &[&[SuperQ8]], Span<'_>, &mut [f32]),
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
    // The weights' unpacking (shuffles, scales) is shared by the tile's tokens: a short row's
    // tile may take more (a remainder takes at most eight, the tiles' own shapes).
    let most = if groups <= SHORT_ROW_GROUPS {
        walk.short_row_tokens.min(MAX_TILE_TOKENS)
    } else {
        TILE_TOKENS
    };
    let chunk = walk.chunk;
    let mut results = [0f32; MAX_TILE_TOKENS];
    // Lanes carried between runs of groups: only a row longer than one run has any (16 KiB
    // to clear on every call otherwise).
    let mut carry_lanes;
    let carry: &mut [[f32; LANES]] = if groups > chunk {
        carry_lanes = [[0f32; LANES]; TASK_ROWS * MAX_TILE_TOKENS];
        &mut carry_lanes
    } else {
        &mut []
    };
    for r0 in (0..nrows).step_by(TASK_ROWS) {
        let r1 = nrows.min(r0 + TASK_ROWS);
        let mut t0 = 0;
        while t0 < n {
            let tn = if n - t0 >= most {
                most
            } else {
                (n - t0).min(TILE_TOKENS)
            };
            let ys: [&[SuperQ8]; MAX_TILE_TOKENS] =
                std::array::from_fn(|j| &a[(t0 + j.min(tn - 1)) * groups..][..groups]);
            for first in (0..groups).step_by(chunk) {
                let end = groups.min(first + chunk);
                for i in r0..r1 {
                    // Each row of the block carries its own lanes between runs of groups.
                    let at = (i - r0) * MAX_TILE_TOKENS;
                    let span = Span {
                        first,
                        end,
                        carry: carry.get_mut(at..at + tn).unwrap_or_default(),
                    };
                    tile(&rows[i * row_bytes..][..row_bytes], &ys[..tn], span, &mut results[..tn]);
                    if end < groups {
                        continue;
                    }
                    for (y, o) in results[..tn].iter().zip(&mut out[t0..t0 + tn]) {
                        o[i] = *y;
                    }
                }
            }
            t0 += tn;
        }
    }
}
