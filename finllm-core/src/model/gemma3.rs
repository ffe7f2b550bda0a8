//! Gemma 3 (text): sandwich norms, per-head Q/K norms, GELU-tanh MLP, embeddings scaled by
//! sqrt(hidden), and five sliding-window layers (local RoPE base 10 000) per global layer.
//!
//! GGUF only: llama.cpp's converter folds Gemma's `1 + w` norm offset into the stored weights,
//! which the shared RMS norm relies on.

use crate::error::Result;
use crate::model::config::{base_from_gguf, Activation, Architecture, AttentionSpan, HyperParams, ModelConfig};
use crate::model::gguf::GgufFile;

/// Every sixth layer attends globally.
const GLOBAL_EVERY: usize = 6;
const LOCAL_ROPE_BASE: f64 = 10_000.0;
const DEFAULT_WINDOW: usize = 512;

pub(crate) fn config_from_gguf(f: &GgufFile) -> Result<ModelConfig> {
    let mut cfg = base_from_gguf(f, Architecture::Gemma3, "gemma3")?;
    let window = f
        .get_usize("gemma3.attention.sliding_window")?
        .unwrap_or(DEFAULT_WINDOW);
    if window == 0 {
        return Err(crate::Error::bad_key(
            "gemma3.attention.sliding_window",
            "a window of at least one token",
            window,
        ));
    }
    cfg.spans = (0..cfg.spans.len())
        .map(|i| {
            if (i + 1) % GLOBAL_EVERY == 0 {
                AttentionSpan::Global
            } else {
                AttentionSpan::Sliding(window)
            }
        })
        .collect();
    cfg.rope_theta_local = Some(LOCAL_ROPE_BASE);
    cfg.rope_linear_factor = f.get_positive("gemma3.rope.scaling.factor")?.unwrap_or(1.0);
    cfg.activation = Activation::GeluTanh;
    cfg.scale_embeddings = true;
    cfg.qk_norm = true;
    cfg.sandwich_norms = true;
    Ok(cfg)
}
