#!/usr/bin/env python3
"""Write the sample PDF of examples/data/ from its plain-text source, with the standard library only.

    python3 scripts/make_sample_pdf.py [SOURCE.txt [OUT.pdf]] [--check]

Defaults: examples/data-src/harbor_global_income_fund_risk_disclosure.txt ->
examples/data/harbor_global_income_fund_risk_disclosure.pdf. (The source sits outside
examples/data/ because every file in that folder, recursively, is indexed as a document.)

Source format (ASCII only): paragraphs separated by blank lines; a paragraph starting with "# " is
the title, one starting with "## " a section heading; the lines of a paragraph are joined with
spaces and re-wrapped to the page.

Output: a PDF 1.4 on A4 paper: catalog, page tree, one page object and one uncompressed content
stream per page (BT/ET, Tf, Td, TL, T*, Tj), the standard Helvetica and Helvetica-Bold fonts with
WinAnsiEncoding, an Info dictionary without dates, a cross-reference table with the byte offset of
every object, and a trailer. Each page has the footer "Page N of M". The same source always gives
the same bytes.

With --check, the text that pdftotext (poppler-utils) extracts, with and without -layout, is
compared word for word with the source and the page footers.
"""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_SRC = ROOT / "examples" / "data-src" / "harbor_global_income_fund_risk_disclosure.txt"
DEFAULT_OUT = ROOT / "examples" / "data" / "harbor_global_income_fund_risk_disclosure.pdf"

# A4 in points, margins and styles.
PAGE_W, PAGE_H = 595, 842
LEFT, RIGHT = 80, 80
TOP_BASELINE = PAGE_H - 72  # baseline of the first line on a page
BOTTOM = 72  # no text line below this baseline
FOOTER_Y = 40
TEXT_W = PAGE_W - LEFT - RIGHT

# font resource name, size, line height, space above a paragraph of this style
STYLES = {
    "title": ("F2", 15, 20, 0),
    "heading": ("F2", 12, 16, 14),
    "body": ("F1", 10, 14, 14),
}
FOOTER_FONT, FOOTER_SIZE = "F1", 9

# Advance widths (1/1000 em) of the character codes 32..126 in the standard fonts (Adobe AFM).
HELVETICA = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
    611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
    222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
]
HELVETICA_BOLD = [
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
    556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611, 975, 722, 722, 722, 722, 667,
    611, 778, 722, 278, 556, 722, 611, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
    667, 611, 333, 278, 333, 584, 556, 333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556,
    278, 889, 611, 611, 611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
]
FONTS = {"F1": ("Helvetica", HELVETICA), "F2": ("Helvetica-Bold", HELVETICA_BOLD)}


def text_width(text, font, size):
    widths = FONTS[font][1]
    return sum(widths[ord(c) - 32] for c in text) * size / 1000.0


def read_paragraphs(path):
    """(style, text) for each paragraph of the source."""
    raw = path.read_text(encoding="utf-8")
    for i, c in enumerate(raw):
        if c != "\n" and not (32 <= ord(c) <= 126):
            line = raw.count("\n", 0, i) + 1
            sys.exit(f"{path}:{line}: character {c!r} is not printable ASCII")
    paragraphs = []
    for block in raw.split("\n\n"):
        text = " ".join(block.split())
        if not text:
            continue
        if text.startswith("# "):
            paragraphs.append(("title", text[2:]))
        elif text.startswith("## "):
            paragraphs.append(("heading", text[3:]))
        else:
            paragraphs.append(("body", text))
    return paragraphs


def wrap(text, font, size, width):
    """Greedy wrapping at spaces only. A line never ends with a word that ends in '-' (text
    extractors would join it with the next line as a hyphenated word)."""
    words = text.split(" ")
    lines, line = [], []
    for word in words:
        if text_width(word, font, size) > width:
            sys.exit(f"word too long for a line: {word!r}")
        if line and text_width(" ".join(line + [word]), font, size) > width:
            carried = []
            while len(line) > 1 and line[-1].endswith("-"):
                carried.insert(0, line.pop())
            lines.append(line)
            line = carried
        line.append(word)
    if line:
        lines.append(line)
    out = [" ".join(l) for l in lines]
    for l in out[:-1]:
        if l.endswith("-"):
            sys.exit(f"cannot avoid a line ending in '-': {l!r}")
    return out


def paginate(paragraphs):
    """Pages as lists of (font, size, y, text) lines."""
    pages, page = [], []
    y = None  # baseline of the last line placed on the current page

    def new_page():
        nonlocal page, y
        if page:
            pages.append(page)
        page, y = [], None

    for index, (style, text) in enumerate(paragraphs):
        font, size, leading, space_above = STYLES[style]
        lines = wrap(text, font, size, TEXT_W)
        # A heading needs its own lines plus two lines of what follows on the same page.
        keep = len(lines) + (2 if style in ("title", "heading") and index + 1 < len(paragraphs) else 0)
        first_y = TOP_BASELINE if y is None else y - leading - space_above
        if y is not None and first_y - (keep - 1) * leading < BOTTOM:
            # Split a long body paragraph across pages when at least two lines fit here.
            room = int((first_y - BOTTOM) // leading) + 1 if first_y >= BOTTOM else 0
            if style == "body" and room >= 2 and len(lines) - room >= 2:
                for i in range(room):
                    page.append((font, size, first_y - i * leading, lines[i]))
                lines = lines[room:]
            new_page()
            first_y = TOP_BASELINE
        for i, line in enumerate(lines):
            ly = first_y - i * leading
            if ly < BOTTOM:  # a paragraph longer than a page
                new_page()
                first_y, ly = TOP_BASELINE + i * leading, TOP_BASELINE
            page.append((font, size, ly, line))
            y = ly
        y = page[-1][2] if page else None
    new_page()
    return pages


def pdf_string(text):
    return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"


def num(x):
    s = f"{x:.2f}".rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def content_stream(lines, number, total):
    ops = ["BT"]
    font = size = leading = None
    prev_y = None
    for f, s, y, text in lines:
        if (f, s) != (font, size):
            ops.append(f"/{f} {num(s)} Tf")
            font, size = f, s
        if prev_y is None:
            ops.append(f"{num(LEFT)} {num(y)} Td")
        else:
            step = prev_y - y
            if step != leading:
                ops.append(f"{num(step)} TL")
                leading = step
            ops.append("T*")
        ops.append(f"{pdf_string(text)} Tj")
        prev_y = y
    ops.append("ET")
    footer = f"Page {number} of {total}"
    x = (PAGE_W - text_width(footer, FOOTER_FONT, FOOTER_SIZE)) / 2
    ops += ["BT", f"/{FOOTER_FONT} {num(FOOTER_SIZE)} Tf", f"{num(x)} {num(FOOTER_Y)} Td", f"{pdf_string(footer)} Tj", "ET"]
    return ("\n".join(ops) + "\n").encode("latin-1")


def build_pdf(pages, title):
    objects = []  # bytes of objects 1..n

    def add(body):
        objects.append(body)
        return len(objects)

    catalog = add(None)  # 1, filled in below
    tree = add(None)  # 2
    f1 = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    f2 = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>")
    info = add(
        f"<< /Title {pdf_string(title)} /Producer (finllm scripts/make_sample_pdf.py) >>".encode("latin-1")
    )
    kids = []
    for n, lines in enumerate(pages, 1):
        stream = content_stream(lines, n, len(pages))
        contents = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream")
        page = add(
            (
                f"<< /Type /Page /Parent {tree} 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] "
                f"/Resources << /Font << /F1 {f1} 0 R /F2 {f2} 0 R >> /ProcSet [/PDF /Text] >> "
                f"/Contents {contents} 0 R >>"
            ).encode("latin-1")
        )
        kids.append(page)
    objects[catalog - 1] = f"<< /Type /Catalog /Pages {tree} 0 R >>".encode("latin-1")
    objects[tree - 1] = (
        f"<< /Type /Pages /Kids [{' '.join(f'{k} 0 R' for k in kids)}] /Count {len(kids)} "
        f"/MediaBox [0 0 {PAGE_W} {PAGE_H}] >>"
    ).encode("latin-1")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\n" % (len(objects) + 1, catalog, info)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def check(pdf_path, paragraphs, pages):
    """pdftotext's words, with and without -layout, are the source's and the footers, in order."""
    want = []
    for n, lines in enumerate(pages, 1):
        for _, _, _, text in lines:
            want += text.split()
        want += f"Page {n} of {len(pages)}".split()
    source_words = [w for _, text in paragraphs for w in text.split()]
    body_words = [w for lines in pages for _, _, _, text in lines for w in text.split()]
    assert body_words == source_words, "the pages do not hold the source text"
    for args in ([], ["-layout"]):
        out = subprocess.run(["pdftotext", *args, str(pdf_path), "-"], check=True, capture_output=True, text=True)
        got = out.stdout.split()
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            sys.exit(f"pdftotext {' '.join(args)}: differs at word {at}: {got[at:at + 8]} != {want[at:at + 8]}")
        if out.stdout.count("\f") != len(pages):
            sys.exit(f"pdftotext {' '.join(args)}: {out.stdout.count(chr(12))} pages, expected {len(pages)}")
    print(f"check: pdftotext (plain and -layout) gives the {len(want)} words of the source and footers, {len(pages)} pages")


def main(argv):
    run_check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    src = pathlib.Path(args[0]) if args else DEFAULT_SRC
    out = pathlib.Path(args[1]) if len(args) > 1 else DEFAULT_OUT
    paragraphs = read_paragraphs(src)
    pages = paginate(paragraphs)
    title = next((t for s, t in paragraphs if s == "title"), src.stem)
    pdf = build_pdf(pages, title)
    out.write_bytes(pdf)
    print(f"wrote {out} ({len(pdf)} bytes, {len(pages)} pages)")
    if run_check:
        check(out, paragraphs, pages)


if __name__ == "__main__":
    main(sys.argv[1:])
