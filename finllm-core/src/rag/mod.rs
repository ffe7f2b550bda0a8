//! Retrieval-augmented generation: the pieces that put today's documents into a prompt.
//!
//! - [`embed`]: sentence embeddings from a BERT-family encoder (all-MiniLM-L6-v2 by default).
//! - [`ingest`]: documents as text (plain text, Markdown, HTML, PDF) with their pages.
//! - [`chunk`]: chunks by tokens with overlap, ending at sentence ends.
//! - [`index`]: the embedded vector index (HNSW with exact search beside it, filters inside the
//!   search).
//! - [`keyword`]: BM25 with Chinese word segmentation.
//! - [`collection`]: all of it over a folder of documents, searched by vector, keyword or both
//!   fused, saved to one checksummed file.
//! - [`retriever`]: queries, filters, passages and the [`Retriever`] trait.
//! - `pg` (feature `postgres`, on by default): the same search in PostgreSQL + pgvector, over TLS
//!   with libpq's `sslmode`/`sslrootcert`/`sslcert`/`sslkey` (`pg_tls`).
//! - [`answer`]: retrieve, build the prompt with numbered sources, generate, cite.
//!
//! A [`Retriever`] is anything that answers a [`Query`] with [`Passage`]s: a [`Collection`], a
//! bank's own search service, a Python function or a C callback.

pub mod answer;
pub mod chunk;
pub(crate) mod codec;
pub mod collection;
pub mod embed;
pub mod index;
pub mod ingest;
pub mod keyword;
#[cfg(feature = "postgres")]
pub mod pg;
#[cfg(feature = "postgres")]
pub mod pg_tls;
pub mod retriever;

pub use answer::{ask, ask_streaming, Answer, AskOptions, Citation, Grounded};
pub use chunk::ChunkerConfig;
pub use collection::{Chunk, Collection, CollectionConfig, IngestReport, Ingested, Metadata, Progress};
pub use embed::{Embedder, EmbedderConfig, EmbedderOptions, Pooling};
pub use index::{Hit, IndexConfig, SearchPlan, VectorIndex};
pub use ingest::{DocKind, Document};
#[cfg(feature = "postgres")]
pub use pg::{PgConfig, PgStore, PushReport};
#[cfg(feature = "postgres")]
pub use pg_tls::{SslMode, TlsSettings};
pub use retriever::{DocMeta, Filter, Passage, Query, Retriever, SearchMode};
