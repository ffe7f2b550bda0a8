//! The engine from C: one model served to many threads through one continuous batch. Only
//! conversion lives here; requests to it are in `request.rs`.

use std::ffi::c_char;

use finllm_core::engine::{Engine, EngineConfig, KvBudget};

use crate::boundary::{check_size, copy_out, fail, guard, put, require, Failure};
use crate::model::finllm_model;
use crate::status::finllm_status::{self, *};

/// Many requests, one model: a scheduler thread runs every submitted request in one batch
/// (continuous batching), within a KV-cache budget and a bounded queue. Thread safety: fully
/// thread-safe; free it only when no call is using it (requests already submitted keep running
/// and stay valid after the engine is freed).
pub struct finllm_engine {
    pub(crate) inner: Engine,
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
    /// Prompts with at most this many tokens left to prefill run in a step of their own, ahead
    /// of the decoding requests (their first token sooner; the decode rows wait one small
    /// step); 0 turns this off.
    pub short_prompt_tokens: u32,
}

/// Default engine options: 16 running requests, 128 tokens per step, a 1 GiB KV budget, a
/// queue of 256 requests and 1 Mi prompt tokens, shared prefixes of 32 tokens or more (up to
/// 16 kept idle), prompts of up to 32 tokens left ahead of the decode rows.
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
        short_prompt_tokens: d.short_prompt_tokens as u32,
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
            short_prompt_tokens: p.short_prompt_tokens as usize,
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
