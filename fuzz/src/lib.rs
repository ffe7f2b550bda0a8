//! Shared fixtures of the fuzz targets: a tiny random-weight model, a scratch directory.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use finllm_core::tools::synthetic::SyntheticSpec;
use finllm_core::model::GgufFile;
use finllm_core::quant::QuantType;
use finllm_core::{Architecture, Tokenizer};

/// A per-process scratch directory for targets whose parser reads files.
pub fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("finllm-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// The tiny llama's GGUF image (F32 weights), written once.
pub fn tiny_gguf_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = scratch().join("tiny.gguf");
        SyntheticSpec::tiny(Architecture::Llama, 1)
            .write_gguf(&path, QuantType::Q8_0)
            .expect("tiny model");
        path
    })
}

/// The tiny model's tokenizer (byte-level BPE from its GGUF).
pub fn tiny_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = Arc::new(GgufFile::open(tiny_gguf_path()).expect("tiny model opens"));
        Tokenizer::from_gguf(&file).expect("tiny tokenizer")
    })
}

/// Cut `data` at the first `0xff 0x00` pair into two inputs (a cheap, stable way for one fuzz
/// input to carry two parts).
pub fn split2(data: &[u8]) -> (&[u8], &[u8]) {
    match data.windows(2).position(|w| w == [0xff, 0x00]) {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[]),
    }
}
