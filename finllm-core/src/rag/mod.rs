//! Retrieval-augmented generation: the pieces that put today's documents into a prompt.
//!
//! - [`embed`]: sentence embeddings from a BERT-family encoder (all-MiniLM-L6-v2 by default).

pub mod embed;

pub use embed::{Embedder, EmbedderConfig, Pooling};
