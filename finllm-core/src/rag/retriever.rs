//! What retrieval is about: a [`Query`] with the caller's [`Filter`], the [`Passage`]s that
//! answer it, and the [`Retriever`] trait every source of passages implements.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::error::{Error, Result};

/// What is known about a document, and so about each of its chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocMeta {
    pub ticker: Option<String>,
    /// `YYYY-MM-DD`.
    pub date: Option<String>,
    /// e.g. `earnings_release`, `rate_decision`, `risk_disclosure`, `annual_report`.
    pub doc_type: Option<String>,
    /// Entitlement labels: a caller sees the document only when it holds one of them.
    pub labels: Vec<String>,
    /// Any other metadata.
    pub extra: BTreeMap<String, String>,
}

/// Which chunks a query may see. Every condition that is set must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// The caller's entitlements: a chunk is visible when its document has at least one of
    /// these labels (so an unlabelled document is visible to no restricted caller). `None`: an
    /// unrestricted caller (an administrator, a batch job), who sees everything.
    pub entitlements: Option<Vec<String>>,
    /// Any of these tickers (empty: any).
    pub tickers: Vec<String>,
    /// Any of these document types (empty: any).
    pub doc_types: Vec<String>,
    /// Any of these source files (empty: any).
    pub sources: Vec<String>,
    /// Documents dated on or after this day (`YYYY-MM-DD`); undated ones are then left out.
    pub date_from: Option<String>,
    /// Documents dated on or before this day.
    pub date_to: Option<String>,
}

/// `YYYY-MM-DD` with a month 01–12 and a day 01–31.
pub(crate) fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && [0, 1, 2, 3, 5, 6, 8, 9].iter().all(|&i| b[i].is_ascii_digit())
        && (1..=12).contains(&s[5..7].parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&s[8..10].parse::<u32>().unwrap_or(0))
}

impl Filter {
    /// Refuse malformed dates, so a typo never silently admits or hides documents.
    pub fn validate(&self) -> Result<()> {
        for (name, d) in [("date_from", &self.date_from), ("date_to", &self.date_to)] {
            if let Some(d) = d {
                if !is_iso_date(d) {
                    return Err(Error::invalid(name, format!("{d:?} is not YYYY-MM-DD")));
                }
            }
        }
        Ok(())
    }

    /// Whether a chunk of `source` with `meta` passes the filter.
    pub fn admits(&self, source: &str, meta: &DocMeta) -> bool {
        let any = |list: &[String], v: &Option<String>| list.is_empty() || v.as_ref().is_some_and(|v| list.contains(v));
        self.entitlements
            .as_ref()
            .is_none_or(|ents| meta.labels.iter().any(|l| ents.contains(l)))
            && any(&self.tickers, &meta.ticker)
            && any(&self.doc_types, &meta.doc_type)
            && (self.sources.is_empty() || self.sources.iter().any(|s| s == source))
            && self
                .date_from
                .as_ref()
                .is_none_or(|from| meta.date.as_ref().is_some_and(|d| d >= from))
            && self
                .date_to
                .as_ref()
                .is_none_or(|to| meta.date.as_ref().is_some_and(|d| d <= to))
    }
}

/// How results are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Vector and keyword rankings fused by reciprocal rank fusion.
    #[default]
    Hybrid,
    /// Cosine similarity of the embeddings only.
    Vector,
    /// BM25 only.
    Keyword,
}

impl SearchMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "hybrid" => Ok(Self::Hybrid),
            "vector" => Ok(Self::Vector),
            "keyword" | "bm25" => Ok(Self::Keyword),
            _ => Err(Error::invalid(
                "mode",
                format!("{s:?} is not hybrid, vector or keyword"),
            )),
        }
    }
}

/// A search: the question, how many passages, how to rank them and what the caller may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub text: String,
    pub k: usize,
    pub mode: SearchMode,
    pub filter: Filter,
}

impl Query {
    pub fn new(text: impl Into<String>, k: usize) -> Self {
        Self {
            text: text.into(),
            k,
            mode: SearchMode::Hybrid,
            filter: Filter::default(),
        }
    }
}

/// One retrieved passage, best first in a result list.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    /// Stable id, recorded in audit logs (`source#start-end` for a collection).
    pub id: String,
    pub source: String,
    /// Page, from 1.
    pub page: u32,
    /// Character span in the source document's text.
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// Title and heading above the passage.
    pub context: String,
    /// The ranking's score: fused (hybrid), cosine (vector) or BM25 (keyword).
    pub score: f32,
    pub vector_score: Option<f32>,
    pub keyword_score: Option<f32>,
    pub meta: DocMeta,
}

/// Anything that answers queries with passages: the embedded [`Collection`](crate::rag::Collection), a PostgreSQL
/// store, or a bank's own search service (from Python or C through the bindings).
/// Implementations must honour [`Query::filter`]; [`ask`](crate::rag::ask) checks it again on what they return.
pub trait Retriever: Send + Sync {
    /// A short name for errors and logs.
    fn name(&self) -> &str;
    fn retrieve(&self, query: &Query) -> Result<Vec<Passage>>;
}

/// A hybrid search leaves the vector ranking out when more than this share of the query's
/// tokens are unknown to the embedder: a question in a language its vocabulary lacks (Chinese
/// for all-MiniLM-L6-v2) is mostly `[UNK]` to it, and its ranking is noise that would only push
/// the keyword ranking's hits down.
pub const MAX_UNKNOWN_FOR_VECTOR: f32 = 0.2;

/// Reciprocal rank fusion of a vector and a keyword ranking (each best first): an item's fused
/// score is the sum over the rankings it appears in of `1 / (rrf_k + rank)`, rank from 1; the
/// vector ranking counts only when `use_vector`. The best `k` items, best first (ties by item),
/// each with its fused score, cosine and keyword score.
pub fn fuse<K: Copy + Eq + Hash + Ord>(
    vector: &[(K, f32)],
    keyword: &[(K, f32)],
    use_vector: bool,
    rrf_k: f64,
    k: usize,
) -> Vec<(K, f32, Option<f32>, Option<f32>)> {
    let weight = if use_vector { 1.0 } else { 0.0 };
    let mut fused: HashMap<K, (f64, Option<f32>, Option<f32>)> = HashMap::new();
    for (rank, &(item, score)) in vector.iter().enumerate() {
        let e = fused.entry(item).or_default();
        e.0 += weight / (rrf_k + rank as f64 + 1.0);
        e.1 = Some(score);
    }
    for (rank, &(item, score)) in keyword.iter().enumerate() {
        let e = fused.entry(item).or_default();
        e.0 += 1.0 / (rrf_k + rank as f64 + 1.0);
        e.2 = Some(score);
    }
    let mut ranked: Vec<_> = fused.into_iter().collect();
    ranked.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
        .into_iter()
        .map(|(item, (f, v, kw))| (item, f as f32, v, kw))
        .collect()
}
