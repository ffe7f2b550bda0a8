//! `finllm compare-devices`.

use std::path::Path;
use std::sync::Arc;

use finllm_core::model::Backend;
use finllm_core::{GgufFile, LoadOptions, Model, Transformer};

use crate::util::CliResult;

/// `finllm compare-devices`: logits of the CPU kernels against `device` on the same weights.
pub(crate) fn compare_devices(
    model: &Path,
    device: &str,
    prompt: &str,
    steps: usize,
    threads: Option<usize>,
) -> CliResult {
    let spec: finllm_core::DeviceSpec = device.parse()?;
    let reference = Model::load(
        model,
        &LoadOptions {
            threads,
            ..Default::default()
        },
    )?;
    let file = Arc::new(GgufFile::open(model)?);
    let other = Transformer::from_gguf_on(&file, &Backend::Candle(spec.resolve()?))?;
    let ids = reference.tokenize(prompt)?;
    let c = reference.run(|| finllm_core::bench::compare_logits(reference.transformer(), &other, &ids, steps))?;
    let mut v = serde_json::to_value(&c)?;
    v["model"] = serde_json::Value::String(model.display().to_string());
    v["device"] = serde_json::Value::String(finllm_core::device::device_name(other.backend().device()));
    v["quant"] = serde_json::Value::String(dominant_quant(&file));
    println!("{v}");
    Ok(())
}

/// The tensor type holding most of a GGUF file's weight bytes.
fn dominant_quant(file: &GgufFile) -> String {
    let mut bytes: std::collections::HashMap<String, u64> = Default::default();
    for t in file.tensors() {
        *bytes.entry(t.dtype.name().to_string()).or_default() += t.n_bytes;
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(q, _)| q)
        .unwrap_or_default()
}
