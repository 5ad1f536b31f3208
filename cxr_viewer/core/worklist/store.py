"""The worklist's local result store: SQLite, keyed by (pixel hash, model weights sha256).

Three tables:

- ``files``: what a path held when it was last read (size, mtime, pixel hash, header
  metadata), so reopening a folder reads no pixels for files that did not change;
- ``results``: one row per (pixel hash, model sha256) with that model's findings, so
  a changed model recomputes only its own rows and a copied or renamed file finds
  its results again by content;
- ``images``: per pixel hash the QC flags (they depend on the pixels only) and
  whether the study was marked as read.

The store lives on the user's own machine and holds header metadata (patient name
and ID included, for the worklist's hideable patient column); nothing here logs it.
One connection, guarded by a lock, so a worker thread and the GUI thread may share it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxr_viewer.core.inference.results import Finding, QCFlag

__all__ = ["FileRow", "ResultStore", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_hash TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE TABLE IF NOT EXISTS images (
    content_hash TEXT PRIMARY KEY,
    qc TEXT NOT NULL DEFAULT '[]',
    read_at REAL
);
CREATE TABLE IF NOT EXISTS results (
    content_hash TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    findings TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (content_hash, model_sha256)
);
"""


@dataclass(frozen=True)
class FileRow:
    """What the store remembers about one path."""

    path: str
    size: int
    mtime_ns: int
    content_hash: str | None
    metadata: dict[str, Any]
    error: str | None


def _finding_to_json(f: Finding) -> dict[str, Any]:
    return {"label": f.label, "score": f.score, "threshold": f.threshold, "model": f.model,
            "model_version": f.model_version, "threshold_method": f.threshold_method, "trained": f.trained,
            "note": f.note, "validated": f.validated}


def _finding_from_json(d: dict[str, Any]) -> Finding:
    return Finding(str(d["label"]), float(d["score"]), float(d["threshold"]), str(d["model"]),
                   str(d.get("model_version", "")), str(d.get("threshold_method", "")), bool(d.get("trained", True)),
                   note=str(d.get("note", "")), validated=d.get("validated"))


class ResultStore:
    """A SQLite file (or ``:memory:``) holding analysed images and their per-model findings."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path) if str(path) != ":memory:" else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ files
    def file(self, path: str | Path) -> FileRow | None:
        with self._lock:
            row = self._db.execute(
                "SELECT path, size, mtime_ns, content_hash, metadata, error FROM files WHERE path = ?", (str(path),)
            ).fetchone()
        if row is None:
            return None
        return FileRow(row[0], row[1], row[2], row[3], json.loads(row[4] or "{}"), row[5])

    def files(self) -> dict[str, FileRow]:
        """Every remembered path (one query: reopening a large folder asks once, not per file)."""
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns, content_hash, metadata, error FROM files").fetchall()
        return {r[0]: FileRow(r[0], r[1], r[2], r[3], json.loads(r[4] or "{}"), r[5]) for r in rows}

    def put_file(self, path: str | Path, size: int, mtime_ns: int, content_hash: str | None,
                 metadata: dict[str, Any], error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
                (str(path), int(size), int(mtime_ns), content_hash, json.dumps(metadata, default=str), error),
            )

    # ------------------------------------------------------------------ images
    def put_qc(self, content_hash: str, qc: Iterable[QCFlag]) -> None:
        text = json.dumps([q.to_dict() for q in qc])
        with self._lock:
            self._db.execute(
                "INSERT INTO images (content_hash, qc) VALUES (?, ?) "
                "ON CONFLICT(content_hash) DO UPDATE SET qc = excluded.qc",
                (content_hash, text),
            )

    def qc(self, content_hash: str) -> tuple[QCFlag, ...] | None:
        with self._lock:
            row = self._db.execute("SELECT qc FROM images WHERE content_hash = ?", (content_hash,)).fetchone()
        if row is None:
            return None
        return tuple(QCFlag(d["code"], d["message"], d.get("severity", "warning")) for d in json.loads(row[0]))

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
    def put_findings(self, content_hash: str, model: dict[str, Any], findings: Iterable[Finding]) -> None:
        """Store one model's findings for one image (``model``: name, version, sha256)."""
        text = json.dumps([_finding_to_json(f) for f in findings])
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?)",
                (content_hash, str(model["sha256"]).lower(), str(model["name"]), str(model.get("version", "")),
                 text, time.time()),
            )

    def findings(self, content_hash: str, model_shas: Iterable[str]) -> dict[str, tuple[Finding, ...]]:
        """sha256 -> findings for those of ``model_shas`` already computed on this image."""
        shas = [s.lower() for s in model_shas]
        if not shas:
            return {}
        marks = ",".join("?" * len(shas))
        with self._lock:
            rows = self._db.execute(
                f"SELECT model_sha256, findings FROM results WHERE content_hash = ? AND model_sha256 IN ({marks})",
                (content_hash, *shas),
            ).fetchall()
        return {sha: tuple(_finding_from_json(d) for d in json.loads(text)) for sha, text in rows}

    def count_results(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
