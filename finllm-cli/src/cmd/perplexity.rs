//! `finllm perplexity`.

use std::path::Path;

use finllm_core::{LoadOptions, Model};

use crate::util::{read_text, CliResult};

pub(crate) fn perplexity(model: &Path, text: &Path, context: usize, threads: Option<usize>, json: bool) -> CliResult {
    let m = Model::load(
        model,
        &LoadOptions {
            threads,
            ..Default::default()
        },
    )?;
    let text_str = read_text(text)?;
    let p = finllm_core::eval::perplexity(&m, &text_str, context)?;
    if json {
        let mut v = serde_json::to_value(&p)?;
        v["model"] = serde_json::Value::String(model.display().to_string());
        v["device"] = serde_json::Value::String(m.device());
        v["text"] = serde_json::Value::String(text.display().to_string());
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.5} nats) over {} tokens in {} windows of {}",
            p.perplexity, p.mean_nll, p.scored_tokens, p.windows, p.context
        );
    }
    Ok(())
}
