"""The worklist's local result store: SQLite, keyed by (analysis key, model weights sha256).

The analysis key (:func:`cxr_viewer.core.inference.inputs.analysis_key`) is what ``analyze``
keys its model inputs on (the pixels and the default window the model sees) plus the header
fields the analysis reads (modality, view, body part, age...): a file with the same pixels but
another header gets its own results and QC, never another file's.

Four tables:

- ``files``: what a path held when it was last read (size, mtime, pixel hash, analysis key,
  header metadata), so reopening a folder reads no pixels for files that did not change;
- ``results``: one row per (analysis key, model sha256) with that model's findings, so
  a changed model recomputes only its own rows and a copied or renamed file finds
  its results again;
- ``analyses``: per analysis key the QC flags;
- ``images``: per pixel hash whether the study was marked as read.

The file is checked when opened: a store of this schema is used, one of an older schema
(:data:`SCHEMA_VERSION` 1, keyed on pixels alone) is migrated (its results are dropped, since
they may belong to another header), and anything else (a newer schema, another program's
database, a file that is no database) is refused with :class:`StoreError`. Every row read back
is validated (JSON, finite scores and thresholds in [0, 1], known QC severities); a row that
fails is treated as missing, so it is computed again and replaced, and a warning is logged.

The store lives on the user's own machine and holds header metadata (patient name
and ID included, for the worklist's hideable patient column); nothing here logs it.
One connection, guarded by a lock, so a worker thread and the GUI thread may share it.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_viewer.core.errors import CXRError
from cxr_viewer.core.inference.results import Finding, QCFlag

__all__ = ["FileRow", "ResultStore", "SCHEMA_VERSION", "StoreError"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_SEVERITIES = {"info", "warning", "error"}
_MAX_ROW_CHARS = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    error TEXT,
    analysis_key TEXT
);
CREATE TABLE IF NOT EXISTS images (
    content_hash TEXT PRIMARY KEY,
    qc TEXT NOT NULL DEFAULT '[]',
    read_at REAL
);
CREATE TABLE IF NOT EXISTS analyses (
    analysis_key TEXT PRIMARY KEY,
    qc TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS results (
    analysis_key TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    findings TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (analysis_key, model_sha256)
);
"""

#: The columns each table must have (a database with the same table names but other columns is refused).
_COLUMNS = {
    "meta": ["key", "value"],
    "files": ["path", "size", "mtime_ns", "content_hash", "metadata", "error", "analysis_key"],
    "images": ["content_hash", "qc", "read_at"],
    "analyses": ["analysis_key", "qc"],
    "results": ["analysis_key", "model_sha256", "model_name", "model_version", "findings", "created"],
}


class StoreError(CXRError):
    code = "store_unusable"


@dataclass(frozen=True)
class FileRow:
    """What the store remembers about one path."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    metadata: dict[str, Any]
    error: str | None
    analysis_key: str | None = None


def _finding_to_json(f: Finding) -> dict[str, Any]:
    return {"label": f.label, "score": f.score, "threshold": f.threshold, "model": f.model,
            "model_version": f.model_version, "threshold_method": f.threshold_method, "trained": f.trained,
            "note": f.note, "validated": f.validated, "outside": f.outside}  # the population verdict travels too


def _unit(value: Any) -> float:
    """A finite number in [0, 1], or ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    v = float(value)
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise ValueError("outside [0, 1]")
    return v


def _finding_from_json(d: Any) -> Finding:
    if not isinstance(d, dict) or not isinstance(d.get("label"), str) or not isinstance(d.get("model"), str):
        raise ValueError("a finding must name its label and model")
    validated = d.get("validated")
    return Finding(d["label"], _unit(d["score"]), _unit(d["threshold"]), d["model"],
                   str(d.get("model_version", "")), str(d.get("threshold_method", "")), bool(d.get("trained", True)),
                   note=str(d.get("note", "")), validated=validated if isinstance(validated, bool) else None,
                   outside=d["outside"] if isinstance(d.get("outside"), str) else "")


def _qc_from_json(d: Any) -> QCFlag:
    if not isinstance(d, dict) or not isinstance(d.get("code"), str) or not isinstance(d.get("message"), str) \
            or d.get("severity", "warning") not in _SEVERITIES:
        raise ValueError("a QC flag must have a code, a message and a known severity")
    return QCFlag(d["code"], d["message"], d.get("severity", "warning"))


def _loads(text: Any, kind: type) -> Any:
    """A stored JSON cell of the expected kind (list or dict), or ValueError."""
    from cxr_viewer.core.jsonio import loads_limited

    if not isinstance(text, str) or len(text) > _MAX_ROW_CHARS:
        raise ValueError("not a JSON text of a sensible size")
    value = loads_limited(text, max_bytes=_MAX_ROW_CHARS, max_depth=8)
    if not isinstance(value, kind):
        raise ValueError(f"not a JSON {kind.__name__}")
    return value


def _file_row(r: tuple) -> FileRow | None:
    try:
        meta = _loads(r[4] or "{}", dict)
        return FileRow(str(r[0]), int(r[1]), int(r[2]), r[3] if isinstance(r[3], str) else None, meta,
                       r[5] if isinstance(r[5], str) else None, r[6] if isinstance(r[6], str) else None)
    except (ValueError, TypeError) as exc:
        log.warning("a damaged file row of the worklist store is ignored (%s); the file is read again", exc)
        return None


class ResultStore:
    """A SQLite file (or ``:memory:``) holding analysed images and their per-model findings.

    Raises :class:`StoreError` when the file is not a store this program can use.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        where = str(self.path) if self.path is not None else "in memory"
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"The worklist store {where} cannot be opened ({exc}).", path=self.path) from None
        try:
            self._open(where)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise StoreError(f"The worklist store {where} is not a database this program can use ({exc}); "
                             "choose another file or delete it.", path=self.path) from None
        except StoreError:
            self._db.close()
            raise

    def _tables(self) -> dict[str, list[str]]:
        names = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: [c[1] for c in self._db.execute(f'PRAGMA table_info("{n}")')] for n in names}

    def _open(self, where: str) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        tables = self._tables()
        version: int | None = None
        if "meta" in tables:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
                if tables["meta"] == _COLUMNS["meta"] else None
            try:
                version = int(row[0]) if row is not None else None
            except (TypeError, ValueError):
                version = None
        if tables and version is None:
            raise StoreError(f"The worklist store {where} is another program's database (no schema version); "
                             "choose another file.", path=self.path)
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(f"The worklist store {where} has schema version {version}, newer than this program's "
                             f"({SCHEMA_VERSION}); update cxr-viewer or choose another file.", path=self.path)
        if version == 1:
            self._migrate_from_1()
        elif version is not None and version < 1:
            raise StoreError(f"The worklist store {where} has an unknown schema version {version}.", path=self.path)
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        tables = self._tables()
        bad = [t for t, cols in _COLUMNS.items() if tables.get(t) != cols]
        if bad:
            raise StoreError(f"The worklist store {where} has tables of another layout ({', '.join(bad)}); "
                             "choose another file or delete it.", path=self.path)

    def _migrate_from_1(self) -> None:
        """Schema 1 keyed results and QC on the pixels alone: they may belong to another header, so they go;
        read marks stay, and every file is read again (to compute its analysis key)."""
        log.warning("the worklist store is migrated from schema 1; its results are computed again")
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DROP TABLE IF EXISTS results")
            self._db.execute("DELETE FROM files")
            cols = [c[1] for c in self._db.execute('PRAGMA table_info("files")')]
            if "analysis_key" not in cols:
                self._db.execute("ALTER TABLE files ADD COLUMN analysis_key TEXT")
            self._db.execute("UPDATE images SET qc = '[]'")
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ files
    _FILE_COLS = "path, size, mtime_ns, content_hash, metadata, error, analysis_key"

    def file(self, path: str | Path) -> FileRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {self._FILE_COLS} FROM files WHERE path = ?", (str(path),)).fetchone()
        return None if row is None else _file_row(row)

    def files(self) -> dict[str, FileRow]:
        """Every remembered path (one query: reopening a large folder asks once, not per file)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {self._FILE_COLS} FROM files").fetchall()
        out = {}
        for r in rows:
            fr = _file_row(r)
            if fr is not None:
                out[fr.path] = fr
        return out

    def put_file(self, path: str | Path, size: int, mtime_ns: int, content_hash: str | None,
                 metadata: dict[str, Any], error: str | None = None, analysis_key: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(path), int(size), int(mtime_ns), content_hash, json.dumps(metadata, default=str), error,
                 analysis_key),
            )

    # ------------------------------------------------------------------ QC and read marks
    def put_qc(self, analysis_key: str, qc: Iterable[QCFlag]) -> None:
        text = json.dumps([q.to_dict() for q in qc])
        with self._lock:
            self._db.execute(
                "INSERT INTO analyses (analysis_key, qc) VALUES (?, ?) "
                "ON CONFLICT(analysis_key) DO UPDATE SET qc = excluded.qc",
                (analysis_key, text),
            )

    def qc(self, analysis_key: str) -> tuple[QCFlag, ...] | None:
        """The QC flags of one analysis; None when absent or damaged (then computed again)."""
        with self._lock:
            row = self._db.execute("SELECT qc FROM analyses WHERE analysis_key = ?", (analysis_key,)).fetchone()
        if row is None:
            return None
        try:
            return tuple(_qc_from_json(d) for d in _loads(row[0], list))
        except (ValueError, TypeError) as exc:
            log.warning("damaged QC flags in the worklist store are ignored (%s); they are computed again", exc)
            return None

    def set_read(self, content_hash: str, read: bool = True) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO images (content_hash, read_at) VALUES (?, ?) "
                "ON CONFLICT(content_hash) DO UPDATE SET read_at = excluded.read_at",
                (content_hash, time.time() if read else None),
            )

    def is_read(self, content_hash: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT read_at FROM images WHERE content_hash = ?", (content_hash,)).fetchone()
        return bool(row and row[0] is not None)

    # ------------------------------------------------------------------ results
    def put_findings(self, analysis_key: str, model: dict[str, Any], findings: Iterable[Finding]) -> None:
        """Store one model's findings for one analysis (``model``: name, version, sha256)."""
        text = json.dumps([_finding_to_json(f) for f in findings], allow_nan=False)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                (analysis_key, str(model["sha256"]).lower(), str(model["name"]), str(model.get("version", "")),
                 text, time.time()),
            )

    def findings(self, analysis_key: str, model_shas: Iterable[str]) -> dict[str, tuple[Finding, ...]]:
        """sha256 -> findings for those of ``model_shas`` already computed for this analysis.

        A damaged row (not JSON, a score or threshold that is not a finite number in [0, 1]) is left
        out, so that model runs again and its row is replaced.
        """
        shas = [s.lower() for s in model_shas]
        if not shas:
            return {}
        marks = ",".join("?" * len(shas))
        with self._lock:
            rows = self._db.execute(
                f"SELECT model_sha256, findings FROM results WHERE analysis_key = ? AND model_sha256 IN ({marks})",
                (analysis_key, *shas),
            ).fetchall()
        out = {}
        for sha, text in rows:
            try:
                out[sha] = tuple(_finding_from_json(d) for d in _loads(text, list))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("damaged findings of model %s in the worklist store are ignored (%s); computed again",
                            str(sha)[:12], exc)
        return out

    def count_results(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
