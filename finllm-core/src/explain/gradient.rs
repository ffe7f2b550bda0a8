//! Gradient methods: saliency, input × gradient and integrated gradients with respect to the
//! input embeddings, by candle's autograd on a dense f32 copy of the served model's weights
//! (the quantized blocks dequantized: the same weights, in full precision; the result's
//! parameters say so).
//!
//! The target is the summed log-probability of the target answer tokens. Integrated gradients
//! take the straight path from a baseline in which every unit's tokens have the mean embedding
//! (of the whole vocabulary) to the real input, with the midpoint rule over `steps` points;
//! completeness (the attributions sum to f(input) − f(baseline)) is reported with each result.

use std::ops::Range;

use candle_core::{Device, Tensor, Var, D};

use crate::error::{Error, Result};
use crate::llm::ModelSource;
use crate::model::{Backend, Transformer};
use crate::Model;

/// A gradient method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The L2 norm of the gradient at the input, summed over a unit's tokens.
    Saliency,
    /// The input embedding minus the baseline's, dotted with the gradient at the input, summed
    /// over a unit's tokens.
    InputXGradient,
    /// Integrated gradients from the mean-embedding baseline, `steps` midpoints.
    Integrated { steps: usize },
}

/// What a gradient attribution reports besides the scores.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GradientReport {
    /// Where the gradients came from.
    pub weights: String,
    /// f(input): the target's log-probability through the dense copy.
    pub target_logprob: f64,
    /// Integrated gradients: f(baseline), the sum of the attributions, and
    /// `|sum − (f(input) − f(baseline))| / |f(input) − f(baseline)|`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_logprob: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution_sum: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completeness_error: Option<f64>,
    /// Integrated gradients: the completeness error of the first `steps` equal cells alone,
    /// before refinement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uniform_completeness_error: Option<f64>,
    /// Gradient evaluations (for integrated gradients, after refinement).
    pub steps: usize,
}

/// Refine integrated gradients' path until the attributions sum to within this fraction of
/// f(input) − f(baseline).
pub const REFINE_TOLERANCE: f64 = 0.01;

/// At most this many times the requested steps are spent on refinement.
pub const MAX_REFINE_FACTOR: usize = 4;

/// A cell of the integration path `[a, b]`: f at its ends and the per-position contributions
/// of its midpoint (gradient · δ × width).
struct Cell {
    a: f64,
    b: f64,
    fa: f64,
    fb: f64,
    sum: Vec<f64>,
}

impl Cell {
    /// How far the cell's attributions are from its exact change in f.
    fn miss(&self) -> f64 {
        (self.sum.iter().sum::<f64>() - (self.fb - self.fa)).abs()
    }
}

/// A dense f32 copy of `model` for gradients (loaded again from its file on the candle CPU
/// backend, every matrix dequantized).
pub fn dense_copy(model: &Model) -> Result<Transformer> {
    let backend = Backend::Candle(Device::Cpu);
    let t = match model.source() {
        ModelSource::Gguf(file) => Transformer::from_gguf_on(file, &backend)?,
        ModelSource::Safetensors(dir) => Transformer::from_safetensors_on(dir, &backend)?,
    };
    t.into_dense()
}

/// Most sequence positions one batched forward/backward holds (activations for the backward
/// pass grow with it).
const MAX_BATCH_POSITIONS: usize = 512;

/// Per unit (`units[u]`: its prompt positions), the attribution of the target answer tokens'
/// summed log-probability.
pub fn attribute(
    dense: &Transformer,
    prompt: &[u32],
    answer: &[u32],
    target: Range<usize>,
    units: &[Vec<usize>],
    kind: Kind,
    batch: usize,
) -> Result<(Vec<f64>, GradientReport)> {
    if answer.is_empty() || target.is_empty() || target.end > answer.len() {
        return Err(Error::invalid("target", "no answer tokens to explain"));
    }
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(&answer[..answer.len() - 1]);
    let t = seq.len();
    let input = dense.embeddings(&seq)?; // [t, h]
                                         // Baseline: unit tokens replaced by the mean embedding (a neutral token; the zero vector
                                         // is a poor baseline under RMS norm, which is flat away from zero and steep next to it, so
                                         // a path from zero puts most of the change into its first half percent), everything else
                                         // (BOS, the template, the answer) as it is.
                                         //
                                         // The sequence's first position stays as it is too: the model makes it an attention sink,
                                         // and moving its embedding moves every later position's attention at once, a near-jump
                                         // that no affordable number of steps integrates (a first word in that position gets no
                                         // gradient attribution; BOS or a chat template's first token normally hold it).
    let mut in_unit = vec![0f32; t];
    for &p in units.iter().flatten() {
        if p < prompt.len() && p > 0 {
            in_unit[p] = 1.0;
        }
    }
    let unit_mask = Tensor::from_vec(in_unit.clone(), (t, 1), &Device::Cpu)?;
    let keep = Tensor::from_vec(
        in_unit.iter().map(|u| 1.0 - u).collect::<Vec<f32>>(),
        (t, 1),
        &Device::Cpu,
    )?;
    let mean = dense.mean_embedding()?.unsqueeze(0)?;
    let baseline = (input.broadcast_mul(&keep)? + unit_mask.broadcast_mul(&mean)?)?;
    let delta = (&input - &baseline)?;
    // One-hot rows selecting each target token's log-probability.
    let vocab = dense.config().vocab_size;
    let rows: Vec<usize> = target.clone().map(|j| prompt.len() - 1 + j).collect();
    let mut onehot = vec![0f32; rows.len() * vocab];
    for (i, j) in target.clone().enumerate() {
        onehot[i * vocab + answer[j] as usize] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, (rows.len(), vocab), &Device::Cpu)?;
    // f for each batch element, `[b]`.
    let f = |x: &Tensor| -> Result<Tensor> {
        let picked = dense.forward_embeddings(x, &rows)?; // [b, n, vocab]
        let max = picked.max_keepdim(D::Minus1)?.detach();
        let shifted = picked.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let logp = shifted.broadcast_sub(&lse)?;
        Ok(logp.broadcast_mul(&onehot)?.sum(D::Minus1)?.sum(D::Minus1)?)
    };
    let chunk = batch.clamp(1, (MAX_BATCH_POSITIONS / t.max(1)).max(1));
    // Sum of the gradients at the given interpolation points α (each `[t, h]`).

    // Gradients at the given interpolation points, `[b, t, h]`.
    let grads_at = |alphas: &[f64]| -> Result<Tensor> {
        let xs = alphas
            .iter()
            .map(|&a| (&baseline + (&delta * a)?).map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
        let var = Var::from_tensor(&Tensor::stack(&xs, 0)?)?;
        let total = f(var.as_tensor())?.sum_all()?;
        let grads = total.backward()?;
        grads
            .get(var.as_tensor())
            .cloned()
            .ok_or_else(|| Error::invalid("gradient", "no gradient reached the input"))
    };
    let scalar = |v: &Tensor| -> Result<f64> { Ok(f64::from(v.to_vec1::<f32>()?[0])) };
    let target_logprob = scalar(&f(&input.unsqueeze(0)?)?)?;
    let per_position: Vec<f64>;
    let mut report = GradientReport {
        weights: "dense f32 copy of the served weights (quantized blocks dequantized)".into(),
        target_logprob,
        baseline_logprob: None,
        attribution_sum: None,
        completeness_error: None,
        uniform_completeness_error: None,
        steps: 1,
    };
    match kind {
        Kind::Saliency => {
            let g = grads_at(&[1.0])?.squeeze(0)?;
            per_position = g
                .sqr()?
                .sum(D::Minus1)?
                .sqrt()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect();
        }
        // Relative to the baseline, (x − x′)·∇f(x): one step of integrated gradients, which
        // keeps the sign meaningful where embeddings share a large common component.
        Kind::InputXGradient => {
            let g = grads_at(&[1.0])?.squeeze(0)?;
            per_position = (g * &delta)?
                .sum(D::Minus1)?
                .to_vec1::<f32>()?
                .into_iter()
                .map(f64::from)
                .collect();
        }
        Kind::Integrated { steps } => {
            let steps = steps.max(1);
            let delta_rows = delta.clone();
            // Per interpolation point: its per-position contribution g(α)·δ, `[t]`.
            let contributions = |alphas: &[f64]| -> Result<Vec<Vec<f64>>> {
                let mut out = Vec::with_capacity(alphas.len());
                for group in alphas.chunks(chunk) {
                    let g = grads_at(group)?; // [b, t, h]
                    let c = g.broadcast_mul(&delta_rows.unsqueeze(0)?)?.sum(D::Minus1)?; // [b, t]
                    for row in c.to_vec2::<f32>()? {
                        out.push(row.into_iter().map(f64::from).collect());
                    }
                }
                Ok(out)
            };
            // f at the given α, forward only.
            let values = |alphas: &[f64]| -> Result<Vec<f64>> {
                let mut out = Vec::with_capacity(alphas.len());
                for group in alphas.chunks(chunk) {
                    let xs = group
                        .iter()
                        .map(|&a| (&baseline + (&delta * a)?).map_err(Error::from))
                        .collect::<Result<Vec<_>>>()?;
                    out.extend(f(&Tensor::stack(&xs, 0)?)?.to_vec1::<f32>()?.into_iter().map(f64::from));
                }
                Ok(out)
            };
            // Cells of the path, each with its midpoint's contribution times its width. The
            // midpoint rule over `steps` equal cells first; then, while the attributions miss
            // f(input) − f(baseline) by more than REFINE_TOLERANCE, the cells whose own sums
            // miss their own change in f the most (f at cell ends is exact) are halved, a batch
            // of them per round, up to
            // MAX_REFINE_FACTOR × steps gradient evaluations: sharp transitions along the path
            // (attention switching between tokens) get the points they need.
            let edges: Vec<f64> = (0..=steps).map(|k| k as f64 / steps as f64).collect();
            let f_edges = values(&edges)?;
            let mids: Vec<f64> = (0..steps).map(|k| (k as f64 + 0.5) / steps as f64).collect();
            let mut cells: Vec<Cell> = contributions(&mids)?
                .into_iter()
                .enumerate()
                .map(|(k, c)| {
                    let w = 1.0 / steps as f64;
                    Cell {
                        a: edges[k],
                        b: edges[k + 1],
                        fa: f_edges[k],
                        fb: f_edges[k + 1],
                        sum: c.iter().map(|v| v * w).collect(),
                    }
                })
                .collect();
            let (base, top) = (f_edges[0], f_edges[steps]);
            let gap = top - base;
            let total = |cells: &[Cell]| -> f64 { cells.iter().map(|c| c.sum.iter().sum::<f64>()).sum() };
            let relative = |sum: f64| if gap == 0.0 { 0.0 } else { (sum - gap).abs() / gap.abs() };
            report.uniform_completeness_error = Some(relative(total(&cells)));
            let mut used = steps;
            // Each round halves the cells that miss the most, as many as fill one batch of
            // gradient evaluations (two per cell), within the budget.
            let per_round = (chunk / 2).max(1);
            while relative(total(&cells)) > REFINE_TOLERANCE && used + 2 <= MAX_REFINE_FACTOR * steps {
                let room = (MAX_REFINE_FACTOR * steps - used) / 2;
                let mut order: Vec<usize> = (0..cells.len()).collect();
                order.sort_by(|&i, &j| cells[j].miss().total_cmp(&cells[i].miss()));
                order.truncate(per_round.min(room));
                // Splice from the back so that the indices still to come stay valid.
                order.sort_unstable_by(|a, b| b.cmp(a));
                let mids: Vec<f64> = order.iter().map(|&i| 0.5 * (cells[i].a + cells[i].b)).collect();
                let f_mids = values(&mids)?;
                let quarters: Vec<f64> = order
                    .iter()
                    .zip(&mids)
                    .flat_map(|(&i, &m)| [0.5 * (cells[i].a + m), 0.5 * (m + cells[i].b)])
                    .collect();
                let halves = contributions(&quarters)?;
                for (k, &i) in order.iter().enumerate() {
                    let Cell { a, b, fa, fb, .. } = cells[i];
                    let (m, fm) = (mids[k], f_mids[k]);
                    let w = 0.5 * (b - a);
                    let cell = |a, b, fa, fb, c: &[f64]| Cell {
                        a,
                        b,
                        fa,
                        fb,
                        sum: c.iter().map(|v| v * w).collect(),
                    };
                    let left = cell(a, m, fa, fm, &halves[2 * k]);
                    let right = cell(m, b, fm, fb, &halves[2 * k + 1]);
                    cells.splice(i..=i, [left, right]);
                }
                used += 2 * order.len();
            }
            per_position = (0..t).map(|p| cells.iter().map(|c| c.sum[p]).sum()).collect();
            let sum: f64 = units
                .iter()
                .flatten()
                .filter(|&&p| p < t)
                .map(|&p| per_position[p])
                .sum();
            report.target_logprob = top;
            report.baseline_logprob = Some(base);
            report.attribution_sum = Some(sum);
            report.completeness_error = Some(relative(sum));
            report.steps = used;
        }
    }
    let scores = units
        .iter()
        .map(|ps| ps.iter().filter(|&&p| p < t).map(|&p| per_position[p]).sum())
        .collect();
    Ok((scores, report))
}
