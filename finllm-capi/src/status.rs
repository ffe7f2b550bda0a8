//! Version constants, the status code every fallible call returns, and their names.

use std::ffi::c_char;

/// Major version of the library this header belongs to.
pub const FINLLM_VERSION_MAJOR: u32 = 0;
/// Minor version of the library this header belongs to.
pub const FINLLM_VERSION_MINOR: u32 = 1;
/// Patch version of the library this header belongs to.
pub const FINLLM_VERSION_PATCH: u32 = 0;

/// Result of every fallible call. Values are stable and never reused.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum finllm_status {
    FINLLM_OK = 0,
    /// A required pointer argument was NULL.
    FINLLM_ERROR_NULL_POINTER = 1,
    /// A string argument was not valid UTF-8.
    FINLLM_ERROR_INVALID_UTF8 = 2,
    /// An argument was out of range (bad enum value, temperature < 0, ...).
    FINLLM_ERROR_INVALID_ARGUMENT = 3,
    /// An options struct's struct_size is smaller than this library's version of it.
    FINLLM_ERROR_STRUCT_SIZE = 4,
    /// A file could not be read.
    FINLLM_ERROR_IO = 5,
    /// A model file is malformed (truncated, hostile sizes, bad JSON).
    FINLLM_ERROR_MODEL_FORMAT = 6,
    /// The model is well-formed but not supported (architecture, missing tensor or key, type).
    FINLLM_ERROR_UNSUPPORTED_MODEL = 7,
    /// The tokenizer could not be built or used.
    FINLLM_ERROR_TOKENIZER = 8,
    /// The chat template failed to parse or render.
    FINLLM_ERROR_CHAT_TEMPLATE = 9,
    /// Prompt plus max_tokens exceed the model's context length.
    FINLLM_ERROR_CONTEXT_OVERFLOW = 10,
    /// A caller buffer is too small; the needed size was reported.
    FINLLM_ERROR_BUFFER_TOO_SMALL = 11,
    /// The tensor backend failed.
    FINLLM_ERROR_BACKEND = 12,
    /// finllm panicked (a bug): the call had no effect beyond what the message says.
    FINLLM_ERROR_PANIC = 13,
    /// An error this version of the header has no code for.
    FINLLM_ERROR_OTHER = 14,
    /// A compliance policy (TOML rule pack) is invalid; the message says where.
    FINLLM_ERROR_POLICY = 15,
    /// The audit log cannot be opened, read or appended to (or a verified log does not exist);
    /// the message says what to do.
    FINLLM_ERROR_AUDIT = 16,
    /// An earlier write or fsync of the guard's audit log failed, so the log accepts no further
    /// record and no guarded answer is given (fail-closed). Fix the disk, then make a new guard
    /// (reopening the log truncates a torn tail).
    FINLLM_ERROR_AUDIT_POISONED = 17,
    /// The requested device cannot be used: CUDA asked for in a build without it, no such
    /// GPU, or no driver. The message says which.
    FINLLM_ERROR_DEVICE = 18,
    /// The engine's queue is full; nothing was queued. Retry later, or set wait_ms.
    FINLLM_ERROR_BUSY = 19,
    /// The request can never run on this engine: prompt plus max_tokens need more KV cache than
    /// its whole budget, or the prompt more tokens than its queue holds.
    FINLLM_ERROR_REQUEST_TOO_LARGE = 20,
    /// The request's deadline passed before it finished.
    FINLLM_ERROR_DEADLINE_EXCEEDED = 21,
    /// The engine could not serve the request (its scheduler stopped, or a batched step
    /// failed); the message says which.
    FINLLM_ERROR_ENGINE = 22,
    /// Nothing arrived within the caller's timeout; call again.
    FINLLM_ERROR_TIMEOUT = 23,
    /// A document cannot be read as text (unsupported type, invalid UTF-8, a malformed PDF or
    /// one without a text layer, over the size limit).
    FINLLM_ERROR_DOCUMENT = 24,
    /// An index file is corrupt, truncated or of another version: rebuild it.
    FINLLM_ERROR_INDEX_FILE = 25,
    /// A retriever failed (an external store, a caller's retrieval callback, or an index used
    /// with another embedder than the one that built it).
    FINLLM_ERROR_RETRIEVER = 26,
}

// ------------------------------------------------------------------------------------------
// Version and errors
// ------------------------------------------------------------------------------------------

/// The library version, e.g. "0.1.0". Static string; never free it.
#[no_mangle]
pub extern "C" fn finllm_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}

/// A static, human-readable name for a status value (also for values this version does not
/// know). Never free it.
#[no_mangle]
pub extern "C" fn finllm_status_name(status: i32) -> *const c_char {
    let name: &'static str = match status {
        0 => "FINLLM_OK\0",
        1 => "FINLLM_ERROR_NULL_POINTER\0",
        2 => "FINLLM_ERROR_INVALID_UTF8\0",
        3 => "FINLLM_ERROR_INVALID_ARGUMENT\0",
        4 => "FINLLM_ERROR_STRUCT_SIZE\0",
        5 => "FINLLM_ERROR_IO\0",
        6 => "FINLLM_ERROR_MODEL_FORMAT\0",
        7 => "FINLLM_ERROR_UNSUPPORTED_MODEL\0",
        8 => "FINLLM_ERROR_TOKENIZER\0",
        9 => "FINLLM_ERROR_CHAT_TEMPLATE\0",
        10 => "FINLLM_ERROR_CONTEXT_OVERFLOW\0",
        11 => "FINLLM_ERROR_BUFFER_TOO_SMALL\0",
        12 => "FINLLM_ERROR_BACKEND\0",
        13 => "FINLLM_ERROR_PANIC\0",
        14 => "FINLLM_ERROR_OTHER\0",
        15 => "FINLLM_ERROR_POLICY\0",
        16 => "FINLLM_ERROR_AUDIT\0",
        17 => "FINLLM_ERROR_AUDIT_POISONED\0",
        18 => "FINLLM_ERROR_DEVICE\0",
        19 => "FINLLM_ERROR_BUSY\0",
        20 => "FINLLM_ERROR_REQUEST_TOO_LARGE\0",
        21 => "FINLLM_ERROR_DEADLINE_EXCEEDED\0",
        22 => "FINLLM_ERROR_ENGINE\0",
        23 => "FINLLM_ERROR_TIMEOUT\0",
        24 => "FINLLM_ERROR_DOCUMENT\0",
        25 => "FINLLM_ERROR_INDEX_FILE\0",
        26 => "FINLLM_ERROR_RETRIEVER\0",
        _ => "FINLLM_ERROR_UNKNOWN_STATUS\0",
    };
    name.as_ptr().cast()
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    #[test]
    fn version_constants_match_cargo_toml() {
        assert_eq!(FINLLM_VERSION_MAJOR.to_string(), env!("CARGO_PKG_VERSION_MAJOR"));
        assert_eq!(FINLLM_VERSION_MINOR.to_string(), env!("CARGO_PKG_VERSION_MINOR"));
        assert_eq!(FINLLM_VERSION_PATCH.to_string(), env!("CARGO_PKG_VERSION_PATCH"));
        // SAFETY: static NUL-terminated string.
        let v = unsafe { CStr::from_ptr(finllm_version()) }.to_str().unwrap();
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn status_names_cover_every_code() {
        for code in 0..=17 {
            // SAFETY: static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(finllm_status_name(code)) }.to_str().unwrap();
            assert!(
                name.starts_with("FINLLM_") && !name.contains("UNKNOWN"),
                "{code}: {name}"
            );
        }
        let unknown = unsafe { CStr::from_ptr(finllm_status_name(999)) }.to_str().unwrap();
        assert_eq!(unknown, "FINLLM_ERROR_UNKNOWN_STATUS");
    }
}
