//! The per-request mapping between placeholders (`<ID_1>`) and the values they stand for.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

/// Placeholders handed to the model, and the original values, for one request or conversation.
///
/// The same value (after normalisation: separators dropped, e-mail lower-cased) always gets the
/// same placeholder, numbered per tag in order of first appearance. Only a caller authorised to
/// see the data should call [`Vault::unmask`]. `Debug` never prints the values, and they are
/// overwritten when the vault is dropped.
#[derive(Default)]
pub struct Vault {
    /// placeholder -> original text (as first seen).
    values: HashMap<String, String>,
    /// (tag, normalised value) -> placeholder.
    placeholders: HashMap<(&'static str, String), String>,
    counters: HashMap<&'static str, u32>,
}

impl Vault {
    pub fn new() -> Self {
        Self::default()
    }

    /// The placeholder for a value, creating `<TAG_n>` if the value is new.
    pub(crate) fn placeholder_for(&mut self, tag: &'static str, normalised: String, original: &str) -> String {
        if let Some(p) = self.placeholders.get(&(tag, normalised.clone())) {
            return p.clone();
        }
        let n = self.counters.entry(tag).or_insert(0);
        *n += 1;
        let placeholder = format!("<{tag}_{n}>");
        self.values.insert(placeholder.clone(), original.to_string());
        self.placeholders.insert((tag, normalised), placeholder.clone());
        placeholder
    }

    /// Replace every placeholder this vault issued by its original value; unknown placeholders
    /// (ones the model invented) stay as they are.
    pub fn unmask(&self, text: &str) -> String {
        placeholder_regex()
            .replace_all(text, |caps: &regex::Captures<'_>| {
                let whole = &caps[0];
                self.values.get(whole).cloned().unwrap_or_else(|| whole.to_string())
            })
            .into_owned()
    }

    /// The original value behind one placeholder, e.g. `vault.get("<CARD_1>")`.
    pub fn get(&self, placeholder: &str) -> Option<&str> {
        self.values.get(placeholder).map(String::as_str)
    }

    /// Number of distinct values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The placeholders issued, sorted (`<CARD_1>`, `<ID_1>`, `<ID_2>`, ...).
    pub fn placeholders(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.values.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }
}

fn placeholder_regex() -> &'static regex::Regex {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"<[A-Z]+_[0-9]{1,9}>").expect("static placeholder pattern compiles"))
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("placeholders", &self.placeholders())
            .field("values", &"<hidden>")
            .finish()
    }
}

impl Drop for Vault {
    /// Overwrite the personal data before the memory goes back to the allocator, so it does not
    /// linger in freed heap pages (best effort: copies made by the caller are the caller's).
    fn drop(&mut self) {
        for (_, value) in self.values.drain() {
            wipe(value);
        }
        for ((_, normalised), _) in self.placeholders.drain() {
            wipe(normalised);
        }
    }
}

fn wipe(s: String) {
    let mut bytes = s.into_bytes();
    bytes.fill(0);
    std::hint::black_box(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_value_same_placeholder_and_unmask() {
        let mut v = Vault::new();
        assert_eq!(v.placeholder_for("ID", "1".into(), "1"), "<ID_1>");
        assert_eq!(v.placeholder_for("ID", "2".into(), "2"), "<ID_2>");
        assert_eq!(v.placeholder_for("ID", "1".into(), "1"), "<ID_1>");
        assert_eq!(v.placeholder_for("CARD", "1".into(), "1 "), "<CARD_1>");
        assert_eq!(v.unmask("a <ID_2> b <CARD_1> <ID_9>"), "a 2 b 1  <ID_9>");
        assert!(!format!("{v:?}").contains("\"2\""));
        assert_eq!(v.len(), 3);
    }
}
