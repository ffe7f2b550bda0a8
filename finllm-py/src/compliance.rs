//! Bindings of `finllm_core::compliance`: PII detection and masking, the output policy, the
//! audit log, and the `Guard` that wraps them around generation. Thin like the rest: types and
//! errors are converted here, every decision is the core's.

use std::path::PathBuf;
use std::sync::Arc;

use finllm_core as core;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};

use core::compliance::audit::{self, AuditDecision, AuditSampling, StoredRecord, VerifyOptions};
use core::compliance::pii::{EntityKind, Redaction};
use core::compliance::{AuditConfig, FsyncPolicy, GuardConfig, Verdict};

use crate::{audit_to_py, html_escape, policy_to_py, to_py, Generation, InvalidArgument};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Entity>()?;
    m.add_class::<Vault>()?;
    m.add_class::<PiiDetector>()?;
    m.add_class::<RuleMatch>()?;
    m.add_class::<Decision>()?;
    m.add_class::<Policy>()?;
    m.add_class::<AuditLog>()?;
    m.add_class::<VerifyReport>()?;
    m.add_class::<Guard>()?;
    m.add_class::<GuardedGeneration>()?;
    m.add_function(wrap_pyfunction!(audit_verify, m)?)?;
    m.add_function(wrap_pyfunction!(audit_records, m)?)?;
    Ok(())
}

/// Character offset of byte offset `byte` in `text`, for Python's str indexing (None if `byte`
/// is not a character boundary of `text`).
fn char_offset(text: &str, byte: usize) -> Option<usize> {
    text.get(..byte).map(|s| s.chars().count())
}

// ---- PII ---------------------------------------------------------------------------------------

/// One personal identifier found in a text.
#[pyclass(frozen, module = "finllm._finllm")]
#[derive(Clone)]
struct Entity {
    /// "cn_resident_id", "cn_mobile", "cn_landline", "bank_card", "credit_card", "uscc", "email",
    /// "iban", "us_ssn", "ipv4" or "ipv6".
    #[pyo3(get)]
    kind: &'static str,
    /// Character offset in the text (text[start:end] is the identifier).
    #[pyo3(get)]
    start: usize,
    #[pyo3(get)]
    end: usize,
    /// In [0, 1]; at least the detector's threshold.
    #[pyo3(get)]
    confidence: f32,
    /// The identifier as written (with its separators).
    #[pyo3(get)]
    text: String,
    /// Extra facts, e.g. the card network ("Visa").
    #[pyo3(get)]
    detail: Option<&'static str>,
}

impl From<core::compliance::Entity> for Entity {
    fn from(e: core::compliance::Entity) -> Self {
        Self {
            kind: e.kind.name(),
            start: e.char_span.start,
            end: e.char_span.end,
            confidence: e.confidence,
            text: e.text,
            detail: e.detail,
        }
    }
}

#[pymethods]
impl Entity {
    /// Without the matched text: a repr ends up in logs, and the text is the personal data.
    fn __repr__(&self) -> String {
        format!(
            "Entity(kind={:?}, start={}, end={}, confidence={:.2})",
            self.kind, self.start, self.end, self.confidence
        )
    }
}

/// Placeholders handed to the model (`<ID_1>`) and the values they stand for, for one text.
#[pyclass(frozen, module = "finllm._finllm")]
struct Vault {
    inner: core::compliance::Vault,
}

#[pymethods]
impl Vault {
    /// Put the original values back for every placeholder this vault issued; unknown ones stay.
    fn unmask(&self, py: Python<'_>, text: String) -> String {
        py.detach(|| self.inner.unmask(&text))
    }

    /// The original value behind one placeholder, e.g. vault.get("<CARD_1>").
    fn get(&self, placeholder: &str) -> Option<String> {
        self.inner.get(placeholder).map(str::to_string)
    }

    /// The placeholders issued, sorted.
    fn placeholders(&self) -> Vec<String> {
        self.inner.placeholders().into_iter().map(str::to_string).collect()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Placeholders only: the values are personal data.
    fn __repr__(&self) -> String {
        format!("Vault(placeholders={:?})", self.inner.placeholders())
    }
}

/// Finds personal identifiers (Chinese resident IDs, phones, bank and credit cards, USCC,
/// e-mail, IBAN, US SSN, IP addresses) with check-digit validation and context scoring.
/// Thread-safe.
#[pyclass(frozen, module = "finllm._finllm")]
struct PiiDetector {
    inner: Arc<core::compliance::PiiDetector>,
}

#[pymethods]
impl PiiDetector {
    #[new]
    #[pyo3(signature = (*, threshold=0.5, kinds=None, redaction_key=None, context_window=24))]
    fn new(
        py: Python<'_>,
        threshold: f32,
        kinds: Option<Vec<String>>,
        redaction_key: Option<Vec<u8>>,
        context_window: usize,
    ) -> PyResult<Self> {
        let kinds = match kinds {
            Some(names) => names
                .iter()
                .map(|n| n.parse::<EntityKind>())
                .collect::<core::Result<Vec<_>>>()
                .map_err(to_py)?,
            None => EntityKind::ALL.to_vec(),
        };
        let config = core::compliance::PiiConfig {
            kinds,
            threshold,
            context_window,
            redaction: redaction_key.map_or(Redaction::Label, |key| Redaction::KeyedHash { key }),
        };
        let detector = py
            .detach(|| core::compliance::PiiDetector::new(config))
            .map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(detector),
        })
    }

    /// The identifiers in `text`, in text order, without overlaps.
    fn detect(&self, py: Python<'_>, text: String) -> Vec<Entity> {
        py.detach(|| self.inner.detect(&text))
            .into_iter()
            .map(Entity::from)
            .collect()
    }

    /// Replace identifiers by numbered placeholders; the vault maps them back.
    fn mask(&self, py: Python<'_>, text: String) -> (String, Vault) {
        let (masked, vault) = py.detach(|| self.inner.pseudonymise(&text));
        (masked, Vault { inner: vault })
    }

    /// Irreversibly remove identifiers, for logs: "[ID]", or "[ID:hash]" with a redaction key.
    fn redact(&self, py: Python<'_>, text: String) -> String {
        py.detach(|| self.inner.redact(&text))
    }

    #[getter]
    fn threshold(&self) -> f32 {
        self.inner.config().threshold
    }

    #[getter]
    fn kinds(&self) -> Vec<&'static str> {
        self.inner.config().kinds.iter().map(|k| k.name()).collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "PiiDetector(threshold={}, kinds={:?})",
            self.inner.config().threshold,
            self.kinds()
        )
    }
}

// ---- output policy -----------------------------------------------------------------------------

/// One rule that fired.
#[pyclass(frozen, module = "finllm._finllm")]
#[derive(Clone)]
struct RuleMatch {
    #[pyo3(get)]
    rule_id: String,
    #[pyo3(get)]
    category: String,
    /// "flag", "append_disclaimer", "redact" or "block".
    #[pyo3(get)]
    action: &'static str,
    /// Character offset in the checked text; None for a guarded generation, whose checked text
    /// (the model's raw output) is not returned.
    #[pyo3(get)]
    start: Option<usize>,
    #[pyo3(get)]
    end: Option<usize>,
    /// UTF-8 byte offset in the checked text, as the audit log records it.
    #[pyo3(get)]
    byte_start: usize,
    #[pyo3(get)]
    byte_end: usize,
    #[pyo3(get)]
    matched: String,
    /// Cosine similarity, for semantic rules.
    #[pyo3(get)]
    score: Option<f32>,
}

impl RuleMatch {
    /// `checked` is the text the policy saw, when the caller has it, for character offsets.
    fn new(m: core::compliance::RuleMatch, checked: Option<&str>) -> Self {
        let chars = |byte| checked.and_then(|t| char_offset(t, byte));
        Self {
            rule_id: m.rule_id,
            category: m.category.name().to_string(),
            action: m.action.name(),
            start: chars(m.span.start),
            end: chars(m.span.end),
            byte_start: m.span.start,
            byte_end: m.span.end,
            matched: m.matched,
            score: m.score,
        }
    }
}

#[pymethods]
impl RuleMatch {
    fn __repr__(&self) -> String {
        format!(
            "RuleMatch(rule_id={:?}, action={:?}, matched={:?})",
            self.rule_id, self.action, self.matched
        )
    }
}

/// The outcome of checking a text (or a generated answer) against a policy.
#[pyclass(frozen, module = "finllm._finllm")]
#[derive(Clone)]
struct Decision {
    /// The strongest action that fired: "allow", "flag", "append_disclaimer", "redact" or "block".
    #[pyo3(get)]
    verdict: &'static str,
    #[pyo3(get)]
    matches: Vec<RuleMatch>,
    #[pyo3(get)]
    disclaimers: Vec<String>,
    #[pyo3(get)]
    notes: Vec<String>,
    /// The text the caller may show: redactions applied, disclaimers appended; on a block, only
    /// the text before the blocked phrase.
    #[pyo3(get)]
    text: String,
}

impl Decision {
    fn new(d: core::compliance::Decision, checked: Option<&str>) -> Self {
        Self {
            verdict: match d.verdict {
                Verdict::Allow => "allow",
                Verdict::Flag => "flag",
                Verdict::AppendDisclaimer => "append_disclaimer",
                Verdict::Redact => "redact",
                Verdict::Block => "block",
            },
            matches: d.matches.into_iter().map(|m| RuleMatch::new(m, checked)).collect(),
            disclaimers: d.disclaimers,
            notes: d.notes,
            text: d.text,
        }
    }
}

#[pymethods]
impl Decision {
    /// Whether a rule blocked the text.
    #[getter]
    fn blocked(&self) -> bool {
        self.verdict == "block"
    }

    fn __repr__(&self) -> String {
        let rules: Vec<&str> = self.matches.iter().map(|m| m.rule_id.as_str()).collect();
        format!("Decision(verdict={:?}, rules={rules:?})", self.verdict)
    }
}

/// A compiled set of output rules from TOML rule packs. Thread-safe.
#[pyclass(frozen, module = "finllm._finllm")]
struct Policy {
    inner: core::compliance::Policy,
}

#[pymethods]
impl Policy {
    /// The English and Chinese rule packs shipped with finllm.
    #[staticmethod]
    fn default(py: Python<'_>) -> PyResult<Self> {
        let inner = py
            .detach(core::compliance::Policy::default_packs)
            .map_err(policy_to_py)?;
        Ok(Self { inner })
    }

    /// Read a TOML rule pack file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| core::compliance::Policy::from_file(&path))
            .map_err(policy_to_py)?;
        Ok(Self { inner })
    }

    /// Parse a TOML rule pack.
    #[staticmethod]
    fn from_toml(py: Python<'_>, text: String) -> PyResult<Self> {
        let inner = py
            .detach(|| core::compliance::Policy::from_toml_str(&text))
            .map_err(policy_to_py)?;
        Ok(Self { inner })
    }

    /// This policy's rules followed by `other`'s (rule ids must stay unique).
    fn merge(&self, py: Python<'_>, other: PyRef<'_, Policy>) -> PyResult<Self> {
        let other = other.inner.clone();
        let inner = py.detach(|| self.inner.merge(&other)).map_err(policy_to_py)?;
        Ok(Self { inner })
    }

    /// Check a whole text.
    fn check(&self, py: Python<'_>, text: String) -> PyResult<Decision> {
        let decision = py.detach(|| self.inner.check(&text)).map_err(policy_to_py)?;
        Ok(Decision::new(decision, Some(&text)))
    }

    /// Rule ids in order.
    fn rule_ids(&self) -> Vec<String> {
        self.inner.rule_ids().into_iter().map(str::to_string).collect()
    }

    fn __repr__(&self) -> String {
        format!("Policy(rules={})", self.inner.rule_ids().len())
    }
}

// ---- audit log ---------------------------------------------------------------------------------

/// An append-only, hash-chained audit log. Thread-safe: share one among threads and guards.
#[pyclass(frozen, module = "finllm._finllm")]
struct AuditLog {
    inner: Arc<core::compliance::AuditLog>,
}

#[pymethods]
impl AuditLog {
    #[new]
    // 64 MiB, written out so that Python's signature shows the value.
    #[pyo3(signature = (path, *, fsync="group", hmac_key=None, max_file_bytes=67108864, checkpoint_every=64))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        fsync: &str,
        hmac_key: Option<Vec<u8>>,
        max_file_bytes: u64,
        checkpoint_every: u64,
    ) -> PyResult<Self> {
        let fsync = match fsync {
            "group" => FsyncPolicy::GroupCommit,
            "every_record" => FsyncPolicy::EveryRecord,
            other => {
                return Err(InvalidArgument::new_err(format!(
                    "invalid argument 'fsync': {other:?} is neither \"group\" nor \"every_record\""
                )))
            }
        };
        let config = AuditConfig {
            fsync,
            max_file_bytes,
            hmac_key,
            checkpoint_every,
        };
        let log = py
            .detach(|| core::compliance::AuditLog::open(&path, config))
            .map_err(audit_to_py)?;
        let report = log.open_report();
        if report.truncated_bytes > 0 {
            let message = format!(
                "audit log {}: a torn last record ({} bytes at offset {}) from an interrupted write was cut off",
                path.display(),
                report.truncated_bytes,
                report.truncated_at.unwrap_or(0)
            );
            let message = std::ffi::CString::new(message).unwrap_or_default();
            let category = py.get_type::<pyo3::exceptions::PyUserWarning>();
            PyErr::warn(py, category.as_any(), &message, 1)?;
        }
        Ok(Self { inner: Arc::new(log) })
    }

    /// The log's first file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.path().to_path_buf()
    }

    /// Sequence number and chain hash (hex) of the last record: keep it outside the log to
    /// detect a cut-off end with audit_verify(expected_head=...).
    fn head(&self) -> (u64, String) {
        self.inner.head()
    }

    /// Whether an earlier failed write closed the log.
    #[getter]
    fn poisoned(&self) -> bool {
        self.inner.is_poisoned()
    }

    /// Bytes of a torn last record (from a crash) cut off when the log was opened.
    #[getter]
    fn truncated_bytes(&self) -> u64 {
        self.inner.open_report().truncated_bytes
    }

    fn __repr__(&self) -> String {
        format!(
            "AuditLog(path={:?}, head_seq={})",
            self.inner.path(),
            self.inner.head().0
        )
    }
}

/// The result of audit_verify.
#[pyclass(frozen, module = "finllm._finllm")]
struct VerifyReport {
    #[pyo3(get)]
    ok: bool,
    #[pyo3(get)]
    records: u64,
    #[pyo3(get)]
    first_seq: Option<u64>,
    #[pyo3(get)]
    last_seq: Option<u64>,
    #[pyo3(get)]
    last_hash: Option<String>,
    #[pyo3(get)]
    files: Vec<PathBuf>,
    /// (kind, record, file, offset, detail), e.g. ("chain_broken", 7, Path("audit.log"), 4096, "...").
    #[pyo3(get)]
    issues: Vec<(String, u64, PathBuf, u64, String)>,
}

impl From<audit::VerifyReport> for VerifyReport {
    fn from(r: audit::VerifyReport) -> Self {
        Self {
            ok: r.is_ok(),
            records: r.records,
            first_seq: r.first_seq,
            last_seq: r.last_seq,
            last_hash: r.last_hash,
            files: r.files,
            issues: r
                .issues
                .into_iter()
                // The kind's serde name is its stable snake_case name ("chain_broken").
                .map(|i| (issue_kind(i.kind), i.record, i.file, i.offset, i.detail))
                .collect(),
        }
    }
}

fn issue_kind(kind: audit::IssueKind) -> String {
    use audit::IssueKind as K;
    match kind {
        K::Corrupt => "corrupt",
        K::HeaderCorrupt => "header_corrupt",
        K::BadPayload => "bad_payload",
        K::Missing => "missing",
        K::OutOfOrder => "out_of_order",
        K::ChainBroken => "chain_broken",
        K::HashMismatch => "hash_mismatch",
        K::TornTail => "torn_tail",
        K::Truncated => "truncated",
        K::MissingFile => "missing_file",
        K::KeyRequired => "key_required",
        K::Unkeyed => "unkeyed",
        K::HeadMismatch => "head_mismatch",
        K::TruncatedBelowCheckpoint => "truncated_below_checkpoint",
        K::CheckpointMismatch => "checkpoint_mismatch",
        K::CheckpointCorrupt => "checkpoint_corrupt",
    }
    .to_string()
}

#[pymethods]
impl VerifyReport {
    fn __repr__(&self) -> String {
        format!(
            "VerifyReport(ok={}, records={}, last_seq={:?}, issues={})",
            if self.ok { "True" } else { "False" },
            self.records,
            self.last_seq,
            self.issues.len()
        )
    }
}

/// Verify the audit log whose first file is `path` (and its rotated files).
#[pyfunction]
#[pyo3(signature = (path, *, hmac_key=None, expected_head=None))]
fn audit_verify(
    py: Python<'_>,
    path: PathBuf,
    hmac_key: Option<Vec<u8>>,
    expected_head: Option<(u64, String)>,
) -> PyResult<VerifyReport> {
    let options = VerifyOptions {
        hmac_key,
        expected_head,
    };
    let report = py.detach(|| audit::verify_with(&path, &options)).map_err(audit_to_py)?;
    Ok(report.into())
}

/// Every record of the audit log at `path` that passes its checksum, as dicts, in order. For
/// investigations; use audit_verify to judge integrity.
#[pyfunction]
fn audit_records<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Vec<Bound<'py, PyDict>>> {
    let records = py.detach(|| audit::read_records(&path)).map_err(audit_to_py)?;
    records.into_iter().map(|r| record_dict(py, r)).collect()
}

fn record_dict(py: Python<'_>, stored: StoredRecord) -> PyResult<Bound<'_, PyDict>> {
    let r = stored.record;
    let d = PyDict::new(py);
    d.set_item("seq", stored.seq)?;
    d.set_item("appended_at_ms", stored.appended_at_ms)?;
    d.set_item("hash", stored.hash)?;
    d.set_item("request_id", r.request_id)?;
    d.set_item("caller_id", r.caller_id)?;
    d.set_item("started_at_ms", r.started_at_ms)?;
    d.set_item("finished_at_ms", r.finished_at_ms)?;
    d.set_item("model_sha256", r.model_sha256)?;
    d.set_item("adapter", r.adapter)?;
    d.set_item("sampling", sampling_dict(py, &r.sampling)?)?;
    d.set_item("masked_prompt", r.masked_prompt)?;
    d.set_item("output", r.output)?;
    d.set_item("source_ids", r.source_ids)?;
    let decisions = r
        .decisions
        .iter()
        .map(|x| decision_dict(py, x))
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("decisions", decisions)?;
    d.set_item("latency_ms", r.latency_ms)?;
    d.set_item("finish_reason", r.finish_reason)?;
    d.set_item("error", r.error)?;
    d.set_item("phase", r.phase.as_str())?;
    d.set_item("opened_seq", r.opened_seq)?;
    // An explanation record: the record it explains (of_seq, of_hash), method, ranked units and
    // the SHA-256 of the explanation's JSON.
    d.set_item("explanation", crate::explain::json_to_py(py, &r.explanation)?)?;
    Ok(d)
}

fn sampling_dict<'py>(py: Python<'py>, s: &AuditSampling) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("temperature", s.temperature)?;
    d.set_item("top_k", s.top_k)?;
    d.set_item("top_p", s.top_p)?;
    d.set_item("min_p", s.min_p)?;
    d.set_item("repetition_penalty", s.repetition_penalty)?;
    d.set_item("repeat_last_n", s.repeat_last_n)?;
    d.set_item("seed", s.seed)?;
    d.set_item("max_tokens", s.max_tokens)?;
    Ok(d)
}

fn decision_dict<'py>(py: Python<'py>, x: &AuditDecision) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("rule_id", &x.rule_id)?;
    d.set_item("category", &x.category)?;
    d.set_item("action", &x.action)?;
    // Byte offsets in the model's output, as the log stores them.
    d.set_item("start", x.start)?;
    d.set_item("end", x.end)?;
    Ok(d)
}

// ---- guard -------------------------------------------------------------------------------------

/// The answer to a guarded request, with what the guard did.
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct GuardedGeneration {
    #[pyo3(get)]
    generation: Generation,
    #[pyo3(get)]
    request_id: String,
    /// The prompt as the model saw it (personal data replaced by placeholders).
    #[pyo3(get)]
    masked_prompt: String,
    /// Personal data found in the prompt (offsets refer to the original prompt, or to each
    /// message's content for chat).
    #[pyo3(get)]
    entities: Vec<Entity>,
    /// The output policy's decision, when the guard has a policy.
    #[pyo3(get)]
    decision: Option<Decision>,
    /// Sequence number of the audit record, when the guard has an audit log.
    #[pyo3(get)]
    audit_seq: Option<u64>,
    #[pyo3(get)]
    audit_hash: Option<String>,
    /// KL divergence (nats) of recent prompts from the reference window, when the guard monitors
    /// drift and both windows hold tokens.
    #[pyo3(get)]
    drift_kl: Option<f64>,
    /// Whether drift_kl reached the guard's threshold.
    #[pyo3(get)]
    drifting: Option<bool>,
}

impl GuardedGeneration {
    pub(crate) fn new(generation: core::Generation, g: core::compliance::GuardReport) -> Self {
        let (audit_seq, audit_hash) = g.receipt.map(|r| (r.seq, r.hash)).unzip();
        Self {
            generation: generation.into(),
            request_id: g.request_id,
            masked_prompt: g.masked_prompt,
            entities: g.prompt_entities.into_iter().map(Entity::from).collect(),
            // The policy saw the model's raw output, which is not returned: no character offsets.
            decision: g.decision.map(|d| Decision::new(d, None)),
            audit_seq,
            audit_hash,
            drift_kl: g.drift.as_ref().and_then(|d| d.kl_divergence),
            drifting: g.drift.as_ref().map(|d| d.drifting),
        }
    }
}

#[pymethods]
impl GuardedGeneration {
    /// What the caller may see: filtered by the policy (and unmasked if configured).
    #[getter]
    fn text(&self) -> &str {
        &self.generation.text
    }

    #[getter]
    fn ids(&self) -> Vec<u32> {
        self.generation.ids.clone()
    }

    #[getter]
    fn prompt_ids(&self) -> Vec<u32> {
        self.generation.prompt_ids.clone()
    }

    /// As Generation.finish_reason; "blocked" when the policy stopped the answer.
    #[getter]
    fn finish_reason(&self) -> &'static str {
        self.generation.finish_reason
    }

    fn __repr__(&self) -> String {
        format!(
            "GuardedGeneration(text={:?}, finish_reason={:?}, request_id={:?}, audit_seq={})",
            self.generation.text,
            self.generation.finish_reason,
            self.request_id,
            self.audit_seq.map_or("None".to_string(), |s| s.to_string())
        )
    }

    fn _repr_html_(&self) -> String {
        let verdict = self.decision.as_ref().map_or("no policy", |d| d.verdict);
        let audit = self
            .audit_seq
            .map_or("not audited".to_string(), |s| format!("audit record {s}"));
        format!(
            "<div><pre style=\"white-space:pre-wrap\">{}</pre><small>request {}, finish: {}, {} personal \
             identifiers masked, policy: {verdict}, {audit}</small></div>",
            html_escape(&self.generation.text),
            html_escape(&self.request_id),
            self.generation.finish_reason,
            self.entities.len(),
        )
    }
}

/// The `mask_pii` argument: True (a default detector), False, or a PiiDetector.
enum MaskPii {
    Flag(bool),
    Detector(Arc<core::compliance::PiiDetector>),
}

impl<'a, 'py> FromPyObject<'a, 'py> for MaskPii {
    type Error = PyErr;

    fn extract(ob: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(detector) = ob.cast::<PiiDetector>() {
            return Ok(MaskPii::Detector(detector.get().inner.clone()));
        }
        if let Ok(flag) = ob.cast::<PyBool>() {
            return Ok(MaskPii::Flag(flag.is_true()));
        }
        Err(PyTypeError::new_err(format!(
            "mask_pii must be a bool or a PiiDetector, not {}",
            ob.get_type().name()?
        )))
    }
}

impl MaskPii {
    fn detector(self, py: Python<'_>) -> PyResult<Option<Arc<core::compliance::PiiDetector>>> {
        match self {
            MaskPii::Flag(false) => Ok(None),
            MaskPii::Flag(true) => {
                let detector = py
                    .detach(|| core::compliance::PiiDetector::new(Default::default()))
                    .map_err(to_py)?;
                Ok(Some(Arc::new(detector)))
            }
            MaskPii::Detector(d) => Ok(Some(d)),
        }
    }
}

/// Compliance controls around generation: mask personal data before the model sees it, filter
/// the answer through a policy, and record every request in an audit log before answering.
/// Give it to a request: `model.generate(prompt, guard=guard)` (or Engine's, or stream()).
/// Thread-safe: share one guard among threads, models and engines.
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct Guard {
    pub(crate) inner: Arc<core::compliance::Guard>,
}

#[pymethods]
impl Guard {
    #[new]
    #[pyo3(signature = (*, mask_pii=MaskPii::Flag(false), unmask_output=false, policy=None, audit=None,
                        drift_vocab_size=None, drift_window=4096, drift_threshold=0.5),
           text_signature = "(*, mask_pii=False, unmask_output=False, policy=None, audit=None, \
                             drift_vocab_size=None, drift_window=4096, drift_threshold=0.5)")]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        mask_pii: MaskPii,
        unmask_output: bool,
        policy: Option<PyRef<'_, Policy>>,
        audit: Option<PyRef<'_, AuditLog>>,
        drift_vocab_size: Option<usize>,
        drift_window: usize,
        drift_threshold: f64,
    ) -> PyResult<Self> {
        let drift = drift_vocab_size.map(|vocab_size| core::compliance::DriftConfig {
            vocab_size,
            window_tokens: drift_window,
            threshold: drift_threshold,
            ..Default::default()
        });
        let config = GuardConfig {
            pii: mask_pii.detector(py)?,
            unmask_output,
            policy: policy.map(|p| p.inner.clone()),
            audit: audit.map(|a| a.inner.clone()),
            drift,
        };
        let guard = core::compliance::Guard::new(config).map_err(to_py)?;
        Ok(Self { inner: Arc::new(guard) })
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        format!(
            "Guard(mask_pii={}, unmask_output={}, policy={}, audit={})",
            py_bool(c.pii.is_some()),
            py_bool(c.unmask_output),
            c.policy
                .as_ref()
                .map_or("None".to_string(), |p| format!("Policy(rules={})", p.rule_ids().len())),
            c.audit
                .as_ref()
                .map_or("None".to_string(), |a| format!("AuditLog(path={:?})", a.path())),
        )
    }
}

fn py_bool(b: bool) -> &'static str {
    if b {
        "True"
    } else {
        "False"
    }
}
