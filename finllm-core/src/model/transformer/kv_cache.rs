//! Keys and values of one sequence, kept in flat growable buffers.
//!
//! In host memory rows are token-major (`[len, n_kv_heads * head_dim]`) so a new token is one
//! append and the single-token decode path reads them in place; the general path builds a
//! candle tensor from them when it needs one. On a device (the candle backend) each layer is a
//! tensor `[n_kv_heads, capacity, head_dim]` whose first rows are filled in place; it grows by
//! doubling (one copy per doubling rather than one per token), and a cache cloned from another
//! copies the buffer before its first write (clones never see each other's rows).
//!
//! A host cache may start with a shared prefix: another, frozen cache (behind an `Arc`) whose
//! positions it reads as its own first ones without copying them. Many sequences that begin with
//! the same tokens (a system prompt, a retrieval preamble) then hold one copy of that prefix's
//! keys and values; each appends only its own rows after it.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use half::f16;

use crate::error::{Error, Result};
use crate::util::HugeVec;

/// The error of a cache whose rows the system refused memory for.
fn out_of_memory(bytes: usize) -> Error {
    Error::Backend(candle_core::Error::Msg(format!(
        "out of memory: {bytes} more bytes of KV cache refused by the system"
    )))
}

/// Storage precision of a [`KvCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvPrecision {
    /// Half the memory; llama.cpp's default, so logits compare most closely with it.
    #[default]
    F16,
    /// Exact: for tests that compare two weight layouts bit for bit.
    F32,
}

impl KvPrecision {
    fn dtype(self) -> DType {
        match self {
            KvPrecision::F16 => DType::F16,
            KvPrecision::F32 => DType::F32,
        }
    }
}

/// One layer's keys or values.
#[derive(Debug, Clone)]
pub(super) enum KvRows {
    F16(HugeVec<f16>),
    F32(HugeVec<f32>),
    /// Rows on a device, in the cache's precision; `None` while empty.
    Device(Option<DeviceRows>),
}

/// One layer's keys or values on a device: a buffer `[n_kv, capacity, head_dim]` of which the
/// first `rows` positions are written.
#[derive(Debug, Clone)]
pub(super) struct DeviceRows {
    /// Shared between clones of a cache until one of them writes (then it copies first).
    buf: Arc<Tensor>,
    rows: usize,
}

impl DeviceRows {
    fn capacity(&self) -> Result<usize> {
        Ok(self.buf.dim(1)?)
    }

    /// The buffer, writable: room for `rows + extra` positions, and this cache's own copy.
    fn writable<'a>(
        slot: &'a mut Option<DeviceRows>,
        (n_kv, head_dim): (usize, usize),
        dtype: DType,
        device: &Device,
        extra: usize,
    ) -> Result<&'a mut DeviceRows> {
        let rows = slot.as_ref().map_or(0, |r| r.rows);
        let need = rows + extra;
        let cap = match slot.as_ref() {
            Some(r) => r.capacity()?,
            None => 0,
        };
        let unique = slot.as_mut().is_some_and(|r| Arc::get_mut(&mut r.buf).is_some());
        if need > cap || !unique {
            let new_cap = if need > cap { need.max(2 * cap).max(64) } else { cap };
            let buf = Tensor::zeros((n_kv, new_cap, head_dim), dtype, device)?;
            if let Some(old) = slot.as_ref() {
                if old.rows > 0 {
                    let kept = old.buf.narrow(1, 0, old.rows)?.contiguous()?;
                    buf.slice_set(&kept, 1, 0)?;
                }
            }
            *slot = Some(DeviceRows {
                buf: Arc::new(buf),
                rows,
            });
        }
        Ok(slot.as_mut().expect("set above"))
    }
}

impl KvRows {
    fn new(precision: KvPrecision) -> Self {
        match precision {
            KvPrecision::F16 => KvRows::F16(HugeVec::default()),
            KvPrecision::F32 => KvRows::F32(HugeVec::default()),
        }
    }

    /// Values stored.
    fn len(&self) -> usize {
        match self {
            KvRows::F16(v) => v.len(),
            KvRows::F32(v) => v.len(),
            KvRows::Device(r) => match r {
                Some(r) => r.rows * r.buf.dim(0).unwrap_or(0) * r.buf.dim(2).unwrap_or(0),
                None => 0,
            },
        }
    }

    /// Keep the first `rows` token rows of `width` values.
    fn truncate(&mut self, rows: usize, width: usize) -> Result<()> {
        match self {
            KvRows::F16(v) => v.truncate(rows * width),
            KvRows::F32(v) => v.truncate(rows * width),
            KvRows::Device(slot) => {
                if let Some(r) = slot {
                    r.rows = r.rows.min(rows);
                }
            }
        }
        Ok(())
    }

    fn extend(&mut self, values: &[f32]) -> Result<()> {
        match self {
            KvRows::F16(v) => {
                // In bulk (F16C where present, rounding to nearest even as one at a time
                // does): converting value by value cost 7 ns each, a tenth of a batched
                // decode step.
                use half::slice::HalfFloatSliceExt;
                v.grow_zeroed(values.len())
                    .ok_or_else(|| out_of_memory(values.len() * 2))?
                    .convert_from_f32_slice(values);
            }
            KvRows::F32(v) => {
                if !v.extend_from_slice(values) {
                    return Err(out_of_memory(values.len() * 4));
                }
            }
            KvRows::Device(_) => {
                return Err(Error::invalid(
                    "cache",
                    "a device KV cache takes tensors, not host rows",
                ));
            }
        }
        Ok(())
    }

    /// Append `x: [n_kv, tokens, head_dim]` and return every row (after those of `prefix`, if
    /// given) as f32 `[n_kv, len, head_dim]`.
    fn append_tensor(&mut self, x: &Tensor, precision: KvPrecision, prefix: Option<&KvRows>) -> Result<Tensor> {
        let (n_kv, _, head_dim) = x.dims3()?;
        if let KvRows::Device(slot) = self {
            let x = x.to_dtype(precision.dtype())?.contiguous()?;
            let t = x.dim(1)?;
            let rows = DeviceRows::writable(slot, (n_kv, head_dim), precision.dtype(), x.device(), t)?;
            rows.buf.slice_set(&x, 1, rows.rows)?;
            rows.rows += t;
            // A copy in f32: the buffer is written in place by later steps.
            let all = rows.buf.narrow(1, 0, rows.rows)?;
            return Ok(match precision {
                KvPrecision::F32 if all.is_contiguous() => all.copy()?,
                KvPrecision::F32 => all.contiguous()?,
                KvPrecision::F16 => all.to_dtype(DType::F32)?,
            });
        }
        let token_major = x.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?;
        self.extend(&token_major)?;
        let rows = (self.len() + prefix.map_or(0, KvRows::len)) / (n_kv * head_dim);
        let shape = (rows, n_kv, head_dim);
        let all = match (prefix, &*self) {
            (None, KvRows::F16(v)) => Tensor::from_slice(v, shape, &Device::Cpu)?.to_dtype(DType::F32)?,
            (None, KvRows::F32(v)) => Tensor::from_slice(v, shape, &Device::Cpu)?,
            (Some(KvRows::F16(p)), KvRows::F16(v)) => {
                Tensor::from_vec([&p[..], &v[..]].concat(), shape, &Device::Cpu)?.to_dtype(DType::F32)?
            }
            (Some(KvRows::F32(p)), KvRows::F32(v)) => Tensor::from_vec([&p[..], &v[..]].concat(), shape, &Device::Cpu)?,
            _ => {
                return Err(Error::invalid(
                    "cache",
                    "a shared prefix must be kept like the cache that reads it",
                ))
            }
        };
        Ok(all.transpose(0, 1)?.contiguous()?)
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
    /// Where the rows live: `None` for host rows, else the device of the candle backend.
    device: Option<Device>,
    /// A frozen host cache whose positions come before this cache's own rows (`len` counts
    /// them); shared read-only with other caches.
    prefix: Option<Arc<KvCache>>,
}

/// One layer's keys and values as attention reads them: the shared prefix's rows (if any), then
/// the cache's own rows, which continue the positions after `prefix_len`.
pub(super) struct LayerView<'a> {
    pub prefix: Option<(&'a KvRows, &'a KvRows)>,
    pub prefix_len: usize,
    pub own: (&'a KvRows, &'a KvRows),
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
            device: None,
            prefix: None,
        }
    }

    /// An empty host cache with room for `tokens` rows of `width` values in every layer, so that
    /// it never grows beyond what was asked for (the engine reserves each request's whole KV
    /// budget up front).
    pub(super) fn with_capacity(n_layers: usize, precision: KvPrecision, tokens: usize, width: usize) -> Self {
        let rows = |precision| match precision {
            KvPrecision::F16 => KvRows::F16(HugeVec::with_capacity(tokens * width)),
            KvPrecision::F32 => KvRows::F32(HugeVec::with_capacity(tokens * width)),
        };
        Self {
            layers: (0..n_layers).map(|_| (rows(precision), rows(precision))).collect(),
            len: 0,
            width,
            precision,
            device: None,
            prefix: None,
        }
    }

    /// A host cache that starts with the frozen `prefix` (shared, not copied) and has room for
    /// `tokens` more positions of its own.
    pub(super) fn after_prefix(prefix: Arc<KvCache>, tokens: usize) -> Result<Self> {
        if prefix.device.is_some() || prefix.prefix.is_some() {
            return Err(Error::invalid(
                "cache",
                "a shared prefix must be a host cache without a prefix of its own",
            ));
        }
        let mut cache = Self::with_capacity(prefix.n_layers(), prefix.precision, tokens, prefix.width);
        cache.len = prefix.len;
        cache.prefix = Some(prefix);
        Ok(cache)
    }

    /// An empty cache whose layers are tensors on `device` (for the candle backend).
    pub(super) fn on_device(n_layers: usize, precision: KvPrecision, device: &Device) -> Self {
        Self {
            layers: (0..n_layers)
                .map(|_| (KvRows::Device(None), KvRows::Device(None)))
                .collect(),
            len: 0,
            width: 0,
            precision,
            device: Some(device.clone()),
            prefix: None,
        }
    }

    /// Whether this cache is kept where `backend` needs it.
    pub(super) fn fits(&self, backend: &super::Backend) -> bool {
        match (backend, &self.device) {
            (super::Backend::CpuKernels, None) => true,
            (super::Backend::Candle(d), Some(mine)) => d.same_device(mine),
            _ => false,
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

    /// Positions read from a shared prefix (0 without one).
    pub fn shared_prefix_len(&self) -> usize {
        self.prefix.as_ref().map_or(0, |p| p.len)
    }

    /// Forget everything after the first `len` positions (also rows that a failed forward call
    /// appended to some layers but never committed). Cutting into a shared prefix copies the
    /// part of it that stays.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Ok(());
        }
        let shared = self.shared_prefix_len();
        if len < shared {
            let prefix = self.prefix.take().expect("a shared prefix is set");
            for ((k, v), (pk, pv)) in self.layers.iter_mut().zip(&prefix.layers) {
                *k = pk.clone();
                *v = pv.clone();
                k.truncate(len, self.width)?;
                v.truncate(len, self.width)?;
            }
        } else {
            for (k, v) in &mut self.layers {
                k.truncate(len - shared, self.width)?;
                v.truncate(len - shared, self.width)?;
            }
        }
        self.len = len;
        Ok(())
    }

    /// Bytes held by the cache itself (a shared prefix's rows are not counted: they belong to
    /// the prefix).
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
        kr.extend(k)?;
        vr.extend(v)?;
        Ok(())
    }

    /// Keys and values of `layer`, every row stored so far: the shared prefix's, then its own.
    pub(super) fn view(&self, layer: usize) -> LayerView<'_> {
        let (k, v) = &self.layers[layer];
        LayerView {
            prefix: self.prefix.as_ref().map(|p| {
                let (pk, pv) = &p.layers[layer];
                (pk, pv)
            }),
            prefix_len: self.shared_prefix_len(),
            own: (k, v),
        }
    }

    /// Append `k, v: [n_kv, tokens, head_dim]` to `layer` and return everything cached for it
    /// as f32 `[n_kv, len, head_dim]` (values pass through the storage precision, as in the
    /// decode path).
    pub(super) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (n_kv, _, head_dim) = k.dims3()?;
        let width = n_kv * head_dim;
        if self.width == 0 {
            self.width = width;
        } else if self.width != width {
            return Err(Error::invalid("cache", "the KV cache belongs to a different model"));
        }
        let precision = self.precision;
        let prefix = self.prefix.as_ref().map(|p| &p.layers[layer]);
        let (kr, vr) = &mut self.layers[layer];
        Ok((
            kr.append_tensor(k, precision, prefix.map(|p| &p.0))?,
            vr.append_tensor(v, precision, prefix.map(|p| &p.1))?,
        ))
    }

    /// For the fused CUDA decode step: room for one more row in `layer`'s keys and values (each
    /// this cache's own buffer), counted as written. Returns the kernel's table entry: the key
    /// and value buffers' device addresses, their capacity in rows, and the new row's position.
    #[cfg(feature = "cuda")]
    pub(super) fn reserve_decode_row(&mut self, layer: usize, n_kv: usize, head_dim: usize) -> Result<[u64; 4]> {
        let width = n_kv * head_dim;
        if self.width == 0 {
            self.width = width;
        } else if self.width != width {
            return Err(Error::invalid("cache", "the KV cache belongs to a different model"));
        }
        let (Some(device), None) = (self.device.clone(), &self.prefix) else {
            return Err(Error::invalid(
                "cache",
                "the fused decode step needs a device cache without a prefix",
            ));
        };
        let dtype = self.precision.dtype();
        let (KvRows::Device(ks), KvRows::Device(vs)) = &mut self.layers[layer] else {
            return Err(Error::invalid("cache", "the fused decode step needs a device cache"));
        };
        let k = DeviceRows::writable(ks, (n_kv, head_dim), dtype, &device, 1)?;
        let (pos, cap) = (k.rows, k.capacity()?);
        let k_addr = super::cuda_decode::device_address(&k.buf)?;
        k.rows += 1;
        let v = DeviceRows::writable(vs, (n_kv, head_dim), dtype, &device, 1)?;
        if v.rows != pos || v.capacity()? != cap {
            return Err(Error::invalid("cache", "a layer's keys and values disagree in length"));
        }
        let v_addr = super::cuda_decode::device_address(&v.buf)?;
        v.rows += 1;
        Ok([k_addr, v_addr, cap as u64, pos as u64])
    }

    /// Count `tokens` new positions as cached, once every layer holds them.
    pub(super) fn commit(&mut self, tokens: usize) {
        self.len += tokens;
    }
}
