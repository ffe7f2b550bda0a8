//! `finllm explain` as our checks call it: one JSON object with units ranked by score (text,
//! start, end, score), the method and the target; a ranked table otherwise; clear errors.

use std::path::PathBuf;
use std::process::Command;

fn finllm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_finllm"))
        .args(args)
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const COPY: &str = "The code is 4711. Repeat the code:";

#[test]
fn explain_json_ranks_the_copied_code_first() {
    for method in ["occlusion", "shapley", "surrogate"] {
        let (code, out, err) = finllm(&[
            "explain",
            "--prompt",
            COPY,
            "--target",
            " 4711",
            "--method",
            method,
            "--threads",
            "2",
            "--json",
        ]);
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["method"], method);
        assert_eq!(v["target"]["text"], " 4711");
        let units = v["units"].as_array().unwrap();
        assert_eq!(units[0]["text"], "4711", "{method}: {out}");
        for u in units {
            let (s, e) = (
                u["start"].as_u64().unwrap() as usize,
                u["end"].as_u64().unwrap() as usize,
            );
            assert_eq!(u["text"].as_str().unwrap(), &COPY[s..e]);
        }
        let scores: Vec<f64> = units.iter().map(|u| u["score"].as_f64().unwrap()).collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    }
    // Attention methods and the generated answer (no --target), as a table.
    let (code, out, err) = finllm(&[
        "explain",
        "--prompt",
        COPY,
        "--chat",
        "--method",
        "attention",
        "--max-tokens",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("answer: ") && out.contains("method: attention"),
        "{out}"
    );
}

#[test]
fn explain_refuses_bad_options_clearly() {
    let (code, _, err) = finllm(&["explain", "--prompt", COPY, "--method", "magic"]);
    assert_ne!(code, 0);
    assert!(err.contains("method") && err.contains("occlusion"), "{err}");
    let (code, _, err) = finllm(&[
        "explain",
        "--prompt",
        COPY,
        "--target",
        " 4711",
        "--target-tokens",
        "3:9",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("target_tokens"), "{err}");
    let (code, _, err) = finllm(&["explain", "--prompt", COPY, "--granularity", "page"]);
    assert_ne!(code, 0);
    assert!(err.contains("granularity"), "{err}");
}

#[test]
fn a_guarded_explain_masks_the_prompt_and_records_the_explanation_after_the_answer() {
    let dir = std::env::temp_dir().join(format!("finllm-explain-cli-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.log");
    let log_s = log.to_str().unwrap();
    let prompt = "The code is 4711. Mail it to jane.doe@example.com. Repeat the code:";
    let (code, out, err) = finllm(&[
        "explain",
        "--prompt",
        prompt,
        "--chat",
        "--max-tokens",
        "6",
        "--mask-pii",
        "--audit-log",
        log_s,
        "--caller-id",
        "desk-7",
        "--threads",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(!v["prompt"].as_str().unwrap().contains("jane.doe@example.com"), "{out}");
    assert!(err.contains("explanation: audit record 2"), "{err}");
    // The log holds the answer's record then the explanation's, naming it; the chain verifies.
    let (code, shown, err) = finllm(&["audit", "show", log_s]);
    assert_eq!(code, 0, "{err}");
    let records: Vec<serde_json::Value> = shown.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2, "{shown}");
    let phase = |r: &serde_json::Value| r["record"]["phase"].as_str().map(str::to_string);
    assert_eq!(phase(&records[1]).as_deref(), Some("explanation"), "{shown}");
    assert_eq!(records[1]["record"]["caller_id"], "desk-7");
    assert_eq!(records[1]["record"]["explanation"]["of_seq"], records[0]["seq"]);
    let (code, _, err) = finllm(&["audit", "verify", log_s]);
    assert_eq!(code, 0, "{err}");
    // A given answer is not a guarded request's.
    let (code, _, err) = finllm(&["explain", "--prompt", COPY, "--target", " 4711", "--mask-pii"]);
    assert_ne!(code, 0);
    assert!(err.contains("--target"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
