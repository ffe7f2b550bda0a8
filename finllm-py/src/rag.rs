//! Retrieval from Python: finllm.Embedder, finllm.Index (the core's rag::Collection), Python
//! callables as retrievers, and the options of Model.ask / Engine.ask. Only conversion lives
//! here; retrieval, prompting and citing are the core's `rag::ask`.

use std::sync::Arc;

use finllm_core as core;
use finllm_core::rag::{Filter, Passage, Query, Retriever, SearchMode};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::IntoPyObjectExt;

use crate::compliance::Guard;
use crate::{request, to_py};

/// A sentence embedder (all-MiniLM-L6-v2 and other BERT-family sentence-transformers
/// directories). Thread-safe; the GIL is released while it computes.
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct Embedder {
    inner: Arc<core::rag::Embedder>,
}

#[pymethods]
impl Embedder {
    /// Load a sentence-transformers directory (config.json, model.safetensors, tokenizer.json).
    /// `quantize="q8_0"` quantizes the matrices but the query, key and value projections at
    /// load (faster, vectors within about 1e-3 of the float model's).
    #[staticmethod]
    #[pyo3(signature = (path, *, threads=None, quantize=None))]
    fn load(
        py: Python<'_>,
        path: std::path::PathBuf,
        threads: Option<usize>,
        quantize: Option<String>,
    ) -> PyResult<Self> {
        let options = core::rag::EmbedderOptions::named(threads, quantize.as_deref()).map_err(to_py)?;
        let e = py
            .detach(|| core::rag::Embedder::load_with(&path, &options))
            .map_err(to_py)?;
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

/// A document collection: chunks of a folder's files in a vector index and a BM25 index, with
/// their metadata; searched by vector, keyword or both fused; saved to one checksummed file.
/// Thread-safe for searches; sync() and save() take it exclusively.
#[pyclass(module = "finllm._finllm")]
pub(crate) struct Index {
    inner: Arc<std::sync::RwLock<core::rag::Collection>>,
}

fn poisoned() -> PyErr {
    to_py(core::Error::Retriever {
        name: "index".into(),
        reason: "an earlier call panicked while changing the index".into(),
    })
}

#[pymethods]
impl Index {
    /// An empty index whose chunks `embedder` embeds.
    #[staticmethod]
    #[pyo3(signature = (*, embedder, chunk_tokens=128, overlap_tokens=24))]
    fn create(embedder: PyRef<'_, Embedder>, chunk_tokens: usize, overlap_tokens: usize) -> PyResult<Self> {
        let config = core::rag::CollectionConfig {
            chunker: core::rag::ChunkerConfig {
                max_tokens: chunk_tokens,
                overlap_tokens,
            },
            ..Default::default()
        };
        let c = core::rag::Collection::new(embedder.inner.clone(), config).map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(std::sync::RwLock::new(c)),
        })
    }

    /// Reopen an index file written by save() (or `finllm index`), with the embedder that built it.
    #[staticmethod]
    #[pyo3(signature = (path, *, embedder))]
    fn open(py: Python<'_>, path: std::path::PathBuf, embedder: PyRef<'_, Embedder>) -> PyResult<Self> {
        let e = embedder.inner.clone();
        let c = py.detach(|| core::rag::Collection::open(&path, e)).map_err(to_py)?;
        Ok(Self {
            inner: Arc::new(std::sync::RwLock::new(c)),
        })
    }

    /// Make the index mirror `directory` (metadata from `metadata`, default
    /// DIRECTORY/metadata.toml): new files added, changed ones replaced, vanished ones removed.
    /// Returns a dict: added, replaced, unchanged, removed, skipped (file names), failed
    /// ({name: error}), chunks_added, chunks_removed.
    #[pyo3(signature = (directory, *, metadata=None))]
    fn sync(
        &self,
        py: Python<'_>,
        directory: std::path::PathBuf,
        metadata: Option<std::path::PathBuf>,
    ) -> PyResult<Py<PyAny>> {
        let inner = self.inner.clone();
        let report = py
            .detach(move || {
                let meta = core::rag::Metadata::load(&metadata.unwrap_or_else(|| directory.join("metadata.toml")))?;
                let mut c = inner.write().map_err(|_| core::Error::Retriever {
                    name: "index".into(),
                    reason: "poisoned".into(),
                })?;
                c.sync_dir(&directory, &meta, |_| {})
            })
            .map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("added", &report.added)?;
        d.set_item("replaced", &report.replaced)?;
        d.set_item("unchanged", &report.unchanged)?;
        d.set_item("removed", &report.removed)?;
        d.set_item("skipped", &report.skipped)?;
        let failed = PyDict::new(py);
        for (name, e) in &report.failed {
            failed.set_item(name, e.to_string())?;
        }
        d.set_item("failed", failed)?;
        d.set_item("chunks_added", report.chunks_added)?;
        d.set_item("chunks_removed", report.chunks_removed)?;
        d.into_py_any(py)
    }

    /// Write the index to `path` atomically.
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let inner = self.inner.clone();
        py.detach(move || inner.read().map_err(|_| ()).map(|c| c.save(&path)))
            .map_err(|_| poisoned())?
            .map_err(to_py)
    }

    /// Chunks in the index.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.inner.read().map_err(|_| poisoned())?.len())
    }

    /// The passages that best match `query`, best first, as dicts (id, source, page, start,
    /// end, score, vector_score, keyword_score, text, context, ticker, date, doc_type, labels).
    /// Options: k (5), mode ("hybrid", "vector" or "keyword") and the filter: entitlements,
    /// tickers, doc_types, sources, date_from, date_to.
    #[pyo3(signature = (query, *, k=5, mode="hybrid", **filter))]
    fn search(
        &self,
        py: Python<'_>,
        query: String,
        k: usize,
        mode: &str,
        filter: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let q = query_from(query, k, mode, filter, "search")?;
        let inner = self.inner.clone();
        let passages = py
            .detach(move || inner.read().map_err(|_| ()).map(|c| c.search(&q)))
            .map_err(|_| poisoned())?
            .map_err(to_py)?;
        passages_to_py(py, &passages)
    }
}

/// A Query from search()'s arguments; `method` names the method in errors.
fn query_from(text: String, k: usize, mode: &str, filter: Option<&Bound<'_, PyDict>>, method: &str) -> PyResult<Query> {
    let mut f = Filter::default();
    for (key, value) in filter.into_iter().flat_map(|d| d.iter()) {
        let key: String = key.extract()?;
        if !set_filter(&mut f, &key, &value)? {
            return Err(PyTypeError::new_err(format!(
                "{method}() got an unexpected keyword argument '{key}'"
            )));
        }
    }
    Ok(Query {
        text,
        k,
        mode: SearchMode::parse(mode).map_err(to_py)?,
        filter: f,
    })
}

/// A collection in PostgreSQL with pgvector: the same chunks, filters and passages as an
/// Index, in the bank's own database. Usable as a retriever in ask().
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct PgStore {
    inner: Arc<core::rag::PgStore>,
}

#[pymethods]
impl PgStore {
    /// Connect to `url` (`postgresql://user@host:port/db`), creating the pgvector extension
    /// and the table when missing. `embedder` must be the one that builds the pushed indexes.
    #[new]
    #[pyo3(signature = (url, *, embedder, table="finllm_chunks".to_string(), timeout=30.0))]
    fn new(py: Python<'_>, url: String, embedder: PyRef<'_, Embedder>, table: String, timeout: f64) -> PyResult<Self> {
        let timeout = crate::request::seconds("timeout", Some(timeout))?.unwrap_or_default();
        let config = core::rag::PgConfig {
            table,
            timeout,
            ..core::rag::PgConfig::new(url)
        };
        let e = embedder.inner.clone();
        let store = py
            .detach(move || core::rag::PgStore::connect(config, e))
            .map_err(to_py)?;
        Ok(Self { inner: Arc::new(store) })
    }

    /// Make the table hold exactly `index`'s chunks, writing only the files that changed, in one
    /// transaction. Returns a dict: added, replaced, unchanged, removed (file names), rows.
    fn push(&self, py: Python<'_>, index: PyRef<'_, Index>) -> PyResult<Py<PyAny>> {
        let (store, coll) = (self.inner.clone(), index.inner.clone());
        let report = py
            .detach(move || {
                let c = coll.read().map_err(|_| core::Error::Retriever {
                    name: "index".into(),
                    reason: "poisoned".into(),
                })?;
                store.push(&c)
            })
            .map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("added", &report.added)?;
        d.set_item("replaced", &report.replaced)?;
        d.set_item("unchanged", &report.unchanged)?;
        d.set_item("removed", &report.removed)?;
        d.set_item("rows", report.rows)?;
        d.into_py_any(py)
    }

    /// Like Index.search.
    #[pyo3(signature = (query, *, k=5, mode="hybrid", **filter))]
    fn search(
        &self,
        py: Python<'_>,
        query: String,
        k: usize,
        mode: &str,
        filter: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Py<PyAny>> {
        let q = query_from(query, k, mode, filter, "search")?;
        let store = self.inner.clone();
        let passages = py.detach(move || store.search(&q)).map_err(to_py)?;
        passages_to_py(py, &passages)
    }

    /// Rows in the table.
    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let store = self.inner.clone();
        py.detach(move || store.len()).map_err(to_py)
    }

    /// Drop the table and everything pushed to it.
    fn drop_tables(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.inner.clone();
        py.detach(move || store.drop_tables()).map_err(to_py)
    }
}

/// Set a filter field from a keyword argument; false if `key` is not one.
fn set_filter(f: &mut Filter, key: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let list =
        |v: &Bound<'_, PyAny>| -> PyResult<Vec<String>> { Ok(v.extract::<Option<Vec<String>>>()?.unwrap_or_default()) };
    match key {
        "entitlements" => f.entitlements = value.extract()?,
        "tickers" => f.tickers = list(value)?,
        "doc_types" => f.doc_types = list(value)?,
        "sources" => f.sources = list(value)?,
        "date_from" => f.date_from = value.extract()?,
        "date_to" => f.date_to = value.extract()?,
        _ => return Ok(false),
    }
    Ok(true)
}

fn passage_to_py<'py>(py: Python<'py>, p: &Passage) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", &p.id)?;
    d.set_item("source", &p.source)?;
    d.set_item("page", p.page)?;
    d.set_item("start", p.start)?;
    d.set_item("end", p.end)?;
    d.set_item("score", p.score)?;
    d.set_item("vector_score", p.vector_score)?;
    d.set_item("keyword_score", p.keyword_score)?;
    d.set_item("text", &p.text)?;
    d.set_item("context", &p.context)?;
    d.set_item("ticker", &p.meta.ticker)?;
    d.set_item("date", &p.meta.date)?;
    d.set_item("doc_type", &p.meta.doc_type)?;
    d.set_item("labels", &p.meta.labels)?;
    Ok(d)
}

fn passages_to_py(py: Python<'_>, passages: &[Passage]) -> PyResult<Py<PyAny>> {
    let list = PyList::empty(py);
    for p in passages {
        list.append(passage_to_py(py, p)?)?;
    }
    list.into_py_any(py)
}

/// A passage a Python retriever returned: a dict with at least `source` and `text`.
fn passage_from_py(item: &Bound<'_, PyAny>) -> PyResult<Passage> {
    let d = item
        .cast::<PyDict>()
        .map_err(|_| PyTypeError::new_err("a retriever must return a list of dicts"))?;
    fn get<'py, T: FromPyObjectOwned<'py, Error = PyErr>>(d: &Bound<'py, PyDict>, k: &str) -> PyResult<Option<T>> {
        match d.get_item(k)? {
            Some(v) if !v.is_none() => Ok(Some(v.extract()?)),
            _ => Ok(None),
        }
    }
    let text: String = get(d, "text")?.ok_or_else(|| PyTypeError::new_err("a retrieved passage needs 'text'"))?;
    let source: String = get(d, "source")?.ok_or_else(|| PyTypeError::new_err("a retrieved passage needs 'source'"))?;
    let start: usize = get(d, "start")?.unwrap_or(0);
    let end: usize = get(d, "end")?.unwrap_or(start + text.chars().count());
    Ok(Passage {
        id: get(d, "id")?.unwrap_or_else(|| format!("{source}#{start}-{end}")),
        page: get(d, "page")?.unwrap_or(1),
        start,
        end,
        context: get(d, "context")?.unwrap_or_default(),
        score: get(d, "score")?.unwrap_or(0.0),
        vector_score: get(d, "vector_score")?,
        keyword_score: get(d, "keyword_score")?,
        meta: core::rag::DocMeta {
            ticker: get(d, "ticker")?,
            date: get(d, "date")?,
            doc_type: get(d, "doc_type")?,
            labels: get(d, "labels")?.unwrap_or_default(),
            extra: Default::default(),
        },
        source,
        text,
    })
}

/// A Python callable as a retriever: called with a dict (text, k, mode, entitlements,
/// tickers, doc_types, sources, date_from, date_to), it returns a list of passage dicts.
struct PyRetriever(Py<PyAny>);

impl Retriever for PyRetriever {
    fn name(&self) -> &str {
        "python"
    }

    fn retrieve(&self, query: &Query) -> core::Result<Vec<Passage>> {
        Python::attach(|py| -> PyResult<Vec<Passage>> {
            let q = PyDict::new(py);
            q.set_item("text", &query.text)?;
            q.set_item("k", query.k)?;
            q.set_item(
                "mode",
                match query.mode {
                    SearchMode::Hybrid => "hybrid",
                    SearchMode::Vector => "vector",
                    SearchMode::Keyword => "keyword",
                },
            )?;
            let f = &query.filter;
            q.set_item("entitlements", &f.entitlements)?;
            q.set_item("tickers", &f.tickers)?;
            q.set_item("doc_types", &f.doc_types)?;
            q.set_item("sources", &f.sources)?;
            q.set_item("date_from", &f.date_from)?;
            q.set_item("date_to", &f.date_to)?;
            let out = self.0.bind(py).call1((q,))?;
            out.try_iter()?.map(|item| passage_from_py(&item?)).collect()
        })
        .map_err(|e| core::Error::Retriever {
            name: "python".into(),
            reason: e.to_string(),
        })
    }
}

/// An Index or a callable, as a core retriever.
pub(crate) fn retriever_arc(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn Retriever>> {
    if let Ok(index) = obj.cast::<Index>() {
        return Ok(Arc::new(Shared(index.borrow().inner.clone())));
    }
    if let Ok(store) = obj.cast::<PgStore>() {
        return Ok(store.get().inner.clone());
    }
    if obj.is_callable() {
        return Ok(Arc::new(PyRetriever(obj.clone().unbind())));
    }
    Err(PyTypeError::new_err(
        "retriever must be a finllm.Index, a finllm.PgStore or a callable(query: dict) -> list[dict]",
    ))
}

/// A shared Index as a retriever.
struct Shared(Arc<std::sync::RwLock<core::rag::Collection>>);

impl Retriever for Shared {
    fn name(&self) -> &str {
        "index"
    }

    fn retrieve(&self, query: &Query) -> core::Result<Vec<Passage>> {
        let c = self.0.read().map_err(|_| core::Error::Retriever {
            name: "index".into(),
            reason: "an earlier call panicked while changing the index".into(),
        })?;
        c.search(query)
    }
}

/// AskOptions from ask()'s keyword arguments: retrieval ones (k, mode, context_tokens and the
/// filter's) here, the rest as for generate().
pub(crate) fn ask_options(
    py: Python<'_>,
    method: &str,
    on_engine: bool,
    guard: Option<PyRef<'_, Guard>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<core::rag::AskOptions> {
    let mut ask = core::rag::AskOptions::default();
    let rest = PyDict::new(py);
    for (key, value) in options.into_iter().flat_map(|d| d.iter()) {
        let k: String = key.extract()?;
        match k.as_str() {
            "k" => ask.k = value.extract()?,
            "mode" => ask.mode = SearchMode::parse(&value.extract::<String>()?).map_err(to_py)?,
            "context_tokens" => ask.context_tokens = value.extract()?,
            other => {
                if !set_filter(&mut ask.filter, other, &value)? {
                    rest.set_item(key, value)?;
                }
            }
        }
    }
    let request = request::build(method, on_engine, Some(String::new()), None, guard, Some(&rest))?;
    ask.params = request.params;
    ask.guard = request.guard;
    ask.info = request.info;
    ask.deadline = request.deadline;
    ask.queue_wait = request.queue_wait;
    Ok(ask)
}

/// An answer with its sources.
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct Answer {
    /// The answer text.
    #[pyo3(get)]
    text: String,
    /// What generate() would return for the request: a Generation, or a GuardedGeneration.
    #[pyo3(get)]
    generation: Py<PyAny>,
    /// Every source in the prompt, in rank order: passage dicts with `number` and `cited`.
    #[pyo3(get)]
    citations: Py<PyAny>,
    /// With `explain=METHOD`: the sources ranked by how much they drove the answer (an
    /// Attribution); else None.
    #[pyo3(get)]
    explanation: Option<Py<crate::explain::Attribution>>,
}

#[pymethods]
impl Answer {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Answer(text={:?}, citations={})",
            self.text,
            self.citations.bind(py).len().unwrap_or(0)
        )
    }
}

/// Run `ask` (with an explanation when `explain` names a method) on a model or an engine,
/// with the GIL released.
pub(crate) fn run_ask<'a>(
    py: Python<'_>,
    on: impl Into<core::request::Executor<'a>> + Send,
    retriever: &Bound<'_, PyAny>,
    question: &str,
    opts: &core::rag::AskOptions,
    explain: Option<&Bound<'_, PyAny>>,
) -> PyResult<Answer> {
    let retriever = retriever_arc(retriever)?;
    // explain="surrogate", or a dict of explain() options.
    let how = match explain {
        None => None,
        Some(e) if e.is_none() => None,
        Some(e) => {
            let kw = match e.cast::<PyDict>() {
                Ok(d) => d.clone(),
                Err(_) => {
                    let d = PyDict::new(py);
                    d.set_item("method", e.extract::<String>()?)?;
                    d
                }
            };
            Some(crate::explain::options(Some(&kw))?)
        }
    };
    let (a, e) = py
        .detach(|| match &how {
            Some(how) => core::explain::ask(on, retriever.as_ref(), question, opts, how)
                .map(|x| (x.answer, Some((x.explanation, x.audit.map(|r| r.seq))))),
            None => core::rag::ask(on, retriever.as_ref(), question, opts).map(|a| (a, None)),
        })
        .map_err(crate::to_py)?;
    answer(py, a, e)
}

pub(crate) fn answer(
    py: Python<'_>,
    a: core::rag::Answer,
    e: Option<(core::explain::Attribution, Option<u64>)>,
) -> PyResult<Answer> {
    let citations = PyList::empty(py);
    for c in &a.citations {
        let d = passage_to_py(py, &c.passage)?;
        d.set_item("number", c.number)?;
        d.set_item("cited", c.cited)?;
        citations.append(d)?;
    }
    Ok(Answer {
        text: a.response.generation.text.clone(),
        generation: request::response(py, a.response)?,
        citations: citations.into_py_any(py)?,
        explanation: e
            .map(|(e, seq)| Py::new(py, crate::explain::attribution(e, seq)))
            .transpose()?,
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Embedder>()?;
    m.add_class::<Index>()?;
    m.add_class::<PgStore>()?;
    m.add_class::<Answer>()
}
