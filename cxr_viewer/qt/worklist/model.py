"""The worklist's table model: one row per study, fixed columns then one per finding seen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QObject, Qt
from PySide6.QtGui import QBrush, QColor, QFont

from cxr_viewer.core.inference.results import FindingState
from cxr_viewer.core.judging import STATE_TEXT
from cxr_viewer.core.worklist import WorklistEntry
from cxr_viewer.core.worklist.worklist import column_titles

SORT_ROLE = Qt.ItemDataRole.UserRole + 10
PATH_ROLE = Qt.ItemDataRole.UserRole + 11
#: The triage figure first, so it stays in view however wide the finding columns get.
FIXED = ("Abnormality", "Read", "Patient", "Study date", "Modality/View", "QC", "Labels")
COL_ABNORMAL, COL_READ, COL_PATIENT, COL_DATE, COL_MODALITY, COL_QC, COL_LABELS = range(len(FIXED))
#: The reader's labels of a finding on a study, by key (1/2/3 on the table; Alt+1/2/3 anywhere in the window).
LABEL_KEYS = ((Qt.Key.Key_1, 1.0, "positive"), (Qt.Key.Key_2, 0.0, "negative"), (Qt.Key.Key_3, None, "unsure"))
LABEL_MARK = {1.0: "+", 0.0: "−", None: "?"}


class WorklistModel(QAbstractTableModel):
    """Entries as rows; fixed columns then one per finding (model, label) seen."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.entries: list[WorklistEntry] = []
        self._row: dict[Path, int] = {}
        self.findings: list[tuple[str, str]] = []
        self.basis = "max finding score"
        self.site_columns: frozenset[tuple[str, str]] = frozenset()  # (model, label) the active site profile recalibrates
        self.site_profile_id = ""
        self.labels_of: Any = lambda entry: {}  # entry -> {finding: 1.0 | 0.0 | None}, the reader's labels

    def labels_text(self, entry: WorklistEntry) -> str:
        return ", ".join(f"{lab.replace('_', ' ')} {LABEL_MARK[v]}" for lab, v in sorted(self.labels_of(entry).items()))

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(self.entries)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt override
        return 0 if parent.isValid() else len(FIXED) + len(self.findings)

    def clear(self) -> None:
        self.beginResetModel()
        self.entries, self._row, self.findings = [], {}, []
        self.endResetModel()

    def upsert(self, entry: WorklistEntry) -> None:
        new = [(f.model, f.label) for f in entry.findings if (f.model, f.label) not in self.findings]
        if new:
            first = len(FIXED) + len(self.findings)
            self.beginInsertColumns(QModelIndex(), first, first + len(new) - 1)
            self.findings.extend(dict.fromkeys(new))
            self.endInsertColumns()
        row = self._row.get(entry.path)
        if row is None:
            row = len(self.entries)
            self.beginInsertRows(QModelIndex(), row, row)
            self.entries.append(entry)
            self._row[entry.path] = row
            self.endInsertRows()
        else:
            self.entries[row] = entry
            self.dataChanged.emit(self.index(row, 0), self.index(row, self.columnCount() - 1))

    def prune_columns(self) -> None:
        """Drop the finding columns no entry has any more (a model switched off)."""
        seen = {(f.model, f.label) for e in self.entries for f in e.findings}
        if all(c in seen for c in self.findings):
            return
        self.beginResetModel()
        self.findings = [c for c in self.findings if c in seen]
        self.endResetModel()

    def set_site(self, profile: Any) -> None:
        """The site profile applied (None: none, or not applied): its recalibrated columns say so in their title."""
        self.site_profile_id = profile.id if profile is not None else ""
        self.site_columns = frozenset((profile.bundle.get("name"), lab) for lab in profile.findings) if profile else frozenset()
        if self.findings:
            self.headerDataChanged.emit(Qt.Orientation.Horizontal, len(FIXED), self.columnCount() - 1)

    def entry_at(self, row: int) -> WorklistEntry:
        return self.entries[row]

    def row_of(self, path: Path) -> int | None:
        return self._row.get(Path(path))

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if section < len(FIXED):
                return FIXED[section]
            title = column_titles(self.findings)[section - len(FIXED)]
            return f"{title} (site)" if self.findings[section - len(FIXED)] in self.site_columns else title
        if role == Qt.ItemDataRole.ToolTipRole:
            if section == COL_ABNORMAL:
                return (f"Abnormality: {self.basis}" + ("" if self.basis == "Abnormal" else
                        " (no model predicts a finding named 'Abnormal')"))
            if section >= len(FIXED):
                model, label = self.findings[section - len(FIXED)]
                site = (f", recalibrated by site profile {self.site_profile_id} (its scores and threshold)"
                        if (model, label) in self.site_columns else "")  # fmt: skip
                return f"{label} from {model}{site}"
        return None

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        e = self.entries[index.row()]
        col = index.column()
        finding = None
        if col >= len(FIXED):
            key = self.findings[col - len(FIXED)]
            finding = next((f for f in e.findings if (f.model, f.label) == key), None)
        if role == PATH_ROLE:
            return str(e.path)
        if role == Qt.ItemDataRole.DisplayRole:
            if col == COL_PATIENT:
                return e.patient or e.path.name
            if col == COL_DATE:
                return e.study_date
            if col == COL_MODALITY:
                return e.modality_view
            if col == COL_QC:
                return e.qc_text if e.ok else "unreadable"
            if col == COL_ABNORMAL:
                return "" if e.abnormality is None else f"{e.abnormality:.2f}"
            if col == COL_READ:
                return "✓" if e.read else ""
            if col == COL_LABELS:
                return self.labels_text(e)
            return "" if finding is None else f"{finding.score:.2f}"
        if role == SORT_ROLE:
            if col == COL_ABNORMAL:
                return -1.0 if e.abnormality is None else float(e.abnormality)
            if col == COL_READ:
                return int(e.read)
            if finding is not None:
                return float(finding.score)
            if col >= len(FIXED):
                return -1.0
            return str(self.data(index, Qt.ItemDataRole.DisplayRole)).lower()
        if role == Qt.ItemDataRole.FontRole and not e.read:
            f = QFont()
            f.setBold(True)
            return f
        if role == Qt.ItemDataRole.ForegroundRole:
            if not e.ok or (col == COL_QC and e.qc_text not in ("ok", "")):
                return QBrush(QColor("#e0a040"))
            if finding is not None and e.state(finding.model, finding.label) is FindingState.POSITIVE:
                return QBrush(QColor("#ff6b6b"))  # the judged state, as the findings panel shows it
        if role == Qt.ItemDataRole.ToolTipRole:
            if not e.ok:
                return e.error
            if col == COL_QC and e.qc:
                return "\n".join(q.message for q in e.qc)
            if col == COL_LABELS:
                return ("Your labels (+ positive, − negative, ? unsure): select the study, choose the finding, "
                        "press 1, 2 or 3")  # fmt: skip
            if finding is not None:
                raw = "" if finding.raw_score is None else f"; the model's own score {finding.raw_score:.3f}"
                state = e.state(finding.model, finding.label)
                return (f"{finding.label}: {finding.score:.3f} (threshold {finding.threshold:.3f}, "
                        f"{finding.threshold_method or 'default'}) from {finding.model}{raw}"
                        + ("" if state is None else f": {STATE_TEXT[state]}"))
            return str(e.path)
        if role == Qt.ItemDataRole.TextAlignmentRole and (col in (COL_ABNORMAL, COL_READ) or col >= len(FIXED)):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

