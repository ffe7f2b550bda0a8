//! Candidate generation: regexes find shapes, code validates them.
//!
//! The `regex` crate has no lookaround, so boundaries are checked here: a candidate must not be a
//! piece of a longer digit or letter run. Digit identifiers are found as *runs* of digit groups
//! joined by single spaces or dashes ("6222 0212 3456 7890 123", "138-0013-8000"); a candidate is
//! any contiguous sequence of whole groups, so "2023 13800138000" still yields the phone while a
//! phone inside "991380013800099" yields nothing.

use std::net::Ipv6Addr;
use std::ops::Range;

use regex::Regex;

use super::checks;
use super::EntityKind;
use crate::{Error, Result};

/// The longest digit candidate: a 19-digit card.
const MAX_DIGITS: usize = 19;
/// A candidate made of some groups of a longer run is less certain than a whole run.
const PARTIAL_RUN_PENALTY: f32 = 0.1;

/// A validated candidate before context scoring.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub kind: EntityKind,
    pub span: Range<usize>,
    pub base: f32,
    pub detail: Option<&'static str>,
    /// Normalised value: the same identifier written differently gets the same key.
    pub key: String,
}

pub(crate) struct Scanners {
    digit_run: Regex,
    alnum: Regex,
    iban: Regex,
    email: Regex,
    ipv4: Regex,
    ipv6: Regex,
}

fn compile(pattern: &str) -> Result<Regex> {
    Regex::new(pattern).map_err(|e| Error::invalid("pii pattern", e.to_string()))
}

impl Scanners {
    pub fn new() -> Result<Self> {
        Ok(Self {
            digit_run: compile(r"\+?[0-9]+(?:(?:[ \-]|\) ?)[0-9]+)*[Xx]?")?,
            alnum: compile(r"[0-9A-Za-z]+")?,
            iban: compile(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,8}(?: ?[A-Z0-9]{1,4})?")?,
            email: compile(
                r"[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}",
            )?,
            ipv4: compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")?,
            ipv6: compile(r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:\.[0-9]{1,3}){0,3}")?,
        })
    }

    /// Every validated candidate in `text`, overlapping ones included.
    pub fn scan(&self, text: &str) -> Vec<Candidate> {
        let mut out = Vec::new();
        for m in self.digit_run.find_iter(text) {
            digit_run_candidates(text, m.range(), &mut out);
        }
        for m in self.alnum.find_iter(text) {
            uscc_candidate(text, m.range(), &mut out);
        }
        for m in self.iban.find_iter(text) {
            iban_candidate(text, m.range(), &mut out);
        }
        for m in self.email.find_iter(text) {
            email_candidate(text, m.range(), &mut out);
        }
        for m in self.ipv4.find_iter(text) {
            ipv4_candidate(text, m.range(), &mut out);
        }
        for m in self.ipv6.find_iter(text) {
            ipv6_candidate(text, m.range(), &mut out);
        }
        out
    }
}

fn char_before(text: &str, at: usize) -> Option<char> {
    text[..at].chars().next_back()
}

fn char_after(text: &str, at: usize) -> Option<char> {
    text[at..].chars().next()
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// A number may start here: not glued to a letter or digit, and not the fraction or thousands
/// part of a number ("3.14159…", "12,345,…").
fn number_may_start(text: &str, at: usize) -> bool {
    match char_before(text, at) {
        None => true,
        Some(c) if is_word(c) => false,
        Some('.' | ',') => !char_before(text, at - 1).is_some_and(|c| c.is_ascii_digit()),
        Some(_) => true,
    }
}

/// A number may end here: not glued to a letter or digit, not followed by a fraction, and not the
/// local part of an e-mail address.
fn number_may_end(text: &str, at: usize) -> bool {
    match char_after(text, at) {
        None => true,
        Some(c) if is_word(c) || c == '@' => false,
        Some('.' | ',') => !char_after(text, at + 1).is_some_and(|c| c.is_ascii_digit()),
        Some(_) => true,
    }
}

/// One group of a digit run: its byte span, and the separator that follows it (if any).
#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    sep_after: Option<u8>,
}

fn split_groups(text: &str, run: Range<usize>) -> (bool, Vec<Group>) {
    let bytes = text.as_bytes();
    let plus = bytes.get(run.start) == Some(&b'+');
    let mut groups = Vec::new();
    let mut i = run.start + usize::from(plus);
    while i < run.end {
        let start = i;
        while i < run.end && (bytes[i].is_ascii_digit() || matches!(bytes[i], b'X' | b'x')) {
            i += 1;
        }
        let end = i;
        let sep_after = if i < run.end { Some(bytes[i]) } else { None };
        while i < run.end && !bytes[i].is_ascii_digit() {
            i += 1;
        }
        if end > start {
            groups.push(Group { start, end, sep_after });
        }
    }
    (plus, groups)
}

fn digit_run_candidates(text: &str, run: Range<usize>, out: &mut Vec<Candidate>) {
    let (plus, groups) = split_groups(text, run.clone());
    let run_start_ok = number_may_start(text, run.start);
    let run_end_ok = number_may_end(text, run.end);
    for i in 0..groups.len() {
        if i == 0 && !run_start_ok {
            continue;
        }
        let mut digits = String::new();
        for j in i..groups.len() {
            digits.push_str(&text[groups[j].start..groups[j].end]);
            if digits.len() > MAX_DIGITS {
                break;
            }
            if j + 1 == groups.len() && !run_end_ok {
                break;
            }
            let sub = SubRun {
                text,
                groups: &groups[i..=j],
                digits: &digits,
                whole: i == 0 && j + 1 == groups.len(),
                plus_before: i == 0 && plus,
                run_start: run.start,
            };
            sub.candidates(out);
        }
    }
}

/// A contiguous sequence of whole groups of a digit run.
struct SubRun<'a> {
    text: &'a str,
    groups: &'a [Group],
    digits: &'a str,
    whole: bool,
    plus_before: bool,
    run_start: usize,
}

impl SubRun<'_> {
    fn span(&self) -> Range<usize> {
        let first = self.groups.first().map_or(0, |g| g.start);
        let last = self.groups.last().map_or(0, |g| g.end);
        first..last
    }

    fn push(&self, out: &mut Vec<Candidate>, kind: EntityKind, base: f32, detail: Option<&'static str>, key: &str) {
        let penalty = if self.whole { 0.0 } else { PARTIAL_RUN_PENALTY };
        let mut span = self.span();
        if self.plus_before {
            span.start = self.run_start;
        }
        out.push(Candidate {
            kind,
            span,
            base: base - penalty,
            detail,
            key: key.to_string(),
        });
    }

    /// Digit counts of the groups, e.g. [3, 4, 4] for "138-0013-8000".
    fn lens(&self) -> Vec<usize> {
        self.groups.iter().map(|g| g.end - g.start).collect()
    }

    fn candidates(&self, out: &mut Vec<Candidate>) {
        let d = self.digits.as_bytes();
        if d.len() == 18 && matches!(self.lens().as_slice(), [18] | [6, 8, 4]) && checks::cn_id_valid(d) {
            self.push(
                out,
                EntityKind::CnResidentId,
                0.9,
                None,
                &self.digits.to_ascii_uppercase(),
            );
        }
        if d.iter().any(|c| !c.is_ascii_digit()) {
            return; // only a resident ID may carry the trailing X
        }
        self.mobile(d, out);
        self.landline(d, out);
        self.card(d, out);
        self.ssn(d, out);
    }

    fn mobile(&self, d: &[u8], out: &mut Vec<Candidate>) {
        let national = match d.len() {
            11 if !self.plus_before => Some(d),
            13 if self.plus_before && d.starts_with(b"86") => Some(&d[2..]),
            15 if !self.plus_before && d.starts_with(b"0086") => Some(&d[4..]),
            _ => None,
        };
        // People write mobiles as 11 digits or 3-4-4 (after an optional "+86" / "0086" group).
        let lens = self.lens();
        let national_lens = match lens.as_slice() {
            [2 | 4, rest @ ..] if lens.len() > 1 && d.len() > 11 => rest,
            all => all,
        };
        let grouping_ok = matches!(national_lens, [11] | [3, 4, 4] | [3, 8] | [13] | [15]);
        if let Some(n) = national.filter(|n| grouping_ok && checks::cn_mobile_valid(n)) {
            let key = String::from_utf8_lossy(n).into_owned();
            self.push(out, EntityKind::CnMobile, 0.65, None, &key);
        }
    }

    fn landline(&self, d: &[u8], out: &mut Vec<Candidate>) {
        if self.plus_before || !(10..=12).contains(&d.len()) || d[0] != b'0' {
            return;
        }
        let first_len = self.groups[0].end - self.groups[0].start;
        if self.groups.len() > 1 {
            // Written with a separator after the area code: "010-62345678", "(0755) 2345678",
            // the subscriber number whole or split 4-4 / 3-4 / 4-3.
            let lens = self.lens();
            let subscriber_ok = matches!(&lens[1..], [_] | [4, 4] | [3, 4] | [4, 3]);
            if subscriber_ok && checks::cn_landline_valid(&d[..first_len], &d[first_len..]) {
                let before = len_before(out);
                self.push(out, EntityKind::CnLandline, 0.65, None, self.digits);
                // "(010) 62345678": the opening parenthesis belongs to the number.
                let opened = self.text[..self.groups[0].start].ends_with('(');
                if opened && self.groups[0].sep_after == Some(b')') {
                    if let Some(c) = out.get_mut(before) {
                        c.span.start -= 1;
                    }
                }
            }
        } else if let Some(area) = checks::cn_area_code_len(d) {
            // Run together, the digits could be anything: needs a context cue to pass.
            if checks::cn_landline_valid(&d[..area], &d[area..]) {
                self.push(out, EntityKind::CnLandline, 0.35, None, self.digits);
            }
        }
    }

    fn card(&self, d: &[u8], out: &mut Vec<Candidate>) {
        if self.plus_before || !(12..=19).contains(&d.len()) || !checks::luhn_valid(d) {
            return;
        }
        // Cards are printed whole, in fours (the last group shorter), or 4-6-5 / 4-6-4 (Amex, Diners).
        let lens = self.lens();
        let fours = lens.len() > 1 && lens[..lens.len() - 1].iter().all(|&n| n == 4);
        if !(lens.len() == 1 || fours || matches!(lens.as_slice(), [4, 6, 5] | [4, 6, 4])) {
            return;
        }
        match checks::card_network(d) {
            Some(network) => self.push(out, EntityKind::CreditCard, 0.75, Some(network.name()), self.digits),
            None if d.len() >= 16 => self.push(out, EntityKind::BankCard, 0.4, None, self.digits),
            None => {}
        }
    }

    fn ssn(&self, d: &[u8], out: &mut Vec<Candidate>) {
        if self.plus_before || !checks::ssn_valid(d) {
            return;
        }
        let lens: Vec<usize> = self.groups.iter().map(|g| g.end - g.start).collect();
        let base = match (lens.as_slice(), self.groups[0].sep_after) {
            ([3, 2, 4], Some(b'-')) if self.groups[1].sep_after == Some(b'-') => 0.75,
            ([3, 2, 4], Some(b' ')) if self.groups[1].sep_after == Some(b' ') => 0.55,
            ([9], _) => 0.25,
            _ => return,
        };
        self.push(out, EntityKind::UsSsn, base, None, self.digits);
    }
}

fn len_before(out: &[Candidate]) -> usize {
    out.len()
}

fn uscc_candidate(text: &str, token: Range<usize>, out: &mut Vec<Candidate>) {
    let code = &text.as_bytes()[token.clone()];
    if code.len() != 18 || !checks::uscc_valid(code) {
        return;
    }
    if char_before(text, token.start) == Some('_') || !number_may_end(text, token.end) {
        return;
    }
    let base = if checks::uscc_org_code_valid(code) { 0.9 } else { 0.8 };
    out.push(Candidate {
        kind: EntityKind::Uscc,
        span: token.clone(),
        base,
        detail: None,
        key: text[token].to_string(),
    });
}

/// Printed IBANs come in groups of four; the regex may run into a following group ("… 7654 32
/// 2024"), so the candidate is cut at the country's length, which must fall on a group boundary.
fn iban_candidate(text: &str, m: Range<usize>, out: &mut Vec<Candidate>) {
    let raw = &text.as_bytes()[m.clone()];
    let Some(len) = checks::iban_length(&raw[..2]) else {
        return;
    };
    let mut compact = Vec::with_capacity(len);
    let mut end = m.start;
    for (i, &c) in raw.iter().enumerate() {
        if compact.len() == len {
            break;
        }
        if c != b' ' {
            compact.push(c);
        }
        end = m.start + i + 1;
    }
    if compact.len() != len {
        return;
    }
    let boundary_ok = char_before(text, m.start).is_none_or(|c| !is_word(c))
        && char_after(text, end).is_none_or(|c| !is_word(c))
        && (end == m.end || text.as_bytes()[end] == b' ');
    if boundary_ok && checks::iban_valid(&compact) {
        out.push(Candidate {
            kind: EntityKind::Iban,
            span: m.start..end,
            base: 0.9,
            detail: None,
            key: String::from_utf8_lossy(&compact).into_owned(),
        });
    }
}

fn email_candidate(text: &str, m: Range<usize>, out: &mut Vec<Candidate>) {
    let s = &text[m.clone()];
    let Some(at) = s.find('@') else {
        return;
    };
    let local = &s[..at];
    let local_ok = !local.ends_with('.') && !local.contains("..") && local.len() <= 64;
    let glued = char_before(text, m.start).is_some_and(|c| is_word(c) || matches!(c, '.' | '%' | '+' | '-'));
    if local_ok && !glued && char_after(text, m.end).is_none_or(|c| !is_word(c)) {
        out.push(Candidate {
            kind: EntityKind::Email,
            span: m,
            base: 0.95,
            detail: None,
            key: s.to_ascii_lowercase(),
        });
    }
}

fn ipv4_candidate(text: &str, m: Range<usize>, out: &mut Vec<Candidate>) {
    let s = &text[m.clone()];
    let octets_ok = s
        .split('.')
        .all(|o| (o == "0" || !o.starts_with('0')) && o.parse::<u16>().is_ok_and(|v| v <= 255));
    let glued_before = char_before(text, m.start).is_some_and(|c| is_word(c) || c == '.');
    if octets_ok && !glued_before && number_may_end(text, m.end) && !s.ends_with(".0.0.0") {
        out.push(Candidate {
            kind: EntityKind::Ipv4,
            span: m,
            base: 0.8,
            detail: None,
            key: s.to_string(),
        });
    }
}

fn ipv6_candidate(text: &str, m: Range<usize>, out: &mut Vec<Candidate>) {
    let s = &text[m.clone()];
    let hex_groups = s.split(':').filter(|g| !g.is_empty()).count();
    let glued_before = char_before(text, m.start).is_some_and(|c| is_word(c) || c == ':');
    let glued_after = char_after(text, m.end).is_some_and(|c| is_word(c) || c == ':');
    if hex_groups < 2 || glued_before || glued_after {
        return;
    }
    if let Ok(addr) = s.parse::<Ipv6Addr>() {
        out.push(Candidate {
            kind: EntityKind::Ipv6,
            span: m,
            base: 0.85,
            detail: None,
            key: addr.to_string(),
        });
    }
}
