//! Hyper-parameters of a decoder-only transformer, read from GGUF metadata or HF `config.json`.

use crate::error::{Error, Result};
use crate::model::gguf::GgufFile;

/// Architectures finllm implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Architecture {
    pub const SUPPORTED: &'static str = "llama (Llama 2/3, Mistral, SmolLM2), qwen2, qwen3, gemma3";

    /// From the GGUF `general.architecture` value or an HF `model_type`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "llama" | "mistral" => Ok(Self::Llama),
            "qwen2" => Ok(Self::Qwen2),
            "qwen3" => Ok(Self::Qwen3),
            "gemma3" | "gemma3_text" => Ok(Self::Gemma3),
            other => Err(Error::UnknownArchitecture {
                found: other.to_string(),
                supported: Self::SUPPORTED.to_string(),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma3 => "gemma3",
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): GGUF llama, whose Q/K rows the converter permuted.
    Interleaved,
    /// Halves (i, i + d/2): HF checkpoints, and GGUF qwen2/qwen3/gemma3.
    Neox,
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// Per-layer attention span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionSpan {
    Global,
    /// Each query sees at most this many most recent keys (itself included).
    Sliding(usize),
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    pub rms_eps: f64,
    pub context_length: usize,
    pub rope_theta: f64,
    /// Base for sliding-window layers where it differs (Gemma 3 local layers).
    pub rope_theta_local: Option<f64>,
    /// Linear position scaling on global layers (Gemma 3 `rope.scaling.factor`).
    pub rope_linear_factor: f64,
    /// Llama-3 style frequency scaling (None: plain RoPE).
    pub rope_llama3: Option<Llama3Rope>,
    pub rope_style: RopeStyle,
    pub activation: Activation,
    /// Attention scores are multiplied by this (usually `1/sqrt(head_dim)`).
    pub attn_scale: f64,
    /// Multiply token embeddings by `sqrt(hidden_size)` (Gemma).
    pub scale_embeddings: bool,
    /// Per-layer attention span.
    pub spans: Vec<AttentionSpan>,
    /// Q/K/V projections carry biases (Qwen 2).
    pub qkv_bias: bool,
    /// RMS-normalise each query/key head before RoPE (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// Extra norms after attention and MLP, before the residual add (Gemma 3).
    pub sandwich_norms: bool,
}

/// Llama 3.1+ RoPE frequency scaling parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Rope {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_context: f64,
}

impl Llama3Rope {
    /// The divisor applied to each inverse frequency (HF `_compute_llama3_parameters`).
    pub fn freq_factors(&self, inv_freq: &[f64]) -> Vec<f64> {
        let low_wavelen = self.original_context / self.low_freq_factor;
        let high_wavelen = self.original_context / self.high_freq_factor;
        inv_freq
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f64::consts::PI / f;
                if wavelen < high_wavelen {
                    1.0
                } else if wavelen > low_wavelen {
                    self.factor
                } else {
                    let smooth = (self.original_context / wavelen - self.low_freq_factor)
                        / (self.high_freq_factor - self.low_freq_factor);
                    1.0 / ((1.0 - smooth) / self.factor + smooth)
                }
            })
            .collect()
    }
}

/// Typed access to hyper-parameters whose errors name the missing or bad key.
pub(crate) trait HyperParams {
    fn get_usize(&self, key: &str) -> Result<Option<usize>>;
    fn get_float(&self, key: &str) -> Result<Option<f64>>;

    fn usize(&self, key: &str) -> Result<usize> {
        self.get_usize(key)?
            .ok_or_else(|| Error::MissingKey { key: key.to_string() })
    }

    fn float(&self, key: &str) -> Result<f64> {
        self.get_float(key)?
            .ok_or_else(|| Error::MissingKey { key: key.to_string() })
    }

    /// An optional number that must be finite and positive when present (scaling factors,
    /// frequency bases): 0, NaN, infinities and negatives name the key.
    fn get_positive(&self, key: &str) -> Result<Option<f64>> {
        match self.get_float(key)? {
            Some(v) if !(v > 0.0 && v.is_finite()) => Err(Error::bad_key(key, "a finite positive number", v)),
            v => Ok(v),
        }
    }
}

impl HyperParams for GgufFile {
    fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| Error::bad_key(key, "a non-negative integer", v.describe())),
        }
    }

    fn get_float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::bad_key(key, "a number", v.describe())),
        }
    }
}

impl HyperParams for serde_json::Value {
    fn get_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| Error::bad_key(key, "a non-negative integer", v)),
        }
    }

    fn get_float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::bad_key(key, "a number", v)),
        }
    }
}

/// Upper bounds that keep a hostile config from asking for absurd allocations.
const MAX_DIM: usize = 1 << 20;
const MAX_LAYERS: usize = 1024;
const MAX_HEADS: usize = 4096;

impl ModelConfig {
    /// Reject shapes that are inconsistent or absurd before any tensor is built.
    pub(crate) fn validate(&self) -> Result<()> {
        let check = |key: &str, v: usize, max: usize| -> Result<()> {
            if v == 0 || v > max {
                return Err(Error::bad_key(key, &format!("1..={max}"), v));
            }
            Ok(())
        };
        check("vocab_size", self.vocab_size, 1 << 24)?;
        check("hidden_size", self.hidden_size, MAX_DIM)?;
        check("n_layers", self.n_layers, MAX_LAYERS)?;
        check("n_heads", self.n_heads, MAX_HEADS)?;
        check("n_kv_heads", self.n_kv_heads, MAX_HEADS)?;
        check("head_dim", self.head_dim, 4096)?;
        check("ffn_size", self.ffn_size, MAX_DIM)?;
        check("context_length", self.context_length, 1 << 24)?;
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::bad_key(
                "n_kv_heads",
                &format!("a divisor of n_heads = {}", self.n_heads),
                self.n_kv_heads,
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::bad_key("head_dim", "an even number", self.head_dim));
        }
        if !(self.rms_eps > 0.0 && self.rms_eps < 1.0) {
            return Err(Error::bad_key("rms_eps", "in (0, 1)", self.rms_eps));
        }
        if !(self.rope_theta > 0.0 && self.rope_theta.is_finite()) {
            return Err(Error::bad_key("rope_theta", "a positive number", self.rope_theta));
        }
        if self.spans.len() != self.n_layers {
            return Err(Error::bad_key("spans", "one per layer", self.spans.len()));
        }
        if let Some(w) = self.spans.iter().find_map(|s| match s {
            AttentionSpan::Sliding(w) if *w == 0 => Some(*w),
            _ => None,
        }) {
            return Err(Error::bad_key("sliding_window", "a window of at least one token", w));
        }
        let positive = |key: &str, v: f64| -> Result<()> {
            if v > 0.0 && v.is_finite() {
                Ok(())
            } else {
                Err(Error::bad_key(key, "a finite positive number", v))
            }
        };
        if let Some(theta) = self.rope_theta_local {
            positive("rope_theta_local", theta)?;
        }
        positive("rope.scaling.factor", self.rope_linear_factor)?;
        positive("attn_scale", self.attn_scale)?;
        if let Some(l3) = &self.rope_llama3 {
            positive("rope_scaling.factor", l3.factor)?;
            positive("rope_scaling.low_freq_factor", l3.low_freq_factor)?;
            positive("rope_scaling.high_freq_factor", l3.high_freq_factor)?;
            positive("rope_scaling.original_max_position_embeddings", l3.original_context)?;
            if l3.high_freq_factor <= l3.low_freq_factor {
                return Err(Error::bad_key(
                    "rope_scaling.high_freq_factor",
                    &format!("greater than low_freq_factor = {}", l3.low_freq_factor),
                    l3.high_freq_factor,
                ));
            }
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

/// The fields every architecture reads the same way from GGUF metadata under `{arch}.`.
pub(crate) fn base_from_gguf(f: &GgufFile, arch: Architecture, prefix: &str) -> Result<ModelConfig> {
    let key = |k: &str| format!("{prefix}.{k}");
    let hidden_size = f.usize(&key("embedding_length"))?;
    let n_heads = f.usize(&key("attention.head_count"))?;
    let n_layers = f.usize(&key("block_count"))?;
    let head_dim = match f.get_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None if n_heads > 0 => hidden_size / n_heads,
        None => return Err(Error::bad_key(&key("attention.head_count"), "> 0", 0)),
    };
    // finllm rotates whole heads; a partial rotary dimension (or a nonsensical one) is refused
    // rather than silently rotated in full.
    if let Some(rope_dims) = f.get_usize(&key("rope.dimension_count"))? {
        if rope_dims != head_dim {
            return Err(Error::bad_key(
                &key("rope.dimension_count"),
                &format!("the head dimension {head_dim} (finllm rotates whole heads)"),
                rope_dims,
            ));
        }
    }
    // Layers in the file beyond `block_count` would be silently ignored: the count is wrong.
    if let Some(found) = f
        .tensors()
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk.")?.split('.').next()?.parse::<usize>().ok())
        .max()
    {
        if found >= n_layers {
            return Err(Error::bad_key(
                &key("block_count"),
                &format!("at least {} (the file has tensors for layer {found})", found + 1),
                n_layers,
            ));
        }
    }
    let vocab_size = match f.get_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => match f.tensor("token_embd.weight") {
            Some(t) => t.shape()[0],
            None => {
                return Err(Error::MissingTensor {
                    name: "token_embd.weight".into(),
                })
            }
        },
    };
    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        n_layers,
        n_heads,
        n_kv_heads: f.get_usize(&key("attention.head_count_kv"))?.unwrap_or(n_heads),
        head_dim,
        ffn_size: f.usize(&key("feed_forward_length"))?,
        rms_eps: f.float(&key("attention.layer_norm_rms_epsilon"))?,
        context_length: f.usize(&key("context_length"))?,
        rope_theta: f.get_positive(&key("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_theta_local: None,
        rope_linear_factor: 1.0,
        rope_llama3: None,
        rope_style: RopeStyle::Neox,
        activation: Activation::Silu,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        scale_embeddings: false,
        spans: vec![AttentionSpan::Global; n_layers.min(MAX_LAYERS + 1)],
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
    })
}

/// The fields every architecture reads the same way from an HF `config.json`.
pub(crate) fn base_from_hf(c: &serde_json::Value, arch: Architecture) -> Result<ModelConfig> {
    let hidden_size = c.usize("hidden_size")?;
    let n_heads = c.usize("num_attention_heads")?;
    let n_layers = c.usize("num_hidden_layers")?;
    let head_dim = match c.get_usize("head_dim")? {
        Some(d) => d,
        None if n_heads > 0 => hidden_size / n_heads,
        None => return Err(Error::bad_key("num_attention_heads", "> 0", 0)),
    };
    let rope_llama3 = match c.get("rope_scaling") {
        Some(s) if s.get("rope_type").and_then(|t| t.as_str()) == Some("llama3") => Some(Llama3Rope {
            factor: s.get_positive("factor")?.ok_or_else(|| Error::MissingKey {
                key: "rope_scaling.factor".into(),
            })?,
            low_freq_factor: s.float("low_freq_factor")?,
            high_freq_factor: s.float("high_freq_factor")?,
            original_context: s.float("original_max_position_embeddings")?,
        }),
        _ => None,
    };
    Ok(ModelConfig {
        arch,
        vocab_size: c.usize("vocab_size")?,
        hidden_size,
        n_layers,
        n_heads,
        n_kv_heads: c.get_usize("num_key_value_heads")?.unwrap_or(n_heads),
        head_dim,
        ffn_size: c.usize("intermediate_size")?,
        rms_eps: c.float("rms_norm_eps")?,
        context_length: c.usize("max_position_embeddings")?,
        rope_theta: c.get_positive("rope_theta")?.unwrap_or(10_000.0),
        rope_theta_local: None,
        rope_linear_factor: 1.0,
        rope_llama3,
        rope_style: RopeStyle::Neox,
        activation: Activation::Silu,
        attn_scale: 1.0 / (head_dim as f64).sqrt(),
        scale_embeddings: false,
        spans: vec![AttentionSpan::Global; n_layers.min(MAX_LAYERS + 1)],
        qkv_bias: false,
        qk_norm: false,
        sandwich_norms: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_frequency_factors() {
        // Llama 3.1 8B's parameters.
        let l3 = Llama3Rope {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192.0,
        };
        let d = 128;
        let inv: Vec<f64> = (0..d / 2)
            .map(|i| 500_000f64.powf(-2.0 * i as f64 / d as f64))
            .collect();
        let f = l3.freq_factors(&inv);
        for (&freq, &factor) in inv.iter().zip(&f) {
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < 8192.0 / 4.0 {
                assert_eq!(factor, 1.0, "short wavelengths are untouched");
            } else if wavelen > 8192.0 {
                assert_eq!(factor, 8.0, "long wavelengths are divided by the factor");
            } else {
                assert!(factor > 1.0 && factor < 8.0);
            }
        }
        // Monotone in wavelength.
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(f[0], 1.0);
        assert_eq!(f[d / 2 - 1], 8.0);
    }

    #[test]
    fn unknown_architecture_names_itself() {
        match Architecture::parse("falcon") {
            Err(Error::UnknownArchitecture { found, supported }) => {
                assert_eq!(found, "falcon");
                assert!(supported.contains("qwen3"));
            }
            other => panic!("{other:?}"),
        }
    }
}
