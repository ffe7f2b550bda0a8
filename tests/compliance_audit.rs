//! Audit log: concurrent appends, tamper detection byte by byte, and crash safety under SIGKILL.
//!
//! Expectations come from the receipts `append` returns and from the documented frame format
//! (12-byte header `FLAR` + length + CRC, payload, 32-byte chain hash, 4-byte CRC), which this file
//! checks on its own with `crc32fast` before it damages anything; never from the verifier's code.

mod common;

#[cfg(unix)]
use common::Rng;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
#[cfg(unix)]
use std::process::Command;
use std::sync::Arc;
use std::thread;

use finllm::compliance::audit::{
    self, AuditConfig, AuditDecision, AuditLog, AuditRecord, AuditSampling, FsyncPolicy, IssueKind, RecordReceipt,
    VerifyIssue, VerifyOptions, VerifyReport,
};

const HEADER_LEN: usize = 12;
const TRAILER_LEN: usize = 36;

// ---- helpers -------------------------------------------------------------------------------------

/// A directory of its own under the system temp dir, removed on drop (also when a test fails).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("finllm-audit-it-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn log_path(&self) -> PathBuf {
        self.0.join("audit.log")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A realistic record; `pad` bytes of output make frames (and so rotation) as large as needed.
/// Floats are exact in binary so the JSON round trip must give them back bit for bit.
fn sample_record(request_id: &str, i: usize, pad: usize) -> AuditRecord {
    let n = i as u64;
    AuditRecord {
        request_id: request_id.to_string(),
        caller_id: format!("desk-{}", i % 7),
        started_at_ms: 1_700_000_000_000 + n,
        finished_at_ms: 1_700_000_000_250 + n,
        model_sha256: "5e".repeat(32),
        adapter: i.is_multiple_of(3).then(|| "fx-desk-lora".to_string()),
        sampling: AuditSampling {
            temperature: 0.5,
            top_k: 40,
            top_p: 0.875,
            seed: n,
            max_tokens: 128,
            ..Default::default()
        },
        masked_prompt: format!("Summarise the exposure of account [ACCOUNT_{i}] \"quoted\" \u{e9}"),
        output: "o".repeat(pad),
        source_ids: vec![format!("doc-{}", i % 5)],
        decisions: vec![AuditDecision {
            rule_id: "no-advice".into(),
            category: "advice".into(),
            action: "flag".into(),
            start: 0,
            end: 4,
        }],
        latency_ms: n as f64 * 0.25,
        ..Default::default()
    }
}

/// A small record, for the tamper tests that verify the log once per damaged byte.
fn small_record(i: usize, pad: usize) -> AuditRecord {
    AuditRecord {
        request_id: format!("req-{i}"),
        caller_id: "desk-7".into(),
        output: "o".repeat(pad),
        ..Default::default()
    }
}

fn config(fsync: FsyncPolicy, max_file_bytes: u64) -> AuditConfig {
    AuditConfig {
        fsync,
        max_file_bytes,
        hmac_key: None,
        ..Default::default()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn head_of(receipt: &RecordReceipt) -> VerifyOptions {
    VerifyOptions {
        expected_head: Some((receipt.seq, receipt.hash.clone())),
        ..Default::default()
    }
}

fn verify(path: &Path) -> VerifyReport {
    audit::verify(path).unwrap()
}

fn first_issue(report: &VerifyReport, what: &str) -> VerifyIssue {
    report
        .first_issue()
        .unwrap_or_else(|| panic!("{what}: not detected, verify reported no issue: {report:?}"))
        .clone()
}

fn kinds(report: &VerifyReport) -> Vec<IssueKind> {
    report.issues.iter().map(|i| i.kind).collect()
}

/// Where one record's frame lies: `start..end` of `file`.
#[derive(Clone, Debug)]
struct FrameLoc {
    seq: u64,
    file: PathBuf,
    start: usize,
    end: usize,
}

/// Locate every frame from the receipts (in seq order) and check each against the documented
/// format: magic, header CRC, length, trailer CRC, chain hash equal to the receipt's, and frames
/// that tile their file with no gap.
fn locate_frames(receipts: &[RecordReceipt]) -> Vec<FrameLoc> {
    let mut contents: HashMap<PathBuf, Vec<u8>> = HashMap::new();
    let mut frames = Vec::with_capacity(receipts.len());
    for (i, r) in receipts.iter().enumerate() {
        let bytes = contents
            .entry(r.file.clone())
            .or_insert_with(|| fs::read(&r.file).unwrap());
        let start = usize::try_from(r.offset).unwrap();
        let what = format!("record {} at {}:{start}", r.seq, r.file.display());
        assert_eq!(&bytes[start..start + 4], b"FLAR", "{what}: magic");
        assert_eq!(
            crc32fast::hash(&bytes[start..start + 8]),
            u32_at(bytes, start + 8),
            "{what}: header CRC"
        );
        let len = usize::try_from(u32_at(bytes, start + 4)).unwrap();
        let end = start + HEADER_LEN + len + TRAILER_LEN;
        let hash_at = start + HEADER_LEN + len;
        assert_eq!(
            crc32fast::hash(&bytes[start + HEADER_LEN..hash_at + 32]),
            u32_at(bytes, hash_at + 32),
            "{what}: trailer CRC"
        );
        assert_eq!(
            hex(&bytes[hash_at..hash_at + 32]),
            r.hash,
            "{what}: stored hash vs receipt"
        );
        let first_in_file = i == 0 || receipts[i - 1].file != r.file;
        if first_in_file {
            assert_eq!(start, 0, "{what}: first frame of a file must start at 0");
        }
        let next_start = match receipts.get(i + 1) {
            Some(next) if next.file == r.file => usize::try_from(next.offset).unwrap(),
            _ => bytes.len(),
        };
        assert_eq!(
            end, next_start,
            "{what}: frame must end where the next one (or the file) starts"
        );
        frames.push(FrameLoc {
            seq: r.seq,
            file: r.file.clone(),
            start,
            end,
        });
    }
    frames
}

/// Receipts must name the log's files in rotation order: PATH, PATH.000001, ... with no gap.
fn assert_rotation_order(base: &Path, receipts: &[RecordReceipt]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for r in receipts {
        if files.last() != Some(&r.file) {
            let n = u32::try_from(files.len()).unwrap();
            assert_eq!(
                r.file,
                audit::segment_path(base, n),
                "record {} is in an unexpected file",
                r.seq
            );
            files.push(r.file.clone());
        }
    }
    files
}

// ---- 1. concurrency ------------------------------------------------------------------------------

/// `threads` threads share one log and append `total` records with distinct request ids; every
/// receipt must match what is read back, in order, with no gap or duplicate.
fn check_concurrent_appends(name: &str, fsync: FsyncPolicy, total: usize, threads: usize, max_file_bytes: u64) {
    let dir = TempDir::new(name);
    let path = dir.log_path();
    let log = Arc::new(AuditLog::open(&path, config(fsync, max_file_bytes)).unwrap());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                let mut done = Vec::new();
                for i in (t..total).step_by(threads) {
                    let record = sample_record(&format!("req-{i:05}"), i, 40);
                    let receipt = log.append(&record).unwrap();
                    done.push((record, receipt));
                }
                done
            })
        })
        .collect();
    let mut appended = Vec::with_capacity(total);
    for w in workers {
        let done = w.join().unwrap();
        // One thread's appends are sequential, so its sequence numbers must increase.
        assert!(
            done.windows(2).all(|p| p[0].1.seq < p[1].1.seq),
            "{name}: a thread's receipts are out of order"
        );
        appended.extend(done);
    }
    appended.sort_by_key(|(_, r)| r.seq);
    let seqs: Vec<u64> = appended.iter().map(|(_, r)| r.seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "{name}: receipt seqs");
    let receipts: Vec<RecordReceipt> = appended.iter().map(|(_, r)| r.clone()).collect();
    let last = receipts.last().unwrap().clone();
    assert_eq!(log.head(), (last.seq, last.hash.clone()), "{name}: head");
    assert!(!log.is_poisoned());
    drop(log);

    let report = verify(&path);
    assert!(report.is_ok(), "{name}: {:?}", report.issues);
    assert_eq!(report.records, total as u64);
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(total as u64)));
    assert_eq!(report.last_hash.as_deref(), Some(last.hash.as_str()));
    assert!(audit::verify_with(&path, &head_of(&last)).unwrap().is_ok());

    let stored = audit::read_records(&path).unwrap();
    assert_eq!(stored.len(), total, "{name}: records read back");
    for (s, (record, receipt)) in stored.iter().zip(&appended) {
        assert_eq!(
            (s.seq, &s.hash),
            (receipt.seq, &receipt.hash),
            "{name}: stored vs receipt"
        );
        assert_eq!(&s.record, record, "{name}: record {} content", s.seq);
    }
    let ids: HashSet<&str> = stored.iter().map(|s| s.record.request_id.as_str()).collect();
    assert_eq!(ids.len(), total, "{name}: a request id is missing or duplicated");
    assert!((0..total).all(|i| ids.contains(format!("req-{i:05}").as_str())));

    // Receipts' files and offsets must locate real, well-formed frames that tile each file.
    let files = assert_rotation_order(&path, &receipts);
    assert_eq!(report.files, files, "{name}: files verified");
    locate_frames(&receipts);
    if max_file_bytes < (1 << 20) {
        assert!(
            files.len() >= 3,
            "{name}: expected rotation, got {} file(s)",
            files.len()
        );
        for f in &files {
            assert!(
                fs::metadata(f).unwrap().len() <= max_file_bytes,
                "{} too large",
                f.display()
            );
        }
    }
}

#[test]
fn thousand_concurrent_group_commit_appends() {
    check_concurrent_appends("group", FsyncPolicy::GroupCommit, 1_000, 16, 64 << 20);
}

#[test]
fn thousand_concurrent_group_commit_appends_across_rotation() {
    check_concurrent_appends("group-rotating", FsyncPolicy::GroupCommit, 1_000, 16, 32 << 10);
}

#[test]
fn concurrent_every_record_fsync_appends() {
    check_concurrent_appends("every-record", FsyncPolicy::EveryRecord, 200, 8, 16 << 10);
}

// ---- 2. tamper detection -------------------------------------------------------------------------

/// A log of `records` records written one by one, its frames located, and a copy of its bytes to
/// restore after each tampering.
struct Fixture {
    dir: TempDir,
    path: PathBuf,
    receipts: Vec<RecordReceipt>,
    frames: Vec<FrameLoc>,
    files: Vec<PathBuf>,
    snapshot: Vec<Vec<u8>>,
}

impl Fixture {
    fn new(name: &str, records: usize, max_file_bytes: u64, pad: usize) -> Self {
        let dir = TempDir::new(name);
        let path = dir.log_path();
        // These tests damage the log alone, as a writer without checkpoints leaves it; checkpoints,
        // which report every cut, are tested on their own (section 4).
        let no_checkpoints = AuditConfig {
            checkpoint_every: 0,
            ..config(FsyncPolicy::GroupCommit, max_file_bytes)
        };
        let log = AuditLog::open(&path, no_checkpoints).unwrap();
        let receipts: Vec<RecordReceipt> = (0..records)
            .map(|i| log.append(&small_record(i, pad)).unwrap())
            .collect();
        drop(log);
        let files = assert_rotation_order(&path, &receipts);
        let frames = locate_frames(&receipts);
        let snapshot = files.iter().map(|f| fs::read(f).unwrap()).collect();
        let fixture = Fixture {
            dir,
            path,
            receipts,
            frames,
            files,
            snapshot,
        };
        fixture.assert_intact();
        fixture
    }

    fn last(&self) -> &RecordReceipt {
        self.receipts.last().unwrap()
    }

    fn frame(&self, seq: u64) -> &FrameLoc {
        &self.frames[usize::try_from(seq - 1).unwrap()]
    }

    fn file_index(&self, file: &Path) -> usize {
        self.files.iter().position(|f| f == file).unwrap()
    }

    fn is_last_file(&self, file: &Path) -> bool {
        self.files.last().map(PathBuf::as_path) == Some(file)
    }

    fn first_seq_of_file(&self, index: usize) -> u64 {
        self.frames.iter().find(|f| f.file == self.files[index]).unwrap().seq
    }

    fn restore(&self) {
        for (file, bytes) in self.files.iter().zip(&self.snapshot) {
            fs::write(file, bytes).unwrap();
        }
        // A test that reopened the log with checkpoints left some for its own records.
        let _ = fs::remove_file(audit::checkpoints_path(&self.path));
    }

    /// The untouched log verifies, with and without its head receipt, across all its files.
    fn assert_intact(&self) {
        let report = verify(&self.path);
        assert!(report.is_ok(), "{}: {:?}", self.dir.0.display(), report.issues);
        assert_eq!(report.files, self.files);
        assert_eq!(report.records, self.receipts.len() as u64);
        assert_eq!(report.last_seq, Some(self.last().seq));
        assert_eq!(report.last_hash.as_deref(), Some(self.last().hash.as_str()));
        assert!(audit::verify_with(&self.path, &head_of(self.last())).unwrap().is_ok());
    }

    /// Each file as its list of frames, to delete, swap or move whole frames.
    fn frames_by_file(&self) -> Vec<Vec<Vec<u8>>> {
        let mut out = vec![Vec::new(); self.files.len()];
        for f in &self.frames {
            let i = self.file_index(&f.file);
            out[i].push(self.snapshot[i][f.start..f.end].to_vec());
        }
        out
    }

    fn write_frames(&self, layout: &[Vec<Vec<u8>>]) {
        for (file, frames) in self.files.iter().zip(layout) {
            fs::write(file, frames.concat()).unwrap();
        }
    }

    /// Index (file, frame within file) of record `seq`.
    fn slot(&self, seq: u64) -> (usize, usize) {
        let f = self.frame(seq);
        let file = self.file_index(&f.file);
        let within = self.frames.iter().filter(|g| g.file == f.file && g.seq < seq).count();
        (file, within)
    }
}

fn single_file_fixture(name: &str) -> Fixture {
    let fx = Fixture::new(name, 20, 64 << 20, 0);
    assert_eq!(fx.files.len(), 1);
    fx
}

fn rotated_fixture(name: &str) -> Fixture {
    let fx = Fixture::new(name, 20, 4096, 450);
    assert!(fx.files.len() >= 4, "expected at least 4 files, got {}", fx.files.len());
    fx
}

/// Overwrite one byte in place. (Rewriting the whole file would truncate it first, which ext4 answers
/// with a synchronous flush on close: far too slow to do for every byte of a log.)
fn write_byte(file: &Path, offset: usize, value: u8) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(offset as u64)).unwrap();
    f.write_all(&[value]).unwrap();
}

/// Flip every byte of every file (with `mask`), one at a time: verify must name the record whose
/// frame holds the byte, at that frame's offset; a damaged header stops the file
/// (`HeaderCorrupt`), anything else fails the frame CRC (`Corrupt`). A damaged last file must also
/// make `open` refuse, without changing the file (never "repair" tampering as a torn tail).
fn check_every_byte_flip(fx: &Fixture, mask: impl Fn(usize) -> u8) -> usize {
    let config = config(FsyncPolicy::GroupCommit, 4096);
    let mut flips = 0;
    for (index, file) in fx.files.iter().enumerate() {
        let mut bytes = fx.snapshot[index].clone();
        let file_frames: Vec<&FrameLoc> = fx.frames.iter().filter(|f| &f.file == file).collect();
        for offset in 0..bytes.len() {
            let frame = file_frames.iter().find(|f| (f.start..f.end).contains(&offset)).unwrap();
            bytes[offset] ^= mask(offset);
            write_byte(file, offset, bytes[offset]);
            let what = format!("byte {offset} of {} (record {})", file.display(), frame.seq);
            let issue = first_issue(&verify(&fx.path), &what);
            let expected_kind = if offset - frame.start < HEADER_LEN {
                IssueKind::HeaderCorrupt
            } else {
                IssueKind::Corrupt
            };
            assert_eq!(
                (issue.kind, issue.record, &issue.file, issue.offset),
                (expected_kind, frame.seq, file, frame.start as u64),
                "{what}: {issue:?}"
            );
            if fx.is_last_file(file) {
                let opened = AuditLog::open(&fx.path, config.clone());
                assert!(opened.is_err(), "{what}: open accepted a damaged last file");
                assert_eq!(
                    fs::read(file).unwrap(),
                    bytes,
                    "{what}: a failed open modified the file"
                );
            }
            bytes[offset] ^= mask(offset);
            write_byte(file, offset, bytes[offset]);
            flips += 1;
        }
        assert_eq!(fs::read(file).unwrap(), fx.snapshot[index]);
    }
    fx.assert_intact();
    flips
}

#[test]
fn every_flipped_byte_is_reported_at_its_record() {
    let single = single_file_fixture("flip-single");
    let rotated = rotated_fixture("flip-rotated");
    // Even offsets get every bit inverted, odd ones a single bit, cycling through bit positions.
    let mask = |offset: usize| {
        if offset.is_multiple_of(2) {
            0xFF
        } else {
            1 << (offset / 2 % 8)
        }
    };
    let flips = check_every_byte_flip(&single, mask) + check_every_byte_flip(&rotated, mask);
    let total: usize = [&single, &rotated]
        .iter()
        .flat_map(|fx| fx.snapshot.iter().map(Vec::len))
        .sum();
    assert_eq!(flips, total);
    println!(
        "flips: {} bytes in 1 file, {} bytes in {} files",
        single.snapshot[0].len(),
        rotated.snapshot.iter().map(Vec::len).sum::<usize>(),
        rotated.files.len()
    );
}

#[test]
fn deleted_record_is_reported_at_its_number() {
    for fx in [single_file_fixture("delete-single"), rotated_fixture("delete-rotated")] {
        let n = fx.last().seq;
        for k in 1..=n {
            let mut layout = fx.frames_by_file();
            let (file, within) = fx.slot(k);
            layout[file].remove(within);
            fx.write_frames(&layout);
            let report = verify(&fx.path);
            let what = format!("{}: record {k} deleted", fx.dir.0.display());
            if k == n {
                // The cut-off end is invisible in the log itself; only the head receipt shows it.
                assert!(report.is_ok(), "{what}: {:?}", report.issues);
                assert_eq!(report.last_seq, Some(n - 1));
                let with_head = audit::verify_with(&fx.path, &head_of(fx.last())).unwrap();
                assert_eq!(kinds(&with_head), [IssueKind::HeadMismatch], "{what}");
                assert_eq!(with_head.issues[0].record, n, "{what}");
            } else {
                // Record k+1 now sits where record k should be.
                let next = fx.frame(k + 1);
                let at = if next.file == fx.frame(k).file {
                    fx.frame(k).start
                } else {
                    next.start
                };
                let issue = first_issue(&report, &what);
                assert_eq!(
                    (issue.kind, issue.record, &issue.file, issue.offset),
                    (IssueKind::Missing, k, &next.file, at as u64),
                    "{what}: {issue:?}"
                );
                assert!(kinds(&report).contains(&IssueKind::ChainBroken), "{what}: {report:?}");
                if fx.is_last_file(&next.file) && next.file == fx.frame(k).file && within > 0 {
                    assert!(
                        AuditLog::open(&fx.path, AuditConfig::default()).is_err(),
                        "{what}: open accepted a broken chain in the last file"
                    );
                }
            }
            fx.restore();
        }
        fx.assert_intact();
    }
}

#[test]
fn swapped_adjacent_records_are_detected() {
    for fx in [single_file_fixture("swap-single"), rotated_fixture("swap-rotated")] {
        let n = fx.last().seq;
        for k in 1..n {
            let mut layout = fx.frames_by_file();
            let (fa, ia) = fx.slot(k);
            let (fb, ib) = fx.slot(k + 1);
            let a = std::mem::take(&mut layout[fa][ia]);
            let b = std::mem::replace(&mut layout[fb][ib], a);
            layout[fa][ia] = b;
            fx.write_frames(&layout);
            let what = format!("{}: records {k} and {} swapped", fx.dir.0.display(), k + 1);
            let report = verify(&fx.path);
            // Record k+1 is found where record k should be, then record k comes back late.
            let issue = first_issue(&report, &what);
            assert_eq!(
                (issue.kind, issue.record, &issue.file, issue.offset),
                (IssueKind::Missing, k, &fx.frame(k).file, fx.frame(k).start as u64),
                "{what}: {issue:?}"
            );
            assert!(kinds(&report).contains(&IssueKind::OutOfOrder), "{what}: {report:?}");
            assert!(kinds(&report).contains(&IssueKind::ChainBroken), "{what}: {report:?}");
            fx.restore();
        }
        fx.assert_intact();
    }
}

#[test]
fn truncation_at_a_frame_boundary_needs_the_head_receipt() {
    let fx = single_file_fixture("cut-boundary");
    let n = fx.last().seq;
    let file = &fx.files[0];
    for k in 1..=n {
        let cut = fx.frame(k).start;
        fs::write(file, &fx.snapshot[0][..cut]).unwrap();
        let what = format!("log cut before record {k}");
        let report = verify(&fx.path);
        assert!(report.is_ok(), "{what}: {:?}", report.issues);
        assert_eq!(report.records, k - 1, "{what}");
        let with_head = audit::verify_with(&fx.path, &head_of(fx.last())).unwrap();
        assert_eq!(kinds(&with_head), [IssueKind::HeadMismatch], "{what}: {with_head:?}");
        assert_eq!(with_head.issues[0].record, k, "{what}: the first lost record");
        // An older receipt that is still in the log is fine.
        if k > 1 {
            let older = &fx.receipts[usize::try_from(k - 2).unwrap()];
            assert!(audit::verify_with(&fx.path, &head_of(older)).unwrap().is_ok(), "{what}");
        }
    }
    fx.restore();
    fx.assert_intact();
}

#[test]
fn truncation_inside_a_frame_is_a_torn_tail_and_open_repairs_it() {
    let fx = single_file_fixture("cut-torn");
    let n = fx.last().seq;
    let file = &fx.files[0];
    for k in 1..=n {
        let frame = fx.frame(k).clone();
        let len = frame.end - frame.start;
        for into in [1, 4, 8, 11, 12, 13, len / 2, len - 36, len - 4, len - 1] {
            let cut = frame.start + into;
            fs::write(file, &fx.snapshot[0][..cut]).unwrap();
            let what = format!("log cut {into} bytes into record {k}");
            let report = verify(&fx.path);
            assert_eq!(kinds(&report), [IssueKind::TornTail], "{what}: {report:?}");
            let issue = &report.issues[0];
            assert_eq!(
                (issue.record, &issue.file, issue.offset),
                (k, file, frame.start as u64),
                "{what}"
            );
            assert_eq!(report.records, k - 1, "{what}");
        }
        // Open cuts the torn frame off, reports it, and appends continue at record k; the old
        // head receipt then shows that record k..n are not the acknowledged ones.
        let cut = frame.start + len / 2;
        fs::write(file, &fx.snapshot[0][..cut]).unwrap();
        let log = AuditLog::open(&fx.path, AuditConfig::default()).unwrap();
        let report = log.open_report().clone();
        assert_eq!(report.truncated_at, Some(frame.start as u64), "record {k}");
        assert_eq!(report.truncated_bytes, (cut - frame.start) as u64, "record {k}");
        assert_eq!(report.last_seq, k - 1, "record {k}");
        assert_eq!(fs::metadata(file).unwrap().len(), frame.start as u64, "record {k}");
        let receipt = log.append(&sample_record("after-crash", 0, 0)).unwrap();
        assert_eq!(receipt.seq, k);
        assert_eq!(receipt.offset, frame.start as u64);
        drop(log);
        assert!(verify(&fx.path).is_ok(), "record {k}");
        let with_head = audit::verify_with(&fx.path, &head_of(fx.last())).unwrap();
        assert_eq!(
            kinds(&with_head),
            [IssueKind::HeadMismatch],
            "record {k}: {with_head:?}"
        );
        fx.restore();
    }
    fx.assert_intact();
}

#[test]
fn truncating_a_rotated_file_mid_log_is_detected() {
    let fx = rotated_fixture("cut-rotated");
    for (index, file) in fx.files.iter().enumerate().take(fx.files.len() - 1) {
        let next_file_first = fx.first_seq_of_file(index + 1);
        for frame in fx.frames.iter().filter(|f| &f.file == file) {
            let k = frame.seq;
            // Inside a frame: this file ends in a partial frame although later files follow.
            fs::write(file, &fx.snapshot[index][..frame.start + 20]).unwrap();
            let what = format!("{} cut inside record {k}", file.display());
            let issue = first_issue(&verify(&fx.path), &what);
            assert_eq!(
                (issue.kind, issue.record, &issue.file, issue.offset),
                (IssueKind::Truncated, k, file, frame.start as u64),
                "{what}: {issue:?}"
            );
            // At the frame boundary: the next file starts with a later record than expected.
            fs::write(file, &fx.snapshot[index][..frame.start]).unwrap();
            let what = format!("{} cut before record {k}", file.display());
            let issue = first_issue(&verify(&fx.path), &what);
            assert_eq!(
                (issue.kind, issue.record, &issue.file, issue.offset),
                (IssueKind::Missing, k, &fx.files[index + 1], 0),
                "{what}: {issue:?} (next file starts at record {next_file_first})"
            );
            fx.restore();
        }
    }
    fx.assert_intact();
}

#[test]
fn deleted_rotated_file_is_detected() {
    let fx = rotated_fixture("delete-file");
    let last = fx.files.len() - 1;
    for index in 1..last {
        fs::remove_file(&fx.files[index]).unwrap();
        let what = format!("file {} deleted", fx.files[index].display());
        let report = verify(&fx.path);
        let issue = first_issue(&report, &what);
        assert_eq!(
            (issue.kind, issue.record, &issue.file),
            (
                IssueKind::MissingFile,
                fx.first_seq_of_file(index),
                &fx.files[index + 1]
            ),
            "{what}: {issue:?}"
        );
        assert!(kinds(&report).contains(&IssueKind::Missing), "{what}: {report:?}");
        fx.restore();
    }
    // Losing the newest file looks like a clean, shorter log; the head receipt catches it.
    fs::remove_file(&fx.files[last]).unwrap();
    let report = verify(&fx.path);
    assert!(report.is_ok(), "{:?}", report.issues);
    let with_head = audit::verify_with(&fx.path, &head_of(fx.last())).unwrap();
    assert_eq!(kinds(&with_head), [IssueKind::HeadMismatch], "{with_head:?}");
    assert_eq!(with_head.issues[0].record, fx.first_seq_of_file(last));
    fx.restore();
    fx.assert_intact();
}

/// The first file holds records 1..: a log without it must not verify clean (the verifier
/// requires the first file to start at record 1 with a zero `prev`, but only if it is there).
#[test]
fn deleted_first_file_is_detected() {
    let fx = rotated_fixture("delete-first");
    fs::remove_file(&fx.files[0]).unwrap();
    let report = verify(&fx.path);
    let issue = first_issue(&report, "first file (records 1..) deleted");
    assert_eq!(issue.record, 1, "{issue:?}");
    fx.restore();
    fx.assert_intact();
}

/// Replace the fixture's log with a different, internally valid log of `records` records, as
/// anyone who can write the files can do when the chain has no HMAC key.
fn forge_log(fx: &Fixture, records: usize) {
    let forger = TempDir::new(&format!("forger-{records}"));
    let log = AuditLog::open(forger.log_path(), AuditConfig::default()).unwrap();
    for i in 0..records {
        let mut record = small_record(i, 0);
        record.output = "nothing to see here".into();
        log.append(&record).unwrap();
    }
    drop(log);
    assert_eq!(fx.files.len(), 1);
    fs::copy(forger.log_path(), &fx.files[0]).unwrap();
    assert!(verify(&fx.path).is_ok(), "the forged log is a valid chain on its own");
}

/// A receipt pins its record's hash: a log rewritten with as many records no longer matches it.
#[test]
fn head_receipt_detects_a_rewritten_log_of_the_same_length() {
    let fx = single_file_fixture("rewrite-same");
    forge_log(&fx, fx.receipts.len());
    let report = audit::verify_with(&fx.path, &head_of(fx.last())).unwrap();
    assert_eq!(kinds(&report), [IssueKind::HeadMismatch], "{report:?}");
    assert_eq!(
        report.issues[0].record,
        fx.last().seq,
        "the record whose hash differs is the receipt's: {:?}",
        report.issues[0]
    );
    fx.restore();
    fx.assert_intact();
}

/// The same forgery with one more record appended must not match the receipt either: in real use
/// the log always grows past the last receipt kept outside it.
#[test]
fn head_receipt_detects_a_rewritten_log_that_grew() {
    let fx = single_file_fixture("rewrite-grown");
    forge_log(&fx, fx.receipts.len() + 1);
    let report = audit::verify_with(&fx.path, &head_of(fx.last())).unwrap();
    let issue = first_issue(&report, "log rewritten and extended past the receipt");
    assert_eq!(
        (issue.kind, issue.record),
        (IssueKind::HeadMismatch, fx.last().seq),
        "{issue:?}"
    );
    fx.restore();
    fx.assert_intact();
}

// ---- 3. crash safety -----------------------------------------------------------------------------

/// Set in the child writer's environment to the log path.
#[cfg(unix)]
const CHILD_ENV: &str = "FINLLM_AUDIT_CHILD";
#[cfg(unix)]
const CRASH_TEST: &str = "sigkill_during_appends_loses_no_acknowledged_record";
#[cfg(unix)]
const CRASH_TRIALS: u64 = 120;
#[cfg(unix)]
const CRASH_MAX_FILE_BYTES: u64 = 64 << 10;

/// The child: open the log and append from several threads until killed, printing what open
/// repaired and then each receipt once `append` has returned (the record is acknowledged).
#[cfg(unix)]
fn run_crash_child(path: &Path) -> ! {
    use std::io::Write;
    use std::time::{Duration, Instant};

    // One write per line: a line the kill cuts short has no newline and the parent ignores it.
    // The leading newline ends the test harness's "test ... " line.
    fn print_line(line: &str) {
        let mut out = std::io::stdout().lock();
        out.write_all(format!("\n{line}\n").as_bytes())
            .and_then(|()| out.flush())
            .expect("child: stdout");
    }

    print_line("START");
    let log = Arc::new(AuditLog::open(path, config(FsyncPolicy::GroupCommit, CRASH_MAX_FILE_BYTES)).unwrap());
    print_line(&format!("OPENED {}", log.open_report().truncated_bytes));
    // Bounded, in case the parent is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for i in 0..5_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let id = format!("crash-{}-{t}-{i}", std::process::id());
                    let receipt = log.append(&sample_record(&id, i, 100)).unwrap();
                    print_line(&format!("ACK {} {}", receipt.seq, receipt.hash));
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    std::process::exit(0);
}

/// What the parent learnt from a child before killing it.
#[cfg(unix)]
#[derive(Default)]
struct ChildReport {
    /// Bytes the child's `open` cut off, if it got as far as saying so.
    opened_truncating: Option<u64>,
    /// Acknowledged (seq, hash).
    acks: Vec<(u64, String)>,
}

/// Parse the child's stdout; signal `started` on START.
#[cfg(unix)]
fn read_child_stdout(stdout: std::process::ChildStdout, started: std::sync::mpsc::Sender<()>) -> ChildReport {
    use std::io::{BufRead, BufReader};

    let mut reader = BufReader::new(stdout);
    let mut report = ChildReport::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Some(text) = line.strip_suffix(b"\n") else {
            break; // cut short by the kill: never fully reported
        };
        let text = String::from_utf8_lossy(text);
        if text == "START" {
            let _ = started.send(());
        } else if let Some(bytes) = text.strip_prefix("OPENED ") {
            report.opened_truncating = Some(bytes.parse().unwrap());
        } else if let Some(ack) = text.strip_prefix("ACK ") {
            let (seq, hash) = ack.split_once(' ').unwrap_or_else(|| panic!("bad ack line {text:?}"));
            assert!(
                hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
                "bad hash {text:?}"
            );
            report.acks.push((seq.parse().unwrap(), hash.to_string()));
        }
    }
    report
}

/// Run one child writer on `path` and SIGKILL it: either while it is still starting (`early`), or
/// `delay` after it starts opening the log, so during open or in the middle of appends.
#[cfg(unix)]
fn run_and_kill_child(path: &Path, early: bool, delay: std::time::Duration, trial: u64) -> ChildReport {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::Duration;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let out_reader = thread::spawn(move || read_child_stdout(stdout, started_tx));
    let err_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    if early {
        thread::sleep(delay / 16);
    } else {
        match started_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("trial {trial}: the child never started"),
        }
        thread::sleep(delay);
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let report = out_reader.join().unwrap();
    let child_stderr = err_reader.join().unwrap();
    assert!(
        status.signal() == Some(9) || status.success(),
        "trial {trial}: the child failed ({status}):\n{child_stderr}"
    );
    report
}

/// Bytes a crash can leave after the last whole frame: the start of a frame (a valid header that
/// promises more than follows), or zeros (blocks allocated but never written before power loss).
#[cfg(unix)]
fn torn_tail(rng: &mut Rng) -> Vec<u8> {
    if rng.below(2) == 0 {
        let mut bytes = b"FLAR".to_vec();
        bytes.extend_from_slice(&500u32.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&bytes).to_le_bytes());
        bytes.extend_from_slice(&[b'{'; 100]);
        let keep = 1 + rng.below(bytes.len());
        bytes.truncate(keep);
        bytes
    } else {
        vec![0; 1 + rng.below(200)]
    }
}

/// Kill a writer with SIGKILL at a random moment, 120 times on the same log; after each kill the
/// log must reopen, verify, and hold every record the writer acknowledged, with its hash. Every
/// fourth trial also leaves a torn tail behind, which the next open (the child's, or the
/// parent's when the child died first) must cut off exactly.
#[cfg(unix)]
#[test]
fn sigkill_during_appends_loses_no_acknowledged_record() {
    use std::io::Write;
    use std::time::{Duration, Instant};

    if let Some(path) = std::env::var_os(CHILD_ENV) {
        run_crash_child(Path::new(&path));
    }
    let started_at = Instant::now();
    let dir = TempDir::new("sigkill");
    let path = dir.log_path();
    let mut rng = Rng(0x00C0_FFEE_5EED);
    let mut acked: HashMap<u64, String> = HashMap::new();
    let mut torn_pending: Option<u64> = None;
    let (mut trials_with_acks, mut killed_before_open, mut other_torn) = (0, 0, 0);
    let (mut injected, mut repaired_by_child, mut repaired_by_parent) = (0, 0, 0);
    for trial in 0..CRASH_TRIALS {
        let early = rng.below(8) == 0;
        let delay = Duration::from_millis(rng.next() % 31);
        let child = run_and_kill_child(&path, early, delay, trial);
        if child.opened_truncating.is_none() {
            killed_before_open += 1;
        }
        if !child.acks.is_empty() {
            trials_with_acks += 1;
        }
        for (seq, hash) in child.acks {
            if let Some(earlier) = acked.insert(seq, hash.clone()) {
                assert_eq!(
                    earlier, hash,
                    "trial {trial}: record {seq} acknowledged twice with different hashes"
                );
            }
        }

        let log = AuditLog::open(&path, config(FsyncPolicy::GroupCommit, CRASH_MAX_FILE_BYTES))
            .unwrap_or_else(|e| panic!("trial {trial}: reopening after SIGKILL failed: {e}"));
        let open = log.open_report().clone();
        let (head_seq, head_hash) = log.head();
        drop(log);
        assert_eq!(open.last_seq, head_seq, "trial {trial}");
        match (torn_pending.take(), child.opened_truncating) {
            (Some(len), Some(by_child)) => {
                assert_eq!(
                    by_child, len,
                    "trial {trial}: the child's open cut the wrong number of bytes"
                );
                repaired_by_child += 1;
                other_torn += u32::from(open.truncated_bytes > 0);
            }
            (Some(len), None) => {
                // The child died before its open said anything; that open may still have cut the tail.
                assert!(
                    open.truncated_bytes == len || open.truncated_bytes == 0,
                    "trial {trial}: {len} torn bytes, reopen cut {}",
                    open.truncated_bytes
                );
                repaired_by_parent += u32::from(open.truncated_bytes == len);
            }
            (None, by_child) => {
                assert_eq!(by_child.unwrap_or(0), 0, "trial {trial}: the child found a torn tail");
                other_torn += u32::from(open.truncated_bytes > 0);
            }
        }

        let report = verify(&path);
        assert!(report.is_ok(), "trial {trial}: {:?}", report.issues);
        let stored = audit::read_records(&path).unwrap();
        assert_eq!(stored.len() as u64, head_seq, "trial {trial}");
        assert!(
            stored.iter().zip(1..).all(|(s, seq)| s.seq == seq),
            "trial {trial}: sequence numbers are not 1..={head_seq}"
        );
        if let Some(last) = stored.last() {
            assert_eq!(last.hash, head_hash, "trial {trial}");
        }
        for (&seq, hash) in &acked {
            let found = stored.get(usize::try_from(seq - 1).unwrap());
            assert_eq!(
                found.map(|s| &s.hash),
                Some(hash),
                "trial {trial}: acknowledged record {seq} lost or changed (the log has {head_seq})"
            );
        }
        if let Some((&seq, hash)) = acked.iter().max_by_key(|(seq, _)| **seq) {
            let options = VerifyOptions {
                expected_head: Some((seq, hash.clone())),
                ..Default::default()
            };
            let with_head = audit::verify_with(&path, &options).unwrap();
            assert!(with_head.is_ok(), "trial {trial}: {:?}", with_head.issues);
        }

        if trial % 4 == 3 {
            let tail = torn_tail(&mut rng);
            let last_file = report.files.last().unwrap();
            let mut f = fs::OpenOptions::new().append(true).open(last_file).unwrap();
            f.write_all(&tail).unwrap();
            torn_pending = Some(tail.len() as u64);
            injected += 1;
        }
    }

    // The log survived every crash and still takes records.
    let log = AuditLog::open(&path, config(FsyncPolicy::GroupCommit, CRASH_MAX_FILE_BYTES)).unwrap();
    let (head_seq, _) = log.head();
    let receipt = log.append(&sample_record("after-all-crashes", 0, 0)).unwrap();
    assert_eq!(receipt.seq, head_seq + 1);
    drop(log);
    assert!(audit::verify_with(&path, &head_of(&receipt)).unwrap().is_ok());

    let files = fs::read_dir(&dir.0).unwrap().count();
    println!(
        "sigkill: {CRASH_TRIALS} trials in {:.1} s: {trials_with_acks} with acknowledged records, {} records \
         acknowledged, {} in the log over {files} file(s), {killed_before_open} killed before open reported; \
         {injected} torn tails left, cut off by the child's open {repaired_by_child} times and by the parent's \
         {repaired_by_parent}; {other_torn} torn tail(s) from the kills themselves",
        started_at.elapsed().as_secs_f64(),
        acked.len(),
        receipt.seq
    );
    assert!(
        trials_with_acks >= CRASH_TRIALS / 10,
        "only {trials_with_acks} of {CRASH_TRIALS} trials acknowledged a record: the kills came too early"
    );
    assert!(
        repaired_by_child + repaired_by_parent > injected / 2,
        "most torn tails must be seen being cut off"
    );
}

// ---- 4. checkpoints ------------------------------------------------------------------------------

/// A log of 20 records with a checkpoint every 8 and one at close: checkpoints at 8, 16 and 20.
fn checkpointed_fixture(name: &str, key: Option<Vec<u8>>) -> (TempDir, PathBuf, Vec<RecordReceipt>, Vec<u8>) {
    let dir = TempDir::new(name);
    let path = dir.log_path();
    let log = AuditLog::open(
        &path,
        AuditConfig {
            checkpoint_every: 8,
            hmac_key: key,
            ..Default::default()
        },
    )
    .unwrap();
    let receipts: Vec<RecordReceipt> = (0..20).map(|i| log.append(&small_record(i, 0)).unwrap()).collect();
    drop(log);
    let snapshot = fs::read(&path).unwrap();
    (dir, path, receipts, snapshot)
}

fn checkpoint_frames(path: &Path) -> Vec<(usize, usize)> {
    let bytes = fs::read(audit::checkpoints_path(path)).unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"FLAR", "checkpoint frame at {at}");
        let len = usize::try_from(u32_at(&bytes, at + 4)).unwrap();
        let end = at + HEADER_LEN + len + TRAILER_LEN;
        frames.push((at, end));
        at = end;
    }
    frames
}

#[test]
fn checkpoints_detect_a_log_cut_at_any_frame_boundary() {
    let (_dir, path, receipts, snapshot) = checkpointed_fixture("ckpt-cut", None);
    assert_eq!(
        checkpoint_frames(&path).len(),
        3,
        "checkpoints at 8, 16 and on close at 20"
    );
    assert!(verify(&path).is_ok(), "{:?}", verify(&path).issues);
    let frames = locate_frames(&receipts);
    for k in 1..=receipts.len() as u64 {
        let cut = frames[usize::try_from(k - 1).unwrap()].start;
        fs::write(&path, &snapshot[..cut]).unwrap();
        let report = verify(&path);
        assert_eq!(
            kinds(&report),
            [IssueKind::TruncatedBelowCheckpoint],
            "log cut before record {k}: {report:?}"
        );
        assert_eq!(report.issues[0].record, k, "the first lost record");
        // A writer must not continue such a log either.
        let err = AuditLog::open(&path, AuditConfig::default()).unwrap_err();
        assert!(err.to_string().contains("checkpoint"), "{err}");
    }
    fs::write(&path, &snapshot).unwrap();
    assert!(verify(&path).is_ok());
}

#[test]
fn checkpoints_detect_an_emptied_log() {
    let (_dir, path, _, _) = checkpointed_fixture("ckpt-empty", None);
    fs::write(&path, b"").unwrap();
    let report = verify(&path);
    assert_eq!(kinds(&report), [IssueKind::TruncatedBelowCheckpoint], "{report:?}");
    assert_eq!(report.issues[0].record, 1);
}

#[test]
fn intact_log_with_checkpoints_verifies_with_and_without_key() {
    let key = vec![7u8; 32];
    let (_dir, path, receipts, _) = checkpointed_fixture("ckpt-intact", Some(key.clone()));
    let options = VerifyOptions {
        hmac_key: Some(key),
        ..head_of(receipts.last().unwrap())
    };
    let report = audit::verify_with(&path, &options).unwrap();
    assert!(report.is_ok(), "{report:?}");
    // Reopening and appending continues the checkpoint chain.
    let log = AuditLog::open(
        &path,
        AuditConfig {
            checkpoint_every: 8,
            hmac_key: options.hmac_key.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    for i in 20..30 {
        log.append(&small_record(i, 0)).unwrap();
    }
    drop(log);
    assert_eq!(checkpoint_frames(&path).len(), 5, "28 and 30 added");
    assert!(audit::verify_with(&path, &options).unwrap().is_ok());
}

#[test]
fn tampered_checkpoints_are_detected() {
    let key = vec![9u8; 32];
    let (_dir, path, _, snapshot) = checkpointed_fixture("ckpt-tamper", Some(key.clone()));
    let with_key = VerifyOptions {
        hmac_key: Some(key),
        ..Default::default()
    };
    let sidecar = audit::checkpoints_path(&path);
    let original = fs::read(&sidecar).unwrap();
    let frames = checkpoint_frames(&path);
    // Any flipped byte of any checkpoint.
    for at in (0..original.len()).step_by(7) {
        let mut bytes = original.clone();
        bytes[at] ^= 0x20;
        fs::write(&sidecar, &bytes).unwrap();
        let report = audit::verify_with(&path, &with_key).unwrap();
        assert!(
            kinds(&report).contains(&IssueKind::CheckpointCorrupt),
            "byte {at} of the checkpoint file flipped: {report:?}"
        );
    }
    // A checkpoint removed from the middle breaks the checkpoint chain.
    let mut without_middle = original[..frames[1].0].to_vec();
    without_middle.extend_from_slice(&original[frames[1].1..]);
    fs::write(&sidecar, &without_middle).unwrap();
    let report = audit::verify_with(&path, &with_key).unwrap();
    assert_eq!(kinds(&report), [IssueKind::CheckpointCorrupt], "{report:?}");
    fs::write(&sidecar, &original).unwrap();
    assert!(audit::verify_with(&path, &with_key).unwrap().is_ok());
    // The log rewritten under intact checkpoints: its records no longer have their hashes.
    let forger = TempDir::new("ckpt-forger");
    let forged = AuditLog::open(
        forger.log_path(),
        AuditConfig {
            checkpoint_every: 0,
            hmac_key: with_key.hmac_key.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..20 {
        let mut r = small_record(i, 0);
        r.output = "nothing to see here".into();
        forged.append(&r).unwrap();
    }
    drop(forged);
    fs::copy(forger.log_path(), &path).unwrap();
    let report = audit::verify_with(&path, &with_key).unwrap();
    assert!(
        kinds(&report).iter().all(|k| *k == IssueKind::CheckpointMismatch),
        "{report:?}"
    );
    assert_eq!(report.issues.len(), 3, "one per checkpoint: {report:?}");
    fs::write(&path, &snapshot).unwrap();
    assert!(audit::verify_with(&path, &with_key).unwrap().is_ok());
}

// ---- 5. several processes on one log -------------------------------------------------------------

#[cfg(unix)]
const MP_CHILD_ENV: &str = "FINLLM_AUDIT_MP_CHILD";
#[cfg(unix)]
const MP_TEST: &str = "two_processes_appending_to_one_log_keep_one_chain";
#[cfg(unix)]
const MP_RECORDS: usize = 500;
#[cfg(unix)]
const MP_MAX_FILE_BYTES: u64 = 64 << 10;

/// The child: wait for the go file, then append MP_RECORDS records from 4 threads and print each
/// receipt.
#[cfg(unix)]
fn run_multi_process_child(path: &Path) -> ! {
    use std::io::Write;
    use std::time::{Duration, Instant};

    let go = path.with_extension("go");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !go.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    let log = Arc::new(AuditLog::open(path, config(FsyncPolicy::GroupCommit, MP_MAX_FILE_BYTES)).unwrap());
    let pid = std::process::id();
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                (t..MP_RECORDS)
                    .step_by(4)
                    .map(|i| {
                        let r = log.append(&sample_record(&format!("p{pid}-{i:04}"), i, 100)).unwrap();
                        format!("ACK {} {} {pid}-{i:04}\n", r.seq, r.hash)
                    })
                    .collect::<String>()
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    out.write_all(b"\n").unwrap();
    for w in writers {
        out.write_all(w.join().unwrap().as_bytes()).unwrap();
    }
    out.flush().unwrap();
    drop(out);
    drop(log);
    std::process::exit(0);
}

/// Two processes (each with four threads) append 500 records each to one log at the same time,
/// rotating it as they go: every record must be there once, in one chain, with the hash each
/// process was given.
#[cfg(unix)]
#[test]
fn two_processes_appending_to_one_log_keep_one_chain() {
    use std::process::{Command, Stdio};

    if let Some(path) = std::env::var_os(MP_CHILD_ENV) {
        run_multi_process_child(Path::new(&path));
    }
    let dir = TempDir::new("two-processes");
    let path = dir.log_path();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", MP_TEST, "--nocapture", "--test-threads=1"])
                .env(MP_CHILD_ENV, &path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    fs::write(path.with_extension("go"), b"").unwrap();
    let mut acked: HashMap<u64, (String, String)> = HashMap::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(ack) = line.strip_prefix("ACK ") {
                let parts: Vec<&str> = ack.split(' ').collect();
                let seq: u64 = parts[0].parse().unwrap();
                let previous = acked.insert(seq, (parts[1].to_string(), parts[2].to_string()));
                assert!(previous.is_none(), "record {seq} acknowledged to two appends");
            }
        }
    }
    assert_eq!(acked.len(), 2 * MP_RECORDS, "acknowledged appends");

    let report = verify(&path);
    assert!(report.is_ok(), "{:?}", report.issues);
    assert_eq!(report.records, 2 * MP_RECORDS as u64);
    assert!(report.files.len() >= 3, "rotated: {:?}", report.files);
    let stored = audit::read_records(&path).unwrap();
    assert_eq!(stored.len(), 2 * MP_RECORDS);
    let mut switches = 0;
    for (i, s) in stored.iter().enumerate() {
        assert_eq!(s.seq, i as u64 + 1);
        let (hash, id) = &acked[&s.seq];
        assert_eq!(&s.hash, hash, "record {}", s.seq);
        assert!(s.record.request_id.ends_with(id.as_str()), "record {}", s.seq);
        let writer = |r: &audit::StoredRecord| r.record.request_id.split_once('-').map(|(p, _)| p.to_string());
        if i > 0 && writer(&stored[i - 1]) != writer(s) {
            switches += 1;
        }
    }
    let ids: HashSet<&str> = stored.iter().map(|s| s.record.request_id.as_str()).collect();
    assert_eq!(ids.len(), 2 * MP_RECORDS);
    println!(
        "two processes: {switches} switches between writers in {} records",
        stored.len()
    );
    assert!(
        switches >= 2,
        "the two processes never interleaved ({switches} switches)"
    );
}

// ---- 6. only regular files -----------------------------------------------------------------------

#[cfg(unix)]
fn assert_refused(path: &Path, what: &str) {
    match AuditLog::open(path, AuditConfig::default()) {
        Err(finllm::Error::AuditNotRegularFile { path: p, found }) => {
            assert!(found.contains(what), "{}: found {found:?}", path.display());
            let _ = p;
        }
        other => panic!("{}: expected AuditNotRegularFile, got {other:?}", path.display()),
    }
}

#[cfg(unix)]
#[test]
fn devices_fifos_and_symlinks_are_refused_at_open() {
    use std::time::Duration;

    for dev in ["/dev/null", "/dev/full", "/dev/zero"] {
        if Path::new(dev).exists() {
            let err = AuditLog::open(dev, AuditConfig::default()).unwrap_err();
            assert!(
                matches!(&err, finllm::Error::AuditNotRegularFile { path, .. } if path == Path::new(dev)),
                "{dev}: {err:?}"
            );
            assert!(err.to_string().contains(dev), "{err}");
            assert!(!Path::new(&format!("{dev}.lock")).exists());
        }
    }

    let dir = TempDir::new("special");
    // A FIFO must be refused promptly, not block the open (or verify) forever.
    let fifo = dir.0.join("fifo.log");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let (tx, rx) = std::sync::mpsc::channel();
    let f = fifo.clone();
    thread::spawn(move || {
        let _ = tx.send((
            AuditLog::open(&f, AuditConfig::default()).map(|_| ()),
            audit::verify(&f).map(|_| ()),
        ));
    });
    let (opened, verified) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("open blocked on a FIFO");
    assert!(
        matches!(opened, Err(finllm::Error::AuditNotRegularFile { .. })),
        "{opened:?}"
    );
    assert!(
        matches!(verified, Err(finllm::Error::AuditNotRegularFile { .. })),
        "{verified:?}"
    );
    assert_refused(&fifo, "FIFO");

    // Symbolic links: the log, a rotated file, the checkpoint file.
    let target = dir.0.join("target.log");
    fs::write(&target, b"").unwrap();
    let link = dir.0.join("link.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert_refused(&link, "symbolic link");
    let base = dir.0.join("rot.log");
    AuditLog::open(&base, AuditConfig::default()).unwrap();
    std::os::unix::fs::symlink(&target, audit::segment_path(&base, 1)).unwrap();
    assert_refused(&audit::segment_path(&base, 1), "symbolic link");
    let err = AuditLog::open(&base, AuditConfig::default()).unwrap_err();
    assert!(matches!(err, finllm::Error::AuditNotRegularFile { .. }), "{err:?}");
    fs::remove_file(audit::segment_path(&base, 1)).unwrap();
    std::os::unix::fs::symlink(&target, audit::checkpoints_path(&base)).unwrap();
    let err = AuditLog::open(&base, AuditConfig::default()).unwrap_err();
    assert!(matches!(err, finllm::Error::AuditNotRegularFile { .. }), "{err:?}");

    // A directory.
    let sub = dir.0.join("dir.log");
    fs::create_dir(&sub).unwrap();
    assert_refused(&sub, "directory");
}

#[test]
fn a_log_rewritten_without_the_key_fails_keyed_verification() {
    // An attacker without the key rewrites the whole log (records and checkpoints) under the
    // plain SHA-256 chain: it verifies as intact without a key, but the auditor who holds the
    // key must see every record as unkeyed.
    let key = b"0123456789abcdef0123456789abcdef".to_vec();
    let (_dir, path, receipts, _) = checkpointed_fixture("downgrade", None);
    assert!(audit::verify(&path).unwrap().is_ok());
    let keyed = VerifyOptions {
        hmac_key: Some(key.clone()),
        ..Default::default()
    };
    let report = audit::verify_with(&path, &keyed).unwrap();
    assert!(!report.is_ok());
    let unkeyed = report.issues.iter().filter(|i| i.kind == IssueKind::Unkeyed).count();
    assert_eq!(unkeyed, receipts.len(), "{:?}", kinds(&report));
    // The genuine keyed log passes with the key.
    let (_dir, path, _, _) = checkpointed_fixture("downgrade-keyed", Some(key));
    assert!(audit::verify_with(&path, &keyed).unwrap().is_ok());
}
