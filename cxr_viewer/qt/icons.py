"""Toolbar icons drawn with QPainter: crisp at any DPI, nothing to package or license."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap, QPolygonF

SIZE = 64  # drawn at 64 px, scaled down by Qt


def _arrow_head(p: QPainter, tip: QPointF, angle_deg: float, size: float = 9.0) -> None:
    a = math.radians(angle_deg)
    left = QPointF(tip.x() - size * math.cos(a - 0.5), tip.y() - size * math.sin(a - 0.5))
    right = QPointF(tip.x() - size * math.cos(a + 0.5), tip.y() - size * math.sin(a + 0.5))
    p.drawPolygon(QPolygonF([tip, left, right]))


def _open(p: QPainter) -> None:
    path = QPainterPath()
    path.moveTo(10, 14)
    path.lineTo(26, 14)
    path.lineTo(30, 20)
    path.lineTo(54, 20)
    path.lineTo(54, 50)
    path.lineTo(10, 50)
    path.closeSubpath()
    p.drawPath(path)
    p.drawLine(10, 26, 54, 26)


def _folder(p: QPainter) -> None:
    _open(p)
    p.drawLine(24, 38, 40, 38)
    p.drawLine(32, 30, 32, 46)


def _fit(p: QPainter) -> None:
    for sx, sy in ((1, 1), (-1, 1), (1, -1), (-1, -1)):
        cx, cy = 32 + sx * 20, 32 + sy * 20
        p.drawLine(QPointF(cx, cy), QPointF(cx - sx * 10, cy))
        p.drawLine(QPointF(cx, cy), QPointF(cx, cy - sy * 10))
    p.drawRect(QRectF(22, 22, 20, 20))


def _actual(p: QPainter) -> None:
    f = p.font()
    f.setPixelSize(26)
    f.setBold(True)
    p.setFont(f)
    p.drawText(QRectF(0, 0, SIZE, SIZE), Qt.AlignmentFlag.AlignCenter, "1:1")


def _magnifier(p: QPainter, plus: bool) -> None:
    p.drawEllipse(QPointF(27, 27), 15, 15)
    p.drawLine(38, 38, 54, 54)
    p.drawLine(20, 27, 34, 27)
    if plus:
        p.drawLine(27, 20, 27, 34)


def _rotate(p: QPainter) -> None:
    p.drawArc(QRectF(14, 14, 36, 36), 90 * 16, -270 * 16)
    p.setBrush(p.pen().color())
    _arrow_head(p, QPointF(32, 14), 180.0, 10)


def _flip_h(p: QPainter) -> None:
    pen = p.pen()
    dashed = QPen(pen)
    dashed.setStyle(Qt.PenStyle.DashLine)
    p.setPen(dashed)
    p.drawLine(32, 8, 32, 56)
    p.setPen(pen)
    p.drawPolygon(QPolygonF([QPointF(26, 16), QPointF(26, 48), QPointF(8, 48)]))
    p.setBrush(pen.color())
    p.drawPolygon(QPolygonF([QPointF(38, 16), QPointF(38, 48), QPointF(56, 48)]))


def _flip_v(p: QPainter) -> None:
    p.translate(SIZE, 0)
    p.rotate(90)
    _flip_h(p)


def _invert(p: QPainter) -> None:
    p.drawEllipse(QPointF(32, 32), 20, 20)
    path = QPainterPath()
    path.moveTo(32, 12)
    path.arcTo(QRectF(12, 12, 40, 40), 90, 180)
    path.closeSubpath()
    p.fillPath(path, p.pen().color())


def _window(p: QPainter) -> None:
    grad_w = 40
    for i in range(grad_w):
        c = int(255 * i / (grad_w - 1))
        p.fillRect(QRectF(12 + i, 16, 1, 32), QColor(c, c, c))
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.drawRect(QRectF(12, 16, grad_w, 32))


def _reset(p: QPainter) -> None:
    p.drawArc(QRectF(14, 14, 36, 36), 120 * 16, 300 * 16)
    p.setBrush(p.pen().color())
    _arrow_head(p, QPointF(22, 17), -60.0, 10)


def _pan(p: QPainter) -> None:
    p.drawLine(32, 8, 32, 56)
    p.drawLine(8, 32, 56, 32)
    p.setBrush(p.pen().color())
    for tip, ang in (((32, 8), -90), ((32, 56), 90), ((8, 32), 180), ((56, 32), 0)):
        _arrow_head(p, QPointF(*tip), ang, 10)


def _measure(p: QPainter) -> None:
    p.translate(32, 32)
    p.rotate(-35)
    p.drawRect(QRectF(-26, -8, 52, 16))
    for i, x in enumerate(range(-20, 24, 6)):
        p.drawLine(QPointF(x, -8), QPointF(x, -2 if i % 2 else 1))


def _tags(p: QPainter) -> None:
    for y in (18, 30, 42):
        p.drawLine(12, y, 18, y)
        p.drawLine(24, y, 52, y)


def _export(p: QPainter) -> None:
    p.drawRect(QRectF(12, 30, 40, 22))
    p.drawLine(32, 10, 32, 40)
    p.setBrush(p.pen().color())
    _arrow_head(p, QPointF(32, 42), 90.0, 10)


_GLYPHS: dict[str, Callable[[QPainter], None]] = {
    "open": _open,
    "folder": _folder,
    "fit": _fit,
    "actual": _actual,
    "zoom_in": lambda p: _magnifier(p, True),
    "zoom_out": lambda p: _magnifier(p, False),
    "rotate": _rotate,
    "flip_h": _flip_h,
    "flip_v": _flip_v,
    "invert": _invert,
    "window": _window,
    "reset": _reset,
    "pan": _pan,
    "measure": _measure,
    "tags": _tags,
    "export": _export,
}


@lru_cache(maxsize=None)
def icon(name: str, colour: str = "#d6d8db") -> QIcon:
    """An icon by name (see ``_GLYPHS``); unknown names give an empty icon."""
    glyph = _GLYPHS.get(name)
    if glyph is None:
        return QIcon()
    pm = QPixmap(SIZE, SIZE)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    pen = QPen(QColor(colour), 4.0)
    pen.setCapStyle(Qt.PenCapStyle.RoundCap)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    p.setPen(pen)
    glyph(p)
    p.end()
    return QIcon(pm)
