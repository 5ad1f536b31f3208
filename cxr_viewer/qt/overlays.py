"""Drawing the session's overlay data (heatmap, masks, measurements) as scene items.

Every item lives in image pixel coordinates (x = column, y = row), so the
canvas's view transform (zoom, rotation, flip) moves image and overlays as one.
matplotlib and contourpy are imported only when the first overlay is drawn.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsLineItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QStyleOptionGraphicsItem,
    QWidget,
)

from cxr_viewer.core.session import HeatmapLayer, MaskLayer, Measurement

log = logging.getLogger(__name__)

FALLBACK_COLORMAP = "jet"


@lru_cache(maxsize=16)
def colormap_lut(name: str) -> np.ndarray:
    """A 256x4 uint8 RGBA lookup table for a matplotlib colormap name."""
    from matplotlib import colormaps

    try:
        cmap = colormaps[name]
    except KeyError:
        log.warning("unknown colormap %r; using %s", name, FALLBACK_COLORMAP)
        cmap = colormaps[FALLBACK_COLORMAP]
    lut = cmap(np.linspace(0.0, 1.0, 256))
    return np.ascontiguousarray((lut * 255.0 + 0.5).astype(np.uint8))


def rgba_to_qimage(rgba: np.ndarray) -> QImage:
    """Copy an HxWx4 uint8 array into a QImage that owns its memory."""
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w = rgba.shape[:2]
    return QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()


def gray_to_qimage(gray: np.ndarray) -> QImage:
    gray = np.ascontiguousarray(gray, dtype=np.uint8)
    h, w = gray.shape
    return QImage(gray.data, w, h, w, QImage.Format.Format_Grayscale8).copy()


def heatmap_rgba(layer: HeatmapLayer) -> np.ndarray:
    """Colour the heatmap; pixels under the threshold are fully transparent."""
    idx = np.clip(layer.data * 255.0 + 0.5, 0, 255).astype(np.uint8)
    rgba = colormap_lut(layer.colormap)[idx]
    if layer.threshold is not None:
        # transparent below the cut-off, fading in over the next 0.1 so the map has no hard edge
        t = float(layer.threshold)
        ramp = max(min(0.1, 1.0 - t), 1e-3)
        rgba[..., 3] = (np.clip((layer.data - t) / ramp, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return rgba


def mask_rgba(layer: MaskLayer) -> np.ndarray:
    binary = layer.binary()
    rgba = np.zeros(binary.shape + (4,), dtype=np.uint8)
    rgba[binary, :3] = layer.color
    rgba[binary, 3] = 255
    return rgba


def mask_contour_path(layer: MaskLayer) -> QPainterPath:
    """Outline of the mask in its own pixel coordinates (pixel centres at i + 0.5)."""
    import contourpy

    padded = np.pad(layer.binary().astype(np.float32), 1)
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    path = QPainterPath()
    for line in lines:
        if len(line) < 2:
            continue
        pts = line - 1.0 + 0.5  # undo padding, move to pixel centres
        path.moveTo(QPointF(float(pts[0, 0]), float(pts[0, 1])))
        for x, y in pts[1:]:
            path.lineTo(QPointF(float(x), float(y)))
    return path


def stretch_to(item: QGraphicsItem, src_shape: tuple[int, int], image_shape: tuple[int, int]) -> None:
    """Scale an overlay of ``src_shape`` so it covers an image of ``image_shape``."""
    from PySide6.QtGui import QTransform

    sy = image_shape[0] / max(src_shape[0], 1)
    sx = image_shape[1] / max(src_shape[1], 1)
    item.setTransform(QTransform.fromScale(sx, sy))


def make_heatmap_item(layer: HeatmapLayer, image_shape: tuple[int, int]) -> QGraphicsPixmapItem:
    item = QGraphicsPixmapItem(QPixmap.fromImage(rgba_to_qimage(heatmap_rgba(layer))))
    item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
    item.setShapeMode(QGraphicsPixmapItem.ShapeMode.BoundingRectShape)
    item.setOpacity(layer.opacity)
    stretch_to(item, layer.data.shape, image_shape)
    item.setVisible(layer.visible)
    return item


def make_mask_item(layer: MaskLayer, image_shape: tuple[int, int]) -> QGraphicsItem:
    if layer.style == "fill":
        item: QGraphicsItem = QGraphicsPixmapItem(QPixmap.fromImage(rgba_to_qimage(mask_rgba(layer))))
        item.setOpacity(layer.opacity)
    else:
        item = QGraphicsPathItem(mask_contour_path(layer))
        pen = QPen(QColor(*layer.color), 2.0)
        pen.setCosmetic(True)  # stays 2 screen pixels wide at any zoom
        item.setPen(pen)
        item.setOpacity(max(layer.opacity, 0.8))
    stretch_to(item, layer.mask.shape, image_shape)
    item.setVisible(layer.visible)
    return item


class LabelItem(QGraphicsItem):
    """Screen-sized text on a dark plate, pinned to a scene point (ignores zoom/rotation)."""

    def __init__(self, text: str, colour: QColor, parent: QGraphicsItem | None = None) -> None:
        super().__init__(parent)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self._text = text
        self._colour = colour
        self._font = QFont()
        self._font.setPointSizeF(10.0)
        self._font.setBold(True)

    @property
    def text(self) -> str:
        return self._text

    def set_text(self, text: str) -> None:
        self.prepareGeometryChange()
        self._text = text
        self.update()

    def boundingRect(self) -> QRectF:
        fm = QFontMetricsF(self._font)
        return QRectF(8.0, -fm.height() - 8.0, fm.horizontalAdvance(self._text) + 10.0, fm.height() + 4.0)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        rect = self.boundingRect()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 170))
        painter.drawRoundedRect(rect, 3, 3)
        painter.setFont(self._font)
        painter.setPen(self._colour)
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self._text)


class MeasurementItem(QGraphicsItem):
    """A measured line with end ticks and its length label."""

    def __init__(self, measurement: Measurement | None, colour: QColor) -> None:
        super().__init__()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents, True)
        pen = QPen(colour, 2.0)
        pen.setCosmetic(True)
        self.line = QGraphicsLineItem(self)
        self.line.setPen(pen)
        self.label = LabelItem("", colour, self)
        self.measurement: Measurement | None = None
        if measurement is not None:
            self.set_measurement(measurement)

    def set_measurement(self, m: Measurement) -> None:
        self.measurement = m
        # image points have pixel centres at integers; scene pixels span [i, i + 1)
        (r0, c0), (r1, c1) = m.p0, m.p1
        self.line.setLine(c0 + 0.5, r0 + 0.5, c1 + 0.5, r1 + 0.5)
        self.label.setPos(QPointF(c1 + 0.5, r1 + 0.5))
        self.label.set_text(m.label)

    def boundingRect(self) -> QRectF:
        return QRectF()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        pass


class ColorBar(QWidget):
    """Vertical colour scale for the heatmap (0 at the bottom, 1 at the top)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._colormap = FALLBACK_COLORMAP
        self._title = ""
        self._threshold: float | None = None
        self.setFixedWidth(64)
        self.setMinimumHeight(120)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, True)

    @property
    def colormap(self) -> str:
        return self._colormap

    def set_layer(self, layer: HeatmapLayer | None) -> None:
        if layer is None:
            self.hide()
            return
        self._colormap = layer.colormap
        self._title = layer.method or "heat"
        self._threshold = layer.threshold
        self.setVisible(layer.visible)
        self.update()

    def paintEvent(self, event: object) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(0, 0, 0, 140))
        fm = painter.fontMetrics()
        top, bottom = fm.height() + 8, self.height() - fm.height() // 2 - 6
        bar = QRectF(8, top, 14, max(bottom - top, 10))
        lut = colormap_lut(self._colormap)
        img = rgba_to_qimage(lut[::-1][:, None, :].repeat(1, axis=1))
        painter.drawImage(bar, img)
        painter.setPen(QColor("#d6d8db"))
        painter.drawRect(bar)
        painter.drawText(QRectF(0, 2, self.width(), fm.height() + 4), Qt.AlignmentFlag.AlignCenter, self._title[:10])
        for value in (0.0, 0.5, 1.0):
            y = bar.bottom() - value * bar.height()
            painter.drawLine(QPointF(bar.right(), y), QPointF(bar.right() + 4, y))
            painter.drawText(QPointF(bar.right() + 7, y + fm.ascent() / 2 - 1), f"{value:.1f}")
        if self._threshold is not None:
            y = bar.bottom() - self._threshold * bar.height()
            painter.setPen(QPen(QColor("#ffffff"), 1, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(bar.left() - 3, y), QPointF(bar.right() + 3, y))
        painter.end()
