//! bf16 weight rows times activations rounded to bf16, summed by the CPU's bf16 dot-product
//! instruction (AVX-512 BF16's `vdpbf16ps`: AMD Zen 4 and Intel Cooper Lake, Sapphire Rapids
//! and later).
//!
//! [`float`](super::float)'s kernels keep activations in f32 and convert every weight to f32
//! before a multiply-add: 16 products per instruction and one conversion per weight vector.
//! `vdpbf16ps` takes 32 bf16 pairs per instruction and needs no conversion, which doubles the
//! arithmetic rate of a prefill. The price is the activations' precision: each is rounded to
//! bf16 (8 significant bits, round to nearest even) once per matrix product, as llama.cpp does
//! for bf16 weights. The products of two bf16 values are exact in f32 and each lane's sum is
//! kept in f32.
//!
//! Lane `l` of a pair's accumulator sums elements `32k + 2l` and `32k + 2l + 1` for every `k`,
//! in order, and the sixteen lanes are added in a fixed order, whatever the tile's shape: every
//! result of a tile call is bit-identical to the one-row, one-token kernel on that pair, so the
//! engine's batches never change a token's numbers. The kernels are chosen only where
//! [`Isa::detect`] picks AVX-512 and the CPU has AVX-512 BF16 (`FINLLM_MAX_ISA=avx2` turns them
//! off along with the rest of AVX-512).

use super::float::FloatKernels;
use super::kernels::Isa;
use super::QuantType;

/// Whether the kernels run on this CPU at `isa` (see the module's notes).
fn usable(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa == Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// The kernels for `dtype` on `isa` over activations rounded to bf16 ([`round_to_bf16`]), or
/// `None` where they do not apply: a format other than bf16, or a CPU without the instruction.
pub fn bf16_dot_kernels(dtype: QuantType, isa: Isa) -> Option<FloatKernels<u16>> {
    if dtype != QuantType::BF16 || !usable(isa) {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // 16 accumulators, four activation vectors and a weight vector: 21 of 32 registers.
        Some(FloatKernels {
            dot: avx512::dot,
            tile: avx512::tile,
            tile_rows: 4,
            tile_tokens: 4,
            decode_rows: 1,
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// `x` rounded to bf16 bits, as the kernels read activations: round to nearest, ties to even; a
/// NaN stays a (quiet) NaN; subnormal values become zero of the same sign (the dot-product
/// instruction reads them as zero anyway). The same as llama.cpp's conversion of activations for
/// bf16 weights.
pub fn round_to_bf16(x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len(), "one bf16 value per activation");
    for (o, &v) in out.iter_mut().zip(x) {
        *o = bf16_bits(v);
    }
}

/// `v` as the kernels read it: rounded to bf16 (see [`round_to_bf16`]), as an f32.
pub fn bf16_rounded(v: f32) -> f32 {
    f32::from_bits(u32::from(bf16_bits(v)) << 16)
}

/// One f32 rounded to bf16 bits (see [`round_to_bf16`]).
#[inline]
pub fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        // Keep the sign and the top of the payload, set the quiet bit.
        return ((bits >> 16) | 0x0040) as u16;
    }
    if bits & 0x7f80_0000 == 0 {
        return ((bits & 0x8000_0000) >> 16) as u16;
    }
    // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even; a carry into the
    // exponent is the correct rounding up (to infinity past the largest finite value).
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::float::{by_shape, check_tile, hsum512};
    use super::super::STREAM_AHEAD;
    use std::arch::x86_64::*;

    // The safe wrappers are only handed out by `bf16_dot_kernels` after `usable` confirmed
    // AVX-512 F/BW/VL (with AVX2, FMA and F16C, through `Isa::detect`) and AVX-512 BF16.

    /// bf16 elements per vector.
    const W: usize = 32;

    /// Format code for `by_shape!` (the kernels read bf16 rows only).
    const BF16: u8 = 2;

    pub fn dot(row: &[u8], x: &[u16]) -> f32 {
        let mut out = [0f32];
        tile(&[row], &[x], &mut out);
        out[0]
    }

    pub fn tile(rows: &[&[u8]], xs: &[&[u16]], out: &mut [f32]) {
        check_tile::<BF16, u16>(rows, xs, out);
        // SAFETY: the features are present (see above); `check_tile` bounds every load.
        unsafe { by_shape!(tile_impl, BF16, rows, xs, out) }
    }

    /// 32 bf16 values at `p` whose elements are set in `keep` (the others zero and not read),
    /// as the instruction's operand type.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    unsafe fn load(p: *const u8, keep: __mmask32) -> __m512bh {
        // SAFETY: the caller guarantees the kept elements readable at p; masked-off elements are
        // not accessed.
        let v = unsafe {
            if keep == u32::MAX {
                _mm512_loadu_si512(p.cast())
            } else {
                _mm512_maskz_loadu_epi16(keep, p.cast())
            }
        };
        // SAFETY: both are 64 bytes of plain lanes; the instruction reads the bits as 32 bf16.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// `R` rows by `T` tokens: one f32 accumulator vector per pair, lane `l` taking elements
    /// `32k + 2l` and `32k + 2l + 1`; the last partial vector is read with a mask, so padding
    /// elements add exact zeros. Every pair sees the same operations whatever `R` and `T`.
    // The row and token indices walk the pointer arrays and the accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
    unsafe fn tile_impl<const D: u8, const R: usize, const T: usize>(rows: &[&[u8]], xs: &[&[u16]], out: &mut [f32]) {
        debug_assert_eq!(D, BF16);
        let cols = xs[0].len();
        let mut w_at = [std::ptr::null::<u8>(); R];
        for r in 0..R {
            w_at[r] = rows[r].as_ptr();
        }
        let mut x_at = [std::ptr::null::<u8>(); T];
        for t in 0..T {
            x_at[t] = xs[t].as_ptr().cast();
        }
        let mut acc = [[_mm512_setzero_ps(); T]; R];
        let whole = cols / W * W;
        let mut c = 0;
        while c < whole {
            if R == 1 && T == 1 {
                // A lone row streams: each 64-byte step asks for its line STREAM_AHEAD ahead,
                // into L2. Prefetching never faults, even past the mapping.
                _mm_prefetch::<_MM_HINT_T1>(w_at[0].wrapping_add(2 * c + STREAM_AHEAD).cast());
            }
            // SAFETY: c + 32 <= cols, the length of every token and (checked) of every row.
            unsafe {
                let x: [__m512bh; T] = std::array::from_fn(|t| load(x_at[t].add(2 * c), u32::MAX));
                for r in 0..R {
                    let w = load(w_at[r].add(2 * c), u32::MAX);
                    for t in 0..T {
                        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w, x[t]);
                    }
                }
            }
            c += W;
        }
        if whole < cols {
            let keep: __mmask32 = (1u32 << (cols - whole)) - 1;
            // SAFETY: the kept elements are whole..cols of every token and row.
            unsafe {
                let x: [__m512bh; T] = std::array::from_fn(|t| load(x_at[t].add(2 * whole), keep));
                for r in 0..R {
                    let w = load(w_at[r].add(2 * whole), keep);
                    for t in 0..T {
                        acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w, x[t]);
                    }
                }
            }
        }
        for r in 0..R {
            for t in 0..T {
                out[r * T + t] = hsum512(acc[r][t]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::float::half_checks;

    /// Row lengths: one element, around the 32-element vector, odd, SmolLM2's and a 1B model's
    /// hidden sizes.
    const COLS: [usize; 10] = [1, 2, 31, 32, 33, 63, 64, 100, 576, 2048];

    fn rounded(x: &[f32]) -> Vec<u16> {
        let mut out = vec![0; x.len()];
        round_to_bf16(x, &mut out);
        out
    }

    /// The kernels on this CPU, or `None` (the test then checks nothing more and says so).
    fn kernels() -> Option<FloatKernels<u16>> {
        let k = bf16_dot_kernels(QuantType::BF16, Isa::Avx512).filter(|_| Isa::available().contains(&Isa::Avx512));
        if k.is_none() {
            eprintln!("no AVX-512 BF16 on this CPU: its kernels are not run");
        }
        k
    }

    #[test]
    fn rounding_is_to_nearest_even_against_f64() {
        // Every bf16 value's neighbourhood: the value itself, the midpoints to its neighbours
        // and one f32 step either side of them.
        for hi in 0..=u16::MAX {
            let v = f32::from_bits(u32::from(hi) << 16);
            if !v.is_finite() || v == 0.0 || (u32::from(hi) << 16) & 0x7f80_0000 == 0 {
                continue;
            }
            let bits = u32::from(hi) << 16;
            for low in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff] {
                let x = f32::from_bits(bits | low);
                let got = f64::from(f32::from_bits(u32::from(bf16_bits(x)) << 16));
                // The next bf16 away from zero, in f64 (2^128 past the largest finite one): one
                // unit in the 8th significant bit, the signed power of two of v's exponent / 2^7.
                let ulp = f64::from(f32::from_bits(bits & 0xff80_0000)) / 128.0;
                let (down, up) = (f64::from(v), f64::from(v) + ulp);
                let (dd, du) = ((f64::from(x) - down).abs(), (up - f64::from(x)).abs());
                let want = if dd < du || (dd == du && hi & 1 == 0) { down } else { up };
                assert!(
                    got == want || (want.abs() >= 2f64.powi(128) && got == want.signum() * f64::INFINITY),
                    "{x:e} ({:#010x}): {got:e} vs {want:e}",
                    bits | low
                );
            }
        }
        assert!(f32::from_bits(u32::from(bf16_bits(f32::NAN)) << 16).is_nan());
        assert_eq!(bf16_bits(-f32::from_bits(1)), 0x8000, "subnormals become signed zeros");
        assert_eq!(bf16_bits(f32::INFINITY), 0x7f80);
        assert_eq!(
            bf16_bits(f32::MAX),
            0x7f80,
            "past the largest bf16, rounding gives infinity"
        );
    }

    #[test]
    fn kernels_match_the_f64_product_of_the_rounded_values() {
        let Some(k) = kernels() else { return };
        half_checks::match_the_f64_product(&k, QuantType::BF16, 41, &COLS, rounded, bf16_rounded);
    }

    #[test]
    fn tiles_are_bit_identical_to_the_one_row_kernel() {
        let Some(k) = kernels() else { return };
        half_checks::tiles_match(&k, QuantType::BF16, 42, &COLS, rounded);
    }

    #[test]
    fn special_weights_pass_through_exactly() {
        let Some(k) = kernels() else { return };
        half_checks::special_weights_pass_through(&k, rounded);
    }

    #[test]
    fn only_bf16_rows_have_these_kernels() {
        for dtype in QuantType::ALL {
            if dtype != QuantType::BF16 {
                assert!(bf16_dot_kernels(dtype, Isa::Avx512).is_none(), "{dtype}");
            }
            assert!(bf16_dot_kernels(dtype, Isa::Avx2).is_none(), "{dtype} on AVX2");
        }
    }
}
