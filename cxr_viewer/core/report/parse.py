"""Report text -> sections -> sentences.

Radiology reports arrive pasted from a RIS, typed by hand, or carried by the study
(DICOM SR / text). They use a handful of headers (FINDINGS:, IMPRESSION:, ...),
numbered impression lists, decimals ("1.5 cm") and abbreviations ("Dr.") that a
naive ``split('.')`` breaks. Each sentence keeps its character span so the viewer
can highlight it in the original text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Report", "Section", "Sentence", "parse_report", "split_sentences", "SECTION_NAMES"]

#: Canonical section names, in the order a report usually gives them.
SECTION_NAMES = ("indication", "technique", "comparison", "findings", "impression", "free_text")

# Header words (lower case, spaces normalised) -> canonical section.
_HEADERS: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "report": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "opinion": "impression",
    "summary": "impression",
    "comparison": "comparison",
    "comparisons": "comparison",
    "prior": "comparison",
    "prior studies": "comparison",
    "indication": "indication",
    "indications": "indication",
    "history": "indication",
    "clinical history": "indication",
    "clinical indication": "indication",
    "clinical information": "indication",
    "clinical details": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "reason for study": "indication",
    "technique": "technique",
    "exam": "technique",
    "examination": "technique",
    "procedure": "technique",
    "views": "technique",
    "date": "technique",
}

# A header is a known word group followed by a colon, at the start of the text, of a
# line, or after a sentence end / whitespace (IU reports run headers inline).
_HEADER_RE = re.compile(
    r"(?:^|(?<=[\s.;]))(" + "|".join(sorted((re.escape(h).replace(r"\ ", r"\s+") for h in _HEADERS), key=len, reverse=True)) + r")\s*:",
    re.IGNORECASE | re.MULTILINE,
)

# Tokens ending in a dot that do not end a sentence.
_ABBREVIATIONS = {
    "dr", "mr", "mrs", "ms", "prof", "st", "vs", "approx", "appr", "e.g", "i.e", "eg", "ie", "etc",
    "a.m", "p.m", "am", "pm", "no", "fig", "cf", "resp", "incl", "cm", "mm",
}
# "No." and "cm." are abbreviations only in some positions; see _is_abbreviation.
_SOFT_ABBREVIATIONS = {"no", "cm", "mm", "am", "pm", "etc"}

_LIST_MARKER_RE = re.compile(r"^\s*(?:\(?\d{1,2}[.)]|[-*\u2022])\s+")


@dataclass(frozen=True)
class Sentence:
    """One sentence: ``text`` without list markers; ``start``/``end`` index the original report."""

    text: str
    section: str
    start: int
    end: int
    index: int = 0  # position in the whole report


@dataclass(frozen=True)
class Section:
    name: str  # one of SECTION_NAMES
    header: str | None  # the header as written, or None for text before any header
    text: str
    start: int
    sentences: tuple[Sentence, ...] = ()


@dataclass(frozen=True)
class Report:
    text: str
    sections: tuple[Section, ...] = field(default_factory=tuple)

    @property
    def sentences(self) -> list[Sentence]:
        return [s for sec in self.sections for s in sec.sentences]

    def section(self, name: str) -> list[Section]:
        return [s for s in self.sections if s.name == name]

    def finding_sentences(self) -> list[Sentence]:
        """Sentences a radiologist would want drawn: FINDINGS and IMPRESSION, else free text.

        Indication, technique and comparison sentences describe the request and the
        exam, not the image, so they are left out when the report has real sections.
        """
        wanted = [s for s in self.sentences if s.section in ("findings", "impression")]
        if wanted:
            return wanted
        return [s for s in self.sentences if s.section == "free_text"]


def _is_abbreviation(text: str, dot: int) -> bool:
    """True if the '.' at ``dot`` closes an abbreviation or a list number rather than a sentence."""
    m = re.search(r"([A-Za-z]+(?:\.[A-Za-z]+)*|\d+)$", text[:dot])
    if not m:
        return False
    word = m.group(1)
    before = text[: m.start()]
    if word.isdigit():
        # "1." at the start of a list item ("... process. 2. Mild ...") or of the text.
        return len(word) <= 2 and (before.strip() == "" or re.search(r"[.:;\n]\s*$", before) is not None)
    low = word.lower()
    if low not in _ABBREVIATIONS:
        return len(word) == 1 and word.isupper() and re.match(r"\s+[A-Z]", text[dot + 1 :]) is not None  # initials "J. Smith"
    if low in _SOFT_ABBREVIATIONS:
        # "No." is an abbreviation only before a number ("No. 5"); "4 cm." ends a sentence
        # unless the next word is lower case.
        after = text[dot + 1 :]
        if low == "no":
            return re.match(r"\s*\d", after) is not None
        return re.match(r"\s+[a-z]", after) is not None
    return True


def split_sentences(text: str, offset: int = 0, section: str = "free_text") -> list[Sentence]:
    """Split ``text`` into sentences, keeping spans relative to ``offset``.

    Handles decimals ("1.5 cm"), abbreviations ("Dr. X"), numbered lists ("1. ... 2. ..."),
    a missing space after a full stop ("effusion.In the left ...") and line breaks
    between list items.
    """
    out: list[Sentence] = []
    n = len(text)
    start = 0
    i = 0

    def emit(a: int, b: int) -> None:
        chunk = text[a:b]
        lead = len(chunk) - len(chunk.lstrip())
        a += lead
        chunk = chunk.strip()
        m = _LIST_MARKER_RE.match(chunk)
        if m:
            a += m.end()
            chunk = chunk[m.end() :]
        chunk = chunk.strip()
        # drop stray punctuation-only pieces ("." after "limits..")
        if chunk and re.search(r"[A-Za-z0-9]", chunk):
            out.append(Sentence(text=chunk, section=section, start=offset + a, end=offset + a + len(chunk)))

    while i < n:
        ch = text[i]
        if ch in ".!?":
            j = i
            while j + 1 < n and text[j + 1] in ".!?":
                j += 1
            nxt = text[j + 1] if j + 1 < n else ""
            if ch == "." and j == i and _is_abbreviation(text, i):
                i += 1
                continue
            if nxt == "" or nxt.isspace():
                emit(start, j + 1)
                start = j + 1
            elif nxt.isupper() and i > 0 and (text[i - 1].islower() or text[i - 1] in ")X"):
                # "effusion.In the left" - a typed sentence end without a space
                emit(start, j + 1)
                start = j + 1
            elif nxt.isdigit() and re.match(r"\d{1,2}\.\s", text[j + 1 :]) and not text[i - 1].isdigit():
                # "effusion.1. Round area" - a list starts right after a full stop
                emit(start, j + 1)
                start = j + 1
            i = j + 1
            continue
        if ch == "\n":
            # a line break ends a sentence when the next line starts a list item or the
            # current line is itself a list item / heading-like line
            rest = text[i + 1 :]
            line = text[start:i]
            if _LIST_MARKER_RE.match(rest) or (line.strip() and _LIST_MARKER_RE.match(line)) or re.match(r"\s*\n", rest):
                emit(start, i)
                start = i + 1
        elif ch == ";" and re.match(r"\s*\n", text[i + 1 :]):
            emit(start, i + 1)
            start = i + 1
        i += 1
    emit(start, n)
    return out


def parse_report(text: str) -> Report:
    """Split a free-text report into canonical sections and sentences.

    Text before the first recognised header is ``free_text``; a report with no
    headers at all is one ``free_text`` section. Repeated headers (IU reports repeat
    IMPRESSION inside IMPRESSION) give repeated sections, in order.
    """
    if text is None:
        text = ""
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    headers = list(_HEADER_RE.finditer(text))
    spans: list[tuple[str, str | None, int, int]] = []
    pos = 0
    name: str = "free_text"
    header: str | None = None
    for m in headers:
        if m.start() > pos or header is not None:
            spans.append((name, header, pos, m.start()))
        key = re.sub(r"\s+", " ", m.group(1).lower())
        name, header, pos = _HEADERS[key], m.group(1), m.end()
    spans.append((name, header, pos, len(text)))

    sections: list[Section] = []
    index = 0
    for name, header, a, b in spans:
        body = text[a:b]
        if not body.strip() and header is None:
            continue
        sents = []
        for s in split_sentences(body, offset=a, section=name):
            sents.append(Sentence(text=s.text, section=name, start=s.start, end=s.end, index=index))
            index += 1
        sections.append(Section(name=name, header=header, text=body.strip(), start=a, sentences=tuple(sents)))
    return Report(text=text, sections=tuple(sections))
