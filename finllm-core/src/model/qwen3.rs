//! Qwen 3 (dense): llama layout, RMS norm on each query/key head, explicit head_dim, NeoX RoPE.

use crate::error::Result;
use crate::model::config::{base_from_gguf, base_from_hf, Architecture, ModelConfig};
use crate::model::gguf::GgufFile;

pub(crate) fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let mut cfg = base_from_gguf(f, Architecture::Qwen3, "qwen3")?;
    cfg.qk_norm = true;
    Ok(cfg)
}

pub(crate) fn config_from_hf(c: &serde_json::Value) -> Result<ModelConfig> {
    let mut cfg = base_from_hf(c, Architecture::Qwen3)?;
    cfg.qk_norm = true;
    Ok(cfg)
}
