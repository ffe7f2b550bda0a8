use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

use super::{audit_err, io_err, Envelope, StoredRecord, ZERO_HASH};
use crate::compliance::audit::chain::{chain_hash, open_reader, unhex32, FrameEnd, RawFrame};
use crate::compliance::audit::checkpoints::CheckpointEnvelope;
use crate::compliance::audit::files::{
    checkpoints_path, lock_path, open_checked, refuse_special_path, segment_numbers, segment_path, FileLock,
};
use crate::util::hex;
use crate::{Error, Result};

// ---- verification ------------------------------------------------------------------------------

/// What kind of problem [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// A frame fails its CRC: bytes were edited or damaged.
    Corrupt,
    /// A frame header is damaged: the rest of the file cannot be read.
    HeaderCorrupt,
    /// The payload is not a valid record.
    BadPayload,
    /// Sequence numbers skip: records were deleted.
    Missing,
    /// A sequence number goes backwards or repeats: records were reordered or duplicated.
    OutOfOrder,
    /// A record's `prev` is not the previous record's hash.
    ChainBroken,
    /// A record's hash does not match its content (edited and re-CRCed, or wrong key).
    HashMismatch,
    /// The last frame of the last file is incomplete (a crash; `open` truncates it).
    TornTail,
    /// A file other than the last ends in an incomplete frame: the log was truncated mid-way.
    Truncated,
    /// A rotated file is missing.
    MissingFile,
    /// Records are HMAC-chained and no key was given.
    KeyRequired,
    /// A record is chained with plain SHA-256 although a key was given: it was written, or
    /// rewritten, without the key.
    Unkeyed,
    /// The log ends before the head the caller expected.
    HeadMismatch,
    /// The log ends before a record that `PATH.checkpoints` names: records were cut off its end
    /// (or the file was emptied).
    TruncatedBelowCheckpoint,
    /// The record a checkpoint names has a different hash than the checkpoint (the log was
    /// rewritten).
    CheckpointMismatch,
    /// A checkpoint fails its CRC, chain or hash, or the checkpoint file is damaged.
    CheckpointCorrupt,
}

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyIssue {
    pub kind: IssueKind,
    /// 1-based record number in the whole log (the sequence number the record at this position
    /// should have); 0 for a problem of the checkpoint file itself.
    pub record: u64,
    pub file: PathBuf,
    /// Byte offset of the frame in `file`.
    pub offset: u64,
    pub detail: String,
}

/// The result of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub files: Vec<PathBuf>,
    /// Frames read.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Chain hash (hex) of the last record.
    pub last_hash: Option<String>,
    pub issues: Vec<VerifyIssue>,
}

impl VerifyReport {
    /// No issue at all.
    pub fn is_ok(&self) -> bool {
        self.issues.is_empty()
    }

    /// The first issue, which is the one to investigate (later ones may follow from it).
    pub fn first_issue(&self) -> Option<&VerifyIssue> {
        self.issues.first()
    }
}

/// Options for [`verify_with`].
#[derive(Clone, Default)]
pub struct VerifyOptions {
    /// The HMAC key, for logs written with one.
    pub hmac_key: Option<Vec<u8>>,
    /// The last receipt known from outside the log (`seq`, hex hash): detects a cut-off end.
    pub expected_head: Option<(u64, String)>,
}

impl std::fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<hidden>"))
            .field("expected_head", &self.expected_head)
            .finish()
    }
}

/// Verify the whole log whose first file is `path` (and its rotated files), without a key.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport> {
    verify_with(path, &VerifyOptions::default())
}

/// Verify the whole log whose first file is `path`, and its checkpoints (`PATH.checkpoints`,
/// when present). While it runs it holds a shared lock on `PATH.lock` (when present), so that
/// writers in other processes wait and their half-written frames are not reported as torn.
pub fn verify_with(path: impl AsRef<Path>, options: &VerifyOptions) -> Result<VerifyReport> {
    let base = path.as_ref();
    refuse_special_path(base)?;
    let lock_path = lock_path(base);
    let lock_file = match std::fs::symlink_metadata(&lock_path) {
        Ok(_) => Some(open_checked(&lock_path, OpenOptions::new().read(true))?),
        Err(_) => None,
    };
    let _lock = match &lock_file {
        Some(file) => Some(FileLock::shared(file, &lock_path)?),
        None => None,
    };
    let numbers = segment_numbers(base)?;
    if numbers.is_empty() {
        return Err(audit_err(base, "no such audit log (no file at this path)"));
    }
    let mut v = Verifier::new(options);
    v.read_checkpoints(&checkpoints_path(base))?;
    // The log starts at file 0 (`PATH` itself): files missing before the first one present are
    // deleted records too.
    let mut expected_segment = 0;
    for &n in &numbers {
        let file = segment_path(base, n);
        if n != expected_segment {
            let which = if n == expected_segment + 1 {
                format!(
                    "file {} of the log is missing",
                    segment_path(base, expected_segment).display()
                )
            } else {
                format!("files {expected_segment}..={} of the log are missing", n - 1)
            };
            v.issue(IssueKind::MissingFile, &file, 0, which);
        }
        expected_segment = n + 1;
        v.verify_file(&file, n == numbers[numbers.len() - 1], Some(n == 0))?;
    }
    let last_file = segment_path(base, numbers[numbers.len() - 1]);
    v.check_checkpoints(base, &last_file);
    v.check_head(&last_file);
    Ok(v.report)
}

/// Verify an explicit list of files, in order, as one chain (e.g. an archived set).
pub fn verify_files(files: &[PathBuf], options: &VerifyOptions) -> Result<VerifyReport> {
    let mut v = Verifier::new(options);
    for (i, file) in files.iter().enumerate() {
        v.verify_file(file, i + 1 == files.len(), None)?;
    }
    if let Some(last) = files.last() {
        v.check_head(last);
    }
    Ok(v.report)
}

/// Read back every record of the log at `path` that passes its CRC, in file order. For
/// investigations; use [`verify`] to judge integrity.
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<StoredRecord>> {
    let base = path.as_ref();
    let mut out = Vec::new();
    for n in segment_numbers(base)? {
        let file = segment_path(base, n);
        let mut reader = open_reader(&file)?;
        while let Ok(f) = reader.next().map_err(io_err(&file))? {
            if !f.crc_ok {
                continue;
            }
            if let Ok(env) = serde_json::from_slice::<Envelope>(&f.payload) {
                out.push(StoredRecord {
                    seq: env.seq,
                    appended_at_ms: env.appended_at_ms,
                    hash: hex(&f.hash),
                    record: env.record,
                });
            }
        }
    }
    Ok(out)
}

struct Verifier<'a> {
    options: &'a VerifyOptions,
    report: VerifyReport,
    /// Expected sequence number and prev hash of the next record (None: take the first as is).
    next_seq: Option<u64>,
    prev: Option<[u8; 32]>,
    key_warned: bool,
    /// Hash of the record whose seq the caller's head receipt names, once read.
    head_hash: Option<String>,
    /// Checkpoints that verified, and the hashes found in the log at their records.
    checkpoints: Vec<CheckpointEnvelope>,
    checkpointed: HashMap<u64, Option<[u8; 32]>>,
    /// Problems of the checkpoint file, reported after the log's own.
    checkpoint_issues: Vec<VerifyIssue>,
}

impl<'a> Verifier<'a> {
    fn new(options: &'a VerifyOptions) -> Self {
        Self {
            options,
            report: VerifyReport::default(),
            next_seq: None,
            prev: None,
            key_warned: false,
            head_hash: None,
            checkpoints: Vec::new(),
            checkpointed: HashMap::new(),
            checkpoint_issues: Vec::new(),
        }
    }

    fn position(&self) -> u64 {
        self.next_seq.unwrap_or(self.report.records + 1)
    }

    fn issue(&mut self, kind: IssueKind, file: &Path, offset: u64, detail: String) {
        let record = self.position();
        self.report.issues.push(VerifyIssue {
            kind,
            record,
            file: file.to_path_buf(),
            offset,
            detail,
        });
    }

    /// `first_of_log`: Some(true) for the log's first file (must start at seq 1 with a zero
    /// prev), Some(false) for a later one, None when unknown (explicit file lists).
    fn verify_file(&mut self, file: &Path, last_file: bool, first_of_log: Option<bool>) -> Result<()> {
        self.report.files.push(file.to_path_buf());
        if first_of_log == Some(true) && self.next_seq.is_none() {
            self.next_seq = Some(1);
            self.prev = Some(ZERO_HASH);
        }
        let mut reader = open_reader(file)?;
        loop {
            match reader.next().map_err(io_err(file))? {
                Ok(frame) => self.check(file, &frame),
                Err(FrameEnd::Clean) => return Ok(()),
                Err(FrameEnd::Torn { offset }) => {
                    let (kind, what) = if last_file {
                        (
                            IssueKind::TornTail,
                            "the last frame is incomplete (a crash; reopening truncates it)",
                        )
                    } else {
                        (
                            IssueKind::Truncated,
                            "the file ends inside a frame although later files follow",
                        )
                    };
                    self.issue(kind, file, offset, what.into());
                    return Ok(());
                }
                Err(FrameEnd::Corrupt { offset, reason }) => {
                    let rest = reader.len - offset;
                    self.issue(
                        IssueKind::HeaderCorrupt,
                        file,
                        offset,
                        format!("{reason}; the remaining {rest} bytes of this file cannot be checked"),
                    );
                    return Ok(());
                }
            }
        }
    }

    fn check(&mut self, file: &Path, f: &RawFrame) {
        self.report.records += 1;
        let position = self.position();
        if !f.crc_ok {
            self.issue(
                IssueKind::Corrupt,
                file,
                f.offset,
                "frame fails its CRC: bytes were edited or damaged".into(),
            );
            self.advance(position, f.hash);
            return;
        }
        let env: Envelope = match serde_json::from_slice(&f.payload) {
            Ok(e) => e,
            Err(e) => {
                self.issue(
                    IssueKind::BadPayload,
                    file,
                    f.offset,
                    format!("payload is not a record: {e}"),
                );
                self.advance(position, f.hash);
                return;
            }
        };
        self.check_sequence(file, f, &env);
        let stored_prev = unhex32(&env.prev);
        match (self.prev, stored_prev) {
            (_, None) => self.issue(IssueKind::BadPayload, file, f.offset, "malformed prev hash".into()),
            (Some(expected), Some(found)) if expected != found => self.issue(
                IssueKind::ChainBroken,
                file,
                f.offset,
                "prev hash is not the hash of the record before it".into(),
            ),
            _ => {}
        }
        self.check_hash(file, f, &env, stored_prev.unwrap_or(ZERO_HASH));
        if self.report.first_seq.is_none() {
            self.report.first_seq = Some(env.seq);
        }
        self.report.last_seq = Some(env.seq);
        self.report.last_hash = Some(hex(&f.hash));
        if let Some((seq, _)) = &self.options.expected_head {
            if env.seq == *seq {
                self.head_hash = Some(hex(&f.hash));
            }
        }
        let _ = env.segment; // informational: rotation order is checked by file name
        if let Some(found) = self.checkpointed.get_mut(&env.seq) {
            *found = Some(f.hash);
        }
        self.advance(env.seq, f.hash);
    }

    fn check_sequence(&mut self, file: &Path, f: &RawFrame, env: &Envelope) {
        let Some(expected) = self.next_seq else {
            return;
        };
        if env.seq > expected {
            let detail = if env.seq == expected + 1 {
                format!("record {expected} is missing (found record {})", env.seq)
            } else {
                format!(
                    "records {expected}..{} are missing (found record {})",
                    env.seq - 1,
                    env.seq
                )
            };
            self.issue(IssueKind::Missing, file, f.offset, detail);
        } else if env.seq < expected {
            self.issue(
                IssueKind::OutOfOrder,
                file,
                f.offset,
                format!(
                    "found record {} where record {expected} should be (reordered or duplicated)",
                    env.seq
                ),
            );
        }
    }

    fn check_hash(&mut self, file: &Path, f: &RawFrame, env: &Envelope, prev: [u8; 32]) {
        let key = match (env.chain.as_str(), &self.options.hmac_key) {
            // Verified with a key, every record must carry the keyed chain: otherwise anyone
            // could rewrite the log under plain SHA-256 and still pass.
            ("sha256", Some(_)) => {
                self.issue(
                    IssueKind::Unkeyed,
                    file,
                    f.offset,
                    "record is chained with plain SHA-256, not the HMAC key the log is verified with: \
                     written or rewritten without the key"
                        .into(),
                );
                return;
            }
            ("sha256", None) => None,
            ("hmac-sha256", Some(k)) => Some(k.as_slice()),
            ("hmac-sha256", None) => {
                if !self.key_warned {
                    self.key_warned = true;
                    self.issue(
                        IssueKind::KeyRequired,
                        file,
                        f.offset,
                        "records are HMAC-chained: pass the key to check their hashes".into(),
                    );
                }
                return;
            }
            (other, _) => {
                self.issue(
                    IssueKind::BadPayload,
                    file,
                    f.offset,
                    format!("unknown chain '{other}'"),
                );
                return;
            }
        };
        if chain_hash(key, &prev, &f.payload) != f.hash {
            self.issue(
                IssueKind::HashMismatch,
                file,
                f.offset,
                "hash does not match the record's content (edited, or wrong key)".into(),
            );
        }
    }

    /// Resynchronise after a record so one problem is reported once, not for every later record.
    fn advance(&mut self, seq: u64, hash: [u8; 32]) {
        self.next_seq = Some(seq + 1);
        self.prev = Some(hash);
    }

    /// Read and check `PATH.checkpoints` (absent: nothing to check); keep the checkpoints that
    /// verify, to compare with the log's records.
    fn read_checkpoints(&mut self, path: &Path) -> Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        let mut reader = open_reader(path)?;
        let mut prev = ZERO_HASH;
        let mut number = 0u64;
        loop {
            let f = match reader.next().map_err(io_err(path))? {
                Ok(f) => f,
                Err(FrameEnd::Clean) => return Ok(()),
                Err(FrameEnd::Torn { offset }) => {
                    self.sidecar_issue(
                        IssueKind::TornTail,
                        path,
                        offset,
                        "the last checkpoint is incomplete (a crash; reopening the log truncates it)".into(),
                    );
                    return Ok(());
                }
                Err(FrameEnd::Corrupt { offset, reason }) => {
                    self.sidecar_issue(
                        IssueKind::CheckpointCorrupt,
                        path,
                        offset,
                        format!("{reason}; the checkpoints after offset {offset} cannot be checked"),
                    );
                    return Ok(());
                }
            };
            number += 1;
            match self.check_checkpoint_frame(&f, prev, number) {
                Ok(ck) => self.checkpoints.push(ck),
                Err(why) => self.sidecar_issue(
                    IssueKind::CheckpointCorrupt,
                    path,
                    f.offset,
                    format!("checkpoint {number} {why}"),
                ),
            }
            prev = f.hash;
        }
    }

    fn check_checkpoint_frame(
        &mut self,
        f: &RawFrame,
        prev: [u8; 32],
        number: u64,
    ) -> Result<CheckpointEnvelope, String> {
        if !f.crc_ok {
            return Err("fails its CRC: bytes were edited or damaged".into());
        }
        let ck: CheckpointEnvelope =
            serde_json::from_slice(&f.payload).map_err(|e| format!("is not a checkpoint: {e}"))?;
        if unhex32(&ck.prev) != Some(prev) {
            return Err("does not chain to the checkpoint before it (one was removed, reordered or edited)".into());
        }
        if ck.n != number {
            return Err(format!("is numbered {} (checkpoints were removed or reordered)", ck.n));
        }
        if unhex32(&ck.hash).is_none() {
            return Err("has a malformed record hash".into());
        }
        let key = match (ck.chain.as_str(), &self.options.hmac_key) {
            ("sha256", Some(_)) => {
                return Err("is chained with plain SHA-256, not the HMAC key the log is verified with".into())
            }
            ("sha256", None) => None,
            ("hmac-sha256", Some(k)) => Some(k.as_slice()),
            // Without the key its hash cannot be checked; the log's records say KeyRequired.
            ("hmac-sha256", None) => {
                self.checkpointed.insert(ck.seq, None);
                return Ok(ck);
            }
            (other, _) => return Err(format!("has an unknown chain '{other}'")),
        };
        if chain_hash(key, &prev, &f.payload) != f.hash {
            return Err("has a hash that does not match its content (edited, or wrong key)".into());
        }
        self.checkpointed.insert(ck.seq, None);
        Ok(ck)
    }

    fn sidecar_issue(&mut self, kind: IssueKind, file: &Path, offset: u64, detail: String) {
        self.checkpoint_issues.push(VerifyIssue {
            kind,
            record: 0,
            file: file.to_path_buf(),
            offset,
            detail,
        });
    }

    /// Every checkpoint must name a record the log still has, with the same hash.
    fn check_checkpoints(&mut self, base: &Path, last_file: &Path) {
        // Where the log ends: after the last frame read, even one that failed its checks.
        let found_seq = self.next_seq.map_or(0, |n| n - 1);
        let mut cut_below: Option<&CheckpointEnvelope> = None;
        let mut issues = std::mem::take(&mut self.checkpoint_issues);
        for ck in &self.checkpoints {
            match self.checkpointed.get(&ck.seq).copied().flatten() {
                Some(hash) if Some(hash) != unhex32(&ck.hash) => issues.push(VerifyIssue {
                    kind: IssueKind::CheckpointMismatch,
                    record: ck.seq,
                    file: segment_path(base, ck.segment),
                    offset: ck.offset,
                    detail: format!(
                        "record {} has a different hash than checkpoint {} says (the log was rewritten)",
                        ck.seq, ck.n
                    ),
                }),
                Some(_) => {}
                // A missing record inside the log is reported by the chain checks already.
                None if ck.seq > found_seq && cut_below.is_none_or(|c| ck.seq > c.seq) => cut_below = Some(ck),
                None => {}
            }
        }
        if let Some(ck) = cut_below {
            let offset = std::fs::metadata(last_file).map_or(0, |m| m.len());
            issues.push(VerifyIssue {
                kind: IssueKind::TruncatedBelowCheckpoint,
                record: found_seq + 1,
                file: last_file.to_path_buf(),
                offset,
                detail: format!(
                    "the log ends at record {found_seq} but checkpoint {} names record {}: its end was cut off",
                    ck.n, ck.seq
                ),
            });
        }
        self.report.issues.extend(issues);
    }

    fn check_head(&mut self, last_file: &Path) {
        let Some((seq, hash)) = self.options.expected_head.clone() else {
            return;
        };
        let found_seq = self.report.last_seq.unwrap_or(0);
        let issue = if found_seq < seq {
            format!("the log ends at record {found_seq} but record {seq} was acknowledged: its end was cut off")
        } else {
            match &self.head_hash {
                Some(h) if *h == hash => return,
                Some(_) => format!("record {seq} has a different hash than its receipt (the log was rewritten)"),
                // The record was unreadable; that is reported already.
                None => return,
            }
        };
        self.report.issues.push(VerifyIssue {
            kind: IssueKind::HeadMismatch,
            record: seq.min(found_seq + 1),
            file: last_file.to_path_buf(),
            offset: 0,
            detail: issue,
        });
    }
}
