//! A document store in PostgreSQL + pgvector: the same chunks, filters and passages as
//! finllm_index, and a retriever for requests.

use std::ffi::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use finllm_core::rag::{PgConfig, PgStore};

use crate::boundary::{c_str, fail, guard, opt_c_str, put, require, Failure};
use crate::rag::{finllm_embedder, finllm_index, finllm_passages, finllm_query, finllm_retriever, CPassage};
use crate::status::finllm_status::{self, *};

/// A collection in PostgreSQL with pgvector. Thread safety: any number of threads may use one
/// handle (calls take turns on its connection); not to be freed while a call is using it.
pub struct finllm_pg {
    inner: Arc<PgStore>,
}

/// What finllm_pg_push did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct finllm_push_report {
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Rows written.
    pub rows: usize,
}

/// Connect to PostgreSQL at `url` (`postgresql://user@host:port/db` or `host=... dbname=...`;
/// no TLS), creating the pgvector extension and the table `table` (NULL: `finllm_chunks`) when
/// missing. `timeout_ms` bounds connecting and each statement (0: 30 s). `embedder` must be the
/// one that builds the indexes pushed here. A server that cannot be reached, or a table
/// holding another embedder's vectors: FINLLM_ERROR_RETRIEVER. Free with finllm_pg_free.
///
/// # Safety
/// `url` NUL-terminated; `table` NULL or NUL-terminated; `embedder` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_pg_open(
    url: *const c_char,
    table: *const c_char,
    embedder: *const finllm_embedder,
    timeout_ms: u32,
    out: *mut *mut finllm_pg,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let url = unsafe { c_str(url, "url") }?;
        let table = unsafe { opt_c_str(table, "table") }?;
        let e = unsafe { require(embedder, "embedder") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let mut config = PgConfig::new(url);
        if let Some(t) = table {
            config.table = t.to_string();
        }
        if timeout_ms > 0 {
            config.timeout = Duration::from_millis(u64::from(timeout_ms));
        }
        let store = PgStore::connect(config, Arc::clone(&e.inner))?;
        let handle = Box::into_raw(Box::new(finllm_pg { inner: Arc::new(store) }));
        unsafe { put(out, handle, "out") }
    })
}

/// Make the table hold exactly `index`'s chunks, writing only the files that changed, in one
/// transaction (on failure the table is unchanged). `report` may be NULL.
///
/// # Safety
/// `store` and `index` live; `report` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_pg_push(
    store: *const finllm_pg,
    index: *const finllm_index,
    report: *mut finllm_push_report,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let store = unsafe { require(store, "store") }?;
        let index = unsafe { require(index, "index") }?;
        let collection = index.inner.read().map_err(|_| {
            Failure(
                FINLLM_ERROR_RETRIEVER,
                "the index is unusable: an earlier call panicked while changing it".into(),
            )
        })?;
        let r = store.inner.push(&collection)?;
        if !report.is_null() {
            let c = finllm_push_report {
                added: r.added.len(),
                replaced: r.replaced.len(),
                unchanged: r.unchanged.len(),
                removed: r.removed.len(),
                rows: r.rows,
            };
            // SAFETY: writable per the contract.
            unsafe { put(report, c, "report") }?;
        }
        Ok(())
    })
}

/// Rows in the store's table into `*out`.
///
/// # Safety
/// `store` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_pg_len(store: *const finllm_pg, out: *mut usize) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let store = unsafe { require(store, "store") }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let n = store.inner.len()?;
        unsafe { put(out, n, "out") }
    })
}

/// Search the store as finllm_index_search searches an index (the filter runs inside
/// PostgreSQL); `*out` receives the passages, best first (free with finllm_passages_free).
///
/// # Safety
/// `store` live; `query` valid as documented on finllm_query; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_pg_search(
    store: *const finllm_pg,
    query: *const finllm_query,
    out: *mut *mut finllm_passages,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let store = unsafe { require(store, "store") }?;
        let q = unsafe { crate::rag::query(require(query, "query")?, None) }?;
        if out.is_null() {
            return fail(FINLLM_ERROR_NULL_POINTER, "out is NULL");
        }
        let found = store.inner.search(&q)?;
        let list = finllm_passages {
            items: found.into_iter().map(|p| CPassage::new(p, 0, false)).collect(),
        };
        unsafe { put(out, Box::into_raw(Box::new(list)), "out") }
    })
}

/// Drop the store's table and everything pushed to it (a later push creates it again).
///
/// # Safety
/// `store` live.
#[no_mangle]
pub unsafe extern "C" fn finllm_pg_drop_tables(store: *const finllm_pg) -> finllm_status {
    guard(|| {
        // SAFETY: contract forwarded from this function's documentation.
        let store = unsafe { require(store, "store") }?;
        store.inner.drop_tables()?;
        Ok(())
    })
}

/// A retriever over the store (which it keeps alive); free with finllm_retriever_free.
///
/// # Safety
/// `store` live; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn finllm_retriever_from_pg(
    store: *const finllm_pg,
    out: *mut *mut finllm_retriever,
) -> finllm_status {
    guard(|| {
        // SAFETY: contracts forwarded from this function's documentation.
        let store = unsafe { require(store, "store") }?;
        let r = finllm_retriever {
            inner: store.inner.clone(),
        };
        unsafe { put(out, Box::into_raw(Box::new(r)), "out") }
    })
}

/// Close the connection and free the handle. NULL is allowed. Retrievers made from it keep the
/// store alive.
///
/// # Safety
/// `store` NULL or a handle not yet freed, used by no other call.
#[no_mangle]
pub unsafe extern "C" fn finllm_pg_free(store: *mut finllm_pg) {
    if !store.is_null() {
        // SAFETY: per the contract the handle came from Box::into_raw and is freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(store) })));
    }
}
