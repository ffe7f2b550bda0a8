//! Text generation: sampling, stop conditions, streaming.

pub mod sampling;
pub mod stop;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

pub use sampling::{argmax, top_logits, Rng, Sampler, SamplingParams};
pub use stop::StopMatcher;

use crate::error::{Error, Result};
use crate::model::{KvCache, Transformer};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// Everything one generation request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// Upper bound on generated tokens.
    pub max_tokens: usize,
    /// Generation ends before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Record the top-k `(id, logit)` before each generated token (0: off).
    pub top_logits: usize,
    /// Keep generating past end-of-sequence tokens until `max_tokens` or a stop string, as
    /// benchmarks do so that every run generates the same number of tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            top_logits: 0,
            ignore_eos: false,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence / end-of-turn token.
    Eos,
    /// `max_tokens` reached.
    Length,
    /// A stop string appeared.
    Stop,
    /// The caller's callback asked to stop.
    Cancelled,
    /// The output policy blocked the answer (see [`compliance::Guard`](crate::compliance::Guard)).
    Blocked,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Length => "length",
            Self::Stop => "stop",
            Self::Cancelled => "cancelled",
            Self::Blocked => "blocked",
        }
    }
}

/// One step of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// The generated token (an end-of-sequence token is reported too, with `finish`).
    pub id: u32,
    /// Text released by this step: whole characters only, never part of a stop string.
    pub text: String,
    /// Top logits before this token, when requested.
    pub top_logits: Vec<(u32, f32)>,
    /// Set on the last event.
    pub finish: Option<FinishReason>,
}

/// Timings of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt processing up to the first token's logits.
    pub prefill: Duration,
    /// Everything after the first token's logits.
    pub decode: Duration,
}

/// The finished result of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Generated tokens, without a final end-of-sequence token.
    pub ids: Vec<u32>,
    pub text: String,
    /// Per generated token (and for the EOS step): the top logits, when requested.
    pub steps: Vec<Vec<(u32, f32)>>,
    pub finish: FinishReason,
    pub timings: Timings,
}

/// The decoding state of one request, whatever runs its forward passes: sampling, stop
/// strings, incremental detokenisation and the record of what was generated. [`TokenStream`]
/// drives it for one caller; the [`engine`](crate::engine) drives many in one batch. Both feed
/// it the logits of each step and get back the step's event, so a request's tokens do not
/// depend on the path it took.
pub(crate) struct Decoding<'t> {
    tokenizer: &'t Tokenizer,
    params: GenerateParams,
    sampler: Sampler,
    decoder: StreamDecoder<'t>,
    stops: StopMatcher,
    history: Vec<u32>,
    prompt_len: usize,
    generated: usize,
    finished: Option<FinishReason>,
    text: String,
    steps: Vec<Vec<(u32, f32)>>,
    started: Instant,
    timings: Timings,
}

impl<'t> Decoding<'t> {
    /// Check the request (a prompt of at least one token that fits `context` with `max_tokens`)
    /// and set up its state; the clock of its timings starts now.
    pub(crate) fn new(
        tokenizer: &'t Tokenizer,
        prompt_ids: Vec<u32>,
        params: GenerateParams,
        context: usize,
    ) -> Result<Self> {
        let sampler = Sampler::new(params.sampling.clone())?;
        check_request(&prompt_ids, &params, context)?;
        Ok(Self {
            tokenizer,
            decoder: tokenizer.stream_decoder(),
            stops: StopMatcher::new(&params.stop),
            prompt_len: prompt_ids.len(),
            timings: Timings {
                prompt_tokens: prompt_ids.len(),
                ..Default::default()
            },
            history: prompt_ids,
            generated: 0,
            finished: (params.max_tokens == 0).then_some(FinishReason::Length),
            text: String::new(),
            steps: Vec::new(),
            started: Instant::now(),
            params,
            sampler,
        })
    }

    pub(crate) fn prompt_ids(&self) -> &[u32] {
        &self.history[..self.prompt_len]
    }

    pub(crate) fn generated_ids(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    pub(crate) fn finished(&self) -> Option<FinishReason> {
        self.finished
    }

    pub(crate) fn timings(&self) -> Timings {
        self.timings
    }

    /// The prompt's logits are ready: what came before was prefill.
    pub(crate) fn prefilled(&mut self) {
        self.timings.prefill = self.started.elapsed();
    }

    /// Sample the next token from `logits` and return the step's event. Unless the event
    /// finishes the request, the event's token is the next forward pass's input.
    pub(crate) fn step(&mut self, logits: &[f32]) -> Result<TokenEvent> {
        let result = self.step_inner(logits);
        match &result {
            Ok(event) => {
                self.text.push_str(&event.text);
                if self.params.top_logits > 0 {
                    self.steps.push(event.top_logits.clone());
                }
            }
            Err(_) => self.end(FinishReason::Cancelled),
        }
        result
    }

    fn step_inner(&mut self, logits: &[f32]) -> Result<TokenEvent> {
        // NaN weights make every logit NaN, and sampling would then pick token 0 or stop at once:
        // an empty or garbage answer that looks like success.
        // One branch-free pass (it vectorizes) over the vocabulary first; the position only
        // when something is wrong.
        let bad = |x: &f32| x.is_nan() || *x == f32::INFINITY;
        let first_bad = if logits.iter().fold(false, |any, x| any | bad(x)) {
            logits.iter().position(bad)
        } else {
            None
        };
        if let Some(i) = first_bad {
            return Err(Error::NonFinite {
                what: format!("the logit of token {i} at generation step {}", self.generated),
            });
        }
        let top = if self.params.top_logits > 0 {
            top_logits(logits, self.params.top_logits)
        } else {
            Vec::new()
        };
        let id = self.sampler.sample(logits, &self.history);
        if !self.params.ignore_eos && self.tokenizer.stop_ids().contains(&id) {
            return Ok(self.finish(id, String::new(), top, FinishReason::Eos));
        }
        self.history.push(id);
        self.generated += 1;
        let piece = self.decoder.push(id)?;
        let (text, hit) = self.stops.push(&piece);
        if hit {
            return Ok(self.finish(id, text, top, FinishReason::Stop));
        }
        if self.generated >= self.params.max_tokens {
            return Ok(self.finish(id, text, top, FinishReason::Length));
        }
        Ok(TokenEvent {
            id,
            text,
            top_logits: top,
            finish: None,
        })
    }

    fn finish(&mut self, id: u32, mut text: String, top: Vec<(u32, f32)>, reason: FinishReason) -> TokenEvent {
        if reason != FinishReason::Stop {
            // An unfinished UTF-8 character at the end is dropped, never emitted broken.
            self.decoder.finish();
            text.push_str(&self.stops.flush());
        }
        self.end(reason);
        TokenEvent {
            id,
            text,
            top_logits: top,
            finish: Some(reason),
        }
    }

    /// End the request now (a caller's cancellation, or an error) with `reason`.
    pub(crate) fn end(&mut self, reason: FinishReason) {
        if self.finished.is_some() {
            return;
        }
        self.finished = Some(reason);
        self.timings.generated_tokens = self.generated;
        self.timings.decode = self.started.elapsed().saturating_sub(self.timings.prefill);
    }

    /// The finished request (`Length` if it was never ended).
    pub(crate) fn into_generation(self) -> Generation {
        Generation {
            prompt_ids: self.prompt_ids().to_vec(),
            ids: self.generated_ids().to_vec(),
            finish: self.finished.unwrap_or(FinishReason::Length),
            text: self.text,
            steps: self.steps,
            timings: self.timings,
        }
    }
}

/// A request that can never run: an empty prompt, or one that with `max_tokens` overflows the
/// context.
pub(crate) fn check_request(prompt_ids: &[u32], params: &GenerateParams, context: usize) -> Result<()> {
    if prompt_ids.is_empty() {
        return Err(Error::invalid("prompt", "the prompt encodes to no tokens"));
    }
    if prompt_ids.len().saturating_add(params.max_tokens) > context {
        return Err(Error::ContextOverflow {
            tokens: prompt_ids.len(),
            max_new: params.max_tokens,
            context,
        });
    }
    Ok(())
}

/// A running generation on the caller's thread: an iterator of [`TokenEvent`]s.
pub struct TokenStream<'m> {
    transformer: &'m Transformer,
    pool: &'m rayon::ThreadPool,
    cache: KvCache,
    decoding: Decoding<'m>,
    next_logits: Option<Vec<f32>>,
}

impl<'m> TokenStream<'m> {
    /// Prefill `prompt_ids` on `pool` and get ready to generate.
    pub(crate) fn new(
        transformer: &'m Transformer,
        tokenizer: &'m Tokenizer,
        pool: &'m rayon::ThreadPool,
        prompt_ids: Vec<u32>,
        params: GenerateParams,
    ) -> Result<Self> {
        let mut decoding = Decoding::new(tokenizer, prompt_ids, params, transformer.config().context_length)?;
        let mut cache = transformer.new_cache();
        let logits = pool.install(|| transformer.forward(decoding.prompt_ids(), &mut cache))?;
        decoding.prefilled();
        Ok(Self {
            transformer,
            pool,
            cache,
            decoding,
            next_logits: Some(logits),
        })
    }

    /// Tokens generated so far.
    pub fn generated_ids(&self) -> &[u32] {
        self.decoding.generated_ids()
    }

    pub fn prompt_ids(&self) -> &[u32] {
        self.decoding.prompt_ids()
    }

    /// Why the stream ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.decoding.finished()
    }

    pub fn timings(&self) -> Timings {
        self.decoding.timings()
    }

    fn step(&mut self) -> Result<TokenEvent> {
        let logits = self.next_logits.take().expect("logits are ready while not finished");
        let event = self.decoding.step(&logits)?;
        if event.finish.is_none() {
            let (transformer, cache) = (self.transformer, &mut self.cache);
            self.next_logits = Some(self.pool.install(|| transformer.forward(&[event.id], cache))?);
        }
        Ok(event)
    }

    /// Stop here: the stream ends as [`FinishReason::Cancelled`] (unless it already ended).
    pub fn cancel(&mut self) {
        self.decoding.end(FinishReason::Cancelled);
    }

    /// What was generated so far (the whole answer once the stream has ended).
    pub fn into_generation(self) -> Generation {
        self.decoding.into_generation()
    }

    /// Drive the stream to the end, calling `on_event` for each step; the callback may stop it.
    pub fn run_with(mut self, mut on_event: impl FnMut(&TokenEvent) -> ControlFlow<()>) -> Result<Generation> {
        while let Some(event) = self.next() {
            let event = event?;
            if on_event(&event).is_break() && event.finish.is_none() {
                self.decoding.end(FinishReason::Cancelled);
                break;
            }
        }
        Ok(self.decoding.into_generation())
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<TokenEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.decoding.finished().is_some() {
            return None;
        }
        let event = self.step();
        if event.is_err() {
            self.decoding.end(FinishReason::Cancelled);
        }
        Some(event)
    }
}
