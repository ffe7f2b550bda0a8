use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::io_err;
use crate::{Error, Result};

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
pub(super) fn refuse_special_path(path: &Path) -> Result<()> {
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
pub(super) fn open_checked(path: &Path, options: &mut OpenOptions) -> Result<File> {
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
pub(super) struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    pub(super) fn exclusive(file: &'a File, path: &Path) -> Result<Self> {
        file.lock().map_err(io_err(path))?;
        Ok(Self(file))
    }

    pub(super) fn shared(file: &'a File, path: &Path) -> Result<Self> {
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
pub(super) fn segment_numbers(base: &Path) -> Result<Vec<u32>> {
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

pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => File::open(".")?.sync_all(),
    }
}

pub(super) fn truncate(path: &Path, len: u64) -> Result<()> {
    let file = open_checked(path, OpenOptions::new().write(true))?;
    file.set_len(len).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}
