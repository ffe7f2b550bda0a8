//! Answering from documents: retrieve passages for a question, put them into the prompt as
//! numbered sources within a token budget, generate through the one request path (a model
//! alone or the engine, guarded or not), and return the answer with its citations.
//!
//! The passages' ids go into the request's audit record ([`RequestInfo::source_ids`]), so an
//! auditor sees which documents an answer was given from. Passages a retriever returns outside
//! the caller's [`Filter`] are dropped before the prompt is built: a faulty external retriever
//! cannot leak a document into an answer.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use crate::chat::ChatMessage;
use crate::compliance::{Guard, RequestInfo};
use crate::error::{Error, Result};
use crate::generate::{GenerateParams, TokenEvent};
use crate::llm::Prompt;
use crate::rag::retriever::{Filter, Passage, Query, Retriever, SearchMode};
use crate::request::{Executor, Request, Response};

/// The instructions given with the sources.
pub const DEFAULT_INSTRUCTIONS: &str = "You are a careful financial analyst. Answer the question using only the \
numbered sources. Cite the sources you use like [1]. If the sources do not contain the answer, say that they do not.";

/// How a question is answered.
#[derive(Debug, Clone)]
pub struct AskOptions {
    /// Passages retrieved.
    pub k: usize,
    pub mode: SearchMode,
    /// What the caller may see.
    pub filter: Filter,
    /// Most prompt tokens the sources may take (fewer if the model's context needs it).
    pub context_tokens: usize,
    pub params: GenerateParams,
    pub instructions: String,
    pub guard: Option<Arc<Guard>>,
    /// The audit record's ids; the passages' ids are added to `source_ids`.
    pub info: RequestInfo,
    pub deadline: Option<Duration>,
    /// On an engine: how long to wait for room in a full queue.
    pub queue_wait: Option<Duration>,
}

impl Default for AskOptions {
    fn default() -> Self {
        Self {
            k: 4,
            mode: SearchMode::Hybrid,
            filter: Filter::default(),
            context_tokens: 1024,
            params: GenerateParams::default(),
            instructions: DEFAULT_INSTRUCTIONS.to_string(),
            guard: None,
            info: RequestInfo::default(),
            deadline: None,
            queue_wait: None,
        }
    }
}

/// A source given to the model, numbered as in the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Citation {
    /// `[number]` in the prompt and the answer.
    pub number: usize,
    pub passage: Passage,
    /// Whether the answer cites it (`[number]` appears in the text).
    pub cited: bool,
}

/// An answer and the sources it was given.
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: Response,
    /// Every source in the prompt, in rank order.
    pub citations: Vec<Citation>,
}

impl Answer {
    /// The answer of a request [`Grounded`] in `sources`, given its response.
    pub fn from_sources(response: Response, sources: Vec<Passage>) -> Self {
        finish(response, sources)
    }

    pub fn text(&self) -> &str {
        &self.response.generation.text
    }
}

/// Retrieve, prompt, generate; see the module docs.
pub fn ask<'a>(
    on: impl Into<Executor<'a>>,
    retriever: &dyn Retriever,
    question: &str,
    options: &AskOptions,
) -> Result<Answer> {
    let on = on.into();
    let Grounded { request, sources } = Grounded::new(on, retriever, question, options)?;
    let response = request.run(on)?;
    Ok(finish(response, sources))
}

/// As [`ask`], streaming the answer to `on_event` (return `ControlFlow::Break` to stop it).
pub fn ask_streaming<'a>(
    on: impl Into<Executor<'a>>,
    retriever: &dyn Retriever,
    question: &str,
    options: &AskOptions,
    on_event: impl FnMut(&TokenEvent) -> ControlFlow<()>,
) -> Result<Answer> {
    let on = on.into();
    let Grounded { request, sources } = Grounded::new(on, retriever, question, options)?;
    let response = request.run_streaming(on, on_event)?;
    Ok(finish(response, sources))
}

/// A question made into a request over retrieved sources, before it runs: for callers that
/// run the request their own way (a binding watching a cancel flag, a caller submitting it to
/// an engine and reading the stream), then turn its response into an [`Answer`].
#[derive(Debug, Clone)]
pub struct Grounded {
    /// The request to run (a chat: instructions, numbered sources, the question).
    pub request: Request,
    /// The sources in the prompt, in rank order.
    pub sources: Vec<Passage>,
}

impl Grounded {
    /// Retrieve passages for `question` and build the request; see the module docs.
    pub fn new(on: Executor<'_>, retriever: &dyn Retriever, question: &str, options: &AskOptions) -> Result<Self> {
        let (request, sources) = prepare(on, retriever, question, options)?;
        Ok(Self { request, sources })
    }

    /// The answer, given the request's response.
    pub fn finish(self, response: Response) -> Answer {
        finish(response, self.sources)
    }

    /// The request to run and, to make the answer once it has run, the sources
    /// ([`Answer::from_sources`]).
    pub fn into_parts(self) -> (Request, Vec<Passage>) {
        (self.request, self.sources)
    }
}

fn finish(response: Response, sources: Vec<Passage>) -> Answer {
    let text = &response.generation.text;
    let citations = sources
        .into_iter()
        .enumerate()
        .map(|(i, passage)| Citation {
            number: i + 1,
            cited: text.contains(&format!("[{}]", i + 1)),
            passage,
        })
        .collect();
    Answer { response, citations }
}

/// The request for `question` and the passages its prompt holds.
fn prepare(
    on: Executor<'_>,
    retriever: &dyn Retriever,
    question: &str,
    options: &AskOptions,
) -> Result<(Request, Vec<Passage>)> {
    let question = question.trim();
    if question.is_empty() {
        return Err(Error::invalid("question", "is empty"));
    }
    options.filter.validate()?;
    let query = Query {
        text: question.to_string(),
        k: options.k,
        mode: options.mode,
        filter: options.filter.clone(),
    };
    let mut passages = retriever.retrieve(&query).map_err(|e| match e {
        e @ Error::Retriever { .. } => e,
        e => Error::Retriever {
            name: retriever.name().to_string(),
            reason: e.to_string(),
        },
    })?;
    passages.retain(|p| options.filter.admits(&p.source, &p.meta));
    passages.truncate(options.k);

    let model = on.model();
    // Sources in rank order while they fit the budget: a lower-ranked one never displaces a
    // better one.
    let mut blocks: Vec<String> = Vec::new();
    let mut used = 0;
    for p in &passages {
        let block = source_block(blocks.len() + 1, p);
        let n = model.tokenize(&block)?.len();
        if used + n > options.context_tokens {
            break;
        }
        used += n;
        blocks.push(block);
    }
    // Then as many as the model's context holds with the answer: the prompt as rendered.
    let context = model.config().context_length;
    let messages = loop {
        let messages = grounded_messages(&options.instructions, &blocks, question);
        let n = model.encode(&Prompt::Chat(messages.clone()))?.len();
        if n + options.params.max_tokens <= context || blocks.is_empty() {
            break messages;
        }
        blocks.pop();
    };
    let mut sources = passages;
    sources.truncate(blocks.len());
    let mut info = options.info.clone();
    info.source_ids.extend(sources.iter().map(|p| p.id.clone()));
    let mut request = Request::chat(messages)
        .with_params(options.params.clone())
        .with_info(info);
    if let Some(g) = &options.guard {
        request = request.with_guard(Arc::clone(g));
    }
    if let Some(d) = options.deadline {
        request = request.with_deadline(d);
    }
    if let Some(d) = options.queue_wait {
        request = request.with_queue_wait(d);
    }
    Ok((request, sources))
}

/// The conversation a grounded answer is generated from: `instructions`, the `sources` as
/// numbered blocks (each block's text is [`source_block`]), and the question. [`ask`] builds its
/// prompt with it; explanations rebuild it to find each source in the prompt.
pub fn grounded_prompt(instructions: &str, sources: &[Passage], question: &str) -> Vec<ChatMessage> {
    let blocks: Vec<String> = sources
        .iter()
        .enumerate()
        .map(|(i, p)| source_block(i + 1, p))
        .collect();
    grounded_messages(instructions, &blocks, question.trim())
}

fn grounded_messages(instructions: &str, blocks: &[String], question: &str) -> Vec<ChatMessage> {
    let sources = if blocks.is_empty() {
        "(no sources were found for this question)\n".to_string()
    } else {
        blocks.concat()
    };
    vec![
        ChatMessage::system(instructions.to_string()),
        ChatMessage::user(format!("Sources:\n{sources}\nQuestion: {question}")),
    ]
}

/// `[n] (source, page p)` then the passage.
pub fn source_block(n: usize, p: &Passage) -> String {
    let mut title = p.source.clone();
    if p.page > 1 {
        title.push_str(&format!(", page {}", p.page));
    }
    format!(
        "[{n}] ({title}) {}\n",
        p.text.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}
