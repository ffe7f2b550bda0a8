//! GGUF (versions 2 and 3): a validating reader over a memory map, and a writer.
//!
//! The reader trusts nothing in the file: every count, string length, array length, alignment,
//! tensor offset and tensor size is checked against the bytes actually present before anything
//! is allocated or read, so a hostile file yields a [`GgufError`] and never a panic or a huge
//! allocation. Tensor data is never copied at open time; [`GgufFile::tensor_data`] borrows it
//! straight from the map.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, GgufError, Result};
use crate::quant::QuantType;

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
const MAX_ARRAY_NESTING: usize = 2;
const MAX_DIMS: u32 = 4;
/// The most memory the decoded header (metadata values and the tensor table) may take. Decoded
/// values are larger than their bytes on disk (a one-byte array element becomes a 32-byte
/// [`Value`]), so "bounded by the file" is not bound enough: a file holding an array of 2^30 bytes
/// would otherwise ask for 34 GB. The largest real headers (262k-token vocabularies with scores,
/// types and merges) decode to well under 100 MiB.
pub const MAX_HEADER_MEMORY: u64 = 256 << 20;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            // Integers stored where a float is expected (some converters do this) are exact
            // enough for hyper-parameters.
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human description, for `finllm info` and error messages.
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) if s.len() > 80 => format!("{:?}… ({} bytes)", truncate(s, 80), s.len()),
            Value::String(s) => format!("{s:?}"),
            Value::Array(a) if a.len() > 6 => {
                let head: Vec<String> = a.iter().take(4).map(Value::describe).collect();
                format!("[{}, … {} items]", head.join(", "), a.len())
            }
            Value::Array(a) => {
                let all: Vec<String> = a.iter().map(Value::describe).collect();
                format!("[{}]", all.join(", "))
            }
            Value::U8(v) => v.to_string(),
            Value::I8(v) => v.to_string(),
            Value::U16(v) => v.to_string(),
            Value::I16(v) => v.to_string(),
            Value::U32(v) => v.to_string(),
            Value::I32(v) => v.to_string(),
            Value::U64(v) => v.to_string(),
            Value::I64(v) => v.to_string(),
            Value::F32(v) => v.to_string(),
            Value::F64(v) => v.to_string(),
            Value::Bool(v) => v.to_string(),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the contiguous (innermost) one.
    pub dims: Vec<u64>,
    pub dtype: QuantType,
    /// Absolute byte offset of the data in the file.
    pub start: u64,
    /// Data size in bytes.
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Shape in row-major (candle) order: outermost first.
    pub fn shape(&self) -> Vec<usize> {
        // Dims were checked to fit in the file, so each fits in usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes of a GGUF file: a read-only memory map, or an owned buffer.
enum Bytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    bytes: Arc<Bytes>,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Whether the file at `path` begins with the GGUF magic (false when it cannot be read):
    /// what tells a GGUF that fails to parse from a file of another kind.
    pub fn starts_as_gguf(path: impl AsRef<Path>) -> bool {
        let mut magic = [0u8; 4];
        File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == MAGIC
    }

    /// Memory-map and validate `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        // SAFETY: the map is read-only. Truncating the file underneath a live map is the one way
        // to fault, as with every mmap-based loader (llama.cpp, candle); model files are not
        // rewritten in place.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Self::from_bytes(path.to_path_buf(), Bytes::Mmap(mmap))
    }

    /// Validate a GGUF image held in memory (tests, embedded models).
    pub fn from_vec(name: impl Into<PathBuf>, data: Vec<u8>) -> Result<Self> {
        Self::from_bytes(name.into(), Bytes::Owned(data))
    }

    fn from_bytes(path: PathBuf, bytes: Bytes) -> Result<Self> {
        match parse(&bytes) {
            Ok(parsed) => Ok(GgufFile {
                path,
                bytes: Arc::new(bytes),
                version: parsed.version,
                alignment: parsed.alignment,
                key_index: index_of(parsed.metadata.iter().map(|(k, _)| k.as_str())),
                metadata: parsed.metadata,
                tensor_index: index_of(parsed.tensors.iter().map(|t| t.name.as_str())),
                tensors: parsed.tensors,
            }),
            Err(source) => Err(Error::Gguf { path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// SHA-256 (lower-case hex) of the whole file.
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        crate::util::hex(&sha2::Sha256::digest(&self.bytes[..]))
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    pub fn file_size(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw bytes of a tensor, borrowed from the map (bounds were checked at open).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[info.start as usize..(info.start + info.n_bytes) as usize]
    }

    /// The file's bytes from `start` (a tensor start checked at open) to the end.
    pub(crate) fn tensor_bytes_from(&self, start: usize) -> &[u8] {
        &self.bytes[start..]
    }

    /// Advise the kernel how `len` bytes at `start` will be read from now on, when the file is
    /// mapped (a file read into memory has no pages to advise on).
    pub(crate) fn advise(&self, start: usize, len: usize, advice: crate::quant::matmul::PageAdvice) {
        if let Bytes::Mmap(m) = &*self.bytes {
            crate::quant::matmul::advise_pages(m, start, len, advice);
        }
    }

    /// The architecture named by `general.architecture`.
    /// Scan every tensor for NaN or infinite values (`--check-weights`): the first one found is a
    /// [`Error::NonFinite`] naming the tensor and the element. Reads the whole file once.
    pub fn check_finite(&self) -> Result<()> {
        for t in &self.tensors {
            if let Some(i) = crate::quant::blocks::first_non_finite(t.dtype, self.tensor_data(t)) {
                return Err(Error::NonFinite {
                    what: format!("tensor '{}' ({}) element {i}", t.name, t.dtype),
                });
            }
        }
        Ok(())
    }

    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Error::bad_key(key, "a string", v.describe()))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| Error::bad_key(key, "a non-negative integer", v.describe()))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| Error::bad_key(key, "a number", v.describe()))
    }

    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::MissingKey { key: key.to_string() })
    }
}

fn index_of<'a>(names: impl Iterator<Item = &'a str>) -> HashMap<String, usize> {
    names.enumerate().map(|(i, n)| (n.to_string(), i)).collect()
}

struct Parsed {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian cursor that also accounts for the memory its decoded values
/// take (see [`MAX_HEADER_MEMORY`]).
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Bytes of decoded header memory still allowed.
    budget: u64,
}

impl<'a> Reader<'a> {
    /// Charge `items` decoded items of `item_bytes` each against the memory budget, before
    /// allocating them.
    fn charge(&mut self, what: &str, items: u64, item_bytes: usize) -> Result<(), GgufError> {
        let needed = items.saturating_mul(item_bytes as u64);
        if needed > self.budget {
            return Err(GgufError::HeaderTooLarge {
                what: what.to_string(),
                needed: (MAX_HEADER_MEMORY - self.budget).saturating_add(needed),
                limit: MAX_HEADER_MEMORY,
            });
        }
        self.budget -= needed;
        Ok(())
    }

    fn file_len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                offset: self.pos as u64,
                needed: n,
                file_len: self.file_len(),
            });
        }
        let n = n as usize; // n <= remaining, which is a usize
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item_bytes` long, checked against what is left.
    fn count(&mut self, what: &str, min_item_bytes: u64) -> Result<u64, GgufError> {
        let count = self.u64(what)?;
        if count > self.remaining() / min_item_bytes.max(1) {
            return Err(GgufError::CountTooLarge {
                what: what.to_string(),
                count,
                file_len: self.file_len(),
            });
        }
        Ok(count)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let offset = self.pos as u64;
        let bytes = self.take(len, what)?;
        self.charge(what, len, 1)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 {
            what: what.to_string(),
            offset,
        })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Result<Value, GgufError> {
        Ok(match type_id {
            0 => Value::U8(u8::from_le_bytes(self.array(key)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(key)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => Value::Bool(u8::from_le_bytes(self.array::<1>(key)?) != 0),
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_NESTING {
                    return Err(GgufError::NestingTooDeep {
                        key: key.to_string(),
                        max: MAX_ARRAY_NESTING,
                    });
                }
                let elem_type = self.u32(key)?;
                let min = min_value_bytes(elem_type).ok_or_else(|| GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id: elem_type,
                })?;
                let what = format!("array '{key}'");
                let len = self.count(&what, min)?;
                // `len * min <= remaining` bounds the count by the file; the budget bounds the
                // memory its decoded values take.
                self.charge(&what, len, std::mem::size_of::<Value>())?;
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(key)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    type_id: other,
                })
            }
        })
    }
}

/// The fewest bytes a value of this type occupies on disk.
fn min_value_bytes(type_id: u32) -> Option<u64> {
    Some(match type_id {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,  // length prefix
        9 => 12, // element type + length
        10..=12 => 8,
        _ => return None,
    })
}

fn parse(buf: &[u8]) -> Result<Parsed, GgufError> {
    let mut r = Reader {
        buf,
        pos: 0,
        budget: MAX_HEADER_MEMORY,
    };
    let magic = r.array::<4>("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic { found: magic });
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    // A tensor info is at least: name length (8) + n_dims (4) + type (4) + offset (8).
    let n_tensors = r.count("tensor", 24)?;
    // A key-value pair is at least: key length (8) + type (4) + a one-byte value.
    let n_kv = r.count("metadata key-value", 13)?;

    r.charge("metadata key-values", n_kv, std::mem::size_of::<(String, Value)>())?;
    r.charge(
        "tensor table",
        n_tensors,
        std::mem::size_of::<TensorInfo>() + 3 * 8 + 24,
    )?;
    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut seen_keys = std::collections::HashSet::new();
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let type_id = r.u32(&key)?;
        let value = r.value(&key, type_id, 0)?;
        if !seen_keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => {
            let a = v.as_u64().unwrap_or(0);
            if a == 0 || !a.is_power_of_two() {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut seen_tensors = std::collections::HashSet::new();
    for _ in 0..n_tensors {
        let name = r.string("tensor name")?;
        let n_dims = r.u32(&name)?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims { name, n_dims });
        }
        r.charge(&name, u64::from(n_dims), 8)?;
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&name)?);
        }
        let type_id = r.u32(&name)?;
        let offset = r.u64(&name)?;
        if !seen_tensors.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { name });
        }
        raw.push((name, dims, type_id, offset));
    }

    // Tensor data starts at the next multiple of the alignment after the header.
    let header_end = r.pos as u64;
    let data_start = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;

    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, type_id, offset) in raw {
        let Some(dtype) = QuantType::from_id(type_id) else {
            return Err(GgufError::UnknownTensorType { name, type_id });
        };
        let n_elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n > 0);
        let Some(n_elems) = n_elems else {
            return Err(GgufError::BadDims { name, dims });
        };
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(dtype.block_size()) {
            return Err(GgufError::NotBlockAligned {
                name,
                dtype: dtype.to_string(),
                ne0,
                block: dtype.block_size(),
            });
        }
        let Some(n_bytes) = dtype.bytes_for(n_elems) else {
            return Err(GgufError::BadDims { name, dims });
        };
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedTensor {
                name,
                offset,
                alignment,
            });
        }
        let start = data_start.checked_add(offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len => tensors.push(TensorInfo {
                name,
                dims,
                dtype,
                start,
                n_bytes,
            }),
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    name,
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    file_len,
                })
            }
        }
    }

    // Tensors must not share bytes: an overlap would let one weight's edits (or a packed copy's
    // page release) change another's.
    let mut by_start: Vec<&TensorInfo> = tensors.iter().collect();
    by_start.sort_by_key(|t| t.start);
    for pair in by_start.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.start < a.start + a.n_bytes {
            return Err(GgufError::OverlappingTensors {
                first: a.name.clone(),
                first_start: a.start,
                first_end: a.start + a.n_bytes,
                second: b.name.clone(),
                second_start: b.start,
                second_end: b.start + b.n_bytes,
            });
        }
    }

    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
    })
}

// ------------------------------------------------------------------------------------------------
// Writer
// ------------------------------------------------------------------------------------------------

/// Builds a GGUF v3 file: metadata plus tensors already encoded in their on-disk type.
///
/// Used by the quantizer and by tests that write small random-weight models.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, QuantType, Vec<u8>)>,
    alignment: Option<u64>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of tensor data added so far.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|(_, _, _, data)| data.len() as u64).sum()
    }

    /// Add (or replace) a metadata value.
    pub fn meta(&mut self, key: &str, value: Value) -> &mut Self {
        if key == "general.alignment" {
            self.alignment = value.as_u64();
        }
        self.metadata.retain(|(k, _)| k != key);
        self.metadata.push((key.to_string(), value));
        self
    }

    /// Remove a metadata key, if present.
    pub fn remove_meta(&mut self, key: &str) -> &mut Self {
        self.metadata.retain(|(k, _)| k != key);
        self
    }

    /// Remove a tensor, if present.
    pub fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|(n, ..)| n != name);
        self
    }

    /// Add a tensor. `shape` is row-major (outermost first, as in candle); `data` must already be
    /// encoded as `dtype`.
    pub fn tensor(&mut self, name: &str, shape: &[usize], dtype: QuantType, data: Vec<u8>) -> Result<&mut Self> {
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        let n: u64 = dims.iter().product();
        if dtype.bytes_for(n) != Some(data.len() as u64) {
            return Err(Error::invalid(
                "data",
                format!(
                    "tensor '{name}': {} bytes do not encode {n} {dtype} elements",
                    data.len()
                ),
            ));
        }
        self.tensors.push((name.to_string(), dims, dtype, data));
        Ok(self)
    }

    /// Add an f32 tensor from values.
    pub fn tensor_f32(&mut self, name: &str, shape: &[usize], values: &[f32]) -> Result<&mut Self> {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, shape, QuantType::F32, data)
    }

    /// Serialise the whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self
            .alignment
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_str(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, dtype, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(*dtype as u32).to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(alignment) * alignment;
        }
        pad_to(&mut out, alignment);
        let data_start = out.len() as u64;
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(data);
        }
        pad_to(&mut out, alignment);
        out
    }

    /// Write the file to `path`, replacing it atomically (see below).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        // Written beside the target and renamed over it: a process that has the old file
        // memory-mapped (a model being served, a test reading it) keeps its pages, where
        // truncating the file in place would make its next read fault with SIGBUS.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut staged = path.as_os_str().to_owned();
        staged.push(format!(".{}.{n}.partial", std::process::id()));
        let staged = std::path::PathBuf::from(staged);
        let written = File::create(&staged).and_then(|mut f| {
            f.write_all(&self.to_bytes())?;
            f.sync_all()
        });
        match written.and_then(|()| std::fs::rename(&staged, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&staged);
                Err(io_err(e))
            }
        }
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let len = (out.len() as u64).div_ceil(alignment) * alignment;
    out.resize(len as usize, 0);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            // An empty array is written as an array of u32.
            let elem = items.first().map_or(4, Value::type_id);
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                write_value(out, item);
            }
        }
    }
}

/// The kernels read matrices in place from the file's bytes.
impl crate::quant::matmul::WeightBytes for GgufFile {
    fn weight_bytes(&self) -> &[u8] {
        self.tensor_bytes_from(0)
    }

    fn advise(&self, start: usize, len: usize, advice: crate::quant::matmul::PageAdvice) {
        GgufFile::advise(self, start, len, advice)
    }
}
