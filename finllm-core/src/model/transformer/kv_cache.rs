//! Keys and values of one sequence, kept in flat growable buffers.
//!
//! Rows are token-major (`[len, n_kv_heads * head_dim]`) so a new token is one append and the
//! single-token decode path reads them in place; the general path builds a candle tensor from
//! them when it needs one.

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::error::{Error, Result};

/// Storage precision of a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    /// Half the memory; llama.cpp's default, so logits compare most closely with it.
    #[default]
    F16,
    /// Exact: for tests that compare two weight layouts bit for bit.
    F32,
}

/// One layer's keys or values.
#[derive(Debug, Clone)]
pub(super) enum KvRows {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl KvRows {
    fn new(precision: KvPrecision) -> Self {
        match precision {
            KvPrecision::F16 => KvRows::F16(Vec::new()),
            KvPrecision::F32 => KvRows::F32(Vec::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            KvRows::F16(v) => v.len(),
            KvRows::F32(v) => v.len(),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            KvRows::F16(v) => v.truncate(n),
            KvRows::F32(v) => v.truncate(n),
        }
    }

    fn extend(&mut self, values: &[f32]) {
        match self {
            KvRows::F16(v) => v.extend(values.iter().map(|&x| f16::from_f32(x))),
            KvRows::F32(v) => v.extend_from_slice(values),
        }
    }

    /// Every stored row as an f32 tensor `[rows, n_kv, head_dim]`.
    fn to_tensor(&self, n_kv: usize, head_dim: usize) -> Result<Tensor> {
        let rows = self.len() / (n_kv * head_dim);
        let shape = (rows, n_kv, head_dim);
        Ok(match self {
            KvRows::F16(v) => Tensor::from_slice(v, shape, &Device::Cpu)?.to_dtype(DType::F32)?,
            KvRows::F32(v) => Tensor::from_slice(v, shape, &Device::Cpu)?,
        })
    }
}

/// Keys and values of one sequence, per layer, stored in f16 by default.
#[derive(Debug, Clone)]
pub struct KvCache {
    /// Per layer: (keys, values). During a forward call layers already processed hold the new
    /// tokens too; `len` only moves once every layer has them.
    layers: Vec<(KvRows, KvRows)>,
    len: usize,
    /// Values per token row (`n_kv_heads * head_dim`), fixed by the first append.
    width: usize,
    precision: KvPrecision,
}

impl KvCache {
    /// An empty cache for a model with `n_layers` layers.
    pub fn new(n_layers: usize, precision: KvPrecision) -> Self {
        Self {
            layers: (0..n_layers)
                .map(|_| (KvRows::new(precision), KvRows::new(precision)))
                .collect(),
            len: 0,
            width: 0,
            precision,
        }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn precision(&self) -> KvPrecision {
        self.precision
    }

    pub(super) fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Forget everything after the first `len` positions (also rows that a failed forward call
    /// appended to some layers but never committed).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Ok(());
        }
        for (k, v) in &mut self.layers {
            k.truncate(len * self.width);
            v.truncate(len * self.width);
        }
        self.len = len;
        Ok(())
    }

    /// Bytes held by the cache.
    pub fn size_bytes(&self) -> usize {
        let elem = match self.precision {
            KvPrecision::F16 => 2,
            KvPrecision::F32 => 4,
        };
        self.layers.iter().map(|(k, v)| (k.len() + v.len()) * elem).sum()
    }

    /// Append token rows (`[tokens, width]`, row-major) of keys and values to `layer`.
    pub(super) fn append_rows(&mut self, layer: usize, k: &[f32], v: &[f32], width: usize) -> Result<()> {
        if self.width == 0 {
            self.width = width;
        } else if self.width != width {
            return Err(Error::invalid("cache", "the KV cache belongs to a different model"));
        }
        let (kr, vr) = &mut self.layers[layer];
        kr.extend(k);
        vr.extend(v);
        Ok(())
    }

    /// Keys and values of `layer`, every row stored so far.
    pub(super) fn rows(&self, layer: usize) -> (&KvRows, &KvRows) {
        let (k, v) = &self.layers[layer];
        (k, v)
    }

    /// Append `k, v: [n_kv, tokens, head_dim]` to `layer` and return everything cached for it
    /// as f32 `[n_kv, len, head_dim]` (values pass through the storage precision, as in the
    /// decode path).
    pub(super) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n_kv, _, head_dim) = k.dims3()?;
        let token_major = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?) };
        self.append_rows(layer, &token_major(k)?, &token_major(v)?, n_kv * head_dim)?;
        let (kr, vr) = self.rows(layer);
        let back = |r: &KvRows| -> Result<Tensor> { Ok(r.to_tensor(n_kv, head_dim)?.transpose(0, 1)?.contiguous()?) };
        Ok((back(kr)?, back(vr)?))
    }

    /// Count `tokens` new positions as cached, once every layer holds them.
    pub(super) fn commit(&mut self, tokens: usize) {
        self.len += tokens;
    }
}
