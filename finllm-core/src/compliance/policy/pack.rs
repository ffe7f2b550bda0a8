use super::{
    Action, Category, MAX_KEYWORD_CHARS, MAX_PACK_BYTES, MAX_PATTERN_BYTES, MAX_RULES, MAX_RULE_ITEMS,
    MAX_SENTENCE_CHARS,
};
use crate::compliance::policy::rules::{keyword_matcher, regex_matcher, Matcher, Rule};
use crate::{Error, Result};

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

pub(super) fn policy_err(origin: &str, reason: impl Into<String>) -> Error {
    Error::Policy {
        origin: origin.to_string(),
        reason: reason.into(),
    }
}

pub(super) fn parse_pack(text: &str, origin: &str) -> Result<Vec<Rule>> {
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

#[cfg(test)]
mod tests {
    use crate::compliance::policy::Policy;

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
}
