//! The one request path. Every surface (Rust, C, Python, CLI) builds a [`Request`] (a prompt in
//! any form, generation parameters, an optional deadline, an optional compliance [`Guard`], and
//! who asks) and hands it to the same code here, whichever way the answer is wanted:
//!
//! - [`Request::run`]: the whole answer at once (a guarded request gets one complete audit
//!   record);
//! - [`Request::run_streaming`]: each released piece to a callback, which may stop it (a guarded
//!   request gets an opened record before the first piece and a closing one before the last);
//! - [`Request::submit`]: queued on an [`Engine`], an owned [`ResponseStream`] back at once.
//!
//! A request runs on an [`Executor`]: a [`Model`] alone (the caller's thread, one request) or an
//! [`Engine`] (one continuous batch for every caller). The guard's session (masking, output
//! filter, unmasking, audit) and the bookkeeping of the answer are the same code for both, so a
//! request's tokens, text and records do not depend on the path it took.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::chat::ChatMessage;
use crate::compliance::{Guard, GuardReport, GuardSession, RequestInfo};
use crate::engine::{CancelHandle, Engine, Job, RequestStream};
use crate::error::{Error, Result};
use crate::generate::{FinishReason, GenerateParams, Generation, TokenEvent, TokenStream};
use crate::llm::{Model, Prompt};

/// One request: what to answer, how, and under which controls.
#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub params: GenerateParams,
    /// Time allowed from submission to the last token; past it the request ends with
    /// [`Error::DeadlineExceeded`] (checked before every step, queue time included).
    pub deadline: Option<Duration>,
    /// Compliance controls: PII masking, output policy, audit record, drift.
    pub guard: Option<Arc<Guard>>,
    /// Who asks and what the prompt drew on, for the audit record.
    pub info: RequestInfo,
    /// On an engine whose queue is full: how long to wait for room before failing with
    /// [`Error::Busy`] (`None`: fail at once).
    pub queue_wait: Option<Duration>,
}

impl Request {
    /// A request for `prompt` with default parameters, no deadline and no guard.
    pub fn new(prompt: Prompt) -> Self {
        Self {
            prompt,
            params: GenerateParams::default(),
            deadline: None,
            guard: None,
            info: RequestInfo::default(),
            queue_wait: None,
        }
    }

    /// Continue raw text (special tokens parsed, no chat template).
    pub fn text(prompt: impl Into<String>) -> Self {
        Self::new(Prompt::Text(prompt.into()))
    }

    /// Answer a conversation with the model's chat template.
    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::new(Prompt::Chat(messages))
    }

    /// Continue prompt token ids.
    pub fn ids(ids: Vec<u32>) -> Self {
        Self::new(Prompt::Ids(ids))
    }

    pub fn with_params(mut self, params: GenerateParams) -> Self {
        self.params = params;
        self
    }

    /// End the request with [`Error::DeadlineExceeded`] if it has not finished `d` after
    /// submission.
    pub fn with_deadline(mut self, d: Duration) -> Self {
        self.deadline = Some(d);
        self
    }

    pub fn with_guard(mut self, guard: Arc<Guard>) -> Self {
        self.guard = Some(guard);
        self
    }

    pub fn with_info(mut self, info: RequestInfo) -> Self {
        self.info = info;
        self
    }

    /// On a full engine queue, wait up to `d` for room before failing with [`Error::Busy`].
    pub fn with_queue_wait(mut self, d: Duration) -> Self {
        self.queue_wait = Some(d);
        self
    }

    /// Run the request on `on` and return the whole answer. A guarded request writes one
    /// complete audit record, durable before this returns.
    pub fn run<'a>(self, on: impl Into<Executor<'a>>) -> Result<Response> {
        Pipeline::start(on.into(), self, false)?.into_response()
    }

    /// Run the request on `on`, calling `on_event` with each released piece (the last one
    /// carries the finish reason); return `ControlFlow::Break` to stop it (it then finishes as
    /// [`FinishReason::Cancelled`]). A guarded request streams under its audit record: the
    /// opened record is durable before the first call, the closing one before the last.
    pub fn run_streaming<'a>(
        self,
        on: impl Into<Executor<'a>>,
        mut on_event: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Response> {
        let mut pipeline = Pipeline::start(on.into(), self, true)?;
        while let Some(event) = pipeline.next_event(None) {
            let event = event.map_err(|e| e.unwrap_or_else(timeout_without_limit))?;
            if on_event(&event).is_break() && event.finish.is_none() {
                pipeline.cancel_requested = true;
            }
        }
        pipeline.into_response()
    }

    /// Start the request on `model` (on the thread that reads the stream) and return its stream.
    /// A guarded request streams under its audit record, as with
    /// [`run_streaming`](Self::run_streaming).
    pub fn stream(self, model: &Model) -> Result<ResponseStream<'_>> {
        let pipeline = Pipeline::start(Executor::Model(model), self, true)?;
        Ok(ResponseStream { pipeline, cancel: None })
    }

    /// Queue the request on `engine` and return its stream at once: [`Error::Busy`] if the
    /// queue is full (after waiting up to [`queue_wait`](Self::queue_wait) for room), or another
    /// typed error for a request that can never run there. A guarded request streams under its
    /// audit record, as with [`run_streaming`](Self::run_streaming).
    pub fn submit(self, engine: &Engine) -> Result<ResponseStream<'static>> {
        let pipeline = Pipeline::start(Executor::Engine(engine), self, true)?;
        let Pipeline {
            source: Source::Engine(stream),
            session,
            keep_steps,
            text,
            steps,
            released,
            finish,
            cancel_requested,
            done,
            failure,
        } = pipeline
        else {
            return Err(Error::Engine {
                reason: "an engine request got no engine stream".into(),
            });
        };
        // The engine's stream borrows nothing: the pipeline outlives the call.
        let cancel = Some(stream.cancel_handle());
        let pipeline = Pipeline {
            source: Source::Engine(stream),
            session,
            keep_steps,
            text,
            steps,
            released,
            finish,
            cancel_requested,
            done,
            failure,
        };
        Ok(ResponseStream { pipeline, cancel })
    }
}

/// What runs a request.
#[derive(Debug, Clone, Copy)]
pub enum Executor<'a> {
    /// The model alone, on the caller's thread, one request at a time.
    Model(&'a Model),
    /// An engine's continuous batch, shared by every caller.
    Engine(&'a Engine),
}

impl<'a> Executor<'a> {
    pub fn model(&self) -> &'a Model {
        match *self {
            Self::Model(m) => m,
            Self::Engine(e) => e.model(),
        }
    }
}

impl<'a> From<&'a Model> for Executor<'a> {
    fn from(m: &'a Model) -> Self {
        Self::Model(m)
    }
}

impl<'a> From<&'a Arc<Model>> for Executor<'a> {
    fn from(m: &'a Arc<Model>) -> Self {
        Self::Model(m)
    }
}

impl<'a> From<&'a Engine> for Executor<'a> {
    fn from(e: &'a Engine) -> Self {
        Self::Engine(e)
    }
}

/// The answer to a request.
#[derive(Debug, Clone)]
pub struct Response {
    /// What the caller sees: with a guard, `text` is filtered (and unmasked if configured) and
    /// `finish` is [`FinishReason::Blocked`] when the policy stopped the answer.
    pub generation: Generation,
    /// What the guard did, for a guarded request.
    pub guard: Option<GuardReport>,
}

/// A running request: iterate it for its released events (the last carries the finish reason),
/// or [`wait`](Self::wait) for the whole [`Response`]. A request queued on an [`Engine`]
/// ([`Request::submit`]) borrows nothing (`ResponseStream<'static>`, `Send`: hand it to any
/// thread); one on a model alone ([`Model::stream`]) runs on the thread that reads it. Dropping it
/// cancels the request.
pub struct ResponseStream<'m> {
    pipeline: Pipeline<'m>,
    /// The engine's switch, for other threads; none on a model alone.
    cancel: Option<CancelHandle>,
}

impl std::fmt::Debug for ResponseStream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("done", &self.pipeline.done)
            .finish_non_exhaustive()
    }
}

impl<'m> ResponseStream<'m> {
    /// Stop the request before its next step: the stream then ends as
    /// [`FinishReason::Cancelled`].
    pub fn cancel(&mut self) {
        if let Some(c) = &self.cancel {
            c.cancel();
        }
        self.pipeline.cancel_requested = true;
    }

    /// A handle that cancels this request from another thread (a request on an engine).
    pub fn cancel_handle(&self) -> Option<CancelHandle> {
        self.cancel.clone()
    }

    /// The next event, waiting at most `timeout`: `Ok(None)` when the stream has ended,
    /// `Err(None)` when nothing came in time, `Err(Some(error))` when the request failed.
    pub fn next_timeout(&mut self, timeout: Duration) -> std::result::Result<Option<TokenEvent>, Option<Error>> {
        self.pipeline.next_event(Some(timeout)).transpose()
    }

    /// Read the stream to its end and return the whole answer (events not read yet are part of
    /// its text).
    pub fn wait(self) -> Result<Response> {
        self.pipeline.into_response()
    }
}

impl Iterator for ResponseStream<'_> {
    type Item = Result<TokenEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        self.pipeline
            .next_event(None)
            .map(|r| r.map_err(|e| e.unwrap_or_else(timeout_without_limit)))
    }
}

/// Conveniences on a model alone: each builds a [`Request`] and runs it on the one path.
impl Model {
    /// Continue raw prompt text and return the whole answer.
    pub fn generate(&self, prompt: &str, params: &GenerateParams) -> Result<Generation> {
        Ok(Request::text(prompt).with_params(params.clone()).run(self)?.generation)
    }

    /// Continue raw prompt text, calling `on_token` as text is released; return
    /// `ControlFlow::Break` to stop.
    pub fn generate_with(
        &self,
        prompt: &str,
        params: &GenerateParams,
        on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let request = Request::text(prompt).with_params(params.clone());
        Ok(request.run_streaming(self, on_token)?.generation)
    }

    /// Answer a conversation with the chat template.
    pub fn chat(&self, messages: &[ChatMessage], params: &GenerateParams) -> Result<Generation> {
        let request = Request::chat(messages.to_vec()).with_params(params.clone());
        Ok(request.run(self)?.generation)
    }

    /// Start continuing raw prompt text; iterate the stream for the released events.
    pub fn stream(&self, prompt: &str, params: &GenerateParams) -> Result<ResponseStream<'_>> {
        Request::text(prompt).with_params(params.clone()).stream(self)
    }

    /// Start answering a conversation; iterate the stream for the released events.
    pub fn chat_stream(&self, messages: &[ChatMessage], params: &GenerateParams) -> Result<ResponseStream<'_>> {
        Request::chat(messages.to_vec())
            .with_params(params.clone())
            .stream(self)
    }
}

/// Waiting without a limit never times out; this only keeps the types honest.
fn timeout_without_limit() -> Error {
    Error::Engine {
        reason: "a wait without a time limit timed out".into(),
    }
}

/// Where a request's events come from.
enum Source<'m> {
    /// A stream on the caller's thread; the deadline is checked before each step.
    Direct {
        stream: Box<TokenStream<'m>>,
        deadline: Option<Instant>,
    },
    Engine(RequestStream),
}

/// One pull from a source.
enum Pulled {
    Event(TokenEvent),
    /// The source ended without a final event (the engine cancelled it).
    Ended,
    Failed(Error),
    TimedOut,
}

impl Source<'_> {
    fn pull(&mut self, timeout: Option<Duration>) -> Pulled {
        match self {
            Self::Direct { stream, deadline } => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Pulled::Failed(Error::DeadlineExceeded {
                        generated: stream.generated_ids().len(),
                    });
                }
                match stream.next() {
                    Some(Ok(ev)) => Pulled::Event(ev),
                    Some(Err(e)) => Pulled::Failed(e),
                    None => Pulled::Ended,
                }
            }
            Self::Engine(stream) => match timeout {
                None => match stream.next() {
                    Some(Ok(ev)) => Pulled::Event(ev),
                    Some(Err(e)) => Pulled::Failed(e),
                    None => Pulled::Ended,
                },
                Some(t) => match stream.next_timeout(t) {
                    Ok(Some(ev)) => Pulled::Event(ev),
                    Ok(None) => Pulled::Ended,
                    Err(Some(e)) => Pulled::Failed(e),
                    Err(None) => Pulled::TimedOut,
                },
            },
        }
    }

    /// Why a source that ended without a final event ended: a model's stream that had nothing
    /// to generate (`max_tokens` 0) says so; otherwise it was cancelled.
    fn ended_reason(&self) -> FinishReason {
        match self {
            Self::Direct { stream, .. } => stream.finish_reason(),
            Self::Engine(stream) => stream.generation().map(|g| g.finish),
        }
        .unwrap_or(FinishReason::Cancelled)
    }

    /// Stop generating, and for the engine read what is left so that its record arrives.
    fn stop(&mut self) {
        match self {
            Self::Direct { stream, .. } => stream.cancel(),
            Self::Engine(stream) => {
                stream.cancel();
                for _ in stream.by_ref() {}
            }
        }
    }

    /// What the model generated: prompt ids, generated ids and timings (after [`stop`]
    /// (Self::stop) or the last event).
    fn into_generation(self) -> Result<Generation> {
        match self {
            Self::Direct { stream, .. } => Ok(stream.into_generation()),
            Self::Engine(mut stream) => {
                for _ in stream.by_ref() {}
                stream.generation().cloned().ok_or_else(|| Error::Engine {
                    reason: "the request ended without a result".into(),
                })
            }
        }
    }
}

/// One request on its way: the source's events through the guard's session to the caller.
struct Pipeline<'m> {
    source: Source<'m>,
    session: Option<GuardSession>,
    keep_steps: bool,
    /// What the caller has been shown.
    text: String,
    steps: Vec<Vec<(u32, f32)>>,
    /// Events released to the caller (the generated ids are cut to this many).
    released: usize,
    finish: Option<FinishReason>,
    cancel_requested: bool,
    done: bool,
    /// Why the request failed, once it has (its error went to the caller already).
    failure: Option<String>,
}

impl<'m> Pipeline<'m> {
    fn start(on: Executor<'m>, request: Request, streaming: bool) -> Result<Self> {
        let submitted = Instant::now();
        let Request {
            prompt,
            params,
            deadline,
            guard,
            info,
            queue_wait,
        } = request;
        let model = on.model();
        let (prompt, mut session) = match &guard {
            Some(g) => {
                let (masked, session) = g.begin(model, &prompt, &params, &info)?;
                (masked, Some(session))
            }
            None => (prompt, None),
        };
        let keep_steps = params.top_logits > 0;
        let source = match Self::source(on, prompt, params, deadline, submitted, queue_wait, &mut session) {
            Ok(s) => s,
            // A request refused after its guard started is on record too.
            Err(e) => {
                return Err(match session.as_mut() {
                    Some(s) => s.fail(e),
                    None => e,
                })
            }
        };
        if streaming {
            if let Some(s) = &mut session {
                // Fail closed: nothing leaves before the request is on record.
                s.open()?;
            }
        }
        Ok(Self {
            source,
            session,
            keep_steps,
            text: String::new(),
            steps: Vec::new(),
            released: 0,
            finish: None,
            cancel_requested: false,
            done: false,
            failure: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn source(
        on: Executor<'m>,
        prompt: Prompt,
        params: GenerateParams,
        deadline: Option<Duration>,
        submitted: Instant,
        wait: Option<Duration>,
        session: &mut Option<GuardSession>,
    ) -> Result<Source<'m>> {
        match on {
            Executor::Model(m) => {
                let ids = m.encode(&prompt)?;
                if let Some(s) = session {
                    s.observe_prompt(&ids)?;
                }
                let deadline = match deadline {
                    Some(d) => Some(
                        submitted
                            .checked_add(d)
                            .ok_or_else(|| Error::invalid("deadline", "too far away"))?,
                    ),
                    None => None,
                };
                Ok(Source::Direct {
                    stream: Box::new(m.stream_ids(ids, &params)?),
                    deadline,
                })
            }
            Executor::Engine(engine) => {
                // The engine encodes the prompt itself (on this thread), so that it counts every
                // request it refuses.
                let job = Job {
                    prompt,
                    params,
                    deadline,
                };
                let stream = match wait {
                    Some(w) => engine.submit_timeout(job, w)?,
                    None => engine.submit(job)?,
                };
                if let Some(s) = session {
                    s.observe_prompt(stream.prompt_ids())?;
                }
                Ok(Source::Engine(stream))
            }
        }
    }

    /// The next released event; `Err(None)` only when `timeout` passed with nothing new.
    fn next_event(&mut self, timeout: Option<Duration>) -> Option<std::result::Result<TokenEvent, Option<Error>>> {
        if self.done {
            return None;
        }
        if self.cancel_requested {
            return self.end_early(FinishReason::Cancelled).err().map(|e| Err(Some(e)));
        }
        match self.source.pull(timeout) {
            Pulled::Event(ev) => Some(self.release(ev).map_err(Some)),
            Pulled::Ended => {
                let reason = self.source.ended_reason();
                self.end_early(reason).err().map(|e| Err(Some(e)))
            }
            Pulled::Failed(e) => Some(Err(Some(self.fail(e)))),
            Pulled::TimedOut => Some(Err(None)),
        }
    }

    /// Pass one generated event through the guard; the last one only once its record is
    /// durable.
    fn release(&mut self, mut ev: TokenEvent) -> Result<TokenEvent> {
        self.released += 1;
        if self.keep_steps {
            self.steps.push(ev.top_logits.clone());
        }
        if let Some(session) = &mut self.session {
            let filtered = session.push(&ev.text).and_then(|(text, blocked)| {
                if blocked {
                    Ok((text, Some(FinishReason::Blocked)))
                } else if ev.finish.is_some() {
                    session.finish().map(|tail| (text + &tail, ev.finish))
                } else {
                    Ok((text, None))
                }
            });
            match filtered {
                Ok((text, finish)) => {
                    ev.text = text;
                    ev.finish = finish;
                }
                Err(e) => return Err(self.fail(e)),
            }
        }
        if let Some(reason) = ev.finish {
            if reason == FinishReason::Blocked {
                self.source.stop();
            }
            // The last piece is the caller's only once the request is on record.
            self.close(reason)?;
        }
        self.text.push_str(&ev.text);
        Ok(ev)
    }

    /// The request ends before its last event (the caller stopped it, or the engine did).
    fn end_early(&mut self, reason: FinishReason) -> Result<()> {
        self.source.stop();
        let mut tail = String::new();
        if let Some(session) = &mut self.session {
            // What the filter still held (a disclaimer, a held-back placeholder) ends the answer,
            // in the record and in the text alike.
            match session.finish() {
                Ok(t) => tail = t,
                Err(e) => return Err(self.fail(e)),
            }
        }
        self.close(reason)?;
        self.text.push_str(&tail);
        Ok(())
    }

    /// The request ends with `reason`: its closing (or complete) record first.
    fn close(&mut self, reason: FinishReason) -> Result<()> {
        self.done = true;
        if let Some(session) = &mut self.session {
            if let Err(e) = session.close(reason) {
                self.failure = Some(e.to_string());
                return Err(e);
            }
        }
        self.finish = Some(reason);
        Ok(())
    }

    fn fail(&mut self, error: Error) -> Error {
        self.done = true;
        self.source.stop();
        let error = match &mut self.session {
            Some(session) => session.fail(error),
            None => error,
        };
        self.failure = Some(error.to_string());
        error
    }

    /// Read to the end and assemble the answer.
    fn into_response(mut self) -> Result<Response> {
        while let Some(event) = self.next_event(None) {
            event.map_err(|e| e.unwrap_or_else(timeout_without_limit))?;
        }
        let finish = self.finish.ok_or_else(|| Error::Engine {
            reason: format!(
                "the request failed earlier: {}",
                self.failure.as_deref().unwrap_or("it ended without a result")
            ),
        })?;
        let mut generation = self.source.into_generation()?;
        generation.ids.truncate(self.released);
        generation.timings.generated_tokens = generation.ids.len();
        generation.text = self.text;
        generation.steps = self.steps;
        generation.finish = finish;
        Ok(Response {
            generation,
            guard: self.session.map(GuardSession::into_report),
        })
    }
}
