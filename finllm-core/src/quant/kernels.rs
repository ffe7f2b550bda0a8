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
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    const PREFETCH_DISTANCE: usize = 1024;

    // The safe wrappers are only handed out by `dot_fn` after `Isa::detect` / `Isa::available`
    // confirmed AVX2, FMA and F16C on this CPU.

    pub fn q4_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        assert!(row.len() >= a.len() * Q4_0_BYTES);
        // SAFETY: AVX2+FMA present (see above); the assert bounds every load.
        unsafe { q4_0_impl(row, a) }
    }

    pub fn q4_1(row: &[u8], a: &[BlockQ8]) -> f32 {
        assert!(row.len() >= a.len() * Q4_1_BYTES);
        // SAFETY: AVX2+FMA present (see above); the assert bounds every load.
        unsafe { q4_1_impl(row, a) }
    }

    pub fn q8_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        assert!(row.len() >= a.len() * Q8_0_BYTES);
        // SAFETY: AVX2+FMA present (see above); the assert bounds every load.
        unsafe { q8_0_impl(row, a) }
    }

    pub fn q5_0(row: &[u8], a: &[BlockQ8]) -> f32 {
        assert!(row.len() >= a.len() * Q5_0_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q5_impl::<false, 1>(row, [a])[0] }
    }

    pub fn q5_0_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_0_BYTES);
        // SAFETY: as for q5_0.
        unsafe { q5_impl::<false, 4>(row, a) }
    }

    pub fn q5_0_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_0_BYTES);
        // SAFETY: as for q5_0.
        unsafe { q5_impl::<false, N>(row, a) }
    }

    pub fn q5_1(row: &[u8], a: &[BlockQ8]) -> f32 {
        assert!(row.len() >= a.len() * Q5_1_BYTES);
        // SAFETY: as for q5_0.
        unsafe { q5_impl::<true, 1>(row, [a])[0] }
    }

    pub fn q5_1_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_1_BYTES);
        // SAFETY: as for q5_0.
        unsafe { q5_impl::<true, 4>(row, a) }
    }

    pub fn q5_1_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q5_1_BYTES);
        // SAFETY: as for q5_0.
        unsafe { q5_impl::<true, N>(row, a) }
    }

    /// 0xff in lane `j` where bit `j` of the little-endian u32 at `p` is set, else 0.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bit_lanes(p: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 4 readable bytes at p.
        let bits = unsafe { p.cast::<u32>().read_unaligned() };
        // Lane j takes byte j / 8 of the word...
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
        );
        // ...and is all ones once every bit but j % 8 is set too.
        let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
        _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi8(-1))
    }

    /// Q5_0 (`MIN = false`: weights `d·(q - 16)`) and Q5_1 (`MIN = true`: `d·q + m`) for `N`
    /// tokens. The 5-bit values are unsigned, so they multiply the signed activations directly;
    /// Q5_0's `- 16` comes off as `16·Σy` per block, as Q4_0's `- 8` does. The same operations
    /// run per token whatever `N`, so the four-token results equal the one-token ones.
    // The token index walks the token arrays and their accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_impl<const MIN: bool, const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let (bytes, qh_at) = if MIN { (Q5_1_BYTES, 4) } else { (Q5_0_BYTES, 2) };
        let mut acc = [_mm256_setzero_ps(); N];
        let mut scalar_terms = [0f32; N];
        for i in 0..a[0].len() {
            // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
            let b = unsafe { row.as_ptr().add(i * bytes) };
            prefetch(b);
            let d = unsafe { f16(b) };
            let fifth = _mm256_and_si256(unsafe { bit_lanes(b.add(qh_at)) }, _mm256_set1_epi8(0x10));
            let q = _mm256_or_si256(unsafe { nibbles(b.add(qh_at + 4)) }, fifth);
            for t in 0..N {
                let y = &a[t][i];
                let dd = d * y.d;
                let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8_i8(q, s), acc[t]);
                if MIN {
                    scalar_terms[t] += unsafe { f16(b.add(2)) } * y.s;
                } else {
                    scalar_terms[t] -= dd * (16 * y.sum) as f32;
                }
            }
        }
        std::array::from_fn(|t| hsum(acc[t]) + scalar_terms[t])
    }

    /// 32 nibbles from 16 bytes: low nibbles in lanes 0..16, high nibbles in lanes 16..32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 16 readable bytes at p.
        let raw = unsafe { _mm_loadu_si128(p.cast()) };
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(raw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// Sum of u8 × i8 products as 8 i32 lanes converted to f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_u8_i8(u: __m256i, s: __m256i) -> __m256 {
        let p16 = _mm256_maddubs_epi16(u, s);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Ask for the weights a few cache lines ahead: on the VMs we run on, the hardware
    /// prefetcher alone leaves a single core at a third of its cache-resident speed.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn prefetch(p: *const u8) {
        // Prefetching never faults, even past the end of the mapping.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_DISTANCE).cast());
    }

    /// An f16 at `p` (unaligned) as f32, with the F16C instruction.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn f16(p: *const u8) -> f32 {
        // SAFETY: the caller guarantees 2 readable bytes at p.
        let bits = unsafe { p.cast::<u16>().read_unaligned() };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_impl(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut correction = 0f32;
        for (i, y) in a.iter().enumerate() {
            // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
            let b = unsafe { row.as_ptr().add(i * Q4_0_BYTES) };
            prefetch(b);
            let dd = unsafe { f16(b) } * y.d;
            let q = unsafe { nibbles(b.add(2)) };
            let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8_i8(q, s), acc);
            // The weights are nibble - 8: subtract 8 * sum(activations).
            correction += dd * (8 * y.sum) as f32;
        }
        hsum(acc) - correction
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_impl(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (i, y) in a.iter().enumerate() {
            // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
            let b = unsafe { row.as_ptr().add(i * Q4_1_BYTES) };
            prefetch(b);
            let q = unsafe { nibbles(b.add(4)) };
            let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let d = unsafe { f16(b) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), dot_u8_i8(q, s), acc);
            offsets += unsafe { f16(b.add(2)) } * y.s;
        }
        hsum(acc) + offsets
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_impl(row: &[u8], a: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (i, y) in a.iter().enumerate() {
            // SAFETY: bounds asserted by the wrapper; BlockQ8::qs is 32 bytes.
            let b = unsafe { row.as_ptr().add(i * Q8_0_BYTES) };
            prefetch(b);
            let w = unsafe { _mm256_loadu_si256(b.add(2).cast()) };
            let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            // |w| as unsigned times activations carrying w's sign.
            let p = dot_u8_i8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(unsafe { f16(b) } * y.d), p, acc);
        }
        hsum(acc)
    }

    pub fn q4_0_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_0_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q4_0_xn_impl::<4>(row, a) }
    }

    pub fn q4_0_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_0_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q4_0_xn_impl::<N>(row, a) }
    }

    pub fn q4_1_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_1_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q4_1_xn_impl::<4>(row, a) }
    }

    pub fn q4_1_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q4_1_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q4_1_xn_impl::<N>(row, a) }
    }

    pub fn q8_0_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q8_0_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q8_0_xn_impl::<4>(row, a) }
    }

    pub fn q8_0_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let n = a[0].len();
        assert!(a.iter().all(|x| x.len() == n) && row.len() >= n * Q8_0_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); the assert bounds every load.
        unsafe { q8_0_xn_impl::<N>(row, a) }
    }

    // The x4 and xn (2 or 3 tokens) kernels repeat the single-token arithmetic per token, in the
    // same order, so each lane's result is bit-identical to the single-token kernel's.

    // The block index walks the row and four token arrays in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_xn_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut correction = [0f32; N];
        for i in 0..a[0].len() {
            // SAFETY: bounds asserted by the wrapper.
            let b = unsafe { row.as_ptr().add(i * Q4_0_BYTES) };
            prefetch(b);
            let d = unsafe { f16(b) };
            let q = unsafe { nibbles(b.add(2)) };
            for t in 0..N {
                let y = &a[t][i];
                let dd = d * y.d;
                let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dd), dot_u8_i8(q, s), acc[t]);
                correction[t] += dd * (8 * y.sum) as f32;
            }
        }
        std::array::from_fn(|t| hsum(acc[t]) - correction[t])
    }

    // The block index walks the row and four token arrays in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_1_xn_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut offsets = [0f32; N];
        for i in 0..a[0].len() {
            // SAFETY: bounds asserted by the wrapper.
            let b = unsafe { row.as_ptr().add(i * Q4_1_BYTES) };
            prefetch(b);
            let q = unsafe { nibbles(b.add(4)) };
            let (d, m) = unsafe { (f16(b), f16(b.add(2))) };
            for t in 0..N {
                let y = &a[t][i];
                let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), dot_u8_i8(q, s), acc[t]);
                offsets[t] += m * y.s;
            }
        }
        std::array::from_fn(|t| hsum(acc[t]) + offsets[t])
    }

    // The block index walks the row and four token arrays in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q8_0_xn_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..a[0].len() {
            // SAFETY: bounds asserted by the wrapper.
            let b = unsafe { row.as_ptr().add(i * Q8_0_BYTES) };
            prefetch(b);
            let w = unsafe { _mm256_loadu_si256(b.add(2).cast()) };
            let d = unsafe { f16(b) };
            let aw = _mm256_sign_epi8(w, w);
            for t in 0..N {
                let y = &a[t][i];
                let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                let p = dot_u8_i8(aw, _mm256_sign_epi8(s, w));
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y.d), p, acc[t]);
            }
        }
        std::array::from_fn(|t| hsum(acc[t]))
    }

    // K-quants: one generic body serves the single-token kernel (N = 1) and the four-token one,
    // so every token sees exactly the same sequence of operations.

    pub fn q4_k(row: &[u8], a: &[BlockQ8]) -> f32 {
        check_k(row, &[a], Q4_K_BYTES);
        // SAFETY: AVX2+FMA+F16C present (see above); loads stay inside bounds-checked slices.
        unsafe { q4_5_k_impl::<1, false>(row, [a])[0] }
    }

    pub fn q4_k_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        check_k(row, &a, Q4_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q4_5_k_impl::<4, false>(row, a) }
    }

    pub fn q4_k_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        check_k(row, &a, Q4_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q4_5_k_impl::<N, false>(row, a) }
    }

    pub fn q5_k(row: &[u8], a: &[BlockQ8]) -> f32 {
        check_k(row, &[a], Q5_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q4_5_k_impl::<1, true>(row, [a])[0] }
    }

    pub fn q5_k_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        check_k(row, &a, Q5_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q4_5_k_impl::<4, true>(row, a) }
    }

    pub fn q5_k_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        check_k(row, &a, Q5_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q4_5_k_impl::<N, true>(row, a) }
    }

    pub fn q6_k(row: &[u8], a: &[BlockQ8]) -> f32 {
        check_k(row, &[a], Q6_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q6_k_impl::<1>(row, [a])[0] }
    }

    pub fn q6_k_x4(row: &[u8], a: [&[BlockQ8]; 4]) -> [f32; 4] {
        check_k(row, &a, Q6_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q6_k_impl::<4>(row, a) }
    }

    pub fn q6_k_xn<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        check_k(row, &a, Q6_K_BYTES);
        // SAFETY: as for q4_k.
        unsafe { q6_k_impl::<N>(row, a) }
    }

    /// Whole super-blocks, every token as long as the first, and the row long enough.
    pub(super) fn check_k(row: &[u8], a: &[&[BlockQ8]], bytes: usize) {
        let n = a[0].len();
        assert!(
            n.is_multiple_of(SUBS) && a.iter().all(|x| x.len() == n) && row.len() >= n / SUBS * bytes,
            "K-quant row of {} bytes against {n} activation blocks",
            row.len()
        );
    }

    /// Prefetch every cache line of a super-block (see [`prefetch`]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn prefetch_block(b: *const u8, bytes: usize) {
        for off in (0..bytes).step_by(64) {
            prefetch(b.wrapping_add(off));
        }
    }

    /// `d * v[j]` for eight 6-bit scales or mins.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn times8(d: f32, v: [u8; SUBS]) -> __m256 {
        let w = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(i64::from_le_bytes(v))));
        _mm256_mul_ps(_mm256_set1_ps(d), w)
    }

    /// The scales `d` and the exact sums of a super-block's eight activation blocks, as two
    /// vectors (lane `j` from block `j`): the first 16 bytes of each block are `d, s, sum, pad`,
    /// and a 4 × 4 transpose brings the `d`s and the `sum`s together.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn scales_and_sums(ys: &[BlockQ8; SUBS]) -> (__m256, __m256) {
        let p = ys.as_ptr().cast::<f32>();
        let stride = size_of::<BlockQ8>() / size_of::<f32>();
        // SAFETY: each load reads the first 16 bytes of one of the eight blocks, which are
        // 16-byte aligned (`repr(align(16))`).
        let (v04, v15, v26, v37) = unsafe {
            let head = |j: usize| p.add(j * stride);
            (
                _mm256_set_m128(_mm_load_ps(head(4)), _mm_load_ps(head(0))),
                _mm256_set_m128(_mm_load_ps(head(5)), _mm_load_ps(head(1))),
                _mm256_set_m128(_mm_load_ps(head(6)), _mm_load_ps(head(2))),
                _mm256_set_m128(_mm_load_ps(head(7)), _mm_load_ps(head(3))),
            )
        };
        // [d0 d1 s0 s1 | d4 d5 s4 s5], [d2 d3 s2 s3 | d6 d7 s6 s7] -> [d0 d1 d2 d3 | d4 d5 d6 d7]
        let lo = (_mm256_unpacklo_ps(v04, v15), _mm256_unpacklo_ps(v26, v37));
        let d = _mm256_shuffle_ps::<0b01_00_01_00>(lo.0, lo.1);
        let hi = (_mm256_unpackhi_ps(v04, v15), _mm256_unpackhi_ps(v26, v37));
        let sum_bits = _mm256_castps_si256(_mm256_shuffle_ps::<0b01_00_01_00>(hi.0, hi.1));
        // |sum| <= 32 * 127: exact in f32.
        (d, _mm256_cvtepi32_ps(sum_bits))
    }

    /// The eight sub-blocks of a Q4_K / Q5_K super-block as unsigned bytes (0..16 or 0..32).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack_q4_5_k<const HIGH: bool>(b: *const u8) -> [__m256i; SUBS] {
        let m4 = _mm256_set1_epi8(0x0f);
        let qs_at = if HIGH { Q5_K_QS_AT } else { Q4_K_QS_AT };
        let mut q = [_mm256_setzero_si256(); SUBS];
        // SAFETY (all loads): the caller guarantees a whole super-block at b.
        let qh = if HIGH {
            unsafe { _mm256_loadu_si256(b.add(Q5_K_QH_AT).cast()) }
        } else {
            _mm256_setzero_si256()
        };
        for p in 0..SUBS / 2 {
            let raw = unsafe { _mm256_loadu_si256(b.add(qs_at + QK * p).cast()) };
            q[2 * p] = _mm256_and_si256(raw, m4);
            q[2 * p + 1] = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
            if HIGH {
                // Bits 2p and 2p + 1 of each qh byte are the fifth bits of this pair; a 16-bit
                // shift by at most 6 leaves them uncontaminated by the next byte.
                let h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * p as i32));
                let one = _mm256_and_si256(h, _mm256_set1_epi8(1));
                let two = _mm256_and_si256(h, _mm256_set1_epi8(2));
                q[2 * p] = _mm256_or_si256(q[2 * p], _mm256_slli_epi16(one, 4));
                q[2 * p + 1] = _mm256_or_si256(q[2 * p + 1], _mm256_slli_epi16(two, 3));
            }
        }
        q
    }

    /// The activation blocks of super-block `i` for one token.
    #[inline(always)]
    pub(super) fn super_block(a: &[BlockQ8], i: usize) -> &[BlockQ8; SUBS] {
        a[SUBS * i..SUBS * (i + 1)].try_into().expect("eight blocks")
    }

    /// Q4_K (`HIGH = false`) and Q5_K (`HIGH = true`, the fifth bits in 32 bytes before the
    /// nibbles) for `N` tokens. Per token the weights of a super-block are unpacked once and its
    /// eight sub-blocks run in order, into two accumulators (even and odd sub-blocks, halving
    /// the FMA dependency chain); the minimum term `-Σ_j dmin·min_j · d_j·sum_j` joins them as
    /// one vector FMA per super-block, since only the sum of their lanes matters.
    // The token index walks the token arrays and their accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_5_k_impl<const N: usize, const HIGH: bool>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let bytes = if HIGH { Q5_K_BYTES } else { Q4_K_BYTES };
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for (i, blk) in row.chunks_exact(bytes).take(a[0].len() / SUBS).enumerate() {
            let b = blk.as_ptr();
            prefetch_block(b, bytes);
            // SAFETY: blk holds a whole super-block.
            let (d, dmin) = unsafe { (f16(b), f16(b.add(2))) };
            let q = unsafe { unpack_q4_5_k::<HIGH>(b) };
            let (sc, m) = k_scales_mins(&blk[K_SCALES_AT..]);
            let (dsc, dmm) = (times8(d, sc), times8(dmin, m));
            for t in 0..N {
                let ys = super_block(a[t], i);
                let (yd, ysum) = scales_and_sums(ys);
                let mut scale = [0f32; SUBS];
                // SAFETY: scale holds eight f32.
                unsafe { _mm256_storeu_ps(scale.as_mut_ptr(), _mm256_mul_ps(dsc, yd)) };
                let [mut even, mut odd] = acc[t];
                even = _mm256_fnmadd_ps(dmm, _mm256_mul_ps(yd, ysum), even);
                for p in 0..SUBS / 2 {
                    let (j, k) = (2 * p, 2 * p + 1);
                    // SAFETY: BlockQ8::qs is 32 bytes.
                    let (sj, sk) = unsafe {
                        (
                            _mm256_loadu_si256(ys[j].qs.as_ptr().cast()),
                            _mm256_loadu_si256(ys[k].qs.as_ptr().cast()),
                        )
                    };
                    even = _mm256_fmadd_ps(_mm256_set1_ps(scale[j]), dot_u8_i8(q[j], sj), even);
                    odd = _mm256_fmadd_ps(_mm256_set1_ps(scale[k]), dot_u8_i8(q[k], sk), odd);
                }
                acc[t] = [even, odd];
            }
        }
        std::array::from_fn(|t| hsum(_mm256_add_ps(acc[t][0], acc[t][1])))
    }

    /// One half (128 elements) of a Q6_K super-block: four runs of 32 six-bit values minus 32,
    /// as signed bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack_q6_k_half(b: *const u8, n: usize) -> [__m256i; 4] {
        let m4 = _mm256_set1_epi8(0x0f);
        // SAFETY: the caller guarantees a whole super-block at b.
        let (ql0, ql1, qh) = unsafe {
            (
                _mm256_loadu_si256(b.add(64 * n).cast()),
                _mm256_loadu_si256(b.add(64 * n + QK).cast()),
                _mm256_loadu_si256(b.add(Q6_K_QH_AT + QK * n).cast()),
            )
        };
        // The bit pairs of qh moved to bits 4-5 of each byte (16-bit shifts, masked after the
        // shift so nothing leaks in from the neighbouring byte).
        let q = [
            _mm256_or_si256(
                _mm256_and_si256(ql0, m4),
                _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x03)), 4),
            ),
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_slli_epi16(_mm256_and_si256(qh, _mm256_set1_epi8(0x0c)), 2),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
            ),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30)),
            ),
        ];
        let m32 = _mm256_set1_epi8(32);
        [
            _mm256_sub_epi8(q[0], m32),
            _mm256_sub_epi8(q[1], m32),
            _mm256_sub_epi8(q[2], m32),
            _mm256_sub_epi8(q[3], m32),
        ]
    }

    /// Q6_K for `N` tokens. The 6-bit values minus 32 are signed, so (as for Q8_0) their
    /// magnitudes multiply activations that carry their signs; the two i8 scales of the
    /// 16-element halves of an activation block enter through the pairwise i16 → i32 sum.
    // The token index walks the token arrays and their accumulators in lockstep.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q6_k_impl<const N: usize>(row: &[u8], a: [&[BlockQ8]; N]) -> [f32; N] {
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        for (i, blk) in row.chunks_exact(Q6_K_BYTES).take(a[0].len() / SUBS).enumerate() {
            let b = blk.as_ptr();
            prefetch_block(b, Q6_K_BYTES);
            // SAFETY: blk holds a whole super-block.
            let d = unsafe { f16(b.add(Q6_K_D_AT)) };
            let scales = unsafe { _mm_loadu_si128(b.add(Q6_K_SCALES_AT).cast()) };
            for n in 0..2 {
                let w = unsafe { unpack_q6_k_half(b, n) };
                let aw = [
                    _mm256_abs_epi8(w[0]),
                    _mm256_abs_epi8(w[1]),
                    _mm256_abs_epi8(w[2]),
                    _mm256_abs_epi8(w[3]),
                ];
                // Scales 2k and 2k + 1 as i16, each spread over the eight pair sums of its
                // 16 elements (k = 4n + g <= 7, so the byte patterns fit).
                let mut sc = [_mm256_setzero_si256(); 4];
                for (g, sc) in sc.iter_mut().enumerate() {
                    let k = (4 * n + g) as i64;
                    let pick = _mm_set_epi64x(0x0101_0101_0101_0101 * (2 * k + 1), 0x0101_0101_0101_0101 * (2 * k));
                    *sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, pick));
                }
                for t in 0..N {
                    let ys = super_block(a[t], i);
                    let [mut even, mut odd] = acc[t];
                    for g in 0..4 {
                        let y = &ys[4 * n + g];
                        // SAFETY: BlockQ8::qs is 32 bytes.
                        let s = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
                        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[g], _mm256_sign_epi8(s, w[g])), sc[g]);
                        let dd = _mm256_set1_ps(d * y.d);
                        if g % 2 == 0 {
                            even = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), even);
                        } else {
                            odd = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(p), odd);
                        }
                    }
                    acc[t] = [even, odd];
                }
            }
        }
        std::array::from_fn(|t| hsum(_mm256_add_ps(acc[t][0], acc[t][1])))
    }
}

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::quant::blocks::Q6_K_D_AT;
    use crate::quant::blocks::{dequantize_row, quantize_q8};
    use crate::util::Rng;

    /// Every format with a kernel.
    /// A row of `n` weights quantized by candle from uniform values.
    pub(crate) fn random_row(rng: &mut Rng, dtype: QuantType, n: usize) -> Vec<u8> {
        let values: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
        crate::tools::synthetic::encode(&values, &[1, n], dtype).unwrap()
    }

    /// A row of `n` weights as random bytes, with finite f16 scales: reaches bit patterns a
    /// quantizer may never write (all 6-bit scales and mins, every sign of `d`).
    pub(crate) fn random_bytes(rng: &mut Rng, dtype: QuantType, n: usize) -> Vec<u8> {
        let bytes = block_bytes(dtype);
        let scale_at: &[usize] = match dtype {
            QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0 => &[0],
            QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => &[0, 2],
            QuantType::Q6K => &[Q6_K_D_AT],
            other => unreachable!("{other} has no kernel"),
        };
        let mut row: Vec<u8> = (0..n / dtype.block_size() as usize * bytes)
            .map(|_| rng.next_u64() as u8)
            .collect();
        for b in row.chunks_exact_mut(bytes) {
            for &at in scale_at {
                let v = half::f16::from_f32(((rng.next_f64() * 2.0 - 1.0) * 0.05) as f32);
                b[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        row
    }

    pub(crate) fn activations(rng: &mut Rng, blocks: usize, spread: f64) -> Vec<BlockQ8> {
        let x: Vec<f32> = (0..blocks * QK)
            .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
            .collect();
        let mut a = vec![BlockQ8::default(); blocks];
        quantize_q8(&x, &mut a);
        a
    }

    /// Awkward lengths in weight blocks: one block, odd counts, long rows.
    pub(crate) fn block_counts(dtype: QuantType) -> &'static [usize] {
        if dtype.block_size() as usize == QK {
            &[1, 2, 3, 7, 18, 48, 129]
        } else {
            &[1, 2, 3, 5, 18]
        }
    }

    /// The f64 dot product of the dequantized row with the activations, and the sum of the
    /// products' magnitudes (what f32 rounding errors scale with when terms cancel).
    pub(crate) fn f64_dot(dtype: QuantType, row: &[u8], a: &[BlockQ8]) -> (f64, f64) {
        let mut w = vec![0f32; a.len() * QK];
        dequantize_row(dtype, row, &mut w);
        let act = a
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| f64::from(q) * f64::from(b.d)));
        w.iter()
            .zip(act)
            .map(|(w, x)| f64::from(*w) * x)
            .fold((0.0, 0.0), |(sum, mag), p| (sum + p, mag + p.abs()))
    }

    #[test]
    fn every_kernel_matches_the_f64_dequantized_dot() {
        let mut rng = Rng::new(99);
        for dtype in KERNEL_FORMATS {
            for &blocks in block_counts(dtype) {
                let n = blocks * dtype.block_size() as usize;
                let a = activations(&mut rng, n / QK, 3.0);
                let rows = [random_row(&mut rng, dtype, n), random_bytes(&mut rng, dtype, n)];
                for (source, row) in ["quantized", "random bytes"].iter().zip(&rows) {
                    // Q4_1's offset term uses s = d * sum rounded through f16.
                    let (want, magnitude) = f64_dot(dtype, row, &a);
                    let scalar = f64::from(dot_fn(dtype, Isa::Scalar).unwrap()(row, &a));
                    let tol = 1e-3
                        * (1.0 + want.abs())
                        * if matches!(dtype, QuantType::Q4_1 | QuantType::Q5_1) {
                            4.0
                        } else {
                            1.0
                        };
                    assert!(
                        (scalar - want).abs() <= tol,
                        "{dtype} scalar {blocks} blocks ({source}): {scalar} vs {want}"
                    );
                    for isa in Isa::available() {
                        let got = f64::from(dot_fn(dtype, isa).unwrap()(row, &a));
                        assert!(
                            (got - scalar).abs() <= 1e-6 * (1.0 + magnitude),
                            "{dtype} {isa:?} {blocks} blocks ({source}): {got} vs scalar {scalar}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn four_three_and_two_token_kernels_are_bit_identical_to_single_token_ones() {
        let mut rng = Rng::new(5);
        for dtype in KERNEL_FORMATS {
            for &blocks in &block_counts(dtype)[..5] {
                let n = blocks * dtype.block_size() as usize;
                let acts: Vec<Vec<BlockQ8>> = (0..4).map(|_| activations(&mut rng, n / QK, 2.0)).collect();
                let row = random_row(&mut rng, dtype, n);
                for isa in Isa::available() {
                    let one = dot_fn(dtype, isa).unwrap();
                    let four = dot4_fn(dtype, isa).unwrap()(&row, [&acts[0], &acts[1], &acts[2], &acts[3]]);
                    for t in 0..4 {
                        assert_eq!(
                            four[t].to_bits(),
                            one(&row, &acts[t]).to_bits(),
                            "{dtype} {isa:?} {blocks} blocks token {t}"
                        );
                    }
                    if let Some(dot2) = dotn_fn::<2>(dtype, isa) {
                        let two = dot2(&row, [&acts[1], &acts[3]]);
                        for (t, y) in [1, 3].into_iter().zip(two) {
                            assert_eq!(
                                y.to_bits(),
                                one(&row, &acts[t]).to_bits(),
                                "{dtype} {isa:?} {blocks} blocks, two tokens, token {t}"
                            );
                        }
                    } else {
                        assert!(
                            matches!(isa, Isa::Neon | Isa::NeonDot),
                            "{dtype} {isa:?} has no two-token kernel"
                        );
                    }
                    if let Some(dot3) = dotn_fn::<3>(dtype, isa) {
                        let three = dot3(&row, [&acts[2], &acts[0], &acts[3]]);
                        for (t, y) in [2, 0, 3].into_iter().zip(three) {
                            assert_eq!(
                                y.to_bits(),
                                one(&row, &acts[t]).to_bits(),
                                "{dtype} {isa:?} {blocks} blocks, three tokens, token {t}"
                            );
                        }
                    } else {
                        assert!(
                            matches!(isa, Isa::Neon | Isa::NeonDot),
                            "{dtype} {isa:?} has no three-token kernel"
                        );
                    }
                }
            }
        }
    }

    /// Scripts that run these tests on several (emulated) CPUs name the best level each must
    /// offer (`FINLLM_EXPECT_ISA=NeonDot`): a CPU that lacks it, or has more, fails instead of
    /// quietly leaving a level's kernels untested.
    #[test]
    fn the_best_level_is_the_expected_one() {
        let Ok(want) = std::env::var("FINLLM_EXPECT_ISA") else {
            return;
        };
        let available = Isa::available();
        let best = available.last().expect("scalar is always available");
        assert_eq!(format!("{best:?}"), want, "levels on this CPU: {available:?}");
    }

    /// The NEON kernels keep the scalar reference's f32 operations and order (only the exact
    /// integer sums are vectorised), so they reproduce it bit for bit, on every bit pattern.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_kernels_are_bit_identical_to_scalar() {
        let neon: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|isa| matches!(isa, Isa::Neon | Isa::NeonDot))
            .collect();
        assert!(!neon.is_empty(), "no NEON level detected on an AArch64 CPU");
        let mut rng = Rng::new(7);
        for dtype in KERNEL_FORMATS {
            for &blocks in block_counts(dtype) {
                let n = blocks * dtype.block_size() as usize;
                let acts: Vec<Vec<BlockQ8>> = (0..4).map(|_| activations(&mut rng, n / QK, 3.0)).collect();
                let a = [&acts[0][..], &acts[1], &acts[2], &acts[3]];
                for row in [random_row(&mut rng, dtype, n), random_bytes(&mut rng, dtype, n)] {
                    let want = a.map(|a| dot_fn(dtype, Isa::Scalar).unwrap()(&row, a).to_bits());
                    for &isa in &neon {
                        let one = a.map(|a| dot_fn(dtype, isa).unwrap()(&row, a).to_bits());
                        let four = dot4_fn(dtype, isa).unwrap()(&row, a).map(f32::to_bits);
                        assert_eq!(one, want, "{dtype} {isa:?} {blocks} blocks, one token");
                        assert_eq!(four, want, "{dtype} {isa:?} {blocks} blocks, four tokens");
                    }
                }
            }
        }
    }

    #[test]
    fn dequantization_equals_candles() {
        use candle_core::quantized::ggml_file::qtensor_from_ggml;
        use candle_core::Device;
        let mut rng = Rng::new(17);
        for dtype in KERNEL_FORMATS {
            let (rows, cols) = (3, 2 * dtype.block_size() as usize);
            let bytes = random_bytes(&mut rng, dtype, rows * cols);
            let q = qtensor_from_ggml(dtype.to_candle(), &bytes, vec![rows, cols], &Device::Cpu).unwrap();
            let want = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let mut got = vec![0f32; rows * cols];
            let row_bytes = bytes.len() / rows;
            for (r, out) in got.chunks_exact_mut(cols).enumerate() {
                dequantize_row(dtype, &bytes[r * row_bytes..(r + 1) * row_bytes], out);
            }
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "{dtype} element {i}: {g} vs candle {w}");
            }
        }
    }

    #[test]
    fn rounding_equals_roundf() {
        let mut rng = Rng::new(12);
        let halves = (-300..=300).map(|i| i as f32 * 0.5);
        let near_halves = (-300..=300).flat_map(|i| {
            let h = i as f32 * 0.5;
            [
                f32::from_bits(h.to_bits() + 1),
                f32::from_bits(h.to_bits().saturating_sub(1)),
            ]
        });
        let random = (0..100_000).map(|_| ((rng.next_f64() * 2.0 - 1.0) * 130.0) as f32);
        for y in halves
            .chain(near_halves)
            .chain(random)
            .chain([0.0, -0.0, 0.49999997, -0.49999997])
        {
            assert_eq!(crate::quant::blocks::round_half_away(y), y.round() as i32, "{y:e}");
        }
    }

    #[test]
    fn q8_quantization_rounds_like_llama_cpp() {
        let mut x = vec![0f32; QK];
        x[0] = 127.0; // scale 1.0
        x[1] = -63.5; // exactly half a step: rounds away from zero
        x[2] = 0.4;
        let mut b = [BlockQ8::default()];
        quantize_q8(&x, &mut b);
        assert_eq!(b[0].qs[0], 127);
        assert_eq!(b[0].qs[1], -64);
        assert_eq!(b[0].qs[2], 0);
        assert_eq!(b[0].sum, 127 - 64);
        let zero = [0f32; QK];
        quantize_q8(&zero, &mut b);
        assert_eq!((b[0].d, b[0].sum), (0.0, 0));
    }
}
