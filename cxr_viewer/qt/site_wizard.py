"""Tools › Site Calibration…: measure a model on this hospital's labelled films and save a site profile.

Thin: the films are scored by the core engine and the analysis and fit are
:func:`cxr_viewer.core.site.fit.fit_site_finding` (what ``cxr-train calibrate --site``
runs), both on the viewer's worker threads. The dialog shows, per finding, the ROC with
the bundle's and the site's operating points, the reliability diagram before and after on
the held-out films, the numbers with their CIs and the warnings, and saves the profile.
Also the drift banner: a bar that appears when recent scores depart from the profile's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

if TYPE_CHECKING:
    from cxr_viewer.core.analysis import ModelService
    from cxr_viewer.core.workspace import Workspace
    from cxr_viewer.core.site.drift import DriftResult
    from cxr_viewer.core.site.profile import SiteProfile
    from cxr_viewer.qt.actions import ActionRegistry
    from cxr_viewer.qt.workers import TaskRunner

log = logging.getLogger(__name__)

TARGETS = (("Youden (best sensitivity + specificity)", "youden"), ("Target sensitivity", "sensitivity"),
           ("Target specificity", "specificity"))  # fmt: skip
METHODS = (("Best by cross-validated ECE", "auto"), ("Temperature", "temperature"), ("Platt", "platt"),
           ("Isotonic", "isotonic"), ("None (thresholds only)", "none"))  # fmt: skip


def score_site_films(bundle_path: str, rows: list[dict[str, Any]], found: list[str], folder: str, labels_csv: str,
                     models: "ModelService") -> Iterator[Any]:  # fmt: skip
    """Worker: score every labelled film on the process's one engine (the model service's queue, a film at a
    time, so the viewer's next film never waits for the whole set); yields progress, then ("scores", data)."""
    import numpy as np

    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.site.stats import card_prevalence

    def score(pool: Any, record: Any) -> tuple[Any, Any]:
        engine, b = pool.engine_with(Path(bundle_path))
        return b, engine.analyze(record, models=[b.name])

    scores = np.full((len(rows), len(found)), np.nan)
    bundle: Any = None
    for i, row in enumerate(rows):
        bundle, result = models.call(score, read_image(row["image"]))
        by_label = {f.label: f.score for f in result.findings}
        scores[i] = [by_label.get(lab, np.nan) for lab in found]
        yield ("progress", i + 1, len(rows))
    if bundle is None:  # no film: the bundle is still named in the data
        bundle = models.call(lambda pool: pool.engine_with(Path(bundle_path))[1])
    yield ("scores", {
        "bundle": bundle.describe(), "labels": found, "scores": scores,
        "truth": np.array([[row["labels"].get(lab, np.nan) for lab in found] for row in rows], dtype=float),
        "groups": np.array([row["patient_id"] for row in rows]), "n_images": len(rows),
        "thresholds": {lab: bundle.manifest.threshold(lab) for lab in found},
        "card_prevalence": {lab: card_prevalence(bundle.manifest, lab) for lab in found},
        "folder": str(folder), "labels_file": Path(labels_csv).name,
    })  # fmt: skip


def fit_one(data: dict[str, Any], label: str, target: str, method: str, n_boot: int) -> tuple[str, Any, dict[str, Any]]:
    """Worker: the site analysis and fit of one finding."""
    import numpy as np

    from cxr_viewer.core.site.fit import fit_site_finding

    j = data["labels"].index(label)
    y, p = data["truth"][:, j], data["scores"][:, j]
    known = ~np.isnan(y) & ~np.isnan(p)
    fp, report = fit_site_finding(label, y[known], p[known], data["groups"][known], method=method, target=target,
                                  current_threshold=data["thresholds"][label], n_boot=n_boot,
                                  card_prevalence=data["card_prevalence"][label])  # fmt: skip
    return label, fp, report


def _films(n: int) -> str:
    return "film" if n == 1 else "films"


def _fmt(v: Any, ci: Any = None) -> str:
    if v is None:
        return "n/a"
    text = f"{v:.3f}"
    return text + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


class SiteCalibrationDialog(QDialog):
    """Load folder + labels, score, per-finding ROC / reliability / numbers, choose a target, save."""

    profile_saved = Signal(object)  # SiteProfile

    def __init__(self, runner: "TaskRunner", model_dirs: list[Path] | None = None, parent: QWidget | None = None,
                 *, models: "ModelService", n_boot: int = 300, corrections: Any = None) -> None:  # fmt: skip
        super().__init__(parent)
        self.models = models  # the process's one model service: films are scored on its engine
        from cxr_viewer.core.corrections import CorrectionStore

        self.corrections = corrections if corrections is not None else CorrectionStore()
        self.setWindowTitle("Site calibration")
        self.runner = runner
        self.n_boot = n_boot
        self.data: dict[str, Any] | None = None
        self.fitted: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.saved: "SiteProfile | None" = None

        from cxr_viewer.core.models.bundle import find_bundles

        self.model_box = QComboBox()
        self.manifests: dict[str, Any] = {}
        for info in find_bundles(model_dirs):
            m = info.manifest
            if info.ok and m is not None and m.is_classifier and m.task != "multiclass":
                self.model_box.addItem(m.display_name, str(info.path))
                self.manifests[str(info.path)] = m
        self.folder_edit = QLineEdit()
        self.labels_edit = QLineEdit()
        self.labels_edit.setPlaceholderText("CSV: file, one 1/0 column per finding, optional patient_id")
        browse_folder, browse_labels = QPushButton("Browse…"), QPushButton("Browse…")
        browse_folder.clicked.connect(self._pick_folder)
        browse_labels.clicked.connect(self._pick_labels)
        self.source_box = QComboBox()
        self.source_box.addItem("A folder of films and a labels CSV", "csv")
        self.source_box.addItem("The labels I gave in the worklist (1 / 2 / 3)", "worklist")
        self.source_box.currentIndexChanged.connect(self._source_changed)
        self.score_button = QPushButton("Score films")
        self.score_button.clicked.connect(self.score)
        self.status = QLabel("Choose the model, the folder of films and the labels.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Model", self.model_box)
        form.addRow("Labelled films", self.source_box)
        row = QHBoxLayout()
        row.addWidget(self.folder_edit)
        row.addWidget(browse_folder)
        form.addRow("Films folder", row)
        row = QHBoxLayout()
        row.addWidget(self.labels_edit)
        row.addWidget(browse_labels)
        form.addRow("Labels CSV", row)

        self.finding_box = QComboBox()
        self.target_box = QComboBox()
        for text, key in TARGETS:
            self.target_box.addItem(text, key)
        self.target_spin = QDoubleSpinBox()
        self.target_spin.setRange(0.5, 0.99)
        self.target_spin.setSingleStep(0.01)
        self.target_spin.setValue(0.90)
        self.method_box = QComboBox()
        for text, key in METHODS:
            self.method_box.addItem(text, key)
        for w in (self.finding_box, self.target_box, self.method_box):
            w.currentIndexChanged.connect(self.refit)
        self.target_spin.valueChanged.connect(self.refit)
        fit_row = QHBoxLayout()
        for w in (QLabel("Finding"), self.finding_box, QLabel("Operating point"), self.target_box, self.target_spin,
                  QLabel("Recalibration"), self.method_box):  # fmt: skip
            fit_row.addWidget(w)

        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(8, 3.6), layout="tight")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.hide()  # no empty white plot before anything is scored
        self.plot_hint = QLabel("The ROC curve and the reliability plot of the chosen finding appear here once "
                                "the films are scored.")
        self.plot_hint.setStyleSheet("color:#8a8d91; padding:12px;")
        self.summary = QLabel()
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setWordWrap(True)
        self.name_edit = QLineEdit("site")
        self.note_edit = QLineEdit()
        self.note_edit.setPlaceholderText("your note (kept in the profile)")
        self.save_button = QPushButton("Save profile")
        self.save_button.clicked.connect(self.save)
        self.override_box = QCheckBox("Save anyway")
        self.override_box.setToolTip("Keep thresholds that are not usable operating points (the reason is shown above)")
        self.override_box.toggled.connect(lambda _on: self._update_save())
        self.override_box.hide()
        self.save_problem = QLabel("")
        self.save_problem.setObjectName("siteSaveProblem")
        self.save_problem.setWordWrap(True)
        self.save_problem.setStyleSheet("color:#e06c5a;")
        self.save_problem.hide()
        save_row = QHBoxLayout()
        for w in (QLabel("Profile name"), self.name_edit, QLabel("Note"), self.note_edit, self.override_box,
                  self.save_button):
            save_row.addWidget(w)

        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.score_button)
        lay.addWidget(self.status)
        lay.addLayout(fit_row)
        lay.addWidget(self.plot_hint)
        lay.addWidget(self.canvas, 1)
        lay.addWidget(self.summary)
        lay.addWidget(self.save_problem)
        lay.addLayout(save_row)
        self._set_fit_enabled(False)
        self.resize(980, 420)  # grows when the plots come

    # ------------------------------------------------------------------ inputs
    def _pick_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Folder of the site's films")
        if d:
            self.folder_edit.setText(d)

    def _pick_labels(self) -> None:
        f, _ = QFileDialog.getOpenFileName(self, "Labels of the site's films", "", "CSV (*.csv)")
        if f:
            self.labels_edit.setText(f)

    def _source_changed(self, *_: Any) -> None:
        csv = self.source_box.currentData() == "csv"
        self.folder_edit.setEnabled(csv)
        self.labels_edit.setEnabled(csv)
        if not csv:
            self.status.setText(f"The labels stored in {self.corrections.path} are used: select a worklist study, "
                                "choose the finding, press 1 (positive), 2 (negative) or 3 (unsure).")  # fmt: skip

    def _set_fit_enabled(self, on: bool) -> None:
        for w in (self.finding_box, self.target_box, self.target_spin, self.method_box):
            w.setEnabled(on)
        self._update_save()

    def problems(self) -> dict[str, str]:
        """Finding -> why its fitted threshold is not a usable operating point (only the unusable ones)."""
        from cxr_viewer.core.site.fit import operating_point_problem

        out = {}
        for label, (_fp, report) in self.fitted.items():
            why = operating_point_problem(report)
            if why:
                out[label] = why
        return out

    def _update_save(self) -> None:
        """Save only with something usable to save: every fitted threshold a usable operating point, or the
        explicit "Save anyway"; the reason is said above the button."""
        problems = self.problems()
        ready = self.data is not None and bool(self.fitted) and self.finding_box.isEnabled()
        if problems:
            self.save_problem.setText("Not a usable operating point: " + "; ".join(
                f"{label}: {why}" for label, why in sorted(problems.items()))
                + ". Change the operating point or label more films, or tick “Save anyway”.")
        self.save_problem.setVisible(bool(problems))
        self.override_box.setVisible(bool(problems))
        if not problems and self.override_box.isChecked():
            self.override_box.setChecked(False)
        self.save_button.setEnabled(ready and (not problems or self.override_box.isChecked()))

    # ------------------------------------------------------------------ scoring
    def score(self) -> None:
        if self.model_box.count() == 0:
            self._fail("No classifier model is installed to calibrate.")
            return
        from cxr_viewer.core.errors import SiteProfileError
        from cxr_viewer.core.site.labels import read_site_labels

        path = self.model_box.currentData()
        if self.source_box.currentData() == "worklist":
            rows, found = self.corrections.labelled_rows(self.manifests[path].labels)
            if not rows:
                self._fail(f"No labels of this model's findings are stored yet ({self.corrections.path}): label "
                           "studies in the worklist with 1 / 2 / 3, or choose a folder and a labels CSV.")  # fmt: skip
                return
            folder, labels = str(self.corrections.folder), str(self.corrections.path)
        else:
            folder, labels = self.folder_edit.text().strip(), self.labels_edit.text().strip()
            if not folder or not labels:
                self._fail("Choose the folder of films and the labels CSV first.")
                return
            try:  # the labels are checked at once (a CSV read), the films are scored off the GUI thread
                rows, found = read_site_labels(folder, labels, self.manifests[path].labels)
            except SiteProfileError as exc:
                self._fail(exc.message)
                return
        self.score_button.setEnabled(False)
        self._set_fit_enabled(False)
        self.status.setText(f"Scoring {len(rows)} {_films(len(rows))}…")
        self.runner.submit(score_site_films, path, rows, found, folder, labels, self.models,
                           channel="site-score", on_progress=self._on_score_step, on_error=self._on_error)  # fmt: skip

    def _on_score_step(self, item: Any) -> None:
        if item[0] == "progress":
            self.status.setText(f"Scored {item[1]} of {item[2]} {_films(item[2])}…")
            return
        self.data = item[1]
        self.fitted.clear()
        self.score_button.setEnabled(True)
        self.finding_box.blockSignals(True)
        self.finding_box.clear()
        self.finding_box.addItems(self.data["labels"])
        self.finding_box.blockSignals(False)
        self.status.setText(f"{self.data['n_images']} {_films(self.data['n_images'])} scored with {self.data['bundle']['name']} "
                            f"{self.data['bundle']['version']}.")  # fmt: skip
        self._set_fit_enabled(True)
        for lab in self.data["labels"]:
            self._fit(lab)

    def _on_error(self, exc: BaseException) -> None:
        self.score_button.setEnabled(True)
        self._fail(getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}")

    def _fail(self, message: str) -> None:
        self.status.setText(f"<span style='color:#e06c5a'>{message}</span>")

    # ------------------------------------------------------------------ fitting
    def target(self) -> str:
        key = self.target_box.currentData()
        return key if key == "youden" else f"{key}:{self.target_spin.value():.2f}"

    def refit(self, *_: Any) -> None:
        self.target_spin.setEnabled(self.target_box.currentData() != "youden" and self.data is not None)
        if self.data is not None and self.finding_box.currentText():
            self._fit(self.finding_box.currentText())

    def _fit(self, label: str) -> None:
        assert self.data is not None
        if label == self.finding_box.currentText():
            self.status.setText(f"Fitting {label}…")
        self.runner.submit(fit_one, self.data, label, self.target(), self.method_box.currentData(), self.n_boot,
                           channel=f"site-fit:{label}", on_result=self._on_fitted, on_error=self._on_error)  # fmt: skip

    def _on_fitted(self, out: tuple[str, Any, dict[str, Any]]) -> None:
        label, fp, report = out
        self.fitted[label] = (fp, report)
        self._update_save()
        if label != self.finding_box.currentText():
            return  # the status line speaks of the finding on screen only
        n_cal, n_held = report["fit"]["calibration_part"]["n_images"], report["fit"]["held_out_part"]["n_images"]
        self.status.setText(f"{label}: fitted on {n_cal} {_films(n_cal)}, measured on {n_held} held-out "
                            f"{_films(n_held)}.")
        self.show_report(label, report)

    def show_report(self, label: str, r: dict[str, Any]) -> None:
        from cxr_viewer.core.export.site_figures import draw_site_axes

        if self.canvas.isHidden():
            self.plot_hint.hide()
            self.canvas.show()
            if self.height() < 700:
                self.resize(self.width(), 760)
        self.figure.clear()
        ax_roc, ax_rel = self.figure.subplots(1, 2)
        draw_site_axes(ax_roc, ax_rel, label, r)
        self.canvas.draw_idle()
        ho, cur = r["held_out"], r["current_threshold"]
        prev = r["prevalence"]
        card = r["card_prevalence"]
        warn = "".join(f"<br><span style='color:#e0a030'>⚠ {w}</span>" for w in r["warnings"])
        self.summary.setText(
            f"<b>{label}</b>: {r['n_pos']} positive / {r['n_neg']} negative {_films(r['n_neg'])}, "
            f"{r['n_patients']} patient{'' if r['n_patients'] == 1 else 's'}. "
            f"AUROC {_fmt(r['auroc']['value'], r['auroc']['ci95'])}. Prevalence {prev:.2f}"
            f" (model card {'n/a' if card is None else f'{card:.2f}'}).<br>"
            f"At the model's threshold {cur['threshold']:.2f}: sensitivity {_fmt(cur['sensitivity'], cur['sensitivity_ci95'])},"
            f" specificity {_fmt(cur['specificity'], cur['specificity_ci95'])}; ECE {_fmt(r['ece']['value'], r['ece']['ci95'])}.<br>"
            f"Held-out films, before → after ({r['fit']['calibration']['method']}, threshold "
            f"{ho['before']['threshold']:.2f} → {ho['after']['threshold']:.2f}): "
            f"ECE {_fmt(ho['ece_before']['value'])} → {_fmt(ho['ece_after']['value'], ho['ece_after']['ci95'])}, "
            f"sensitivity {_fmt(ho['before']['sensitivity'])} → {_fmt(ho['after']['sensitivity'], ho['after']['sensitivity_ci95'])}, "
            f"specificity {_fmt(ho['before']['specificity'])} → {_fmt(ho['after']['specificity'], ho['after']['specificity_ci95'])}."
            + warn
        )  # fmt: skip

    # ------------------------------------------------------------------ saving
    def save(self) -> "SiteProfile | None":
        from cxr_viewer.core.errors import CXRError
        from cxr_viewer.core.site.profile import SiteProfile, save_profile

        if self.data is None or not self.fitted:
            self._fail("Score the films and fit at least one finding first.")
            return None
        problems = self.problems()
        if problems and not self.override_box.isChecked():
            self._update_save()
            self._fail("Not saved: " + "; ".join(f"{lab}: {why}" for lab, why in sorted(problems.items())) + ".")
            return None
        d = self.data
        profile = SiteProfile(
            name=self.name_edit.text().strip() or "site", bundle={k: str(d["bundle"][k]) for k in ("name", "version", "sha256")},
            findings={lab: fp for lab, (fp, _) in self.fitted.items()}, note=self.note_edit.text().strip(),
            data={"n_images": d["n_images"], "n_patients": int(len(set(d["groups"]))), "folder": d["folder"],
                  "labels_file": d["labels_file"], "made_with": "viewer site calibration wizard"},
        )  # fmt: skip
        try:
            self.saved = save_profile(profile)
        except (CXRError, OSError) as exc:
            self._fail(f"The profile could not be saved: {getattr(exc, 'message', exc)}")
            return None
        self.status.setText(f"Saved site profile {self.saved.id} to {self.saved.path}.")
        self.profile_saved.emit(self.saved)
        return self.saved


class ElidedLabel(QLabel):
    """A one-line label that shortens its text with "…" when the room is short (the status bar at 1200 px).

    ``text()`` stays the full text; the tooltip shows it whole when it is cut (unless one is set).
    """

    MIN_WIDTH = 120

    def minimumSizeHint(self) -> Any:  # Qt override
        hint = super().minimumSizeHint()
        hint.setWidth(min(hint.width(), self.MIN_WIDTH))
        return hint

    def paintEvent(self, event: Any) -> None:  # Qt override
        from PySide6.QtGui import QPainter

        painter = QPainter(self)
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        self.style().drawItemText(painter, rect, int(self.alignment() | Qt.AlignmentFlag.AlignVCenter), self.palette(),
                                  self.isEnabled(), text, self.foregroundRole())  # fmt: skip
        painter.end()

    @property
    def elided(self) -> bool:
        return self.fontMetrics().horizontalAdvance(self.text()) > self.contentsRect().width()


class DriftBanner(QToolBar):
    """A bar over the image that says when recent scores have drifted from the active site profile."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Site profile drift", parent)
        self.setObjectName("drift_banner")
        self.setMovable(False)
        from PySide6.QtWidgets import QSizePolicy

        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setMinimumWidth(640)
        self.label.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.label.setStyleSheet("QLabel { background: #6b4a12; color: #ffe9b8; padding: 6px; border-radius: 3px; }")
        self.addWidget(self.label)
        self.recalibrate_button = QPushButton("Recalibrate for this version…")
        self.recalibrate_button.setToolTip("Open the site calibration wizard on the model version now in use")
        self._recalibrate_action = self.addWidget(self.recalibrate_button)
        self._recalibrate_action.setVisible(False)
        dismiss = QPushButton("Dismiss")
        dismiss.clicked.connect(self.hide)
        self.addWidget(dismiss)
        self.hide()

    def show_drift(self, profile: "SiteProfile", results: list["DriftResult"]) -> bool:
        drifted = [r for r in results if r.drifted]
        if not drifted:
            self.hide()
            return False
        self.label.setText(f"⚠ Drift from site profile {profile.id}: " + " ".join(r.message for r in drifted))
        self._recalibrate_action.setVisible(False)
        self.show()
        return True

    def show_problem(self, text: str, recalibrate: bool = False) -> None:
        """The active profile does not apply; ``recalibrate`` offers the wizard on the version now in use."""
        self.label.setText(f"⚠ {text}")
        self._recalibrate_action.setVisible(recalibrate)
        self.show()


class SiteCalibrationHook:
    """Wires the wizard and the drift banner into the main window: Tools › Site Calibration…, the active
    profile (kept in the settings, applied by the analysis controller to every image, named in the
    findings panel and the status bar), and the drift check after every finished analysis and every
    worklist study."""

    SETTING = "site/profile"

    def __init__(self, window: Any, *, actions: "ActionRegistry", models: "ModelService | None" = None,
                 workspace: "Workspace | None" = None) -> None:
        from PySide6.QtGui import QAction

        self.window = window
        self.actions = actions  # the window's registry: the Tools entries go there, the worklist is found there
        self.models = models if models is not None else window.analysis.models  # the one model service
        # the reader's workspace holds the active profile; every surface follows it from there
        self.workspace = workspace if workspace is not None else window.analysis.workspace
        self.dialog: SiteCalibrationDialog | None = None
        self.monitor: Any = None
        self._seen: set[str] = set()
        self.banner = DriftBanner(window)
        self.banner.recalibrate_button.clicked.connect(self.recalibrate)
        self._successor: Any = None  # the bundle now in use instead of the profile's (updated, or a site version)
        window.addToolBarBreak(Qt.ToolBarArea.TopToolBarArea)
        window.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.banner)
        self.status_label = ElidedLabel("", window)
        self.status_label.setObjectName("siteProfileStatus")
        self.status_label.setTextFormat(Qt.TextFormat.PlainText)
        window.statusBar().addPermanentWidget(self.status_label)
        self.action = QAction("Site &Calibration…", window)
        self.action.setToolTip("Measure a model on this site's labelled films, recalibrate it, save a site profile")
        self.action.triggered.connect(self.show_wizard)
        self.choose_action = QAction("Use Site &Profile…", window)
        self.choose_action.setToolTip("Apply a saved site profile (its calibrated scores and thresholds) to every image")
        self.choose_action.triggered.connect(self._choose_profile)
        self.clear_action = QAction("Stop Using the Site Profile", window)
        self.clear_action.setToolTip("Show the model's own scores and thresholds again")
        self.clear_action.triggered.connect(lambda: self.set_profile(None))
        tools = actions.menu("tools")
        tools.addSeparator()
        for key, a in (("site_calibration", self.action), ("site_profile_choose", self.choose_action),
                       ("site_profile_clear", self.clear_action)):
            actions.register(key, a)
            tools.addAction(a)
        window.analysis.state_changed.connect(self.on_state)
        self.workspace.site_profile_changed.connect(self._on_profile)
        # the worklist's scores feed the drift check too, whenever the worklist is installed
        actions.when_part("worklist", lambda panel: panel.controller.entry_ready.connect(self.on_worklist_entry))
        actions.add_part("site_calibration", self)
        self._show_status()
        path = window.settings.value(self.SETTING, "", type=str)
        if path:
            self.set_profile_path(path)

    @property
    def profile(self) -> "SiteProfile | None":
        """The active site profile (the workspace's)."""
        return self.workspace.site_profile

    def model_dirs(self) -> list[Path]:
        from cxr_viewer.core.paths import default_models_dir, user_models_dir

        extra = [Path(self.window.models_dir)] if self.window.models_dir else []
        return [*extra, default_models_dir(), user_models_dir()]

    def show_wizard(self, model: str | None = None) -> SiteCalibrationDialog:
        """The wizard; ``model`` (a bundle name) chosen in it when given."""
        if self.dialog is not None and model is not None and model not in {m.name for m in self.dialog.manifests.values()}:
            self.dialog.close()  # installed after the wizard was first built: list the models again
            self.dialog = None
        if self.dialog is None:
            self.dialog = SiteCalibrationDialog(self.window.runner, self.model_dirs(), self.window, models=self.models,
                                                corrections=self.workspace.corrections)
            self.dialog.profile_saved.connect(self.set_profile)
        if model is not None:
            box = self.dialog.model_box
            for i in range(box.count()):
                if self.dialog.manifests[box.itemData(i)].name == model:
                    box.setCurrentIndex(i)
                    break
        self.dialog.show()
        self.dialog.raise_()
        return self.dialog

    def _choose_profile(self) -> None:
        from cxr_viewer.core.paths import user_profiles_dir

        path, _ = QFileDialog.getOpenFileName(self.window, "Site profile", str(user_profiles_dir()),
                                              "Site profile (*.json)")  # fmt: skip
        if path:
            self.set_profile_path(path)

    def set_profile_path(self, path: str) -> None:
        from cxr_viewer.core.errors import SiteProfileError
        from cxr_viewer.core.site.profile import load_profile

        try:
            self.set_profile(load_profile(path))
        except SiteProfileError as exc:
            self.status_label.setText("Site profile: not used")
            self.status_label.setToolTip(exc.message)
            self.window.statusBar().showMessage(f"Site profile not used: {exc.message}", 20000)

    def set_profile(self, profile: "SiteProfile | None") -> None:
        """Make ``profile`` the active one (remembered, applied to the scores); drift is measured against it."""
        self.workspace.set_site_profile(profile)  # the viewer, the worklist and current | prior judge with it

    def _follow_monitor(self) -> bool:
        """Drift is measured against the workspace's profile (whichever of its listeners heard of it first);
        True when the monitor was started again here."""
        from cxr_viewer.core.site.drift import DriftMonitor

        profile = self.profile
        if (self.monitor.profile if self.monitor is not None else None) is profile:
            return False
        self.monitor = DriftMonitor(profile) if profile is not None else None
        self._seen.clear()
        return True

    def _on_profile(self, profile: "SiteProfile | None") -> None:
        """The workspace's site profile changed (here or anywhere): measure drift against it, remember it."""
        if self._follow_monitor():  # (else the current film already fed the new monitor and set the banner)
            self.banner.hide()
        self.window.settings.setValue(self.SETTING, str(profile.path) if profile is not None and profile.path else "")
        self.clear_action.setEnabled(profile is not None)
        self._show_status()
        self.on_state(self.window.analysis.state)  # the current film's word on it: applied, or why not
        if profile is not None:
            self.window.statusBar().showMessage(f"Active site profile: {profile.id} ({profile.bundle.get('name')})", 10000)

    def _show_status(self, problem: str = "") -> None:
        """The status bar's word on the profile: short, cut with "…" when the bar is full; the tooltip has it all."""
        self._status_text(problem)
        label = self.status_label
        if label.text() not in label.toolTip():
            label.setToolTip(f"{label.text()}\n{label.toolTip()}")
        label.updateGeometry()
        # QStatusBar lays its widgets out again only when its height changes: a longer text would stay clipped
        layout = self.window.statusBar().layout()
        if layout is not None:
            layout.invalidate()
            layout.activate()

    def _status_text(self, problem: str = "") -> None:
        p = self.profile
        if p is None:
            self.status_label.setText("Site profile: none")
            self.status_label.setToolTip("No site profile: the models' own scores and thresholds (Tools › Site Calibration…)")
            self.status_label.setStyleSheet("color:#8a8d91;")
        elif problem:
            self.status_label.setText(f"Site profile {p.id}: NOT APPLIED")
            self.status_label.setToolTip(problem)
            self.status_label.setStyleSheet("color:#ffb070; font-weight:bold;")
        else:
            self.status_label.setText(f"Site profile: {p.title}")
            self.status_label.setToolTip(f"{p.bundle.get('name')} {p.bundle.get('version', '')}: calibrated scores and "
                                         f"site thresholds from {p.path or 'this profile'}" + (f"\n{p.note}" if p.note else ""))  # fmt: skip
            self.status_label.setStyleSheet("color:#8fe0b0;")

    def successor(self) -> Any:
        """The loaded bundle used instead of the profile's: its update (other weights) or its site version."""
        p = self.profile
        if p is None:
            return None
        name, sha = p.bundle.get("name"), str(p.bundle.get("sha256", "")).lower()
        for s in self.window.analysis.bundles:
            if s.loaded and s.enabled and (s.replaces == name or (s.name == name and str(s.sha256).lower() != sha)):
                return s
        return None

    def recalibrate(self) -> SiteCalibrationDialog:
        """Recalibrate for this version…: the wizard on the bundle now in use."""
        s = self._successor or self.successor()
        return self.show_wizard(s.name if s is not None else None)

    def on_state(self, state: Any) -> None:
        if self.profile is None or getattr(state, "status", "") != "done" or not state.findings:
            return
        message = getattr(state, "site_profile_message", "")
        self._show_status(message)
        self._successor = self.successor() if message else None
        s = self._successor
        if s is not None and s.replaces == self.profile.bundle.get("name"):  # a site version is in use instead
            b = self.profile.bundle
            message = (f"Site profile {self.profile.id} was fitted to {b.get('name')} {b.get('version', '')}; the "
                       f"version in use is its site version {s.display_name}, so the profile is not applied. "
                       "Recalibrate on your site's films for this version.")  # fmt: skip
            self._show_status(message)
        if getattr(state, "site_profile_stale", False) or s is not None:  # say so where drift would be shown
            self.banner.show_problem(message, recalibrate=s is not None)
            return
        if message:  # its model is not loaded (switched off, removed): nothing to measure drift on
            return
        record = self.window.session.record
        key = getattr(record, "content_hash", "") or "|".join(f"{f.score:.6f}" for f in state.findings)
        self._feed(key, state.findings)

    def on_worklist_entry(self, entry: Any) -> None:
        """A worklist study's stored (raw) scores join the recent scores the drift check compares."""
        if self.profile is None or not getattr(entry, "ok", False) or not entry.findings:
            return
        if getattr(entry, "site_profile", None) is None:  # the profile does not apply to the worklist's models
            return
        self._feed(entry.content_hash or str(entry.path), entry.findings)

    def _feed(self, key: str, findings: Any) -> None:
        self._follow_monitor()
        if key in self._seen:  # the same image again (a threshold change, a re-run, opened from the worklist)
            return
        self._seen.add(key)
        self.monitor.add(findings)
        self.banner.show_drift(self.profile, self.monitor.check())
