//! The one request path (SmolLM2): a guarded request answers alike whether it runs on the
//! model alone or through the engine, whole or streamed; the guard's filter, audit records,
//! cancellation and deadlines work the same on both.

mod common;

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use finllm::compliance::audit::{self, AuditConfig, AuditLog, RecordPhase};
use finllm::compliance::pii::{PiiConfig, PiiDetector};
use finllm::compliance::{Guard, GuardConfig, Policy};
use finllm::{
    ChatMessage, Engine, EngineConfig, Error, FinishReason, GenerateParams, LoadOptions, Model, Prompt, Request,
    Response,
};

const PROMPT: &str = "My phone is 13800138000. The Federal Reserve raised interest rates because";

fn model() -> Arc<Model> {
    Arc::new(
        Model::load(
            common::smollm2_path(),
            &LoadOptions {
                threads: Some(2),
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        ..Default::default()
    }
}

fn temp_log(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-request-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("audit.log")
}

fn guard(policy: Option<Policy>, log: &std::path::Path) -> Arc<Guard> {
    Arc::new(
        Guard::new(GuardConfig {
            pii: Some(Arc::new(PiiDetector::new(PiiConfig::default()).unwrap())),
            policy,
            audit: Some(Arc::new(AuditLog::open(log, AuditConfig::default()).unwrap())),
            ..Default::default()
        })
        .unwrap(),
    )
}

/// Run `request` to the end on an engine through its owned stream, returning the streamed text.
fn submit_and_read(request: Request, engine: &Engine) -> (String, Response) {
    let mut stream = request.submit(engine).unwrap();
    let mut streamed = String::new();
    for event in stream.by_ref() {
        streamed.push_str(&event.unwrap().text);
    }
    (streamed, stream.wait().unwrap())
}

#[test]
fn a_guarded_request_answers_alike_on_the_model_and_the_engine() {
    let model = model();
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let log = temp_log("alike");
    let disclaimer = "[not investment advice]";
    let policy = Policy::from_toml_str(&format!(
        "disclaimer = '{disclaimer}'\n[[rules]]\nid = 'd'\ncategory = 'advice'\naction = 'append_disclaimer'\n\
         keywords = ['the', 'to', 'of', 'and', 'in']\n"
    ))
    .unwrap();
    let guard = guard(Some(policy), &log);
    let request = Request::text(PROMPT).with_params(greedy(24)).with_guard(guard.clone());

    let whole = request.clone().run(&*model).unwrap();
    let mut streamed = String::new();
    let streamed_response = request
        .clone()
        .run_streaming(&*model, |ev| {
            streamed.push_str(&ev.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    let on_engine = request.clone().run(&engine).unwrap();
    let (engine_streamed, submitted) = submit_and_read(request, &engine);

    // The model saw the masked prompt, on every path.
    let report = whole.guard.as_ref().unwrap();
    assert_eq!(
        report.masked_prompt,
        "My phone is <PHONE_1>. The Federal Reserve raised interest rates because"
    );
    let direct = model.generate(&report.masked_prompt, &greedy(24)).unwrap();
    for r in [&whole, &streamed_response, &on_engine, &submitted] {
        assert_eq!(r.generation.ids, direct.ids, "the same tokens on every path");
        assert_eq!(r.generation.prompt_ids, direct.prompt_ids);
        assert_eq!(r.generation.text, whole.generation.text);
        assert_eq!(r.generation.finish, direct.finish);
        assert_eq!(r.generation.timings.generated_tokens, direct.ids.len());
    }
    assert!(
        whole.generation.text.ends_with(disclaimer),
        "{:?}",
        whole.generation.text
    );
    assert_eq!(streamed, whole.generation.text, "the streamed pieces are the answer");
    assert_eq!(engine_streamed, whole.generation.text);

    // Whole answers get one complete record; streamed ones an opened and a closing record.
    let phases: Vec<RecordPhase> = audit::read_records(&log)
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.record.masked_prompt, report.masked_prompt);
            assert!(!r.record.output.contains("13800138000"));
            r.record.phase
        })
        .collect();
    use RecordPhase::*;
    assert_eq!(phases, [Complete, Opened, Closed, Complete, Opened, Closed]);
    assert!(audit::verify(&log).unwrap().issues.is_empty());
}

#[test]
fn a_phrase_blocked_on_the_engine_never_streams_out_and_frees_the_request() {
    let model = model();
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let prompt = "The Federal Reserve raised interest rates because";
    let plain = model.generate(prompt, &greedy(48)).unwrap().text;
    let phrase = common::phrase_from_middle(&plain);
    let policy = Policy::from_toml_str(&format!(
        "[[rules]]\nid = 'b'\ncategory = 'insider_trading'\naction = 'block'\nkeywords = [{phrase:?}]\n"
    ))
    .unwrap();
    let log = temp_log("blocked");
    let guard = Arc::new(
        Guard::new(GuardConfig {
            policy: Some(policy),
            audit: Some(Arc::new(AuditLog::open(&log, AuditConfig::default()).unwrap())),
            ..Default::default()
        })
        .unwrap(),
    );
    let request = Request::text(prompt).with_params(greedy(48)).with_guard(guard);
    let mut stream = request.submit(&engine).unwrap();
    let (mut streamed, mut events, mut finals) = (String::new(), 0, Vec::new());
    for event in stream.by_ref() {
        let event = event.unwrap();
        streamed.push_str(&event.text);
        events += 1;
        finals.extend(event.finish);
    }
    let response = stream.wait().unwrap();
    assert_eq!(finals, [FinishReason::Blocked]);
    assert_eq!(response.generation.finish, FinishReason::Blocked);
    assert!(
        !streamed.to_lowercase().contains(&phrase.to_lowercase()),
        "{streamed:?}"
    );
    assert_eq!(response.generation.text, streamed);
    assert_eq!(
        response.generation.ids.len(),
        events,
        "ids stop where the answer was blocked"
    );
    assert!(
        plain.starts_with(&streamed),
        "the released text is the unguarded answer's beginning"
    );
    let records = audit::read_records(&log).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].record.finish_reason, "blocked");
    // The engine dropped the blocked request: nothing runs, nothing stays reserved.
    let m = engine.metrics();
    assert_eq!((m.running, m.kv_tokens_reserved), (0, 0));
}

#[test]
fn cancelling_and_deadlines_are_recorded_on_both_executors() {
    let model = model();
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let log = temp_log("cancel");
    let guard = guard(None, &log);
    let chat = Request::chat(vec![ChatMessage::user("Explain a bond's duration.")])
        .with_params(greedy(64))
        .with_guard(guard.clone());
    for on_engine in [false, true] {
        let mut seen = 0;
        let stop_after_three = |_: &finllm::TokenEvent| {
            seen += 1;
            if seen == 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let response = if on_engine {
            chat.clone().run_streaming(&engine, stop_after_three)
        } else {
            chat.clone().run_streaming(&*model, stop_after_three)
        }
        .unwrap();
        assert_eq!(response.generation.finish, FinishReason::Cancelled);
        assert_eq!(response.generation.ids.len(), 3, "on_engine={on_engine}");
    }
    // A stream the caller lets go after one event is closed on record as cancelled, and on the
    // engine it no longer runs.
    let mut on_model = chat.clone().stream(&model).unwrap();
    assert!(on_model.next().unwrap().is_ok());
    drop(on_model);
    let mut on_engine = chat.clone().submit(&engine).unwrap();
    assert!(on_engine.next().unwrap().is_ok());
    drop(on_engine);
    // A deadline already past: the request fails with its typed error, and is on record.
    let late = chat.clone().with_deadline(Duration::ZERO);
    for result in [late.clone().run(&*model), late.run(&engine)] {
        assert!(matches!(result, Err(Error::DeadlineExceeded { .. })), "{result:?}");
    }
    let m = engine.metrics();
    // What stays reserved is the shared prefix the engine keeps for the next chat request.
    assert_eq!(
        (m.running, m.kv_tokens_reserved),
        (0, m.prefix_cached_tokens),
        "nothing left running"
    );
    let records: Vec<(RecordPhase, String)> = audit::read_records(&log)
        .unwrap()
        .into_iter()
        .map(|r| (r.record.phase, r.record.finish_reason))
        .collect();
    let expected = [
        (RecordPhase::Opened, ""),
        (RecordPhase::Closed, "cancelled"),
        (RecordPhase::Opened, ""),
        (RecordPhase::Closed, "cancelled"),
        (RecordPhase::Opened, ""),
        (RecordPhase::Closed, "cancelled"),
        (RecordPhase::Opened, ""),
        (RecordPhase::Closed, "cancelled"),
        (RecordPhase::Complete, "error"),
        (RecordPhase::Complete, "error"),
    ];
    let got: Vec<(RecordPhase, &str)> = records.iter().map(|(p, f)| (*p, f.as_str())).collect();
    assert_eq!(got, expected);
    // Token ids cannot be screened for personal data: refused before anything runs.
    let ids = Request::new(Prompt::Ids(vec![1, 2, 3])).with_guard(guard);
    assert!(matches!(ids.run(&*model), Err(Error::InvalidArgument { .. })));
}

#[test]
fn nothing_to_generate_and_streams_left_after_their_end_are_recorded_once() {
    let model = model();
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let log = temp_log("once");
    let guard = guard(None, &log);
    let nothing = Request::text("Bond yields")
        .with_params(greedy(0))
        .with_guard(guard.clone());
    for r in [nothing.clone().run(&*model).unwrap(), nothing.run(&engine).unwrap()] {
        assert_eq!(r.generation.finish, FinishReason::Length);
        assert!(r.generation.ids.is_empty() && r.generation.text.is_empty());
    }
    // Read to the end, then let go without wait(): one opened and one closing record each.
    let short = Request::text("Bond yields").with_params(greedy(3)).with_guard(guard);
    let mut on_model = short.clone().stream(&model).unwrap();
    assert_eq!(on_model.by_ref().count(), 3);
    drop(on_model);
    let mut on_engine = short.submit(&engine).unwrap();
    assert_eq!(on_engine.by_ref().count(), 3);
    drop(on_engine);
    let got: Vec<(RecordPhase, String)> = audit::read_records(&log)
        .unwrap()
        .into_iter()
        .map(|r| (r.record.phase, r.record.finish_reason))
        .collect();
    let want = [
        (RecordPhase::Complete, "length"),
        (RecordPhase::Complete, "length"),
        (RecordPhase::Opened, ""),
        (RecordPhase::Closed, "length"),
        (RecordPhase::Opened, ""),
        (RecordPhase::Closed, "length"),
    ];
    assert_eq!(got.iter().map(|(p, f)| (*p, f.as_str())).collect::<Vec<_>>(), want);
}
