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

/// Tokens of one sequence that one attention task takes together in a long call (a prefill).
const BLOCK_TOKENS: usize = 16;

/// Cached positions a block of tokens walks at a time: one KV head's 64 rows of keys (or
/// values) of a 64-value head in f16 are 8 KiB, well inside L1.
const KEY_TILE: usize = 64;

impl Transformer {
    /// Every sequence's new tokens after what its cache holds; leaves in `ws.logits` the logits
    /// of each sequence's last token, or of every token with `all_logits`, one `vocab`-long row
    /// per token in the order of the sequences. The caller has checked the inputs; on error the
    /// caller rolls the caches back.
    pub(super) fn forward_host(&self, seqs: &mut [SeqInput<'_>], all_logits: bool, ws: &mut Workspace) -> Result<()> {
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

        let Workspace {
            buf,
            normed,
            picked,
            logits,
        } = ws;
        normed.resize(n * hidden, 0.0);
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

            block.attn_norm.forward_rows(&x, normed);
            let Buffers {
                q,
                k,
                v,
                attn,
                proj,
                gate,
                up,
                scratch,
            } = &mut *buf;
            Linear::forward_all_into([&block.q, &block.k, &block.v], normed, n, [q, k, v], scratch)?;
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

            block.ffn_norm.forward_rows(&x, normed);
            Linear::forward_all_into([&block.gate, &block.up], normed, n, [&mut *gate, &mut *up], scratch)?;
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
        picked.clear();
        let mut end = 0;
        for seq in seqs.iter() {
            end += seq.tokens.len();
            let r = if all_logits { seq.tokens.len() } else { 1 };
            picked.extend_from_slice(&x[(end - r) * hidden..end * hidden]);
        }
        let m = picked.len() / hidden;
        normed.resize(picked.len(), 0.0);
        self.norm.forward_rows(picked, normed);
        logits.resize(m * self.lm_head.rows(), 0.0);
        forward_group_into(
            &[&self.lm_head],
            normed,
            m,
            &mut [logits.as_mut_slice()],
            &mut buf.scratch,
        )?;
        Ok(())
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
        // One task per block of a sequence's consecutive tokens and per KV head: the query
        // heads of a group share every cached row the kernels load and convert, and the tokens
        // of a block walk the rows tile by tile, so a tile is read from memory once and then
        // from L1 by every token that sees it. With few such tasks (decoding a sequence or
        // two) one per token and query head instead, so both threads have work. However the
        // work is cut, each head's result has the same bits (scores are per row; weighted sums
        // add rows in position order).
        // Decoding many sequences (one token each), one task per sequence and every head:
        // the task reads its cache rows whole, in order, which the prefetchers follow better
        // than three tasks reading a third of each row.
        let threads = rayon::current_num_threads();
        let block_len = if rows.len() >= 2 * BLOCK_TOKENS {
            BLOCK_TOKENS
        } else {
            1
        };
        let mut blocks: Vec<std::ops::Range<usize>> = Vec::new();
        for (t, r) in rows.iter().enumerate() {
            match blocks.last_mut() {
                Some(b) if b.len() < block_len && rows[b.start].seq == r.seq => b.end = t + 1,
                _ => blocks.push(t..t + 1),
            }
        }
        let per_task = if block_len == 1 && blocks.len() >= 4 * threads {
            n_heads
        } else if rows.len() * cfg.n_kv_heads >= 4 * threads {
            group
        } else {
            1
        };
        let tasks_per_block = n_heads / per_task;
        let task = |i: usize| -> Vec<f32> {
            let (tokens, h) = (blocks[i / tasks_per_block].clone(), (i % tasks_per_block) * per_task);
            let block = Block {
                queries: tokens
                    .clone()
                    .map(|t| {
                        let pos = rows[t].pos;
                        (
                            &q[t * q_dim + h * d..][..per_task * d],
                            (pos + 1).saturating_sub(window)..pos + 1,
                        )
                    })
                    .collect(),
                d,
                group: group.min(per_task),
                offset: (h / group) * d,
                kv_dim,
                scale,
            };
            let mut out = vec![0f32; tokens.len() * per_task * d];
            let view = seqs[rows[tokens.start].seq].cache.view(layer);
            let segments = [view.prefix.map(|p| (p, 0)), Some((view.own, view.prefix_len))];
            match (view.prefix, view.own) {
                (None | Some((KvRows::F16(_), KvRows::F16(_))), (KvRows::F16(_), KvRows::F16(_))) => block.attend(
                    segments.map(|s| s.map(|((k, v), at)| (f16_rows(k), f16_rows(v), at))),
                    &mut out,
                ),
                (None | Some((KvRows::F32(_), KvRows::F32(_))), (KvRows::F32(_), KvRows::F32(_))) => block.attend(
                    segments.map(|s| s.map(|((k, v), at)| (f32_rows(k), f32_rows(v), at))),
                    &mut out,
                ),
                _ => unreachable!(
                    "the kernels backend keeps its caches, prefixes included, in host memory with one precision"
                ),
            }
            out
        };
        let work: usize = rows.iter().map(|r| (r.pos + 1).min(window)).sum::<usize>() * n_heads * d;
        let n_tasks = blocks.len() * tasks_per_block;
        let results: Vec<Vec<f32>> = if work >= PARALLEL_ATTENTION_WORK {
            (0..n_tasks).into_par_iter().map(task).collect()
        } else {
            (0..n_tasks).map(task).collect()
        };
        out.resize(rows.len() * q_dim, 0.0);
        let width = per_task * d;
        for (i, result) in results.iter().enumerate() {
            let (tokens, h) = (blocks[i / tasks_per_block].clone(), (i % tasks_per_block) * per_task);
            for (t, values) in tokens.zip(result.chunks_exact(width)) {
                out[t * q_dim + h * d..][..width].copy_from_slice(values);
            }
        }
    }
}

/// The buffers of the host forward pass and its logits. A caller that runs step after step
/// (the engine's scheduler) keeps one, so that every step reuses the memory of the last: buffers
/// made fresh each call (an 8-stream step's logits alone are 1.5 MiB) were handed back to the
/// system by the allocator and faulted back in, zeroed, on the next step (8 streams: 3-4% more
/// tokens a second with the buffers kept).
#[derive(Default)]
pub struct Workspace {
    buf: Buffers,
    normed: Vec<f32>,
    /// The hidden states of the tokens whose logits are returned.
    picked: Vec<f32>,
    /// `[rows, vocab]`: the logits of the last call.
    pub(super) logits: Vec<f32>,
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

/// Consecutive tokens of one sequence, each with one or more query heads, against the rows
/// of their KV heads: some heads of one KV group, or whole groups of consecutive KV heads.
struct Block<'a> {
    /// Per token: its heads' queries (`d` values each, one after the other) and the positions
    /// it attends to.
    queries: Vec<(&'a [f32], std::ops::Range<usize>)>,
    d: usize,
    /// Query heads per KV head in this block (all of them share one KV head when fewer than
    /// a group).
    group: usize,
    /// Where the first KV head starts within a cache row.
    offset: usize,
    kv_dim: usize,
    scale: f32,
}

/// Rows of keys and values holding positions from `.2` on.
type Segment<'a, T> = (&'a [T], &'a [T], usize);

impl Block<'_> {
    /// Per token and head, the softmax-weighted sum of the value rows at the token's positions
    /// into `out` (`[token][head][d]`). The rows lie in up to two segments (a shared prefix,
    /// then the sequence's own rows) and are walked in tiles of [`KEY_TILE`] positions, every
    /// token taking its part of a tile while the tile is in L1. Scores are per row and the
    /// weighted sums add rows in position order, so neither the segments, nor the tiles, nor
    /// how many tokens and heads one block holds change a bit of the result.
    fn attend<T: KvElem>(&self, segments: [Option<Segment<'_, T>>; 2], out: &mut [f32]) {
        let heads = self.queries.first().map_or(0, |(q, _)| q.len() / self.d);
        // Token i's probabilities: `heads` rows of its key count, from offsets[i].
        let mut offsets = Vec::with_capacity(self.queries.len());
        let mut total = 0;
        for (_, keys) in &self.queries {
            offsets.push(total);
            total += heads * keys.len();
        }
        let mut probs = vec![0f32; total];
        let lo = self.queries.iter().map(|(_, k)| k.start).min().unwrap_or(0);
        let hi = self.queries.iter().map(|(_, k)| k.end).max().unwrap_or(0);
        // Every (segment, token, rows) piece in position order: tiles ascending, the prefix
        // before the own rows within a tile.
        let mut pieces = Vec::new();
        let mut tile = lo / KEY_TILE * KEY_TILE;
        while tile < hi {
            let tile_rows = tile.max(lo)..(tile + KEY_TILE).min(hi);
            for (s, seg) in segments.iter().enumerate() {
                let Some((k, _, at)) = seg else { continue };
                let seg_rows = *at..at + k.len() / self.kv_dim;
                for (i, (_, keys)) in self.queries.iter().enumerate() {
                    let from = tile_rows.start.max(seg_rows.start).max(keys.start);
                    let to = tile_rows.end.min(seg_rows.end).min(keys.end);
                    if from < to {
                        pieces.push((s, i, from..to));
                    }
                }
            }
            tile += KEY_TILE;
        }
        // The KV heads this block reads, each with `group` query heads.
        let per_kv = self.group;
        let kv_heads = heads.div_ceil(per_kv);
        // A block that reads every KV head has the first head's calls fetch whole rows ahead
        // (the later heads' find their slices cached; fetched per head, each head's pass
        // waited on memory again: 8-stream attention took 15% less time a step, and the engine
        // at 8 streams gave 945 -> 984 tok/s); one that reads some heads fetches only its own
        // slices, which are all it reads.
        let fetch = |j: usize| {
            if j == 0 && kv_heads * self.d == self.kv_dim {
                self.kv_dim
            } else {
                self.d
            }
        };
        for (s, i, rows) in &pieces {
            let (k, _, at) = segments[*s].expect("a piece lies in a segment");
            let (q, keys) = &self.queries[*i];
            let n = keys.len();
            let first = offsets[*i] + rows.start - keys.start;
            for j in 0..kv_heads {
                let k = &k[(rows.start - at) * self.kv_dim + self.offset + j * self.d..];
                T::scores_heads(
                    &q[j * per_kv * self.d..][..per_kv * self.d],
                    self.d,
                    k,
                    self.kv_dim,
                    self.scale,
                    &mut probs[first + j * per_kv * n..],
                    n,
                    rows.len(),
                    fetch(j),
                );
            }
        }
        for (i, (_, keys)) in self.queries.iter().enumerate() {
            let n = keys.len().max(1);
            for p in probs[offsets[i]..offsets[i] + heads * keys.len()].chunks_exact_mut(n) {
                softmax_in_place(p);
            }
        }
        out.fill(0.0);
        let width = heads * self.d;
        for (s, i, rows) in &pieces {
            let (_, v, at) = segments[*s].expect("a piece lies in a segment");
            let keys = &self.queries[*i].1;
            let first = offsets[*i] + rows.start - keys.start;
            let o = &mut out[i * width..(i + 1) * width];
            let n = keys.len();
            for j in 0..kv_heads {
                let v = &v[(rows.start - at) * self.kv_dim + self.offset + j * self.d..];
                T::weighted_sum_heads(
                    &probs[first + j * per_kv * n..],
                    n,
                    rows.len(),
                    v,
                    self.kv_dim,
                    &mut o[j * per_kv * self.d..][..per_kv * self.d],
                    self.d,
                    fetch(j),
                );
            }
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
        // The style chosen outside the loops, so that each loop is straight-line code the
        // compiler vectorizes (the same operations per value either way).
        for head in row.chunks_exact_mut(head_dim) {
            match style {
                RopeStyle::Interleaved => {
                    for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(c).zip(s) {
                        let (x0, x1) = (pair[0], pair[1]);
                        pair[0] = x0 * c - x1 * s;
                        pair[1] = x0 * s + x1 * c;
                    }
                }
                RopeStyle::Neox => {
                    let (lo, hi) = head.split_at_mut(half);
                    for (((x0, x1), &c), &s) in lo.iter_mut().zip(hi.iter_mut()).zip(c).zip(s) {
                        let (a, b) = (*x0, *x1);
                        *x0 = a * c - b * s;
                        *x1 = a * s + b * c;
                    }
                }
            }
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}
