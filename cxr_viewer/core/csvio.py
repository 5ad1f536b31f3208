"""Every CSV the program writes: cells that a spreadsheet would run as a formula are neutralised.

OWASP's rule for CSV injection: a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return is written with a leading ``'`` so Excel, LibreOffice and Sheets show it
as text instead of evaluating it (``=HYPERLINK(...)`` in a patient name stays a name). A cell
that is a plain number (``-0.25``) is left as it is. Files are written atomically
(:func:`cxr_viewer.core.staging.staged_file`): a reader never sees half a table.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["FORMULA_STARTS", "neutralise", "neutralise_frame", "restore", "restore_frame", "safe_rows", "write_csv_rows",
           "write_csv_to"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def neutralise(value: Any) -> Any:
    """``value`` as a cell that no spreadsheet evaluates: numbers unchanged, formula-like text quoted."""
    if value is None or isinstance(value, (int, float)):
        return value
    text = str(value)
    if text.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def safe_rows(rows: Iterable[Sequence[Any]]) -> Iterable[list[Any]]:
    for row in rows:
        yield [neutralise(v) for v in row]


def write_csv_to(fh: IO[str], header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> None:
    """Header and rows to an open text stream (e.g. standard output), every cell neutralised."""
    w = csv.writer(fh)
    w.writerow([neutralise(v) for v in header])
    w.writerows(safe_rows(rows))


def write_csv_rows(path: str | Path, header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV file atomically, every cell neutralised; returns ``path``."""
    from cxr_viewer.core.staging import staged_file

    path = Path(path)
    with staged_file(path) as part, part.open("w", newline="", encoding="utf-8") as fh:
        write_csv_to(fh, header, rows)
    return path


def restore(value: Any) -> Any:
    """The text :func:`neutralise` was given (for our own files read back: manifests, paths)."""
    if isinstance(value, str) and len(value) > 1 and value[0] == "'" and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def neutralise_frame(frame: Any) -> Any:
    """A copy of a pandas DataFrame whose text cells (and column names) are neutralised, numbers untouched."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(neutralise)
    out.columns = [neutralise(c) if isinstance(c, str) else c for c in out.columns]
    return out


def restore_frame(frame: Any) -> Any:
    """Undo :func:`neutralise_frame` on a DataFrame read back from one of our CSV files."""
    for col in frame.columns:
        if frame[col].dtype == object:
            frame[col] = frame[col].map(restore)
    frame.columns = [restore(c) for c in frame.columns]
    return frame
