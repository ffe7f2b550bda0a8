//! Personal-data detection, reversible pseudonymisation and irreversible redaction.
//!
//! Candidates are found by shape (regex), then validated in code: check digits (GB 11643, Luhn,
//! GB 32100, ISO 7064 MOD 97-10), structural rules (birth dates, province codes, SSN areas, card
//! issuer ranges, carrier prefixes) and boundaries (an identifier inside a longer digit or letter
//! run is not one). Each survivor gets a confidence in [0, 1]: a base for its kind, raised or
//! lowered by nearby context words in Chinese and English ("卡号", "order no."), and kept if it
//! reaches [`PiiConfig::threshold`]. Overlapping entities are resolved: highest confidence, then
//! longest, then earliest wins.
//!
//! Not covered: 15-digit first-generation resident IDs (no check digit), full-width digits,
//! passport numbers, names and addresses (these need a model, not a checksum).

pub mod checks;
mod context;
mod scan;
mod vault;

use std::fmt;
use std::ops::Range;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Result};
pub use vault::Vault;

/// The kinds of personal identifiers the detector knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// Chinese resident identity number (18 characters, GB 11643).
    CnResidentId,
    /// Mainland mobile number (11 digits, optional +86 / 0086).
    CnMobile,
    /// Mainland landline with area code.
    CnLandline,
    /// A Luhn-valid 16-19 digit account or card number of no known card network.
    BankCard,
    /// A Luhn-valid payment card of a known network (Visa, Mastercard, UnionPay, ...).
    CreditCard,
    /// Unified social credit code of a Chinese organisation (GB 32100).
    Uscc,
    Email,
    /// International bank account number (ISO 13616).
    Iban,
    /// US social security number.
    UsSsn,
    Ipv4,
    Ipv6,
}

impl EntityKind {
    pub const ALL: [EntityKind; 11] = [
        EntityKind::CnResidentId,
        EntityKind::CnMobile,
        EntityKind::CnLandline,
        EntityKind::BankCard,
        EntityKind::CreditCard,
        EntityKind::Uscc,
        EntityKind::Email,
        EntityKind::Iban,
        EntityKind::UsSsn,
        EntityKind::Ipv4,
        EntityKind::Ipv6,
    ];

    /// Tag used in placeholders (`<ID_1>`) and redactions (`[ID]`). Kinds a reader need not tell
    /// apart share a tag (mobile and landline are both `PHONE`; all cards are `CARD`).
    pub fn tag(self) -> &'static str {
        match self {
            EntityKind::CnResidentId => "ID",
            EntityKind::CnMobile | EntityKind::CnLandline => "PHONE",
            EntityKind::BankCard | EntityKind::CreditCard => "CARD",
            EntityKind::Uscc => "USCC",
            EntityKind::Email => "EMAIL",
            EntityKind::Iban => "IBAN",
            EntityKind::UsSsn => "SSN",
            EntityKind::Ipv4 | EntityKind::Ipv6 => "IP",
        }
    }

    /// Stable snake_case name (as in JSON and config files).
    pub fn name(self) -> &'static str {
        match self {
            EntityKind::CnResidentId => "cn_resident_id",
            EntityKind::CnMobile => "cn_mobile",
            EntityKind::CnLandline => "cn_landline",
            EntityKind::BankCard => "bank_card",
            EntityKind::CreditCard => "credit_card",
            EntityKind::Uscc => "uscc",
            EntityKind::Email => "email",
            EntityKind::Iban => "iban",
            EntityKind::UsSsn => "us_ssn",
            EntityKind::Ipv4 => "ipv4",
            EntityKind::Ipv6 => "ipv6",
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EntityKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        EntityKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| {
            let known: Vec<&str> = EntityKind::ALL.iter().map(|k| k.name()).collect();
            Error::invalid(
                "pii kind",
                format!("unknown kind '{s}'; known kinds: {}", known.join(", ")),
            )
        })
    }
}

/// One detected identifier.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Entity {
    pub kind: EntityKind,
    /// Byte range in the input.
    pub span: Range<usize>,
    /// Character (Unicode scalar) range in the input, for callers that index by characters.
    pub char_span: Range<usize>,
    /// In [0, 1]; at least the detector's threshold.
    pub confidence: f32,
    /// The matched text as written (with its separators).
    pub text: String,
    /// Extra facts, e.g. the card network ("Visa").
    pub detail: Option<&'static str>,
}

/// How [`PiiDetector::redact`] writes an identifier it removes.
#[derive(Clone, Default)]
pub enum Redaction {
    /// `[ID]`, `[CARD]`, ...
    #[default]
    Label,
    /// `[CARD:3f9a0c1b2d4e]`: the first 12 hex digits of HMAC-SHA256(key, tag || value), so log
    /// readers can see that two records mention the same card without learning the number. Keep
    /// the key secret: without it the hash cannot be brute-forced over the small identifier space.
    KeyedHash { key: Vec<u8> },
}

impl fmt::Debug for Redaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Redaction::Label => f.write_str("Label"),
            Redaction::KeyedHash { .. } => f.write_str("KeyedHash { key: <hidden> }"),
        }
    }
}

/// What to detect and how strictly.
#[derive(Debug, Clone)]
pub struct PiiConfig {
    /// Kinds to detect (default: all).
    pub kinds: Vec<EntityKind>,
    /// Minimum confidence to report an entity (default 0.5). Lower finds more, with more false
    /// positives: 0.3 also reports unlabelled bare SSNs and landlines without separators.
    pub threshold: f32,
    /// Characters before an entity searched for context words (half as many after it).
    pub context_window: usize,
    pub redaction: Redaction,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self {
            kinds: EntityKind::ALL.to_vec(),
            threshold: 0.5,
            context_window: 24,
            redaction: Redaction::Label,
        }
    }
}

/// Finds personal identifiers in text. Build once, share freely (`Send + Sync`).
pub struct PiiDetector {
    config: PiiConfig,
    scanners: scan::Scanners,
}

impl fmt::Debug for PiiDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PiiDetector").field("config", &self.config).finish()
    }
}

impl PiiDetector {
    pub fn new(config: PiiConfig) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.threshold) {
            return Err(Error::invalid(
                "pii threshold",
                format!("{} is outside [0, 1]; 0.5 is the default", config.threshold),
            ));
        }
        if config.context_window > 1024 {
            return Err(Error::invalid(
                "pii context_window",
                format!(
                    "{} characters is too wide (at most 1024; 24 is the default)",
                    config.context_window
                ),
            ));
        }
        if matches!(&config.redaction, Redaction::KeyedHash { key } if key.len() < 16) {
            return Err(Error::invalid(
                "pii redaction key",
                "a keyed-hash redaction key needs at least 16 bytes of secret",
            ));
        }
        Ok(Self {
            config,
            scanners: scan::Scanners::new()?,
        })
    }

    pub fn config(&self) -> &PiiConfig {
        &self.config
    }

    /// The identifiers in `text` whose confidence reaches the threshold, in text order, without
    /// overlaps. Linear in the text (candidates are found by regex, scored over bounded windows,
    /// and resolved through an ordered map).
    pub fn detect(&self, text: &str) -> Vec<Entity> {
        self.detect_keyed(text).into_iter().map(|(e, _)| e).collect()
    }
    /// Replace identifiers by numbered placeholders (`<ID_1>`, `<CARD_1>`, `<PHONE_2>`) and return
    /// the vault that maps them back. The same value always gets the same placeholder.
    pub fn pseudonymise(&self, text: &str) -> (String, Vault) {
        let mut vault = Vault::new();
        let masked = self.pseudonymise_with(text, &mut vault);
        (masked, vault)
    }

    /// Like [`pseudonymise`](Self::pseudonymise), continuing an existing vault (a multi-turn
    /// conversation keeps one vault so `<ID_1>` means the same person in every turn).
    pub fn pseudonymise_with(&self, text: &str, vault: &mut Vault) -> String {
        let keyed = self.detect_keyed(text);
        replace_spans(
            text,
            keyed.iter().map(|(e, key)| {
                let placeholder = vault.placeholder_for(e.kind.tag(), key.clone(), &e.text);
                (e.span.clone(), placeholder)
            }),
        )
    }

    /// Irreversibly remove identifiers, for logs: `[ID]`, or `[ID:hash]` with a keyed hash.
    pub fn redact(&self, text: &str) -> String {
        let keyed = self.detect_keyed(text);
        replace_spans(
            text,
            keyed
                .iter()
                .map(|(e, key)| (e.span.clone(), self.redaction_for(e.kind, key))),
        )
    }

    fn redaction_for(&self, kind: EntityKind, key: &str) -> String {
        match &self.config.redaction {
            Redaction::Label => format!("[{}]", kind.tag()),
            Redaction::KeyedHash { key: secret } => {
                // HMAC accepts keys of any length, so this cannot fail.
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return format!("[{}]", kind.tag());
                };
                mac.update(kind.tag().as_bytes());
                mac.update(&[0]);
                mac.update(key.as_bytes());
                let digest = mac.finalize().into_bytes();
                let hex = crate::util::hex(&digest[..6]);
                format!("[{}:{hex}]", kind.tag())
            }
        }
    }

    /// Entities with their normalised values (the key that makes "138 0013 8000" and
    /// "+86 13800138000" the same phone).
    fn detect_keyed(&self, text: &str) -> Vec<(Entity, String)> {
        let mut scored: Vec<(scan::Candidate, f32)> = self
            .scanners
            .scan(text)
            .into_iter()
            .filter(|c| self.config.kinds.contains(&c.kind))
            .map(|c| {
                let adj = context::adjustment(text, c.span.start, c.span.end, c.kind, self.config.context_window);
                let confidence = (c.base + adj).clamp(0.0, 1.0);
                (c, confidence)
            })
            .filter(|(_, conf)| *conf >= self.config.threshold)
            .collect();
        let kept = resolve_overlaps(&mut scored);
        let char_spans = char_spans(text, kept.iter().map(|(c, _)| c.span.clone()));
        kept.into_iter()
            .zip(char_spans)
            .map(|((c, confidence), char_span)| {
                let entity = Entity {
                    kind: c.kind,
                    text: text[c.span.clone()].to_string(),
                    span: c.span,
                    char_span,
                    confidence,
                    detail: c.detail,
                };
                (entity, c.key)
            })
            .collect()
    }
}

/// Keep the best of overlapping candidates: highest confidence, then longest, then earliest.
/// The kept spans are disjoint, so in an ordered map the one starting last before a candidate's
/// end is the only one that can overlap it: O(n log n) rather than comparing every pair.
fn resolve_overlaps(scored: &mut [(scan::Candidate, f32)]) -> Vec<(scan::Candidate, f32)> {
    scored.sort_by(|(a, ca), (b, cb)| {
        cb.total_cmp(ca)
            .then_with(|| b.span.len().cmp(&a.span.len()))
            .then_with(|| a.span.start.cmp(&b.span.start))
            .then_with(|| a.kind.cmp(&b.kind))
    });
    let mut kept: std::collections::BTreeMap<usize, (scan::Candidate, f32)> = Default::default();
    for (c, conf) in scored.iter() {
        let overlaps = kept
            .range(..c.span.end)
            .next_back()
            .is_some_and(|(_, (k, _))| k.span.end > c.span.start);
        // An empty span (never produced by the scanners) would slip between two kept ones.
        if !overlaps && !c.span.is_empty() {
            kept.insert(c.span.start, (c.clone(), *conf));
        }
    }
    kept.into_values().collect()
}

/// Character ranges for sorted, non-overlapping byte ranges, in one pass over the text.
fn char_spans(text: &str, spans: impl Iterator<Item = Range<usize>>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut byte, mut chars) = (0usize, 0usize);
    for span in spans {
        chars += text[byte..span.start].chars().count();
        let start = chars;
        chars += text[span.clone()].chars().count();
        byte = span.end;
        out.push(start..chars);
    }
    out
}

/// Rebuild `text` with sorted, non-overlapping byte spans replaced.
fn replace_spans(text: &str, replacements: impl Iterator<Item = (Range<usize>, String)>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, with) in replacements {
        out.push_str(&text[at..span.start]);
        out.push_str(&with);
        at = span.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> PiiDetector {
        PiiDetector::new(PiiConfig::default()).unwrap()
    }

    fn kinds(text: &str) -> Vec<(EntityKind, String)> {
        detector().detect(text).into_iter().map(|e| (e.kind, e.text)).collect()
    }

    #[test]
    fn finds_each_kind_in_context() {
        let cases: &[(&str, EntityKind, &str)] = &[
            (
                "身份证号11010519491231002X。",
                EntityKind::CnResidentId,
                "11010519491231002X",
            ),
            ("手机 +86 138-0013-8000 联系", EntityKind::CnMobile, "+86 138-0013-8000"),
            ("电话(010) 62345678", EntityKind::CnLandline, "(010) 62345678"),
            (
                "card 4111 1111 1111 1111 expires",
                EntityKind::CreditCard,
                "4111 1111 1111 1111",
            ),
            ("信用代码91350100M000100Y43", EntityKind::Uscc, "91350100M000100Y43"),
            (
                "mail zhang.san@bank.com.cn.",
                EntityKind::Email,
                "zhang.san@bank.com.cn",
            ),
            (
                "IBAN GB82 WEST 1234 5698 7654 32 2024",
                EntityKind::Iban,
                "GB82 WEST 1234 5698 7654 32",
            ),
            ("SSN 123-45-6789", EntityKind::UsSsn, "123-45-6789"),
            ("from 192.168.1.20.", EntityKind::Ipv4, "192.168.1.20"),
            (
                "host 2001:db8::8a2e:370:7334 up",
                EntityKind::Ipv6,
                "2001:db8::8a2e:370:7334",
            ),
        ];
        for (text, kind, found) in cases {
            assert_eq!(kinds(text), vec![(*kind, found.to_string())], "{text}");
        }
    }

    #[test]
    fn digit_boundaries_are_respected() {
        assert!(kinds("9911010519491231002X").is_empty());
        assert!(kinds("编号A11010519491231002X").is_empty());
        assert!(kinds("991380013800099").is_empty());
        assert!(kinds("pi 3.1380013800").is_empty());
        assert_eq!(kinds("2023 13800138000").len(), 1);
    }

    #[test]
    fn amounts_and_orders_are_not_phones() {
        assert!(kinds("余额13800000000元").is_empty());
        assert!(kinds("订单号13800138000").is_empty());
        assert!(kinds("¥13800138000").is_empty());
    }

    #[test]
    fn char_spans_follow_multibyte_text() {
        let d = detector();
        let e = &d.detect("卡号4111111111111111")[0];
        assert_eq!(e.span, 6..22);
        assert_eq!(e.char_span, 2..18);
    }

    #[test]
    fn pseudonymise_is_stable_and_reversible() {
        let d = detector();
        let text = "手机13800138000，备用+86 138 0013 8000，卡号4111111111111111";
        let (masked, vault) = d.pseudonymise(text);
        assert_eq!(masked, "手机<PHONE_1>，备用<PHONE_1>，卡号<CARD_1>");
        assert_eq!(vault.unmask("请致电<PHONE_1>"), "请致电13800138000");
        assert_eq!(vault.len(), 2);
    }

    #[test]
    fn redaction_labels_and_keyed_hashes() {
        assert_eq!(detector().redact("SSN 123-45-6789"), "SSN [SSN]");
        let keyed = PiiDetector::new(PiiConfig {
            redaction: Redaction::KeyedHash { key: vec![7; 32] },
            ..Default::default()
        })
        .unwrap();
        let a = keyed.redact("card 4111111111111111");
        let b = keyed.redact("card 4111 1111 1111 1111");
        assert!(
            a.starts_with("card [CARD:") && a.len() == "card [CARD:]".len() + 12,
            "{a}"
        );
        // The hash is over the normalised value: the same card written differently hashes alike.
        assert_eq!(a, b);
    }

    #[test]
    fn config_is_validated() {
        assert!(PiiDetector::new(PiiConfig {
            threshold: 1.5,
            ..Default::default()
        })
        .is_err());
        assert!("nope".parse::<EntityKind>().is_err());
        assert_eq!("iban".parse::<EntityKind>().unwrap(), EntityKind::Iban);
    }
}
