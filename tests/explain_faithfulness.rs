//! Faithfulness of source attribution on the real SmolLM2 model, over `examples/data/`.
//!
//! 41 cases (`tests/data/explain_cases.jsonl`: a question of the retrieval test set and its
//! answer, written from the question's evidence sentence). Each case puts three sources into a
//! grounded prompt as `finllm ask` does: the chunk of the sample filings that holds the answer
//! and the two best-ranked chunks (hybrid search for the question) that do not, hard
//! distractors, the answering one rotated through positions 1-3. The answer is teacher-forced
//! and explained at source granularity.
//!
//! Checked: the answering source ranks first for the surrogate and for occlusion in >= 90% of
//! cases; removing the surrogate's top source lowers the answer's log-probability at least as
//! much as removing the source attention ranks first, and the one most similar to the question
//! by embedding, in >= 80% of cases; the surrogate's linear datamodeling score is reported.

mod common;

use std::sync::Arc;

use finllm::explain::{Attribution, Attributor, ExplainOptions, Method};
use finllm::rag::answer::DEFAULT_INSTRUCTIONS;
use finllm::rag::{Collection, CollectionConfig, Embedder, Metadata, Passage, Query};

fn normalized(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn top_index(a: &Attribution) -> usize {
    a.units[0].index
}

#[test]
fn the_answering_source_ranks_first_and_its_removal_hurts_most() {
    let root = common::root();
    let model = common::smollm2();
    let embedder = Arc::new(Embedder::load(common::minilm_dir(), Some(2)).unwrap());
    let data = root.join("examples/data");
    let mut collection = Collection::new(Arc::clone(&embedder), CollectionConfig::default()).unwrap();
    collection
        .sync_dir(&data, &Metadata::load(&data.join("metadata.toml")).unwrap(), |_| {})
        .unwrap();
    let questions: std::collections::HashMap<String, serde_json::Value> =
        std::fs::read_to_string(root.join("tests/data/rag_questions.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["id"].as_str().unwrap().to_string(), v)
            })
            .collect();
    let cases: Vec<serde_json::Value> = std::fs::read_to_string(root.join("tests/data/explain_cases.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases.len() >= 30);

    let (mut surrogate_first, mut occlusion_first, mut vs_attention, mut vs_embedding) = (0, 0, 0, 0);
    // Where the other ranking picks another source: how often removing ours hurts strictly more.
    let (mut attention_differs, mut vs_attention_strict) = (0, 0);
    let (mut embedding_differs, mut vs_embedding_strict) = (0, 0);
    let mut lds = Vec::new();
    let mut explain_ms = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let q = &questions[case["id"].as_str().unwrap()];
        let question = q["question"].as_str().unwrap();
        let answer = case["answer"].as_str().unwrap();
        let evidence = normalized(q["evidence"].as_str().unwrap());
        // The chunk that holds the evidence (and so the answer), in the question's file.
        let holder = collection
            .chunks()
            .filter(|c| c.source == q["source"].as_str().unwrap())
            .find(|c| normalized(&c.text).contains(&evidence))
            .or_else(|| collection.chunks().find(|c| normalized(&c.text).contains(answer)))
            .unwrap_or_else(|| panic!("{}: no chunk holds {answer:?}", case["id"]));
        assert!(normalized(&holder.text).contains(answer), "{}", case["id"]);
        let hits = collection.search(&Query::new(question.to_string(), 12)).unwrap();
        let mut distractors: Vec<Passage> = hits
            .into_iter()
            .filter(|p| p.id != holder.id() && !normalized(&p.text).contains(answer))
            .take(2)
            .collect();
        assert_eq!(distractors.len(), 2, "{}", case["id"]);
        let at = i % 3;
        distractors.insert(at, holder.passage());
        let sources = distractors;

        let options = ExplainOptions {
            answer: Some(answer.to_string()),
            samples: 32,
            held_out: 16,
            seed: i as u64,
            ..Default::default()
        };
        let mut attributor =
            Attributor::for_sources(&model, &sources, question, DEFAULT_INSTRUCTIONS, &options).unwrap();
        let surrogate = attributor.run(Method::Surrogate).unwrap();
        let occlusion = attributor.run(Method::Occlusion).unwrap();
        let attention = attributor.run(Method::Attention).unwrap();
        explain_ms.push(surrogate.timings.explain_ms);
        lds.push(surrogate.surrogate.as_ref().unwrap().lds.unwrap_or(0.0));

        // The drop in the answer's log-probability when each source alone is removed.
        let drop = |unit: usize| occlusion.units.iter().find(|u| u.index == unit).unwrap().score;
        let top = top_index(&surrogate);
        let by_attention = top_index(&attention);
        let q_vec = &embedder.embed(&[question]).unwrap()[0];
        let s_vecs = embedder
            .embed(&sources.iter().map(|p| p.text.as_str()).collect::<Vec<_>>())
            .unwrap();
        let cos = |v: &[f32]| {
            v.iter()
                .zip(q_vec)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum::<f64>()
        };
        let by_embedding = (0..3)
            .max_by(|&a, &b| cos(&s_vecs[a]).total_cmp(&cos(&s_vecs[b])))
            .unwrap();

        surrogate_first += usize::from(top == at);
        occlusion_first += usize::from(top_index(&occlusion) == at);
        vs_attention += usize::from(drop(top) >= drop(by_attention));
        vs_embedding += usize::from(drop(top) >= drop(by_embedding));
        if by_attention != top {
            attention_differs += 1;
            vs_attention_strict += usize::from(drop(top) > drop(by_attention));
        }
        if by_embedding != top {
            embedding_differs += 1;
            vs_embedding_strict += usize::from(drop(top) > drop(by_embedding));
        }
        eprintln!(
            "{} answer at [{}]: surrogate top [{}] occlusion top [{}] attention top [{}] embedding top [{}]; drops {:.2} {:.2} {:.2}; LDS {:.2}",
            case["id"].as_str().unwrap(),
            at + 1,
            top + 1,
            top_index(&occlusion) + 1,
            by_attention + 1,
            by_embedding + 1,
            drop(0),
            drop(1),
            drop(2),
            lds.last().unwrap()
        );
    }
    let n = cases.len() as f64;
    let rate = |k: usize| k as f64 / n;
    let mean_lds = lds.iter().sum::<f64>() / n;
    explain_ms.sort_by(f64::total_cmp);
    eprintln!(
        "{} cases: answering source first: surrogate {:.3}, occlusion {:.3}; removing the surrogate's top source \
         hurts at least as much as attention's top {:.3} (strictly more in {}/{} cases where they differ), as \
         embedding similarity's top {:.3} (strictly more in {}/{}); mean LDS {:.3}; surrogate time median {:.0} ms",
        cases.len(),
        rate(surrogate_first),
        rate(occlusion_first),
        rate(vs_attention),
        vs_attention_strict,
        attention_differs,
        rate(vs_embedding),
        vs_embedding_strict,
        embedding_differs,
        mean_lds,
        explain_ms[explain_ms.len() / 2]
    );
    assert!(rate(surrogate_first) >= 0.9, "surrogate {}", rate(surrogate_first));
    assert!(rate(occlusion_first) >= 0.9, "occlusion {}", rate(occlusion_first));
    assert!(rate(vs_attention) >= 0.8, "vs attention {}", rate(vs_attention));
    assert!(rate(vs_embedding) >= 0.8, "vs embedding {}", rate(vs_embedding));
    assert!(vs_attention_strict as f64 >= 0.8 * attention_differs as f64);
    assert!(vs_embedding_strict as f64 >= 0.8 * embedding_differs as f64);
}
