//! `finllm`: facade crate re-exporting [`finllm_core`].
//!
//! Rust services depend on this crate; everything lives in `finllm-core`.
pub use finllm_core::*;
