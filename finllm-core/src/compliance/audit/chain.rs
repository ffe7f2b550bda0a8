use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::{audit_err, io_err, HEADER_LEN, MAGIC, MAX_RECORD_BYTES, TRAILER_LEN};
use crate::compliance::audit::files::open_checked;
use crate::Result;

// ---- chain -------------------------------------------------------------------------------------

pub(super) fn chain_hash(key: Option<&[u8]>, prev: &[u8; 32], payload: &[u8]) -> [u8; 32] {
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

pub(super) fn chain_name(key: Option<&[u8]>) -> &'static str {
    if key.is_some() {
        "hmac-sha256"
    } else {
        "sha256"
    }
}

pub(super) fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it): the time stamps of audit
/// records.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn frame(payload: &[u8], hash: &[u8; 32]) -> Result<Vec<u8>, String> {
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
pub(super) struct RawFrame {
    pub(super) offset: u64,
    pub(super) payload: Vec<u8>,
    pub(super) hash: [u8; 32],
    pub(super) crc_ok: bool,
}

pub(super) enum FrameEnd {
    /// The file ended exactly after the last frame.
    Clean,
    /// The last frame is incomplete (or the tail is zero-filled): a crash mid-write.
    Torn { offset: u64 },
    /// Bytes that are not a frame and not a torn tail.
    Corrupt { offset: u64, reason: String },
}

/// Reads frames one at a time; payload lengths are bounded before anything is allocated.
pub(super) struct FrameReader<R> {
    inner: R,
    pub(super) offset: u64,
    pub(super) len: u64,
}

impl<R: Read> FrameReader<R> {
    pub(super) fn next(&mut self) -> io::Result<Result<RawFrame, FrameEnd>> {
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

pub(super) fn open_reader(path: &Path) -> Result<FrameReader<BufReader<File>>> {
    open_reader_at(path, 0)
}

/// A frame reader over `path` from byte `offset` (a frame boundary) to the file's current end.
pub(super) fn open_reader_at(path: &Path, offset: u64) -> Result<FrameReader<BufReader<File>>> {
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
