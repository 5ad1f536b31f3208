"""The report panel: report text -> sentences -> one coloured mask per sentence that names a region.

The text is pasted, loaded from a file, or read from the study (a ``report``
metadata field, or a ``.txt`` with the image's stem beside it). It is split with
:mod:`cxr_viewer.core.report`; sentences that name no region are listed but not
drawn. Masks are computed off the GUI thread by the analysis controller; each can
be shown or hidden, drawn as a contour or a fill. Any free phrase can be drawn too.
The image / mask / overlay triptych exports as a PNG (matplotlib Agg, no window).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.session import MASK_STYLES, MaskLayer, Session
from cxr_viewer.qt.analysis import AnalysisController, mask_layers

if TYPE_CHECKING:
    from cxr_viewer.core.inference.segment import Mask

log = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".txt", ".report.txt", "_report.txt")
MAX_REPORT_BYTES = 1_000_000


@dataclass(frozen=True)
class ReportRow:
    """One line of the sentence list: a report sentence or a free phrase."""

    text: str
    regions: tuple[str, ...] = ()
    drawable: bool = True
    negative: bool = False
    source: str = "report"  # report | phrase


STORED_SOURCE = "the study's annotations"


def find_report_text(record: ImageRecord | None) -> tuple[str, str] | None:
    """(text, where it came from) for a study's report: the one the reader pasted (stored with the study's
    annotations), else a metadata field, else a sidecar .txt."""
    from cxr_viewer.core.imaging.measurements import load_report, sidecar_path

    if record is None:
        return None
    src = record.source
    if src is not None and sidecar_path(src).is_file():
        try:
            stored = load_report(sidecar_path(src))
        except (OSError, ValueError):
            stored = None
        if stored:
            return stored, STORED_SOURCE
    text = record.metadata.get("report") if record.metadata else None
    if isinstance(text, str) and text.strip():
        return text, "the image file"
    if src is None:
        return None
    for suffix in SIDECAR_SUFFIXES:
        cand = src.with_name(src.stem + suffix)
        if cand.is_file() and cand != src:
            try:
                if cand.stat().st_size > MAX_REPORT_BYTES:
                    continue
                return cand.read_text(encoding="utf-8", errors="replace"), cand.name
            except OSError:
                log.debug("could not read a report file beside the image", exc_info=True)
    return None


def report_rows(text: str) -> list[ReportRow]:
    """Sentences worth drawing (FINDINGS / IMPRESSION, else all), each with the regions it names."""
    from cxr_viewer.core.report import parse_report, region_phrases

    rows = []
    for s in parse_report(text).finding_sentences():
        reading = region_phrases(s.text)
        phrases = tuple(r.phrase for r in reading.regions)
        rows.append(ReportRow(s.text, phrases, bool(phrases), reading.negative))
    return rows


def drawn_text(drawn: int, empty: int) -> str:
    """"2 regions drawn; nothing found for 1 sentence" (plurals right; "" when nothing was asked)."""
    if not drawn and not empty:
        return ""
    parts = [f"{drawn} region{'' if drawn == 1 else 's'} drawn"] if drawn or not empty else []
    if empty:
        parts.append(f"nothing found for {empty} sentence{'' if empty == 1 else 's'}")
    text = "; ".join(parts)
    return text[0].upper() + text[1:]


def _swatch(colour: Sequence[int]) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(*colour))
    return QIcon(pm)


def export_tri_panel(
    record: ImageRecord,
    masks: Sequence[MaskLayer],
    path: str | Path,
    *,
    window: tuple[float, float] | None = None,
    invert: bool = False,
    title: str = "",
) -> Path:
    """Write image | masks | overlay side by side as a PNG, with the sentences as a legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from cxr_viewer.core.imaging.windowing import window_to_uint8

    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    lo, hi = window if window is not None else (0.0, 1.0)
    gray = window_to_uint8(record.pixels, lo, hi, invert=invert)
    h, w = gray.shape
    step = max(1, int(np.ceil(max(h, w) / 1024)))  # a 1024 px panel is plenty for a figure
    gray = gray[::step, ::step]
    shown = [m for m in masks if m.visible]
    colour_img = np.zeros(gray.shape + (3,), dtype=np.float32)
    alpha = np.zeros(gray.shape, dtype=np.float32)
    for m in shown:
        b = m.binary()
        if b.shape != (h, w):
            from PIL import Image

            b = np.asarray(Image.fromarray(b.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127
        b = b[::step, ::step]
        colour_img[b] = np.asarray(m.color, dtype=np.float32) / 255.0
        alpha[b] = m.opacity if m.style == "fill" else 0.45
    base = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    overlay = base * (1.0 - alpha[..., None]) + colour_img * alpha[..., None]

    fig = Figure(figsize=(15, 6), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, img, name in zip(axes, (gray, colour_img, overlay), ("Image", "Masks", "Overlay")):
        if img.ndim == 2:
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
        else:
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(name, color="white", fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a frame, so an all-black mask panel still shows its extent
            spine.set_color("#555555")
    for m in shown:
        b = m.binary()[::step, ::step] if m.binary().shape == (h, w) else None
        if b is not None and b.any():
            axes[2].contour(b.astype(np.float32), levels=[0.5], colors=[tuple(c / 255 for c in m.color)], linewidths=1.2)
    if shown:
        handles = [Patch(color=tuple(c / 255 for c in m.color), label=(m.text if len(m.text) <= 90 else m.text[:89] + "…"))
                   for m in shown]
        fig.legend(handles=handles, loc="lower center", ncol=1 if len(shown) < 4 else 2, frameon=False,
                   labelcolor="white", fontsize=9)
    fig.suptitle(title or "Report-conditioned regions — research use only, not for diagnosis", color="#bbbbbb", fontsize=10)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.06 + 0.035 * min(len(shown), 6), wspace=0.03)
    from cxr_viewer.core.staging import staged_file

    with staged_file(path) as part:
        fig.savefig(str(part), format="png", facecolor="black")
    return path


class ReportPanel(QWidget):
    """Report text, its sentences with coloured masks (toggle each), free phrases and export."""

    def __init__(self, controller: AnalysisController, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.controller = controller
        self.session = session
        self._rows: list[ReportRow] = []  # report sentences then free phrases
        self._phrases: list[str] = []
        self._masks: list[Mask] = []
        self._mask_rows: list[int] = []  # row index of each mask
        self._visible: dict[str, bool] = {}
        self._updating = False
        self.source_text = ""

        self.editor = QPlainTextEdit(self)
        self.editor.setPlaceholderText(
            "Paste the report here (FINDINGS / IMPRESSION), or load it from a file.\n"
            "A .txt with the image's name beside the image is read automatically."
        )
        self.editor.setMaximumHeight(140)
        self.editor.setMinimumHeight(44)  # the tab it shares with the heatmap controls stays short at 1400x900
        self.load_button = QPushButton("Load…", self)
        self.load_button.setToolTip("Read the report from a text file")
        self.draw_button = QPushButton("Draw regions", self)
        self.draw_button.setToolTip("Split the report into sentences and draw the region each names")
        self.source_label = QLabel("", self)
        self.source_label.setStyleSheet("color:#9aa0a6;")
        self.sentence_list = QListWidget(self)
        self.sentence_list.setObjectName("sentenceList")
        self.sentence_list.setWordWrap(True)
        self.sentence_list.setToolTip("Tick a sentence to show its region on the image")
        # three sentences in view (a fourth scrolls): the report's usual FINDINGS + IMPRESSION fit whole
        self.sentence_list.setMinimumHeight(3 * (self.sentence_list.fontMetrics().height() + 6)
                                            + 2 * self.sentence_list.frameWidth())
        self.phrase_edit = QLineEdit(self)
        self.phrase_edit.setPlaceholderText("Draw any phrase, e.g. “right lower zone opacity”")
        self.phrase_button = QPushButton("Add", self)
        self.style_combo = QComboBox(self)
        self.style_combo.addItems(list(MASK_STYLES))
        self.style_combo.setCurrentText(str(session.preference("mask_style")))
        self.style_combo.setToolTip("Draw each region as an outline or a filled area")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.opacity_slider.setRange(5, 100)
        self.opacity_slider.setValue(int(round(float(session.preference("mask_opacity")) * 100)))
        self.opacity_slider.setToolTip("Opacity of filled regions")
        self.export_button = QPushButton("Export image / mask / overlay…", self)
        self.export_button.setEnabled(False)
        self.message = QLabel("", self)
        self.message.setObjectName("reportMessage")
        self.message.setWordWrap(True)
        self.message.setStyleSheet("color:#f0b64a;")
        self.message.hide()

        row = QHBoxLayout()
        row.addWidget(self.load_button)
        row.addWidget(self.draw_button)
        row.addWidget(self.source_label, 1)
        phrase = QHBoxLayout()
        phrase.addWidget(self.phrase_edit, 1)
        phrase.addWidget(self.phrase_button)
        style = QHBoxLayout()
        style.addWidget(QLabel("Style", self))
        style.addWidget(self.style_combo)
        style.addWidget(QLabel("Opacity", self))
        style.addWidget(self.opacity_slider, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.editor)
        layout.addLayout(row)
        layout.addWidget(self.message)
        layout.addWidget(self.sentence_list, 1)
        layout.addLayout(phrase)
        layout.addLayout(style)
        layout.addWidget(self.export_button)

        self.load_button.clicked.connect(self.load_dialog)
        self.draw_button.clicked.connect(self.draw)
        self.phrase_button.clicked.connect(self._add_phrase_from_edit)
        self.phrase_edit.returnPressed.connect(self._add_phrase_from_edit)
        self.sentence_list.itemChanged.connect(self._on_item_changed)
        self.style_combo.currentTextChanged.connect(self._on_style)
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        self.export_button.clicked.connect(self.export_dialog)
        controller.masks_changed.connect(self._on_masks)
        controller.segment_failed.connect(self._show_message)
        session.events.record_changed.connect(self._on_record)

    # ------------------------------------------------------------------ public
    @property
    def rows(self) -> list[ReportRow]:
        return list(self._rows)

    @property
    def mask_layers(self) -> list[MaskLayer]:
        return self.session.masks

    def set_report(self, text: str, source: str = "") -> None:
        """Show a report and list its sentences (masks are drawn by :meth:`draw`)."""
        self._updating = True
        self.editor.setPlainText(text)
        self._updating = False
        self.source_text = source
        self.source_label.setText(f"Read from {source}" if source else "")
        self._phrases = []
        self._set_rows(report_rows(text) if text.strip() else [])

    def draw(self) -> None:
        """Split the editor's text and ask for one mask per sentence that names a region (plus phrases).

        A report typed or pasted here is stored with the study's annotations, so it is back when the study is
        opened again."""
        text = self.editor.toPlainText()
        self._set_rows(report_rows(text) + [ReportRow(p, (p,), True, False, "phrase") for p in self._phrases])
        self._request()
        self._store(text)

    def add_phrase(self, phrase: str) -> None:
        """Draw any phrase alongside the report's sentences."""
        phrase = phrase.strip()
        if not phrase or phrase in self._phrases:
            return
        self._phrases.append(phrase)
        self._set_rows([r for r in self._rows if r.source == "report"] +
                       [ReportRow(p, (p,), True, False, "phrase") for p in self._phrases])
        self._request()

    def set_row_visible(self, row: int, visible: bool) -> None:
        item = self.sentence_list.item(row)
        if item is not None and item.flags() & Qt.ItemFlag.ItemIsUserCheckable:
            item.setCheckState(Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked)

    def load_dialog(self) -> None:
        start = ""
        if self.session.record is not None and self.session.record.source is not None:
            start = str(self.session.record.source.parent)
        path, _ = QFileDialog.getOpenFileName(self, "Load report text", start, "Text (*.txt);;All files (*)")
        if path:
            self.load_file(path)

    def load_file(self, path: str | Path) -> None:
        path = Path(path)
        try:
            if path.stat().st_size > MAX_REPORT_BYTES:
                self._show_message(f"{path.name} is too large to be a report.")
                return
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            self._show_message(f"Could not read {path.name}: {exc.strerror or exc}.")
            return
        self.set_report(text, path.name)
        self.draw()

    def export_dialog(self) -> None:
        record = self.session.record
        if record is None:
            return
        stem = record.source.stem if record.source is not None else "report"
        start = str((record.source.parent if record.source is not None else Path.home()) / f"{stem}_regions.png")
        path, _ = QFileDialog.getSaveFileName(self, "Export image / mask / overlay", start, "PNG image (*.png)")
        if path:
            self.export(path)

    def export(self, path: str | Path) -> Path | None:
        record = self.session.record
        if record is None:
            return None
        state = self.session.display
        try:
            out = export_tri_panel(record, self.session.masks, path, window=state.window, invert=state.invert)
        except OSError as exc:
            self._show_message(f"Could not write {Path(path).name}: {exc.strerror or exc}.")
            return None
        self.source_label.setText(f"Saved {out.name}")
        return out

    def _store(self, text: str) -> None:
        from cxr_viewer.core.imaging.measurements import save_report, sidecar_path

        record = self.session.record
        if record is None or record.source is None or not text.strip():
            return
        found = find_report_text(record)
        if found is not None and found[0] == text:
            return  # already the study's report (stored, in the file, or beside it)
        try:
            save_report(sidecar_path(record.source), text, record)
        except OSError as exc:
            self._show_message(f"The report is drawn but could not be stored beside {record.source.name} "
                               f"({exc.strerror or exc}); it will not be there when the study is opened again.")
            return
        self.source_text = STORED_SOURCE

    def disconnect_session(self) -> None:
        self.session.events.record_changed.disconnect(self._on_record)

    # ------------------------------------------------------------------ internals
    def _request(self) -> None:
        phrases = [r.text for r in self._rows if r.drawable]
        self._masks, self._mask_rows = [], []
        self.session.set_masks([])
        self.export_button.setEnabled(False)
        if self.session.record is None:
            self._show_message("Open an image first.")
            return
        if not phrases:
            self._show_message("No sentence names a region that can be drawn." if self._rows else "")
            return
        self._show_message("")
        self.source_label.setText("Drawing regions…")
        self.controller.segment(phrases)

    def _set_rows(self, rows: list[ReportRow]) -> None:
        self._rows = rows
        self._updating = True
        self.sentence_list.clear()
        for r in rows:
            item = QListWidgetItem(r.text)
            if r.drawable:
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsSelectable)
                item.setCheckState(Qt.CheckState.Checked if self._visible.get(r.text, True) else Qt.CheckState.Unchecked)
                where = ", ".join(r.regions)
                item.setToolTip(f"Names: {where}" + (" (reads as normal)" if r.negative else ""))
            else:
                item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                item.setForeground(QColor("#7c8086"))
                item.setToolTip("This sentence names no region, so nothing is drawn for it.")
            self.sentence_list.addItem(item)
        self._updating = False

    def _on_masks(self, masks: list["Mask"]) -> None:
        drawable = [i for i, r in enumerate(self._rows) if r.drawable]
        texts = [self._rows[i].text for i in drawable]
        if [m.text for m in masks] != texts[: len(masks)] or len(masks) != len(texts):
            if masks:
                log.debug("masks for another set of sentences dropped")
            self._masks, self._mask_rows = [], []
            self.export_button.setEnabled(False)
            return
        found = [(m, row) for m, row in zip(masks, drawable) if not m.empty]
        self._masks, self._mask_rows = [m for m, _r in found], [r for _m, r in found]
        self._updating = True
        for m, row in zip(masks, drawable):
            item = self.sentence_list.item(row)
            if m.empty:  # the model found nothing for it: said in the list, never drawn, counted or exported
                item.setText(f"{self._rows[row].text} — nothing found")
                item.setFlags(Qt.ItemFlag.ItemIsEnabled)
                item.setData(Qt.ItemDataRole.CheckStateRole, None)
                item.setForeground(QColor("#7c8086"))
                item.setToolTip("The model found no region for this sentence, so nothing is drawn or exported for it.")
                continue
            item.setIcon(_swatch(m.colour))
            pct = 100.0 * m.area_fraction
            item.setToolTip(item.toolTip() + f"\nArea {pct:.1f}% of the image")
        self._updating = False
        self.source_label.setText(drawn_text(len(self._masks), len(masks) - len(self._masks)))
        self._apply()
        self.export_button.setEnabled(bool(self._masks))

    def _apply(self) -> None:
        if not self._masks:
            self.session.set_masks([])
            return
        visible = []
        for row in self._mask_rows:
            item = self.sentence_list.item(row)
            visible.append(item is not None and item.checkState() == Qt.CheckState.Checked)
        self.session.set_preference("mask_style", self.style_combo.currentText())
        self.session.set_preference("mask_opacity", self.opacity_slider.value() / 100.0)
        self.session.set_masks(mask_layers(self._masks, visible=visible, style=self.style_combo.currentText(),
                                           opacity=self.opacity_slider.value() / 100.0))

    def _on_item_changed(self, item: QListWidgetItem) -> None:
        if self._updating:
            return
        row = self.sentence_list.row(item)
        on = item.checkState() == Qt.CheckState.Checked
        self._visible[item.text()] = on
        if row in self._mask_rows:
            self.session.update_mask(self._mask_rows.index(row), visible=on)

    def _on_style(self, _style: str) -> None:
        self._apply()

    def _on_opacity(self, _value: int) -> None:
        self._apply()

    def _add_phrase_from_edit(self) -> None:
        text = self.phrase_edit.text()
        self.phrase_edit.clear()
        self.add_phrase(text)

    def _show_message(self, text: str) -> None:
        self.message.setText(text)
        self.message.setVisible(bool(text))
        if text:
            self.source_label.setText("")

    def _on_record(self, record: ImageRecord | None) -> None:
        self._masks, self._mask_rows = [], []
        self._visible = {}
        self.export_button.setEnabled(False)
        found = find_report_text(record)
        if found is None:
            self.set_report("", "")
            self._show_message("")
            return
        text, source = found
        self.set_report(text, source)
        if any(r.drawable for r in self._rows):
            self._request()
