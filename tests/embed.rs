//! The sentence embedder against float64 reference embeddings of all-MiniLM-L6-v2 computed
//! outside finllm (`tests/data/reference/minilm_embeddings.json`, see PROVENANCE.md there).

mod common;

use finllm::rag::{Embedder, Pooling};

use common::minilm_dir;

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * y).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// A reference case's float64 embedding.
fn reference_vector(case: &serde_json::Value) -> Vec<f64> {
    case["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[test]
fn minilm_matches_the_float64_reference() {
    let embedder = Embedder::load(minilm_dir(), Some(2)).unwrap();
    let cfg = embedder.config();
    assert_eq!(
        (cfg.hidden, cfg.layers, cfg.pooling, cfg.normalize),
        (384, 6, Pooling::Mean, true)
    );
    let reference = common::reference("minilm_embeddings.json");
    let cases = reference.as_array().unwrap();
    assert!(cases.len() >= 10);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    // All texts in one call (stacked), and each alone: the same vectors.
    let together = embedder.embed(&texts).unwrap();
    let mut worst = 1f64;
    for (i, case) in cases.iter().enumerate() {
        let ids: Vec<u32> = case["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(embedder.tokenize(texts[i]).unwrap(), ids, "token ids of {:?}", texts[i]);
        let want = reference_vector(case);
        let got = &together[i];
        assert_eq!(got.len(), want.len());
        let c = cosine(got, &want);
        worst = worst.min(c);
        assert!(c >= 0.9999, "cosine {c} for {:?}", texts[i]);
        let norm: f64 = got.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        let alone = embedder.embed(&[texts[i]]).unwrap().remove(0);
        let diff = alone.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-6, "batched and alone differ by {diff} for {:?}", texts[i]);
    }
    eprintln!("f32 weights: lowest cosine to the float64 reference {worst:.7}");
}

#[test]
fn q8_0_weights_stay_within_a_thousandth_of_the_reference() {
    use finllm::quant::QuantType;
    use finllm::rag::EmbedderOptions;
    let load = |quantize| {
        Embedder::load_with(
            minilm_dir(),
            &EmbedderOptions {
                threads: Some(2),
                quantize,
            },
        )
    };
    let embedder = load(Some(QuantType::Q8_0)).unwrap();
    let plain = load(None).unwrap();
    // Vectors of another kind: an index built with one refuses queries from the other.
    assert_ne!(embedder.fingerprint(), plain.fingerprint());
    let reference = common::reference("minilm_embeddings.json");
    let cases = reference.as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let got = embedder.embed(&texts).unwrap();
    let mut worst = 1f64;
    for (case, g) in cases.iter().zip(&got) {
        let want: Vec<f64> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        worst = worst.min(cosine(g, &want));
    }
    eprintln!("q8_0 weights: lowest cosine to the float64 reference {worst:.7}");
    assert!(worst >= 0.999, "{worst}");
    // Each text alone (after a call that left larger buffers behind) gets the very numbers it
    // got among the others: the 8-bit products do not depend on how many tokens share a call.
    for (text, g) in texts.iter().zip(&got) {
        assert_eq!(&embedder.embed(&[*text]).unwrap()[0], g, "{text:?}");
    }
    // Only Q8_0 is offered.
    assert!(load(Some(QuantType::Q4_0)).is_err());
}

#[test]
fn long_texts_are_truncated_and_bad_inputs_are_typed_errors() {
    let embedder = Embedder::load(minilm_dir(), Some(1)).unwrap();
    let long = "interest rate swap ".repeat(1000);
    let ids = embedder.tokenize(&long).unwrap();
    assert_eq!(ids.len(), embedder.config().max_tokens);
    assert_eq!(embedder.embed(&[long.as_str()]).unwrap()[0].len(), 384);
    assert!(embedder.embed_ids(&[vec![]]).is_err());
    assert!(matches!(
        embedder.embed_ids(&[vec![101, 40_000, 102]]),
        Err(finllm::Error::TokenOutOfRange { id: 40_000, .. })
    ));
    assert!(embedder.embed::<&str>(&[]).unwrap().is_empty());
    // Not an embedder directory: a typed error naming what is wrong.
    let dir = std::env::temp_dir().join(format!("finllm-embed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    assert!(matches!(
        Embedder::load(&dir, Some(1)),
        Err(finllm::Error::UnknownArchitecture { .. })
    ));
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "bert", "hidden_size": 384, "num_attention_heads": 5, "num_hidden_layers": 6}"#,
    )
    .unwrap();
    assert!(Embedder::load(&dir, Some(1)).is_err());
}

/// The default policy packs' semantic rule (personalised advice) works with the real embedder:
/// hand-written advice paraphrases get the rule's disclaimer, neutral finance sentences do not,
/// and without the embedder the rule is skipped and the decision says so.
#[test]
fn default_policy_semantic_rules_run_on_minilm() {
    use finllm::compliance::Policy;
    let embedder = std::sync::Arc::new(Embedder::load(minilm_dir(), Some(2)).unwrap());
    let plain = Policy::default_packs().unwrap();
    let policy = plain.with_embedder(embedder).unwrap();
    let semantic = |text: &str| {
        let d = policy.check(text).unwrap();
        d.matches.iter().any(|m| m.rule_id == "en.advice.semantic")
    };
    let advice = [
        "Given your age, you should move your retirement savings into this fund today.",
        "Based on your situation, buy this ETF today.",
        "I would put most of your retirement money into this fund.",
        "Dump your bonds and buy bank shares this week.",
        "Take your savings out of the bank and invest them in this fund.",
    ];
    let neutral = [
        "The central bank held its policy rate at 4.25% on Wednesday.",
        "The fund returned 7% last year, net of fees.",
        "Tech shares fell 3% as investors took profits.",
        "Retirement savings accounts grew 5% in the quarter.",
        "The bank sold its bond portfolio at a loss.",
    ];
    let caught = advice.iter().filter(|t| semantic(t)).count();
    assert!(caught >= 4, "only {caught} of {} advice sentences caught", advice.len());
    for t in neutral {
        assert!(!semantic(t), "{t}");
    }
    let skipped = plain.check(advice[0]).unwrap();
    assert!(!skipped.matches.iter().any(|m| m.rule_id == "en.advice.semantic"));
    assert!(skipped.notes.iter().any(|n| n.contains("no embedder")), "{skipped:?}");
}
