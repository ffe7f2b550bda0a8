//! Output policy: rules over generated text, from TOML rule packs, on whole texts and on streams.
//!
//! A rule matches by **keywords** (Aho-Corasick, ASCII case-insensitive), by a **regex** (whose
//! every repetition is bounded: the longest text it can match, in characters, is computed from
//! the regex, and an optional `max_len` may only raise it), or **semantically** (cosine
//! similarity of a sentence to example phrases through an [`Embedder`]; without an embedder these
//! rules are skipped and the decision says so). Each rule has a category and an action: block,
//! redact, append a disclaimer, or flag.
//!
//! ```toml
//! name = "my_bank"
//! disclaimer = "This is general information, not investment advice."   # default for the pack
//!
//! [[rules]]
//! id = "guarantee.keywords"
//! category = "guaranteed_return"      # insider_trading | market_manipulation | guaranteed_return
//!                                     # | unlicensed_advice | any other snake_case name
//! action = "block"                    # block | redact | append_disclaimer | flag
//! keywords = ["guaranteed returns", "保本保收益"]
//! except = ["no guaranteed returns"]  # negating phrases that end with a keyword
//!
//! [[rules]]
//! id = "guarantee.percent"
//! category = "guaranteed_return"
//! action = "redact"
//! replacement = "[removed]"
//! regex = '(?i)guaranteed \d{1,3}% (?:a|per) year'
//! max_len = 40
//!
//! [[rules]]
//! id = "advice.semantic"
//! category = "unlicensed_advice"
//! action = "append_disclaimer"
//! examples = ["you should move all your savings into this stock"]
//! threshold = 0.8
//! ```
//!
//! **Streams.** [`StreamFilter`] releases text only once no rule can still match it: it holds back
//! the longest suffix that is a prefix of a keyword (or of a negating exception), the last
//! `max_len` characters when there are regex rules, and, when a semantic rule may block or redact,
//! the current sentence. A blocked phrase therefore never reaches the caller; on a block the
//! stream stops with the decision, after releasing the text before the phrase.

mod pack;
mod rules;
mod stream;

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::{Error, Result};
use pack::{parse_pack, policy_err};
use rules::{Matcher, Rule};
pub use stream::StreamFilter;

/// The default English rule pack (TOML), shipped with the library.
pub const DEFAULT_EN_TOML: &str = include_str!("../packs/default_en.toml");
/// The default Chinese rule pack (TOML), shipped with the library.
pub const DEFAULT_ZH_TOML: &str = include_str!("../packs/default_zh.toml");

/// Longest regex window a rule may declare, in characters (bounds the stream hold-back).
pub const MAX_REGEX_LEN: usize = 1024;
/// A sentence longer than this (in characters) is judged by semantic rules without waiting for
/// its end, so a semantic hold-back is bounded too.
pub const MAX_SENTENCE_CHARS: usize = 400;
/// Largest rule pack, in bytes of TOML (the shipped packs are ~5 KB).
pub const MAX_PACK_BYTES: usize = 4 << 20;
/// Most rules in one pack, and most keywords or examples in one rule.
pub const MAX_RULES: usize = 10_000;
pub const MAX_RULE_ITEMS: usize = 100_000;
/// Longest keyword or exception, in characters: a stream holds back up to this many characters
/// while a keyword may still be completing.
pub const MAX_KEYWORD_CHARS: usize = 256;
/// Longest regex pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 16 << 10;

// ---- public types ------------------------------------------------------------------------------

/// Turns texts into vectors for semantic rules. The RAG embedder implements it; anything
/// deterministic with comparable vectors will do.
pub trait Embedder: Send + Sync {
    /// One vector per input text, all of the same dimension.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>>;
}

/// What a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Category {
    /// Trading on, or tipping, material non-public information.
    InsiderTrading,
    /// Pump-and-dump, wash trades, spoofing, cornering.
    MarketManipulation,
    /// Promises of guaranteed principal or returns (保本保收益).
    GuaranteedReturn,
    /// Personalised buy/sell advice without a licence or suitability check.
    UnlicensedAdvice,
    /// A bank's own category (snake_case name from the rule pack).
    Other(String),
}

impl Category {
    pub fn name(&self) -> &str {
        match self {
            Category::InsiderTrading => "insider_trading",
            Category::MarketManipulation => "market_manipulation",
            Category::GuaranteedReturn => "guaranteed_return",
            Category::UnlicensedAdvice => "unlicensed_advice",
            Category::Other(name) => name,
        }
    }

    fn parse(s: &str) -> Option<Category> {
        Some(match s {
            "insider_trading" => Category::InsiderTrading,
            "market_manipulation" => Category::MarketManipulation,
            "guaranteed_return" => Category::GuaranteedReturn,
            "unlicensed_advice" => Category::UnlicensedAdvice,
            other if !other.is_empty() && other.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => {
                Category::Other(other.to_string())
            }
            _ => return None,
        })
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Category {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What happens when a rule matches, from mildest to strongest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Record the match; the text passes unchanged.
    Flag,
    /// Let the text pass and append the rule's (or pack's) disclaimer at the end.
    AppendDisclaimer,
    /// Replace the matched text by the rule's replacement.
    Redact,
    /// Stop: nothing from the match on is released.
    Block,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Flag => "flag",
            Action::AppendDisclaimer => "append_disclaimer",
            Action::Redact => "redact",
            Action::Block => "block",
        }
    }
}

/// The overall outcome: the strongest action among the matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Flag,
    AppendDisclaimer,
    Redact,
    Block,
}

impl From<Action> for Verdict {
    fn from(a: Action) -> Self {
        match a {
            Action::Flag => Verdict::Flag,
            Action::AppendDisclaimer => Verdict::AppendDisclaimer,
            Action::Redact => Verdict::Redact,
            Action::Block => Verdict::Block,
        }
    }
}

/// One rule that fired.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RuleMatch {
    pub rule_id: String,
    pub category: Category,
    pub action: Action,
    /// Byte range in the text as generated (before any redaction).
    pub span: Range<usize>,
    /// The matched text (a whole sentence for semantic rules).
    pub matched: String,
    /// Cosine similarity, for semantic rules.
    pub score: Option<f32>,
}

/// The result of checking a text (or a whole stream).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Every rule that fired, in text order.
    pub matches: Vec<RuleMatch>,
    /// Disclaimers appended to the text, in order.
    pub disclaimers: Vec<String>,
    /// Things the caller should know, e.g. semantic rules skipped for want of an embedder.
    pub notes: Vec<String>,
    /// The text the caller may show: redactions applied and disclaimers appended; on a block,
    /// only the text before the blocked phrase.
    pub text: String,
}

impl Decision {
    pub fn is_blocked(&self) -> bool {
        self.verdict == Verdict::Block
    }

    /// The match that blocked, if any.
    pub fn blocked_by(&self) -> Option<&RuleMatch> {
        self.matches.iter().find(|m| m.action == Action::Block)
    }
}

/// What one [`StreamFilter::push`] (or [`StreamFilter::finish`]) hands back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FilterOutput {
    /// Text that may be passed on now (redactions applied).
    pub release: String,
    /// Rules that fired during this call.
    pub matches: Vec<RuleMatch>,
    /// Set when the stream is over: blocked (from `push`) or finished.
    pub decision: Option<Decision>,
}

// ---- the policy --------------------------------------------------------------------------------

struct Inner {
    origin: String,
    rules: Vec<Rule>,
    /// All keywords of all rules; pattern i belongs to rule `keyword_rule[i]`.
    automaton: Option<AhoCorasick>,
    keyword_rule: Vec<usize>,
    /// Lower-cased keywords and exceptions, for the hold-back computation.
    prefixes: Vec<String>,
    /// Longest keyword or exception, in bytes.
    max_keyword_bytes: usize,
    /// Longest regex `max_len`, in characters (0 without regex rules).
    max_regex_chars: usize,
    embedder: Option<Arc<dyn Embedder>>,
    /// Per semantic rule (same order as `rules`), the example vectors once an embedder is set.
    example_vectors: Vec<Option<Vec<Vec<f32>>>>,
}

/// A compiled set of rules. Cheap to clone (shared), `Send + Sync`.
#[derive(Clone)]
pub struct Policy {
    inner: Arc<Inner>,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("origin", &self.inner.origin)
            .field("rules", &self.rule_ids())
            .field("embedder", &self.inner.embedder.is_some())
            .finish()
    }
}

impl Policy {
    /// Parse a TOML rule pack.
    pub fn from_toml_str(toml: &str) -> Result<Policy> {
        Self::build("<string>", parse_pack(toml, "<string>")?)
    }

    /// Read and parse a TOML rule pack file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Policy> {
        use std::io::Read;
        let path = path.as_ref();
        let io_err = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let origin = path.display().to_string();
        // A regular file only: a FIFO would block and a device such as /dev/zero never end.
        let meta = std::fs::metadata(path).map_err(io_err)?;
        if !meta.is_file() {
            return Err(policy_err(
                &origin,
                "is not a regular file; give the path of a TOML rule pack",
            ));
        }
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io_err)?
            .take(MAX_PACK_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .map_err(io_err)?;
        Self::build(&origin, parse_pack(&text, &origin)?)
    }

    /// The English and Chinese packs shipped with finllm, merged.
    pub fn default_packs() -> Result<Policy> {
        let mut rules = parse_pack(DEFAULT_EN_TOML, "default_en")?;
        rules.extend(parse_pack(DEFAULT_ZH_TOML, "default_zh")?);
        Self::build("default packs", rules)
    }

    /// This policy's rules followed by `other`'s (rule ids must stay unique). The embedder, if
    /// any, must be set again on the result.
    pub fn merge(&self, other: &Policy) -> Result<Policy> {
        let mut rules = self.inner.rules.clone();
        rules.extend(other.inner.rules.iter().cloned());
        let origin = format!("{} + {}", self.inner.origin, other.inner.origin);
        Self::build(&origin, rules)
    }

    /// Whether any rule matches semantically (and so needs an embedder to run).
    pub fn has_semantic_rules(&self) -> bool {
        self.inner
            .rules
            .iter()
            .any(|r| matches!(r.matcher, Matcher::Semantic { .. }))
    }

    /// Attach an embedder for semantic rules; the rules' examples are embedded now, so a broken
    /// embedder fails here rather than in the middle of a stream.
    pub fn with_embedder(&self, embedder: Arc<dyn Embedder>) -> Result<Policy> {
        let mut example_vectors = Vec::with_capacity(self.inner.rules.len());
        let mut dim = None;
        for rule in &self.inner.rules {
            example_vectors.push(match &rule.matcher {
                Matcher::Semantic { examples, .. } => {
                    let refs: Vec<&str> = examples.iter().map(String::as_str).collect();
                    let vectors = embed_checked(embedder.as_ref(), &refs, &self.inner.origin, dim)?;
                    dim = vectors.first().map(Vec::len);
                    Some(vectors)
                }
                _ => None,
            });
        }
        let mut policy = Self::build(&self.inner.origin, self.inner.rules.clone())?;
        let inner = Arc::get_mut(&mut policy.inner).ok_or_else(|| policy_err(&self.inner.origin, "internal"))?;
        inner.embedder = Some(embedder);
        inner.example_vectors = example_vectors;
        Ok(policy)
    }

    fn build(origin: &str, rules: Vec<Rule>) -> Result<Policy> {
        let mut seen = HashSet::new();
        if let Some(dup) = rules.iter().find(|r| !seen.insert(r.id.clone())) {
            return Err(policy_err(
                origin,
                format!("rule id '{}' appears twice; ids must be unique", dup.id),
            ));
        }
        let mut patterns = Vec::new();
        let mut keyword_rule = Vec::new();
        let mut prefixes = Vec::new();
        let mut max_regex_chars = 0;
        for (i, rule) in rules.iter().enumerate() {
            for k in &rule.keywords {
                patterns.push(k.clone());
                keyword_rule.push(i);
                prefixes.push(k.to_ascii_lowercase());
            }
            match &rule.matcher {
                Matcher::Keywords { except } => prefixes.extend(except.iter().map(|e| e.to_ascii_lowercase())),
                Matcher::Regex { max_len, .. } => max_regex_chars = max_regex_chars.max(*max_len),
                Matcher::Semantic { .. } => {}
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&patterns)
                    .map_err(|e| policy_err(origin, format!("keyword automaton: {e}")))?,
            )
        };
        let max_keyword_bytes = prefixes.iter().map(String::len).max().unwrap_or(0);
        Ok(Policy {
            inner: Arc::new(Inner {
                origin: origin.to_string(),
                example_vectors: vec![None; rules.len()],
                rules,
                automaton,
                keyword_rule,
                prefixes,
                max_keyword_bytes,
                max_regex_chars,
                embedder: None,
            }),
        })
    }

    /// Rule ids in order.
    pub fn rule_ids(&self) -> Vec<&str> {
        self.inner.rules.iter().map(|r| r.id.as_str()).collect()
    }

    /// Description of a rule, from its pack.
    pub fn rule_description(&self, id: &str) -> Option<&str> {
        self.inner.rules.iter().find(|r| r.id == id)?.description.as_deref()
    }

    /// The most characters a stream can hold back because of regex rules (their largest
    /// `max_len`); keyword hold-back is at most the longest keyword less one character.
    pub fn max_regex_holdback_chars(&self) -> usize {
        self.inner.max_regex_chars
    }

    /// Check a whole text. Same semantics as streaming it in one piece.
    pub fn check(&self, text: &str) -> Result<Decision> {
        let mut stream = self.stream();
        let out = stream.push(text)?;
        if let Some(decision) = out.decision {
            return Ok(decision);
        }
        let out = stream.finish()?;
        out.decision
            .ok_or_else(|| policy_err(&self.inner.origin, "stream finished without a decision"))
    }

    /// A filter for one generated stream.
    pub fn stream(&self) -> StreamFilter {
        StreamFilter::new(self.clone())
    }
}

/// Embed `texts`, checking the embedder's answer: one finite vector per text, all of one
/// dimension (`dim` when given). A rule must never go quiet because its vectors cannot be
/// compared, so a mismatch is an error, not a skipped rule.
fn embed_checked(embedder: &dyn Embedder, texts: &[&str], origin: &str, dim: Option<usize>) -> Result<Vec<Vec<f32>>> {
    let vectors = embedder.embed(texts)?;
    if vectors.len() != texts.len() {
        return Err(policy_err(
            origin,
            format!("embedder returned {} vectors for {} texts", vectors.len(), texts.len()),
        ));
    }
    if vectors.iter().any(|v| v.is_empty() || v.iter().any(|x| !x.is_finite())) {
        return Err(policy_err(origin, "embedder returned an empty or non-finite vector"));
    }
    let expected = dim.or_else(|| vectors.first().map(Vec::len));
    if let Some(bad) = vectors.iter().find(|v| Some(v.len()) != expected) {
        return Err(policy_err(
            origin,
            format!(
                "embedder returned vectors of {} and {} dimensions; they must all have one dimension",
                expected.unwrap_or(0),
                bad.len()
            ),
        ));
    }
    Ok(vectors)
}

fn cosine(a: &[f32], b: &[f32]) -> Option<f32> {
    if a.len() != b.len() {
        return None;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    Some(if na == 0.0 || nb == 0.0 { 0.0 } else { dot / (na * nb) })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACK: &str = r#"
name = "test"
disclaimer = "Not advice."

[[rules]]
id = "g"
category = "guaranteed_return"
action = "block"
keywords = ["guaranteed returns", "保本保收益"]
except = ["no guaranteed returns"]

[[rules]]
id = "advice"
category = "unlicensed_advice"
action = "append_disclaimer"
keywords = ["you should buy"]

[[rules]]
id = "pct"
category = "guaranteed_return"
action = "redact"
regex = '(?i)\bsure \d{1,3}%'
max_len = 10

[[rules]]
id = "tip"
category = "insider_trading"
action = "flag"
keywords = ["inside tip"]
"#;

    fn policy() -> Policy {
        Policy::from_toml_str(PACK).unwrap()
    }

    #[test]
    fn whole_text_decisions() {
        let p = policy();
        let d = p.check("We offer GUARANTEED returns.").unwrap();
        assert!(d.is_blocked());
        assert_eq!(d.text, "We offer ");
        assert_eq!(d.blocked_by().unwrap().span, 9..27);

        let d = p.check("There are no guaranteed returns.").unwrap();
        assert_eq!(d.verdict, Verdict::Allow, "{d:?}");

        let d = p.check("A sure 12% gain; you should buy. An inside tip.").unwrap();
        assert_eq!(d.verdict, Verdict::Redact);
        assert_eq!(
            d.text,
            "A [removed] gain; you should buy. An inside tip.\n\nNot advice."
        );
        let ids: Vec<&str> = d.matches.iter().map(|m| m.rule_id.as_str()).collect();
        assert_eq!(ids, ["pct", "advice", "tip"]);
    }

    #[test]
    fn default_packs_load() {
        let p = Policy::default_packs().unwrap();
        assert!(p.rule_ids().len() >= 8);
        let d = p.check("本产品保本保收益，稳赚不赔。").unwrap();
        assert!(d.is_blocked());
        let d = p.check("本产品不保本、不保证收益，投资有风险。").unwrap();
        assert_eq!(d.verdict, Verdict::Allow, "{d:?}");
        assert!(d.notes.iter().any(|n| n.contains("no embedder")));
    }
}
