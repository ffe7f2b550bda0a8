//! Stop strings on a text stream: text is released only once it cannot be the start of a stop
//! string, so a stop string is never partly emitted.

/// Tracks generated text against a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    released: usize,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            released: 0,
        }
    }

    /// Append text; returns what may be released now and whether a stop string was hit
    /// (in which case the text before it is released and the rest is dropped).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        // A stop string may start in the held part; search only where a new match can be.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self.released.saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            let out = self.text[self.released.min(at)..at].to_string();
            self.released = self.text.len();
            return (out, true);
        }
        let safe = self.text.len() - self.held_suffix();
        let out = self.text[self.released..safe].to_string();
        self.released = safe;
        (out, false)
    }

    /// Release everything still held (the stream ended without a stop string).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.released..].to_string();
        self.released = self.text.len();
        out
    }

    /// All text accepted so far (up to a stop string if one was hit).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Length of the longest suffix of the text that is a proper prefix of some stop string.
    fn held_suffix(&self) -> usize {
        let mut best = 0;
        for s in &self.stops {
            for (len, _) in s.char_indices().skip(1) {
                if len > best && self.text.ends_with(&s[..len]) {
                    best = len;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let (text, hit) = m.push(p);
            out.push(text);
            if hit {
                return (out, true);
            }
        }
        out.push(m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_never_emitted() {
        let (out, hit) = run(&["\n\nUser:"], &["Hello", "\n", "\nUs", "er:", " more"]);
        assert!(hit);
        assert_eq!(out.concat(), "Hello");
        assert_eq!(out, vec!["Hello", "", "", ""]);
    }

    #[test]
    fn false_start_is_released_once_it_diverges() {
        let (out, hit) = run(&["STOP"], &["ab", "ST", "OX", "cd"]);
        assert!(!hit);
        assert_eq!(out, vec!["ab", "", "STOX", "cd", ""]);
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let (out, hit) = run(&["。", "结束"], &["利率下调", "结", "束了。"]);
        assert!(hit);
        assert_eq!(out.concat(), "利率下调");
    }

    #[test]
    fn no_stops_releases_immediately() {
        let (out, _) = run(&[], &["a", "b"]);
        assert_eq!(out, vec!["a", "b", ""]);
    }
}
