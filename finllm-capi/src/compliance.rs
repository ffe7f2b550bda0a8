//! Compliance: guards (given to a request in finllm_request_params), PII masking, output
//! policies and audit log verification.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use finllm_core::compliance::audit::{self, AuditConfig, AuditLog, FsyncPolicy, VerifyOptions};
use finllm_core::compliance::{Decision, DriftConfig, Guard, GuardConfig, PiiConfig, PiiDetector, Policy, Verdict};

use crate::boundary::{c_str, check_size, copy_out, fail, guard, key_bytes, opt_c_str, put, require, Failure};
use crate::status::finllm_status::{self, *};

/// What the output policy decided about a text, from mildest to strongest.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum finllm_verdict {
    /// No rule fired (also: no policy configured).
    FINLLM_VERDICT_ALLOW = 0,
    /// A rule recorded a match; the text passed unchanged.
    FINLLM_VERDICT_FLAG = 1,
    /// The text passed with a disclaimer appended.
    FINLLM_VERDICT_APPEND_DISCLAIMER = 2,
    /// Matched text was replaced by the rule's replacement.
    FINLLM_VERDICT_REDACT = 3,
    /// Nothing from the blocked phrase on was released.
    FINLLM_VERDICT_BLOCK = 4,
}

/// When the audit log syncs to stable storage: one of the FINLLM_FSYNC_* values. An integer
/// rather than a C enum so that an out-of-range value is reported as
/// FINLLM_ERROR_INVALID_ARGUMENT instead of being undefined behaviour.
pub type finllm_fsync_policy = u32;
/// Concurrent requests share one fsync (same guarantee as every-record, more throughput).
pub const FINLLM_FSYNC_GROUP_COMMIT: finllm_fsync_policy = 0;
/// fsync after every record.
pub const FINLLM_FSYNC_EVERY_RECORD: finllm_fsync_policy = 1;

/// Compliance controls (PII masking, output policy, audit log, drift monitor) wrapped around
/// requests (finllm_request_params.guard). Thread safety: one guard may
/// be used by any number of threads at once, with any models (audit records are appended in
/// order, one chain per log); it must not be freed while a call is using it.
pub struct finllm_guard {
    pub(crate) inner: Arc<Guard>,
}

/// A compiled output policy (TOML rule packs). Thread safety: read-only, shareable by any
/// number of threads; must not be freed while a call is using it.
pub struct finllm_policy {
    inner: Policy,
}

/// Options for finllm_guard_new. Get defaults from finllm_guard_default_params(): nothing is
/// enabled, so the guard passes requests through (and still reports a request id).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_guard_params {
    /// sizeof(finllm_guard_params) as the caller compiled it.
    pub struct_size: u32,
    /// Replace personal data in prompts by placeholders (<ID_1>) before the model sees them.
    pub mask_pii: bool,
    /// Put the original values back where the answer repeats a placeholder. Only for callers
    /// authorised to see the data; the audit record never gets them.
    pub unmask_output: bool,
    /// Output policy, or NULL for none. The guard keeps its own reference: the handle may be
    /// freed once finllm_guard_new returns.
    pub policy: *const finllm_policy,
    /// Path of the audit log (created if absent; rotated files are PATH.000001, ...), or NULL
    /// for none. Every guarded answer is returned only once its record is durable. Open each log
    /// in one guard only: share the guard between threads instead.
    pub audit_log_path: *const c_char,
    /// Key of an HMAC-SHA256 chain (recommended: at least 32 random bytes kept off the log
    /// host), copied; NULL or length 0 for a plain SHA-256 chain.
    pub audit_hmac_key: *const u8,
    pub audit_hmac_key_len: usize,
    /// A FINLLM_FSYNC_* value.
    pub audit_fsync: finllm_fsync_policy,
    /// Start a new log file when the current one would grow past this many bytes (at least 4096).
    pub audit_max_file_bytes: u64,
    /// Vocabulary size for the input drift monitor (use finllm_model_vocab_size), or 0 for no
    /// drift monitoring.
    pub drift_vocab_size: u32,
    /// Number of most recent prompt tokens compared with the reference window.
    pub drift_window_tokens: u32,
    /// Pseudo-count added to every token id of both distributions (> 0).
    pub drift_smoothing: f64,
    /// KL divergence (nats) at or above which the prompts count as drifted.
    pub drift_threshold: f64,
    /// Write a checkpoint of the log's head to PATH.checkpoints every this many records (HMAC'd
    /// with audit_hmac_key when there is one), so that cutting records off the end is detected
    /// by verify; 0 for no checkpoints.
    pub audit_checkpoint_every: u64,
}

/// Options for finllm_audit_verify. Get defaults from finllm_audit_verify_default_params().
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_audit_verify_params {
    /// sizeof(finllm_audit_verify_params) as the caller compiled it.
    pub struct_size: u32,
    /// The HMAC key the log was written with, or NULL (length 0) for a plain SHA-256 chain.
    pub hmac_key: *const u8,
    pub hmac_key_len: usize,
    /// The last receipt known from outside the log (finllm_generation_audit_seq and _audit_hash
    /// of the latest answer), to detect a cut-off end; expected_head_hash NULL for none.
    pub expected_head_seq: u64,
    pub expected_head_hash: *const c_char,
}

pub(crate) fn verdict(v: Verdict) -> finllm_verdict {
    match v {
        Verdict::Allow => finllm_verdict::FINLLM_VERDICT_ALLOW,
        Verdict::Flag => finllm_verdict::FINLLM_VERDICT_FLAG,
        Verdict::AppendDisclaimer => finllm_verdict::FINLLM_VERDICT_APPEND_DISCLAIMER,
        Verdict::Redact => finllm_verdict::FINLLM_VERDICT_REDACT,
        Verdict::Block => finllm_verdict::FINLLM_VERDICT_BLOCK,
    }
}

/// The id of the first rule whose action gave the verdict (the blocking rule on a block).
pub(crate) fn deciding_rule(d: &Decision) -> &str {
    d.matches
        .iter()
        .find(|m| Verdict::from(m.action) == d.verdict)
        .map_or("", |m| m.rule_id.as_str())
}

// ------------------------------------------------------------------------------------------
// Compliance: guards, guarded generation, PII masking, policies, audit verification
// ------------------------------------------------------------------------------------------

/// The detector with the default configuration, shared by every guard and finllm_pii_mask:
/// compiling its patterns costs far more than a scan, so it is built once per process.
fn default_pii() -> Result<Arc<PiiDetector>, Failure> {
    static DETECTOR: OnceLock<Arc<PiiDetector>> = OnceLock::new();
    if let Some(d) = DETECTOR.get() {
        return Ok(d.clone());
    }
    let detector = Arc::new(PiiDetector::new(PiiConfig::default())?);
    Ok(DETECTOR.get_or_init(|| detector).clone())
}

/// Default guard options: nothing enabled (a pass-through guard); audit and drift settings as
/// the core's defaults (group commit, 64 MiB files, a 4096-token window, threshold 0.5 nats).
#[no_mangle]
pub extern "C" fn finllm_guard_default_params() -> finllm_guard_params {
    let audit = AuditConfig::default();
    let drift = DriftConfig::default();
    finllm_guard_params {
        struct_size: std::mem::size_of::<finllm_guard_params>() as u32,
        mask_pii: false,
        unmask_output: false,
        policy: std::ptr::null(),
        audit_log_path: std::ptr::null(),
        audit_hmac_key: std::ptr::null(),
        audit_hmac_key_len: 0,
        audit_fsync: match audit.fsync {
            FsyncPolicy::GroupCommit => FINLLM_FSYNC_GROUP_COMMIT,
            FsyncPolicy::EveryRecord => FINLLM_FSYNC_EVERY_RECORD,
        },
        audit_max_file_bytes: audit.max_file_bytes,
        drift_vocab_size: 0,
        drift_window_tokens: u32::try_from(drift.window_tokens).unwrap_or(u32::MAX),
        drift_smoothing: drift.smoothing,
        drift_threshold: drift.threshold,
        audit_checkpoint_every: audit.checkpoint_every,
    }
}

/// Make a guard: PII masking (default detector), output policy, audit log (opened now: a torn
/// tail from a crash is truncated, anything else that does not verify is an error) and drift
/// monitor, each as `params` enables it. `params` may be NULL for a pass-through guard. On
/// success `*out` receives a handle to free with finllm_guard_free; the guard keeps the audit
/// log open until then.
///
/// # Safety
/// `params` NULL or valid, with its pointers NULL or valid as documented on its fields; `out`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_guard_new(
    params: *const finllm_guard_params,
    out: *mut *mut finllm_guard,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let p = match unsafe { params.as_ref() } {
            Some(p) => {
                check_size(
                    p.struct_size,
                    std::mem::size_of::<finllm_guard_params>(),
                    "finllm_guard_params",
                )?;
                *p
            }
            None => finllm_guard_default_params(),
        };
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let fsync = match p.audit_fsync {
            FINLLM_FSYNC_GROUP_COMMIT => FsyncPolicy::GroupCommit,
            FINLLM_FSYNC_EVERY_RECORD => FsyncPolicy::EveryRecord,
            other => {
                return fail(
                    FINLLM_ERROR_INVALID_ARGUMENT,
                    format!("audit_fsync is {other}, not one of the FINLLM_FSYNC_* values"),
                )
            }
        };
        let audit_path = unsafe { opt_c_str(p.audit_log_path, "audit_log_path") }?;
        let hmac_key = unsafe { key_bytes(p.audit_hmac_key, p.audit_hmac_key_len, "audit_hmac_key") }?;
        let policy = unsafe { p.policy.as_ref() }.map(|policy| policy.inner.clone());
        let pii = if p.mask_pii { Some(default_pii()?) } else { None };
        let drift = (p.drift_vocab_size > 0).then_some(DriftConfig {
            vocab_size: p.drift_vocab_size as usize,
            window_tokens: p.drift_window_tokens as usize,
            smoothing: p.drift_smoothing,
            threshold: p.drift_threshold,
        });
        let audit = match audit_path {
            Some(path) => {
                let config = AuditConfig {
                    fsync,
                    max_file_bytes: p.audit_max_file_bytes,
                    hmac_key,
                    checkpoint_every: p.audit_checkpoint_every,
                };
                Some(Arc::new(AuditLog::open(path, config)?))
            }
            None => None,
        };
        let inner = Guard::new(GuardConfig {
            pii,
            unmask_output: p.unmask_output,
            policy,
            audit,
            drift,
        })?;
        unsafe {
            put(
                out,
                Box::into_raw(Box::new(finllm_guard { inner: Arc::new(inner) })),
                "out",
            )
        }
    })
}

/// Bytes of a torn last record (left by a crash or a failed write) that were cut off the guard's
/// audit log when finllm_guard_new opened it; 0 when there was none, when the guard has no audit
/// log, or if `guard` is NULL. A non-zero value deserves a warning in the caller's logs: the
/// request whose record was torn never got an answer, but an operator should know it happened.
/// Any thread.
///
/// # Safety
/// `guard` must be NULL or a live handle from finllm_guard_new.
#[no_mangle]
pub unsafe extern "C" fn finllm_guard_audit_truncated_bytes(guard: *const finllm_guard) -> u64 {
    // SAFETY: NULL or live per the contract.
    unsafe { guard.as_ref() }
        .and_then(|g| g.inner.config().audit.as_ref())
        .map_or(0, |log| log.open_report().truncated_bytes)
}

/// Free a guard (closing its audit log; every returned answer's record is already durable).
/// NULL is allowed. No call may be using the guard.
///
/// # Safety
/// `guard` must be NULL or a handle from finllm_guard_new not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_guard_free(guard: *mut finllm_guard) {
    if !guard.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(guard) })));
    }
}

/// Mask the personal data in `text` with the default detector (checksum-validated resident
/// IDs, USCC, phones, bank and credit cards, IBAN, US SSN, e-mail, IP): numbered placeholders
/// such as <ID_1> (the same value always gets the same one), or with `redact` irreversible
/// labels such as [ID], for logs. The result goes to `buf` as NUL-terminated UTF-8; `*needed`
/// is set to its length plus 1 on FINLLM_OK and FINLLM_ERROR_BUFFER_TOO_SMALL. Any thread.
///
/// # Safety
/// `text` NUL-terminated; `buf` NULL or valid for `buf_len` writes; `needed` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_pii_mask(
    text: *const c_char,
    redact: bool,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let text = unsafe { c_str(text, "text") }?;
        if needed.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "needed is NULL");
        }
        let detector = default_pii()?;
        let masked = if redact {
            detector.redact(text)
        } else {
            detector.pseudonymise(text).0
        };
        unsafe { copy_out(masked.as_bytes(), buf, buf_len, needed) }
    })
}

/// Load an output policy: a TOML rule-pack file, or "default" for the English and Chinese packs
/// shipped with finllm (write ./default for a file of that name). On success `*out` receives a
/// handle to free with finllm_policy_free. A bad pack gives FINLLM_ERROR_POLICY, an unreadable
/// file FINLLM_ERROR_IO.
///
/// # Safety
/// `path` NUL-terminated; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_policy_load(path: *const c_char, out: *mut *mut finllm_policy) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let path = unsafe { c_str(path, "path") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let inner = match path {
            "default" => Policy::default_packs()?,
            file => Policy::from_file(file)?,
        };
        unsafe { put(out, Box::into_raw(Box::new(finllm_policy { inner })), "out") }
    })
}

/// Free a policy. NULL is allowed. No call may be using it (guards made with it keep their own
/// reference).
///
/// # Safety
/// `policy` must be NULL or a handle from finllm_policy_load not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_policy_free(policy: *mut finllm_policy) {
    if !policy.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(policy) })));
    }
}

/// Check a whole text against `policy` (the same decision as streaming it): `*out_verdict`
/// receives the verdict. When `rule_needed` is not NULL, the id of the first rule whose action
/// gave the verdict ("" for ALLOW) goes to `rule_buf` as in finllm_detokenize: `*rule_needed`
/// is set to its length plus 1 on FINLLM_OK and FINLLM_ERROR_BUFFER_TOO_SMALL. When
/// `rule_needed` is NULL, `rule_buf` is ignored. Any thread.
///
/// # Safety
/// `policy` live; `text` NUL-terminated; `out_verdict` writable; `rule_buf` NULL or valid for
/// `rule_buf_len` writes; `rule_needed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_policy_check(
    policy: *const finllm_policy,
    text: *const c_char,
    out_verdict: *mut finllm_verdict,
    rule_buf: *mut c_char,
    rule_buf_len: usize,
    rule_needed: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let policy = unsafe { require(policy, "policy") }?;
        let text = unsafe { c_str(text, "text") }?;
        if out_verdict.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out_verdict is NULL");
        }
        let decision = policy.inner.check(text)?;
        if !rule_needed.is_null() {
            unsafe { copy_out(deciding_rule(&decision).as_bytes(), rule_buf, rule_buf_len, rule_needed) }?;
        }
        unsafe { put(out_verdict, verdict(decision.verdict), "out_verdict") }
    })
}

/// Default verification options: no HMAC key, no expected head.
#[no_mangle]
pub extern "C" fn finllm_audit_verify_default_params() -> finllm_audit_verify_params {
    finllm_audit_verify_params {
        struct_size: std::mem::size_of::<finllm_audit_verify_params>() as u32,
        hmac_key: std::ptr::null(),
        hmac_key_len: 0,
        expected_head_seq: 0,
        expected_head_hash: std::ptr::null(),
    }
}

/// Verify the whole audit log whose first file is `path` (and its rotated files): every CRC,
/// the hash chain, sequence numbers and file continuity. Returns FINLLM_OK when the check ran,
/// whatever it found: `*out_issues` is the number of problems (0: intact), `*out_records` the
/// records read, `*out_first_issue_record` the 1-based record number of the first problem (the
/// one to investigate; 0 when none). Each out-pointer may be NULL when not wanted. A log that
/// does not exist gives FINLLM_ERROR_AUDIT. `params` may be NULL for defaults. Any thread.
///
/// # Safety
/// `path` NUL-terminated; `params` NULL or valid, with its pointers NULL or valid as documented
/// on its fields; the out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_audit_verify(
    path: *const c_char,
    params: *const finllm_audit_verify_params,
    out_records: *mut u64,
    out_issues: *mut u64,
    out_first_issue_record: *mut u64,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let path = unsafe { c_str(path, "path") }?;
        let p = match unsafe { params.as_ref() } {
            Some(p) => {
                check_size(
                    p.struct_size,
                    std::mem::size_of::<finllm_audit_verify_params>(),
                    "finllm_audit_verify_params",
                )?;
                *p
            }
            None => finllm_audit_verify_default_params(),
        };
        let options = VerifyOptions {
            hmac_key: unsafe { key_bytes(p.hmac_key, p.hmac_key_len, "hmac_key") }?,
            expected_head: unsafe { opt_c_str(p.expected_head_hash, "expected_head_hash") }?
                .map(|hash| (p.expected_head_seq, hash.to_string())),
        };
        let report = audit::verify_with(path, &options)?;
        let issues = u64::try_from(report.issues.len()).unwrap_or(u64::MAX);
        let first = report.first_issue().map_or(0, |i| i.record);
        for (out, value) in [
            (out_records, report.records),
            (out_issues, issues),
            (out_first_issue_record, first),
        ] {
            // SAFETY: NULL or writable per the contract.
            if let Some(o) = unsafe { out.as_mut() } {
                *o = value;
            }
        }
        Ok(())
    })
}
