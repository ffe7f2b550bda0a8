//! Generation options, the token callback, and the result handle (including what the guard
//! did, for guarded requests). Requests themselves are in `request.rs`.

use std::ffi::{c_char, c_void};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use finllm_core::{ChatMessage, FinishReason, GenerateParams, Generation, Response, SamplingParams, TokenEvent};

use crate::boundary::{c_str, c_str_array, check_size, fail, Failure};
use crate::cancel::finllm_cancel;
use crate::compliance::{deciding_rule, finllm_verdict, verdict};
use crate::status::finllm_status::*;

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

/// The result of one generation. Thread safety: read-only after creation, shareable.
pub struct finllm_generation {
    text: Vec<u8>,
    ids: Vec<u32>,
    prompt_tokens: usize,
    finish: finllm_finish_reason,
    prefill_ms: f64,
    decode_ms: f64,
    /// What the guard did, for results of guarded requests.
    guarded: Option<GuardReport>,
    /// The sources of an answer grounded in retrieved passages.
    pub(crate) citations: Vec<crate::rag::CPassage>,
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
pub(crate) unsafe fn generate_params(p: *const finllm_generate_params) -> Result<GenerateParams, Failure> {
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
pub(crate) fn token_sink<'a>(
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

/// Copy the messages of a chat request.
///
/// # Safety
/// `messages` NULL or valid for `n_messages` reads, each with NUL-terminated strings.
pub(crate) unsafe fn chat_messages(
    messages: *const finllm_chat_message,
    n_messages: usize,
) -> Result<Vec<ChatMessage>, Failure> {
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

pub(crate) fn nul_terminated(s: String) -> Vec<u8> {
    let mut bytes = s.into_bytes();
    bytes.push(0);
    bytes
}

/// The answer to a request as a C handle, with what its guard did.
pub(crate) fn response_handle(response: Response) -> *mut finllm_generation {
    let guarded = response.guard.map(|g| GuardReport {
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
    });
    into_handle(response.generation, guarded)
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
        citations: Vec::new(),
    }))
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
