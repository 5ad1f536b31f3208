"""Current | prior: a second viewport with the same patient's earlier film, linked to the first.

The prior is found by patient ID and study date in what the study browser holds
(:func:`cxr_viewer.core.compare.find_prior`). Zoom (relative to fit), pan (the same
relative image point at the centre), window/level, inversion and orientation are
linked both ways unless unlinked. The prior is scored off the GUI thread by the
same bundles; each score's noise is the one its bundle records (measured on the
validation films by ``scripts/score_noise.py``), so the findings panel can show
prior → current with an arrow only for changes beyond it (none where a bundle
records no noise). The report's sentences are segmented on the prior too.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, Qt
from PySide6.QtWidgets import QLabel, QSizePolicy, QSplitter, QVBoxLayout, QWidget

from cxr_viewer.core.compare import PriorMatch, find_prior, recorded_noise, score_deltas
from cxr_viewer.core.imaging.corner_text import format_date
from cxr_viewer.core.session import Session
from cxr_viewer.qt.canvas import ImageCanvas

if TYPE_CHECKING:
    from cxr_viewer.core.analysis import ModelService
    from cxr_viewer.qt.main_window import MainWindow

log = logging.getLogger(__name__)

class PriorView(QWidget):
    """The prior film's viewport: its own session and canvas, a title naming the study date."""

    def __init__(self, preferences: dict[str, Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = Session(preferences=preferences)
        self.canvas = ImageCanvas(self.session, self)
        self.title = QLabel("Prior", self)
        self.title.setObjectName("priorTitle")
        self.title.setStyleSheet("background:#1d2630; color:#cfe3f7; padding:3px 6px; font-weight:bold;")
        self.title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)  # a long name never widens it
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.title)
        layout.addWidget(self.canvas, 1)


class CompareController:
    """Owns the current | prior layout on a main window (installed by ReadingTools)."""

    def __init__(self, window: "MainWindow", *, models: "ModelService | None" = None) -> None:
        self.w = window
        # the process's one model service: the prior is scored on its engine and queue, with the viewer's models
        self.models = models if models is not None else window.analysis.models
        self.linked = True
        self.prior_path: Path | None = None
        self.prior_date = ""
        self.prior_findings: list[Any] = []  # the prior's findings, judged as the current film's are now
        self.prior_result: Any = None  # the prior's AnalysisResult (stored or scored), judged again on every change
        self.noise: dict[tuple[str, str], float] = {}
        self.deltas: dict[tuple[str, str], Any] = {}
        self._syncing = False
        central = window.takeCentralWidget()  # the canvas, kept alive
        self.splitter = QSplitter(Qt.Orientation.Horizontal, window)
        self.splitter.setObjectName("compareSplitter")
        self.current_box = QWidget(self.splitter)
        box = QVBoxLayout(self.current_box)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(0)
        self.current_title = QLabel("Current", self.current_box)
        self.current_title.setStyleSheet("background:#2a2420; color:#ffd591; padding:3px 6px; font-weight:bold;")
        self.current_title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.current_title.hide()
        box.addWidget(self.current_title)
        box.addWidget(central, 1)
        self.prior = PriorView(window.session.preferences, self.splitter)
        self.prior.hide()
        self.splitter.addWidget(self.current_box)
        self.splitter.addWidget(self.prior)
        window.setCentralWidget(self.splitter)
        ev = window.session.events
        ev.display_changed.connect(self._from_current)
        self.prior.session.events.display_changed.connect(self._from_prior)
        window.canvas.view_changed.connect(self._pan_from_current)
        self.prior.canvas.view_changed.connect(self._pan_from_prior)
        window.canvas.horizontalScrollBar().valueChanged.connect(lambda _v: self._pan_from_current())
        window.canvas.verticalScrollBar().valueChanged.connect(lambda _v: self._pan_from_current())
        self.prior.canvas.horizontalScrollBar().valueChanged.connect(lambda _v: self._pan_from_prior())
        self.prior.canvas.verticalScrollBar().valueChanged.connect(lambda _v: self._pan_from_prior())
        window.analysis.state_changed.connect(lambda _s: self._update_deltas())
        window.analysis.masks_changed.connect(self._on_current_masks)
        ev.record_changed.connect(self._on_current_record)
        ev.preferences_changed.connect(self.prior.session.set_preference)  # demographics, colours... follow

    # ------------------------------------------------------------------ public
    @property
    def is_open(self) -> bool:
        return self.prior.isVisible()

    def open(self, chosen: Path | None = None) -> bool:
        """Show current | prior for the current film; False (with a status message) when no prior is known.

        ``chosen``: a prior picked by hand (files with no patient ID or date to match on, such as PNG/JPEG)."""
        w = self.w
        rec = w.session.record
        if rec is None:
            w.statusBar().showMessage("Open a film first", 5000)
            return False
        md = rec.metadata or {}
        pid, date = str(md.get("patient_id") or ""), str(md.get("study_date") or "")
        if chosen is not None:
            match = PriorMatch(Path(chosen), "", pid)
        else:
            match = find_prior(w.session.studies, pid, date, w.current_path)
        if match is None:
            if not pid or not date:
                missing = " or ".join(x for x, v in (("patient ID", pid), ("study date", date)) if not v)
                w.statusBar().showMessage(
                    f"This file carries no {missing} to find its prior by: choose the prior film by hand "
                    "(View > Compare with a Chosen Film…, Shift+F8)", 10000)
            else:
                w.statusBar().showMessage("No earlier film of this patient among the scanned studies "
                                          "(open the folder holding the prior study)", 8000)
            return False
        self.prior_path, self.prior_date = match.path, match.study_date
        self.current_title.setText(f"Current  {format_date(date)}".rstrip())
        self.prior.title.setText(f"Prior  {format_date(match.study_date)}" if match.study_date
                                 else f"Prior  {match.path.name} (chosen by hand)")
        self.current_title.show()
        self.prior.show()
        self.splitter.setSizes([1, 1])
        w.runner.submit(_read, match.path, on_result=self._on_prior_loaded,
                        on_error=lambda exc: w.show_error(f"The prior film could not be opened ({exc}).", "Prior"))
        return True

    def close(self) -> None:
        self.prior.hide()
        self.current_title.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.current_title.hide()
        self.prior.session.set_record(None)
        self.prior_findings, self.deltas, self.prior_result = [], {}, None
        self.w.findings_panel.set_deltas({})

    def set_linked(self, linked: bool) -> None:
        self.linked = bool(linked)
        if self.linked:
            self._from_current(self.w.session.display)
            self._pan_from_current()

    def shutdown(self) -> None:
        ev = self.w.session.events
        for sig, slot in ((ev.display_changed, self._from_current), (ev.record_changed, self._on_current_record),
                          (ev.preferences_changed, self.prior.session.set_preference)):
            try:
                sig.disconnect(slot)
            except (RuntimeError, TypeError, ValueError):
                pass
        self.prior.canvas.disconnect_session()

    # ------------------------------------------------------------------ loading and scoring
    def _on_prior_loaded(self, record: Any) -> None:
        self.prior.session.set_record(record)
        self._from_current(self.w.session.display)
        self.w.runner.submit(_score_prior, self.models, self.w.analysis.config(), record, on_result=self._on_scores,
                             on_error=lambda exc: self.w.statusBar().showMessage(
                                 f"The prior could not be scored: {exc}", 10000))
        masks = self.w.analysis.masks
        if masks:
            self._on_current_masks(masks)

    def _on_scores(self, result: tuple[Any, dict[tuple[str, str], float]]) -> None:
        self.prior_result, self.noise = result
        self._update_deltas()
        unmeasured = sorted({m for (m, _lab), d in self.deltas.items() if not d.measured})
        if unmeasured:
            self.w.statusBar().showMessage(
                f"No score noise recorded for {', '.join(unmeasured)}: its changes are shown without arrows "
                "(scripts/score_noise.py measures it)", 10000)

    def _update_deltas(self) -> None:
        if not self.is_open or self.prior_result is None:
            return
        # judged as the current film is now (site profile, the reader's thresholds): one rule for both films
        self.prior_findings = list(self.w.analysis.judge(self.prior_result).result.findings)
        self.deltas = score_deltas(self.w.analysis.state.findings, self.prior_findings, self.noise)
        self.w.findings_panel.set_deltas(self.deltas)

    def _on_current_record(self, _record: Any) -> None:
        if self.is_open:
            self.close()  # a new current film: its own prior is looked up when asked

    def _on_current_masks(self, masks: Any) -> None:
        """The same report sentences, segmented on the prior film."""
        rec = self.prior.session.record
        if not self.is_open or rec is None:
            return
        phrases = [m.text for m in masks]
        if not phrases:
            self.prior.session.set_masks([])
            return
        self.w.runner.submit(_segment_prior, self.models, self.w.analysis.config(), rec, phrases,
                             on_result=self._on_prior_masks,
                             on_error=lambda exc: self.w.statusBar().showMessage(f"No masks on the prior: {exc}", 8000))

    def _on_prior_masks(self, masks: Any) -> None:
        from cxr_viewer.qt.analysis import mask_layers

        style = str(self.w.session.preference("mask_style") or "contour")
        self.prior.session.set_masks(mask_layers(masks, style=style))

    # ------------------------------------------------------------------ linking
    def _from_current(self, state: Any) -> None:
        self._sync(self.w.canvas, self.prior.canvas, self.prior.session)

    def _from_prior(self, state: Any) -> None:
        self._sync(self.prior.canvas, self.w.canvas, self.w.session)

    def _sync(self, src: ImageCanvas, dst: ImageCanvas, dst_session: Session) -> None:
        if self._syncing or not self.linked or not self.is_open or src.record is None or dst.record is None:
            return
        self._syncing = True
        try:
            s = src.session.display
            dst_session.set_window(*s.window, preset=s.preset)
            dst_session.set_invert(s.invert)
            dst_session.set_orientation(s.orientation)
            if s.zoom_mode == "fit":
                dst_session.set_zoom_mode("fit")
                dst.fit()
            else:
                ratio = s.zoom / max(src._fit_zoom(), 1e-6)  # zoom relative to fit: films differ in pixel size
                dst_session.set_zoom(dst._fit_zoom() * ratio, "free")
            self._pan(src, dst)
        finally:
            self._syncing = False

    def _pan_from_current(self) -> None:
        if not self._syncing and self.linked and self.is_open:
            self._syncing = True
            try:
                self._pan(self.w.canvas, self.prior.canvas)
            finally:
                self._syncing = False

    def _pan_from_prior(self) -> None:
        if not self._syncing and self.linked and self.is_open:
            self._syncing = True
            try:
                self._pan(self.prior.canvas, self.w.canvas)
            finally:
                self._syncing = False

    @staticmethod
    def _pan(src: ImageCanvas, dst: ImageCanvas) -> None:
        if src.record is None or dst.record is None:
            return
        centre = src.mapToScene(src.viewport().rect().center())
        sh, sw = src.record.shape
        dh, dw = dst.record.shape
        dst.centerOn(QPointF(centre.x() / sw * dw, centre.y() / sh * dh))

    def relative_centre(self, canvas: ImageCanvas) -> tuple[float, float]:
        """(x, y) of the viewport centre as fractions of the image (tests, linking)."""
        c = canvas.mapToScene(canvas.viewport().rect().center())
        h, w = canvas.record.shape
        return c.x() / w, c.y() / h


# --------------------------------------------------------------------------- workers
def _read(path: Path) -> Any:
    from cxr_viewer.core.io import read_image

    return read_image(path)


def _score_prior(models: "ModelService", config: Any, prior: Any) -> tuple[Any, dict]:
    """The prior's result (stored or scored, on the model service's queue) and each score's noise as its
    bundle records it (worker thread); the GUI thread judges it as the current film's."""

    def work(pool: Any) -> tuple[Any, dict]:
        engine = pool.sync(config)
        noise = {(b.name, label): value for b in engine.bundles for label, value in recorded_noise(b.manifest).items()}
        return pool.result(engine, prior), noise

    return models.call(work)


def _segment_prior(models: "ModelService", config: Any, record: Any, phrases: list[str]) -> Any:
    return models.call(lambda pool: pool.segmenter(config).segment(record, phrases))
