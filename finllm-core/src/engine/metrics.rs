//! Engine counters, gauges and latency percentiles.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Latest samples kept per latency series; percentiles are over these.
const WINDOW: usize = 8192;

/// Percentiles of one latency (milliseconds) or size series over its latest samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Samples ever recorded.
    pub count: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// A snapshot of the engine's state and history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineMetrics {
    /// Requests waiting to start.
    pub queued: usize,
    /// Requests in the running batch.
    pub running: usize,
    /// KV positions held (by running requests and shared prefixes), and the budget.
    pub kv_tokens_reserved: usize,
    pub kv_tokens_budget: usize,
    /// KV positions held by shared prefixes (part of `kv_tokens_reserved`); those nobody reads
    /// give way when a request needs the room.
    pub prefix_cached_tokens: usize,
    /// Requests accepted, finished normally (cancelled ones included), cancelled, failed
    /// (errors and deadlines), and refused at submit (busy, too large, invalid).
    pub submitted: u64,
    pub completed: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub rejected: u64,
    pub prompt_tokens: u64,
    pub generated_tokens: u64,
    /// Prompt tokens served from the shared-prefix cache instead of being prefilled.
    pub prefix_hit_tokens: u64,
    /// Forward steps run, and the time spent in them.
    pub steps: u64,
    pub busy: Duration,
    /// Steps that ran short prompts alone while other requests were decoding (their decode
    /// rows waited that one step: [`super::EngineConfig::short_prompt_tokens`]).
    pub short_prompt_steps: u64,
    /// Generated tokens per second of busy time.
    pub decode_tokens_per_s: f64,
    /// Milliseconds from submission to admission into the batch.
    pub queue_ms: Percentiles,
    /// Milliseconds from submission to the first token.
    pub ttft_ms: Percentiles,
    /// Milliseconds per output token after the first.
    pub tpot_ms: Percentiles,
    /// Requests per forward step.
    pub batch_size: Percentiles,
    pub uptime: Duration,
}

impl EngineMetrics {
    /// The Prometheus text exposition format (version 0.0.4): counters, gauges, and each
    /// latency as a summary with its P50/P95/P99 over the latest samples. Written here rather
    /// than through a metrics crate: those keep a process-global recorder or bucket histograms,
    /// while these quantiles are exact over the window and the format is a few lines.
    pub fn prometheus_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP finllm_engine_{name} {help}");
            let _ = writeln!(out, "# TYPE finllm_engine_{name} {kind}");
            let _ = writeln!(out, "finllm_engine_{name} {value}");
        };
        metric(
            "queued_requests",
            "gauge",
            "Requests waiting to start.",
            self.queued as f64,
        );
        metric(
            "running_requests",
            "gauge",
            "Requests in the running batch.",
            self.running as f64,
        );
        metric(
            "kv_tokens_reserved",
            "gauge",
            "KV cache positions held by running requests and shared prefixes.",
            self.kv_tokens_reserved as f64,
        );
        metric(
            "prefix_cached_tokens",
            "gauge",
            "KV cache positions held by shared prompt prefixes.",
            self.prefix_cached_tokens as f64,
        );
        metric(
            "kv_tokens_budget",
            "gauge",
            "KV cache positions the engine may reserve.",
            self.kv_tokens_budget as f64,
        );
        metric(
            "requests_submitted_total",
            "counter",
            "Requests accepted into the queue.",
            self.submitted as f64,
        );
        metric(
            "requests_completed_total",
            "counter",
            "Requests that ended normally (cancelled ones included).",
            self.completed as f64,
        );
        metric(
            "requests_cancelled_total",
            "counter",
            "Requests cancelled by their caller.",
            self.cancelled as f64,
        );
        metric(
            "requests_failed_total",
            "counter",
            "Requests that ended with an error (deadlines included).",
            self.failed as f64,
        );
        metric(
            "requests_rejected_total",
            "counter",
            "Requests refused at submit (busy, too large, invalid).",
            self.rejected as f64,
        );
        metric(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens of accepted requests.",
            self.prompt_tokens as f64,
        );
        metric(
            "generated_tokens_total",
            "counter",
            "Tokens generated.",
            self.generated_tokens as f64,
        );
        metric(
            "prefix_hit_tokens_total",
            "counter",
            "Prompt tokens served from the shared-prefix cache.",
            self.prefix_hit_tokens as f64,
        );
        metric("steps_total", "counter", "Forward steps run.", self.steps as f64);
        metric(
            "short_prompt_steps_total",
            "counter",
            "Steps that ran short prompts ahead of the decoding requests.",
            self.short_prompt_steps as f64,
        );
        metric(
            "busy_seconds_total",
            "counter",
            "Time spent in forward steps.",
            self.busy.as_secs_f64(),
        );
        for (name, help, p, scale) in [
            (
                "queue_seconds",
                "Time from submission to admission.",
                self.queue_ms,
                1e-3,
            ),
            (
                "time_to_first_token_seconds",
                "Time from submission to the first token.",
                self.ttft_ms,
                1e-3,
            ),
            (
                "time_per_output_token_seconds",
                "Time per output token after the first.",
                self.tpot_ms,
                1e-3,
            ),
            ("batch_size", "Requests per forward step.", self.batch_size, 1.0),
        ] {
            let _ = writeln!(
                out,
                "# HELP finllm_engine_{name} {help} Quantiles over the latest samples."
            );
            let _ = writeln!(out, "# TYPE finllm_engine_{name} summary");
            for (q, v) in [("0.5", p.p50), ("0.95", p.p95), ("0.99", p.p99)] {
                let _ = writeln!(out, "finllm_engine_{name}{{quantile=\"{q}\"}} {}", v * scale);
            }
            let _ = writeln!(out, "finllm_engine_{name}_count {}", p.count);
        }
        out
    }
}

#[derive(Default)]
struct Series {
    count: u64,
    recent: VecDeque<f64>,
}

impl Series {
    fn push(&mut self, v: f64) {
        self.count += 1;
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(v);
    }

    fn percentiles(&self) -> Percentiles {
        let mut v: Vec<f64> = self.recent.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least q of the samples at or below it.
        let rank = |q: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
            v[i]
        };
        Percentiles {
            count: self.count,
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: v.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Default)]
struct State {
    gauges: Gauges,
    submitted: u64,
    completed: u64,
    cancelled: u64,
    failed: u64,
    rejected: u64,
    prompt_tokens: u64,
    generated_tokens: u64,
    prefix_hit_tokens: u64,
    steps: u64,
    busy: Duration,
    short_prompt_steps: u64,
    queue_ms: Series,
    ttft_ms: Series,
    tpot_ms: Series,
    batch_size: Series,
}

/// How a request left the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Completed,
    Cancelled,
    Failed,
}

/// What the scheduler holds now.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Gauges {
    pub running: usize,
    pub kv_reserved: usize,
    pub prefix_cached: usize,
}

pub(super) struct Metrics {
    state: Mutex<State>,
    kv_budget: usize,
    started: Instant,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Metrics {
    pub(super) fn new(kv_budget: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            kv_budget,
            started: Instant::now(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub(super) fn submitted(&self, prompt_tokens: usize) {
        self.with(|s| {
            s.submitted += 1;
            s.prompt_tokens += prompt_tokens as u64;
        });
    }

    pub(super) fn rejected(&self) {
        self.with(|s| s.rejected += 1);
    }

    /// A request joined the batch after `queued`, with `prefix_hit` prompt positions read from
    /// a shared prefix.
    pub(super) fn admitted(&self, queued: Duration, prefix_hit: usize) {
        self.with(|s| {
            s.queue_ms.push(ms(queued));
            s.prefix_hit_tokens += prefix_hit as u64;
        });
    }

    pub(super) fn first_token(&self, since_submit: Duration) {
        self.with(|s| s.ttft_ms.push(ms(since_submit)));
    }

    /// A request ended after `generated` tokens, the first at `first` and the last at `last`.
    pub(super) fn ended(&self, outcome: Outcome, generated: usize, decode: Option<Duration>) {
        self.with(|s| {
            match outcome {
                Outcome::Completed => s.completed += 1,
                Outcome::Cancelled => {
                    s.completed += 1;
                    s.cancelled += 1;
                }
                Outcome::Failed => s.failed += 1,
            }
            if let Some(d) = decode.filter(|_| generated > 1) {
                s.tpot_ms.push(ms(d) / (generated - 1) as f64);
            }
        });
    }

    pub(super) fn step(&self, batch: usize, generated: usize, took: Duration, short_prompts_alone: bool) {
        self.with(|s| {
            s.steps += 1;
            s.short_prompt_steps += u64::from(short_prompts_alone);
            s.busy += took;
            s.generated_tokens += generated as u64;
            s.batch_size.push(batch as f64);
        });
    }

    pub(super) fn gauges(&self, gauges: Gauges) {
        self.with(|s| s.gauges = gauges);
    }

    pub(super) fn snapshot(&self, queued: usize) -> EngineMetrics {
        self.with(|s| EngineMetrics {
            queued,
            running: s.gauges.running,
            kv_tokens_reserved: s.gauges.kv_reserved,
            kv_tokens_budget: self.kv_budget,
            prefix_cached_tokens: s.gauges.prefix_cached,
            submitted: s.submitted,
            completed: s.completed,
            cancelled: s.cancelled,
            failed: s.failed,
            rejected: s.rejected,
            prompt_tokens: s.prompt_tokens,
            generated_tokens: s.generated_tokens,
            prefix_hit_tokens: s.prefix_hit_tokens,
            steps: s.steps,
            busy: s.busy,
            short_prompt_steps: s.short_prompt_steps,
            decode_tokens_per_s: if s.busy.is_zero() {
                0.0
            } else {
                s.generated_tokens as f64 / s.busy.as_secs_f64()
            },
            queue_ms: s.queue_ms.percentiles(),
            ttft_ms: s.ttft_ms.percentiles(),
            tpot_ms: s.tpot_ms.percentiles(),
            batch_size: s.batch_size.percentiles(),
            uptime: self.started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_match_a_sorted_oracle() {
        let mut s = Series::default();
        // 1..=200 shuffled by a fixed permutation (multiplication by a unit mod 201).
        for i in 1..=200u64 {
            s.push(((i * 37) % 201) as f64);
        }
        let p = s.percentiles();
        assert_eq!((p.count, p.p50, p.p95, p.p99, p.max), (200, 100.0, 190.0, 198.0, 200.0));
        assert_eq!(Series::default().percentiles(), Percentiles::default());
        // The window keeps the latest samples only.
        let mut s = Series::default();
        for i in 0..(WINDOW as u64 + 10) {
            s.push(i as f64);
        }
        let p = s.percentiles();
        assert_eq!(p.count, WINDOW as u64 + 10);
        assert_eq!(p.max, (WINDOW + 9) as f64);
        assert_eq!(p.p50, (10 + WINDOW / 2 - 1) as f64);
    }

    #[test]
    fn prometheus_text_is_well_formed() {
        let m = EngineMetrics {
            queued: 3,
            submitted: 7,
            ttft_ms: Percentiles {
                count: 5,
                p50: 12.0,
                p95: 40.0,
                p99: 50.0,
                max: 50.0,
            },
            ..Default::default()
        };
        let text = m.prometheus_text();
        assert!(text.contains("finllm_engine_queued_requests 3\n"));
        assert!(text.contains("finllm_engine_requests_submitted_total 7\n"));
        assert!(text.contains("finllm_engine_time_to_first_token_seconds{quantile=\"0.99\"} 0.05\n"));
        assert!(text.contains("finllm_engine_time_to_first_token_seconds_count 5\n"));
        // Every sample line belongs to a metric declared by a TYPE line before it.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = name.strip_suffix("_count").unwrap_or(name);
                assert!(declared.contains(base), "{line}");
                let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
                assert!(value.is_finite(), "{line}");
            }
        }
    }
}
