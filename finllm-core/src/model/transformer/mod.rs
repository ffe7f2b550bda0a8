//! The decoder-only transformer forward pass shared by every architecture.
//!
//! Architecture files (`llama.rs`, `qwen2.rs`, ...) only read hyper-parameters and say which
//! optional pieces a block has; this file runs them. The batched forward takes several sequences
//! at different positions and lengths in one call: the projections and MLPs run once over all
//! their tokens stacked together, attention runs per sequence against its own KV cache.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::model::config::{Activation, AttentionSpan, ModelConfig, RopeStyle};
pub use crate::model::weights::MatrixMemory;
use crate::model::weights::{forward_group, forward_group_into, InPlaceRows, Matrix, Weight, WeightStore};
use crate::quant::elementwise::{rms_norm_rows, rms_norm_rows_in_place};
use crate::quant::matmul::Scratch;

#[cfg(feature = "cuda")]
mod cuda_decode;
mod decode;
mod grad;
mod kv_cache;

pub use decode::Workspace;
pub use kv_cache::{KvCache, KvPrecision};

/// One sequence in a batched forward call.
pub struct SeqInput<'a> {
    /// New tokens to run, placed after what `cache` already holds.
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

/// Per weight matrix (by GGUF tensor name; the output projection is `output.weight` even when
/// tied to the embedding), the sum over tokens of the square of each input column's activation.
pub type InputStats = std::collections::HashMap<String, Vec<f64>>;

/// What a forward call returns besides next-token logits.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Logits for every new token, not only the last.
    pub all_logits: bool,
    /// Attention probabilities per layer, `[n_heads, new_tokens, cache_len]`.
    pub attentions: bool,
    /// Residual-stream states: the embeddings and the output of every layer, `[new_tokens, hidden]`.
    pub hidden_states: bool,
}

/// The result for one sequence.
#[derive(Debug, Clone)]
pub struct SeqOutput {
    /// `[1, vocab]`, or `[new_tokens, vocab]` with `all_logits`.
    pub logits: Tensor,
    pub attentions: Vec<Tensor>,
    pub hidden_states: Vec<Tensor>,
}

struct Linear {
    w: Matrix,
    b: Option<Vec<f32>>,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.add_bias(self.w.forward(x)?)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.b {
            Some(b) => y.broadcast_add(&Tensor::from_slice(b, b.len(), y.device())?)?,
            None => y,
        })
    }

    /// Add the bias, if any, to every row of `y`.
    fn add_bias_vec(&self, y: &mut [f32]) {
        if let Some(b) = &self.b {
            for row in y.chunks_exact_mut(b.len()) {
                row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
        }
    }

    /// Several projections of the same input in one pass.
    fn forward_all<const N: usize>(layers: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let ys = forward_group(&layers.map(|l| &l.w), x)?;
        let mut out = Vec::with_capacity(N);
        for (l, y) in layers.iter().zip(ys) {
            out.push(l.add_bias(y)?);
        }
        Ok(out.try_into().expect("N results for N layers"))
    }

    /// [`Linear::forward_all`] on plain row-major buffers (`x` is `[n, in]`), into `outs`
    /// (resized to `[n, out]` each: buffers reused layer after layer keep their memory).
    fn forward_all_into<const N: usize>(
        layers: [&Linear; N],
        x: &[f32],
        n: usize,
        outs: [&mut Vec<f32>; N],
        scratch: &mut Scratch,
    ) -> Result<()> {
        let mut views: [&mut [f32]; N] = std::array::from_fn(|_| <&mut [f32]>::default());
        for ((l, out), v) in layers.iter().zip(outs).zip(views.iter_mut()) {
            out.resize(n * l.w.rows(), 0.0);
            *v = out.as_mut_slice();
        }
        forward_group_into(&layers.map(|l| &l.w), x, n, &mut views, scratch)?;
        for (l, y) in layers.iter().zip(views.iter_mut()) {
            l.add_bias_vec(y);
        }
        Ok(())
    }
}

struct RmsNorm {
    w: Tensor,
    /// The same weights, for the decode path.
    w_vec: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    fn new(w: Tensor, eps: f32) -> Result<Self> {
        Ok(Self {
            w_vec: w.to_vec1::<f32>()?,
            w,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.w, self.eps)?)
    }

    /// Normalise every row of `x` (rows as long as the weights) into `out`, in the order
    /// candle's CPU kernel sums, so both paths agree to the last bit where they can.
    fn forward_rows(&self, x: &[f32], out: &mut [f32]) {
        rms_norm_rows(x, &self.w_vec, self.eps, out);
    }

    /// Normalise every row of `x` in place.
    fn forward_rows_in_place(&self, x: &mut [f32]) {
        rms_norm_rows_in_place(x, &self.w_vec, self.eps);
    }
}

struct Block {
    attn_norm: RmsNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    post_attn_norm: Option<RmsNorm>,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    post_ffn_norm: Option<RmsNorm>,
    span: AttentionSpan,
    /// Inverse RoPE frequencies for this layer, already divided by any scaling.
    inv_freq: Arc<Vec<f64>>,
}

enum Embedding {
    Quantized(Arc<QTensor>),
    Dense(Tensor),
    /// Read in place from the model file's memory map, row by row.
    InPlace(InPlaceRows),
}

impl From<Weight> for Embedding {
    fn from(w: Weight) -> Self {
        match w {
            Weight::Quantized(q) => Embedding::Quantized(q),
            Weight::Dense(t) => Embedding::Dense(t),
        }
    }
}

impl Embedding {
    /// Rows of `ids`, `[ids.len(), hidden]` row-major, without a tensor where the table is
    /// read in place.
    fn lookup_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            Embedding::InPlace(rows) => rows.lookup(ids),
            _ => Ok(self
                .lookup(&Tensor::new(ids, &Device::Cpu)?)?
                .flatten_all()?
                .to_vec1::<f32>()?),
        }
    }

    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Embedding::Quantized(q) => q.embedding(ids)?,
            Embedding::Dense(t) => t.index_select(ids, 0)?,
            Embedding::InPlace(rows) => {
                let ids = ids.to_vec1::<u32>()?;
                let n = ids.len();
                Tensor::from_vec(rows.lookup(&ids)?, (n, rows.cols()), &Device::Cpu)?
            }
        })
    }
}

/// Which code runs the forward pass.
#[derive(Debug, Clone)]
pub enum Backend {
    /// finllm's own kernels, reading quantized weights in place from the file; single-token
    /// steps take the fused decode path. The default.
    CpuKernels,
    /// candle tensors and quantized matmuls on `device`: a CUDA GPU, or the CPU as the reference
    /// that the GPU path is tested against on machines without one.
    Candle(Device),
}

impl Backend {
    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        match self {
            Backend::CpuKernels => &Device::Cpu,
            Backend::Candle(d) => d,
        }
    }
}

/// A loaded decoder-only transformer.
pub struct Transformer {
    cfg: ModelConfig,
    backend: Backend,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: RmsNorm,
    lm_head: Matrix,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Transformer {
    /// Build the model from weights named the GGUF way.
    ///
    /// `rope_freq_factors`: per-frequency divisors (GGUF `rope_freqs.weight`), if any.
    pub(crate) fn load(
        cfg: ModelConfig,
        store: &WeightStore,
        rope_freq_factors: Option<Vec<f64>>,
        backend: &Backend,
    ) -> Result<Self> {
        cfg.validate()?;
        let (h, q_dim, kv_dim) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let eps = cfg.rms_eps as f32;
        let (device, kernels) = (backend.device(), matches!(backend, Backend::CpuKernels));
        let norm = |name: &str, len: usize| -> Result<RmsNorm> { RmsNorm::new(store.vector(name, len, device)?, eps) };
        let linear = |name: &str, out: usize, input: usize, bias: bool| -> Result<Linear> {
            let b = if bias {
                Some(
                    store
                        .vector(&name.replace(".weight", ".bias"), out, device)?
                        .to_vec1::<f32>()?,
                )
            } else {
                None
            };
            Ok(Linear {
                w: store.matrix(name, out, input, device, kernels)?,
                b,
            })
        };

        let inv_freq_global = Arc::new(inverse_frequencies(
            &cfg,
            cfg.rope_theta,
            cfg.rope_linear_factor,
            rope_freq_factors.as_deref(),
        )?);
        let inv_freq_local = match cfg.rope_theta_local {
            Some(theta) => Arc::new(inverse_frequencies(&cfg, theta, 1.0, None)?),
            None => inv_freq_global.clone(),
        };

        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for (i, &span) in cfg.spans.iter().enumerate() {
            let p = |s: &str| format!("blk.{i}.{s}");
            let optional_norm = |on: bool, s: &str, len: usize| -> Result<Option<RmsNorm>> {
                if on {
                    Ok(Some(norm(&p(s), len)?))
                } else {
                    Ok(None)
                }
            };
            blocks.push(Block {
                attn_norm: norm(&p("attn_norm.weight"), h)?,
                q: linear(&p("attn_q.weight"), q_dim, h, cfg.qkv_bias)?,
                k: linear(&p("attn_k.weight"), kv_dim, h, cfg.qkv_bias)?,
                v: linear(&p("attn_v.weight"), kv_dim, h, cfg.qkv_bias)?,
                o: linear(&p("attn_output.weight"), h, q_dim, false)?,
                q_norm: optional_norm(cfg.qk_norm, "attn_q_norm.weight", cfg.head_dim)?,
                k_norm: optional_norm(cfg.qk_norm, "attn_k_norm.weight", cfg.head_dim)?,
                post_attn_norm: optional_norm(cfg.sandwich_norms, "post_attention_norm.weight", h)?,
                ffn_norm: norm(&p("ffn_norm.weight"), h)?,
                gate: linear(&p("ffn_gate.weight"), cfg.ffn_size, h, false)?,
                up: linear(&p("ffn_up.weight"), cfg.ffn_size, h, false)?,
                down: linear(&p("ffn_down.weight"), h, cfg.ffn_size, false)?,
                post_ffn_norm: optional_norm(cfg.sandwich_norms, "post_ffw_norm.weight", h)?,
                span,
                inv_freq: match span {
                    AttentionSpan::Global => inv_freq_global.clone(),
                    AttentionSpan::Sliding(_) => inv_freq_local.clone(),
                },
            });
        }

        // The embedding table stays in host memory on every backend: a lookup touches a few
        // rows, which then move to the device. A GGUF table in a block format or in f32 / f16 /
        // bf16, or a safetensors table in a float type, is read in place (a lookup converts its
        // rows); otherwise it is copied as a tensor.
        let mut embed_w = None;
        let lm_head = if store.contains("output.weight") {
            store.matrix("output.weight", cfg.vocab_size, h, device, kernels)?
        } else if !device.is_cpu() {
            store.matrix("token_embd.weight", cfg.vocab_size, h, device, kernels)?
        } else {
            match store.matrix("token_embd.weight", cfg.vocab_size, h, device, kernels)? {
                kernel @ Matrix::Kernel(_) => kernel,
                // Tied weights on the CPU: one copy serves both.
                Matrix::Candle(_) => {
                    let w = store.get("token_embd.weight", &[cfg.vocab_size, h])?;
                    let m = Matrix::Candle(match &w {
                        Weight::Quantized(q) => QMatMul::from_arc(q.clone())?,
                        Weight::Dense(t) => QMatMul::Tensor(t.clone()),
                    });
                    embed_w = Some(w);
                    m
                }
            }
        };
        let embed = match embed_w {
            Some(w) => Embedding::from(w),
            None => match store.rows_in_place("token_embd.weight", cfg.vocab_size, h)? {
                Some(rows) => {
                    // Unless the output matrix reads the same table in place, end to end.
                    if store.contains("output.weight") || lm_head.memory().in_place == 0 {
                        rows.read_sparsely();
                    }
                    Embedding::InPlace(rows)
                }
                None => Embedding::from(store.get("token_embd.weight", &[cfg.vocab_size, h])?),
            },
        };
        Ok(Self {
            norm: norm("output_norm.weight", h)?,
            cfg,
            backend: backend.clone(),
            embed,
            blocks,
            lm_head,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// What runs this model.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Where the weight matrices' bytes live: read in place from the file, or copied at load.
    pub fn matrix_memory(&self) -> MatrixMemory {
        self.blocks
            .iter()
            .flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down])
            .map(|l| l.w.memory())
            .chain([self.lm_head.memory()])
            .fold(MatrixMemory::default(), |sum, m| sum + m)
    }

    /// Whether token embeddings are looked up in the model file's memory map (a GGUF table in
    /// a block format or f32 / f16 / bf16), rather than from a copy made at load.
    pub fn embedding_in_place(&self) -> bool {
        matches!(self.embed, Embedding::InPlace(_))
    }

    /// A fresh, empty KV cache for this model (f16 entries).
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_with(KvPrecision::F16)
    }

    /// A fresh, empty KV cache with the given precision, where this model's backend keeps it.
    pub fn new_cache_with(&self, precision: KvPrecision) -> KvCache {
        match &self.backend {
            Backend::CpuKernels => KvCache::new(self.cfg.n_layers, precision),
            Backend::Candle(device) => KvCache::on_device(self.cfg.n_layers, precision, device),
        }
    }

    /// A fresh f16 cache with room for `tokens` positions reserved up front where the backend
    /// allows it (host memory); a device cache grows as it goes.
    pub fn new_cache_for(&self, tokens: usize) -> KvCache {
        match &self.backend {
            Backend::CpuKernels => {
                KvCache::with_capacity(self.cfg.n_layers, KvPrecision::F16, tokens, self.cfg.kv_dim())
            }
            Backend::Candle(_) => self.new_cache(),
        }
    }

    /// A cache that reads the frozen `prefix` (a host cache of this model) as its first
    /// positions without copying it, with room for `tokens` more of its own. Only the kernels
    /// backend, which keeps caches in host memory, shares prefixes.
    pub fn cache_after_prefix(&self, prefix: Arc<KvCache>, tokens: usize) -> Result<KvCache> {
        if !self.shares_prefixes() {
            return Err(Error::invalid("cache", "this backend does not share KV prefixes"));
        }
        if prefix.n_layers() != self.cfg.n_layers || !prefix.fits(&self.backend) {
            return Err(Error::invalid(
                "cache",
                "the shared prefix belongs to a different model",
            ));
        }
        KvCache::after_prefix(prefix, tokens)
    }

    /// Whether caches can share a frozen prefix ([`cache_after_prefix`](Self::cache_after_prefix)).
    pub fn shares_prefixes(&self) -> bool {
        matches!(self.backend, Backend::CpuKernels)
    }

    /// Bytes of f16 KV cache one position takes (keys and values of every layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.cfg.n_layers * 2 * self.cfg.kv_dim() * 2
    }

    /// Run several sequences in one call and return each one's last-token logits as a `Vec`
    /// (on the kernels backend, plain buffers from ids to logits: no tensor is made). On error
    /// every cache is left as it was.
    pub fn forward_last_logits(&self, seqs: &mut [SeqInput<'_>]) -> Result<Vec<Vec<f32>>> {
        let mut ws = Workspace::default();
        let logits = self.forward_last_logits_in(seqs, &mut ws)?;
        Ok(logits.chunks_exact(self.cfg.vocab_size).map(<[f32]>::to_vec).collect())
    }

    /// [`forward_last_logits`](Self::forward_last_logits) with the caller's buffers, for a
    /// caller that runs step after step: returns `[sequences, vocab]`, the last token's logits
    /// of each sequence, in `ws`.
    pub fn forward_last_logits_in<'w>(&self, seqs: &mut [SeqInput<'_>], ws: &'w mut Workspace) -> Result<&'w [f32]> {
        if matches!(self.backend, Backend::CpuKernels) {
            self.checked(seqs, |seqs| self.forward_host(seqs, false, ws))?;
        } else {
            ws.logits.clear();
            for o in self.forward_batch(seqs, &ForwardOptions::default())? {
                ws.logits.extend(o.logits.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        // An empty call leaves the last call's logits: none are returned.
        Ok(&ws.logits[..seqs.len() * self.cfg.vocab_size])
    }

    /// Run `tokens` after what `cache` holds; returns the last token's logits as a `Vec`.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let mut out = self.forward_last_logits(&mut [SeqInput { tokens, cache }])?;
        Ok(out.pop().expect("one output per input"))
    }

    /// Check every input, run `f`, and roll every cache back if it fails.
    fn checked<R: Default>(
        &self,
        seqs: &mut [SeqInput<'_>],
        f: impl FnOnce(&mut [SeqInput<'_>]) -> Result<R>,
    ) -> Result<R> {
        if seqs.is_empty() {
            return Ok(R::default());
        }
        for s in seqs.iter() {
            self.check_input(s.tokens, s.cache)?;
        }
        let before: Vec<usize> = seqs.iter().map(|s| s.cache.len()).collect();
        let result = f(seqs);
        if result.is_err() {
            for (s, &len) in seqs.iter_mut().zip(&before) {
                s.cache.truncate(len)?;
            }
        }
        result
    }

    /// Run several sequences in one call. On error every cache is left as it was.
    pub fn forward_batch(&self, seqs: &mut [SeqInput<'_>], opts: &ForwardOptions) -> Result<Vec<SeqOutput>> {
        self.checked(seqs, |seqs| self.forward_batch_unchecked(seqs, opts))
    }

    fn forward_batch_unchecked(&self, seqs: &mut [SeqInput<'_>], opts: &ForwardOptions) -> Result<Vec<SeqOutput>> {
        let kernels = matches!(self.backend, Backend::CpuKernels);
        // Every logits-only call on the kernels backend, prefill included, takes the host path.
        // (Prefill once stayed on the general path because its SmolLM2 perplexity on
        // data/finance_eval.txt read 46.33 against 46.00. That gap is numerical noise: scaling
        // the attention scores by 1 ± 1e-6 moves the host path's figure between 45.91 and 46.33,
        // and with an f32 cache between 45.88 and 46.10; this model's large attention logits
        // make single-token log-probabilities swing by up to half a nat under such changes.)
        if kernels && !opts.attentions && !opts.hidden_states {
            let mut ws = Workspace::default();
            self.forward_host(seqs, opts.all_logits, &mut ws)?;
            let vocab = self.cfg.vocab_size;
            let mut row = 0;
            seqs.iter()
                .map(|s| {
                    let rows = if opts.all_logits { s.tokens.len() } else { 1 };
                    let l = ws.logits[row * vocab..(row + rows) * vocab].to_vec();
                    row += rows;
                    Ok(SeqOutput {
                        logits: Tensor::from_vec(l, (rows, vocab), &Device::Cpu)?,
                        attentions: Vec::new(),
                        hidden_states: Vec::new(),
                    })
                })
                .collect()
        } else {
            self.forward_inner(seqs, opts, None)
        }
    }

    fn check_input(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::invalid(
                "tokens",
                "a forward call needs at least one token per sequence",
            ));
        }
        if cache.n_layers() != self.cfg.n_layers || !cache.fits(&self.backend) {
            return Err(Error::invalid("cache", "the KV cache belongs to a different model"));
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: self.cfg.vocab_size,
            });
        }
        if cache.len().saturating_add(tokens.len()) > self.cfg.context_length {
            return Err(Error::ContextOverflow {
                tokens: cache.len() + tokens.len(),
                max_new: 0,
                context: self.cfg.context_length,
            });
        }
        Ok(())
    }

    /// Run `tokens` on a fresh cache and add to `stats`, for every weight matrix, the squares of
    /// the activations each of its input columns met (for importance-weighted quantization).
    pub fn accumulate_input_stats(&self, tokens: &[u32], stats: &mut InputStats) -> Result<()> {
        let mut cache = self.new_cache();
        self.check_input(tokens, &cache)?;
        let opts = ForwardOptions {
            all_logits: true,
            ..Default::default()
        };
        self.forward_inner(
            &mut [SeqInput {
                tokens,
                cache: &mut cache,
            }],
            &opts,
            Some(stats),
        )?;
        Ok(())
    }

    fn forward_inner(
        &self,
        seqs: &mut [SeqInput<'_>],
        opts: &ForwardOptions,
        mut stats: Option<&mut InputStats>,
    ) -> Result<Vec<SeqOutput>> {
        let mut record = |names: &[&str], layer: Option<usize>, x: &Tensor| -> Result<()> {
            if let Some(stats) = stats.as_deref_mut() {
                let squares = x.sqr()?.sum(0)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
                for name in names {
                    let key = match layer {
                        Some(l) => format!("blk.{l}.{name}.weight"),
                        None => format!("{name}.weight"),
                    };
                    let sums = stats.entry(key).or_insert_with(|| vec![0.0; squares.len()]);
                    sums.iter_mut().zip(&squares).for_each(|(s, v)| *s += v);
                }
            }
            Ok(())
        };
        let cfg = &self.cfg;
        let dev = self.backend.device().clone();
        let lens: Vec<usize> = seqs.iter().map(|s| s.tokens.len()).collect();
        let total: usize = lens.iter().sum();
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let positions: Vec<usize> = seqs
            .iter()
            .flat_map(|s| (s.cache.len()..s.cache.len() + s.tokens.len()).collect::<Vec<_>>())
            .collect();

        let mut x = self
            .embed
            .lookup(&Tensor::new(ids.as_slice(), &Device::Cpu)?)?
            .to_device(&dev)?;
        if cfg.scale_embeddings {
            x = (x * (cfg.hidden_size as f64).sqrt())?;
        }

        let n = seqs.len();
        let mut attentions: Vec<Vec<Tensor>> = vec![Vec::new(); n];
        let mut hidden: Vec<Vec<Tensor>> = vec![Vec::new(); n];
        let record_hidden = |hidden: &mut Vec<Vec<Tensor>>, x: &Tensor| -> Result<()> {
            let mut start = 0;
            for (s, &len) in lens.iter().enumerate() {
                hidden[s].push(x.narrow(0, start, len)?);
                start += len;
            }
            Ok(())
        };
        if opts.hidden_states {
            record_hidden(&mut hidden, &x)?;
        }

        // On CUDA, a step where every sequence brings one token runs its attention in our fused
        // kernels: two launches per layer for the whole batch.
        #[cfg(feature = "cuda")]
        let fused = self.fused_decode_table(seqs, &lens, opts)?;

        // RoPE tables for every token, per distinct frequency set (global / local).
        let mut rope_cache: Vec<(Arc<Vec<f64>>, Tensor, Tensor)> = Vec::new();

        for (layer, block) in self.blocks.iter().enumerate() {
            let (cos, sin) = match rope_cache.iter().find(|(f, _, _)| Arc::ptr_eq(f, &block.inv_freq)) {
                Some((_, c, s)) => (c.clone(), s.clone()),
                None => {
                    let (c, s) = rope_tables(&positions, &block.inv_freq, &dev)?;
                    rope_cache.push((block.inv_freq.clone(), c.clone(), s.clone()));
                    (c, s)
                }
            };

            let residual = x.clone();
            let h = block.attn_norm.forward(&x)?;
            record(&["attn_q", "attn_k", "attn_v"], Some(layer), &h)?;
            let q = self.heads(&block.q.forward(&h)?, cfg.n_heads, block.q_norm.as_ref())?;
            let k = self.heads(&block.k.forward(&h)?, cfg.n_kv_heads, block.k_norm.as_ref())?;
            let v = block
                .v
                .forward(&h)?
                .reshape((total, cfg.n_kv_heads, cfg.head_dim))?
                .transpose(0, 1)?;
            let q = apply_rope(&q, &cos, &sin, cfg.rope_style)?;
            let k = apply_rope(&k, &cos, &sin, cfg.rope_style)?;

            #[cfg(feature = "cuda")]
            let fused_out = match &fused {
                Some(table) => {
                    let window = match block.span {
                        AttentionSpan::Global => 0,
                        AttentionSpan::Sliding(w) => w,
                    };
                    Some(table.attend(layer, &q, &k, &v.contiguous()?, cfg.attn_scale as f32, window)?)
                }
                None => None,
            };
            #[cfg(not(feature = "cuda"))]
            let fused_out: Option<Tensor> = None;
            let attn = match fused_out {
                Some(attn) => attn,
                None => self.attend_each(
                    seqs,
                    &lens,
                    layer,
                    block,
                    (&q, &k, &v),
                    opts.attentions.then_some(&mut attentions),
                )?,
            };
            record(&["attn_output"], Some(layer), &attn)?;
            let mut attn = block.o.forward(&attn)?;
            if let Some(norm) = &block.post_attn_norm {
                attn = norm.forward(&attn)?;
            }
            x = (residual + attn)?;

            let residual = x.clone();
            let h = block.ffn_norm.forward(&x)?;
            record(&["ffn_gate", "ffn_up"], Some(layer), &h)?;
            let [gate, up] = Linear::forward_all([&block.gate, &block.up], &h)?;
            let gate = match cfg.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let inner = (gate * up)?;
            record(&["ffn_down"], Some(layer), &inner)?;
            let mut mlp = block.down.forward(&inner)?;
            if let Some(norm) = &block.post_ffn_norm {
                mlp = norm.forward(&mlp)?;
            }
            x = (residual + mlp)?;
            if opts.hidden_states {
                record_hidden(&mut hidden, &x)?;
            }
        }
        for seq in seqs.iter_mut() {
            seq.cache.commit(seq.tokens.len());
        }

        // Final norm and LM head only on the rows we return.
        let mut outputs = Vec::with_capacity(n);
        let mut start = 0;
        for (s, &len) in lens.iter().enumerate() {
            let rows = if opts.all_logits {
                x.narrow(0, start, len)?
            } else {
                x.narrow(0, start + len - 1, 1)?
            };
            let normed = self.norm.forward(&rows)?;
            record(&["output"], None, &normed)?;
            let logits = self.lm_head.forward(&normed)?;
            outputs.push(SeqOutput {
                logits,
                attentions: std::mem::take(&mut attentions[s]),
                hidden_states: std::mem::take(&mut hidden[s]),
            });
            start += len;
        }
        Ok(outputs)
    }

    /// Attention of each sequence in turn over its cache (after appending its new keys and
    /// values): the output rows of every sequence, stacked, and each one's probabilities pushed
    /// to `attentions` when asked for.
    fn attend_each(
        &self,
        seqs: &mut [SeqInput<'_>],
        lens: &[usize],
        layer: usize,
        block: &Block,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        mut attentions: Option<&mut Vec<Vec<Tensor>>>,
    ) -> Result<Tensor> {
        let mut outs = Vec::with_capacity(seqs.len());
        let mut start = 0;
        for (s, seq) in seqs.iter_mut().enumerate() {
            let len = lens[s];
            let qs = q.narrow(1, start, len)?;
            let ks = k.narrow(1, start, len)?;
            let vs = v.narrow(1, start, len)?;
            let past = seq.cache.len();
            let (k_all, v_all) = seq.cache.append(layer, &ks, &vs)?;
            let (out, probs) = self.attention(&qs, &k_all, &v_all, past, block.span)?;
            if let Some(a) = attentions.as_deref_mut() {
                a[s].push(probs);
            }
            outs.push(out);
            start += len;
        }
        Ok(Tensor::cat(&outs, 0)?)
    }

    /// The table of the fused CUDA decode step, when this step can take it: on CUDA, one token
    /// per sequence, no attention probabilities asked for, caches of one precision without
    /// shared prefixes. Reserves every layer's new row in every cache.
    #[cfg(feature = "cuda")]
    fn fused_decode_table(
        &self,
        seqs: &mut [SeqInput<'_>],
        lens: &[usize],
        opts: &ForwardOptions,
    ) -> Result<Option<cuda_decode::DecodeTable>> {
        let cfg = &self.cfg;
        let dev = self.backend.device();
        let Some(first) = seqs.first() else { return Ok(None) };
        let precision = first.cache.precision();
        if !dev.is_cuda()
            || opts.attentions
            || !cuda_decode::enabled()
            || cfg.head_dim > cuda_decode::MAX_HEAD_DIM
            || lens.iter().any(|&l| l != 1)
            || seqs
                .iter()
                .any(|s| s.cache.shared_prefix_len() > 0 || s.cache.precision() != precision)
        {
            return Ok(None);
        }
        let mut entries = Vec::with_capacity(self.blocks.len() * seqs.len());
        for layer in 0..self.blocks.len() {
            for s in seqs.iter_mut() {
                entries.push(s.cache.reserve_decode_row(layer, cfg.n_kv_heads, cfg.head_dim)?);
            }
        }
        let f16 = precision == KvPrecision::F16;
        Ok(Some(cuda_decode::DecodeTable::upload(dev, &entries, seqs.len(), f16)?))
    }

    /// `[tokens, n*head_dim]` → `[n, tokens, head_dim]`, optionally RMS-normalised per head.
    fn heads(&self, x: &Tensor, n: usize, norm: Option<&RmsNorm>) -> Result<Tensor> {
        let t = x.dim(0)?;
        let mut x = x.reshape((t, n, self.cfg.head_dim))?;
        if let Some(norm) = norm {
            x = norm.forward(&x)?;
        }
        Ok(x.transpose(0, 1)?.contiguous()?)
    }

    /// Causal attention of `q: [n_heads, t, d]` over `k, v: [n_kv, past + t, d]`.
    /// Returns the output `[t, n_heads*d]` and the probabilities `[n_heads, t, past + t]`.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        past: usize,
        span: AttentionSpan,
    ) -> Result<(Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (t, d) = (q.dim(1)?, cfg.head_dim);
        let total = k.dim(1)?;
        let group = cfg.n_heads / cfg.n_kv_heads;
        // Queries of the heads that share one KV head are stacked so no K/V copy is needed.
        let q = q.reshape((cfg.n_kv_heads, group * t, d))?;
        let scores = (q.matmul(&k.t()?)? * cfg.attn_scale)?;
        let scores = match attention_mask(t, past, total, span) {
            Some(mask) => {
                let mask = Tensor::from_vec(mask, (t, total), q.device())?;
                scores
                    .reshape((cfg.n_kv_heads, group, t, total))?
                    .broadcast_add(&mask)?
                    .reshape((cfg.n_kv_heads, group * t, total))?
            }
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v.contiguous()?)?; // [n_kv, group*t, d]
        let out = out
            .reshape((cfg.n_heads, t, d))?
            .transpose(0, 1)?
            .reshape((t, cfg.n_heads * d))?;
        Ok((out, probs.reshape((cfg.n_heads, t, total))?))
    }
}

/// Additive mask `[t, total]` (0 or -inf), or `None` when every query may see every key.
fn attention_mask(t: usize, past: usize, total: usize, span: AttentionSpan) -> Option<Vec<f32>> {
    let window = match span {
        AttentionSpan::Global => usize::MAX,
        AttentionSpan::Sliding(w) => w,
    };
    if t == 1 && total <= window {
        return None;
    }
    let mut mask = vec![0f32; t * total];
    for j in 0..t {
        let pos = past + j;
        for (i, m) in mask[j * total..(j + 1) * total].iter_mut().enumerate() {
            if i > pos || pos - i >= window {
                *m = f32::NEG_INFINITY;
            }
        }
    }
    Some(mask)
}

/// Inverse frequencies `theta^(-2i/d) / linear_factor / freq_factor[i]`.
fn inverse_frequencies(
    cfg: &ModelConfig,
    theta: f64,
    linear_factor: f64,
    freq_factors: Option<&[f64]>,
) -> Result<Vec<f64>> {
    let half = cfg.head_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| theta.powf(-2.0 * i as f64 / cfg.head_dim as f64))
        .collect();
    let factors: Vec<f64> = match (freq_factors, &cfg.rope_llama3) {
        (Some(f), _) => {
            if f.len() != half {
                return Err(Error::TensorShape {
                    name: "rope_freqs.weight".into(),
                    expected: vec![half],
                    found: vec![f.len()],
                });
            }
            f.to_vec()
        }
        (None, Some(l3)) => l3.freq_factors(&base),
        (None, None) => vec![1.0; half],
    };
    Ok(base.iter().zip(&factors).map(|(b, f)| b / f / linear_factor).collect())
}

/// cos/sin values `[tokens, head_dim/2]` for the given absolute positions.
fn rope_values(positions: &[usize], inv_freq: &[f64]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * inv_freq.len());
    let mut sin = Vec::with_capacity(positions.len() * inv_freq.len());
    for &p in positions {
        for &f in inv_freq {
            let angle = p as f64 * f;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

/// [`rope_values`] as tensors on `device`.
fn rope_tables(positions: &[usize], inv_freq: &[f64], device: &Device) -> Result<(Tensor, Tensor)> {
    let (cos, sin) = rope_values(positions, inv_freq);
    let shape = (positions.len(), inv_freq.len());
    Ok((
        Tensor::from_vec(cos, shape, device)?,
        Tensor::from_vec(sin, shape, device)?,
    ))
}

/// Rotate `x: [heads, tokens, d]` by per-token angles.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, style: RopeStyle) -> Result<Tensor> {
    let x = x.unsqueeze(0)?.contiguous()?;
    let y = match style {
        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
        RopeStyle::Neox => candle_nn::rotary_emb::rope(&x, cos, sin)?,
    };
    Ok(y.squeeze(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows normalised eight at a time get the bits of each row alone (a plain sequential
    /// sum of squares), and match the float64 formula closely.
    #[test]
    fn rms_norm_rows_together_equal_each_row_alone() {
        let mut rng = crate::util::Rng::new(9);
        // 77: the transposed walk's columns past a multiple of eight; 64: none.
        for (dim, rows) in [77, 64]
            .into_iter()
            .flat_map(|d| [1usize, 7, 8, 9, 16, 19].map(|r| (d, r)))
        {
            let w: Vec<f32> = (0..dim).map(|_| (rng.next_f64() * 2.0) as f32).collect();
            let norm = RmsNorm::new(Tensor::new(w.as_slice(), &candle_core::Device::Cpu).unwrap(), 1e-5).unwrap();
            let x: Vec<f32> = (0..rows * dim).map(|_| (rng.next_f64() * 8.0 - 4.0) as f32).collect();
            let mut together = vec![0f32; x.len()];
            norm.forward_rows(&x, &mut together);
            let mut in_place = x.clone();
            norm.forward_rows_in_place(&mut in_place);
            assert_eq!(together, in_place);
            for (r, row) in x.chunks_exact(dim).enumerate() {
                let mut alone = vec![0f32; dim];
                norm.forward_rows(row, &mut alone);
                assert_eq!(alone, together[r * dim..(r + 1) * dim], "{rows} rows, row {r}");
                let plain: f32 = row.iter().map(|v| v * v).sum();
                let m = (plain / dim as f32 + 1e-5).sqrt();
                let ms: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / dim as f64;
                for ((&got, &v), &wi) in alone.iter().zip(row).zip(&w) {
                    assert_eq!(got.to_bits(), (v / m * wi).to_bits());
                    let exact = f64::from(v) / (ms + 1e-5).sqrt() * f64::from(wi);
                    assert!((f64::from(got) - exact).abs() <= 1e-5 * (1.0 + exact.abs()));
                }
            }
        }
    }
}
