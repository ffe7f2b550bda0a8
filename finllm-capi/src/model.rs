//! Models: loading, freeing, sizes and tokenization.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use finllm_core::{DeviceSpec, LoadOptions, Model};

use crate::boundary::{c_str, check_size, copy_out, fail, guard, opt_c_str, put, require, Failure};
use crate::status::finllm_status::{self, *};

/// A loaded model. Thread safety: one handle may be used by any number of threads at once
/// (each call keeps its own state); it must not be freed while a call is using it.
pub struct finllm_model {
    pub(crate) inner: Arc<Model>,
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
