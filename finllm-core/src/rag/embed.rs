//! Sentence embeddings from a BERT-family encoder (all-MiniLM-L6-v2 by default).
//!
//! A sentence-transformers directory holds `config.json` (the BERT shape), `model.safetensors`,
//! `tokenizer.json`, `sentence_bert_config.json` (the longest input) and `1_Pooling/config.json`
//! (mean or CLS pooling); a `2_Normalize` module in `modules.json` asks for unit vectors. The
//! encoder runs on finllm's own kernels, reading f32 / f16 / bf16 weights in place from the
//! memory-mapped file. Texts in one call are stacked token by token: every linear layer is one
//! matmul over all of them, and attention runs per text (no padding, no mask).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::{read_hf_config, safetensors_files, SafetensorsStore};
use crate::quant::matmul::QMatrix;
use crate::quant::matmul::Scratch;

/// How a text's token vectors become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over every token (`[CLS]` and `[SEP]` included).
    Mean,
    /// The first (`[CLS]`) token's vector.
    Cls,
}

/// The encoder's shape and the pipeline around it.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedderConfig {
    pub hidden: usize,
    pub heads: usize,
    pub layers: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub layer_norm_eps: f32,
    /// Longest input in tokens (`[CLS]` and `[SEP]` included); longer texts are truncated.
    pub max_tokens: usize,
    pub pooling: Pooling,
    pub normalize: bool,
}

/// Limits on what a config may ask for, so a hostile config cannot size allocations.
const MAX_DIM: usize = 1 << 16;
const MAX_LAYERS: usize = 256;

/// A linear layer: its weights as stored (f32, f16, bf16) or quantized at load, and its bias.
struct Linear {
    w: QMatrix,
    b: Vec<f32>,
}

impl Linear {
    /// `x @ W^T + b` for `n` rows into `out` (resized to `[n, rows]`, overwritten whole).
    fn forward_into(&self, x: &[f32], n: usize, out: &mut Vec<f32>, scratch: &mut Scratch) {
        Self::group_into([self], x, n, [out], scratch);
    }

    /// `x @ W^T + b` of several layers on the same `n` rows `x`: the activations are read (and,
    /// for quantized weights, quantized) once.
    fn group_into<const N: usize>(
        linears: [&Linear; N],
        x: &[f32],
        n: usize,
        mut outs: [&mut Vec<f32>; N],
        scratch: &mut Scratch,
    ) {
        for (l, o) in linears.iter().zip(outs.iter_mut()) {
            o.resize(n * l.b.len(), 0.0);
        }
        let mats = linears.map(|l| &l.w);
        let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        crate::quant::matmul::matmul_group_into(&mats, x, n, &mut views, scratch);
        for (l, o) in linears.iter().zip(outs.iter_mut()) {
            l.add_bias(o);
        }
    }

    /// Add the bias to every row, parallel over rows.
    fn add_bias(&self, y: &mut [f32]) {
        let d = self.b.len();
        y.par_chunks_mut(d * 64).for_each(|rows| {
            for row in rows.chunks_exact_mut(d) {
                row.iter_mut().zip(&self.b).for_each(|(v, b)| *v += b);
            }
        });
    }
}

/// The buffers of one forward pass, reused layer after layer and, up to
/// [`KEPT_BUFFER_BYTES`], call after call: fresh megabyte buffers cost page faults (a fifth of
/// the time when every layer allocated its own).
#[derive(Default)]
struct Buffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
    mm: Scratch,
}

/// Most bytes of buffers an embedder keeps between calls (a batch of 32 texts of 128 tokens
/// needs about 30 MB).
const KEPT_BUFFER_BYTES: usize = 64 << 20;

impl Buffers {
    fn bytes(&self) -> usize {
        let f = [&self.q, &self.k, &self.v, &self.attn, &self.o, &self.up, &self.down];
        f.iter().map(|v| v.capacity() * 4).sum::<usize>() + self.mm.bytes()
    }
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    /// Every row normalised to mean 0 and variance 1, then scaled and shifted; in f32 with
    /// eight partial sums per pass (the mean first, then the variance about it: no
    /// cancellation), parallel over rows.
    fn forward_in_place(&self, x: &mut [f32]) {
        let d = self.w.len();
        x.par_chunks_mut(d * 64).for_each(|rows| {
            for row in rows.chunks_exact_mut(d) {
                self.row(row);
            }
        });
    }

    /// `x + residual`, then [`forward_in_place`](Self::forward_in_place), in one parallel pass.
    fn add_forward_in_place(&self, x: &mut [f32], residual: &[f32]) {
        let d = self.w.len();
        x.par_chunks_mut(d * 64)
            .zip(residual.par_chunks(d * 64))
            .for_each(|(rows, add)| {
                for (row, add) in rows.chunks_exact_mut(d).zip(add.chunks_exact(d)) {
                    row.iter_mut().zip(add).for_each(|(a, b)| *a += b);
                    self.row(row);
                }
            });
    }

    /// One row normalised, scaled and shifted.
    #[inline]
    fn row(&self, row: &mut [f32]) {
        let d = self.w.len();
        let mean = sum8(row.iter().copied()) / d as f32;
        let var = sum8(row.iter().map(|&v| (v - mean) * (v - mean))) / d as f32;
        let inv = 1.0 / (var + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.w).zip(&self.b) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// A sum in eight interleaved partial sums (vectorises; more accurate than one running sum).
#[inline]
fn sum8(values: impl Iterator<Item = f32>) -> f32 {
    let mut acc = [0f32; 8];
    for (i, v) in values.enumerate() {
        acc[i % 8] += v;
    }
    acc.iter().sum()
}

struct Layer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    attn_norm: LayerNorm,
    up: Linear,
    down: Linear,
    out_norm: LayerNorm,
}

/// How an embedder is loaded.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmbedderOptions {
    /// Threads for its forward pass (`None`: one per core).
    pub threads: Option<usize>,
    /// Quantize the matrices to this format at load (`Some(Q8_0)`: the 8-bit integer kernels,
    /// a quarter of the f32 weights' memory), all but the query, key and value projections,
    /// which keep their stored weights; `None`: every matrix as stored (f32, f16, bf16).
    pub quantize: Option<crate::quant::QuantType>,
}

impl EmbedderOptions {
    /// Options from the surfaces' forms: threads (`None` or 0: one per core) and a format
    /// name (`"q8_0"`) or `None`.
    pub fn named(threads: Option<usize>, quantize: Option<&str>) -> Result<Self> {
        let quantize = quantize
            .map(|q| {
                crate::quant::QuantType::from_name(q)
                    .ok_or_else(|| Error::invalid("quantize", format!("{q:?}: unknown format (q8_0)")))
            })
            .transpose()?;
        Ok(Self {
            threads: threads.filter(|&t| t > 0),
            quantize,
        })
    }
}

/// A loaded sentence embedder. `Send + Sync`: share it behind an `Arc`.
pub struct Embedder {
    cfg: EmbedderConfig,
    tokenizer: tokenizers::Tokenizer,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<Layer>,
    pool: Arc<rayon::ThreadPool>,
    /// Forward-pass buffers between calls (one per concurrent call at most).
    buffers: std::sync::Mutex<Vec<Buffers>>,
    dir: PathBuf,
    fingerprint: String,
}

/// SHA-256 over the encoder's shape, every position embedding and every 61st value of the
/// word embeddings: tells one embedder's vectors from another's, cheaply.
fn fingerprint(cfg: &EmbedderConfig, word: &[f32], position: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{cfg:?}").as_bytes());
    for x in position.iter().chain(word.iter().step_by(61)) {
        h.update(x.to_le_bytes());
    }
    crate::util::hex(&h.finalize())
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("dir", &self.dir)
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn bad_config(path: &Path, reason: impl Into<String>) -> Error {
    Error::Safetensors {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| bad_config(path, format!("not valid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

impl EmbedderConfig {
    /// Read the encoder shape and the sentence-transformers settings of `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let c = read_hf_config(dir)?;
        let size = |key: &str| -> Result<usize> {
            let v = c
                .get(key)
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad_config(&config_path, format!("'{key}' is missing or not a whole number")))?;
            let v = usize::try_from(v).unwrap_or(usize::MAX);
            if v == 0 || v > MAX_DIM * 16 {
                return Err(bad_config(&config_path, format!("'{key}' = {v} is out of range")));
            }
            Ok(v)
        };
        let model_type = c.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if !matches!(model_type, "bert") {
            return Err(Error::UnknownArchitecture {
                found: model_type.to_string(),
                supported: "bert (sentence embedders)".into(),
            });
        }
        let act = c.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("gelu");
        if act != "gelu" {
            return Err(bad_config(
                &config_path,
                format!("hidden_act '{act}' is not supported (gelu is)"),
            ));
        }
        let (hidden, heads, layers) = (
            size("hidden_size")?,
            size("num_attention_heads")?,
            size("num_hidden_layers")?,
        );
        if hidden > MAX_DIM || layers > MAX_LAYERS || hidden % heads != 0 {
            return Err(bad_config(
                &config_path,
                format!("{hidden} hidden, {heads} heads, {layers} layers is not a shape finllm runs"),
            ));
        }
        let max_positions = size("max_position_embeddings")?;
        let st = read_json(&dir.join("sentence_bert_config.json"))?;
        let max_tokens = st
            .as_ref()
            .and_then(|s| s.get("max_seq_length"))
            .and_then(serde_json::Value::as_u64)
            .map_or(max_positions, |m| (m as usize).clamp(2, max_positions));
        let pooling_cfg = read_json(&dir.join("1_Pooling/config.json"))?;
        let flag = |k: &str| {
            pooling_cfg
                .as_ref()
                .and_then(|p| p.get(k))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        let pooling = match (flag("pooling_mode_mean_tokens"), flag("pooling_mode_cls_token")) {
            (_, true) => Pooling::Cls,
            (true, false) => Pooling::Mean,
            (false, false) if pooling_cfg.is_none() => Pooling::Mean,
            (false, false) => {
                return Err(bad_config(
                    &dir.join("1_Pooling/config.json"),
                    "only mean and CLS pooling are supported",
                ))
            }
        };
        let normalize = read_json(&dir.join("modules.json"))?.is_some_and(|m| {
            m.as_array().is_some_and(|mods| {
                mods.iter().any(|m| {
                    m.get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.ends_with("Normalize"))
                })
            })
        });
        Ok(Self {
            hidden,
            heads,
            layers,
            intermediate: size("intermediate_size")?,
            vocab: size("vocab_size")?,
            max_positions,
            type_vocab: size("type_vocab_size")?,
            layer_norm_eps: c.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12) as f32,
            max_tokens,
            pooling,
            normalize,
        })
    }
}

impl Embedder {
    /// Load a sentence-transformers directory, running on `threads` threads (default: one per
    /// core).
    pub fn load(dir: impl AsRef<Path>, threads: Option<usize>) -> Result<Self> {
        Self::load_with(
            dir,
            &EmbedderOptions {
                threads,
                ..Default::default()
            },
        )
    }

    /// [`load`](Self::load) with options: the threads, and weights quantized at load.
    pub fn load_with(dir: impl AsRef<Path>, options: &EmbedderOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let threads = options.threads;
        if let Some(q) = options.quantize.filter(|&q| q != crate::quant::QuantType::Q8_0) {
            return Err(Error::invalid(
                "quantize",
                format!("{q:?}: an embedder's matrices quantize to Q8_0 only"),
            ));
        }
        let cfg = EmbedderConfig::from_dir(dir)?;
        let files = safetensors_files(dir)?;
        // Checkpoints name their tensors with or without a "bert." prefix.
        let probe = SafetensorsStore::open(&files, Default::default())?;
        let prefix = if probe.has_hf("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        drop(probe);
        let names = probe_names(cfg.layers)
            .into_iter()
            .map(|n| (n.clone(), format!("{prefix}{n}")))
            .collect();
        let store = SafetensorsStore::open(&files, names)?;
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> { Ok(store.load_f32_vec(name, &[len])?.0) };
        let table =
            |name: &str, rows: usize| -> Result<Vec<f32>> { Ok(store.load_f32_vec(name, &[rows, cfg.hidden])?.0) };
        let linear = |name: &str, out: usize, input: usize| -> Result<Linear> {
            let weight = format!("{name}.weight");
            // The query, key and value projections keep their stored weights: 8-bit inputs to
            // them move the attention logits most (lowest cosine to the float64 reference over
            // the test texts 0.9982 with them quantized, 0.9992 without).
            let quantize = options.quantize.filter(|_| !name.contains(".attention.self."));
            let w = match quantize {
                Some(q) => {
                    let (data, _) = store.load_f32_vec(&weight, &[out, input])?;
                    QMatrix::quantized(q, &data, out, input).ok_or_else(|| {
                        bad_config(
                            dir,
                            format!("{weight}: {input} columns do not quantize (whole 32-value blocks)"),
                        )
                    })?
                }
                None => store
                    .matrix(&weight, out, input)?
                    .ok_or_else(|| bad_config(dir, format!("{weight} is not f32, f16 or bf16")))?,
            };
            Ok(Linear {
                w,
                b: vector(&format!("{name}.bias"), out)?,
            })
        };
        let norm = |name: &str| -> Result<LayerNorm> {
            Ok(LayerNorm {
                w: vector(&format!("{name}.weight"), cfg.hidden)?,
                b: vector(&format!("{name}.bias"), cfg.hidden)?,
                eps: cfg.layer_norm_eps,
            })
        };
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let layers = (0..cfg.layers)
            .map(|l| {
                let p = format!("encoder.layer.{l}");
                Ok(Layer {
                    q: linear(&format!("{p}.attention.self.query"), h, h)?,
                    k: linear(&format!("{p}.attention.self.key"), h, h)?,
                    v: linear(&format!("{p}.attention.self.value"), h, h)?,
                    o: linear(&format!("{p}.attention.output.dense"), h, h)?,
                    attn_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                    up: linear(&format!("{p}.intermediate.dense"), i, h)?,
                    down: linear(&format!("{p}.output.dense"), h, i)?,
                    out_norm: norm(&format!("{p}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: cfg.max_tokens,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let word = table("embeddings.word_embeddings.weight", cfg.vocab)?;
        let position = table("embeddings.position_embeddings.weight", cfg.max_positions)?;
        let mut fingerprint = fingerprint(&cfg, &word, &position);
        if let Some(q) = options.quantize {
            // Quantized weights give other vectors: an index built with one is not searched with
            // the other.
            fingerprint = format!("{fingerprint}+{q:?}").to_lowercase();
        }
        Ok(Self {
            word,
            position,
            fingerprint,
            token_type: table("embeddings.token_type_embeddings.weight", cfg.type_vocab)?,
            embed_norm: norm("embeddings.LayerNorm")?,
            layers,
            tokenizer,
            pool: crate::llm::thread_pool(threads)?,
            buffers: Default::default(),
            dir: dir.to_path_buf(),
            cfg,
        })
    }

    pub fn config(&self) -> &EmbedderConfig {
        &self.cfg
    }

    /// Identifies the embedder's weights and settings: an index built with one embedder
    /// refuses queries embedded by another.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Tokens of `text` without `[CLS]` and `[SEP]` (at most the model's longest input minus two).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenize(text)?.len().saturating_sub(2))
    }

    /// The share of `text`'s tokens (without `[CLS]` and `[SEP]`) the vocabulary does not know
    /// (`[UNK]`): 0 for text in the embedder's languages, near 1 for a script it never saw.
    pub fn unknown_fraction(&self, text: &str) -> Result<f32> {
        let ids = self.tokenize(text)?;
        let inner = ids.len().saturating_sub(2);
        if inner == 0 {
            return Ok(0.0);
        }
        let Some(unk) = self.tokenizer.token_to_id("[UNK]") else {
            return Ok(0.0);
        };
        let unknown = ids[1..ids.len() - 1].iter().filter(|&&id| id == unk).count();
        Ok(unknown as f32 / inner as f32)
    }

    /// Length of every embedding.
    pub fn dim(&self) -> usize {
        self.cfg.hidden
    }

    /// The token ids the encoder sees for `text`: `[CLS]`, the text's tokens, `[SEP]`, truncated to
    /// the model's longest input.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids().to_vec();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab_size: self.cfg.vocab,
            });
        }
        Ok(ids)
    }

    /// One embedding per text, in order.
    pub fn embed<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.embed_ids(&ids)
    }

    /// One embedding per token sequence (each at most the model's longest input).
    pub fn embed_ids(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for seq in ids {
            if seq.is_empty() || seq.len() > self.cfg.max_positions {
                return Err(Error::invalid(
                    "ids",
                    format!("{} tokens; an input takes 1 to {}", seq.len(), self.cfg.max_positions),
                ));
            }
            if let Some(&id) = seq.iter().find(|&&id| id as usize >= self.cfg.vocab) {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab_size: self.cfg.vocab,
                });
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.pool.install(|| Ok(self.forward(ids)))
    }

    fn forward(&self, ids: &[Vec<u32>]) -> Vec<Vec<f32>> {
        let d = self.cfg.hidden;
        let n: usize = ids.iter().map(Vec::len).sum();
        let mut x = Vec::with_capacity(n * d);
        for seq in ids {
            for (p, &id) in seq.iter().enumerate() {
                let (w, pos, ty) = (
                    &self.word[id as usize * d..][..d],
                    &self.position[p * d..][..d],
                    &self.token_type[..d],
                );
                x.extend((0..d).map(|j| w[j] + pos[j] + ty[j]));
            }
        }
        self.embed_norm.forward_in_place(&mut x);
        // Where each text's rows start.
        let starts: Vec<usize> = ids
            .iter()
            .scan(0, |at, s| {
                let start = *at;
                *at += s.len();
                Some(start)
            })
            .collect();
        let mut bufs = self
            .buffers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        let b = &mut bufs;
        for layer in &self.layers {
            Linear::group_into(
                [&layer.q, &layer.k, &layer.v],
                &x,
                n,
                [&mut b.q, &mut b.k, &mut b.v],
                &mut b.mm,
            );
            self.attention_into(&b.q, &b.k, &b.v, ids, &starts, &mut b.attn);
            layer.o.forward_into(&b.attn, n, &mut b.o, &mut b.mm);
            layer.attn_norm.add_forward_in_place(&mut x, &b.o);
            layer.up.forward_into(&x, n, &mut b.up, &mut b.mm);
            b.up.par_chunks_mut(4096)
                .for_each(crate::quant::elementwise::gelu_erf_in_place);
            layer.down.forward_into(&b.up, n, &mut b.down, &mut b.mm);
            layer.out_norm.add_forward_in_place(&mut x, &b.down);
        }
        if bufs.bytes() <= KEPT_BUFFER_BYTES {
            self.buffers.lock().unwrap_or_else(|e| e.into_inner()).push(bufs);
        }
        ids.iter()
            .zip(&starts)
            .map(|(seq, &start)| {
                let rows = &x[start * d..(start + seq.len()) * d];
                let mut e = match self.cfg.pooling {
                    Pooling::Cls => rows[..d].to_vec(),
                    Pooling::Mean => {
                        let mut sum = vec![0f64; d];
                        for row in rows.chunks_exact(d) {
                            sum.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
                        }
                        sum.iter().map(|s| (s / seq.len() as f64) as f32).collect()
                    }
                };
                if self.cfg.normalize {
                    let norm = e.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
                    if norm > 0.0 {
                        e.iter_mut().for_each(|v| *v = (f64::from(*v) / norm) as f32);
                    }
                }
                e
            })
            .collect()
    }

    /// Bidirectional attention within each text, every head, into `out` (`[n, hidden]`). One
    /// task per text, writing its own rows; per head its scores `[len, len]` in one buffer,
    /// softmax by rows, then the values.
    fn attention_into(&self, q: &[f32], k: &[f32], v: &[f32], ids: &[Vec<u32>], starts: &[usize], out: &mut Vec<f32>) {
        let (d, heads) = (self.cfg.hidden, self.cfg.heads);
        let hd = d / heads;
        let scale = 1.0 / (hd as f32).sqrt();
        out.resize(q.len(), 0.0);
        // Every text's rows of the output, in order.
        let mut rows: Vec<&mut [f32]> = Vec::with_capacity(ids.len());
        let mut rest = out.as_mut_slice();
        for seq in ids {
            let (mine, tail) = rest.split_at_mut(seq.len() * d);
            rows.push(mine);
            rest = tail;
        }
        rows.into_par_iter().zip(starts.par_iter()).for_each(|(out, &start)| {
            let len = out.len() / d;
            let mut scores = vec![0f32; len * len];
            // Head `h` of row `r` of this text in q, k or v.
            let at = |r: usize, h: usize| (start + r) * d + h * hd..(start + r) * d + (h + 1) * hd;
            for h in 0..heads {
                for (i, row) in scores.chunks_exact_mut(len).enumerate() {
                    let qi = &q[at(i, h)];
                    for (j, s) in row.iter_mut().enumerate() {
                        *s = crate::quant::vector::dot(qi, &k[at(j, h)]) * scale;
                    }
                    crate::quant::elementwise::softmax_in_place(row);
                }
                for (i, o) in out.chunks_exact_mut(d).enumerate() {
                    let o = &mut o[h * hd..(h + 1) * hd];
                    o.fill(0.0);
                    for (j, &p) in scores[i * len..(i + 1) * len].iter().enumerate() {
                        o.iter_mut().zip(&v[at(j, h)]).for_each(|(a, b)| *a += p * b);
                    }
                }
            }
        });
    }
}

/// The policy's semantic rules embed sentences with the same encoder.
impl crate::compliance::policy::Embedder for Embedder {
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        Embedder::embed(self, texts)
    }
}

/// Every tensor name an encoder of `layers` layers reads (without a checkpoint prefix).
fn probe_names(layers: usize) -> Vec<String> {
    let mut names: Vec<String> = [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.token_type_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "embeddings.LayerNorm.bias",
    ]
    .map(String::from)
    .to_vec();
    for l in 0..layers {
        for part in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "attention.output.LayerNorm",
            "intermediate.dense",
            "output.dense",
            "output.LayerNorm",
        ] {
            for t in ["weight", "bias"] {
                names.push(format!("encoder.layer.{l}.{part}.{t}"));
            }
        }
    }
    names
}
