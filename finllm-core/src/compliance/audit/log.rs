use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::{
    audit_err, io_err, AuditConfig, AuditRecord, Envelope, FsyncPolicy, OpenReport, RecordReceipt, HEADER_LEN,
    MAX_RECORD_BYTES, TRAILER_LEN, ZERO_HASH,
};
use crate::compliance::audit::chain::{
    chain_hash, chain_name, frame, open_reader, open_reader_at, unhex32, unix_ms, FrameEnd, RawFrame,
};
use crate::compliance::audit::checkpoints::{read_checkpoint_tail, CheckpointTail};
use crate::compliance::audit::files::{
    checkpoints_path, lock_path, open_checked, refuse_special_path, segment_numbers, segment_path, sync_dir, truncate,
    FileLock,
};
use crate::util::hex;
use crate::{Error, Result};

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

pub(super) type IoWrap = Arc<dyn Fn(File) -> Arc<dyn SegmentIo> + Send + Sync>;

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
                unix_ms(),
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
            unix_ms(),
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
