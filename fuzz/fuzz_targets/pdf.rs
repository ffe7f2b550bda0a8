//! PDF files from outside, read through the ingestion path: a readable file gives pages that are
//! spans of the text; anything else a typed error. The PDF reader (pdf-extract on lopdf) panics
//! on some malformed files, which `parse_document` turns into that document's error: the
//! default panic hook replaces libFuzzer's aborting one so that the catch inside the library
//! does what it does for a caller, while a panic that escapes still aborts the run.
#![no_main]

use std::sync::Once;

use finllm_core::rag::ingest::{parse_document, DocKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let _ = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
    });
    let Ok(doc) = parse_document(data, DocKind::Pdf, "fuzz.pdf") else { return };
    let chars = doc.text.chars().count();
    let mut at = 0;
    for (i, page) in doc.pages.iter().enumerate() {
        assert_eq!(page.number as usize, i + 1);
        assert!(at <= page.start && page.start <= page.end && page.end <= chars);
        at = page.end;
    }
    assert!(!doc.text.trim().is_empty());
});
