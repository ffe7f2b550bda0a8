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

use super::kv_cache::{KvRows, LayerView};
use super::{rope_values, Linear, SeqInput, Transformer};
use crate::error::Result;
use crate::model::config::{Activation, AttentionSpan, RopeStyle};
use crate::model::weights::forward_group_into;
use crate::quant::elementwise::{gate_in_place, softmax_in_place, Gate};
use crate::quant::kernels::Isa;
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

/// Fewest cached positions every token of a call attends to for [`Transformer::attend_split`]'s
/// passes (below it one task per query head: two fork-joins a layer cost more than they save).
const SPLIT_KEYS: usize = 512;

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
        // Decoding a sequence or two after a long prompt on AVX2: the per-head tasks would
        // convert each cached row once per query head of its group. Three passes instead (see
        // `attend_split`), each with work for every thread: SmolLM2 Q4_0 after 2,048 tokens,
        // 89.8 -> 128.6 tok/s (medians of 5). AVX-512 keeps the per-head tasks, whose one-head
        // kernels convert sixteen values at a time and fetch ahead: there the passes' extra
        // fork-joins cost more than the conversions they save (149.4 -> 124.2 tok/s).
        let fewest_keys = rows.iter().map(|r| (r.pos + 1).min(window)).min().unwrap_or(0);
        if per_task == 1
            && block_len == 1
            && fewest_keys >= SPLIT_KEYS
            && group * cfg.n_kv_heads == n_heads
            && Isa::detect() == Isa::Avx2
        {
            return self.attend_split(seqs, layer, q, rows, window, out);
        }
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
            run_on(
                &block,
                seqs[rows[tokens.start].seq].cache.view(layer),
                Job::Attend(&mut out),
            );
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

    /// Attention for a few tokens over many cached positions, in three passes: the scores of
    /// each token, KV head and run of positions (a converted key feeds every query head of
    /// the group); each head's softmax; the weighted sums of each token, KV head and run of
    /// columns (a converted value feeds every head of the group). Scores are per row and each
    /// column's sum is the same chain of multiply-adds in position order, so every bit is the
    /// one [`Block::attend`] gives, however the work is cut.
    fn attend_split(
        &self,
        seqs: &[SeqInput<'_>],
        layer: usize,
        q: &[f32],
        rows: &[TokenRow],
        window: usize,
        out: &mut Vec<f32>,
    ) {
        let cfg = &self.cfg;
        let (d, n_heads, q_dim, kv_dim, n_kv) = (cfg.head_dim, cfg.n_heads, cfg.q_dim(), cfg.kv_dim(), cfg.n_kv_heads);
        let group = n_heads / n_kv;
        let scale = cfg.attn_scale as f32;
        let keys: Vec<std::ops::Range<usize>> = rows
            .iter()
            .map(|r| (r.pos + 1).saturating_sub(window)..r.pos + 1)
            .collect();
        let block = |t: usize, g: usize, positions: std::ops::Range<usize>| Block {
            queries: vec![(&q[t * q_dim + g * group * d..][..group * d], positions)],
            d,
            group,
            offset: g * d,
            kv_dim,
            scale,
        };
        let view = |t: usize| seqs[rows[t].seq].cache.view(layer);
        // About four tasks a thread in each pass.
        let want = 4 * rayon::current_num_threads();
        let units = rows.len() * n_kv;
        let runs = want.div_ceil(units).max(1);
        let mut tasks = Vec::new();
        for (t, k) in keys.iter().enumerate() {
            let step = k.len().div_ceil(runs).div_ceil(KEY_TILE) * KEY_TILE;
            for g in 0..n_kv {
                let mut from = k.start;
                while from < k.end {
                    tasks.push((t, g, from..(from + step).min(k.end)));
                    from += step;
                }
            }
        }
        let scores: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|(t, g, r)| {
                let mut p = vec![0f32; group * r.len()];
                run_on(&block(*t, *g, r.clone()), view(*t), Job::Scores(&mut p));
                p
            })
            .collect();
        // Token t's probabilities: `n_heads` rows of its key count, from offsets[t].
        let (offsets, total) = prob_offsets(n_heads, keys.iter().map(|k| k.len()));
        let mut probs = vec![0f32; total];
        for ((t, g, r), p) in tasks.iter().zip(&scores) {
            let n = keys[*t].len();
            for (h, p) in p.chunks_exact(r.len()).enumerate() {
                let at = offsets[*t] + (g * group + h) * n + (r.start - keys[*t].start);
                probs[at..at + r.len()].copy_from_slice(p);
            }
        }
        for (t, k) in keys.iter().enumerate() {
            for p in probs[offsets[t]..offsets[t] + n_heads * k.len()].chunks_exact_mut(k.len()) {
                softmax_in_place(p);
            }
        }
        // Columns in runs of 32 (whole cache lines of f16; the kernels' vectors divide them).
        let col_runs = if d.is_multiple_of(32) {
            want.div_ceil(units).clamp(1, d / 32)
        } else {
            1
        };
        let width = if col_runs == 1 { d } else { d / 32 / col_runs * 32 };
        let mut jobs = Vec::new();
        for t in 0..rows.len() {
            for g in 0..n_kv {
                let mut c = 0;
                while c < d {
                    let w = if c + 2 * width > d { d - c } else { width };
                    jobs.push((t, g, c..c + w));
                    c += w;
                }
            }
        }
        let sums: Vec<Vec<f32>> = jobs
            .par_iter()
            .map(|(t, g, cols)| {
                let n = keys[*t].len();
                let p = &probs[offsets[*t] + g * group * n..][..group * n];
                let mut o = vec![0f32; group * cols.len()];
                let job = Job::Sums {
                    probs: p,
                    cols: cols.clone(),
                    out: &mut o,
                };
                run_on(&block(*t, *g, keys[*t].clone()), view(*t), job);
                o
            })
            .collect();
        out.resize(rows.len() * q_dim, 0.0);
        for ((t, g, cols), o) in jobs.iter().zip(&sums) {
            for (h, o) in o.chunks_exact(cols.len()).enumerate() {
                let at = t * q_dim + (g * group + h) * d + cols.start;
                out[at..at + cols.len()].copy_from_slice(o);
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
        let (offsets, total) = self.offsets();
        let pieces = self.pieces(&segments);
        let mut probs = vec![0f32; total];
        self.scores(&segments, &pieces, &offsets, &mut probs);
        self.softmax(&offsets, &mut probs);
        out.fill(0.0);
        self.sums(&segments, &pieces, &offsets, &probs, 0..self.d, out);
    }

    /// What a task asks of the block, on rows of precision `T`.
    fn run<T: KvElem>(&self, segments: [Option<Segment<'_, T>>; 2], job: Job<'_>) {
        match job {
            Job::Attend(out) => self.attend(segments, out),
            Job::Scores(probs) => {
                let (offsets, total) = self.offsets();
                let pieces = self.pieces(&segments);
                self.scores(&segments, &pieces, &offsets, &mut probs[..total]);
            }
            Job::Sums { probs, cols, out } => {
                let (offsets, _) = self.offsets();
                let pieces = self.pieces(&segments);
                out.fill(0.0);
                self.sums(&segments, &pieces, &offsets, probs, cols, out);
            }
        }
    }

    /// Query heads per token.
    fn heads(&self) -> usize {
        self.queries.first().map_or(0, |(q, _)| q.len() / self.d)
    }

    /// Where each token's probabilities start (`heads` rows of its key count each), and their
    /// total.
    fn offsets(&self) -> (Vec<usize>, usize) {
        prob_offsets(self.heads(), self.queries.iter().map(|(_, keys)| keys.len()))
    }

    /// Every (segment, token, rows) piece in position order: tiles ascending, the prefix
    /// before the own rows within a tile.
    fn pieces<T>(&self, segments: &[Option<Segment<'_, T>>; 2]) -> Vec<(usize, usize, std::ops::Range<usize>)> {
        let lo = self.queries.iter().map(|(_, k)| k.start).min().unwrap_or(0);
        let hi = self.queries.iter().map(|(_, k)| k.end).max().unwrap_or(0);
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
        pieces
    }

    /// Values of a cached row this block asks the kernels to fetch ahead for token `i` and KV
    /// head `j`, reading columns `cols` of each head. Only the first token's calls fetch: the
    /// later tokens of a block find the tile in L1 (asked again, AVX2's 2,048-token prefill
    /// lost 10%). A block that reads every KV head whole has the first head's calls fetch
    /// whole rows ahead (the later heads' find their slices cached; fetched per head, each
    /// head's pass waited on memory again: 8-stream attention took 15% less time a step, and
    /// the engine at 8 streams gave 945 -> 984 tok/s); one that reads some heads or columns
    /// fetches only its own slices, which are all it reads.
    fn fetch(&self, i: usize, j: usize, cols: &std::ops::Range<usize>) -> usize {
        let kv_heads = self.heads().div_ceil(self.group);
        if i > 0 {
            0
        } else if j == 0 && kv_heads * self.d == self.kv_dim && cols.len() == self.d {
            self.kv_dim
        } else {
            cols.len()
        }
    }

    /// Every token's scaled scores (`q · k`) into `probs`, laid out as [`offsets`](Self::offsets) says.
    fn scores<T: KvElem>(
        &self,
        segments: &[Option<Segment<'_, T>>; 2],
        pieces: &[(usize, usize, std::ops::Range<usize>)],
        offsets: &[usize],
        probs: &mut [f32],
    ) {
        // The KV heads this block reads, each with `group` query heads.
        let per_kv = self.group;
        let kv_heads = self.heads().div_ceil(per_kv);
        for (s, i, rows) in pieces {
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
                    self.fetch(*i, j, &(0..self.d)),
                );
            }
        }
    }

    /// Each head's row of scores into probabilities.
    fn softmax(&self, offsets: &[usize], probs: &mut [f32]) {
        let heads = self.heads();
        for (i, (_, keys)) in self.queries.iter().enumerate() {
            let n = keys.len().max(1);
            for p in probs[offsets[i]..offsets[i] + heads * keys.len()].chunks_exact_mut(n) {
                softmax_in_place(p);
            }
        }
    }

    /// Columns `cols` of every token's and head's weighted sum of value rows into `out`
    /// (`[token][head][cols]`, added to what it holds). Each column's sum is the same chain of
    /// multiply-adds, rows in position order, whatever the columns taken.
    #[allow(clippy::too_many_arguments)]
    fn sums<T: KvElem>(
        &self,
        segments: &[Option<Segment<'_, T>>; 2],
        pieces: &[(usize, usize, std::ops::Range<usize>)],
        offsets: &[usize],
        probs: &[f32],
        cols: std::ops::Range<usize>,
        out: &mut [f32],
    ) {
        let per_kv = self.group;
        let heads = self.heads();
        let kv_heads = heads.div_ceil(per_kv);
        let w = cols.len();
        let width = heads * w;
        for (s, i, rows) in pieces {
            let (_, v, at) = segments[*s].expect("a piece lies in a segment");
            let keys = &self.queries[*i].1;
            let first = offsets[*i] + rows.start - keys.start;
            let o = &mut out[i * width..(i + 1) * width];
            let n = keys.len();
            for j in 0..kv_heads {
                let v = &v[(rows.start - at) * self.kv_dim + self.offset + j * self.d + cols.start..];
                T::weighted_sum_heads(
                    &probs[first + j * per_kv * n..],
                    n,
                    rows.len(),
                    v,
                    self.kv_dim,
                    &mut o[j * per_kv * w..][..per_kv * w],
                    w,
                    self.fetch(*i, j, &cols),
                );
            }
        }
    }
}

/// A task's share of a [`Block`]'s attention: all of it into `[token][head][d]`, or only the
/// scores, or only some columns of the weighted sums from probabilities already made.
enum Job<'p> {
    Attend(&'p mut [f32]),
    Scores(&'p mut [f32]),
    Sums {
        probs: &'p [f32],
        cols: std::ops::Range<usize>,
        out: &'p mut [f32],
    },
}

/// Where each token's probabilities start when it has `heads` rows of its key count (in
/// `key_lens`' order), and their total.
fn prob_offsets(heads: usize, key_lens: impl ExactSizeIterator<Item = usize>) -> (Vec<usize>, usize) {
    let mut offsets = Vec::with_capacity(key_lens.len());
    let mut total = 0;
    for n in key_lens {
        offsets.push(total);
        total += heads * n;
    }
    (offsets, total)
}

/// Runs `job` on `block` over one layer's rows of a sequence's cache, whichever their precision.
fn run_on(block: &Block<'_>, view: LayerView<'_>, job: Job<'_>) {
    let segments = [view.prefix.map(|p| (p, 0)), Some((view.own, view.prefix_len))];
    match (view.prefix, view.own) {
        (None | Some((KvRows::F16(_), KvRows::F16(_))), (KvRows::F16(_), KvRows::F16(_))) => block.run(
            segments.map(|s| s.map(|((k, v), at)| (f16_rows(k), f16_rows(v), at))),
            job,
        ),
        (None | Some((KvRows::F32(_), KvRows::F32(_))), (KvRows::F32(_), KvRows::F32(_))) => block.run(
            segments.map(|s| s.map(|((k, v), at)| (f32_rows(k), f32_rows(v), at))),
            job,
        ),
        _ => unreachable!("the kernels backend keeps its caches, prefixes included, in host memory with one precision"),
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
