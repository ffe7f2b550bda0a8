//! `cargo bench --bench index -- [N] [DIM] [M] [EF_CONSTRUCTION] [EF_SEARCH] [--data FILE]
//! [--ef-sweep EF,EF,...]`: the embedded vector index on N random DIM-dimensional vectors
//! (defaults 100000, 384, 16, 200, 64): build time, recall@10 against exact search, and
//! single-thread query latency, also with filters admitting 10% and 0.1% of the vectors, then
//! unfiltered at each `--ef-sweep` value on the same graph. One JSON object on stdout.
//! `scripts/index_bench.py` writes the vectors (`--data`: u32 n, u32 queries, u32 dim, then the
//! f32 vectors and queries, little-endian) and runs hnswlib on the same ones for comparison.

use std::time::Instant;

use finllm::rag::{IndexConfig, VectorIndex};
use finllm::util::Rng;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let data = raw
        .iter()
        .position(|a| a == "--data")
        .and_then(|i| raw.get(i + 1))
        .cloned();
    let sweep: Vec<usize> = match raw.iter().position(|a| a == "--ef-sweep").and_then(|i| raw.get(i + 1)) {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let args: Vec<usize> = raw
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let after = |flag: &str| *i > 0 && raw[i - 1] == flag;
            !a.starts_with("--") && !after("--data") && !after("--ef-sweep")
        })
        .map(|(_, a)| a)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (mut n, mut dim, m, ef_c, ef_s) = (arg(0, 100_000), arg(1, 384), arg(2, 16), arg(3, 200), arg(4, 64));
    let k = 10;
    let (vectors, queries) = match &data {
        Some(path) => {
            let bytes = std::fs::read(path)?;
            let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as usize;
            let (count, n_queries) = (word(0), word(1));
            dim = word(2);
            n = count;
            let floats: Vec<f32> = bytes[12..]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let rows: Vec<Vec<f32>> = floats.chunks_exact(dim).map(<[f32]>::to_vec).collect();
            if rows.len() != count + n_queries {
                return Err(format!("{path}: {} vectors, the header says {}", rows.len(), count + n_queries).into());
            }
            let (v, q) = rows.split_at(count);
            (v.to_vec(), q.to_vec())
        }
        None => {
            let mut rng = Rng::new(42);
            let mut random = |count: usize| -> Vec<Vec<f32>> {
                (0..count)
                    .map(|_| (0..dim).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect())
                    .collect()
            };
            (random(n), random(200))
        }
    };
    let n_queries = queries.len();
    let config = IndexConfig {
        m,
        ef_construction: ef_c,
        ef_search: ef_s,
        ..Default::default()
    };
    let mut index = VectorIndex::new(dim, config)?;
    let start = Instant::now();
    for (i, v) in vectors.iter().enumerate() {
        index.add(i as u64, v)?;
    }
    let build_s = start.elapsed().as_secs_f64();
    let mut report = serde_json::json!({
        "n": n, "dim": dim, "m": m, "ef_construction": ef_c, "ef_search": ef_s, "k": k,
        "build_s": build_s,
    });
    for (name, modulus) in [("all", 1u64), ("filter_10pct", 10), ("filter_0.1pct", 1000)] {
        let admit = move |key: u64| key.is_multiple_of(modulus);
        let filter: Option<&dyn Fn(u64) -> bool> = if modulus == 1 { None } else { Some(&admit) };
        let truth: Vec<Vec<u64>> = queries
            .iter()
            .map(|q| index.exact(q, k, filter).map(|h| h.iter().map(|h| h.key).collect()))
            .collect::<Result<_, _>>()?;
        let start = Instant::now();
        let mut found = 0;
        let mut wanted = 0;
        for (q, t) in queries.iter().zip(&truth) {
            let hits = index.search(q, k, filter)?;
            found += hits.iter().filter(|h| t.contains(&h.key)).count();
            wanted += t.len();
        }
        let per_query_ms = start.elapsed().as_secs_f64() * 1e3 / n_queries as f64;
        report[name] = serde_json::json!({
            "recall_at_10": found as f64 / wanted as f64,
            "query_ms": per_query_ms,
            "qps": 1e3 / per_query_ms,
        });
    }
    // Unfiltered recall and speed at each `--ef-sweep` value, on the same graph.
    let truth: Vec<Vec<u64>> = queries
        .iter()
        .map(|q| index.exact(q, k, None).map(|h| h.iter().map(|h| h.key).collect()))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for ef in sweep {
        index.set_ef_search(ef);
        let start = Instant::now();
        let mut found = 0;
        for (q, t) in queries.iter().zip(&truth) {
            found += index.search(q, k, None)?.iter().filter(|h| t.contains(&h.key)).count();
        }
        let per_query_ms = start.elapsed().as_secs_f64() * 1e3 / n_queries as f64;
        rows.push(serde_json::json!({
            "ef_search": ef,
            "recall_at_10": found as f64 / (k * n_queries) as f64,
            "query_ms": per_query_ms,
            "qps": 1e3 / per_query_ms,
        }));
    }
    if !rows.is_empty() {
        report["sweep"] = serde_json::Value::Array(rows);
    }
    println!("{report}");
    Ok(())
}
