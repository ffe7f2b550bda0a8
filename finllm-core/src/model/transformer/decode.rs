//! The decode step: one new token per sequence, logits only.
//!
//! For a single token the general forward pass spends more time around the weight matmuls than
//! in them: every op allocates a candle tensor, the whole KV cache is read back as f32 tensors
//! each step, and candle's matmul (which probes the CPU on every call) runs attention over a
//! handful of rows. This path runs the same computation on plain buffers: norms, RoPE and
//! activations in place, keys and values appended to the cache rows and attended to where they
//! lie (f16 converted in registers), one parallel pass per weight group and one for attention.
//! `tests/tiny_models.rs` checks it against the general path for every architecture.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use super::kv_cache::KvRows;
use super::{rope_values, Linear, SeqInput, SeqOutput, Transformer};
use crate::error::Result;
use crate::model::config::{Activation, AttentionSpan, RopeStyle};
use crate::quant::vector::KvElem;

/// Below this many multiply-adds, attention runs on the calling thread: a fork-join costs more
/// than it saves.
const PARALLEL_ATTENTION_WORK: usize = 1 << 15;

impl Linear {
    fn forward_vec(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut y = self.w.forward_vec(x, n)?;
        self.add_bias_vec(&mut y);
        Ok(y)
    }
}

impl Transformer {
    /// One token per sequence after what its cache holds; returns `[1, vocab]` logits each.
    /// The caller has checked the inputs; on error the caller rolls the caches back.
    pub(super) fn decode_step(&self, seqs: &mut [SeqInput<'_>]) -> Result<Vec<SeqOutput>> {
        let cfg = &self.cfg;
        let (n, hidden, kv_dim) = (seqs.len(), cfg.hidden_size, cfg.kv_dim());
        let ids: Vec<u32> = seqs.iter().map(|s| s.tokens[0]).collect();
        let positions: Vec<usize> = seqs.iter().map(|s| s.cache.len()).collect();

        let mut x = self
            .embed
            .lookup(&Tensor::new(ids.as_slice(), &Device::Cpu)?)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        if cfg.scale_embeddings {
            let s = (hidden as f64).sqrt() as f32;
            x.iter_mut().for_each(|v| *v *= s);
        }

        let mut normed = vec![0f32; n * hidden];
        // Rotation angles per distinct frequency set (global / local layers).
        let mut angles: Vec<Angles> = Vec::new();
        for (layer, block) in self.blocks.iter().enumerate() {
            let a = match angles.iter().position(|a| Arc::ptr_eq(&a.freqs, &block.inv_freq)) {
                Some(i) => i,
                None => {
                    let (cos, sin) = rope_values(&positions, &block.inv_freq);
                    angles.push(Angles {
                        freqs: block.inv_freq.clone(),
                        cos,
                        sin,
                    });
                    angles.len() - 1
                }
            };
            let (cos, sin) = (&angles[a].cos, &angles[a].sin);

            block.attn_norm.forward_rows(&x, &mut normed);
            let [mut q, mut k, v] = Linear::forward_all_vec([&block.q, &block.k, &block.v], &normed, n)?;
            if let Some(norm) = &block.q_norm {
                norm.forward_rows_in_place(&mut q);
            }
            if let Some(norm) = &block.k_norm {
                norm.forward_rows_in_place(&mut k);
            }
            rotate(&mut q, cfg.head_dim, cos, sin, cfg.rope_style);
            rotate(&mut k, cfg.head_dim, cos, sin, cfg.rope_style);
            for (s, seq) in seqs.iter_mut().enumerate() {
                let rows = s * kv_dim..(s + 1) * kv_dim;
                seq.cache.append_rows(layer, &k[rows.clone()], &v[rows], kv_dim)?;
            }
            let attn = self.attend(seqs, layer, &q, &positions, block.span);
            let mut out = block.o.forward_vec(&attn, n)?;
            if let Some(norm) = &block.post_attn_norm {
                norm.forward_rows_in_place(&mut out);
            }
            add_in_place(&mut x, &out);

            block.ffn_norm.forward_rows(&x, &mut normed);
            let [mut gate, up] = Linear::forward_all_vec([&block.gate, &block.up], &normed, n)?;
            activate_and_gate(&mut gate, &up, cfg.activation);
            let mut out = block.down.forward_vec(&gate, n)?;
            if let Some(norm) = &block.post_ffn_norm {
                norm.forward_rows_in_place(&mut out);
            }
            add_in_place(&mut x, &out);
        }
        for seq in seqs.iter_mut() {
            seq.cache.commit(1);
        }

        self.norm.forward_rows(&x, &mut normed);
        let logits = self.lm_head.forward_vec(&normed, n)?;
        let vocab = logits.len() / n;
        logits
            .chunks_exact(vocab)
            .map(|row| {
                Ok(SeqOutput {
                    logits: Tensor::from_slice(row, (1, vocab), &Device::Cpu)?,
                    attentions: Vec::new(),
                    hidden_states: Vec::new(),
                })
            })
            .collect()
    }

    /// Attention of each sequence's one query (`q`: `[n, n_heads * head_dim]`, rotated) over
    /// its cached keys and values of `layer`, which already include this token.
    /// Returns `[n, n_heads * head_dim]`.
    fn attend(
        &self,
        seqs: &[SeqInput<'_>],
        layer: usize,
        q: &[f32],
        positions: &[usize],
        span: AttentionSpan,
    ) -> Vec<f32> {
        let cfg = &self.cfg;
        let (d, n_heads, q_dim, kv_dim) = (cfg.head_dim, cfg.n_heads, cfg.q_dim(), cfg.kv_dim());
        let group = n_heads / cfg.n_kv_heads;
        let window = match span {
            AttentionSpan::Global => usize::MAX,
            AttentionSpan::Sliding(w) => w,
        };
        let scale = cfg.attn_scale as f32;
        let head = |(i, out): (usize, &mut [f32])| {
            let (s, h) = (i / n_heads, i % n_heads);
            let pos = positions[s];
            let keys = (pos + 1).saturating_sub(window)..pos + 1;
            let head = Head {
                q: &q[s * q_dim + h * d..][..d],
                offset: (h / group) * d,
                kv_dim,
                scale,
            };
            match seqs[s].cache.rows(layer) {
                (KvRows::F16(k), KvRows::F16(v)) => head.attend::<f16>(k, v, keys, out),
                (KvRows::F32(k), KvRows::F32(v)) => head.attend::<f32>(k, v, keys, out),
                _ => unreachable!("keys and values of a cache share one precision"),
            }
        };
        let work: usize = positions.iter().map(|p| (p + 1).min(window)).sum::<usize>() * n_heads * d;
        let mut out = vec![0f32; seqs.len() * q_dim];
        if work >= PARALLEL_ATTENTION_WORK {
            out.par_chunks_mut(d).enumerate().for_each(head);
        } else {
            out.chunks_mut(d).enumerate().for_each(head);
        }
        out
    }
}

/// cos/sin of every sequence's position for one set of RoPE frequencies.
struct Angles {
    freqs: Arc<Vec<f64>>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One query head against the rows of its KV head.
struct Head<'a> {
    q: &'a [f32],
    /// Where the KV head starts within a cache row.
    offset: usize,
    kv_dim: usize,
    scale: f32,
}

impl Head<'_> {
    /// Softmax-weighted sum of the value rows in `keys` into `out`.
    fn attend<T: KvElem>(&self, k: &[T], v: &[T], keys: std::ops::Range<usize>, out: &mut [f32]) {
        let first = keys.start * self.kv_dim + self.offset;
        let mut probs = vec![0f32; keys.len()];
        T::scores(self.q, &k[first..], self.kv_dim, self.scale, &mut probs);
        softmax_in_place(&mut probs);
        out.fill(0.0);
        T::weighted_sum(&probs, &v[first..], self.kv_dim, out);
    }
}

fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

/// Rotate every `head_dim`-long head of each token row of `x` by that token's angles
/// (`cos`, `sin`: `[tokens, head_dim / 2]`).
fn rotate(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = head_dim / 2;
    let tokens = cos.len() / half;
    let row_len = x.len() / tokens;
    for (t, row) in x.chunks_exact_mut(row_len).enumerate() {
        let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c[i] - x1 * s[i];
                head[b] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

/// `gate = act(gate) * up`, element-wise.
fn activate_and_gate(gate: &mut [f32], up: &[f32], activation: Activation) {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    for (g, &u) in gate.iter_mut().zip(up) {
        let v = *g;
        let a = match activation {
            Activation::Silu => v / (1.0 + (-v).exp()),
            Activation::GeluTanh => 0.5 * v * (1.0 + (SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)).tanh()),
        };
        *g = a * u;
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
