//! `finllm pii`.

use finllm_core::compliance::pii::{PiiConfig, PiiDetector};

use crate::util::{read_stdin, CliResult};

pub(crate) fn pii(json: bool, redact: bool, threshold: f32) -> CliResult {
    let detector = PiiDetector::new(PiiConfig {
        threshold,
        ..Default::default()
    })?;
    let text = read_stdin()?;
    let masked = if redact {
        detector.redact(&text)
    } else {
        detector.pseudonymise(&text).0
    };
    if json {
        let obj = serde_json::json!({ "masked": masked, "entities": detector.detect(&text) });
        println!("{obj}");
    } else {
        print!("{masked}");
    }
    Ok(())
}
