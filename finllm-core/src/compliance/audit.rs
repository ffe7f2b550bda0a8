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
//! [`FsyncPolicy`]. With group commit, concurrent appenders share one `fsync`: the first waiter
//! becomes the leader and syncs everything written so far, the others wait on a condition
//! variable. Any write or sync error *poisons* the log: that append and every later one fail.
//!
//! **Recovery.** On open, a torn last frame (from a crash mid-write) is truncated and reported in
//! [`AuditLog::open_report`]; anything else that does not verify stops the open with an error.
//!
//! **Rotation.** When a file would exceed [`AuditConfig::max_file_bytes`], the log continues in
//! `PATH.000001`, `PATH.000002`, ...; the first record of a new file chains to the last hash of
//! the previous one, and [`verify`] checks continuity across the files.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
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
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::GroupCommit,
            max_file_bytes: 64 << 20,
            hmac_key: None,
        }
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("fsync", &self.fsync)
            .field("max_file_bytes", &self.max_file_bytes)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<hidden>"))
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
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(FrameReader {
        inner: BufReader::with_capacity(1 << 16, file),
        offset: 0,
        len,
    })
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

struct State {
    io: Arc<dyn SegmentIo>,
    segment: u32,
    segment_path: PathBuf,
    size: u64,
    next_seq: u64,
    last_hash: [u8; 32],
    /// Highest sequence number written (to the OS) and made durable (fsynced).
    written: u64,
    durable: u64,
    /// A leader is fsyncing outside the lock.
    syncing: bool,
    poisoned: Option<String>,
}

/// The append-only audit log. `Send + Sync`: share it behind an `Arc`.
pub struct AuditLog {
    base: PathBuf,
    config: AuditConfig,
    state: Mutex<State>,
    synced: Condvar,
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
    last: Option<(u64, [u8; 32])>,
}

impl AuditLog {
    /// Open (or create) the log whose first file is `path`, repairing a torn tail.
    pub fn open(path: impl AsRef<Path>, config: AuditConfig) -> Result<AuditLog> {
        let wrap: IoWrap = Arc::new(|f: File| Arc::new(f) as Arc<dyn SegmentIo>);
        Self::open_with_io(path.as_ref(), config, wrap)
    }

    pub(crate) fn open_with_io(base: &Path, config: AuditConfig, wrap: IoWrap) -> Result<AuditLog> {
        if config.max_file_bytes < 4096 {
            return Err(audit_err(base, "max_file_bytes must be at least 4096"));
        }
        let segments = segment_numbers(base)?;
        let mut report = OpenReport {
            files: segments.len().max(1),
            ..Default::default()
        };
        let key = config.hmac_key.as_deref();
        // Find the chain head: the last record of the last non-empty segment.
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
            if let Some(last) = tail.last {
                head = Some(last);
                break;
            }
            if i == 0 {
                break;
            }
        }
        let (last_seq, last_hash) = head.unwrap_or((0, ZERO_HASH));
        report.last_seq = last_seq;
        if segments.is_empty() {
            current = 0;
        }
        let segment_path = segment_path(base, current);
        let file = open_append(&segment_path)?;
        let size = file.metadata().map_err(io_err(&segment_path))?.len();
        Ok(AuditLog {
            base: base.to_path_buf(),
            state: Mutex::new(State {
                io: wrap(file),
                segment: current,
                segment_path,
                size,
                next_seq: last_seq + 1,
                last_hash,
                written: last_seq,
                durable: last_seq,
                syncing: false,
                poisoned: None,
            }),
            synced: Condvar::new(),
            config,
            report,
            wrap,
        })
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
        self.lock().poisoned.is_some()
    }

    /// Sequence number and chain hash (hex) of the last record.
    pub fn head(&self) -> (u64, String) {
        let st = self.lock();
        (st.next_seq - 1, hex(&st.last_hash))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a bug in this module; the state is
        // still consistent (every field is updated after the fallible step), so keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poisoned_err(&self, cause: &str) -> Error {
        Error::AuditPoisoned {
            path: self.base.clone(),
            cause: cause.to_string(),
        }
    }

    /// Append a record; returns once it is durable (per the fsync policy). On any write or sync
    /// failure the log is poisoned and this and all later appends fail.
    pub fn append(&self, record: &AuditRecord) -> Result<RecordReceipt> {
        let body = serde_json::to_string(record)
            .map_err(|e| audit_err(&self.base, format!("cannot serialise the record: {e}")))?;
        let mut st = self.lock();
        if let Some(cause) = &st.poisoned {
            return Err(self.poisoned_err(cause));
        }
        let receipt = match self.write_record(&mut st, &body) {
            Ok(r) => r,
            Err(cause) => {
                st.poisoned = Some(cause.clone());
                self.synced.notify_all();
                return Err(self.poisoned_err(&cause));
            }
        };
        match self.config.fsync {
            FsyncPolicy::EveryRecord => {
                if let Err(e) = st.io.sync() {
                    let cause = format!("fsync failed: {e}");
                    st.poisoned = Some(cause.clone());
                    return Err(self.poisoned_err(&cause));
                }
                st.durable = st.durable.max(receipt.seq);
                Ok(receipt)
            }
            FsyncPolicy::GroupCommit => self.wait_durable(st, receipt),
        }
    }

    /// Leader/follower group commit: whoever finds no sync in progress syncs everything written
    /// so far; the others wait for a sync that covers their record.
    fn wait_durable<'a>(&'a self, mut st: MutexGuard<'a, State>, receipt: RecordReceipt) -> Result<RecordReceipt> {
        loop {
            if st.durable >= receipt.seq {
                return Ok(receipt);
            }
            if let Some(cause) = &st.poisoned {
                return Err(self.poisoned_err(cause));
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.syncing = true;
            let target = st.written;
            let io = Arc::clone(&st.io);
            drop(st);
            let result = io.sync();
            st = self.lock();
            st.syncing = false;
            match result {
                Ok(()) => st.durable = st.durable.max(target),
                Err(e) => st.poisoned = Some(format!("fsync failed: {e}")),
            }
            self.synced.notify_all();
        }
    }

    /// Frame and write one record under the lock; on error the caller poisons the log.
    fn write_record(&self, st: &mut State, body: &str) -> Result<RecordReceipt, String> {
        let key = self.config.hmac_key.as_deref();
        let seq = st.next_seq;
        let payload_for = |segment: u32, prev: &[u8; 32]| {
            format!(
                "{{\"seq\":{seq},\"segment\":{segment},\"prev\":\"{}\",\"appended_at_ms\":{},\"chain\":\"{}\",\"record\":{body}}}",
                hex(prev),
                now_ms(),
                chain_name(key)
            )
        };
        let mut payload = payload_for(st.segment, &st.last_hash);
        let frame_len = payload.len() as u64 + HEADER_LEN + TRAILER_LEN;
        if st.size > 0 && st.size + frame_len > self.config.max_file_bytes {
            self.rotate(st)?;
            payload = payload_for(st.segment, &st.last_hash);
        }
        let hash = chain_hash(key, &st.last_hash, payload.as_bytes());
        let bytes = frame(payload.as_bytes(), &hash)?;
        st.io.write_all(&bytes).map_err(|e| format!("write failed: {e}"))?;
        let receipt = RecordReceipt {
            seq,
            hash: hex(&hash),
            file: st.segment_path.clone(),
            offset: st.size,
        };
        st.size += bytes.len() as u64;
        st.next_seq += 1;
        st.last_hash = hash;
        st.written = seq;
        Ok(receipt)
    }

    /// Make the current file durable, then continue in the next one (its entry fsynced in the
    /// directory before any record goes into it).
    fn rotate(&self, st: &mut State) -> Result<(), String> {
        st.io.sync().map_err(|e| format!("fsync before rotation failed: {e}"))?;
        st.durable = st.durable.max(st.written);
        let next = st.segment.checked_add(1).ok_or("too many log files")?;
        let path = segment_path(&self.base, next);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        sync_dir(&path).map_err(|e| format!("cannot sync the directory of {}: {e}", path.display()))?;
        st.io = (self.wrap)(file);
        st.segment = next;
        st.segment_path = path;
        st.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    if !existed {
        sync_dir(path).map_err(io_err(path))?;
    }
    Ok(file)
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let file = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    file.set_len(len).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Check one segment's frames and inner chain; return where the valid frames end and the last
/// record. A torn tail is allowed (the caller truncates it); anything else is an error.
fn scan_tail(path: &Path, key: Option<&[u8]>) -> Result<Tail> {
    let mut reader = open_reader(path)?;
    let mut last: Option<(u64, [u8; 32])> = None;
    let mut record = 0u64;
    loop {
        record += 1;
        match reader.next().map_err(io_err(path))? {
            Ok(f) => {
                let env = check_frame(&f, key, last.map(|(_, h)| h)).map_err(|why| {
                    audit_err(
                        path,
                        format!(
                            "record {record} of this file (offset {}) {why}; the log was not modified: run \
                             `finllm audit verify` and restore the file from backup",
                            f.offset
                        ),
                    )
                })?;
                last = Some((env.seq, f.hash));
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
    /// The log ends before the head the caller expected.
    HeadMismatch,
}

/// One problem found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyIssue {
    pub kind: IssueKind,
    /// 1-based record number in the whole log (the sequence number the record at this position
    /// should have).
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

/// Verify the whole log whose first file is `path`.
pub fn verify_with(path: impl AsRef<Path>, options: &VerifyOptions) -> Result<VerifyReport> {
    let base = path.as_ref();
    let numbers = segment_numbers(base)?;
    if numbers.is_empty() {
        return Err(audit_err(base, "no such audit log (no file at this path)"));
    }
    let mut v = Verifier::new(options);
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
    v.check_head(&segment_path(base, numbers[numbers.len() - 1]));
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
            ("sha256", _) => None,
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
