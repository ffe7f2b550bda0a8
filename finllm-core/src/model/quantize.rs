//! Write a model as a GGUF file of another weight type (`finllm quantize`).
//!
//! The source is a GGUF file (any supported weight types: requantized through f32) or an HF
//! directory (`config.json`, f32/f16/bf16 `*.safetensors`, a BPE `tokenizer.json`) of a llama,
//! qwen2 or qwen3 model. Every matrix whose rows are a whole number of the target's blocks is
//! re-encoded; vectors (norms, biases) stay f32, and a matrix whose rows do not divide into blocks
//! keeps its type. The result carries the metadata llama.cpp needs (hyper-parameters, tokenizer,
//! chat template), so both finllm and llama.cpp load it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::Device;

use super::gguf::{GgufFile, GgufWriter, Value};
use super::synthetic::{encode, permute_for_interleaved_rope};
use super::{config_from_hf, hf_tensor_names, read_hf_config, safetensors_files, Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::model::weights::SafetensorsStore;
use crate::quant::QuantType;

/// What [`quantize_model`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct QuantizeReport {
    /// Matrices re-encoded in the target type.
    pub quantized: usize,
    /// Tensors kept as they were (vectors, and matrices whose rows are not whole blocks).
    pub kept: usize,
    /// Bytes of tensor data before and after.
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Weight types a model can be written in.
pub const TARGETS: [QuantType; 9] = [
    QuantType::F32,
    QuantType::F16,
    QuantType::BF16,
    QuantType::Q8_0,
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

/// The GGUF image of the model at `src` with its matrices in `quant`.
pub fn quantize_model(src: &Path, quant: QuantType) -> Result<(GgufWriter, QuantizeReport)> {
    if !TARGETS.contains(&quant) {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name()).collect();
        return Err(Error::invalid(
            "quant",
            format!("cannot write {quant}; choose one of {}", names.join(", ")),
        ));
    }
    if src.is_dir() {
        from_hf_dir(src, quant)
    } else {
        from_gguf(&Arc::new(GgufFile::open(src)?), quant)
    }
}

fn from_gguf(file: &Arc<GgufFile>, quant: QuantType) -> Result<(GgufWriter, QuantizeReport)> {
    let mut g = GgufWriter::new();
    for (key, value) in file.metadata() {
        if key != "general.file_type" && key != "general.alignment" {
            g.meta(key, value.clone());
        }
    }
    set_file_type(&mut g, quant);
    let tied = file.tensor("output.weight").is_none();
    let mut report = QuantizeReport::default();
    for info in file.tensors() {
        let shape = info.shape();
        let bytes = file.tensor_data(info);
        report.bytes_in += bytes.len() as u64;
        let target = target_type(&shape, tensor_quant(&info.name, quant, tied)).filter(|&t| t != info.dtype);
        if let Some(target) = target {
            let values = dequantize(info.dtype, bytes, &shape, &info.name)?;
            g.tensor(&info.name, &shape, target, encode(&values, &shape, target)?)?;
            report.quantized += 1;
        } else {
            g.tensor(&info.name, &shape, info.dtype, bytes.to_vec())?;
            report.kept += 1;
        }
    }
    report.bytes_out = g.tensor_bytes();
    Ok((g, report))
}

fn from_hf_dir(dir: &Path, quant: QuantType) -> Result<(GgufWriter, QuantizeReport)> {
    let config = read_hf_config(dir)?;
    let cfg = config_from_hf(&config)?;
    if cfg.rope_llama3.is_some() {
        return Err(Error::invalid(
            "quantize",
            "Llama-3 RoPE scaling is not written to GGUF yet; convert this model with llama.cpp's converter",
        ));
    }
    let store = SafetensorsStore::open(&safetensors_files(dir)?, hf_tensor_names(cfg.n_layers))?;
    let mut g = GgufWriter::new();
    write_hyper_params(&mut g, &cfg);
    write_hf_tokenizer(&mut g, dir, &config, cfg.vocab_size)?;
    set_file_type(&mut g, quant);
    let mut report = QuantizeReport::default();
    let mut names: Vec<String> = hf_tensor_names(cfg.n_layers)
        .into_keys()
        .filter(|n| store.contains(n))
        .collect();
    names.sort_by_key(|n| tensor_order(n));
    for name in names {
        let shape = store.shape(&name)?;
        let (values, bytes_in) = store.load_f32_vec(&name, &shape)?;
        report.bytes_in += bytes_in;
        // GGUF llama keeps Q/K rows in interleaved-RoPE order (as llama.cpp's converter writes).
        let values = match (cfg.arch, name.rsplit('.').nth(1)) {
            (Architecture::Llama, Some("attn_q")) => {
                permute_for_interleaved_rope(&values, cfg.n_heads, cfg.head_dim, shape[1])
            }
            (Architecture::Llama, Some("attn_k")) => {
                permute_for_interleaved_rope(&values, cfg.n_kv_heads, cfg.head_dim, shape[1])
            }
            _ => values,
        };
        if let Some(target) = target_type(&shape, tensor_quant(&name, quant, !store.contains("output.weight"))) {
            report.quantized += 1;
            g.tensor(&name, &shape, target, encode(&values, &shape, target)?)?;
        } else {
            report.kept += 1;
            g.tensor_f32(&name, &shape, &values)?;
        }
    }
    report.bytes_out = g.tensor_bytes();
    Ok((g, report))
}

/// Embeddings first, then layer by layer, then the output: the order converters use.
fn tensor_order(name: &str) -> (usize, String) {
    match name.strip_prefix("blk.") {
        Some(rest) => {
            let layer = rest
                .split('.')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(usize::MAX);
            (layer + 1, name.to_string())
        }
        None if name.starts_with("token_embd") => (0, name.to_string()),
        None => (usize::MAX, name.to_string()),
    }
}

/// The type asked for one tensor: with a K-quant target, the output projection (or the token
/// embedding that doubles as it when `tied`) is kept at Q6_K, as llama.cpp's K-quant mixes do:
/// the logits are the most quantization-sensitive product of the model.
fn tensor_quant(name: &str, quant: QuantType, tied: bool) -> QuantType {
    let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
    if is_output && matches!(quant, QuantType::Q4K | QuantType::Q5K) {
        QuantType::Q6K
    } else {
        quant
    }
}

/// The type a tensor of `shape` is written in when `quant` is asked for: `quant` for a matrix
/// whose rows are whole blocks; for a K-quant whose 256-element blocks do not divide the rows,
/// the 32-element type of about as many bits (as llama.cpp's quantizer falls back); `None` for
/// vectors and for matrices no fitting type exists for (they keep their type).
fn target_type(shape: &[usize], quant: QuantType) -> Option<QuantType> {
    let [_, cols] = shape else {
        return None;
    };
    let fits = |t: QuantType| (*cols as u64).is_multiple_of(t.block_size());
    let fallback = match quant {
        QuantType::Q4K => QuantType::Q5_0,
        QuantType::Q5K => QuantType::Q5_1,
        QuantType::Q6K => QuantType::Q8_0,
        other => other,
    };
    [quant, fallback].into_iter().find(|&t| fits(t))
}

fn dequantize(dtype: QuantType, bytes: &[u8], shape: &[usize], name: &str) -> Result<Vec<f32>> {
    let q = qtensor_from_ggml(dtype.to_candle(), bytes, shape.to_vec(), &Device::Cpu).map_err(|e| {
        Error::UnsupportedTensorType {
            name: name.to_string(),
            dtype: format!("{dtype} ({e})"),
        }
    })?;
    Ok(q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

/// `general.file_type`: llama.cpp's `llama_ftype` for a model whose matrices are all `quant`.
fn set_file_type(g: &mut GgufWriter, quant: QuantType) {
    let ftype = match quant {
        QuantType::F32 => 0,
        QuantType::F16 => 1,
        QuantType::Q4_0 => 2,
        QuantType::Q4_1 => 3,
        QuantType::Q8_0 => 7,
        QuantType::Q4K => 15,
        QuantType::Q5K => 17,
        QuantType::Q6K => 18,
        QuantType::BF16 => 32,
        _ => return,
    };
    g.meta("general.file_type", Value::U32(ftype));
}

fn u32v(v: usize) -> Value {
    // Hyper-parameters passed ModelConfig::validate, so they fit in u32.
    Value::U32(u32::try_from(v).unwrap_or(u32::MAX))
}

/// The `{arch}.*` keys `config_from_gguf` reads back.
fn write_hyper_params(g: &mut GgufWriter, cfg: &ModelConfig) {
    let arch = cfg.arch.name();
    g.meta("general.architecture", Value::String(arch.into()));
    g.meta(&format!("{arch}.context_length"), u32v(cfg.context_length));
    g.meta(&format!("{arch}.embedding_length"), u32v(cfg.hidden_size));
    g.meta(&format!("{arch}.block_count"), u32v(cfg.n_layers));
    g.meta(&format!("{arch}.feed_forward_length"), u32v(cfg.ffn_size));
    g.meta(&format!("{arch}.attention.head_count"), u32v(cfg.n_heads));
    g.meta(&format!("{arch}.attention.head_count_kv"), u32v(cfg.n_kv_heads));
    g.meta(&format!("{arch}.attention.key_length"), u32v(cfg.head_dim));
    g.meta(&format!("{arch}.attention.value_length"), u32v(cfg.head_dim));
    g.meta(&format!("{arch}.rope.dimension_count"), u32v(cfg.head_dim));
    g.meta(
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        Value::F32(cfg.rms_eps as f32),
    );
    g.meta(&format!("{arch}.rope.freq_base"), Value::F32(cfg.rope_theta as f32));
    g.meta(&format!("{arch}.vocab_size"), u32v(cfg.vocab_size));
}

/// `tokenizer.ggml.*` from a byte-level BPE `tokenizer.json` (the GPT-2 family llama.cpp calls
/// `gpt2`), plus the chat template from `tokenizer_config.json`.
fn write_hf_tokenizer(g: &mut GgufWriter, dir: &Path, config: &serde_json::Value, vocab_size: usize) -> Result<()> {
    let path = dir.join("tokenizer.json");
    let bad = |reason: String| Error::Tokenizer(format!("{}: {reason}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!(
            "only BPE tokenizers can be written to GGUF (found {})",
            model["type"]
        )));
    }
    let mut by_id: HashMap<usize, (String, i32)> = HashMap::new();
    for (token, id) in model["vocab"]
        .as_object()
        .ok_or_else(|| bad("model.vocab is not a map".into()))?
    {
        let id = id
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .ok_or_else(|| bad(format!("bad id for {token}")))?;
        by_id.insert(id, (token.clone(), 1));
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            continue;
        };
        let kind = if added["special"].as_bool().unwrap_or(false) {
            3
        } else {
            4
        };
        by_id.insert(
            usize::try_from(id).map_err(|_| bad("added token id".into()))?,
            (content.to_string(), kind),
        );
    }
    if let Some(max) = by_id.keys().max().filter(|&&m| m >= vocab_size) {
        return Err(bad(format!(
            "token id {max} is outside the model's vocabulary of {vocab_size}"
        )));
    }
    let (mut tokens, mut types) = (Vec::with_capacity(vocab_size), Vec::with_capacity(vocab_size));
    for id in 0..vocab_size {
        let (token, kind) = by_id.remove(&id).unwrap_or_else(|| (format!("[PAD{id}]"), 5));
        tokens.push(Value::String(token));
        types.push(Value::I32(kind));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(pair) => Some(format!("{} {}", pair.first()?.as_str()?, pair.get(1)?.as_str()?)),
            _ => None,
        })
        .map(Value::String)
        .collect();
    g.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    g.meta("tokenizer.ggml.pre", Value::String("default".into()));
    g.meta("tokenizer.ggml.tokens", Value::Array(tokens));
    g.meta("tokenizer.ggml.token_type", Value::Array(types));
    g.meta("tokenizer.ggml.merges", Value::Array(merges));
    let first_id = |v: &serde_json::Value| match v {
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()),
        other => other.as_u64(),
    };
    if let Some(bos) = first_id(&config["bos_token_id"]) {
        g.meta(
            "tokenizer.ggml.bos_token_id",
            Value::U32(u32::try_from(bos).map_err(|_| bad("bos id".into()))?),
        );
    }
    if let Some(eos) = first_id(&config["eos_token_id"]) {
        g.meta(
            "tokenizer.ggml.eos_token_id",
            Value::U32(u32::try_from(eos).map_err(|_| bad("eos id".into()))?),
        );
    }
    let tok_config: Option<serde_json::Value> = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let add_bos = tok_config
        .as_ref()
        .and_then(|c| c["add_bos_token"].as_bool())
        .unwrap_or(false);
    g.meta("tokenizer.ggml.add_bos_token", Value::Bool(add_bos));
    if let Some(template) = tok_config.as_ref().and_then(|c| c["chat_template"].as_str()) {
        g.meta("tokenizer.chat_template", Value::String(template.to_string()));
    }
    Ok(())
}
