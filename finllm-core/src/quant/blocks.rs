//! Byte layouts of the GGML block formats our kernels read, their scalar dequantisation, and
//! the 8-bit activation blocks the integer dot products use.
//!
//! Weights are read straight from the (memory-mapped) file bytes, block by block, so nothing is
//! copied at load time; multi-byte fields are little-endian and may be unaligned.

use half::f16;

/// Elements per block of the 32-element formats.
pub const QK: usize = 32;

/// Bytes per block.
pub const Q4_0_BYTES: usize = 18; // f16 d, 16 bytes of nibbles
pub const Q4_1_BYTES: usize = 20; // f16 d, f16 m, 16 bytes of nibbles
pub const Q8_0_BYTES: usize = 34; // f16 d, 32 i8

#[inline(always)]
pub(crate) fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
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
    pub _pad: i32,
    pub qs: [i8; QK],
}

impl Default for BlockQ8 {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            sum: 0,
            _pad: 0,
            qs: [0; QK],
        }
    }
}

/// Quantize `x` (a multiple of 32 long) into `out` (x.len() / 32 blocks).
pub fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    debug_assert_eq!(x.len(), out.len() * QK);
    for (chunk, block) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(chunk) {
            // round half away from zero, like C's roundf; |v * id| <= 127 so the cast is exact.
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        block.d = f16::from_f32(d).to_f32();
        block.s = f16::from_f32(d * sum as f32).to_f32();
        block.sum = sum;
    }
}

/// Dequantize one row of `n` elements of a supported format into `out` (scalar reference).
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
        T::Q8_0 => {
            for (b, o) in row.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(b, 0);
                for j in 0..QK {
                    o[j] = d * f32::from(b[2 + j] as i8);
                }
            }
        }
        other => unreachable!("dequantize_row called for {other}, which has no finllm kernel"),
    }
}
