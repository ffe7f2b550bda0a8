//! Byte layouts of the GGML block formats our kernels read, their scalar dequantisation, and
//! the 8-bit activation blocks the integer dot products use.
//!
//! Weights are read straight from the (memory-mapped) file bytes, block by block, so nothing is
//! copied at load time; multi-byte fields are little-endian and may be unaligned.

use half::f16;

/// Elements per block of the 32-element formats (and per activation block).
pub const QK: usize = 32;

/// Elements per super-block of the K-quant formats.
pub const QK_K: usize = 256;

/// Bytes per block.
pub const Q4_0_BYTES: usize = 18; // f16 d, 16 bytes of nibbles
pub const Q4_1_BYTES: usize = 20; // f16 d, f16 m, 16 bytes of nibbles
/// f16 d, 4 bytes of fifth bits (bit `j`: element `j`), 16 bytes of nibbles (element `j` in the
/// low nibble of byte `j`, element `j + 16` in its high nibble).
pub const Q5_0_BYTES: usize = 22;
/// As Q5_0 with an f16 minimum `m` after `d`.
pub const Q5_1_BYTES: usize = 24;
pub const Q8_0_BYTES: usize = 34; // f16 d, 32 i8
/// f16 d, f16 dmin, 12 bytes of 6-bit scales and mins (see [`k_scales_mins`]), 128 bytes of
/// nibbles: byte `32 * p + l` holds element `l` of sub-block `2p` (low nibble) and of `2p + 1`.
pub const Q4_K_BYTES: usize = 144;
/// As Q4_K with 32 bytes of fifth bits after the scales (bit `j` of byte `l`: element `l` of
/// sub-block `j`), then the 128 bytes of nibbles.
pub const Q5_K_BYTES: usize = 176;
/// 128 bytes of low nibbles, 64 bytes of high bit pairs, 16 i8 scales (one per 16 elements),
/// f16 d last; `q6_k_value` says where an element's bits live.
pub const Q6_K_BYTES: usize = 210;

/// Offsets of the fields inside the K-quant blocks.
pub(crate) const K_SCALES_AT: usize = 4;
pub(crate) const Q4_K_QS_AT: usize = 16;
pub(crate) const Q5_K_QH_AT: usize = 16;
pub(crate) const Q5_K_QS_AT: usize = 48;
pub(crate) const Q6_K_QH_AT: usize = 128;
pub(crate) const Q6_K_SCALES_AT: usize = 192;
pub(crate) const Q6_K_D_AT: usize = 208;

#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The eight 6-bit scales and eight 6-bit mins of a Q4_K / Q5_K super-block, from its 12 packed
/// bytes (GGML's `get_scale_min_k4`): sub-blocks 0..4 keep theirs in the low six bits of bytes
/// 0..4 (scales) and 4..8 (mins); sub-blocks 4..8 have their low four bits in the nibbles of
/// bytes 8..12 and their top two bits in the spare top bits of bytes 0..8.
#[inline]
pub fn k_scales_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]]);
    let (w0, w1, w2) = (word(0), word(1), word(2));
    // Four bytes at a time: the masks keep every byte's bits inside that byte.
    let sc_lo = w0 & 0x3f3f_3f3f;
    let m_lo = w1 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let join = |lo: u32, hi: u32| (u64::from(lo) | (u64::from(hi) << 32)).to_le_bytes();
    (join(sc_lo, sc_hi), join(m_lo, m_hi))
}

/// Element `j` (0..32) of a Q5_0 / Q5_1 block whose fifth bits start at `b[0]` (the nibbles
/// follow them), as its 5-bit value.
#[inline]
pub(crate) fn q5_value(b: &[u8], j: usize) -> u8 {
    let qh = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let low = (b[4 + j % 16] >> (4 * (j / 16))) & 0x0f;
    low | ((((qh >> j) & 1) as u8) << 4)
}

/// Element `e` (0..256) of a Q4_K super-block `b`, as its 4-bit value.
#[inline]
fn q4_k_value(b: &[u8], e: usize) -> u8 {
    let (j, l) = (e / QK, e % QK);
    (b[Q4_K_QS_AT + QK * (j / 2) + l] >> (4 * (j % 2))) & 0x0f
}

/// Element `e` (0..256) of a Q5_K super-block `b`, as its 5-bit value.
#[inline]
fn q5_k_value(b: &[u8], e: usize) -> u8 {
    let (j, l) = (e / QK, e % QK);
    let low = (b[Q5_K_QS_AT + QK * (j / 2) + l] >> (4 * (j % 2))) & 0x0f;
    let high = (b[Q5_K_QH_AT + l] >> j) & 1;
    low | (high << 4)
}

/// Element `e` (0..256) of a Q6_K super-block `b`, as its 6-bit value (the weight is
/// `d * scale[e / 16] * (value - 32)`).
///
/// Each half of 128 elements has 64 bytes of `ql` and 32 of `qh`; its four runs of 32 elements
/// take the low nibbles of `ql[0..32]`, of `ql[32..64]`, then their high nibbles, and bit
/// pairs 0-1, 2-3, 4-5, 6-7 of `qh[0..32]`.
#[inline]
pub(crate) fn q6_k_value(b: &[u8], e: usize) -> u8 {
    let (n, g, l) = (e / 128, (e % 128) / QK, e % QK);
    let low = (b[64 * n + QK * (g % 2) + l] >> (4 * (g / 2))) & 0x0f;
    let high = (b[Q6_K_QH_AT + QK * n + l] >> (2 * g)) & 3;
    low | (high << 4)
}

/// An activation block: 32 values quantized to i8 with one scale.
///
/// `d` is rounded through f16 and `s = d * sum(qs)` is precomputed, as llama.cpp's `block_q8_1`
/// does, so our integer dot products see the same rounding as the reference implementation.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(16))]
pub struct BlockQ8 {
    pub d: f32,
    /// `d * sum(qs)`, rounded through f16.
    pub s: f32,
    /// `sum(qs)` exactly.
    pub sum: i32,
    /// `sum(qs[..16])` exactly: the first half's, which Q6_K's 16-value sub-blocks need
    /// (the second's is `sum - sum_low`).
    pub sum_low: i32,
    pub qs: [i8; QK],
}

impl Default for BlockQ8 {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            sum: 0,
            sum_low: 0,
            qs: [0; QK],
        }
    }
}

/// Quantize `x` (a multiple of 32 long) into `out` (x.len() / 32 blocks).
///
/// The same arithmetic runs on every CPU; where AVX2 is present it is compiled for it (the
/// default build targets baseline x86-64), which changes no result: each value takes the same
/// IEEE operations, the block maximum is exact in any order and the sums are integers.
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    quantize(x, out, Scale::PerBlock);
}

/// Quantize `x` (a multiple of 256 long) into `out` (x.len() / 32 blocks) with one scale per
/// 256 values: the eight blocks of each 256 share `d`, the largest magnitude of the 256 over
/// 127, kept in f32 (not rounded through f16), and `s` is `d · sum` in f32. The K-quant panels
/// read these, so that a super-block's sub-block scales and minima apply in integers and its
/// scales once (llama.cpp's Q8_K activations scale per 256 values too). Bits are the same on
/// every CPU, as for [`quantize_q8`].
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert!(x.len().is_multiple_of(QK_K));
    quantize(x, out, Scale::PerSuper);
}

/// How many values share an activation scale.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scale {
    /// Each block of 32 its own, rounded through f16 (with `s`), as llama.cpp's Q8_0 and Q8_1.
    PerBlock,
    /// Each 256 values one, in f32.
    PerSuper,
}

impl Scale {
    /// Blocks that share a scale.
    fn blocks(self) -> usize {
        match self {
            Self::PerBlock => 1,
            Self::PerSuper => QK_K / QK,
        }
    }

    /// A block's `d` and `s` from the shared scale and the block's sum.
    fn finish(self, d: f32, sum: i32) -> (f32, f32) {
        match self {
            Self::PerBlock => (f16::from_f32(d).to_f32(), f16::from_f32(d * sum as f32).to_f32()),
            Self::PerSuper => (d, d * sum as f32),
        }
    }
}

fn quantize(x: &[f32], out: &mut [BlockQ8], scale: Scale) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c") {
        // SAFETY: AVX2 and F16C are present on this CPU.
        return unsafe { quantize_q8_avx2(x, out, scale) };
    }
    quantize_q8_blocks(x, out, scale);
}

/// The AVX2 form of [`quantize_q8_blocks`]: the same IEEE operations on eight values at a time
/// (the maximum of absolute values is exact in any order; `v * id` is one rounding, the rounding
/// half away from zero is a truncation, an exact subtraction and two compares), so the bits are
/// the baseline's. A group holding a NaN or an infinity goes through the baseline code, whose
/// `f32::max` and saturating conversions define what such a group becomes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn quantize_q8_avx2(x: &[f32], out: &mut [BlockQ8], scale: Scale) {
    use std::arch::x86_64::*;
    let per = scale.blocks();
    debug_assert_eq!(x.len(), out.len() * QK);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let max_finite = _mm256_set1_ps(f32::MAX);
    let (half, neg_half) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
    for (chunk, group) in x.chunks_exact(QK * per).zip(out.chunks_exact_mut(per)) {
        let p = chunk.as_ptr();
        let (mut m, mut finite) = (_mm256_setzero_ps(), _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
        for i in (0..chunk.len()).step_by(8) {
            let a = _mm256_and_ps(_mm256_loadu_ps(p.add(i)), abs_mask);
            // |v| <= f32::MAX is false for NaN and infinities.
            finite = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_LE_OQ>(a, max_finite));
            m = _mm256_max_ps(m, a);
        }
        if _mm256_movemask_ps(finite) != 0xff {
            quantize_q8_blocks(chunk, group, scale);
            continue;
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_shuffle_ps::<0b01>(m, m));
        let amax = _mm_cvtss_f32(m);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let id = if id.is_finite() { id } else { 0.0 };
        let idv = _mm256_set1_ps(id);
        for (k, block) in group.iter_mut().enumerate() {
            let p = p.add(k * QK);
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let r = v.map(|v| {
                let y = _mm256_mul_ps(v, idv);
                let t = _mm256_cvttps_epi32(y);
                let frac = _mm256_sub_ps(y, _mm256_cvtepi32_ps(t));
                // Compare masks are -1 where true.
                let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
                let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, neg_half));
                _mm256_add_epi32(_mm256_sub_epi32(t, up), down)
            });
            // The first 16 values' sum and the last 16's, side by side: the low 128 bits reduce
            // the first's lanes, the high 128 bits the last's.
            let (low, high) = (_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
            let s = _mm256_add_epi32(
                _mm256_permute2x128_si256::<0x20>(low, high),
                _mm256_permute2x128_si256::<0x31>(low, high),
            );
            let s = _mm256_add_epi32(s, _mm256_shuffle_epi32::<0b0100_1110>(s));
            let s = _mm256_add_epi32(s, _mm256_shuffle_epi32::<0b1011_0001>(s));
            let sum_low = _mm256_cvtsi256_si32(s);
            let sum = sum_low + _mm256_extract_epi32::<4>(s);
            // |r| <= 127, so the saturating packs are exact; they interleave 128-bit lanes,
            // which the permute puts back in order.
            let w = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
            let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(block.qs.as_mut_ptr().cast(), w);
            if scale == Scale::PerBlock {
                // Both through f16 with the F16C instructions inline (round to nearest even,
                // as `half` rounds): its calls, each checking the CPU first, were most of this
                // loop's time.
                let ds = _mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_setr_ps(
                    d,
                    d * sum as f32,
                    0.0,
                    0.0,
                )));
                block.d = _mm_cvtss_f32(ds);
                block.s = _mm_cvtss_f32(_mm_movehdup_ps(ds));
            } else {
                (block.d, block.s) = scale.finish(d, sum);
            }
            block.sum = sum;
            block.sum_low = sum_low;
        }
    }
}

#[inline(always)]
fn quantize_q8_blocks(x: &[f32], out: &mut [BlockQ8], scale: Scale) {
    let per = scale.blocks();
    debug_assert_eq!(x.len(), out.len() * QK);
    for (chunk, group) in x.chunks_exact(QK * per).zip(out.chunks_exact_mut(per)) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // A group of subnormal values has a scale whose reciprocal overflows; it quantizes to
        // zeros (a block's f16 scale is zero anyway). Left infinite, `v * id` would be
        // infinite and its rounding overflow i32 (found by the gguf fuzz target, whose models
        // may compute such activations).
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let id = if id.is_finite() { id } else { 0.0 };
        for (values, block) in chunk.chunks_exact(QK).zip(group.iter_mut()) {
            let (mut sum, mut sum_low) = (0i32, 0i32);
            for (e, (q, &v)) in block.qs.iter_mut().zip(values).enumerate() {
                let r = round_half_away(v * id);
                *q = r as i8;
                sum += r;
                if e < QK / 2 {
                    sum_low += r;
                }
            }
            (block.d, block.s) = scale.finish(d, sum);
            block.sum = sum;
            block.sum_low = sum_low;
        }
    }
}

/// `y` rounded half away from zero, as C's `roundf`, for |y| < 2^31. Without SSE4.1 `f32::round`
/// is a libm call per value; this is a truncating conversion, an exact subtraction (what is
/// left is the fraction) and two compares, which the compiler vectorises.
#[inline(always)]
pub fn round_half_away(y: f32) -> i32 {
    let t = y as i32;
    let frac = y - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// The index of the first element of `data` (whole blocks of `dtype`) whose value is NaN or
/// infinite, or `None` when every value is finite. For block formats without a finllm kernel
/// (Q8_1, Q2_K, Q3_K, Q8_K) the block's float scales are checked (its integers cannot be
/// non-finite) and the block's first element is reported.
pub fn first_non_finite(dtype: super::QuantType, data: &[u8]) -> Option<u64> {
    use super::QuantType as T;
    let block = dtype.block_bytes() as usize;
    let per_block = dtype.block_size();
    let scale_at = |offsets: &[usize]| -> Option<u64> {
        data.chunks_exact(block)
            .position(|b| offsets.iter().any(|&o| !f16_at(b, o).is_finite()))
            .map(|i| i as u64 * per_block)
    };
    match dtype {
        T::F32 => data
            .chunks_exact(4)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
            .map(|i| i as u64),
        T::F16 => data
            .chunks_exact(2)
            .position(|b| !half::f16::from_le_bytes([b[0], b[1]]).is_finite())
            .map(|i| i as u64),
        T::BF16 => data
            .chunks_exact(2)
            .position(|b| !half::bf16::from_le_bytes([b[0], b[1]]).is_finite())
            .map(|i| i as u64),
        T::Q8_1 => scale_at(&[0, 2]),
        T::Q2K => scale_at(&[80, 82]),
        T::Q3K => scale_at(&[108]),
        T::Q8K => data
            .chunks_exact(block)
            .position(|b| !f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite())
            .map(|i| i as u64 * per_block),
        T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q8_0 | T::Q4K | T::Q5K | T::Q6K => {
            // Dequantize a bounded run of blocks at a time: a scale of inf times a zero quant
            // is NaN, which only the dequantized value shows.
            const BLOCKS: usize = 64;
            let mut out = vec![0f32; BLOCKS * per_block as usize];
            let mut base = 0u64;
            for run in data.chunks(BLOCKS * block) {
                let whole = run.len() / block * block;
                let n = whole / block * per_block as usize;
                dequantize_row(dtype, &run[..whole], &mut out[..n]);
                if let Some(i) = out[..n].iter().position(|v| !v.is_finite()) {
                    return Some(base + i as u64);
                }
                base += n as u64;
            }
            None
        }
    }
}

/// Dequantize one row of `n` elements of a supported format (a kernel format, or f32 / f16 /
/// bf16) into `out` (scalar reference).
pub fn dequantize_row(dtype: super::QuantType, row: &[u8], out: &mut [f32]) {
    use super::QuantType as T;
    match dtype {
        T::Q4_0 => {
            for (b, o) in row.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    o[j] = d * (f32::from(b[2 + j] & 0x0f) - 8.0);
                    o[j + 16] = d * (f32::from(b[2 + j] >> 4) - 8.0);
                }
            }
        }
        T::Q4_1 => {
            for (b, o) in row.chunks_exact(Q4_1_BYTES).zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    o[j] = d * f32::from(b[4 + j] & 0x0f) + m;
                    o[j + 16] = d * f32::from(b[4 + j] >> 4) + m;
                }
            }
        }
        T::Q5_0 => {
            for (b, o) in row.chunks_exact(Q5_0_BYTES).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(b, 0);
                for (j, o) in o.iter_mut().enumerate() {
                    *o = d * (f32::from(q5_value(&b[2..], j)) - 16.0);
                }
            }
        }
        T::Q5_1 => {
            for (b, o) in row.chunks_exact(Q5_1_BYTES).zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for (j, o) in o.iter_mut().enumerate() {
                    *o = d * f32::from(q5_value(&b[4..], j)) + m;
                }
            }
        }
        T::Q8_0 => {
            for (b, o) in row.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(b, 0);
                for j in 0..QK {
                    o[j] = d * f32::from(b[2 + j] as i8);
                }
            }
        }
        T::Q4K => dequantize_q4_5_k(row, out, Q4_K_BYTES, q4_k_value),
        T::Q5K => dequantize_q4_5_k(row, out, Q5_K_BYTES, q5_k_value),
        T::Q6K => {
            for (b, o) in row.chunks_exact(Q6_K_BYTES).zip(out.chunks_exact_mut(QK_K)) {
                let d = f16_at(b, Q6_K_D_AT);
                for (e, o) in o.iter_mut().enumerate() {
                    // The scales are i8 stored as bytes.
                    let scale = f32::from(b[Q6_K_SCALES_AT + e / 16] as i8);
                    *o = d * scale * (f32::from(q6_k_value(b, e)) - 32.0);
                }
            }
        }
        T::F32 => {
            for (b, o) in row.chunks_exact(4).zip(out.iter_mut()) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        T::F16 => {
            for (b, o) in row.chunks_exact(2).zip(out.iter_mut()) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        T::BF16 => {
            for (b, o) in row.chunks_exact(2).zip(out.iter_mut()) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
            }
        }
        other => unreachable!("dequantize_row called for {other}, which has no finllm kernel"),
    }
}

/// Q4_K and Q5_K: `d * scale_j * value - dmin * min_j` for the elements of sub-block `j`.
fn dequantize_q4_5_k(row: &[u8], out: &mut [f32], bytes: usize, value: fn(&[u8], usize) -> u8) {
    for (b, o) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
        let (sc, m) = k_scales_mins(&b[K_SCALES_AT..]);
        for (e, o) in o.iter_mut().enumerate() {
            let j = e / QK;
            *o = d * f32::from(sc[j]) * f32::from(value(b, e)) - dmin * f32::from(m[j]);
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn non_finite_scales_are_found_in_every_format() {
        use crate::quant::QuantType as T;
        // Where each block keeps its (first) float scale: an infinite scale times a zero quant is
        // NaN in the dequantized values, and the scale itself for formats without a kernel.
        let scale_at = [
            (T::Q4_0, 0),
            (T::Q4_1, 0),
            (T::Q5_0, 0),
            (T::Q5_1, 0),
            (T::Q8_0, 0),
            (T::Q8_1, 0),
            (T::Q2K, 80),
            (T::Q3K, 108),
            (T::Q4K, 0),
            (T::Q5K, 0),
            (T::Q6K, 208),
        ];
        for (dtype, at) in scale_at {
            let bytes = dtype.block_bytes() as usize;
            let mut data = vec![0u8; 3 * bytes];
            assert_eq!(first_non_finite(dtype, &data), None, "{dtype}");
            data[2 * bytes + at..2 * bytes + at + 2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
            assert_eq!(first_non_finite(dtype, &data), Some(2 * dtype.block_size()), "{dtype}");
        }
        let mut q8k = vec![0u8; 2 * T::Q8K.block_bytes() as usize];
        assert_eq!(first_non_finite(T::Q8K, &q8k), None);
        q8k[292..296].copy_from_slice(&f32::NAN.to_le_bytes());
        assert_eq!(first_non_finite(T::Q8K, &q8k), Some(256));
        let f32s: Vec<u8> = [1.0f32, 2.0, f32::NEG_INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(first_non_finite(T::F32, &f32s), Some(2));
    }

    use super::*;
    use crate::util::Rng;

    /// Float rows (an embedding table looked up in place) give back the values they hold:
    /// values exactly representable in each format, written as the format's bytes.
    #[test]
    fn float_rows_dequantize_to_the_values_they_hold() {
        use crate::quant::QuantType as T;
        let check = |dtype: T, bytes: &[u8], values: &[f32]| {
            let mut out = vec![f32::NAN; values.len()];
            dequantize_row(dtype, bytes, &mut out);
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(values), "{dtype}");
        };
        // Quarters from -125 to 124.75 (exact in f16), the f16 extremes and a signed zero.
        let mut values: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.25).collect();
        values.extend([-0.0, 65504.0, -65504.0, 2f32.powi(-14)]);
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        check(T::F32, &f32_bytes, &values);
        let f16_bytes: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        check(T::F16, &f16_bytes, &values);
        // bf16 is the top half of an f32 (8 significant bits): halves from -64 to 63.5, the
        // largest finite bf16, the smallest normal, a signed zero.
        let mut values: Vec<f32> = (0..256).map(|i| (i as f32 - 128.0) * 0.5).collect();
        values.extend([-0.0, f32::from_bits(0x7f7f_0000), -f32::MIN_POSITIVE]);
        assert!(values.iter().all(|v| v.to_bits() & 0xffff == 0));
        let bf16_bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        check(T::BF16, &bf16_bytes, &values);
    }

    /// `x` through the dispatched quantizer (`quantize_q8` or `quantize_q8_k`) and through the
    /// baseline code: the same bits, and every block's sums are its values' own. Returns the
    /// baseline's blocks.
    fn same_bits_as_the_baseline(x: &[f32], scale: Scale) -> Vec<BlockQ8> {
        let n = x.len() / QK;
        let (mut fast, mut base) = (vec![BlockQ8::default(); n], vec![BlockQ8::default(); n]);
        match scale {
            Scale::PerBlock => quantize_q8(x, &mut fast),
            Scale::PerSuper => quantize_q8_k(x, &mut fast),
        }
        quantize_q8_blocks(x, &mut base, scale);
        for (f, b) in fast.iter().zip(&base) {
            assert_eq!(
                (f.d.to_bits(), f.s.to_bits(), f.sum, f.sum_low, f.qs),
                (b.d.to_bits(), b.s.to_bits(), b.sum, b.sum_low, b.qs)
            );
            let total = |q: &[i8]| q.iter().map(|&v| i32::from(v)).sum::<i32>();
            assert_eq!((b.sum, b.sum_low), (total(&b.qs), total(&b.qs[..QK / 2])));
        }
        base
    }

    /// Activations scaled per 256 values: the dispatched quantizer gives the baseline's bits;
    /// the eight blocks of each 256 share one f32 scale, the largest magnitude over 127, and
    /// each value is that scale's nearest step; sums are the values' own.
    #[test]
    fn quantizing_activations_per_256_values_shares_one_scale() {
        let mut rng = Rng::new(37);
        for spread in [0.0, 1e-40, 1.0, 3.5, 1e30] {
            let mut x: Vec<f32> = (0..QK_K * 6)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
                .collect();
            // A group with a NaN, one with an infinity, one whose largest value is in its last
            // block.
            x[QK_K + 40] = f32::NAN;
            x[2 * QK_K + 7] = f32::INFINITY;
            x[4 * QK_K - 1] = 4.0 * spread as f32;
            let base = same_bits_as_the_baseline(&x, Scale::PerSuper);
            for (chunk, group) in x.chunks_exact(QK_K).zip(base.chunks_exact(QK_K / QK)) {
                if chunk.iter().any(|v| !v.is_finite()) {
                    continue;
                }
                let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                assert!(group.iter().all(|b| b.d.to_bits() == d.to_bits()), "one f32 scale");
                if d == 0.0 || !(1.0 / d).is_finite() {
                    assert!(group.iter().all(|b| b.qs == [0; QK]));
                    continue;
                }
                for (values, b) in chunk.chunks_exact(QK).zip(group) {
                    for (&v, &q) in values.iter().zip(&b.qs) {
                        let want = (f64::from(v) * 127.0 / f64::from(amax)).round();
                        assert!((f64::from(q) - want).abs() <= 1.0, "{v} -> {q}, want {want}");
                        assert!(q.unsigned_abs() <= 127);
                    }
                }
            }
        }
    }

    /// The dispatched quantizer gives the baseline build's bits, on values that sit exactly
    /// halfway between integers after scaling, zeros, denormals and wide ranges.
    #[test]
    fn quantizing_activations_gives_the_same_bits_on_every_cpu() {
        let mut rng = Rng::new(31);
        for spread in [0.0, 1e-40, 1.0, 3.5, 1e30] {
            let mut x: Vec<f32> = (0..QK * 37)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
                .collect();
            // One block's values on the rounding boundary: 127 / amax scaling keeps k + 0.5.
            for (i, v) in x[..QK].iter_mut().enumerate() {
                *v = if i == 0 { 127.0 } else { i as f32 - 15.5 };
            }
            // Blocks with a NaN, an infinity, a negative zero and the largest float.
            x[QK + 3] = f32::NAN;
            x[2 * QK + 7] = f32::NEG_INFINITY;
            x[3 * QK + 31] = f32::INFINITY;
            x[4 * QK] = -0.0;
            x[5 * QK + 9] = -f32::MAX;
            let base = same_bits_as_the_baseline(&x, Scale::PerBlock);
            // And the values themselves: q = round(x · 127 / amax), |q| <= 127, where the scale
            // is a normal float; a block whose scale's reciprocal overflows quantizes to zeros.
            for (chunk, b) in x.chunks_exact(QK).zip(&base) {
                if chunk.iter().any(|v| !v.is_finite()) {
                    continue;
                }
                let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
                if !(127.0 / amax).is_finite() || (1.0 / (amax / 127.0)).is_infinite() {
                    assert_eq!((b.qs, b.sum, b.d, b.s), ([0; QK], 0, 0.0, 0.0), "amax {amax:e}");
                    continue;
                }
                if amax / 127.0 < f32::MIN_POSITIVE {
                    continue;
                }
                for (&v, &q) in chunk.iter().zip(&b.qs) {
                    let want = if amax == 0.0 {
                        0.0
                    } else {
                        (f64::from(v) * 127.0 / f64::from(amax)).round()
                    };
                    assert!((f64::from(q) - want).abs() <= 1.0, "{v} -> {q}, want {want}");
                }
            }
        }
    }
}
