//! Qwen 2 / 2.5: llama layout with biases on the Q/K/V projections and NeoX RoPE.

use crate::error::Result;
use crate::model::config::{base_from_gguf, base_from_hf, Architecture, ModelConfig};
use crate::model::gguf::GgufFile;

pub(crate) fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let mut cfg = base_from_gguf(f, Architecture::Qwen2, "qwen2")?;
    cfg.qkv_bias = true;
    Ok(cfg)
}

pub(crate) fn config_from_hf(c: &serde_json::Value) -> Result<ModelConfig> {
    let mut cfg = base_from_hf(c, Architecture::Qwen2)?;
    cfg.qkv_bias = true;
    Ok(cfg)
}
