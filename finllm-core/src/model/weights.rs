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
use crate::quant::float::FLOAT_FORMATS;
use crate::quant::matmul::{QMatrix, Scratch, WeightBytes};
use crate::quant::QuantType;

/// Where a model's weight matrices live (the projections and the output matrix; the embedding
/// table and the norm vectors aside).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatrixMemory {
    /// Bytes read in place from the model file (its memory map) by finllm's kernels.
    pub in_place: u64,
    /// Bytes held in candle tensors built at load time (host or device memory): dequantized or
    /// converted copies, or the file's blocks copied. An output matrix tied to the embedding
    /// table shares the table's storage and is counted here too.
    pub copied: u64,
}

impl std::ops::Add for MatrixMemory {
    type Output = MatrixMemory;
    fn add(self, other: MatrixMemory) -> MatrixMemory {
        MatrixMemory {
            in_place: self.in_place + other.in_place,
            copied: self.copied + other.copied,
        }
    }
}

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
    /// Output size (rows of the weight).
    pub(crate) fn rows(&self) -> usize {
        match self {
            Matrix::Kernel(m) => m.rows(),
            Matrix::Candle(QMatMul::QTensor(t)) => t.shape().dims()[0],
            Matrix::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.dims()[0],
        }
    }

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

impl Matrix {
    /// Bytes of the weights, by where they live.
    pub(crate) fn memory(&self) -> MatrixMemory {
        match self {
            Matrix::Kernel(m) if m.is_packed() => MatrixMemory {
                in_place: 0,
                copied: m.size_bytes() as u64,
            },
            Matrix::Kernel(m) => MatrixMemory {
                in_place: m.size_bytes() as u64,
                copied: 0,
            },
            Matrix::Candle(m) => MatrixMemory {
                in_place: 0,
                copied: match m {
                    QMatMul::QTensor(q) => q.storage_size_in_bytes() as u64,
                    QMatMul::Tensor(t) | QMatMul::TensorF16(t) => (t.elem_count() * t.dtype().size_in_bytes()) as u64,
                },
            },
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

/// [`forward_group`] on plain row-major buffers (`x` is `[n, in]`), into `outs` (`[n, rows]`
/// each, overwritten), with the caller's kernel scratch.
pub(crate) fn forward_group_into(
    mats: &[&Matrix],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    scratch: &mut Scratch,
) -> Result<()> {
    match all_kernels(mats) {
        Some(ks) => crate::quant::matmul::matmul_group_into(&ks, x, n, outs, scratch),
        None => {
            for (m, out) in mats.iter().zip(outs.iter_mut()) {
                out.copy_from_slice(&m.forward_vec(x, n)?);
            }
        }
    }
    Ok(())
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
                let weight = if info.dtype == QuantType::F32 {
                    Weight::Dense(Tensor::from_raw_buffer(bytes, DType::F32, shape, device)?)
                } else {
                    let q = qtensor_from_ggml(info.dtype.to_candle(), bytes, shape.to_vec(), device).map_err(|e| {
                        Error::UnsupportedTensorType {
                            name: name.to_string(),
                            dtype: format!("{} ({e})", info.dtype),
                        }
                    })?;
                    Weight::Quantized(Arc::new(q))
                };
                // Both branches copied the bytes (candle owns its storage), so the file's pages for
                // this tensor are not needed and are handed back: otherwise the embedding table
                // is held twice, once as the copy and once as the pages the copy read. A reader
                // of the same bytes in place faults them back in from the file.
                f.advise(
                    info.start as usize,
                    bytes.len(),
                    crate::quant::matmul::PageAdvice::Release,
                );
                weight
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

    /// A matrix for `x @ W^T`: with `kernels` on the CPU, read in place from the file's bytes by
    /// finllm's kernels when its format has one (every GGUF format finllm has kernels for; f32,
    /// f16 and bf16 safetensors); otherwise a candle matmul on `device`.
    pub(crate) fn matrix(
        &self,
        name: &str,
        out: usize,
        input: usize,
        device: &Device,
        kernels: bool,
    ) -> Result<Matrix> {
        if kernels && device.is_cpu() {
            let in_place = match self {
                WeightStore::Gguf(f) => gguf_matrix(f, name, out, input)?,
                WeightStore::Safetensors(s) => s.matrix(name, out, input)?,
            };
            if let Some(m) = in_place {
                return Ok(Matrix::Kernel(m));
            }
        }
        Ok(Matrix::Candle(self.get_on(name, &[out, input], device)?.into_matmul()?))
    }
}

/// An embedding table read in place from a memory map (a GGUF file or a safetensors shard):
/// each lookup dequantizes or converts only the rows it asks for (the scalar reference, as candle's lookup does), so the table is never
/// copied and only the pages of rows in use become resident.
pub(crate) struct InPlaceRows {
    bytes: Arc<dyn WeightBytes>,
    start: usize,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    dtype: QuantType,
}

impl InPlaceRows {
    /// Values per row.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Tell the kernel the table is read a few scattered rows at a time (no read-ahead, no
    /// mapping of the pages around a row's): otherwise each looked-up row brings tens of KiB of
    /// its neighbours into the process's memory, 18 MiB of SmolLM2 Q8_0's peak for a 256-token
    /// prompt. Not for a table that a matrix also reads end to end in place.
    pub(crate) fn read_sparsely(&self) {
        self.bytes.advise(
            self.start,
            self.rows * self.row_bytes,
            crate::quant::matmul::PageAdvice::ReadSparsely,
        );
    }

    /// `[ids.len(), cols]` row-major.
    pub(crate) fn lookup(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let mut out = vec![0f32; ids.len() * self.cols];
        let bytes = &self.bytes.weight_bytes()[self.start..];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(self.cols.max(1))) {
            let r = id as usize;
            if r >= self.rows {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab_size: self.rows,
                });
            }
            crate::quant::blocks::dequantize_row(self.dtype, &bytes[r * self.row_bytes..][..self.row_bytes], dst);
        }
        Ok(out)
    }
}

impl WeightStore {
    /// `name` (`[rows, cols]`) as rows to look up in place: in a GGUF file, in a block format
    /// finllm dequantizes itself or in f32 / f16 / bf16; in a safetensors shard, in f32 / f16 /
    /// bf16. `None` otherwise (the caller copies it as a tensor).
    pub(crate) fn rows_in_place(&self, name: &str, rows: usize, cols: usize) -> Result<Option<InPlaceRows>> {
        let (bytes, start, dtype): (Arc<dyn WeightBytes>, usize, QuantType) = match self {
            WeightStore::Gguf(f) => {
                let info = f.tensor(name).ok_or_else(|| missing(name))?;
                check_shape(name, &[rows, cols], &info.shape())?;
                // In bounds: the reader checked the tensor against the file's size at open.
                let start = usize::try_from(info.start).map_err(|_| Error::invalid("model", "tensor offset"))?;
                (f.clone(), start, info.dtype)
            }
            WeightStore::Safetensors(s) => match s.float_view(name, rows, cols)? {
                Some((map, start, dtype)) => (map, start, dtype),
                None => return Ok(None),
            },
        };
        let block = dtype.block_size() as usize;
        let float = FLOAT_FORMATS.contains(&dtype);
        if !(float || crate::quant::kernels::KERNEL_FORMATS.contains(&dtype)) || !cols.is_multiple_of(block) {
            return Ok(None);
        }
        let row_bytes = cols / block * crate::quant::kernels::block_bytes(dtype);
        if rows
            .checked_mul(row_bytes)
            .and_then(|n| n.checked_add(start))
            .is_none_or(|end| end > bytes.weight_bytes().len())
        {
            return Err(Error::invalid("model", format!("{name} runs past the end of its file")));
        }
        Ok(Some(InPlaceRows {
            bytes,
            start,
            rows,
            cols,
            row_bytes,
            dtype,
        }))
    }
}

/// The matrix `name` of `file` read in place by finllm's kernels, or `Ok(None)` when its format
/// has none.
fn gguf_matrix(file: &Arc<GgufFile>, name: &str, rows: usize, cols: usize) -> Result<Option<QMatrix>> {
    let info = file.tensor(name).ok_or_else(|| missing(name))?;
    check_shape(name, &[rows, cols], &info.shape())?;
    // In bounds: the reader checked start + n_bytes against the file size, and n_bytes is what
    // `rows` rows of `cols` take.
    let start = usize::try_from(info.start).map_err(|_| Error::invalid("model", "tensor offset"))?;
    let bytes: Arc<dyn crate::quant::matmul::WeightBytes> = file.clone();
    Ok(QMatrix::in_shared(&bytes, start, info.dtype, rows, cols))
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
    /// Shared with the kernel matrices that read their weights in place.
    shards: Vec<(PathBuf, Arc<memmap2::Mmap>)>,
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
            shards.push((path.clone(), Arc::new(mmap)));
        }
        Ok(Self {
            shards,
            location,
            names,
        })
    }

    /// Scan every float tensor of every shard for NaN or infinite values (`check_weights`): the
    /// first one found is an [`Error::NonFinite`] naming the shard, the tensor and the element.
    /// Tensors of other types (integers, bool) cannot be non-finite and are skipped.
    pub(crate) fn check_finite(&self) -> Result<()> {
        for (path, mmap) in &self.shards {
            let st = safetensors::SafeTensors::deserialize(mmap).map_err(|e| st_err(path, e))?;
            let mut names: Vec<&str> = st.names().into_iter().collect();
            names.sort_unstable();
            for name in names {
                let view = st.tensor(name).map_err(|e| st_err(path, e))?;
                let dtype = match view.dtype() {
                    safetensors::Dtype::F32 => QuantType::F32,
                    safetensors::Dtype::F16 => QuantType::F16,
                    safetensors::Dtype::BF16 => QuantType::BF16,
                    _ => continue,
                };
                if let Some(i) = crate::quant::blocks::first_non_finite(dtype, view.data()) {
                    return Err(Error::NonFinite {
                        what: format!("tensor '{name}' ({dtype}) element {i} in {}", path.display()),
                    });
                }
            }
        }
        Ok(())
    }

    fn hf_name(&self, name: &str) -> Option<&str> {
        self.names
            .get(name)
            .map(String::as_str)
            .filter(|hf| self.location.contains_key(*hf))
    }

    /// Whether a shard holds the tensor named `hf_name` (a checkpoint's own name).
    pub(crate) fn has_hf(&self, hf_name: &str) -> bool {
        self.location.contains_key(hf_name)
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

    /// `name` as a `[rows, cols]` matrix read in place from its shard by finllm's kernels, or
    /// `None` when they have none for its type.
    pub(crate) fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Option<QMatrix>> {
        Ok(match self.float_view(name, rows, cols)? {
            Some((map, start, dtype)) => QMatrix::in_map(&map, start, dtype, rows, cols),
            None => None,
        })
    }

    /// The shard holding `name` (checked to be `[rows, cols]`), where its bytes start in it, and
    /// their type, for an f32 / f16 / bf16 tensor; `None` for another type.
    fn float_view(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<(Arc<memmap2::Mmap>, usize, QuantType)>> {
        let hf = self.hf_name(name).ok_or_else(|| missing(name))?;
        let (path, mmap) = &self.shards[self.location[hf]];
        let st = safetensors::SafeTensors::deserialize(mmap).map_err(|e| st_err(path, e))?;
        let view = st.tensor(hf).map_err(|e| st_err(path, e))?;
        check_shape(name, &[rows, cols], view.shape())?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => QuantType::F32,
            safetensors::Dtype::F16 => QuantType::F16,
            safetensors::Dtype::BF16 => QuantType::BF16,
            _ => return Ok(None),
        };
        // The view borrows the map: its offset in the map is where the tensor starts.
        let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
        Ok(Some((mmap.clone(), start, dtype)))
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

pub(crate) fn st_err(path: &Path, e: safetensors::SafeTensorError) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    /// An embedding table looked up in place gives candle's lookup of its copy, bit for bit, in
    /// every format read in place; an id past the table is a typed error.
    #[test]
    fn in_place_embedding_rows_match_candles_lookup() {
        let mut rng = Rng::new(41);
        let (rows, cols) = (13, 512);
        for dtype in crate::quant::kernels::KERNEL_FORMATS.into_iter().chain(FLOAT_FORMATS) {
            let values: Vec<f32> = (0..rows * cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
            let data = crate::tools::synthetic::encode(&values, &[rows, cols], dtype).unwrap();
            let mut g = crate::model::GgufWriter::new();
            g.tensor("token_embd.weight", &[rows, cols], dtype, data).unwrap();
            let store = WeightStore::Gguf(Arc::new(GgufFile::from_vec("e.gguf", g.to_bytes()).unwrap()));
            let in_place = store
                .rows_in_place("token_embd.weight", rows, cols)
                .unwrap()
                .unwrap_or_else(|| panic!("{dtype} is read in place"));
            let ids = [0u32, 12, 5, 5, 7];
            let got = in_place.lookup(&ids).unwrap();
            let ids_t = Tensor::new(&ids[..], &Device::Cpu).unwrap();
            let want = match store.get("token_embd.weight", &[rows, cols]).unwrap() {
                Weight::Quantized(q) => q.embedding(&ids_t).unwrap(),
                Weight::Dense(t) => t.index_select(&ids_t, 0).unwrap(),
            };
            let want = want
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(got.len(), want.len());
            assert!(
                got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{dtype}"
            );
            assert!(matches!(
                in_place.lookup(&[3, 13]),
                Err(Error::TokenOutOfRange { id: 13, vocab_size: 13 })
            ));
        }
    }

    /// A safetensors file written by hand: the header padded with spaces so the data starts at
    /// an odd offset, and the first tensor of an even size, so no float matrix is even 2-aligned.
    fn misaligned_safetensors(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0;
        for (name, dtype, shape, bytes) in tensors {
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
            );
            offset += bytes.len();
        }
        let mut json = serde_json::Value::Object(header).to_string();
        while (8 + json.len()).is_multiple_of(2) {
            json.push(' ');
        }
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json.as_bytes());
        for (_, _, _, bytes) in tensors {
            assert!(
                bytes.len() % 2 == 0 && file.len() % 2 == 1,
                "every tensor at an odd offset"
            );
            file.extend_from_slice(bytes);
        }
        std::fs::write(path, file).unwrap();
    }

    #[test]
    fn safetensors_float_matrices_are_read_in_place() {
        let mut rng = Rng::new(7);
        let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect() };
        let (w16, wb16, w32) = (values(7 * 100), values(5 * 17), values(3 * 33));
        // Rows longer than a chunk: packed at load for AVX2's bf16 kernels (the rest in place).
        let wlong = values(3 * 4100);
        let tensors = [
            ("u8", "U8", vec![1, 2], vec![1, 2]),
            (
                "f16",
                "F16",
                vec![7, 100],
                w16.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            ),
            (
                "bf16",
                "BF16",
                vec![5, 17],
                wb16.iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
            (
                "f32",
                "F32",
                vec![3, 33],
                w32.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
            (
                "bf16_long",
                "BF16",
                vec![3, 4100],
                wlong
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        ];
        let dir = std::env::temp_dir().join(format!("finllm-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        misaligned_safetensors(&path, &tensors);
        let names = tensors.iter().map(|t| (t.0.to_string(), t.0.to_string())).collect();
        let store = SafetensorsStore::open(std::slice::from_ref(&path), names).unwrap();

        let x = values(4100);
        let isa = crate::quant::kernels::Isa::detect();
        for (name, dtype, shape, bytes) in &tensors[1..] {
            let (rows, cols) = (shape[0], shape[1]);
            let m = store.matrix(name, rows, cols).unwrap().expect("a float matrix");
            assert_eq!((m.rows(), m.cols(), m.size_bytes()), (rows, cols, bytes.len()));
            let chunked = crate::quant::halfpair::chunk_kernels(m.dtype(), isa).is_some()
                && cols > crate::quant::halfpair::CHUNK_WEIGHTS;
            assert_eq!(m.is_packed(), chunked, "{name}: packed only for chunked bf16 rows");
            assert_eq!(m.dtype().name(), dtype.to_lowercase());
            // The same numbers as the candle path's f32 copy, to f32 summation order, with the
            // activations as the kernels read them (rounded to bf16 for bf16 rows on a CPU
            // with a bf16 dot product).
            let dense = store.load_f32(name, shape).unwrap().to_vec2::<f32>().unwrap();
            let y = m.matmul(&x[..cols], 1);
            let bf16_dot = crate::quant::bf16dot::bf16_dot_kernels(m.dtype(), crate::quant::kernels::Isa::detect());
            let x_read: Vec<f32> = match bf16_dot {
                Some(_) => x.iter().map(|&v| crate::quant::bf16dot::bf16_rounded(v)).collect(),
                None => x.clone(),
            };
            for (r, w) in dense.iter().enumerate() {
                let want: f64 = w.iter().zip(&x_read).map(|(w, x)| f64::from(*w) * f64::from(*x)).sum();
                let magnitude: f64 = w
                    .iter()
                    .zip(&x_read)
                    .map(|(w, x)| (f64::from(*w) * f64::from(*x)).abs())
                    .sum();
                let bound = (cols as f64 + 1.0) * f64::from(f32::EPSILON) * magnitude;
                assert!(
                    (f64::from(y[r]) - want).abs() <= bound,
                    "{name} row {r}: {} vs {want}",
                    y[r]
                );
            }
        }
        // Not a float type: no kernel here (the candle path reports the type).
        assert!(store.matrix("u8", 1, 2).unwrap().is_none());
        assert!(matches!(store.matrix("f16", 100, 7), Err(Error::TensorShape { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
