//! Attention-based attribution from the forward hooks: the last layer's attention weights
//! (mean over heads) from the position that predicts each answer token to each unit's tokens,
//! and attention rollout (Abnar & Zuidema, 2020: per layer the head-mean attention mixed half
//! and half with the identity for the residual stream, multiplied through the layers).

use crate::error::{Error, Result};
use crate::model::{ForwardOptions, SeqInput};
use crate::Model;

/// Most bytes the attention maps of one explanation may take (layers × heads × tokens²).
pub const MAX_ATTENTION_BYTES: usize = 1 << 30;

/// Per unit (`units[u]`: its prompt positions) and answer token: the attention score.
pub fn attention(
    model: &Model,
    prompt: &[u32],
    answer: &[u32],
    units: &[Vec<usize>],
    rollout: bool,
) -> Result<Vec<Vec<f64>>> {
    if answer.is_empty() {
        return Err(Error::invalid("target", "the answer to explain has no tokens"));
    }
    let cfg = model.config();
    let mut seq: Vec<u32> = prompt.to_vec();
    seq.extend_from_slice(&answer[..answer.len() - 1]);
    let n = seq.len();
    let bytes = cfg
        .n_layers
        .saturating_mul(cfg.n_heads)
        .saturating_mul(n)
        .saturating_mul(n)
        .saturating_mul(4);
    if bytes > MAX_ATTENTION_BYTES {
        return Err(Error::invalid(
            "method",
            format!(
                "attention maps of {n} tokens would take {} MiB (at most {} MiB): use a perturbation method",
                bytes >> 20,
                MAX_ATTENTION_BYTES >> 20
            ),
        ));
    }
    let opts = ForwardOptions {
        attentions: true,
        ..Default::default()
    };
    let mut cache = model.transformer().new_cache();
    let out = model.run(|| {
        model.transformer().forward_batch(
            &mut [SeqInput {
                tokens: &seq,
                cache: &mut cache,
            }],
            &opts,
        )
    })?;
    let maps = &out
        .first()
        .ok_or_else(|| Error::invalid("forward", "no output"))?
        .attentions;
    // Per layer, the head-mean map [n, n] (row = query position).
    let mut layers: Vec<Vec<f64>> = Vec::with_capacity(maps.len());
    for m in maps {
        let (heads, rows, cols) = m.dims3()?;
        if rows != n || cols != n {
            return Err(Error::invalid("forward", "attention map of an unexpected shape"));
        }
        let v = m.flatten_all()?.to_vec1::<f32>()?;
        let mut mean = vec![0f64; n * n];
        for h in 0..heads {
            for (acc, &p) in mean.iter_mut().zip(&v[h * n * n..(h + 1) * n * n]) {
                *acc += f64::from(p);
            }
        }
        mean.iter_mut().for_each(|x| *x /= heads as f64);
        layers.push(mean);
    }
    let last = layers
        .last()
        .ok_or_else(|| Error::invalid("forward", "no attention maps"))?;
    let mut per_position = Vec::with_capacity(answer.len());
    for j in 0..answer.len() {
        let row = prompt.len() - 1 + j;
        let weights = if rollout {
            // r ← r · (½A + ½I), from the last layer down.
            let mut r = vec![0f64; n];
            r[row] = 1.0;
            for a in layers.iter().rev() {
                let mut next = vec![0f64; n];
                for (q, &rq) in r.iter().enumerate() {
                    if rq == 0.0 {
                        continue;
                    }
                    next[q] += 0.5 * rq;
                    for (p, &w) in a[q * n..q * n + q + 1].iter().enumerate() {
                        next[p] += 0.5 * rq * w;
                    }
                }
                r = next;
            }
            r
        } else {
            last[row * n..(row + 1) * n].to_vec()
        };
        per_position.push(weights);
    }
    Ok(units
        .iter()
        .map(|positions| {
            per_position
                .iter()
                .map(|w| positions.iter().map(|&p| w[p]).sum())
                .collect()
        })
        .collect())
}
