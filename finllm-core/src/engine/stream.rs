//! The caller's side of a request: an owned stream of events and a cancel switch.

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Shared;
use crate::error::{Error, Result};
use crate::generate::{Generation, TokenEvent};

/// What the scheduler sends a stream.
pub(super) enum Msg {
    Event(TokenEvent),
    /// The request ended normally (also when cancelled); nothing follows.
    Done(Box<Generation>),
    /// The request failed; nothing follows.
    Failed(Error),
}

/// Stops one request from any thread; cloneable.
#[derive(Clone)]
pub struct CancelHandle {
    flag: Arc<AtomicBool>,
    shared: Weak<Shared>,
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelHandle").finish_non_exhaustive()
    }
}

impl CancelHandle {
    /// Ask the engine to stop the request: it ends with [`FinishReason::Cancelled`] before the
    /// next step, and its KV cache is freed then.
    ///
    /// [`FinishReason::Cancelled`]: crate::generate::FinishReason::Cancelled
    pub fn cancel(&self) {
        super::cancel(&self.flag, &self.shared);
    }
}

/// An accepted request: iterate it for its [`TokenEvent`]s (the last one carries the finish
/// reason), or [`wait`](Self::wait) for the whole [`Generation`]. Owned, `Send`: hand it to any
/// thread. Dropping it cancels the request.
pub struct RequestStream {
    rx: Receiver<Msg>,
    prompt_ids: Vec<u32>,
    cancel: CancelHandle,
    generation: Option<Generation>,
    done: bool,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl RequestStream {
    pub(super) fn new(rx: Receiver<Msg>, prompt_ids: Vec<u32>, flag: Arc<AtomicBool>, shared: Weak<Shared>) -> Self {
        Self {
            rx,
            prompt_ids,
            cancel: CancelHandle { flag, shared },
            generation: None,
            done: false,
        }
    }

    /// The prompt's token ids, as the engine runs them.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Stop the request (see [`CancelHandle::cancel`]); keep reading to get what it generated.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A handle that cancels this request from elsewhere.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The next event, waiting at most `timeout`: `Ok(None)` when the stream has ended,
    /// `Err(None)` when nothing came in time, `Err(Some(error))` when the request failed.
    pub fn next_timeout(&mut self, timeout: Duration) -> std::result::Result<Option<TokenEvent>, Option<Error>> {
        if self.done {
            return Ok(None);
        }
        match self.rx.recv_timeout(timeout) {
            Ok(msg) => self.take(msg).transpose().map_err(Some),
            Err(RecvTimeoutError::Timeout) => Err(None),
            Err(RecvTimeoutError::Disconnected) => Err(Some(self.stopped())),
        }
    }

    /// The whole generation, once the stream has ended normally.
    pub fn generation(&self) -> Option<&Generation> {
        self.generation.as_ref()
    }

    /// Read the stream to its end and return the whole answer.
    pub fn wait(mut self) -> Result<Generation> {
        for event in self.by_ref() {
            event?;
        }
        self.generation.take().ok_or_else(|| Error::Engine {
            reason: "the request's result was already taken".into(),
        })
    }

    fn take(&mut self, msg: Msg) -> Option<Result<TokenEvent>> {
        match msg {
            Msg::Event(e) => Some(Ok(e)),
            Msg::Done(g) => {
                self.done = true;
                self.generation = Some(*g);
                None
            }
            Msg::Failed(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn stopped(&mut self) -> Error {
        self.done = true;
        Error::Engine {
            reason: "the engine stopped before the request ended".into(),
        }
    }
}

impl Iterator for RequestStream {
    type Item = Result<TokenEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.rx.recv() {
            Ok(msg) => self.take(msg),
            Err(_) => Some(Err(self.stopped())),
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}
