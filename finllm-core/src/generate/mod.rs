//! Text generation: sampling, stop conditions, streaming.

pub mod sampling;
pub mod stop;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

pub use sampling::{top_logits, Rng, Sampler, SamplingParams};
pub use stop::StopMatcher;

use crate::error::{Error, Result};
use crate::llm::Model;
use crate::model::KvCache;
use crate::tokenizer::StreamDecoder;

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
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            sampling: SamplingParams::default(),
            max_tokens: 256,
            stop: Vec::new(),
            top_logits: 0,
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

/// A running generation: an iterator of [`TokenEvent`]s.
pub struct TokenStream<'m> {
    model: &'m Model,
    params: GenerateParams,
    cache: KvCache,
    sampler: Sampler,
    decoder: StreamDecoder<'m>,
    stops: StopMatcher,
    history: Vec<u32>,
    prompt_len: usize,
    next_logits: Option<Vec<f32>>,
    generated: usize,
    finished: Option<FinishReason>,
    started: Instant,
    timings: Timings,
}

impl<'m> TokenStream<'m> {
    pub(crate) fn new(model: &'m Model, prompt_ids: Vec<u32>, params: GenerateParams) -> Result<Self> {
        let sampler = Sampler::new(params.sampling.clone())?;
        if prompt_ids.is_empty() {
            return Err(Error::invalid("prompt", "the prompt encodes to no tokens"));
        }
        let context = model.config().context_length;
        if prompt_ids.len().saturating_add(params.max_tokens) > context {
            return Err(Error::ContextOverflow {
                tokens: prompt_ids.len(),
                max_new: params.max_tokens,
                context,
            });
        }
        let started = Instant::now();
        let mut cache = model.transformer().new_cache();
        let logits = model.run(|| model.transformer().forward(&prompt_ids, &mut cache))?;
        let timings = Timings {
            prompt_tokens: prompt_ids.len(),
            prefill: started.elapsed(),
            ..Default::default()
        };
        Ok(Self {
            decoder: model.tokenizer().stream_decoder(),
            stops: StopMatcher::new(&params.stop),
            prompt_len: prompt_ids.len(),
            history: prompt_ids,
            next_logits: Some(logits),
            generated: 0,
            finished: if params.max_tokens == 0 {
                Some(FinishReason::Length)
            } else {
                None
            },
            model,
            params,
            cache,
            sampler,
            started,
            timings,
        })
    }

    /// Tokens generated so far.
    pub fn generated_ids(&self) -> &[u32] {
        &self.history[self.prompt_len..]
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.history[..self.prompt_len]
    }

    /// Why the stream ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finished
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    fn step(&mut self) -> Result<TokenEvent> {
        let logits = self.next_logits.take().expect("logits are ready while not finished");
        // NaN weights make every logit NaN, and sampling would then pick token 0 or stop at once:
        // an empty or garbage answer that looks like success.
        if let Some(i) = logits.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
            return Err(Error::NonFinite {
                what: format!("the logit of token {i} at generation step {}", self.generated),
            });
        }
        let top = if self.params.top_logits > 0 {
            top_logits(&logits, self.params.top_logits)
        } else {
            Vec::new()
        };
        let id = self.sampler.sample(&logits, &self.history);
        if self.model.tokenizer().stop_ids().contains(&id) {
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
        let model = self.model;
        let cache = &mut self.cache;
        self.next_logits = Some(model.run(|| model.transformer().forward(&[id], cache))?);
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
        self.finished = Some(reason);
        self.timings.generated_tokens = self.generated;
        self.timings.decode = self.started.elapsed().saturating_sub(self.timings.prefill);
        TokenEvent {
            id,
            text,
            top_logits: top,
            finish: Some(reason),
        }
    }

    /// Drive the stream to the end, calling `on_event` for each step; the callback may stop it.
    pub fn run_with(mut self, mut on_event: impl FnMut(&TokenEvent) -> ControlFlow<()>) -> Result<Generation> {
        let mut text = String::new();
        let mut steps = Vec::new();
        while let Some(event) = self.next() {
            let event = event?;
            text.push_str(&event.text);
            if self.params.top_logits > 0 {
                steps.push(event.top_logits.clone());
            }
            if on_event(&event).is_break() && event.finish.is_none() {
                self.finished = Some(FinishReason::Cancelled);
                self.timings.generated_tokens = self.generated;
                self.timings.decode = self.started.elapsed().saturating_sub(self.timings.prefill);
                break;
            }
        }
        let finish = self.finished.unwrap_or(FinishReason::Length);
        Ok(Generation {
            prompt_ids: self.prompt_ids().to_vec(),
            ids: self.generated_ids().to_vec(),
            text,
            steps,
            finish,
            timings: self.timings,
        })
    }
}

impl Iterator for TokenStream<'_> {
    type Item = Result<TokenEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished.is_some() {
            return None;
        }
        let event = self.step();
        if event.is_err() {
            self.finished = Some(FinishReason::Cancelled);
        }
        Some(event)
    }
}
