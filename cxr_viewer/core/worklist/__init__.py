"""Triage worklist: a SQLite result store keyed by pixel hash and model sha256, folder and network intake."""

from cxr_viewer.core.worklist.store import ResultStore
from cxr_viewer.core.worklist.worklist import (
    ABNORMAL_LABEL,
    Worklist,
    WorklistEntry,
    abnormality,
    default_store_path,
    worklist_table,
    write_csv,
)

__all__ = [
    "ABNORMAL_LABEL",
    "ResultStore",
    "Worklist",
    "WorklistEntry",
    "abnormality",
    "default_store_path",
    "worklist_table",
    "write_csv",
]
