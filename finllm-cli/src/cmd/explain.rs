//! `finllm explain`: attribute a model's answer to the units of its prompt.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use finllm_core::explain::{self, Attribution, ExplainOptions};
use finllm_core::{ChatMessage, LoadOptions, Model, Prompt};

use crate::util::CliResult;

/// How an explanation is computed (shared by `explain` and `ask --explain`).
#[derive(Args, Clone)]
pub(crate) struct MethodArgs {
    /// occlusion, shapley, surrogate (ContextCite), attention, rollout, ig (integrated
    /// gradients), saliency or input_x_gradient.
    #[arg(long, default_value = "occlusion")]
    method: String,
    /// Shapley permutations, surrogate ablations or integrated-gradients steps (default 8, 32, 32).
    #[arg(long, default_value_t = 0)]
    samples: usize,
    /// Held-out ablations for the surrogate's linear datamodeling score.
    #[arg(long, default_value_t = 16)]
    held_out: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Ablated prompts per batched forward call.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// --method attention: the layer whose attention scores the units (0-based; default the
    /// last). Every layer's profile is in the JSON's `attention_layers`.
    #[arg(long)]
    layer: Option<usize>,
}

impl MethodArgs {
    pub(crate) fn options(&self) -> Result<ExplainOptions, Box<dyn std::error::Error>> {
        Ok(ExplainOptions {
            method: self.method.parse()?,
            samples: self.samples,
            held_out: self.held_out,
            seed: self.seed,
            batch: self.batch,
            layer: self.layer,
            ..Default::default()
        })
    }
}

#[derive(Args)]
pub(crate) struct ExplainArgs {
    #[arg(long, default_value = crate::DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long)]
    threads: Option<usize>,
    /// The prompt (raw text; with --chat the user's message).
    #[arg(long)]
    prompt: String,
    /// Render the prompt with the model's chat template (as `finllm chat` does).
    #[arg(long)]
    chat: bool,
    /// With --chat: a system message, explained too.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// The answer to explain (default: the model's greedy answer, generated first).
    #[arg(long)]
    target: Option<String>,
    /// Longest generated answer.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Explain only answer tokens START:END (default: the whole answer).
    #[arg(long, value_parser = parse_range)]
    target_tokens: Option<(usize, usize)>,
    /// token, word or sentence.
    #[arg(long, default_value = "word")]
    granularity: String,
    #[command(flatten)]
    method: MethodArgs,
    /// Print one JSON object (units ranked by score, each with text, start, end, score).
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report (heat map, ranked bars, record) to this file.
    #[arg(long)]
    html: Option<PathBuf>,
    /// A guarded request (--audit-log, --policy, --mask-pii): the answer is generated under the
    /// guard, the masked prompt is explained, and the explanation is recorded after the
    /// request's audit record.
    #[command(flatten)]
    compliance: crate::options::ComplianceArgs,
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once(':').ok_or("expected START:END")?;
    Ok((
        a.trim().parse().map_err(|e| format!("{e}"))?,
        b.trim().parse().map_err(|e| format!("{e}"))?,
    ))
}

pub(crate) fn explain(args: &ExplainArgs) -> CliResult {
    let model = Model::load(
        &args.model,
        &LoadOptions {
            threads: args.threads,
            ..Default::default()
        },
    )?;
    let prompt = if args.chat {
        let mut m = Vec::new();
        if let Some(s) = &args.system {
            m.push(ChatMessage::system(s.clone()));
        }
        m.push(ChatMessage::user(args.prompt.clone()));
        Prompt::Chat(m)
    } else {
        Prompt::Text(args.prompt.clone())
    };
    let options = ExplainOptions {
        granularity: args.granularity.parse()?,
        answer: args.target.clone(),
        max_tokens: args.max_tokens,
        target_tokens: args.target_tokens,
        ..args.method.options()?
    };
    let a = if args.compliance.enabled() {
        if args.target.is_some() {
            return Err("--target explains a given answer; a guarded request explains its own".into());
        }
        let guard = std::sync::Arc::new(args.compliance.guard()?);
        let x = explain::guarded(&model, prompt, guard, args.compliance.request(), &options)?;
        if let Some(g) = &x.response.guard {
            crate::cmd::generate::report_guard(g);
        }
        if let Some(r) = &x.audit {
            eprintln!("[explanation: audit record {} in {}]", r.seq, r.file.display());
        }
        match x.explanation {
            Some(a) => a,
            None if x.response.generation.finish == finllm_core::FinishReason::Blocked => {
                return Err("the output policy blocked the answer: nothing to explain".into())
            }
            None => return Err("the answer has no tokens: nothing to explain".into()),
        }
    } else {
        explain::explain(&model, &prompt, &options)?
    };
    if let Some(path) = &args.html {
        std::fs::write(path, a.to_html()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    print(&a, args.json)
}

/// The attribution as one JSON object, or as a ranked table.
pub(crate) fn print(a: &Attribution, json: bool) -> CliResult {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", a.to_json()?)?;
        return Ok(());
    }
    writeln!(out, "answer: {:?}", a.answer)?;
    if a.target.start != 0 || a.target.end != a.answer_tokens.len() {
        writeln!(
            out,
            "target: {:?} (answer tokens {}..{})",
            a.target.text, a.target.start, a.target.end
        )?;
    }
    let method = serde_json::to_value(a.method)?;
    writeln!(
        out,
        "method: {}, {} units, {:.0} ms",
        method.as_str().unwrap_or("?"),
        a.units.len(),
        a.timings.explain_ms
    )?;
    let max = a
        .units
        .iter()
        .map(|u| u.score.abs())
        .fold(0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    for u in a.units.iter().take(20) {
        let bar = "#".repeat(((u.score.abs() / max) * 20.0).round() as usize);
        let text = u.label.clone().unwrap_or_else(|| u.text.replace('\n', " "));
        let text: String = text.chars().take(60).collect();
        writeln!(out, "{:>10.4}  {:<20}  {}", u.score, bar, text)?;
    }
    if a.units.len() > 20 {
        writeln!(out, "({} more; --json for all)", a.units.len() - 20)?;
    }
    Ok(())
}
