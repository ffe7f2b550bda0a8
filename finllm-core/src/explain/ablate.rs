//! Forward-only scoring of ablated prompts on the served model: the log-probability of each
//! answer token when some units of the prompt are removed.
//!
//! The prompt's KV cache is computed once. An ablation that first changes the prompt at
//! position `p` starts from that cache cut back to `p` and runs only the rest (the prompt's
//! kept tokens after `p`, then the answer); ablations run `batch` at a time through one batched
//! forward call. Kernel rows give the same numbers whatever the batch, so a batched ablation
//! equals the same ablation run alone, and equals recomputing the ablated prompt from scratch.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::eval::log_softmax_at;
use crate::model::{ForwardOptions, KvCache, SeqInput};
use crate::Model;

/// Scores ablations of one prompt for one answer.
pub struct Ablator<'m> {
    model: &'m Model,
    prompt: Vec<u32>,
    answer: Vec<u32>,
    /// Per unit, the prompt positions it removes.
    units: Vec<Vec<usize>>,
    /// The prompt's cache (all of it).
    cache: KvCache,
    batch: usize,
    /// What an empty context starts with (BOS, else EOS), when every prompt token is removed.
    empty_start: u32,
    /// Results per mask already run.
    seen: std::collections::HashMap<Vec<bool>, Vec<f64>>,
    /// Sequences run so far and the time their forward calls took.
    pub(crate) sequences: usize,
    pub(crate) forward_s: f64,
}

impl<'m> Ablator<'m> {
    pub fn new(
        model: &'m Model,
        prompt: Vec<u32>,
        answer: Vec<u32>,
        units: Vec<Vec<usize>>,
        batch: usize,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(Error::invalid("prompt", "is empty"));
        }
        if answer.is_empty() {
            return Err(Error::invalid("target", "the answer to explain has no tokens"));
        }
        if units.iter().flatten().any(|&p| p >= prompt.len()) {
            return Err(Error::invalid("units", "a unit names a position outside the prompt"));
        }
        let context = model.config().context_length;
        if prompt.len() + answer.len() > context {
            return Err(Error::ContextOverflow {
                tokens: prompt.len() + answer.len(),
                max_new: 0,
                context,
            });
        }
        let tok = model.tokenizer();
        let empty_start = tok
            .bos_id()
            .or(tok.eos_id())
            .ok_or_else(|| Error::invalid("model", "has neither a BOS nor an EOS token to start an empty context"))?;
        let t = Instant::now();
        let mut cache = model.transformer().new_cache();
        model.run(|| model.transformer().forward(&prompt, &mut cache))?;
        Ok(Self {
            model,
            prompt,
            answer,
            units,
            cache,
            batch: batch.max(1),
            empty_start,
            seen: std::collections::HashMap::new(),
            sequences: 1,
            forward_s: t.elapsed().as_secs_f64(),
        })
    }

    pub fn n_units(&self) -> usize {
        self.units.len()
    }

    pub fn answer(&self) -> &[u32] {
        &self.answer
    }

    fn removed(&self, keep: &[bool]) -> Vec<bool> {
        let mut removed = vec![false; self.prompt.len()];
        for (u, positions) in self.units.iter().enumerate() {
            if !keep[u] {
                for &p in positions {
                    removed[p] = true;
                }
            }
        }
        removed
    }

    /// Per mask (`keep[u]`: unit `u` stays), the log-probability of each answer token. A mask
    /// seen before (in this call or an earlier one) is not run again: the forward pass is
    /// deterministic, so its result is the one already computed. With a few units (three
    /// retrieved sources have eight masks) most random ablations are repeats.
    pub fn score(&mut self, masks: &[Vec<bool>]) -> Result<Vec<Vec<f64>>> {
        if let Some(m) = masks.iter().find(|m| m.len() != self.units.len()) {
            return Err(Error::invalid(
                "mask",
                format!("has {} entries for {} units", m.len(), self.units.len()),
            ));
        }
        let mut new: Vec<Vec<bool>> = Vec::new();
        for m in masks {
            if !self.seen.contains_key(m) && !new.contains(m) {
                new.push(m.clone());
            }
        }
        let computed = self.run(&new)?;
        for (m, lp) in new.into_iter().zip(computed) {
            self.seen.insert(m, lp);
        }
        Ok(masks.iter().map(|m| self.seen[m].clone()).collect())
    }

    fn run(&mut self, masks: &[Vec<bool>]) -> Result<Vec<Vec<f64>>> {
        let mut out = Vec::with_capacity(masks.len());
        for group in masks.chunks(self.batch) {
            // Per mask: the cache cut back to where the ablation first differs, the kept
            // prompt tokens after that but the last (run for their keys and values only), then
            // the last kept token and the answer, whose logits are scored (only those rows are
            // made: a long prompt never holds [tokens, vocab] logits).
            let mut caches = Vec::with_capacity(group.len());
            let mut heads = Vec::with_capacity(group.len());
            let mut tails = Vec::with_capacity(group.len());
            for keep in group {
                let removed = self.removed(keep);
                let kept: Vec<usize> = (0..self.prompt.len()).filter(|p| !removed[*p]).collect();
                let (start, head, last) = match kept.last() {
                    None => (0, Vec::new(), self.empty_start),
                    Some(&last) => {
                        let first_removed = removed.iter().position(|&r| r).unwrap_or(self.prompt.len());
                        let start = first_removed.min(last);
                        let head: Vec<u32> = kept
                            .iter()
                            .filter(|&&p| p >= start && p < last)
                            .map(|&p| self.prompt[p])
                            .collect();
                        (start, head, self.prompt[last])
                    }
                };
                let mut tail = vec![last];
                // The last answer token predicts nothing we score.
                tail.extend_from_slice(&self.answer[..self.answer.len() - 1]);
                let mut cache = self.cache.clone();
                cache.truncate(start)?;
                caches.push(cache);
                heads.push(head);
                tails.push(tail);
            }
            let t = Instant::now();
            let opts = ForwardOptions {
                all_logits: true,
                ..Default::default()
            };
            let transformer = self.model.transformer();
            let outputs = self.model.run(|| -> Result<_> {
                let mut seqs: Vec<SeqInput<'_>> = heads
                    .iter()
                    .zip(caches.iter_mut())
                    .filter(|(h, _)| !h.is_empty())
                    .map(|(tokens, cache)| SeqInput { tokens, cache })
                    .collect();
                transformer.forward_last_logits(&mut seqs)?;
                let mut seqs: Vec<SeqInput<'_>> = tails
                    .iter()
                    .zip(caches.iter_mut())
                    .map(|(tokens, cache)| SeqInput { tokens, cache })
                    .collect();
                transformer.forward_batch(&mut seqs, &opts)
            })?;
            self.forward_s += t.elapsed().as_secs_f64();
            self.sequences += group.len();
            for o in outputs {
                let logits = o.logits.flatten_all()?.to_vec1::<f32>()?;
                let vocab = self.model.config().vocab_size;
                let rows: Vec<&[f32]> = logits.chunks_exact(vocab).collect();
                let lp = self
                    .answer
                    .iter()
                    .enumerate()
                    .map(|(j, &id)| {
                        rows.get(j)
                            .map(|row| log_softmax_at(row, id as usize))
                            .ok_or_else(|| Error::invalid("forward", "fewer logits rows than answer tokens"))
                    })
                    .collect::<Result<Vec<f64>>>()?;
                out.push(lp);
            }
        }
        Ok(out)
    }
}
