//! Dot products of one quantized weight row with 8-bit activation blocks, in a scalar reference
//! version and SIMD versions chosen at run time from the CPU's features. On AVX-512 VNNI the
//! formats the models use (Q4_1, Q8_0, Q4_K, Q5_K, Q6_K) run on the tiles of [`super::ktile`];
//! every other format there takes these AVX2 kernels.

use super::blocks::{
    f16_at, k_scales_mins, q5_value, BlockQ8, K_SCALES_AT, Q4_0_BYTES, Q4_1_BYTES, Q4_K_BYTES, Q4_K_QS_AT, Q5_0_BYTES,
    Q5_1_BYTES, Q5_K_BYTES, Q5_K_QH_AT, Q5_K_QS_AT, Q6_K_BYTES, Q6_K_D_AT, Q6_K_QH_AT, Q6_K_SCALES_AT, Q8_0_BYTES, QK,
    QK_K,
};
use super::QuantType;

/// Activation blocks per K-quant super-block.
const SUBS: usize = QK_K / QK;

/// A row · activations kernel: `row` holds the `a.len() * 32` weights of one row in the weight
/// format (`a.len()` blocks of a 32-element format, `a.len() / 8` super-blocks of a K-quant).
pub type DotFn = fn(row: &[u8], a: &[BlockQ8]) -> f32;

/// One row against four tokens' activations at once (each unpacked weight block is reused four
/// times). Each result is bit-identical to [`DotFn`] on that token, so batching never changes
/// the numbers.
pub type Dot4Fn = fn(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4];

/// One row against `N` tokens' activations (the 2 or 3 running sequences a batched step has
/// beside its groups of four); bit-identical to [`DotFn`] per token, like [`Dot4Fn`].
pub type DotNFn<const N: usize> = fn(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N];

/// Every weight format finllm has kernels for (a scalar reference on every CPU, SIMD where
/// [`dot_fn`] finds one).
pub const KERNEL_FORMATS: [QuantType; 8] = [
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

/// Instruction sets a kernel can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// x86-64: AVX2 with FMA and F16C.
    Avx2,
    /// x86-64: AVX-512 F/BW/VL with VNNI (on top of AVX2, FMA and F16C). Formats without an
    /// AVX-512 kernel use their AVX2 one.
    Avx512,
    /// AArch64: NEON (Advanced SIMD), byte dot products by widening multiplies.
    Neon,
    /// AArch64: NEON with the dot-product extension (`dotprod`: SDOT, Armv8.4, optional from
    /// v8.2). A level of its own rather than a branch inside the kernels, so that tests on a
    /// CPU with `dotprod` run both versions. Both NEON levels reproduce the scalar kernels bit
    /// for bit (`kernels/neon.rs` says how).
    NeonDot,
}

impl Isa {
    /// The best ISA this CPU supports, unless `FINLLM_FORCE_SCALAR` is set (to test the scalar
    /// path, or to rule the SIMD kernels out when chasing a numerical question) or
    /// `FINLLM_MAX_ISA` names a lower level (`avx2`, `neon`: to run, test and measure what an
    /// AVX2-only server runs on a machine that also has AVX-512).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var_os("FINLLM_FORCE_SCALAR").is_some_and(|v| v != "0") {
                return Isa::Scalar;
            }
            let cap = std::env::var("FINLLM_MAX_ISA").unwrap_or_default().to_ascii_lowercase();
            if cap == "scalar" {
                return Isa::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx512() && cap != "avx2" {
                return Isa::Avx512;
            }
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                return Isa::Avx2;
            }
            #[cfg(target_arch = "aarch64")]
            if has_dotprod() && cap != "neon" {
                return Isa::NeonDot;
            }
            #[cfg(target_arch = "aarch64")]
            if has_neon() {
                return Isa::Neon;
            }
            Isa::Scalar
        })
    }

    /// Every ISA usable on this CPU, weakest first (for tests).
    pub fn available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            v.push(Isa::Avx2);
        }
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            v.push(Isa::Avx512);
        }
        #[cfg(target_arch = "aarch64")]
        if has_neon() {
            v.push(Isa::Neon);
        }
        #[cfg(target_arch = "aarch64")]
        if has_dotprod() {
            v.push(Isa::NeonDot);
        }
        v
    }

    /// The level's name, as `FINLLM_MAX_ISA` takes it and the benchmarks report it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dotprod",
        }
    }

    /// Whether this level implies AVX2, FMA and F16C (the x86-64 levels), for code outside
    /// the quantized kernels that has its own AVX2 path.
    pub fn implies_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    has_avx2()
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

#[cfg(target_arch = "aarch64")]
fn has_neon() -> bool {
    std::arch::is_aarch64_feature_detected!("neon")
}

#[cfg(target_arch = "aarch64")]
fn has_dotprod() -> bool {
    has_neon() && std::arch::is_aarch64_feature_detected!("dotprod")
}

/// The kernel for `dtype` on `isa`, or `None` if finllm has no kernel for the format.
pub fn dot_fn(dtype: QuantType, isa: Isa) -> Option<DotFn> {
    let f: DotFn = match (dtype, isa) {
        #[cfg(target_arch = "aarch64")]
        (_, Isa::Neon | Isa::NeonDot) => return neon::kernels(dtype, isa == Isa::NeonDot).map(|(dot, _)| dot),
        (_, Isa::Avx512) => return dot_fn(dtype, Isa::Avx2),
        (QuantType::Q4_0, Isa::Scalar) => scalar::q4_0,
        (QuantType::Q4_1, Isa::Scalar) => scalar::q4_1,
        (QuantType::Q5_0, Isa::Scalar) => scalar::q5_0,
        (QuantType::Q5_1, Isa::Scalar) => scalar::q5_1,
        (QuantType::Q8_0, Isa::Scalar) => scalar::q8_0,
        (QuantType::Q4K, Isa::Scalar) => scalar::q4_k,
        (QuantType::Q5K, Isa::Scalar) => scalar::q5_k,
        (QuantType::Q6K, Isa::Scalar) => scalar::q6_k,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_0, Isa::Avx2) => avx2::q4_0,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_1, Isa::Avx2) => avx2::q4_1,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5_0, Isa::Avx2) => avx2::q5_0,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5_1, Isa::Avx2) => avx2::q5_1,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q8_0, Isa::Avx2) => avx2::q8_0,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4K, Isa::Avx2) => avx2::q4_k,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5K, Isa::Avx2) => avx2::q5_k,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q6K, Isa::Avx2) => avx2::q6_k,
        _ => return None,
    };
    Some(f)
}

/// The four-token kernel for `dtype` on `isa`.
pub fn dot4_fn(dtype: QuantType, isa: Isa) -> Option<Dot4Fn> {
    let f: Dot4Fn = match (dtype, isa) {
        #[cfg(target_arch = "aarch64")]
        (_, Isa::Neon | Isa::NeonDot) => return neon::kernels(dtype, isa == Isa::NeonDot).map(|(_, dot4)| dot4),
        (_, Isa::Avx512) => return dot4_fn(dtype, Isa::Avx2),
        (QuantType::Q4_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_0(r, a)),
        (QuantType::Q4_1, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_1(r, a)),
        (QuantType::Q5_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q5_0(r, a)),
        (QuantType::Q5_1, Isa::Scalar) => |r, a| a.map(|a| scalar::q5_1(r, a)),
        (QuantType::Q8_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q8_0(r, a)),
        (QuantType::Q4K, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_k(r, a)),
        (QuantType::Q5K, Isa::Scalar) => |r, a| a.map(|a| scalar::q5_k(r, a)),
        (QuantType::Q6K, Isa::Scalar) => |r, a| a.map(|a| scalar::q6_k(r, a)),
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_0, Isa::Avx2) => avx2::q4_0_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_1, Isa::Avx2) => avx2::q4_1_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5_0, Isa::Avx2) => avx2::q5_0_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5_1, Isa::Avx2) => avx2::q5_1_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q8_0, Isa::Avx2) => avx2::q8_0_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4K, Isa::Avx2) => avx2::q4_k_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5K, Isa::Avx2) => avx2::q5_k_x4,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q6K, Isa::Avx2) => avx2::q6_k_x4,
        _ => return None,
    };
    Some(f)
}

/// Bytes of one weight block of a format with a kernel.
/// The `N`-token kernel (2 or 3 tokens: what a batched matmul has left after its groups of four)
/// for `dtype` on `isa`; x86 levels only (elsewhere `None`: callers run the one-token kernel per
/// token).
pub fn dotn_fn<const N: usize>(dtype: QuantType, isa: Isa) -> Option<DotNFn<N>> {
    #[allow(unreachable_patterns)]
    let f: DotNFn<N> = match (dtype, isa) {
        (_, Isa::Avx512) => return dotn_fn::<N>(dtype, Isa::Avx2),
        (QuantType::Q4_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_0(r, a)),
        (QuantType::Q4_1, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_1(r, a)),
        (QuantType::Q5_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q5_0(r, a)),
        (QuantType::Q5_1, Isa::Scalar) => |r, a| a.map(|a| scalar::q5_1(r, a)),
        (QuantType::Q8_0, Isa::Scalar) => |r, a| a.map(|a| scalar::q8_0(r, a)),
        (QuantType::Q4K, Isa::Scalar) => |r, a| a.map(|a| scalar::q4_k(r, a)),
        (QuantType::Q5K, Isa::Scalar) => |r, a| a.map(|a| scalar::q5_k(r, a)),
        (QuantType::Q6K, Isa::Scalar) => |r, a| a.map(|a| scalar::q6_k(r, a)),
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_0, Isa::Avx2) => avx2::q4_0_xn::<N>,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4_1, Isa::Avx2) => avx2::q4_1_xn::<N>,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5_0, Isa::Avx2) => avx2::q5_0_xn::<N>,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5_1, Isa::Avx2) => avx2::q5_1_xn::<N>,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q8_0, Isa::Avx2) => avx2::q8_0_xn::<N>,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q4K, Isa::Avx2) => avx2::q4_k_xn::<N>,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q5K, Isa::Avx2) => avx2::q5_k_xn::<N>,
        #[cfg(target_arch = "x86_64")]
        (QuantType::Q6K, Isa::Avx2) => avx2::q6_k_xn::<N>,
        _ => return None,
    };
    Some(f)
}

pub fn block_bytes(dtype: QuantType) -> usize {
    match dtype {
        QuantType::Q4_0 => Q4_0_BYTES,
        QuantType::Q4_1 => Q4_1_BYTES,
        QuantType::Q5_0 => Q5_0_BYTES,
        QuantType::Q5_1 => Q5_1_BYTES,
        QuantType::Q8_0 => Q8_0_BYTES,
        QuantType::Q4K => Q4_K_BYTES,
        QuantType::Q5K => Q5_K_BYTES,
        QuantType::Q6K => Q6_K_BYTES,
        _ => dtype.block_bytes() as usize,
    }
}

/// Integer dot products, block by block, in the order llama.cpp's reference code uses.
pub mod scalar {
    use super::*;

    pub fn q4_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q4_0_BYTES).zip(a) {
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                let lo = i32::from(b[2 + j] & 0x0f) - 8;
                let hi = i32::from(b[2 + j] >> 4) - 8;
                isum += lo * i32::from(y.qs[j]) + hi * i32::from(y.qs[j + QK / 2]);
            }
            acc += f16_at(b, 0) * y.d * isum as f32;
        }
        acc
    }

    pub fn q4_1(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q4_1_BYTES).zip(a) {
            let mut isum = 0i32;
            for j in 0..QK / 2 {
                isum += i32::from(b[4 + j] & 0x0f) * i32::from(y.qs[j])
                    + i32::from(b[4 + j] >> 4) * i32::from(y.qs[j + QK / 2]);
            }
            acc += f16_at(b, 0) * y.d * isum as f32 + f16_at(b, 2) * y.s;
        }
        acc
    }

    pub fn q5_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q5_0_BYTES).zip(a) {
            let isum: i32 = (0..QK)
                .map(|j| (i32::from(q5_value(&b[2..], j)) - 16) * i32::from(y.qs[j]))
                .sum();
            acc += f16_at(b, 0) * y.d * isum as f32;
        }
        acc
    }

    pub fn q5_1(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q5_1_BYTES).zip(a) {
            let isum: i32 = (0..QK)
                .map(|j| i32::from(q5_value(&b[4..], j)) * i32::from(y.qs[j]))
                .sum();
            acc += f16_at(b, 0) * y.d * isum as f32 + f16_at(b, 2) * y.s;
        }
        acc
    }

    pub fn q8_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = 0f32;
        for (b, y) in row.chunks_exact(Q8_0_BYTES).zip(a) {
            let mut isum = 0i32;
            for j in 0..QK {
                isum += i32::from(b[2 + j] as i8) * i32::from(y.qs[j]);
            }
            acc += f16_at(b, 0) * y.d * isum as f32;
        }
        acc
    }

    /// Q4_K and Q5_K: per 32-element sub-block `j`, `d * scale_j * Σ q·y - dmin * min_j * Σ y`;
    /// the minimum term takes the activation block's exact integer sum. `sub_dot(b, j, y)` is
    /// the integer dot product of sub-block `j` of super-block `b` with `y`.
    fn q4_5_k(row: &[u8], a: &[BlockQ8], bytes: usize, sub_dot: impl Fn(&[u8], usize, &BlockQ8) -> i32) -> f32 {
        debug_assert!(a.len().is_multiple_of(SUBS));
        let mut acc = 0f32;
        for (b, ys) in row.chunks_exact(bytes).zip(a.chunks_exact(SUBS)) {
            let (sc, m) = k_scales_mins(&b[K_SCALES_AT..]);
            let (mut scaled, mut mins) = (0f32, 0f32);
            for (j, y) in ys.iter().enumerate() {
                // |dot| <= 32 * 31 * 127 and |sum| <= 32 * 127: both exact in f32.
                scaled += f32::from(sc[j]) * y.d * sub_dot(b, j, y) as f32;
                mins += f32::from(m[j]) * y.d * y.sum as f32;
            }
            acc += f16_at(b, 0) * scaled - f16_at(b, 2) * mins;
        }
        acc
    }

    pub fn q4_k(row: &[u8], a: &[BlockQ8]) -> f32 {
        q4_5_k(row, a, Q4_K_BYTES, |b, j, y| {
            let qs = &b[Q4_K_QS_AT + QK * (j / 2)..][..QK];
            let shift = 4 * (j % 2);
            qs.iter()
                .zip(&y.qs)
                .map(|(&q, &s)| i32::from((q >> shift) & 0x0f) * i32::from(s))
                .sum()
        })
    }

    pub fn q5_k(row: &[u8], a: &[BlockQ8]) -> f32 {
        q4_5_k(row, a, Q5_K_BYTES, |b, j, y| {
            let qs = &b[Q5_K_QS_AT + QK * (j / 2)..][..QK];
            let qh = &b[Q5_K_QH_AT..][..QK];
            let shift = 4 * (j % 2);
            let mut dot = 0i32;
            for l in 0..QK {
                let q = ((qs[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
                dot += i32::from(q) * i32::from(y.qs[l]);
            }
            dot
        })
    }

    /// Q6_K: each 32-element activation block covers two 16-element sub-blocks with their own
    /// i8 scales; their integer sums are scaled and added before `y.d` is applied.
    pub fn q6_k(row: &[u8], a: &[BlockQ8]) -> f32 {
        debug_assert!(a.len().is_multiple_of(SUBS));
        let mut acc = 0f32;
        for (b, ys) in row.chunks_exact(Q6_K_BYTES).zip(a.chunks_exact(SUBS)) {
            let mut scaled = 0f32;
            for (k, y) in ys.iter().enumerate() {
                // Activation block k is run g of half n (see `q6_k_value`).
                let (n, g) = (k / 4, k % 4);
                let ql = &b[64 * n + QK * (g % 2)..][..QK];
                let qh = &b[Q6_K_QH_AT + QK * n..][..QK];
                let (lo_shift, hi_shift) = (4 * (g / 2), 2 * g);
                let mut isum = 0i32;
                for h in 0..2 {
                    let mut part = 0i32;
                    for l in 16 * h..16 * (h + 1) {
                        let q = ((ql[l] >> lo_shift) & 0x0f) | (((qh[l] >> hi_shift) & 3) << 4);
                        part += (i32::from(q) - 32) * i32::from(y.qs[l]);
                    }
                    // The scales are i8 stored as bytes.
                    isum += i32::from(b[Q6_K_SCALES_AT + 2 * k + h] as i8) * part;
                }
                // |isum| <= 2 * 16 * 32 * 127 * 128 < 2^24: exact in f32.
                scaled += y.d * isum as f32;
            }
            acc += f16_at(b, Q6_K_D_AT) * scaled;
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
pub(crate) mod tests;
