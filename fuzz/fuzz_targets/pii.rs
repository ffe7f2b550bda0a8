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
    // Placeholders look like <ID_1>; text that already holds such a string cannot round-trip.
    if !text.contains('<') {
        assert_eq!(vault.unmask(&masked), text);
    }
    let _ = detector.redact(&text);
});
