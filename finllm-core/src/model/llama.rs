//! Llama family: Llama 2/3 (with Llama-3 RoPE scaling), Mistral, SmolLM2.

use crate::error::Result;
use crate::model::config::{base_from_gguf, base_from_hf, Architecture, HyperParams, ModelConfig, RopeStyle};
use crate::model::gguf::GgufFile;

pub(crate) fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let mut cfg = base_from_gguf(f, Architecture::Llama, "llama")?;
    // llama.cpp's converter permutes the Q/K rows of llama checkpoints so that RoPE rotates
    // adjacent pairs; HF checkpoints rotate halves.
    cfg.rope_style = RopeStyle::Interleaved;
    if let Some(factor) = f.get_positive("llama.rope.scaling.factor")? {
        if f.get("llama.rope.scaling.type").and_then(|v| v.as_str()) == Some("linear") {
            cfg.rope_linear_factor = factor;
        }
    }
    Ok(cfg)
}

pub(crate) fn config_from_hf(c: &serde_json::Value) -> Result<ModelConfig> {
    let mut cfg = base_from_hf(c, Architecture::Llama)?;
    if let Some(s) = c.get("rope_scaling") {
        if s.get("rope_type").or_else(|| s.get("type")).and_then(|t| t.as_str()) == Some("linear") {
            cfg.rope_linear_factor = s.get_positive("factor")?.ok_or_else(|| crate::Error::MissingKey {
                key: "rope_scaling.factor".into(),
            })?;
        }
    }
    Ok(cfg)
}
