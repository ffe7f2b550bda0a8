//! Throughput and latency measurement shared by `finllm bench` and `benches/`.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::llm::Model;
use crate::model::transformer::argmax;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Timed repetitions; medians are reported.
    pub runs: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            prompt_tokens: 256,
            gen_tokens: 128,
            runs: 5,
        }
    }
}

/// Medians over the runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchResult {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Prompt processing plus choosing the first token.
    pub ttft_ms: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mb: f64,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub threads: usize,
    pub runs: usize,
}

/// Finance text the benchmark prompt is cut from (repeated as needed).
const TEXT: &str = "The central bank held its policy rate at 4.25% while signalling that further tightening \
remains possible if core inflation fails to moderate. Credit spreads on investment-grade corporate bonds \
narrowed by eight basis points, and the two-year Treasury yield rose to 4.61% as traders priced fewer cuts. \
Net interest margin at regional lenders compressed for a third consecutive quarter, driven by higher deposit \
costs, while loan growth slowed to 2.3% year over year. ";

/// A prompt of exactly `n` tokens for `model`.
pub fn prompt_ids(model: &Model, n: usize) -> Result<Vec<u32>> {
    let one = model.tokenize(TEXT)?;
    if one.is_empty() {
        return Err(Error::invalid(
            "model",
            "the tokenizer produced no tokens for the benchmark text",
        ));
    }
    Ok(one.iter().cycle().take(n).copied().collect())
}

/// Run the benchmark: each run prefills the prompt into a fresh cache, then decodes greedily
/// (end-of-sequence ignored so every run generates the same number of tokens).
pub fn run(model: &Model, cfg: &BenchConfig) -> Result<BenchResult> {
    if cfg.prompt_tokens == 0 || cfg.runs == 0 {
        return Err(Error::invalid("bench", "prompt_tokens and runs must be at least 1"));
    }
    let context = model.config().context_length;
    if cfg.prompt_tokens + cfg.gen_tokens > context {
        return Err(Error::ContextOverflow {
            tokens: cfg.prompt_tokens,
            max_new: cfg.gen_tokens,
            context,
        });
    }
    let prompt = prompt_ids(model, cfg.prompt_tokens)?;
    let t = model.transformer();
    let (mut prefill, mut decode, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    // One untimed warm-up run pages the weights in.
    for run in 0..=cfg.runs {
        let mut cache = t.new_cache();
        let start = Instant::now();
        let logits = model.run(|| t.forward(&prompt, &mut cache))?;
        let mut next = argmax(&logits);
        let first = start.elapsed();
        let start = Instant::now();
        for _ in 0..cfg.gen_tokens {
            let logits = model.run(|| t.forward(&[next], &mut cache))?;
            next = argmax(&logits);
        }
        let gen = start.elapsed();
        if run > 0 {
            prefill.push(cfg.prompt_tokens as f64 / first.as_secs_f64());
            ttft.push(first.as_secs_f64() * 1e3);
            if cfg.gen_tokens > 0 {
                decode.push(cfg.gen_tokens as f64 / gen.as_secs_f64());
            }
        }
    }
    Ok(BenchResult {
        prefill_tok_s: median(&mut prefill),
        decode_tok_s: median(&mut decode),
        ttft_ms: median(&mut ttft),
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
        prompt_tokens: cfg.prompt_tokens,
        gen_tokens: cfg.gen_tokens,
        threads: model.threads(),
        runs: cfg.runs,
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (Linux: `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
