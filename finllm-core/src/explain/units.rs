//! Units of explanation: the pieces of a prompt that attributions are given to (tokens, words,
//! sentences or named segments such as retrieved sources), each a byte range of the prompt's
//! text and the prompt positions of the tokens that make it up.

use std::ops::Range;

use crate::error::{Error, Result};

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Token,
    /// Runs of letters and digits; each punctuation mark and each CJK character alone.
    Word,
    /// Sentences as documents are chunked (`.!?` not after abbreviations; `。！？；`; lines).
    Sentence,
    /// The caller's segments ([`Segment`]), such as the numbered sources of a grounded prompt.
    Segment,
}

impl std::str::FromStr for Granularity {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "token" => Self::Token,
            "word" => Self::Word,
            "sentence" => Self::Sentence,
            "segment" | "source" => Self::Segment,
            _ => {
                return Err(Error::invalid(
                    "granularity",
                    format!("{s:?}: one of token, word, sentence, source"),
                ))
            }
        })
    }
}

/// A named byte range of the prompt's text, explained as one unit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub label: String,
    pub start: usize,
    pub end: usize,
}

/// Byte offsets of a text to character offsets (Unicode scalar values), for spans reported to
/// callers who index text by characters (Python, JSON readers).
pub(crate) struct CharIndex {
    /// The byte offset of every character boundary but the end.
    starts: Vec<usize>,
}

impl CharIndex {
    pub(crate) fn new(text: &str) -> Self {
        Self {
            starts: text.char_indices().map(|(b, _)| b).collect(),
        }
    }

    /// The character offset of byte offset `byte` (a boundary; the text's length maps to its
    /// character count).
    pub(crate) fn of(&self, byte: usize) -> usize {
        self.starts.partition_point(|&b| b < byte)
    }
}

/// One unit: its text, its byte range in the prompt's text and the prompt positions of its
/// tokens (every token belongs to at most one unit).
#[derive(Debug, Clone, PartialEq)]
pub struct UnitSpan {
    pub label: Option<String>,
    pub start: usize,
    pub end: usize,
    pub positions: Vec<usize>,
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

/// Word spans of `text[a..b]`: runs of alphanumeric characters (CJK characters alone), and each
/// other non-space character alone.
fn word_spans(text: &str, a: usize, b: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut run: Option<usize> = None;
    for (i, c) in text[a..b].char_indices() {
        let i = a + i;
        if c.is_alphanumeric() && !is_cjk(c) {
            run.get_or_insert(i);
            continue;
        }
        if let Some(s) = run.take() {
            out.push((s, i));
        }
        if !c.is_whitespace() {
            out.push((i, i + c.len_utf8()));
        }
    }
    if let Some(s) = run {
        out.push((s, b));
    }
    out
}

/// The first byte of `(a, b)` that is not whitespace, or `a` when all of it is.
fn first_visible(text: &str, a: usize, b: usize) -> usize {
    text[a..b]
        .char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(a, |(i, _)| a + i)
}

/// Group the tokens inside `regions` (byte ranges of `text`) into units of `granularity`.
/// `offsets` are the tokens' byte ranges (see `Tokenizer::encode_with_offsets`).
///
/// A token belongs to the span that holds its first visible byte (a token of spaces only goes
/// with the next span); spans no token starts in are merged into the unit of the token that
/// covers them, so every unit has at least one token and no token is in two units.
pub fn build(
    text: &str,
    offsets: &[(usize, usize)],
    regions: &[Range<usize>],
    granularity: Granularity,
    segments: &[Segment],
) -> Result<Vec<UnitSpan>> {
    let mut spans: Vec<(usize, usize, Option<String>)> = Vec::new();
    match granularity {
        Granularity::Segment => {
            if segments.is_empty() {
                return Err(Error::invalid(
                    "segments",
                    "source granularity needs at least one segment",
                ));
            }
            let mut sorted = segments.to_vec();
            sorted.sort_by_key(|s| s.start);
            for (i, s) in sorted.iter().enumerate() {
                if s.start >= s.end
                    || s.end > text.len()
                    || !text.is_char_boundary(s.start)
                    || !text.is_char_boundary(s.end)
                {
                    return Err(Error::invalid(
                        "segments",
                        format!("{:?} is not a byte range of the prompt's text", s.label),
                    ));
                }
                if i > 0 && sorted[i - 1].end > s.start {
                    return Err(Error::invalid(
                        "segments",
                        format!("{:?} overlaps another segment", s.label),
                    ));
                }
                spans.push((s.start, s.end, Some(s.label.clone())));
            }
        }
        Granularity::Token => {
            // Each token in a region is a unit of its own, whitespace included.
            let mut out = Vec::new();
            for (pos, &(a, b)) in offsets.iter().enumerate() {
                if b > a && regions.iter().any(|r| a >= r.start && a < r.end) {
                    out.push(UnitSpan {
                        label: None,
                        start: a,
                        end: b,
                        positions: vec![pos],
                    });
                }
            }
            return Ok(out);
        }
        Granularity::Word => {
            for r in regions {
                spans.extend(word_spans(text, r.start, r.end).into_iter().map(|(a, b)| (a, b, None)));
            }
        }
        Granularity::Sentence => {
            for r in regions {
                let sentences = crate::rag::chunk::sentence_byte_spans(&text[r.clone()]);
                spans.extend(sentences.into_iter().map(|(a, b)| (r.start + a, r.start + b, None)));
            }
        }
    }
    // Assign each token to the span holding its first visible byte.
    let mut units: Vec<UnitSpan> = spans
        .iter()
        .map(|(a, b, label)| UnitSpan {
            label: label.clone(),
            start: *a,
            end: *b,
            positions: Vec::new(),
        })
        .collect();
    for (pos, &(a, b)) in offsets.iter().enumerate() {
        if a == b {
            continue;
        }
        let at = first_visible(text, a, b);
        let at = if at == a && text[a..b].chars().all(char::is_whitespace) {
            b
        } else {
            at
        };
        let found = units.iter().position(|u| u.start <= at && at < u.end).or_else(|| {
            // A whitespace-only token at the end of a span: the unit right before it.
            if granularity == Granularity::Segment {
                None
            } else {
                units.iter().position(|u| u.start < b && a < u.end)
            }
        });
        if let Some(u) = found {
            let unit = &mut units[u];
            unit.positions.push(pos);
            // A token reaching past its unit widens it (a token covering "code:" in a word unit
            // "code").
            if granularity != Granularity::Segment && !text[a..b].chars().all(char::is_whitespace) {
                unit.start = unit.start.min(first_visible(text, a, b));
                unit.end = unit.end.max(b);
            }
        }
    }
    // Merge units without tokens into the unit whose tokens cover them (or drop them when no
    // token covers them, such as text outside the regions).
    let mut out: Vec<UnitSpan> = Vec::new();
    for u in units {
        if !u.positions.is_empty() {
            out.push(u);
        } else if granularity == Granularity::Segment {
            return Err(Error::invalid(
                "segments",
                format!("{:?} holds no token of the prompt", u.label.unwrap_or_default()),
            ));
        }
    }
    // Widened units may now overlap a later one: merge them.
    let mut merged: Vec<UnitSpan> = Vec::new();
    for u in out {
        match merged.last_mut() {
            Some(last) if u.start < last.end && granularity != Granularity::Segment => {
                last.end = last.end.max(u.end);
                last.positions.extend(u.positions);
            }
            _ => merged.push(u),
        }
    }
    for u in &mut merged {
        u.positions.sort_unstable();
        u.positions.dedup();
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_offsets_agree_with_counting_characters() {
        let t = "净利润 up 3.5% — 营收 €12";
        let idx = CharIndex::new(t);
        for (b, _) in t.char_indices().chain(std::iter::once((t.len(), ' '))) {
            assert_eq!(idx.of(b), t[..b].chars().count(), "byte {b}");
        }
    }

    #[test]
    fn words_split_letters_digits_punctuation_and_cjk() {
        let t = "The code is 4711. 净利润 up 3.5%";
        let w: Vec<&str> = word_spans(t, 0, t.len()).into_iter().map(|(a, b)| &t[a..b]).collect();
        assert_eq!(
            w,
            ["The", "code", "is", "4711", ".", "净", "利", "润", "up", "3", ".", "5", "%"]
        );
    }

    #[test]
    fn tokens_go_to_one_unit_each_and_units_cover_their_tokens() {
        let t = "The code: 4711.";
        // Tokens: "The", " code:", " 47", "11", "."
        let offsets = [(0, 3), (3, 9), (9, 12), (12, 14), (14, 15)];
        let units = build(t, &offsets, std::slice::from_ref(&(0..t.len())), Granularity::Word, &[]).unwrap();
        let texts: Vec<&str> = units.iter().map(|u| &t[u.start..u.end]).collect();
        assert_eq!(texts, ["The", "code:", "4711", "."]);
        let positions: Vec<Vec<usize>> = units.iter().map(|u| u.positions.clone()).collect();
        assert_eq!(positions, [vec![0], vec![1], vec![2, 3], vec![4]]);
        // Regions limit the units; token units are the tokens themselves.
        let units = build(t, &offsets, std::slice::from_ref(&(9..15)), Granularity::Token, &[]).unwrap();
        assert_eq!(units.iter().map(|u| u.positions[0]).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(
            units.iter().map(|u| &t[u.start..u.end]).collect::<Vec<_>>(),
            [" 47", "11", "."]
        );
    }

    #[test]
    fn segments_must_be_ranges_of_the_text_that_hold_tokens() {
        let t = "[1] alpha [2] beta";
        let offsets = [(0, 3), (3, 9), (9, 13), (13, 18)];
        let seg = |label: &str, start, end| Segment {
            label: label.into(),
            start,
            end,
        };
        let units = build(
            t,
            &offsets,
            &[],
            Granularity::Segment,
            &[seg("b", 10, 18), seg("a", 0, 9)],
        )
        .unwrap();
        assert_eq!(units.len(), 2);
        assert_eq!(
            (units[0].label.as_deref(), units[0].positions.clone()),
            (Some("a"), vec![0, 1])
        );
        assert_eq!(units[1].positions, vec![2, 3]);
        assert!(build(t, &offsets, &[], Granularity::Segment, &[seg("x", 4, 40)]).is_err());
        assert!(build(
            t,
            &offsets,
            &[],
            Granularity::Segment,
            &[seg("x", 0, 9), seg("y", 5, 12)]
        )
        .is_err());
        assert!(build(t, &offsets, &[], Granularity::Segment, &[]).is_err());
    }
}
