"""The worklist's dialogs: DICOM network settings, and the PACS query with Retrieve."""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.core.worklist.intake import default_inbox
from cxr_viewer.qt.worklist.controller import DEFAULT_AE, DEFAULT_PORT, WorklistController


class NetworkSettingsDialog(QDialog):
    """Our AE title, port and inbox; the PACS host, port and AE title."""

    FIELDS = (("pacs/ae_title", "Our AE title", DEFAULT_AE), ("pacs/inbox", "Received studies folder", ""),
              ("pacs/remote_host", "PACS host", ""), ("pacs/remote_ae", "PACS AE title", "ORTHANC"))

    def __init__(self, settings: QSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("DICOM network")
        self.settings = settings
        form = QFormLayout(self)
        self.edits: dict[str, QLineEdit] = {}
        for key, label, default in self.FIELDS:
            e = QLineEdit(str(settings.value(key, default) or ""))
            if key == "pacs/inbox":
                e.setPlaceholderText(str(default_inbox()))
            self.edits[key] = e
            form.addRow(label, e)
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(int(settings.value("pacs/port", DEFAULT_PORT)))
        form.insertRow(1, "Our port", self.port)
        self.remote_port = QSpinBox()
        self.remote_port.setRange(1, 65535)
        self.remote_port.setValue(int(settings.value("pacs/remote_port", 4242)))
        form.addRow("PACS port", self.remote_port)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def save(self) -> None:
        from cxr_viewer.core.pacs.errors import PacsError
        from cxr_viewer.core.pacs.nodes import check_ae_title

        try:
            check_ae_title(self.edits["pacs/ae_title"].text(), "our AE title")
            check_ae_title(self.edits["pacs/remote_ae"].text(), "PACS AE title")
        except PacsError as exc:
            self.edits["pacs/ae_title"].setToolTip(exc.message)
            self.setWindowTitle(f"DICOM network: {exc.message}")
            return
        for key, e in self.edits.items():
            self.settings.setValue(key, e.text().strip())
        self.settings.setValue("pacs/port", self.port.value())
        self.settings.setValue("pacs/remote_port", self.remote_port.value())
        self.settings.sync()
        self.accept()


class QueryDialog(QDialog):
    """Study-level C-FIND on the configured PACS; Retrieve brings the chosen study into the worklist."""

    def __init__(self, controller: WorklistController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from cxr_viewer.core.pacs import StudyQuery

        self._query_type = StudyQuery
        self.controller = controller
        self.setWindowTitle("Query the PACS")
        self.resize(640, 360)
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("patient ID")
        self.date = QLineEdit()
        self.date.setPlaceholderText("YYYYMMDD or YYYYMMDD-YYYYMMDD")
        self.modality = QLineEdit()
        self.modality.setPlaceholderText("CR, DX…")
        self.search = QPushButton("Search")
        self.search.clicked.connect(self.run_query)
        row = QHBoxLayout()
        for w in (self.patient, self.date, self.modality, self.search):
            row.addWidget(w)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Date", "Modalities", "Images", "Description"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.retrieve = QPushButton("Retrieve")
        self.retrieve.clicked.connect(self.retrieve_selected)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addLayout(row)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.note)
        lay.addWidget(self.retrieve)
        self.hits: list[Any] = []
        controller.studies_found.connect(self.show_hits)
        controller.error.connect(lambda title, msg: self.note.setText(f"{title}: {msg}"))

    def run_query(self) -> None:
        self.note.setText("Searching…")
        self.controller.find_studies(self._query_type(patient_id=self.patient.text().strip(),
                                                      study_date=self.date.text().strip(),
                                                      modality=self.modality.text().strip()))

    def show_hits(self, hits: list[Any]) -> None:
        self.hits = list(hits)
        self.table.setRowCount(len(self.hits))
        for r, h in enumerate(self.hits):
            for c, text in enumerate((h.study_date, h.modalities, "" if h.instances is None else str(h.instances),
                                      h.description)):
                self.table.setItem(r, c, QTableWidgetItem(text))
        self.note.setText(f"{len(self.hits)} stud{'y' if len(self.hits) == 1 else 'ies'} found")

    def retrieve_selected(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        for r in rows:
            self.controller.retrieve(self.hits[r].study_uid)
        self.note.setText(f"Retrieving {len(rows)} stud{'y' if len(rows) == 1 else 'ies'}…" if rows
                          else "Select a study first")

