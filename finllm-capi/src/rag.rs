//! Retrieval: sentence embeddings, the document index, retrievers (an index or a caller's
//! function) and passages. Answering goes through the request struct
//! (finllm_request_params.retriever), like every request.

use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, RwLock};

use finllm_core::rag::{
    ChunkerConfig, Collection, CollectionConfig, DocMeta, Embedder, Filter, Metadata, Passage, Query, Retriever,
    SearchMode,
};

use crate::boundary::{c_str, c_str_array, check_size, fail, guard, opt_c_str, put, require, Failure};
use crate::generate::nul_terminated;
use crate::status::finllm_status::{self, *};

/// A loaded sentence embedder. Thread safety: one handle may be used by any number of threads
/// at once; it must not be freed while a call is using it.
pub struct finllm_embedder {
    pub(crate) inner: Arc<Embedder>,
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
        unsafe { load_embedder(path, threads, None, out) }
    })
}

/// finllm_embedder_load with the matrices (but the query, key and value projections)
/// quantized at load to `quantize` ("q8_0"; NULL: as stored): faster, vectors within about 1e-3
/// of the float model's cosine. An unknown format is FINLLM_ERROR_INVALID_ARGUMENT.
///
/// # Safety
/// `path` NUL-terminated; `quantize` NULL or NUL-terminated; `out` valid for a write.
#[no_mangle]
pub unsafe extern "C" fn finllm_embedder_load_quantized(
    path: *const c_char,
    threads: u32,
    quantize: *const c_char,
    out: *mut *mut finllm_embedder,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let path = unsafe { c_str(path, "path") }?;
        let quantize = unsafe { opt_c_str(quantize, "quantize") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        unsafe { load_embedder(path, threads, quantize, out) }
    })
}

/// # Safety
/// `out` valid for a write.
unsafe fn load_embedder(
    path: &str,
    threads: u32,
    quantize: Option<&str>,
    out: *mut *mut finllm_embedder,
) -> Result<(), Failure> {
    let options = finllm_core::rag::EmbedderOptions::named(Some(threads as usize), quantize)?;
    let embedder = Embedder::load_with(path, &options)?;
    let handle = Box::into_raw(Box::new(finllm_embedder {
        inner: Arc::new(embedder),
    }));
    unsafe { put(out, handle, "out") }
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

// ------------------------------------------------------------------------------------------
// Document index, retrievers and passages
// ------------------------------------------------------------------------------------------

/// A document index (chunks of a folder's files in a vector and a BM25 index, with their
/// metadata). Thread safety: searches may run from many threads at once; finllm_index_sync
/// waits for them and runs alone. Not to be freed while a call is using it.
pub struct finllm_index {
    pub(crate) inner: Arc<RwLock<Collection>>,
}

/// Where passages come from for a request (finllm_request_params.retriever): an index, or a
/// caller's function. Thread safety: as the index or function it wraps.
pub struct finllm_retriever {
    pub(crate) inner: Arc<dyn Retriever>,
}

/// A list of passages: search results, or what a retrieval callback adds.
#[derive(Default)]
pub struct finllm_passages {
    pub(crate) items: Vec<CPassage>,
}

/// How results are ranked.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum finllm_search_mode {
    /// Vector and BM25 rankings fused (reciprocal rank fusion).
    FINLLM_SEARCH_HYBRID = 0,
    FINLLM_SEARCH_VECTOR = 1,
    FINLLM_SEARCH_KEYWORD = 2,
}

/// A search, and what the caller may see. Get defaults from finllm_query_default(). All
/// strings NUL-terminated UTF-8; arrays may be NULL when their count is 0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_query {
    /// sizeof(finllm_query) as the caller compiled it.
    pub struct_size: u32,
    /// The query text (for a request with a retriever: ignored, the prompt is the question).
    pub text: *const c_char,
    /// Passages wanted.
    pub k: usize,
    pub mode: finllm_search_mode,
    /// 1: the caller sees only documents carrying one of `entitlements` (none at all when
    /// n_entitlements is 0); 0: an unrestricted caller.
    pub restricted: i32,
    pub entitlements: *const *const c_char,
    pub n_entitlements: usize,
    /// Only these tickers, document types and source files (count 0: any).
    pub tickers: *const *const c_char,
    pub n_tickers: usize,
    pub doc_types: *const *const c_char,
    pub n_doc_types: usize,
    pub sources: *const *const c_char,
    pub n_sources: usize,
    /// Only documents dated in [date_from, date_to] (YYYY-MM-DD; NULL: open).
    pub date_from: *const c_char,
    pub date_to: *const c_char,
}

/// One passage. Strings are NUL-terminated UTF-8 owned by the list (or the generation) it came
/// from, valid until that is freed. `ticker`, `date` and `doc_type` may be NULL. When given to
/// finllm_passages_add, only `source` and `text` are required (NULL `id`: made from source and
/// span; `end` 0: the text's length).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct finllm_passage {
    pub id: *const c_char,
    pub source: *const c_char,
    pub text: *const c_char,
    /// Page, from 1.
    pub page: u32,
    /// Character span in the source document.
    pub start: usize,
    pub end: usize,
    pub score: f32,
    pub ticker: *const c_char,
    pub date: *const c_char,
    pub doc_type: *const c_char,
    pub labels: *const *const c_char,
    pub n_labels: usize,
    /// For a citation: its number in the prompt, and 1 if the answer cites it; else 0.
    pub number: u32,
    pub cited: i32,
}

/// A passage with the bytes its C view points into.
pub(crate) struct CPassage {
    passage: Passage,
    number: u32,
    cited: bool,
    strings: [Vec<u8>; 6],
    labels: Vec<Vec<u8>>,
    label_ptrs: Vec<*const c_char>,
}

// SAFETY: the raw pointers point into the passage's own heap buffers, which never change
// after construction and are freed with it; nothing is shared mutably.
unsafe impl Send for CPassage {}
// SAFETY: as above; reading the pointers from several threads is reading immutable data.
unsafe impl Sync for CPassage {}

impl CPassage {
    pub(crate) fn new(passage: Passage, number: u32, cited: bool) -> Self {
        let nul = |s: &str| nul_terminated(s.to_string());
        let opt = |s: &Option<String>| s.as_deref().map(nul).unwrap_or_default();
        let strings = [
            nul(&passage.id),
            nul(&passage.source),
            nul(&passage.text),
            opt(&passage.meta.ticker),
            opt(&passage.meta.date),
            opt(&passage.meta.doc_type),
        ];
        let labels: Vec<Vec<u8>> = passage.meta.labels.iter().map(|l| nul(l)).collect();
        let label_ptrs = labels.iter().map(|l| l.as_ptr().cast()).collect();
        Self {
            passage,
            number,
            cited,
            strings,
            labels,
            label_ptrs,
        }
    }

    fn view(&self) -> finllm_passage {
        let s = |i: usize| -> *const c_char {
            if self.strings[i].is_empty() {
                std::ptr::null()
            } else {
                self.strings[i].as_ptr().cast()
            }
        };
        debug_assert_eq!(self.labels.len(), self.label_ptrs.len());
        finllm_passage {
            id: s(0),
            source: s(1),
            text: s(2),
            page: self.passage.page,
            start: self.passage.start,
            end: self.passage.end,
            score: self.passage.score,
            ticker: s(3),
            date: s(4),
            doc_type: s(5),
            labels: if self.label_ptrs.is_empty() {
                std::ptr::null()
            } else {
                self.label_ptrs.as_ptr()
            },
            n_labels: self.label_ptrs.len(),
            number: self.number,
            cited: i32::from(self.cited),
        }
    }
}

/// The citations of an answer, for its generation handle.
pub(crate) fn citations(answer_sources: Vec<finllm_core::rag::Citation>) -> Vec<CPassage> {
    answer_sources
        .into_iter()
        .map(|c| CPassage::new(c.passage, u32::try_from(c.number).unwrap_or(u32::MAX), c.cited))
        .collect()
}

/// Default query: k 5, hybrid, unrestricted, no filters.
#[no_mangle]
pub extern "C" fn finllm_query_default() -> finllm_query {
    finllm_query {
        struct_size: std::mem::size_of::<finllm_query>() as u32,
        text: std::ptr::null(),
        k: 5,
        mode: finllm_search_mode::FINLLM_SEARCH_HYBRID,
        restricted: 0,
        entitlements: std::ptr::null(),
        n_entitlements: 0,
        tickers: std::ptr::null(),
        n_tickers: 0,
        doc_types: std::ptr::null(),
        n_doc_types: 0,
        sources: std::ptr::null(),
        n_sources: 0,
        date_from: std::ptr::null(),
        date_to: std::ptr::null(),
    }
}

/// The core query from a C one (`text` required unless `question` is given).
///
/// # Safety
/// `q` valid as documented on finllm_query.
pub(crate) unsafe fn query(q: &finllm_query, question: Option<&str>) -> Result<Query, Failure> {
    check_size(q.struct_size, std::mem::size_of::<finllm_query>(), "finllm_query")?;
    let text = match question {
        Some(t) => t.to_string(),
        // SAFETY: contracts forwarded.
        None => unsafe { c_str(q.text, "query.text") }?.to_string(),
    };
    // SAFETY (all below): arrays and strings valid per finllm_query's documentation.
    let filter = Filter {
        entitlements: if q.restricted != 0 {
            Some(unsafe { c_str_array(q.entitlements, q.n_entitlements, "entitlements") }?)
        } else {
            None
        },
        tickers: unsafe { c_str_array(q.tickers, q.n_tickers, "tickers") }?,
        doc_types: unsafe { c_str_array(q.doc_types, q.n_doc_types, "doc_types") }?,
        sources: unsafe { c_str_array(q.sources, q.n_sources, "sources") }?,
        date_from: unsafe { opt_c_str(q.date_from, "date_from") }?.map(str::to_string),
        date_to: unsafe { opt_c_str(q.date_to, "date_to") }?.map(str::to_string),
    };
    Ok(Query {
        text,
        k: q.k,
        mode: match q.mode {
            finllm_search_mode::FINLLM_SEARCH_HYBRID => SearchMode::Hybrid,
            finllm_search_mode::FINLLM_SEARCH_VECTOR => SearchMode::Vector,
            finllm_search_mode::FINLLM_SEARCH_KEYWORD => SearchMode::Keyword,
        },
        filter,
    })
}

fn poisoned() -> Failure {
    Failure(
        FINLLM_ERROR_RETRIEVER,
        "the index is unusable: an earlier call panicked while changing it".into(),
    )
}

/// A new, empty index whose chunks `embedder` embeds: chunks of at most `chunk_tokens` tokens
/// with `overlap_tokens` repeated between neighbours (0 and 0: the defaults, 128 and 24).
///
/// # Safety
/// `embedder` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_index_create(
    embedder: *const finllm_embedder,
    chunk_tokens: u32,
    overlap_tokens: u32,
    out: *mut *mut finllm_index,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let e = unsafe { require(embedder, "embedder") }?;
        let mut config = CollectionConfig::default();
        if chunk_tokens > 0 || overlap_tokens > 0 {
            config.chunker = ChunkerConfig {
                max_tokens: chunk_tokens as usize,
                overlap_tokens: overlap_tokens as usize,
            };
        }
        let c = Collection::new(Arc::clone(&e.inner), config)?;
        unsafe { put(out, index_handle(c), "out") }
    })
}

fn index_handle(c: Collection) -> *mut finllm_index {
    Box::into_raw(Box::new(finllm_index {
        inner: Arc::new(RwLock::new(c)),
    }))
}

/// Open an index file written by finllm_index_save or `finllm index`, with the embedder that
/// built it (another one: FINLLM_ERROR_RETRIEVER). A damaged, truncated or foreign file is
/// FINLLM_ERROR_INDEX_FILE.
///
/// # Safety
/// `path` NUL-terminated; `embedder` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_index_open(
    path: *const c_char,
    embedder: *const finllm_embedder,
    out: *mut *mut finllm_index,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let path = unsafe { c_str(path, "path") }?;
        let e = unsafe { require(embedder, "embedder") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let c = Collection::open(std::path::Path::new(path), Arc::clone(&e.inner))?;
        unsafe { put(out, index_handle(c), "out") }
    })
}

/// Make the index mirror the folder `dir` (recursively): new files added, changed ones
/// replaced, vanished ones removed. Metadata comes from `metadata` (a TOML file; NULL:
/// DIR/metadata.toml if present). Files that cannot be read are skipped and counted in
/// `*n_failed` (may be NULL); the call still succeeds.
///
/// # Safety
/// `index` live; `dir` NUL-terminated; `metadata` NULL or NUL-terminated; `n_failed` NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_index_sync(
    index: *const finllm_index,
    dir: *const c_char,
    metadata: *const c_char,
    n_failed: *mut usize,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let index = unsafe { require(index, "index") }?;
        let dir = std::path::Path::new(unsafe { c_str(dir, "dir") }?);
        let meta_path = match unsafe { opt_c_str(metadata, "metadata") }? {
            Some(m) => std::path::PathBuf::from(m),
            None => dir.join("metadata.toml"),
        };
        let meta = Metadata::load(&meta_path)?;
        let report = index
            .inner
            .write()
            .map_err(|_| poisoned())?
            .sync_dir(dir, &meta, |_| {})?;
        if !n_failed.is_null() {
            // SAFETY: writable per the contract.
            unsafe { *n_failed = report.failed.len() };
        }
        Ok(())
    })
}

/// Write the index to `path` atomically.
///
/// # Safety
/// `index` live; `path` NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn finllm_index_save(index: *const finllm_index, path: *const c_char) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let index = unsafe { require(index, "index") }?;
        let path = unsafe { c_str(path, "path") }?;
        index
            .inner
            .read()
            .map_err(|_| poisoned())?
            .save(std::path::Path::new(path))?;
        Ok(())
    })
}

/// Chunks in the index (0 if `index` is NULL).
///
/// # Safety
/// `index` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_index_len(index: *const finllm_index) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { index.as_ref() }
        .and_then(|i| i.inner.read().ok().map(|c| c.len()))
        .unwrap_or(0)
}

/// Search the index; `*out` receives the passages, best first (free with finllm_passages_free).
///
/// # Safety
/// `index` live; `query` valid as documented on finllm_query; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_index_search(
    index: *const finllm_index,
    query: *const finllm_query,
    out: *mut *mut finllm_passages,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let index = unsafe { require(index, "index") }?;
        let q = unsafe { self::query(require(query, "query")?, None) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let found = index.inner.read().map_err(|_| poisoned())?.search(&q)?;
        let list = finllm_passages {
            items: found.into_iter().map(|p| CPassage::new(p, 0, false)).collect(),
        };
        unsafe { put(out, Box::into_raw(Box::new(list)), "out") }
    })
}

/// Free an index. NULL is allowed. Retrievers made from it keep it alive.
///
/// # Safety
/// `index` NULL or a handle not yet freed, used by no other call.
#[no_mangle]
pub unsafe extern "C" fn finllm_index_free(index: *mut finllm_index) {
    if !index.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(index) })));
    }
}

/// Passages in the list (0 if NULL).
///
/// # Safety
/// `list` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_passages_len(list: *const finllm_passages) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { list.as_ref() }.map_or(0, |l| l.items.len())
}

/// Passage `i` of the list into `*out` (its strings owned by the list).
///
/// # Safety
/// `list` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_passages_get(
    list: *const finllm_passages,
    i: usize,
    out: *mut finllm_passage,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let list = unsafe { require(list, "list") }?;
        let p = list.items.get(i).ok_or_else(|| {
            Failure(
                FINLLM_ERROR_INVALID_ARGUMENT,
                format!("passage {i} of {}", list.items.len()),
            )
        })?;
        unsafe { put(out, p.view(), "out") }
    })
}

/// Add a copy of `*passage` to `list` (from a retrieval callback). `source` and `text` are
/// required; see finllm_passage.
///
/// # Safety
/// `list` live (the one the callback was given); `passage` valid as documented on
/// finllm_passage.
#[no_mangle]
pub unsafe extern "C" fn finllm_passages_add(
    list: *mut finllm_passages,
    passage: *const finllm_passage,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let list = unsafe { list.as_mut() }.ok_or_else(|| Failure(FINLLM_ERROR_NULL_POINTER, "list is NULL".into()))?;
        let p = unsafe { require(passage, "passage") }?;
        let source = unsafe { c_str(p.source, "passage.source") }?.to_string();
        let text = unsafe { c_str(p.text, "passage.text") }?.to_string();
        let end = if p.end == 0 {
            p.start + text.chars().count()
        } else {
            p.end
        };
        if end < p.start {
            return fail(FINLLM_ERROR_INVALID_ARGUMENT, "passage.end is before passage.start");
        }
        let opt = |s: *const c_char, name: &str| unsafe { opt_c_str(s, name) }.map(|o| o.map(str::to_string));
        let passage = Passage {
            id: opt(p.id, "passage.id")?.unwrap_or_else(|| format!("{source}#{}-{end}", p.start)),
            page: p.page.max(1),
            start: p.start,
            end,
            context: String::new(),
            score: p.score,
            vector_score: None,
            keyword_score: None,
            meta: DocMeta {
                ticker: opt(p.ticker, "passage.ticker")?,
                date: opt(p.date, "passage.date")?,
                doc_type: opt(p.doc_type, "passage.doc_type")?,
                labels: unsafe { c_str_array(p.labels, p.n_labels, "labels") }?,
                extra: Default::default(),
            },
            source,
            text,
        };
        list.items.push(CPassage::new(passage, 0, false));
        Ok(())
    })
}

/// Free a passage list. NULL is allowed.
///
/// # Safety
/// `list` NULL or a list from finllm_index_search not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_passages_free(list: *mut finllm_passages) {
    if !list.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(list) })));
    }
}

/// A retrieval function: answer `query` by adding passages, best first, to `out` with
/// finllm_passages_add, and return 0; any other value fails the request with
/// FINLLM_ERROR_RETRIEVER. It runs on the thread that called finllm_generate (or
/// finllm_engine_generate); `query` and `out` are valid only during the call. Passages outside
/// the query's filter are dropped whatever the function returns.
pub type finllm_retrieve_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, query: *const finllm_query, out: *mut finllm_passages) -> i32>;

/// A retriever over `index` (which it keeps alive); free with finllm_retriever_free.
///
/// # Safety
/// `index` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_retriever_from_index(
    index: *const finllm_index,
    out: *mut *mut finllm_retriever,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let index = unsafe { require(index, "index") }?;
        let r = finllm_retriever {
            inner: Arc::new(SharedIndex(Arc::clone(&index.inner))),
        };
        unsafe { put(out, Box::into_raw(Box::new(r)), "out") }
    })
}

/// A retriever that calls `retrieve(user_data, query, out)`; free with finllm_retriever_free.
///
/// # Safety
/// `retrieve` must be safe to call with `user_data` from any thread that runs a request with
/// this retriever, until the retriever is freed; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_retriever_from_callback(
    retrieve: finllm_retrieve_fn,
    user_data: *mut c_void,
    out: *mut *mut finllm_retriever,
) -> finllm_status {
    guard(|| {
        let Some(f) = retrieve else {
            return fail(FINLLM_ERROR_NULL_POINTER, "retrieve is NULL");
        };
        let r = finllm_retriever {
            inner: Arc::new(Callback { f, user_data }),
        };
        // SAFETY: writable per the contract.
        unsafe { put(out, Box::into_raw(Box::new(r)), "out") }
    })
}

/// Free a retriever. NULL is allowed. No request may be using it.
///
/// # Safety
/// `retriever` NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_retriever_free(retriever: *mut finllm_retriever) {
    if !retriever.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(retriever) })));
    }
}

pub(crate) fn retriever(r: &finllm_retriever) -> &dyn Retriever {
    r.inner.as_ref()
}

struct SharedIndex(Arc<RwLock<Collection>>);

impl Retriever for SharedIndex {
    fn name(&self) -> &str {
        "index"
    }

    fn retrieve(&self, query: &Query) -> finllm_core::Result<Vec<Passage>> {
        let c = self.0.read().map_err(|_| finllm_core::Error::Retriever {
            name: "index".into(),
            reason: "an earlier call panicked while changing the index".into(),
        })?;
        c.search(query)
    }
}

struct Callback {
    f: unsafe extern "C" fn(*mut c_void, *const finllm_query, *mut finllm_passages) -> i32,
    user_data: *mut c_void,
}

// SAFETY: finllm_retriever_from_callback's contract makes the caller promise the function may
// be called with user_data from any thread running a request.
unsafe impl Send for Callback {}
// SAFETY: as above.
unsafe impl Sync for Callback {}

impl Retriever for Callback {
    fn name(&self) -> &str {
        "C callback"
    }

    fn retrieve(&self, query: &Query) -> finllm_core::Result<Vec<Passage>> {
        let nul = |s: &str| std::ffi::CString::new(s).unwrap_or_default();
        let list = |v: &[String]| v.iter().map(|s| nul(s)).collect::<Vec<_>>();
        let text = nul(&query.text);
        let f = &query.filter;
        let ents = list(f.entitlements.as_deref().unwrap_or(&[]));
        let (tickers, types, sources) = (list(&f.tickers), list(&f.doc_types), list(&f.sources));
        let ptrs = |v: &[std::ffi::CString]| v.iter().map(|s| s.as_ptr()).collect::<Vec<_>>();
        let (pe, pt, pd, ps) = (ptrs(&ents), ptrs(&tickers), ptrs(&types), ptrs(&sources));
        let from = f.date_from.as_deref().map(nul);
        let to = f.date_to.as_deref().map(nul);
        let q = finllm_query {
            struct_size: std::mem::size_of::<finllm_query>() as u32,
            text: text.as_ptr(),
            k: query.k,
            mode: match query.mode {
                SearchMode::Hybrid => finllm_search_mode::FINLLM_SEARCH_HYBRID,
                SearchMode::Vector => finllm_search_mode::FINLLM_SEARCH_VECTOR,
                SearchMode::Keyword => finllm_search_mode::FINLLM_SEARCH_KEYWORD,
            },
            restricted: i32::from(f.entitlements.is_some()),
            entitlements: pe.as_ptr(),
            n_entitlements: pe.len(),
            tickers: pt.as_ptr(),
            n_tickers: pt.len(),
            doc_types: pd.as_ptr(),
            n_doc_types: pd.len(),
            sources: ps.as_ptr(),
            n_sources: ps.len(),
            date_from: from.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            date_to: to.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
        };
        let mut out = finllm_passages::default();
        // SAFETY: the function and user_data are valid per finllm_retriever_from_callback's
        // contract; q and out live through the call.
        let rc = unsafe { (self.f)(self.user_data, &q, &mut out) };
        if rc != 0 {
            return Err(finllm_core::Error::Retriever {
                name: "C callback".into(),
                reason: format!("the retrieval function returned {rc}"),
            });
        }
        Ok(out.items.into_iter().map(|p| p.passage).collect())
    }
}

/// Sources in the prompt of an answer from a request with a retriever (0 otherwise, or if
/// `gen` is NULL).
///
/// # Safety
/// `gen` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_n_citations(gen: *const crate::generate::finllm_generation) -> usize {
    // SAFETY: NULL or live per the contract.
    unsafe { gen.as_ref() }.map_or(0, |g| g.citations.len())
}

/// Source `i` of an answer (numbered i + 1 in the prompt; `cited` when the answer cites it)
/// into `*out`, its strings owned by `gen`.
///
/// # Safety
/// `gen` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_generation_citation(
    gen: *const crate::generate::finllm_generation,
    i: usize,
    out: *mut finllm_passage,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let g = unsafe { require(gen, "gen") }?;
        let c = g.citations.get(i).ok_or_else(|| {
            Failure(
                FINLLM_ERROR_INVALID_ARGUMENT,
                format!("citation {i} of {}", g.citations.len()),
            )
        })?;
        unsafe { put(out, c.view(), "out") }
    })
}
