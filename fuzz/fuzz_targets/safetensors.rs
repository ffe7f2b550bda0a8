//! An HF safetensors checkpoint: the fuzz input is `model.safetensors` beside a valid
//! `config.json` (and, after a 0xff 0x00 separator, a replacement `config.json`).
#![no_main]

use finllm_core::Transformer;
use finllm_fuzz::{scratch, split2};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = scratch().join("st");
    if !dir.join("config.json").exists() {
        finllm_core::tools::synthetic::SyntheticSpec::tiny(finllm_core::Architecture::Llama, 1)
            .write_safetensors_dir(&dir, finllm_core::quant::QuantType::F32)
            .expect("tiny checkpoint");
        std::fs::copy(dir.join("config.json"), dir.join("config.json.orig")).expect("config copy");
    }
    let (weights, config) = split2(data);
    std::fs::write(dir.join("model.safetensors"), weights).expect("write");
    if config.is_empty() {
        std::fs::copy(dir.join("config.json.orig"), dir.join("config.json")).expect("config copy");
    } else {
        std::fs::write(dir.join("config.json"), config).expect("write");
    }
    let _ = Transformer::from_safetensors(&dir);
});
