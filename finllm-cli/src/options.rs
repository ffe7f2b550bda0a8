//! Options shared by `generate` and `chat`: the model, how to load it, sampling, and the
//! compliance controls.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use finllm_core::compliance::audit::{AuditConfig, AuditLog};
use finllm_core::compliance::pii::{PiiConfig, PiiDetector};
use finllm_core::compliance::{Guard, GuardConfig, Policy, RequestInfo};
use finllm_core::{GenerateParams, LoadOptions, Model, SamplingParams};

use crate::util::read_key;
use crate::DEFAULT_MODEL;

/// Compliance controls for `generate`, `chat`, `ask` and `explain`.
#[derive(Args)]
pub(crate) struct ComplianceArgs {
    /// Append a tamper-evident record of every request to this audit log.
    #[arg(long)]
    audit_log: Option<PathBuf>,
    /// File holding the audit log's HMAC key.
    #[arg(long, requires = "audit_log")]
    audit_hmac_key_file: Option<PathBuf>,
    /// Filter output with this TOML policy; `default` for the shipped English and Chinese packs.
    #[arg(long)]
    policy: Option<String>,
    /// Sentence embedder: for the policy's semantic rules, and for `ask` the one that built the index.
    #[arg(long, default_value = crate::DEFAULT_EMBEDDER)]
    embedder: PathBuf,
    /// Mask personal data in prompts before the model sees them.
    #[arg(long)]
    mask_pii: bool,
    /// Caller id recorded in the audit log.
    #[arg(long, default_value = "cli")]
    caller_id: String,
}

impl ComplianceArgs {
    pub(crate) fn embedder(&self) -> &std::path::Path {
        &self.embedder
    }

    pub(crate) fn enabled(&self) -> bool {
        self.audit_log.is_some() || self.policy.is_some() || self.mask_pii
    }

    pub(crate) fn guard(&self) -> Result<Guard, Box<dyn std::error::Error>> {
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
        let policy = policy
            .map(|p| crate::util::with_embedder(p, &self.embedder))
            .transpose()?;
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

    pub(crate) fn request(&self) -> RequestInfo {
        RequestInfo {
            caller_id: self.caller_id.clone(),
            ..Default::default()
        }
    }
}

#[derive(Args)]
pub(crate) struct Common {
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
    pub(crate) compliance: ComplianceArgs,
}

impl Common {
    pub(crate) fn params(&self, top_logits: usize) -> GenerateParams {
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

    pub(crate) fn threads(&self) -> Option<usize> {
        self.threads
    }

    pub(crate) fn load(&self) -> Result<Model, finllm_core::Error> {
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
