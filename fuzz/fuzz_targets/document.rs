//! Documents from outside: HTML and Markdown/plain text made into text, chunked, and cut into
//! BM25 terms. Chunks must be exact spans of the text, within the token limit.
#![no_main]

use finllm_core::rag::chunk::{chunk_document, ChunkerConfig};
use finllm_core::rag::ingest::{parse_document, DocKind};
use finllm_core::rag::keyword::terms;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let kind = if selector % 2 == 0 { DocKind::Html } else { DocKind::Markdown };
    let Ok(doc) = parse_document(bytes, kind, "fuzz") else { return };
    // One token per whitespace-separated word and per CJK character, as a stand-in embedder.
    let count = |s: &str| -> finllm_core::Result<usize> {
        Ok(s.split_whitespace().map(|w| w.chars().filter(|c| !c.is_ascii()).count().max(1)).sum())
    };
    let config = ChunkerConfig {
        max_tokens: 8 + usize::from(selector % 32),
        overlap_tokens: usize::from(selector % 4),
    };
    let pieces = chunk_document(&doc, &config, &count).expect("chunking a parsed document");
    let chars: Vec<char> = doc.text.chars().collect();
    for p in &pieces {
        assert!(p.start <= p.end && p.end <= chars.len());
        assert_eq!(p.text, chars[p.start..p.end].iter().collect::<String>());
    }
    let _ = terms(&doc.text);
});
