"""Heatmap controls: which finding, which CAM method, and how the map is drawn.

The map itself is a :class:`HeatmapLayer` in the session; the canvas draws it in
image coordinates, so it stays aligned through zoom, pan, rotation and flips.
Drawing changes (opacity, colormap, cut-off, show/hide) never re-run a model.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.core.inference.results import Heatmap
from cxr_viewer.core.session import HeatmapLayer, Session
from cxr_viewer.qt.analysis import CAM_CHOICES, AnalysisController, AnalysisState

COLORMAPS = ("jet", "turbo", "inferno", "magma", "viridis", "hot")
FAITHFULNESS_TIP = (
    "Faithfulness (ROAD, Rong et al. 2022): how much the model's score drops when the pixels the map "
    "highlights are removed, compared with removing the pixels it ignores.\n"
    "Range -1 to 1. Clearly above 0: the map points at what drives the score. Near 0: the map explains "
    "the score no better than chance. Below 0: the map points at the wrong pixels.\n"
    "A heatmap shows where the model looked, not where disease is."
)


RESEARCH_TIP = (
    "A research overlay, not a finding: its score is not validated (no same-source TB-negative films exist), "
    "so it has no badge and is left out of the worklist, the report and the SR. Its colours show the share "
    "of validation normal films scoring lower."
)


def faithfulness_text(value: float | None) -> str:
    if value is None:
        return "—"
    verdict = "explains the score" if value >= 0.05 else ("no better than chance" if value > -0.05 else "misleading")
    return f"{value:+.2f} ({verdict})"


class HeatmapPanel(QWidget):
    """Finding selector, CAM method, opacity, colormap, cut-off, visibility and faithfulness."""

    def __init__(self, controller: AnalysisController, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.session = session
        self._updating = False

        self.finding_combo = QComboBox(self)
        self.finding_combo.setToolTip("The finding whose heatmap is shown")
        self.finding_combo.setMinimumContentsLength(14)
        self.finding_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.method_combo = QComboBox(self)
        self.method_combo.addItems(list(CAM_CHOICES))
        self.method_combo.setToolTip(
            "How the map is computed. GradCAM: gradients of the finding's score at the last feature layer. "
            "GradCAM++ / LayerCAM: sharper for several or small regions. EigenCAM: no gradients, "
            "the main feature pattern. ScoreCAM: masks the image piece by piece (slow on CPU)."
        )
        self._select_method(controller.cam_method)
        self.show_check = QCheckBox("Show", self)
        self.show_check.setChecked(True)
        self.show_check.setToolTip("Show or hide the heatmap on the image")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(int(round(float(session.preference("heatmap_opacity")) * 100)))
        self.opacity_slider.setToolTip("Heatmap opacity")
        self.opacity_value = QLabel(f"{self.opacity_slider.value()}%", self)
        self.opacity_value.setMinimumWidth(36)
        self.colormap_combo = QComboBox(self)
        self.colormap_combo.addItems(COLORMAPS)
        cmap = str(session.preference("heatmap_colormap"))
        if cmap not in COLORMAPS:
            self.colormap_combo.addItem(cmap)
        self.colormap_combo.setCurrentText(cmap)
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.threshold_slider.setRange(0, 95)
        cutoff = controller.heatmap_cutoff
        self.threshold_slider.setValue(0 if cutoff is None else int(round(cutoff * 100)))
        self.threshold_slider.setToolTip("Hide the map below this fraction of its maximum (0: show all)")
        self.threshold_value = QLabel("off" if cutoff is None else f"{self.threshold_slider.value()}%", self)
        self.threshold_value.setMinimumWidth(36)
        self.faithfulness_label = QLabel("—", self)
        self.faithfulness_label.setObjectName("faithfulness")
        self.faithfulness_label.setToolTip(FAITHFULNESS_TIP)
        self.faithfulness_name = QLabel("Faithfulness", self)
        self.faithfulness_name.setToolTip(FAITHFULNESS_TIP)
        self.faithfulness_check = QCheckBox("Score", self)
        self.faithfulness_check.setChecked(controller.faithfulness)
        self.faithfulness_check.setToolTip("Compute the faithfulness score for each heatmap (a few seconds of CPU)")
        self.info_label = QLabel("Open an image to see heatmaps.", self)
        self.info_label.setObjectName("heatmapInfo")
        self.info_label.setWordWrap(True)
        self.info_label.setStyleSheet("color:#9aa0a6;")

        form = QFormLayout()
        form.setLabelAlignment(Qt.AlignmentFlag.AlignRight)
        form.addRow("Finding", self.finding_combo)
        row = QHBoxLayout()
        row.addWidget(self.method_combo, 1)
        row.addWidget(self.show_check)
        form.addRow("Method", row)
        row = QHBoxLayout()
        row.addWidget(self.opacity_slider, 1)
        row.addWidget(self.opacity_value)
        form.addRow("Opacity", row)
        form.addRow("Colours", self.colormap_combo)
        row = QHBoxLayout()
        row.addWidget(self.threshold_slider, 1)
        row.addWidget(self.threshold_value)
        form.addRow("Cut-off", row)
        row = QHBoxLayout()
        row.addWidget(self.faithfulness_label, 1)
        row.addWidget(self.faithfulness_check)
        form.addRow(self.faithfulness_name, row)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addLayout(form)
        layout.addWidget(self.info_label)
        layout.addStretch(1)

        self.finding_combo.activated.connect(self._on_finding)
        self.method_combo.activated.connect(self._on_method)
        self.show_check.toggled.connect(lambda on: self.session.update_heatmap(visible=bool(on)))
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        self.colormap_combo.currentTextChanged.connect(self._on_colormap)
        self.threshold_slider.valueChanged.connect(self._on_threshold)
        self.faithfulness_check.toggled.connect(self._on_faithfulness)
        controller.state_changed.connect(self._on_state)
        controller.heatmap_changed.connect(self._on_heatmap)
        session.events.heatmap_changed.connect(self._on_layer)
        self._on_state(controller.state)

    # ------------------------------------------------------------------ public
    def choose(self, label: str, model: str | None = None, method: str | None = None) -> None:
        """Ask for the heatmap of ``label`` (what picking a finding and a method does)."""
        if method is not None:
            self._select_method(method)
        self.controller.request_cam(label, model, CAM_CHOICES[self.method_combo.currentText()])
        self.faithfulness_label.setText("computing…" if self.controller.faithfulness else "—")
        self._grey_methods(model)

    def disconnect_session(self) -> None:
        self.session.events.heatmap_changed.disconnect(self._on_layer)

    # ------------------------------------------------------------------ controller / session events
    def _on_state(self, state: AnalysisState) -> None:
        self._updating = True
        current = self.finding_combo.currentData()
        self.finding_combo.clear()
        for f in sorted(state.findings, key=lambda f: -f.score):
            self.finding_combo.addItem(f"{f.label.replace('_', ' ')}  ({f.score:.2f}, {f.model})", (f.label, f.model))
        if state.findings:
            for label, model in state.overlays:  # opt-in research maps: last, never chosen for the reader
                self.finding_combo.addItem(f"{label}  ({model})", (label, model))
                self.finding_combo.setItemData(self.finding_combo.count() - 1, RESEARCH_TIP, Qt.ItemDataRole.ToolTipRole)
        label, model = self.controller.cam_target
        target = current if current is not None else (label, model)
        for i in range(self.finding_combo.count()):
            if self.finding_combo.itemData(i) == target:
                self.finding_combo.setCurrentIndex(i)
                break
        self.finding_combo.setEnabled(self.finding_combo.count() > 0)
        data = self.finding_combo.currentData()
        self._grey_methods(data[1] if data is not None else None)
        self._updating = False
        if not state.findings:
            self.faithfulness_label.setText("—")
            self.info_label.setText("Heatmaps appear once a model has scored the image."
                                    if state.status != "running" else "Waiting for the findings…")
        elif self.controller.heatmap is None:
            self.info_label.setText("Heatmaps are off until you ask: click a finding (or press N). The one you "
                                    "choose is shown on this patient's next films where it is above its threshold.")

    def _on_heatmap(self, heat: Heatmap | None) -> None:
        if heat is None:
            self.faithfulness_label.setText("—")
            return
        self._updating = True
        for i in range(self.finding_combo.count()):
            if self.finding_combo.itemData(i) == (heat.label, heat.model):
                self.finding_combo.setCurrentIndex(i)
                break
        self._select_method(heat.method)
        self._updating = False
        lesion_map = heat.method == "lesion map"  # a derived finding's map: the segmenter output itself
        if heat.faithfulness is None and lesion_map:
            self.faithfulness_label.setText("not applicable")
            self.faithfulness_label.setToolTip(heat.faithfulness_method)
        elif heat.faithfulness is None:
            if self.controller.faithfulness_pending:
                self.faithfulness_label.setText("computing…")
            elif self.controller.faithfulness:
                self.faithfulness_label.setText("not available")
                self.faithfulness_label.setToolTip(FAITHFULNESS_TIP + "\n\nThis version of cxr-viewer cannot compute it "
                                                   "(it needs PyTorch).")
            else:
                self.faithfulness_label.setText("not computed")
        else:
            self.faithfulness_label.setText(faithfulness_text(heat.faithfulness))
        score = "" if heat.score is None else f", score {heat.score:.3f}"
        region = f" Drawn in the {heat.region}." if heat.region.startswith("lung field") else (
            f" Drawn over the {heat.region}." if heat.region else "")
        if heat.research:
            rank = ("no reference scale recorded" if heat.reference_rank is None else
                    f"scores higher than {heat.reference_rank:.0%} of validation normal films")
            self.info_label.setText(
                f"{heat.label} — {heat.model}. RESEARCH ONLY, not a finding: this film {rank}; the colours "
                f"reach that share (the scale's top = higher than every normal). Reference: {heat.reference}."
                f"{region} Not validated: no same-source TB-negative films exist to check it on."
            )
        elif lesion_map:
            self.info_label.setText(
                f"{heat.label.replace('_', ' ')} — {heat.model}{score}. Lesion probability from the "
                f"{heat.target_layer}. A derived score, not validated for screening."
            )
        else:
            self.info_label.setText(
                f"{heat.label.replace('_', ' ')} — {heat.model}{score}. Layer {heat.target_layer}.{region} "
                "Colours scaled to the score (its maximum sits at the score on the colour bar). "
                "Where the model looked; not a lesion outline."
            )

    def _on_layer(self, layer: HeatmapLayer | None) -> None:
        if layer is None:
            return
        self._updating = True
        self.show_check.setChecked(layer.visible)
        self.opacity_slider.setValue(int(round(layer.opacity * 100)))
        if self.colormap_combo.findText(layer.colormap) < 0:
            self.colormap_combo.addItem(layer.colormap)
        self.colormap_combo.setCurrentText(layer.colormap)
        self.threshold_slider.setValue(0 if layer.threshold is None else int(round(layer.threshold * 100)))
        self._updating = False

    def _grey_methods(self, model: str | None) -> None:
        """Methods the model cannot draw here (torch-free app: gradient methods) are greyed, with the reason."""
        missing = self.controller.unavailable_methods(model)
        view_model = self.method_combo.model()
        for row, (name, key) in enumerate(CAM_CHOICES.items()):
            item = view_model.item(row) if hasattr(view_model, "item") else None
            if item is None:
                continue
            item.setEnabled(key not in missing)
            item.setToolTip(missing.get(key, ""))

    # ------------------------------------------------------------------ user input
    def _select_method(self, method: str) -> None:
        for name, key in CAM_CHOICES.items():
            if key == method or name == method:
                self.method_combo.setCurrentText(name)
                return

    def _on_finding(self, index: int) -> None:
        data = self.finding_combo.itemData(index)
        if data is not None and not self._updating:
            self.choose(data[0], data[1])

    def _on_method(self, _index: int) -> None:
        data = self.finding_combo.currentData()
        if data is not None and not self._updating:
            self.choose(data[0], data[1])

    def _on_faithfulness(self, on: bool) -> None:
        self.controller.set_faithfulness(on)
        heat = self.controller.heatmap
        if on and heat is not None and heat.faithfulness is None:
            self.choose(heat.label, heat.model)  # the map comes from the cache; only the score is new
        elif not on and (heat is None or heat.faithfulness is None):
            self.faithfulness_label.setText("not computed")

    def _on_opacity(self, value: int) -> None:
        self.opacity_value.setText(f"{value}%")
        if not self._updating:
            self.session.set_preference("heatmap_opacity", value / 100.0)
            self.session.update_heatmap(opacity=value / 100.0)

    def _on_colormap(self, name: str) -> None:
        if not self._updating and name:
            self.session.set_preference("heatmap_colormap", name)
            self.session.update_heatmap(colormap=name)

    def _on_threshold(self, value: int) -> None:
        self.threshold_value.setText("off" if value == 0 else f"{value}%")
        if not self._updating:
            self.controller.set_heatmap_cutoff(None if value == 0 else value / 100.0)
            self.session.update_heatmap(threshold=None if value == 0 else value / 100.0)
