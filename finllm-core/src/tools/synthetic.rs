//! Random-weight models of any supported architecture and shape, deterministic from a seed.
//!
//! Tests use tiny ones to exercise the real GGUF / safetensors loading code; GPU and benchmark
//! machines, which cannot receive real weights, build SmolLM2-, 1B- and 7B-shaped ones. Every
//! model carries a small byte-level BPE tokenizer and a ChatML template, so llama.cpp loads the
//! same file.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::model::config::Architecture;
use crate::model::gguf::{GgufWriter, Value};
use crate::quant::QuantType;
use crate::util::Rng;
use rayon::prelude::*;

/// Weights by GGUF name: row-major shape and values.
pub type NamedWeights = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The shape of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSpec {
    pub arch: Architecture,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub context: usize,
    /// Vocabulary size; at least the built-in tokenizer's (see [`tokenizer_vocab`]).
    pub vocab: usize,
    pub rope_theta: f64,
    pub seed: u64,
    /// Separate output matrix instead of tied embeddings.
    pub untied_output: bool,
}

impl SyntheticSpec {
    /// A model small enough to build and run in milliseconds.
    pub fn tiny(arch: Architecture, seed: u64) -> Self {
        Self {
            arch,
            hidden: 64,
            // Gemma 3 needs six layers to contain a global-attention layer.
            layers: if arch == Architecture::Gemma3 { 6 } else { 2 },
            heads: 4,
            kv_heads: 2,
            head_dim: if arch == Architecture::Qwen3 || arch == Architecture::Gemma3 {
                32
            } else {
                16
            },
            ffn: 128,
            context: 256,
            vocab: tokenizer_vocab().len(),
            rope_theta: 10_000.0,
            seed,
            untied_output: arch == Architecture::Qwen2,
        }
    }

    /// Named shapes: `tiny`, `smollm2-135m`, `llama-1b`, `llama-7b`.
    pub fn preset(name: &str, arch: Architecture, seed: u64) -> Result<Self> {
        let base = Self::tiny(arch, seed);
        let (hidden, layers, heads, kv_heads, ffn, vocab) = match name {
            "tiny" => return Ok(base),
            "smollm2-135m" => (576, 30, 9, 3, 1536, 49_152),
            "llama-1b" => (2048, 16, 32, 8, 8192, 128_256),
            "llama-7b" => (4096, 32, 32, 32, 11_008, 32_000),
            other => {
                return Err(Error::invalid(
                    "preset",
                    format!("unknown preset '{other}' (tiny, smollm2-135m, llama-1b, llama-7b)"),
                ))
            }
        };
        Ok(Self {
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            ffn,
            context: 4096,
            vocab,
            untied_output: vocab > 100_000,
            ..base
        })
    }

    /// Weights in HF orientation (Q/K rows not permuted), keyed by GGUF name, row-major.
    pub fn weights(&self) -> Result<NamedWeights> {
        if self.vocab < tokenizer_vocab().len() {
            return Err(Error::invalid(
                "vocab",
                format!("must be at least {} (the synthetic tokenizer)", tokenizer_vocab().len()),
            ));
        }
        let mut rng = Rng::new(self.seed);
        let mut w = BTreeMap::new();
        let (h, q, kv, f) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.ffn,
        );
        let mut matrix = |w: &mut BTreeMap<_, _>, name: String, rows: usize, cols: usize| {
            let scale = 1.0 / (cols as f64).sqrt();
            let data = (0..rows * cols)
                .map(|_| ((rng.next_f64() * 2.0 - 1.0) * 1.7 * scale) as f32)
                .collect();
            w.insert(name, (vec![rows, cols], data));
        };
        let mut vectors: Vec<(String, usize, f64, f64)> = Vec::new(); // name, len, centre, spread
        matrix(&mut w, "token_embd.weight".into(), self.vocab, h);
        if self.untied_output {
            matrix(&mut w, "output.weight".into(), self.vocab, h);
        }
        vectors.push(("output_norm.weight".into(), h, 1.0, 0.2));
        for i in 0..self.layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            matrix(&mut w, p("attn_q.weight"), q, h);
            matrix(&mut w, p("attn_k.weight"), kv, h);
            matrix(&mut w, p("attn_v.weight"), kv, h);
            matrix(&mut w, p("attn_output.weight"), h, q);
            matrix(&mut w, p("ffn_gate.weight"), f, h);
            matrix(&mut w, p("ffn_up.weight"), f, h);
            matrix(&mut w, p("ffn_down.weight"), h, f);
            vectors.push((p("attn_norm.weight"), h, 1.0, 0.2));
            vectors.push((p("ffn_norm.weight"), h, 1.0, 0.2));
            if self.arch == Architecture::Qwen2 {
                vectors.push((p("attn_q.bias"), q, 0.0, 0.1));
                vectors.push((p("attn_k.bias"), kv, 0.0, 0.1));
                vectors.push((p("attn_v.bias"), kv, 0.0, 0.1));
            }
            if matches!(self.arch, Architecture::Qwen3 | Architecture::Gemma3) {
                vectors.push((p("attn_q_norm.weight"), self.head_dim, 1.0, 0.2));
                vectors.push((p("attn_k_norm.weight"), self.head_dim, 1.0, 0.2));
            }
            if self.arch == Architecture::Gemma3 {
                vectors.push((p("post_attention_norm.weight"), h, 1.0, 0.2));
                vectors.push((p("post_ffw_norm.weight"), h, 1.0, 0.2));
            }
        }
        for (name, len, centre, spread) in vectors {
            let data = (0..len)
                .map(|_| (centre + (rng.next_f64() * 2.0 - 1.0) * spread) as f32)
                .collect();
            w.insert(name, (vec![len], data));
        }
        Ok(w)
    }

    /// Write the model as GGUF. Matrices are stored as `quant`; vectors stay f32.
    pub fn write_gguf(&self, path: impl AsRef<Path>, quant: QuantType) -> Result<()> {
        self.gguf_writer(quant)?.write(path)
    }

    /// The GGUF image of the model.
    pub fn gguf_writer(&self, quant: QuantType) -> Result<GgufWriter> {
        let arch = self.arch.name();
        let mut g = GgufWriter::new();
        let u32v = |v: usize| Value::U32(v as u32);
        g.meta("general.architecture", Value::String(arch.into()));
        g.meta(
            "general.name",
            Value::String(format!("finllm synthetic {arch} seed {}", self.seed)),
        );
        g.meta(&format!("{arch}.context_length"), u32v(self.context));
        g.meta(&format!("{arch}.embedding_length"), u32v(self.hidden));
        g.meta(&format!("{arch}.block_count"), u32v(self.layers));
        g.meta(&format!("{arch}.feed_forward_length"), u32v(self.ffn));
        g.meta(&format!("{arch}.attention.head_count"), u32v(self.heads));
        g.meta(&format!("{arch}.attention.head_count_kv"), u32v(self.kv_heads));
        g.meta(&format!("{arch}.attention.key_length"), u32v(self.head_dim));
        g.meta(&format!("{arch}.attention.value_length"), u32v(self.head_dim));
        g.meta(&format!("{arch}.rope.dimension_count"), u32v(self.head_dim));
        g.meta(&format!("{arch}.attention.layer_norm_rms_epsilon"), Value::F32(1e-5));
        g.meta(&format!("{arch}.rope.freq_base"), Value::F32(self.rope_theta as f32));
        g.meta(&format!("{arch}.vocab_size"), u32v(self.vocab));
        if self.arch == Architecture::Gemma3 {
            g.meta("gemma3.attention.sliding_window", u32v(16));
        }
        write_tokenizer(&mut g, self.vocab);
        for (name, (shape, data)) in self.weights()? {
            let data = if self.arch == Architecture::Llama
                && (name.ends_with("attn_q.weight") || name.ends_with("attn_k.weight"))
            {
                // GGUF llama stores Q/K rows permuted for interleaved RoPE (as llama.cpp's converter).
                let heads = if name.ends_with("attn_q.weight") {
                    self.heads
                } else {
                    self.kv_heads
                };
                permute_for_interleaved_rope(&data, heads, self.head_dim, shape[1])
            } else {
                data
            };
            if shape.len() == 1 || quant == QuantType::F32 {
                g.tensor_f32(&name, &shape, &data)?;
            } else {
                g.tensor(&name, &shape, quant, encode(&data, &shape, quant)?)?;
            }
        }
        Ok(g)
    }

    /// Write an HF-style directory: `config.json`, `model.safetensors` (in `dtype`: f32, f16 or
    /// bf16) and `tokenizer.json`. Llama and Qwen 2/3 only.
    pub fn write_safetensors_dir(&self, dir: impl AsRef<Path>, dtype: QuantType) -> Result<()> {
        let dir = dir.as_ref();
        let io = |path: &Path, source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let model_type = match self.arch {
            Architecture::Gemma3 => return Err(Error::invalid("arch", "gemma3 is written as GGUF only")),
            other => other.name(),
        };
        let config = serde_json::json!({
            "model_type": model_type,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.ffn,
            "max_position_embeddings": self.context,
            "vocab_size": self.vocab,
            "rms_norm_eps": 1e-5,
            "rope_theta": self.rope_theta,
            "tie_word_embeddings": !self.untied_output,
            "eos_token_id": eos_id(),
            "bos_token_id": eos_id(),
        });
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("json")).map_err(|e| io(&path, e))?;

        let names = crate::model::hf_tensor_names(self.layers);
        let st_dtype = match dtype {
            QuantType::F32 => safetensors::Dtype::F32,
            QuantType::F16 => safetensors::Dtype::F16,
            QuantType::BF16 => safetensors::Dtype::BF16,
            other => {
                return Err(Error::invalid(
                    "dtype",
                    format!("safetensors are f32, f16 or bf16, not {other}"),
                ))
            }
        };
        let mut blobs = Vec::new();
        for (name, (shape, data)) in self.weights()? {
            let hf = names.get(&name).cloned().unwrap_or(name);
            let bytes: Vec<u8> = match dtype {
                QuantType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                QuantType::F16 => data
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            blobs.push((hf, shape, bytes));
        }
        let views = blobs
            .iter()
            .map(|(n, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                        .map_err(|e| Error::invalid("tensor", e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path).map_err(|e| Error::Safetensors {
            path: path.clone(),
            reason: e.to_string(),
        })?;

        // The tokenizer as HF tokenizers would save it, built from the same GGUF metadata.
        let mut g = GgufWriter::new();
        write_tokenizer(&mut g, self.vocab);
        g.meta("general.architecture", Value::String(model_type.into()));
        let file = crate::model::GgufFile::from_vec("synthetic-tokenizer", g.to_bytes())?;
        let tok = crate::tokenizer::Tokenizer::from_gguf(&file)?;
        let path = dir.join("tokenizer.json");
        tok.save_json(&path)?;
        Ok(())
    }
}

/// Reorder Q/K rows from HF (rotate halves) to GGUF llama (rotate adjacent pairs) layout.
pub fn permute_for_interleaved_rope(data: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = h * head_dim + j * half + i;
                let dst = h * head_dim + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Encode f32 values of a row-major matrix as GGML blocks of `quant`.
pub fn encode(data: &[f32], shape: &[usize], quant: QuantType) -> Result<Vec<u8>> {
    let cols = shape.last().copied().unwrap_or(0) as u64;
    if !cols.is_multiple_of(quant.block_size()) {
        return Err(Error::invalid(
            "quant",
            format!(
                "rows of {cols} values are not a whole number of {quant} blocks ({})",
                quant.block_size()
            ),
        ));
    }
    // Blocks never span rows, so pieces of whole rows quantize independently (in parallel: a
    // 7B model would otherwise take minutes) and their bytes concatenate to the whole's.
    let rows = if cols == 0 { 0 } else { data.len() / cols as usize };
    if rows * (cols as usize) != data.len() || shape.iter().product::<usize>() != data.len() {
        return Err(Error::invalid("shape", "the data does not fill the shape"));
    }
    let piece_rows = (rows / (4 * rayon::current_num_threads()).max(1)).max(1);
    let pieces: Vec<Vec<u8>> = data
        .par_chunks((piece_rows * cols as usize).max(1))
        .map(|piece| -> Result<Vec<u8>> {
            let t = Tensor::from_slice(piece, (piece.len() / cols as usize, cols as usize), &Device::Cpu)?;
            Ok(QTensor::quantize(&t, quant.to_candle())?.data()?.into_owned())
        })
        .collect::<Result<_>>()?;
    Ok(pieces.concat())
}

const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 12] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "s"),
    ("r", "e"),
    ("a", "t"),
    ("Ġ", "b"),
    ("o", "r"),
];
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn eos_id() -> usize {
    256 + MERGES.len()
}

/// The synthetic tokenizer's tokens: 256 byte tokens, the merges' results, then specials.
pub fn tokenizer_vocab() -> Vec<String> {
    let mut tokens: Vec<String> = (0..=255u8).map(byte_char).map(String::from).collect();
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    tokens.extend(SPECIALS.iter().map(|s| s.to_string()));
    tokens
}

fn byte_char(b: u8) -> char {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    if printable(b) {
        return char::from(b);
    }
    let rank = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + rank).expect("valid scalar")
}

fn write_tokenizer(g: &mut GgufWriter, vocab: usize) {
    let mut tokens = tokenizer_vocab();
    let n_real = tokens.len();
    let mut types: Vec<Value> = (0..n_real)
        .map(|i| Value::I32(if i >= n_real - SPECIALS.len() { 3 } else { 1 }))
        .collect();
    // Pad to the model's vocabulary with unused tokens, as real converters do.
    for i in n_real..vocab {
        tokens.push(format!("[PAD{i}]"));
        types.push(Value::I32(5));
    }
    g.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    g.meta("tokenizer.ggml.pre", Value::String("default".into()));
    g.meta(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    );
    g.meta("tokenizer.ggml.token_type", Value::Array(types));
    g.meta(
        "tokenizer.ggml.merges",
        Value::Array(MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
    );
    g.meta("tokenizer.ggml.bos_token_id", Value::U32(eos_id() as u32));
    g.meta("tokenizer.ggml.eos_token_id", Value::U32(eos_id() as u32));
    g.meta("tokenizer.ggml.add_bos_token", Value::Bool(false));
    g.meta("tokenizer.chat_template", Value::String(CHATML.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_quantize_to_the_whole_tensors_bytes() {
        let mut rng = Rng::new(5);
        for (rows, cols) in [(1, 256), (7, 256), (33, 512), (100, 256)] {
            let data: Vec<f32> = (0..rows * cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
            for quant in [
                QuantType::Q4_0,
                QuantType::Q8_0,
                QuantType::Q4K,
                QuantType::Q6K,
                QuantType::F16,
            ] {
                let whole = QTensor::quantize(
                    &Tensor::from_slice(&data, (rows, cols), &Device::Cpu).unwrap(),
                    quant.to_candle(),
                )
                .unwrap();
                let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
                let pieces = pool.install(|| encode(&data, &[rows, cols], quant)).unwrap();
                assert_eq!(pieces, whole.data().unwrap().into_owned(), "{rows}x{cols} {quant}");
            }
        }
        assert!(encode(&[0.0; 256], &[2, 256], QuantType::Q8_0).is_err());
    }

    #[test]
    fn permutation_is_a_row_bijection() {
        let (heads, hd, cols) = (2, 4, 3);
        let data: Vec<f32> = (0..heads * hd * cols).map(|v| v as f32).collect();
        let out = permute_for_interleaved_rope(&data, heads, hd, cols);
        // Head 0: HF rows [0 1 | 2 3] become [0 2 1 3].
        let row = |v: &[f32], r: usize| v[r * cols];
        let order: Vec<f32> = (0..heads * hd).map(|r| row(&out, r) / cols as f32).collect();
        assert_eq!(order, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    }

    #[test]
    fn weights_are_deterministic_in_the_seed() {
        let a = SyntheticSpec::tiny(Architecture::Llama, 1).weights().unwrap();
        let b = SyntheticSpec::tiny(Architecture::Llama, 1).weights().unwrap();
        let c = SyntheticSpec::tiny(Architecture::Llama, 2).weights().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn vocab_has_byte_tokens_for_all_bytes() {
        let v = tokenizer_vocab();
        let mut chars: Vec<char> = v[..256].iter().map(|s| s.chars().next().unwrap()).collect();
        chars.sort();
        chars.dedup();
        assert_eq!(chars.len(), 256);
    }
}
