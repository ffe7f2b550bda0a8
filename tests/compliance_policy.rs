//! The streaming output filter: a banned phrase split across any number of pieces never reaches
//! the caller, and allowed text is held back no longer than a rule could still need it.

mod common;

use common::Rng;
use finllm::compliance::{Policy, Verdict};
use finllm::{LoadOptions, Model};

/// `text` cut into random pieces of 1..=max_chars characters.
fn random_pieces(text: &str, rng: &mut Rng, max_chars: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let n = (1 + rng.below(max_chars)).min(chars.len() - at);
        out.push(chars[at..at + n].iter().collect());
        at += n;
    }
    out
}

#[test]
fn banned_phrases_split_anywhere_never_stream_out() {
    let policy = Policy::default_packs().unwrap();
    let cases = [
        (
            "Our desk believes this fund offers guaranteed returns to every client.",
            "guaranteed returns",
        ),
        ("经理表示，本理财产品保本保收益，欢迎购买。", "保本保收益"),
        (
            "My cousin on the board gave me an INSIDE TIP about the merger.",
            "inside tip",
        ),
    ];
    let mut rng = Rng(7);
    for (text, phrase) in cases {
        let cut = text.to_lowercase().find(phrase).unwrap();
        for trial in 0..200 {
            let mut stream = policy.stream();
            let mut released = String::new();
            let mut blocked = false;
            for piece in random_pieces(text, &mut rng, 1 + trial % 7) {
                let out = stream.push(&piece).unwrap();
                released.push_str(&out.release);
                assert!(
                    !released.to_lowercase().contains(phrase),
                    "{phrase:?} leaked: {released:?}"
                );
                if let Some(d) = out.decision {
                    assert_eq!(d.verdict, Verdict::Block);
                    blocked = true;
                    break;
                }
            }
            assert!(blocked, "{text:?} was not blocked");
            assert!(stream.is_stopped());
            // Everything before the phrase was released: the block cuts no more than it must.
            assert_eq!(released, text[..cut], "trial {trial}");
        }
    }
}

/// The longest suffix of `text` that is a proper prefix of one of `words` (ASCII case folded).
fn longest_pending_prefix(text: &str, words: &[&str]) -> usize {
    let text = text.to_ascii_lowercase();
    (1..=text.len())
        .rev()
        .filter(|&n| text.is_char_boundary(text.len() - n))
        .find(|&n| {
            let suffix = &text[text.len() - n..];
            words
                .iter()
                .any(|w| w.len() > n && w.to_ascii_lowercase().starts_with(suffix))
        })
        .unwrap_or(0)
}

#[test]
fn keyword_rules_hold_back_only_a_pending_prefix() {
    let words = ["bond fraud", "boiler room", "pump and dump"];
    let policy = Policy::from_toml_str(
        "[[rules]]\nid = 'k'\ncategory = 'market_manipulation'\naction = 'flag'\n\
         keywords = ['bond fraud', 'boiler room', 'pump and dump']\n",
    )
    .unwrap();
    // Text over the keywords' own letters, so partial matches are frequent.
    let alphabet: Vec<char> = "bondfraulimpajdu ".chars().collect();
    let mut rng = Rng(11);
    for _ in 0..300 {
        let text: String = (0..60).map(|_| alphabet[rng.below(alphabet.len())]).collect();
        let mut stream = policy.stream();
        let mut received = String::new();
        let mut released = String::new();
        for piece in random_pieces(&text, &mut rng, 4) {
            received.push_str(&piece);
            released.push_str(&stream.push(&piece).unwrap().release);
            let expected = longest_pending_prefix(&received, &words);
            assert_eq!(stream.held_bytes(), expected, "after {received:?}");
            assert_eq!(released, received[..received.len() - expected]);
        }
        released.push_str(&stream.finish().unwrap().release);
        assert_eq!(released, text, "flagging never changes the text");
    }
}

/// How far the released text lags the generated text with the shipped packs, in tokens of the
/// default model's tokenizer, over an allowed finance answer. Reported, and bounded by what the
/// packs declare (the longest regex window).
#[test]
fn hold_back_delay_of_the_default_packs_in_tokens() {
    let model = Model::load(
        common::smollm2_path(),
        &LoadOptions {
            threads: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let text = "Duration measures how sensitive a bond's price is to changes in interest rates. \
                A bond with a duration of seven years loses roughly seven percent of its value when \
                yields rise by one percentage point. Investors who expect rates to fall often \
                extend duration, while those worried about inflation shorten it. 久期衡量债券价格对利率变化的敏感度。";
    let ids = model.tokenize(text).unwrap();
    let policy = Policy::default_packs().unwrap();
    let mut stream = policy.stream();
    let mut decoded = String::new();
    let mut released = String::new();
    let mut token_ends = Vec::new();
    let mut lags = Vec::new();
    let mut worst_chars = 0;
    let mut decoder = model.tokenizer().stream_decoder();
    for &id in &ids {
        let piece = decoder.push(id).unwrap();
        decoded.push_str(&piece);
        token_ends.push(decoded.len());
        released.push_str(&stream.push(&piece).unwrap().release);
        // Tokens whose text is not yet wholly released.
        lags.push(token_ends.iter().filter(|&&end| end > released.len()).count());
        worst_chars = worst_chars.max(decoded.chars().count() - released.chars().count());
    }
    let out = stream.finish().unwrap();
    released.push_str(&out.release);
    assert_eq!(out.decision.unwrap().verdict, Verdict::Allow);
    assert!(released.starts_with(&decoded), "allowed text came out unchanged");
    let max_lag = *lags.iter().max().unwrap();
    let mean_lag = lags.iter().sum::<usize>() as f64 / lags.len() as f64;
    println!(
        "default packs hold back at most {max_lag} tokens (mean {mean_lag:.1}) of {} tokens; regex window {} chars",
        ids.len(),
        policy.max_regex_holdback_chars()
    );
    // Held text never exceeds the longest regex window plus one token.
    println!("at most {worst_chars} characters held");
    let held_chars_bound = policy.max_regex_holdback_chars() + 16;
    assert!(worst_chars <= held_chars_bound);
    assert!(max_lag < ids.len() / 2, "the filter held back most of the answer");
}

/// A deterministic bag-of-words embedder: each lower-cased word hashed (FNV-1a) into one of 256
/// dimensions. Sentences sharing most words are close in cosine; unrelated ones are not.
struct BagOfWords;

impl finllm::compliance::Embedder for BagOfWords {
    fn embed(&self, texts: &[&str]) -> finllm::Result<Vec<Vec<f32>>> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; 256];
                for word in t.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                    let h = word.to_lowercase().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
                    });
                    v[usize::try_from(h % 256).unwrap()] += 1.0;
                }
                v
            })
            .collect())
    }
}

/// Cosine similarity in f64, the oracle for the rule's threshold.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

const SEMANTIC_PACK: &str = r#"
[[rules]]
id = "advice"
category = "unlicensed_advice"
action = "block"
examples = ["you should move all of your savings into this one stock now"]
threshold = 0.75
"#;

#[test]
fn semantic_rules_judge_whole_sentences_by_embedding_similarity() {
    use finllm::compliance::Embedder;
    let example = "you should move all of your savings into this one stock now";
    let close = "Honestly, you should move all your savings into this one stock now!";
    let far = "Bond prices fall when interest rates rise.";
    let e = BagOfWords;
    let v = e.embed(&[example, close.trim_end_matches('!'), far]).unwrap();
    assert!(
        cosine(&v[0], &v[1]) >= 0.75 && cosine(&v[0], &v[2]) < 0.75,
        "test premise"
    );

    let plain = Policy::from_toml_str(SEMANTIC_PACK).unwrap();
    let without = plain.check(&format!("{far} {close}")).unwrap();
    assert_eq!(without.verdict, Verdict::Allow, "no embedder: the rule is skipped");
    assert!(without.notes.iter().any(|n| n.contains("no embedder")));

    let policy = plain.with_embedder(std::sync::Arc::new(BagOfWords)).unwrap();
    let decision = policy.check(&format!("{far} {close}")).unwrap();
    assert!(decision.is_blocked());
    let m = decision.blocked_by().unwrap();
    assert_eq!(m.rule_id, "advice");
    assert!(m.score.unwrap() >= 0.75);
    assert_eq!(decision.text, far, "the sentence before the advice passes");
    assert_eq!(policy.check(far).unwrap().verdict, Verdict::Allow);

    // Streamed word by word, no part of the blocked sentence is released.
    let mut stream = policy.stream();
    let mut released = String::new();
    for piece in format!("{far} {close} More text.").split_inclusive(' ') {
        let out = stream.push(piece).unwrap();
        released.push_str(&out.release);
        if out.decision.is_some() {
            break;
        }
    }
    assert!(stream.is_stopped());
    assert_eq!(released.trim_end(), far);
}

struct WrongDimensions;

impl finllm::compliance::Embedder for WrongDimensions {
    fn embed(&self, texts: &[&str]) -> finllm::Result<Vec<Vec<f32>>> {
        Ok(texts.iter().enumerate().map(|(i, _)| vec![1.0; 3 + i]).collect())
    }
}

#[test]
fn a_broken_embedder_is_a_typed_error_when_attached() {
    let pack = "[[rules]]\nid = 'a'\ncategory = 'x'\naction = 'flag'\nexamples = ['one', 'two']\n";
    let err = Policy::from_toml_str(pack)
        .unwrap()
        .with_embedder(std::sync::Arc::new(WrongDimensions))
        .unwrap_err();
    assert!(matches!(err, finllm::Error::Policy { .. }), "{err}");
}

#[test]
fn regex_rules_must_bound_their_matches() {
    let rule = |regex: &str, max_len: Option<usize>| {
        let max_len = max_len.map_or(String::new(), |n| format!("max_len = {n}\n"));
        format!(
            "name = \"t\"\n[[rules]]\nid = \"r\"\ncategory = \"guaranteed_return\"\naction = \"block\"\n\
             regex = '{regex}'\n{max_len}"
        )
    };
    // Unbounded repetitions cannot be held back by any window.
    for unbounded in [r"guaranteed \d+%", r"promise.*profit", r"x{3,}"] {
        let err = Policy::from_toml_str(&rule(unbounded, Some(80)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unbounded"), "{unbounded}: {err}");
    }
    // A declared max_len below what the regex can match is refused, naming the bound.
    let err = Policy::from_toml_str(&rule(r"guaranteed \d{1,3}% a year", Some(10)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("up to 22 characters"), "{err}");
    // Omitted, it is computed (characters, not bytes: a Chinese phrase of 4 characters is 12
    // bytes) and the rule works.
    let p = Policy::from_toml_str(&rule("保证收益\\d{1,2}%", None)).unwrap();
    assert_eq!(p.max_regex_holdback_chars(), 7);
    assert!(p.check("产品保证收益12%。").unwrap().is_blocked());
    let p = Policy::from_toml_str(&rule(r"guaranteed \d{1,3}% a year", Some(30))).unwrap();
    assert_eq!(p.max_regex_holdback_chars(), 30);
}

#[test]
fn streaming_and_whole_text_verdicts_agree() {
    // Property: for the shipped packs, any text and any split into pieces, the stream's verdict
    // (block or not, and by which rule) equals the whole-text check's. The fragments exercise the
    // regex rules' longest matches (long decimals, the widest gaps), keywords and noise.
    let policy = Policy::default_packs().unwrap();
    let fragments = [
        "We guarantee you ",
        "a return of 12.3456% per year",
        "12.5% annual",
        " 7% return",
        "certain that it pays 3.25% each month",
        " the firm promised investors that the product would yield ",
        "99.9999% yield",
        "保证年化收益率达到 8.88%",
        "承诺回报 12.5％",
        "本产品保本保收益",
        " guaranteed returns ",
        ". ",
        "The central bank held rates at 5.25%. ",
        "Duration measures rate sensitivity. ",
        "\n",
        "返回 ",
    ];
    let mut rng = Rng(2026);
    let (mut blocked_cases, mut total) = (0, 0);
    for _ in 0..400 {
        let n = 1 + rng.below(6);
        let text: String = (0..n).map(|_| *rng.pick(&fragments)).collect();
        let whole = policy.check(&text).unwrap();
        for split in 0..4 {
            let mut stream = policy.stream();
            let mut decision = None;
            for piece in random_pieces(&text, &mut rng, 1 + split * 3) {
                let out = stream.push(&piece).unwrap();
                if out.decision.is_some() {
                    decision = out.decision;
                    break;
                }
            }
            let decision = match decision {
                Some(d) => d,
                None => stream.finish().unwrap().decision.unwrap(),
            };
            assert_eq!(decision.is_blocked(), whole.is_blocked(), "{text:?}");
            assert_eq!(
                decision.blocked_by().map(|m| m.rule_id.clone()),
                whole.blocked_by().map(|m| m.rule_id.clone()),
                "{text:?}"
            );
            total += 1;
            blocked_cases += usize::from(whole.is_blocked());
        }
    }
    // Both outcomes were exercised.
    assert!(
        blocked_cases > total / 10 && blocked_cases < total * 9 / 10,
        "{blocked_cases}/{total}"
    );
}

#[test]
fn oversized_packs_and_special_files_are_refused_quickly() {
    let keyword_rule = |keyword: &str| {
        format!("[[rules]]\nid = \"k\"\ncategory = \"x\"\naction = \"flag\"\nkeywords = [\"{keyword}\"]\n")
    };
    // A 10,000-character keyword would make every stream hold back 10,000 characters.
    let err = Policy::from_toml_str(&keyword_rule(&"a".repeat(10_000)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("more than the 256 allowed"), "{err}");
    assert!(Policy::from_toml_str(&keyword_rule(&"a".repeat(256))).is_ok());
    // Too many rules; a pack too large.
    let many: String = (0..10_001)
        .map(|i| format!("[[rules]]\nid = \"r{i}\"\ncategory = \"x\"\naction = \"flag\"\nkeywords = [\"w{i}\"]\n"))
        .collect();
    let err = Policy::from_toml_str(&many).unwrap_err().to_string();
    assert!(err.contains("10001 rules"), "{err}");
    let huge = format!("# {}\n{}", "x".repeat(5 << 20), keyword_rule("k"));
    let err = Policy::from_toml_str(&huge).unwrap_err().to_string();
    assert!(err.contains("bytes, more than"), "{err}");
    // Devices and FIFOs are not rule packs (reading /dev/zero never ended; a FIFO blocked).
    let started = std::time::Instant::now();
    for special in ["/dev/zero", "/dev/null"] {
        let err = Policy::from_file(special).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{special}: {err}");
    }
    let fifo = std::env::temp_dir().join(format!("finllm-policy-fifo-{}", std::process::id()));
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let err = Policy::from_file(&fifo).unwrap_err().to_string();
    assert!(err.contains("not a regular file"), "{err}");
    std::fs::remove_file(&fifo).ok();
    assert!(started.elapsed().as_secs() < 10);
}
