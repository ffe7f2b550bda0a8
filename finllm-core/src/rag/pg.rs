//! A [`Retriever`] backed by PostgreSQL with the pgvector extension: the same chunks, metadata,
//! filters and passages as the embedded [`Collection`], in the bank's own database.
//!
//! One table holds one collection (default `finllm_chunks`, plus `<table>_meta` for the
//! embedder's fingerprint). [`PgStore::push`] mirrors a collection into it, file by file: a
//! file whose bytes and metadata are unchanged is left alone, a changed one has its rows
//! replaced, and a file no longer in the collection loses its rows, all in one transaction.
//!
//! Searching: the query is embedded here with the collection's embedder; the vector ranking is
//! `ORDER BY embedding <#> query` (inner product of unit vectors, so cosine) with the filter in
//! the `WHERE` clause, so PostgreSQL never returns a row the caller may not see, and returns `k`
//! rows when `k` permitted ones exist. Without an index on `embedding` that is an exact scan; a
//! DBA may add `CREATE INDEX ... USING hnsw (embedding vector_ip_ops)`, and the queries then run
//! with `hnsw.iterative_scan = strict_order` so that filters still yield `k` rows. The keyword
//! ranking uses our own terms (the same segmentation as the embedded BM25, Chinese included)
//! stored as a `tsvector`, ranked by `ts_rank`; hybrid search fuses both by reciprocal rank
//! fusion exactly as the collection does.
//!
//! Connections: TCP or a Unix socket (`host=/run/postgresql`), over TLS as libpq's `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey` in the connection string say (see [`super::pg_tls`]:
//! `verify-full` with the bank's CA file for a database off the machine). A broken connection
//! is reopened on the next call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, Row};

use crate::error::{Error, Result};
use crate::rag::collection::Collection;
use crate::rag::embed::Embedder;
use crate::rag::keyword::terms;
use crate::rag::pg_tls::{self, client_config, split_connection_string, TlsSettings};
use crate::rag::retriever::{fuse, DocMeta, Filter, Passage, Query, Retriever, SearchMode, MAX_UNKNOWN_FOR_VECTOR};

/// The advisory lock key under which every finllm store creates its schema ("finllm" in ASCII).
const SCHEMA_LOCK: i64 = 0x6669_6e6c_6c6d;

/// How to reach and use the database.
#[derive(Debug, Clone, PartialEq)]
pub struct PgConfig {
    /// A libpq-style connection string: `postgresql://user@host:port/db` or
    /// `host=... port=... user=... dbname=...`.
    pub url: String,
    /// The chunks' table: lower-case letters, digits and `_`, at most 40 characters.
    pub table: String,
    /// Time allowed to connect, and for each statement.
    pub timeout: Duration,
    /// Candidates each ranking contributes to a hybrid search (at least `k`).
    pub candidates: usize,
    /// The constant of reciprocal rank fusion.
    pub rrf_k: f64,
    /// `hnsw.ef_search` for queries, when the table has an HNSW index.
    pub ef_search: usize,
}

impl PgConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            table: "finllm_chunks".into(),
            timeout: Duration::from_secs(30),
            candidates: 50,
            rrf_k: 60.0,
            ef_search: 100,
        }
    }
}

/// What [`PgStore::push`] did, by file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    /// Rows written.
    pub rows: usize,
}

/// A collection in PostgreSQL + pgvector. `Send + Sync`: calls take turns on one connection.
pub struct PgStore {
    config: PgConfig,
    pg: postgres::Config,
    tls: TlsSettings,
    /// rustls' settings when the connection string asks for TLS.
    tls_config: Option<rustls::ClientConfig>,
    embedder: Arc<Embedder>,
    embedder_id: String,
    client: Mutex<Option<Client>>,
    name: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("table", &self.config.table)
            .finish_non_exhaustive()
    }
}

fn valid_table(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 40
        && t.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `[x1,x2,...]`, pgvector's text form; `{:?}` prints an f32 exactly (shortest round trip).
fn vector_literal(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 12 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!("{x:?}"));
    }
    s.push(']');
    s
}

/// A `tsquery` matching any of `terms`, each quoted as one lexeme.
fn any_of(terms: &[String]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    terms
        .iter()
        .filter(|t| !t.is_empty() && seen.insert(t.as_str()))
        .map(|t| format!("'{}'", t.replace('\\', "\\\\").replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" | ")
}

fn ts_terms(text: &str) -> Vec<String> {
    let mut t: Vec<String> = terms(text).into_iter().filter(|t| !t.is_empty()).collect();
    t.sort();
    t.dedup();
    t
}

/// The columns a search reads, in the order [`PgStore::passage`] expects.
const COLUMNS: &str = "id, source, page, span_start, span_end, body, context, ticker, doc_date::text, \
                       doc_type, labels, extra::text";

/// The filter as SQL over parameters `$first..$first+5`.
fn filter_sql(first: usize) -> String {
    let p = |i: usize| format!("${}", first + i);
    format!(
        "({e}::text[] IS NULL OR labels && {e}::text[]) \
         AND (cardinality({t}::text[]) = 0 OR ticker = ANY({t}::text[])) \
         AND (cardinality({d}::text[]) = 0 OR doc_type = ANY({d}::text[])) \
         AND (cardinality({s}::text[]) = 0 OR source = ANY({s}::text[])) \
         AND ({f}::text IS NULL OR doc_date >= {f}::text::date) \
         AND ({u}::text IS NULL OR doc_date <= {u}::text::date)",
        e = p(0),
        t = p(1),
        d = p(2),
        s = p(3),
        f = p(4),
        u = p(5),
    )
}

struct FilterParams {
    entitlements: Option<Vec<String>>,
    tickers: Vec<String>,
    doc_types: Vec<String>,
    sources: Vec<String>,
    from: Option<String>,
    to: Option<String>,
}

impl FilterParams {
    fn new(f: &Filter) -> Self {
        Self {
            entitlements: f.entitlements.clone(),
            tickers: f.tickers.clone(),
            doc_types: f.doc_types.clone(),
            sources: f.sources.clone(),
            from: f.date_from.clone(),
            to: f.date_to.clone(),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.entitlements,
            &self.tickers,
            &self.doc_types,
            &self.sources,
            &self.from,
            &self.to,
        ]
    }
}

impl PgStore {
    /// Connect, create the pgvector extension and the tables when missing, and check that the
    /// table was filled by the same embedder (a different one would rank nonsense).
    pub fn connect(config: PgConfig, embedder: Arc<Embedder>) -> Result<Self> {
        if !valid_table(&config.table) {
            return Err(Error::invalid(
                "table",
                format!(
                    "{:?}: use 1-40 lower-case letters, digits and _, not starting with a digit",
                    config.table
                ),
            ));
        }
        if config.timeout.is_zero() {
            return Err(Error::invalid("timeout", "must be more than zero"));
        }
        if config.candidates == 0 || config.ef_search == 0 {
            return Err(Error::invalid(
                "candidates",
                "candidates and ef_search must be at least 1",
            ));
        }
        if !(config.rrf_k.is_finite() && config.rrf_k >= 0.0) {
            return Err(Error::invalid("rrf_k", "must be a finite number >= 0"));
        }
        let name = format!("postgres:{}", config.table);
        let (tls, url) = split_connection_string(&config.url)?;
        let tls_config = client_config(&tls)?;
        let mut pg: postgres::Config = url.parse().map_err(|e: postgres::Error| Error::Retriever {
            name: name.clone(),
            reason: format!("connection string: {e}"),
        })?;
        pg.connect_timeout(config.timeout);
        pg.application_name("finllm");
        let embedder_id = format!("dim={} {}", embedder.dim(), embedder.fingerprint());
        let store = Self {
            pg,
            tls,
            tls_config,
            embedder_id,
            embedder,
            client: Mutex::new(None),
            name,
            config,
        };
        store.with_client(|c| store.create_schema(c))?;
        Ok(store)
    }

    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// The TLS settings read from the connection string.
    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    /// Whether the open session is encrypted, and with which TLS version, as the server
    /// reports it (`pg_stat_ssl`): what an auditor asks of a link carrying client documents.
    pub fn session_tls(&self) -> Result<Option<String>> {
        self.with_client(|c| pg_tls::session_tls(c).map_err(|e| self.err("read pg_stat_ssl", &e)))
    }

    fn err(&self, what: &str, e: &postgres::Error) -> Error {
        let reason = match e.as_db_error() {
            Some(db) => format!("{what}: {} ({})", db.message(), db.code().code()),
            None => format!("{what}: {}", pg_tls::describe(e)),
        };
        Error::Retriever {
            name: self.name.clone(),
            reason,
        }
    }

    /// Run `f` on the connection, opening it first when there is none or it broke.
    fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut guard = self.client.lock().map_err(|_| Error::Retriever {
            name: self.name.clone(),
            reason: "an earlier call panicked holding the connection".into(),
        })?;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = None;
            let mut c = pg_tls::connect(&self.pg, self.tls_config.as_ref()).map_err(|e| self.err("connect", &e))?;
            let ms = self.config.timeout.as_millis().clamp(1, i32::MAX as u128);
            c.batch_execute(&format!("SET statement_timeout = {ms}"))
                .map_err(|e| self.err("set statement_timeout", &e))?;
            *guard = Some(c);
        }
        let client = guard.as_mut().expect("connected above");
        let out = f(client);
        if client.is_closed() {
            *guard = None;
        }
        out
    }

    fn create_schema(&self, c: &mut Client) -> Result<()> {
        let t = &self.config.table;
        let dim = self.embedder.dim();
        let ddl = format!(
            "CREATE EXTENSION IF NOT EXISTS vector;
             CREATE TABLE IF NOT EXISTS {t}_meta (key text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE IF NOT EXISTS {t} (
                 row_id bigserial PRIMARY KEY,
                 id text NOT NULL,
                 source text NOT NULL,
                 file_version text NOT NULL,
                 page integer NOT NULL,
                 span_start bigint NOT NULL,
                 span_end bigint NOT NULL,
                 body text NOT NULL,
                 context text NOT NULL,
                 chunk_hash text NOT NULL,
                 ticker text,
                 doc_date date,
                 doc_type text,
                 labels text[] NOT NULL,
                 extra jsonb NOT NULL,
                 terms tsvector NOT NULL,
                 embedding vector({dim}) NOT NULL);
             CREATE INDEX IF NOT EXISTS {t}_source ON {t} (source);
             CREATE INDEX IF NOT EXISTS {t}_terms ON {t} USING gin (terms);"
        );
        // Two stores opening at once (threads, processes) would race on CREATE EXTENSION and
        // CREATE TABLE IF NOT EXISTS (a unique violation in the catalogue): the schema is made
        // under a transaction-scoped advisory lock, one store at a time; an error rolls it back.
        let mut tx = c.transaction().map_err(|e| self.err("create tables", &e))?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {ddl}"))
            .map_err(|e| self.err("create tables", &e))?;
        tx.commit().map_err(|e| self.err("create tables", &e))?;
        c.execute(
            &format!("INSERT INTO {t}_meta (key, value) VALUES ('embedder', $1) ON CONFLICT (key) DO NOTHING"),
            &[&self.embedder_id],
        )
        .map_err(|e| self.err("record the embedder", &e))?;
        let row = c
            .query_one(&format!("SELECT value FROM {t}_meta WHERE key = 'embedder'"), &[])
            .map_err(|e| self.err("read the embedder", &e))?;
        let stored: String = row.get(0);
        if stored != self.embedder_id {
            return Err(Error::Retriever {
                name: self.name.clone(),
                reason: format!(
                    "table {t} was filled by another embedder ({stored}); this one is {}",
                    self.embedder_id
                ),
            });
        }
        Ok(())
    }

    /// Rows in the table.
    pub fn len(&self) -> Result<usize> {
        let t = &self.config.table;
        self.with_client(|c| {
            let row = c
                .query_one(&format!("SELECT count(*) FROM {t}"), &[])
                .map_err(|e| self.err("count", &e))?;
            Ok(row.get::<_, i64>(0).max(0) as usize)
        })
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Drop the store's tables (the chunks and `<table>_meta`), and with them everything pushed;
    /// a later push creates them again.
    pub fn drop_tables(&self) -> Result<()> {
        let t = &self.config.table;
        self.with_client(|c| {
            c.batch_execute(&format!("DROP TABLE IF EXISTS {t}; DROP TABLE IF EXISTS {t}_meta"))
                .map_err(|e| self.err("drop tables", &e))
        })
    }

    /// Make the table hold exactly `collection`'s chunks, writing only the files that changed,
    /// in one transaction (on any error the table is as it was).
    pub fn push(&self, collection: &Collection) -> Result<PushReport> {
        let coll_id = format!(
            "dim={} {}",
            collection.embedder().dim(),
            collection.embedder().fingerprint()
        );
        if coll_id != self.embedder_id {
            return Err(Error::Retriever {
                name: self.name.clone(),
                reason: format!(
                    "the collection's embedder ({coll_id}) is not the store's ({})",
                    self.embedder_id
                ),
            });
        }
        let t = &self.config.table;
        let mut by_source: BTreeMap<&str, Vec<(&crate::rag::Chunk, &[f32])>> = BTreeMap::new();
        for (chunk, v) in collection.embedded_chunks() {
            by_source.entry(chunk.source.as_str()).or_default().push((chunk, v));
        }
        self.with_client(|c| {
            // The tables may have been dropped since connect().
            self.create_schema(c)?;
            let mut tx = c.transaction().map_err(|e| self.err("begin", &e))?;
            // One writer at a time per table; readers are not blocked.
            tx.batch_execute(&format!("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE"))
                .map_err(|e| self.err("lock", &e))?;
            let stored: HashMap<String, String> = tx
                .query(
                    &format!("SELECT source, min(file_version) FROM {t} GROUP BY source"),
                    &[],
                )
                .map_err(|e| self.err("read files", &e))?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut report = PushReport::default();
            let delete = tx
                .prepare(&format!("DELETE FROM {t} WHERE source = $1"))
                .map_err(|e| self.err("prepare delete", &e))?;
            for source in stored.keys() {
                if !by_source.contains_key(source.as_str()) {
                    tx.execute(&delete, &[source]).map_err(|e| self.err("delete", &e))?;
                    report.removed.push(source.clone());
                }
            }
            let insert = tx
                .prepare(&format!(
                    "INSERT INTO {t} (id, source, file_version, page, span_start, span_end, body, context, \
                     chunk_hash, ticker, doc_date, doc_type, labels, extra, terms, embedding) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::date, $12, $13, $14::text::jsonb, \
                     array_to_tsvector($15::text[]), $16::text::vector)"
                ))
                .map_err(|e| self.err("prepare insert", &e))?;
            for (source, chunks) in &by_source {
                let version = collection.file_version(source).unwrap_or_default();
                match stored.get(*source) {
                    Some(v) if *v == version => {
                        report.unchanged.push(source.to_string());
                        continue;
                    }
                    Some(_) => {
                        tx.execute(&delete, &[source]).map_err(|e| self.err("delete", &e))?;
                        report.replaced.push(source.to_string());
                    }
                    None => report.added.push(source.to_string()),
                }
                for (chunk, v) in chunks {
                    let extra = serde_json::to_string(&chunk.meta.extra).unwrap_or_else(|_| "{}".into());
                    let indexed = if chunk.context.is_empty() {
                        chunk.text.clone()
                    } else {
                        format!("{}\n{}", chunk.context, chunk.text)
                    };
                    let span = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
                    let page = i32::try_from(chunk.page).unwrap_or(i32::MAX);
                    tx.execute(
                        &insert,
                        &[
                            &chunk.id(),
                            &chunk.source,
                            &version,
                            &page,
                            &span(chunk.start),
                            &span(chunk.end),
                            &chunk.text,
                            &chunk.context,
                            &chunk.hash,
                            &chunk.meta.ticker,
                            &chunk.meta.date,
                            &chunk.meta.doc_type,
                            &chunk.meta.labels,
                            &extra,
                            &ts_terms(&indexed),
                            &vector_literal(v),
                        ],
                    )
                    .map_err(|e| self.err(&format!("insert a chunk of {source}"), &e))?;
                    report.rows += 1;
                }
            }
            tx.commit().map_err(|e| self.err("commit", &e))?;
            Ok(report)
        })
    }

    /// Search; see [`Query`]. Results are those of [`Collection::search`] on the same chunks
    /// for vector search (exact, or approximate when the table has an HNSW index), with
    /// PostgreSQL's `ts_rank` in place of BM25 for the keyword ranking.
    pub fn search(&self, query: &Query) -> Result<Vec<Passage>> {
        query.filter.validate()?;
        if query.k == 0 {
            return Ok(Vec::new());
        }
        let n = self.config.candidates.max(query.k);
        let n_sql = i64::try_from(n).unwrap_or(i64::MAX);
        let t = &self.config.table;
        let fp = FilterParams::new(&query.filter);
        let qvec = if query.mode == SearchMode::Keyword {
            None
        } else {
            Some(vector_literal(&self.embedder.embed(&[query.text.as_str()])?.remove(0)))
        };
        let tsq = if query.mode == SearchMode::Vector {
            None
        } else {
            Some(any_of(&terms(&query.text)))
        };
        let use_vector =
            query.mode != SearchMode::Hybrid || self.embedder.unknown_fraction(&query.text)? <= MAX_UNKNOWN_FOR_VECTOR;
        let (vector_rows, keyword_rows) = self.with_client(|c| {
            let mut tx = c.transaction().map_err(|e| self.err("begin", &e))?;
            tx.batch_execute(&format!(
                "SET LOCAL hnsw.ef_search = {}; SET LOCAL hnsw.iterative_scan = strict_order",
                self.config.ef_search.min(1000)
            ))
            .map_err(|e| self.err("set hnsw options", &e))?;
            let mut vector_rows = Vec::new();
            if let Some(qv) = &qvec {
                let sql = format!(
                    "SELECT {COLUMNS}, -(embedding <#> $1::text::vector) FROM {t} WHERE {} \
                     ORDER BY embedding <#> $1::text::vector, id LIMIT $2",
                    filter_sql(3)
                );
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![qv, &n_sql];
                params.extend(fp.params());
                vector_rows = tx.query(&sql, &params).map_err(|e| self.err("vector search", &e))?;
            }
            let mut keyword_rows = Vec::new();
            if let Some(q) = tsq.as_ref().filter(|q| !q.is_empty()) {
                let sql = format!(
                    "SELECT {COLUMNS}, ts_rank(terms, $1::text::tsquery) AS rank FROM {t} \
                     WHERE terms @@ $1::text::tsquery AND {} ORDER BY rank DESC, id LIMIT $2",
                    filter_sql(3)
                );
                let mut params: Vec<&(dyn ToSql + Sync)> = vec![q, &n_sql];
                params.extend(fp.params());
                keyword_rows = tx.query(&sql, &params).map_err(|e| self.err("keyword search", &e))?;
            }
            tx.commit().map_err(|e| self.err("commit", &e))?;
            Ok((vector_rows, keyword_rows))
        })?;
        // Read both rankings; fuse works on small keys: each id's place among the ids sorted,
        // so that ties fall by id as in the SQL.
        let mut passages: HashMap<String, Passage> = HashMap::new();
        let mut read = |rows: Vec<Row>| -> Result<Vec<(String, f32)>> {
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let p = self.passage(&r)?;
                let score = r
                    .try_get::<_, f64>(12)
                    .map(|x| x as f32)
                    .or_else(|_| r.try_get::<_, f32>(12))
                    .map_err(|e| self.err("read a score", &e))?;
                out.push((p.id.clone(), score));
                passages.entry(p.id.clone()).or_insert(p);
            }
            Ok(out)
        };
        let vector_hits = read(vector_rows)?;
        let keyword_hits = read(keyword_rows)?;
        let mut ids: Vec<String> = passages.keys().cloned().collect();
        ids.sort();
        let key: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
        let keyed = |hits: &[(String, f32)]| -> Vec<(usize, f32)> {
            hits.iter().map(|(id, s)| (key[id.as_str()], *s)).collect()
        };
        let fused = fuse(
            &keyed(&vector_hits),
            &keyed(&keyword_hits),
            use_vector,
            self.config.rrf_k,
            query.k,
        );
        Ok(fused
            .into_iter()
            .filter_map(|(r, f, v, k)| {
                let mut p = passages.remove(&ids[r])?;
                p.score = match query.mode {
                    SearchMode::Hybrid => f,
                    SearchMode::Vector => v.unwrap_or(0.0),
                    SearchMode::Keyword => k.unwrap_or(0.0),
                };
                p.vector_score = v;
                p.keyword_score = k;
                Some(p)
            })
            .collect())
    }

    fn passage(&self, r: &Row) -> Result<Passage> {
        let get = |e: postgres::Error| self.err("read a row", &e);
        let extra: String = r.try_get(11).map_err(get)?;
        let extra: BTreeMap<String, String> = serde_json::from_str(&extra).map_err(|e| Error::Retriever {
            name: self.name.clone(),
            reason: format!("extra metadata is not a JSON object of strings: {e}"),
        })?;
        let span = |i: usize| -> Result<usize> {
            let x: i64 = r.try_get(i).map_err(get)?;
            usize::try_from(x).map_err(|_| Error::Retriever {
                name: self.name.clone(),
                reason: format!("negative character offset {x}"),
            })
        };
        let page: i32 = r.try_get(2).map_err(get)?;
        Ok(Passage {
            id: r.try_get(0).map_err(get)?,
            source: r.try_get(1).map_err(get)?,
            page: u32::try_from(page).unwrap_or(0),
            start: span(3)?,
            end: span(4)?,
            text: r.try_get(5).map_err(get)?,
            context: r.try_get(6).map_err(get)?,
            score: 0.0,
            vector_score: None,
            keyword_score: None,
            meta: DocMeta {
                ticker: r.try_get(7).map_err(get)?,
                date: r.try_get(8).map_err(get)?,
                doc_type: r.try_get(9).map_err(get)?,
                labels: r.try_get(10).map_err(get)?,
                extra,
            },
        })
    }
}

impl Retriever for PgStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn retrieve(&self, query: &Query) -> Result<Vec<Passage>> {
        self.search(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        for ok in ["finllm_chunks", "_t", "a1"] {
            assert!(valid_table(ok), "{ok}");
        }
        for bad in ["", "1a", "A", "t;drop", "t-x", "t x", &"a".repeat(41), "tä"] {
            assert!(!valid_table(bad), "{bad}");
        }
    }

    #[test]
    fn vector_literals_round_trip_exactly() {
        let v = [0.1f32, -1.5e-7, 3.4028235e38, 0.0];
        let s = vector_literal(&v);
        let back: Vec<f32> = s[1..s.len() - 1].split(',').map(|x| x.parse().unwrap()).collect();
        assert_eq!(back, v);
    }

    #[test]
    fn tsquery_quotes_every_term() {
        let q = any_of(&["a'b".into(), "c\\d".into(), "a'b".into(), String::new()]);
        assert_eq!(q, "'a''b' | 'c\\\\d'");
    }
}
