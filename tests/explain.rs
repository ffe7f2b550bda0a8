//! Explanations on the real SmolLM2 model: occlusion against recomputing every ablated prompt
//! from scratch, batched against unbatched ablations, Shapley efficiency, attention rows that
//! sum to one, known answers (a copied code; the source holding an answer), and typed errors.

mod common;

use std::sync::{Arc, OnceLock};

use finllm::explain::ablate::Ablator;
use finllm::explain::{explain, Attribution, ExplainOptions, Granularity, Method, Segment};
use finllm::model::{ForwardOptions, SeqInput};
use finllm::{ChatMessage, Error, Model, Prompt};

fn model() -> Arc<Model> {
    static M: OnceLock<Arc<Model>> = OnceLock::new();
    M.get_or_init(|| Arc::new(common::smollm2())).clone()
}

const COPY: &str = "The code is 4711. Repeat the code:";

fn run(prompt: &Prompt, options: ExplainOptions) -> Attribution {
    explain(&model(), prompt, &options).unwrap()
}

/// `log p(answer | prompt)` per answer token, from a fresh cache over the whole sequence, with
/// log-softmax in f64: the independent oracle.
fn logprobs_from_scratch(model: &Model, prompt: &[u32], answer: &[u32]) -> Vec<f64> {
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(answer);
    let mut cache = model.transformer().new_cache();
    let opts = ForwardOptions {
        all_logits: true,
        ..Default::default()
    };
    let out = model
        .run(|| {
            model.transformer().forward_batch(
                &mut [SeqInput {
                    tokens: &seq,
                    cache: &mut cache,
                }],
                &opts,
            )
        })
        .unwrap();
    let logits = out[0].logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let vocab = model.config().vocab_size;
    answer
        .iter()
        .enumerate()
        .map(|(j, &id)| {
            let row = &logits[(prompt.len() - 1 + j) * vocab..(prompt.len() + j) * vocab];
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let z: f64 = row.iter().map(|&v| (f64::from(v) - max).exp()).sum();
            f64::from(row[id as usize]) - max - z.ln()
        })
        .collect()
}

#[test]
fn occlusion_equals_recomputing_each_ablated_prompt_and_batches_change_nothing() {
    let m = model();
    let prompt = Prompt::Text(COPY.into());
    let options = ExplainOptions {
        method: Method::Occlusion,
        granularity: Granularity::Token,
        answer: Some(" 4711".into()),
        ..Default::default()
    };
    let a = run(&prompt, options.clone());
    let (ids, offsets) = m.tokenizer().encode_with_offsets(COPY).unwrap();
    let mut answer = m.tokenizer().encode(" 4711").unwrap();
    if m.tokenizer().adds_bos() {
        answer.remove(0);
    }
    // Token units are the prompt's tokens (a BOS is not a unit), in order, with their spans.
    let firsts: Vec<usize> = (0..ids.len()).filter(|&p| offsets[p].0 < offsets[p].1).collect();
    let units = a.units_in_order();
    assert_eq!(units.len(), firsts.len());
    let base = logprobs_from_scratch(&m, &ids, &answer);
    let got_base = a.base_logprobs.as_ref().unwrap();
    let mut worst = 0f64;
    for (b, g) in base.iter().zip(got_base) {
        worst = worst.max((b - g).abs());
    }
    for (u, &p) in units.iter().zip(&firsts) {
        assert_eq!((u.byte_start, u.byte_end), offsets[p]);
        let mut ablated = ids.clone();
        ablated.remove(p);
        let lp = logprobs_from_scratch(&m, &ablated, &answer);
        for (t, (b, l)) in base.iter().zip(&lp).enumerate() {
            worst = worst.max((a.matrix[u.index][t] - (b - l)).abs());
        }
    }
    eprintln!("occlusion vs recomputation: max |difference| {worst:e} nats");
    assert!(worst <= 1e-6, "occlusion differs from recomputation by {worst}");

    // The same ablations one at a time give the same bits.
    let alone = run(&prompt, ExplainOptions { batch: 1, ..options });
    assert_eq!(alone.matrix, a.matrix);
    assert!(a.timings.forward_sequences == units.len() + 2);
}

#[test]
fn the_copied_code_carries_the_highest_attribution() {
    for method in [Method::Occlusion, Method::Shapley, Method::Surrogate] {
        for prompt in [
            Prompt::Text(COPY.into()),
            Prompt::Chat(vec![ChatMessage::user(COPY.to_string())]),
        ] {
            let chat = matches!(prompt, Prompt::Chat(_));
            let a = run(
                &prompt,
                ExplainOptions {
                    method,
                    // The chat model answers "The code is 4711": explain its "4711".
                    answer: Some(if chat { "The code is 4711" } else { " 4711" }.into()),
                    ..Default::default()
                },
            );
            let top = a.top().unwrap();
            eprintln!("{method:?} chat={chat}: top {:?} {:.3}", top.text, top.score);
            assert_eq!(top.text, "4711", "{method:?} chat={chat}: {:?}", &a.units[..3]);
            assert_eq!(&a.prompt[top.start..top.end], "4711");
        }
    }
}

#[test]
fn shapley_values_add_up_to_the_whole_prompts_effect() {
    let m = model();
    let a = run(
        &Prompt::Text(COPY.into()),
        ExplainOptions {
            method: Method::Shapley,
            granularity: Granularity::Token,
            answer: Some(" 4711".into()),
            samples: 3,
            ..Default::default()
        },
    );
    // f(every unit) − f(no unit), per answer token, from an Ablator over the same units.
    let (ids, _) = m.tokenizer().encode_with_offsets(COPY).unwrap();
    let mut answer = m.tokenizer().encode(" 4711").unwrap();
    if m.tokenizer().adds_bos() {
        answer.remove(0);
    }
    let (_, offsets) = m.tokenizer().encode_with_offsets(COPY).unwrap();
    let units: Vec<Vec<usize>> = (0..offsets.len())
        .filter(|&p| offsets[p].0 < offsets[p].1)
        .map(|p| vec![p])
        .collect();
    assert_eq!(units.len(), a.units.len());
    let n = units.len();
    let mut ab = Ablator::new(&m, ids, answer.clone(), units, 4).unwrap();
    let f = ab.score(&[vec![true; n], vec![false; n]]).unwrap();
    for t in 0..answer.len() {
        let sum: f64 = a.matrix.iter().map(|row| row[t]).sum();
        let want = f[0][t] - f[1][t];
        assert!((sum - want).abs() < 1e-9, "token {t}: {sum} vs {want}");
    }
}

#[test]
fn attention_rows_over_the_whole_prompt_sum_to_one() {
    for method in [Method::Attention, Method::Rollout] {
        let a = run(
            &Prompt::Text(COPY.into()),
            ExplainOptions {
                method,
                granularity: Granularity::Token,
                answer: Some(" 4711".into()),
                ..Default::default()
            },
        );
        // The first answer token is predicted from the prompt alone, every position of which
        // is a unit here (SmolLM2 adds no BOS): its attention over the units is a distribution.
        let sum: f64 = a.matrix.iter().map(|row| row[0]).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{method:?}: {sum}");
        assert!(a.matrix.iter().flatten().all(|&v| (-1e-6..=1.0 + 1e-6).contains(&v)));
    }
}

#[test]
fn every_layers_attention_is_reported_and_any_layer_can_score_the_units() {
    let options = ExplainOptions {
        method: Method::Attention,
        granularity: Granularity::Token,
        answer: Some(" 4711".into()),
        target_tokens: Some((0, 1)),
        ..Default::default()
    };
    let last = run(&Prompt::Text(COPY.into()), options.clone());
    let layers = last.attention_layers.clone().expect("per-layer attention");
    assert_eq!(layers.len(), model().config().n_layers);
    // The first answer token is predicted from the prompt alone: in every layer its attention
    // over the prompt's units (all its tokens) is a distribution.
    for (l, per_unit) in layers.iter().enumerate() {
        assert_eq!(per_unit.len(), last.units.len());
        let sum: f64 = per_unit.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "layer {l}: {sum}");
    }
    // The default scores come from the last layer; a chosen layer's from that layer.
    let scores = |a: &Attribution| a.units_in_order().iter().map(|u| u.score).collect::<Vec<f64>>();
    assert_eq!(scores(&last), *layers.last().unwrap());
    let third = run(
        &Prompt::Text(COPY.into()),
        ExplainOptions {
            layer: Some(3),
            ..options.clone()
        },
    );
    assert_eq!(scores(&third), layers[3]);
    assert_eq!(third.parameters["layer"], 3);
    assert_ne!(layers[3], *layers.last().unwrap());
    let err = explain(
        &model(),
        &Prompt::Text(COPY.into()),
        &ExplainOptions {
            layer: Some(layers.len()),
            ..options
        },
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

#[test]
fn the_source_holding_the_answer_ranks_first() {
    let sources = [
        (
            "weather",
            "Source A: It rained in Zurich on Monday and the lake was calm.",
        ),
        (
            "acme",
            "Source B: Acme Bank reported a CET1 ratio of 14.2 percent for the third quarter.",
        ),
        (
            "fund",
            "Source C: The Harbor Income Fund holds investment-grade bonds and cash.",
        ),
    ];
    let mut text = String::new();
    let mut segments = Vec::new();
    for (label, s) in sources {
        segments.push(Segment {
            label: label.into(),
            start: text.len(),
            end: text.len() + s.len(),
        });
        text.push_str(s);
        text.push('\n');
    }
    text.push_str("Question: What was Acme Bank's CET1 ratio? Answer: The CET1 ratio was");
    for method in [Method::Occlusion, Method::Surrogate, Method::Shapley] {
        let a = run(
            &Prompt::Text(text.clone()),
            ExplainOptions {
                method,
                granularity: Granularity::Segment,
                segments: segments.clone(),
                answer: Some(" 14.2 percent".into()),
                ..Default::default()
            },
        );
        assert_eq!(a.units.len(), 3);
        assert_eq!(
            a.top().unwrap().label.as_deref(),
            Some("acme"),
            "{method:?}: {:?}",
            a.units
        );
        if method == Method::Surrogate {
            let fit = a.surrogate.as_ref().unwrap();
            eprintln!("surrogate over 3 sources: LDS {:?}", fit.lds);
            assert!(fit.lds.unwrap() > 0.5);
        }
    }
}

#[test]
fn the_json_lists_ranked_units_with_spans_method_and_target() {
    // Characters beyond ASCII, so that character and byte spans differ.
    let prompt = "Le code — 净利润 4711 € — répétez le code :";
    let a = run(
        &Prompt::Text(prompt.into()),
        ExplainOptions {
            answer: Some(" 4711".into()),
            ..Default::default()
        },
    );
    let v: serde_json::Value = serde_json::from_str(&a.to_json().unwrap()).unwrap();
    assert_eq!(v["method"], "occlusion");
    assert_eq!(v["target"]["text"], " 4711");
    let units = v["units"].as_array().unwrap();
    let scores: Vec<f64> = units.iter().map(|u| u["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]));
    let chars: Vec<char> = prompt.chars().collect();
    let at = |u: &serde_json::Value, k: &str| u[k].as_u64().unwrap() as usize;
    for u in units {
        let text = u["text"].as_str().unwrap();
        assert_eq!(text, &prompt[at(u, "byte_start")..at(u, "byte_end")]);
        let by_chars: String = chars[at(u, "start")..at(u, "end")].iter().collect();
        assert_eq!(text, by_chars);
    }
    assert!(units.iter().any(|u| at(u, "start") != at(u, "byte_start")));
    assert_eq!(v["model_sha256"].as_str().unwrap().len(), 64);
}

#[test]
fn bad_requests_are_typed_errors() {
    let m = model();
    let text = Prompt::Text(COPY.into());
    let bad = |p: &Prompt, o: ExplainOptions| match explain(&m, p, &o) {
        Err(Error::InvalidArgument { name, .. }) => name,
        other => panic!("expected a typed error, got {other:?}"),
    };
    assert_eq!(bad(&Prompt::Ids(vec![1, 2]), ExplainOptions::default()), "prompt");
    let seg = |start, end| Segment {
        label: "x".into(),
        start,
        end,
    };
    for segments in [vec![], vec![seg(0, 400)], vec![seg(0, 10), seg(5, 12)], vec![seg(3, 3)]] {
        let o = ExplainOptions {
            granularity: Granularity::Segment,
            segments,
            answer: Some(" 4711".into()),
            ..Default::default()
        };
        assert_eq!(bad(&text, o), "segments");
    }
    let o = ExplainOptions {
        answer: Some(" 4711".into()),
        target_tokens: Some((2, 40)),
        ..Default::default()
    };
    assert_eq!(bad(&text, o), "target_tokens");
    let o = ExplainOptions {
        answer: Some(String::new()),
        ..Default::default()
    };
    assert_eq!(bad(&text, o), "target");
    assert_eq!(bad(&Prompt::Text("   ".into()), ExplainOptions::default()), "prompt");
}

/// Three fixed passages, whatever the query.
struct Desk;

impl finllm::rag::Retriever for Desk {
    fn name(&self) -> &str {
        "desk"
    }
    fn retrieve(&self, _: &finllm::rag::Query) -> finllm::Result<Vec<finllm::rag::Passage>> {
        let p = |source: &str, text: &str| finllm::rag::Passage {
            id: format!("{source}#0-{}", text.len()),
            source: source.into(),
            page: 1,
            start: 0,
            end: text.len(),
            text: text.into(),
            context: String::new(),
            score: 1.0,
            vector_score: None,
            keyword_score: None,
            meta: Default::default(),
        };
        Ok(vec![
            p("weather.txt", "It rained in Zurich on Monday and the lake was calm."),
            p(
                "acme.md",
                "Acme Bank reported a CET1 ratio of 14.2 percent for the third quarter.",
            ),
            p(
                "fund.pdf",
                "The Harbor Income Fund holds investment-grade bonds and cash.",
            ),
        ])
    }
}

/// A guard that masks personal data and records every request in a fresh audit log: the temp
/// directory, the log's path and the guard.
fn masking_guard_with_log(name: &str) -> (std::path::PathBuf, std::path::PathBuf, Arc<finllm::compliance::Guard>) {
    use finllm::compliance::audit::{AuditConfig, AuditLog};
    use finllm::compliance::pii::{PiiConfig, PiiDetector};
    use finllm::compliance::{Guard, GuardConfig};
    let dir = std::env::temp_dir().join(format!("finllm-explain-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("audit.log");
    let guard = Guard::new(GuardConfig {
        pii: Some(Arc::new(PiiDetector::new(PiiConfig::default()).unwrap())),
        audit: Some(Arc::new(AuditLog::open(&log_path, AuditConfig::default()).unwrap())),
        ..Default::default()
    })
    .unwrap();
    (dir, log_path, Arc::new(guard))
}

#[test]
fn a_guarded_answers_explanation_is_recorded_after_it_on_the_masked_prompt() {
    use finllm::compliance::audit::{self, RecordPhase};
    use sha2::{Digest, Sha256};

    let m = model();
    let (dir, log_path, guard) = masking_guard_with_log("audit");
    let options = finllm::rag::AskOptions {
        guard: Some(guard),
        params: finllm::GenerateParams {
            max_tokens: 12,
            ..Default::default()
        },
        ..Default::default()
    };
    // The question carries an e-mail address: the model sees a placeholder, and so does the
    // explanation.
    let question = "What was Acme Bank's CET1 ratio? Reply to jane.doe@example.com";
    let how = ExplainOptions {
        method: Method::Occlusion,
        ..Default::default()
    };
    let x = finllm::explain::ask(&*m, &Desk, question, &options, &how).unwrap();
    assert!(!x.explanation.prompt.contains("jane.doe@example.com"));
    assert_eq!(x.explanation.units.len(), 3);
    let receipt = x.audit.expect("recorded");
    let stored = audit::read_records(&log_path).unwrap();
    assert_eq!(stored.len(), 2);
    let (answer, explained) = (&stored[0], &stored[1]);
    assert_eq!(
        (answer.record.phase, explained.record.phase),
        (RecordPhase::Complete, RecordPhase::Explanation)
    );
    assert_eq!(explained.seq, receipt.seq);
    assert_eq!(explained.record.request_id, answer.record.request_id);
    let e = explained.record.explanation.as_ref().unwrap();
    assert_eq!((e.of_seq, e.of_hash.as_str()), (answer.seq, answer.hash.as_str()));
    let sha = Sha256::digest(x.explanation.to_json().unwrap().as_bytes());
    let hex: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(e.attribution_sha256, hex);
    let ranked: Vec<&str> = x
        .explanation
        .units
        .iter()
        .map(|u| u.label.as_deref().unwrap())
        .collect();
    assert_eq!(e.units.iter().map(|u| u.unit.as_str()).collect::<Vec<_>>(), ranked);
    assert!(audit::verify(&log_path).unwrap().is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guarded_request_asks_for_its_explanation_and_it_is_recorded_after_the_answer() {
    use finllm::compliance::audit::{self, RecordPhase};
    use finllm::explain::respond;
    use finllm::Request;

    let m = model();
    let (dir, log_path, guard) = masking_guard_with_log("request");
    let how = ExplainOptions {
        method: Method::Occlusion,
        ..Default::default()
    };
    let params = finllm::GenerateParams {
        max_tokens: 8,
        ..Default::default()
    };
    let messages = vec![ChatMessage::user(
        "The code is 4711. Mail it to jane.doe@example.com. Repeat the code:",
    )];
    let request = Request::chat(messages.clone())
        .with_params(params.clone())
        .with_guard(guard.clone());
    let x = respond(&*m, request, &how).unwrap();
    let a = x.explanation.expect("an answer to explain");
    // The explanation is of the conversation the model saw: the address is masked, and the
    // units come from the message, not the template.
    assert!(!a.prompt.contains("jane.doe@example.com"));
    assert!(a.units.iter().all(|u| !u.text.contains("im_start")));
    let report = x.response.guard.as_ref().unwrap();
    assert_eq!(a.prompt, report.masked_prompt);
    // It equals explaining the masked conversation with the same answer from scratch.
    let alone = explain(
        &m,
        &Prompt::Chat(report.masked_messages.clone()),
        &ExplainOptions {
            answer: Some(a.answer.clone()),
            ..how.clone()
        },
    )
    .unwrap();
    assert_eq!(
        m.tokenize(&a.answer).unwrap(),
        x.response.generation.ids,
        "the answer's text round-trips"
    );
    assert_eq!(alone.matrix, a.matrix);
    // Recorded right after the request's record, naming it.
    let receipt = x.audit.expect("recorded");
    let stored = audit::read_records(&log_path).unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (stored[0].record.phase, stored[1].record.phase),
        (RecordPhase::Complete, RecordPhase::Explanation)
    );
    assert_eq!(stored[1].seq, receipt.seq);
    let e = stored[1].record.explanation.as_ref().unwrap();
    assert_eq!((e.of_seq, e.of_hash.as_str()), (stored[0].seq, stored[0].hash.as_str()));
    assert_eq!(e.units.len(), a.units.len().min(audit::MAX_EXPLAINED_UNITS));
    assert!(audit::verify(&log_path).unwrap().is_ok());

    // Unguarded: the same explanation as explain() of the greedy answer; nothing recorded.
    let plain = respond(&*m, Request::text(COPY).with_params(params), &how).unwrap();
    let greedy = run(
        &Prompt::Text(COPY.into()),
        ExplainOptions {
            max_tokens: 8,
            ..how.clone()
        },
    );
    let pa = plain.explanation.unwrap();
    assert_eq!(
        (pa.answer.as_str(), &pa.matrix),
        (greedy.answer.as_str(), &greedy.matrix)
    );
    assert!(plain.audit.is_none());
    // A teacher-forced answer or a prompt of ids cannot be a request's explanation.
    let forced = ExplainOptions {
        answer: Some("x".into()),
        ..how.clone()
    };
    assert!(matches!(
        respond(&*m, Request::text(COPY), &forced),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        respond(&*m, Request::ids(vec![1, 2, 3]), &how),
        Err(Error::InvalidArgument { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_redacted_answer_is_explained_without_showing_its_text() {
    use finllm::compliance::policy::{Policy, Verdict};
    use finllm::compliance::{Guard, GuardConfig};
    use finllm::explain::{respond, WITHHELD};
    use finllm::Request;

    // A policy that redacts any run of digits: the copied code never reaches the caller.
    let policy = Policy::from_toml_str(
        "[[rules]]\nid = \"digits\"\ncategory = \"test\"\naction = \"redact\"\nregex = '[0-9]{1,8}'\nmax_len = 16\n",
    )
    .unwrap();
    let guard = Arc::new(
        Guard::new(GuardConfig {
            policy: Some(policy),
            ..Default::default()
        })
        .unwrap(),
    );
    let request = Request::text(COPY)
        .with_params(finllm::GenerateParams {
            max_tokens: 4,
            ..Default::default()
        })
        .with_guard(guard);
    let x = respond(&*model(), request, &ExplainOptions::default()).unwrap();
    let decision = x.response.guard.as_ref().unwrap().decision.as_ref().unwrap();
    assert_eq!(decision.verdict, Verdict::Redact, "{:?}", x.response.generation.text);
    let a = x.explanation.unwrap();
    assert!(!a.answer.contains("4711"), "{}", a.answer);
    assert_eq!(a.answer, x.response.generation.text);
    assert!(a.answer_tokens.iter().all(|t| t == WITHHELD) && a.target.text == WITHHELD);
    // The prompt's units are still explained (the prompt is the caller's own text).
    assert_eq!(a.units.len(), a.matrix.len());
    assert!(a.units.iter().any(|u| u.text == "4711"));
}

#[test]
fn the_differentiable_forward_matches_the_general_path() {
    let m = model();
    let dense = finllm::explain::gradient::dense_copy(&m).unwrap();
    let ids = m.tokenize(COPY).unwrap();
    let mut cache = dense.new_cache_with(finllm::model::KvPrecision::F32);
    let opts = ForwardOptions {
        all_logits: true,
        ..Default::default()
    };
    let want = dense
        .forward_batch(
            &mut [SeqInput {
                tokens: &ids,
                cache: &mut cache,
            }],
            &opts,
        )
        .unwrap()[0]
        .logits
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let x = dense.embeddings(&ids).unwrap().unsqueeze(0).unwrap();
    let rows: Vec<usize> = (0..ids.len()).collect();
    let got = dense
        .forward_embeddings(&x, &rows)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = want.iter().map(|v| v.abs()).fold(0f32, f32::max);
    eprintln!("differentiable vs general path: max |diff| {worst:e} (logits up to {scale})");
    assert!(worst <= 1e-5 * scale, "{worst}");
}

#[test]
fn integrated_gradients_are_complete_and_gradients_find_the_copied_code() {
    for (prompt, answer) in [
        (COPY, " 4711"),
        ("Paris is the capital of France. The capital of France is", " Paris"),
    ] {
        let a = run(
            &Prompt::Text(prompt.into()),
            ExplainOptions {
                method: Method::IntegratedGradients,
                answer: Some(answer.into()),
                samples: 64,
                ..Default::default()
            },
        );
        let g = a.gradient.as_ref().unwrap();
        let (fx, fb, sum) = (
            g.target_logprob,
            g.baseline_logprob.unwrap(),
            g.attribution_sum.unwrap(),
        );
        eprintln!(
            "IG from 64 steps on {prompt:?}: f(x) {fx:.4}, f(baseline) {fb:.4}, sum {sum:.4}, completeness error {:.4} \
             after {} gradient evaluations ({:.4} with the 64 equal steps alone)",
            g.completeness_error.unwrap(),
            g.steps,
            g.uniform_completeness_error.unwrap()
        );
        assert!(g.completeness_error.unwrap() <= 0.05);
        let total: f64 = a.units.iter().map(|u| u.score).sum();
        assert!((total - sum).abs() < 1e-6 * sum.abs().max(1.0));
    }
    for method in [Method::IntegratedGradients, Method::InputXGradient, Method::Saliency] {
        let a = run(
            &Prompt::Text(COPY.into()),
            ExplainOptions {
                method,
                answer: Some(" 4711".into()),
                ..Default::default()
            },
        );
        eprintln!(
            "{method:?}: top {:?} {:.3}",
            a.top().unwrap().text,
            a.top().unwrap().score
        );
        // Saliency (a gradient's size, without direction) is reported, not held to it.
        if method != Method::Saliency {
            assert_eq!(a.top().unwrap().text, "4711", "{method:?}: {:?}", &a.units[..3]);
        }
    }
}
