//! The AVX-512 tile of the format that does not run on the 32-row panels ([`crate::quant::gemm`]): Q6_K.

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

// Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q5_K run on 32-row panels here ([`crate::quant::gemm`]).
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
