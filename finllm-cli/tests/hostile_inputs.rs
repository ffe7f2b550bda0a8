//! Hostile inputs through the `finllm` command, each run under an address-space limit
//! (`prlimit --as`) and a 10 s deadline: an over-allocation makes the process abort (and the test
//! fail) instead of passing by luck on a machine with memory to spare, and a hang is killed.
//! Every case must end with exit code 1 and a typed error message, or succeed where the input is
//! merely large.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use finllm_core::model::Value;
use finllm_core::quant::QuantType;
use finllm_core::tools::synthetic::SyntheticSpec;
use finllm_core::Architecture;

const GIB: u64 = 1 << 30;
const DEADLINE: Duration = Duration::from_secs(10);

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-cli-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// The binary under test: this build's, or `FINLLM_HOSTILE_BIN` (to show an older build failing
/// these tests).
fn finllm_bin() -> std::ffi::OsString {
    std::env::var_os("FINLLM_HOSTILE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_finllm").into())
}

/// Run `finllm ARGS` under `prlimit --as=LIMIT` with `stdin`, killed at the deadline.
fn run_limited(address_space: u64, args: &[&str], stdin: &[u8]) -> Outcome {
    let mut child = Command::new("prlimit")
        .arg(format!("--as={address_space}"))
        .arg("--")
        .arg(finllm_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs");
    let started = Instant::now();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().ok();
            child.wait().ok();
            panic!("finllm {args:?} ran past {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    writer.join().ok();
    Outcome {
        code: status.code(),
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        elapsed,
    }
}

fn assert_typed_error(o: &Outcome, needle: &str) {
    assert_eq!(
        o.code,
        Some(1),
        "exit code (a signal or abort is None/134): {}",
        o.stderr
    );
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
    assert!(o.stderr.contains(needle), "{needle:?} not in {}", o.stderr);
    assert!(!o.stderr.contains("panicked"), "{}", o.stderr);
    assert!(o.elapsed < DEADLINE);
}

/// A sparse file: `header`, then zeros up to `len` bytes.
fn sparse(path: &Path, header: &[u8], len: u64) {
    std::fs::write(path, header).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn gguf_header(n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut h = b"GGUF".to_vec();
    h.extend_from_slice(&3u32.to_le_bytes());
    h.extend_from_slice(&n_tensors.to_le_bytes());
    h.extend_from_slice(&n_kv.to_le_bytes());
    h
}

#[test]
fn gguf_allocation_bombs_fail_typed_within_a_gib_of_heap() {
    let dir = temp_dir();
    // A metadata array of 2^30 bytes (34 GB as decoded values before the fix).
    let mut header = gguf_header(0, 1);
    header.extend_from_slice(&4u64.to_le_bytes());
    header.extend_from_slice(b"bomb");
    header.extend_from_slice(&9u32.to_le_bytes()); // array
    header.extend_from_slice(&0u32.to_le_bytes()); // of u8
    header.extend_from_slice(&GIB.to_le_bytes());
    let array = dir.join("array.gguf");
    sparse(&array, &header, header.len() as u64 + GIB);
    // The file is mapped, so the limit is its size plus 1 GiB for everything else.
    let o = run_limited(2 * GIB + GIB / 4, &["info", array.to_str().unwrap()], b"");
    assert_typed_error(&o, "bytes of memory");
    // A key count that a 6 GB file allows by size (26 GB reserved before the fix).
    let len = 6 * GIB;
    let keys = dir.join("keys.gguf");
    sparse(&keys, &gguf_header(0, (len - 24) / 13), len);
    let o = run_limited(len + GIB, &["info", keys.to_str().unwrap()], b"");
    assert_typed_error(&o, "metadata key-values");
    std::fs::remove_file(array).ok();
    std::fs::remove_file(keys).ok();
}

#[test]
fn chat_template_bombs_fail_typed_within_a_gib() {
    let dir = temp_dir();
    let bombs = [
        ("print", "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"),
        (
            "loops",
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
        ),
        (
            "macro",
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        ),
    ];
    for (name, template) in bombs {
        let mut g = SyntheticSpec::tiny(Architecture::Llama, 3)
            .gguf_writer(QuantType::F32)
            .unwrap();
        g.meta("tokenizer.chat_template", Value::String(template.into()));
        let path = dir.join(format!("template-{name}.gguf"));
        g.write(&path).unwrap();
        let o = run_limited(
            GIB,
            &[
                "chat",
                "--quiet",
                "--threads",
                "1",
                "--model",
                path.to_str().unwrap(),
                "--prompt",
                "hi",
            ],
            b"",
        );
        assert_typed_error(&o, "chat template");
    }
}

#[test]
fn ten_megabytes_of_pii_mask_within_bounds() {
    // Identifier-dense text: quadratic before the fix (over a minute at 10 MB).
    let line = "Client 张三, mobile 138 0013 8000, card 4111 1111 1111 1111, mail zhang.san@example.com.\n";
    let text = line.repeat((10 << 20) / line.len() + 1);
    let o = run_limited(GIB, &["pii"], text.as_bytes());
    assert_eq!(o.code, Some(0), "{}", o.stderr);
    let lines = text.lines().count();
    assert_eq!(o.stdout.matches("<PHONE_1>").count(), lines);
    assert_eq!(o.stdout.matches("<CARD_1>").count(), lines);
    assert_eq!(o.stdout.matches("<EMAIL_1>").count(), lines);
}

#[test]
fn a_closed_pipe_ends_quietly() {
    let dir = temp_dir();
    let path = dir.join("pipe.gguf");
    SyntheticSpec::tiny(Architecture::Llama, 3)
        .gguf_writer(QuantType::F32)
        .unwrap()
        .write(&path)
        .unwrap();
    // `finllm info --tensors | head -1`: the reader goes away after one line.
    let mut child = Command::new(finllm_bin())
        .args(["info", "--tensors", path.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "a closed pipe printed: {stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        output.status.success() || output.status.signal() == Some(13),
        "{:?}",
        output.status
    );
}
