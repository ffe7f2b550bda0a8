//! The compliance guard around real generation (SmolLM2): a phrase the model is about to say is
//! blocked before any of it streams out; disclaimers arrive with the last event; the audit log
//! holds one verifiable record per request, also under concurrency.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;

use finllm::compliance::audit::{self, AuditConfig, AuditLog, RecordPhase};
use finllm::compliance::pii::{PiiConfig, PiiDetector};
use finllm::compliance::{Guard, GuardConfig, Policy, RequestInfo, Verdict};
use finllm::{FinishReason, GenerateParams, LoadOptions, Model, Request};

const PROMPT: &str = "The Federal Reserve raised interest rates because";

fn model() -> Model {
    Model::load(
        common::smollm2_path(),
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap()
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ..Default::default()
    }
}

/// A guarded request for `prompt`.
fn guarded(guard: &Arc<Guard>, prompt: &str, params: GenerateParams) -> Request {
    Request::text(prompt).with_params(params).with_guard(Arc::clone(guard))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-guard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_phrase_the_model_would_say_never_streams_out() {
    let model = model();
    let plain = model.generate(PROMPT, &greedy(48)).unwrap().text;
    let phrase = common::phrase_from_middle(&plain);
    let cut = plain.to_lowercase().find(&phrase.to_lowercase()).unwrap();
    let policy = Policy::from_toml_str(&format!(
        "name = \"test\"\n[[rules]]\nid = \"t.block\"\ncategory = \"insider_trading\"\naction = \"block\"\nkeywords = [{phrase:?}]\n"
    ))
    .unwrap();
    let dir = temp_dir("block");
    let log_path = dir.join("audit.log");
    let guard = Arc::new(
        Guard::new(GuardConfig {
            policy: Some(policy),
            audit: Some(Arc::new(AuditLog::open(&log_path, AuditConfig::default()).unwrap())),
            ..Default::default()
        })
        .unwrap(),
    );

    let mut streamed = String::new();
    let mut events = 0;
    let out = guarded(&guard, PROMPT, greedy(48))
        .run_streaming(&model, |ev| {
            streamed.push_str(&ev.text);
            events += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.generation.finish, FinishReason::Blocked);
    assert_eq!(
        streamed,
        plain[..cut],
        "the caller sees exactly the text before the phrase"
    );
    assert_eq!(out.generation.text, streamed);
    assert!(!streamed.to_lowercase().contains(&phrase.to_lowercase()));
    assert!(events > 1, "text before the phrase was streamed, not held to the end");
    let decision = out.guard.clone().unwrap().decision.unwrap();
    assert_eq!(decision.verdict, Verdict::Block);
    assert_eq!(decision.blocked_by().unwrap().rule_id, "t.block");

    // A stream: an opened record before the first token, the closing one before the last.
    let records = audit::read_records(&log_path).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].record.phase, RecordPhase::Opened);
    assert!(records[0].record.output.is_empty());
    let closed = &records[1].record;
    assert_eq!((closed.phase, closed.opened_seq), (RecordPhase::Closed, Some(1)));
    assert_eq!(closed.request_id, records[0].record.request_id);
    assert_eq!(closed.finish_reason, "blocked");
    assert_eq!(closed.output, streamed);
    assert_eq!(closed.decisions[0].rule_id, "t.block");
    assert!(audit::verify(&log_path).unwrap().is_ok());
}

#[test]
fn disclaimers_come_with_the_last_event_and_text_is_unchanged_otherwise() {
    let model = model();
    let plain = model.generate(PROMPT, &greedy(32)).unwrap().text;
    let word = plain
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_matches(|c: char| !c.is_alphanumeric());
    assert!(!word.is_empty());
    let policy = Policy::from_toml_str(&format!(
        "name = \"t\"\ndisclaimer = \"Not advice.\"\n[[rules]]\nid = \"t.d\"\ncategory = \"unlicensed_advice\"\n\
         action = \"append_disclaimer\"\nkeywords = [{word:?}]\n"
    ))
    .unwrap();
    let guard = Arc::new(
        Guard::new(GuardConfig {
            policy: Some(policy),
            ..Default::default()
        })
        .unwrap(),
    );
    let mut streamed = String::new();
    let mut last_text = String::new();
    let out = guarded(&guard, PROMPT, greedy(32))
        .run_streaming(&model, |ev| {
            streamed.push_str(&ev.text);
            if ev.finish.is_some() {
                last_text = ev.text.clone();
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(streamed, format!("{plain}\n\nNot advice."));
    assert!(last_text.ends_with("\n\nNot advice."));
    assert_eq!(out.generation.text, streamed);
    assert_eq!(
        out.guard.clone().unwrap().decision.unwrap().verdict,
        Verdict::AppendDisclaimer
    );
}

#[test]
fn personal_data_never_reaches_the_model_or_the_log() {
    let model = model();
    let dir = temp_dir("pii");
    let log_path = dir.join("audit.log");
    let guard = Arc::new(
        Guard::new(GuardConfig {
            pii: Some(Arc::new(PiiDetector::new(PiiConfig::default()).unwrap())),
            audit: Some(Arc::new(AuditLog::open(&log_path, AuditConfig::default()).unwrap())),
            ..Default::default()
        })
        .unwrap(),
    );
    let prompt = "客户身份证号11010519491231002X，手机13800138000，申请贷款。";
    let out = guarded(&guard, prompt, greedy(16)).run(&model).unwrap();
    assert_eq!(
        out.guard.as_ref().unwrap().masked_prompt,
        "客户身份证号<ID_1>，手机<PHONE_1>，申请贷款。"
    );
    assert_eq!(out.guard.as_ref().unwrap().prompt_entities.len(), 2);
    // The model saw the masked prompt: same tokens, same answer as calling it directly with it.
    let direct = model
        .generate(&out.guard.as_ref().unwrap().masked_prompt, &greedy(16))
        .unwrap();
    assert_eq!(out.generation.ids, direct.ids);
    let log = std::fs::read(&log_path).unwrap();
    for secret in ["11010519491231002X", "13800138000"] {
        assert!(
            !log.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the log"
        );
    }
}

#[test]
fn concurrent_guarded_requests_each_get_one_record() {
    let model = Arc::new(model());
    let dir = temp_dir("concurrent");
    let log_path = dir.join("audit.log");
    let guard = Arc::new(
        Guard::new(GuardConfig {
            policy: Some(Policy::default_packs().unwrap()),
            audit: Some(Arc::new(AuditLog::open(&log_path, AuditConfig::default()).unwrap())),
            ..Default::default()
        })
        .unwrap(),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (model, guard) = (Arc::clone(&model), Arc::clone(&guard));
            std::thread::spawn(move || {
                (0..3)
                    .map(|i| {
                        let request = RequestInfo {
                            request_id: format!("t{t}-{i}"),
                            ..Default::default()
                        };
                        guarded(&guard, PROMPT, greedy(4))
                            .with_info(request.clone())
                            .run(&model)
                            .unwrap()
                            .guard
                            .and_then(|g| g.receipt)
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let receipts: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let records = audit::read_records(&log_path).unwrap();
    assert_eq!(records.len(), 12);
    for r in &receipts {
        let stored = &records[usize::try_from(r.seq).unwrap() - 1];
        assert_eq!(stored.hash, r.hash);
    }
    let mut ids: Vec<_> = records.iter().map(|r| r.record.request_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 12);
    assert!(audit::verify(&log_path).unwrap().is_ok());
}
