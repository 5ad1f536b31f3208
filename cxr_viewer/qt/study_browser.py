"""Study browser: scanned folders as patient > study > series > image, with thumbnails.

Thumbnails are computed off the GUI thread (:func:`make_thumbnail` is Qt-free and
runs in a worker); the tree only receives finished 8-bit arrays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import QTreeWidget, QTreeWidgetItem, QWidget

from cxr_viewer.qt.overlays import gray_to_qimage

THUMB_SIZE = 72
PATH_ROLE = Qt.ItemDataRole.UserRole + 1
OPENED_LABEL = "Opened files"


def make_thumbnail(path: Path, size: int = THUMB_SIZE * 2) -> tuple[Path, np.ndarray]:
    """Read an image and shrink it in its default window (runs in a worker thread)."""
    from cxr_viewer.core.imaging.windowing import PRESETS
    from cxr_viewer.core.io import read_image

    record = read_image(path)
    lo, hi = PRESETS["Default"].get_limits(record)
    return Path(path), thumbnail_array(record.pixels, lo, hi, size)


def thumbnail_array(pixels: np.ndarray, lo: float, hi: float, size: int = THUMB_SIZE * 2) -> np.ndarray:
    """Window then shrink an image to fit a ``size`` x ``size`` box, keeping its aspect."""
    from PIL import Image

    from cxr_viewer.core.imaging.windowing import window_to_uint8

    h, w = pixels.shape
    step = max(1, min(h, w) // (size * 2))  # cheap pre-shrink before the filtered resize
    img = Image.fromarray(window_to_uint8(pixels[::step, ::step], lo, hi))
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


class StudyBrowser(QTreeWidget):
    """Tree of scanned patients/studies/series plus files opened one by one."""

    open_requested = Signal(object)  # Path

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setHeaderHidden(True)
        self.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.setIndentation(14)
        self.setUniformRowHeights(False)
        self.setAnimated(False)
        self.setMinimumWidth(200)
        self.setWordWrap(True)  # long file names wrap beside the thumbnail instead of being cut off
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._patients: list[Any] = []
        self._opened: list[Path] = []
        self._thumbs: dict[Path, QIcon] = {}
        self._show_identity = True
        self._placeholder = _placeholder_icon()
        self.itemClicked.connect(self._on_item)
        self.itemActivated.connect(self._on_item)

    # ------------------------------------------------------------------ content
    def set_patients(self, patients: Sequence[Any]) -> None:
        self._patients = list(patients)
        self._rebuild()

    def set_opened_files(self, paths: Sequence[Path]) -> None:
        self._opened = [Path(p) for p in paths]
        self._rebuild()

    def set_show_identity(self, show: bool) -> None:
        """Show patient names, or neutral "Patient 1, 2..." labels (screenshots, teaching)."""
        self._show_identity = bool(show)
        self._rebuild()

    def set_thumbnail(self, path: Path, thumb: np.ndarray) -> None:
        icon = QIcon(QPixmap.fromImage(gray_to_qimage(thumb)))
        self._thumbs[Path(path)] = icon
        for item in self._items_for(Path(path)):
            item.setIcon(0, icon)

    def has_thumbnail(self, path: Path) -> bool:
        return Path(path) in self._thumbs

    def image_paths(self) -> list[Path]:
        """Every image listed, in tree order."""
        return [item.data(0, PATH_ROLE) for item in self._image_items()]

    def missing_thumbnails(self) -> list[Path]:
        seen: set[Path] = set()
        out = []
        for p in self.image_paths():
            if p not in self._thumbs and p not in seen:
                seen.add(p)
                out.append(p)
        return out

    def select_path(self, path: Path | None) -> None:
        """Highlight the image being shown, without re-opening it."""
        self.blockSignals(True)
        try:
            self.clearSelection()
            for item in self._items_for(Path(path)) if path is not None else []:
                item.setSelected(True)
                self.scrollToItem(item)
                break
        finally:
            self.blockSignals(False)

    # ------------------------------------------------------------------ internals
    def _rebuild(self) -> None:
        self.clear()
        listed: set[Path] = set()
        for n, patient in enumerate(self._patients, start=1):
            label = patient.label if (self._show_identity or patient.is_file_group) else f"Patient {n}"
            p_item = _wrapped_item(self, label)  # names that tell films apart wrap, never "000…5_000.png"
            _bold(p_item)
            for study in patient.studies:
                s_item = _wrapped_item(p_item, study.label)
                for series in study.series:
                    se_item = _wrapped_item(s_item, series.label)
                    se_item.setForeground(0, QColor("#aeb2b8"))
                    for inst in series.instances:
                        self._image_item(se_item, Path(inst.path), inst.label)
                        listed.add(Path(inst.path))
        extra = [p for p in self._opened if p not in listed]
        if extra:
            group = QTreeWidgetItem(self, [OPENED_LABEL])
            _bold(group)
            for path in extra:
                self._image_item(group, path, path.name)
        self.expandAll()

    def _image_item(self, parent: QTreeWidgetItem, path: Path, label: str) -> QTreeWidgetItem:
        item = QTreeWidgetItem(parent, [wrappable(label)])
        item.setData(0, PATH_ROLE, path)
        item.setToolTip(0, path.name)
        item.setIcon(0, self._thumbs.get(path, self._placeholder))
        item.setSizeHint(0, QSize(THUMB_SIZE + 8, THUMB_SIZE + 6))
        return item

    def _image_items(self) -> Iterator[QTreeWidgetItem]:
        stack = [self.topLevelItem(i) for i in range(self.topLevelItemCount())]
        order: list[QTreeWidgetItem] = []
        while stack:
            item = stack.pop(0)
            if item.data(0, PATH_ROLE) is not None:
                order.append(item)
            stack[0:0] = [item.child(i) for i in range(item.childCount())]
        return iter(order)

    def _items_for(self, path: Path) -> list[QTreeWidgetItem]:
        return [it for it in self._image_items() if it.data(0, PATH_ROLE) == path]

    def _on_item(self, item: QTreeWidgetItem, column: int = 0) -> None:
        path = item.data(0, PATH_ROLE)
        if path is not None:
            self.open_requested.emit(Path(path))


def wrappable(text: str) -> str:
    """Allow line breaks after _ . - in file names and in a size such as 1024x1024 (zero-width spaces), so a
    caption wraps instead of being cut or elided in the narrow dock."""
    import re

    for ch in "_.-":
        text = text.replace(ch, ch + "\u200b")
    return re.sub(r"(\d)x(\d)", "\\1x\u200b\\2", text)


def _wrapped_item(parent: Any, label: str) -> QTreeWidgetItem:
    item = QTreeWidgetItem(parent, [wrappable(label)])
    item.setToolTip(0, label)
    return item


def _bold(item: QTreeWidgetItem) -> None:
    font = item.font(0)
    font.setBold(True)
    item.setFont(0, font)


def _placeholder_icon() -> QIcon:
    pm = QPixmap(THUMB_SIZE, THUMB_SIZE)
    pm.fill(QColor("#26292d"))
    return QIcon(pm)
