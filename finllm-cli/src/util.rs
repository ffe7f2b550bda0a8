//! Helpers every command shares: the result type, the "check failed" error (exit code 3), and
//! reading inputs.

use std::path::Path;

pub(crate) type CliResult = Result<(), Box<dyn std::error::Error>>;

/// `policy` with the sentence embedder in `dir` for its semantic rules. Without the directory
/// the rules are skipped (each decision notes it) and a note says so once.
pub(crate) fn with_embedder(
    policy: finllm_core::compliance::Policy,
    dir: &Path,
) -> Result<finllm_core::compliance::Policy, Box<dyn std::error::Error>> {
    if !policy.has_semantic_rules() {
        return Ok(policy);
    }
    if !dir.join("config.json").is_file() {
        eprintln!(
            "note: no sentence embedder at {} (scripts/fetch_models.sh fetches it); the policy's semantic rules are skipped",
            dir.display()
        );
        return Ok(policy);
    }
    let embedder = finllm_core::rag::Embedder::load(dir, None)?;
    Ok(policy.with_embedder(std::sync::Arc::new(embedder))?)
}

/// A check that ran and found a problem: exit code 3, not an error of the command itself.
#[derive(Debug)]
pub(crate) struct Failed(pub(crate) String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

pub(crate) fn read_stdin() -> Result<String, Box<dyn std::error::Error>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
    String::from_utf8(bytes)
        .map_err(|e| format!("stdin is not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()).into())
}

pub(crate) fn read_key(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let key = std::fs::read(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let trimmed = key.trim_ascii().to_vec();
    if trimmed.len() < 16 {
        return Err(format!("key file {} holds fewer than 16 bytes", path.display()).into());
    }
    Ok(trimmed)
}

/// A UTF-8 text file, whole.
pub(crate) fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))
}
