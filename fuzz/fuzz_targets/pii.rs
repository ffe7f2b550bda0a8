//! The PII scanner on any text: detection, reversible masking (which must unmask back to the
//! input) and redaction.
#![no_main]

use std::sync::OnceLock;

use finllm_core::compliance::pii::{PiiConfig, PiiDetector};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static DETECTOR: OnceLock<PiiDetector> = OnceLock::new();
    let detector = DETECTOR.get_or_init(|| PiiDetector::new(PiiConfig::default()).expect("default detector"));
    let text = String::from_utf8_lossy(data);
    let entities = detector.detect(&text);
    for e in &entities {
        assert_eq!(&text[e.span.clone()], e.text);
    }
    let (masked, vault) = detector.pseudonymise(&text);
    // Unmasking restores the text exactly when each placeholder stands for one spelling: the
    // same value written twice differently ("001:db8::1", "01:db8::1"; "138 0013 8000",
    // "13800138000") shares a placeholder by design and comes back in its first spelling.
    // Placeholders look like <ID_1>, so text that already holds '<' cannot round-trip either.
    let spellings: std::collections::HashSet<&str> = entities.iter().map(|e| e.text.as_str()).collect();
    if !text.contains('<') && spellings.len() == vault.len() {
        assert_eq!(vault.unmask(&masked), text);
    }
    let _ = detector.redact(&text);
});
