//! `finllm bench`: one model's speed, or with `--concurrency` the engine's.

use std::path::PathBuf;
use std::sync::Arc;

use finllm_core::{LoadOptions, Model};

use crate::util::CliResult;
use crate::DEFAULT_MODEL;

/// `finllm bench`: the JSON fields match `scripts/bench_llamacpp.py`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Sequences decoded together; decode_tok_s is then their aggregate.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also measure the device's copy bandwidth and report the decode bandwidth floor (the
    /// weight bytes a decode token reads / copy bandwidth: every tensor but the rows of an
    /// untied embedding table it does not look up) and how close batch-1 decode comes to it.
    #[arg(long)]
    bandwidth: bool,
    /// Timed runs (medians are reported), after one warm-up run.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Serve N concurrent streams through the engine instead: aggregate decode tok/s of the N
    /// streams, then the time to first token of --probes requests (of --prompt-tokens tokens)
    /// arriving every --probe-interval-ms while N streams run, and on the idle engine.
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long, default_value_t = 16, requires = "concurrency")]
    probes: usize,
    #[arg(long, default_value_t = 250, requires = "concurrency")]
    probe_interval_ms: u64,
    /// Engine: most requests in the running batch (default: max(16, N)).
    #[arg(long, requires = "concurrency")]
    max_running: Option<usize>,
    /// Engine: most tokens per forward step (decode tokens plus prefill chunks).
    #[arg(long, requires = "concurrency")]
    step_tokens: Option<usize>,
    /// Every probe prompt starts with the same K tokens, which the engine's prefix cache holds
    /// (the cached-system-prompt case).
    #[arg(long, default_value_t = 0, requires = "concurrency")]
    shared_prefix_tokens: usize,
    /// Engine: prompts with at most this many tokens left to prefill run in a step of their
    /// own, ahead of the decoding streams (default: the engine's, 32; 0: off).
    #[arg(long, requires = "concurrency")]
    short_prompt_tokens: Option<usize>,
}

fn serve_bench(a: &BenchArgs, concurrency: usize) -> CliResult {
    use finllm_core::engine::{bench, Engine, EngineConfig};
    let opts = LoadOptions {
        threads: a.threads,
        device: a.device.parse()?,
        ..Default::default()
    };
    let model = Arc::new(Model::load(&a.model, &opts)?);
    let defaults = EngineConfig::default();
    let max_running = a.max_running.unwrap_or(defaults.max_running.max(concurrency + 1));
    let config = EngineConfig {
        max_running,
        step_tokens: a.step_tokens.unwrap_or(defaults.step_tokens.max(max_running)),
        // Without --shared-prefix-tokens the prefix cache is off, so that every probe's time to
        // first token is that of a whole prompt (the benchmark's prompts are cut from one text
        // and some begin alike).
        prefix_min_tokens: if a.shared_prefix_tokens == 0 {
            0
        } else {
            defaults.prefix_min_tokens
        },
        short_prompt_tokens: a.short_prompt_tokens.unwrap_or(defaults.short_prompt_tokens),
        ..defaults
    };
    let engine = Engine::new(model.clone(), config)?;
    let cfg = bench::ServeBenchConfig {
        concurrency,
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        probes: a.probes,
        probe_prompt_tokens: a.prompt_tokens,
        probe_interval: std::time::Duration::from_millis(a.probe_interval_ms),
        shared_prefix_tokens: a.shared_prefix_tokens,
    };
    let r = bench::run(&engine, &cfg)?;
    let mut v = serde_json::to_value(&r)?;
    v["engine"] = serde_json::Value::String(format!("finllm {}", finllm_core::VERSION));
    v["model"] = serde_json::Value::String(a.model.display().to_string());
    v["device"] = serde_json::Value::String(model.device());
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{} streams: aggregate decode {:.1} tok/s ({:.1} ms per token each), makespan {:.0} ms; TTFT of {}-token \
             prompts under load p50 {:.1} ms p99 {:.1} ms, idle {:.1} ms ({} shared prefix tokens, {:.1} read from \
             the prefix cache per probe); {} threads, {}",
            r.concurrency,
            r.aggregate_decode_tok_s,
            r.tpot_p50_ms,
            r.makespan_ms,
            r.probe_prompt_tokens,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.ttft_idle_ms,
            r.shared_prefix_tokens,
            r.prefix_hit_tokens_per_probe,
            r.threads,
            model.device()
        );
    }
    Ok(())
}

pub(crate) fn bench(a: &BenchArgs) -> CliResult {
    if let Some(n) = a.concurrency {
        return serve_bench(a, n);
    }
    let opts = LoadOptions {
        threads: a.threads,
        device: a.device.parse()?,
        ..Default::default()
    };
    let m = Model::load(&a.model, &opts)?;
    let cfg = finllm_core::bench::BenchConfig {
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        runs: a.runs,
        batch: a.batch,
    };
    let r = finllm_core::bench::run(&m, &cfg)?;
    let mut v = serde_json::to_value(&r)?;
    v["engine"] = serde_json::Value::String(format!("finllm {}", finllm_core::VERSION));
    v["model"] = serde_json::Value::String(a.model.display().to_string());
    v["device"] = serde_json::Value::String(m.device());
    if a.bandwidth {
        let device = m.transformer().backend().device().clone();
        let copy = m.run(|| finllm_core::bench::copy_bandwidth_gb_s(&device, 1024))?;
        let bytes = finllm_core::bench::decode_read_bytes_at(&a.model)? as f64;
        let floor_ms = bytes / (copy * 1e9) * 1e3;
        v["copy_gb_s"] = serde_json::json!(copy);
        v["decode_read_mb"] = serde_json::json!(bytes / 1e6);
        v["decode_floor_ms"] = serde_json::json!(floor_ms);
        if a.batch == 1 {
            // Fraction of the floor reached: floor time over measured time per token.
            v["floor_fraction"] = serde_json::json!(floor_ms / (1e3 / r.decode_tok_s));
        }
    }
    if a.json {
        println!("{v}");
    } else {
        println!(
            "prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens x {} sequences), TTFT {:.1} ms, peak RSS {:.0} MiB, {} threads, {}, median of {} runs",
            r.prefill_tok_s, r.prompt_tokens, r.decode_tok_s, r.gen_tokens, r.batch, r.ttft_ms, r.peak_rss_mb, r.threads, m.device(), r.runs
        );
        if a.bandwidth {
            println!(
                "copy bandwidth {:.1} GB/s, decode floor {:.2} ms per token",
                v["copy_gb_s"], v["decode_floor_ms"]
            );
        }
    }
    Ok(())
}
