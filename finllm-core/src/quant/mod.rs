//! Quantized block formats (the GGML type table) and our own kernels over them.

pub mod bf16dot;
pub mod blocks;
pub mod elementwise;
pub mod encode;
pub mod float;
pub mod gemm;
pub mod halfpair;
pub mod kernels;
pub mod ktile;
pub mod matmul;
pub mod vector;

use std::fmt;

/// Weight rows one task of a parallel matrix product takes ([`matmul`]): the tiles walk a
/// call's rows in blocks of this many, carrying their sums from one run of columns to the next
/// ([`ktile`], [`halfpair`]), so a task is one block.
pub const TASK_ROWS: usize = 16;

/// Bytes ahead of a lone row (one token: decode) that the kernels ask for its weights, into L2. On
/// this host (AMD EPYC, Zen 5 class, in a VM) the kernels bench's one-token tiles on a 64 MiB
/// matrix, one thread, AVX2, streamed Q8_0 at 28 GB/s with 1 KiB ahead into L1, 33-36 with
/// 4 KiB, 40-43 with 8-16 KiB (into L1 or L2 alike), 37 with 32 KiB; Q4_K 27-31, 32-34, 36-40, 40.
/// Into L2 rather than L1 so that CPUs with a 32 KiB L1 keep their activations there.
#[cfg(target_arch = "x86_64")]
pub(crate) const STREAM_AHEAD: usize = 8192;

/// A GGML tensor element type, as stored in GGUF files.
///
/// The discriminants are the on-disk type ids and are never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum QuantType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Q8K = 15,
    BF16 = 30,
}

impl QuantType {
    /// Every type finllm reads.
    pub const ALL: [QuantType; 15] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q8_1,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
        Self::Q8K,
    ];

    /// The type for an on-disk id, or `None` for ids finllm does not know.
    pub fn from_id(id: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|t| *t as u32 == id)
    }

    /// Elements per block.
    pub fn block_size(self) -> u64 {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 | Self::Q8_1 => 32,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K | Self::Q8K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q8_1 => 36,
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::Q8K => 292,
        }
    }

    /// Canonical lower-case name, as llama.cpp prints it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_0 => "q5_0",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q8_1 => "q8_1",
            Self::Q2K => "q2_k",
            Self::Q3K => "q3_k",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
            Self::Q8K => "q8_k",
        }
    }

    /// Parse a name such as `q4_k` (case-insensitive).
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        Self::ALL.iter().copied().find(|t| t.name() == lower)
    }

    /// Bytes needed to store `n_elems` elements, or `None` when `n_elems` is not a whole number
    /// of blocks or the size overflows.
    pub fn bytes_for(self, n_elems: u64) -> Option<u64> {
        if !n_elems.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elems / self.block_size()).checked_mul(self.block_bytes())
    }

    pub(crate) fn to_candle(self) -> candle_core::quantized::GgmlDType {
        use candle_core::quantized::GgmlDType as G;
        match self {
            Self::F32 => G::F32,
            Self::F16 => G::F16,
            Self::BF16 => G::BF16,
            Self::Q4_0 => G::Q4_0,
            Self::Q4_1 => G::Q4_1,
            Self::Q5_0 => G::Q5_0,
            Self::Q5_1 => G::Q5_1,
            Self::Q8_0 => G::Q8_0,
            Self::Q8_1 => G::Q8_1,
            Self::Q2K => G::Q2K,
            Self::Q3K => G::Q3K,
            Self::Q4K => G::Q4K,
            Self::Q5K => G::Q5K,
            Self::Q6K => G::Q6K,
            Self::Q8K => G::Q8K,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_candle() {
        for t in QuantType::ALL {
            let c = t.to_candle();
            assert_eq!(t.block_size() as usize, c.block_size(), "{t}");
            assert_eq!(t.block_bytes() as usize, c.type_size(), "{t}");
            assert_eq!(QuantType::from_id(t as u32), Some(t));
            assert_eq!(QuantType::from_name(t.name()), Some(t));
        }
        assert_eq!(QuantType::from_id(4), None, "id 4 (Q4_2) was removed from GGML");
    }
}
