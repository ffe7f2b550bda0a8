use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use regex_automata::{hybrid, Anchored, Input};

use super::{cosine, embed_checked, Action, Decision, FilterOutput, Policy, RuleMatch, Verdict, MAX_SENTENCE_CHARS};
use crate::compliance::policy::rules::Matcher;
use crate::Result;

// ---- streaming ---------------------------------------------------------------------------------

/// Whether a match of `dfa` starting at `at` may still be in progress at the end of `hay` (more
/// text could complete or extend it). Answers yes when the DFA cannot tell (a Unicode word
/// boundary next to non-ASCII text, a full cache).
fn may_still_match(dfa: &hybrid::dfa::DFA, cache: &mut hybrid::dfa::Cache, hay: &str, at: usize) -> bool {
    let input = Input::new(hay).range(at..).anchored(Anchored::Yes);
    let Ok(mut state) = dfa.start_state_forward(cache, &input) else {
        return true;
    };
    for &byte in &hay.as_bytes()[at..] {
        state = match dfa.next_state(cache, state, byte) {
            Ok(s) => s,
            Err(_) => return true,
        };
        if state.is_dead() {
            return false;
        }
        if state.is_quit() {
            return true;
        }
    }
    true
}

fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '\n' | '。' | '！' | '？' | '；' | ';')
}

/// Filters one generated stream. See the module docs for what is held back and why.
pub struct StreamFilter {
    policy: Policy,
    /// Text from absolute offset `base` on (older text is dropped once no rule needs it).
    buf: String,
    base: usize,
    /// Absolute offset up to which text has been released (or redacted).
    released: usize,
    /// Per regex rule: absolute offset where the next match may start (no double reports).
    regex_next: Vec<usize>,
    /// Per regex rule with a DFA, its search cache.
    regex_caches: Vec<Option<hybrid::dfa::Cache>>,
    /// Absolute start of the sentence not yet judged by semantic rules.
    sentence_start: usize,
    /// Accepted redactions not yet released: (absolute span, replacement), sorted.
    redactions: Vec<(Range<usize>, String)>,
    matches: Vec<RuleMatch>,
    disclaimers: Vec<String>,
    notes: Vec<String>,
    output: String,
    stopped: bool,
}

impl fmt::Debug for StreamFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamFilter")
            .field("released", &self.released)
            .field("held", &self.held_bytes())
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl StreamFilter {
    pub(super) fn new(policy: Policy) -> Self {
        let mut notes = Vec::new();
        if policy.inner.embedder.is_none() {
            for rule in &policy.inner.rules {
                if matches!(rule.matcher, Matcher::Semantic { .. }) {
                    notes.push(format!(
                        "semantic rule '{}' skipped: no embedder supplied (see Policy::with_embedder)",
                        rule.id
                    ));
                }
            }
        }
        let n = policy.inner.rules.len();
        Self {
            policy,
            buf: String::new(),
            base: 0,
            released: 0,
            regex_next: vec![0; n],
            regex_caches: (0..n).map(|_| None).collect(),
            sentence_start: 0,
            redactions: Vec::new(),
            matches: Vec::new(),
            disclaimers: Vec::new(),
            notes,
            output: String::new(),
            stopped: false,
        }
    }

    /// Bytes received but not yet released.
    pub fn held_bytes(&self) -> usize {
        self.base + self.buf.len() - self.released
    }

    /// Characters received but not yet released.
    pub fn held_chars(&self) -> usize {
        let from = self.released.saturating_sub(self.base).min(self.buf.len());
        self.buf.get(from..).map_or(0, |s| s.chars().count())
    }

    /// True once the stream was blocked or finished.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Feed the next piece of generated text.
    pub fn push(&mut self, piece: &str) -> Result<FilterOutput> {
        if self.stopped {
            return Ok(FilterOutput::default());
        }
        let old_end = self.end();
        self.buf.push_str(piece);
        let mut found = self.keyword_matches(old_end);
        found.extend(self.regex_matches(false));
        found.extend(self.semantic_matches(false)?);
        self.settle(found, false)
    }

    /// End of the stream: judge what is still held, release it, append disclaimers.
    pub fn finish(&mut self) -> Result<FilterOutput> {
        if self.stopped {
            return Ok(FilterOutput::default());
        }
        let mut found = self.regex_matches(true);
        found.extend(self.semantic_matches(true)?);
        self.settle(found, true)
    }

    fn end(&self) -> usize {
        self.base + self.buf.len()
    }

    fn abs_str(&self, span: Range<usize>) -> &str {
        &self.buf[span.start - self.base..span.end - self.base]
    }

    fn rule_match(&self, rule: usize, span: Range<usize>, score: Option<f32>) -> RuleMatch {
        let r = &self.policy.inner.rules[rule];
        RuleMatch {
            rule_id: r.id.clone(),
            category: r.category.clone(),
            action: r.action,
            matched: self.abs_str(span.clone()).to_string(),
            span,
            score,
        }
    }

    /// Keyword occurrences that end in the new text (older ones were reported already).
    fn keyword_matches(&self, old_end: usize) -> Vec<RuleMatch> {
        let inner = &self.policy.inner;
        let Some(ac) = &inner.automaton else {
            return Vec::new();
        };
        let from = self.floor_boundary(old_end.saturating_sub(inner.max_keyword_bytes));
        let hay = &self.buf[from - self.base..];
        let mut out = Vec::new();
        for m in ac.find_overlapping_iter(hay) {
            let span = from + m.start()..from + m.end();
            if span.end <= old_end {
                continue;
            }
            let rule = inner.keyword_rule[m.pattern().as_usize()];
            if !self.excepted(rule, &span) {
                out.push(self.rule_match(rule, span, None));
            }
        }
        out
    }

    /// Whether the keyword at `span` is the tail of one of its rule's negating exceptions.
    fn excepted(&self, rule: usize, span: &Range<usize>) -> bool {
        let Matcher::Keywords { except } = &self.policy.inner.rules[rule].matcher else {
            return false;
        };
        let before = &self.buf[..span.end - self.base];
        except.iter().any(|e| {
            before.len() >= e.len()
                && before.is_char_boundary(before.len() - e.len())
                && before[before.len() - e.len()..].eq_ignore_ascii_case(e)
        })
    }

    /// Regex matches that can no longer change (text follows them, or the stream ended).
    fn regex_matches(&mut self, finished: bool) -> Vec<RuleMatch> {
        let inner = Arc::clone(&self.policy.inner);
        let mut out = Vec::new();
        for (i, rule) in inner.rules.iter().enumerate() {
            let Matcher::Regex { re, .. } = &rule.matcher else {
                continue;
            };
            // A match within its max_len that is not reported yet starts in the held text.
            let mut at = self.regex_next[i].max(self.released).max(self.base) - self.base;
            while let Some(m) = re.find_at(&self.buf, at) {
                if m.end() == self.buf.len() && !finished {
                    break; // could still grow
                }
                let span = self.base + m.start()..self.base + m.end();
                self.regex_next[i] = span.end;
                out.push(self.rule_match(i, span, None));
                at = if m.end() > m.start() { m.end() } else { m.end() + 1 };
                if at > self.buf.len() {
                    break;
                }
            }
        }
        out
    }

    /// Semantic rules over completed sentences (and the rest, when finished).
    fn semantic_matches(&mut self, finished: bool) -> Result<Vec<RuleMatch>> {
        let inner = Arc::clone(&self.policy.inner);
        let Some(embedder) = &inner.embedder else {
            return Ok(Vec::new());
        };
        let sentences = self.take_sentences(finished);
        let texts: Vec<&str> = sentences.iter().map(|s| self.abs_str(s.clone()).trim()).collect();
        let judged: Vec<(Range<usize>, &str)> = sentences
            .iter()
            .cloned()
            .zip(texts.iter().copied())
            .filter(|(_, t)| !t.is_empty())
            .collect();
        if judged.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&str> = judged.iter().map(|(_, t)| *t).collect();
        let dim = inner.example_vectors.iter().flatten().flatten().next().map(Vec::len);
        let vectors = embed_checked(embedder.as_ref(), &refs, &inner.origin, dim)?;
        let mut out = Vec::new();
        for ((span, _), v) in judged.iter().zip(&vectors) {
            for (i, rule) in inner.rules.iter().enumerate() {
                let (Matcher::Semantic { threshold, .. }, Some(examples)) = (&rule.matcher, &inner.example_vectors[i])
                else {
                    continue;
                };
                let best = examples
                    .iter()
                    .filter_map(|e| cosine(v, e))
                    .fold(f32::NEG_INFINITY, f32::max);
                if best >= *threshold {
                    out.push(self.rule_match(i, span.clone(), Some(best)));
                }
            }
        }
        Ok(out)
    }

    /// Cut the unjudged text into finished sentences (absolute spans) and advance past them.
    fn take_sentences(&mut self, finished: bool) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut start = self.sentence_start;
        let mut chars = 0usize;
        let rel = start - self.base;
        for (i, c) in self.buf[rel..].char_indices() {
            chars += 1;
            let end = start.max(self.base + rel + i + c.len_utf8());
            if is_sentence_end(c) || chars >= MAX_SENTENCE_CHARS {
                out.push(start..end);
                start = end;
                chars = 0;
            }
        }
        if finished && start < self.end() {
            out.push(start..self.end());
            start = self.end();
        }
        self.sentence_start = start;
        out
    }

    /// Record what fired, then block or release.
    fn settle(&mut self, mut found: Vec<RuleMatch>, finished: bool) -> Result<FilterOutput> {
        found.sort_by(|a, b| a.span.start.cmp(&b.span.start).then(b.action.cmp(&a.action)));
        self.matches.extend(found.iter().cloned());
        for m in &found {
            self.accept(m);
        }
        let block_at = found
            .iter()
            .filter(|m| m.action == Action::Block)
            .map(|m| m.span.start)
            .min();
        if let Some(at) = block_at {
            // The hold-back guarantees the phrase was not released; clamp in case a regex broke
            // its declared max_len.
            let release = self.release_to(at.max(self.released));
            self.stopped = true;
            return Ok(FilterOutput {
                release,
                matches: found,
                decision: Some(self.decision()),
            });
        }
        let safe = if finished { self.end() } else { self.safe_point() };
        let mut release = self.release_to(safe);
        let decision = if finished {
            self.stopped = true;
            for d in self.disclaimers.clone() {
                let tail = format!("\n\n{d}");
                self.output.push_str(&tail);
                release.push_str(&tail);
            }
            Some(self.decision())
        } else {
            self.trim();
            None
        };
        Ok(FilterOutput {
            release,
            matches: found,
            decision,
        })
    }

    fn accept(&mut self, m: &RuleMatch) {
        let Some(rule) = self.policy.inner.rules.iter().find(|r| r.id == m.rule_id) else {
            return;
        };
        match m.action {
            Action::Redact => {
                let span = m.span.start.max(self.released)..m.span.end;
                if span.start < span.end {
                    self.add_redaction(span, rule.replacement.clone());
                }
            }
            Action::AppendDisclaimer => {
                if let Some(d) = &rule.disclaimer {
                    if !self.disclaimers.contains(d) {
                        self.disclaimers.push(d.clone());
                    }
                }
            }
            Action::Flag | Action::Block => {}
        }
    }

    /// Add a redaction, merging it with ones it overlaps (one replacement for the union).
    fn add_redaction(&mut self, span: Range<usize>, replacement: String) {
        let mut merged = span;
        self.redactions.retain(|(s, _)| {
            let overlaps = s.start < merged.end && merged.start < s.end;
            if overlaps {
                merged = merged.start.min(s.start)..merged.end.max(s.end);
            }
            !overlaps
        });
        self.redactions.push((merged, replacement));
        self.redactions.sort_by_key(|(s, _)| s.start);
    }

    /// Release text up to `to` (absolute), applying redactions; a redaction is released whole or
    /// not at all.
    fn release_to(&mut self, to: usize) -> String {
        let mut out = String::new();
        let mut at = self.released;
        while at < to {
            match self.redactions.first() {
                Some((span, replacement)) if span.start < to => {
                    if span.start > at {
                        out.push_str(self.abs_str(at..span.start));
                    }
                    if span.end > to {
                        at = span.start;
                        break;
                    }
                    out.push_str(replacement);
                    at = span.end.max(at);
                    self.redactions.remove(0);
                }
                _ => {
                    out.push_str(self.abs_str(at..to));
                    at = to;
                }
            }
        }
        self.released = at.max(self.released);
        self.output.push_str(&out);
        out
    }

    /// The furthest point no rule can still claim.
    fn safe_point(&mut self) -> usize {
        let inner = &self.policy.inner;
        let mut safe = self.end() - self.keyword_holdback();
        if inner.max_regex_chars > 0 {
            safe = safe.min(self.regex_pending_start());
        }
        if self.semantic_may_hold() {
            safe = safe.min(self.sentence_start);
        }
        safe.max(self.released)
    }

    /// The earliest position where a regex match may have started and still be growing at the
    /// end of the text: from there on, text must be held. Starts are tried oldest first, within
    /// each rule's `max_len` window of not yet released text.
    fn regex_pending_start(&mut self) -> usize {
        let inner = Arc::clone(&self.policy.inner);
        let end = self.end();
        let mut earliest = end;
        for (i, rule) in inner.rules.iter().enumerate() {
            let Matcher::Regex { max_len, dfa, .. } = &rule.matcher else {
                continue;
            };
            let window = self.chars_back_from_end(*max_len).max(self.released);
            let Some(dfa) = dfa else {
                earliest = earliest.min(window);
                continue;
            };
            let cache = self.regex_caches[i].get_or_insert_with(|| dfa.create_cache());
            let from = window - self.base;
            for (offset, _) in self.buf[from..].char_indices() {
                let at = from + offset;
                if self.base + at >= earliest {
                    break;
                }
                if may_still_match(dfa, cache, &self.buf, at) {
                    earliest = self.base + at;
                    break;
                }
            }
        }
        earliest
    }

    fn semantic_may_hold(&self) -> bool {
        let inner = &self.policy.inner;
        inner.embedder.is_some()
            && inner.rules.iter().any(|r| {
                matches!(r.matcher, Matcher::Semantic { .. }) && matches!(r.action, Action::Block | Action::Redact)
            })
    }

    /// Bytes at the end of the text that are a proper prefix of a keyword or exception.
    fn keyword_holdback(&self) -> usize {
        let inner = &self.policy.inner;
        let tail_from = self.buf.len().saturating_sub(inner.max_keyword_bytes.saturating_sub(1));
        for (i, _) in self.buf[self.floor_rel(tail_from)..].char_indices() {
            let suffix = &self.buf[self.floor_rel(tail_from) + i..];
            let held = inner.prefixes.iter().any(|p| {
                p.len() > suffix.len() && p.as_bytes()[..suffix.len()].eq_ignore_ascii_case(suffix.as_bytes())
            });
            if held {
                return suffix.len();
            }
        }
        0
    }

    /// Absolute offset `n` characters before the end (or the start of the buffer).
    fn chars_back_from_end(&self, n: usize) -> usize {
        match self.buf.char_indices().rev().nth(n.saturating_sub(1)) {
            Some((i, _)) if n > 0 => self.base + i,
            _ if n == 0 => self.end(),
            _ => self.base,
        }
    }

    fn floor_rel(&self, mut rel: usize) -> usize {
        while rel > 0 && !self.buf.is_char_boundary(rel) {
            rel -= 1;
        }
        rel
    }

    fn floor_boundary(&self, abs: usize) -> usize {
        self.base + self.floor_rel(abs.max(self.base) - self.base)
    }

    /// Drop text no rule will look at again, so long streams use bounded memory.
    fn trim(&mut self) {
        let inner = &self.policy.inner;
        // Keep context for keyword/exception searches, regex windows (plus one character of
        // look-behind for \b), and the unjudged sentence.
        let keep_keywords = self.end().saturating_sub(inner.max_keyword_bytes);
        let keep_regex = self.chars_back_from_end(inner.max_regex_chars + 2);
        let sentence = if inner.embedder.is_some() {
            self.sentence_start
        } else {
            usize::MAX
        };
        let keep = self
            .released
            .min(sentence)
            .min(keep_keywords)
            .min(keep_regex)
            .min(self.redactions.first().map_or(usize::MAX, |(s, _)| s.start));
        let cut = self.floor_boundary(keep) - self.base;
        if cut > 4096 {
            self.buf.drain(..cut);
            self.base += cut;
        }
    }

    fn decision(&self) -> Decision {
        let verdict = self
            .matches
            .iter()
            .map(|m| Verdict::from(m.action))
            .max()
            .unwrap_or(Verdict::Allow);
        let mut matches = self.matches.clone();
        matches.sort_by_key(|m| m.span.start);
        Decision {
            verdict,
            matches,
            disclaimers: self.disclaimers.clone(),
            notes: self.notes.clone(),
            text: self.output.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_holds_only_keyword_prefixes() {
        let p =
            Policy::from_toml_str("[[rules]]\nid='a'\ncategory='other'\naction='block'\nkeywords=['abcd', 'xyz']\n")
                .unwrap();
        let mut s = p.stream();
        assert_eq!(s.push("hello ab").unwrap().release, "hello ");
        assert_eq!(s.held_chars(), 2);
        assert_eq!(s.push("x").unwrap().release, "ab");
        let out = s.push("yzq").unwrap();
        assert_eq!(out.release, "");
        assert!(out.decision.unwrap().is_blocked());
        assert!(s.is_stopped());
    }

    #[test]
    fn stream_holds_only_a_regex_match_in_progress() {
        let p = Policy::from_toml_str(
            "[[rules]]\nid='pct'\ncategory='x'\naction='redact'\nregex='(?i)\\bsure \\d{1,3}%'\nmax_len=10\n",
        )
        .unwrap();
        let mut s = p.stream();
        assert_eq!(s.push("nothing to see").unwrap().release, "nothing to see");
        assert_eq!(s.push(" here, su").unwrap().release, " here, ");
        assert_eq!(s.held_chars(), 2);
        assert_eq!(s.push("re 4").unwrap().release, "");
        assert_eq!(s.held_chars(), 6);
        assert_eq!(s.push("2% more").unwrap().release, "[removed] more");
        assert_eq!(s.push(" unsure").unwrap().release, " unsure");
        // Next to non-ASCII text the DFA cannot judge `\b`: the whole window is held, never less.
        let mut s = p.stream();
        s.push("收益sure").unwrap();
        assert!(s.held_chars() >= 4);
    }
}
