//! Cancellation: a flag that stops the generations given it, from any thread.

use std::sync::atomic::{AtomicBool, Ordering};

/// A cancellation flag: trigger it from any thread to stop generations that were given it.
/// Thread safety: fully thread-safe; must outlive the calls that use it.
pub struct finllm_cancel {
    pub(crate) flag: AtomicBool,
}

// ------------------------------------------------------------------------------------------
// Cancellation
// ------------------------------------------------------------------------------------------

/// A new, untriggered cancel handle; free it with finllm_cancel_free.
#[no_mangle]
pub extern "C" fn finllm_cancel_new() -> *mut finllm_cancel {
    Box::into_raw(Box::new(finllm_cancel {
        flag: AtomicBool::new(false),
    }))
}

/// Ask every generation using `cancel` to stop after its current token. Any thread. NULL is
/// ignored.
///
/// # Safety
/// `cancel` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_cancel_trigger(cancel: *const finllm_cancel) {
    // SAFETY: NULL or live per the contract.
    if let Some(c) = unsafe { cancel.as_ref() } {
        c.flag.store(true, Ordering::Release);
    }
}

/// Untrigger `cancel` so it can be reused. NULL is ignored.
///
/// # Safety
/// `cancel` NULL or live.
#[no_mangle]
pub unsafe extern "C" fn finllm_cancel_reset(cancel: *const finllm_cancel) {
    // SAFETY: NULL or live per the contract.
    if let Some(c) = unsafe { cancel.as_ref() } {
        c.flag.store(false, Ordering::Release);
    }
}

/// Free a cancel handle. NULL is allowed. No generation may still be using it.
///
/// # Safety
/// `cancel` NULL or a handle not yet freed.
#[no_mangle]
pub unsafe extern "C" fn finllm_cancel_free(cancel: *mut finllm_cancel) {
    if !cancel.is_null() {
        // SAFETY: came from Box::into_raw, freed once per the contract.
        drop(unsafe { Box::from_raw(cancel) });
    }
}
