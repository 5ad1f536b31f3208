"""DICOM tag browser: every header element (sequences as sub-trees) with a live search filter."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QByteArray, QModelIndex, QSettings, QSortFilterProxyModel, Qt
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QHideEvent,
    QKeySequence,
    QShowEvent,
    QStandardItem,
    QStandardItemModel,
)
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QLineEdit,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

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
        had_focus = self.search.hasFocus()
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
        if had_focus:
            self.search.setFocus()

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
        had_focus = self.search.hasFocus()
        self.proxy.setFilterFixedString(text.strip())
        if text.strip():
            self.view.expandAll()
        if had_focus and not self.search.hasFocus():
            self.search.setFocus()  # filtering never takes the keyboard away from the search box
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


class TagWindow(QWidget):
    """The tag browser in a resizable top-level window of its own; size and place are remembered."""

    def __init__(self, browser: TagBrowser, settings: QSettings | None, parent: QWidget | None = None) -> None:
        super().__init__(parent, Qt.WindowType.Window)
        self.browser = browser
        self.settings = settings
        self.setObjectName("tagWindow")
        self.setWindowTitle("DICOM tags")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(browser)
        self._action = QAction("DICOM &Tag Browser", self)
        self._action.setCheckable(True)
        self._action.toggled.connect(self.setVisible)
        close = QAction(self)
        close.setShortcuts([QKeySequence("Esc"), QKeySequence("Ctrl+T"), QKeySequence("Ctrl+W")])
        close.triggered.connect(self.close)
        self.addAction(close)
        self.resize(760, 680)
        geometry = settings.value("tags/geometry") if settings is not None else None
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)

    def toggleViewAction(self) -> QAction:  # noqa: N802 - the name QDockWidget uses
        """A checkable action that shows/hides the window (what the dock offered)."""
        return self._action

    def save_state(self) -> None:
        if self.settings is not None:
            self.settings.setValue("tags/geometry", self.saveGeometry())
            self.settings.setValue("tags/visible", self.isVisible())

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        self._action.setChecked(True)
        self.raise_()
        self.activateWindow()
        self.browser.search.setFocus()

    def hideEvent(self, event: QHideEvent) -> None:  # noqa: N802 - Qt override
        self._action.setChecked(False)
        super().hideEvent(event)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.save_state()
        super().closeEvent(event)
