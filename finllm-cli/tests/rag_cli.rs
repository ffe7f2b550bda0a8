//! The README's main job, as a user runs it from the repository root: `finllm index
//! examples/data`, then `finllm ask` answers citing the right filing — from the index file and
//! from PostgreSQL + pgvector (scripts/test.sh starts a throwaway server and exports its URL).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run `finllm` in the repository root, so that the default model paths hold.
fn finllm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_finllm"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const QUESTION: &str = "What was Acme Bank's CET1 ratio at the end of the third quarter?";
const FILING: &str = "acme_bank_q3_2026_earnings.md";

fn check_answer(stdout: &str) {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(!v["answer"].as_str().unwrap().trim().is_empty(), "{v}");
    let citations = v["citations"].as_array().unwrap();
    assert!(!citations.is_empty(), "{v}");
    assert_eq!(citations[0]["source"], FILING, "{v}");
    for c in citations {
        for key in ["source", "page", "start", "end", "score"] {
            assert!(!c[key].is_null(), "{key} missing in {c}");
        }
        assert!(c["start"].as_u64().unwrap() < c["end"].as_u64().unwrap());
    }
}

#[test]
fn ask_over_the_sample_filings_cites_the_right_one() {
    let dir = std::env::temp_dir().join(format!("finllm-rag-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let idx = dir.join("filings.idx");
    let idx = idx.to_str().unwrap();
    let (code, _, err) = finllm(&["index", "examples/data", "--out", idx, "--quiet"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("5 added"), "{err}");
    let (code, out, err) = finllm(&["ask", "--index", idx, "--max-tokens", "24", "--json", QUESTION]);
    assert_eq!(code, 0, "{err}");
    check_answer(&out);

    // Streaming (the default): the answer, then the sources, the right filing first.
    let (code, out, err) = finllm(&["ask", "--index", idx, "--max-tokens", "8", QUESTION]);
    assert_eq!(code, 0, "{err}");
    let sources = out.split("\nSources:\n").nth(1).unwrap_or_else(|| panic!("{out}"));
    assert!(
        sources.starts_with(&format!("[1]* {FILING}")) || sources.starts_with(&format!("[1] {FILING}")),
        "{out}"
    );

    // Which sources drove the answer: every source in the prompt, ranked by score.
    let (code, out, err) = finllm(&[
        "ask",
        "--index",
        idx,
        "--max-tokens",
        "12",
        "--explain",
        "occlusion",
        "--json",
        QUESTION,
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ranked = v["explanation"]["sources"].as_array().unwrap();
    assert_eq!(ranked.len(), v["citations"].as_array().unwrap().len(), "{v}");
    let scores: Vec<f64> = ranked.iter().map(|s| s["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{v}");
    let mut labels: Vec<String> = ranked
        .iter()
        .map(|s| s["label"].as_str().unwrap().to_string())
        .collect();
    labels.sort();
    for (i, l) in labels.iter().enumerate() {
        assert!(l.starts_with(&format!("[{}] ", i + 1)), "{labels:?}");
    }

    // A caller entitled to nothing in the folder gets no sources.
    let (code, out, err) = finllm(&[
        "ask",
        "--index",
        idx,
        "--entitlement",
        "nobody",
        "--max-tokens",
        "4",
        "--json",
        QUESTION,
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["citations"].as_array().unwrap().len(), 0, "{v}");

    // The same through PostgreSQL: `index --pg` mirrors the index, `ask --pg` retrieves there.
    let url = std::env::var("FINLLM_TEST_PG_URL")
        .expect("FINLLM_TEST_PG_URL is not set: eval \"$(python3 scripts/pg_server.py start)\" (scripts/test.sh does)");
    let table = format!("cli_{}", std::process::id());
    let (code, _, err) = finllm(&[
        "index",
        "examples/data",
        "--out",
        idx,
        "--quiet",
        "--pg",
        &url,
        "--pg-table",
        &table,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("5 files added"), "{err}");
    let (code, out, err) = finllm(&[
        "ask",
        "--pg",
        &url,
        "--pg-table",
        &table,
        "--max-tokens",
        "24",
        "--json",
        QUESTION,
    ]);
    assert_eq!(code, 0, "{err}");
    check_answer(&out);
    // Both stores at once is refused; a wrong server is a clear error, not a hang.
    let (code, _, err) = finllm(&["search", "--index", idx, "--pg", &url, "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot be used with"), "{err}");
    let (code, _, err) = finllm(&["search", "--pg", "postgresql://postgres@127.0.0.1:1/postgres", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("postgres") && err.contains("connect"), "{err}");
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}
