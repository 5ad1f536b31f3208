"""DICOM tag browser: every header element (sequences as sub-trees) with a live search filter."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QHeaderView, QLabel, QLineEdit, QTreeView, QVBoxLayout, QWidget

from cxr_viewer.core.io.record import ImageRecord

COLUMNS = ("Tag", "Name", "VR", "Value")
MAX_VALUE_CHARS = 240


def _value_text(elem: Any) -> str:
    if elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN") or isinstance(elem.value, (bytes, bytearray)):
        n = len(elem.value) if elem.value is not None else 0
        return f"<{n:,} bytes>"
    text = str(elem.value) if elem.value is not None else ""
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def _row(tag: str, name: str, vr: str, value: str) -> list[QStandardItem]:
    items = [QStandardItem(t) for t in (tag, name, vr, value)]
    for it in items:
        it.setEditable(False)
    return items


class TagBrowser(QWidget):
    """Tree of the current image's header; typing in the search box filters rows at once."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = QStandardItemModel(0, len(COLUMNS), self)
        self.model.setHorizontalHeaderLabels(list(COLUMNS))
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.proxy.setFilterKeyColumn(-1)  # match tag, name, VR or value
        self.proxy.setRecursiveFilteringEnabled(True)  # keep the parents of matching sequence items

        self.search = QLineEdit(self)
        self.search.setPlaceholderText("Search tags (name, number or value)…")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(self._on_search)

        self.view = QTreeView(self)
        self.view.setModel(self.proxy)
        self.view.setAlternatingRowColors(True)
        self.view.setUniformRowHeights(True)
        self.view.setSortingEnabled(False)
        header = self.view.header()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)

        self.summary = QLabel(self)
        self.summary.setStyleSheet("color: #8d9299; padding: 2px 4px;")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(4)
        layout.addWidget(self.search)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.summary)
        self.set_record(None)

    def set_record(self, record: ImageRecord | None) -> None:
        self.model.removeRows(0, self.model.rowCount())
        root = self.model.invisibleRootItem()
        if record is None:
            self.summary.setText("No image open")
        elif record.header is not None:
            meta = getattr(record.header, "file_meta", None)
            if meta is not None and len(meta):
                self._add_dataset(root, meta)
            self._add_dataset(root, record.header)
        else:
            for key, value in sorted(record.metadata.items()):
                if value not in (None, ""):
                    root.appendRow(_row("", str(key), "", str(value)))
            root.appendRow(_row("", "format", "", record.format))
        fm = self.view.fontMetrics()
        self.view.setColumnWidth(0, fm.horizontalAdvance("(0000,0000)") + 36)  # room for the tree indent
        self.view.setColumnWidth(1, fm.horizontalAdvance("ReferringPhysicianName") + 12)
        self.view.setColumnWidth(2, fm.horizontalAdvance("VRW") + 8)
        self._on_search(self.search.text())

    def _add_dataset(self, parent: QStandardItem, ds: Any) -> None:
        for elem in ds:
            tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
            name = elem.keyword or elem.name
            if elem.VR == "SQ":
                row = _row(tag, name, "SQ", f"{len(elem.value)} item(s)")
                parent.appendRow(row)
                for i, item in enumerate(elem.value, start=1):
                    child = _row("", f"Item {i}", "", "")
                    row[0].appendRow(child)
                    self._add_dataset(child[0], item)
            else:
                parent.appendRow(_row(tag, name, str(elem.VR), _value_text(elem)))

    def _on_search(self, text: str) -> None:
        self.proxy.setFilterFixedString(text.strip())
        if text.strip():
            self.view.expandAll()
        total = self.model.rowCount()
        shown = self.proxy.rowCount()
        self.summary.setText(f"{shown} of {total} elements" if text.strip() else f"{total} elements")

    def visible_rows(self) -> list[tuple[str, ...]]:
        """The rows the filter lets through (depth-first), as text tuples."""
        out: list[tuple[str, ...]] = []

        def walk(parent: Any) -> None:
            for r in range(self.proxy.rowCount(parent)):
                idx = [self.proxy.index(r, c, parent) for c in range(len(COLUMNS))]
                out.append(tuple(str(i.data() or "") for i in idx))
                walk(idx[0])

        walk(QModelIndex())
        return out
