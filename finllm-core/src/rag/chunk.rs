//! Splitting a document into chunks for retrieval: by tokens, with overlap, ending only at
//! sentence ends (English and Chinese punctuation), preferring paragraph ends and starting a new
//! chunk at each heading. Every chunk keeps its page, its character span of the document and the
//! heading it sits under.

use crate::error::{Error, Result};
use crate::rag::ingest::Document;

/// How chunks are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// Most tokens in a chunk (the embedder's tokens, without its special tokens). A single
    /// sentence longer than this is cut at word (or, in Chinese, character) boundaries.
    pub max_tokens: usize,
    /// Tokens of the previous chunk's last sentences repeated at the start of the next one,
    /// when a chunk ends inside a paragraph.
    pub overlap_tokens: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            max_tokens: 128,
            overlap_tokens: 24,
        }
    }
}

impl ChunkerConfig {
    pub fn validate(&self) -> Result<()> {
        if self.max_tokens < 8 {
            return Err(Error::invalid("max_tokens", "must be at least 8"));
        }
        if self.overlap_tokens >= self.max_tokens / 2 {
            return Err(Error::invalid("overlap_tokens", "must be less than half of max_tokens"));
        }
        Ok(())
    }
}

/// One chunk of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The page it is on (from 1).
    pub page: u32,
    /// Its span of the document's text, in characters.
    pub start: usize,
    pub end: usize,
    pub text: String,
    /// The document's title and the heading the chunk sits under (`"Title › Heading"`).
    pub context: String,
}

/// A sentence (or a heading, list item, table row) of a page: byte and character spans.
#[derive(Debug, Clone)]
struct Sentence {
    bytes: (usize, usize),
    chars: (usize, usize),
    para_start: bool,
    heading: bool,
}

/// Cut `doc` into chunks; `count` gives a text's length in tokens.
pub fn chunk_document(
    doc: &Document,
    config: &ChunkerConfig,
    count: &dyn Fn(&str) -> Result<usize>,
) -> Result<Vec<Piece>> {
    config.validate()?;
    let mut pieces = Vec::new();
    let mut heading = String::new();
    // Pages in order: characters and bytes advance together.
    let mut byte_at = 0usize;
    let mut char_at = 0usize;
    for page in &doc.pages {
        // Move to the page's start.
        let skip: usize = doc.text[byte_at..]
            .chars()
            .take(page.start - char_at)
            .map(char::len_utf8)
            .sum();
        byte_at += skip;
        let len: usize = doc.text[byte_at..]
            .chars()
            .take(page.end - page.start)
            .map(char::len_utf8)
            .sum();
        let text = &doc.text[byte_at..byte_at + len];
        let sentences = split_sentences(text, page.start);
        let mut units: Vec<(Sentence, usize)> = Vec::with_capacity(sentences.len());
        for s in sentences {
            let t = count(&text[s.bytes.0..s.bytes.1])?;
            if t <= config.max_tokens {
                units.push((s, t));
            } else {
                units.extend(cut_long(text, &s, config.max_tokens, count)?);
            }
        }
        pack(text, &doc.title, &units, config, page.number, &mut heading, &mut pieces);
        byte_at += len;
        char_at = page.end;
    }
    Ok(pieces)
}

fn context(title: &str, heading: &str) -> String {
    match (title.is_empty(), heading.is_empty() || heading == title) {
        (_, true) => title.to_string(),
        (true, false) => heading.to_string(),
        (false, false) => format!("{title} › {heading}"),
    }
}

fn heading_text(line: &str) -> String {
    line.trim_start_matches('#').trim().chars().take(120).collect()
}

/// Group sentences into chunks.
fn pack(
    text: &str,
    title: &str,
    units: &[(Sentence, usize)],
    config: &ChunkerConfig,
    page: u32,
    heading: &mut String,
    out: &mut Vec<Piece>,
) {
    // Tokens from each unit to the end of its paragraph.
    let mut para_rest = vec![0usize; units.len()];
    let mut acc = 0;
    for i in (0..units.len()).rev() {
        acc += units[i].1;
        para_rest[i] = acc;
        if units[i].0.para_start {
            acc = 0;
        }
    }
    let mut current: Vec<usize> = Vec::new();
    let mut tokens = 0usize;
    let mut chunk_heading = heading.clone();
    let emit = |current: &[usize], chunk_heading: &str, out: &mut Vec<Piece>| {
        let (first, last) = (&units[current[0]].0, &units[current[current.len() - 1]].0);
        out.push(Piece {
            page,
            start: first.chars.0,
            end: last.chars.1,
            text: text[first.bytes.0..last.bytes.1].to_string(),
            context: context(title, chunk_heading),
        });
    };
    for (i, (s, t)) in units.iter().enumerate() {
        let at_heading = s.heading && !current.is_empty() && tokens >= config.max_tokens / 4;
        let at_paragraph = s.para_start
            && !current.is_empty()
            && tokens >= config.max_tokens / 2
            && tokens + para_rest[i] > config.max_tokens;
        if at_heading || at_paragraph {
            emit(&current, &chunk_heading, out);
            current.clear();
            tokens = 0;
        } else if !current.is_empty() && tokens + t > config.max_tokens {
            emit(&current, &chunk_heading, out);
            // Carry the last sentences (not headings) of this paragraph, within the overlap.
            let mut keep = 0;
            let mut kept_tokens = 0;
            for &j in current.iter().rev() {
                let (sj, tj) = &units[j];
                if sj.heading || kept_tokens + tj > config.overlap_tokens || keep + 1 == current.len() || s.para_start {
                    break;
                }
                kept_tokens += tj;
                keep += 1;
                if sj.para_start {
                    break;
                }
            }
            current.drain(..current.len() - keep);
            tokens = kept_tokens;
        }
        if s.heading {
            *heading = heading_text(&text[s.bytes.0..s.bytes.1]);
        }
        if current.is_empty() {
            chunk_heading = heading.clone();
        }
        current.push(i);
        tokens += t;
    }
    if !current.is_empty() {
        emit(&current, &chunk_heading, out);
    }
}

/// A line that stands alone: a Markdown heading, list item, table row or quote.
fn is_block_line(line: &str) -> bool {
    let l = line.trim_start();
    if l.starts_with('#') || l.starts_with('|') || l.starts_with('>') {
        return true;
    }
    if let Some(rest) = l.strip_prefix(['-', '*', '+', '•']) {
        return rest.starts_with(' ');
    }
    let digits = l.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && digits < 4 && l[digits..].starts_with(['.', ')']) && l[digits + 1..].starts_with(' ')
}

fn is_cjk_stop(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '；' | '…')
}

fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '」' | '』' | '）' | '】' | '》')
}

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "inc", "ltd", "co", "corp", "plc", "no", "vs", "etc", "e.g", "i.e", "u.s", "u.k",
    "fig", "approx", "st", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "est",
    "p.a", "cf", "al",
];

/// The byte spans of `text`'s sentences (whitespace trimmed), split as chunks are: for units
/// of explanation.
pub(crate) fn sentence_byte_spans(text: &str) -> Vec<(usize, usize)> {
    split_sentences(text, 0).into_iter().map(|s| s.bytes).collect()
}

/// Split a page into sentences: paragraphs at blank lines, block lines alone, sentence ends at
/// `.!?` followed by a space (not after an abbreviation, nor before a lower-case word) and
/// right after `。！？；`.
fn split_sentences(text: &str, char_base: usize) -> Vec<Sentence> {
    let mut out = Vec::new();
    // Lines with their byte offsets.
    let mut lines = Vec::new();
    let mut at = 0;
    for line in text.split('\n') {
        lines.push((at, line));
        at += line.len() + 1;
    }
    // Runs of text to split: (byte start, byte end, paragraph start, block line).
    let mut runs: Vec<(usize, usize, bool, bool)> = Vec::new();
    let mut para_start = true;
    let mut run: Option<(usize, usize, bool)> = None;
    for &(start, line) in &lines {
        if line.trim().is_empty() {
            if let Some((a, b, p)) = run.take() {
                runs.push((a, b, p, false));
            }
            para_start = true;
            continue;
        }
        if is_block_line(line) {
            if let Some((a, b, p)) = run.take() {
                runs.push((a, b, p, false));
            }
            runs.push((start, start + line.len(), para_start, true));
            // A heading starts a paragraph after it; list items and rows continue one.
            para_start = line.trim_start().starts_with('#');
            continue;
        }
        match &mut run {
            Some((_, b, _)) => *b = start + line.len(),
            None => {
                run = Some((start, start + line.len(), para_start));
                para_start = false;
            }
        }
    }
    if let Some((a, b, p)) = run {
        runs.push((a, b, p, false));
    }
    // Characters before each byte position, advanced monotonically.
    let mut char_pos = (0usize, char_base);
    let mut to_char = |byte: usize| {
        char_pos.1 += text[char_pos.0..byte].chars().count();
        char_pos.0 = byte;
        char_pos.1
    };
    for (a, b, para, block) in runs {
        let heading = block && text[a..b].trim_start().starts_with('#');
        let mut spans = Vec::new();
        if block {
            spans.push((a, b));
        } else {
            sentence_spans(text, a, b, &mut spans);
        }
        for (k, (s, e)) in spans.into_iter().enumerate() {
            // Trim whitespace off both ends.
            let piece = &text[s..e];
            let lead = piece.len() - piece.trim_start().len();
            let trail = piece.len() - piece.trim_end().len();
            let (s, e) = (s + lead, e - trail);
            if s >= e {
                continue;
            }
            let chars = (to_char(s), to_char(e));
            out.push(Sentence {
                bytes: (s, e),
                chars,
                para_start: para && k == 0,
                heading,
            });
        }
    }
    out
}

fn sentence_spans(text: &str, a: usize, b: usize, out: &mut Vec<(usize, usize)>) {
    let run = &text[a..b];
    let mut start = 0;
    let mut iter = run.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        let mut end = None;
        if is_cjk_stop(c) {
            let mut e = i + c.len_utf8();
            while let Some(&(j, d)) = iter.peek() {
                if is_closing(d) || is_cjk_stop(d) {
                    e = j + d.len_utf8();
                    iter.next();
                } else {
                    break;
                }
            }
            end = Some(e);
        } else if matches!(c, '.' | '!' | '?') {
            let mut e = i + 1;
            while let Some(&(j, d)) = iter.peek() {
                if is_closing(d) || matches!(d, '.' | '!' | '?') {
                    e = j + d.len_utf8();
                    iter.next();
                } else {
                    break;
                }
            }
            let next = run[e..].chars().next();
            let after_space = run[e..].trim_start().chars().next();
            let ends = match next {
                None => true,
                Some(n) if n.is_whitespace() => {
                    !(after_space.is_some_and(char::is_lowercase) || c == '.' && is_abbreviation(&run[start..i]))
                }
                _ => false,
            };
            if ends {
                end = Some(e);
            }
        }
        if let Some(e) = end {
            out.push((a + start, a + e));
            start = e;
        }
    }
    if start < run.len() {
        out.push((a + start, b));
    }
}

/// Whether the text before a full stop ends with an abbreviation or an initial.
fn is_abbreviation(before: &str) -> bool {
    let word: String = before
        .chars()
        .rev()
        .take_while(|c| c.is_alphanumeric() || *c == '.')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let lower = word.to_lowercase();
    (word.chars().count() == 1 && word.chars().all(|c| c.is_uppercase())) || ABBREVIATIONS.contains(&lower.as_str())
}

/// Cut a sentence longer than `max` tokens at word boundaries (each CJK character is a word).
fn cut_long(
    text: &str,
    s: &Sentence,
    max: usize,
    count: &dyn Fn(&str) -> Result<usize>,
) -> Result<Vec<(Sentence, usize)>> {
    // Word boundaries: byte offsets where a piece may end.
    let piece = &text[s.bytes.0..s.bytes.1];
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut word_start: Option<usize> = None;
    for (i, c) in piece.char_indices() {
        let cjk = is_cjk(c);
        if c.is_whitespace() || cjk {
            if let Some(ws) = word_start.take() {
                words.push((ws, i));
            }
            if cjk {
                words.push((i, i + c.len_utf8()));
            }
        } else if word_start.is_none() {
            word_start = Some(i);
        }
    }
    if let Some(ws) = word_start {
        words.push((ws, piece.len()));
    }
    let mut out = Vec::new();
    let mut first = 0;
    let mut tokens = 0;
    let flush = |from: usize, to: usize, tokens: usize, out: &mut Vec<(Sentence, usize)>| {
        let (b0, b1) = (words[from].0, words[to].1);
        let c0 = s.chars.0 + piece[..b0].chars().count();
        let c1 = c0 + piece[b0..b1].chars().count();
        out.push((
            Sentence {
                bytes: (s.bytes.0 + b0, s.bytes.0 + b1),
                chars: (c0, c1),
                para_start: s.para_start && from == 0,
                heading: false,
            },
            tokens,
        ));
    };
    for (w, &(ws, we)) in words.iter().enumerate() {
        // A word alone longer than the limit (a long number, a URL) is kept whole: the
        // embedder truncates it.
        let t = count(&piece[ws..we])?.max(1);
        if w > first && tokens + t > max {
            flush(first, w - 1, tokens, &mut out);
            first = w;
            tokens = 0;
        }
        tokens += t;
    }
    if first < words.len() {
        flush(first, words.len() - 1, tokens, &mut out);
    }
    Ok(out)
}

/// Han characters and the CJK punctuation block: written without spaces between words.
pub(crate) fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3000..=0x303F | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xFF00..=0xFFEF | 0x20000..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rag::ingest::{parse_document, DocKind};

    /// One token per word and per CJK character: easy to reason about in tests.
    fn words(s: &str) -> Result<usize> {
        Ok(s.split_whitespace()
            .map(|w| w.chars().filter(|&c| is_cjk(c)).count().max(1))
            .sum())
    }

    fn doc(text: &str) -> Document {
        parse_document(text.as_bytes(), DocKind::Markdown, "t.md").unwrap()
    }

    #[test]
    fn sentences_end_at_stops_not_at_abbreviations_or_decimals() {
        let text =
            "Revenue rose 4.5% to $1.2 bn. Mr. Smith said U.S. demand held! Was it? Yes. 利润增长。风险提示；完。";
        let s: Vec<&str> = split_sentences(text, 0)
            .iter()
            .map(|s| &text[s.bytes.0..s.bytes.1])
            .collect();
        assert_eq!(
            s,
            [
                "Revenue rose 4.5% to $1.2 bn.",
                "Mr. Smith said U.S. demand held!",
                "Was it?",
                "Yes.",
                "利润增长。",
                "风险提示；",
                "完。"
            ]
        );
    }

    #[test]
    fn chunks_are_exact_spans_within_the_limit() {
        let mut text = String::from("# Report\n\n");
        for p in 0..6 {
            for s in 0..5 {
                text.push_str(&format!("Paragraph {p} sentence {s} has some words in it. "));
            }
            text.push_str("\n\n");
            if p == 2 {
                text.push_str("## Risks\n\n");
            }
        }
        text.push_str("中国人民银行宣布下调存款准备金率。市场反应积极，债券收益率下行。");
        let d = doc(&text);
        let config = ChunkerConfig {
            max_tokens: 30,
            overlap_tokens: 8,
        };
        let pieces = chunk_document(&d, &config, &words).unwrap();
        assert!(pieces.len() > 5);
        let chars: Vec<char> = d.text.chars().collect();
        for p in &pieces {
            assert_eq!(
                p.text,
                chars[p.start..p.end].iter().collect::<String>(),
                "span and text agree"
            );
            assert!(words(&p.text).unwrap() <= 30, "{p:?}");
            assert!(
                p.text.ends_with(['.', '。', '！', '？', '；']) || p.text.starts_with('#'),
                "{:?}",
                p.text
            );
        }
        // Every sentence of the document is in some chunk.
        let mut covered = vec![false; chars.len()];
        for p in &pieces {
            covered[p.start..p.end].iter_mut().for_each(|c| *c = true);
        }
        for (i, c) in chars.iter().enumerate() {
            assert!(covered[i] || c.is_whitespace(), "character {i} {c:?} is in no chunk");
        }
        // The heading starts a chunk and names the chunks below it.
        let risks = pieces
            .iter()
            .position(|p| p.text.starts_with("## Risks"))
            .expect("a chunk starts at the heading");
        assert!(pieces[risks..].iter().all(|p| p.context == "Report › Risks"));
        assert_eq!(pieces[0].context, "Report");
    }

    #[test]
    fn long_sentences_are_cut_at_words() {
        let long: String = (0..100).map(|i| format!("w{i} ")).collect::<String>() + "end.";
        let cjk: String = "长".repeat(70) + "。";
        let d = doc(&format!("{long}\n\n{cjk}"));
        let config = ChunkerConfig {
            max_tokens: 32,
            overlap_tokens: 4,
        };
        let pieces = chunk_document(&d, &config, &words).unwrap();
        assert!(pieces.iter().all(|p| words(&p.text).unwrap() <= 32));
        let joined: String = pieces.iter().map(|p| p.text.replace(' ', "")).collect();
        assert_eq!(joined, d.text.replace([' ', '\n'], ""));
    }
}
