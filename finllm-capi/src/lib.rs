//! C ABI for finllm. The header `include/finllm.h` is generated from this crate by cbindgen.
//!
//! Thin by design: every function converts arguments, calls `finllm-core`, and converts the
//! result. Every exported body runs inside [`guard`](boundary::guard), a panic boundary that turns
//! a panic into `FINLLM_ERROR_PANIC`, and errors into a status code plus a per-thread message.
//!
//! One module per area; cbindgen writes the header's declarations in the order of the `mod`
//! lines below, so keep them in this order.
#![allow(non_camel_case_types)]

// Version constants, status codes and their names.
mod status;

// The panic boundary, the per-thread error message, and argument checks.
mod boundary;

// Loading models, their sizes, tokenization.
mod model;

// Generation options, the token callback, and the result handle.
mod generate;

// Cancel handles.
mod cancel;

// Guards, PII masking, policies, audit verification.
mod compliance;

// Many requests through one continuous batch.
mod engine;

mod explain;

// Retrieval: sentence embeddings, the document index, retrievers and passages.
mod rag;

// The same retrieval in PostgreSQL + pgvector.
mod pg;

// One request struct for every prompt kind, guarded or not, grounded in retrieved passages or
// not; run on a model or an engine.
mod request;

pub use boundary::finllm_last_error_message;
pub use cancel::{finllm_cancel, finllm_cancel_free, finllm_cancel_new, finllm_cancel_reset, finllm_cancel_trigger};
pub use compliance::{
    finllm_audit_verify, finllm_audit_verify_default_params, finllm_audit_verify_params, finllm_fsync_policy,
    finllm_guard, finllm_guard_audit_truncated_bytes, finllm_guard_default_params, finllm_guard_free, finllm_guard_new,
    finllm_guard_params, finllm_pii_mask, finllm_policy, finllm_policy_check, finllm_policy_free, finllm_policy_load,
    finllm_verdict, FINLLM_FSYNC_EVERY_RECORD, FINLLM_FSYNC_GROUP_COMMIT,
};
pub use engine::{
    finllm_engine, finllm_engine_default_params, finllm_engine_free, finllm_engine_metrics_text, finllm_engine_new,
    finllm_engine_params,
};
pub use explain::{
    finllm_attribution, finllm_attribution_free, finllm_attribution_html, finllm_attribution_json,
    finllm_attribution_matrix, finllm_attribution_n_answer_tokens, finllm_attribution_n_units, finllm_attribution_unit,
    finllm_explain, finllm_explain_default_params, finllm_explain_params, finllm_segment, finllm_unit,
};
pub use generate::{
    finllm_chat_message, finllm_finish_reason, finllm_generate_default_params, finllm_generate_params,
    finllm_generation, finllm_generation_audit_hash, finllm_generation_audit_seq, finllm_generation_drift,
    finllm_generation_finish_reason, finllm_generation_free, finllm_generation_masked_prompt,
    finllm_generation_pii_entities, finllm_generation_policy_rule, finllm_generation_prompt_tokens,
    finllm_generation_request_id, finllm_generation_text, finllm_generation_timings, finllm_generation_tokens,
    finllm_generation_verdict, finllm_token_callback,
};
pub use model::{
    finllm_detokenize, finllm_load_default_params, finllm_load_params, finllm_model, finllm_model_architecture,
    finllm_model_context_length, finllm_model_free, finllm_model_load, finllm_model_vocab_size, finllm_tokenize,
};
pub use rag::{
    finllm_embedder, finllm_embedder_dim, finllm_embedder_embed, finllm_embedder_free, finllm_embedder_load,
    finllm_generation_citation, finllm_generation_n_citations, finllm_index, finllm_index_create, finllm_index_free,
    finllm_index_len, finllm_index_open, finllm_index_save, finllm_index_search, finllm_index_sync, finllm_passage,
    finllm_passages, finllm_passages_add, finllm_passages_free, finllm_passages_get, finllm_passages_len, finllm_query,
    finllm_query_default, finllm_retrieve_fn, finllm_retriever, finllm_retriever_free, finllm_retriever_from_callback,
    finllm_retriever_from_index, finllm_search_mode,
};
pub use request::{
    finllm_engine_generate, finllm_engine_submit, finllm_generate, finllm_request, finllm_request_cancel,
    finllm_request_default_params, finllm_request_free, finllm_request_next, finllm_request_params,
    finllm_request_wait, finllm_token_event,
};
pub use status::{
    finllm_status, finllm_status_name, finllm_version, FINLLM_VERSION_MAJOR, FINLLM_VERSION_MINOR, FINLLM_VERSION_PATCH,
};
