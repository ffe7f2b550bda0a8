//! `cargo bench --bench overhead -- MODEL`: per-call cost of the core API on a tiny model, the
//! baseline for the binding overhead numbers (Python: finllm-py/tests/bench_overhead.py, C:
//! examples/cpp/overhead.c).

use std::time::Instant;

use finllm::{GenerateParams, LoadOptions, Model};

fn per_call_us(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .ok_or("usage: overhead MODEL.gguf")?;
    let model = Model::load(
        &path,
        &LoadOptions {
            threads: Some(1),
            ..Default::default()
        },
    )?;
    let params = GenerateParams {
        max_tokens: 1,
        ..Default::default()
    };
    let tokenize = per_call_us(20_000, || {
        model.tokenize("The rate").unwrap();
    });
    let generate = per_call_us(2_000, || {
        model.generate("The rate", &params).unwrap();
    });
    println!("{{\"layer\": \"rust\", \"tokenize_us\": {tokenize:.2}, \"generate1_us\": {generate:.2}}}");
    Ok(())
}
