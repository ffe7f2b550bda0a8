//! Retrieval-augmented generation: the pieces that put today's documents into a prompt.
//!
//! - [`embed`]: sentence embeddings from a BERT-family encoder (all-MiniLM-L6-v2 by default).
//! - [`index`]: the embedded vector index (HNSW with exact search beside it, filters inside the
//!   search).

pub mod embed;
pub mod index;

pub use embed::{Embedder, EmbedderConfig, Pooling};
pub use index::{Hit, IndexConfig, VectorIndex};
