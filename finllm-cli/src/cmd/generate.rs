//! `finllm generate`, and running one request through the optional guard (shared with `chat`).

use std::io::Write;
use std::ops::ControlFlow;

use finllm_core::compliance::{Guard, GuardedGeneration, RequestInfo};
use finllm_core::{ChatMessage, GenerateParams, Generation, Model, TokenEvent};

use crate::options::Common;
use crate::util::CliResult;

/// What a request asks the model: raw text, or a conversation for the chat template.
pub(crate) enum Input<'a> {
    Prompt(&'a str),
    Messages(&'a [ChatMessage]),
}

/// Run one request, through the compliance guard when one is configured.
pub(crate) fn run_request(
    model: &Model,
    guard: Option<&Guard>,
    request: &RequestInfo,
    input: Input<'_>,
    params: &GenerateParams,
    on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
) -> Result<(Generation, Option<GuardedGeneration>), finllm_core::Error> {
    match (guard, input) {
        (Some(g), Input::Prompt(p)) => {
            let r = g.generate_with(model, p, params, request, on_token)?;
            Ok((r.generation.clone(), Some(r)))
        }
        (Some(g), Input::Messages(m)) => {
            let r = g.chat_with(model, m, params, request, on_token)?;
            Ok((r.generation.clone(), Some(r)))
        }
        (None, Input::Prompt(p)) => Ok((model.generate_with(p, params, on_token)?, None)),
        (None, Input::Messages(m)) => Ok((model.chat_stream(m, params)?.run_with(on_token)?, None)),
    }
}

/// One line on stderr about what the guard did.
pub(crate) fn report_guard(g: &GuardedGeneration) {
    let mut parts = vec![format!("request {}", g.request_id)];
    if !g.prompt_entities.is_empty() {
        parts.push(format!("{} personal identifiers masked", g.prompt_entities.len()));
    }
    if let Some(d) = &g.decision {
        let rules: Vec<String> = d
            .matches
            .iter()
            .map(|m| format!("{} ({})", m.rule_id, m.action.name()))
            .collect();
        parts.push(format!(
            "policy: {:?}{}",
            d.verdict,
            if rules.is_empty() {
                String::new()
            } else {
                format!(" by {}", rules.join(", "))
            }
        ));
    }
    if let Some(r) = &g.receipt {
        parts.push(format!("audit record {} in {}", r.seq, r.file.display()));
    }
    eprintln!("[{}]", parts.join("; "));
}

fn guard_json(g: &GuardedGeneration) -> serde_json::Value {
    serde_json::json!({
        "request_id": g.request_id,
        "masked_prompt": g.masked_prompt,
        "prompt_entities": g.prompt_entities,
        "decision": g.decision,
        "audit": g.receipt.as_ref().map(|r| serde_json::json!({
            "seq": r.seq, "hash": r.hash, "file": r.file, "offset": r.offset,
        })),
    })
}

pub(crate) fn generate(common: &Common, prompt: &str, json: bool, top_logits: usize) -> CliResult {
    let model = common.load()?;
    let params = common.params(if json { top_logits } else { 0 });
    let guard = common
        .compliance
        .enabled()
        .then(|| common.compliance.guard())
        .transpose()?;
    let request = common.compliance.request();
    let mut stdout = std::io::stdout().lock();
    let (out, guarded) = run_request(&model, guard.as_ref(), &request, Input::Prompt(prompt), &params, |ev| {
        if !json {
            let _ = stdout.write_all(ev.text.as_bytes());
            let _ = stdout.flush();
        }
        ControlFlow::Continue(())
    })?;
    drop(stdout);
    if json {
        let mut obj = serde_json::json!({
            "prompt": prompt,
            "prompt_ids": out.prompt_ids,
            "ids": out.ids,
            "text": out.text,
            "steps": out.steps,
            "finish_reason": out.finish.as_str(),
            "prompt_tokens": out.timings.prompt_tokens,
            "generated_tokens": out.timings.generated_tokens,
            "prefill_ms": out.timings.prefill.as_secs_f64() * 1e3,
            "decode_ms": out.timings.decode.as_secs_f64() * 1e3,
        });
        if let Some(g) = &guarded {
            obj["compliance"] = guard_json(g);
        }
        println!("{obj}");
        return Ok(());
    }
    println!();
    let t = out.timings;
    eprintln!(
        "[{} prompt tokens in {:.0} ms, {} tokens in {:.0} ms ({:.1} tok/s), finish: {}]",
        t.prompt_tokens,
        t.prefill.as_secs_f64() * 1e3,
        t.generated_tokens,
        t.decode.as_secs_f64() * 1e3,
        t.generated_tokens as f64 / t.decode.as_secs_f64().max(1e-9),
        out.finish.as_str()
    );
    if let Some(g) = &guarded {
        report_guard(g);
    }
    Ok(())
}
