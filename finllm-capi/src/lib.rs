//! C ABI for finllm. The header `include/finllm.h` is generated from this file by cbindgen.
//!
//! Thin by design: every function converts arguments, calls `finllm-core`, and converts the
//! result. Every exported body runs inside [`guard`], a panic boundary that turns a panic into
//! `FINLLM_ERROR_PANIC`, and errors into a status code plus a per-thread message.
#![allow(non_camel_case_types)]

mod engine;

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use finllm_core::compliance::audit::{self, AuditConfig, AuditLog, FsyncPolicy, VerifyOptions};
use finllm_core::compliance::{
    Decision, DriftConfig, Guard, GuardConfig, GuardedGeneration, PiiConfig, PiiDetector, Policy, RequestInfo, Verdict,
};
use finllm_core::{
    ChatMessage, DeviceSpec, Error, FinishReason, GenerateParams, Generation, LoadOptions, Model, SamplingParams,
    TokenEvent,
};

/// Major version of the library this header belongs to.
pub const FINLLM_VERSION_MAJOR: u32 = 0;
/// Minor version of the library this header belongs to.
pub const FINLLM_VERSION_MINOR: u32 = 1;
/// Patch version of the library this header belongs to.
pub const FINLLM_VERSION_PATCH: u32 = 0;

/// Result of every fallible call. Values are stable and never reused.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum finllm_status {
    FINLLM_OK = 0,
    /// A required pointer argument was NULL.
    FINLLM_ERROR_NULL_POINTER = 1,
    /// A string argument was not valid UTF-8.
    FINLLM_ERROR_INVALID_UTF8 = 2,
    /// An argument was out of range (bad enum value, temperature < 0, ...).
    FINLLM_ERROR_INVALID_ARGUMENT = 3,
    /// An options struct's struct_size is smaller than this library's version of it.
    FINLLM_ERROR_STRUCT_SIZE = 4,
    /// A file could not be read.
    FINLLM_ERROR_IO = 5,
    /// A model file is malformed (truncated, hostile sizes, bad JSON).
    FINLLM_ERROR_MODEL_FORMAT = 6,
    /// The model is well-formed but not supported (architecture, missing tensor or key, type).
    FINLLM_ERROR_UNSUPPORTED_MODEL = 7,
    /// The tokenizer could not be built or used.
    FINLLM_ERROR_TOKENIZER = 8,
    /// The chat template failed to parse or render.
    FINLLM_ERROR_CHAT_TEMPLATE = 9,
    /// Prompt plus max_tokens exceed the model's context length.
    FINLLM_ERROR_CONTEXT_OVERFLOW = 10,
    /// A caller buffer is too small; the needed size was reported.
    FINLLM_ERROR_BUFFER_TOO_SMALL = 11,
    /// The tensor backend failed.
    FINLLM_ERROR_BACKEND = 12,
    /// finllm panicked (a bug): the call had no effect beyond what the message says.
    FINLLM_ERROR_PANIC = 13,
    /// An error this version of the header has no code for.
    FINLLM_ERROR_OTHER = 14,
    /// A compliance policy (TOML rule pack) is invalid; the message says where.
    FINLLM_ERROR_POLICY = 15,
    /// The audit log cannot be opened, read or appended to (or a verified log does not exist);
    /// the message says what to do.
    FINLLM_ERROR_AUDIT = 16,
    /// An earlier write or fsync of the guard's audit log failed, so the log accepts no further
    /// record and no guarded answer is given (fail-closed). Fix the disk, then make a new guard
    /// (reopening the log truncates a torn tail).
    FINLLM_ERROR_AUDIT_POISONED = 17,
    /// The requested device cannot be used: CUDA asked for in a build without it, no such
    /// GPU, or no driver. The message says which.
    FINLLM_ERROR_DEVICE = 18,
    /// The engine's queue is full; nothing was queued. Retry later, or set wait_ms.
    FINLLM_ERROR_BUSY = 19,
    /// The request can never run on this engine: prompt plus max_tokens need more KV cache than
    /// its whole budget, or the prompt more tokens than its queue holds.
    FINLLM_ERROR_REQUEST_TOO_LARGE = 20,
    /// The request's deadline passed before it finished.
    FINLLM_ERROR_DEADLINE_EXCEEDED = 21,
    /// The engine could not serve the request (its scheduler stopped, or a batched step
    /// failed); the message says which.
    FINLLM_ERROR_ENGINE = 22,
    /// Nothing arrived within the caller's timeout; call again.
    FINLLM_ERROR_TIMEOUT = 23,
}

use finllm_status::*;

/// Why a generation ended.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum finllm_finish_reason {
    /// The model ended its answer (end-of-sequence / end-of-turn token).
    FINLLM_FINISH_EOS = 0,
    /// max_tokens reached.
    FINLLM_FINISH_LENGTH = 1,
    /// A stop string appeared (it is not part of the text).
    FINLLM_FINISH_STOP = 2,
    /// The callback returned non-zero, or the cancel handle was triggered.
    FINLLM_FINISH_CANCELLED = 3,
    /// The output policy blocked the answer; the text ends before the blocked phrase.
    FINLLM_FINISH_BLOCKED = 4,
}

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

/// A loaded model. Thread safety: one handle may be used by any number of threads at once
/// (each call keeps its own state); it must not be freed while a call is using it.
pub struct finllm_model {
    inner: Arc<Model>,
}

/// The result of one generation. Thread safety: read-only after creation, shareable.
pub struct finllm_generation {
    text: Vec<u8>,
    ids: Vec<u32>,
    prompt_tokens: usize,
    finish: finllm_finish_reason,
    prefill_ms: f64,
    decode_ms: f64,
    /// What the guard did, for results of finllm_generate_guarded / finllm_chat_guarded.
    guarded: Option<GuardReport>,
}

/// The guard's side of a guarded generation; strings are NUL-terminated.
struct GuardReport {
    request_id: Vec<u8>,
    masked_prompt: Vec<u8>,
    pii_entities: usize,
    verdict: finllm_verdict,
    rule_id: Vec<u8>,
    audit_seq: u64,
    audit_hash: Vec<u8>,
    /// KL divergence (NaN until both windows hold tokens) and whether it reached the threshold.
    drift: Option<(f64, bool)>,
}

/// Compliance controls (PII masking, output policy, audit log, drift monitor) wrapped around
/// generations with finllm_generate_guarded / finllm_chat_guarded. Thread safety: one guard may
/// be used by any number of threads at once, with any models (audit records are appended in
/// order, one chain per log); it must not be freed while a call is using it.
pub struct finllm_guard {
    inner: Guard,
}

/// A compiled output policy (TOML rule packs). Thread safety: read-only, shareable by any
/// number of threads; must not be freed while a call is using it.
pub struct finllm_policy {
    inner: Policy,
}

/// A cancellation flag: trigger it from any thread to stop generations that were given it.
/// Thread safety: fully thread-safe; must outlive the calls that use it.
pub struct finllm_cancel {
    flag: AtomicBool,
}

/// Options for finllm_model_load. Get defaults from finllm_load_default_params().
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_load_params {
    /// sizeof(finllm_load_params) as the caller compiled it.
    pub struct_size: u32,
    /// Compute threads for this model; 0 means one per core.
    pub threads: u32,
    /// Path of a tokenizer.json to use instead of the model's own tokenizer, or NULL.
    pub tokenizer_json: *const c_char,
    /// Where to run: "cpu", "cuda:N" or "auto"; NULL means "cpu". (Added in 0.1; callers
    /// compiled against a header without it get "cpu".)
    pub device: *const c_char,
    /// Non-zero: scan every weight for NaN and infinity before building the model (reads the
    /// whole file once); a corrupt tensor fails the load with FINLLM_ERROR_BACKEND naming it.
    /// (Added in 0.1; callers compiled against a header without it get 0.)
    pub check_weights: u8,
}

/// Options for one generation. Get defaults from finllm_generate_default_params().
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_generate_params {
    /// sizeof(finllm_generate_params) as the caller compiled it.
    pub struct_size: u32,
    /// Upper bound on generated tokens.
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    /// 1.0 disables top-p.
    pub top_p: f32,
    /// 0.0 disables min-p.
    pub min_p: f32,
    /// 1.0 disables the repetition penalty.
    pub repetition_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    pub repeat_last_n: u32,
    /// Sampling seed: the same seed, prompt and options give the same tokens.
    pub seed: u64,
    /// Array of n_stop NUL-terminated stop strings (may be NULL when n_stop is 0).
    pub stop: *const *const c_char,
    pub n_stop: usize,
}

/// One chat message.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_chat_message {
    /// "system", "user" or "assistant" (NUL-terminated UTF-8).
    pub role: *const c_char,
    /// NUL-terminated UTF-8.
    pub content: *const c_char,
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

/// Who asks, and what the request drew on, for the audit record. Get defaults from
/// finllm_request_default_params(). Strings are copied during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_request_params {
    /// sizeof(finllm_request_params) as the caller compiled it.
    pub struct_size: u32,
    /// Unique id of the request, or NULL (or "") to have one made up.
    pub request_id: *const c_char,
    /// The authenticated caller (user, service or desk) on whose behalf the model runs, or NULL.
    pub caller_id: *const c_char,
    /// Fine-tuning adapter in use, or NULL.
    pub adapter: *const c_char,
    /// Array of n_source_ids ids of documents retrieved into the prompt (may be NULL when
    /// n_source_ids is 0).
    pub source_ids: *const *const c_char,
    pub n_source_ids: usize,
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

/// Called for each generated token, on the calling thread. `text` points to `text_len` bytes of
/// UTF-8 (whole characters only, possibly empty) followed by a NUL; it is valid only during the
/// call. Return 0 to continue, non-zero to stop (the generation then finishes as CANCELLED).
pub type finllm_token_callback =
    Option<unsafe extern "C" fn(text: *const c_char, text_len: usize, token_id: u32, user_data: *mut c_void) -> i32>;

// ------------------------------------------------------------------------------------------
// Errors and the panic boundary
// ------------------------------------------------------------------------------------------

thread_local! {
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

struct Failure(finllm_status, String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        use finllm_core::error::ErrorKind as K;
        let status = match e.kind() {
            K::Io => FINLLM_ERROR_IO,
            K::ModelFormat => FINLLM_ERROR_MODEL_FORMAT,
            K::UnsupportedModel => FINLLM_ERROR_UNSUPPORTED_MODEL,
            K::Tokenizer => FINLLM_ERROR_TOKENIZER,
            K::ChatTemplate => FINLLM_ERROR_CHAT_TEMPLATE,
            K::InvalidArgument => FINLLM_ERROR_INVALID_ARGUMENT,
            K::ContextOverflow => FINLLM_ERROR_CONTEXT_OVERFLOW,
            K::Backend => FINLLM_ERROR_BACKEND,
            K::Device => FINLLM_ERROR_DEVICE,
            K::Policy => FINLLM_ERROR_POLICY,
            K::Audit => FINLLM_ERROR_AUDIT,
            K::AuditPoisoned => FINLLM_ERROR_AUDIT_POISONED,
            K::Busy => FINLLM_ERROR_BUSY,
            K::RequestTooLarge => FINLLM_ERROR_REQUEST_TOO_LARGE,
            K::DeadlineExceeded => FINLLM_ERROR_DEADLINE_EXCEEDED,
            K::Engine => FINLLM_ERROR_ENGINE,
        };
        Failure(status, e.to_string())
    }
}

fn fail<T>(status: finllm_status, msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(status, msg.into()))
}

fn set_last_error(msg: &str) {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        e.extend_from_slice(msg.as_bytes());
    });
}

/// Run an exported body: clear the thread's error, catch panics, record failures.
fn guard(body: impl FnOnce() -> Result<(), Failure>) -> finllm_status {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => FINLLM_OK,
        Ok(Err(Failure(status, msg))) => {
            set_last_error(&msg);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (please report): {what}"));
            FINLLM_ERROR_PANIC
        }
    }
}

/// Borrow a required pointer.
///
/// # Safety
/// `p` must be NULL or point to a valid `T` for the duration of the call.
unsafe fn require<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller guarantees p is NULL or valid; NULL is rejected here.
    unsafe { p.as_ref() }.ok_or_else(|| Failure(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL")))
}

/// Read a required NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn c_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return fail(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL"));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|e| Failure(FINLLM_ERROR_INVALID_UTF8, format!("{name} is not valid UTF-8: {e}")))
}

/// Store `value` in a required out-pointer.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T`.
unsafe fn put<T>(out: *mut T, value: T, name: &str) -> Result<(), Failure> {
    if out.is_null() {
        return fail(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL"));
    }
    // SAFETY: non-NULL and writable per the caller's contract.
    unsafe { out.write(value) };
    Ok(())
}

fn check_size(struct_size: u32, expected: usize, name: &str) -> Result<(), Failure> {
    if (struct_size as usize) < expected {
        return fail(
            FINLLM_ERROR_STRUCT_SIZE,
            format!("{name}.struct_size is {struct_size}, this library needs at least {expected}: initialise it with the default_params function"),
        );
    }
    Ok(())
}

/// Read an optional NUL-terminated UTF-8 string (NULL is None).
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
unsafe fn opt_c_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, NUL-terminated per the caller's contract.
    unsafe { c_str(p, name) }.map(Some)
}

/// Copy an array of `n` NUL-terminated UTF-8 strings.
///
/// # Safety
/// `p` NULL or valid for `n` pointers, each NUL-terminated.
unsafe fn c_str_array(p: *const *const c_char, n: usize, name: &str) -> Result<Vec<String>, Failure> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return fail(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL while n_{name} > 0"));
    }
    let mut out = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        // SAFETY: p is valid for n pointers per the contract.
        let s = unsafe { *p.add(i) };
        out.push(unsafe { c_str(s, &format!("{name}[{i}]")) }?.to_string());
    }
    Ok(out)
}

/// Copy `len` bytes of a key (a key of length 0 is None).
///
/// # Safety
/// `p` NULL or valid for `len` reads.
unsafe fn key_bytes(p: *const u8, len: usize, name: &str) -> Result<Option<Vec<u8>>, Failure> {
    if len == 0 {
        return Ok(None);
    }
    if p.is_null() {
        return fail(
            FINLLM_ERROR_NULL_POINTER,
            format!("{name} is NULL while {name}_len > 0"),
        );
    }
    // SAFETY: valid for len reads per the contract.
    Ok(Some(unsafe { std::slice::from_raw_parts(p, len) }.to_vec()))
}

/// The caller-buffer convention for strings out: `*needed` gets the length plus 1 on success
/// and on FINLLM_ERROR_BUFFER_TOO_SMALL; the text is written NUL-terminated if it fits.
///
/// # Safety
/// `buf` NULL or valid for `buf_len` writes; `needed` NULL or writable.
unsafe fn copy_out(text: &[u8], buf: *mut c_char, buf_len: usize, needed: *mut usize) -> Result<(), Failure> {
    // SAFETY: contracts forwarded.
    unsafe { put(needed, text.len() + 1, "needed") }?;
    if text.len() + 1 > buf_len || buf.is_null() {
        return fail(
            FINLLM_ERROR_BUFFER_TOO_SMALL,
            format!("{} bytes do not fit in {buf_len}", text.len() + 1),
        );
    }
    // SAFETY: buf is valid for buf_len >= text.len() + 1 writes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        *buf.add(text.len()) = 0;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Version and errors
// ------------------------------------------------------------------------------------------

/// The library version, e.g. "0.1.0". Static string; never free it.
#[no_mangle]
pub extern "C" fn finllm_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// A static, human-readable name for a status value (also for values this version does not
/// know). Never free it.
#[no_mangle]
pub extern "C" fn finllm_status_name(status: i32) -> *const c_char {
    let name: &'static str = match status {
        0 => "FINLLM_OK\0",
        1 => "FINLLM_ERROR_NULL_POINTER\0",
        2 => "FINLLM_ERROR_INVALID_UTF8\0",
        3 => "FINLLM_ERROR_INVALID_ARGUMENT\0",
        4 => "FINLLM_ERROR_STRUCT_SIZE\0",
        5 => "FINLLM_ERROR_IO\0",
        6 => "FINLLM_ERROR_MODEL_FORMAT\0",
        7 => "FINLLM_ERROR_UNSUPPORTED_MODEL\0",
        8 => "FINLLM_ERROR_TOKENIZER\0",
        9 => "FINLLM_ERROR_CHAT_TEMPLATE\0",
        10 => "FINLLM_ERROR_CONTEXT_OVERFLOW\0",
        11 => "FINLLM_ERROR_BUFFER_TOO_SMALL\0",
        12 => "FINLLM_ERROR_BACKEND\0",
        13 => "FINLLM_ERROR_PANIC\0",
        14 => "FINLLM_ERROR_OTHER\0",
        15 => "FINLLM_ERROR_POLICY\0",
        16 => "FINLLM_ERROR_AUDIT\0",
        17 => "FINLLM_ERROR_AUDIT_POISONED\0",
        18 => "FINLLM_ERROR_DEVICE\0",
        19 => "FINLLM_ERROR_BUSY\0",
        20 => "FINLLM_ERROR_REQUEST_TOO_LARGE\0",
        21 => "FINLLM_ERROR_DEADLINE_EXCEEDED\0",
        22 => "FINLLM_ERROR_ENGINE\0",
        23 => "FINLLM_ERROR_TIMEOUT\0",
        _ => "FINLLM_ERROR_UNKNOWN_STATUS\0",
    };
    name.as_ptr().cast()
}

/// Copy the message of the last failed call on this thread into `buf` (NUL-terminated,
/// truncated to `buf_len`). Returns the full length including the NUL (1 when there is no
/// error). `buf` may be NULL when `buf_len` is 0, to ask for the length.
///
/// # Safety
/// `buf` must be NULL or valid for `buf_len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn finllm_last_error_message(buf: *mut c_char, buf_len: usize) -> usize {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        if !buf.is_null() && buf_len > 0 {
            let n = e.len().min(buf_len - 1);
            // SAFETY: buf is valid for buf_len bytes per the contract; n + 1 <= buf_len.
            unsafe {
                std::ptr::copy_nonoverlapping(e.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        e.len() + 1
    })
}

// ------------------------------------------------------------------------------------------
// Models
// ------------------------------------------------------------------------------------------

/// Default load options.
#[no_mangle]
pub extern "C" fn finllm_load_default_params() -> finllm_load_params {
    finllm_load_params {
        struct_size: std::mem::size_of::<finllm_load_params>() as u32,
        threads: 0,
        tokenizer_json: std::ptr::null(),
        device: std::ptr::null(),
        check_weights: 0,
    }
}

/// The caller's load params, with fields added after its header's version at their defaults.
///
/// # Safety
/// `params` must be NULL or valid for reads of its `struct_size` bytes.
unsafe fn load_params(params: *const finllm_load_params) -> Result<finllm_load_params, Failure> {
    let mut p = finllm_load_default_params();
    if params.is_null() {
        return Ok(p);
    }
    // SAFETY: non-NULL and at least as large as the first field per the contract.
    let size = unsafe { *params.cast::<u32>() } as usize;
    // The first version of the struct ended before `device`.
    check_size(
        size as u32,
        std::mem::offset_of!(finllm_load_params, device),
        "finllm_load_params",
    )?;
    let n = size.min(std::mem::size_of::<finllm_load_params>());
    // SAFETY: the caller's struct has `size` readable bytes; we copy at most our own size, into
    // a struct of ours whose later fields keep their defaults.
    unsafe {
        std::ptr::copy_nonoverlapping(params.cast::<u8>(), (&mut p as *mut finllm_load_params).cast::<u8>(), n);
    }
    p.struct_size = std::mem::size_of::<finllm_load_params>() as u32;
    Ok(p)
}

/// Load a .gguf file or an HF safetensors directory. `params` may be NULL for defaults. On
/// success `*out` receives a handle to free with finllm_model_free.
///
/// # Safety
/// `path` must be a NUL-terminated string; `params` NULL or valid; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn finllm_model_load(
    path: *const c_char,
    params: *const finllm_load_params,
    out: *mut *mut finllm_model,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let path = unsafe { c_str(path, "path") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        // SAFETY: params is NULL or valid for struct_size bytes per the contract.
        let p = unsafe { load_params(params) }?;
        let tokenizer_json = if p.tokenizer_json.is_null() {
            None
        } else {
            Some(unsafe { c_str(p.tokenizer_json, "tokenizer_json") }?.into())
        };
        let device = match unsafe { opt_c_str(p.device, "device") }? {
            Some(d) => d.parse()?,
            None => DeviceSpec::Cpu,
        };
        let opts = LoadOptions {
            threads: (p.threads > 0).then_some(p.threads as usize),
            device,
            tokenizer_json,
            progress: None,
            check_weights: p.check_weights != 0,
        };
        let model = Model::load(path, &opts)?;
        let handle = Box::into_raw(Box::new(finllm_model { inner: Arc::new(model) }));
        unsafe { put(out, handle, "out") }
    })
}

/// Free a model. NULL is allowed. No call may be using the model.
///
/// # Safety
/// `model` must be NULL or a handle from finllm_model_load not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_model_free(model: *mut finllm_model) {
    if !model.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

/// The model's context length in tokens (0 if `model` is NULL).
///
/// # Safety
/// `model` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn finllm_model_context_length(model: *const finllm_model) -> u32 {
    // SAFETY: NULL or live per the contract.
    unsafe { model.as_ref() }.map_or(0, |m| {
        u32::try_from(m.inner.config().context_length).unwrap_or(u32::MAX)
    })
}

/// The model's vocabulary size (0 if `model` is NULL).
///
/// # Safety
/// `model` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn finllm_model_vocab_size(model: *const finllm_model) -> u32 {
    // SAFETY: NULL or live per the contract.
    unsafe { model.as_ref() }.map_or(0, |m| u32::try_from(m.inner.config().vocab_size).unwrap_or(u32::MAX))
}

/// The architecture name ("llama", "qwen2", ...), a static string; NULL if `model` is NULL.
///
/// # Safety
/// `model` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn finllm_model_architecture(model: *const finllm_model) -> *const c_char {
    // SAFETY: NULL or live per the contract.
    match unsafe { model.as_ref() } {
        None => std::ptr::null(),
        Some(m) => {
            let name: &'static str = match m.inner.config().arch {
                finllm_core::Architecture::Llama => "llama\0",
                finllm_core::Architecture::Qwen2 => "qwen2\0",
                finllm_core::Architecture::Qwen3 => "qwen3\0",
                finllm_core::Architecture::Gemma3 => "gemma3\0",
            };
            name.as_ptr().cast()
        }
    }
}

/// Tokenize `text` (special tokens parsed, BOS as the model says) into `ids`. `*n_ids` is set
/// to the number of tokens on FINLLM_OK and on FINLLM_ERROR_BUFFER_TOO_SMALL (then nothing is
/// written to `ids`). `ids` may be NULL when `capacity` is 0.
///
/// # Safety
/// `model` live; `text` NUL-terminated; `ids` valid for `capacity` writes; `n_ids` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_tokenize(
    model: *const finllm_model,
    text: *const c_char,
    ids: *mut u32,
    capacity: usize,
    n_ids: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let model = unsafe { require(model, "model") }?;
        let text = unsafe { c_str(text, "text") }?;
        if n_ids.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "n_ids is NULL");
        }
        let tokens = model.inner.tokenize(text)?;
        unsafe { put(n_ids, tokens.len(), "n_ids") }?;
        if tokens.len() > capacity {
            return fail(
                FINLLM_ERROR_BUFFER_TOO_SMALL,
                format!("{} tokens do not fit in {capacity}", tokens.len()),
            );
        }
        if !tokens.is_empty() {
            if ids.is_null() {
                return fail(FINLLM_ERROR_NULL_POINTER, "ids is NULL");
            }
            // SAFETY: ids is valid for capacity >= tokens.len() writes.
            unsafe { std::ptr::copy_nonoverlapping(tokens.as_ptr(), ids, tokens.len()) };
        }
        Ok(())
    })
}

/// Decode `n_ids` token ids into `buf` as NUL-terminated UTF-8 (control tokens skipped).
/// `*needed` is set to the text length plus 1 on FINLLM_OK and FINLLM_ERROR_BUFFER_TOO_SMALL.
///
/// # Safety
/// `model` live; `ids` valid for `n_ids` reads; `buf` valid for `buf_len` writes; `needed`
/// writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_detokenize(
    model: *const finllm_model,
    ids: *const u32,
    n_ids: usize,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let model = unsafe { require(model, "model") }?;
        if needed.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "needed is NULL");
        }
        let ids = if n_ids == 0 {
            &[][..]
        } else if ids.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "ids is NULL");
        } else {
            // SAFETY: valid for n_ids reads per the contract.
            unsafe { std::slice::from_raw_parts(ids, n_ids) }
        };
        let text = model.inner.detokenize(ids)?;
        unsafe { copy_out(text.as_bytes(), buf, buf_len, needed) }
    })
}

// ------------------------------------------------------------------------------------------
// Generation
// ------------------------------------------------------------------------------------------

/// Default generation options: greedy, 256 tokens, no stop strings.
#[no_mangle]
pub extern "C" fn finllm_generate_default_params() -> finllm_generate_params {
    let d = GenerateParams::default();
    finllm_generate_params {
        struct_size: std::mem::size_of::<finllm_generate_params>() as u32,
        max_tokens: d.max_tokens as u32,
        temperature: d.sampling.temperature,
        top_k: d.sampling.top_k as u32,
        top_p: d.sampling.top_p,
        min_p: d.sampling.min_p,
        repetition_penalty: d.sampling.repetition_penalty,
        repeat_last_n: d.sampling.repeat_last_n as u32,
        seed: d.sampling.seed,
        stop: std::ptr::null(),
        n_stop: 0,
    }
}

/// # Safety
/// `p` NULL or valid, with `stop` valid for `n_stop` NUL-terminated strings.
unsafe fn generate_params(p: *const finllm_generate_params) -> Result<GenerateParams, Failure> {
    // SAFETY: NULL or valid per the contract.
    let p = match unsafe { p.as_ref() } {
        None => finllm_generate_default_params(),
        Some(p) => {
            check_size(
                p.struct_size,
                std::mem::size_of::<finllm_generate_params>(),
                "finllm_generate_params",
            )?;
            *p
        }
    };
    // SAFETY: stop is valid for n_stop strings per the contract.
    let stop = unsafe { c_str_array(p.stop, p.n_stop, "stop") }?;
    Ok(GenerateParams {
        sampling: SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
            repeat_last_n: p.repeat_last_n as usize,
            seed: p.seed,
        },
        max_tokens: p.max_tokens as usize,
        stop,
        top_logits: 0,
        ignore_eos: false,
    })
}

/// The C callback and the cancel flag as a token observer: a non-zero return from the callback,
/// or a triggered cancel handle, stops generation.
fn token_sink<'a>(
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: Option<&'a finllm_cancel>,
) -> impl FnMut(&TokenEvent) -> ControlFlow<()> + 'a {
    let mut text_buf: Vec<u8> = Vec::new();
    move |ev| {
        if let Some(cb) = callback {
            text_buf.clear();
            text_buf.extend_from_slice(ev.text.as_bytes());
            text_buf.push(0);
            // SAFETY: the callback's contract is the caller's; the buffer outlives the call.
            let rc = unsafe { cb(text_buf.as_ptr().cast(), ev.text.len(), ev.id, user_data) };
            if rc != 0 {
                return ControlFlow::Break(());
            }
        }
        if cancel.is_some_and(|c| c.flag.load(Ordering::Acquire)) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Drive a stream with the C callback and the cancel flag.
fn run_stream(
    stream: finllm_core::TokenStream<'_>,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: Option<&finllm_cancel>,
) -> Result<Generation, Failure> {
    Ok(stream.run_with(token_sink(callback, user_data, cancel))?)
}

/// Copy the messages of finllm_chat / finllm_chat_guarded.
///
/// # Safety
/// `messages` NULL or valid for `n_messages` reads, each with NUL-terminated strings.
unsafe fn chat_messages(messages: *const finllm_chat_message, n_messages: usize) -> Result<Vec<ChatMessage>, Failure> {
    if messages.is_null() && n_messages > 0 {
        return fail(FINLLM_ERROR_NULL_POINTER, "messages is NULL");
    }
    let mut msgs = Vec::with_capacity(n_messages.min(4096));
    for i in 0..n_messages {
        // SAFETY: valid for n_messages reads per the contract.
        let m = unsafe { &*messages.add(i) };
        msgs.push(ChatMessage::new(unsafe { c_str(m.role, "role") }?, unsafe {
            c_str(m.content, "content")
        }?));
    }
    Ok(msgs)
}

fn nul_terminated(s: String) -> Vec<u8> {
    let mut bytes = s.into_bytes();
    bytes.push(0);
    bytes
}

fn verdict(v: Verdict) -> finllm_verdict {
    match v {
        Verdict::Allow => finllm_verdict::FINLLM_VERDICT_ALLOW,
        Verdict::Flag => finllm_verdict::FINLLM_VERDICT_FLAG,
        Verdict::AppendDisclaimer => finllm_verdict::FINLLM_VERDICT_APPEND_DISCLAIMER,
        Verdict::Redact => finllm_verdict::FINLLM_VERDICT_REDACT,
        Verdict::Block => finllm_verdict::FINLLM_VERDICT_BLOCK,
    }
}

/// The id of the first rule whose action gave the verdict (the blocking rule on a block).
fn deciding_rule(d: &Decision) -> &str {
    d.matches
        .iter()
        .find(|m| Verdict::from(m.action) == d.verdict)
        .map_or("", |m| m.rule_id.as_str())
}

fn into_handle(gen: Generation, guarded: Option<GuardReport>) -> *mut finllm_generation {
    Box::into_raw(Box::new(finllm_generation {
        text: nul_terminated(gen.text),
        ids: gen.ids,
        prompt_tokens: gen.prompt_ids.len(),
        finish: match gen.finish {
            FinishReason::Eos => finllm_finish_reason::FINLLM_FINISH_EOS,
            FinishReason::Length => finllm_finish_reason::FINLLM_FINISH_LENGTH,
            FinishReason::Stop => finllm_finish_reason::FINLLM_FINISH_STOP,
            FinishReason::Cancelled => finllm_finish_reason::FINLLM_FINISH_CANCELLED,
            FinishReason::Blocked => finllm_finish_reason::FINLLM_FINISH_BLOCKED,
        },
        prefill_ms: gen.timings.prefill.as_secs_f64() * 1e3,
        decode_ms: gen.timings.decode.as_secs_f64() * 1e3,
        guarded,
    }))
}

fn guarded_handle(g: GuardedGeneration) -> *mut finllm_generation {
    let report = GuardReport {
        request_id: nul_terminated(g.request_id),
        masked_prompt: nul_terminated(g.masked_prompt),
        pii_entities: g.prompt_entities.len(),
        verdict: g
            .decision
            .as_ref()
            .map_or(finllm_verdict::FINLLM_VERDICT_ALLOW, |d| verdict(d.verdict)),
        rule_id: nul_terminated(g.decision.as_ref().map_or("", deciding_rule).to_string()),
        audit_seq: g.receipt.as_ref().map_or(0, |r| r.seq),
        audit_hash: nul_terminated(g.receipt.map_or_else(String::new, |r| r.hash)),
        drift: g.drift.map(|d| (d.kl_divergence.unwrap_or(f64::NAN), d.drifting)),
    };
    into_handle(g.generation, Some(report))
}

/// Generate a continuation of raw `prompt` text (special tokens parsed, no chat template).
/// `params`, `callback` and `cancel` may be NULL. On success `*out` receives a result to free
/// with finllm_generation_free. A cancelled generation succeeds with finish reason CANCELLED.
///
/// # Safety
/// `model` live; `prompt` NUL-terminated; `params` NULL or valid; `cancel` NULL or live;
/// `out` writable. `user_data` is passed to `callback` untouched.
#[no_mangle]
pub unsafe extern "C" fn finllm_generate(
    model: *const finllm_model,
    prompt: *const c_char,
    params: *const finllm_generate_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: *const finllm_cancel,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let model = unsafe { require(model, "model") }?;
        let prompt = unsafe { c_str(prompt, "prompt") }?;
        let params = unsafe { generate_params(params) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let cancel = unsafe { cancel.as_ref() };
        let gen = run_stream(model.inner.stream(prompt, &params)?, callback, user_data, cancel)?;
        unsafe { put(out, into_handle(gen, None), "out") }
    })
}

/// Answer a conversation of `n_messages` messages using the model's chat template. Otherwise
/// as finllm_generate.
///
/// # Safety
/// As finllm_generate; `messages` valid for `n_messages` reads, each with NUL-terminated
/// strings.
#[no_mangle]
pub unsafe extern "C" fn finllm_chat(
    model: *const finllm_model,
    messages: *const finllm_chat_message,
    n_messages: usize,
    params: *const finllm_generate_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: *const finllm_cancel,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let model = unsafe { require(model, "model") }?;
        let msgs = unsafe { chat_messages(messages, n_messages) }?;
        let params = unsafe { generate_params(params) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let cancel = unsafe { cancel.as_ref() };
        let gen = run_stream(model.inner.chat_stream(&msgs, &params)?, callback, user_data, cancel)?;
        unsafe { put(out, into_handle(gen, None), "out") }
    })
}

/// The generated text (UTF-8, NUL-terminated, owned by `gen`); its byte length goes to `*len`
/// when `len` is not NULL. NULL if `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_text(gen: *const finllm_generation, len: *mut usize) -> *const c_char {
    // SAFETY: NULL or live per the contract.
    let Some(g) = (unsafe { gen.as_ref() }) else {
        return std::ptr::null();
    };
    if !len.is_null() {
        // SAFETY: writable per the contract.
        unsafe { *len = g.text.len() - 1 };
    }
    g.text.as_ptr().cast()
}

/// The generated token ids (owned by `gen`); their count goes to `*n`. NULL if `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live; `n` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_tokens(gen: *const finllm_generation, n: *mut usize) -> *const u32 {
    // SAFETY: NULL or live per the contract.
    let Some(g) = (unsafe { gen.as_ref() }) else {
        return std::ptr::null();
    };
    if !n.is_null() {
        // SAFETY: writable per the contract.
        unsafe { *n = g.ids.len() };
    }
    g.ids.as_ptr()
}

/// Number of prompt tokens (0 if `gen` is NULL).
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_prompt_tokens(gen: *const finllm_generation) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { gen.as_ref() }.map_or(0, |g| g.prompt_tokens)
}

/// Why generation ended (LENGTH if `gen` is NULL).
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_finish_reason(gen: *const finllm_generation) -> finllm_finish_reason {
    // SAFETY: NULL or live per the contract.
    unsafe { gen.as_ref() }.map_or(finllm_finish_reason::FINLLM_FINISH_LENGTH, |g| g.finish)
}

/// Milliseconds spent on the prompt (to the first token's logits) and on decoding.
///
/// # Safety
/// `gen` NULL or live; the out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_timings(
    gen: *const finllm_generation,
    prefill_ms: *mut f64,
    decode_ms: *mut f64,
) {
    // SAFETY: NULL or valid per the contract.
    if let Some(g) = unsafe { gen.as_ref() } {
        if let Some(p) = unsafe { prefill_ms.as_mut() } {
            *p = g.prefill_ms;
        }
        if let Some(d) = unsafe { decode_ms.as_mut() } {
            *d = g.decode_ms;
        }
    }
}

/// A string owned by a guarded result, or the static "" for an unguarded one; its byte length
/// goes to `*len` when `len` is not NULL. NULL if `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live; `len` NULL or writable.
unsafe fn report_str(
    gen: *const finllm_generation,
    len: *mut usize,
    field: impl FnOnce(&GuardReport) -> &[u8],
) -> *const c_char {
    // SAFETY: NULL or live per the contract.
    let Some(g) = (unsafe { gen.as_ref() }) else {
        return std::ptr::null();
    };
    let s: &[u8] = g.guarded.as_ref().map_or(b"\0", field);
    if !len.is_null() {
        // SAFETY: writable per the contract.
        unsafe { *len = s.len() - 1 };
    }
    s.as_ptr().cast()
}

/// The request id of a guarded generation (the caller's, or the one made up for it), owned by
/// `gen`; "" for an unguarded generation, NULL if `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_request_id(gen: *const finllm_generation) -> *const c_char {
    // SAFETY: contract forwarded.
    unsafe { report_str(gen, std::ptr::null_mut(), |r| &r.request_id) }
}

/// The prompt as the model saw it (personal data replaced by placeholders when the guard masks
/// it; the rendered chat template for finllm_chat_guarded), UTF-8, NUL-terminated and owned by
/// `gen`; its byte length goes to `*len` when `len` is not NULL. "" for an unguarded
/// generation, NULL if `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live; `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_masked_prompt(
    gen: *const finllm_generation,
    len: *mut usize,
) -> *const c_char {
    // SAFETY: contracts forwarded.
    unsafe { report_str(gen, len, |r| &r.masked_prompt) }
}

/// Number of personal identifiers the guard found (and masked) in the prompt; 0 when it does
/// not mask, for an unguarded generation, or if `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_pii_entities(gen: *const finllm_generation) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { gen.as_ref() }
        .and_then(|g| g.guarded.as_ref())
        .map_or(0, |r| r.pii_entities)
}

/// The output policy's verdict on the answer; ALLOW when the guard has no policy, for an
/// unguarded generation, or if `gen` is NULL. A BLOCK also shows as finish reason BLOCKED.
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_verdict(gen: *const finllm_generation) -> finllm_verdict {
    // SAFETY: NULL or live per the contract.
    unsafe { gen.as_ref() }
        .and_then(|g| g.guarded.as_ref())
        .map_or(finllm_verdict::FINLLM_VERDICT_ALLOW, |r| r.verdict)
}

/// The id of the first policy rule whose action gave the verdict (the blocking rule on a
/// block), owned by `gen`; "" when the verdict is ALLOW or the generation is unguarded, NULL if
/// `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_policy_rule(gen: *const finllm_generation) -> *const c_char {
    // SAFETY: contract forwarded.
    unsafe { report_str(gen, std::ptr::null_mut(), |r| &r.rule_id) }
}

/// The 1-based sequence number of the answer's audit record over the whole log; 0 when the
/// guard has no audit log, for an unguarded generation, or if `gen` is NULL. Keep the latest
/// (seq, hash) outside the log host to detect a cut-off end with finllm_audit_verify.
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_audit_seq(gen: *const finllm_generation) -> u64 {
    // SAFETY: NULL or live per the contract.
    unsafe { gen.as_ref() }
        .and_then(|g| g.guarded.as_ref())
        .map_or(0, |r| r.audit_seq)
}

/// The chain hash (64 hex digits) after the answer's audit record, owned by `gen`; "" when not
/// audited, NULL if `gen` is NULL.
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_audit_hash(gen: *const finllm_generation) -> *const c_char {
    // SAFETY: contract forwarded.
    unsafe { report_str(gen, std::ptr::null_mut(), |r| &r.audit_hash) }
}

/// Input drift after this request's prompt. Returns false (and leaves the out-pointers alone)
/// when the guard does not monitor drift, for an unguarded generation, or if `gen` is NULL;
/// otherwise stores the KL divergence D(recent || reference) in nats (NaN until both windows
/// hold tokens) and whether it reached the threshold.
///
/// # Safety
/// `gen` NULL or live; the out-pointers NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_drift(
    gen: *const finllm_generation,
    kl_divergence: *mut f64,
    drifting: *mut bool,
) -> bool {
    // SAFETY: NULL or live per the contract.
    let Some((kl, is_drifting)) = unsafe { gen.as_ref() }.and_then(|g| g.guarded.as_ref()?.drift) else {
        return false;
    };
    // SAFETY: NULL or writable per the contract.
    if let Some(k) = unsafe { kl_divergence.as_mut() } {
        *k = kl;
    }
    if let Some(d) = unsafe { drifting.as_mut() } {
        *d = is_drifting;
    }
    true
}

/// Free a generation result. NULL is allowed.
///
/// # Safety
/// `gen` NULL or a result not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_free(gen: *mut finllm_generation) {
    if !gen.is_null() {
        // SAFETY: came from Box::into_raw, freed once per the contract.
        drop(unsafe { Box::from_raw(gen) });
    }
}

// ------------------------------------------------------------------------------------------
// Cancellation
// ------------------------------------------------------------------------------------------

/// A new, untriggered cancel handle; free it with finllm_cancel_free.
#[no_mangle]
pub extern "C" fn finllm_cancel_new() -> *mut finllm_cancel {
    Box::into_raw(Box::new(finllm_cancel {
        flag: AtomicBool::new(false),
    }))
}

/// Ask every generation using `cancel` to stop after its current token. Any thread. NULL is
/// ignored.
///
/// # Safety
/// `cancel` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_cancel_trigger(cancel: *const finllm_cancel) {
    // SAFETY: NULL or live per the contract.
    if let Some(c) = unsafe { cancel.as_ref() } {
        c.flag.store(true, Ordering::Release);
    }
}

/// Untrigger `cancel` so it can be reused. NULL is ignored.
///
/// # Safety
/// `cancel` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_cancel_reset(cancel: *const finllm_cancel) {
    // SAFETY: NULL or live per the contract.
    if let Some(c) = unsafe { cancel.as_ref() } {
        c.flag.store(false, Ordering::Release);
    }
}

/// Free a cancel handle. NULL is allowed. No generation may still be using it.
///
/// # Safety
/// `cancel` NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_cancel_free(cancel: *mut finllm_cancel) {
    if !cancel.is_null() {
        // SAFETY: came from Box::into_raw, freed once per the contract.
        drop(unsafe { Box::from_raw(cancel) });
    }
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
        unsafe { put(out, Box::into_raw(Box::new(finllm_guard { inner })), "out") }
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

/// Default request options: a made-up request id, an empty caller id, no adapter, no sources.
#[no_mangle]
pub extern "C" fn finllm_request_default_params() -> finllm_request_params {
    finllm_request_params {
        struct_size: std::mem::size_of::<finllm_request_params>() as u32,
        request_id: std::ptr::null(),
        caller_id: std::ptr::null(),
        adapter: std::ptr::null(),
        source_ids: std::ptr::null(),
        n_source_ids: 0,
    }
}

/// # Safety
/// `p` NULL or valid, with its strings NULL or NUL-terminated and `source_ids` valid for
/// `n_source_ids` strings.
unsafe fn request_info(p: *const finllm_request_params) -> Result<RequestInfo, Failure> {
    // SAFETY: NULL or valid per the contract.
    let p = match unsafe { p.as_ref() } {
        None => finllm_request_default_params(),
        Some(p) => {
            check_size(
                p.struct_size,
                std::mem::size_of::<finllm_request_params>(),
                "finllm_request_params",
            )?;
            *p
        }
    };
    Ok(RequestInfo {
        request_id: unsafe { opt_c_str(p.request_id, "request_id") }?
            .unwrap_or_default()
            .to_string(),
        caller_id: unsafe { opt_c_str(p.caller_id, "caller_id") }?
            .unwrap_or_default()
            .to_string(),
        adapter: unsafe { opt_c_str(p.adapter, "adapter") }?.map(str::to_string),
        source_ids: unsafe { c_str_array(p.source_ids, p.n_source_ids, "source_ids") }?,
    })
}

/// finllm_generate through a guard: the prompt is masked before the model sees it, the output
/// is filtered by the guard's policy (a blocked phrase never reaches `callback`; the answer
/// then finishes as BLOCKED), and the answer's audit record is durable before the last token
/// is passed to `callback` and before this returns. `callback`, `user_data` and `cancel` work
/// as in finllm_generate. `request` may be NULL for defaults. On success `*out` receives a
/// result to free with finllm_generation_free; read what the guard did with
/// finllm_generation_request_id, _masked_prompt, _verdict, _audit_seq and _audit_hash.
///
/// Audit records: with no `callback` and no `cancel` one complete record, durable before this
/// returns. With either, the request streams: an "opened" record (request, caller, model hash,
/// masked prompt, sampling) is durable before the first token reaches `callback`, and the
/// closing record (output, decisions, finish reason) before the last one.
///
/// Fail-closed: if a record cannot be written the call fails (FINLLM_ERROR_AUDIT or
/// FINLLM_ERROR_AUDIT_POISONED) and no result is returned; `callback` sees no token if the opened
/// record failed, and never the last piece if the closing one did.
///
/// # Safety
/// As finllm_generate; `guard` live; `request` NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn finllm_generate_guarded(
    guard: *const finllm_guard,
    model: *const finllm_model,
    prompt: *const c_char,
    params: *const finllm_generate_params,
    request: *const finllm_request_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: *const finllm_cancel,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    // `guard` the parameter shadows the panic boundary here, hence the path.
    crate::guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let guard = unsafe { require(guard, "guard") }?;
        let model = unsafe { require(model, "model") }?;
        let prompt = unsafe { c_str(prompt, "prompt") }?;
        let params = unsafe { generate_params(params) }?;
        let request = unsafe { request_info(request) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        // Without a callback or cancel handle nothing streams: one complete audit record, as
        // Guard::generate writes; otherwise an opened and a closing one, as Guard::generate_with.
        let result = if callback.is_none() && cancel.is_null() {
            guard.inner.generate(&model.inner, prompt, &params, &request)?
        } else {
            let sink = token_sink(callback, user_data, unsafe { cancel.as_ref() });
            guard
                .inner
                .generate_with(&model.inner, prompt, &params, &request, sink)?
        };
        unsafe { put(out, guarded_handle(result), "out") }
    })
}

/// finllm_chat through a guard: every message is masked with one vault (so <ID_1> means the
/// same value in every turn); otherwise as finllm_generate_guarded.
///
/// # Safety
/// As finllm_generate_guarded; `messages` valid for `n_messages` reads, each with
/// NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn finllm_chat_guarded(
    guard: *const finllm_guard,
    model: *const finllm_model,
    messages: *const finllm_chat_message,
    n_messages: usize,
    params: *const finllm_generate_params,
    request: *const finllm_request_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: *const finllm_cancel,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    // `guard` the parameter shadows the panic boundary here, hence the path.
    crate::guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let guard = unsafe { require(guard, "guard") }?;
        let model = unsafe { require(model, "model") }?;
        let msgs = unsafe { chat_messages(messages, n_messages) }?;
        let params = unsafe { generate_params(params) }?;
        let request = unsafe { request_info(request) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let result = if callback.is_none() && cancel.is_null() {
            guard.inner.chat(&model.inner, &msgs, &params, &request)?
        } else {
            let sink = token_sink(callback, user_data, unsafe { cancel.as_ref() });
            guard.inner.chat_with(&model.inner, &msgs, &params, &request, sink)?
        };
        unsafe { put(out, guarded_handle(result), "out") }
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_constants_match_cargo_toml() {
        assert_eq!(FINLLM_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
        assert_eq!(FINLLM_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
        assert_eq!(FINLLM_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
        // SAFETY: static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(finllm_version()) }.to_str().unwrap();
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn status_names_cover_every_code() {
        for code in 0..=17 {
            // SAFETY: static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(finllm_status_name(code)) }.to_str().unwrap();
            assert!(
                name.starts_with("FINLLM_") && !name.contains("UNKNOWN"),
                "{code}: {name}"
            );
        }
        let unknown = unsafe { CStr::from_ptr(finllm_status_name(999)) }.to_str().unwrap();
        assert_eq!(unknown, "FINLLM_ERROR_UNKNOWN_STATUS");
    }

    #[test]
    fn compliance_errors_have_their_own_codes() {
        let cases = [
            (
                Error::Policy {
                    origin: "pack.toml".into(),
                    reason: "bad rule".into(),
                },
                FINLLM_ERROR_POLICY,
            ),
            (
                Error::Audit {
                    path: "audit.log".into(),
                    reason: "no such audit log".into(),
                },
                FINLLM_ERROR_AUDIT,
            ),
            (
                Error::AuditPoisoned {
                    path: "audit.log".into(),
                    cause: "fsync failed".into(),
                },
                FINLLM_ERROR_AUDIT_POISONED,
            ),
        ];
        for (error, want) in cases {
            let Failure(got, msg) = error.into();
            assert_eq!(got, want, "{msg}");
            assert!(msg.contains("audit.log") || msg.contains("pack.toml"), "{msg}");
        }
    }

    #[test]
    fn panics_become_status_codes() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, FINLLM_ERROR_PANIC);
        let mut buf = [0 as c_char; 64];
        // SAFETY: buf is 64 bytes.
        let n = unsafe { finllm_last_error_message(buf.as_mut_ptr(), buf.len()) };
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(n, msg.len() + 1);
    }
}
