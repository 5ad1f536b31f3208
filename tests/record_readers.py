"""Reading a film's findings back from what each surface wrote: the PDF text, the SR content tree.

Used by the tests that check every surface shows the one judged result (tests/qt/test_every_surface.py,
tests/qt/test_clinical_record.py). Each reader returns what a reader of that surface sees: the
state as text or code, the score as printed or stored.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from cxr_viewer.core.judging import STATE_TEXT
from tests.core.dicom_check import need_tool

_STATES = sorted(STATE_TEXT.values(), key=len, reverse=True)
_ROW = re.compile(r"^\s*(?P<name>\S.*?)\s{2,}(?P<model>\S+)\s+(?P<score>n/a|\d+\.\d+)\s+(?P<threshold>\d+\.\d+)"
                  r"(?:\s*\S*)\s+(?P<rest>.*)$")


def pdf_text(path: Path) -> str:
    exe = need_tool("pdftotext", "poppler-utils")
    return subprocess.run([exe, "-layout", str(path), "-"], capture_output=True, text=True, check=True).stdout


def pdf_states(text: str) -> dict[str, str]:
    """Finding display name -> the state text printed on its row."""
    return {name: state for name, (state, _score, _thr) in pdf_rows(text).items()}


def pdf_rows(text: str) -> dict[str, tuple[str, float | None, float]]:
    """Finding display name -> (state text, score as printed or None for n/a, threshold as printed)."""
    out = {}
    for line in text.splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        state = next((s for s in _STATES if re.search(r"(^|\s)" + re.escape(s) + r"(\s|$)", m.group("rest"))), None)
        if state is None:
            continue
        score = None if m.group("score") == "n/a" else float(m.group("score"))
        out[m.group("name").strip()] = (state, score, float(m.group("threshold")))
    return out


def sr_states(sr: Path) -> dict[str, str]:
    """Finding concept meaning -> the coded state value of its group."""
    return {name: state for name, (state, _score, _presence) in sr_findings(sr).items()}


def sr_findings(sr: Path) -> dict[str, tuple[str, float | None, str]]:
    """Finding concept meaning -> (coded state value, stored probability or None, presence: Present, Absent or
    Indeterminate) of each finding's group (the SR file read back with highdicom)."""
    import highdicom as hd

    doc = hd.sr.srread(sr)
    out = {}
    for g in doc.content.get_image_measurement_groups():
        ev = {e.name.meaning: e.value for e in g.get_qualitative_evaluations()}
        if "Finding state" not in ev:
            continue
        score = next((float(m.value) for m in g.get_measurements() if m.name.meaning == "Probability"), None)
        out[g.finding_type.meaning] = (ev["Finding state"].value, score, ev["Presence of property"].meaning)
    return out
