//! Model files and architectures: GGUF and HF safetensors loading, the transformer forward pass.

pub mod config;
mod gemma3;
pub mod gguf;
mod llama;
mod qwen2;
mod qwen3;
pub mod transformer;
mod weights;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Architecture, ModelConfig};
pub use gguf::{GgufFile, GgufWriter, TensorInfo, Value};
pub use transformer::{
    Backend, ForwardOptions, InputStats, KvCache, KvPrecision, MatrixMemory, SeqInput, SeqOutput, Transformer,
    Workspace,
};

use candle_core::Device;

use crate::error::{Error, Result};
use weights::WeightStore;
pub(crate) use weights::{st_err, SafetensorsStore};

/// Hyper-parameters of a GGUF model, dispatched on `general.architecture`.
pub fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    match Architecture::parse(f.architecture()?)? {
        Architecture::Llama => llama::config_from_gguf(f),
        Architecture::Qwen2 => qwen2::config_from_gguf(f),
        Architecture::Qwen3 => qwen3::config_from_gguf(f),
        Architecture::Gemma3 => gemma3::config_from_gguf(f),
    }
}

/// Hyper-parameters of an HF checkpoint, dispatched on `model_type`.
pub fn config_from_hf(config: &serde_json::Value) -> Result<ModelConfig> {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::MissingKey {
            key: "model_type".into(),
        })?;
    match Architecture::parse(model_type)? {
        Architecture::Llama => llama::config_from_hf(config),
        Architecture::Qwen2 => qwen2::config_from_hf(config),
        Architecture::Qwen3 => qwen3::config_from_hf(config),
        Architecture::Gemma3 => Err(Error::UnknownArchitecture {
            found: format!("{model_type} (safetensors)"),
            supported: "gemma3 from GGUF; llama, qwen2, qwen3 from safetensors".into(),
        }),
    }
}

impl Transformer {
    /// Build the model in a GGUF file, on finllm's CPU kernels.
    pub fn from_gguf(file: &Arc<GgufFile>) -> Result<Self> {
        Self::from_gguf_on(file, &Backend::CpuKernels)
    }

    /// Build the model in a GGUF file to run on `backend`.
    pub fn from_gguf_on(file: &Arc<GgufFile>, backend: &Backend) -> Result<Self> {
        let cfg = config_from_gguf(file)?;
        let freq_factors = match file.tensor("rope_freqs.weight") {
            Some(info) => {
                let store = WeightStore::Gguf(file.clone());
                let t = store.vector("rope_freqs.weight", info.shape().iter().product(), &Device::Cpu)?;
                Some(t.to_vec1::<f32>()?.into_iter().map(f64::from).collect())
            }
            None => None,
        };
        Self::load(cfg, &WeightStore::Gguf(file.clone()), freq_factors, backend)
    }

    /// Build the model in an HF directory (`config.json` + one or many `*.safetensors`), on
    /// finllm's CPU kernels.
    pub fn from_safetensors(dir: impl AsRef<Path>) -> Result<Self> {
        Self::from_safetensors_on(dir, &Backend::CpuKernels)
    }

    /// Build the model in an HF directory to run on `backend`.
    pub fn from_safetensors_on(dir: impl AsRef<Path>, backend: &Backend) -> Result<Self> {
        let dir = dir.as_ref();
        let config = read_hf_config(dir)?;
        let cfg = config_from_hf(&config)?;
        let files = safetensors_files(dir)?;
        let names = hf_tensor_names(cfg.n_layers.min(4096));
        let store = SafetensorsStore::open(&files, names)?;
        Self::load(cfg, &WeightStore::Safetensors(store), None, backend)
    }
}

/// Scan the float tensors of the HF checkpoint in `dir` for NaN or infinite values; the first
/// one found is an [`Error::NonFinite`] naming it. Reads every shard once.
pub fn check_safetensors_finite(dir: &Path) -> Result<()> {
    SafetensorsStore::open(&safetensors_files(dir)?, HashMap::new())?.check_finite()
}

/// Parse `dir/config.json`.
pub fn read_hf_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| Error::Safetensors {
        path,
        reason: format!("config.json is not valid JSON: {e}"),
    })
}

/// The shard files of an HF checkpoint: `model.safetensors`, or those an index names.
pub(crate) fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let bad = |reason: String| Error::Safetensors {
        path: index_path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&index_path).map_err(|_| Error::Safetensors {
        path: dir.to_path_buf(),
        reason: "no model.safetensors and no model.safetensors.index.json".into(),
    })?;
    let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("missing 'weight_map' object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names".into()))?;
        // Shards must sit beside the index: no paths, so an index cannot point elsewhere.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!("shard name '{file}' is not a plain file name")));
        }
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    shards.sort();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// GGUF name → HF name for the llama-style layout shared by llama, qwen2 and qwen3.
pub(crate) fn hf_tensor_names(n_layers: usize) -> HashMap<String, String> {
    let mut m = HashMap::new();
    let mut add = |gguf: String, hf: String| {
        m.insert(gguf, hf);
    };
    add("token_embd.weight".into(), "model.embed_tokens.weight".into());
    add("output_norm.weight".into(), "model.norm.weight".into());
    add("output.weight".into(), "lm_head.weight".into());
    const LAYER: [(&str, &str); 14] = [
        ("attn_norm.weight", "input_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"),
        ("attn_k.bias", "self_attn.k_proj.bias"),
        ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("attn_q_norm.weight", "self_attn.q_norm.weight"),
        ("attn_k_norm.weight", "self_attn.k_norm.weight"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ];
    for i in 0..n_layers {
        for (g, h) in LAYER {
            add(format!("blk.{i}.{g}"), format!("model.layers.{i}.{h}"));
        }
    }
    m
}
