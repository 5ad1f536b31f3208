"""The findings list: every label's score against its threshold, grouped by the model that made it.

Positive and negative are told apart by text and a symbol as well as colour. A
threshold is edited per site by double-clicking it (persisted per model name and
weights hash) and reset from the context menu. Untrained or missing models get a
plain banner, so random-weight scores are never read as findings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from PySide6.QtCore import QModelIndex, QPoint, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QPushButton,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.core.inference.results import Finding, FindingState, QCFlag
from cxr_viewer.core.judging import REPORT_ORDER, STATE_BADGE, display_name
from cxr_viewer.qt.analysis import AnalysisController, AnalysisState

log = logging.getLogger(__name__)

COL_LABEL, COL_SCORE, COL_THRESHOLD, COL_RESULT, COL_PRIOR = range(5)
ROLE_KEY = Qt.ItemDataRole.UserRole  # (model, label)
ROLE_SCORE = Qt.ItemDataRole.UserRole + 1
ROLE_THRESHOLD = Qt.ItemDataRole.UserRole + 2
ROLE_DISPLAY = Qt.ItemDataRole.UserRole + 3  # the row's label text (with any "not validated" marker)

POSITIVE_COLOUR = QColor("#ff7a59")
NEGATIVE_COLOUR = QColor("#7fb58a")
MUTED_COLOUR = QColor("#8a8d91")
#: Shown on rows whose finding is not validated as a screening score (manifest ``validated: false``).
UNVALIDATED_MARK = "not validated for screening"
SORT_MODES = ("Score", "Positive first", "Model order")
#: The widest texts a row shows at the default size (a shown heatmap's bold ◉, the derived TB row, its badge):
#: the panel's preferred width keeps every one of them whole.
WIDEST_LABEL = "◉ ⚠ Tuberculosis (lesion score)"
WIDEST_RESULT = "◌ above · not validated"
WIDEST_DELTA = "0.00 → 0.00 ↑"
SCORE_COLUMN_PX = 96
SEVERITY_STYLE = {
    "error": ("#ff6b6b", "⛔"),
    "warning": ("#f0b64a", "⚠"),
    "info": ("#8fb8de", "ℹ"),
}
BANNER_STYLE = {
    "untrained": "background:#4a3510; color:#ffd591; border:1px solid #8a6420;",
    "none": "background:#23303d; color:#cfe3f7; border:1px solid #37506a;",
    "error": "background:#4a1d1d; color:#ffc9c9; border:1px solid #8a3434;",
    "running": "background:#202a33; color:#b9c6d3; border:1px solid #30404f;",
}


#: Result text of a row whose score is not a number (a damaged model's output): never "negative".
NOT_A_NUMBER_TEXT = STATE_BADGE[FindingState.NOT_APPLICABLE]


def finite(value: object) -> float | None:
    """``value`` as a finite float, or ``None`` (NaN, infinity, missing or not a number)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def result_text(f: Finding) -> str:
    """The badge of the finding's one state (:data:`cxr_viewer.core.judging.STATE_BADGE`)."""
    return STATE_BADGE[f.state]


def state_tooltip(f: Finding) -> str:
    """Why a finding carries no POSITIVE or negative verdict, in words ("" when it may)."""
    state = f.state
    if state is FindingState.OUTSIDE_POPULATION:
        return f"No POSITIVE badge: this image is {f.outside}."
    if state in (FindingState.NOT_VALIDATED, FindingState.ABOVE_NOT_VALIDATED):
        return ("No POSITIVE badge: this threshold was not validated (too few validation positives, or not "
                "measured against normal films); read the score, not the badge.")  # fmt: skip
    return ""


def _sort_score(f: Finding) -> float:
    v = finite(f.score)
    return -v if v is not None else math.inf  # non-numbers last, and sorting stays total


def sort_findings(findings: Sequence[Finding], mode: str) -> list[Finding]:
    """Order within a model group: by score, positives first, or as the model lists its labels."""
    if mode == "Model order":
        return list(findings)
    if mode == "Positive first":  # the report's order: POSITIVE, then above-not-validated, then the rest
        rank = {state: i for i, state in enumerate(REPORT_ORDER)}
        return sorted(findings, key=lambda f: (rank[f.state], _sort_score(f)))
    return sorted(findings, key=_sort_score)


class ScoreDelegate(QStyledItemDelegate):
    """Score as a number plus a bar with the threshold marked: how far above or below it lies."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        score = finite(index.data(ROLE_SCORE))
        if score is None:  # no score, or not a number: the row's text says so
            super().paint(painter, option, index)
            return
        try:
            self._paint_score(painter, option, index, score)
        except Exception:  # noqa: BLE001 - an exception escaping a paint override can take the process down
            log.exception("could not paint a score cell")

    def _paint_score(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex, score: float) -> None:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        opt.text = ""
        style = opt.widget.style() if opt.widget is not None else None
        if style is not None:
            style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, opt.widget)
        threshold = finite(index.data(ROLE_THRESHOLD))
        threshold = 0.5 if threshold is None else threshold
        rect = option.rect.adjusted(4, 2, -4, -2)
        painter.save()
        try:
            self._draw_bar(painter, rect, index, score, threshold)
        finally:
            painter.restore()

    def _draw_bar(self, painter: QPainter, rect: QRect, index: QModelIndex, score: float, threshold: float) -> None:
        text_w = 40
        painter.setPen(index.data(Qt.ItemDataRole.ForegroundRole).color() if index.data(Qt.ItemDataRole.ForegroundRole)
                       else QColor("#d6d8db"))
        painter.drawText(QRect(rect.left(), rect.top(), text_w, rect.height()),
                         int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight), f"{float(score):.3f}")
        bar = QRect(rect.left() + text_w + 6, rect.center().y() - 4, max(rect.width() - text_w - 8, 10), 8)
        painter.fillRect(bar, QColor("#2a2d31"))
        fill = QRect(bar.left(), bar.top(), int(round(bar.width() * min(max(score, 0.0), 1.0))), bar.height())
        painter.fillRect(fill, POSITIVE_COLOUR if score >= threshold else QColor("#4f7f5a"))
        x = bar.left() + int(round(bar.width() * min(max(threshold, 0.0), 1.0)))
        painter.setPen(QPen(QColor("#ffffff"), 2))
        painter.drawLine(x, bar.top() - 3, x, bar.bottom() + 3)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802 - Qt override
        s = super().sizeHint(option, index)
        return QSize(max(s.width(), 110), max(s.height(), 20))


class ThresholdDelegate(QStyledItemDelegate):
    """Double-click a threshold: a spin box 0-1; the new value goes to the controller, not the item."""

    def __init__(self, panel: "FindingsPanel") -> None:
        super().__init__(panel.tree)
        self._panel = panel

    def createEditor(self, parent: QWidget, option: QStyleOptionViewItem, index: QModelIndex) -> QWidget | None:  # noqa: N802
        if index.data(ROLE_KEY) is None:
            return None
        box = QDoubleSpinBox(parent)
        box.setRange(0.0, 1.0)
        box.setDecimals(3)
        box.setSingleStep(0.01)
        box.setToolTip("Operating threshold for this finding at this site (0-1). Enter to apply, Esc to cancel.")
        return box

    def setEditorData(self, editor: QWidget, index: QModelIndex) -> None:  # noqa: N802
        editor.setValue(float(index.data(ROLE_THRESHOLD) or 0.5))  # type: ignore[attr-defined]

    def setModelData(self, editor: QWidget, model: object, index: QModelIndex) -> None:  # noqa: N802
        key = index.data(ROLE_KEY)
        value = float(editor.value())  # type: ignore[attr-defined]
        if key is not None and abs(value - float(index.data(ROLE_THRESHOLD) or 0.0)) > 1e-9:
            # The list is rebuilt from the controller's state: do it after the editor has closed.
            QTimer.singleShot(0, lambda: self._panel.set_threshold(key[0], key[1], value))


class FindingsPanel(QWidget):
    """Findings grouped by model, QC flags above them, banners for untrained or missing models."""

    finding_activated = Signal(str, str)  # model, label (its heatmap was requested)
    prior_column_toggled = Signal(bool)  # the Prior → now column was shown (True) or hidden

    def __init__(self, controller: AnalysisController, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self._state = AnalysisState()
        self._items: dict[tuple[str, str], QTreeWidgetItem] = {}
        self._rebuilding = False
        self._deltas: dict[tuple[str, str], object] = {}  # (model, label) -> core.compare.ScoreDelta

        self.banner = QLabel(self)
        self.banner.setObjectName("findingsBanner")
        self.banner.setWordWrap(True)
        self.banner.setTextFormat(Qt.TextFormat.PlainText)
        self.banner.hide()
        self.qc_label = QLabel(self)
        self.qc_label.setObjectName("qcFlags")
        self.qc_label.setWordWrap(True)
        self.qc_label.setTextFormat(Qt.TextFormat.RichText)
        self.qc_label.hide()
        # which site profile the scores and thresholds come from (or why the active one is not applied)
        self.profile_label = QLabel(self)
        self.profile_label.setObjectName("siteProfile")
        self.profile_label.setWordWrap(True)
        self.profile_label.setTextFormat(Qt.TextFormat.PlainText)
        self.profile_label.hide()

        self.sort_combo = QComboBox(self)
        self.sort_combo.addItems(SORT_MODES)
        saved = str(controller.settings.value("findings/sort", "Score"))
        self.sort_combo.setCurrentText(saved if saved in SORT_MODES else "Score")
        self.sort_combo.setToolTip("Order of findings inside each model")
        self.sort_combo.currentTextChanged.connect(self._on_sort)
        self.summary_label = QLabel(self)
        self.summary_label.setObjectName("findingsSummary")

        self.tree = QTreeWidget(self)
        self.tree.setColumnCount(5)
        self.tree.setHeaderLabels(["Finding", "Score", "Threshold", "Result", "Prior → now"])
        self.tree.setColumnHidden(COL_PRIOR, True)  # shown in the current | prior layout
        self.tree.setRootIsDecorated(False)
        self.tree.setIndentation(8)
        self.tree.setUniformRowHeights(True)
        self.tree.setAlternatingRowColors(True)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._context_menu)
        self.tree.setItemDelegateForColumn(COL_SCORE, ScoreDelegate(self.tree))
        self.threshold_delegate = ThresholdDelegate(self)
        self.tree.setItemDelegateForColumn(COL_THRESHOLD, self.threshold_delegate)
        header = self.tree.header()
        header.setStretchLastSection(False)
        header.setSectionResizeMode(COL_LABEL, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(COL_SCORE, QHeaderView.ResizeMode.Fixed)
        header.setSectionResizeMode(COL_THRESHOLD, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_RESULT, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(COL_PRIOR, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.setColumnWidth(COL_SCORE, SCORE_COLUMN_PX)
        self.tree.itemSelectionChanged.connect(self._on_selection)

        self.reset_button = QPushButton("Reset threshold", self)
        self.reset_button.setToolTip("Go back to the model's own threshold for the selected finding")
        self.reset_button.clicked.connect(self._reset_selected)
        self.reset_button.setEnabled(False)
        self.footer = QLabel("Research use only — not for diagnosis. Double-click a threshold to change it.", self)
        self.footer.setObjectName("findingsFooter")
        self.footer.setWordWrap(True)
        self.footer.setStyleSheet("color:#8a8d91; font-size:11px;")

        top = QHBoxLayout()
        top.addWidget(self.summary_label, 1)
        top.addWidget(QLabel("Sort:", self))
        top.addWidget(self.sort_combo)
        bottom = QHBoxLayout()
        bottom.addWidget(self.footer, 1)
        bottom.addWidget(self.reset_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(6)
        layout.addWidget(self.banner)
        layout.addWidget(self.qc_label)
        layout.addWidget(self.profile_label)
        layout.addLayout(top)
        layout.addWidget(self.tree, 1)
        layout.addLayout(bottom)

        controller.state_changed.connect(self.set_state)
        controller.heatmap_changed.connect(lambda _h: self._mark_cam_target())
        controller.progress.connect(self._on_progress)
        self.set_state(controller.state)

    # ------------------------------------------------------------------ public
    @property
    def state(self) -> AnalysisState:
        return self._state

    def preferred_width(self, *, prior: bool | None = None) -> int:
        """Width (px) at which the longest finding name and badge show whole (with the Prior → now column
        when ``prior``, by default when it is shown)."""
        from PySide6.QtGui import QFontMetrics

        bold = QFont(self.tree.font())
        bold.setBold(True)
        fb, fm = QFontMetrics(bold), self.tree.fontMetrics()
        cell = 2 * (self.tree.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, self.tree) + 1) + 8
        label = self.tree.indentation() + fb.horizontalAdvance(WIDEST_LABEL) + cell
        threshold = max(fm.horizontalAdvance("Threshold"), fm.horizontalAdvance("0.000 ✎")) + cell
        result = max(fm.horizontalAdvance(WIDEST_RESULT), fb.horizontalAdvance("● POSITIVE")) + cell  # bold: positives
        m = self.layout().contentsMargins()
        frame = 2 * self.tree.frameWidth()
        if prior is None:
            prior = not self.tree.isColumnHidden(COL_PRIOR)
        extra = max(fb.horizontalAdvance(WIDEST_DELTA), fm.horizontalAdvance("Prior → now")) + cell if prior else 0
        return label + SCORE_COLUMN_PX + threshold + result + extra + m.left() + m.right() + frame + 8  # + dock frame

    def item_for(self, model: str, label: str) -> QTreeWidgetItem | None:
        return self._items.get((model, label))

    def rows(self) -> list[tuple[str, str, float, float, str]]:
        """(model, label, score, threshold, result text) in display order (for tests and export)."""
        out = []
        for g in range(self.tree.topLevelItemCount()):
            group = self.tree.topLevelItem(g)
            for i in range(group.childCount()):
                it = group.child(i)
                model, label = it.data(COL_LABEL, ROLE_KEY)
                out.append((model, label, float(it.data(COL_SCORE, ROLE_SCORE)),
                            float(it.data(COL_THRESHOLD, ROLE_THRESHOLD)), it.text(COL_RESULT)))
        return out

    def set_deltas(self, deltas: dict[tuple[str, str], object]) -> None:
        """Prior → current score per finding (core.compare.ScoreDelta); an empty dict hides the column."""
        self._deltas = dict(deltas)
        shown = not self.tree.isColumnHidden(COL_PRIOR)
        self.tree.setColumnHidden(COL_PRIOR, not self._deltas)
        self._rebuild(self._state)
        if shown != bool(self._deltas):
            self.prior_column_toggled.emit(bool(self._deltas))

    def delta_text(self, model: str, label: str) -> str:
        it = self._items.get((model, label))
        return it.text(COL_PRIOR) if it is not None else ""

    def set_threshold(self, model: str, label: str, value: float | None) -> None:
        self.controller.set_threshold(model, label, value)

    def show_heatmap(self, model: str, label: str) -> None:
        self.controller.request_cam(label, model)
        self.finding_activated.emit(model, label)

    # ------------------------------------------------------------------ rendering
    def set_state(self, state: AnalysisState) -> None:
        self._state = state
        self._render_banner(state)
        self._render_qc(state.qc)
        self._render_profile(state)
        self._rebuild(state)

    def _render_profile(self, state: AnalysisState) -> None:
        """The active site profile in the header: applied (name, version, date), or why not."""
        if state.status != "done":
            return  # keep the last line while the next image runs
        p = state.site_profile
        if p is not None:
            date = f", {str(p.get('created', ''))[:10]}" if p.get("created") else ""
            b = p.get("bundle") or {}
            self.profile_label.setText(f"Site profile {p.get('name')} v{p.get('version')}{date}: calibrated scores "
                                       f"and site thresholds for {b.get('name', '?')}")  # fmt: skip
            self.profile_label.setProperty("kind", "active")
            style = "background:#17332a; color:#b8f0d0; border-left:3px solid #3fb37f;"
        elif state.site_profile_message:
            self.profile_label.setText(("⚠ Site profile not applied: " if state.site_profile_stale else
                                        "Site profile not applied: ") + state.site_profile_message)  # fmt: skip
            self.profile_label.setProperty("kind", "stale" if state.site_profile_stale else "inactive")
            style = ("background:#4a2a12; color:#ffd9b0; border-left:3px solid #e08a3a;" if state.site_profile_stale
                     else "background:#1f2226; color:#c0c4c8; border-left:3px solid #8a8d91;")  # fmt: skip
        else:
            self.profile_label.setProperty("kind", "none")
            self.profile_label.setText("")
            self.profile_label.hide()
            return
        self.profile_label.setStyleSheet(f"QLabel#siteProfile {{ {style} padding:5px; border-radius:3px; }}")
        self.profile_label.show()

    def _render_banner(self, state: AnalysisState) -> None:
        kind, text = None, ""
        if state.status == "error":
            kind, text = "error", f"Analysis failed: {state.message}"
        elif state.status == "running":
            kind, text = "running", state.message or "Analysing…"
        elif state.status == "done" and not state.models:
            kind, text = "none", state.message
            if state.load_errors:
                text += "\n" + "\n".join(state.load_errors[:3])
        elif state.untrained_models or state.load_errors:
            kind = "untrained"
            parts = []
            if state.untrained_models:
                names = ", ".join(state.untrained_models)
                parts.append(f"UNTRAINED model: {names}. Random weights — these scores are meaningless and "
                             "are shown for testing only. Install trained model bundles in Tools › Models.")
            parts += [f"Not loaded: {e}" for e in state.load_errors[:3]]
            text = "\n".join(parts)
        if kind is None:
            self.banner.hide()
            return
        self.banner.setProperty("kind", kind)
        self.banner.setStyleSheet(f"QLabel#findingsBanner {{ {BANNER_STYLE[kind]} border-radius:4px; padding:6px; }}")
        self.banner.setText(text)
        self.banner.show()

    def _render_qc(self, flags: Sequence[QCFlag]) -> None:
        if not flags:
            self.qc_label.hide()
            self.qc_label.setText("")
            return
        lines = []
        for f in sorted(flags, key=lambda q: ("error", "warning", "info").index(q.severity)
                        if q.severity in ("error", "warning", "info") else 3):
            colour, mark = SEVERITY_STYLE.get(f.severity, SEVERITY_STYLE["warning"])
            text = f.message.replace("&", "&amp;").replace("<", "&lt;")
            lines.append(f"<span style='color:{colour}'>{mark} <b>{f.severity.upper()}</b></span> {text}")
        self.qc_label.setText("<br>".join(lines))
        self.qc_label.setStyleSheet("QLabel#qcFlags { background:#1f2226; border-left:3px solid #f0b64a; padding:5px; }")
        self.qc_label.show()

    def _rebuild(self, state: AnalysisState) -> None:
        self._rebuilding = True
        selected = self._selected_key()
        self.tree.clear()
        self._items = {}
        mode = self.sort_combo.currentText()
        reliable = not any(q.severity == "error" for q in state.qc)
        by_model: dict[str, list[Finding]] = {}
        for f in state.findings:
            by_model.setdefault(f.model, []).append(f)
        bold = QFont(self.tree.font())
        bold.setBold(True)
        n_pos = 0
        for m in state.models:
            findings = by_model.get(m["name"], [])
            trained = bool(m.get("trained", False))
            pos = sum(f.positive for f in findings)
            n_pos += pos if trained else 0
            title = f"{m['name']} {m.get('version', '')}".strip()
            tag = "  ·  UNTRAINED (random weights)" if not trained else f"  ·  {pos} positive"
            group = QTreeWidgetItem([title + tag, "", "", "", ""])
            group.setFlags(Qt.ItemFlag.ItemIsEnabled)
            group.setFont(COL_LABEL, bold)
            group.setForeground(COL_LABEL, QBrush(QColor("#ffd591" if not trained else "#aeb8c4")))
            group.setToolTip(COL_LABEL, f"Model {title}\nweights sha256 {str(m.get('sha256', ''))[:16]}…")
            self.tree.addTopLevelItem(group)
            group.setFirstColumnSpanned(True)  # only takes effect once the item is in the tree
            for f in sort_findings(findings, mode):
                group.addChild(self._make_item(f, trained and reliable))
            group.setExpanded(True)
        if state.models and state.status == "done":
            trained_models = [m for m in state.models if m.get("trained", False)]
            self.summary_label.setText(
                f"{n_pos} positive of {sum(len(by_model.get(m['name'], [])) for m in trained_models)}"
                if trained_models else "No trained model: no findings to report"
            )
        else:
            self.summary_label.setText("")
        if selected is not None and selected in self._items:
            self.tree.setCurrentItem(self._items[selected])
        self._mark_cam_target()
        self.reset_button.setEnabled(self._selected_key() is not None)
        self._rebuilding = False

    def _make_item(self, f: Finding, meaningful: bool) -> QTreeWidgetItem:
        user = f.threshold_method == "user"
        label = display_name(f.label)
        if f.validated is False and f.note:  # a derived score (e.g. TB lesion score): ⚠ on the row, the words in its tooltip
            label = f"⚠ {label}"  # short, so the name itself fits the column at the default size
        numeric = finite(f.score) is not None
        delta = self._deltas.get((f.model, f.label))
        it = QTreeWidgetItem([label, "" if numeric else "n/a", f"{f.threshold:.3f}" + (" ✎" if user else ""),
                              result_text(f), delta.text() if delta is not None else ""])  # type: ignore[attr-defined]
        it.setData(COL_LABEL, ROLE_KEY, (f.model, f.label))
        it.setData(COL_LABEL, ROLE_DISPLAY, label)
        it.setData(COL_THRESHOLD, ROLE_KEY, (f.model, f.label))
        it.setData(COL_SCORE, ROLE_SCORE, float(f.score))
        it.setData(COL_SCORE, ROLE_THRESHOLD, float(f.threshold))
        it.setData(COL_THRESHOLD, ROLE_THRESHOLD, float(f.threshold))
        it.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEditable)
        colour = POSITIVE_COLOUR if f.positive else NEGATIVE_COLOUR
        if not numeric:
            meaningful = False
        if not meaningful:
            colour = MUTED_COLOUR
            for c in range(4):
                it.setForeground(c, QBrush(MUTED_COLOUR))
        it.setForeground(COL_RESULT, QBrush(colour))
        font = QFont(self.tree.font())
        font.setBold(f.positive)
        it.setFont(COL_RESULT, font)
        if f.positive and meaningful:
            it.setBackground(COL_RESULT, QBrush(QColor(255, 122, 89, 40)))
        model_thr = self._model_threshold(f)
        if user:
            how = f"your site's threshold (the model's is {model_thr:.3f})"
        elif f.threshold_method.startswith("site profile "):
            how = (f"the {f.threshold_method} (the model's raw score {f.raw_score:.3f}, its threshold {model_thr:.3f})"
                   if f.raw_score is not None else f"the {f.threshold_method}")
        else:
            how = f"the model's threshold ({f.threshold_method or 'default'})"
        tip = (f"{f.label}: score {f.score:.3f} against {how}.\n"
               "Double-click the threshold to change it; right-click to reset. Click a finding to see its heatmap.")
        if not numeric:
            tip = ("The model returned a score that is not a number (NaN or infinite): no result. "
                   "The model bundle may be damaged; run cxr-viewer --self-test.\n" + tip)
        elif not meaningful:
            tip = "Not meaningful: untrained model or image outside the model's scope.\n" + tip
        if f.note:
            tip = f"{f.note}\n" + tip
        if state_tooltip(f):
            tip = state_tooltip(f) + "\n" + tip
        if f.validated is False:
            tip = f"⚠ {UNVALIDATED_MARK}.\n" + tip
        if f.validated is False:
            it.setForeground(COL_LABEL, QBrush(QColor("#ffd591")))
        for c in range(4):
            it.setToolTip(c, tip)
        if delta is not None:
            it.setToolTip(COL_PRIOR, delta.tooltip())  # type: ignore[attr-defined]
            if not delta.measured:  # type: ignore[attr-defined]  # no noise recorded: a number, never an arrow
                it.setForeground(COL_PRIOR, QBrush(MUTED_COLOUR))
            elif delta.significant:  # type: ignore[attr-defined]
                it.setForeground(COL_PRIOR, QBrush(POSITIVE_COLOUR if delta.change > 0 else NEGATIVE_COLOUR))  # type: ignore[attr-defined]
                bold_font = QFont(self.tree.font())
                bold_font.setBold(True)
                it.setFont(COL_PRIOR, bold_font)
        self._items[(f.model, f.label)] = it
        return it

    def _model_threshold(self, f: Finding) -> float:
        value = self.controller.model_threshold(f.model, f.label)
        return f.threshold if value is None else value

    def _mark_cam_target(self) -> None:
        label, model = self.controller.cam_target
        heat = self.controller.heatmap
        for (m, lab), it in self._items.items():
            shown = heat is not None and lab == heat.label and m == heat.model
            pending = not shown and lab == label and (model in (None, m))
            font = QFont(self.tree.font())
            font.setBold(shown)
            font.setItalic(pending)
            it.setFont(COL_LABEL, font)
            it.setText(COL_LABEL, ("◉ " if shown else "") + str(it.data(COL_LABEL, ROLE_DISPLAY) or lab.replace("_", " ")))

    # ------------------------------------------------------------------ interaction
    def _selected_key(self) -> tuple[str, str] | None:
        items = self.tree.selectedItems()
        if not items:
            return None
        key = items[0].data(COL_LABEL, ROLE_KEY)
        return tuple(key) if key is not None else None  # type: ignore[return-value]

    def _on_selection(self) -> None:
        key = self._selected_key()
        self.reset_button.setEnabled(key is not None)
        if self._rebuilding or key is None:
            return
        self.show_heatmap(*key)

    def _reset_selected(self) -> None:
        key = self._selected_key()
        if key is not None:
            self.set_threshold(key[0], key[1], None)

    def _context_menu(self, pos: QPoint) -> None:
        it = self.tree.itemAt(pos)
        key = it.data(COL_LABEL, ROLE_KEY) if it is not None else None
        if key is None:
            return
        model, label = key
        menu = QMenu(self)
        menu.addAction("Show heatmap", lambda: self.show_heatmap(model, label))
        menu.addAction("Edit threshold…", lambda: self.tree.editItem(it, COL_THRESHOLD))
        reset = menu.addAction("Reset to the model's threshold", lambda: self.set_threshold(model, label, None))
        reset.setEnabled(self.controller.threshold_override(model, label) is not None)
        menu.popup(self.tree.viewport().mapToGlobal(pos))
        self._menu = menu

    def _on_sort(self, mode: str) -> None:
        self.controller.settings.setValue("findings/sort", mode)
        self._rebuild(self._state)

    def _on_progress(self, text: str) -> None:
        if self._state.status == "running" and text:
            self.banner.setText(text)

