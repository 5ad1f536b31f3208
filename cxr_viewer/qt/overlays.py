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
from PySide6.QtGui import (
    QColor,
    QFont,
    QFontMetricsF,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import (
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QStyleOptionGraphicsItem,
    QWidget,
)

from cxr_viewer.core.session import HeatmapLayer, MaskLayer

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
    """Colour the heatmap at its score-scaled values; pixels under the threshold are fully transparent."""
    idx = np.clip(layer.colour_values * 255.0 + 0.5, 0, 255).astype(np.uint8)
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
    """Screen-sized text on a dark plate, pinned to a scene point (ignores zoom/rotation).

    ``nudge`` moves the plate in screen pixels; the canvas uses it to keep labels
    of lines that share an end point from covering each other.
    """

    def __init__(self, text: str, colour: QColor, parent: QGraphicsItem | None = None) -> None:
        super().__init__(parent)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self._text = text
        self._colour = colour
        self._nudge = QPointF(0.0, 0.0)
        self._font = QFont()
        self._font.setPointSizeF(10.0)
        self._font.setBold(True)

    @property
    def text(self) -> str:
        return self._text

    @property
    def nudge(self) -> QPointF:
        return QPointF(self._nudge)

    def set_text(self, text: str) -> None:
        self.prepareGeometryChange()
        self._text = text
        self.update()

    def set_nudge(self, offset: QPointF) -> None:
        if offset != self._nudge:
            self.prepareGeometryChange()
            self._nudge = QPointF(offset)
            self.update()

    def plate_rect(self) -> QRectF:
        """The plate in item (screen-pixel) coordinates, before the nudge."""
        fm = QFontMetricsF(self._font)
        lines = self._text.split("\n") if self._text else [""]
        w = max(fm.horizontalAdvance(t) for t in lines) + 10.0
        h = fm.height() * len(lines) + 4.0
        return QRectF(8.0, -h - 4.0, w, h)

    def boundingRect(self) -> QRectF:
        return self.plate_rect().translated(self._nudge)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        if not self._text:
            return
        rect = self.boundingRect()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 170))
        painter.drawRoundedRect(rect, 3, 3)
        painter.setFont(self._font)
        painter.setPen(self._colour)
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self._text)


def _scene_pt(p: tuple[float, float]) -> QPointF:
    """Image (row, col) point with pixel centres at integers -> scene point (pixels span [i, i + 1))."""
    return QPointF(float(p[1]) + 0.5, float(p[0]) + 0.5)


class ArrowHeadItem(QGraphicsItem):
    """An arrow head of constant screen size at ``head``, pointing away from ``tail`` as seen on screen."""

    SIZE = 14.0

    def __init__(self, tail: QPointF, head: QPointF, colour: QColor, parent: QGraphicsItem | None = None) -> None:
        super().__init__(parent)
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        self._tail, self._colour = QPointF(tail), colour
        self.setPos(head)

    def boundingRect(self) -> QRectF:
        s = self.SIZE + 2
        return QRectF(-s, -s, 2 * s, 2 * s)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        import math

        views = self.scene().views() if self.scene() is not None else []
        if not views:
            return
        t = views[0].viewportTransform()
        d = t.map(self.pos()) - t.map(self._tail)
        n = math.hypot(d.x(), d.y())
        if n < 1e-6:
            return
        ux, uy = d.x() / n, d.y() / n
        s = self.SIZE
        left = QPointF(-ux * s - uy * s * 0.45, -uy * s + ux * s * 0.45)
        right = QPointF(-ux * s + uy * s * 0.45, -uy * s - ux * s * 0.45)
        path = QPainterPath(QPointF(0, 0))
        path.lineTo(left)
        path.lineTo(right)
        path.closeSubpath()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(QPen(QColor(0, 0, 0, 200), 1.0))
        painter.setBrush(self._colour)
        painter.drawPath(path)


class AnnotationItem(QGraphicsItem):
    """Any measurement or annotation of core.imaging.measurements: its shape plus one label."""

    def __init__(self, annotation: object | None, colour: QColor) -> None:
        super().__init__()
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemHasNoContents, True)
        self._colour = colour
        self._pen = QPen(colour, 2.0)
        self._pen.setCosmetic(True)
        self.path = QGraphicsPathItem(self)
        self.path.setPen(self._pen)
        self.label = LabelItem("", colour, self)
        self._extras: list[QGraphicsItem] = []
        self.annotation: object | None = None
        if annotation is not None:
            self.set_annotation(annotation)

    @property
    def measurement(self) -> object | None:
        return self.annotation

    def set_measurement(self, m: object) -> None:
        self.set_annotation(m)

    def set_annotation(self, ann: object) -> None:
        self.annotation = ann
        for item in self._extras:
            item.setParentItem(None)
            if item.scene() is not None:
                item.scene().removeItem(item)
        self._extras = []
        kind = getattr(ann, "kind", "distance")
        path = QPainterPath()
        anchor: QPointF
        if kind == "distance":
            a, b = _scene_pt(ann.p0), _scene_pt(ann.p1)  # type: ignore[attr-defined]
            path.moveTo(a)
            path.lineTo(b)
            anchor = (a + b) / 2.0  # the middle: lines sharing an end point keep their labels apart
        elif kind == "angle":
            a, v, b = (_scene_pt(p) for p in ann.points)  # type: ignore[attr-defined]
            path.moveTo(a)
            path.lineTo(v)
            path.lineTo(b)
            anchor = v
        elif kind == "roi":
            p0, p1 = _scene_pt(ann.p0), _scene_pt(ann.p1)  # type: ignore[attr-defined]
            rect = QRectF(p0, p1).normalized()
            if ann.shape == "ellipse":  # type: ignore[attr-defined]
                path.addEllipse(rect)
            else:
                path.addRect(rect)
            anchor = rect.bottomRight()
        elif kind == "ctr":
            for seg in (ann.cardiac, ann.thoracic):  # type: ignore[attr-defined]
                a, b = _scene_pt(seg[0]), _scene_pt(seg[1])
                path.moveTo(a)
                path.lineTo(b)
            t0, t1 = (_scene_pt(p) for p in ann.thoracic)  # type: ignore[attr-defined]
            anchor = QPointF(max(t0.x(), t1.x()), t0.y())
        elif kind == "arrow":
            a, b = _scene_pt(ann.tail), _scene_pt(ann.head)  # type: ignore[attr-defined]
            path.moveTo(a)
            path.lineTo(b)
            head = ArrowHeadItem(a, b, self._colour, self)
            self._extras.append(head)
            anchor = a
        elif kind == "text":
            anchor = _scene_pt(ann.pos)  # type: ignore[attr-defined]
        else:
            raise ValueError(f"cannot draw annotation kind {kind!r}")
        self.path.setPath(path)
        self.label.setPos(anchor)
        text = str(getattr(ann, "label", ""))
        if kind == "ctr":
            text = f"{text}\n{ann.detail}"  # type: ignore[attr-defined]
        self.label.set_text(text)

    def boundingRect(self) -> QRectF:
        return QRectF()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        pass


#: The distance ruler is one kind of annotation item.
MeasurementItem = AnnotationItem


CONTOUR_GRID = 256


def smooth_upsample(data: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a small float map so its longer side is at least ``size`` (no-op when it is)."""
    h, w = data.shape
    if max(h, w) >= size:
        return data
    from PIL import Image

    f = size / max(h, w)
    out = Image.fromarray(np.asarray(data, dtype=np.float32), mode="F").resize(
        (max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def heatmap_contour_levels(layer: HeatmapLayer) -> list[float]:
    """Iso-lines of a heatmap: the cut-off (0.5 without one) and two levels above it."""
    t = 0.5 if layer.threshold is None or layer.threshold <= 0 else float(layer.threshold)
    hi = float(layer.data.max())
    if hi <= t:
        return [t]
    return [t + (hi - t) * f for f in (0.0, 0.4, 0.75)]


def make_heatmap_contour_item(layer: HeatmapLayer, image_shape: tuple[int, int]) -> QGraphicsItem:
    """Heatmap as iso-lines (contour mode): the cut-off line plus two inner levels, coloured by the map."""
    import contourpy
    from PySide6.QtWidgets import QGraphicsItemGroup

    group = QGraphicsItemGroup()
    lut = colormap_lut(layer.colormap)
    data = smooth_upsample(layer.data, CONTOUR_GRID)  # CAMs are coarse (7x7...): contour a smooth version
    gen = contourpy.contour_generator(z=np.pad(data, 1, mode="edge"), line_type="Separate")
    for i, level in enumerate(heatmap_contour_levels(layer)):
        path = QPainterPath()
        for line in gen.lines(level):
            if len(line) < 2:
                continue
            pts = line - 1.0 + 0.5
            path.moveTo(QPointF(float(pts[0, 0]), float(pts[0, 1])))
            for x, y in pts[1:]:
                path.lineTo(QPointF(float(x), float(y)))
        item = QGraphicsPathItem(path)
        r, g, b, _ = (int(v) for v in lut[int(min(max(level * layer.peak, 0.0), 1.0) * 255)])
        pen = QPen(QColor(r, g, b), 2.5 if i == 0 else 1.5)
        pen.setCosmetic(True)
        item.setPen(pen)
        group.addToGroup(item)
    group.setOpacity(max(layer.opacity, 0.85))
    stretch_to(group, data.shape, image_shape)
    group.setVisible(layer.visible)
    return group


class ColorBar(QWidget):
    """Horizontal colour scale for the heatmap (0 on the left, 1 on the right), cut-off marked.

    The title sits left of the bar when there is room, and the tick labels are as many of
    0, 0.5, 1 (or 0, 0.25 ... 1) as fit without touching (:meth:`ticks`)."""

    MIN_WIDTH = 140

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._colormap = FALLBACK_COLORMAP
        self._title = ""
        self._threshold: float | None = None
        self.setFixedHeight(38)
        self.setMinimumWidth(60)
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

    def _bar_rect(self, fm: QFontMetricsF) -> QRectF:
        title_w = min(fm.horizontalAdvance(self._title) + fm.horizontalAdvance("0.0") / 2 + 14, 110) if self._title else 0.0
        if self.width() - title_w - 12 < 3 * fm.horizontalAdvance("0.5") + 24:
            title_w = 0.0  # too narrow for a title beside the bar: the bar alone (its method is in the corner text)
        left = max(title_w, fm.horizontalAdvance("0.0") / 2 + 4)
        return QRectF(left, 5, max(self.width() - left - fm.horizontalAdvance("1.0") / 2 - 4, 20), 10)

    def ticks(self) -> list[tuple[float, QRectF]]:
        """(value, label rectangle) of each tick label drawn: no two touch, and all lie inside the bar widget."""
        fm = QFontMetricsF(self.font())
        bar = self._bar_rect(fm)
        for values in ((0.0, 0.5, 1.0), (0.0, 1.0)):
            boxes = []
            for v in values:
                text = self._tick_text(v)
                tw = fm.horizontalAdvance(text)
                x = bar.left() + v * bar.width()
                boxes.append((v, QRectF(x - tw / 2, bar.bottom() + 4, tw, fm.height())))
            if all(b[1].left() - a[1].right() >= 6 for a, b in zip(boxes, boxes[1:])):
                return boxes
        return boxes

    @staticmethod
    def _tick_text(value: float) -> str:
        return f"{value:.1f}"

    def paintEvent(self, event: object) -> None:  # noqa: N802 - Qt override
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(0, 0, 0, 150))
        fm = QFontMetricsF(self.font())
        bar = self._bar_rect(fm)
        lut = colormap_lut(self._colormap)
        img = rgba_to_qimage(lut[None, :, :])
        painter.drawImage(bar, img)
        painter.setPen(QColor("#d6d8db"))
        painter.drawRect(bar)
        room = bar.left() - fm.horizontalAdvance("0.0") / 2 - 10  # clear of the first tick label
        if room > 30:
            title = fm.elidedText(self._title, Qt.TextElideMode.ElideRight, room)
            painter.drawText(QRectF(4, 0, room, self.height()), Qt.AlignmentFlag.AlignVCenter, title)
        for value, box in self.ticks():
            x = bar.left() + value * bar.width()
            painter.drawLine(QPointF(x, bar.bottom()), QPointF(x, bar.bottom() + 3))
            painter.drawText(QPointF(box.left(), box.top() + fm.ascent()), self._tick_text(value))
        if self._threshold is not None:
            x = bar.left() + self._threshold * bar.width()
            painter.setPen(QPen(QColor("#ffffff"), 1.5, Qt.PenStyle.DashLine))
            painter.drawLine(QPointF(x, bar.top() - 3), QPointF(x, bar.bottom() + 3))
        painter.end()
