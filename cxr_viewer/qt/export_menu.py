"""The Export menu: PDF/PNG report, DICOM results (SR, SEG, SC, PDF) and the anonymised study export.

Thin: it gathers what the window shows into one
:class:`~cxr_viewer.core.export.record.ClinicalRecord` on the GUI thread (the image, the
judged result the findings panel shows, the patient's identification, the measurements,
the report text and its visible masks, the heatmap, the window, the current | prior
changes), runs :func:`~cxr_viewer.core.export.record.write_record` (the code path
``cxr-viewer analyze --pdf-out/--dicom-out`` uses) on the window's background runner, and
reports the outcome in the status bar, or as a clear error dialog when it fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QMenu, QMessageBox

from cxr_viewer.core.errors import CXRError

if TYPE_CHECKING:
    from cxr_viewer.core.export.record import ClinicalRecord
    from cxr_viewer.qt.actions import ActionRegistry, RecentFiles
    from cxr_viewer.core.judging import JudgedResult
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.qt.main_window import MainWindow

log = logging.getLogger(__name__)


class ExportActions:
    """The Export menu of one main window; the ``export_*`` methods take paths so tests skip the dialogs.

    ``actions``: the window's registry (the menu's actions go there; current | prior is found there when
    it is installed); ``recent``: the reader's recent files, where the file dialogs start.
    """

    def __init__(self, window: "MainWindow", *, actions: "ActionRegistry", recent: "RecentFiles") -> None:
        self.window = window
        self.actions = actions
        self.recent = recent
        self.last_files: list[Path] = []
        self.last_warnings: list[str] = []
        self.warning_dialog: QMessageBox | None = None
        self.menu = self._build_menu()

    # ------------------------------------------------------------------ menu
    def _build_menu(self) -> QMenu:
        win = self.window
        menu = QMenu("E&xport", win)
        specs = [
            ("export_report", "&Report as PDF or PNG…", self.report_dialog, "Ctrl+Shift+P",
             "One page: image with overlays, findings, QC flags, models"),
            ("export_dicom", "&DICOM Results (SR, SEG, SC, PDF)…", self.dicom_dialog, "Ctrl+Shift+D",
             "Structured report, masks, view capture and the PDF, filed under the source study"),
            ("export_anonymised", "&Anonymised Study with Results…", self.anonymised_dialog, None,
             "The image and its results, de-identified (DICOM PS3.15 Basic profile)"),
        ]
        for key, text, slot, shortcut, tip in specs:
            act = QAction(text, win)
            act.setStatusTip(tip)
            if shortcut:
                act.setShortcut(shortcut)
            act.triggered.connect(slot)
            self.actions.register(key, act)
            menu.addAction(act)
        self.actions.add_menu("export", menu)
        bar = win.menuBar()
        menus = [a for a in bar.actions() if a.menu() is not None]
        before = menus[1] if len(menus) > 1 else None  # right after File
        if before is None:
            bar.addMenu(menu)
        else:
            bar.insertMenu(before, menu)
        return menu

    # ------------------------------------------------------------------ what is shown
    def _current(self) -> tuple["ImageRecord", "JudgedResult"] | None:
        from cxr_viewer.core.inference.results import AnalysisResult
        from cxr_viewer.core.judging import judge

        win = self.window
        record = win.session.record
        if record is None:
            win.statusBar().showMessage("Nothing to export: open an image first", 5000)
            return None
        state = win.analysis.state
        if state.status != "done":
            win.statusBar().showMessage("Wait for the findings before exporting", 5000)
            return None
        judged = state.judged  # the very result the findings panel shows
        if judged is None:
            judged = judge(AnalysisResult(content_hash=record.content_hash, findings=tuple(state.findings),
                                          qc=tuple(state.qc), models=tuple(state.models),
                                          warnings=tuple(state.warnings), site_profile=state.site_profile))
        return record, judged

    def clinical_record(self, *, identified: bool = True) -> "ClinicalRecord | None":
        """What the window shows, as the record every export writes (None when there is nothing yet)."""
        from cxr_viewer.core.export.record import ClinicalRecord, Identification, PriorComparison

        current = self._current()
        if current is None:
            return None
        record, judged = current
        win, s = self.window, self.window.session
        compare = self.actions.part("compare")
        prior = None
        if compare is not None and compare.is_open and compare.prior_date:
            prior = PriorComparison(compare.prior_date, dict(compare.deltas))
        report = win.report_panel.editor.toPlainText()
        return ClinicalRecord(
            record, judged, Identification.from_record(record) if identified else None, tuple(s.measurements),
            tuple(m for m in s.masks if m.visible), s.heatmap, s.display.window, report, prior,
        )

    def _stem(self) -> str:
        path = self.window.current_path
        return Path(path).stem if path else "study"

    def _folder(self, title: str) -> str:
        return QFileDialog.getExistingDirectory(self.window, title, self.recent.last_dir())

    # ------------------------------------------------------------------ dialogs
    def report_dialog(self) -> None:
        if self._current() is None:
            return
        path, _ = QFileDialog.getSaveFileName(self.window, "Export report",
                                              str(Path(self.recent.last_dir()) / f"{self._stem()}_report.pdf"),
                                              "PDF document (*.pdf);;PNG image (*.png)")
        if path:
            self.export_report(path)

    def dicom_dialog(self) -> None:
        if self._current() is not None and (folder := self._folder("Folder for the DICOM results")):
            self.export_dicom(folder)

    def anonymised_dialog(self) -> None:
        if self._current() is not None and (folder := self._folder("Folder for the anonymised export")):
            self.export_anonymised(folder)

    # ------------------------------------------------------------------ work (off the GUI thread)
    def export_report(self, path: str | Path) -> bool:
        from cxr_viewer.core.export.record import write_record

        rec = self.clinical_record()
        if rec is None:
            return False
        path = Path(path)
        if path.suffix.lower() not in (".pdf", ".png"):
            path = path.with_suffix(".pdf")
        self._run(lambda: write_record(rec, pdf_path=path), "Report")
        return True

    def export_dicom(self, folder: str | Path) -> bool:
        from cxr_viewer.core.export.record import write_record

        rec = self.clinical_record()
        if rec is None:
            return False
        self._run(lambda: write_record(rec, dicom_dir=Path(folder)), "DICOM results")
        return True

    def export_anonymised(self, folder: str | Path) -> bool:
        from cxr_viewer.core.export.anonymise import export_anonymised

        current = self._current()
        if current is None:
            return False
        record, result = current
        if record.format != "dicom" or record.source is None:
            self.window.show_error("Anonymised export needs a DICOM image; this one came from a "
                                   f"{record.format.upper()} file, which carries no DICOM header.", "Export failed")
            return False
        # a region where nothing was found is no segment
        masks = [m for m in self.window.session.masks if m.visible and m.binary().any()]
        annotations = tuple(self.window.session.measurements)

        def job() -> Any:
            out = export_anonymised([record.source], Path(folder),
                                    results=[(record, result, {"masks": masks, "annotations": annotations})])
            return out.files, out.warnings

        self._run(job, "Anonymised export")
        return True

    def _run(self, job: Callable[[], Any], what: str) -> None:
        win = self.window
        win.statusBar().showMessage(f"{what}: writing…")

        def done(value: Any) -> None:
            files, warnings = (value if isinstance(value, tuple) else (value, []))
            self.last_files, self.last_warnings = list(files), list(warnings)
            folder = files[0].parent if files else ""
            win.statusBar().showMessage(f"{what}: wrote {len(files)} file(s) to {folder}", 10000)
            if warnings and win.interactive:  # modeless, like the window's error dialogs
                box = QMessageBox(QMessageBox.Icon.Warning, f"{what}: check before sharing", "\n\n".join(warnings),
                                  QMessageBox.StandardButton.Ok, win)
                box.setWindowModality(Qt.WindowModality.NonModal)
                box.show()
                self.warning_dialog = box

        def failed(exc: BaseException) -> None:
            if isinstance(exc, CXRError):
                message = exc.message
            elif isinstance(exc, OSError):
                message = f"Could not write the files: {exc.strerror or exc}. Check the folder is writable."
            else:
                log.error("unexpected error while exporting", exc_info=exc)
                message = f"Unexpected error while exporting ({type(exc).__name__}); see the log."
            win.show_error(f"{what} failed: {message}", "Export failed")

        win.submit(job, on_result=done, on_error=failed)


def install_export_menu(window: "MainWindow", *, actions: "ActionRegistry", recent: "RecentFiles") -> ExportActions:
    """Add the Export menu to ``window`` (called once by the composition root); its part is ``"export"``."""
    return actions.add_part("export", ExportActions(window, actions=actions, recent=recent))
