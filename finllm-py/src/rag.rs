//! finllm.Embedder: sentence embeddings (the RAG layer's embedder).

use std::sync::Arc;

use finllm_core as core;
use pyo3::prelude::*;

use crate::to_py;

/// A sentence embedder (all-MiniLM-L6-v2 and other BERT-family sentence-transformers
/// directories). Thread-safe; the GIL is released while it computes.
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct Embedder {
    inner: Arc<core::rag::Embedder>,
}

#[pymethods]
impl Embedder {
    /// Load a sentence-transformers directory (config.json, model.safetensors, tokenizer.json).
    #[staticmethod]
    #[pyo3(signature = (path, *, threads=None))]
    fn load(py: Python<'_>, path: std::path::PathBuf, threads: Option<usize>) -> PyResult<Self> {
        let e = py.detach(|| core::rag::Embedder::load(&path, threads)).map_err(to_py)?;
        Ok(Self { inner: Arc::new(e) })
    }

    /// Length of every embedding.
    #[getter]
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    /// The token ids the encoder sees for `text` ([CLS] ... [SEP], truncated).
    fn tokenize(&self, text: &str) -> PyResult<Vec<u32>> {
        self.inner.tokenize(text).map_err(to_py)
    }

    /// One embedding (a list of floats) per text.
    fn embed(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<Vec<Vec<f32>>> {
        let inner = self.inner.clone();
        py.detach(move || inner.embed(&texts)).map_err(to_py)
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Embedder>()
}
