use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use regex_automata::hybrid;

use super::{Action, Category, MAX_REGEX_LEN};

#[derive(Debug, Clone)]
pub(super) enum Matcher {
    /// Indices into the policy's keyword automaton patterns live in `Inner::keyword_rule`.
    Keywords {
        except: Vec<String>,
    },
    Regex {
        re: Regex,
        max_len: usize,
        /// The same pattern as a lazy DFA, to tell whether a match may still be in progress at
        /// the end of a stream (None when the pattern needs features a DFA lacks: then the
        /// whole `max_len` window is held).
        dfa: Option<Arc<hybrid::dfa::DFA>>,
    },
    Semantic {
        examples: Vec<String>,
        threshold: f32,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub(super) id: String,
    pub(super) category: Category,
    pub(super) action: Action,
    pub(super) description: Option<String>,
    pub(super) replacement: String,
    pub(super) disclaimer: Option<String>,
    pub(super) matcher: Matcher,
    pub(super) keywords: Vec<String>,
}

pub(super) fn keyword_matcher(keywords: &[String], except: Vec<String>) -> std::result::Result<Matcher, String> {
    if keywords.is_empty() || keywords.iter().any(|k| k.is_empty()) {
        return Err("`keywords` must be a non-empty list of non-empty strings".into());
    }
    // An exception is judged when its keyword completes, so it must end with that keyword: it can
    // only add a negating prefix ("不", "no ").
    for e in &except {
        let lower = e.to_ascii_lowercase();
        if !keywords.iter().any(|k| lower.ends_with(&k.to_ascii_lowercase())) {
            return Err(format!(
                "exception '{e}' does not end with one of the rule's keywords; exceptions are negating phrases \
                 such as '不保证收益' for the keyword '保证收益'"
            ));
        }
    }
    Ok(Matcher::Keywords { except })
}

/// The most characters (Unicode scalars) a match of `hir` can span, or `None` when a repetition
/// is unbounded (`*`, `+`, `{n,}`).
fn max_match_chars(hir: &regex_syntax::hir::Hir) -> Option<usize> {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => Some(0),
        // Count UTF-8 lead bytes: the literal's characters.
        HirKind::Literal(lit) => Some(lit.0.iter().filter(|&&b| b & 0xC0 != 0x80).count()),
        HirKind::Class(_) => Some(1),
        HirKind::Repetition(rep) => {
            let sub = max_match_chars(&rep.sub)?;
            (sub as u64)
                .checked_mul(u64::from(rep.max?))
                .and_then(|n| usize::try_from(n).ok())
        }
        HirKind::Capture(cap) => max_match_chars(&cap.sub),
        HirKind::Concat(parts) => parts
            .iter()
            .try_fold(0usize, |acc, h| acc.checked_add(max_match_chars(h)?)),
        HirKind::Alternation(alts) => alts
            .iter()
            .try_fold(0usize, |acc, h| Some(acc.max(max_match_chars(h)?))),
    }
}

pub(super) fn regex_matcher(pattern: &str, max_len: Option<usize>) -> std::result::Result<Matcher, String> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| format!("invalid regex: {e}"))?;
    // The stream filter holds back `max_len` characters: a match longer than that could be
    // released in part before the regex can see it, so streaming and whole-text checks would
    // disagree. The bound comes from the regex itself; a declared `max_len` may only raise it.
    let bound = max_match_chars(&hir).ok_or_else(|| {
        "the regex can match text of unbounded length (`*`, `+` or `{n,}`): bound every repetition \
         (e.g. `\\d{1,6}` instead of `\\d+`) so the stream filter knows how much text to hold back"
            .to_string()
    })?;
    let max_len = match max_len {
        None => bound,
        Some(declared) if declared < bound => {
            return Err(format!(
                "the regex can match up to {bound} characters, more than its max_len {declared}: raise max_len \
                 to at least {bound} (or omit it) so streams catch every match"
            ))
        }
        Some(declared) => declared,
    };
    if max_len == 0 || max_len > MAX_REGEX_LEN {
        return Err(format!(
            "max_len {max_len} must be in 1..={MAX_REGEX_LEN} (the longest match the regex allows)"
        ));
    }
    let re = RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("invalid regex: {e}"))?;
    if re.is_match("") {
        return Err("regex matches the empty string, so it would fire everywhere".into());
    }
    let dfa = hybrid::dfa::DFA::builder()
        .configure(hybrid::dfa::DFA::config().unicode_word_boundary(true))
        .build(pattern)
        .ok()
        .map(Arc::new);
    Ok(Matcher::Regex { re, max_len, dfa })
}
