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
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::synthetic::{encode, permute_for_interleaved_rope};
use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, GgufWriter, Value};
use crate::model::SafetensorsStore;
use crate::model::{config_from_hf, hf_tensor_names, read_hf_config, safetensors_files, Architecture, ModelConfig};
use crate::quant::blocks::{dequantize_row, QK};
use crate::quant::{encode, QuantType};

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
pub const TARGETS: [QuantType; 11] = [
    QuantType::F32,
    QuantType::F16,
    QuantType::BF16,
    QuantType::Q8_0,
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

/// How [`quantize_model_with`] encodes the matrices of a model.
#[derive(Debug, Clone)]
pub struct QuantizeSpec {
    /// The weight type of the matrices (a few keep more bits: see `mixed`).
    pub quant: QuantType,
    /// llama.cpp's "_M" recipe for K-quant targets: Q6_K for the value and FFN-down projections
    /// of the first and last eighth of the layers and every third layer between.
    pub mixed: bool,
    /// Per-column importance of each matrix, from [`crate::eval::calibrate`]: the encoders then
    /// spend their precision where the activations are large.
    pub importance: Option<Importance>,
}

impl QuantizeSpec {
    pub fn new(quant: QuantType) -> Self {
        Self {
            quant,
            mixed: false,
            importance: None,
        }
    }

    /// A weight type name (`q8_0`, `q4_k`, ...) or a mixed K-quant recipe (`q4_k_m`, `q5_k_m`).
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        match lower.strip_suffix("_m").and_then(QuantType::from_name) {
            Some(q @ (QuantType::Q4K | QuantType::Q5K)) => Some(Self {
                mixed: true,
                ..Self::new(q)
            }),
            _ => QuantType::from_name(&lower).map(Self::new),
        }
    }
}

/// How much each input column of each matrix matters: the mean square of the activations it
/// was multiplied by over a calibration text, keyed by GGUF tensor name (`blk.3.attn_v.weight`;
/// the output projection is `output.weight` even when the token embedding doubles as it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Importance {
    pub columns: HashMap<String, Vec<f32>>,
    /// Tokens the statistics were gathered over.
    pub tokens: usize,
}

impl Importance {
    /// The weights the encoders use for matrix `name` with `cols` columns: the mean squares
    /// scaled to average 1, with a floor of 1/100 so that no column goes unrepresented
    /// because calibration never exercised it.
    fn weights(&self, name: &str, tied: bool, cols: usize) -> Option<Vec<f32>> {
        let key = if tied && name == "token_embd.weight" {
            "output.weight"
        } else {
            name
        };
        let v = self.columns.get(key).filter(|v| v.len() == cols)?;
        let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / cols as f64;
        if mean <= 0.0 || !mean.is_finite() {
            return None;
        }
        Some(v.iter().map(|&x| (f64::from(x) / mean).max(0.01) as f32).collect())
    }
}

/// The GGUF image of the model at `src` with its matrices in `quant`.
pub fn quantize_model(src: &Path, quant: QuantType) -> Result<(GgufWriter, QuantizeReport)> {
    quantize_model_with(src, &QuantizeSpec::new(quant))
}

/// The GGUF image of the model at `src` with its matrices encoded as `spec` says.
pub fn quantize_model_with(src: &Path, spec: &QuantizeSpec) -> Result<(GgufWriter, QuantizeReport)> {
    let quant = spec.quant;
    if !TARGETS.contains(&quant) {
        let names: Vec<&str> = TARGETS.iter().map(|t| t.name()).collect();
        return Err(Error::invalid(
            "quant",
            format!("cannot write {quant}; choose one of {}", names.join(", ")),
        ));
    }
    if src.is_dir() {
        from_hf_dir(src, spec)
    } else {
        from_gguf(&Arc::new(GgufFile::open(src)?), spec)
    }
}

fn from_gguf(file: &Arc<GgufFile>, spec: &QuantizeSpec) -> Result<(GgufWriter, QuantizeReport)> {
    let mut g = GgufWriter::new();
    for (key, value) in file.metadata() {
        if key != "general.file_type" && key != "general.alignment" {
            g.meta(key, value.clone());
        }
    }
    set_file_type(&mut g, spec);
    let tied = file.tensor("output.weight").is_none();
    let n_layers = file
        .tensors()
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |l| l + 1);
    let mut report = QuantizeReport::default();
    for info in file.tensors() {
        let shape = info.shape();
        let bytes = file.tensor_data(info);
        report.bytes_in += bytes.len() as u64;
        let types = target_types(&shape, tensor_quant(&info.name, spec, tied, n_layers));
        if !types.is_empty() && types != [info.dtype] {
            let values = dequantize(info.dtype, bytes, &shape, &info.name)?;
            let importance = spec
                .importance
                .as_ref()
                .and_then(|i| i.weights(&info.name, tied, shape[1]));
            let (target, encoded) = encode_best(&values, &shape, &types, importance.as_deref())?;
            g.tensor(&info.name, &shape, target, encoded)?;
            report.quantized += 1;
        } else {
            g.tensor(&info.name, &shape, info.dtype, bytes.to_vec())?;
            report.kept += 1;
        }
    }
    report.bytes_out = g.tensor_bytes();
    Ok((g, report))
}

fn from_hf_dir(dir: &Path, spec: &QuantizeSpec) -> Result<(GgufWriter, QuantizeReport)> {
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
    set_file_type(&mut g, spec);
    let tied = !store.contains("output.weight");
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
        let types = target_types(&shape, tensor_quant(&name, spec, tied, cfg.n_layers));
        if !types.is_empty() {
            report.quantized += 1;
            let importance = spec.importance.as_ref().and_then(|i| i.weights(&name, tied, shape[1]));
            let (target, encoded) = encode_best(&values, &shape, &types, importance.as_deref())?;
            g.tensor(&name, &shape, target, encoded)?;
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

/// The type asked for one tensor. With a K-quant target the output projection (or the token
/// embedding that doubles as it when `tied`) is kept at Q6_K, as llama.cpp's K-quant mixes do:
/// the logits are the most quantization-sensitive product of the model. A `mixed` recipe (the
/// "_M" files: q4_k_m, q5_k_m) also gives the value and FFN-down projections of the first and
/// last eighth of the layers, and of every third layer between, Q6_K: those two carry most of
/// the quantization loss.
///
/// A Q8_0 target keeps the value projections at f16 (about 2.5% of a model's weights). Their
/// rounding reaches every later layer unattenuated: on SmolLM2-135M, Q8_0 value projections alone
/// cost 0.23 of the 0.56 points of perplexity Q8_0 weights cost in all (measured with f32
/// activations on data/finance_eval.txt), while taking 2.1% of the file's bytes.
fn tensor_quant(name: &str, spec: &QuantizeSpec, tied: bool, n_layers: usize) -> QuantType {
    let quant = spec.quant;
    if quant == QuantType::Q8_0 && name.ends_with("attn_v.weight") {
        return QuantType::F16;
    }
    let k_quant = matches!(quant, QuantType::Q4K | QuantType::Q5K);
    let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
    if is_output && k_quant {
        return QuantType::Q6K;
    }
    if spec.mixed && k_quant && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight")) {
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        if layer.is_some_and(|i| more_bits(i, n_layers)) {
            return QuantType::Q6K;
        }
    }
    quant
}

/// Layers a mixed recipe gives more bits: the first and last eighth, and every third between.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
}

/// The types a tensor of `shape` may be written in when `quant` is asked for, best first: `quant`
/// for a matrix whose rows are whole blocks. A K-quant whose 256-element blocks do not divide
/// the rows falls back to a 32-element type of no more bits: Q5_0 (llama.cpp's choice) or Q4_1
/// for Q4_K, Q5_1 for Q5_K, Q8_0 for Q6_K; where there are two, the one that encodes the matrix
/// with less error is written. Empty for vectors, and for matrices no fitting type exists for
/// (they keep their type).
fn target_types(shape: &[usize], quant: QuantType) -> Vec<QuantType> {
    let [_, cols] = shape else {
        return Vec::new();
    };
    let fits = |t: &QuantType| (*cols as u64).is_multiple_of(t.block_size());
    if fits(&quant) {
        return vec![quant];
    }
    let fallbacks: &[QuantType] = match quant {
        QuantType::Q4K => &[QuantType::Q5_0, QuantType::Q4_1],
        QuantType::Q5K => &[QuantType::Q5_1],
        QuantType::Q6K => &[QuantType::Q8_0],
        _ => &[],
    };
    fallbacks.iter().copied().filter(fits).collect()
}

/// Encode a row-major matrix in whichever of `types` and encoders gives the least
/// importance-weighted squared error: the 32-element formats with finllm's searching encoders;
/// the K-quants with candle's two (its reference one, and the weighted search llama.cpp uses with
/// an importance matrix, given equal weights without calibration); the float types as they are.
fn encode_best(
    values: &[f32],
    shape: &[usize],
    types: &[QuantType],
    importance: Option<&[f32]>,
) -> Result<(QuantType, Vec<u8>)> {
    let cols = shape.last().copied().unwrap_or(0);
    let mut candidates: Vec<(QuantType, Vec<u8>)> = Vec::new();
    for &target in types {
        if encode::has_encoder(target) && cols > 0 && cols.is_multiple_of(QK) {
            let rows: Vec<Vec<u8>> = values
                .par_chunks(cols)
                .map(|row| {
                    let mut out = Vec::with_capacity(cols / QK * target.block_bytes() as usize);
                    encode::encode_row(target, row, importance, &mut out);
                    out
                })
                .collect();
            candidates.push((target, rows.concat()));
        } else if matches!(target, QuantType::Q4K | QuantType::Q5K | QuantType::Q6K) && cols > 0 {
            let ones = vec![1f32; cols];
            let t = Tensor::from_slice(values, shape, &Device::Cpu)?;
            let weighted = QTensor::quantize_imatrix(&t, importance.unwrap_or(&ones), target.to_candle())?;
            candidates.push((target, weighted.data()?.into_owned()));
            candidates.push((target, encode(values, shape, target)?));
        } else {
            candidates.push((target, encode(values, shape, target)?));
        }
    }
    if candidates.len() == 1 {
        return Ok(candidates.pop().expect("one candidate"));
    }
    let error = |(dtype, bytes): &(QuantType, Vec<u8>)| -> f64 {
        let row_bytes = bytes.len() / (values.len() / cols);
        values
            .par_chunks(cols)
            .zip(bytes.par_chunks(row_bytes))
            .map(|(x, b)| {
                let mut y = vec![0f32; cols];
                dequantize_row(*dtype, b, &mut y);
                (0..cols)
                    .map(|j| {
                        let w = importance.map_or(1.0, |w| f64::from(w[j]));
                        w * (f64::from(x[j]) - f64::from(y[j])).powi(2)
                    })
                    .sum::<f64>()
            })
            .sum()
    };
    let errors: Vec<f64> = candidates.iter().map(error).collect();
    let best = (0..candidates.len())
        .min_by(|&a, &b| errors[a].total_cmp(&errors[b]))
        .ok_or_else(|| Error::invalid("quant", "no type to encode in"))?;
    Ok(candidates.swap_remove(best))
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

/// `general.file_type`: llama.cpp's `llama_ftype` for a model encoded as `spec` says (the K-quant
/// recipes are its `_S` files, or `_M` when mixed).
fn set_file_type(g: &mut GgufWriter, spec: &QuantizeSpec) {
    let ftype = match spec.quant {
        QuantType::F32 => 0,
        QuantType::F16 => 1,
        QuantType::Q4_0 => 2,
        QuantType::Q4_1 => 3,
        QuantType::Q8_0 => 7,
        QuantType::Q5_0 => 8,
        QuantType::Q5_1 => 9,
        QuantType::Q4K if spec.mixed => 15,
        QuantType::Q4K => 14,
        QuantType::Q5K if spec.mixed => 17,
        QuantType::Q5K => 16,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_bits_follows_llama_cpps_layer_choice() {
        // llama.cpp's use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2, worked by
        // hand for SmolLM2's 30 layers and a 32-layer 7B model.
        let pick = |n: usize| (0..n).filter(|&i| more_bits(i, n)).collect::<Vec<_>>();
        assert_eq!(pick(30), [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        assert_eq!(pick(32), [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        assert_eq!(pick(1), [0]);
    }
}
