//! The engine from C: one model served to many threads through one continuous batch. Only
//! conversion lives here; requests go through `finllm_core::engine`.

use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use std::time::Duration;

use finllm_core::engine::{self as eng, CancelHandle, Engine, EngineConfig, KvBudget, Prompt, RequestStream};

use crate::boundary::{check_size, copy_out, fail, guard, opt_c_str, put, require, Failure};
use crate::generate::{
    chat_messages, finllm_chat_message, finllm_generate_params, finllm_generation, finllm_token_callback,
    generate_params, into_handle,
};
use crate::model::finllm_model;
use crate::status::finllm_status::{self, *};

/// Many requests, one model: a scheduler thread runs every submitted request in one batch
/// (continuous batching), within a KV-cache budget and a bounded queue. Thread safety: fully
/// thread-safe; free it only when no call is using it (requests already submitted keep running
/// and stay valid after the engine is freed).
pub struct finllm_engine {
    inner: Engine,
}

/// A submitted request: pull its tokens with finllm_request_next, or wait for the whole answer
/// with finllm_request_wait. Thread safety: finllm_request_cancel may be called from any
/// thread at any time; the other calls on one request must not run at the same time.
/// finllm_request_free cancels a request that has not ended.
pub struct finllm_request {
    stream: Mutex<RequestStream>,
    cancel: CancelHandle,
    /// The text of the last event, NUL-terminated, valid until the next call.
    text: Mutex<Vec<u8>>,
}

/// Options for finllm_engine_new. Get defaults from finllm_engine_default_params().
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_engine_params {
    /// sizeof(finllm_engine_params) as the caller compiled it.
    pub struct_size: u32,
    /// Most requests in the running batch at once.
    pub max_running: u32,
    /// Most tokens one forward step runs (a decode token per running request plus prompt
    /// chunks); at least max_running.
    pub step_tokens: u32,
    /// KV cache of all running requests together, in positions; 0 to use kv_budget_bytes.
    pub kv_budget_tokens: u64,
    /// The same budget in bytes of f16 keys and values (used when kv_budget_tokens is 0).
    pub kv_budget_bytes: u64,
    /// Most requests waiting to start.
    pub queue_requests: u32,
    /// Most prompt tokens waiting to start, summed over the queue.
    pub queue_tokens: u64,
    /// Share prompt beginnings of at least this many tokens between requests (prefilled once,
    /// read by all that start with them); 0 turns sharing off.
    pub prefix_min_tokens: u32,
    /// Most shared prefixes kept while no request reads them.
    pub prefix_max_entries: u32,
}

/// One request for finllm_engine_submit / finllm_engine_generate. Get defaults from
/// finllm_submit_default_params(). Give exactly one prompt: `prompt`, `messages` or `ids`.
/// Everything is copied during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_submit_params {
    /// sizeof(finllm_submit_params) as the caller compiled it.
    pub struct_size: u32,
    /// Raw prompt text (NUL-terminated UTF-8), or NULL.
    pub prompt: *const c_char,
    /// A conversation rendered with the model's chat template, or NULL.
    pub messages: *const finllm_chat_message,
    pub n_messages: usize,
    /// Prompt token ids, or NULL.
    pub ids: *const u32,
    pub n_ids: usize,
    /// Generation options, or NULL for the defaults.
    pub generate: *const finllm_generate_params,
    /// Milliseconds allowed from submission to the last token (0: no deadline); past it the
    /// request ends with FINLLM_ERROR_DEADLINE_EXCEEDED.
    pub deadline_ms: u64,
    /// Milliseconds to wait for room when the queue is full (0: FINLLM_ERROR_BUSY at once).
    pub wait_ms: u64,
}

/// One streamed step of a request, filled by finllm_request_next.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_token_event {
    /// 1 when the request has ended (nothing else is set); 0 for a token.
    pub done: i32,
    /// The generated token.
    pub token_id: u32,
    /// Text released by this step (NUL-terminated UTF-8, possibly empty), owned by the request
    /// and valid until the next call on it.
    pub text: *const c_char,
    pub text_len: usize,
}

/// Default engine options: 16 running requests, 128 tokens per step, a 1 GiB KV budget, a
/// queue of 256 requests and 1 Mi prompt tokens, shared prefixes of 32 tokens or more (up to
/// 16 kept idle).
#[no_mangle]
pub extern "C" fn finllm_engine_default_params() -> finllm_engine_params {
    let d = EngineConfig::default();
    let (tokens, bytes) = match d.kv_budget {
        KvBudget::Tokens(t) => (t as u64, 0),
        KvBudget::Bytes(b) => (0, b),
    };
    finllm_engine_params {
        struct_size: std::mem::size_of::<finllm_engine_params>() as u32,
        max_running: d.max_running as u32,
        step_tokens: d.step_tokens as u32,
        kv_budget_tokens: tokens,
        kv_budget_bytes: bytes,
        queue_requests: d.queue_requests as u32,
        queue_tokens: d.queue_tokens as u64,
        prefix_min_tokens: d.prefix_min_tokens as u32,
        prefix_max_entries: d.prefix_max_entries as u32,
    }
}

/// Default request options: no prompt yet, default generation, no deadline, no wait.
#[no_mangle]
pub extern "C" fn finllm_submit_default_params() -> finllm_submit_params {
    finllm_submit_params {
        struct_size: std::mem::size_of::<finllm_submit_params>() as u32,
        prompt: std::ptr::null(),
        messages: std::ptr::null(),
        n_messages: 0,
        ids: std::ptr::null(),
        n_ids: 0,
        generate: std::ptr::null(),
        deadline_ms: 0,
        wait_ms: 0,
    }
}

fn usize_of(v: u64, name: &str) -> Result<usize, Failure> {
    usize::try_from(v).or_else(|_| fail(FINLLM_ERROR_INVALID_ARGUMENT, format!("{name} is too large")))
}

/// Start an engine serving `model` (which must outlive the engine). `params` NULL for the
/// defaults.
///
/// # Safety
/// `model` live; `params` NULL or valid for its struct_size bytes; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_engine_new(
    model: *const finllm_model,
    params: *const finllm_engine_params,
    out: *mut *mut finllm_engine,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let model = unsafe { require(model, "model") }?;
        let p = match unsafe { params.as_ref() } {
            Some(p) => {
                check_size(
                    p.struct_size,
                    std::mem::size_of::<finllm_engine_params>(),
                    "finllm_engine_params",
                )?;
                *p
            }
            None => finllm_engine_default_params(),
        };
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let config = EngineConfig {
            max_running: p.max_running as usize,
            step_tokens: p.step_tokens as usize,
            kv_budget: if p.kv_budget_tokens > 0 {
                KvBudget::Tokens(usize_of(p.kv_budget_tokens, "kv_budget_tokens")?)
            } else {
                KvBudget::Bytes(p.kv_budget_bytes)
            },
            queue_requests: p.queue_requests as usize,
            queue_tokens: usize_of(p.queue_tokens, "queue_tokens")?,
            prefix_min_tokens: p.prefix_min_tokens as usize,
            prefix_max_entries: p.prefix_max_entries as usize,
        };
        let engine = Engine::new(model.inner.clone(), config)?;
        unsafe { put(out, Box::into_raw(Box::new(finllm_engine { inner: engine })), "out") }
    })
}

/// Free an engine handle (NULL is fine). Running requests finish; their handles stay valid.
///
/// # Safety
/// `engine` NULL or a live handle not used by any other call.
#[no_mangle]
pub unsafe extern "C" fn finllm_engine_free(engine: *mut finllm_engine) {
    if !engine.is_null() {
        // SAFETY: a handle from finllm_engine_new, freed once per the contract.
        let _ = catch(|| drop(unsafe { Box::from_raw(engine) }));
    }
}

fn catch(f: impl FnOnce()) -> std::thread::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
}

/// Build the core request from C options.
///
/// # Safety
/// `p`'s pointers NULL or valid as documented on finllm_submit_params.
unsafe fn request(p: *const finllm_submit_params) -> Result<(eng::Request, Option<Duration>), Failure> {
    // SAFETY: contracts forwarded.
    let p = unsafe { require(p, "params") }?;
    check_size(
        p.struct_size,
        std::mem::size_of::<finllm_submit_params>(),
        "finllm_submit_params",
    )?;
    let given = [
        !p.prompt.is_null(),
        !p.messages.is_null() || p.n_messages > 0,
        !p.ids.is_null() || p.n_ids > 0,
    ];
    if given.iter().filter(|&&g| g).count() != 1 {
        return fail(
            FINLLM_ERROR_INVALID_ARGUMENT,
            "give exactly one of prompt, messages and ids",
        );
    }
    let prompt = if let Some(text) = unsafe { opt_c_str(p.prompt, "prompt") }? {
        Prompt::Text(text.to_string())
    } else if given[1] {
        Prompt::Chat(unsafe { chat_messages(p.messages, p.n_messages) }?)
    } else {
        if p.ids.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "ids is NULL while n_ids > 0");
        }
        // SAFETY: valid for n_ids reads per the contract.
        Prompt::Ids(unsafe { std::slice::from_raw_parts(p.ids, p.n_ids) }.to_vec())
    };
    let params = unsafe { generate_params(p.generate) }?;
    let request = eng::Request {
        prompt,
        params,
        deadline: (p.deadline_ms > 0).then(|| Duration::from_millis(p.deadline_ms)),
    };
    Ok((request, (p.wait_ms > 0).then(|| Duration::from_millis(p.wait_ms))))
}

fn submit(engine: &finllm_engine, request: eng::Request, wait: Option<Duration>) -> Result<RequestStream, Failure> {
    Ok(match wait {
        Some(w) => engine.inner.submit_timeout(request, w)?,
        None => engine.inner.submit(request)?,
    })
}

/// Queue a request and get its handle at once (free it with finllm_request_free). A full
/// queue is FINLLM_ERROR_BUSY (after waiting up to wait_ms); a request that can never run on
/// this engine is FINLLM_ERROR_REQUEST_TOO_LARGE (or another typed error) here.
///
/// # Safety
/// `engine` live; `params` valid as documented on finllm_submit_params; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_engine_submit(
    engine: *const finllm_engine,
    params: *const finllm_submit_params,
    out: *mut *mut finllm_request,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let engine = unsafe { require(engine, "engine") }?;
        let (request, wait) = unsafe { request(params) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let stream = submit(engine, request, wait)?;
        let handle = finllm_request {
            cancel: stream.cancel_handle(),
            stream: Mutex::new(stream),
            text: Mutex::new(vec![0]),
        };
        unsafe { put(out, Box::into_raw(Box::new(handle)), "out") }
    })
}

/// Submit a request and wait for its whole answer, calling `callback` (may be NULL) with each
/// piece of text; a non-zero return from the callback cancels the request (the result then
/// says FINLLM_FINISH_CANCELLED). Free the result with finllm_generation_free.
///
/// # Safety
/// As finllm_engine_submit; `callback` NULL or callable with `user_data`; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_engine_generate(
    engine: *const finllm_engine,
    params: *const finllm_submit_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let engine = unsafe { require(engine, "engine") }?;
        let (request, wait) = unsafe { request(params) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let mut stream = submit(engine, request, wait)?;
        let mut sink = crate::generate::token_sink(callback, user_data, None);
        while let Some(event) = stream.next() {
            if sink(&event?).is_break() {
                stream.cancel();
            }
        }
        let gen = stream.wait()?;
        unsafe { put(out, into_handle(gen, None), "out") }
    })
}

/// Wait for the request's next token and describe it in `*event` (its text is owned by the
/// request until the next call). When the request has ended, `event->done` is 1. A failed
/// request returns its error (FINLLM_ERROR_DEADLINE_EXCEEDED, ...). `timeout_ms` 0 waits as
/// long as it takes; otherwise FINLLM_ERROR_TIMEOUT when nothing came in time (call again).
///
/// # Safety
/// `request` live, not used by another call at the same time (except cancel); `event` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_request_next(
    request: *const finllm_request,
    timeout_ms: u64,
    event: *mut finllm_token_event,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let r = unsafe { require(request, "request") }?;
        if event.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "event is NULL");
        }
        let mut stream = r.stream.lock().unwrap_or_else(|e| e.into_inner());
        let next = if timeout_ms == 0 {
            stream.next().transpose()
        } else {
            match stream.next_timeout(Duration::from_millis(timeout_ms)) {
                Ok(ev) => Ok(ev),
                Err(Some(e)) => Err(e),
                Err(None) => return fail(FINLLM_ERROR_TIMEOUT, format!("no token within {timeout_ms} ms")),
            }
        };
        let value = match next? {
            Some(ev) => {
                let mut text = r.text.lock().unwrap_or_else(|e| e.into_inner());
                text.clear();
                text.extend_from_slice(ev.text.as_bytes());
                text.push(0);
                finllm_token_event {
                    done: 0,
                    token_id: ev.id,
                    text: text.as_ptr().cast(),
                    text_len: ev.text.len(),
                }
            }
            None => finllm_token_event {
                done: 1,
                token_id: 0,
                text: c"".as_ptr(),
                text_len: 0,
            },
        };
        unsafe { put(event, value, "event") }
    })
}

/// Read the request to its end and return the whole answer (what was not yet pulled with
/// finllm_request_next is included in the text; the ids are all of them). Free the result with
/// finllm_generation_free; the request handle still needs finllm_request_free.
///
/// # Safety
/// As finllm_request_next; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_request_wait(
    request: *const finllm_request,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let r = unsafe { require(request, "request") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let mut stream = r.stream.lock().unwrap_or_else(|e| e.into_inner());
        for event in stream.by_ref() {
            event?;
        }
        let gen = stream.generation().cloned().ok_or_else(|| {
            Failure(
                FINLLM_ERROR_ENGINE,
                "the request ended without a result (it failed earlier)".into(),
            )
        })?;
        unsafe { put(out, into_handle(gen, None), "out") }
    })
}

/// Stop the request before its next step (from any thread); its cache is freed then, and
/// reading it ends with FINLLM_FINISH_CANCELLED. NULL is fine.
///
/// # Safety
/// `request` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_request_cancel(request: *const finllm_request) {
    // SAFETY: NULL or live per the contract.
    if let Some(r) = unsafe { request.as_ref() } {
        let _ = catch(|| r.cancel.cancel());
    }
}

/// Free a request handle (NULL is fine), cancelling the request if it has not ended.
///
/// # Safety
/// `request` NULL or a live handle not used by any other call.
#[no_mangle]
pub unsafe extern "C" fn finllm_request_free(request: *mut finllm_request) {
    if !request.is_null() {
        // SAFETY: a handle from finllm_engine_submit, freed once per the contract.
        let _ = catch(|| drop(unsafe { Box::from_raw(request) }));
    }
}

/// The engine's metrics in the Prometheus text exposition format (counters, gauges, and
/// latency summaries with P50/P95/P99), copied into `buf` as with the other string-out calls.
///
/// # Safety
/// `engine` live; `buf` NULL or valid for `buf_len` writes; `needed` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_engine_metrics_text(
    engine: *const finllm_engine,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let engine = unsafe { require(engine, "engine") }?;
        let text = engine.inner.metrics().prometheus_text();
        unsafe { copy_out(text.as_bytes(), buf, buf_len, needed) }
    })
}
