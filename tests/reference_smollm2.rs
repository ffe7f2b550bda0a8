//! SmolLM2-135M Q4_1 against llama.cpp's reference outputs (committed in tests/data/reference,
//! copied from the shared reference folder), with the tolerances its README derives from
//! llama.cpp's own run-to-run noise.

mod common;

use std::sync::OnceLock;

use finllm::model::{ForwardOptions, SeqInput};
use finllm::{GenerateParams, LoadOptions, Model};

struct Case {
    text: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    /// Top-10 (id, logit) before each greedy token.
    steps: Vec<Vec<(u32, f64)>>,
}

fn cases() -> Vec<Case> {
    let r = common::reference("smollm2_llamacpp.json");
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    r["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            prompt_ids: ids(&c["prompt_ids"]),
            greedy_ids: ids(&c["greedy_ids"]),
            steps: c["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| {
                    s.as_array()
                        .unwrap()
                        .iter()
                        .map(|p| (p[0].as_u64().unwrap() as u32, p[1].as_f64().unwrap()))
                        .collect()
                })
                .collect(),
        })
        .collect()
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let opts = LoadOptions {
            threads: Some(2),
            ..Default::default()
        };
        Model::load(common::smollm2_path(), &opts).expect("SmolLM2 loads")
    })
}

fn margin(step: &[(u32, f64)]) -> f64 {
    step[0].1 - step[1].1
}

#[test]
fn tokenisation_is_identical() {
    for c in cases() {
        assert_eq!(model().tokenize(&c.text).unwrap(), c.prompt_ids, "prompt {:?}", c.text);
    }
}

/// Logits for every position of prompt + reference continuation, in one forward call.
fn teacher_forced(c: &Case) -> Vec<Vec<f32>> {
    let m = model();
    let ids: Vec<u32> = c.prompt_ids.iter().chain(&c.greedy_ids).copied().collect();
    let mut cache = m.transformer().new_cache();
    let opts = ForwardOptions {
        all_logits: true,
        ..Default::default()
    };
    let out = m
        .run(|| {
            m.transformer().forward_batch(
                &mut [SeqInput {
                    tokens: &ids,
                    cache: &mut cache,
                }],
                &opts,
            )
        })
        .unwrap();
    let logits = out[0].logits.to_vec2::<f32>().unwrap();
    // Row p holds the logits after token p; step i follows prompt + greedy[..i].
    (0..c.steps.len())
        .map(|i| logits[c.prompt_ids.len() - 1 + i].clone())
        .collect()
}

#[test]
fn teacher_forced_logits_and_argmax_match_llama_cpp() {
    let mut diffs = Vec::new();
    for c in cases() {
        let ours = teacher_forced(&c);
        for (i, (step, logits)) in c.steps.iter().zip(&ours).enumerate() {
            for &(id, logit) in step {
                diffs.push((f64::from(logits[id as usize]) - logit).abs());
            }
            if margin(step) > 1.0 {
                assert_eq!(
                    finllm::generate::argmax(logits),
                    step[0].0,
                    "argmax differs at step {i} of {:?} (reference margin {:.2})",
                    c.text,
                    margin(step)
                );
            }
        }
    }
    diffs.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        common::quantile(&diffs, 0.5),
        common::quantile(&diffs, 0.99),
        diffs[diffs.len() - 1],
    );
    eprintln!(
        "top-10 |logit diff| over {} values: p50 {p50:.3} p99 {p99:.3} max {max:.3}",
        diffs.len()
    );
    assert!(p50 <= 0.15, "median {p50}");
    assert!(p99 <= 1.0, "p99 {p99}");
    assert!(max <= 2.0, "max {max}");
}

#[test]
fn greedy_continuation_matches_until_a_close_call() {
    for c in cases() {
        let params = GenerateParams {
            max_tokens: c.greedy_ids.len(),
            ..Default::default()
        };
        let out = model().generate(&c.text, &params).unwrap();
        // Steps up to (excluding) the first whose reference margin is below 0.25 must agree.
        let firm = c.steps.iter().take_while(|s| margin(s) >= 0.25).count();
        let n = firm.min(c.greedy_ids.len());
        assert!(
            out.ids.len() >= n,
            "{:?}: stopped after {} tokens",
            c.text,
            out.ids.len()
        );
        assert_eq!(out.ids[..n], c.greedy_ids[..n], "{:?}: first {n} greedy tokens", c.text);
    }
}

#[test]
fn streamed_text_never_holds_a_broken_character() {
    // The Chinese case's reference continuation ends inside a UTF-8 character.
    let c = cases().into_iter().find(|c| c.text.starts_with('央')).unwrap();
    let tok = model().tokenizer();
    let raw = tok.decode_bytes(&c.greedy_ids, true).unwrap();
    assert!(
        std::str::from_utf8(&raw).is_err(),
        "the reference ids end in a split character"
    );
    let mut dec = tok.stream_decoder();
    let mut streamed = String::new();
    for &id in &c.greedy_ids {
        let piece = dec.push(id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "broken character emitted after token {id}");
        streamed.push_str(&piece);
    }
    assert!(dec.pending_bytes() > 0);
    assert_eq!(dec.finish(), dec_len_of_tail(&raw));
    // What was streamed is exactly the valid prefix of the bytes.
    let valid = std::str::from_utf8(&raw).unwrap_err().valid_up_to();
    assert_eq!(streamed.as_bytes(), &raw[..valid]);

    // Through the generation API too: events carry only whole characters.
    let params = GenerateParams {
        max_tokens: 32,
        ..Default::default()
    };
    for ev in model().stream(&c.text, &params).unwrap() {
        assert!(!ev.unwrap().text.contains('\u{FFFD}'));
    }
}

fn dec_len_of_tail(raw: &[u8]) -> usize {
    raw.len() - std::str::from_utf8(raw).unwrap_err().valid_up_to()
}
