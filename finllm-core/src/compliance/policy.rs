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

use std::collections::HashSet;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder};
use regex_automata::{hybrid, Anchored, Input};

use crate::{Error, Result};

/// The default English rule pack (TOML), shipped with the library.
pub const DEFAULT_EN_TOML: &str = include_str!("packs/default_en.toml");
/// The default Chinese rule pack (TOML), shipped with the library.
pub const DEFAULT_ZH_TOML: &str = include_str!("packs/default_zh.toml");

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

// ---- rule pack parsing -------------------------------------------------------------------------

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PackToml {
    name: Option<String>,
    disclaimer: Option<String>,
    #[serde(default)]
    rules: Vec<RuleToml>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    id: String,
    category: String,
    action: Action,
    description: Option<String>,
    keywords: Option<Vec<String>>,
    #[serde(default)]
    except: Vec<String>,
    regex: Option<String>,
    max_len: Option<usize>,
    examples: Option<Vec<String>>,
    threshold: Option<f32>,
    replacement: Option<String>,
    disclaimer: Option<String>,
}

#[derive(Debug, Clone)]
enum Matcher {
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
struct Rule {
    id: String,
    category: Category,
    action: Action,
    description: Option<String>,
    replacement: String,
    disclaimer: Option<String>,
    matcher: Matcher,
    keywords: Vec<String>,
}

fn policy_err(origin: &str, reason: impl Into<String>) -> Error {
    Error::Policy {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}

fn parse_pack(text: &str, origin: &str) -> Result<Vec<Rule>> {
    if text.len() > MAX_PACK_BYTES {
        return Err(policy_err(
            origin,
            format!(
                "the pack is {} bytes, more than the {MAX_PACK_BYTES} allowed",
                text.len()
            ),
        ));
    }
    let pack: PackToml = toml::from_str(text).map_err(|e| policy_err(origin, format!("invalid TOML: {e}")))?;
    if pack.rules.len() > MAX_RULES {
        return Err(policy_err(
            origin,
            format!(
                "{} rules, more than the {MAX_RULES} allowed in one pack",
                pack.rules.len()
            ),
        ));
    }
    let pack_name = pack.name.unwrap_or_else(|| origin.to_string());
    pack.rules
        .into_iter()
        .map(|r| parse_rule(r, pack.disclaimer.as_deref(), &pack_name))
        .collect()
}

fn parse_rule(r: RuleToml, pack_disclaimer: Option<&str>, origin: &str) -> Result<Rule> {
    let id = r.id.trim().to_string();
    let err = |reason: String| policy_err(origin, format!("rule '{id}': {reason}"));
    if id.is_empty() {
        return Err(policy_err(
            origin,
            "a rule has an empty id; give every rule a unique id",
        ));
    }
    let category = Category::parse(&r.category).ok_or_else(|| {
        err(format!(
            "category '{}' is not snake_case (known: insider_trading, market_manipulation, guaranteed_return, \
             unlicensed_advice)",
            r.category
        ))
    })?;
    let kinds = usize::from(r.keywords.is_some()) + usize::from(r.regex.is_some()) + usize::from(r.examples.is_some());
    if kinds != 1 {
        return Err(err("give exactly one of `keywords`, `regex` or `examples`".into()));
    }
    for (what, items) in [
        ("keywords", r.keywords.as_deref()),
        ("except", Some(r.except.as_slice())),
        ("examples", r.examples.as_deref()),
    ] {
        let items = items.unwrap_or_default();
        if items.len() > MAX_RULE_ITEMS {
            return Err(err(format!(
                "{} {what}, more than the {MAX_RULE_ITEMS} allowed in one rule",
                items.len()
            )));
        }
        let limit = if what == "examples" {
            MAX_SENTENCE_CHARS
        } else {
            MAX_KEYWORD_CHARS
        };
        if let Some(long) = items.iter().find(|k| k.chars().count() > limit) {
            return Err(err(format!(
                "an entry of `{what}` is {} characters long, more than the {limit} allowed: '{}...'",
                long.chars().count(),
                long.chars().take(40).collect::<String>()
            )));
        }
    }
    if let Some(pattern) = &r.regex {
        if pattern.len() > MAX_PATTERN_BYTES {
            return Err(err(format!(
                "the regex is {} bytes long, more than the {MAX_PATTERN_BYTES} allowed",
                pattern.len()
            )));
        }
    }
    let disclaimer = r.disclaimer.or_else(|| pack_disclaimer.map(str::to_string));
    if r.action == Action::AppendDisclaimer && disclaimer.as_deref().is_none_or(|d| d.trim().is_empty()) {
        return Err(err(
            "action append_disclaimer needs a `disclaimer` on the rule or the pack".into(),
        ));
    }
    let mut keywords = Vec::new();
    let matcher = if let Some(kws) = r.keywords {
        keywords = kws;
        keyword_matcher(&keywords, r.except).map_err(err)?
    } else if let Some(pattern) = r.regex {
        regex_matcher(&pattern, r.max_len).map_err(err)?
    } else {
        let examples = r.examples.unwrap_or_default();
        if examples.is_empty() || examples.iter().any(|e| e.trim().is_empty()) {
            return Err(err("`examples` must be a non-empty list of non-empty phrases".into()));
        }
        let threshold = r.threshold.unwrap_or(0.8);
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(err(format!("threshold {threshold} must be in (0, 1]")));
        }
        Matcher::Semantic { examples, threshold }
    };
    Ok(Rule {
        id,
        category,
        action: r.action,
        description: r.description,
        replacement: r.replacement.unwrap_or_else(|| "[removed]".to_string()),
        disclaimer,
        matcher,
        keywords,
    })
}

fn keyword_matcher(keywords: &[String], except: Vec<String>) -> std::result::Result<Matcher, String> {
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

fn regex_matcher(pattern: &str, max_len: Option<usize>) -> std::result::Result<Matcher, String> {
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
    fn new(policy: Policy) -> Self {
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

    #[test]
    fn bad_packs_are_rejected_with_reasons() {
        let cases = [
            ("[[rules]]\nid='a'\ncategory='x'\naction='block'\n", "exactly one"),
            ("[[rules]]\nid='a'\ncategory='x'\naction='block'\nregex='a+'\n", "unbounded"),
            ("[[rules]]\nid='a'\ncategory='x'\naction='block'\nregex='ab{2,9}'\nmax_len=3\n", "up to 10 characters"),
            ("[[rules]]\nid='a'\ncategory='x'\naction='block'\nregex='a?'\nmax_len=3\n", "empty string"),
            ("[[rules]]\nid='a'\ncategory='x'\naction='append_disclaimer'\nkeywords=['k']\n", "disclaimer"),
            ("[[rules]]\nid='a'\ncategory='x'\naction='flag'\nkeywords=['k']\nexcept=['no']\n", "negating"),
            ("[[rules]]\nid='a'\ncategory='Bad Cat'\naction='flag'\nkeywords=['k']\n", "snake_case"),
            ("[[rules]]\nid='a'\ncategory='x'\naction='explode'\nkeywords=['k']\n", "invalid TOML"),
            ("[[rules]]\nid='a'\ncategory='x'\naction='flag'\nkeywords=['k']\n[[rules]]\nid='a'\ncategory='x'\naction='flag'\nkeywords=['j']\n", "twice"),
        ];
        for (toml, needle) in cases {
            let err = Policy::from_toml_str(toml).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
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
