//! `finllm policy check`.

use std::path::Path;

use finllm_core::compliance::Policy;

use crate::util::{read_stdin, CliResult, Failed};

pub(crate) fn policy_check(path: Option<&Path>, embedder: &Path, json: bool) -> CliResult {
    let policy = match path {
        Some(p) => Policy::from_file(p)?,
        None => Policy::default_packs()?,
    };
    let policy = crate::util::with_embedder(policy, embedder)?;
    let text = read_stdin()?;
    let decision = policy.check(&text)?;
    if json {
        println!("{}", serde_json::to_string(&decision)?);
    } else {
        println!("decision: {:?}", decision.verdict);
        for m in &decision.matches {
            println!(
                "  {} [{}] {} at bytes {}..{}: {:?}",
                m.rule_id,
                m.category,
                m.action.name(),
                m.span.start,
                m.span.end,
                m.matched
            );
        }
        for n in &decision.notes {
            println!("  note: {n}");
        }
    }
    if decision.is_blocked() {
        return Err(Box::new(Failed("blocked by the policy".into())));
    }
    Ok(())
}
