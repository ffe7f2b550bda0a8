#!/usr/bin/env python3
"""Check the retrieval test set tests/data/rag_questions.jsonl against examples/data/.

    python3 scripts/check_rag_questions.py [QUESTIONS.jsonl [DATA_DIR]]

Standard library only; the PDF's text comes from `pdftotext` (poppler-utils). Each document's
text is what the index reads, whitespace made single spaces: .txt/.md as is; .html without its
head, scripts and styles, entities decoded, table cells joined with " | " and headings marked
"# " as the indexer does; .pdf as pdftotext prints it.

Checks: the ids are unique; every line has id, lang ("en" or "zh"), question, source and
evidence; the source is a document of the folder; the evidence is 10-60 characters and occurs
exactly once in its source and nowhere in any other document; at least 48 questions, at least 14
in Chinese, at least 6 for each English document. Evidence in the PDF that straddles a line
break is reported as a warning. Exits 1 on any error.
"""

import html
import html.parser
import json
import pathlib
import subprocess
import sys
from collections import Counter

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUPPORTED = {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".xhtml", ".pdf"}
BLOCK = {
    "p", "div", "section", "article", "header", "footer", "main", "aside", "nav", "ul", "ol", "li",
    "table", "thead", "tbody", "tfoot", "tr", "blockquote", "pre", "figure", "figcaption", "dl", "dt",
    "dd", "hr", "address", "caption", "form", "fieldset", "body", "html", "br",
}
SKIPPED = {"head", "title", "script", "style", "noscript", "template", "svg", "iframe", "object"}


def normalise(text):
    return " ".join(text.split())


class _Html(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.out = []
        self.skip = 0
        self.cells = 0

    def handle_starttag(self, tag, attrs):
        if tag in SKIPPED:
            self.skip += 1
        elif tag in ("td", "th"):
            self.out.append(" | " if self.cells else " ")
            self.cells += 1
        elif len(tag) == 2 and tag[0] == "h" and tag[1].isdigit():
            self.out.append("\n" + "#" * int(tag[1]) + " ")
        elif tag in BLOCK:
            self.out.append("\n")
            self.cells = 0

    def handle_endtag(self, tag):
        if tag in SKIPPED:
            self.skip = max(0, self.skip - 1)
        elif tag in BLOCK or (len(tag) == 2 and tag[0] == "h" and tag[1].isdigit()):
            self.out.append("\n")
            self.cells = 0

    def handle_data(self, data):
        if not self.skip:
            self.out.append(data)

    def handle_entityref(self, name):
        self.handle_data(html.unescape(f"&{name};"))

    def handle_charref(self, name):
        self.handle_data(html.unescape(f"&#{name};"))


def html_text(source):
    parser = _Html()
    parser.feed(source)
    parser.close()
    return "".join(parser.out)


def pdf_text(path, *args):
    try:
        out = subprocess.run(["pdftotext", *args, str(path), "-"], check=True, capture_output=True)
    except FileNotFoundError:
        sys.exit("pdftotext is needed for the PDF (Debian/Ubuntu: apt-get install poppler-utils)")
    return out.stdout.decode("utf-8")


def read_documents(data):
    """Source name -> (normalised text, raw lines for PDFs or None)."""
    docs = {}
    for path in sorted(data.rglob("*")):
        rel = path.relative_to(data)
        if not path.is_file() or any(p.startswith(".") for p in rel.parts) or str(rel) == "metadata.toml":
            continue
        if path.suffix.lower() not in SUPPORTED:
            continue
        name = rel.as_posix()
        suffix = path.suffix.lower()
        if suffix == ".pdf":
            raw = pdf_text(path)
            docs[name] = (normalise(raw), [normalise(l) for l in raw.splitlines()])
        elif suffix in (".html", ".htm", ".xhtml"):
            docs[name] = (normalise(html_text(path.read_text(encoding="utf-8"))), None)
        else:
            docs[name] = (normalise(path.read_text(encoding="utf-8-sig")), None)
    return docs


def main(argv):
    questions_path = pathlib.Path(argv[0]) if argv else ROOT / "tests" / "data" / "rag_questions.jsonl"
    data = pathlib.Path(argv[1]) if len(argv) > 1 else ROOT / "examples" / "data"
    docs = read_documents(data)
    errors, warnings = [], []
    questions = []
    for n, line in enumerate(questions_path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            errors.append(f"line {n}: not JSON: {e}")
            continue
        missing = {"id", "lang", "question", "source", "evidence"} - set(q)
        if missing:
            errors.append(f"line {n}: missing {sorted(missing)}")
            continue
        questions.append(q)

    ids = Counter(q["id"] for q in questions)
    errors += [f"id {i!r} is used {c} times" for i, c in ids.items() if c > 1]
    for q in questions:
        qid, source, evidence = q["id"], q["source"], q["evidence"]
        if q["lang"] not in ("en", "zh"):
            errors.append(f"{qid}: lang {q['lang']!r} is not en or zh")
        if not q["question"].strip():
            errors.append(f"{qid}: empty question")
        if source not in docs:
            errors.append(f"{qid}: source {source!r} is not a document of {data}")
            continue
        if not 10 <= len(evidence) <= 60:
            errors.append(f"{qid}: evidence is {len(evidence)} characters (10-60): {evidence!r}")
        if evidence != normalise(evidence):
            errors.append(f"{qid}: evidence has leading, trailing or repeated whitespace: {evidence!r}")
        for name, (text, _) in docs.items():
            count = text.count(evidence)
            if name == source and count != 1:
                errors.append(f"{qid}: evidence occurs {count} times in its source {name}: {evidence!r}")
            elif name != source and count:
                errors.append(f"{qid}: evidence also occurs in {name}: {evidence!r}")
        lines = docs[source][1]
        if lines is not None and not any(evidence in l for l in lines):
            warnings.append(f"{qid}: evidence straddles a line break of the PDF: {evidence!r}")

    per_source = Counter(q["source"] for q in questions if q["source"] in docs)
    zh = [q for q in questions if q["lang"] == "zh"]
    if len(questions) < 48:
        errors.append(f"{len(questions)} questions, at least 48 wanted")
    if len(zh) < 14:
        errors.append(f"{len(zh)} Chinese questions, at least 14 wanted")
    zh_sources = {q["source"] for q in zh}
    for name in docs:
        if name not in zh_sources and per_source[name] < 6:
            errors.append(f"{name}: {per_source[name]} questions, at least 6 wanted")

    print(f"{len(questions)} questions ({len(questions) - len(zh)} en, {len(zh)} zh) over {len(docs)} documents:")
    for name, (text, _) in docs.items():
        print(f"  {per_source[name]:3} {name} ({len(text)} characters of text)")
    for w in warnings:
        print(f"warning: {w}")
    for e in errors:
        print(f"error: {e}")
    if errors:
        print(f"FAILED: {len(errors)} errors")
        return 1
    print("OK: every evidence occurs exactly once, in its own source")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
