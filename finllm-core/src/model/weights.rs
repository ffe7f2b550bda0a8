//! Where weights come from: a GGUF file or a directory of safetensors shards.
//!
//! Both are addressed by GGUF tensor names (`blk.3.attn_q.weight`); the safetensors side maps
//! HF names onto them, so the model code knows one naming scheme.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;
use crate::quant::matmul::QMatrix;
use crate::quant::QuantType;

/// A weight tensor together with how it is stored.
pub(crate) enum Weight {
    /// Quantized (or f16/bf16) GGML blocks.
    Quantized(Arc<QTensor>),
    /// Dense f32.
    Dense(Tensor),
}

impl Weight {
    pub(crate) fn into_matmul(self) -> Result<QMatMul> {
        Ok(match self {
            Weight::Quantized(q) => QMatMul::from_arc(q)?,
            Weight::Dense(t) => QMatMul::Tensor(t),
        })
    }
}

/// A weight matrix and the code that multiplies by it.
pub(crate) enum Matrix {
    Kernel(QMatrix),
    Candle(QMatMul),
}

impl Matrix {
    /// `x: [tokens, in]` → `[tokens, out]`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Matrix::Candle(m) => Ok(candle_core::Module::forward(m, x)?),
            Matrix::Kernel(m) => {
                let (t, k) = x.dims2()?;
                debug_assert_eq!(k, m.cols());
                let v = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
                Ok(Tensor::from_vec(m.matmul(&v, t), (t, m.rows()), &Device::Cpu)?)
            }
        }
    }

    /// The same on plain row-major buffers: `x` is `[n, in]`, the result `[n, out]`.
    pub(crate) fn forward_vec(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        match self {
            Matrix::Kernel(m) => Ok(m.matmul(x, n)),
            Matrix::Candle(m) => {
                let cols = x.len() / n.max(1);
                let x = Tensor::from_slice(x, (n, cols), &Device::Cpu)?;
                Ok(candle_core::Module::forward(m, &x)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }
}

/// The kernel matrices of `mats`, when finllm's kernels cover every one.
fn all_kernels<'a>(mats: &[&'a Matrix]) -> Option<Vec<&'a QMatrix>> {
    mats.iter()
        .map(|m| match m {
            Matrix::Kernel(k) => Some(k),
            Matrix::Candle(_) => None,
        })
        .collect()
}

/// `x @ W^T` for several matrices sharing `x`: one parallel pass when finllm's kernels cover
/// them all.
pub(crate) fn forward_group(mats: &[&Matrix], x: &Tensor) -> Result<Vec<Tensor>> {
    match all_kernels(mats) {
        Some(ks) if ks.len() > 1 => {
            let (t, _) = x.dims2()?;
            let v = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            crate::quant::matmul::matmul_group(&ks, &v, t)
                .into_iter()
                .zip(&ks)
                .map(|(y, k)| Ok(Tensor::from_vec(y, (t, k.rows()), &Device::Cpu)?))
                .collect()
        }
        _ => mats.iter().map(|m| m.forward(x)).collect(),
    }
}

/// [`forward_group`] on plain row-major buffers (`x` is `[n, in]`).
pub(crate) fn forward_group_vec(mats: &[&Matrix], x: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
    match all_kernels(mats) {
        Some(ks) => Ok(crate::quant::matmul::matmul_group(&ks, x, n)),
        None => mats.iter().map(|m| m.forward_vec(x, n)).collect(),
    }
}

/// A source of named weight tensors.
pub(crate) enum WeightStore {
    Gguf(Arc<GgufFile>),
    Safetensors(SafetensorsStore),
}

impl WeightStore {
    pub(crate) fn contains(&self, name: &str) -> bool {
        match self {
            WeightStore::Gguf(f) => f.tensor(name).is_some(),
            WeightStore::Safetensors(s) => s.hf_name(name).is_some(),
        }
    }

    /// Load `name` into host memory, checking its row-major shape.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Weight> {
        self.get_on(name, shape, &Device::Cpu)
    }

    /// Load `name` onto `device`, checking its row-major shape. Quantized blocks stay
    /// quantized (candle has CUDA kernels for the GGML formats).
    pub(crate) fn get_on(&self, name: &str, shape: &[usize], device: &Device) -> Result<Weight> {
        let weight = match self {
            WeightStore::Gguf(f) => {
                let info = f.tensor(name).ok_or_else(|| missing(name))?;
                check_shape(name, shape, &info.shape())?;
                let bytes = f.tensor_data(info);
                if info.dtype == QuantType::F32 {
                    Weight::Dense(Tensor::from_raw_buffer(bytes, DType::F32, shape, device)?)
                } else {
                    let q = qtensor_from_ggml(info.dtype.to_candle(), bytes, shape.to_vec(), device).map_err(|e| {
                        Error::UnsupportedTensorType {
                            name: name.to_string(),
                            dtype: format!("{} ({e})", info.dtype),
                        }
                    })?;
                    Weight::Quantized(Arc::new(q))
                }
            }
            WeightStore::Safetensors(s) => Weight::Dense(s.load_f32(name, shape)?.to_device(device)?),
        };
        Ok(weight)
    }

    /// Load a 1-D f32 vector (norm weights, biases) onto `device`.
    pub(crate) fn vector(&self, name: &str, len: usize, device: &Device) -> Result<Tensor> {
        match self.get_on(name, &[len], device)? {
            Weight::Quantized(q) => Ok(q.dequantize(device)?),
            Weight::Dense(t) => Ok(t),
        }
    }

    /// A matrix for `x @ W^T`: with `kernels`, read in place by finllm's CPU kernels when its
    /// format has one; otherwise a candle matmul on `device`.
    pub(crate) fn matrix(
        &self,
        name: &str,
        out: usize,
        input: usize,
        device: &Device,
        kernels: bool,
    ) -> Result<Matrix> {
        if let (WeightStore::Gguf(f), true) = (self, kernels && device.is_cpu()) {
            if let Some(m) = QMatrix::from_gguf(f, name, out, input)? {
                return Ok(Matrix::Kernel(m));
            }
        }
        Ok(Matrix::Candle(self.get_on(name, &[out, input], device)?.into_matmul()?))
    }
}

fn missing(name: &str) -> Error {
    Error::MissingTensor { name: name.to_string() }
}

fn check_shape(name: &str, expected: &[usize], found: &[usize]) -> Result<()> {
    if expected != found {
        return Err(Error::TensorShape {
            name: name.to_string(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// Memory-mapped safetensors shards with a GGUF-name → HF-name map.
pub(crate) struct SafetensorsStore {
    shards: Vec<(PathBuf, memmap2::Mmap)>,
    /// HF tensor name → shard index.
    location: HashMap<String, usize>,
    /// GGUF name → HF name.
    names: HashMap<String, String>,
}

impl SafetensorsStore {
    /// Map every shard; `names` maps the GGUF names the model asks for onto HF names.
    pub(crate) fn open(files: &[PathBuf], names: HashMap<String, String>) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut location = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let io_err = |source| Error::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io_err)?;
            // SAFETY: read-only map of a checkpoint that is not modified while loaded.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
            let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| st_err(path, e))?;
            for name in st.names() {
                location.insert(name.to_string(), i);
            }
            shards.push((path.clone(), mmap));
        }
        Ok(Self {
            shards,
            location,
            names,
        })
    }

    fn hf_name(&self, name: &str) -> Option<&str> {
        self.names
            .get(name)
            .map(String::as_str)
            .filter(|hf| self.location.contains_key(*hf))
    }

    /// Whether the checkpoint holds the tensor the model calls `name`.
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.hf_name(name).is_some()
    }

    /// The stored shape of `name`.
    pub(crate) fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let hf = self.hf_name(name).ok_or_else(|| missing(name))?;
        let (path, mmap) = &self.shards[self.location[hf]];
        let st = safetensors::SafeTensors::deserialize(mmap).map_err(|e| st_err(path, e))?;
        Ok(st.tensor(hf).map_err(|e| st_err(path, e))?.shape().to_vec())
    }

    /// `name` as f32 values, with the number of bytes it takes in the checkpoint.
    pub(crate) fn load_f32_vec(&self, name: &str, shape: &[usize]) -> Result<(Vec<f32>, u64)> {
        let t = self.load_f32(name, shape)?;
        let n = t.elem_count() as u64;
        let stored = match self.stored_dtype(name)? {
            safetensors::Dtype::F32 => 4,
            _ => 2,
        };
        Ok((t.flatten_all()?.to_vec1::<f32>()?, n * stored))
    }

    fn stored_dtype(&self, name: &str) -> Result<safetensors::Dtype> {
        let hf = self.hf_name(name).ok_or_else(|| missing(name))?;
        let (path, mmap) = &self.shards[self.location[hf]];
        let st = safetensors::SafeTensors::deserialize(mmap).map_err(|e| st_err(path, e))?;
        Ok(st.tensor(hf).map_err(|e| st_err(path, e))?.dtype())
    }

    fn load_f32(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let hf = self.hf_name(name).ok_or_else(|| missing(name))?;
        let (path, mmap) = &self.shards[self.location[hf]];
        let st = safetensors::SafeTensors::deserialize(mmap).map_err(|e| st_err(path, e))?;
        let view = st.tensor(hf).map_err(|e| st_err(path, e))?;
        check_shape(name, shape, view.shape())?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            other => {
                return Err(Error::UnsupportedTensorType {
                    name: hf.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let t = Tensor::from_raw_buffer(view.data(), dtype, shape, &Device::Cpu)?;
        Ok(t.to_dtype(DType::F32)?)
    }
}

fn st_err(path: &Path, e: safetensors::SafeTensorError) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
