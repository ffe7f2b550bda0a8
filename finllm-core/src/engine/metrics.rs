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
    /// KV positions reserved by running requests, and the budget.
    pub kv_tokens_reserved: usize,
    pub kv_tokens_budget: usize,
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
    running: usize,
    kv_reserved: usize,
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

    pub(super) fn admitted(&self, queued: Duration) {
        self.with(|s| s.queue_ms.push(ms(queued)));
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

    pub(super) fn step(&self, batch: usize, generated: usize, took: Duration, running: usize, kv_reserved: usize) {
        self.with(|s| {
            s.steps += 1;
            s.busy += took;
            s.generated_tokens += generated as u64;
            s.batch_size.push(batch as f64);
            s.running = running;
            s.kv_reserved = kv_reserved;
        });
    }

    pub(super) fn gauges(&self, running: usize, kv_reserved: usize) {
        self.with(|s| {
            s.running = running;
            s.kv_reserved = kv_reserved;
        });
    }

    pub(super) fn snapshot(&self, queued: usize) -> EngineMetrics {
        self.with(|s| EngineMetrics {
            queued,
            running: s.running,
            kv_tokens_reserved: s.kv_reserved,
            kv_tokens_budget: self.kv_budget,
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
}
