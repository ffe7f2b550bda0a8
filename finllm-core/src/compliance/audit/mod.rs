//! Append-only, tamper-evident audit log of generation requests.
//!
//! **File format.** A log is a sequence of frames, one per record:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "FLAR"
//! 4       4     payload length, u32 little-endian (at most MAX_RECORD_BYTES)
//! 8       4     CRC32 of bytes 0..8 (so a damaged length is corruption, never a "torn tail")
//! 12      n     payload: JSON {"seq","segment","prev","appended_at_ms","chain","record"}
//! 12+n    32    chain hash = SHA-256(prev_hash || payload), or HMAC-SHA256(key, prev_hash || payload)
//! 44+n    4     CRC32 of payload || chain hash
//! ```
//!
//! The CRCs catch accidental damage and torn writes; the hash chain (each record carries the
//! previous record's hash in `prev`) catches edits, deletions and reordering. With an HMAC key a
//! forger who can rewrite the whole file still cannot produce a valid chain.
//!
//! **Durability.** [`AuditLog::append`] returns only once the record is on stable storage per the
//! [`FsyncPolicy`]. With group commit, concurrent appenders share one `fsync`: records queue up,
//! the first thread to find no commit in progress writes every queued record and syncs once, the
//! others wait on a condition variable for its result. Any write or sync error *poisons* the log:
//! that append and every later one fail. (A record too large for a frame is refused without
//! writing anything; the log stays open.)
//!
//! **Several processes.** Any number of processes (service instances, the CLI next to a service)
//! may append to one log. Each commit holds an advisory lock (`flock`; `LockFileEx` on Windows)
//! on `PATH.lock` around its writes and their `fsync`; on taking it, the writer first reads
//! whatever other processes appended since it last wrote (the file grew, or a newer rotated file
//! exists), checks that it continues the chain, and chains its records to that head. `open` scans
//! and repairs the log under the same lock, and [`verify`] takes it shared. The lock is advisory:
//! a program that writes the files without it is not excluded.
//!
//! **Recovery.** On open, a torn last frame (from a crash mid-write) is truncated and reported in
//! [`AuditLog::open_report`] (the CLI and the bindings warn about it); anything else that does not
//! verify stops the open with an error. A writer that finds another process's torn frame at the
//! end under the lock cuts it off the same way.
//!
//! **Rotation.** When a file would exceed [`AuditConfig::max_file_bytes`], the log continues in
//! `PATH.000001`, `PATH.000002`, ...; the first record of a new file chains to the last hash of
//! the previous one, and [`verify`] checks continuity across the files.
//!
//! **Checkpoints.** A hash chain alone cannot show that records were cut off its end. Every
//! [`AuditConfig::checkpoint_every`] records (default 64), on [`AuditLog::checkpoint`] and when the
//! log is dropped, the writer appends a checkpoint `{n, segment, seq, offset, hash, time_ms}` of
//! its durable head to `PATH.checkpoints`: one CRC-framed record per checkpoint, written with a
//! single write and fsynced (a crash leaves it whole or torn; a torn one is ignored by `verify` and
//! cut off by the next open), chained to the previous checkpoint with HMAC-SHA256 under the log's
//! key, or plain SHA-256 without one. [`verify`] reports
//! [`IssueKind::TruncatedBelowCheckpoint`] when the log ends before a checkpointed record,
//! [`IssueKind::CheckpointMismatch`] when that record's hash differs and
//! [`IssueKind::CheckpointCorrupt`] for a damaged or edited checkpoint file; `open` refuses a log
//! that ends below its last checkpoint. Limits: records after the last checkpoint can still be cut
//! off unnoticed, and so can the end of the checkpoint file together with the log's; without an
//! HMAC key anyone who can write the files can also recompute the checkpoints, so only accidental
//! or careless truncation is caught. Keep the latest [`RecordReceipt`] outside the log host
//! ([`VerifyOptions::expected_head`]) to close both gaps.
//!
//! **Only regular files.** The log, its rotated files, `PATH.checkpoints` and `PATH.lock` must be
//! regular files. Symbolic links (as the last path component), FIFOs, devices (`/dev/null`,
//! `/dev/full`), sockets and directories are refused with [`Error::AuditNotRegularFile`]: the
//! type is checked before opening, files are opened with `O_NOFOLLOW | O_NONBLOCK` (so a FIFO
//! swapped in cannot block the open), and checked again on the open handle.

mod chain;
pub use chain::unix_ms;
mod checkpoints;
mod files;
mod log;
mod verify;

use std::io;
use std::path::{Path, PathBuf};

use super::policy::RuleMatch;
use crate::{Error, SamplingParams};

pub use files::{checkpoints_path, lock_path, segment_path};
pub use log::AuditLog;
// Only tests use it outside `log` (this module's and the guard's).
#[cfg(test)]
pub(crate) use log::SegmentIo;
pub use verify::{
    read_records, verify, verify_files, verify_with, IssueKind, VerifyIssue, VerifyOptions, VerifyReport,
};

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"FLAR";
/// Largest payload a frame may carry; longer lengths read from a file are corruption.
pub const MAX_RECORD_BYTES: u32 = 64 << 20;
const HEADER_LEN: u64 = 12;
const TRAILER_LEN: u64 = 36;
const ZERO_HASH: [u8; 32] = [0; 32];

// ---- records -----------------------------------------------------------------------------------

/// The sampling parameters of a request, as recorded.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuditSampling {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
    pub max_tokens: usize,
}

impl AuditSampling {
    pub fn new(sampling: &SamplingParams, max_tokens: usize) -> Self {
        Self {
            temperature: sampling.temperature,
            top_k: sampling.top_k,
            top_p: sampling.top_p,
            min_p: sampling.min_p,
            repetition_penalty: sampling.repetition_penalty,
            repeat_last_n: sampling.repeat_last_n,
            seed: sampling.seed,
            max_tokens,
        }
    }
}

/// One output-policy decision, as recorded.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuditDecision {
    pub rule_id: String,
    pub category: String,
    pub action: String,
    /// Byte range in the output.
    pub start: usize,
    pub end: usize,
}

impl From<&RuleMatch> for AuditDecision {
    fn from(m: &RuleMatch) -> Self {
        Self {
            rule_id: m.rule_id.clone(),
            category: m.category.name().to_string(),
            action: m.action.name().to_string(),
            start: m.span.start,
            end: m.span.end,
        }
    }
}

/// What the log records about one request. Mask personal data before it gets here (see
/// [`PiiDetector::redact`](super::pii::PiiDetector::redact)): the log is append-only.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuditRecord {
    pub request_id: String,
    pub caller_id: String,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    /// SHA-256 (hex) of the model file.
    pub model_sha256: String,
    pub adapter: Option<String>,
    pub sampling: AuditSampling,
    pub masked_prompt: String,
    pub output: String,
    /// Ids of documents retrieved for the answer.
    pub source_ids: Vec<String>,
    pub decisions: Vec<AuditDecision>,
    pub latency_ms: f64,
    /// How the request ended: `eos`, `length`, `stop`, `cancelled`, `blocked` or `error`.
    pub finish_reason: String,
    /// Why the request failed, for `error`.
    pub error: Option<String>,
    /// Which record of the request this is: the only one ([`RecordPhase::Complete`], for
    /// `generate`/`chat`), or the [`Opened`](RecordPhase::Opened) record written before a stream's
    /// first token and the [`Closed`](RecordPhase::Closed) one written before its last.
    pub phase: RecordPhase,
    /// For a closing record: the sequence number of the request's opened record.
    pub opened_seq: Option<u64>,
    /// For an [`Explanation`](RecordPhase::Explanation) record: why the answer was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<AuditExplanation>,
}

/// An explanation of a recorded answer, appended after the answer's record: which record it
/// explains (sequence number and chain hash), how, the ranked units, and the SHA-256 of the full
/// explanation (its JSON), which the caller keeps elsewhere; an auditor checks the two agree.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuditExplanation {
    /// The explained answer's record (its closing or only record).
    pub of_seq: u64,
    pub of_hash: String,
    pub method: String,
    pub granularity: String,
    /// The answer text the attribution is for.
    pub target: String,
    /// Units ranked by score, best first (at most [`MAX_EXPLAINED_UNITS`]).
    pub units: Vec<AuditUnit>,
    /// SHA-256 (hex) of the explanation's JSON.
    pub attribution_sha256: String,
}

/// Most units an explanation record lists (the full list is in the explanation's JSON).
pub const MAX_EXPLAINED_UNITS: usize = 32;

/// One unit of a recorded explanation: its label (a source) or text, its byte span in the
/// prompt as recorded, and its score.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AuditUnit {
    pub unit: String,
    pub start: usize,
    pub end: usize,
    pub score: f64,
}

/// Which record of a request an [`AuditRecord`] is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordPhase {
    /// The one record of a non-streamed request: written, and durable, before the answer is
    /// returned. Records written before phases existed read back as this.
    #[default]
    Complete,
    /// A stream is about to start: request, caller, model hash, masked prompt and sampling, no
    /// output yet. Durable before the first token leaves the guard.
    Opened,
    /// The stream's full record (output, decisions, finish reason), with the same `request_id`
    /// and `opened_seq` naming its opened record. Durable before the last piece is released.
    Closed,
    /// An explanation of an answer recorded earlier ([`AuditRecord::explanation`]).
    Explanation,
}

impl RecordPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordPhase::Complete => "complete",
            RecordPhase::Opened => "opened",
            RecordPhase::Closed => "closed",
            RecordPhase::Explanation => "explanation",
        }
    }
}

/// Proof of an append: where the record is and its chain hash. Keep the latest receipt outside
/// the log (a database, another host) to detect truncation of the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordReceipt {
    /// 1-based sequence number over the whole log (all files).
    pub seq: u64,
    /// Chain hash (hex) after this record.
    pub hash: String,
    pub file: PathBuf,
    /// Byte offset of the frame in `file`.
    pub offset: u64,
}

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub seq: u64,
    pub appended_at_ms: u64,
    pub hash: String,
    pub record: AuditRecord,
}

#[derive(serde::Deserialize)]
struct Envelope {
    seq: u64,
    segment: u32,
    prev: String,
    appended_at_ms: u64,
    chain: String,
    record: AuditRecord,
}

// ---- configuration -----------------------------------------------------------------------------

/// When `append` syncs the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fsync` after every record, under the log's lock.
    EveryRecord,
    /// Concurrent appenders share one `fsync` (leader/follower); same guarantee, more throughput.
    #[default]
    GroupCommit,
}

/// Audit log settings.
#[derive(Clone)]
pub struct AuditConfig {
    pub fsync: FsyncPolicy,
    /// Start a new file when the current one would grow past this (default 64 MiB).
    pub max_file_bytes: u64,
    /// Key for an HMAC-SHA256 chain (recommended: at least 32 random bytes kept outside the log
    /// host). Without it the chain is plain SHA-256.
    pub hmac_key: Option<Vec<u8>>,
    /// Write a checkpoint to `PATH.checkpoints` after every this many records (and when the log
    /// is closed), so that [`verify`] detects a log cut short without a receipt kept elsewhere.
    /// 0 disables checkpoints. Default 64.
    pub checkpoint_every: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::GroupCommit,
            max_file_bytes: 64 << 20,
            hmac_key: None,
            checkpoint_every: 64,
        }
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("fsync", &self.fsync)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<hidden>"))
            .field("checkpoint_every", &self.checkpoint_every)
            .finish()
    }
}

/// What `open` found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Files of the log (the base file and its rotated segments).
    pub files: usize,
    /// Sequence number of the last record (0 for an empty log).
    pub last_seq: u64,
    /// Bytes of a torn final frame that were cut off (0 if none).
    pub truncated_bytes: u64,
    /// Offset at which the current file was truncated, if it was.
    pub truncated_at: Option<u64>,
}

fn audit_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Audit {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::log::IoWrap;
    use super::*;
    use std::fs::File;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("finllm-audit-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn record(i: usize) -> AuditRecord {
        AuditRecord {
            request_id: format!("req-{i}"),
            caller_id: "teller-7".into(),
            output: "ok".into(),
            ..Default::default()
        }
    }

    /// A file that fails writes (after `ok_writes`) or syncs on command.
    struct Faulty {
        file: File,
        writes: AtomicUsize,
        ok_writes: usize,
        fail_sync: bool,
    }

    impl SegmentIo for Faulty {
        fn write_all(&self, buf: &[u8]) -> io::Result<()> {
            if self.writes.fetch_add(1, Ordering::SeqCst) >= self.ok_writes {
                // Simulate a partial write before the error, the worst case for recovery.
                let _ = SegmentIo::write_all(&self.file, &buf[..buf.len() / 2]);
                return Err(io::Error::other("disk full (simulated)"));
            }
            SegmentIo::write_all(&self.file, buf)
        }
        fn sync(&self) -> io::Result<()> {
            if self.fail_sync {
                return Err(io::Error::other("EIO (simulated)"));
            }
            self.file.sync_data()
        }
    }

    fn faulty(ok_writes: usize, fail_sync: bool) -> IoWrap {
        Arc::new(move |file| {
            Arc::new(Faulty {
                file,
                writes: AtomicUsize::new(0),
                ok_writes,
                fail_sync,
            }) as Arc<dyn SegmentIo>
        })
    }

    #[test]
    fn write_error_fails_closed_and_reopen_recovers() {
        let dir = temp_dir("write-error");
        let path = dir.join("audit.log");
        let log = AuditLog::open_with_io(&path, AuditConfig::default(), faulty(3, false)).unwrap();
        for i in 0..3 {
            log.append(&record(i)).unwrap();
        }
        let err = log.append(&record(3)).unwrap_err();
        assert!(matches!(err, Error::AuditPoisoned { .. }), "{err}");
        assert!(log.is_poisoned());
        assert!(matches!(log.append(&record(4)), Err(Error::AuditPoisoned { .. })));
        drop(log);
        let report = verify(&path).unwrap();
        assert_eq!(report.issues[0].kind, IssueKind::TornTail);
        let log = AuditLog::open(&path, AuditConfig::default()).unwrap();
        assert!(log.open_report().truncated_bytes > 0);
        assert_eq!(log.append(&record(3)).unwrap().seq, 4);
        assert!(verify(&path).unwrap().is_ok());
    }

    #[test]
    fn sync_error_fails_every_waiter() {
        for fsync in [FsyncPolicy::EveryRecord, FsyncPolicy::GroupCommit] {
            let dir = temp_dir(&format!("sync-error-{fsync:?}"));
            let config = AuditConfig {
                fsync,
                ..Default::default()
            };
            let log = AuditLog::open_with_io(&dir.join("a.log"), config, faulty(usize::MAX, true)).unwrap();
            assert!(matches!(log.append(&record(0)), Err(Error::AuditPoisoned { .. })));
            assert!(matches!(log.append(&record(1)), Err(Error::AuditPoisoned { .. })));
        }
    }

    #[test]
    fn frame_lengths_from_files_are_bounded() {
        let dir = temp_dir("bounded");
        let path = dir.join("a.log");
        let mut header = Vec::from(MAGIC);
        header.extend_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(&[1; 100]);
        std::fs::write(&path, &header).unwrap();
        let report = verify(&path).unwrap();
        assert_eq!(report.issues[0].kind, IssueKind::HeaderCorrupt);
        assert!(AuditLog::open(&path, AuditConfig::default()).is_err());
    }

    #[test]
    fn hmac_chain_needs_the_key() {
        let dir = temp_dir("hmac");
        let path = dir.join("a.log");
        let key = vec![42u8; 32];
        let config = AuditConfig {
            hmac_key: Some(key.clone()),
            ..Default::default()
        };
        let log = AuditLog::open(&path, config.clone()).unwrap();
        let receipt = (0..5).map(|i| log.append(&record(i)).unwrap()).last().unwrap();
        drop(log);
        assert_eq!(verify(&path).unwrap().issues[0].kind, IssueKind::KeyRequired);
        let opts = VerifyOptions {
            hmac_key: Some(key),
            expected_head: Some((receipt.seq, receipt.hash.clone())),
        };
        assert!(verify_with(&path, &opts).unwrap().is_ok());
        let wrong = VerifyOptions {
            hmac_key: Some(vec![1; 32]),
            ..Default::default()
        };
        assert_eq!(verify_with(&path, &wrong).unwrap().issues[0].record, 1);
        assert!(
            AuditLog::open(&path, AuditConfig::default()).is_err(),
            "opened without the key"
        );
        let ahead = VerifyOptions {
            expected_head: Some((receipt.seq + 1, receipt.hash)),
            ..opts
        };
        assert_eq!(
            verify_with(&path, &ahead).unwrap().issues[0].kind,
            IssueKind::HeadMismatch
        );
    }
}
