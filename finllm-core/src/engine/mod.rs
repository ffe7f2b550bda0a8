//! The engine: many callers, one model, one running batch.
//!
//! An [`Engine`] is a cheap, `Send + Sync` handle over a scheduler thread that owns the running
//! batch. Callers on any thread [`submit`](Engine::submit) a [`Job`] and get back an owned
//! [`RequestStream`] (no borrow of the model): iterate it for [`TokenEvent`]s, or
//! [`wait`](RequestStream::wait) for the whole [`Generation`].
//!
//! Scheduling is continuous (iteration-level): between two forward passes, finished, cancelled
//! and expired requests leave the batch and waiting ones join it, whatever their lengths and
//! positions. Each step runs one batched forward call holding one decode token for every
//! running sequence plus chunks of prompts still being prefilled, under a per-step token budget
//! ([`EngineConfig::step_tokens`]), so a long prompt never stalls the running streams. A row's
//! numbers do not depend on the batch it runs in, so every request gets exactly the tokens it
//! would get alone.
//!
//! Memory: every admitted request reserves KV cache for its prompt plus `max_tokens` from the
//! engine's [`KvBudget`]; a request that could never fit is refused at submit
//! ([`Error::RequestTooLarge`]), others wait in the queue until enough is free. The queue is
//! bounded in requests and prompt tokens: [`Engine::submit`] fails at once with
//! [`Error::Busy`] when it is full, [`Engine::submit_timeout`] waits for room first.
//! Cancellation ([`RequestStream::cancel`], a [`CancelHandle`], or dropping the stream) and
//! deadlines ([`Job::deadline`]) are checked before every step; the request's cache is freed
//! at that step.
//!
//! Shared prefixes: prompts that begin alike (a system prompt, a retrieval preamble) share one
//! prefilled copy of their common beginning, found automatically and kept under the same KV
//! budget ([`EngineConfig::prefix_min_tokens`]); a request that starts with a cached prefix
//! prefills only the rest, and still gets exactly the tokens it would get alone.

pub mod bench;
mod metrics;
mod prefix;
mod scheduler;
mod stream;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use metrics::{EngineMetrics, Percentiles};
pub use stream::{CancelHandle, RequestStream};

use crate::error::{Error, Result};
use crate::generate::{check_request, GenerateParams, Generation, TokenEvent};
use crate::llm::Model;
pub use crate::llm::Prompt;
use metrics::Metrics;
use stream::Msg;

/// One job for the engine: a prompt and how to answer it. Callers build a
/// [`Request`](crate::Request) (which adds the compliance guard and who asks) and hand it to
/// [`crate::request`]; this is what reaches the scheduler.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub prompt: Prompt,
    pub params: GenerateParams,
    /// Time allowed from submission to the last token; past it the request ends with
    /// [`Error::DeadlineExceeded`] (checked before every step, queue time included).
    pub deadline: Option<Duration>,
}

impl Job {
    /// A job for `prompt` with default parameters and no deadline.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            params: GenerateParams::default(),
            deadline: None,
        }
    }

    /// The same request with generation parameters `params`.
    pub fn with_params(mut self, params: GenerateParams) -> Self {
        self.params = params;
        self
    }

    /// The same request with a deadline `d` after submission.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    /// A raw-text request.
    pub fn text(prompt: impl Into<String>, params: GenerateParams) -> Self {
        Self {
            prompt: Prompt::Text(prompt.into()),
            params,
            deadline: None,
        }
    }
}

/// How much KV cache the engine may hold for all its running requests together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvBudget {
    /// Cached positions (tokens), summed over requests.
    Tokens(usize),
    /// Bytes of f16 keys and values.
    Bytes(u64),
}

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Most requests in the running batch at once.
    pub max_running: usize,
    /// Most tokens one forward step runs: a decode token per running request, the rest for
    /// chunks of prompts being prefilled. Smaller keeps the running streams' time per token
    /// steady while prompts arrive; larger prefills faster.
    pub step_tokens: usize,
    /// KV cache for all running requests together.
    pub kv_budget: KvBudget,
    /// Most requests waiting to start.
    pub queue_requests: usize,
    /// Most prompt tokens waiting to start, summed over the queue.
    pub queue_tokens: usize,
    /// Share prompt beginnings at least this long (rounded down to 16 tokens) between requests:
    /// prefilled once, read by every request that starts with them. 0 turns sharing off. Only
    /// the host (kernels) backend shares; on a device backend this is ignored.
    pub prefix_min_tokens: usize,
    /// Most shared prefixes kept while no request reads them (least recently used go first);
    /// they also give way whenever a request needs their KV budget.
    pub prefix_max_entries: usize,
    /// Prompts with at most this many tokens left to prefill (a question after a cached system
    /// prompt, a chat turn) run in a step of their own, ahead of the decoding requests: their
    /// first token then waits for one small step instead of a step shared with every decode
    /// row, and the decode rows wait that one small step. Never two such steps in a row, so
    /// decoding requests move at least every other step. 0 turns this off.
    pub short_prompt_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running: 16,
            step_tokens: 128,
            kv_budget: KvBudget::Bytes(1 << 30),
            queue_requests: 256,
            queue_tokens: 1 << 20,
            prefix_min_tokens: 32,
            prefix_max_entries: 16,
            short_prompt_tokens: 32,
        }
    }
}

/// A request accepted into the queue.
struct Pending {
    ids: Vec<u32>,
    params: GenerateParams,
    deadline: Option<Instant>,
    submitted: Instant,
    cancel: Arc<AtomicBool>,
    tx: std::sync::mpsc::Sender<Msg>,
}

impl Pending {
    /// KV positions the request may need: its prompt and every token it may generate.
    fn reserve(&self) -> usize {
        self.ids.len() + self.params.max_tokens
    }
}

struct QueueState {
    waiting: VecDeque<Pending>,
    waiting_tokens: usize,
    /// False once the scheduler has stopped: nothing new is accepted.
    open: bool,
    /// Set when the last engine handle is dropped: the scheduler finishes what it holds, then
    /// stops.
    closing: bool,
}

/// What the handles and the scheduler share.
struct Shared {
    state: Mutex<QueueState>,
    /// Signalled when a request is queued or cancelled, or the engine closes.
    work: Condvar,
    /// Signalled when the queue has room again.
    room: Condvar,
    config: EngineConfig,
    /// The KV budget in positions.
    kv_tokens: usize,
    metrics: Metrics,
}

impl Shared {
    /// The queue, even if a thread panicked while holding it (its state stays consistent: every
    /// change is a single push or pop).
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The last handle's drop closes the engine.
struct Inner {
    model: Arc<Model>,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
    }
}

/// A handle to a running engine; clone it freely and share it between threads. When the last
/// handle is dropped the engine finishes the requests it holds (streams already handed out keep
/// working) and its thread ends.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.shared.config)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Start an engine for `model`.
    pub fn new(model: Arc<Model>, config: EngineConfig) -> Result<Self> {
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(Error::invalid(name, "must be at least 1"))
            } else {
                Ok(())
            }
        };
        positive("max_running", config.max_running)?;
        positive("step_tokens", config.step_tokens)?;
        positive("queue_requests", config.queue_requests)?;
        positive("queue_tokens", config.queue_tokens)?;
        if config.step_tokens < config.max_running {
            return Err(Error::invalid(
                "step_tokens",
                format!(
                    "{} is less than max_running ({}): every running request needs a token in each step",
                    config.step_tokens, config.max_running
                ),
            ));
        }
        let per_token = model.transformer().kv_bytes_per_token().max(1) as u64;
        let kv_tokens = match config.kv_budget {
            KvBudget::Tokens(n) => n,
            KvBudget::Bytes(b) => usize::try_from(b / per_token).unwrap_or(usize::MAX),
        };
        if kv_tokens == 0 {
            return Err(Error::invalid(
                "kv_budget",
                format!("holds no token at all ({per_token} bytes per token for this model)"),
            ));
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState {
                waiting: VecDeque::new(),
                waiting_tokens: 0,
                open: true,
                closing: false,
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            metrics: Metrics::new(kv_tokens),
            kv_tokens,
            config,
        });
        scheduler::spawn(model.clone(), shared.clone())?;
        Ok(Self {
            inner: Arc::new(Inner { model, shared }),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.inner.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.shared.config
    }

    /// The KV budget in cached positions.
    pub fn kv_budget_tokens(&self) -> usize {
        self.inner.shared.kv_tokens
    }

    /// Queue a request and return its stream at once; [`Error::Busy`] if the queue is full.
    /// The prompt is encoded on the calling thread, and a request that can never run is refused
    /// here with a typed error.
    pub fn submit(&self, request: Job) -> Result<RequestStream> {
        self.submit_inner(request, None)
    }

    /// As [`submit`](Self::submit), but wait up to `wait` for room in a full queue before
    /// answering [`Error::Busy`].
    pub fn submit_timeout(&self, request: Job, wait: Duration) -> Result<RequestStream> {
        self.submit_inner(request, Some(wait))
    }

    /// Submit and wait for the whole answer.
    pub fn generate(&self, request: Job) -> Result<Generation> {
        self.submit(request)?.wait()
    }

    /// Counters, gauges and latency percentiles.
    pub fn metrics(&self) -> EngineMetrics {
        let queued = self.inner.shared.lock().waiting.len();
        self.inner.shared.metrics.snapshot(queued)
    }

    fn submit_inner(&self, request: Job, wait: Option<Duration>) -> Result<RequestStream> {
        let submitted = Instant::now();
        let shared = &self.inner.shared;
        let result = self.admit(request, submitted, wait);
        if result.is_err() {
            shared.metrics.rejected();
        }
        result
    }

    fn admit(&self, request: Job, submitted: Instant, wait: Option<Duration>) -> Result<RequestStream> {
        let model = &self.inner.model;
        let shared = &self.inner.shared;
        let Job {
            prompt,
            params,
            deadline,
        } = request;
        let ids = model.encode(&prompt)?;
        params.sampling.validate()?;
        check_request(&ids, &params, model.config().context_length)?;
        let reserve = ids.len().saturating_add(params.max_tokens);
        if reserve > shared.kv_tokens {
            return Err(Error::RequestTooLarge {
                what: "KV cache (prompt + max_tokens)".into(),
                needed: reserve,
                limit: shared.kv_tokens,
            });
        }
        if ids.len() > shared.config.queue_tokens {
            return Err(Error::RequestTooLarge {
                what: "queued prompt tokens".into(),
                needed: ids.len(),
                limit: shared.config.queue_tokens,
            });
        }
        let deadline = match deadline {
            Some(d) => Some(
                submitted
                    .checked_add(d)
                    .ok_or_else(|| Error::invalid("deadline", "too far away"))?,
            ),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let prompt_ids = ids.clone();
        let pending = Pending {
            params,
            deadline,
            submitted,
            cancel: cancel.clone(),
            tx,
            ids,
        };
        let until = wait.and_then(|w| Instant::now().checked_add(w));
        let mut state = shared.lock();
        loop {
            if !state.open {
                return Err(Error::Engine {
                    reason: "the engine's scheduler has stopped".into(),
                });
            }
            let c = &shared.config;
            let fits = state.waiting.len() < c.queue_requests
                && state.waiting_tokens.saturating_add(pending.ids.len()) <= c.queue_tokens;
            if fits {
                break;
            }
            let now = Instant::now();
            match until {
                Some(until) if now < until => {
                    state = shared
                        .room
                        .wait_timeout(state, until - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                _ => {
                    return Err(Error::Busy {
                        reason: format!(
                            "{} requests ({} prompt tokens) are waiting; the queue holds {} requests and {} \
                             tokens",
                            state.waiting.len(),
                            state.waiting_tokens,
                            c.queue_requests,
                            c.queue_tokens
                        ),
                    })
                }
            }
        }
        state.waiting_tokens += pending.ids.len();
        shared.metrics.submitted(pending.ids.len());
        state.waiting.push_back(pending);
        drop(state);
        shared.work.notify_one();
        Ok(RequestStream::new(rx, prompt_ids, cancel, Arc::downgrade(shared)))
    }
}

/// Nudge the scheduler (a cancellation while it may be idle).
fn wake(shared: &Shared) {
    shared.work.notify_one();
}

/// Whether the request's caller still wants it.
fn cancelled(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Acquire)
}

/// A cloneable stop switch used by [`RequestStream`] and [`CancelHandle`].
fn cancel(flag: &AtomicBool, shared: &std::sync::Weak<Shared>) {
    flag.store(true, Ordering::Release);
    if let Some(shared) = shared.upgrade() {
        wake(&shared);
    }
}

/// An event or the end of a request, as sent to its stream.
fn send(tx: &std::sync::mpsc::Sender<Msg>, event: TokenEvent) -> bool {
    tx.send(Msg::Event(event)).is_ok()
}
