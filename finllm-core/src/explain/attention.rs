//! Attention-based attribution from the forward hooks: one layer's attention weights (mean over
//! heads; the last layer unless asked) from the position that predicts each answer token to each
//! unit's tokens, the same for every layer (the per-layer profile of the target),
//! and attention rollout (Abnar & Zuidema, 2020: per layer the head-mean attention mixed half
//! and half with the identity for the residual stream, multiplied through the layers).

use crate::error::{Error, Result};
use crate::model::{ForwardOptions, SeqInput};
use crate::Model;

/// Most bytes the attention maps of one explanation may take (layers × heads × tokens²).
pub const MAX_ATTENTION_BYTES: usize = 1 << 30;

/// `layer` names one of `n_layers` layers, and is unset for rollout.
pub fn check_layer(n_layers: usize, rollout: bool, layer: Option<usize>) -> Result<()> {
    if let Some(l) = layer.filter(|&l| l >= n_layers) {
        return Err(Error::invalid(
            "layer",
            format!("{l}: the model has layers 0..{n_layers}"),
        ));
    }
    if rollout && layer.is_some() {
        return Err(Error::invalid(
            "layer",
            "rollout runs through every layer; leave the layer unset",
        ));
    }
    Ok(())
}

/// Attention scores of one explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct AttentionScores {
    /// `[unit][answer token]`: the chosen layer's (or the rollout's) attention score.
    pub matrix: Vec<Vec<f64>>,
    /// `[layer][unit]`: each layer's head-mean attention from the target's predicting positions
    /// to the unit, summed over the target's tokens.
    pub per_layer: Vec<Vec<f64>>,
    /// The layer `matrix` comes from (`None` for rollout, which spans them all).
    pub layer: Option<usize>,
}

/// Per unit (`units[u]`: its prompt positions) and answer token: the attention score, from
/// `layer` (`None`: the last) or by rollout; and every layer's scores for the `target` tokens.
pub fn attention(
    model: &Model,
    prompt: &[u32],
    answer: &[u32],
    units: &[Vec<usize>],
    rollout: bool,
    layer: Option<usize>,
    target: std::ops::Range<usize>,
) -> Result<AttentionScores> {
    if answer.is_empty() {
        return Err(Error::invalid("target", "the answer to explain has no tokens"));
    }
    let cfg = model.config();
    if let Some(l) = layer.filter(|&l| l >= cfg.n_layers) {
        return Err(Error::invalid(
            "layer",
            format!("{l}: the model has layers 0..{}", cfg.n_layers),
        ));
    }
    if rollout && layer.is_some() {
        return Err(Error::invalid(
            "layer",
            "rollout runs through every layer; leave the layer unset",
        ));
    }
    if target.start >= target.end || target.end > answer.len() {
        return Err(Error::invalid("target_tokens", "not a range of the answer's tokens"));
    }
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
    let chosen_layer = layer.unwrap_or(layers.len().saturating_sub(1));
    let last = layers
        .get(chosen_layer)
        .ok_or_else(|| Error::invalid("forward", "no attention maps"))?;
    // Each layer's attention from the target's predicting positions to each unit.
    let per_layer = layers
        .iter()
        .map(|a| {
            units
                .iter()
                .map(|positions| {
                    target
                        .clone()
                        .map(|j| {
                            let row = prompt.len() - 1 + j;
                            positions.iter().map(|&p| a[row * n + p]).sum::<f64>()
                        })
                        .sum()
                })
                .collect()
        })
        .collect();
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
    let matrix = units
        .iter()
        .map(|positions| {
            per_position
                .iter()
                .map(|w| positions.iter().map(|&p| w[p]).sum())
                .collect()
        })
        .collect();
    Ok(AttentionScores {
        matrix,
        per_layer,
        layer: (!rollout).then_some(chosen_layer),
    })
}
