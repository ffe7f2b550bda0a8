//! Explainability on the served model: attribute an answer to the units of its prompt (tokens,
//! words, sentences, or segments such as retrieved sources).
//!
//! One entry point, [`explain`], with one module per method family:
//! - **perturbation** ([`perturb`]), forward-only on the quantized model as served: occlusion
//!   (leave one unit out), Shapley-value sampling, and a ContextCite-style surrogate; every
//!   ablation is batched through the model's forward call and the unchanged beginning of the
//!   prompt is computed once ([`ablate`]);
//! - **attention** ([`attention`]): one layer's attention (the last unless asked), every
//!   layer's profile, and attention rollout from the forward hooks;
//! - **gradient** ([`gradient`]): saliency, input × gradient and integrated gradients w.r.t. the
//!   input embeddings, on a dense f32 copy of the served weights.
//!
//! The result, an [`Attribution`], holds the units (text, character and byte span in the prompt's text)
//! ranked by score, the units × answer-tokens matrix, the method and its parameters, the model's
//! SHA-256 and timings; it serialises to JSON.

pub mod ablate;
pub mod attention;
pub mod gradient;
pub mod perturb;
pub mod report;
pub mod units;

use std::time::Instant;

use crate::error::{Error, Result};
use crate::generate::GenerateParams;
use crate::llm::Prompt;
use crate::request::Request;
use crate::Model;

pub use perturb::SurrogateFit;
pub use units::{Granularity, Segment};

/// How an answer is attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Leave one unit out: the drop in the target's log-probability.
    Occlusion,
    /// Shapley values estimated over random permutations of the units.
    Shapley,
    /// A sparse linear surrogate fitted on random ablations (ContextCite).
    Surrogate,
    /// One layer's attention (the last unless [`ExplainOptions::layer`]) from the predicting
    /// positions, mean over heads.
    Attention,
    /// Attention rollout through every layer.
    Rollout,
    /// Integrated gradients w.r.t. the input embeddings (dense f32 copy of the weights).
    #[serde(rename = "ig")]
    IntegratedGradients,
    /// Gradient norm at the input.
    Saliency,
    /// Input embedding · gradient.
    #[serde(rename = "input_x_gradient")]
    InputXGradient,
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "occlusion" => Self::Occlusion,
            "shapley" => Self::Shapley,
            "surrogate" => Self::Surrogate,
            "attention" => Self::Attention,
            "rollout" => Self::Rollout,
            "ig" | "integrated_gradients" => Self::IntegratedGradients,
            "saliency" => Self::Saliency,
            "input_x_gradient" | "ixg" => Self::InputXGradient,
            _ => {
                return Err(Error::invalid(
                    "method",
                    format!(
                        "{s:?}: one of occlusion, shapley, surrogate, attention, rollout, ig, saliency, \
                         input_x_gradient"
                    ),
                ))
            }
        })
    }
}

/// What to explain and how.
#[derive(Debug, Clone)]
pub struct ExplainOptions {
    pub method: Method,
    pub granularity: Granularity,
    /// The answer to explain, as text (teacher-forced); `None`: the model's greedy answer of
    /// at most `max_tokens` tokens, generated first.
    pub answer: Option<String>,
    pub max_tokens: usize,
    /// The answer tokens `[start, end)` whose summed log-probability is the target; `None`:
    /// the whole answer.
    pub target_tokens: Option<(usize, usize)>,
    /// Shapley permutations, surrogate ablations or integrated-gradients steps; 0: the
    /// method's default (8 permutations, 32 ablations, 32 steps).
    pub samples: usize,
    /// Held-out random ablations for the surrogate's linear datamodeling score.
    pub held_out: usize,
    pub seed: u64,
    /// Ablated prompts per batched forward call.
    pub batch: usize,
    /// The units for [`Granularity::Segment`]: byte ranges of the prompt's text (for a chat,
    /// of the rendered conversation).
    pub segments: Vec<Segment>,
    /// [`Method::Attention`]: the layer whose attention scores the units (`None`: the last).
    pub layer: Option<usize>,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        Self {
            method: Method::Occlusion,
            granularity: Granularity::Word,
            answer: None,
            max_tokens: 32,
            target_tokens: None,
            samples: 0,
            held_out: 16,
            seed: 0,
            batch: 8,
            segments: Vec::new(),
            layer: None,
        }
    }
}

/// One unit of the prompt with its score for the target.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Unit {
    /// Position among the units in prompt order (the row of [`Attribution::matrix`]).
    pub index: usize,
    /// A segment's label (for sources), else `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub text: String,
    /// Character range (Unicode scalar values) in [`Attribution::prompt`]: Python's
    /// `prompt[start:end]`.
    pub start: usize,
    pub end: usize,
    /// Byte range (UTF-8) in [`Attribution::prompt`]: Rust's `&prompt[byte_start..byte_end]`.
    pub byte_start: usize,
    pub byte_end: usize,
    /// Prompt tokens the unit holds.
    pub tokens: usize,
    /// The unit's attribution to the target (nats for perturbation methods, attention mass
    /// for attention methods); higher means the unit supports the target more.
    pub score: f64,
}

/// The answer tokens explained.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TargetSpan {
    pub text: String,
    /// Answer token range `[start, end)`.
    pub start: usize,
    pub end: usize,
}

/// How long it took.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Timings {
    /// Generating the answer (when it was generated here).
    pub answer_ms: Option<f64>,
    pub explain_ms: f64,
    /// Sequences run through the model for the explanation (the full prompt counts once).
    pub forward_sequences: usize,
    /// `explain_ms / answer_ms`.
    pub ratio_to_answer: Option<f64>,
}

/// An explanation of one answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Attribution {
    pub method: Method,
    pub granularity: Granularity,
    /// The text the units' spans point into (a conversation as rendered by the chat template).
    pub prompt: String,
    pub answer: String,
    /// The answer's tokens as text.
    pub answer_tokens: Vec<String>,
    pub target: TargetSpan,
    /// Units ranked by score, highest first.
    pub units: Vec<Unit>,
    /// `[unit index][answer token]`: each unit's attribution to each answer token (the target's
    /// score of a unit is the sum over the target's tokens).
    pub matrix: Vec<Vec<f64>>,
    /// Log-probability of each answer token given the whole prompt (perturbation methods).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_logprobs: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surrogate: Option<SurrogateFit>,
    /// Gradient methods: which weights, f(input), and for integrated gradients the baseline
    /// and the completeness error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gradient: Option<gradient::GradientReport>,
    /// Attention methods: `[layer][unit]` (units in prompt order), each layer's head-mean
    /// attention from the target's predicting positions to the unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_layers: Option<Vec<Vec<f64>>>,
    pub model_sha256: String,
    /// The options that shaped the result (samples, seed, batch, ...).
    pub parameters: serde_json::Value,
    pub timings: Timings,
    pub finllm_version: &'static str,
}

impl Attribution {
    /// Units in prompt order (the ranked list re-sorted by `index`).
    pub fn units_in_order(&self) -> Vec<&Unit> {
        let mut u: Vec<&Unit> = self.units.iter().collect();
        u.sort_by_key(|u| u.index);
        u
    }

    /// The highest-scored unit.
    pub fn top(&self) -> Option<&Unit> {
        self.units.first()
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| Error::invalid("attribution", e.to_string()))
    }
}

/// The prompt's text and the byte ranges in it whose units are explained: all of a text; the
/// messages' contents of a conversation (not the template's markup).
fn prompt_text(model: &Model, prompt: &Prompt) -> Result<(String, Vec<std::ops::Range<usize>>)> {
    match prompt {
        Prompt::Text(t) => Ok((t.clone(), std::iter::once(0..t.len()).collect())),
        Prompt::Chat(messages) => {
            let text = model.apply_chat_template(messages)?;
            let mut regions = Vec::new();
            let mut from = 0;
            for m in messages {
                if m.content.is_empty() {
                    continue;
                }
                let at = text[from..].find(m.content.as_str()).ok_or_else(|| {
                    Error::invalid(
                        "prompt",
                        "the chat template changed a message's text; explain the rendered text instead",
                    )
                })?;
                regions.push(from + at..from + at + m.content.len());
                from += at + m.content.len();
            }
            Ok((text, regions))
        }
        Prompt::Ids(_) => Err(Error::invalid(
            "prompt",
            "explanations need the prompt's text (a text or a conversation), not ids",
        )),
    }
}

/// Explain why `model` gives its answer to `prompt`; see the module docs.
pub fn explain(model: &Model, prompt: &Prompt, options: &ExplainOptions) -> Result<Attribution> {
    Attributor::new(model, prompt, options)?.run(options.method)
}

/// Which retrieved sources drove a grounded answer; see [`Attributor::for_answer`].
pub fn explain_answer(
    model: &Model,
    answer: &crate::rag::Answer,
    question: &str,
    instructions: &str,
    options: &ExplainOptions,
) -> Result<Attribution> {
    Attributor::for_answer(model, answer, question, instructions, options)?.run(options.method)
}

/// Each numbered source block's span in a grounded prompt's text.
fn find_sources(text: &str, sources: &[crate::rag::Passage]) -> Result<Vec<Segment>> {
    let mut segments = Vec::with_capacity(sources.len());
    let mut from = 0;
    for (i, p) in sources.iter().enumerate() {
        let block = crate::rag::answer::source_block(i + 1, p);
        let block = block.trim_end();
        let at = text[from..].find(block).ok_or_else(|| {
            Error::invalid(
                "answer",
                format!("source [{}] is not in the prompt (was part of it masked?)", i + 1),
            )
        })?;
        segments.push(Segment {
            label: format!("[{}] {}", i + 1, p.source),
            start: from + at,
            end: from + at + block.len(),
        });
        from += at + block.len();
    }
    Ok(segments)
}

/// An answer from documents with the explanation of its sources.
#[derive(Debug, Clone)]
pub struct ExplainedAnswer {
    pub answer: crate::rag::Answer,
    pub explanation: Attribution,
    /// Where the explanation was recorded: for a guarded answer with an audit log, an
    /// [`Explanation`](crate::compliance::audit::RecordPhase::Explanation) record after the
    /// answer's own.
    pub audit: Option<crate::compliance::audit::RecordReceipt>,
}

/// Answer `question` from `retriever` ([`crate::rag::ask`], on a model or an engine), rank the
/// answer's sources by `how` ([`explain_answer`]), and, for a guarded answer with an audit log,
/// record the explanation after the answer's record ([`record`]).
pub fn ask<'a>(
    on: impl Into<crate::request::Executor<'a>>,
    retriever: &dyn crate::rag::Retriever,
    question: &str,
    options: &crate::rag::AskOptions,
    how: &ExplainOptions,
) -> Result<ExplainedAnswer> {
    let on = on.into();
    let answer = crate::rag::ask(on, retriever, question, options)?;
    let explanation = explain_answer(on.model(), &answer, question, &options.instructions, how)?;
    let audit = record_for(
        &answer.response,
        options.guard.as_deref(),
        &options.info.caller_id,
        &explanation,
    )?;
    Ok(ExplainedAnswer {
        answer,
        explanation,
        audit,
    })
}

/// The text shown for answer tokens an output policy redacted or blocked.
pub const WITHHELD: &str = "[withheld by the output policy]";

/// A request's answer with the explanation of it.
#[derive(Debug, Clone)]
pub struct ExplainedResponse {
    pub response: crate::request::Response,
    /// `None` only when the answer has no tokens (there is nothing to explain).
    pub explanation: Option<Attribution>,
    /// For a guarded request with an audit log: the explanation's record, after the request's.
    pub audit: Option<crate::compliance::audit::RecordReceipt>,
}

/// Run `request` on `on` (a model or an engine) and explain its answer with `how`: the prompt
/// as the model saw it (for a guarded request, with personal data masked) is attributed, the
/// answer's tokens as generated are the target, and for a guarded request with an audit log the
/// explanation is recorded after the request's own record, naming it ([`record`]; on an engine
/// other requests' records may come in between). `how.answer` must
/// be unset (the answer is the request's); the request's parameters decide the answer's length.
pub fn respond<'a>(
    on: impl Into<crate::request::Executor<'a>>,
    request: Request,
    how: &ExplainOptions,
) -> Result<ExplainedResponse> {
    if how.answer.is_some() {
        return Err(Error::invalid(
            "answer",
            "a request's explanation explains the answer the request gets: leave the answer unset",
        ));
    }
    if matches!(request.prompt, Prompt::Ids(_)) {
        return Err(Error::invalid(
            "prompt",
            "explanations need the prompt's text (a text or a conversation), not ids",
        ));
    }
    let on = on.into();
    let (prompt, guard, caller_id) = (
        request.prompt.clone(),
        request.guard.clone(),
        request.info.caller_id.clone(),
    );
    let response = request.run(on)?;
    if response.generation.ids.is_empty() {
        return Ok(ExplainedResponse {
            response,
            explanation: None,
            audit: None,
        });
    }
    let seen = match &response.guard {
        Some(r) if !r.masked_messages.is_empty() => Prompt::Chat(r.masked_messages.clone()),
        Some(r) => Prompt::Text(r.masked_prompt.clone()),
        None => prompt,
    };
    let mut attributor = Attributor::with_answer(on.model(), &seen, how, Some(response.generation.ids.clone()))?;
    if attributor.ids != response.generation.prompt_ids {
        return Err(Error::invalid(
            "prompt",
            "the prompt rebuilt for the explanation is not the one the model saw",
        ));
    }
    let mut explanation = attributor.run(how.method)?;
    // An answer the output policy redacted or blocked is explained on the tokens generated,
    // but their text stays withheld: the explanation (and its record) show what the caller saw.
    let filtered = response
        .guard
        .as_ref()
        .and_then(|g| g.decision.as_ref())
        .is_some_and(|d| {
            matches!(
                d.verdict,
                crate::compliance::policy::Verdict::Redact | crate::compliance::policy::Verdict::Block
            )
        });
    if filtered {
        explanation.answer = response.generation.text.clone();
        explanation
            .answer_tokens
            .iter_mut()
            .for_each(|t| *t = WITHHELD.to_string());
        explanation.target.text = WITHHELD.to_string();
    }
    let audit = record_for(&response, guard.as_deref(), &caller_id, &explanation)?;
    Ok(ExplainedResponse {
        response,
        explanation: Some(explanation),
        audit,
    })
}

/// The bindings' one call: [`explain`] `prompt` without a guard, or with one, [`guarded`]; the
/// explanation and, for a guarded one with an audit log, its record's sequence number. A
/// guarded request with no answer to explain (blocked, or ended before its first token) is a
/// typed error that says so.
pub fn explain_for<'a>(
    on: impl Into<crate::request::Executor<'a>>,
    prompt: Prompt,
    guard: Option<std::sync::Arc<crate::compliance::Guard>>,
    info: crate::compliance::RequestInfo,
    how: &ExplainOptions,
) -> Result<(Attribution, Option<u64>)> {
    let on = on.into();
    let Some(guard) = guard else {
        if !info.caller_id.is_empty() || !info.request_id.is_empty() {
            return Err(Error::invalid(
                "caller_id",
                "is recorded for a guarded request: give a guard, or leave it unset",
            ));
        }
        return Ok((explain(on.model(), &prompt, how)?, None));
    };
    let x = guarded(on, prompt, guard, info, how)?;
    let Some(a) = x.explanation else {
        let why = match x.response.generation.finish {
            crate::generate::FinishReason::Blocked => "the output policy blocked the answer",
            _ => "the answer has no tokens",
        };
        return Err(Error::invalid("answer", format!("{why}: nothing to explain")));
    };
    Ok((a, x.audit.map(|r| r.seq)))
}

/// Explain a guarded request for `prompt` ([`respond`]): the answer is generated greedily under
/// `guard` for `info`'s caller, at most `how.max_tokens` tokens, and explained with `how`.
pub fn guarded<'a>(
    on: impl Into<crate::request::Executor<'a>>,
    prompt: Prompt,
    guard: std::sync::Arc<crate::compliance::Guard>,
    info: crate::compliance::RequestInfo,
    how: &ExplainOptions,
) -> Result<ExplainedResponse> {
    let request = Request::new(prompt)
        .with_params(GenerateParams {
            max_tokens: how.max_tokens,
            ..Default::default()
        })
        .with_guard(guard)
        .with_info(info);
    respond(on, request, how)
}

/// Record `explanation` of `response` in `guard`'s audit log, when the request was guarded and
/// recorded there; `None` otherwise.
pub fn record_for(
    response: &crate::request::Response,
    guard: Option<&crate::compliance::Guard>,
    caller_id: &str,
    explanation: &Attribution,
) -> Result<Option<crate::compliance::audit::RecordReceipt>> {
    let (Some(guard), Some(report)) = (guard, &response.guard) else {
        return Ok(None);
    };
    let (Some(log), Some(receipt)) = (&guard.config().audit, &report.receipt) else {
        return Ok(None);
    };
    record(log, receipt, &report.request_id, caller_id, explanation).map(Some)
}

/// Append an explanation record to `log`: it names the explained answer's record (`of`: its
/// sequence number and chain hash), lists the ranked units and holds the SHA-256 of the
/// explanation's JSON ([`Attribution::to_json`]), which the caller keeps, so that an auditor can
/// check the explanation they are shown is the one recorded.
pub fn record(
    log: &crate::compliance::audit::AuditLog,
    of: &crate::compliance::audit::RecordReceipt,
    request_id: &str,
    caller_id: &str,
    explanation: &Attribution,
) -> Result<crate::compliance::audit::RecordReceipt> {
    use crate::compliance::audit::{AuditExplanation, AuditRecord, AuditUnit, RecordPhase, MAX_EXPLAINED_UNITS};
    use sha2::{Digest, Sha256};
    let json = explanation.to_json()?;
    let now = crate::compliance::audit::unix_ms();
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    };
    let record = AuditRecord {
        request_id: request_id.to_string(),
        caller_id: caller_id.to_string(),
        started_at_ms: now.saturating_sub(explanation.timings.explain_ms as u64),
        finished_at_ms: now,
        model_sha256: explanation.model_sha256.clone(),
        latency_ms: explanation.timings.explain_ms,
        phase: RecordPhase::Explanation,
        explanation: Some(AuditExplanation {
            of_seq: of.seq,
            of_hash: of.hash.clone(),
            method: name(serde_json::to_value(explanation.method)),
            granularity: name(serde_json::to_value(explanation.granularity)),
            target: explanation.target.text.clone(),
            units: explanation
                .units
                .iter()
                .take(MAX_EXPLAINED_UNITS)
                .map(|u| AuditUnit {
                    unit: u.label.clone().unwrap_or_else(|| u.text.clone()),
                    start: u.byte_start,
                    end: u.byte_end,
                    score: u.score,
                })
                .collect(),
            attribution_sha256: crate::util::hex(&Sha256::digest(json.as_bytes())),
        }),
        ..Default::default()
    };
    log.append(&record)
}

/// One prompt, its units and one answer, explained by as many methods as asked: perturbation
/// methods share one [`ablate::Ablator`], so an ablated prompt that several methods need (or
/// that random masks repeat) runs once.
pub struct Attributor<'m> {
    model: &'m Model,
    options: ExplainOptions,
    text: String,
    ids: Vec<u32>,
    spans: Vec<units::UnitSpan>,
    answer_ids: Vec<u32>,
    answer_ms: Option<f64>,
    target: (usize, usize),
    ablator: Option<ablate::Ablator<'m>>,
    /// The dense f32 copy for gradient methods, made on first use.
    dense: Option<crate::model::Transformer>,
}

impl<'m> Attributor<'m> {
    /// Tokenize `prompt`, find its units and the answer (given as `options.answer`, else
    /// generated greedily here).
    pub fn new(model: &'m Model, prompt: &Prompt, options: &ExplainOptions) -> Result<Self> {
        Self::with_answer(model, prompt, options, None)
    }

    /// For a grounded answer ([`crate::rag::ask`]): the answer's tokens as generated are the
    /// target, each numbered source in its prompt is a unit (labelled `[n] source`; granularity
    /// and segments are set here). `instructions` are the ones the answer was asked with
    /// ([`crate::rag::AskOptions`]); the rebuilt prompt must be the one the answer came from.
    pub fn for_answer(
        model: &'m Model,
        answer: &crate::rag::Answer,
        question: &str,
        instructions: &str,
        options: &ExplainOptions,
    ) -> Result<Self> {
        let sources: Vec<crate::rag::Passage> = answer.citations.iter().map(|c| c.passage.clone()).collect();
        let generation = &answer.response.generation;
        let (mut prompt, text, mut segments) = Self::grounded(model, &sources, question, instructions)?;
        // A guarded answer is explained on the prompt the model saw (personal data masked), so
        // the explanation holds nothing the audit record does not.
        if let Some(report) = &answer.response.guard {
            if report.masked_prompt != text {
                segments = find_sources(&report.masked_prompt, &sources)?;
                prompt = Prompt::Text(report.masked_prompt.clone());
            }
        }
        let seen = match &prompt {
            Prompt::Text(t) => t.clone(),
            _ => text,
        };
        if model.tokenize_prompt(&seen)? != generation.prompt_ids {
            return Err(Error::invalid(
                "answer",
                "its prompt is not the one rebuilt from its sources: explain it with the instructions it \
                 was asked with",
            ));
        }
        let options = ExplainOptions {
            granularity: Granularity::Segment,
            segments,
            answer: None,
            ..options.clone()
        };
        Self::with_answer(model, &prompt, &options, Some(generation.ids.clone()))
    }

    /// For `sources` put into a grounded prompt for `question` as [`crate::rag::ask`] does, each
    /// source a unit (labelled `[n] source`); the answer is `options.answer` (teacher-forced)
    /// or generated here.
    pub fn for_sources(
        model: &'m Model,
        sources: &[crate::rag::Passage],
        question: &str,
        instructions: &str,
        options: &ExplainOptions,
    ) -> Result<Self> {
        let (prompt, _, segments) = Self::grounded(model, sources, question, instructions)?;
        let options = ExplainOptions {
            granularity: Granularity::Segment,
            segments,
            ..options.clone()
        };
        Self::with_answer(model, &prompt, &options, None)
    }

    /// The grounded prompt, its rendered text and each source block's span in it.
    fn grounded(
        model: &Model,
        sources: &[crate::rag::Passage],
        question: &str,
        instructions: &str,
    ) -> Result<(Prompt, String, Vec<Segment>)> {
        if sources.is_empty() {
            return Err(Error::invalid("answer", "was given no sources to attribute it to"));
        }
        let messages = crate::rag::answer::grounded_prompt(instructions, sources, question);
        let text = model.apply_chat_template(&messages)?;
        let segments = find_sources(&text, sources)?;
        Ok((Prompt::Chat(messages), text, segments))
    }

    fn with_answer(
        model: &'m Model,
        prompt: &Prompt,
        options: &ExplainOptions,
        answer_ids: Option<Vec<u32>>,
    ) -> Result<Self> {
        let (text, regions) = prompt_text(model, prompt)?;
        let context = model.config().context_length;
        let tokenizer = model.tokenizer();
        if text.len() > tokenizer.max_text_bytes(context) {
            return Err(Error::invalid("prompt", "can never fit the model's context"));
        }
        let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
        let spans = units::build(&text, &offsets, &regions, options.granularity, &options.segments)?;
        if spans.is_empty() {
            return Err(Error::invalid("prompt", "has no units to explain"));
        }
        // The answer: given as ids or text (teacher-forced), or generated greedily.
        let (answer_ids, answer_ms) = match (answer_ids, &options.answer) {
            (Some(a_ids), _) => (a_ids, None),
            (None, Some(a)) => {
                let mut a_ids = tokenizer.encode(a)?;
                if tokenizer.adds_bos() && a_ids.first().is_some_and(|&f| Some(f) == tokenizer.bos_id()) {
                    a_ids.remove(0);
                }
                (a_ids, None)
            }
            (None, None) => {
                let t = Instant::now();
                let params = GenerateParams {
                    max_tokens: options.max_tokens,
                    ..Default::default()
                };
                let g = Request::ids(ids.clone()).with_params(params).run(model)?.generation;
                (g.ids, Some(t.elapsed().as_secs_f64() * 1e3))
            }
        };
        if answer_ids.is_empty() {
            return Err(Error::invalid("target", "the answer to explain has no tokens"));
        }
        let (t0, t1) = options.target_tokens.unwrap_or((0, answer_ids.len()));
        if t0 >= t1 || t1 > answer_ids.len() {
            return Err(Error::invalid(
                "target_tokens",
                format!(
                    "[{t0}, {t1}) is not a range of the answer's {} tokens",
                    answer_ids.len()
                ),
            ));
        }
        Ok(Self {
            model,
            options: options.clone(),
            text,
            ids,
            spans,
            answer_ids,
            answer_ms,
            target: (t0, t1),
            ablator: None,
            dense: None,
        })
    }

    /// The units' prompt positions, in prompt order.
    fn positions(&self) -> Vec<Vec<usize>> {
        self.spans.iter().map(|s| s.positions.clone()).collect()
    }

    /// The answer's token ids.
    pub fn answer_ids(&self) -> &[u32] {
        &self.answer_ids
    }

    fn ablator(&mut self) -> Result<&mut ablate::Ablator<'m>> {
        if self.ablator.is_none() {
            self.ablator = Some(ablate::Ablator::new(
                self.model,
                self.ids.clone(),
                self.answer_ids.clone(),
                self.positions(),
                self.options.batch,
            )?);
        }
        Ok(self.ablator.as_mut().expect("just set"))
    }

    /// Attribute the answer's target with `method`.
    pub fn run(&mut self, method: Method) -> Result<Attribution> {
        let started = Instant::now();
        let (t0, t1) = self.target;
        let options = self.options.clone();
        let samples = |default: usize| if options.samples == 0 { default } else { options.samples };
        let mut parameters = serde_json::json!({ "batch": options.batch, "seed": options.seed });
        let mut gradient_report = None;
        let mut attention_layers = None;
        let (matrix, base, fit, sequences) = match method {
            Method::Occlusion | Method::Shapley | Method::Surrogate => {
                // A new ablator's prompt prefill counts as this run's.
                let before = self.ablator.as_ref().map_or(0, |a| a.sequences);
                let ab = self.ablator()?;
                let (base, matrix, fit) = match method {
                    Method::Occlusion => {
                        let (b, m) = perturb::occlusion(ab)?;
                        (b, m, None)
                    }
                    Method::Shapley => {
                        let k = samples(8);
                        parameters["permutations"] = k.into();
                        let (b, m) = perturb::shapley(ab, k, options.seed)?;
                        (b, m, None)
                    }
                    _ => {
                        let k = samples(32);
                        parameters["ablations"] = k.into();
                        parameters["held_out"] = options.held_out.into();
                        let (b, m, f) = perturb::surrogate(ab, t0..t1, k, options.held_out, options.seed)?;
                        (b, m, Some(f))
                    }
                };
                (matrix, Some(base), fit, ab.sequences - before)
            }
            Method::IntegratedGradients | Method::Saliency | Method::InputXGradient => {
                let kind = match method {
                    Method::Saliency => gradient::Kind::Saliency,
                    Method::InputXGradient => gradient::Kind::InputXGradient,
                    _ => {
                        let steps = samples(32);
                        parameters["steps"] = steps.into();
                        gradient::Kind::Integrated { steps }
                    }
                };
                if self.dense.is_none() {
                    self.dense = Some(gradient::dense_copy(self.model)?);
                }
                let dense = self.dense.as_ref().expect("just set");
                let positions = self.positions();
                let (scores, report) = self.model.run(|| {
                    gradient::attribute(
                        dense,
                        &self.ids,
                        &self.answer_ids,
                        t0..t1,
                        &positions,
                        kind,
                        options.batch,
                    )
                })?;
                parameters["weights"] = report.weights.clone().into();
                gradient_report = Some(report);
                let span = (t1 - t0) as f64;
                let matrix = scores
                    .iter()
                    .map(|&s| {
                        (0..self.answer_ids.len())
                            .map(|t| if (t0..t1).contains(&t) { s / span } else { 0.0 })
                            .collect()
                    })
                    .collect();
                (matrix, None, None, 1)
            }
            Method::Attention | Method::Rollout => {
                let scores = attention::attention(
                    self.model,
                    &self.ids,
                    &self.answer_ids,
                    &self.positions(),
                    method == Method::Rollout,
                    options.layer,
                    t0..t1,
                )?;
                if let Some(l) = scores.layer {
                    parameters["layer"] = l.into();
                }
                attention_layers = Some(scores.per_layer);
                (scores.matrix, None, None, 1)
            }
        };
        let explain_ms = started.elapsed().as_secs_f64() * 1e3;
        let tokenizer = self.model.tokenizer();
        let piece =
            |id: u32| -> Result<String> { Ok(String::from_utf8_lossy(tokenizer.piece(id, true)?).into_owned()) };
        let answer_tokens = self
            .answer_ids
            .iter()
            .map(|&id| piece(id))
            .collect::<Result<Vec<_>>>()?;
        let text = &self.text;
        let chars = units::CharIndex::new(text);
        let mut ranked: Vec<Unit> = self
            .spans
            .iter()
            .zip(&matrix)
            .enumerate()
            .map(|(i, (s, row))| Unit {
                index: i,
                label: s.label.clone(),
                text: text[s.start..s.end].to_string(),
                start: chars.of(s.start),
                end: chars.of(s.end),
                byte_start: s.start,
                byte_end: s.end,
                tokens: s.positions.len(),
                score: row[t0..t1].iter().sum(),
            })
            .collect();
        ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
        Ok(Attribution {
            method,
            granularity: options.granularity,
            prompt: self.text.clone(),
            answer: self.model.detokenize(&self.answer_ids)?,
            answer_tokens,
            target: TargetSpan {
                text: self.model.detokenize(&self.answer_ids[t0..t1])?,
                start: t0,
                end: t1,
            },
            units: ranked,
            matrix,
            base_logprobs: base,
            surrogate: fit,
            gradient: gradient_report,
            attention_layers,
            model_sha256: self.model.sha256()?,
            parameters,
            timings: Timings {
                answer_ms: self.answer_ms,
                explain_ms,
                forward_sequences: sequences,
                ratio_to_answer: self.answer_ms.map(|a| explain_ms / a),
            },
            finllm_version: crate::VERSION,
        })
    }
}
