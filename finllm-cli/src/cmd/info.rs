//! `finllm info`.

use std::path::Path;

use finllm_core::{GgufFile, LoadOptions, Model};

use crate::util::CliResult;

pub(crate) fn info(path: &Path, list_tensors: bool, check_weights: bool) -> CliResult {
    if path.is_dir() {
        let model = Model::load(path, &LoadOptions::default())?;
        println!("source: safetensors directory {}", path.display());
        print_config(&model);
        return Ok(());
    }
    let file = GgufFile::open(path)?;
    println!(
        "file: {} ({} bytes, GGUF v{})",
        path.display(),
        file.file_size(),
        file.version()
    );
    match finllm_core::model::config_from_gguf(&file) {
        Ok(cfg) => print_cfg(&cfg),
        Err(e) => println!("architecture: not loadable: {e}"),
    }
    let mut by_type: std::collections::BTreeMap<String, (usize, u64, u64)> = Default::default();
    for t in file.tensors() {
        let e = by_type.entry(t.dtype.to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.n_bytes;
    }
    let total: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    println!("parameters: {total} ({:.1} M)", total as f64 / 1e6);
    println!("tensor types:");
    for (ty, (n, elems, bytes)) in by_type {
        println!("  {ty:>6}: {n:4} tensors, {elems:>12} elements, {bytes:>11} bytes");
    }
    println!("metadata ({} keys):", file.metadata().len());
    for (k, v) in file.metadata() {
        println!("  {k} = {}", v.describe());
    }
    if list_tensors {
        println!("tensors:");
        for t in file.tensors() {
            println!("  {:40} {:6} {:?}", t.name, t.dtype.to_string(), t.shape());
        }
    }
    if check_weights {
        file.check_finite()?;
        println!("weights: all {} tensors finite", file.tensors().len());
    }
    Ok(())
}

fn print_config(model: &Model) {
    print_cfg(model.config());
}

fn print_cfg(c: &finllm_core::ModelConfig) {
    println!("architecture: {}", c.arch.name());
    println!(
        "layers: {}, hidden: {}, heads: {} (kv {}), head_dim: {}, ffn: {}, vocab: {}, context: {}, rope theta: {}",
        c.n_layers,
        c.hidden_size,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_size,
        c.vocab_size,
        c.context_length,
        c.rope_theta
    );
}
