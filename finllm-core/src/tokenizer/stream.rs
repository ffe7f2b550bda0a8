//! Incremental detokenisation that only ever releases whole UTF-8 characters.

use super::Tokenizer;
use crate::error::Result;

/// Turns a stream of token ids into text, one complete character sequence at a time.
///
/// Bytes of a character split across tokens (common for CJK text in byte-level vocabularies)
/// are held until the character is complete. Bytes that can never become valid UTF-8 are
/// released as U+FFFD so the stream does not stall.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl<'a> StreamDecoder<'a> {
    pub(super) fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            pending: Vec::new(),
        }
    }

    /// Feed one token; returns the text that became complete (possibly empty).
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.pending.extend_from_slice(self.tokenizer.piece(id, true)?);
        Ok(self.take_complete())
    }

    /// Bytes still held back (an unfinished character).
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// End of stream: an unfinished character is dropped, never emitted broken.
    /// Returns how many bytes were dropped.
    pub fn finish(&mut self) -> usize {
        let dropped = self.pending.len();
        self.pending.clear();
        dropped
    }

    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("checked valid prefix"));
                    match e.error_len() {
                        // Incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that no continuation can fix.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }
}
