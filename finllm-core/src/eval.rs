//! Model quality measurements: the perplexity of a text, to compare a quantized model with the
//! one it was made from.

use crate::error::{Error, Result};
use crate::model::{ForwardOptions, SeqInput};
use crate::Model;

/// The perplexity of a text under a model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Perplexity {
    /// `exp(mean negative log-likelihood)` over the scored tokens.
    pub perplexity: f64,
    /// Mean negative log-likelihood in nats.
    pub mean_nll: f64,
    /// Tokens whose probability was scored (every token of a window but its first).
    pub scored_tokens: usize,
    /// Windows of `context` tokens the text was cut into (the last may be shorter).
    pub windows: usize,
    pub context: usize,
}

/// Perplexity of `text`, cut into independent windows of `context` tokens (each starts with an
/// empty KV cache, so the result does not depend on the model's context length). Log-softmax is
/// taken in f64.
pub fn perplexity(model: &Model, text: &str, context: usize) -> Result<Perplexity> {
    let ids = windowed_tokens(model, text, context, 2)?;
    let (mut nll, mut scored, mut windows) = (0f64, 0usize, 0usize);
    for window in ids.chunks(context).filter(|w| w.len() >= 2) {
        let logits = model.run(|| -> Result<Vec<f32>> {
            let mut cache = model.transformer().new_cache();
            let opts = ForwardOptions {
                all_logits: true,
                ..Default::default()
            };
            let mut out = model.transformer().forward_batch(
                &mut [SeqInput {
                    tokens: window,
                    cache: &mut cache,
                }],
                &opts,
            )?;
            let logits = out
                .pop()
                .map(|o| o.logits)
                .ok_or_else(|| Error::invalid("forward", "no output"))?;
            Ok(logits.flatten_all()?.to_vec1::<f32>()?)
        })?;
        let vocab = logits.len() / window.len();
        for (row, &next) in logits.chunks_exact(vocab).zip(&window[1..]) {
            nll -= log_softmax_at(row, next as usize);
            scored += 1;
        }
        windows += 1;
    }
    let mean_nll = nll / scored as f64;
    Ok(Perplexity {
        perplexity: mean_nll.exp(),
        mean_nll,
        scored_tokens: scored,
        windows,
        context,
    })
}

/// Calibrate importance-weighted quantization: run `text` through the model in windows of
/// `context` tokens and return, for every weight matrix, the mean square of the activations each
/// of its input columns met. Use a text other than the one the quantized model is judged on.
pub fn calibrate(model: &Model, text: &str, context: usize) -> Result<crate::tools::quantize::Importance> {
    let ids = windowed_tokens(model, text, context, 1)?;
    let mut sums = crate::model::InputStats::new();
    for window in ids.chunks(context) {
        model.run(|| model.transformer().accumulate_input_stats(window, &mut sums))?;
    }
    let tokens = ids.len();
    let columns = sums
        .into_iter()
        .map(|(name, v)| (name, v.into_iter().map(|s| (s / tokens as f64) as f32).collect()))
        .collect();
    Ok(crate::tools::quantize::Importance { columns, tokens })
}

/// The tokens of `text`, checked to be at least `min` of them, for windows of `context` tokens
/// (`min..=` the model's context).
fn windowed_tokens(model: &Model, text: &str, context: usize, min: usize) -> Result<Vec<u32>> {
    let max = model.config().context_length;
    if context < min || context > max {
        return Err(Error::invalid(
            "context",
            format!("{context} must be in {min}..={max} (the model's context)"),
        ));
    }
    let ids = model.tokenize(text)?;
    if ids.len() < min {
        return Err(Error::invalid("text", format!("needs at least {min} token(s)")));
    }
    Ok(ids)
}

/// `log softmax(row)[at]`, in f64.
pub(crate) fn log_softmax_at(row: &[f32], at: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
    let sum: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
    f64::from(row[at]) - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_the_definition() {
        let row = [1.0f32, 2.0, 3.0, -1.0];
        let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
        for (i, &v) in row.iter().enumerate() {
            assert!((log_softmax_at(&row, i) - (f64::from(v).exp() / z).ln()).abs() < 1e-12);
        }
        // Large logits do not overflow.
        assert!(log_softmax_at(&[1000.0, 0.0], 0).abs() < 1e-12);
    }
}
