//! The engine: every request gets exactly the tokens it gets alone, whatever else runs beside
//! it; bounded queue, KV budget, cancellation and deadlines; a soak test with many callers.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use finllm::engine::{Engine, EngineConfig, Job, KvBudget, Prompt};
use finllm::quant::QuantType;
use finllm::tools::synthetic::SyntheticSpec;
use finllm::{Architecture, Error, FinishReason, GenerateParams, Generation, LoadOptions, Model, SamplingParams};

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn tiny_model(arch: Architecture, quant: QuantType, context: usize, seed: u64) -> Arc<Model> {
    let mut spec = SyntheticSpec::tiny(arch, seed);
    spec.context = context;
    let path = tmp(&format!("{}-{quant}-{context}-{seed}.gguf", arch.name()));
    spec.write_gguf(&path, quant).unwrap();
    let opts = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    Arc::new(Model::load(&path, &opts).unwrap())
}

/// The same request run alone on the caller's thread.
fn solo(model: &Model, ids: &[u32], params: &GenerateParams) -> Generation {
    model
        .stream_ids(ids.to_vec(), params)
        .unwrap()
        .run_with(|_| std::ops::ControlFlow::Continue(()))
        .unwrap()
}

struct Case {
    ids: Vec<u32>,
    params: GenerateParams,
}

fn cases(model: &Model, n: usize, seed: u64) -> Vec<Case> {
    let mut rng = Rng(seed);
    let vocab = model.config().vocab_size as u32;
    (0..n)
        .map(|i| {
            let len = 1 + rng.below(70);
            let ids = (0..len).map(|_| rng.range(3, vocab - 1)).collect();
            let sampling = if i % 3 == 2 {
                SamplingParams {
                    temperature: 0.9,
                    top_k: 20,
                    seed: rng.next(),
                    ..Default::default()
                }
            } else {
                SamplingParams::default()
            };
            Case {
                ids,
                params: GenerateParams {
                    sampling,
                    max_tokens: 1 + rng.below(30),
                    top_logits: if i % 4 == 1 { 3 } else { 0 },
                    ..Default::default()
                },
            }
        })
        .collect()
}

/// Submit every case from its own thread after a random delay, and return what each got.
fn run_concurrently(engine: &Engine, cases: &[Case], seed: u64) -> Vec<Generation> {
    let mut rng = Rng(seed);
    let delays: Vec<u64> = cases.iter().map(|_| rng.below(15) as u64).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .zip(&delays)
            .map(|(c, &d)| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(d));
                    let request = Job {
                        prompt: Prompt::Ids(c.ids.clone()),
                        params: c.params.clone(),
                        deadline: None,
                    };
                    let mut stream = engine.submit(request).unwrap();
                    // Streamed text and the final result agree.
                    let mut text = String::new();
                    for event in stream.by_ref() {
                        text.push_str(&event.unwrap().text);
                    }
                    let g = stream.generation().unwrap().clone();
                    assert_eq!(text, g.text);
                    g
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn every_request_gets_the_tokens_it_gets_alone() {
    for (arch, quant) in [
        (Architecture::Llama, QuantType::Q8_0),
        (Architecture::Gemma3, QuantType::Q4_0),
        (Architecture::Qwen2, QuantType::Q4_1),
    ] {
        let model = tiny_model(arch, quant, 256, 7);
        // (requests, max_running, step_tokens, short_prompt_tokens)
        for (n, max_running, step_tokens, short) in [
            (1, 16, 128, 32),
            (2, 16, 128, 0),
            (16, 16, 128, 32),
            (16, 4, 8, 32),
            (9, 16, 17, 0),
            (12, 16, 128, 70),
        ] {
            let cases = cases(&model, n, 100 + n as u64);
            let expected: Vec<Generation> = cases.iter().map(|c| solo(&model, &c.ids, &c.params)).collect();
            let config = EngineConfig {
                max_running,
                step_tokens,
                short_prompt_tokens: short,
                ..Default::default()
            };
            let engine = Engine::new(model.clone(), config).unwrap();
            let got = run_concurrently(&engine, &cases, n as u64);
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                let what = format!(
                    "{arch:?} {quant} n={n} running={max_running} step={step_tokens} short={short} request {i}"
                );
                assert_eq!(g.ids, e.ids, "{what}");
                assert_eq!(g.text, e.text, "{what}");
                assert_eq!(g.finish, e.finish, "{what}");
                assert_eq!(g.prompt_ids, e.prompt_ids, "{what}");
                assert_eq!(g.steps, e.steps, "{what}");
            }
            let m = engine.metrics();
            assert_eq!((m.submitted, m.completed, m.failed), (n as u64, n as u64, 0));
            assert!(m.batch_size.max <= max_running as f64);
            if short == 0 {
                assert_eq!(m.short_prompt_steps, 0);
            }
            // Never two in a row: at most every other step.
            assert!(2 * m.short_prompt_steps <= m.steps + 1, "{m:?}");
            wait_until("the cache to be freed", || {
                let m = engine.metrics();
                m.kv_tokens_reserved == m.prefix_cached_tokens
            });
        }
    }
}

/// A cache reading a frozen prefix gives the logits, bit for bit, of one that holds the same
/// positions itself: on the host path (prefill after the prefix, decode steps, a sliding
/// window that reaches into the prefix), on the general path (attention weights requested),
/// and after truncating into the prefix.
#[test]
fn a_shared_prefix_reads_like_rows_of_its_own() {
    use finllm::model::{ForwardOptions, SeqInput};
    for (arch, quant) in [
        (Architecture::Llama, QuantType::Q8_0),
        (Architecture::Gemma3, QuantType::Q4_0),
        (Architecture::Qwen3, QuantType::Q4_1),
    ] {
        let model = tiny_model(arch, quant, 256, 5);
        let t = model.transformer();
        let mut rng = Rng(9);
        let vocab = model.config().vocab_size as u32;
        let ids: Vec<u32> = (0..90).map(|_| rng.range(3, vocab - 1)).collect();
        let n = 48;
        let mut full = t.new_cache();
        let want = t.forward(&ids, &mut full).unwrap();
        let mut prefix = t.new_cache_for(n);
        t.forward(&ids[..n], &mut prefix).unwrap();
        let prefix = Arc::new(prefix);
        let mut shared = t.cache_after_prefix(prefix.clone(), 64).unwrap();
        assert_eq!(
            (shared.len(), shared.shared_prefix_len(), shared.size_bytes()),
            (n, n, 0)
        );
        // Two chunks after the prefix, then decode steps.
        t.forward(&ids[n..70], &mut shared).unwrap();
        let got = t.forward(&ids[70..], &mut shared).unwrap();
        assert_eq!(bits(&got), bits(&want), "{arch:?} prefill after a shared prefix");
        for step in 0..6 {
            let next = (3 + step * 17) % vocab;
            let a = t.forward(&[next], &mut full).unwrap();
            let b = t.forward(&[next], &mut shared).unwrap();
            assert_eq!(bits(&a), bits(&b), "{arch:?} decode step {step}");
        }
        // The general path (taken when attention weights are asked for) reads it too.
        let opts = ForwardOptions {
            attentions: true,
            ..Default::default()
        };
        let general = |cache: &mut finllm::model::KvCache| {
            let out = t
                .forward_batch(&mut [SeqInput { tokens: &[7, 8], cache }], &opts)
                .unwrap()
                .remove(0);
            bits(&out.logits.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        assert_eq!(general(&mut full), general(&mut shared), "{arch:?} general path");
        // Cutting into the prefix keeps the part before the cut, copied.
        full.truncate(30).unwrap();
        shared.truncate(30).unwrap();
        assert_eq!(shared.shared_prefix_len(), 0);
        let a = t.forward(&ids[30..40], &mut full).unwrap();
        let b = t.forward(&ids[30..40], &mut shared).unwrap();
        assert_eq!(bits(&a), bits(&b), "{arch:?} after truncating into the prefix");
        // The prefix itself never changed.
        assert_eq!(prefix.len(), n);
    }
}

/// Decoding after a prompt longer than 512 tokens, a sequence alone takes attention in passes
/// split by positions and by columns (on AVX2; `scripts/test.sh` runs this test capped to it
/// on an AVX-512 machine); beside a sequence with a short context, in one task per query head.
/// Its logits have the same bits either way, on every architecture (Gemma 3's sliding-window
/// layers included).
#[test]
fn a_long_context_decodes_alike_alone_and_beside_a_short_one() {
    use finllm::model::SeqInput;
    for (arch, quant) in [
        (Architecture::Llama, QuantType::Q8_0),
        (Architecture::Gemma3, QuantType::Q4_0),
        (Architecture::Qwen3, QuantType::Q4_1),
    ] {
        let model = tiny_model(arch, quant, 1024, 23);
        let t = model.transformer();
        let vocab = model.config().vocab_size as u32;
        let mut rng = Rng(31);
        let long: Vec<u32> = (0..700).map(|_| rng.range(3, vocab - 1)).collect();
        let short: Vec<u32> = (0..20).map(|_| rng.range(3, vocab - 1)).collect();
        let (mut alone, mut beside, mut other) = (t.new_cache(), t.new_cache(), t.new_cache());
        let first = t.forward(&long, &mut alone).unwrap();
        assert_eq!(bits(&first), bits(&t.forward(&long, &mut beside).unwrap()));
        t.forward(&short, &mut other).unwrap();
        for step in 0..4 {
            let next = [rng.range(3, vocab - 1)];
            let a = t.forward(&next, &mut alone).unwrap();
            let b = t
                .forward_last_logits(&mut [
                    SeqInput {
                        tokens: &next,
                        cache: &mut beside,
                    },
                    SeqInput {
                        tokens: &next,
                        cache: &mut other,
                    },
                ])
                .unwrap()
                .remove(0);
            assert!(a.iter().all(|x| x.is_finite()), "{arch:?} step {step}");
            assert_eq!(bits(&a), bits(&b), "{arch:?} decode step {step} after 700 tokens");
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Prompts that share beginnings (two system prompts, different questions) through an engine
/// with the prefix cache: each gets exactly the tokens it gets alone, and the shared beginnings
/// are read from the cache rather than prefilled again.
#[test]
fn shared_prefixes_are_prefilled_once_and_change_no_token() {
    for (arch, quant) in [
        (Architecture::Llama, QuantType::Q8_0),
        (Architecture::Gemma3, QuantType::Q4_0),
    ] {
        let model = tiny_model(arch, quant, 256, 13);
        let vocab = model.config().vocab_size as u32;
        let mut rng = Rng(21);
        let systems: Vec<Vec<u32>> = [40, 75]
            .iter()
            .map(|&n| (0..n).map(|_| rng.range(3, vocab - 1)).collect())
            .collect();
        let mut all = cases(&model, 14, 77);
        for (i, c) in all.iter_mut().enumerate() {
            let mut ids = systems[i % 2].clone();
            ids.extend(c.ids.iter().take(1 + i));
            c.ids = ids;
        }
        let expected: Vec<Generation> = all.iter().map(|c| solo(&model, &c.ids, &c.params)).collect();
        for (max_running, step_tokens) in [(16, 128), (4, 9)] {
            let config = EngineConfig {
                max_running,
                step_tokens,
                prefix_min_tokens: 16,
                ..Default::default()
            };
            let engine = Engine::new(model.clone(), config).unwrap();
            // Two of each first, one after the other (the second builds the entry), then the
            // rest at once.
            let mut got: Vec<Generation> = run_concurrently(&engine, &all[..1], 1);
            got.extend(run_concurrently(&engine, &all[1..2], 2));
            got.extend(run_concurrently(&engine, &all[2..4], 3));
            got.extend(run_concurrently(&engine, &all[4..], 4));
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                let what = format!("{arch:?} running={max_running} step={step_tokens} request {i}");
                assert_eq!((&g.ids, &g.text, g.finish), (&e.ids, &e.text, e.finish), "{what}");
                assert_eq!(g.steps, e.steps, "{what}");
            }
            wait_until("every request to end", || engine.metrics().running == 0);
            let m = engine.metrics();
            // Entries are whole 16-token blocks of the system prompts: 32 and 64 tokens.
            assert_eq!(m.prefix_cached_tokens, 32 + 64, "{m:?}");
            assert_eq!(m.kv_tokens_reserved, m.prefix_cached_tokens);
            // Requests 2.. of each system prompt read its entry (the first two of each build it
            // or run alone).
            assert!(m.prefix_hit_tokens >= 32 * 5 + 64 * 5, "{m:?}");
        }
    }
}

/// Shared prefixes nobody reads give way to requests that need their KV budget.
#[test]
fn idle_shared_prefixes_give_way_to_requests() {
    let model = tiny_model(Architecture::Llama, QuantType::Q8_0, 512, 17);
    let vocab = model.config().vocab_size as u32;
    let mut rng = Rng(5);
    let system: Vec<u32> = (0..64).map(|_| rng.range(3, vocab - 1)).collect();
    let config = EngineConfig {
        kv_budget: KvBudget::Tokens(300),
        prefix_min_tokens: 16,
        ..Default::default()
    };
    let engine = Engine::new(model.clone(), config).unwrap();
    let params = GenerateParams {
        max_tokens: 4,
        ignore_eos: true,
        ..Default::default()
    };
    for k in 0..3u32 {
        let ids = [system.clone(), vec![10 + k, 11]].concat();
        engine
            .generate(Job::new(Prompt::Ids(ids)).with_params(params.clone()))
            .unwrap();
    }
    let m = engine.metrics();
    assert_eq!((m.prefix_cached_tokens, m.prefix_hit_tokens), (64, 64), "{m:?}");
    // 290 positions fit only once the idle entry is gone.
    let big: Vec<u32> = (0..280).map(|_| rng.range(3, vocab - 1)).collect();
    let long = GenerateParams {
        max_tokens: 10,
        ..Default::default()
    };
    let g = engine
        .generate(Job::new(Prompt::Ids(big.clone())).with_params(long.clone()))
        .unwrap();
    assert_eq!(g.ids, solo(&model, &big, &long).ids);
    let m = engine.metrics();
    assert_eq!((m.prefix_cached_tokens, m.kv_tokens_reserved), (0, 0), "{m:?}");
}

#[test]
fn text_and_chat_prompts_take_the_same_path_as_ids() {
    let model = tiny_model(Architecture::Llama, QuantType::Q8_0, 256, 3);
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let params = GenerateParams {
        max_tokens: 12,
        ..Default::default()
    };
    let by_text = engine.generate(Job::text("the rate", params.clone())).unwrap();
    let alone = model.generate("the rate", &params).unwrap();
    assert_eq!(
        (&by_text.ids, &by_text.text, by_text.finish),
        (&alone.ids, &alone.text, alone.finish)
    );
    let ids = model.tokenize("the rate").unwrap();
    let by_ids = engine
        .generate(Job {
            prompt: Prompt::Ids(ids),
            params,
            deadline: None,
        })
        .unwrap();
    assert_eq!(by_ids.ids, by_text.ids);
}

/// A prompt whose greedy answer runs `tokens` tokens without an end-of-sequence token, so a
/// request for it stays in the batch until it is cancelled.
fn long_request(model: &Model, tokens: usize) -> Job {
    let params = GenerateParams {
        max_tokens: tokens,
        ..Default::default()
    };
    for seed in 0..50u64 {
        let ids: Vec<u32> = (0..8).map(|i| 3 + ((seed * 31 + i * 7) % 200) as u32).collect();
        // Only the first tokens are checked here; long runs of a random model repeat a cycle.
        let probe = GenerateParams {
            max_tokens: 300,
            ..params.clone()
        };
        if solo(model, &ids, &probe).finish == FinishReason::Length {
            return Job {
                prompt: Prompt::Ids(ids),
                params,
                deadline: None,
            };
        }
    }
    panic!("no prompt of this model runs 300 tokens without EOS");
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn short_prompts_run_ahead_of_decoding_streams_without_stalling_them() {
    let model = tiny_model(Architecture::Llama, QuantType::Q8_0, 1024, 5);
    let long = long_request(&model, 200);
    let Prompt::Ids(long_ids) = &long.prompt else {
        unreachable!()
    };
    let long_expected = solo(&model, long_ids, &long.params);
    let short_ids: Vec<u32> = (0..12).map(|i| 5 + i * 11).collect();
    let short_params = GenerateParams {
        max_tokens: 4,
        ..Default::default()
    };
    let short_expected = solo(&model, &short_ids, &short_params);
    for short_prompt_tokens in [32, 0] {
        let engine = Engine::new(
            model.clone(),
            EngineConfig {
                short_prompt_tokens,
                ..Default::default()
            },
        )
        .unwrap();
        let streams: Vec<_> = (0..3).map(|_| engine.submit(long.clone()).unwrap()).collect();
        wait_until("the long requests to decode", || engine.metrics().generated_tokens >= 6);
        // Short requests one after another while the long ones decode.
        for _ in 0..5 {
            let mut s = engine
                .submit(Job {
                    prompt: Prompt::Ids(short_ids.clone()),
                    params: short_params.clone(),
                    deadline: None,
                })
                .unwrap();
            for e in s.by_ref() {
                e.unwrap();
            }
            let g = s.generation().unwrap();
            assert_eq!(g.ids, short_expected.ids, "short={short_prompt_tokens}");
        }
        let during = engine.metrics();
        for mut s in streams {
            for e in s.by_ref() {
                e.unwrap();
            }
            assert_eq!(
                s.generation().unwrap().ids,
                long_expected.ids,
                "short={short_prompt_tokens}"
            );
        }
        if short_prompt_tokens > 0 {
            // Each short prompt (12 tokens) had its prefill step to itself.
            assert_eq!(during.short_prompt_steps, 5, "{during:?}");
        } else {
            assert_eq!(during.short_prompt_steps, 0, "{during:?}");
        }
        assert!(
            engine
                .metrics()
                .prometheus_text()
                .contains("finllm_engine_short_prompt_steps_total"),
            "the counter is exported"
        );
    }
}

#[test]
fn full_queue_is_busy_at_once_or_after_the_callers_wait() {
    let model = tiny_model(Architecture::Llama, QuantType::Q8_0, 8192, 5);
    let long = long_request(&model, 8000);
    let config = EngineConfig {
        max_running: 1,
        step_tokens: 16,
        kv_budget: KvBudget::Tokens(8100),
        queue_requests: 2,
        queue_tokens: 1000,
        ..Default::default()
    };
    let engine = Engine::new(model.clone(), config).unwrap();
    let mut a = engine.submit(long.clone()).unwrap();
    a.next().unwrap().unwrap(); // running now
    let small = Job {
        prompt: Prompt::Ids(vec![5, 6, 7]),
        params: GenerateParams {
            max_tokens: 4,
            ..Default::default()
        },
        deadline: None,
    };
    let b = engine.submit(small.clone()).unwrap();
    let c = engine.submit(small.clone()).unwrap();
    assert!(matches!(engine.submit(small.clone()), Err(Error::Busy { .. })));
    let t = Instant::now();
    assert!(matches!(
        engine.submit_timeout(small.clone(), Duration::from_millis(50)),
        Err(Error::Busy { .. })
    ));
    assert!(t.elapsed() >= Duration::from_millis(50));
    // Never fits: prompt + max_tokens over the whole KV budget; a prompt over the queue's tokens.
    let huge = Job {
        params: GenerateParams {
            max_tokens: 8098,
            ..Default::default()
        },
        ..small.clone()
    };
    assert!(matches!(
        engine.submit(huge),
        Err(Error::RequestTooLarge {
            needed: 8101,
            limit: 8100,
            ..
        })
    ));
    let long_prompt = Job {
        prompt: Prompt::Ids(vec![9; 1001]),
        ..small.clone()
    };
    assert!(matches!(engine.submit(long_prompt), Err(Error::RequestTooLarge { .. })));
    // Cancelling the running request frees its budget: the queue moves and a waiting submit
    // gets in.
    let waiter = {
        let engine = engine.clone();
        let small = small.clone();
        std::thread::spawn(move || engine.submit_timeout(small, Duration::from_secs(10)).map(|s| s.wait()))
    };
    std::thread::sleep(Duration::from_millis(20));
    a.cancel();
    let mut events = 1;
    for e in a.by_ref() {
        e.unwrap();
        events += 1;
    }
    let g = a.generation().unwrap();
    assert_eq!(g.finish, FinishReason::Cancelled);
    assert_eq!(g.ids.len(), events);
    for s in [b, c] {
        assert_eq!(s.wait().unwrap().ids.len(), 4);
    }
    assert_eq!(waiter.join().unwrap().unwrap().unwrap().ids.len(), 4);
    let m = engine.metrics();
    assert_eq!((m.submitted, m.completed, m.cancelled, m.failed), (4, 4, 1, 0));
    assert_eq!(m.rejected, 4);
    wait_until("the gauges to settle", || engine.metrics().running == 0);
    assert_eq!(engine.metrics().kv_tokens_reserved, 0);
}

#[test]
fn dropping_a_stream_cancels_and_deadlines_end_requests() {
    let model = tiny_model(Architecture::Llama, QuantType::Q8_0, 8192, 5);
    let long = long_request(&model, 8000);
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let mut s = engine.submit(long.clone()).unwrap();
    s.next().unwrap().unwrap();
    drop(s);
    wait_until("the dropped request to leave", || {
        let m = engine.metrics();
        m.cancelled == 1 && m.kv_tokens_reserved == 0
    });
    // A deadline ends a running request with a typed error naming what it had generated.
    let with_deadline = Job {
        deadline: Some(Duration::from_millis(30)),
        ..long.clone()
    };
    let mut s = engine.submit(with_deadline).unwrap();
    let mut streamed = 0;
    let err = loop {
        match s.next().unwrap() {
            Ok(_) => streamed += 1,
            Err(e) => break e,
        }
    };
    match err {
        Error::DeadlineExceeded { generated } => assert_eq!(generated, streamed),
        other => panic!("{other:?}"),
    }
    assert!(s.next().is_none());
    // A cancel handle works from another thread; the stream reports the cancellation.
    let s = engine.submit(long).unwrap();
    let handle = s.cancel_handle();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        handle.cancel();
    });
    assert_eq!(s.wait().unwrap().finish, FinishReason::Cancelled);
    let m = engine.metrics();
    assert_eq!((m.submitted, m.cancelled, m.failed), (3, 2, 1));
    wait_until("the cache to be freed", || engine.metrics().kv_tokens_reserved == 0);
    // A cancelled request's memory is back in the budget within one step: at most the step in
    // flight when it was cancelled finishes first.
    let mut s = engine.submit(long_request(&model, 8000)).unwrap();
    s.next().unwrap().unwrap();
    assert!(engine.metrics().kv_tokens_reserved > 0);
    s.cancel();
    // Read after the cancel: steps the engine ran between a read and the cancel would count
    // against it (on a fast kernel a tiny model's steps take microseconds).
    let before = engine.metrics();
    wait_until("the cancelled request's cache to be freed", || {
        engine.metrics().kv_tokens_reserved == 0
    });
    assert!(engine.metrics().steps - before.steps <= 1, "{:?}", engine.metrics());
}

#[test]
fn bad_requests_and_configs_are_typed_errors() {
    let model = tiny_model(Architecture::Llama, QuantType::Q8_0, 256, 1);
    for bad in [
        EngineConfig {
            max_running: 0,
            ..Default::default()
        },
        EngineConfig {
            step_tokens: 3,
            max_running: 4,
            ..Default::default()
        },
        EngineConfig {
            kv_budget: KvBudget::Bytes(1),
            ..Default::default()
        },
        EngineConfig {
            queue_requests: 0,
            ..Default::default()
        },
    ] {
        assert!(matches!(
            Engine::new(model.clone(), bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
    let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
    let vocab = model.config().vocab_size as u32;
    let ids = |ids: Vec<u32>, max_tokens| Job {
        prompt: Prompt::Ids(ids),
        params: GenerateParams {
            max_tokens,
            ..Default::default()
        },
        deadline: None,
    };
    assert!(matches!(
        engine.submit(ids(vec![], 4)),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        engine.submit(ids(vec![1, vocab], 4)),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        engine.submit(ids(vec![1; 200], 100)),
        Err(Error::ContextOverflow { .. })
    ));
    let mut bad_sampling = ids(vec![1, 2], 4);
    bad_sampling.params.sampling.temperature = f32::NAN;
    assert!(matches!(
        engine.submit(bad_sampling),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        engine.submit(Job::new(Prompt::Chat(Vec::new()))),
        Err(Error::InvalidArgument { .. } | Error::ChatTemplate(_))
    ));
    assert_eq!(engine.metrics().rejected, 5);
    assert_eq!(engine.metrics().submitted, 0);
}

/// 32 caller threads: random prompts, cancellations, dropped streams, deadlines, oversized
/// prompts, shared prompt beginnings and a small queue. Every request ends exactly once, with a
/// result or a typed error, and the KV budget returns to what idle shared prefixes hold.
#[test]
fn soak_with_32_callers() {
    let model = tiny_model(Architecture::Llama, QuantType::Q4_0, 512, 11);
    let config = EngineConfig {
        max_running: 8,
        step_tokens: 24,
        kv_budget: KvBudget::Tokens(600),
        queue_requests: 6,
        queue_tokens: 400,
        prefix_min_tokens: 16,
        prefix_max_entries: 3,
        short_prompt_tokens: 20,
    };
    let engine = Engine::new(model.clone(), config).unwrap();
    let vocab = model.config().vocab_size as u32;
    let per_thread = 12;
    let results: Vec<(u64, u64, u64, u64)> = std::thread::scope(|s| {
        (0..32u64)
            .map(|t| {
                let engine = &engine;
                s.spawn(move || {
                    let mut rng = Rng(1000 + t);
                    let (mut ok, mut cancelled, mut failed, mut refused) = (0u64, 0u64, 0u64, 0u64);
                    for _ in 0..per_thread {
                        let oversized = rng.below(10) == 0;
                        let len = if oversized { 520 } else { 1 + rng.below(60) };
                        // Half the prompts start with one of four shared beginnings.
                        let shared = rng.below(8);
                        let ids: Vec<u32> = (0..len)
                            .map(|i| {
                                if shared < 4 && i < 40 {
                                    3 + (shared as u32) * 50 + i as u32
                                } else {
                                    rng.range(3, vocab - 1)
                                }
                            })
                            .collect();
                        let request = Job {
                            prompt: Prompt::Ids(ids),
                            params: GenerateParams {
                                max_tokens: 1 + rng.below(40),
                                ..Default::default()
                            },
                            deadline: (rng.below(6) == 0).then(|| Duration::from_millis(rng.below(20) as u64)),
                        };
                        let submitted = if rng.below(2) == 0 {
                            engine.submit(request)
                        } else {
                            engine.submit_timeout(request, Duration::from_millis(rng.below(50) as u64))
                        };
                        let mut stream = match submitted {
                            Ok(s) => s,
                            Err(Error::Busy { .. } | Error::RequestTooLarge { .. } | Error::ContextOverflow { .. }) => {
                                refused += 1;
                                continue;
                            }
                            Err(e) => panic!("unexpected submit error {e}"),
                        };
                        match rng.below(4) {
                            // Drop after a few events: counted by the engine as cancelled.
                            0 => {
                                let k = rng.below(4);
                                let mut early_end = None;
                                for _ in 0..k {
                                    match stream.next() {
                                        Some(Ok(_)) => {}
                                        Some(Err(e)) => {
                                            early_end = Some(e);
                                            break;
                                        }
                                        None => break,
                                    }
                                }
                                match early_end {
                                    Some(Error::DeadlineExceeded { .. }) => failed += 1,
                                    Some(e) => panic!("{e}"),
                                    None if stream.generation().is_some() => ok += 1,
                                    None => cancelled += 1, // dropped here
                                }
                                drop(stream);
                            }
                            1 => {
                                stream.cancel();
                                match stream.wait() {
                                    Ok(g) if g.finish == FinishReason::Cancelled => cancelled += 1,
                                    Ok(_) => ok += 1,
                                    Err(Error::DeadlineExceeded { .. }) => failed += 1,
                                    Err(e) => panic!("{e}"),
                                }
                            }
                            _ => match stream.wait() {
                                Ok(g) => {
                                    assert_ne!(g.finish, FinishReason::Cancelled);
                                    ok += 1
                                }
                                Err(Error::DeadlineExceeded { .. }) => failed += 1,
                                Err(e) => panic!("{e}"),
                            },
                        }
                    }
                    (ok, cancelled, failed, refused)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect()
    });
    let sum = results
        .iter()
        .fold((0, 0, 0, 0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2, a.3 + r.3));
    assert_eq!(sum.0 + sum.1 + sum.2 + sum.3, 32 * per_thread);
    wait_until("every request to end", || {
        let m = engine.metrics();
        m.completed + m.failed == m.submitted && m.running == 0 && m.queued == 0
    });
    let m = engine.metrics();
    assert_eq!(m.submitted + m.rejected, 32 * per_thread);
    assert_eq!(m.rejected, sum.3);
    // Every accepted request ended exactly once. A stream dropped unread may have ended in the
    // engine first (finished, or past its deadline), so only the totals and bounds compare.
    assert_eq!(m.completed + m.failed, sum.0 + sum.1 + sum.2);
    assert!(m.failed >= sum.2 && m.cancelled <= sum.1, "{m:?} {sum:?}");
    // What remains held is the idle shared prefixes, at most three.
    assert_eq!(m.kv_tokens_reserved, m.prefix_cached_tokens, "{m:?}");
    assert!(m.prefix_cached_tokens <= 3 * 32, "{m:?}");
    assert!(m.prefix_hit_tokens > 0, "{m:?}");
    assert!(m.batch_size.max <= 8.0);
}

#[test]
fn smollm2_through_the_engine_matches_solo_generation() {
    let opts = LoadOptions {
        threads: Some(2),
        ..Default::default()
    };
    let model = Arc::new(Model::load(common::smollm2_path(), &opts).unwrap());
    let prompts = [
        "The yield curve inverted because",
        "Write a short note on counterparty credit risk.",
        "Basel III requires banks to",
        "A bond's duration measures",
    ];
    let params = GenerateParams {
        max_tokens: 12,
        ..Default::default()
    };
    let config = EngineConfig {
        max_running: 4,
        step_tokens: 8,
        ..Default::default()
    };
    let engine = Engine::new(model.clone(), config).unwrap();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(Job::text(*p, params.clone())).unwrap())
        .collect();
    for (p, s) in prompts.iter().zip(streams) {
        let g = s.wait().unwrap();
        let alone = model.generate(p, &params).unwrap();
        assert_eq!(g.ids, alone.ids, "{p}");
        assert_eq!(g.text, alone.text, "{p}");
    }
}
