//! `finllm._finllm`: the native half of the Python package. Thin: converts arguments and
//! errors, releases the GIL around all compute, and calls `finllm-core`.

mod compliance;
mod engine;
mod explain;
mod rag;
mod request;

use std::ops::ControlFlow;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex, OnceLock};

use finllm_core as core;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

create_exception!(
    finllm.errors,
    FinllmError,
    PyException,
    "Base class of every finllm error."
);
create_exception!(
    finllm.errors,
    ModelLoadError,
    FinllmError,
    "A model file could not be read, parsed or used."
);
create_exception!(
    finllm.errors,
    TokenizerError,
    FinllmError,
    "The tokenizer could not be built or used."
);
create_exception!(
    finllm.errors,
    ChatTemplateError,
    FinllmError,
    "The chat template failed to parse or render."
);
create_exception!(
    finllm.errors,
    InvalidArgument,
    FinllmError,
    "An argument is out of range."
);
create_exception!(
    finllm.errors,
    ContextOverflowError,
    InvalidArgument,
    "The prompt plus max_tokens exceed the model's context length."
);
create_exception!(finllm.errors, BackendError, FinllmError, "The tensor backend failed.");
create_exception!(
    finllm.errors,
    DeviceError,
    FinllmError,
    "The requested device cannot be used: no CUDA in this build, no such GPU, or no driver."
);
create_exception!(
    finllm.errors,
    PolicyError,
    FinllmError,
    "A compliance policy (TOML rule pack) is invalid or cannot be read."
);
create_exception!(
    finllm.errors,
    AuditError,
    FinllmError,
    "The audit log cannot be opened, read or appended to."
);
create_exception!(
    finllm.errors,
    AuditPoisonedError,
    AuditError,
    "An earlier write of the audit log failed, so it refuses all further records."
);

create_exception!(
    finllm.errors,
    EngineBusyError,
    FinllmError,
    "The engine's queue is full; nothing was queued. Retry later or pass wait_s."
);
create_exception!(
    finllm.errors,
    DeadlineExceededError,
    FinllmError,
    "The request's deadline passed before it finished."
);
create_exception!(
    finllm.errors,
    EngineError,
    FinllmError,
    "The engine could not serve the request (its scheduler stopped, or a batched step failed)."
);
create_exception!(
    finllm.errors,
    DocumentError,
    FinllmError,
    "A document cannot be read as text (type, UTF-8, a malformed PDF or one without a text layer, size)."
);
create_exception!(
    finllm.errors,
    IndexFileError,
    FinllmError,
    "An index file is corrupt, truncated or of another version: rebuild it."
);
create_exception!(
    finllm.errors,
    RetrieverError,
    FinllmError,
    "A retriever failed (an external store, a retrieval callback, or an index built by another embedder)."
);

/// What a call was doing: decides the exception for errors, such as a file that cannot be read,
/// that do not say by themselves which part of finllm they come from.
#[derive(Clone, Copy)]
enum Domain {
    Model,
    Policy,
    Audit,
}

/// Map an error of model loading or generation.
fn to_py(e: core::Error) -> PyErr {
    to_py_in(Domain::Model, e)
}

/// Map an error of reading or parsing a policy.
fn policy_to_py(e: core::Error) -> PyErr {
    to_py_in(Domain::Policy, e)
}

/// Map an error of opening, reading or verifying an audit log.
fn audit_to_py(e: core::Error) -> PyErr {
    to_py_in(Domain::Audit, e)
}

/// The one place core errors become Python exceptions.
fn to_py_in(domain: Domain, e: core::Error) -> PyErr {
    use core::error::ErrorKind as K;
    let msg = e.to_string();
    match e.kind() {
        K::Io => match domain {
            Domain::Model => ModelLoadError::new_err(msg),
            Domain::Policy => PolicyError::new_err(msg),
            Domain::Audit => AuditError::new_err(msg),
        },
        K::ModelFormat | K::UnsupportedModel => ModelLoadError::new_err(msg),
        K::Tokenizer => TokenizerError::new_err(msg),
        K::ChatTemplate => ChatTemplateError::new_err(msg),
        K::InvalidArgument | K::RequestTooLarge => InvalidArgument::new_err(msg),
        K::ContextOverflow => ContextOverflowError::new_err(msg),
        K::Backend => BackendError::new_err(msg),
        K::Device => DeviceError::new_err(msg),
        K::Policy => PolicyError::new_err(msg),
        K::Audit => AuditError::new_err(msg),
        K::AuditPoisoned => AuditPoisonedError::new_err(msg),
        K::Busy => EngineBusyError::new_err(msg),
        K::DeadlineExceeded => DeadlineExceededError::new_err(msg),
        K::Engine => EngineError::new_err(msg),
        K::Document => DocumentError::new_err(msg),
        K::IndexFile => IndexFileError::new_err(msg),
        K::Retriever => RetrieverError::new_err(msg),
    }
}

/// Accept `[{"role": ..., "content": ...}]` or `[(role, content)]`.
fn messages(items: Vec<Bound<'_, PyAny>>) -> PyResult<Vec<core::ChatMessage>> {
    items
        .into_iter()
        .map(|item| {
            if let Ok(d) = item.cast::<PyDict>() {
                let get = |k: &str| -> PyResult<String> {
                    d.get_item(k)?
                        .ok_or_else(|| InvalidArgument::new_err(format!("chat message is missing '{k}'")))?
                        .extract()
                };
                Ok(core::ChatMessage::new(get("role")?, get("content")?))
            } else if let Ok(t) = item.cast::<PyTuple>() {
                let (role, content): (String, String) = t.extract()?;
                Ok(core::ChatMessage::new(role, content))
            } else {
                Err(InvalidArgument::new_err(
                    "chat messages must be dicts with 'role' and 'content', or (role, content) tuples",
                ))
            }
        })
        .collect()
}

/// Escape text for `_repr_html_`.
fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The result of a generation.
#[pyclass(frozen, module = "finllm._finllm")]
#[derive(Clone)]
struct Generation {
    #[pyo3(get)]
    text: String,
    #[pyo3(get)]
    ids: Vec<u32>,
    #[pyo3(get)]
    prompt_ids: Vec<u32>,
    #[pyo3(get)]
    finish_reason: &'static str,
    #[pyo3(get)]
    steps: Vec<Vec<(u32, f32)>>,
    #[pyo3(get)]
    prefill_ms: f64,
    #[pyo3(get)]
    decode_ms: f64,
}

impl From<core::Generation> for Generation {
    fn from(g: core::Generation) -> Self {
        Self {
            text: g.text,
            ids: g.ids,
            prompt_ids: g.prompt_ids,
            finish_reason: g.finish.as_str(),
            steps: g.steps,
            prefill_ms: g.timings.prefill.as_secs_f64() * 1e3,
            decode_ms: g.timings.decode.as_secs_f64() * 1e3,
        }
    }
}

#[pymethods]
impl Generation {
    /// Generated tokens per second of decoding.
    #[getter]
    fn tokens_per_second(&self) -> f64 {
        if self.decode_ms > 0.0 {
            self.ids.len() as f64 / (self.decode_ms / 1e3)
        } else {
            0.0
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Generation(text={:?}, tokens={}, finish_reason={:?})",
            self.text,
            self.ids.len(),
            self.finish_reason
        )
    }

    fn _repr_html_(&self) -> String {
        let escaped = html_escape(&self.text);
        format!(
            "<div><pre style=\"white-space:pre-wrap\">{escaped}</pre><small>{} prompt tokens, {} generated, \
             finish: {}, prefill {:.1} ms, decode {:.1} ms</small></div>",
            self.prompt_ids.len(),
            self.ids.len(),
            self.finish_reason,
            self.prefill_ms,
            self.decode_ms
        )
    }
}

/// One streamed step.
#[pyclass(frozen, module = "finllm._finllm")]
struct Token {
    #[pyo3(get)]
    id: u32,
    #[pyo3(get)]
    text: String,
    #[pyo3(get)]
    finish_reason: Option<&'static str>,
}

#[pymethods]
impl Token {
    fn __repr__(&self) -> String {
        let finish = self.finish_reason.map_or("None".to_string(), |f| format!("{f:?}"));
        format!("Token(id={}, text={:?}, finish_reason={finish})", self.id, self.text)
    }
}

/// Builds the final result of a stream as a Python object, once the consumer reaches it.
type Finish = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// What a generation on a worker thread sends to its [`TokenIterator`].
enum Event {
    Token(core::TokenEvent),
    Done(Finish),
    Failed(core::Error),
}

/// The callback a worker job drives its generation with: forwards each event to the iterator
/// and asks to stop once the iterator is gone.
type OnToken<'a> = &'a mut dyn FnMut(&core::TokenEvent) -> ControlFlow<()>;

/// Iterator over a generation running on its own thread; dropping it stops the generation.
#[pyclass(module = "finllm._finllm")]
struct TokenIterator {
    rx: Mutex<Option<Receiver<Event>>>,
    result: OnceLock<Py<PyAny>>,
}

#[pymethods]
impl TokenIterator {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Token>> {
        let next = py.detach(|| {
            let guard = self.rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.as_ref().and_then(|rx| rx.recv().ok())
        });
        match next {
            Some(Event::Token(ev)) => Ok(Some(Token {
                id: ev.id,
                text: ev.text,
                finish_reason: ev.finish.map(core::FinishReason::as_str),
            })),
            end => {
                // The generation is over (or its thread is gone): later calls stop at once.
                *self.rx.lock().unwrap_or_else(|p| p.into_inner()) = None;
                match end {
                    Some(Event::Done(finish)) => {
                        let _ = self.result.set(finish(py)?);
                        Ok(None)
                    }
                    Some(Event::Failed(e)) => Err(to_py(e)),
                    _ => Ok(None),
                }
            }
        }
    }

    /// The final result (Generation, or GuardedGeneration for a guarded stream) once the
    /// iterator is exhausted; None before, and after an error or an early drop.
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.result.get().map(|r| r.clone_ref(py))
    }
}

/// Run `job` on its own thread, streaming its events to the returned iterator. Capacity 1: the
/// model runs at most one token ahead of the Python consumer.
fn spawn_stream(job: impl FnOnce(OnToken<'_>) -> core::Result<core::Response> + Send + 'static) -> TokenIterator {
    let (tx, rx) = sync_channel::<Event>(1);
    std::thread::spawn(move || {
        let mut forward = |ev: &core::TokenEvent| {
            // The receiver is gone when Python dropped the iterator: stop generating.
            match tx.send(Event::Token(ev.clone())) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            }
        };
        let last = match job(&mut forward) {
            Ok(r) => Event::Done(Box::new(move |py: Python<'_>| request::response(py, r))),
            Err(e) => Event::Failed(e),
        };
        let _ = tx.send(last);
    });
    TokenIterator {
        rx: Mutex::new(Some(rx)),
        result: OnceLock::new(),
    }
}

/// A loaded model. Thread-safe: several Python threads may generate from one model at once.
#[pyclass(frozen, module = "finllm._finllm")]
struct Model {
    inner: Arc<core::Model>,
}

#[pymethods]
impl Model {
    /// Load a .gguf file or an HF safetensors directory, to run on `device` ("cpu",
    /// "cuda:N" or "auto").
    #[staticmethod]
    /// `check_weights=True` scans every weight for NaN and infinity first.
    #[pyo3(signature = (path, *, threads=None, tokenizer_json=None, device="cpu", check_weights=false))]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        threads: Option<usize>,
        tokenizer_json: Option<std::path::PathBuf>,
        device: &str,
        check_weights: bool,
    ) -> PyResult<Self> {
        let opts = core::LoadOptions {
            threads,
            device: device.parse().map_err(to_py)?,
            tokenizer_json,
            progress: None,
            check_weights,
        };
        let model = py.detach(|| core::Model::load(&path, &opts)).map_err(to_py)?;
        Ok(Self { inner: Arc::new(model) })
    }

    /// Generate a continuation of raw prompt text (special tokens parsed, no chat template), or
    /// with `messages=` an answer to a conversation. With `guard=` the request runs under the
    /// guard's controls and the answer is a GuardedGeneration. Keyword options: max_tokens,
    /// temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, top_logits, request_id,
    /// caller_id, source_ids, adapter, deadline_s.
    #[pyo3(signature = (prompt=None, *, messages=None, guard=None, **options))]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: Option<String>,
        messages: Option<Vec<Bound<'_, PyAny>>>,
        guard: Option<PyRef<'_, compliance::Guard>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let request = request::build("generate", false, prompt, messages, guard, options)?;
        let model = &self.inner;
        let r = py.detach(|| request.run(model)).map_err(to_py)?;
        request::response(py, r)
    }

    /// Answer a conversation with the model's chat template: generate(messages=messages, ...).
    #[pyo3(signature = (messages, *, guard=None, **options))]
    fn chat(
        &self,
        py: Python<'_>,
        messages: Vec<Bound<'_, PyAny>>,
        guard: Option<PyRef<'_, compliance::Guard>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let request = request::build("chat", false, None, Some(messages), guard, options)?;
        let model = &self.inner;
        let r = py.detach(|| request.run(model)).map_err(to_py)?;
        request::response(py, r)
    }

    /// Like generate(), but an iterator of Token as they are produced; its .result is what
    /// generate() would return, once the iterator is exhausted. A guarded stream releases its
    /// first token only once its opened audit record is durable, and its last once the closing
    /// one is.
    #[pyo3(signature = (prompt=None, *, messages=None, guard=None, **options))]
    fn stream(
        &self,
        prompt: Option<String>,
        messages: Option<Vec<Bound<'_, PyAny>>>,
        guard: Option<PyRef<'_, compliance::Guard>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<TokenIterator> {
        let request = request::build("stream", false, prompt, messages, guard, options)?;
        let model = self.inner.clone();
        Ok(spawn_stream(move |on_token| request.run_streaming(&model, on_token)))
    }

    /// Answer `question` from the passages `retriever` (a finllm.Index, or a callable taking a
    /// query dict and returning passage dicts) finds: they go into the prompt as numbered
    /// sources; the answer comes back with its citations. Options: k, mode, context_tokens,
    /// the filter (entitlements, tickers, doc_types, sources, date_from, date_to) and those of
    /// generate().
    /// With `explain=` a method name ("surrogate", "occlusion", ...) or a dict of explain()
    /// options, the answer's `explanation` ranks its sources by how much they drove it.
    #[pyo3(signature = (question, *, retriever, guard=None, explain=None, **options))]
    fn ask(
        &self,
        py: Python<'_>,
        question: String,
        retriever: &Bound<'_, PyAny>,
        guard: Option<PyRef<'_, compliance::Guard>>,
        explain: Option<&Bound<'_, PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<rag::Answer> {
        let opts = rag::ask_options(py, "ask", false, guard, options)?;
        rag::run_ask(py, &*self.inner, retriever, &question, &opts, explain)
    }

    /// Explain an answer to `prompt` (raw text) or `messages` (a conversation, rendered with
    /// the chat template): attribute it to the prompt's units. Keyword options: method
    /// ("occlusion", "shapley", "surrogate", "attention", "rollout", "ig", "saliency",
    /// "input_x_gradient"), granularity ("token",
    /// "word", "sentence"), target (the answer to explain; default the greedy answer of
    /// max_tokens tokens), target_tokens ((start, end) of the answer), samples, held_out, seed,
    /// batch, segments ([(label, start, end)] byte ranges of the prompt's text, each a unit),
    /// layer (for "attention"). With `guard=`, the answer is a guarded request's (made under
    /// the guard for `caller_id`), the prompt as the model saw it is explained, and with an
    /// audit log the explanation is recorded after the request's record (`audit_seq`).
    #[pyo3(signature = (prompt=None, *, messages=None, guard=None, caller_id=None, **options))]
    fn explain(
        &self,
        py: Python<'_>,
        prompt: Option<String>,
        messages: Option<Vec<Bound<'_, PyAny>>>,
        guard: Option<PyRef<'_, compliance::Guard>>,
        caller_id: Option<String>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<explain::Attribution> {
        let prompt = match (prompt, messages) {
            (Some(p), None) => core::Prompt::Text(p),
            (None, Some(m)) => core::Prompt::Chat(self::messages(m)?),
            _ => return Err(InvalidArgument::new_err("give exactly one of prompt or messages")),
        };
        let how = explain::options(options)?;
        let info = core::RequestInfo {
            caller_id: caller_id.unwrap_or_default(),
            ..Default::default()
        };
        let guard = guard.map(|g| std::sync::Arc::clone(&g.inner));
        let model = &self.inner;
        let (a, seq) = py
            .detach(|| core::explain::explain_for(&**model, prompt, guard, info, &how))
            .map_err(to_py)?;
        Ok(explain::attribution(a, seq))
    }

    /// The prompt text the chat template renders for `messages`.
    fn apply_chat_template(&self, messages: Vec<Bound<'_, PyAny>>) -> PyResult<String> {
        let msgs = self::messages(messages)?;
        self.inner.apply_chat_template(&msgs).map_err(to_py)
    }

    /// Token ids of raw text (special tokens parsed, BOS as the model says).
    fn tokenize(&self, py: Python<'_>, text: String) -> PyResult<Vec<u32>> {
        py.detach(|| self.inner.tokenize(&text)).map_err(to_py)
    }

    /// Text of token ids (control tokens skipped).
    fn detokenize(&self, py: Python<'_>, ids: Vec<u32>) -> PyResult<String> {
        py.detach(|| self.inner.detokenize(&ids)).map_err(to_py)
    }

    #[getter]
    fn architecture(&self) -> &'static str {
        self.inner.config().arch.name()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.config().vocab_size
    }

    #[getter]
    fn context_length(&self) -> usize {
        self.inner.config().context_length
    }

    #[getter]
    fn threads(&self) -> usize {
        self.inner.threads()
    }

    /// Where the model runs: "cpu" or "cuda:N".
    #[getter]
    fn device(&self) -> String {
        self.inner.device()
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Model(architecture={:?}, layers={}, hidden={}, vocab={}, context={})",
            c.arch.name(),
            c.n_layers,
            c.hidden_size,
            c.vocab_size,
            c.context_length
        )
    }
}

#[pymodule]
fn _finllm(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", core::VERSION)?;
    m.add("build_info", build_info())?;
    m.add_class::<Model>()?;
    m.add_class::<Generation>()?;
    m.add_class::<Token>()?;
    m.add_class::<TokenIterator>()?;
    m.add("FinllmError", py.get_type::<FinllmError>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("TokenizerError", py.get_type::<TokenizerError>())?;
    m.add("ChatTemplateError", py.get_type::<ChatTemplateError>())?;
    m.add("InvalidArgument", py.get_type::<InvalidArgument>())?;
    m.add("ContextOverflowError", py.get_type::<ContextOverflowError>())?;
    m.add("BackendError", py.get_type::<BackendError>())?;
    m.add("PolicyError", py.get_type::<PolicyError>())?;
    m.add("AuditError", py.get_type::<AuditError>())?;
    m.add("AuditPoisonedError", py.get_type::<AuditPoisonedError>())?;
    m.add("DeviceError", py.get_type::<DeviceError>())?;
    m.add("EngineBusyError", py.get_type::<EngineBusyError>())?;
    m.add("DeadlineExceededError", py.get_type::<DeadlineExceededError>())?;
    m.add("EngineError", py.get_type::<EngineError>())?;
    m.add("DocumentError", py.get_type::<DocumentError>())?;
    m.add("IndexFileError", py.get_type::<IndexFileError>())?;
    m.add("RetrieverError", py.get_type::<RetrieverError>())?;
    engine::register(m)?;
    compliance::register(m)?;
    rag::register(m)?;
    explain::register(m)?;
    Ok(())
}

fn build_info() -> String {
    format!(
        "finllm {} ({} {}, {})",
        core::VERSION,
        std::env::consts::OS,
        std::env::consts::ARCH,
        if cfg!(debug_assertions) { "debug" } else { "release" }
    )
}
