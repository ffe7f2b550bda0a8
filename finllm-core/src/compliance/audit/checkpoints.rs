use std::io;
use std::path::Path;

use super::ZERO_HASH;
use crate::compliance::audit::chain::{chain_hash, chain_name, open_reader_at, unhex32, FrameEnd, RawFrame};
use crate::compliance::audit::files::truncate;
use crate::Result;

// ---- checkpoints -------------------------------------------------------------------------------

/// One checkpoint, as stored in `PATH.checkpoints` (a CRC-framed payload like the log's, chained
/// to the previous checkpoint with SHA-256 or the log's HMAC key).
#[derive(Debug, Clone, serde::Deserialize)]
pub(super) struct CheckpointEnvelope {
    /// 1-based number of the checkpoint.
    pub(super) n: u64,
    /// Segment and frame offset of the record checkpointed.
    pub(super) segment: u32,
    pub(super) seq: u64,
    pub(super) offset: u64,
    /// That record's chain hash.
    pub(super) hash: String,
    #[allow(dead_code)] // read for investigations; nothing to check
    time_ms: u64,
    pub(super) prev: String,
    pub(super) chain: String,
}

/// The end of the checkpoint file as this handle knows it.
#[derive(Debug, Clone, Copy)]
pub(super) struct CheckpointTail {
    pub(super) size: u64,
    pub(super) count: u64,
    pub(super) last_hash: [u8; 32],
    pub(super) last_seq: u64,
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

/// Read the checkpoints appended since `tail` (by this process or another), checking each frame's
/// CRC and chain, and move `tail` to the end; a torn last frame (a crash mid-checkpoint) is cut
/// off. Runs under the file lock.
pub(super) fn read_checkpoint_tail(path: &Path, tail: &mut CheckpointTail, key: Option<&[u8]>) -> Result<(), String> {
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
