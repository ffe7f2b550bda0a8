//! A decode step of many sequences on CUDA in two launches per layer (our kernels in
//! `finllm-core/kernels/decode_attention.cu`, compiled to PTX by the build script): one writes
//! every sequence's new key and value rows into that sequence's own cache buffer, the other runs
//! every sequence's attention. candle's path runs several small operations per sequence and
//! layer instead, so a batch of 32 cost 32 times the launches of one sequence.
//!
//! The sequences' buffers are found through a table uploaded once per step: per layer and
//! sequence, the key and value buffers' device addresses, their capacity and the new row's
//! position ([`super::KvCache::reserve_decode_row`]).

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};

use crate::error::{Error, Result};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/decode_attention.ptx"));
const MODULE: &str = "finllm_decode_attention";
/// The kernel keeps up to 8 values per lane of a warp.
pub(super) const MAX_HEAD_DIM: usize = 256;
/// Warps per attention block (the kernel's `WARPS`).
const WARPS: u32 = 4;

/// Whether the fused step is used (set `FINLLM_CUDA_FUSED_DECODE=0` to measure candle's path).
pub(super) fn enabled() -> bool {
    std::env::var("FINLLM_CUDA_FUSED_DECODE").map_or(true, |v| v != "0")
}

/// The device address of a contiguous f16 or f32 CUDA tensor's first element.
pub(super) fn device_address(t: &Tensor) -> Result<u64> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(c) = &*storage else {
        return Err(Error::invalid("cache", "the fused decode step needs CUDA tensors"));
    };
    let stream = c.device.cuda_stream();
    let (base, elem) = match t.dtype() {
        DType::F16 => (c.as_cuda_slice::<half::f16>()?.device_ptr(&stream).0, 2),
        DType::F32 => (c.as_cuda_slice::<f32>()?.device_ptr(&stream).0, 4),
        other => {
            return Err(Error::invalid(
                "cache",
                format!("no fused decode step for {other:?} caches"),
            ))
        }
    };
    Ok(base + (layout.start_offset() * elem) as u64)
}

/// The step's table on the device: `[layers][batch][4]`.
pub(super) struct DecodeTable {
    table: CudaSlice<u64>,
    batch: usize,
    f16: bool,
}

impl DecodeTable {
    pub(super) fn upload(device: &candle_core::Device, entries: &[[u64; 4]], batch: usize, f16: bool) -> Result<Self> {
        let candle_core::Device::Cuda(dev) = device else {
            return Err(Error::invalid("device", "the fused decode step runs on CUDA only"));
        };
        let flat: Vec<u64> = entries.iter().flatten().copied().collect();
        Ok(Self {
            table: dev.clone_htod(&flat)?,
            batch,
            f16,
        })
    }

    /// Append `k, v: [n_kv, batch, head_dim]` to every sequence's `layer` and attend with
    /// `q: [n_heads, batch, head_dim]` (all contiguous f32). Returns `[batch, n_heads * head_dim]`.
    pub(super) fn attend(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f32,
        window: usize,
    ) -> Result<Tensor> {
        let op = LayerStep {
            table: self,
            layer,
            scale,
            window: i32::try_from(window).unwrap_or(0),
        };
        Ok(q.apply_op3_no_bwd(k, v, &op)?)
    }
}

struct LayerStep<'a> {
    table: &'a DecodeTable,
    layer: usize,
    scale: f32,
    /// 0: every position.
    window: i32,
}

impl CustomOp3 for LayerStep<'_> {
    fn name(&self) -> &'static str {
        "finllm-decode-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the fused decode step runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let (n_heads, batch, head_dim) = ql.shape().dims3()?;
        let (n_kv, kb, kd) = kl.shape().dims3()?;
        if (kb, kd) != (batch, head_dim)
            || vl.shape() != kl.shape()
            || batch != self.table.batch
            || n_kv == 0
            || n_heads % n_kv != 0
            || head_dim > MAX_HEAD_DIM
        {
            candle_core::bail!(
                "fused decode step: shapes q {:?} k {:?} v {:?}",
                ql.shape(),
                kl.shape(),
                vl.shape()
            )
        }
        let (q, k, v) = (
            contiguous_f32(qs, ql)?,
            contiguous_f32(ks, kl)?,
            contiguous_f32(vs, vl)?,
        );
        let dev = &qs.device;
        let per_layer = batch * 4;
        let table = self
            .table
            .table
            .slice(self.layer * per_layer..(self.layer + 1) * per_layer);
        let suffix = if self.table.f16 { "f16" } else { "f32" };
        let (b, h, g, d) = (batch as i32, n_heads as i32, n_kv as i32, head_dim as i32);

        let append = dev.get_or_load_custom_func(&format!("finllm_kv_append_{suffix}"), MODULE, PTX)?;
        let mut args = append.builder();
        args.arg(&table).arg(&k).arg(&v).arg(&b).arg(&d);
        let cfg = LaunchConfig {
            grid_dim: (batch as u32, n_kv as u32, 1),
            block_dim: (head_dim as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the table's addresses are live cache buffers with room for the row written.
        unsafe { args.launch(cfg) }.w()?;

        // SAFETY: every element is written by the kernel below.
        let out = unsafe { dev.alloc::<f32>(batch * n_heads * head_dim)? };
        let attend = dev.get_or_load_custom_func(&format!("finllm_decode_attention_{suffix}"), MODULE, PTX)?;
        let mut args = attend.builder();
        args.arg(&table)
            .arg(&q)
            .arg(&out)
            .arg(&b)
            .arg(&h)
            .arg(&g)
            .arg(&d)
            .arg(&self.scale)
            .arg(&self.window);
        let cfg = LaunchConfig {
            grid_dim: (batch as u32, n_heads as u32, 1),
            block_dim: (32 * WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; `out` holds batch * n_heads * head_dim values.
        unsafe { args.launch(cfg) }.w()?;
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from((batch, n_heads * head_dim)),
        ))
    }
}

fn contiguous_f32<'a>(
    s: &'a CudaStorage,
    l: &Layout,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.as_cuda_slice::<f32>()?.slice(a..b)),
        None => candle_core::bail!("fused decode step: inputs must be contiguous"),
    }
}
