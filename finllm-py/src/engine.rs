//! `finllm.Engine`: many Python threads (or asyncio tasks) served by one continuous batch.
//! Only conversion lives here; requests go through the core's one request path.

use std::sync::Mutex;

use finllm_core as core;
use finllm_core::engine as eng;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::compliance::Guard;
use crate::{request, to_py, Model, Token};

/// One model served to many callers: requests from any thread join one running batch between
/// forward steps. Thread-safe; the GIL is released while waiting.
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct Engine {
    inner: eng::Engine,
}

/// A request's stream of Token; iterate it (or `async for` it through finllm.Engine.astream).
/// Dropping it, or cancel(), stops the request.
#[pyclass(module = "finllm._finllm")]
pub(crate) struct EngineStream {
    inner: Mutex<Option<core::ResponseStream<'static>>>,
    cancel: Option<eng::CancelHandle>,
    /// The answer once the stream has ended normally.
    result: Mutex<Option<core::Response>>,
}

#[pymethods]
impl Engine {
    /// Start serving `model`. `kv_budget_tokens` / `kv_budget_bytes` bound the KV cache of all
    /// running requests together (default 1 GiB); `queue_requests` / `queue_tokens` bound what
    /// waits; `step_tokens` is the most tokens one forward step runs. Prompt beginnings of at
    /// least `prefix_min_tokens` tokens (0: off) that requests share are prefilled once and
    /// read by all of them; up to `prefix_max_entries` are kept while idle. Prompts with at most
    /// `short_prompt_tokens` tokens left to prefill (0: off) run in a step of their own, ahead
    /// of the decoding requests.
    #[new]
    #[pyo3(signature = (model, *, max_running=16, step_tokens=128, kv_budget_tokens=None, kv_budget_bytes=None,
                        queue_requests=256, queue_tokens=1048576, prefix_min_tokens=32, prefix_max_entries=16,
                        short_prompt_tokens=32))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &Model,
        max_running: usize,
        step_tokens: usize,
        kv_budget_tokens: Option<usize>,
        kv_budget_bytes: Option<u64>,
        queue_requests: usize,
        queue_tokens: usize,
        prefix_min_tokens: usize,
        prefix_max_entries: usize,
        short_prompt_tokens: usize,
    ) -> PyResult<Self> {
        let kv_budget = match (kv_budget_tokens, kv_budget_bytes) {
            (Some(_), Some(_)) => {
                return Err(to_py(core::Error::InvalidArgument {
                    name: "kv_budget_tokens".into(),
                    reason: "give kv_budget_tokens or kv_budget_bytes, not both".into(),
                }))
            }
            (Some(t), None) => eng::KvBudget::Tokens(t),
            (None, Some(b)) => eng::KvBudget::Bytes(b),
            (None, None) => eng::EngineConfig::default().kv_budget,
        };
        let config = eng::EngineConfig {
            max_running,
            step_tokens,
            kv_budget,
            queue_requests,
            queue_tokens,
            prefix_min_tokens,
            prefix_max_entries,
            short_prompt_tokens,
        };
        let inner = eng::Engine::new(model.inner.clone(), config).map_err(to_py)?;
        Ok(Self { inner })
    }

    /// Model.generate through the engine's running batch (the same arguments, the same answer);
    /// also `deadline_s`, the time the whole request may take, and `wait_s`, how long to wait
    /// for room in a full queue (default: EngineBusyError at once).
    #[pyo3(signature = (prompt=None, *, messages=None, guard=None, **options))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Option<String>,
        messages: Option<Vec<Bound<'_, PyAny>>>,
        guard: Option<PyRef<'_, Guard>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let request = request::build("generate", true, prompt, messages, guard, options)?;
        let engine = &self.inner;
        let r = py.detach(|| request.run(engine)).map_err(to_py)?;
        request::response(py, r)
    }

    /// Answer `question` from what `retriever` finds, as Model.ask, through the engine.
    #[pyo3(signature = (question, *, retriever, guard=None, explain=None, **options))]
    fn ask(
        &self,
        py: Python<'_>,
        question: String,
        retriever: &Bound<'_, PyAny>,
        guard: Option<PyRef<'_, Guard>>,
        explain: Option<&Bound<'_, PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<crate::rag::Answer> {
        let opts = crate::rag::ask_options(py, "ask", true, guard, options)?;
        crate::rag::run_ask(py, &self.inner, retriever, &question, &opts, explain)
    }

    /// Answer a conversation: generate(messages=messages, ...).
    #[pyo3(signature = (messages, *, guard=None, **options))]
    fn chat(
        &self,
        py: Python<'_>,
        messages: Vec<Bound<'_, PyAny>>,
        guard: Option<PyRef<'_, Guard>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let request = request::build("chat", true, None, Some(messages), guard, options)?;
        let engine = &self.inner;
        let r = py.detach(|| request.run(engine)).map_err(to_py)?;
        request::response(py, r)
    }

    /// Like generate(), but a stream of Token as they are produced (iterate it, or `async for`
    /// it); its .result is what generate() would return once it has ended.
    #[pyo3(signature = (prompt=None, *, messages=None, guard=None, **options))]
    fn stream(
        &self,
        py: Python<'_>,
        prompt: Option<String>,
        messages: Option<Vec<Bound<'_, PyAny>>>,
        guard: Option<PyRef<'_, Guard>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<EngineStream> {
        let request = request::build("stream", true, prompt, messages, guard, options)?;
        let engine = &self.inner;
        let stream = py.detach(|| request.submit(engine)).map_err(to_py)?;
        Ok(EngineStream {
            cancel: stream.cancel_handle(),
            inner: Mutex::new(Some(stream)),
            result: Mutex::new(None),
        })
    }

    /// Counters, gauges and latency percentiles (milliseconds) as a dict.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.inner.metrics();
        let d = PyDict::new(py);
        d.set_item("queued", m.queued)?;
        d.set_item("running", m.running)?;
        d.set_item("kv_tokens_reserved", m.kv_tokens_reserved)?;
        d.set_item("kv_tokens_budget", m.kv_tokens_budget)?;
        d.set_item("submitted", m.submitted)?;
        d.set_item("completed", m.completed)?;
        d.set_item("cancelled", m.cancelled)?;
        d.set_item("failed", m.failed)?;
        d.set_item("rejected", m.rejected)?;
        d.set_item("prompt_tokens", m.prompt_tokens)?;
        d.set_item("generated_tokens", m.generated_tokens)?;
        d.set_item("prefix_hit_tokens", m.prefix_hit_tokens)?;
        d.set_item("short_prompt_steps", m.short_prompt_steps)?;
        d.set_item("prefix_cached_tokens", m.prefix_cached_tokens)?;
        d.set_item("steps", m.steps)?;
        d.set_item("decode_tokens_per_s", m.decode_tokens_per_s)?;
        for (name, p) in [
            ("queue_ms", m.queue_ms),
            ("ttft_ms", m.ttft_ms),
            ("tpot_ms", m.tpot_ms),
            ("batch_size", m.batch_size),
        ] {
            let q = PyDict::new(py);
            q.set_item("count", p.count)?;
            q.set_item("p50", p.p50)?;
            q.set_item("p95", p.p95)?;
            q.set_item("p99", p.p99)?;
            q.set_item("max", p.max)?;
            d.set_item(name, q)?;
        }
        Ok(d)
    }
}

#[pymethods]
impl EngineStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Token>> {
        self.next_token(py)
    }

    /// `async for token in stream`: each step waits on a thread of the event loop's default
    /// executor, so the loop keeps running.
    fn __aiter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __anext__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        py.import("finllm._aio")?.call_method1("anext", (slf,))
    }

    /// The next Token, or None at the end (for callers that do not iterate).
    fn next_token(&self, py: Python<'_>) -> PyResult<Option<Token>> {
        let next = py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let stream = guard.as_mut()?;
            let next = stream.next();
            if next.is_none() {
                // Ended normally: keep the answer, release the stream.
                match guard.take().map(core::ResponseStream::wait) {
                    Some(Ok(r)) => *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(r),
                    Some(Err(e)) => return Some(Err(e)),
                    None => {}
                }
            } else if matches!(next, Some(Err(_))) {
                *guard = None;
            }
            next
        });
        match next {
            Some(Ok(ev)) => Ok(Some(Token {
                id: ev.id,
                text: ev.text,
                finish_reason: ev.finish.map(core::FinishReason::as_str),
            })),
            Some(Err(e)) => Err(to_py(e)),
            None => Ok(None),
        }
    }

    /// Stop the request before its next step; iteration then ends (result.finish_reason is
    /// "cancelled").
    fn cancel(&self) {
        self.cancel.iter().for_each(eng::CancelHandle::cancel);
    }

    /// What generate() would have returned, once the stream has ended normally; None before.
    #[getter]
    fn result(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let r = self.result.lock().unwrap_or_else(|p| p.into_inner()).clone();
        r.map(|r| request::response(py, r)).transpose()
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<EngineStream>()?;
    Ok(())
}
