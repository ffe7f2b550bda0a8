//! [`Guard`]: the compliance controls wrapped around generation requests.
//!
//! A guarded [`Request`](crate::Request) runs through one [`GuardSession`], which, as the guard
//! is configured:
//! 1. masks personal data in the prompt with reversible placeholders (`<ID_1>`), so the model
//!    never sees it, and keeps the mapping in a per-request [`Vault`] (every chat message with
//!    the same vault, so `<ID_1>` means one value in every turn);
//! 2. observes the prompt's tokens in the drift monitor;
//! 3. passes the generated text through the output policy's [`StreamFilter`], so a blocked
//!    phrase never reaches the caller, and stops generation on a block;
//! 4. restores the placeholders in the answer for a caller authorised to see them;
//! 5. records the request in the audit log (masked prompt, output with personal data redacted,
//!    model hash, sampling parameters and seed, policy decisions, latency), failing closed:
//!    - a request answered as a whole gets one [`Complete`](RecordPhase::Complete) record, and
//!      its answer is returned only once the record is durable;
//!    - a streamed request first gets an [`Opened`](RecordPhase::Opened) record (request and
//!      caller ids, model hash, masked prompt, sampling; no output), and releases its first token
//!      only once that is durable, then the [`Closed`](RecordPhase::Closed) record (the full
//!      record, with the same request id and the opened record's `opened_seq`) before its last
//!      piece is released.
//!
//!    If the opened record cannot be written the request fails with the audit error and no token
//!    is delivered; if the closing one cannot, the stream ends with the audit error instead of its
//!    last piece (and, when the log still takes records, a short closing record says it failed).
//!    A request that fails for another reason is recorded too, with `finish_reason` `error`.
//!
//! The request path ([`crate::request`]) drives the session; nothing here runs the model.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::audit::{unix_ms, AuditDecision, AuditLog, AuditRecord, AuditSampling, RecordPhase, RecordReceipt};
use super::drift::{DriftConfig, DriftMetrics, DriftMonitor};
use super::pii::{Entity, PiiDetector, Vault};
use super::policy::{Decision, Policy, StreamFilter, Verdict};
use crate::chat::ChatMessage;
use crate::generate::{FinishReason, GenerateParams};
use crate::llm::{Model, Prompt};
use crate::{Error, Result};

/// What a [`Guard`] does. Every part is optional; an empty config passes requests through.
#[derive(Default)]
pub struct GuardConfig {
    /// Mask personal data in prompts before the model sees them.
    pub pii: Option<Arc<PiiDetector>>,
    /// Put the original values back into the answer where the model repeated a placeholder.
    /// Only for callers authorised to see the data; the audit record never gets them.
    pub unmask_output: bool,
    /// Filter the output (block, redact, append disclaimers, flag).
    pub policy: Option<Policy>,
    /// Record every request; answers are returned only once their record is durable.
    pub audit: Option<Arc<AuditLog>>,
    /// Watch the token distribution of prompts.
    pub drift: Option<DriftConfig>,
}

/// Who asks, and what the request drew on, for the audit record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestInfo {
    /// Unique id of the request; one is made up when empty.
    pub request_id: String,
    /// The authenticated caller (user, service or desk) on whose behalf the model runs.
    pub caller_id: String,
    /// Fine-tuning adapter in use, if any.
    pub adapter: Option<String>,
    /// Ids of documents retrieved into the prompt.
    pub source_ids: Vec<String>,
}

/// What the guard did for one request.
#[derive(Debug, Clone, Default)]
pub struct GuardReport {
    pub request_id: String,
    /// The prompt as the model saw it (personal data replaced by placeholders; a conversation
    /// rendered with the chat template).
    pub masked_prompt: String,
    /// For a conversation, its messages as the model saw them (personal data replaced by
    /// placeholders), before the chat template; empty for a text or token prompt.
    pub masked_messages: Vec<ChatMessage>,
    /// Personal data found in the prompt (spans refer to the original text, message by message
    /// for a conversation).
    pub prompt_entities: Vec<Entity>,
    /// The output policy's decision, when a policy is configured.
    pub decision: Option<Decision>,
    /// Where the audit record went, when an audit log is configured.
    pub receipt: Option<RecordReceipt>,
    /// Drift after this request's prompt, when drift monitoring is configured.
    pub drift: Option<DriftMetrics>,
}

/// Compliance controls shared by every request to one or more models. `Send + Sync`: share it
/// behind an `Arc`.
pub struct Guard {
    config: GuardConfig,
    drift: Option<Mutex<DriftMonitor>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("pii", &self.config.pii.is_some())
            .field("unmask_output", &self.config.unmask_output)
            .field("policy", &self.config.policy)
            .field("audit", &self.config.audit.as_ref().map(|a| a.path().to_path_buf()))
            .field("drift", &self.config.drift)
            .finish()
    }
}

impl Guard {
    pub fn new(config: GuardConfig) -> Result<Self> {
        let drift = match &config.drift {
            Some(c) => Some(Mutex::new(DriftMonitor::new(c.clone())?)),
            None => None,
        };
        Ok(Self { config, drift })
    }

    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Current drift metrics, when drift monitoring is configured.
    pub fn drift_metrics(&self) -> Option<DriftMetrics> {
        self.drift.as_ref().map(|m| lock(m).metrics())
    }

    /// Start guarding one request to `model`: mask personal data in `prompt` and prepare the
    /// request's audit record. Returns the prompt the model may see and the session that
    /// filters, unmasks and records the answer. Token ids cannot be screened for personal data:
    /// with PII masking on, an [`Ids`](Prompt::Ids) prompt is refused.
    pub fn begin(
        self: &Arc<Self>,
        model: &Model,
        prompt: &Prompt,
        params: &GenerateParams,
        info: &RequestInfo,
    ) -> Result<(Prompt, GuardSession)> {
        let started = Instant::now();
        let mut vault = Vault::new();
        let mut entities = Vec::new();
        let (masked, masked_text) = match prompt {
            Prompt::Text(text) => {
                let (masked, found) = self.mask(text, &mut vault);
                entities = found;
                (Prompt::Text(masked.clone()), masked)
            }
            Prompt::Chat(messages) => {
                let masked: Vec<ChatMessage> = messages
                    .iter()
                    .map(|m| {
                        let (content, found) = self.mask(&m.content, &mut vault);
                        entities.extend(found);
                        ChatMessage { content, ..m.clone() }
                    })
                    .collect();
                let text = model.apply_chat_template(&masked)?;
                (Prompt::Chat(masked), text)
            }
            Prompt::Ids(ids) => {
                if self.config.pii.is_some() {
                    return Err(Error::invalid(
                        "prompt",
                        "token ids cannot be screened for personal data: give a guard that masks PII text or \
                         chat messages",
                    ));
                }
                (Prompt::Ids(ids.clone()), model.detokenize(ids)?)
            }
        };
        let request_id = if info.request_id.is_empty() {
            new_request_id()
        } else {
            info.request_id.clone()
        };
        let recorder = Recorder {
            guard: Arc::clone(self),
            started,
            opened_seq: None,
            base: AuditRecord {
                request_id: request_id.clone(),
                caller_id: info.caller_id.clone(),
                started_at_ms: unix_ms(),
                model_sha256: match &self.config.audit {
                    Some(_) => model.sha256()?,
                    None => String::new(),
                },
                adapter: info.adapter.clone(),
                sampling: AuditSampling::new(&params.sampling, params.max_tokens),
                masked_prompt: masked_text.clone(),
                source_ids: info.source_ids.clone(),
                ..Default::default()
            },
        };
        let output = Output {
            filter: self.config.policy.as_ref().map(Policy::stream),
            unmask: self.config.unmask_output.then(|| Unmasker::new(vault)),
            filtered: String::new(),
            shown: String::new(),
        };
        let session = GuardSession {
            recorder,
            output,
            report: GuardReport {
                request_id,
                masked_prompt: masked_text,
                masked_messages: match &masked {
                    Prompt::Chat(m) => m.clone(),
                    _ => Vec::new(),
                },
                prompt_entities: entities,
                decision: None,
                receipt: None,
                drift: None,
            },
            ended: false,
        };
        Ok((masked, session))
    }

    fn mask(&self, text: &str, vault: &mut Vault) -> (String, Vec<Entity>) {
        match &self.config.pii {
            Some(detector) => (detector.pseudonymise_with(text, vault), detector.detect(text)),
            None => (text.to_string(), Vec::new()),
        }
    }

    fn redact_for_log(&self, text: &str) -> String {
        match &self.config.pii {
            Some(detector) => detector.redact(text),
            None => text.to_string(),
        }
    }
}

/// One request under a [`Guard`], from its masked prompt to its audit record. The request path
/// calls, in order: [`observe_prompt`](Self::observe_prompt); for a streamed request
/// [`open`](Self::open) before releasing anything; [`push`](Self::push) for each generated
/// piece; at the end [`finish`](Self::finish) and then [`close`](Self::close) before the last
/// piece is released; or [`fail`](Self::fail) when the request fails.
/// A session dropped before its request was recorded as ended (a stream the caller let go)
/// writes its closing record then, as cancelled: no opened record stays without its end.
pub struct GuardSession {
    recorder: Recorder,
    output: Output,
    report: GuardReport,
    /// The request's final record was written (or its failure recorded).
    ended: bool,
}

impl std::fmt::Debug for GuardSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardSession")
            .field("request_id", &self.report.request_id)
            .finish_non_exhaustive()
    }
}

impl GuardSession {
    /// Count the prompt's tokens in the drift monitor (when one is configured).
    pub fn observe_prompt(&mut self, ids: &[u32]) -> Result<()> {
        if let Some(m) = &self.recorder.guard.drift {
            self.report.drift = Some(lock(m).observe(ids)?);
        }
        Ok(())
    }

    /// A streamed request: write the opened record and wait until it is durable. Fail closed:
    /// nothing may be released before this returns `Ok`.
    pub fn open(&mut self) -> Result<()> {
        self.recorder.open()
    }

    /// Filter one generated piece: the text the caller may see now, and whether the policy
    /// blocked the answer (generation must stop then; the decision is kept for the record).
    pub fn push(&mut self, piece: &str) -> Result<(String, bool)> {
        let (shown, blocked) = self.output.push(piece)?;
        let is_blocked = blocked.is_some();
        if is_blocked {
            self.report.decision = blocked;
        }
        Ok((shown, is_blocked))
    }

    /// The answer ended: the text still held back (disclaimers, an unfinished placeholder).
    pub fn finish(&mut self) -> Result<String> {
        let (tail, decision) = self.output.finish()?;
        self.report.decision = decision;
        Ok(tail)
    }

    /// Write the request's complete (or, after [`open`](Self::open), closing) record with its
    /// finish reason and wait until it is durable; the last piece may be released only after.
    pub fn close(&mut self, finish: FinishReason) -> Result<()> {
        // Written or not, this was the request's one closing attempt (a failed one leaves its own
        // short record when the log still takes records).
        self.ended = true;
        self.report.receipt =
            self.recorder
                .close(&self.output.filtered, finish.as_str(), self.report.decision.as_ref())?;
        Ok(())
    }

    /// Record the failed request (with what was released) and return the error to report: the
    /// audit error if the record could not be written, else `error`.
    pub fn fail(&mut self, error: Error) -> Error {
        self.ended = true;
        self.recorder.fail(&self.output.filtered, error)
    }

    /// What the caller has been shown so far (filtered, unmasked if configured).
    pub fn shown(&self) -> &str {
        &self.output.shown
    }

    /// What the guard did.
    pub fn into_report(mut self) -> GuardReport {
        self.ended = true;
        std::mem::take(&mut self.report)
    }
}

impl Drop for GuardSession {
    fn drop(&mut self) {
        if !self.ended && self.recorder.opened_seq.is_some() {
            // Nobody is left to hand an error to; the log itself reports a failed append.
            let finish = FinishReason::Cancelled.as_str();
            let _ = self
                .recorder
                .close(&self.output.filtered, finish, self.report.decision.as_ref());
        }
    }
}

/// Writes a request's audit records: one complete record for a request answered as a whole;
/// for streams, an opened record before the first token and a closing one before the last piece.
struct Recorder {
    guard: Arc<Guard>,
    /// The request's facts (ids, model hash, masked prompt, sampling); no output yet.
    base: AuditRecord,
    started: Instant,
    /// Sequence number of the opened record, once it is durable.
    opened_seq: Option<u64>,
}

impl Recorder {
    fn log(&self) -> Option<&AuditLog> {
        self.guard.config.audit.as_deref()
    }

    fn record(&self, output: &str, finish: &str, decision: Option<&Decision>, error: Option<String>) -> AuditRecord {
        AuditRecord {
            finished_at_ms: unix_ms(),
            output: self.guard.redact_for_log(output),
            decisions: decision.map_or_else(Vec::new, |d| d.matches.iter().map(AuditDecision::from).collect()),
            latency_ms: self.started.elapsed().as_secs_f64() * 1e3,
            finish_reason: finish.to_string(),
            error,
            phase: if self.opened_seq.is_some() {
                RecordPhase::Closed
            } else {
                RecordPhase::Complete
            },
            opened_seq: self.opened_seq,
            ..self.base.clone()
        }
    }

    /// Append the opened record and wait until it is durable.
    fn open(&mut self) -> Result<()> {
        let Some(log) = self.log() else { return Ok(()) };
        let opened = AuditRecord {
            phase: RecordPhase::Opened,
            ..self.base.clone()
        };
        self.opened_seq = Some(log.append(&opened)?.seq);
        Ok(())
    }

    /// Append the request's complete or closing record. If a stream's closing record cannot be
    /// written but the log still takes records (the record was too large, say), a short closing
    /// record says it failed; the error that stopped the full one is returned either way.
    fn close(&self, output: &str, finish: &str, decision: Option<&Decision>) -> Result<Option<RecordReceipt>> {
        let Some(log) = self.log() else { return Ok(None) };
        match log.append(&self.record(output, finish, decision, None)) {
            Ok(receipt) => Ok(Some(receipt)),
            Err(e) => {
                if self.opened_seq.is_some() && !log.is_poisoned() {
                    let why = format!("the closing record could not be written: {e}");
                    let _ = log.append(&self.record("", "error", None, Some(why)));
                }
                Err(e)
            }
        }
    }

    /// Record a failed request (when auditing), then hand back the error that ended it; an
    /// audit failure takes precedence, since it means the log is no longer complete.
    fn fail(&self, output: &str, error: Error) -> Error {
        let Some(log) = self.log() else { return error };
        match log.append(&self.record(output, "error", None, Some(error.to_string()))) {
            Ok(_) => error,
            Err(audit_error) => audit_error,
        }
    }
}

/// The output side of a request: policy filter, then unmasking.
struct Output {
    filter: Option<StreamFilter>,
    unmask: Option<Unmasker>,
    /// Filtered text before unmasking (what the audit record gets, redacted).
    filtered: String,
    /// What the caller has been shown.
    shown: String,
}

impl Output {
    /// Text to show now, and the decision if the policy blocked the stream.
    fn push(&mut self, piece: &str) -> Result<(String, Option<Decision>)> {
        let (released, decision) = match &mut self.filter {
            Some(f) => {
                let out = f.push(piece)?;
                (out.release, out.decision.filter(|d| d.verdict == Verdict::Block))
            }
            None => (piece.to_string(), None),
        };
        self.filtered.push_str(&released);
        let mut shown = match &mut self.unmask {
            Some(u) => u.push(&released),
            None => released,
        };
        if decision.is_some() {
            if let Some(u) = &mut self.unmask {
                shown.push_str(&u.finish());
            }
        }
        self.shown.push_str(&shown);
        Ok((shown, decision))
    }

    /// End of the stream: everything still held, with disclaimers.
    fn finish(&mut self) -> Result<(String, Option<Decision>)> {
        let (released, decision) = match &mut self.filter {
            Some(f) => {
                let out = f.finish()?;
                (out.release, out.decision)
            }
            None => (String::new(), None),
        };
        self.filtered.push_str(&released);
        let shown = match &mut self.unmask {
            Some(u) => {
                let mut s = u.push(&released);
                s.push_str(&u.finish());
                s
            }
            None => released,
        };
        self.shown.push_str(&shown);
        Ok((shown, decision))
    }
}

/// Longest placeholder held back while it may still be completing (`<` + tag + `_` + 9 digits + `>`).
const MAX_PLACEHOLDER_BYTES: usize = 32;

/// Restores placeholders in a stream, holding back a `<TAG_12` that may still be completing.
struct Unmasker {
    vault: Vault,
    held: String,
}

impl Unmasker {
    fn new(vault: Vault) -> Self {
        Self {
            vault,
            held: String::new(),
        }
    }

    fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        let keep_from = self
            .held
            .rfind('<')
            .filter(|&i| could_be_placeholder(&self.held[i..]))
            .unwrap_or(self.held.len());
        let ready: String = self.held.drain(..keep_from).collect();
        self.vault.unmask(&ready)
    }

    fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        self.vault.unmask(&rest)
    }
}

/// Whether `s` (starting with `<`) is an unfinished `<TAG_n>` placeholder.
fn could_be_placeholder(s: &str) -> bool {
    if s.len() >= MAX_PLACEHOLDER_BYTES || s.contains('>') {
        return false;
    }
    let body = &s[1..];
    let (tag, digits) = body.split_once('_').unwrap_or((body, ""));
    tag.bytes().all(|b| b.is_ascii_uppercase()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the drift monitor leaves counts that are still consistent.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A request id unique within this process and very likely across processes: start time,
/// process id and a counter.
fn new_request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("req-{:x}-{:x}-{n}", unix_ms(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::audit::{self, AuditConfig, SegmentIo};
    use crate::generate::GenerateParams;
    use crate::quant::QuantType;
    use crate::tools::synthetic::SyntheticSpec;
    use crate::{Architecture, LoadOptions};
    use std::ops::ControlFlow;
    use std::path::PathBuf;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("finllm-guard-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn tiny_model(dir: &std::path::Path) -> Model {
        let path = dir.join("tiny.gguf");
        SyntheticSpec::tiny(Architecture::Llama, 3)
            .write_gguf(&path, QuantType::Q8_0)
            .unwrap();
        Model::load(
            &path,
            &LoadOptions {
                threads: Some(1),
                ..Default::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn placeholder_prefixes() {
        for s in ["<", "<I", "<ID", "<ID_", "<ID_12"] {
            assert!(could_be_placeholder(s), "{s}");
        }
        for s in ["<id", "<ID_1>", "<ID_x", "< ID", "<ID_1 "] {
            assert!(!could_be_placeholder(s), "{s}");
        }
    }

    #[test]
    fn unmasking_a_stream_split_anywhere_equals_unmasking_the_whole() {
        let mut vault = Vault::new();
        vault.placeholder_for("ID", "11010519491231002X".into(), "11010519491231002X");
        vault.placeholder_for("PHONE", "13800138000".into(), "13800138000");
        let text = "客户<ID_1>的手机是<PHONE_1>，<ID_2>未知，a<b and <ID_1>.";
        let whole = vault.unmask(text);
        assert!(whole.contains("11010519491231002X") && whole.contains("<ID_2>"));
        let chars: Vec<char> = text.chars().collect();
        for step in 1..=7 {
            let mut u = Unmasker::new(std::mem::take(&mut vault));
            let mut out = String::new();
            for piece in chars.chunks(step) {
                out.push_str(&u.push(&piece.iter().collect::<String>()));
            }
            out.push_str(&u.finish());
            assert_eq!(out, whole, "pieces of {step} characters");
            vault = u.vault;
        }
    }

    /// A log file whose fsync fails: every append fails.
    struct FailingSync(std::fs::File);

    impl SegmentIo for FailingSync {
        fn write_all(&self, buf: &[u8]) -> std::io::Result<()> {
            SegmentIo::write_all(&self.0, buf)
        }
        fn sync(&self) -> std::io::Result<()> {
            Err(std::io::Error::other("EIO (simulated)"))
        }
    }

    #[test]
    fn no_answer_without_a_durable_record() {
        let dir = temp_dir("fail-closed");
        let model = tiny_model(&dir);
        let wrap: Arc<dyn Fn(std::fs::File) -> Arc<dyn SegmentIo> + Send + Sync> =
            Arc::new(|f| Arc::new(FailingSync(f)) as Arc<dyn SegmentIo>);
        let log = AuditLog::open_with_io(&dir.join("audit.log"), AuditConfig::default(), wrap).unwrap();
        let guard = Arc::new(
            Guard::new(GuardConfig {
                audit: Some(Arc::new(log)),
                ..Default::default()
            })
            .unwrap(),
        );
        let params = GenerateParams {
            max_tokens: 6,
            ..Default::default()
        };
        let mut final_events = 0;
        let result = guarded(&guard, "hello", &params, &RequestInfo::default()).run_streaming(&model, |ev| {
            final_events += usize::from(ev.finish.is_some());
            ControlFlow::Continue(())
        });
        assert!(matches!(result, Err(Error::AuditPoisoned { .. })), "{result:?}");
        assert_eq!(final_events, 0, "the last event was delivered without its record");
    }

    /// A log file whose writes fail with ENOSPC from the `ok_writes`+1-th on, after writing half.
    struct DiskFullAfter {
        file: std::fs::File,
        writes: std::sync::atomic::AtomicUsize,
        ok_writes: usize,
    }

    impl SegmentIo for DiskFullAfter {
        fn write_all(&self, buf: &[u8]) -> std::io::Result<()> {
            if self.writes.fetch_add(1, Ordering::SeqCst) >= self.ok_writes {
                let _ = SegmentIo::write_all(&self.file, &buf[..buf.len() / 2]);
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            SegmentIo::write_all(&self.file, buf)
        }
        fn sync(&self) -> std::io::Result<()> {
            self.file.sync_data()
        }
    }

    fn disk_full_after(path: &std::path::Path, ok_writes: usize) -> AuditLog {
        let wrap: Arc<dyn Fn(std::fs::File) -> Arc<dyn SegmentIo> + Send + Sync> = Arc::new(move |file| {
            Arc::new(DiskFullAfter {
                file,
                writes: Default::default(),
                ok_writes,
            }) as Arc<dyn SegmentIo>
        });
        AuditLog::open_with_io(path, AuditConfig::default(), wrap).unwrap()
    }

    fn audited_guard(log: AuditLog) -> Arc<Guard> {
        Arc::new(
            Guard::new(GuardConfig {
                audit: Some(Arc::new(log)),
                ..Default::default()
            })
            .unwrap(),
        )
    }

    /// A guarded request for `prompt`.
    fn guarded(guard: &Arc<Guard>, prompt: &str, params: &GenerateParams, info: &RequestInfo) -> crate::Request {
        crate::Request::text(prompt)
            .with_params(params.clone())
            .with_guard(Arc::clone(guard))
            .with_info(info.clone())
    }

    /// ENOSPC on the first write: the opened record is not durable, so no token may leave.
    #[test]
    fn a_stream_delivers_no_token_without_a_durable_opened_record() {
        let dir = temp_dir("opened-fails");
        let model = tiny_model(&dir);
        let guard = audited_guard(disk_full_after(&dir.join("audit.log"), 0));
        let params = GenerateParams {
            max_tokens: 6,
            ..Default::default()
        };
        let mut events = 0;
        let result = guarded(&guard, "hello", &params, &RequestInfo::default()).run_streaming(&model, |_| {
            events += 1;
            ControlFlow::Continue(())
        });
        assert!(matches!(result, Err(Error::AuditPoisoned { .. })), "{result:?}");
        assert_eq!(events, 0, "a token left the guard without its opened record");
        assert!(audit::read_records(dir.join("audit.log")).unwrap().is_empty());
    }

    /// ENOSPC on the second write (the closing record): every token seen was preceded by a
    /// durable opened record, the last piece is withheld, and the stream ends with a typed error.
    #[test]
    fn a_stream_whose_closing_record_fails_ends_with_an_error() {
        let dir = temp_dir("closing-fails");
        let model = tiny_model(&dir);
        let path = dir.join("audit.log");
        let guard = audited_guard(disk_full_after(&path, 1));
        let params = GenerateParams {
            max_tokens: 6,
            ..Default::default()
        };
        let request = RequestInfo {
            request_id: "r-stream".into(),
            ..Default::default()
        };
        let (mut events, mut finals) = (0, 0);
        let result = guarded(&guard, "hello", &params, &request).run_streaming(&model, |ev| {
            if events == 0 {
                let stored = audit::read_records(&path).unwrap();
                assert_eq!(
                    stored.len(),
                    1,
                    "the opened record is in the log before the first token"
                );
                assert_eq!(stored[0].record.phase, RecordPhase::Opened);
                assert_eq!(stored[0].record.request_id, "r-stream");
                assert!(stored[0].record.output.is_empty() && !stored[0].record.model_sha256.is_empty());
            }
            events += 1;
            finals += usize::from(ev.finish.is_some());
            ControlFlow::Continue(())
        });
        assert!(matches!(result, Err(Error::AuditPoisoned { .. })), "{result:?}");
        assert!(events > 0, "tokens stream once the opened record is durable");
        assert_eq!(finals, 0, "the last piece was released without its closing record");
        let stored = audit::read_records(&path).unwrap();
        assert_eq!(stored.len(), 1, "only the opened record; the closing one is torn");
    }

    /// The same through a stream read by the caller: the last piece is withheld, and waiting
    /// for the answer afterwards fails too instead of handing it over.
    #[test]
    fn a_stream_whose_closing_record_fails_never_hands_over_its_last_piece() {
        let dir = temp_dir("closing-fails-stream");
        let model = tiny_model(&dir);
        let guard = audited_guard(disk_full_after(&dir.join("audit.log"), 1));
        let params = GenerateParams {
            max_tokens: 6,
            ..Default::default()
        };
        let mut stream = guarded(&guard, "hello", &params, &RequestInfo::default())
            .stream(&model)
            .unwrap();
        let events: Vec<_> = stream.by_ref().collect();
        let (last, delivered) = events.split_last().unwrap();
        assert!(matches!(last, Err(Error::AuditPoisoned { .. })), "{last:?}");
        assert!(delivered.iter().all(|e| e.as_ref().is_ok_and(|e| e.finish.is_none())));
        let after = stream.wait();
        assert!(after.is_err(), "the answer came out after its record failed: {after:?}");
    }

    /// A closing record too large for a frame is refused without closing the log: a short closing
    /// record says it failed, and the stream still ends with the error.
    #[test]
    fn a_closing_record_that_cannot_be_framed_is_recorded_as_failed() {
        let dir = temp_dir("closing-too-large");
        let model = tiny_model(&dir);
        let path = dir.join("audit.log");
        let log = Arc::new(AuditLog::open(&path, AuditConfig::default()).unwrap());
        let guard = Arc::new(
            Guard::new(GuardConfig {
                audit: Some(Arc::clone(&log)),
                ..Default::default()
            })
            .unwrap(),
        );
        let mut recorder = Recorder {
            guard: Arc::clone(&guard),
            base: AuditRecord {
                request_id: "big".into(),
                ..Default::default()
            },
            started: Instant::now(),
            opened_seq: None,
        };
        recorder.open().unwrap();
        let huge = "x".repeat(usize::try_from(audit::MAX_RECORD_BYTES).unwrap());
        let err = recorder.close(&huge, "length", None).unwrap_err();
        assert!(matches!(err, Error::Audit { .. }), "{err:?}");
        assert!(!log.is_poisoned());
        let stored = audit::read_records(&path).unwrap();
        assert_eq!(stored.len(), 2);
        let closing = &stored[1].record;
        assert_eq!((closing.phase, closing.opened_seq), (RecordPhase::Closed, Some(1)));
        assert_eq!(closing.finish_reason, "error");
        assert!(closing
            .error
            .as_deref()
            .unwrap()
            .contains("closing record could not be written"));
        let _ = model;
    }

    #[test]
    fn a_stream_is_recorded_as_opened_then_closed() {
        let dir = temp_dir("opened-closed");
        let model = tiny_model(&dir);
        let path = dir.join("audit.log");
        let guard = audited_guard(AuditLog::open(&path, AuditConfig::default()).unwrap());
        let params = GenerateParams {
            max_tokens: 4,
            ..Default::default()
        };
        let request = RequestInfo {
            request_id: "r-7".into(),
            ..Default::default()
        };
        let out = guarded(&guard, "hello", &params, &request)
            .run_streaming(&model, |_| ControlFlow::Continue(()))
            .unwrap();
        let stored = audit::read_records(&path).unwrap();
        assert_eq!(stored.len(), 2);
        let (opened, closed) = (&stored[0].record, &stored[1].record);
        assert_eq!((opened.phase, closed.phase), (RecordPhase::Opened, RecordPhase::Closed));
        assert_eq!((opened.request_id.as_str(), closed.request_id.as_str()), ("r-7", "r-7"));
        assert_eq!(closed.opened_seq, Some(1));
        assert_eq!(closed.output, out.generation.text);
        assert_eq!(out.guard.as_ref().unwrap().receipt.as_ref().unwrap().seq, 2);
        // Non-streamed requests keep one complete record.
        let out = guarded(&guard, "hello", &params, &request).run(&model).unwrap();
        let stored = audit::read_records(&path).unwrap();
        assert_eq!(stored.len(), 3);
        assert_eq!(stored[2].record.phase, RecordPhase::Complete);
        assert_eq!(stored[2].record.opened_seq, None);
        assert_eq!(out.guard.as_ref().unwrap().receipt.as_ref().unwrap().seq, 3);
    }

    /// /dev/full (like any device, FIFO or symlink) is refused when the log is opened, so no guard
    /// can be built on it and no token can be produced without a durable record.
    #[cfg(unix)]
    #[test]
    fn a_device_is_refused_as_audit_log() {
        let err = AuditLog::open("/dev/full", AuditConfig::default()).unwrap_err();
        assert!(
            matches!(&err, Error::AuditNotRegularFile { path, .. } if path == std::path::Path::new("/dev/full")),
            "{err:?}"
        );
    }

    #[test]
    fn records_carry_the_request() {
        let dir = temp_dir("records");
        let model = tiny_model(&dir);
        let path = dir.join("audit.log");
        let guard = Arc::new(
            Guard::new(GuardConfig {
                pii: Some(Arc::new(PiiDetector::new(Default::default()).unwrap())),
                audit: Some(Arc::new(AuditLog::open(&path, AuditConfig::default()).unwrap())),
                ..Default::default()
            })
            .unwrap(),
        );
        let params = GenerateParams {
            max_tokens: 5,
            sampling: crate::SamplingParams {
                temperature: 0.8,
                seed: 77,
                ..Default::default()
            },
            ..Default::default()
        };
        let request = RequestInfo {
            request_id: "r-1".into(),
            caller_id: "desk-9".into(),
            adapter: None,
            source_ids: vec!["doc-3".into()],
        };
        let out = guarded(&guard, "call 13800138000 now", &params, &request)
            .run(&model)
            .unwrap();
        assert_eq!(out.guard.as_ref().unwrap().masked_prompt, "call <PHONE_1> now");
        assert_eq!(out.generation.prompt_ids, model.tokenize("call <PHONE_1> now").unwrap());
        let stored = audit::read_records(&path).unwrap();
        assert_eq!(stored.len(), 1);
        let r = &stored[0].record;
        assert_eq!((r.request_id.as_str(), r.caller_id.as_str()), ("r-1", "desk-9"));
        assert_eq!(r.masked_prompt, "call <PHONE_1> now");
        assert_eq!(r.source_ids, vec!["doc-3".to_string()]);
        assert_eq!((r.sampling.seed, r.sampling.max_tokens), (77, 5));
        assert_eq!(r.finish_reason, out.generation.finish.as_str());
        assert_eq!((r.phase, r.opened_seq), (RecordPhase::Complete, None));
        use sha2::Digest;
        let expected = crate::util::hex(&sha2::Sha256::digest(std::fs::read(dir.join("tiny.gguf")).unwrap()));
        assert_eq!(r.model_sha256, expected);
        assert_eq!(out.guard.as_ref().unwrap().receipt.as_ref().unwrap().seq, 1);
    }

    /// Embeds the rule's examples, then fails: the filter breaks in the middle of a stream.
    struct FailsAfterFirstCall(std::sync::atomic::AtomicUsize);

    impl crate::compliance::Embedder for FailsAfterFirstCall {
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
            if self.0.fetch_add(1, Ordering::SeqCst) > 0 {
                return Err(Error::invalid("embedder", "service unavailable (simulated)"));
            }
            Ok(texts.iter().map(|_| vec![1.0, 0.0]).collect())
        }
    }

    #[test]
    fn a_request_that_fails_mid_stream_is_recorded() {
        let dir = temp_dir("mid-stream");
        let model = tiny_model(&dir);
        let path = dir.join("audit.log");
        let pack = "[[rules]]\nid = 's'\ncategory = 'x'\naction = 'block'\nexamples = ['sell everything']\n";
        let policy = Policy::from_toml_str(pack)
            .unwrap()
            .with_embedder(Arc::new(FailsAfterFirstCall(Default::default())))
            .unwrap();
        let guard = Arc::new(
            Guard::new(GuardConfig {
                policy: Some(policy),
                audit: Some(Arc::new(AuditLog::open(&path, AuditConfig::default()).unwrap())),
                ..Default::default()
            })
            .unwrap(),
        );
        let params = GenerateParams {
            max_tokens: 8,
            ..Default::default()
        };
        let err = guarded(&guard, "hello", &params, &RequestInfo::default())
            .run(&model)
            .unwrap_err();
        assert!(err.to_string().contains("service unavailable"), "{err}");
        let stored = audit::read_records(&path).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].record.finish_reason, "error");
        assert!(stored[0]
            .record
            .error
            .as_deref()
            .unwrap()
            .contains("service unavailable"));
    }
}
