//! C ABI for finllm. The header `include/finllm.h` is generated from this file by cbindgen.
//!
//! Thin by design: every function converts arguments, calls `finllm-core`, and converts the
//! result. Every exported body runs inside [`guard`], a panic boundary that turns a panic into
//! `FINLLM_ERROR_PANIC`, and errors into a status code plus a per-thread message.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use finllm_core::{ChatMessage, Error, FinishReason, GenerateParams, Generation, LoadOptions, Model, SamplingParams};

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

/// A loaded model. Thread safety: one handle may be used by any number of threads at once
/// (each call keeps its own state); it must not be freed while a call is using it.
pub struct finllm_model {
    inner: Model,
}

/// The result of one generation. Thread safety: read-only after creation, shareable.
pub struct finllm_generation {
    text: Vec<u8>,
    ids: Vec<u32>,
    prompt_tokens: usize,
    finish: finllm_finish_reason,
    prefill_ms: f64,
    decode_ms: f64,
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
        let status = match &e {
            Error::Io { .. } => FINLLM_ERROR_IO,
            Error::Gguf { .. } | Error::Safetensors { .. } => FINLLM_ERROR_MODEL_FORMAT,
            Error::UnknownArchitecture { .. }
            | Error::MissingKey { .. }
            | Error::BadKey { .. }
            | Error::MissingTensor { .. }
            | Error::TensorShape { .. }
            | Error::UnsupportedTensorType { .. } => FINLLM_ERROR_UNSUPPORTED_MODEL,
            Error::Tokenizer(_) => FINLLM_ERROR_TOKENIZER,
            Error::ChatTemplate(_) => FINLLM_ERROR_CHAT_TEMPLATE,
            Error::InvalidArgument { .. } | Error::TokenOutOfRange { .. } => FINLLM_ERROR_INVALID_ARGUMENT,
            Error::ContextOverflow { .. } => FINLLM_ERROR_CONTEXT_OVERFLOW,
            Error::Backend(_) => FINLLM_ERROR_BACKEND,
            _ => FINLLM_ERROR_OTHER,
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
    }
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
        let p = match unsafe { params.as_ref() } {
            Some(p) => {
                check_size(
                    p.struct_size,
                    std::mem::size_of::<finllm_load_params>(),
                    "finllm_load_params",
                )?;
                *p
            }
            None => finllm_load_default_params(),
        };
        let tokenizer_json = if p.tokenizer_json.is_null() {
            None
        } else {
            Some(unsafe { c_str(p.tokenizer_json, "tokenizer_json") }?.into())
        };
        let opts = LoadOptions {
            threads: (p.threads > 0).then_some(p.threads as usize),
            tokenizer_json,
            progress: None,
        };
        let model = Model::load(path, &opts)?;
        let handle = Box::into_raw(Box::new(finllm_model { inner: model }));
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
    let mut stop = Vec::with_capacity(p.n_stop.min(1024));
    if p.n_stop > 0 {
        if p.stop.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "stop is NULL while n_stop > 0");
        }
        for i in 0..p.n_stop {
            // SAFETY: stop is valid for n_stop pointers per the contract.
            let s = unsafe { *p.stop.add(i) };
            stop.push(unsafe { c_str(s, "stop[i]") }?.to_string());
        }
    }
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
    })
}

/// Drive a stream with the C callback and the cancel flag.
fn run_stream(
    stream: finllm_core::TokenStream<'_>,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: Option<&finllm_cancel>,
) -> Result<Generation, Failure> {
    let mut text_buf: Vec<u8> = Vec::new();
    let gen = stream.run_with(|ev| {
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
    })?;
    Ok(gen)
}

fn into_handle(gen: Generation) -> *mut finllm_generation {
    let mut text = gen.text.into_bytes();
    text.push(0);
    Box::into_raw(Box::new(finllm_generation {
        text,
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
    }))
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
        unsafe { put(out, into_handle(gen), "out") }
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
        let params = unsafe { generate_params(params) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let cancel = unsafe { cancel.as_ref() };
        let gen = run_stream(model.inner.chat_stream(&msgs, &params)?, callback, user_data, cancel)?;
        unsafe { put(out, into_handle(gen), "out") }
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
        for code in 0..=14 {
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
