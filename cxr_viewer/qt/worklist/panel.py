"""The worklist dock's widget: toolbar, progress with Cancel, the reader's labels and the sortable table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QModelIndex, QObject, QSortFilterProxyModel, Qt, Signal
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTableView,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.core.worklist import WorklistEntry
from cxr_viewer.core.worklist.worklist import column_titles
from cxr_viewer.qt.worklist.controller import WorklistController
from cxr_viewer.qt.worklist.dialogs import NetworkSettingsDialog, QueryDialog
from cxr_viewer.qt.worklist.model import COL_ABNORMAL, COL_PATIENT, FIXED, LABEL_KEYS, PATH_ROLE, SORT_ROLE, WorklistModel

MAX_COLUMN_PX = 190


class WorklistPanel(QWidget):
    """Toolbar, progress with Cancel, and the sortable table."""

    open_requested = Signal(object)  # Path
    shown_requested = Signal()  # a folder is being analysed: the panel should be on screen
    labelled = Signal(str)  # the confirmation of a label, for the status bar

    def __init__(self, controller: WorklistController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.model = WorklistModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SORT_ROLE)
        self.proxy.setDynamicSortFilter(True)

        self.open_button = QPushButton("Open folder…")
        self.open_button.clicked.connect(self._choose_folder)
        self.query_button = QPushButton("Query PACS…")
        self.query_button.clicked.connect(self.show_query)
        self.send_button = QPushButton("Send results")
        self.send_button.setToolTip("C-STORE the SR, SEG, SC and PDF of the selected study to the PACS")
        self.send_button.clicked.connect(self._send_selected)
        self.receive_box = QCheckBox("Receive")
        self.receive_box.setToolTip("Accept studies pushed over DICOM (C-STORE); they join the worklist as they arrive")
        self.receive_box.toggled.connect(self._toggle_receive)
        self.hide_patient = QCheckBox("Hide patient")
        self.hide_patient.toggled.connect(self.set_patient_hidden)
        self.settings_button = QToolButton()
        self.settings_button.setText("⚙")
        self.settings_button.setToolTip("DICOM network settings: our AE title and port, the PACS")
        self.settings_button.clicked.connect(self.show_settings)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("%v / %m")
        self.progress.hide()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(controller.cancel)
        self.cancel_button.hide()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.site_label = QLabel("")  # the active site profile, or why it is not applied
        self.site_label.setObjectName("worklistSiteProfile")
        self.site_label.setWordWrap(True)
        self.site_label.setTextFormat(Qt.TextFormat.PlainText)
        self.site_label.hide()
        self.label_box = QComboBox()
        self.label_box.setToolTip("The finding your labels are about (clicking a finding's column chooses it too)")
        self.label_mode = QLabel("")  # which keys label, and what: shown so 1 / 2 / 3 never surprise
        self.label_mode.setObjectName("worklistLabelMode")
        self.label_mode.setWordWrap(True)
        self.label_buttons = []
        for key, value, word in LABEL_KEYS:
            b = QPushButton(f"{word.capitalize()} ({QKeySequence(key).toString()})")
            b.setMinimumWidth(b.sizeHint().width())  # the whole word, never "sitive"
            b.setToolTip(f"Label the chosen finding {word} on the selected study (key {QKeySequence(key).toString()})")
            b.clicked.connect(lambda _=False, v=value: self.label_selected(v))
            self.label_buttons.append(b)

        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        # Interactive, sized once per finished batch: ResizeToContents would measure every row on every insert
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table.horizontalHeader().setResizeContentsPrecision(60)  # widths from 60 rows, not all of them
        self._last_progress = 0.0
        self.table.horizontalHeader().setStretchLastSection(False)
        self.table.setAlternatingRowColors(True)
        self.table.sortByColumn(COL_ABNORMAL, Qt.SortOrder.DescendingOrder)
        # the proxy forgets its sort column when the source resets or gains finding columns
        self.model.modelReset.connect(self._resort)
        self.model.columnsInserted.connect(self._resort)
        self.table.activated.connect(self._open_index)
        self.table.clicked.connect(self._open_index)
        self.table.clicked.connect(self._choose_label_column)
        self.table.installEventFilter(self)  # 1 / 2 / 3 label the chosen finding while the table has the focus
        self.label_box.currentIndexChanged.connect(lambda _i: self._show_label_mode())
        self.model.labels_of = controller.labels_of
        self.model.columnsInserted.connect(self._update_label_box)
        self.model.modelReset.connect(self._update_label_box)

        # compact rows: the table keeps the height of the bottom panel
        top = QHBoxLayout()
        for w in (self.open_button, self.query_button, self.send_button, self.receive_box, self.hide_patient):
            top.addWidget(w)
        top.addWidget(self.status, 1)
        top.addWidget(self.progress, 1)
        top.addWidget(self.cancel_button)
        top.addWidget(self.settings_button)
        self.status.setWordWrap(False)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        lay.setSpacing(2)
        lay.addLayout(top)
        lay.addWidget(self.site_label)
        label_row = QHBoxLayout()
        label_row.addWidget(QLabel("Label"))
        self.label_box.setMinimumContentsLength(16)
        label_row.addWidget(self.label_box)
        for b in self.label_buttons:
            label_row.addWidget(b)
        self.label_mode.setWordWrap(False)
        self.label_mode.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # never widens the panel
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        label_row.addWidget(self.label_mode, 1)
        lay.addLayout(label_row)
        lay.addWidget(self.table, 1)
        self._show_label_mode()

        controller.entry_ready.connect(self.model.upsert)
        controller.basis_changed.connect(self._set_basis)
        controller.site_changed.connect(self._on_site)
        controller.refreshed.connect(self._on_refreshed)
        controller.progress.connect(self._on_progress)
        controller.message.connect(self.status.setText)
        controller.receiving_changed.connect(self._on_receiving)
        self.set_patient_hidden(str(controller.settings.value("worklist/hide_patient", "false")).lower() == "true")

    # ------------------------------------------------------------------ actions
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a folder of studies")
        if folder:
            self.open_folder(folder)

    def open_folder(self, folder: str | Path) -> None:
        self.shown_requested.emit()  # the progress is in this panel: bring it to the front
        self.model.clear()
        self.status.setText(f"Analysing {Path(folder).name}…")
        self.controller.open_folder(folder)

    def set_patient_hidden(self, hidden: bool) -> None:
        if self.hide_patient.isChecked() != hidden:
            self.hide_patient.setChecked(hidden)
        self.table.setColumnHidden(COL_PATIENT, hidden)
        self.controller.settings.setValue("worklist/hide_patient", bool(hidden))

    def _toggle_receive(self, on: bool) -> None:
        running = self.controller.set_receiving(on)
        if running != on:
            self.receive_box.blockSignals(True)
            self.receive_box.setChecked(running)
            self.receive_box.blockSignals(False)

    def _on_receiving(self, on: bool) -> None:
        self.receive_box.blockSignals(True)
        self.receive_box.setChecked(on)
        self.receive_box.blockSignals(False)
        ae, port = self.controller.local_node()
        self.receive_box.setText(f"Receive ({ae}:{port})" if on else "Receive")

    def _on_progress(self, done: int, total: int) -> None:
        active = total > 0 and done < total
        self.progress.setVisible(active)
        self.cancel_button.setVisible(active)
        now = time.monotonic()
        # QProgressBar repaints on every setValue (tens of ms): at most ten updates a second
        if total > 0 and (now - self._last_progress >= 0.1 or done >= total):
            self._last_progress = now
            self.progress.setRange(0, total)
            self.progress.setValue(done)
        if total > 0 and done >= total:
            self.table.resizeColumnsToContents()
            for c in range(self.model.columnCount()):
                self.table.setColumnWidth(c, min(self.table.columnWidth(c), MAX_COLUMN_PX))
            n = self.model.rowCount()
            self.status.setText(f"{n} stud{'y' if n == 1 else 'ies'}, most abnormal first ({self.model.basis})")

    def _resort(self, *_args: Any) -> None:
        header = self.table.horizontalHeader()
        self.proxy.sort(header.sortIndicatorSection(), header.sortIndicatorOrder())

    def _on_site(self, value: tuple[Any, str, bool]) -> None:
        from cxr_viewer.core.site.profile import profile_text

        profile, message, _stale = value
        self.model.set_site(profile if profile is not None and not message else None)
        if profile is None:
            self.site_label.hide()
            self.site_label.setText("")
            return
        if message:
            self.site_label.setText(f"⚠ Site profile {profile.id} not applied: {message}")
            self.site_label.setStyleSheet("color:#ffb070;")
        else:
            self.site_label.setText(f"Site profile {profile.title}: calibrated scores and site thresholds of "
                                    f"{profile.bundle.get('name')} ({', '.join(sorted(profile.findings))})")  # fmt: skip
            self.site_label.setStyleSheet("color:#8fe0b0;")
        self.site_label.setToolTip(profile_text(profile.identity()) if not message else message)
        self.site_label.show()

    def _on_refreshed(self) -> None:
        """The studies were listed again: columns of models switched off go, the selection stays."""
        current = self.current_entry()
        self.model.prune_columns()
        if current is not None:
            row = self.model.row_of(current.path)
            if row is not None:
                self.table.selectRow(self.proxy.mapFromSource(self.model.index(row, 0)).row())

    def _set_basis(self, basis: str) -> None:
        self.model.basis = basis
        self.model.headerDataChanged.emit(Qt.Orientation.Horizontal, COL_ABNORMAL, COL_ABNORMAL)

    def _open_index(self, index: QModelIndex) -> None:
        if index.isValid():
            self.open_requested.emit(Path(self.proxy.data(index, PATH_ROLE)))

    # ------------------------------------------------------------------ list order
    def current_row(self) -> int:
        rows = self.table.selectionModel().selectedRows()
        return rows[0].row() if rows else -1

    def current_entry(self) -> WorklistEntry | None:
        row = self.current_row()
        if row < 0:
            return None
        return self.model.entry_at(self.proxy.mapToSource(self.proxy.index(row, 0)).row())

    def select_row(self, row: int, *, open_it: bool = True) -> WorklistEntry | None:
        if not 0 <= row < self.proxy.rowCount():
            return None
        index = self.proxy.index(row, 0)
        self.table.selectRow(row)
        self.table.scrollTo(index)
        if open_it:
            self._open_index(index)
        return self.current_entry()

    def next_study(self) -> WorklistEntry | None:
        return self.select_row(self.current_row() + 1)

    def row_of_path(self, path: Path | None) -> int:
        """The row (in the shown, sorted order) of ``path``, or -1."""
        src = self.model.row_of(Path(path)) if path is not None else None
        if src is None:
            return -1
        return self.proxy.mapFromSource(self.model.index(src, 0)).row()

    def step(self, delta: int, current: Path | None = None) -> WorklistEntry | None:
        """Open the study ``delta`` rows from ``current`` (else from the selection) in the list order.

        None at either end of the list (nothing is opened) or when the list is empty.
        """
        n = self.proxy.rowCount()
        if n == 0:
            return None
        row = self.row_of_path(current)
        if row < 0:
            row = self.current_row()
        target = (0 if delta > 0 else n - 1) if row < 0 else row + delta
        if not 0 <= target < n:
            return None
        return self.select_row(target)

    def previous_study(self) -> WorklistEntry | None:
        return self.select_row(max(0, self.current_row() - 1))

    def mark_read(self) -> WorklistEntry | None:
        e = self.current_entry()
        if e is None:
            return None
        return self.controller.mark_read(e, not e.read)

    # ------------------------------------------------------------------ the reader's labels
    def _update_label_box(self, *_args: Any) -> None:
        current = self.label_box.currentData()
        self.label_box.blockSignals(True)
        self.label_box.clear()
        for key, title in zip(self.model.findings, column_titles(self.model.findings)):
            self.label_box.addItem(title, key)
        i = self.label_box.findData(current) if current is not None else -1
        self.label_box.setCurrentIndex(max(i, 0))
        self.label_box.blockSignals(False)

    def _choose_label_column(self, index: QModelIndex) -> None:
        col = index.column() - len(FIXED)
        if 0 <= col < len(self.model.findings):
            self.label_box.setCurrentIndex(self.label_box.findData(self.model.findings[col]))

    def choose_label_finding(self, label: str, model: str | None = None) -> bool:
        """Make ``label`` (from ``model``) the finding that 1 / 2 / 3 label; False when no column has it."""
        for i in range(self.label_box.count()):
            m, lab = self.label_box.itemData(i)
            if lab == label and model in (None, m):
                self.label_box.setCurrentIndex(i)
                return True
        return False

    def label_selected(self, value: float | None) -> Any:
        """Label the chosen finding on the selected study: 1.0 positive, 0.0 negative, None unsure."""
        e = self.current_entry()
        key = self.label_box.currentData()
        if e is None or key is None:
            self.status.setText("Select a study and choose the finding to label first")
            return None
        if not e.ok:
            self.status.setText(f"{e.path.name} could not be read: nothing to label")
            return None
        result = self.controller.label(e, key[0], key[1], value)
        word = next(w for _k, v, w in LABEL_KEYS if v == value)
        title = self.label_box.currentText()
        self.labelled.emit(f"Labelled {title} {word} on {e.path.name}")
        return result

    def _show_label_mode(self, focused: bool | None = None) -> None:
        """Say what 1 / 2 / 3 do now: label the chosen finding (the table has the keyboard) or window presets."""
        focused = self.table.hasFocus() if focused is None else focused
        finding = self.label_box.currentText() or "a finding"
        if focused:
            self.label_mode.setText(f"Labelling {finding}: 1 positive · 2 negative · 3 unsure")
            self.label_mode.setStyleSheet("background:#2b3a1f; color:#d8f5b8; padding:2px 4px;")
        else:
            self.label_mode.setText("Table: 1 / 2 / 3 label · Alt+1 / 2 / 3 anywhere · image: presets")
            self.label_mode.setStyleSheet("color:#9aa4ae; padding:2px 4px;")
        self.label_mode.setToolTip(f"While the worklist table has the keyboard, 1 / 2 / 3 label {finding} positive, "
                                   "negative or unsure on the selected study (Alt+1 / 2 / 3 do it from anywhere); "
                                   "elsewhere 1 / 2 / 3 switch window presets. Each label is confirmed in the "
                                   "status bar.")

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if obj is self.table and event.type() in (QEvent.Type.FocusIn, QEvent.Type.FocusOut):
            self._show_label_mode(event.type() == QEvent.Type.FocusIn)
        if obj is self.table and event.type() in (QEvent.Type.ShortcutOverride, QEvent.Type.KeyPress):
            key = event.key()  # type: ignore[attr-defined]
            plain = event.modifiers() in (Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.KeypadModifier)  # type: ignore[attr-defined]
            for k, value, _word in LABEL_KEYS:
                if key == k and plain:
                    event.accept()  # the window's 1 / 2 / 3 (window presets) wait while the worklist has the focus
                    if event.type() == QEvent.Type.KeyPress:
                        self.label_selected(value)
                    return True
        return super().eventFilter(obj, event)

    def _send_selected(self) -> None:
        e = self.current_entry()
        if e is None:
            self.status.setText("Select a study first")
            return
        self.controller.send_results(e)

    # ------------------------------------------------------------------ dialogs
    def show_settings(self) -> QDialog:
        dlg = NetworkSettingsDialog(self.controller.settings, self)
        dlg.open()
        return dlg

    def show_query(self) -> QDialog:
        dlg = QueryDialog(self.controller, self)
        dlg.open()
        return dlg
