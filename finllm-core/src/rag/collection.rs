//! A collection: the chunks of a set of documents, their embeddings in the vector index, the
//! keyword index over the same chunks, and the metadata that filters them; searched by vector,
//! by keyword or both fused (reciprocal rank fusion, the default); saved to and reopened from one
//! versioned, checksummed file.
//!
//! Ingesting a file whose bytes and metadata are unchanged does nothing; a changed file replaces
//! its chunks; a file gone from a synced folder loses them. Every search applies the caller's
//! [`Filter`] inside both indexes, so no result is ever outside the caller's entitlements and a
//! search still returns `k` results when `k` admitted chunks exist.
//!
//! [`Filter`]: super::retriever::Filter

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::rag::chunk::{chunk_document, ChunkerConfig};
use crate::rag::codec::{Reader, Writer};
use crate::rag::embed::Embedder;
use crate::rag::index::{IndexConfig, VectorIndex};
use crate::rag::ingest::{read_document, DocKind};
use crate::rag::keyword::Bm25;
use crate::rag::retriever::{
    fuse, is_iso_date, DocMeta, Passage, Query, Retriever, SearchMode, MAX_UNKNOWN_FOR_VECTOR,
};
use crate::util::hex;

const MAGIC: &[u8; 8] = b"FINLLMRX";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8 + 32;

/// How a collection chunks, indexes and fuses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CollectionConfig {
    pub chunker: ChunkerConfig,
    pub index: IndexConfig,
    /// Candidates each ranking contributes to a hybrid search (at least `k`).
    pub candidates: usize,
    /// The constant of reciprocal rank fusion: a result's fused score is the sum over the
    /// rankings of `1 / (rrf_k + rank)`.
    pub rrf_k: f64,
}

impl Default for CollectionConfig {
    fn default() -> Self {
        Self {
            chunker: ChunkerConfig::default(),
            index: IndexConfig::default(),
            candidates: 50,
            rrf_k: 60.0,
        }
    }
}

/// One chunk of one document.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The file it came from (relative to the ingested folder, `/`-separated).
    pub source: String,
    pub page: u32,
    /// Character span of the document's text.
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// Title and heading above the chunk; embedded and indexed with it.
    pub context: String,
    /// SHA-256 of `text`.
    pub hash: String,
    pub meta: Arc<DocMeta>,
}

impl Chunk {
    /// The chunk's id in citations and audit records: `source#start-end`.
    pub fn id(&self) -> String {
        format!("{}#{}-{}", self.source, self.start, self.end)
    }

    /// The chunk as a passage, unscored.
    pub fn passage(&self) -> Passage {
        Passage {
            id: self.id(),
            source: self.source.clone(),
            page: self.page,
            start: self.start,
            end: self.end,
            text: self.text.clone(),
            context: self.context.clone(),
            score: 0.0,
            vector_score: None,
            keyword_score: None,
            meta: (*self.meta).clone(),
        }
    }

    /// What the embedder and the keyword index see: context, then text.
    fn indexed_text(&self) -> String {
        if self.context.is_empty() {
            self.text.clone()
        } else {
            format!("{}\n{}", self.context, self.text)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct FileEntry {
    /// SHA-256 of the file's bytes.
    hash: String,
    kind: DocKind,
    meta: Arc<DocMeta>,
    slots: Vec<u32>,
}

/// What ingesting one file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Bytes and metadata as indexed before: nothing done.
    Unchanged,
    /// A new file, with this many chunks.
    Added(usize),
    /// A changed file: its old chunks replaced by this many.
    Replaced(usize),
}

/// What ingesting a folder did.
#[derive(Debug, Default)]
pub struct IngestReport {
    pub added: Vec<String>,
    pub replaced: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    /// Files that could not be read, with why; the rest of the folder is ingested anyway.
    pub failed: Vec<(String, Error)>,
    /// Files skipped for their type (not .txt, .md, .html or .pdf).
    pub skipped: Vec<String>,
    pub chunks_added: usize,
    pub chunks_removed: usize,
}

/// Progress of a folder's ingestion, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub done: usize,
    pub total: usize,
    /// The file about to be read (`None` once all are done).
    pub file: Option<&'a str>,
}

/// Chunks, their vector and keyword indexes, and their metadata. See the module docs.
pub struct Collection {
    embedder: Arc<Embedder>,
    embedder_id: String,
    config: CollectionConfig,
    /// By slot; `None` once removed. A slot is the chunk's key in both indexes.
    chunks: Vec<Option<Chunk>>,
    files: BTreeMap<String, FileEntry>,
    vectors: VectorIndex,
    keywords: Bm25,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("files", &self.files.len())
            .field("chunks", &self.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn embedder_id(e: &Embedder) -> String {
    format!("dim={} {}", e.dim(), e.fingerprint())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

impl Collection {
    /// An empty collection whose chunks `embedder` embeds.
    pub fn new(embedder: Arc<Embedder>, config: CollectionConfig) -> Result<Self> {
        config.chunker.validate()?;
        if config.candidates == 0 {
            return Err(Error::invalid("candidates", "must be at least 1"));
        }
        if !(config.rrf_k.is_finite() && config.rrf_k >= 0.0) {
            return Err(Error::invalid("rrf_k", "must be a finite number >= 0"));
        }
        Ok(Self {
            vectors: VectorIndex::new(embedder.dim(), config.index)?,
            embedder_id: embedder_id(&embedder),
            embedder,
            config,
            chunks: Vec::new(),
            files: BTreeMap::new(),
            keywords: Bm25::new(),
        })
    }

    pub fn config(&self) -> &CollectionConfig {
        &self.config
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// Chunks in the collection.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The files in the collection, by source name.
    pub fn sources(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Every chunk, in slot order.
    pub fn chunks(&self) -> impl Iterator<Item = &Chunk> {
        self.chunks.iter().flatten()
    }

    /// Every chunk with its normalised embedding, in slot order.
    pub fn embedded_chunks(&self) -> impl Iterator<Item = (&Chunk, &[f32])> {
        self.vectors
            .entries()
            .filter_map(|(slot, v)| Some((self.chunks.get(slot as usize)?.as_ref()?, v)))
    }

    /// What identifies the indexed version of `source`: the SHA-256 of its bytes and metadata
    /// together (a store mirroring the collection replaces a file's chunks when it changes).
    pub fn file_version(&self, source: &str) -> Option<String> {
        let f = self.files.get(source)?;
        Some(sha256_hex(format!("{}\n{:?}", f.hash, f.meta).as_bytes()))
    }

    /// Read, chunk and embed the file at `path` under the name `source` with `meta`.
    /// Unchanged bytes and metadata: nothing is done. On any error the collection is unchanged.
    pub fn ingest_file(&mut self, path: &Path, source: &str, meta: DocMeta) -> Result<Ingested> {
        if source.is_empty() {
            return Err(Error::invalid("source", "must not be empty"));
        }
        let kind = DocKind::from_path(path).ok_or_else(|| Error::Document {
            name: source.to_string(),
            reason: "unsupported file type (expected .txt, .md, .html or .pdf)".into(),
        })?;
        let bytes_hash = {
            let io = |e| Error::Io {
                path: path.to_path_buf(),
                source: e,
            };
            let len = std::fs::metadata(path).map_err(io)?.len();
            if len > crate::rag::ingest::MAX_DOCUMENT_BYTES {
                // read_document gives the error.
                String::new()
            } else {
                sha256_hex(&std::fs::read(path).map_err(io)?)
            }
        };
        let meta = Arc::new(meta);
        if let Some(old) = self.files.get(source) {
            if old.hash == bytes_hash && old.meta == meta {
                return Ok(Ingested::Unchanged);
            }
        }
        let doc = read_document(path, source)?;
        let embedder = Arc::clone(&self.embedder);
        let pieces = chunk_document(&doc, &self.config.chunker, &|t: &str| embedder.count_tokens(t))?;
        let chunks: Vec<Chunk> = pieces
            .into_iter()
            .map(|p| Chunk {
                source: source.to_string(),
                page: p.page,
                start: p.start,
                end: p.end,
                hash: sha256_hex(p.text.as_bytes()),
                text: p.text,
                context: p.context,
                meta: Arc::clone(&meta),
            })
            .collect();
        let texts: Vec<String> = chunks.iter().map(Chunk::indexed_text).collect();
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(32) {
            vectors.extend(self.embedder.embed(batch)?);
        }
        if self.chunks.len() + chunks.len() >= u32::MAX as usize {
            return Err(Error::invalid("collection", "holds 2^32 - 1 chunks already"));
        }
        // Everything that can fail has: change the collection.
        let replaced = self.remove_file(source).is_some();
        let mut slots = Vec::with_capacity(chunks.len());
        for ((chunk, vector), text) in chunks.into_iter().zip(vectors).zip(&texts) {
            let slot = self.chunks.len() as u32;
            self.vectors.add(u64::from(slot), &vector)?;
            self.keywords.add(slot, text);
            self.chunks.push(Some(chunk));
            slots.push(slot);
        }
        let n = slots.len();
        self.files.insert(
            source.to_string(),
            FileEntry {
                hash: bytes_hash,
                kind,
                meta,
                slots,
            },
        );
        Ok(if replaced {
            Ingested::Replaced(n)
        } else {
            Ingested::Added(n)
        })
    }

    /// Remove `source`'s chunks; how many there were (`None`: not in the collection).
    pub fn remove_file(&mut self, source: &str) -> Option<usize> {
        let entry = self.files.remove(source)?;
        for &slot in &entry.slots {
            self.vectors.delete(u64::from(slot));
            self.keywords.remove(slot);
            self.chunks[slot as usize] = None;
        }
        Some(entry.slots.len())
    }

    /// Make the collection mirror `dir` (recursively; hidden files and `metadata.toml` left
    /// out): new files are added, changed ones replaced, vanished ones removed. Metadata comes
    /// from `metadata`. A file that cannot be read is reported in
    /// [`IngestReport::failed`] and keeps whatever it had in the collection.
    pub fn sync_dir(
        &mut self,
        dir: &Path,
        metadata: &Metadata,
        mut progress: impl FnMut(Progress<'_>),
    ) -> Result<IngestReport> {
        let mut files = Vec::new();
        list_files(dir, dir, &mut files)?;
        files.sort();
        let mut report = IngestReport::default();
        let total = files.iter().filter(|(_, _, supported)| *supported).count();
        let mut done = 0;
        let mut seen = std::collections::BTreeSet::new();
        for (source, path, supported) in &files {
            if !supported {
                report.skipped.push(source.clone());
                continue;
            }
            progress(Progress {
                done,
                total,
                file: Some(source),
            });
            seen.insert(source.clone());
            let before = self.files.get(source).map_or(0, |f| f.slots.len());
            match self.ingest_file(path, source, metadata.for_file(source)) {
                Ok(Ingested::Unchanged) => report.unchanged.push(source.clone()),
                Ok(Ingested::Added(n)) => {
                    report.added.push(source.clone());
                    report.chunks_added += n;
                }
                Ok(Ingested::Replaced(n)) => {
                    report.replaced.push(source.clone());
                    report.chunks_added += n;
                    report.chunks_removed += before;
                }
                Err(e) => report.failed.push((source.clone(), e)),
            }
            done += 1;
        }
        let gone: Vec<String> = self.files.keys().filter(|s| !seen.contains(*s)).cloned().collect();
        for source in gone {
            report.chunks_removed += self.remove_file(&source).unwrap_or(0);
            report.removed.push(source);
        }
        progress(Progress {
            done,
            total,
            file: None,
        });
        Ok(report)
    }

    /// Search the collection; see [`Query`].
    pub fn search(&self, query: &Query) -> Result<Vec<Passage>> {
        query.filter.validate()?;
        if query.k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let admit = |slot: u64| {
            self.chunks
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|c| query.filter.admits(&c.source, &c.meta))
        };
        let n = self.config.candidates.max(query.k);
        let vector_hits = if query.mode == SearchMode::Keyword {
            Vec::new()
        } else {
            let q = self.embedder.embed(&[query.text.as_str()])?.remove(0);
            self.vectors
                .search(&q, n, Some(&admit))?
                .into_iter()
                .map(|h| (h.key as u32, h.score))
                .collect()
        };
        let keyword_hits = if query.mode == SearchMode::Vector {
            Vec::new()
        } else {
            self.keywords
                .search(&query.text, n, Some(&|slot: u32| admit(u64::from(slot))))
        };
        let use_vector =
            query.mode != SearchMode::Hybrid || self.embedder.unknown_fraction(&query.text)? <= MAX_UNKNOWN_FOR_VECTOR;
        let ranked = fuse(&vector_hits, &keyword_hits, use_vector, self.config.rrf_k, query.k);
        Ok(ranked
            .into_iter()
            .filter_map(|(slot, fused, v, k)| {
                let c = self.chunks[slot as usize].as_ref()?;
                let score = match query.mode {
                    SearchMode::Hybrid => fused,
                    SearchMode::Vector => v.unwrap_or(0.0),
                    SearchMode::Keyword => k.unwrap_or(0.0),
                };
                Some(Passage {
                    score,
                    vector_score: v,
                    keyword_score: k,
                    ..c.passage()
                })
            })
            .collect())
    }

    // ---- persistence ---------------------------------------------------------------------

    /// The bytes of the index file [`save`](Self::save) writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        self.encode(&mut w);
        let mut file = Vec::with_capacity(HEADER + w.buf.len());
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&VERSION.to_le_bytes());
        file.extend_from_slice(&0u32.to_le_bytes());
        file.extend_from_slice(&(w.buf.len() as u64).to_le_bytes());
        file.extend_from_slice(&Sha256::digest(&w.buf));
        file.extend_from_slice(&w.buf);
        file
    }

    /// Write the collection to `path` atomically (a temporary file, synced, renamed over it).
    pub fn save(&self, path: &Path) -> Result<()> {
        let file = self.to_bytes();
        let io = |e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let tmp = tmp_path(path);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&file)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map_err(io)
    }

    /// Reopen a collection written by [`save`](Self::save), for `embedder` (which must be the
    /// one that built it). A file that is not an index, of another version, truncated or
    /// altered anywhere is an [`Error::IndexFile`].
    pub fn open(path: &Path, embedder: Arc<Embedder>) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_bytes(&bytes, path, embedder)
    }

    /// Read a collection from the bytes of an index file (kept in a database, a blob store);
    /// `path` names it in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path, embedder: Arc<Embedder>) -> Result<Self> {
        let bad = |reason: String| Error::IndexFile {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(bad(
                "not a finllm index file (bad magic or shorter than the header)".into()
            ));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}; this finllm reads version {VERSION}: rebuild the index"
            )));
        }
        let flags = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
        if flags != 0 {
            return Err(bad(format!(
                "unknown flags {flags:#x}: written by a newer finllm, or corrupt"
            )));
        }
        let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
        if len != (bytes.len() - HEADER) as u64 {
            return Err(bad(format!(
                "truncated or extended: the header says {len} bytes of data, the file has {}",
                bytes.len() - HEADER
            )));
        }
        let payload = &bytes[HEADER..];
        if Sha256::digest(payload).as_slice() != &bytes[24..56] {
            return Err(bad("checksum mismatch: the file is corrupt; rebuild it".into()));
        }
        let mut r = Reader::new(payload, path);
        let c = Self::decode(&mut r, embedder)?;
        r.finish()?;
        Ok(c)
    }

    fn encode(&self, w: &mut Writer) {
        w.str(&self.embedder_id);
        w.len(self.config.chunker.max_tokens);
        w.len(self.config.chunker.overlap_tokens);
        w.len(self.config.candidates);
        w.f64(self.config.rrf_k);
        let file_index: HashMap<&str, usize> = self.files.keys().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
        w.len(self.files.len());
        for (source, f) in &self.files {
            w.str(source);
            w.str(&f.hash);
            w.str(f.kind.name());
            f.meta.encode(w);
            w.len(f.slots.len());
            for &s in &f.slots {
                w.u32(s);
            }
        }
        w.len(self.chunks.len());
        for c in &self.chunks {
            match c {
                None => w.u8(0),
                Some(c) => {
                    w.u8(1);
                    w.len(file_index[c.source.as_str()]);
                    w.u32(c.page);
                    w.len(c.start);
                    w.len(c.end);
                    w.str(&c.text);
                    w.str(&c.context);
                }
            }
        }
        self.vectors.encode(w);
    }

    fn decode(r: &mut Reader<'_>, embedder: Arc<Embedder>) -> Result<Self> {
        let stored_id = r.str()?;
        let id = embedder_id(&embedder);
        if stored_id != id {
            return Err(Error::Retriever {
                name: "index".into(),
                reason: format!(
                    "the index was built with another embedder ({stored_id}), not this one ({id}): query it with \
                     the embedder that built it, or rebuild it"
                ),
            });
        }
        let chunker = ChunkerConfig {
            max_tokens: r.len(1)?,
            overlap_tokens: r.len(1)?,
        };
        let candidates = r.len(1)?;
        let rrf_k = r.f64()?;
        let n_files = r.len(8)?;
        let mut files = BTreeMap::new();
        let mut names = Vec::with_capacity(n_files);
        for _ in 0..n_files {
            let source = r.str()?;
            let hash = r.str()?;
            let kind = match r.str()?.as_str() {
                "text" => DocKind::Text,
                "markdown" => DocKind::Markdown,
                "html" => DocKind::Html,
                "pdf" => DocKind::Pdf,
                other => return Err(r.error(format!("unknown document kind {other:?}"))),
            };
            let meta = Arc::new(DocMeta::decode(r)?);
            let n = r.len(4)?;
            let slots = (0..n).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
            names.push((source.clone(), Arc::clone(&meta)));
            if files
                .insert(
                    source,
                    FileEntry {
                        hash,
                        kind,
                        meta,
                        slots,
                    },
                )
                .is_some()
            {
                return Err(r.error("a file listed twice"));
            }
        }
        let n_chunks = r.len(1)?;
        let mut chunks = Vec::with_capacity(n_chunks);
        let mut keywords = Bm25::new();
        for slot in 0..n_chunks {
            if r.u8()? == 0 {
                chunks.push(None);
                continue;
            }
            let file = r.len(1)?;
            let (source, meta) = names
                .get(file)
                .ok_or_else(|| r.error("a chunk of an unknown file"))?
                .clone();
            let page = r.u32()?;
            let (start, end) = (r.len(0)?, r.len(0)?);
            let text = r.str()?;
            let context = r.str()?;
            if start > end || end - start != text.chars().count() {
                return Err(r.error("a chunk's span does not match its text"));
            }
            let chunk = Chunk {
                source,
                page,
                start,
                end,
                hash: sha256_hex(text.as_bytes()),
                text,
                context,
                meta,
            };
            keywords.add(slot as u32, &chunk.indexed_text());
            chunks.push(Some(chunk));
        }
        let vectors = VectorIndex::decode(r)?;
        // The parts must agree: each file's slots are its chunks, each chunk has one vector.
        let mut owner = vec![None; chunks.len()];
        for (source, f) in &files {
            for &s in &f.slots {
                let c = chunks
                    .get(s as usize)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| r.error("a file names a missing chunk"))?;
                if &c.source != source || owner[s as usize].replace(()).is_some() {
                    return Err(r.error("a chunk claimed by the wrong file or twice"));
                }
            }
        }
        if chunks.iter().zip(&owner).any(|(c, o)| c.is_some() != o.is_some()) {
            return Err(r.error("a chunk no file owns"));
        }
        if vectors.len() != chunks.iter().flatten().count() || vectors.dim() != embedder.dim() {
            return Err(r.error("the vector index does not match the chunks"));
        }
        let mut c = Self::new(
            embedder,
            CollectionConfig {
                chunker,
                index: *vectors.config(),
                candidates,
                rrf_k,
            },
        )
        .map_err(|e| r.error(format!("bad settings: {e}")))?;
        c.chunks = chunks;
        c.files = files;
        c.vectors = vectors;
        c.keywords = keywords;
        Ok(c)
    }
}

impl Retriever for Collection {
    fn name(&self) -> &str {
        "index"
    }

    fn retrieve(&self, query: &Query) -> Result<Vec<Passage>> {
        self.search(query)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Files under `dir`: (source name relative to `root`, path, supported type). Hidden entries,
/// symbolic links and `metadata.toml` are left out.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf, bool)>) -> Result<()> {
    let io = |e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let ty = entry.file_type().map_err(io)?;
        if ty.is_dir() {
            list_files(root, &path, out)?;
        } else if ty.is_file() && !(dir == root && name == "metadata.toml") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let source = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((source, path.clone(), DocKind::from_path(&path).is_some()));
        }
    }
    Ok(())
}

// ---- metadata -----------------------------------------------------------------------------

/// Metadata for the files of a folder, from its `metadata.toml`:
///
/// ```toml
/// [defaults]                 # optional: for files without a table of their own
/// labels = ["public"]
///
/// [files."acme_q3.md"]       # by source name (relative path)
/// ticker = "ACMB"
/// date = "2026-10-21"        # YYYY-MM-DD
/// doc_type = "earnings_release"
/// labels = ["public"]        # entitlement labels: who may see the file's chunks
/// region = "EU"              # any other string is kept as extra metadata
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    pub defaults: DocMeta,
    pub files: BTreeMap<String, DocMeta>,
}

impl Metadata {
    /// Read `path`; a missing file is empty metadata.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(Error::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Parse metadata TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let bad = |reason: String| Error::invalid("metadata", format!("{origin}: {reason}"));
        let value: toml::Table = text.parse().map_err(|e| bad(format!("not valid TOML: {e}")))?;
        let mut out = Self::default();
        for (key, v) in value {
            match key.as_str() {
                "defaults" => {
                    let t = v.as_table().ok_or_else(|| bad("[defaults] must be a table".into()))?;
                    out.defaults = DocMeta::from_table(t).map_err(|e| bad(format!("[defaults]: {e}")))?;
                }
                "files" => {
                    let t = v.as_table().ok_or_else(|| bad("[files] must be a table".into()))?;
                    for (name, f) in t {
                        let f = f
                            .as_table()
                            .ok_or_else(|| bad(format!("files.{name:?} must be a table")))?;
                        let meta = DocMeta::from_table(f).map_err(|e| bad(format!("files.{name:?}: {e}")))?;
                        out.files.insert(name.clone(), meta);
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown key {other:?} (expected [defaults] or [files.\"NAME\"])"
                    )))
                }
            }
        }
        Ok(out)
    }

    /// The metadata of `source`: its own table, or the defaults.
    pub fn for_file(&self, source: &str) -> DocMeta {
        self.files.get(source).cloned().unwrap_or_else(|| self.defaults.clone())
    }
}

impl DocMeta {
    fn from_table(t: &toml::Table) -> std::result::Result<Self, String> {
        let mut m = DocMeta::default();
        for (key, v) in t {
            let text = || {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key} must be a string"))
            };
            match key.as_str() {
                "ticker" => m.ticker = Some(text()?),
                "date" => {
                    let d = match v {
                        toml::Value::Datetime(d) => d.to_string(),
                        _ => text()?,
                    };
                    if !is_iso_date(&d) {
                        return Err(format!("date {d:?} is not YYYY-MM-DD"));
                    }
                    m.date = Some(d);
                }
                "doc_type" => m.doc_type = Some(text()?),
                "labels" => {
                    let list = v.as_array().ok_or("labels must be a list of strings")?;
                    m.labels = list
                        .iter()
                        .map(|l| l.as_str().map(str::to_string).ok_or("labels must be a list of strings"))
                        .collect::<std::result::Result<_, _>>()?;
                }
                _ => {
                    m.extra.insert(key.clone(), text()?);
                }
            }
        }
        Ok(m)
    }

    fn encode(&self, w: &mut Writer) {
        for field in [&self.ticker, &self.date, &self.doc_type] {
            match field {
                None => w.u8(0),
                Some(s) => {
                    w.u8(1);
                    w.str(s);
                }
            }
        }
        w.len(self.labels.len());
        for l in &self.labels {
            w.str(l);
        }
        w.len(self.extra.len());
        for (k, v) in &self.extra {
            w.str(k);
            w.str(v);
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self> {
        let mut opt = || -> Result<Option<String>> {
            Ok(match r.u8()? {
                0 => None,
                1 => Some(r.str()?),
                _ => return Err(r.error("bad optional field")),
            })
        };
        let (ticker, date, doc_type) = (opt()?, opt()?, opt()?);
        let n = r.len(8)?;
        let labels = (0..n).map(|_| r.str()).collect::<Result<Vec<_>>>()?;
        let n = r.len(16)?;
        let mut extra = BTreeMap::new();
        for _ in 0..n {
            let k = r.str()?;
            extra.insert(k, r.str()?);
        }
        Ok(Self {
            ticker,
            date,
            doc_type,
            labels,
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_parses_and_refuses_bad_values() {
        let m = Metadata::parse(
            "[defaults]\nlabels = [\"public\"]\n[files.\"a.md\"]\nticker = \"ACMB\"\ndate = 2026-10-21\n\
             doc_type = \"earnings_release\"\nlabels = [\"research\"]\nregion = \"EU\"\n",
            "m.toml",
        )
        .unwrap();
        let a = m.for_file("a.md");
        assert_eq!(a.ticker.as_deref(), Some("ACMB"));
        assert_eq!(a.date.as_deref(), Some("2026-10-21"));
        assert_eq!(a.labels, ["research"]);
        assert_eq!(a.extra["region"], "EU");
        assert_eq!(m.for_file("b.md").labels, ["public"]);
        for bad in [
            "[files.\"a\"]\ndate = \"21/10/2026\"",
            "[files.\"a\"]\nlabels = \"public\"",
            "[files.\"a\"]\nticker = 5",
            "[other]\nx = 1",
            "not toml [",
        ] {
            assert!(Metadata::parse(bad, "m").is_err(), "{bad}");
        }
    }
}
