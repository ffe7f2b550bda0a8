//! Serving benchmark of the engine (`finllm bench --concurrency N`): aggregate decode speed of N
//! concurrent streams, and time to first token of prompts arriving at a steady rate while N
//! streams run, against the same prompt's on an idle engine.

use std::time::{Duration, Instant};

use super::{Engine, Job, Prompt, RequestStream};
use crate::bench::{peak_rss_mb, prompt_ids_from};
use crate::error::{Error, Result};
use crate::generate::GenerateParams;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ServeBenchConfig {
    /// Streams running together.
    pub concurrency: usize,
    /// Prompt tokens of each stream.
    pub prompt_tokens: usize,
    /// Tokens each stream generates (end-of-sequence ignored).
    pub gen_tokens: usize,
    /// Requests arriving one after another while the streams run; their time to first token
    /// is measured.
    pub probes: usize,
    /// Prompt tokens of each probe.
    pub probe_prompt_tokens: usize,
    /// Time between two probes' arrivals.
    pub probe_interval: Duration,
    /// Leading tokens every probe prompt has in common (a system prompt, say); 0 for none.
    /// The engine's prefix cache holds them before the measurements start.
    pub shared_prefix_tokens: usize,
}

impl Default for ServeBenchConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            prompt_tokens: 64,
            gen_tokens: 128,
            probes: 16,
            probe_prompt_tokens: 64,
            probe_interval: Duration::from_millis(250),
            shared_prefix_tokens: 0,
        }
    }
}

/// What was measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServeBenchResult {
    pub concurrency: usize,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Tokens per second of all streams together, over the window in which every stream was
    /// decoding (from the last stream's first token to the first stream's last).
    pub aggregate_decode_tok_s: f64,
    /// From submitting the streams to the last one's end.
    pub makespan_ms: f64,
    /// Median over streams of their milliseconds per token after the first.
    pub tpot_p50_ms: f64,
    /// Time to first token of the probes (arriving while `concurrency` streams run).
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    /// A probe prompt's time to first token on the idle engine (median of five).
    pub ttft_idle_ms: f64,
    pub probes: usize,
    pub probe_prompt_tokens: usize,
    pub shared_prefix_tokens: usize,
    /// Probe prompt tokens the engine read from its prefix cache, per probe (mean over the idle
    /// and loaded probes).
    pub prefix_hit_tokens_per_probe: f64,
    /// One of the running streams cancelled under load: milliseconds until its KV reservation
    /// was back in the budget, and the forward steps the engine finished in between.
    pub cancel_freed_ms: f64,
    pub cancel_freed_steps: u64,
    pub threads: usize,
    pub max_running: usize,
    pub step_tokens: usize,
    pub peak_rss_mb: f64,
}

/// Event arrival times of one stream read to its end.
fn drain(stream: RequestStream, submitted: Instant) -> Result<Vec<Instant>> {
    let mut times = Vec::new();
    for event in stream {
        event?;
        times.push(Instant::now());
    }
    if times.is_empty() {
        return Err(Error::Engine {
            reason: format!(
                "a benchmark stream generated nothing ({:?} after submit)",
                submitted.elapsed()
            ),
        });
    }
    Ok(times)
}

fn request(ids: Vec<u32>, max_tokens: usize) -> Job {
    Job {
        prompt: Prompt::Ids(ids),
        params: GenerateParams {
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        },
        deadline: None,
    }
}

/// Milliseconds to the first token of one probe.
fn probe_ttft(engine: &Engine, ids: Vec<u32>) -> Result<f64> {
    let start = Instant::now();
    let mut stream = engine.submit(request(ids, 1))?;
    match stream.next() {
        Some(Ok(_)) => Ok(start.elapsed().as_secs_f64() * 1e3),
        Some(Err(e)) => Err(e),
        None => Err(Error::Engine {
            reason: "a probe ended without a token".into(),
        }),
    }
}

/// Nearest-rank quantile of a sorted slice.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Run the benchmark on `engine` (which should be idle).
pub fn run(engine: &Engine, cfg: &ServeBenchConfig) -> Result<ServeBenchResult> {
    if cfg.concurrency == 0 || cfg.prompt_tokens == 0 || cfg.gen_tokens < 2 || cfg.probe_prompt_tokens == 0 {
        return Err(Error::invalid(
            "bench",
            "concurrency and prompt tokens must be at least 1, gen_tokens at least 2",
        ));
    }
    if cfg.shared_prefix_tokens >= cfg.probe_prompt_tokens {
        return Err(Error::invalid(
            "bench",
            "the shared prefix must be shorter than the probe prompts",
        ));
    }
    let model = engine.model();
    // Distinct prompts (offsets into the text) of equal length.
    let prompt = |i: usize, n: usize| prompt_ids_from(model, n, 7 * i);
    // Probe prompts: the shared prefix, then a distinct rest.
    let shared = prompt(5000, cfg.shared_prefix_tokens)?;
    let probe = |i: usize| -> Result<Vec<u32>> {
        Ok([shared.clone(), prompt(i, cfg.probe_prompt_tokens - shared.len())?].concat())
    };
    // Warm-up (two probe-like requests put the shared prefix in the cache), then the idle
    // time to first token of a probe prompt.
    engine.generate(request(prompt(999, cfg.prompt_tokens)?, 4))?;
    if !shared.is_empty() {
        engine.generate(request(probe(998)?, 1))?;
        engine.generate(request(probe(997)?, 1))?;
    }
    let hits_before = engine.metrics().prefix_hit_tokens;
    // Distinct prompts, so that none is served from the cache of another beyond the shared
    // prefix.
    let mut idle: Vec<f64> = (0..5)
        .map(|k| probe_ttft(engine, probe(1000 + 13 * k)?))
        .collect::<Result<_>>()?;
    idle.sort_by(f64::total_cmp);

    // Throughput: every stream submitted at once, read on its own thread.
    let start = Instant::now();
    let streams: Vec<RequestStream> = (0..cfg.concurrency)
        .map(|i| engine.submit(request(prompt(i, cfg.prompt_tokens)?, cfg.gen_tokens)))
        .collect::<Result<_>>()?;
    let times: Vec<Vec<Instant>> = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .map(|st| s.spawn(move || drain(st, start)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Engine {
                        reason: "a benchmark reader panicked".into(),
                    })
                })
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let end = times.iter().filter_map(|t| t.last()).max().copied().unwrap_or(start);
    let w0 = times.iter().map(|t| t[0]).max().unwrap_or(start);
    let w1 = times.iter().filter_map(|t| t.last()).min().copied().unwrap_or(end);
    let in_window = times.iter().flatten().filter(|&&t| t > w0 && t <= w1).count();
    let window = w1.saturating_duration_since(w0).as_secs_f64();
    let aggregate = if window > 0.0 {
        in_window as f64 / window
    } else {
        f64::NAN
    };
    let mut tpot: Vec<f64> = times
        .iter()
        .filter(|t| t.len() > 1)
        .map(|t| (t[t.len() - 1] - t[0]).as_secs_f64() * 1e3 / (t.len() - 1) as f64)
        .collect();
    tpot.sort_by(f64::total_cmp);

    // Latency under load: `concurrency` streams long enough to outlast the probes.
    let probe_span = cfg.probe_interval.as_secs_f64() * cfg.probes as f64;
    let per_token = tpot.get(tpot.len() / 2).copied().unwrap_or(50.0).max(1.0) / 1e3;
    let context = model.config().context_length;
    // They, a probe and the shared prefix must fit the KV budget together: past it, making room
    // evicts the prefix entry (no request reads it between probes) and a probe finds nothing
    // cached. The streams' length follows the measured speed, so the faster the engine, the
    // nearer the budget (8 streams of SmolLM2 reach its 46,603 positions below 7.04 ms a
    // token).
    let room = engine
        .kv_budget_tokens()
        .saturating_sub(cfg.probe_prompt_tokens + 1 + shared.len())
        / cfg.concurrency;
    let long = ((probe_span / per_token) as usize * 2 + 64)
        .min(context.saturating_sub(cfg.prompt_tokens + 1))
        .min(room.saturating_sub(cfg.prompt_tokens));
    let first_tokens = engine.metrics().ttft_ms.count;
    let background: Vec<RequestStream> = (0..cfg.concurrency)
        .map(|i| engine.submit(request(prompt(100 + i, cfg.prompt_tokens)?, long.max(2))))
        .collect::<Result<_>>()?;
    // The probes arrive once every stream decodes (its prompt prefilled).
    let waiting = Instant::now();
    while engine.metrics().ttft_ms.count < first_tokens + cfg.concurrency as u64 {
        if waiting.elapsed() > Duration::from_secs(600) {
            return Err(Error::Engine {
                reason: "the background streams did not start decoding".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut ttft = Vec::with_capacity(cfg.probes);
    let probes_start = Instant::now();
    for i in 0..cfg.probes {
        let due = probes_start + cfg.probe_interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        ttft.push(probe_ttft(engine, probe(200 + i)?)?);
    }
    let hits = engine.metrics().prefix_hit_tokens - hits_before;
    // Cancel one running stream and watch its reservation come back.
    let mut background = background.into_iter();
    let victim = background.next().expect("concurrency is at least 1");
    let before = engine.metrics();
    let cancelled = Instant::now();
    victim.cancel();
    let freed = loop {
        let m = engine.metrics();
        if m.kv_tokens_reserved < before.kv_tokens_reserved {
            break m;
        }
        if cancelled.elapsed() > Duration::from_secs(60) {
            return Err(Error::Engine {
                reason: "a cancelled stream's KV reservation was not freed".into(),
            });
        }
        std::thread::yield_now();
    };
    let cancel_freed_ms = cancelled.elapsed().as_secs_f64() * 1e3;
    drop(victim);
    drop(background);
    ttft.sort_by(f64::total_cmp);
    let c = engine.config();
    Ok(ServeBenchResult {
        concurrency: cfg.concurrency,
        prompt_tokens: cfg.prompt_tokens,
        gen_tokens: cfg.gen_tokens,
        aggregate_decode_tok_s: aggregate,
        makespan_ms: (end - start).as_secs_f64() * 1e3,
        tpot_p50_ms: quantile(&tpot, 0.5),
        ttft_p50_ms: quantile(&ttft, 0.5),
        ttft_p99_ms: quantile(&ttft, 0.99),
        ttft_idle_ms: quantile(&idle, 0.5),
        probes: cfg.probes,
        probe_prompt_tokens: cfg.probe_prompt_tokens,
        shared_prefix_tokens: cfg.shared_prefix_tokens,
        prefix_hit_tokens_per_probe: hits as f64 / (idle.len() + ttft.len()) as f64,
        cancel_freed_ms,
        cancel_freed_steps: freed.steps - before.steps,
        threads: model.threads(),
        max_running: c.max_running,
        step_tokens: c.step_tokens,
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
    })
}
