//! `finllm index`, `finllm search` and `finllm ask`: retrieval over a folder of documents.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use finllm_core::rag::{
    self, AskOptions, ChunkerConfig, Collection, CollectionConfig, Embedder, Filter, Metadata, Passage, PgConfig,
    PgStore, Query, Retriever, SearchMode,
};

use crate::options::Common;
use crate::util::CliResult;

#[derive(Args)]
pub(crate) struct IndexArgs {
    /// Folder of documents (.txt, .md, .html, .pdf; recursively). A `metadata.toml` in it
    /// gives each file's ticker, date, type and entitlement labels.
    dir: PathBuf,
    /// Index file to write. An existing one is updated: unchanged files are skipped, changed
    /// ones re-indexed, vanished ones removed.
    #[arg(long)]
    out: PathBuf,
    /// Metadata file (default: DIR/metadata.toml, if present).
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// Sentence embedder directory.
    #[arg(long, default_value = crate::DEFAULT_EMBEDDER)]
    embedder: PathBuf,
    /// Most tokens per chunk (for a new index).
    #[arg(long, default_value_t = ChunkerConfig::default().max_tokens)]
    chunk_tokens: usize,
    /// Tokens repeated between neighbouring chunks of a paragraph (for a new index).
    #[arg(long, default_value_t = ChunkerConfig::default().overlap_tokens)]
    overlap_tokens: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    pg: PgArgs,
}

/// A PostgreSQL + pgvector store.
#[derive(Args)]
pub(crate) struct PgArgs {
    /// PostgreSQL connection string (`postgresql://user@host:port/db`; the pgvector extension
    /// must be available). For `index`: mirror the index into it after updating the file.
    #[arg(long, value_name = "URL")]
    pg: Option<String>,
    /// The chunks' table in PostgreSQL.
    #[arg(long, default_value = "finllm_chunks", requires = "pg")]
    pg_table: String,
}

impl PgArgs {
    fn connect(&self, embedder: Arc<Embedder>) -> Result<Option<PgStore>, Box<dyn std::error::Error>> {
        let Some(url) = &self.pg else { return Ok(None) };
        let config = PgConfig {
            table: self.pg_table.clone(),
            ..PgConfig::new(url.clone())
        };
        Ok(Some(PgStore::connect(config, embedder)?))
    }
}

/// Where `search` and `ask` retrieve from: an index file or PostgreSQL.
#[derive(Args)]
pub(crate) struct StoreArgs {
    /// Index file written by `finllm index`.
    #[arg(long, required_unless_present = "pg", conflicts_with = "pg")]
    index: Option<PathBuf>,
    #[command(flatten)]
    pg: PgArgs,
}

impl StoreArgs {
    fn open(&self, embedder: &Path, threads: Option<usize>) -> Result<Box<dyn Retriever>, Box<dyn std::error::Error>> {
        let embedder = Arc::new(Embedder::load(embedder, threads)?);
        if let Some(store) = self.pg.connect(Arc::clone(&embedder))? {
            return Ok(Box::new(store));
        }
        let index = self.index.as_ref().ok_or("--index or --pg is required")?;
        Ok(Box::new(Collection::open(index, embedder)?))
    }
}

/// What a search may see, from the command line.
#[derive(Args)]
pub(crate) struct FilterArgs {
    /// The caller's entitlement labels (repeatable or comma-separated); a document is visible
    /// when it carries one of them. Without any, the search is unrestricted.
    #[arg(long = "entitlement", value_delimiter = ',')]
    entitlements: Vec<String>,
    /// Only these tickers (repeatable or comma-separated).
    #[arg(long = "ticker", value_delimiter = ',')]
    tickers: Vec<String>,
    /// Only these document types (repeatable or comma-separated).
    #[arg(long = "doc-type", value_delimiter = ',')]
    doc_types: Vec<String>,
    /// Only documents dated on or after this day (YYYY-MM-DD).
    #[arg(long)]
    date_from: Option<String>,
    /// Only documents dated on or before this day (YYYY-MM-DD).
    #[arg(long)]
    date_to: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            entitlements: (!self.entitlements.is_empty()).then(|| self.entitlements.clone()),
            tickers: self.tickers.clone(),
            doc_types: self.doc_types.clone(),
            sources: Vec::new(),
            date_from: self.date_from.clone(),
            date_to: self.date_to.clone(),
        }
    }
}

#[derive(Args)]
pub(crate) struct SearchArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[arg(long, default_value = crate::DEFAULT_EMBEDDER)]
    embedder: PathBuf,
    /// Passages to return.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// hybrid (vector and BM25 fused), vector or keyword.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    #[command(flatten)]
    filter: FilterArgs,
    /// Print one JSON object with `passages`.
    #[arg(long)]
    json: bool,
    #[arg(long)]
    threads: Option<usize>,
    query: String,
}

#[derive(Args)]
pub(crate) struct AskArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Passages retrieved into the prompt.
    #[arg(long, default_value_t = 4)]
    k: usize,
    /// hybrid, vector or keyword.
    #[arg(long, default_value = "hybrid")]
    mode: String,
    /// Most prompt tokens the sources may take.
    #[arg(long, default_value_t = 1024)]
    context_tokens: usize,
    #[command(flatten)]
    filter: FilterArgs,
    /// Print one JSON object (answer, citations) instead of streaming.
    #[arg(long)]
    json: bool,
    /// Then rank the sources by how much they drove the answer: occlusion, shapley, surrogate,
    /// attention or rollout (with --json, under "explanation").
    #[arg(long)]
    explain: Option<String>,
    /// Shapley permutations or surrogate ablations for --explain (default 8 and 32).
    #[arg(long, default_value_t = 0, requires = "explain")]
    explain_samples: usize,
    /// Write the explanation as a self-contained HTML report to this file.
    #[arg(long, requires = "explain")]
    explain_html: Option<PathBuf>,
    /// Write the explanation's JSON to this file (with --audit-log, the record holds its
    /// SHA-256).
    #[arg(long, requires = "explain")]
    explain_json: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
    question: String,
}

pub(crate) fn index(args: &IndexArgs) -> CliResult {
    let started = Instant::now();
    let embedder = Arc::new(Embedder::load(&args.embedder, args.threads)?);
    // Connect first: a wrong URL should not cost an indexing run.
    let store = args.pg.connect(Arc::clone(&embedder))?;
    let mut collection = if args.out.exists() {
        Collection::open(&args.out, Arc::clone(&embedder))?
    } else {
        let config = CollectionConfig {
            chunker: ChunkerConfig {
                max_tokens: args.chunk_tokens,
                overlap_tokens: args.overlap_tokens,
            },
            ..Default::default()
        };
        Collection::new(embedder, config)?
    };
    let metadata = match &args.metadata {
        Some(path) => {
            if !path.is_file() {
                return Err(format!("metadata file {} does not exist", path.display()).into());
            }
            Metadata::load(path)?
        }
        None => Metadata::load(&args.dir.join("metadata.toml"))?,
    };
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("indexing [{bar:30}] {pos}/{len} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar
    };
    let report = collection.sync_dir(&args.dir, &metadata, |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(p.file.unwrap_or("").to_string());
    })?;
    bar.finish_and_clear();
    collection.save(&args.out)?;
    for name in &report.skipped {
        eprintln!("skipped {name}: not .txt, .md, .html or .pdf");
    }
    for (name, e) in &report.failed {
        eprintln!("error: {name}: {e}");
    }
    eprintln!(
        "{}: {} files ({} added, {} replaced, {} unchanged, {} removed), {} chunks (+{} -{}) in {:.1} s",
        args.out.display(),
        collection.sources().count(),
        report.added.len(),
        report.replaced.len(),
        report.unchanged.len(),
        report.removed.len(),
        collection.len(),
        report.chunks_added,
        report.chunks_removed,
        started.elapsed().as_secs_f64()
    );
    if let Some(store) = &store {
        let pushed = store.push(&collection)?;
        eprintln!(
            "postgres table {}: {} files added, {} replaced, {} unchanged, {} removed ({} rows written)",
            store.config().table,
            pushed.added.len(),
            pushed.replaced.len(),
            pushed.unchanged.len(),
            pushed.removed.len(),
            pushed.rows
        );
    }
    if !report.failed.is_empty() {
        return Err(format!("{} files could not be indexed (the rest were)", report.failed.len()).into());
    }
    Ok(())
}

fn passage_json(p: &Passage) -> serde_json::Value {
    serde_json::json!({
        "id": p.id,
        "source": p.source,
        "page": p.page,
        "start": p.start,
        "end": p.end,
        "score": p.score,
        "vector_score": p.vector_score,
        "keyword_score": p.keyword_score,
        "ticker": p.meta.ticker,
        "date": p.meta.date,
        "doc_type": p.meta.doc_type,
        "text": p.text,
    })
}

pub(crate) fn search(args: &SearchArgs) -> CliResult {
    let retriever = args.store.open(&args.embedder, args.threads)?;
    let query = Query {
        text: args.query.clone(),
        k: args.k,
        mode: SearchMode::parse(&args.mode)?,
        filter: args.filter.filter(),
    };
    let passages = retriever.retrieve(&query)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<_> = passages.iter().map(passage_json).collect();
        writeln!(out, "{}", serde_json::json!({ "passages": list }))?;
    } else {
        for (i, p) in passages.iter().enumerate() {
            writeln!(
                out,
                "[{}] {} p.{} {}-{} score {:.4}",
                i + 1,
                p.source,
                p.page,
                p.start,
                p.end,
                p.score
            )?;
            writeln!(out, "    {}", p.text.split_whitespace().collect::<Vec<_>>().join(" "))?;
        }
    }
    Ok(())
}

pub(crate) fn ask(args: &AskArgs) -> CliResult {
    // The embedder that built the index (--embedder, shared with the policy's semantic rules).
    let retriever = args
        .store
        .open(args.common.compliance.embedder(), args.common.threads())?;
    let model = args.common.load()?;
    let guard = args
        .common
        .compliance
        .enabled()
        .then(|| args.common.compliance.guard())
        .transpose()?;
    let options = AskOptions {
        k: args.k,
        mode: SearchMode::parse(&args.mode)?,
        filter: args.filter.filter(),
        context_tokens: args.context_tokens,
        params: args.common.params(0),
        guard: guard.map(Arc::new),
        info: args.common.compliance.request(),
        ..Default::default()
    };
    let answer = if args.json {
        rag::ask(&model, &*retriever, &args.question, &options)?
    } else {
        let mut stdout = std::io::stdout().lock();
        let answer = rag::ask_streaming(&model, &*retriever, &args.question, &options, |ev| {
            let _ = stdout.write_all(ev.text.as_bytes());
            let _ = stdout.flush();
            ControlFlow::Continue(())
        })?;
        writeln!(stdout)?;
        answer
    };
    if let Some(g) = &answer.response.guard {
        super::generate::report_guard(g);
    }
    let explanation = match &args.explain {
        Some(method) => {
            let how = finllm_core::explain::ExplainOptions {
                method: method.parse()?,
                samples: args.explain_samples,
                ..Default::default()
            };
            Some(finllm_core::explain::explain_answer(
                &model,
                &answer,
                &args.question,
                &options.instructions,
                &how,
            )?)
        }
        None => None,
    };
    let mut explanation_seq = None;
    if let Some(a) = &explanation {
        if let Some(path) = &args.explain_html {
            std::fs::write(path, a.to_html()).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if let Some(path) = &args.explain_json {
            std::fs::write(path, a.to_json()?).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        // A guarded answer's explanation goes into the audit log after the answer's record.
        let receipt =
            finllm_core::explain::record_for(&answer.response, options.guard.as_deref(), &options.info.caller_id, a)?;
        if let Some(r) = receipt {
            eprintln!("explanation recorded in the audit log: seq {}", r.seq);
            explanation_seq = Some(r.seq);
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let citations: Vec<_> = answer
            .citations
            .iter()
            .map(|c| {
                let mut v = passage_json(&c.passage);
                v["number"] = c.number.into();
                v["cited"] = c.cited.into();
                v
            })
            .collect();
        let g = &answer.response.generation;
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "question": args.question,
                "answer": g.text,
                "finish": format!("{:?}", g.finish).to_lowercase(),
                "citations": citations,
                "prompt_tokens": g.timings.prompt_tokens,
                "generated_tokens": g.timings.generated_tokens,
                "explanation": explanation.as_ref().map(|a| {
                    let mut v = source_ranking_json(a);
                    v["audit_seq"] = explanation_seq.into();
                    v
                }),
            })
        )?;
    } else {
        writeln!(out, "\nSources:")?;
        for c in &answer.citations {
            let p = &c.passage;
            writeln!(
                out,
                "[{}]{} {} (page {}, characters {}-{}, score {:.4})",
                c.number,
                if c.cited { "*" } else { "" },
                p.source,
                p.page,
                p.start,
                p.end,
                p.score
            )?;
        }
        if answer.citations.is_empty() {
            writeln!(out, "(none the caller may see)")?;
        }
        if let Some(a) = &explanation {
            let method = serde_json::to_value(a.method)?;
            writeln!(
                out,
                "\nWhat drove the answer ({}, {:.0} ms):",
                method.as_str().unwrap_or("?"),
                a.timings.explain_ms
            )?;
            for u in &a.units {
                writeln!(out, "{:>10.4}  {}", u.score, u.label.as_deref().unwrap_or(&u.text))?;
            }
        }
    }
    Ok(())
}

/// The sources ranked by an explanation, for `ask --json`.
fn source_ranking_json(a: &finllm_core::explain::Attribution) -> serde_json::Value {
    serde_json::json!({
        "method": a.method,
        "sources": a.units.iter().map(|u| serde_json::json!({
            "label": u.label,
            "score": u.score,
            "start": u.start,
            "end": u.end,
            "byte_start": u.byte_start,
            "byte_end": u.byte_end,
        })).collect::<Vec<_>>(),
        "surrogate": a.surrogate,
        "explain_ms": a.timings.explain_ms,
        "forward_sequences": a.timings.forward_sequences,
    })
}
