//! Sentence embeddings (the RAG layer's embedder).

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use finllm_core::rag::Embedder;

use crate::boundary::{c_str, c_str_array, fail, guard, put, require, Failure};
use crate::status::finllm_status::{self, *};

/// A loaded sentence embedder. Thread safety: one handle may be used by any number of threads
/// at once; it must not be freed while a call is using it.
pub struct finllm_embedder {
    inner: Arc<Embedder>,
}

/// Load a sentence-transformers directory (config.json, model.safetensors, tokenizer.json),
/// computing on `threads` threads (0: one per core). On success `*out` receives a handle to
/// free with finllm_embedder_free.
///
/// # Safety
/// `path` must be a NUL-terminated string; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn finllm_embedder_load(
    path: *const c_char,
    threads: u32,
    out: *mut *mut finllm_embedder,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let path = unsafe { c_str(path, "path") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let embedder = Embedder::load(path, (threads > 0).then_some(threads as usize))?;
        let handle = Box::into_raw(Box::new(finllm_embedder {
            inner: Arc::new(embedder),
        }));
        unsafe { put(out, handle, "out") }
    })
}

/// Free an embedder. NULL is allowed. No call may be using it.
///
/// # Safety
/// `embedder` must be NULL or a handle from finllm_embedder_load not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_embedder_free(embedder: *mut finllm_embedder) {
    if !embedder.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(embedder) })));
    }
}

/// Length of every embedding (0 if `embedder` is NULL).
///
/// # Safety
/// `embedder` must be NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn finllm_embedder_dim(embedder: *const finllm_embedder) -> u32 {
    // SAFETY: NULL or live per the contract.
    unsafe { embedder.as_ref() }.map_or(0, |e| u32::try_from(e.inner.dim()).unwrap_or(u32::MAX))
}

/// Embed `n_texts` NUL-terminated UTF-8 texts into `out`: `n_texts * dim` floats, row i the
/// embedding of text i. `out_len` is the capacity of `out` in floats; if it is smaller than
/// `n_texts * dim` the call fails with FINLLM_ERROR_INVALID_ARGUMENT before computing anything.
///
/// # Safety
/// `embedder` live; `texts` valid for `n_texts` pointers to NUL-terminated strings; `out`
/// valid for writes of `out_len` floats.
#[no_mangle]
pub unsafe extern "C" fn finllm_embedder_embed(
    embedder: *const finllm_embedder,
    texts: *const *const c_char,
    n_texts: usize,
    out: *mut f32,
    out_len: usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let e = unsafe { require(embedder, "embedder") }?;
        let dim = e.inner.dim();
        let needed = n_texts.checked_mul(dim).filter(|&n| n <= out_len).ok_or_else(|| {
            Failure(
                FINLLM_ERROR_INVALID_ARGUMENT,
                format!("out holds {out_len} floats; {n_texts} texts need {n_texts} x {dim}"),
            )
        })?;
        if needed > 0 && out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let texts = unsafe { c_str_array(texts, n_texts, "texts") }?;
        let vectors = e.inner.embed(&texts)?;
        // SAFETY: out is valid for out_len >= needed floats per the contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(out, needed) };
        for (row, v) in dst.chunks_exact_mut(dim.max(1)).zip(&vectors) {
            row.copy_from_slice(v);
        }
        Ok(())
    })
}
