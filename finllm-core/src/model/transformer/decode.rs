//! The host path: the forward pass on plain buffers with finllm's kernels, for calls that want
//! logits only (decode steps, prefills, batches of both).
//!
//! The general forward pass spends much of its time around the weight matmuls: every op
//! allocates a candle tensor (and candle runs element-wise ops on threads of its own, beside
//! ours), the whole KV cache is read back as f32 tensors each call, and candle's matmul (which
//! probes the CPU on every call) runs attention. This path runs the same computation on plain
//! buffers, ids in and logits out with no candle tensor: norms, RoPE and activations in place,
//! keys and values appended to the cache rows and attended to where they lie (f16 converted in
//! registers), one parallel pass per weight group and one for attention. `tests/tiny_models.rs` checks it against the general path for every
//! architecture.

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use super::kv_cache::KvRows;
use super::{rope_values, Linear, SeqInput, Transformer};
use crate::error::Result;
use crate::model::config::{Activation, AttentionSpan, RopeStyle};
use crate::model::weights::forward_group_into;
use crate::quant::elementwise::{gate_in_place, softmax_in_place, Gate};
use crate::quant::matmul::Scratch;
use crate::quant::vector::KvElem;

/// Below this many multiply-adds, attention runs on the calling thread: a fork-join costs more
/// than it saves.
const PARALLEL_ATTENTION_WORK: usize = 1 << 15;

impl Transformer {
    /// Every sequence's new tokens after what its cache holds; returns per sequence the logits
    /// of its last token (`vocab` values), or of every token with `all_logits` (`[tokens, vocab]`
    /// row-major). The caller has checked the inputs; on error the caller rolls the caches back.
    pub(super) fn forward_host(&self, seqs: &mut [SeqInput<'_>], all_logits: bool) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.cfg;
        let (hidden, kv_dim) = (cfg.hidden_size, cfg.kv_dim());
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let n = ids.len();
        // Per token: its sequence and absolute position.
        let rows: Vec<TokenRow> = seqs
            .iter()
            .enumerate()
            .flat_map(|(seq, s)| {
                (0..s.tokens.len()).map(move |j| TokenRow {
                    seq,
                    pos: s.cache.len() + j,
                })
            })
            .collect();
        let positions: Vec<usize> = rows.iter().map(|r| r.pos).collect();

        let mut x = self.embed.lookup_rows(&ids)?;
        if cfg.scale_embeddings {
            let s = (hidden as f64).sqrt() as f32;
            x.iter_mut().for_each(|v| *v *= s);
        }

        let mut normed = vec![0f32; n * hidden];
        let mut buf = Buffers::default();
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
            let Buffers {
                q,
                k,
                v,
                attn,
                proj,
                gate,
                up,
                scratch,
            } = &mut buf;
            Linear::forward_all_into([&block.q, &block.k, &block.v], &normed, n, [q, k, v], scratch)?;
            if let Some(norm) = &block.q_norm {
                norm.forward_rows_in_place(q);
            }
            if let Some(norm) = &block.k_norm {
                norm.forward_rows_in_place(k);
            }
            rotate(q, cfg.head_dim, cos, sin, cfg.rope_style);
            rotate(k, cfg.head_dim, cos, sin, cfg.rope_style);
            let mut start = 0;
            for seq in seqs.iter_mut() {
                let span = start * kv_dim..(start + seq.tokens.len()) * kv_dim;
                seq.cache.append_rows(layer, &k[span.clone()], &v[span], kv_dim)?;
                start += seq.tokens.len();
            }
            self.attend(seqs, layer, q, &rows, block.span, attn);
            Linear::forward_all_into([&block.o], attn, n, [&mut *proj], scratch)?;
            if let Some(norm) = &block.post_attn_norm {
                norm.forward_rows_in_place(proj);
            }
            add_in_place(&mut x, proj);

            block.ffn_norm.forward_rows(&x, &mut normed);
            Linear::forward_all_into([&block.gate, &block.up], &normed, n, [&mut *gate, &mut *up], scratch)?;
            let act = match cfg.activation {
                Activation::Silu => Gate::Silu,
                Activation::GeluTanh => Gate::GeluTanh,
            };
            gate_in_place(gate, up, act);
            Linear::forward_all_into([&block.down], gate, n, [&mut *proj], scratch)?;
            if let Some(norm) = &block.post_ffn_norm {
                norm.forward_rows_in_place(proj);
            }
            add_in_place(&mut x, proj);
        }
        for seq in seqs.iter_mut() {
            seq.cache.commit(seq.tokens.len());
        }

        // Final norm and LM head only on the rows returned, all sequences in one matmul.
        let returned: Vec<usize> = seqs
            .iter()
            .map(|s| if all_logits { s.tokens.len() } else { 1 })
            .collect();
        let mut picked = Vec::with_capacity(returned.iter().sum::<usize>() * hidden);
        let mut end = 0;
        for (seq, &r) in seqs.iter().zip(&returned) {
            end += seq.tokens.len();
            picked.extend_from_slice(&x[(end - r) * hidden..end * hidden]);
        }
        let m = picked.len() / hidden;
        let mut normed = vec![0f32; picked.len()];
        self.norm.forward_rows(&picked, &mut normed);
        let mut logits = vec![0f32; m * self.lm_head.rows()];
        forward_group_into(&[&self.lm_head], &normed, m, &mut [&mut logits], &mut buf.scratch)?;
        let vocab = logits.len() / m;
        let mut outputs = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for &r in &returned {
            outputs.push(logits[row * vocab..(row + r) * vocab].to_vec());
            row += r;
        }
        Ok(outputs)
    }

    /// Causal attention of every new token's query (`q`: `[tokens, n_heads * head_dim]`,
    /// rotated) over the cached keys and values of its sequence in `layer`, which already hold
    /// the new tokens: each token sees the positions up to its own (within the layer's window).
    /// Writes `[tokens, n_heads * head_dim]` into `out` (resized to that).
    fn attend(
        &self,
        seqs: &[SeqInput<'_>],
        layer: usize,
        q: &[f32],
        rows: &[TokenRow],
        span: AttentionSpan,
        out: &mut Vec<f32>,
    ) {
        let cfg = &self.cfg;
        let (d, n_heads, q_dim, kv_dim) = (cfg.head_dim, cfg.n_heads, cfg.q_dim(), cfg.kv_dim());
        let group = n_heads / cfg.n_kv_heads;
        let window = match span {
            AttentionSpan::Global => usize::MAX,
            AttentionSpan::Sliding(w) => w,
        };
        let scale = cfg.attn_scale as f32;
        // One task per token and KV head: the query heads of a group read each cached row once
        // (the kernels share every converted row between them). With few such tasks (decoding
        // a sequence or two) one per query head instead, so both threads have work: either way
        // each head's result has the same bits.
        let per_task = if rows.len() * cfg.n_kv_heads >= 4 * rayon::current_num_threads() {
            group
        } else {
            1
        };
        let tasks_per_token = n_heads / per_task;
        let head = |(i, out): (usize, &mut [f32])| {
            let (t, h) = (i / tasks_per_token, (i % tasks_per_token) * per_task);
            let TokenRow { seq, pos } = rows[t];
            let keys = (pos + 1).saturating_sub(window)..pos + 1;
            let head = Heads {
                q: &q[t * q_dim + h * d..][..per_task * d],
                d,
                offset: (h / group) * d,
                kv_dim,
                scale,
            };
            let view = seqs[seq].cache.view(layer);
            let segments = [view.prefix.map(|p| (p, 0)), Some((view.own, view.prefix_len))];
            match (view.prefix, view.own) {
                (None | Some((KvRows::F16(_), KvRows::F16(_))), (KvRows::F16(_), KvRows::F16(_))) => head.attend(
                    segments.map(|s| s.map(|((k, v), at)| (f16_rows(k), f16_rows(v), at))),
                    keys,
                    out,
                ),
                (None | Some((KvRows::F32(_), KvRows::F32(_))), (KvRows::F32(_), KvRows::F32(_))) => head.attend(
                    segments.map(|s| s.map(|((k, v), at)| (f32_rows(k), f32_rows(v), at))),
                    keys,
                    out,
                ),
                _ => unreachable!(
                    "the kernels backend keeps its caches, prefixes included, in host memory with one precision"
                ),
            }
        };
        let work: usize = rows.iter().map(|r| (r.pos + 1).min(window)).sum::<usize>() * n_heads * d;
        out.resize(rows.len() * q_dim, 0.0);
        if work >= PARALLEL_ATTENTION_WORK {
            out.par_chunks_mut(per_task * d).enumerate().for_each(head);
        } else {
            out.chunks_mut(per_task * d).enumerate().for_each(head);
        }
    }
}

/// The buffers of one forward call, reused by every layer.
#[derive(Default)]
struct Buffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention's output, the input of the output projection.
    attn: Vec<f32>,
    /// The output and down projections' results.
    proj: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scratch: Scratch,
}

/// Where a new token belongs: its sequence in the call and its absolute position.
#[derive(Clone, Copy)]
struct TokenRow {
    seq: usize,
    pos: usize,
}

/// cos/sin of every sequence's position for one set of RoPE frequencies.
struct Angles {
    freqs: Arc<Vec<f64>>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// One or more query heads of one token against the rows of their KV head.
struct Heads<'a> {
    /// The heads' queries, `d` values each, one after the other.
    q: &'a [f32],
    d: usize,
    /// Where the KV head starts within a cache row.
    offset: usize,
    kv_dim: usize,
    scale: f32,
}

/// Rows of keys and values holding positions from `.2` on.
type Segment<'a, T> = (&'a [T], &'a [T], usize);

impl Heads<'_> {
    /// Per head, the softmax-weighted sum of the value rows at positions `keys` into its `d`
    /// values of `out`; the rows lie in up to two segments (a shared prefix, then the sequence's
    /// own rows). Scores are per row and the weighted sum adds rows in position order, so the
    /// split changes no bit of the result, nor does how many heads one call takes.
    fn attend<T: KvElem>(&self, segments: [Option<Segment<'_, T>>; 2], keys: std::ops::Range<usize>, out: &mut [f32]) {
        let n = keys.len();
        let heads = self.q.len() / self.d;
        let mut probs = vec![0f32; heads * n];
        let parts = segments.map(|s| {
            s.and_then(|(k, v, at)| {
                let rows = k.len() / self.kv_dim;
                let (from, to) = (keys.start.max(at), keys.end.min(at + rows));
                (from < to).then_some((k, v, from - at, from - keys.start..to - keys.start))
            })
        });
        for &(k, _, first, ref p) in parts.iter().flatten() {
            let k = &k[first * self.kv_dim + self.offset..];
            T::scores_heads(
                self.q,
                self.d,
                k,
                self.kv_dim,
                self.scale,
                &mut probs[p.start..],
                n,
                p.len(),
            );
        }
        for p in probs.chunks_exact_mut(n.max(1)) {
            softmax_in_place(p);
        }
        out.fill(0.0);
        for &(_, v, first, ref p) in parts.iter().flatten() {
            let v = &v[first * self.kv_dim + self.offset..];
            T::weighted_sum_heads(&probs[p.start..], n, p.len(), v, self.kv_dim, out, self.d);
        }
    }
}

fn f16_rows(rows: &KvRows) -> &[f16] {
    match rows {
        KvRows::F16(v) => v,
        _ => &[],
    }
}

fn f32_rows(rows: &KvRows) -> &[f32] {
    match rows {
        KvRows::F32(v) => v,
        _ => &[],
    }
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

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
