//! Explanations: attribute a model's answer to the units of its prompt. The result is an
//! opaque finllm_attribution: ranked units (text, label, span, score) and the units × answer
//! tokens matrix, as C values; JSON and the HTML report through the caller-buffer convention.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use finllm_core::explain::{self, Attribution, ExplainOptions, Segment};
use finllm_core::{ChatMessage, Prompt};

use crate::boundary::{c_str, check_size, copy_out, fail, guard, opt_c_str, put, require, Failure};
use crate::generate::nul_terminated;
use crate::model::finllm_model;
use crate::status::finllm_status::{self, *};

/// A caller's unit: a byte range of the prompt's text explained as one (a retrieved source).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_segment {
    pub label: *const c_char,
    /// Byte offsets into the prompt's text (for a chat prompt, into the rendered conversation).
    pub start: usize,
    pub end: usize,
}

/// Options for finllm_explain. Get defaults from finllm_explain_default_params().
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_explain_params {
    /// sizeof(finllm_explain_params) as the caller compiled it.
    pub struct_size: u32,
    /// "occlusion" (default when NULL), "shapley", "surrogate", "attention", "rollout", "ig",
    /// "saliency" or "input_x_gradient".
    pub method: *const c_char,
    /// "word" (default when NULL), "token" or "sentence"; segments override it.
    pub granularity: *const c_char,
    /// The answer to explain (teacher-forced), or NULL: the model's greedy answer of
    /// max_tokens tokens, generated first.
    pub target: *const c_char,
    pub max_tokens: u32,
    /// Shapley permutations, surrogate ablations or integrated-gradients steps; 0: the
    /// method's default (8, 32, 32).
    pub samples: u32,
    /// Held-out ablations for the surrogate's linear datamodeling score.
    pub held_out: u32,
    /// Ablated prompts per batched forward call.
    pub batch: u32,
    pub seed: u64,
    /// Non-zero: the prompt is a user message, rendered with the model's chat template.
    pub chat: u8,
    /// Units given by the caller (n_segments of them), or NULL.
    pub segments: *const finllm_segment,
    pub n_segments: usize,
    /// "attention": the layer whose attention scores the units (0-based), or -1 (default): the
    /// last. Below -1 is FINLLM_ERROR_INVALID_ARGUMENT.
    pub layer: i32,
    /// A guard, or NULL. With one, the answer is a guarded request's (made under the guard,
    /// greedy, max_tokens long; `target` must be NULL), the prompt as the model saw it
    /// (personal data masked) is explained, and with an audit log the explanation is recorded
    /// after the request's record (finllm_attribution_audit_seq).
    pub guard: *const crate::compliance::finllm_guard,
    /// With a guard: the caller recorded in the audit log, or NULL.
    pub caller_id: *const c_char,
}

/// Default explanation options.
#[no_mangle]
pub extern "C" fn finllm_explain_default_params() -> finllm_explain_params {
    let d = ExplainOptions::default();
    finllm_explain_params {
        struct_size: std::mem::size_of::<finllm_explain_params>() as u32,
        method: std::ptr::null(),
        granularity: std::ptr::null(),
        target: std::ptr::null(),
        max_tokens: d.max_tokens as u32,
        samples: 0,
        held_out: d.held_out as u32,
        batch: d.batch as u32,
        seed: d.seed,
        chat: 0,
        segments: std::ptr::null(),
        n_segments: 0,
        layer: -1,
        guard: std::ptr::null(),
        caller_id: std::ptr::null(),
    }
}

/// One unit of an attribution; its strings are owned by the attribution.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_unit {
    /// Position among the units in prompt order (the matrix's row).
    pub index: usize,
    pub text: *const c_char,
    /// A segment's label, or NULL.
    pub label: *const c_char,
    /// Character range (Unicode scalar values) in the prompt's text.
    pub start: usize,
    pub end: usize,
    /// Prompt tokens the unit holds.
    pub tokens: usize,
    pub score: f64,
    /// Byte range (UTF-8) in the prompt's text.
    pub byte_start: usize,
    pub byte_end: usize,
}

/// An explanation. Immutable: any number of threads may read it at once.
pub struct finllm_attribution {
    inner: Attribution,
    /// NUL-terminated text and label per ranked unit.
    strings: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The matrix, row-major, units in prompt order.
    matrix: Vec<f64>,
    /// Attention methods: the per-layer profile, row-major `[layer][unit]`.
    attention_layers: Option<Vec<f64>>,
    /// A guarded explanation's audit record.
    audit_seq: Option<u64>,
}

/// Explain why `model` answers `prompt` as it does (see finllm_explain_params). `params` may
/// be NULL for defaults. On success `*out` receives an attribution to free with
/// finllm_attribution_free.
///
/// # Safety
/// `model` live; `prompt` NUL-terminated; `params` NULL or valid for its struct_size bytes,
/// its strings NUL-terminated and `segments` valid for n_segments reads; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_explain(
    model: *const finllm_model,
    prompt: *const c_char,
    params: *const finllm_explain_params,
    out: *mut *mut finllm_attribution,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let model = unsafe { require(model, "model") }?;
        let prompt = unsafe { c_str(prompt, "prompt") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let p = unsafe { explain_params(params) }?;
        let mut options = ExplainOptions {
            answer: unsafe { opt_c_str(p.target, "target") }?.map(str::to_string),
            max_tokens: p.max_tokens as usize,
            samples: p.samples as usize,
            held_out: p.held_out as usize,
            batch: p.batch as usize,
            seed: p.seed,
            layer: match p.layer {
                -1 => None,
                l => match usize::try_from(l) {
                    Ok(l) => Some(l),
                    Err(_) => {
                        return fail(
                            FINLLM_ERROR_INVALID_ARGUMENT,
                            format!("layer {l}: 0 or more, or -1 for the last"),
                        )
                    }
                },
            },
            ..Default::default()
        };
        if let Some(m) = unsafe { opt_c_str(p.method, "method") }? {
            options.method = m.parse()?;
        }
        if let Some(g) = unsafe { opt_c_str(p.granularity, "granularity") }? {
            options.granularity = g.parse()?;
        }
        if p.n_segments > 0 {
            if p.segments.is_null() {
                return fail(FINLLM_ERROR_NULL_POINTER, "segments is NULL");
            }
            // SAFETY: valid for n_segments reads per the contract.
            let segs = unsafe { std::slice::from_raw_parts(p.segments, p.n_segments) };
            for s in segs {
                options.segments.push(Segment {
                    label: unsafe { c_str(s.label, "segment.label") }?.to_string(),
                    start: s.start,
                    end: s.end,
                });
            }
            options.granularity = explain::Granularity::Segment;
        }
        let prompt = if p.chat != 0 {
            Prompt::Chat(vec![ChatMessage::user(prompt.to_string())])
        } else {
            Prompt::Text(prompt.to_string())
        };
        // SAFETY: NULL or live per the contract.
        let guard = unsafe { p.guard.as_ref() }.map(|g| Arc::clone(&g.inner));
        let info = finllm_core::RequestInfo {
            caller_id: unsafe { opt_c_str(p.caller_id, "caller_id") }?
                .unwrap_or_default()
                .to_string(),
            ..Default::default()
        };
        let (a, seq) = explain::explain_for(&*model.inner, prompt, guard, info, &options)?;
        let handle = attribution(a, seq);
        let handle = Box::into_raw(Box::new(handle));
        unsafe { put(out, handle, "out") }
    })
}

fn attribution(inner: Attribution, audit_seq: Option<u64>) -> finllm_attribution {
    let strings = inner
        .units
        .iter()
        .map(|u| (nul_terminated(u.text.clone()), u.label.clone().map(nul_terminated)))
        .collect();
    let matrix = inner.matrix.iter().flatten().copied().collect();
    let attention_layers = inner
        .attention_layers
        .as_ref()
        .map(|l| l.iter().flatten().copied().collect());
    finllm_attribution {
        inner,
        strings,
        matrix,
        attention_layers,
        audit_seq,
    }
}

/// The caller's params, with fields added after its header's version at their defaults.
///
/// # Safety
/// `params` NULL or valid for reads of its `struct_size` bytes.
unsafe fn explain_params(params: *const finllm_explain_params) -> Result<finllm_explain_params, Failure> {
    let mut p = finllm_explain_default_params();
    if params.is_null() {
        return Ok(p);
    }
    // SAFETY: non-NULL and at least as large as the first field per the contract.
    let size = unsafe { *params.cast::<u32>() } as usize;
    check_size(
        size as u32,
        std::mem::size_of::<finllm_explain_params>(),
        "finllm_explain_params",
    )?;
    let n = size.min(std::mem::size_of::<finllm_explain_params>());
    // SAFETY: the caller's struct has `size` readable bytes; we copy at most our own size.
    unsafe {
        std::ptr::copy_nonoverlapping(
            params.cast::<u8>(),
            (&mut p as *mut finllm_explain_params).cast::<u8>(),
            n,
        );
    }
    Ok(p)
}

/// Units in the attribution (0 if NULL).
///
/// # Safety
/// `a` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_n_units(a: *const finllm_attribution) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { a.as_ref() }.map_or(0, |a| a.inner.units.len())
}

/// Tokens of the explained answer (the matrix's columns; 0 if NULL).
///
/// # Safety
/// `a` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_n_answer_tokens(a: *const finllm_attribution) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { a.as_ref() }.map_or(0, |a| a.inner.answer_tokens.len())
}

/// The unit ranked `rank` (0: the highest score) into `*out`; its strings live as long as the
/// attribution.
///
/// # Safety
/// `a` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_unit(
    a: *const finllm_attribution,
    rank: usize,
    out: *mut finllm_unit,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let a = unsafe { require(a, "attribution") }?;
        let (Some(u), Some((text, label))) = (a.inner.units.get(rank), a.strings.get(rank)) else {
            return fail(
                FINLLM_ERROR_INVALID_ARGUMENT,
                format!("unit {rank} of {}", a.inner.units.len()),
            );
        };
        let unit = finllm_unit {
            index: u.index,
            text: text.as_ptr().cast(),
            label: label.as_ref().map_or(std::ptr::null(), |l| l.as_ptr().cast()),
            start: u.start,
            end: u.end,
            byte_start: u.byte_start,
            byte_end: u.byte_end,
            tokens: u.tokens,
            score: u.score,
        };
        unsafe { put(out, unit, "out") }
    })
}

/// The units × answer-tokens matrix, row-major, rows in prompt order (unit `index`); `*rows`
/// and `*cols` receive its shape. Owned by the attribution; NULL if `a` is NULL.
///
/// # Safety
/// `a` NULL or live; `rows` and `cols` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_matrix(
    a: *const finllm_attribution,
    rows: *mut usize,
    cols: *mut usize,
) -> *const f64 {
    // SAFETY: NULL or live per the contract.
    let Some(a) = (unsafe { a.as_ref() }) else {
        return std::ptr::null();
    };
    // SAFETY: NULL or writable per the contract.
    unsafe { shaped(&a.matrix, a.inner.matrix.len(), a.inner.answer_tokens.len(), rows, cols) }
}

/// Attention methods: each layer's head-mean attention from the target's predicting positions
/// to each unit, row-major `[layer][unit]` (units in prompt order); `*layers` and `*units`
/// receive its shape. Owned by the attribution; NULL (shape 0 × 0) for other methods or if `a`
/// is NULL.
///
/// # Safety
/// `a` NULL or live; `layers` and `units` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_attention_layers(
    a: *const finllm_attribution,
    layers: *mut usize,
    units: *mut usize,
) -> *const f64 {
    // SAFETY: NULL or live per the contract.
    let a = unsafe { a.as_ref() };
    let (v, r) = match a.and_then(|a| Some((a.attention_layers.as_ref()?, a.inner.attention_layers.as_ref()?))) {
        Some((flat, l)) => (flat.as_slice(), l.len()),
        None => (&[][..], 0),
    };
    let c = a.filter(|_| r > 0).map_or(0, |a| a.inner.units.len());
    // SAFETY: NULL or writable per the contract.
    let p = unsafe { shaped(v, r, c, layers, units) };
    if r == 0 {
        std::ptr::null()
    } else {
        p
    }
}

/// For an explanation made under a guard with an audit log: its record's sequence number (the
/// record names the answer's record and holds the SHA-256 of finllm_attribution_json); else 0.
///
/// # Safety
/// `a` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_audit_seq(a: *const finllm_attribution) -> u64 {
    // SAFETY: NULL or live per the contract.
    unsafe { a.as_ref() }.and_then(|a| a.audit_seq).unwrap_or(0)
}

/// Write a row-major matrix's shape to `rows` and `cols` (each NULL or writable) and return its
/// data.
unsafe fn shaped(v: &[f64], r: usize, c: usize, rows: *mut usize, cols: *mut usize) -> *const f64 {
    // SAFETY: NULL or writable per the caller's contract.
    unsafe {
        if let Some(rows) = rows.as_mut() {
            *rows = r;
        }
        if let Some(cols) = cols.as_mut() {
            *cols = c;
        }
    }
    v.as_ptr()
}

/// The attribution as JSON, by the caller-buffer convention (see finllm_generation_text).
///
/// # Safety
/// `a` live; `buf` NULL or valid for `buf_len` writes; `needed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_json(
    a: *const finllm_attribution,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let a = unsafe { require(a, "attribution") }?;
        let json = a.inner.to_json()?;
        unsafe { copy_out(json.as_bytes(), buf, buf_len, needed) }
    })
}

/// The self-contained HTML report, by the caller-buffer convention.
///
/// # Safety
/// `a` live; `buf` NULL or valid for `buf_len` writes; `needed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_html(
    a: *const finllm_attribution,
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let a = unsafe { require(a, "attribution") }?;
        unsafe { copy_out(a.inner.to_html().as_bytes(), buf, buf_len, needed) }
    })
}

/// Free an attribution. NULL is allowed.
///
/// # Safety
/// `a` NULL or a handle not yet freed, used by no other call.
#[no_mangle]
pub unsafe extern "C" fn finllm_attribution_free(a: *mut finllm_attribution) {
    if !a.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(a) })));
    }
}
