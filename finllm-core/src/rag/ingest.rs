//! Reading documents as text: plain text, Markdown, HTML and PDF (the text layer).
//!
//! A [`Document`] is the text a reader would see, with the character span of every page. Plain
//! text and Markdown are the file itself (a byte-order mark dropped, line ends made `\n`), so
//! spans point into the file. HTML loses its tags, scripts and styles, keeps its block structure
//! as blank lines, and turns headings into Markdown headings (`# `) so the chunker sees sections.
//! PDF is read page by page with `pdf-extract`; a file it cannot read, or a hostile one that
//! makes it fail, is a typed [`Error::Document`], never a panic.

use std::path::Path;

use crate::error::{Error, Result};

/// Files larger than this are refused before they are read.
pub const MAX_DOCUMENT_BYTES: u64 = 64 << 20;

/// How a document is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Text,
    Markdown,
    Html,
    Pdf,
}

impl DocKind {
    /// The kind a file name implies (`.txt`, `.md`, `.html`, `.pdf` and their variants).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" => Self::Text,
            "md" | "markdown" => Self::Markdown,
            "html" | "htm" | "xhtml" => Self::Html,
            "pdf" => Self::Pdf,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Html => "html",
            Self::Pdf => "pdf",
        }
    }
}

/// One page of a document: its number (from 1) and its span of the text, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub number: u32,
    pub start: usize,
    pub end: usize,
}

/// A document's text and pages.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub kind: DocKind,
    pub text: String,
    /// Pages in order, covering the text (one page for everything but PDF).
    pub pages: Vec<Page>,
    /// The title: an HTML `<title>`, the first heading or line otherwise.
    pub title: String,
}

fn doc_error(source: &str, reason: impl Into<String>) -> Error {
    Error::Document {
        name: source.to_string(),
        reason: reason.into(),
    }
}

/// Read the file at `path` (named `source` in errors and chunks) as a document of the kind its
/// extension implies.
pub fn read_document(path: &Path, source: &str) -> Result<Document> {
    let kind = DocKind::from_path(path)
        .ok_or_else(|| doc_error(source, "unsupported file type (expected .txt, .md, .html or .pdf)"))?;
    let io = |e: std::io::Error| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_DOCUMENT_BYTES {
        return Err(doc_error(
            source,
            format!("{len} bytes, more than the {MAX_DOCUMENT_BYTES} allowed"),
        ));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse_document(&bytes, kind, source)
}

/// Read `bytes` as a document of `kind`.
pub fn parse_document(bytes: &[u8], kind: DocKind, source: &str) -> Result<Document> {
    if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
        return Err(doc_error(source, "larger than the 64 MiB allowed"));
    }
    let doc = match kind {
        DocKind::Text | DocKind::Markdown => {
            let text = utf8(bytes, source)?;
            single_page(kind, normalise_lines(text))
        }
        DocKind::Html => {
            let html = utf8(bytes, source)?;
            let (text, title) = html_to_text(html);
            let mut doc = single_page(kind, text);
            if !title.is_empty() {
                doc.title = title;
            }
            doc
        }
        DocKind::Pdf => pdf_document(bytes, source)?,
    };
    Ok(doc)
}

fn utf8<'a>(bytes: &'a [u8], source: &str) -> Result<&'a str> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| doc_error(source, format!("not valid UTF-8 (byte {})", e.valid_up_to())))?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn normalise_lines(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

fn single_page(kind: DocKind, text: String) -> Document {
    let chars = text.chars().count();
    let title = first_title(&text);
    Document {
        kind,
        pages: vec![Page {
            number: 1,
            start: 0,
            end: chars,
        }],
        text,
        title,
    }
}

/// The first heading, or the first non-empty line, at most 120 characters.
fn first_title(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('#'))
        .or_else(|| text.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("");
    line.trim_start_matches('#').trim().chars().take(120).collect()
}

fn pdf_document(bytes: &[u8], source: &str) -> Result<Document> {
    // pdf-extract unwraps inside on some malformed files: a panic there becomes this document's
    // error, not the caller's crash.
    let pages = std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem_by_pages(bytes))
        .map_err(|_| doc_error(source, "the PDF reader failed on this file (malformed PDF)"))?
        .map_err(|e| doc_error(source, format!("not a readable PDF: {e}")))?;
    if pages.is_empty() {
        return Err(doc_error(source, "the PDF has no pages"));
    }
    let mut text = String::new();
    let mut spans = Vec::with_capacity(pages.len());
    let mut at = 0;
    for (i, page) in pages.iter().enumerate() {
        if i > 0 {
            text.push_str("\n\n");
            at += 2;
        }
        let page = clean_pdf_page(page);
        let n = page.chars().count();
        spans.push(Page {
            number: i as u32 + 1,
            start: at,
            end: at + n,
        });
        text.push_str(&page);
        at += n;
    }
    if text.trim().is_empty() {
        return Err(doc_error(
            source,
            "the PDF has no text layer (a scanned document needs OCR first)",
        ));
    }
    let title = first_title(&text);
    Ok(Document {
        kind: DocKind::Pdf,
        text,
        pages: spans,
        title,
    })
}

/// Trailing spaces off every line, runs of blank lines made one, no form feeds.
fn clean_pdf_page(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    let mut blank = 0;
    for line in normalise_lines(page).replace('\u{c}', "\n").lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank > 0 { "\n\n" } else { "\n" });
        }
        blank = 0;
        out.push_str(line);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTML

const BLOCK_TAGS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "aside",
    "nav",
    "ul",
    "ol",
    "li",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "blockquote",
    "pre",
    "figure",
    "figcaption",
    "dl",
    "dt",
    "dd",
    "hr",
    "address",
    "caption",
    "form",
    "fieldset",
    "body",
    "html",
];
const SKIPPED_TAGS: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "head", "iframe", "object",
];

/// The visible text of an HTML page and its `<title>`. Linear in the input, whatever it holds.
pub fn html_to_text(html: &str) -> (String, String) {
    let mut out = HtmlText::default();
    let mut title = String::new();
    let bytes = html.as_bytes();
    let mut i = 0;
    let mut text_start = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        out.text(&html[text_start..i]);
        // A comment, a declaration or processing instruction, or a tag.
        if html[i..].starts_with("<!--") {
            i = html[i + 4..].find("-->").map_or(bytes.len(), |e| i + 4 + e + 3);
            text_start = i;
            continue;
        }
        let Some(close) = html[i..].find('>') else {
            // An unterminated tag: the rest is not text.
            text_start = bytes.len();
            break;
        };
        let tag = &html[i + 1..i + close];
        i += close + 1;
        text_start = i;
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let closing = tag.starts_with('/');
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        if !closing && (SKIPPED_TAGS.contains(&name.as_str()) || name == "title") && !tag.ends_with('/') {
            // Skip to the matching end tag; keep the title's text.
            let end_tag = format!("</{name}");
            let lower_rest = html[i..].to_ascii_lowercase();
            let end = lower_rest.find(&end_tag).map_or(bytes.len(), |e| i + e);
            if name == "title" {
                title = collapse_spaces(&decode_entities(&html[i..end])).trim().to_string();
            } else if name == "head" {
                // The title lives in the head.
                let head = &html[i..end];
                if let Some(t) = head.to_ascii_lowercase().find("<title") {
                    let after = head[t..].find('>').map_or(head.len(), |g| t + g + 1);
                    let stop = head[after..]
                        .to_ascii_lowercase()
                        .find("</title")
                        .map_or(head.len(), |e| after + e);
                    title = collapse_spaces(&decode_entities(&head[after..stop])).trim().to_string();
                }
            }
            i = html[end..].find('>').map_or(bytes.len(), |g| end + g + 1);
            text_start = i;
            continue;
        }
        match name.as_str() {
            "br" => out.line_break(),
            "td" | "th" if !closing => out.cell(),
            h if h.len() == 2 && h.starts_with('h') && h.as_bytes()[1].is_ascii_digit() => {
                out.block();
                if !closing {
                    let level = (h.as_bytes()[1] - b'0').clamp(1, 6) as usize;
                    out.heading(level);
                }
            }
            n if BLOCK_TAGS.contains(&n) => out.block(),
            _ => {}
        }
    }
    out.text(&html[text_start.min(bytes.len())..]);
    (out.finish(), title)
}

#[derive(Default)]
struct HtmlText {
    out: String,
    /// A blank line (2) or a line break (1) is due before the next text.
    pending: u8,
    /// A space is due before the next text.
    space: bool,
    /// The current line has text.
    line_has_text: bool,
    /// The current line is a table row with a cell already.
    cells: usize,
}

impl HtmlText {
    fn text(&mut self, raw: &str) {
        if raw.is_empty() {
            return;
        }
        let decoded = decode_entities(raw);
        let leading = decoded.starts_with(|c: char| c.is_whitespace());
        let trailing = decoded.ends_with(|c: char| c.is_whitespace());
        let words = collapse_spaces(&decoded);
        let words = words.trim();
        if words.is_empty() {
            self.space |= leading || trailing;
            return;
        }
        if self.pending > 0 && !self.out.is_empty() {
            self.out.push_str(if self.pending >= 2 { "\n\n" } else { "\n" });
            self.line_has_text = false;
            self.space = false;
        }
        self.pending = 0;
        if self.line_has_text && (self.space || leading) {
            self.out.push(' ');
        }
        self.out.push_str(words);
        self.line_has_text = true;
        self.space = trailing;
    }

    fn block(&mut self) {
        self.pending = 2;
        self.cells = 0;
    }

    fn line_break(&mut self) {
        self.pending = self.pending.max(1);
    }

    fn heading(&mut self, level: usize) {
        self.text_marker(&"#".repeat(level));
    }

    fn cell(&mut self) {
        if self.cells > 0 {
            self.text_marker("|");
        }
        self.cells += 1;
    }

    /// Markup that stands for structure (a heading's `#`, a cell's `|`), followed by a space.
    fn text_marker(&mut self, marker: &str) {
        self.space = true;
        self.text(marker);
        self.space = true;
    }

    fn finish(self) -> String {
        self.out
    }
}

fn collapse_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for c in s.chars() {
        if c.is_whitespace() && c != '\u{a0}' {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(if c == '\u{a0}' { ' ' } else { c });
        }
    }
    if space {
        out.push(' ');
    }
    out
}

/// Decode character references: numeric ones and the named ones financial pages use.
pub fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| c == ';' || c == '&' || c.is_whitespace())
            .map(|e| e + 1);
        let decoded = match end {
            Some(e) if rest.as_bytes()[e] == b';' && e <= 12 => entity(&rest[1..e]).map(|c| (c, e + 1)),
            _ => None,
        };
        match decoded {
            Some((c, len)) => {
                out.push(c);
                rest = &rest[len..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn entity(name: &str) -> Option<char> {
    if let Some(num) = name.strip_prefix('#') {
        let code = match num.strip_prefix(['x', 'X']) {
            Some(hex) => u32::from_str_radix(hex, 16).ok()?,
            None => num.parse().ok()?,
        };
        return Some(char::from_u32(code).filter(|&c| c != '\0').unwrap_or('\u{fffd}'));
    }
    Some(match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "nbsp" => '\u{a0}',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "mdash" => '—',
        "ndash" => '–',
        "hellip" => '…',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "middot" => '·',
        "bull" => '•',
        "times" => '×',
        "divide" => '÷',
        "plusmn" => '±',
        "deg" => '°',
        "sect" => '§',
        "para" => '¶',
        "minus" => '−',
        "permil" => '‰',
        "frac12" => '½',
        "frac14" => '¼',
        "frac34" => '¾',
        "le" => '≤',
        "ge" => '≥',
        "asymp" => '≈',
        "dagger" => '†',
        "shy" => '\u{ad}',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_keeps_visible_text_blocks_and_headings() {
        let html = "<html><head><title>Q3 &amp; outlook</title><style>p{color:red}</style>\
            <script>var x = '<p>not text</p>';</script></head><body><h1>Results</h1>\
            <p>Revenue rose <b>12%</b> to &euro;1.2&nbsp;bn.</p><!-- hidden <p>x</p> -->\
            <table><tr><th>Item</th><th>Q3</th></tr><tr><td>NIM</td><td>2.1%</td></tr></table>\
            <p>Line one<br>line two &#8212; &#x4e2d;</p></body></html>";
        let (text, title) = html_to_text(html);
        assert_eq!(title, "Q3 & outlook");
        assert_eq!(
            text,
            "# Results\n\nRevenue rose 12% to €1.2 bn.\n\nItem | Q3\n\nNIM | 2.1%\n\nLine one\nline two — 中"
        );
    }

    #[test]
    fn broken_html_is_still_text_not_an_error() {
        for html in [
            "<p>open",
            "a < b and c > d",
            "<",
            "&",
            "&#xffffffff;",
            "<!-- never closed",
            "<script>x",
        ] {
            let (text, _) = html_to_text(html);
            assert!(!text.contains("script"), "{html:?} -> {text:?}");
        }
        assert_eq!(html_to_text("a &bogus; &amp b").0, "a &bogus; &amp b");
    }

    #[test]
    fn text_documents_are_the_file_itself() {
        let doc = parse_document(
            "\u{feff}# Title\r\n\r\nBody 中文.".as_bytes(),
            DocKind::Markdown,
            "a.md",
        )
        .unwrap();
        assert_eq!(doc.text, "# Title\n\nBody 中文.");
        assert_eq!(doc.title, "Title");
        assert_eq!(
            doc.pages,
            [Page {
                number: 1,
                start: 0,
                end: doc.text.chars().count()
            }]
        );
        let err = parse_document(b"ok \xff bad", DocKind::Text, "b.txt").unwrap_err();
        assert!(matches!(err, Error::Document { .. }), "{err}");
    }

    #[test]
    fn hostile_pdfs_are_typed_errors() {
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"%PDF-1.4\n".to_vec(),
            b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF".to_vec(),
            b"not a pdf at all".to_vec(),
        ];
        cases.push([b"%PDF-1.7\n".as_slice(), &[0xff; 300]].concat());
        for bytes in cases {
            let err = parse_document(&bytes, DocKind::Pdf, "x.pdf").unwrap_err();
            assert!(matches!(err, Error::Document { .. }), "{err}");
        }
    }
}
