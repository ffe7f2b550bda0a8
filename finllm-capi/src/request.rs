//! Requests from C: one request struct for every kind of prompt (text, chat, token ids), with or
//! without a guard, run on a model (finllm_generate) or an engine (finllm_engine_generate,
//! finllm_engine_submit). Only conversion lives here; requests go through
//! `finllm_core::request`, the path every surface shares.

use std::ffi::{c_char, c_void};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use finllm_core::engine::CancelHandle;
use finllm_core::rag::{Answer, AskOptions, Grounded};
use finllm_core::{Executor, Prompt, Request, RequestInfo, Response, ResponseStream};

use crate::boundary::{c_str_array, check_size, fail, guard, opt_c_str, put, require, Failure};
use crate::cancel::finllm_cancel;
use crate::compliance::finllm_guard;
use crate::engine::finllm_engine;
use crate::generate::{
    chat_messages, finllm_chat_message, finllm_generate_params, finllm_generation, finllm_token_callback,
    generate_params, response_handle, token_sink,
};
use crate::model::finllm_model;
use crate::status::finllm_status::{self, *};

/// One request, for finllm_generate, finllm_engine_generate and finllm_engine_submit. Get
/// defaults from finllm_request_default_params(). Give exactly one prompt: `prompt`, `messages`
/// or `ids`. Everything is copied during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_request_params {
    /// sizeof(finllm_request_params) as the caller compiled it.
    pub struct_size: u32,
    /// Raw prompt text (NUL-terminated UTF-8, special tokens parsed, no chat template), or NULL.
    pub prompt: *const c_char,
    /// A conversation rendered with the model's chat template, or NULL.
    pub messages: *const finllm_chat_message,
    pub n_messages: usize,
    /// Prompt token ids, or NULL (refused with a guard that masks personal data: ids cannot be
    /// screened).
    pub ids: *const u32,
    pub n_ids: usize,
    /// Generation options, or NULL for the defaults.
    pub generate: *const finllm_generate_params,
    /// Compliance guard, or NULL for none. With a guard the prompt is masked before the model
    /// sees it, the output is filtered by the guard's policy (a blocked phrase never reaches the
    /// caller; the answer then finishes as BLOCKED), and the request is recorded in the guard's
    /// audit log, failing closed (see finllm_generate).
    pub guard: *const finllm_guard,
    /// Unique id of the request for the audit record, or NULL (or "") to have one made up.
    pub request_id: *const c_char,
    /// The authenticated caller (user, service or desk) on whose behalf the model runs, or NULL.
    pub caller_id: *const c_char,
    /// Fine-tuning adapter in use, or NULL.
    pub adapter: *const c_char,
    /// Array of n_source_ids ids of documents retrieved into the prompt (may be NULL when
    /// n_source_ids is 0).
    pub source_ids: *const *const c_char,
    pub n_source_ids: usize,
    /// Milliseconds allowed from submission to the last token (0: no deadline); past it the
    /// request ends with FINLLM_ERROR_DEADLINE_EXCEEDED.
    pub deadline_ms: u64,
    /// Engine only: milliseconds to wait for room when the queue is full (0: FINLLM_ERROR_BUSY
    /// at once).
    pub wait_ms: u64,
    /// Ground the answer in retrieved passages, or NULL. Then `prompt` is the question: the
    /// retriever's passages (those the `retrieval` filter admits) go into the prompt as numbered
    /// sources with the model's chat template, their ids into the audit record, and the answer's
    /// sources come back with finllm_generation_citation. Not with finllm_engine_submit.
    pub retriever: *const crate::rag::finllm_retriever,
    /// How many passages, how they are ranked and what the caller may see (its `text` is
    /// ignored), or NULL for 4 passages, hybrid, unrestricted.
    pub retrieval: *const crate::rag::finllm_query,
    /// Most prompt tokens the sources may take (0: 1024).
    pub context_tokens: u32,
}

/// A request submitted to an engine: pull its tokens with finllm_request_next, or wait for the
/// whole answer with finllm_request_wait. Thread safety: finllm_request_cancel may be called
/// from any thread at any time; the other calls on one request must not run at the same time.
/// finllm_request_free cancels a request that has not ended.
pub struct finllm_request {
    /// None once finllm_request_wait has taken the answer.
    stream: Mutex<Option<ResponseStream<'static>>>,
    cancel: Option<CancelHandle>,
    /// The text of the last event, NUL-terminated, valid until the next call.
    text: Mutex<Vec<u8>>,
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

/// Default request options: no prompt yet, default generation, no guard, a made-up request id,
/// no deadline, no wait.
#[no_mangle]
pub extern "C" fn finllm_request_default_params() -> finllm_request_params {
    finllm_request_params {
        struct_size: std::mem::size_of::<finllm_request_params>() as u32,
        prompt: std::ptr::null(),
        messages: std::ptr::null(),
        n_messages: 0,
        ids: std::ptr::null(),
        n_ids: 0,
        generate: std::ptr::null(),
        guard: std::ptr::null(),
        request_id: std::ptr::null(),
        caller_id: std::ptr::null(),
        adapter: std::ptr::null(),
        source_ids: std::ptr::null(),
        n_source_ids: 0,
        deadline_ms: 0,
        wait_ms: 0,
        retriever: std::ptr::null(),
        retrieval: std::ptr::null(),
        context_tokens: 0,
    }
}

/// A request from C: plain, or a question to ground in a retriever's passages.
enum Built<'a> {
    Plain(Request),
    Grounded {
        retriever: &'a crate::rag::finllm_retriever,
        question: String,
        options: AskOptions,
    },
}

/// The C request as the core's, with its retrieval if it has one.
///
/// # Safety
/// `p`'s pointers NULL or valid as documented on finllm_request_params.
unsafe fn built<'a>(p: *const finllm_request_params) -> Result<Built<'a>, Failure> {
    // SAFETY: contracts forwarded.
    let request = unsafe { self::request(p) }?;
    let p = unsafe { &*p };
    // SAFETY: NULL or live per the contract.
    let Some(retriever) = (unsafe { p.retriever.as_ref() }) else {
        return Ok(Built::Plain(request));
    };
    let Prompt::Text(question) = request.prompt else {
        return fail(
            FINLLM_ERROR_INVALID_ARGUMENT,
            "a request with a retriever takes its question as prompt (not messages or ids)",
        );
    };
    let mut options = AskOptions {
        params: request.params,
        guard: request.guard,
        info: request.info,
        deadline: request.deadline,
        queue_wait: request.queue_wait,
        ..Default::default()
    };
    if p.context_tokens > 0 {
        options.context_tokens = p.context_tokens as usize;
    }
    // SAFETY: NULL or valid per the contract.
    if let Some(q) = unsafe { p.retrieval.as_ref() } {
        let q = unsafe { crate::rag::query(q, Some(&question)) }?;
        options.k = q.k;
        options.mode = q.mode;
        options.filter = q.filter;
    }
    Ok(Built::Grounded {
        retriever,
        question,
        options,
    })
}

/// Build the core request from C options; also the engine's queue wait.
///
/// # Safety
/// `p`'s pointers NULL or valid as documented on finllm_request_params.
unsafe fn request(p: *const finllm_request_params) -> Result<Request, Failure> {
    // SAFETY: contracts forwarded.
    let p = unsafe { require(p, "request") }?;
    check_size(
        p.struct_size,
        std::mem::size_of::<finllm_request_params>(),
        "finllm_request_params",
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
    let info = RequestInfo {
        request_id: unsafe { opt_c_str(p.request_id, "request_id") }?
            .unwrap_or_default()
            .to_string(),
        caller_id: unsafe { opt_c_str(p.caller_id, "caller_id") }?
            .unwrap_or_default()
            .to_string(),
        adapter: unsafe { opt_c_str(p.adapter, "adapter") }?.map(str::to_string),
        source_ids: unsafe { c_str_array(p.source_ids, p.n_source_ids, "source_ids") }?,
    };
    let request = Request {
        prompt,
        params: unsafe { generate_params(p.generate) }?,
        deadline: (p.deadline_ms > 0).then(|| Duration::from_millis(p.deadline_ms)),
        // SAFETY: NULL or live per the contract.
        guard: unsafe { p.guard.as_ref() }.map(|g| g.inner.clone()),
        info,
        queue_wait: (p.wait_ms > 0).then(|| Duration::from_millis(p.wait_ms)),
    };
    Ok(request)
}

/// Run a request to its end on `on`: as a whole without callback and cancel handle, streamed
/// otherwise. On an engine the cancel handle is also watched while the request waits in the
/// queue.
fn run(
    on: Executor<'_>,
    request: Request,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: Option<&finllm_cancel>,
) -> Result<Response, Failure> {
    if callback.is_none() && cancel.is_none() {
        return Ok(request.run(on)?);
    }
    let mut sink = token_sink(callback, user_data, cancel);
    let engine = match on {
        Executor::Model(_) => return Ok(request.run_streaming(on, sink)?),
        Executor::Engine(engine) => engine,
    };
    let mut stream = request.submit(engine)?;
    let triggered = || cancel.is_some_and(|c| c.flag.load(Ordering::Acquire));
    loop {
        if triggered() {
            stream.cancel();
        }
        match stream.next_timeout(CANCEL_POLL) {
            Ok(Some(event)) => {
                if sink(&event).is_break() && event.finish.is_none() {
                    stream.cancel();
                }
            }
            Ok(None) => break,
            Err(None) => {}
            Err(Some(e)) => return Err(e.into()),
        }
    }
    Ok(stream.wait()?)
}

/// How often a request waiting on an engine looks at its cancel handle.
const CANCEL_POLL: Duration = Duration::from_millis(10);

/// Run one request on `model` on the calling thread and return its answer: a continuation of
/// raw text, an answer to a conversation, or a continuation of token ids, with or without a
/// guard. `callback` (may be NULL) is called with each piece of text; a non-zero return, or a
/// triggered `cancel` handle (may be NULL), stops the request, which then succeeds with finish
/// reason CANCELLED. On success `*out` receives a result to free with finllm_generation_free;
/// for a guarded request read what the guard did with finllm_generation_request_id,
/// _masked_prompt, _verdict, _audit_seq and _audit_hash.
///
/// Audit records of a guarded request: with no `callback` and no `cancel`, one complete record,
/// durable before this returns. With either, the request streams: an "opened" record (request,
/// caller, model hash, masked prompt, sampling) is durable before the first token reaches
/// `callback`, and the closing record (output, decisions, finish reason) before the last one.
/// Fail-closed: if a record cannot be written the call fails (FINLLM_ERROR_AUDIT or
/// FINLLM_ERROR_AUDIT_POISONED) and no result is returned; `callback` sees no token if the
/// opened record failed, and never the last piece if the closing one did.
///
/// # Safety
/// `model` live; `request` valid as documented on finllm_request_params; `cancel` NULL or live;
/// `out` writable. `user_data` is passed to `callback` untouched.
#[no_mangle]
pub unsafe extern "C" fn finllm_generate(
    model: *const finllm_model,
    request: *const finllm_request_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: *const finllm_cancel,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let model = unsafe { require(model, "model") }?;
        unsafe { generate_on(Executor::Model(&model.inner), request, callback, user_data, cancel, out) }
    })
}

/// finllm_generate through an engine's continuous batch (from any thread): the request joins
/// the running batch and gets exactly the tokens it would get alone.
///
/// # Safety
/// As finllm_generate, with `engine` live instead of `model`.
#[no_mangle]
pub unsafe extern "C" fn finllm_engine_generate(
    engine: *const finllm_engine,
    request: *const finllm_request_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: *const finllm_cancel,
    out: *mut *mut finllm_generation,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let engine = unsafe { require(engine, "engine") }?;
        unsafe {
            generate_on(
                Executor::Engine(&engine.inner),
                request,
                callback,
                user_data,
                cancel,
                out,
            )
        }
    })
}

/// The body of finllm_generate and finllm_engine_generate once the executor is known.
///
/// # Safety
/// As finllm_generate.
unsafe fn generate_on(
    on: Executor<'_>,
    request: *const finllm_request_params,
    callback: finllm_token_callback,
    user_data: *mut c_void,
    cancel: *const finllm_cancel,
    out: *mut *mut finllm_generation,
) -> Result<(), Failure> {
    // SAFETY: contracts forwarded from the callers' documentation.
    let built = unsafe { built(request) }?;
    if out.is_null() {
        return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
    }
    let cancel = unsafe { cancel.as_ref() };
    let handle = match built {
        Built::Plain(request) => response_handle(run(on, request, callback, user_data, cancel)?),
        Built::Grounded {
            retriever,
            question,
            options,
        } => {
            let grounded = Grounded::new(on, crate::rag::retriever(retriever), &question, &options)?;
            let (request, sources) = grounded.into_parts();
            let answer = Answer::from_sources(run(on, request, callback, user_data, cancel)?, sources);
            let handle = response_handle(answer.response);
            // SAFETY: just made by response_handle, not shared yet.
            unsafe { (*handle).citations = crate::rag::citations(answer.citations) };
            handle
        }
    };
    unsafe { put(out, handle, "out") }
}

/// Queue a request on `engine` and get its handle at once (free it with finllm_request_free). A
/// full queue is FINLLM_ERROR_BUSY (after waiting up to wait_ms); a request that can never run
/// on this engine is FINLLM_ERROR_REQUEST_TOO_LARGE (or another typed error) here. A guarded
/// request streams under its audit record: the opened record is durable before this returns.
///
/// # Safety
/// `engine` live; `request` valid as documented on finllm_request_params; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_engine_submit(
    engine: *const finllm_engine,
    request: *const finllm_request_params,
    out: *mut *mut finllm_request,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let engine = unsafe { require(engine, "engine") }?;
        let Built::Plain(request) = unsafe { built(request) }? else {
            return fail(
                FINLLM_ERROR_INVALID_ARGUMENT,
                "a request with a retriever runs with finllm_engine_generate, not finllm_engine_submit",
            );
        };
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let stream = request.submit(&engine.inner)?;
        let handle = finllm_request {
            cancel: stream.cancel_handle(),
            stream: Mutex::new(Some(stream)),
            text: Mutex::new(vec![0]),
        };
        unsafe { put(out, Box::into_raw(Box::new(handle)), "out") }
    })
}

/// The event of an ended request.
const DONE: finllm_token_event = finllm_token_event {
    done: 1,
    token_id: 0,
    text: c"".as_ptr(),
    text_len: 0,
};

fn answer_taken() -> Failure {
    Failure(FINLLM_ERROR_ENGINE, "the request's answer was already taken".into())
}

/// Wait for the request's next token and describe it in `*event` (its text is owned by the
/// request until the next call). When the request has ended (also after finllm_request_wait),
/// `event->done` is 1. A failed
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
        let mut slot = r.stream.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stream) = slot.as_mut() else {
            // finllm_request_wait read it to its end: it stays ended.
            return unsafe { put(event, DONE, "event") };
        };
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
            None => DONE,
        };
        unsafe { put(event, value, "event") }
    })
}

/// Read the request to its end and return the whole answer (what was not yet pulled with
/// finllm_request_next is included in the text; the ids are those of the released text, cut
/// where a policy block or a cancellation stopped it). Once per request; after a failed
/// finllm_request_next it fails too (FINLLM_ERROR_ENGINE, naming the earlier error).
/// Free the result with finllm_generation_free; the request handle still needs
/// finllm_request_free.
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
        let stream = r
            .stream
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(answer_taken)?;
        let response = stream.wait()?;
        unsafe { put(out, response_handle(response), "out") }
    })
}

fn catch(f: impl FnOnce()) -> std::thread::Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
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
        let _ = catch(|| r.cancel.iter().for_each(CancelHandle::cancel));
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
