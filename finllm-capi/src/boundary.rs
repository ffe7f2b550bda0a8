//! Errors and the panic boundary: every exported body runs inside [`guard`], which turns a
//! panic into `FINLLM_ERROR_PANIC` and a [`Failure`] into its status code plus a per-thread
//! message (read with finllm_last_error_message), and the helpers that check and convert C
//! arguments into `Failure`s.

use std::cell::RefCell;
use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use finllm_core::Error;

use crate::status::finllm_status::{self, *};

// ------------------------------------------------------------------------------------------
// Errors and the panic boundary
// ------------------------------------------------------------------------------------------

thread_local! {
    static LAST_ERROR: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct Failure(pub(crate) finllm_status, pub(crate) String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        use finllm_core::error::ErrorKind as K;
        let status = match e.kind() {
            K::Io => FINLLM_ERROR_IO,
            K::ModelFormat => FINLLM_ERROR_MODEL_FORMAT,
            K::UnsupportedModel => FINLLM_ERROR_UNSUPPORTED_MODEL,
            K::Tokenizer => FINLLM_ERROR_TOKENIZER,
            K::ChatTemplate => FINLLM_ERROR_CHAT_TEMPLATE,
            K::InvalidArgument => FINLLM_ERROR_INVALID_ARGUMENT,
            K::ContextOverflow => FINLLM_ERROR_CONTEXT_OVERFLOW,
            K::Backend => FINLLM_ERROR_BACKEND,
            K::Device => FINLLM_ERROR_DEVICE,
            K::Policy => FINLLM_ERROR_POLICY,
            K::Audit => FINLLM_ERROR_AUDIT,
            K::AuditPoisoned => FINLLM_ERROR_AUDIT_POISONED,
            K::Busy => FINLLM_ERROR_BUSY,
            K::RequestTooLarge => FINLLM_ERROR_REQUEST_TOO_LARGE,
            K::DeadlineExceeded => FINLLM_ERROR_DEADLINE_EXCEEDED,
            K::Engine => FINLLM_ERROR_ENGINE,
            K::Document => FINLLM_ERROR_DOCUMENT,
            K::IndexFile => FINLLM_ERROR_INDEX_FILE,
            K::Retriever => FINLLM_ERROR_RETRIEVER,
        };
        Failure(status, e.to_string())
    }
}

pub(crate) fn fail<T>(status: finllm_status, msg: impl Into<String>) -> Result<T, Failure> {
    Err(Failure(status, msg.into()))
}

fn set_last_error(msg: &str) {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        e.clear();
        e.extend_from_slice(msg.as_bytes());
    });
}

/// Run an exported body: clear the thread's error, catch panics, record failures.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> finllm_status {
    set_last_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => FINLLM_OK,
        Ok(Err(Failure(status, msg))) => {
            set_last_error(&msg);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_last_error(&format!("internal error (please report): {what}"));
            FINLLM_ERROR_PANIC
        }
    }
}

/// Borrow a required pointer.
///
/// # Safety
/// `p` must be NULL or point to a valid `T` for the duration of the call.
pub(crate) unsafe fn require<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller guarantees p is NULL or valid; NULL is rejected here.
    unsafe { p.as_ref() }.ok_or_else(|| Failure(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL")))
}

/// Read a required NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return fail(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL"));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|e| Failure(FINLLM_ERROR_INVALID_UTF8, format!("{name} is not valid UTF-8: {e}")))
}

/// Store `value` in a required out-pointer.
///
/// # Safety
/// `out` must be NULL or valid for a write of `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T, name: &str) -> Result<(), Failure> {
    if out.is_null() {
        return fail(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL"));
    }
    // SAFETY: non-NULL and writable per the caller's contract.
    unsafe { out.write(value) };
    Ok(())
}

pub(crate) fn check_size(struct_size: u32, expected: usize, name: &str) -> Result<(), Failure> {
    if (struct_size as usize) < expected {
        return fail(
            FINLLM_ERROR_STRUCT_SIZE,
            format!("{name}.struct_size is {struct_size}, this library needs at least {expected}: initialise it with the default_params function"),
        );
    }
    Ok(())
}

/// Read an optional NUL-terminated UTF-8 string (NULL is None).
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn opt_c_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, NUL-terminated per the caller's contract.
    unsafe { c_str(p, name) }.map(Some)
}

/// Copy an array of `n` NUL-terminated UTF-8 strings.
///
/// # Safety
/// `p` NULL or valid for `n` pointers, each NUL-terminated.
pub(crate) unsafe fn c_str_array(p: *const *const c_char, n: usize, name: &str) -> Result<Vec<String>, Failure> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        return fail(FINLLM_ERROR_NULL_POINTER, format!("{name} is NULL while n_{name} > 0"));
    }
    let mut out = Vec::with_capacity(n.min(1024));
    for i in 0..n {
        // SAFETY: p is valid for n pointers per the contract.
        let s = unsafe { *p.add(i) };
        out.push(unsafe { c_str(s, &format!("{name}[{i}]")) }?.to_string());
    }
    Ok(out)
}

/// Copy `len` bytes of a key (a key of length 0 is None).
///
/// # Safety
/// `p` NULL or valid for `len` reads.
pub(crate) unsafe fn key_bytes(p: *const u8, len: usize, name: &str) -> Result<Option<Vec<u8>>, Failure> {
    if len == 0 {
        return Ok(None);
    }
    if p.is_null() {
        return fail(
            FINLLM_ERROR_NULL_POINTER,
            format!("{name} is NULL while {name}_len > 0"),
        );
    }
    // SAFETY: valid for len reads per the contract.
    Ok(Some(unsafe { std::slice::from_raw_parts(p, len) }.to_vec()))
}

/// The caller-buffer convention for strings out: `*needed` gets the length plus 1 on success
/// and on FINLLM_ERROR_BUFFER_TOO_SMALL; the text is written NUL-terminated if it fits.
///
/// # Safety
/// `buf` NULL or valid for `buf_len` writes; `needed` NULL or writable.
pub(crate) unsafe fn copy_out(
    text: &[u8],
    buf: *mut c_char,
    buf_len: usize,
    needed: *mut usize,
) -> Result<(), Failure> {
    // SAFETY: contracts forwarded.
    unsafe { put(needed, text.len() + 1, "needed") }?;
    if text.len() + 1 > buf_len || buf.is_null() {
        return fail(
            FINLLM_ERROR_BUFFER_TOO_SMALL,
            format!("{} bytes do not fit in {buf_len}", text.len() + 1),
        );
    }
    // SAFETY: buf is valid for buf_len >= text.len() + 1 writes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), text.len());
        *buf.add(text.len()) = 0;
    }
    Ok(())
}

/// Copy the message of the last failed call on this thread into `buf` (NUL-terminated,
/// truncated to `buf_len`). Returns the full length including the NUL (1 when there is no
/// error). `buf` may be NULL when `buf_len` is 0, to ask for the length.
///
/// # Safety
/// `buf` must be NULL or valid for `buf_len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn finllm_last_error_message(buf: *mut c_char, buf_len: usize) -> usize {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        if !buf.is_null() && buf_len > 0 {
            let n = e.len().min(buf_len - 1);
            // SAFETY: buf is valid for buf_len bytes per the contract; n + 1 <= buf_len.
            unsafe {
                std::ptr::copy_nonoverlapping(e.as_ptr(), buf.cast::<u8>(), n);
                *buf.add(n) = 0;
            }
        }
        e.len() + 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compliance_errors_have_their_own_codes() {
        let cases = [
            (
                Error::Policy {
                    origin: "pack.toml".into(),
                    reason: "bad rule".into(),
                },
                FINLLM_ERROR_POLICY,
            ),
            (
                Error::Audit {
                    path: "audit.log".into(),
                    reason: "no such audit log".into(),
                },
                FINLLM_ERROR_AUDIT,
            ),
            (
                Error::AuditPoisoned {
                    path: "audit.log".into(),
                    cause: "fsync failed".into(),
                },
                FINLLM_ERROR_AUDIT_POISONED,
            ),
        ];
        for (error, want) in cases {
            let Failure(got, msg) = error.into();
            assert_eq!(got, want, "{msg}");
            assert!(msg.contains("audit.log") || msg.contains("pack.toml"), "{msg}");
        }
    }

    #[test]
    fn panics_become_status_codes() {
        let status = guard(|| panic!("boom"));
        assert_eq!(status, FINLLM_ERROR_PANIC);
        let mut buf = [0 as c_char; 64];
        // SAFETY: buf is 64 bytes.
        let n = unsafe { finllm_last_error_message(buf.as_mut_ptr(), buf.len()) };
        let msg = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap();
        assert!(msg.contains("boom"), "{msg}");
        assert_eq!(n, msg.len() + 1);
    }
}
