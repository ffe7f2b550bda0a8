//! `finllm generate`, and the request the command line describes (shared with `chat`).

use std::io::Write;
use std::ops::ControlFlow;

use finllm_core::compliance::GuardReport;
use finllm_core::{Prompt, Request};

use crate::options::Common;
use crate::util::CliResult;

/// The request for `prompt` with the command line's parameters, guard and request ids.
pub(crate) fn request(
    common: &Common,
    prompt: Prompt,
    top_logits: usize,
) -> Result<Request, Box<dyn std::error::Error>> {
    let guard = common
        .compliance
        .enabled()
        .then(|| common.compliance.guard())
        .transpose()?;
    Ok(Request {
        guard: guard.map(std::sync::Arc::new),
        info: common.compliance.request(),
        ..Request::new(prompt).with_params(common.params(top_logits))
    })
}

/// One line on stderr about what the guard did.
pub(crate) fn report_guard(g: &GuardReport) {
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

fn guard_json(g: &GuardReport) -> serde_json::Value {
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
    let request = request(
        common,
        Prompt::Text(prompt.to_string()),
        if json { top_logits } else { 0 },
    )?;
    let mut stdout = std::io::stdout().lock();
    let response = request.run_streaming(&model, |ev| {
        if !json {
            let _ = stdout.write_all(ev.text.as_bytes());
            let _ = stdout.flush();
        }
        ControlFlow::Continue(())
    })?;
    drop(stdout);
    let (out, guarded) = (response.generation, response.guard);
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
