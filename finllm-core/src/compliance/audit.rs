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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::policy::RuleMatch;
use crate::llm::hex;
use crate::{Error, Result, SamplingParams};

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
}

impl RecordPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordPhase::Complete => "complete",
            RecordPhase::Opened => "opened",
            RecordPhase::Closed => "closed",
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

// ---- chain -------------------------------------------------------------------------------------

fn chain_hash(key: Option<&[u8]>, prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
    match key.and_then(|k| Hmac::<Sha256>::new_from_slice(k).ok()) {
        Some(mut mac) => {
            mac.update(prev);
            mac.update(payload);
            mac.finalize().into_bytes().into()
        }
        None => {
            let mut h = Sha256::new();
            h.update(prev);
            h.update(payload);
            h.finalize().into()
        }
    }
}

fn chain_name(key: Option<&[u8]>) -> &'static str {
    if key.is_some() {
        "hmac-sha256"
    } else {
        "sha256"
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn frame(payload: &[u8], hash: &[u8; 32]) -> Result<Vec<u8>, String> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n <= MAX_RECORD_BYTES)
        .ok_or_else(|| {
            format!(
                "record of {} bytes exceeds the {MAX_RECORD_BYTES}-byte limit",
                payload.len()
            )
        })?;
    let mut out = Vec::with_capacity(payload.len() + 48);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&out[..8]).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(hash);
    let mut crc = crc32fast::Hasher::new();
    crc.update(payload);
    crc.update(hash);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    Ok(out)
}

// ---- reading frames ----------------------------------------------------------------------------

/// One frame as read from disk.
struct RawFrame {
    offset: u64,
    payload: Vec<u8>,
    hash: [u8; 32],
    crc_ok: bool,
}

enum FrameEnd {
    /// The file ended exactly after the last frame.
    Clean,
    /// The last frame is incomplete (or the tail is zero-filled): a crash mid-write.
    Torn { offset: u64 },
    /// Bytes that are not a frame and not a torn tail.
    Corrupt { offset: u64, reason: String },
}

/// Reads frames one at a time; payload lengths are bounded before anything is allocated.
struct FrameReader<R> {
    inner: R,
    offset: u64,
    len: u64,
}

impl<R: Read> FrameReader<R> {
    fn next(&mut self) -> io::Result<Result<RawFrame, FrameEnd>> {
        let remaining = self.len - self.offset;
        if remaining == 0 {
            return Ok(Err(FrameEnd::Clean));
        }
        let at = self.offset;
        if remaining < HEADER_LEN {
            return Ok(Err(FrameEnd::Torn { offset: at }));
        }
        let mut header = [0u8; 12];
        self.inner.read_exact(&mut header)?;
        self.offset += HEADER_LEN;
        let header_crc = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if header[..4] != MAGIC || crc32fast::hash(&header[..8]) != header_crc {
            if header.iter().all(|&b| b == 0) && self.rest_is_zero()? {
                return Ok(Err(FrameEnd::Torn { offset: at }));
            }
            return Ok(Err(FrameEnd::Corrupt {
                offset: at,
                reason: "frame header damaged (bad magic or header CRC)".into(),
            }));
        }
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD_BYTES {
            return Ok(Err(FrameEnd::Corrupt {
                offset: at,
                reason: format!("frame length {len} exceeds the {MAX_RECORD_BYTES}-byte limit"),
            }));
        }
        let body_len = u64::from(len) + TRAILER_LEN;
        if self.len - self.offset < body_len {
            return Ok(Err(FrameEnd::Torn { offset: at }));
        }
        // len <= 64 MiB, so this allocation is bounded whatever the file says.
        let mut body = vec![0u8; len as usize + TRAILER_LEN as usize];
        self.inner.read_exact(&mut body)?;
        self.offset += body_len;
        let (payload, trailer) = body.split_at(len as usize);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&trailer[..32]);
        let stored_crc = u32::from_le_bytes([trailer[32], trailer[33], trailer[34], trailer[35]]);
        let crc_ok = crc32fast::hash(&body[..len as usize + 32]) == stored_crc;
        let payload = payload.to_vec();
        Ok(Ok(RawFrame {
            offset: at,
            payload,
            hash,
            crc_ok,
        }))
    }

    /// Whether everything after the current position is zero bytes (a pre-allocated or
    /// zero-filled tail after power loss).
    fn rest_is_zero(&mut self) -> io::Result<bool> {
        let mut buf = [0u8; 8192];
        loop {
            let n = self.inner.read(&mut buf)?;
            if n == 0 {
                return Ok(true);
            }
            self.offset += n as u64;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
        }
    }
}

fn open_reader(path: &Path) -> Result<FrameReader<BufReader<File>>> {
    open_reader_at(path, 0)
}

/// A frame reader over `path` from byte `offset` (a frame boundary) to the file's current end.
fn open_reader_at(path: &Path, offset: u64) -> Result<FrameReader<BufReader<File>>> {
    let mut file = open_checked(path, OpenOptions::new().read(true))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if offset > len {
        return Err(audit_err(
            path,
            format!("the file is {len} bytes, shorter than the {offset} bytes already read from it"),
        ));
    }
    file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
    Ok(FrameReader {
        inner: BufReader::with_capacity(1 << 16, file),
        offset,
        len,
    })
}

// ---- files -------------------------------------------------------------------------------------

/// What a file that is not a regular one is, for the error that refuses it; `None` for a regular
/// file.
fn special_kind(meta: &std::fs::Metadata) -> Option<&'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        return None;
    }
    if ft.is_symlink() {
        return Some("a symbolic link");
    }
    if ft.is_dir() {
        return Some("a directory");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if ft.is_char_device() {
            return Some("a character device");
        }
        if ft.is_block_device() {
            return Some("a block device");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
    }
    Some("not a regular file")
}

fn not_regular(path: &Path, found: &str) -> Error {
    Error::AuditNotRegularFile {
        path: path.to_path_buf(),
        found: found.to_string(),
    }
}

/// Refuse `path` if something other than a regular file is there (a missing file is fine).
fn refuse_special_path(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => match special_kind(&meta) {
            Some(found) => Err(not_regular(path, found)),
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Open one of the log's files (a segment, the checkpoint file, the lock file), refusing anything
/// but a regular file: checked before opening (a FIFO would block the open, a device would swallow
/// or refuse records), opened without following a final symbolic link and without blocking, and
/// checked again on the opened handle, in case the path was swapped in between.
fn open_checked(path: &Path, options: &mut OpenOptions) -> Result<File> {
    refuse_special_path(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|source| {
        #[cfg(unix)]
        match source.raw_os_error() {
            // Swapped in after the check: O_NOFOLLOW met a symlink, or O_NONBLOCK a FIFO with no
            // reader.
            Some(libc::ELOOP) => return not_regular(path, "a symbolic link"),
            Some(libc::ENXIO) => return not_regular(path, "a FIFO or device"),
            _ => {}
        }
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    })?;
    let meta = file.metadata().map_err(io_err(path))?;
    if let Some(found) = special_kind(&meta) {
        return Err(not_regular(path, found));
    }
    Ok(file)
}

fn with_suffix(base: &Path, suffix: &str) -> PathBuf {
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    base.with_file_name(name)
}

/// The lock file of the log at `base` (`PATH.lock`): every process appending to the log holds an
/// advisory lock on it while it writes and syncs.
pub fn lock_path(base: &Path) -> PathBuf {
    with_suffix(base, ".lock")
}

/// The checkpoint file of the log at `base` (`PATH.checkpoints`).
pub fn checkpoints_path(base: &Path) -> PathBuf {
    with_suffix(base, ".checkpoints")
}

/// An advisory lock on the lock file (`flock` on Unix, `LockFileEx` on Windows), released on drop.
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn exclusive(file: &'a File, path: &Path) -> Result<Self> {
        file.lock().map_err(io_err(path))?;
        Ok(Self(file))
    }

    fn shared(file: &'a File, path: &Path) -> Result<Self> {
        file.lock_shared().map_err(io_err(path))?;
        Ok(Self(file))
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Closing the handle would release it too; an unlock error leaves nothing to undo.
        let _ = self.0.unlock();
    }
}

// ---- segments ----------------------------------------------------------------------------------

/// Path of segment `n` of the log at `base`: the base itself, then `base.000001`, ...
pub fn segment_path(base: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return base.to_path_buf();
    }
    let mut name = base.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{n:06}"));
    base.with_file_name(name)
}

/// Segment numbers present on disk for the log at `base`, sorted.
fn segment_numbers(base: &Path) -> Result<Vec<u32>> {
    let dir = match base.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(stem) = base.file_name().and_then(|n| n.to_str()) else {
        return Err(Error::Audit {
            path: base.to_path_buf(),
            reason: "the log path must end in a UTF-8 file name".into(),
        });
    };
    let mut out = Vec::new();
    if base.is_file() {
        out.push(0);
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(source) => return Err(Error::Io { path: dir, source }),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(suffix) = name.strip_prefix(stem).and_then(|s| s.strip_prefix('.')) else {
            continue;
        };
        if suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_digit()) {
            if let Ok(n) = suffix.parse::<u32>() {
                if n > 0 {
                    out.push(n);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

// ---- the log -----------------------------------------------------------------------------------

/// Where records go: a file, or (in tests) a file that fails on command.
pub(crate) trait SegmentIo: Send + Sync {
    fn write_all(&self, buf: &[u8]) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
}

impl SegmentIo for File {
    fn write_all(&self, buf: &[u8]) -> io::Result<()> {
        let mut f: &File = self;
        Write::write_all(&mut f, buf)
    }

    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
}

type IoWrap = Arc<dyn Fn(File) -> Arc<dyn SegmentIo> + Send + Sync>;

/// The log's files as this handle knows them; owned by the thread committing a batch.
struct Files {
    io: Arc<dyn SegmentIo>,
    segment: u32,
    segment_path: PathBuf,
    /// Bytes of the current segment this handle has written or read.
    size: u64,
    next_seq: u64,
    last_hash: [u8; 32],
    /// Segment and frame offset of the last record (what a checkpoint names).
    last_at: (u32, u64),
    checkpoints: CheckpointTail,
}

/// The end of the checkpoint file as this handle knows it.
#[derive(Debug, Clone, Copy)]
struct CheckpointTail {
    size: u64,
    count: u64,
    last_hash: [u8; 32],
    last_seq: u64,
}

impl Default for CheckpointTail {
    fn default() -> Self {
        Self {
            size: 0,
            count: 0,
            last_hash: ZERO_HASH,
            last_seq: 0,
        }
    }
}

/// Records waiting to be committed, and what became of the committed ones.
struct Queue {
    pending: Vec<(u64, String)>,
    next_ticket: u64,
    /// Results by ticket; `Err` holds the cause that poisoned the log.
    done: HashMap<u64, Result<RecordReceipt, String>>,
    /// A thread is committing a batch.
    committing: bool,
    poisoned: Option<String>,
    /// Sequence number and hash of the last record this handle wrote or saw.
    head: (u64, [u8; 32]),
}

/// What one commit did.
struct Committed {
    results: Vec<(u64, Result<RecordReceipt, String>)>,
    /// Close the log for later appends (a failed write, sync or checkpoint).
    poison: Option<String>,
    head: (u64, [u8; 32]),
}

/// The append-only audit log. `Send + Sync`: share it behind an `Arc`. Several processes may
/// append to the same log at once (see the module documentation).
pub struct AuditLog {
    base: PathBuf,
    config: AuditConfig,
    queue: Mutex<Queue>,
    committed: Condvar,
    files: Mutex<Files>,
    lock_file: File,
    lock_path: PathBuf,
    report: OpenReport,
    wrap: IoWrap,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.base)
            .field("config", &self.config)
            .field("report", &self.report)
            .finish()
    }
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

/// The end of an existing segment, as found by `scan_tail`.
struct Tail {
    valid_len: u64,
    file_len: u64,
    /// Sequence number, hash and frame offset of the last record.
    last: Option<(u64, [u8; 32], u64)>,
}

/// Room for the envelope around a record's JSON (seq, segment, prev hash, time, chain name).
const ENVELOPE_BYTES: u64 = 512;

impl AuditLog {
    /// Open (or create) the log whose first file is `path`, repairing a torn tail.
    ///
    /// Refuses, with [`Error::AuditNotRegularFile`], a path (or rotated file, checkpoint or lock
    /// file) that is a symbolic link, FIFO, device, socket or directory.
    pub fn open(path: impl AsRef<Path>, config: AuditConfig) -> Result<AuditLog> {
        let wrap: IoWrap = Arc::new(|f: File| Arc::new(f) as Arc<dyn SegmentIo>);
        Self::open_with_io(path.as_ref(), config, wrap)
    }

    pub(crate) fn open_with_io(base: &Path, config: AuditConfig, wrap: IoWrap) -> Result<AuditLog> {
        if config.max_file_bytes < 4096 {
            return Err(audit_err(base, "max_file_bytes must be at least 4096"));
        }
        // Before creating the lock file next to it: /dev/null must not get a /dev/null.lock.
        refuse_special_path(base)?;
        let lock_path = lock_path(base);
        let lock_file = open_checked(
            &lock_path,
            OpenOptions::new().read(true).write(true).create(true).truncate(false),
        )?;
        // Another process may be in the middle of an append: scan and repair only under the lock,
        // or its half-written frame would look torn and be cut off.
        let (files, report) = {
            let _lock = FileLock::exclusive(&lock_file, &lock_path)?;
            Self::scan_on_open(base, &config, &wrap)?
        };
        let head = (files.next_seq - 1, files.last_hash);
        Ok(AuditLog {
            base: base.to_path_buf(),
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                next_ticket: 0,
                done: HashMap::new(),
                committing: false,
                poisoned: None,
                head,
            }),
            committed: Condvar::new(),
            files: Mutex::new(files),
            lock_file,
            lock_path,
            config,
            report,
            wrap,
        })
    }

    /// Find the chain head (the last record of the last non-empty segment), cut a torn tail off
    /// the current segment, and read the checkpoint file's end. Runs under the file lock.
    fn scan_on_open(base: &Path, config: &AuditConfig, wrap: &IoWrap) -> Result<(Files, OpenReport)> {
        let segments = segment_numbers(base)?;
        let mut report = OpenReport {
            files: segments.len().max(1),
            ..Default::default()
        };
        let key = config.hmac_key.as_deref();
        let mut head = None;
        let mut current = segments.last().copied().unwrap_or(0);
        for (i, &n) in segments.iter().enumerate().rev() {
            let path = segment_path(base, n);
            let tail = scan_tail(&path, key)?;
            if n == current && tail.valid_len < tail.file_len {
                truncate(&path, tail.valid_len)?;
                report.truncated_bytes = tail.file_len - tail.valid_len;
                report.truncated_at = Some(tail.valid_len);
            }
            if let Some((seq, hash, offset)) = tail.last {
                head = Some((seq, hash, (n, offset)));
                break;
            }
            if i == 0 {
                break;
            }
        }
        let (last_seq, last_hash, last_at) = head.unwrap_or((0, ZERO_HASH, (0, 0)));
        report.last_seq = last_seq;
        if segments.is_empty() {
            current = 0;
        }
        let mut checkpoints = CheckpointTail::default();
        refuse_special_path(&checkpoints_path(base))?;
        read_checkpoint_tail(&checkpoints_path(base), &mut checkpoints, key).map_err(|why| audit_err(base, why))?;
        if checkpoints.last_seq > last_seq {
            return Err(audit_err(
                base,
                format!(
                    "the log ends at record {last_seq} but checkpoint {} in {} names record {}: records were \
                     removed from its end; the log was not modified: run `finllm audit verify` and restore it \
                     from backup (to start a new log deliberately, move the old one's checkpoint file away too)",
                    checkpoints.count,
                    checkpoints_path(base).display(),
                    checkpoints.last_seq
                ),
            ));
        }
        let segment_path = segment_path(base, current);
        let file = open_append(&segment_path)?;
        let size = file.metadata().map_err(io_err(&segment_path))?.len();
        let files = Files {
            io: wrap(file),
            segment: current,
            segment_path,
            size,
            next_seq: last_seq + 1,
            last_hash,
            last_at,
            checkpoints,
        };
        Ok((files, report))
    }

    /// What `open` found (torn tail truncated, records present).
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The log's first file.
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// Whether an earlier failure closed the log.
    pub fn is_poisoned(&self) -> bool {
        self.lock_queue().poisoned.is_some()
    }

    /// Sequence number and chain hash (hex) of the last record this handle wrote, or saw another
    /// process write before its own last append.
    pub fn head(&self) -> (u64, String) {
        let (seq, hash) = self.lock_queue().head;
        (seq, hex(&hash))
    }

    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock can only come from a bug in this module; the queue is
        // still consistent (every field is updated after the fallible step), so keep going.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_files(&self) -> MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poisoned_err(&self, cause: &str) -> Error {
        Error::AuditPoisoned {
            path: self.base.clone(),
            cause: cause.to_string(),
        }
    }

    /// Close the log for all later appends and return the error saying why.
    fn poison(&self, cause: String) -> Error {
        let err = self.poisoned_err(&cause);
        let mut q = self.lock_queue();
        q.poisoned.get_or_insert(cause);
        self.committed.notify_all();
        err
    }

    /// Append a record; returns once it is durable (per the fsync policy). On any write or sync
    /// failure the log is poisoned and this and all later appends fail. A record too large for a
    /// frame is refused without writing anything (the log stays open).
    pub fn append(&self, record: &AuditRecord) -> Result<RecordReceipt> {
        let body = serde_json::to_string(record)
            .map_err(|e| audit_err(&self.base, format!("cannot serialise the record: {e}")))?;
        if body.len() as u64 + ENVELOPE_BYTES > u64::from(MAX_RECORD_BYTES) {
            return Err(audit_err(
                &self.base,
                format!(
                    "a record of {} bytes exceeds the {MAX_RECORD_BYTES}-byte frame limit; nothing was written",
                    body.len()
                ),
            ));
        }
        let mut q = self.lock_queue();
        if let Some(cause) = &q.poisoned {
            return Err(self.poisoned_err(cause));
        }
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push((ticket, body));
        loop {
            if let Some(result) = q.done.remove(&ticket) {
                return result.map_err(|cause| self.poisoned_err(&cause));
            }
            if q.committing {
                q = self.committed.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Group commit: whoever finds no commit in progress writes and syncs every record
            // waiting so far, its own included; the others wait for its result.
            q.committing = true;
            let batch = std::mem::take(&mut q.pending);
            let poisoned = q.poisoned.clone();
            drop(q);
            let committed = match poisoned {
                Some(cause) => Committed {
                    results: batch.into_iter().map(|(t, _)| (t, Err(cause.clone()))).collect(),
                    poison: None,
                    head: self.lock_queue().head,
                },
                None => self.commit(batch),
            };
            q = self.lock_queue();
            q.committing = false;
            q.head = committed.head;
            if let Some(cause) = committed.poison {
                q.poisoned.get_or_insert(cause);
            }
            q.done.extend(committed.results);
            self.committed.notify_all();
        }
    }

    /// Write and sync one batch under the cross-process lock.
    fn commit(&self, batch: Vec<(u64, String)>) -> Committed {
        let mut files = self.lock_files();
        let outcome = self.commit_locked(&mut files, &batch);
        let head = (files.next_seq - 1, files.last_hash);
        match outcome {
            Ok((receipts, checkpoint_failure)) => Committed {
                results: batch
                    .iter()
                    .map(|(t, _)| *t)
                    .zip(receipts.into_iter().map(Ok))
                    .collect(),
                poison: checkpoint_failure,
                head,
            },
            Err(cause) => Committed {
                results: batch.iter().map(|(t, _)| (*t, Err(cause.clone()))).collect(),
                poison: Some(cause),
                head,
            },
        }
    }

    /// Returns the receipts, and the cause if the checkpoint after them failed (the records are
    /// durable then, but the log closes for later appends).
    fn commit_locked(
        &self,
        files: &mut Files,
        batch: &[(u64, String)],
    ) -> Result<(Vec<RecordReceipt>, Option<String>), String> {
        let _lock = FileLock::exclusive(&self.lock_file, &self.lock_path).map_err(|e| e.to_string())?;
        self.catch_up(files)?;
        let mut receipts = Vec::with_capacity(batch.len());
        for (_, body) in batch {
            receipts.push(self.write_record(files, body)?);
            if self.config.fsync == FsyncPolicy::EveryRecord {
                files.io.sync().map_err(|e| format!("fsync failed: {e}"))?;
            }
        }
        if self.config.fsync == FsyncPolicy::GroupCommit {
            files.io.sync().map_err(|e| format!("fsync failed: {e}"))?;
        }
        let every = self.config.checkpoint_every;
        // The head (next_seq - 1) is at least `every` records past the last checkpoint.
        let due = every > 0 && files.next_seq > files.checkpoints.last_seq.saturating_add(every);
        let checkpoint_failure = if due {
            self.write_checkpoint(files, every)
                .err()
                .map(|e| format!("checkpoint failed: {e}"))
        } else {
            None
        };
        Ok((receipts, checkpoint_failure))
    }

    /// Write a checkpoint of the current head now (if there are records since the last one), under
    /// the file lock. Also done every [`AuditConfig::checkpoint_every`] records and when the log
    /// is dropped. A failure poisons the log.
    pub fn checkpoint(&self) -> Result<()> {
        if let Some(cause) = &self.lock_queue().poisoned {
            return Err(self.poisoned_err(cause));
        }
        let mut files = self.lock_files();
        let _lock = FileLock::exclusive(&self.lock_file, &self.lock_path)?;
        let written = self.catch_up(&mut files).and_then(|()| {
            files.io.sync().map_err(|e| format!("fsync failed: {e}"))?;
            self.write_checkpoint(&mut files, 1)
        });
        let head = (files.next_seq - 1, files.last_hash);
        self.lock_queue().head = head;
        written.map_err(|cause| self.poison(format!("checkpoint failed: {cause}")))
    }

    /// Another process may have appended since this handle last wrote: read what it added, in
    /// this segment and in any newer one it rotated to, so that the next record chains to the true
    /// head. Runs under the file lock.
    fn catch_up(&self, files: &mut Files) -> Result<(), String> {
        loop {
            let len = std::fs::symlink_metadata(&files.segment_path)
                .map_err(|e| format!("cannot read the size of {}: {e}", files.segment_path.display()))?
                .len();
            if len < files.size {
                return Err(format!(
                    "{} shrank from {} to {len} bytes while open: records were removed",
                    files.segment_path.display(),
                    files.size
                ));
            }
            let next_number = files.segment.checked_add(1).ok_or("too many log files")?;
            let next = segment_path(&self.base, next_number);
            let rotated = std::fs::symlink_metadata(&next).is_ok();
            if len > files.size {
                self.read_appended(files, rotated)?;
            }
            if !rotated {
                return Ok(());
            }
            let file = open_checked(&next, OpenOptions::new().append(true)).map_err(|e| e.to_string())?;
            files.io = (self.wrap)(file);
            files.segment = next_number;
            files.segment_path = next;
            files.size = 0;
        }
    }

    /// Read the frames another process appended to the current segment, checking that they
    /// continue the chain. A torn tail (a writer that failed or died mid-frame) is cut off, as
    /// `open` would, unless a newer segment follows.
    fn read_appended(&self, files: &mut Files, rotated: bool) -> Result<(), String> {
        let key = self.config.hmac_key.as_deref();
        let path = files.segment_path.clone();
        let mut reader = open_reader_at(&path, files.size).map_err(|e| e.to_string())?;
        loop {
            match reader
                .next()
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            {
                Ok(f) => {
                    let env = check_frame(&f, key, Some(files.last_hash)).map_err(|why| {
                        format!(
                            "the record at offset {} of {} (written by another process) {why}",
                            f.offset,
                            path.display()
                        )
                    })?;
                    if env.seq != files.next_seq {
                        return Err(format!(
                            "the record at offset {} of {} has sequence number {} where {} was expected",
                            f.offset,
                            path.display(),
                            env.seq,
                            files.next_seq
                        ));
                    }
                    files.next_seq += 1;
                    files.last_hash = f.hash;
                    files.last_at = (files.segment, f.offset);
                    files.size = reader.offset;
                }
                Err(FrameEnd::Clean) => return Ok(()),
                Err(FrameEnd::Torn { offset }) if !rotated => {
                    truncate(&path, offset).map_err(|e| e.to_string())?;
                    files.size = offset;
                    return Ok(());
                }
                Err(FrameEnd::Torn { offset }) | Err(FrameEnd::Corrupt { offset, .. }) => {
                    return Err(format!(
                        "{} is damaged at offset {offset}, after records another process appended; run `finllm \
                         audit verify`",
                        path.display()
                    ))
                }
            }
        }
    }

    /// Frame and write one record; on error the caller poisons the log.
    fn write_record(&self, files: &mut Files, body: &str) -> Result<RecordReceipt, String> {
        let key = self.config.hmac_key.as_deref();
        let seq = files.next_seq;
        let payload_for = |segment: u32, prev: &[u8; 32]| {
            format!(
                "{{\"seq\":{seq},\"segment\":{segment},\"prev\":\"{}\",\"appended_at_ms\":{},\"chain\":\"{}\",\"record\":{body}}}",
                hex(prev),
                now_ms(),
                chain_name(key)
            )
        };
        let mut payload = payload_for(files.segment, &files.last_hash);
        let frame_len = payload.len() as u64 + HEADER_LEN + TRAILER_LEN;
        if files.size > 0 && files.size + frame_len > self.config.max_file_bytes {
            self.rotate(files)?;
            payload = payload_for(files.segment, &files.last_hash);
        }
        let hash = chain_hash(key, &files.last_hash, payload.as_bytes());
        let bytes = frame(payload.as_bytes(), &hash)?;
        files.io.write_all(&bytes).map_err(|e| format!("write failed: {e}"))?;
        let receipt = RecordReceipt {
            seq,
            hash: hex(&hash),
            file: files.segment_path.clone(),
            offset: files.size,
        };
        files.last_at = (files.segment, files.size);
        files.size += bytes.len() as u64;
        files.next_seq += 1;
        files.last_hash = hash;
        Ok(receipt)
    }

    /// Make the current file durable, then continue in the next one (its entry fsynced in the
    /// directory before any record goes into it).
    fn rotate(&self, files: &mut Files) -> Result<(), String> {
        files
            .io
            .sync()
            .map_err(|e| format!("fsync before rotation failed: {e}"))?;
        let next = files.segment.checked_add(1).ok_or("too many log files")?;
        let path = segment_path(&self.base, next);
        let file = open_checked(&path, OpenOptions::new().create_new(true).append(true))
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        sync_dir(&path).map_err(|e| format!("cannot sync the directory of {}: {e}", path.display()))?;
        files.io = (self.wrap)(file);
        files.segment = next;
        files.segment_path = path;
        files.size = 0;
        Ok(())
    }

    /// Append a checkpoint of the head to the checkpoint file if it is at least `min_gap` records
    /// past the last checkpoint (which another process may have written). The records it names
    /// must already be durable.
    fn write_checkpoint(&self, files: &mut Files, min_gap: u64) -> Result<(), String> {
        let key = self.config.hmac_key.as_deref();
        let path = checkpoints_path(&self.base);
        read_checkpoint_tail(&path, &mut files.checkpoints, key)?;
        let seq = files.next_seq - 1;
        let ck = files.checkpoints;
        if seq == 0 || seq < ck.last_seq.saturating_add(min_gap.max(1)) {
            return Ok(());
        }
        let payload = format!(
            "{{\"n\":{},\"segment\":{},\"seq\":{seq},\"offset\":{},\"hash\":\"{}\",\"time_ms\":{},\"prev\":\"{}\",\"chain\":\"{}\"}}",
            ck.count + 1,
            files.last_at.0,
            files.last_at.1,
            hex(&files.last_hash),
            now_ms(),
            hex(&ck.last_hash),
            chain_name(key)
        );
        let hash = chain_hash(key, &ck.last_hash, payload.as_bytes());
        let bytes = frame(payload.as_bytes(), &hash)?;
        let created = ck.size == 0 && std::fs::symlink_metadata(&path).is_err();
        let file = open_checked(&path, OpenOptions::new().create(true).append(true)).map_err(|e| e.to_string())?;
        // One write of a whole CRC-framed checkpoint: a crash leaves it complete or torn, and a
        // torn one is ignored by `verify` and cut off by the next open.
        SegmentIo::write_all(&file, &bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        if created {
            sync_dir(&path).map_err(|e| format!("cannot sync the directory of {}: {e}", path.display()))?;
        }
        files.checkpoints = CheckpointTail {
            size: ck.size + bytes.len() as u64,
            count: ck.count + 1,
            last_hash: hash,
            last_seq: seq,
        };
        Ok(())
    }
}

impl Drop for AuditLog {
    /// Checkpoint the head on close, so that cutting records off the end of the log shows in
    /// `verify`. Errors cannot be reported from here; call [`AuditLog::checkpoint`] to see them.
    fn drop(&mut self) {
        if self.config.checkpoint_every > 0 {
            let _ = self.checkpoint();
        }
    }
}

fn open_append(path: &Path) -> Result<File> {
    let existed = path.exists();
    let file = open_checked(path, OpenOptions::new().create(true).append(true))?;
    if !existed {
        sync_dir(path).map_err(io_err(path))?;
    }
    Ok(file)
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let file = open_checked(path, OpenOptions::new().write(true))?;
    file.set_len(len).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Check one segment's frames and inner chain; return where the valid frames end and the last
/// record. A torn tail is allowed (the caller truncates it); anything else is an error.
fn scan_tail(path: &Path, key: Option<&[u8]>) -> Result<Tail> {
    let mut reader = open_reader(path)?;
    let mut last: Option<(u64, [u8; 32], u64)> = None;
    let mut record = 0u64;
    loop {
        record += 1;
        match reader.next().map_err(io_err(path))? {
            Ok(f) => {
                let env = check_frame(&f, key, last.map(|(_, h, _)| h)).map_err(|why| {
                    audit_err(
                        path,
                        format!(
                            "record {record} of this file (offset {}) {why}; the log was not modified: run \
                             `finllm audit verify` and restore the file from backup",
                            f.offset
                        ),
                    )
                })?;
                last = Some((env.seq, f.hash, f.offset));
            }
            Err(FrameEnd::Clean) => {
                return Ok(Tail {
                    valid_len: reader.len,
                    file_len: reader.len,
                    last,
                })
            }
            Err(FrameEnd::Torn { offset }) => {
                return Ok(Tail {
                    valid_len: offset,
                    file_len: reader.len,
                    last,
                })
            }
            Err(FrameEnd::Corrupt { offset, reason }) => {
                return Err(audit_err(
                    path,
                    format!(
                        "record {record} at offset {offset}: {reason}; the log was not modified: run `finllm audit \
                         verify` and restore the file from backup"
                    ),
                ))
            }
        }
    }
}

/// CRC, envelope, hash and (when known) link to the previous hash of one frame.
fn check_frame(f: &RawFrame, key: Option<&[u8]>, prev: Option<[u8; 32]>) -> Result<Envelope, String> {
    if !f.crc_ok {
        return Err("fails its CRC (edited or damaged)".into());
    }
    let env: Envelope = serde_json::from_slice(&f.payload).map_err(|e| format!("has an unreadable payload ({e})"))?;
    let stored_prev = unhex32(&env.prev).ok_or("has a malformed prev hash")?;
    if let Some(p) = prev {
        if p != stored_prev {
            return Err("does not chain to the record before it".into());
        }
    }
    if env.chain != chain_name(key) {
        return Err(format!(
            "was written with a {} chain but the log is opened for {} (check the HMAC key setting)",
            env.chain,
            chain_name(key)
        ));
    }
    if chain_hash(key, &stored_prev, &f.payload) != f.hash {
        return Err("has a hash that does not match its content (edited, or wrong HMAC key)".into());
    }
    Ok(env)
}

// ---- checkpoints -------------------------------------------------------------------------------

/// One checkpoint, as stored in `PATH.checkpoints` (a CRC-framed payload like the log's, chained
/// to the previous checkpoint with SHA-256 or the log's HMAC key).
#[derive(Debug, Clone, serde::Deserialize)]
struct CheckpointEnvelope {
    /// 1-based number of the checkpoint.
    n: u64,
    /// Segment and frame offset of the record checkpointed.
    segment: u32,
    seq: u64,
    offset: u64,
    /// That record's chain hash.
    hash: String,
    #[allow(dead_code)] // read for investigations; nothing to check
    time_ms: u64,
    prev: String,
    chain: String,
}

/// Read the checkpoints appended since `tail` (by this process or another), checking each frame's
/// CRC and chain, and move `tail` to the end; a torn last frame (a crash mid-checkpoint) is cut
/// off. Runs under the file lock.
fn read_checkpoint_tail(path: &Path, tail: &mut CheckpointTail, key: Option<&[u8]>) -> Result<(), String> {
    let len = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound && tail.size == 0 => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if len == tail.size {
        return Ok(());
    }
    let mut reader = open_reader_at(path, tail.size).map_err(|e| e.to_string())?;
    loop {
        match reader
            .next()
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        {
            Ok(f) => {
                let ck = check_checkpoint(&f, key, tail.last_hash).map_err(|why| {
                    format!(
                        "checkpoint at offset {} of {} {why}; run `finllm audit verify`",
                        f.offset,
                        path.display()
                    )
                })?;
                *tail = CheckpointTail {
                    size: reader.offset,
                    count: ck.n,
                    last_hash: f.hash,
                    last_seq: ck.seq,
                };
            }
            Err(FrameEnd::Clean) => return Ok(()),
            Err(FrameEnd::Torn { offset }) => {
                truncate(path, offset).map_err(|e| e.to_string())?;
                tail.size = offset;
                return Ok(());
            }
            Err(FrameEnd::Corrupt { offset, reason }) => {
                return Err(format!(
                    "{} is damaged at offset {offset} ({reason}); run `finllm audit verify`",
                    path.display()
                ))
            }
        }
    }
}

/// CRC, payload, chain link and hash of one checkpoint frame, for a writer (which must know the
/// key the checkpoints were written with).
fn check_checkpoint(f: &RawFrame, key: Option<&[u8]>, prev: [u8; 32]) -> Result<CheckpointEnvelope, String> {
    if !f.crc_ok {
        return Err("fails its CRC (edited or damaged)".into());
    }
    let ck: CheckpointEnvelope =
        serde_json::from_slice(&f.payload).map_err(|e| format!("has an unreadable payload ({e})"))?;
    if unhex32(&ck.prev) != Some(prev) {
        return Err("does not chain to the checkpoint before it".into());
    }
    if ck.chain != chain_name(key) {
        return Err(format!(
            "was written with a {} chain but the log is opened for {} (check the HMAC key setting)",
            ck.chain,
            chain_name(key)
        ));
    }
    if chain_hash(key, &prev, &f.payload) != f.hash {
        return Err("has a hash that does not match its content (edited, or wrong HMAC key)".into());
    }
    Ok(ck)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
