//! `y = x · Wᵀ` for `W` read in place from the model file, on the model's threads: GGML block
//! formats and f32/f16/bf16 rows, from a GGUF file or a safetensors shard.
//!
//! For the block formats the activations are quantized to 8-bit blocks once per call; the float
//! formats take them as they are. Weight rows are split into chunks across threads, and each
//! chunk is multiplied with every token while its rows are hot in cache, so a prefill of many
//! tokens reads the weights once rather than once per token.

use std::sync::Arc;

use rayon::prelude::*;

use super::bf16dot::{bf16_dot_kernels, round_to_bf16};
use super::blocks::{quantize_q8, quantize_q8_k, BlockQ8, QK};
use super::float::{float_kernels, FloatKernels, FLOAT_FORMATS, MAX_TILE_ROWS, MAX_TILE_TOKENS};
use super::gemm::{PanelFormat, Panels, PANEL_ROWS};
use super::halfpair::{
    chunk_kernels, chunk_rows_times, input_len, pack_chunks, pair_kernels, pair_len, reads_pair_order, to_pair_order,
    ChunkKernels, CHUNK_WEIGHTS,
};
use super::kernels::{block_bytes, dot4_fn, dot_fn, dotn_fn, Dot4Fn, DotFn, DotNFn, Isa};
use super::ktile::{super_kernels, supers_from_blocks, SuperKernels, SuperQ8, SUBS};
use super::{QuantType, TASK_ROWS};
use crate::util::HugeArray;

/// Bytes of a file's tensor packed before their pages are handed back.
const RELEASE_BYTES: usize = 1 << 20;

/// A matrix `[rows, cols]` in a format finllm has kernels for, read in place from the bytes of
/// a model file (a GGUF file, or a memory-mapped safetensors shard), or for a format whose
/// kernels read their own layout (the 32-row panels of the block formats, Q4_K and Q5_K on
/// AVX-512 VNNI, the packed rows of the tiles elsewhere) rearranged once at load into a buffer of about
/// the same size, the file's pages for it handed back to the kernel.
pub struct QMatrix {
    rows: usize,
    cols: usize,
    dtype: QuantType,
    weights: Weights,
}

/// How a matrix's weights are held, and so which kernels read them.
enum Weights {
    /// Rows of bytes (the file's, or packed at load) read by row kernels.
    Rows(Rows),
    /// Block-format rows laid out once in 32-row panels ([`Panels`], on AVX-512 VNNI), read
    /// only through [`Panels::panel_times`]: 32 rows by up to six tokens per tile, the same
    /// numbers for a token whatever the number of tokens. There are no rows of bytes to read.
    Panels(Box<Panels>),
}

/// A matrix's rows of bytes: row `r` is `row_bytes` bytes at `start + r row_bytes` in `source`.
struct Rows {
    source: Source,
    start: usize,
    row_bytes: usize,
    kernels: RowKernels,
}

impl Rows {
    /// `count` rows from row `first`, back to back.
    fn span(&self, first: usize, count: usize) -> &[u8] {
        &self.source.bytes()[self.start + first * self.row_bytes..][..count * self.row_bytes]
    }
}

/// An immutable byte buffer shared by the matrices that read their weights in place (a model
/// file in memory). The kernels know nothing of the file's format.
pub trait WeightBytes: Send + Sync {
    fn weight_bytes(&self) -> &[u8];
    /// Tell the buffer how `[start, start + len)` will be read from now on; a buffer that is
    /// not a file's map has nothing to do.
    fn advise(&self, _start: usize, _len: usize, _advice: PageAdvice) {}
}

/// How a span of a file's map will be read from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageAdvice {
    /// Not through this buffer again (a packed copy was made): the pages may be handed back,
    /// so that the tensor does not count twice in the process's memory. A later read faults
    /// them back in from the file.
    Release,
    /// A few rows at a time, scattered (an embedding table): each read should bring in only
    /// its own pages, not its neighbours'.
    ReadSparsely,
}

/// A memory-mapped file (a safetensors shard).
impl WeightBytes for memmap2::Mmap {
    fn weight_bytes(&self) -> &[u8] {
        self
    }

    fn advise(&self, start: usize, len: usize, advice: PageAdvice) {
        advise_pages(self, start, len, advice);
    }
}

/// Advise the kernel how `len` bytes at `start` of a file's shared, read-only map will be read.
/// A span outside the map, or a failed call, leaves the pages as they are.
pub(crate) fn advise_pages(map: &memmap2::Mmap, start: usize, len: usize, advice: PageAdvice) {
    if start.checked_add(len).is_none_or(|end| end > map.len()) {
        return;
    }
    let _ = match advice {
        PageAdvice::ReadSparsely => map.advise_range(memmap2::Advice::Random, start, len),
        // SAFETY: the map is shared and read-only, so dropped pages are read back from the file
        // unchanged on the next access; no reader can see other bytes.
        PageAdvice::Release => unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) },
    };
}

/// Weights made in memory (a matrix quantized at load).
struct OwnedBytes(Vec<u8>);

impl WeightBytes for OwnedBytes {
    fn weight_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The shared buffer a matrix's bytes live in.
enum Source {
    Shared(Arc<dyn WeightBytes>),
    /// Rows packed at load, each array starting on a 64-byte boundary (a cache line, one
    /// vector), in memory advised for 2 MiB pages.
    Packed(HugeArray<u8>),
}

impl Source {
    fn bytes(&self) -> &[u8] {
        match self {
            Source::Shared(f) => f.weight_bytes(),
            Source::Packed(p) => p,
        }
    }
}

/// The kernels that multiply a matrix's rows.
#[derive(Clone, Copy)]
enum RowKernels {
    /// GGML blocks against 8-bit activation blocks.
    Blocks {
        dot: DotFn,
        dot2: Option<DotNFn<2>>,
        dot3: Option<DotNFn<3>>,
        dot4: Dot4Fn,
    },
    /// f32 / f16 / bf16 rows against f32 activations.
    Float(FloatKernels),
    /// bf16 rows against activations rounded to bf16, on CPUs with a bf16 dot product
    /// ([`bf16dot`](super::bf16dot)).
    Bf16(FloatKernels<u16>),
    /// bf16 and f16 rows on AVX2, two accumulators per pair ([`halfpair`](super::halfpair)):
    /// bf16's against activations in pair order, f16's against them as they are.
    Pairs(FloatKernels),
    /// The same for rows longer than a chunk, packed at load chunk by chunk per task
    /// ([`pack_chunks`]).
    PairChunks(ChunkKernels),
    /// Tiles against activations laid out per group of eight blocks (Q6_K on AVX-512 VNNI; the
    /// block formats and the K-quants on AVX2; rows packed at load).
    Super(SuperKernels),
}

impl RowKernels {
    fn for_format(dtype: QuantType, isa: Isa) -> Option<Self> {
        if let Some(k) = bf16_dot_kernels(dtype, isa) {
            return Some(RowKernels::Bf16(k));
        }
        if let Some(k) = pair_kernels(dtype, isa) {
            return Some(RowKernels::Pairs(k));
        }
        if let Some(k) = float_kernels(dtype, isa) {
            return Some(RowKernels::Float(k));
        }
        if let Some(k) = super_kernels(dtype, isa) {
            return Some(RowKernels::Super(k));
        }
        Some(RowKernels::Blocks {
            dot: dot_fn(dtype, isa)?,
            dot2: dotn_fn::<2>(dtype, isa),
            dot3: dotn_fn::<3>(dtype, isa),
            dot4: dot4_fn(dtype, isa)?,
        })
    }
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QMatrix")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// The form of the activations a matrix's kernels read, made once per product from the f32
/// activations.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    F32,
    /// Rounded to bf16 ([`round_to_bf16`]).
    Bf16,
    /// In pair order ([`to_pair_order`]).
    Pairs,
    /// 8-bit blocks ([`quantize_q8`]).
    Blocks,
    /// 8-bit blocks scaled per 256 values ([`quantize_q8_k`]): the K-quant and Q6_K panels.
    BlocksK,
    /// 8-bit blocks grouped eight to a super-block ([`supers_from_blocks`]).
    Supers,
}

impl QMatrix {
    fn input(&self) -> Input {
        match &self.weights {
            Weights::Panels(p) if p.format().supers() => Input::BlocksK,
            Weights::Panels(_) => Input::Blocks,
            Weights::Rows(r) => match r.kernels {
                RowKernels::Blocks { .. } => Input::Blocks,
                RowKernels::Float(_) => Input::F32,
                RowKernels::Bf16(_) => Input::Bf16,
                RowKernels::Pairs(_) | RowKernels::PairChunks(_) if reads_pair_order(self.dtype) => Input::Pairs,
                RowKernels::Pairs(_) | RowKernels::PairChunks(_) => Input::F32,
                RowKernels::Super(_) => Input::Supers,
            },
        }
    }

    /// The `[rows, cols]` matrix of type `dtype` whose bytes start at `start` in `bytes`, or
    /// `None` when the format has no finllm kernel (or its rows are not whole blocks: 32
    /// elements, 256 for the K-quants). The caller has checked that the rows lie inside `bytes`.
    pub fn in_shared(
        bytes: &Arc<dyn WeightBytes>,
        start: usize,
        dtype: QuantType,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        let isa = Isa::detect();
        let panels = PanelFormat::of(dtype).filter(|_| isa == Isa::Avx512 && Panels::fast());
        let kernels = match panels {
            Some(_) => None,
            None => Some(RowKernels::for_format(dtype, isa)?),
        };
        // The GGUF reader already rejects rows that are not whole blocks; should one get
        // through, candle serves it.
        let block = dtype.block_size() as usize; // at most 256
        if !cols.is_multiple_of(block) {
            return None;
        }
        let row_bytes = cols / block * block_bytes(dtype);
        let file = bytes;
        if let Some(format) = panels {
            let mut panels = Panels::zeroed(format, rows, cols)?;
            // As for the packed rows below: the file's pages go back run by run (whole panels).
            let run = (RELEASE_BYTES / row_bytes).max(1).div_ceil(PANEL_ROWS) * PANEL_ROWS;
            let file_rows = &file.weight_bytes()[start..start + rows * row_bytes];
            for (i, src) in file_rows.chunks(run * row_bytes).enumerate() {
                panels.fill_rows(i * run, src);
                file.advise(start + i * run * row_bytes, src.len(), PageAdvice::Release);
            }
            return Some(Self {
                rows,
                cols,
                dtype,
                weights: Weights::Panels(Box::new(panels)),
            });
        }
        let kernels = kernels?;
        // Kernels that read their own layout get a copy packed at load, run by run of rows; the
        // file's pages for the tensor are handed back as each run is packed (another reader
        // faults them back in from the file), so loading never holds much more than the
        // model's size.
        let packed = |packed_row: usize, unit: usize, pack: &dyn Fn(&[u8], &mut [u8])| -> Option<Rows> {
            let file_rows = &file.weight_bytes()[start..start + rows * row_bytes];
            let mut packed = HugeArray::<u8>::zeroed(rows.checked_mul(packed_row)?)?;
            let run = (RELEASE_BYTES / row_bytes).max(1).div_ceil(unit) * unit;
            for (i, (src, dst)) in file_rows
                .chunks(run * row_bytes)
                .zip(packed.chunks_mut(run * packed_row))
                .enumerate()
            {
                for (s, d) in src.chunks(unit * row_bytes).zip(dst.chunks_mut(unit * packed_row)) {
                    pack(s, d);
                }
                file.advise(start + i * run * row_bytes, src.len(), PageAdvice::Release);
            }
            Some(Rows {
                source: Source::Packed(packed),
                start: 0,
                row_bytes: packed_row,
                kernels,
            })
        };
        let weights = match (kernels, chunk_kernels(dtype, isa)) {
            // 16-bit float rows longer than a chunk: each task's rows chunk by chunk, so that a
            // product reads them front to back while each chunk of activations stays in L1.
            (RowKernels::Pairs(_), Some(k)) if cols > CHUNK_WEIGHTS => Rows {
                kernels: RowKernels::PairChunks(k),
                ..packed(row_bytes, TASK_ROWS, &|s, d| {
                    pack_chunks(s, s.len() / row_bytes, cols, d)
                })?
            },
            (RowKernels::Super(SuperKernels { packing, .. }), _) => {
                packed((packing.row_bytes)(cols / block), 1, &|s, d| (packing.pack_row)(s, d))?
            }
            _ => Rows {
                source: Source::Shared(file.clone()),
                start,
                row_bytes,
                kernels,
            },
        };
        Some(Self {
            rows,
            cols,
            dtype,
            weights: Weights::Rows(weights),
        })
    }

    /// The `[rows, cols]` matrix `data` (row-major f32) encoded in `dtype` (a format
    /// [`encode_row`](super::encode::encode_row) writes: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), held in
    /// memory of its own; `None` for another format, a shape `data` does not have, columns
    /// that are not whole 32-value blocks, or a value that is not finite or too large for a
    /// block's f16 scale.
    pub fn quantized(dtype: QuantType, data: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !super::encode::has_encoder(dtype) || !cols.is_multiple_of(QK) || rows.checked_mul(cols) != Some(data.len())
        {
            return None;
        }
        let mut bytes = Vec::with_capacity(rows * (cols / QK) * block_bytes(dtype));
        for row in data.chunks_exact(cols.max(1)) {
            match dtype {
                QuantType::Q8_0 => super::encode::encode_q8_0_fast(row, &mut bytes),
                _ => super::encode::encode_row(dtype, row, None, &mut bytes),
            }
        }
        let owned: Arc<dyn WeightBytes> = Arc::new(OwnedBytes(bytes));
        Self::in_shared(&owned, 0, dtype, rows, cols)
    }

    /// The `[rows, cols]` float matrix (f32, f16 or bf16) whose bytes start at `start` in `map`,
    /// or `None` for another format. Panics if the bytes run past the end of the map.
    pub(crate) fn in_map(
        map: &Arc<memmap2::Mmap>,
        start: usize,
        dtype: QuantType,
        rows: usize,
        cols: usize,
    ) -> Option<Self> {
        if !FLOAT_FORMATS.contains(&dtype) {
            return None;
        }
        let row_bytes = cols * block_bytes(dtype);
        assert!(
            rows.checked_mul(row_bytes)
                .and_then(|n| n.checked_add(start))
                .is_some_and(|end| end <= map.len()),
            "matrix bytes inside the map"
        );
        let shared: Arc<dyn WeightBytes> = map.clone();
        Self::in_shared(&shared, start, dtype, rows, cols)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn dtype(&self) -> QuantType {
        self.dtype
    }

    /// Bytes of the weights as the kernels read them.
    pub fn size_bytes(&self) -> usize {
        match &self.weights {
            Weights::Panels(p) => p.size_bytes(),
            Weights::Rows(r) => self.rows * r.row_bytes,
        }
    }

    /// Whether the weights were rearranged into memory of their own at load, rather than read
    /// in place from the model file.
    pub fn is_packed(&self) -> bool {
        matches!(
            self.weights,
            Weights::Panels(_)
                | Weights::Rows(Rows {
                    source: Source::Packed(_),
                    ..
                })
        )
    }

    /// Weight rows one task of a parallel product takes: whole panels for the panel tiles.
    fn task_rows(&self) -> usize {
        match self.weights {
            Weights::Panels(_) => PANEL_ROWS,
            Weights::Rows(_) => TASK_ROWS,
        }
    }

    /// `x` is `[n, cols]` row-major; returns `[n, rows]` row-major.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        matmul_group(&[self], x, n)
            .pop()
            .expect("one matrix in, one result out")
    }

    /// Rows `first..first + out[0].len()` times every token: `out[t]` receives token `t`'s
    /// results for those rows.
    fn rows_times(&self, first: usize, out: &mut [&mut [f32]], act: &Activations<'_>) {
        let rows = match &self.weights {
            Weights::Panels(p) => {
                let a = if p.format().supers() { act.blocks_k } else { act.blocks };
                return p.panel_times(first / PANEL_ROWS, a, out);
            }
            Weights::Rows(r) => r,
        };
        // This task's rows, back to back.
        let bytes = rows.span(first, out[0].len());
        match rows.kernels {
            RowKernels::Blocks { dot, dot2, dot3, dot4 } => {
                self.block_rows_times(bytes, rows.row_bytes, out, act.blocks, dot, (dot2, dot3), dot4)
            }
            RowKernels::Float(k) => self.float_rows_times(bytes, rows.row_bytes, out, act.x, self.cols, k),
            RowKernels::Bf16(k) => self.float_rows_times(bytes, rows.row_bytes, out, act.bf16, self.cols, k),
            RowKernels::Pairs(k) => {
                let x = if reads_pair_order(self.dtype) { act.pairs } else { act.x };
                self.float_rows_times(bytes, rows.row_bytes, out, x, input_len(self.dtype, self.cols), k)
            }
            RowKernels::PairChunks(k) => {
                let x = if reads_pair_order(self.dtype) { act.pairs } else { act.x };
                chunk_rows_times(bytes, self.dtype, self.cols, out, x, k)
            }
            RowKernels::Super(k) => (k.tile)(bytes, rows.row_bytes, act.supers, out),
        }
    }

    /// [`QMatrix::rows_times`] for a float format: `bytes` holds the task's rows, `x` the
    /// tokens' activations, `stride` values apart.
    fn float_rows_times<A>(
        &self,
        bytes: &[u8],
        row_bytes: usize,
        out: &mut [&mut [f32]],
        x: &[A],
        stride: usize,
        k: FloatKernels<A>,
    ) {
        let token = |t: usize| &x[t * stride..(t + 1) * stride];
        let shape = TileShape {
            rows: k.tile_rows,
            tokens: k.tile_tokens,
            decode_rows: k.decode_rows,
        };
        tiles(out, &|i| &bytes[i * row_bytes..][..row_bytes], &token, k.tile, shape);
    }

    /// [`QMatrix::rows_times`] for a block format: `bytes` holds the task's rows.
    #[allow(clippy::too_many_arguments)]
    fn block_rows_times(
        &self,
        bytes: &[u8],
        row_bytes: usize,
        out: &mut [&mut [f32]],
        xq: &[BlockQ8],
        dot: DotFn,
        (dot2, dot3): (Option<DotNFn<2>>, Option<DotNFn<3>>),
        dot4: Dot4Fn,
    ) {
        let (n, rows) = (out.len(), out[0].len());
        let blocks = self.cols / QK;
        let act = |t: usize| &xq[t * blocks..(t + 1) * blocks];
        let row = |i: usize| &bytes[i * row_bytes..][..row_bytes];
        for i in 0..rows {
            let whole = n / 4 * 4;
            for t in (0..whole).step_by(4) {
                let y = dot4(row(i), [act(t), act(t + 1), act(t + 2), act(t + 3)]);
                for (o, y) in out[t..t + 4].iter_mut().zip(y) {
                    o[i] = y;
                }
            }
            // Two or three tokens left share each unpacked weight block too.
            let mut rest = whole;
            match (n - whole, dot2, dot3) {
                (3, _, Some(dot3)) => {
                    let y = dot3(row(i), [act(whole), act(whole + 1), act(whole + 2)]);
                    for (k, y) in y.into_iter().enumerate() {
                        out[whole + k][i] = y;
                    }
                    rest += 3;
                }
                (2, Some(dot2), _) => {
                    let y = dot2(row(i), [act(whole), act(whole + 1)]);
                    out[whole][i] = y[0];
                    out[whole + 1][i] = y[1];
                    rest += 2;
                }
                _ => {}
            }
            for (t, o) in out.iter_mut().enumerate().skip(rest) {
                o[i] = dot(row(i), act(t));
            }
        }
    }
}

/// A tile kernel over activations of type `A` ([`FloatTileFn`](super::float::FloatTileFn)).
type TileFn<A> = fn(&[&[u8]], &[&[A]], &mut [f32]);

/// Rows by tokens per tile call: `rows` by `tokens` when there are several tokens, `decode_rows`
/// by one for a single token.
struct TileShape {
    rows: usize,
    tokens: usize,
    decode_rows: usize,
}

/// A task's rows (`row(i)`, `out[0].len()` of them) times every token (`token(t)`, `out.len()`
/// of them) with a tile kernel, tokens outermost so that a tile's activations stay in L1 while
/// the task's rows go by: `out[t][i]` receives row `i` · token `t`.
fn tiles<'a, A: 'a>(
    out: &mut [&mut [f32]],
    row: &dyn Fn(usize) -> &'a [u8],
    token: &dyn Fn(usize) -> &'a [A],
    tile: TileFn<A>,
    shape: TileShape,
) {
    let (n, rows) = (out.len(), out[0].len());
    let mut results = [0f32; MAX_TILE_ROWS * MAX_TILE_TOKENS];
    let tile_rows = if n == 1 { shape.decode_rows } else { shape.rows };
    for t0 in (0..n).step_by(shape.tokens) {
        let tn = shape.tokens.min(n - t0);
        // Unused slots repeat the last token; only the first `tn` are passed.
        let xs: [&[A]; MAX_TILE_TOKENS] = std::array::from_fn(|j| token((t0 + j).min(n - 1)));
        for i0 in (0..rows).step_by(tile_rows) {
            let rn = tile_rows.min(rows - i0);
            let ws: [&[u8]; MAX_TILE_ROWS] = std::array::from_fn(|j| row((i0 + j).min(rows - 1)));
            tile(&ws[..rn], &xs[..tn], &mut results[..rn * tn]);
            for (r, ys) in results[..rn * tn].chunks_exact(tn).enumerate() {
                for (y, o) in ys.iter().zip(&mut out[t0..t0 + tn]) {
                    o[i0 + r] = *y;
                }
            }
        }
    }
}

/// Tokens one pass over the matrices takes: a task runs its rows against every token of the
/// pass, so the pass's activations (about a byte a value as 8-bit blocks, four as f32) are
/// read once per task and should stay in the core's L2 cache; a long prompt goes through in
/// several passes, each reading the weights again.
///
/// Measured on llama-1b shapes (2,048-token prompt, 2 threads): passes of 256 tokens for
/// 2,048 inputs (64 for the 8,192-input down projection) took Q5_K_M prefill from 110 to 133
/// tok/s on AVX-512 and from 81 to 91 on AVX2; 32 to 256 tokens a pass were within noise of
/// each other, and a 256-token prompt did not move.
fn token_block(cols: usize) -> usize {
    (TOKEN_BLOCK_BYTES / cols.max(1)).max(MIN_TOKEN_BLOCK)
}

/// Activation bytes (at a byte a value) a pass aims to keep in L2.
const TOKEN_BLOCK_BYTES: usize = 512 * 1024;
/// Fewest tokens a pass takes, however wide the matrices.
const MIN_TOKEN_BLOCK: usize = 64;

/// Most activation values quantized on the calling thread rather than by the pool (a batched
/// decode step's 8-16 tokens of a few thousand values).
const SERIAL_QUANTIZE: usize = 16 * 4096;

/// `convert` from each token's `cols` activations to its `per` values of `out`: a few tokens (a
/// decode step's take a microsecond or two, less than waking the pool) in one call on this
/// thread, more by the pool a token at a time. `convert` must treat a run of tokens as each
/// token in turn.
fn by_token<T: Send>(x: &[f32], cols: usize, out: &mut [T], per: usize, convert: fn(&[f32], &mut [T])) {
    if x.len() <= SERIAL_QUANTIZE {
        convert(x, out);
    } else {
        out.par_chunks_mut(per.max(1))
            .zip(x.par_chunks(cols.max(1)))
            .for_each(|(o, row)| convert(row, o));
    }
}

/// One call's activations: as given (`[n, cols]`, for the float formats) and as 8-bit blocks
/// (for the block formats; empty when no matrix of the call needs them).
struct Activations<'a> {
    x: &'a [f32],
    /// `x` rounded to bf16 (empty unless a matrix of the call has [`RowKernels::Bf16`]).
    bf16: &'a [u16],
    /// `x` in pair order, [`pair_len`] values a token (empty unless a matrix of the call has
    /// [`RowKernels::Pairs`]).
    pairs: &'a [f32],
    blocks: &'a [BlockQ8],
    /// `x` as 8-bit blocks scaled per 256 values (empty unless a matrix of the call reads them).
    blocks_k: &'a [BlockQ8],
    /// The blocks laid out per super-block (empty unless a matrix of the call has K-quant tiles).
    supers: &'a [SuperQ8],
}

/// The activation buffers of [`matmul_group_into`], kept by a caller that multiplies again and
/// again (a forward pass, layer after layer) so that they are allocated once, not per call: a
/// prefill's buffers are megabytes, and fresh ones cost page faults on every call.
#[derive(Default)]
pub struct Scratch {
    blocks: Vec<BlockQ8>,
    blocks_k: Vec<BlockQ8>,
    bf16: Vec<u16>,
    pairs: Vec<f32>,
    supers: Vec<SuperQ8>,
}

impl Scratch {
    /// Bytes the buffers hold (their capacity).
    pub fn bytes(&self) -> usize {
        (self.blocks.capacity() + self.blocks_k.capacity()) * std::mem::size_of::<BlockQ8>()
            + self.supers.capacity() * std::mem::size_of::<SuperQ8>()
            + self.bf16.capacity() * std::mem::size_of::<u16>()
            + self.pairs.capacity() * std::mem::size_of::<f32>()
    }
}

/// Multiply the same activations `x` (`[n, cols]`) by several matrices with `cols` columns in
/// one parallel pass (Q/K/V, gate/up), whatever their formats: the activations are quantized
/// once if any matrix is in a block format, and every thread draws row chunks from all matrices,
/// so there is one fork-join instead of one per matrix (one per pass of `token_block` tokens
/// for a long call). Returns one `[n, rows]` row-major result per matrix.
pub fn matmul_group(mats: &[&QMatrix], x: &[f32], n: usize) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; n * m.rows]).collect();
    let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    matmul_group_into(mats, x, n, &mut views, &mut Scratch::default());
    outs
}

/// [`matmul_group`] into the caller's buffers: `outs[i]` (`[n, rows]` of matrix `i`) is
/// overwritten whole.
pub fn matmul_group_into(mats: &[&QMatrix], x: &[f32], n: usize, outs: &mut [&mut [f32]], scratch: &mut Scratch) {
    let cols = mats.first().map_or(0, |m| m.cols);
    assert!(
        mats.iter().all(|m| m.cols == cols),
        "matrices in a group share their input size"
    );
    assert_eq!(x.len(), n * cols, "activation shape");
    assert!(
        outs.len() == mats.len() && outs.iter().zip(mats).all(|(o, m)| o.len() == n * m.rows),
        "one [n, rows] result per matrix"
    );
    let block = token_block(cols);
    if n > block {
        for t0 in (0..n).step_by(block) {
            let tn = block.min(n - t0);
            let mut sub: Vec<&mut [f32]> = outs
                .iter_mut()
                .zip(mats)
                .map(|(o, m)| &mut o[t0 * m.rows..(t0 + tn) * m.rows])
                .collect();
            matmul_group_into(mats, &x[t0 * cols..(t0 + tn) * cols], tn, &mut sub, scratch);
        }
        return;
    }
    let reads = |input: Input| mats.iter().any(|m| m.input() == input);
    let any_supers = reads(Input::Supers);
    // Super-blocks are built from the 8-bit blocks.
    let any_blocks = any_supers || reads(Input::Blocks);
    let any_bf16 = reads(Input::Bf16);
    let (mut xq, mut supers): (&mut [BlockQ8], &mut [SuperQ8]) = (&mut [], &mut []);
    if any_blocks {
        // Block formats have whole 32-element blocks per row (checked at load). Every block is
        // overwritten, so what a buffer held before does not matter.
        let blocks = cols / QK;
        scratch.blocks.resize(n * blocks, BlockQ8::default());
        xq = &mut scratch.blocks[..n * blocks];
        // Every row is whole blocks, so the tokens' blocks can be quantized as one run.
        by_token(x, cols, xq, blocks, quantize_q8);
    }
    if any_supers {
        // Eight blocks per super-block, the last one padded (only Q8_0 rows can end in one: K-quant
        // rows are whole 256-element super-blocks, checked at load).
        let blocks = cols / QK;
        let per_token = blocks.div_ceil(SUBS);
        scratch.supers.resize(n * per_token, SuperQ8::default());
        supers = &mut scratch.supers[..n * per_token];
        supers
            .par_chunks_mut(per_token.max(1))
            .zip(xq.par_chunks(blocks.max(1)))
            .for_each(|(s, b)| supers_from_blocks(b, s));
    }
    let mut blocks_k: &mut [BlockQ8] = &mut [];
    if reads(Input::BlocksK) {
        // Only matrices of whole 256-value super-blocks read these (checked at load).
        let blocks = cols / QK;
        scratch.blocks_k.resize(n * blocks, BlockQ8::default());
        blocks_k = &mut scratch.blocks_k[..n * blocks];
        by_token(x, cols, blocks_k, blocks, quantize_q8_k);
    }
    let mut bf16: &mut [u16] = &mut [];
    if any_bf16 {
        scratch.bf16.resize(n * cols, 0);
        bf16 = &mut scratch.bf16[..n * cols];
        by_token(x, cols, bf16, cols, round_to_bf16);
    }
    let mut pairs: &mut [f32] = &mut [];
    if reads(Input::Pairs) && cols > 0 {
        let per = pair_len(cols);
        scratch.pairs.resize(n * per, 0.0);
        pairs = &mut scratch.pairs[..n * per];
        if x.len() <= SERIAL_QUANTIZE {
            for (o, x) in pairs.chunks_exact_mut(per).zip(x.chunks_exact(cols)) {
                to_pair_order(x, o);
            }
        } else {
            pairs
                .par_chunks_mut(per)
                .zip(x.par_chunks(cols))
                .for_each(|(o, x)| to_pair_order(x, o));
        }
    }
    let act = Activations {
        x,
        bf16,
        pairs,
        blocks: xq,
        blocks_k,
        supers,
    };
    if n == 0 {
        return;
    }
    // Each task takes TASK_ROWS rows of one matrix for every token: the pieces of the
    // `[n, rows]` results it writes, one per token, so results need no transposing.
    let mut pieces: Vec<Vec<&mut [f32]>> = outs
        .iter_mut()
        .zip(mats)
        .map(|(y, m)| {
            if m.rows == 0 {
                return Vec::new();
            }
            let per = m.task_rows();
            let mut tokens: Vec<_> = y.chunks_mut(m.rows).map(|r| r.chunks_mut(per)).collect();
            let mut table = Vec::with_capacity(m.rows.div_ceil(per) * n);
            while let Some(first) = tokens[0].next() {
                table.push(first);
                table.extend(tokens[1..].iter_mut().map(|t| t.next().expect("rows of one length")));
            }
            table
        })
        .collect();
    let mut tasks: Vec<(&QMatrix, usize, &mut [&mut [f32]])> = Vec::new();
    for (m, table) in mats.iter().zip(pieces.iter_mut()) {
        for (c, out) in table.chunks_mut(n).enumerate() {
            tasks.push((m, c * m.task_rows(), out));
        }
    }
    tasks
        .into_par_iter()
        .for_each(|(m, first, out)| m.rows_times(first, out, &act));
}

#[cfg(test)]
mod tests;
