//! `finllm audit verify` and `finllm audit show`.

use std::io::Write;
use std::path::Path;

use finllm_core::compliance::audit::{self, IssueKind, VerifyOptions};

use crate::util::{read_key, CliResult, Failed};

pub(crate) fn audit_verify(file: &Path, key_file: Option<&Path>, expect_head: Option<&str>, json: bool) -> CliResult {
    let expected_head = match expect_head {
        Some(h) => {
            let (seq, hash) = h.split_once(':').ok_or("--expect-head takes SEQ:HASH")?;
            Some((
                seq.parse::<u64>().map_err(|e| format!("--expect-head: bad SEQ: {e}"))?,
                hash.to_string(),
            ))
        }
        None => None,
    };
    let options = VerifyOptions {
        hmac_key: key_file.map(read_key).transpose()?,
        expected_head,
    };
    let report = audit::verify_with(file, &options)?;
    for torn in report.issues.iter().filter(|i| i.kind == IssueKind::TornTail) {
        eprintln!(
            "warning: {} ends in a torn frame at byte {} (an interrupted write); it is cut off when the log is \
             next opened for writing",
            torn.file.display(),
            torn.offset
        );
    }
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} file(s), {} record(s){}",
            report.files.len(),
            report.records,
            match (&report.last_seq, &report.last_hash) {
                (Some(seq), Some(hash)) => format!(", head {seq}:{hash}"),
                _ => String::new(),
            }
        );
        for issue in &report.issues {
            println!(
                "record {}: {:?} in {} at byte {}: {}",
                issue.record,
                issue.kind,
                issue.file.display(),
                issue.offset,
                issue.detail
            );
        }
        if report.is_ok() {
            println!("ok: the chain is intact");
        }
    }
    if !report.is_ok() {
        return Err(Box::new(Failed(format!("{} problem(s) found", report.issues.len()))));
    }
    Ok(())
}

pub(crate) fn audit_show(file: &Path) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    for r in audit::read_records(file)? {
        let line = serde_json::json!({
            "seq": r.seq, "appended_at_ms": r.appended_at_ms, "hash": r.hash, "record": r.record,
        });
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}
