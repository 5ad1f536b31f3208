"""The image canvas: a QGraphicsView whose scene is in image pixel coordinates.

Scene x = column, y = row; pixel ``[r, c]`` covers ``[c, c+1) x [r, r+1)``. Zoom,
rotation and mirroring live in the *view* transform, so the image and every
overlay item (heatmap, masks, rulers) move together and cannot drift apart.
The canvas only listens to the :class:`Session` and asks it for changes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PySide6.QtCore import QPoint, QPointF, QRect, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDragMoveEvent,
    QDropEvent,
    QFont,
    QFontMetricsF,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPen,
    QPixmap,
    QResizeEvent,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsItem,
    QGraphicsPathItem,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QInputDialog,
    QLabel,
    QWidget,
)

from cxr_viewer.core.imaging import measurements as ann
from cxr_viewer.core.imaging.corner_text import (
    demographic_lines,
    display_lines,
    image_lines,
    opposite,
    patient_orientation,
)
from cxr_viewer.core.imaging.pixel import PixelReadout, pixel_readout
from cxr_viewer.core.imaging.windowing import window_to_uint8
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.session import (
    DisplayState,
    HeatmapLayer,
    MaskLayer,
    Measurement,
    Session,
    make_measurement,
)
from cxr_viewer.qt.overlays import (
    AnnotationItem,
    ColorBar,
    gray_to_qimage,
    make_heatmap_contour_item,
    make_heatmap_item,
    make_mask_item,
)

log = logging.getLogger(__name__)

MODES = ("pan", "measure", "window", "angle", "roi_ellipse", "roi_rect", "ctr", "arrow", "text")
#: Points each drawing tool collects (by drags or clicks) before it becomes an annotation.
TOOL_POINTS = {"measure": 2, "angle": 3, "roi_ellipse": 2, "roi_rect": 2, "ctr": 4, "arrow": 2, "text": 1}
LOUPE_KEY = Qt.Key.Key_Z  # hold for the magnifier
LOUPE_SIZE, LOUPE_FACTOR = 220, 3.0
Z_IMAGE, Z_HEATMAP, Z_MASKS, Z_MEASURE = 0.0, 10.0, 20.0, 50.0
_CLICK_SLOP_PX = 5  # a press and release closer than this is a click, not a drag
_WL_WIDTH_PX = 150.0  # dragging this far right doubles the window width
_WL_CENTER_PX = 300.0  # dragging this far down moves the centre by one window width
_FIT_MARGIN = 0.98


#: What is under the mouse: pixel indices, the [0, 1] value and the stored/modality values.
PixelInfo = PixelReadout


def _wrap(fm: QFontMetricsF, text: str, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` (a word wider than it is cut with "…")."""
    if fm.horizontalAdvance(text) <= width:
        return [text]
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        trial = f"{line} {word}" if line else word
        if fm.horizontalAdvance(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    return [fm.elidedText(t, Qt.TextElideMode.ElideMiddle, width) for t in lines]


def halo_text(painter: QPainter, pos: QPointF, text: str, colour: QColor) -> None:
    """Text with a dark outline all round, readable over bright lung and black background alike."""
    from PySide6.QtGui import QPainterPath

    path = QPainterPath()
    path.addText(pos, painter.font(), text)
    painter.save()
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    pen = QPen(QColor(0, 0, 0, 230), 3.0)
    pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
    painter.strokePath(path, pen)
    painter.fillPath(path, colour)
    painter.restore()


class ImageCanvas(QGraphicsView):
    """Shows the session's image, overlays and measurements; turns mouse input into requests."""

    pixel_hovered = Signal(object)  # PixelInfo | None
    files_dropped = Signal(list)  # list[Path]
    navigate = Signal(int)  # -1 previous image, +1 next (mouse back/forward buttons)
    view_changed = Signal()
    mode_changed = Signal(str)

    def __init__(self, session: Session, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self.setBackgroundBrush(QColor("#000000"))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.NoAnchor)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.NoAnchor)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.FullViewportUpdate)
        self.setRenderHints(QPainter.RenderHint.Antialiasing | QPainter.RenderHint.SmoothPixmapTransform)
        self.setMouseTracking(True)
        self.viewport().setMouseTracking(True)
        self.setAcceptDrops(True)
        self.setMinimumSize(200, 200)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

        self._image_item = QGraphicsPixmapItem()
        self._image_item.setZValue(Z_IMAGE)
        self._image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._image_item.setShapeMode(QGraphicsPixmapItem.ShapeMode.BoundingRectShape)
        self._scene.addItem(self._image_item)
        self._heatmap_item: QGraphicsItem | None = None
        self._mask_items: list[QGraphicsItem] = []
        self._measure_items: list[AnnotationItem] = []
        self._draft: QGraphicsItem | None = None
        self._points: list[tuple[float, float]] = []  # points the current drawing tool has collected
        self._press_pos: QPoint | None = None
        self._overlays_visible = True
        self._loupe: QLabel | None = None
        self._in_loupe = False
        #: asks for the text of a text/arrow annotation; None = cancelled (tests replace it)
        self.text_prompt: Callable[[str], str | None] = self._ask_text

        self._record: ImageRecord | None = None
        self._u8: np.ndarray | None = None
        self._state = session.display
        self._mode = "pan"
        self._drag: tuple[str, QPoint, object] | None = None
        self._show_demographics = bool(session.preference("show_demographics"))
        self._measure_colour = QColor(str(session.preference("measure_color")))

        self._render_timer = QTimer(self)
        self._render_timer.setSingleShot(True)
        self._render_timer.setInterval(30)  # live window/level: at most ~30 redraws a second
        self._render_timer.timeout.connect(self._render_now)

        self.colorbar = ColorBar(self.viewport())
        self.colorbar.hide()

        ev = session.events
        ev.record_changed.connect(self._on_record)
        ev.display_changed.connect(self._on_display)
        ev.heatmap_changed.connect(self._on_heatmap)
        ev.masks_changed.connect(self._on_masks)
        ev.measurements_changed.connect(self._on_measurements)
        ev.preferences_changed.connect(self._on_preference)
        self._restore_cursor()
        if session.record is not None:
            self._on_record(session.record)

    def disconnect_session(self) -> None:
        """Stop listening (the session outlives widgets in tests and embedding)."""
        ev = self.session.events
        for sig, slot in (
            (ev.record_changed, self._on_record),
            (ev.display_changed, self._on_display),
            (ev.heatmap_changed, self._on_heatmap),
            (ev.masks_changed, self._on_masks),
            (ev.measurements_changed, self._on_measurements),
            (ev.preferences_changed, self._on_preference),
        ):
            sig.disconnect(slot)

    # ------------------------------------------------------------------ public API
    @property
    def record(self) -> ImageRecord | None:
        return self._record

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        """Left-button tool: ``pan``, ``window`` or a drawing tool of :data:`TOOL_POINTS` (right-drag always windows)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self._cancel_draft()
        self._mode = mode
        self._restore_cursor()
        self.mode_changed.emit(mode)

    def _restore_cursor(self) -> None:
        if self._mode in TOOL_POINTS:
            self.viewport().setCursor(Qt.CursorShape.CrossCursor)
        else:
            cursor = Qt.CursorShape.OpenHandCursor if self._mode == "pan" else Qt.CursorShape.SizeAllCursor
            self.viewport().setCursor(cursor)

    @property
    def display_range(self) -> tuple[float, float]:
        """The (lo, hi) pixel range currently mapped to black..white."""
        return self._state.window

    @property
    def zoom(self) -> float:
        return self._state.zoom

    def rendered_array(self) -> np.ndarray | None:
        """The 8-bit image currently shown (image orientation, before rotation/zoom)."""
        self.flush()
        return self._u8

    def flush(self) -> None:
        """Finish a pending throttled redraw now."""
        if self._render_timer.isActive():
            self._render_now()

    def fit(self) -> None:
        self.session.set_zoom_mode("fit")
        self._apply_geometry(force=True)

    def actual_size(self) -> None:
        self.session.set_zoom(1.0, "actual")

    def zoom_by(self, factor: float, anchor: QPoint | None = None) -> None:
        """Zoom keeping the image point under ``anchor`` (viewport coords) where it is."""
        if self._record is None or factor <= 0:
            return
        anchor = anchor if anchor is not None else self.viewport().rect().center()
        scene_pt = self.mapToScene(anchor)
        self.session.set_zoom(self._state.zoom * factor, "free")
        self._keep_under(scene_pt, QPointF(anchor))

    def image_to_viewport(self, row: float, col: float) -> QPointF:
        """Where the centre of pixel (row, col) is drawn, in viewport coordinates."""
        return self.viewportTransform().map(QPointF(col + 0.5, row + 0.5))

    def viewport_to_image(self, pos: QPoint | QPointF) -> tuple[float, float]:
        """(row, col) image point (pixel centres at integers) under a viewport position."""
        inv, _ = self.viewportTransform().inverted()
        pt = inv.map(QPointF(pos))
        return pt.y() - 0.5, pt.x() - 0.5

    def pixel_at(self, pos: QPoint) -> PixelInfo | None:
        if self._record is None:
            return None
        pt = self.mapToScene(pos)
        row, col = math.floor(pt.y()), math.floor(pt.x())
        h, w = self._record.shape
        if not (0 <= row < h and 0 <= col < w):
            return None
        return pixel_readout(self._record, row, col)

    @property
    def heatmap_item(self) -> QGraphicsItem | None:
        return self._heatmap_item

    @property
    def mask_items(self) -> list[QGraphicsItem]:
        return list(self._mask_items)

    @property
    def measurement_items(self) -> list[AnnotationItem]:
        return list(self._measure_items)

    @property
    def overlays_visible(self) -> bool:
        return self._overlays_visible

    def set_overlays_visible(self, visible: bool) -> None:
        """Show or hide every overlay at once: corner text, heatmap and colour bar, masks, annotations."""
        self._overlays_visible = bool(visible)
        layer = self.session.heatmap
        if self._heatmap_item is not None:
            self._heatmap_item.setVisible(visible and layer is not None and layer.visible)
        self.colorbar.setVisible(visible and layer is not None and layer.visible and self._record is not None)
        masks = self.session.masks
        for item, m in zip(self._mask_items, masks):
            item.setVisible(visible and m.visible)
        for item in self._measure_items:
            item.setVisible(visible)
        self.viewport().update()

    @property
    def show_demographics(self) -> bool:
        return self._show_demographics

    def set_show_demographics(self, show: bool) -> None:
        self._show_demographics = bool(show)
        self.viewport().update()

    def measure(self, p0: tuple[float, float], p1: tuple[float, float]) -> Measurement:
        """Add a measurement between two (row, col) image points (what the ruler tool does)."""
        return self.session.add_measurement(self._clamp(p0), self._clamp(p1))

    def set_heatmap_style(self, style: str) -> None:
        self.session.set_preference("heatmap_style", "contour" if style == "contour" else "fill")

    # ------------------------------------------------------------------ session events
    def _on_record(self, record: ImageRecord | None) -> None:
        self._cancel_draft()
        self._record = record
        if record is None:
            self._image_item.setPixmap(QPixmap())
            self._u8 = None
            self._scene.setSceneRect(QRectF())
        else:
            h, w = record.shape
            pad = 2.0 * max(h, w)  # room to pan an image edge to the viewport centre
            self._scene.setSceneRect(QRectF(-pad, -pad, w + 2 * pad, h + 2 * pad))
        self._state = self.session.display
        self._render_now()
        self._apply_geometry(force=True)

    def _on_display(self, state: DisplayState) -> None:
        old, self._state = self._state, state
        if (old.window, old.invert) != (state.window, state.invert):
            if self._drag is not None and self._drag[0] == "window":
                if not self._render_timer.isActive():
                    self._render_timer.start()
            else:
                self._render_now()
        if (old.orientation, old.zoom, old.zoom_mode) != (state.orientation, state.zoom, state.zoom_mode):
            self._apply_geometry()
            self.layout_labels()
            self._place_colorbar()  # the scale bar's length changed
        self.viewport().update()
        self.view_changed.emit()

    @property
    def heatmap_style(self) -> str:
        """``fill`` (colour wash) or ``contour`` (iso-lines at the cut-off), a preference."""
        return "contour" if self.session.preference("heatmap_style") == "contour" else "fill"

    def _on_heatmap(self, layer: HeatmapLayer | None) -> None:
        if self._heatmap_item is not None:
            self._scene.removeItem(self._heatmap_item)
            self._heatmap_item = None
        if layer is not None and self._record is not None:
            make = make_heatmap_contour_item if self.heatmap_style == "contour" else make_heatmap_item
            self._heatmap_item = make(layer, self._record.shape)
            self._heatmap_item.setZValue(Z_HEATMAP)
            self._heatmap_item.setVisible(layer.visible and self._overlays_visible)
            self._scene.addItem(self._heatmap_item)
        self.colorbar.set_layer(layer if self._record is not None else None)
        if not self._overlays_visible:
            self.colorbar.hide()
        self._place_colorbar()

    def _on_masks(self, masks: list[MaskLayer]) -> None:
        for item in self._mask_items:
            self._scene.removeItem(item)
        self._mask_items = []
        if self._record is None:
            return
        for i, layer in enumerate(masks):
            item = make_mask_item(layer, self._record.shape)
            item.setVisible(layer.visible and self._overlays_visible)
            item.setZValue(Z_MASKS + i)
            self._scene.addItem(item)
            self._mask_items.append(item)
        self.viewport().update()

    def _on_measurements(self, measurements: list[Measurement]) -> None:
        for item in self._measure_items:
            self._scene.removeItem(item)
        self._measure_items = []
        for m in measurements:
            item = self._new_measure_item(m)
            item.setVisible(self._overlays_visible)
            self._measure_items.append(item)
        self.layout_labels()

    def layout_labels(self) -> None:
        """Nudge annotation labels (in screen pixels) so none covers another or leaves the viewport."""
        placed: list[QRectF] = []
        vt = self.viewportTransform()
        vp = QRectF(self.viewport().rect())
        for item in self._measure_items:
            label = item.label
            label.set_nudge(QPointF(0, 0))
            anchor = vt.map(label.scenePos())
            base = label.plate_rect().translated(anchor)
            dx = min(0.0, vp.right() - 4 - base.right()) or max(0.0, vp.left() + 4 - base.left())
            dy0 = max(0.0, vp.top() + 4 - base.top()) or min(0.0, vp.bottom() - 4 - base.bottom())
            base = base.translated(dx, dy0)
            rect, dy = base, 0.0
            for _ in range(12):
                if not any(rect.intersects(r) for r in placed):
                    break
                dy += base.height() + 2
                rect = base.translated(0, dy)
            label.set_nudge(QPointF(dx, dy0 + dy))
            placed.append(rect)

    def label_rects(self) -> list[QRectF]:
        """Where each annotation's label plate is drawn, in viewport coordinates."""
        vt = self.viewportTransform()
        return [it.label.boundingRect().translated(vt.map(it.label.scenePos())) for it in self._measure_items]

    def _on_preference(self, key: str, value: object) -> None:
        if key == "show_demographics":
            self.set_show_demographics(bool(value))
        elif key == "measure_color":
            self._measure_colour = QColor(str(value))
        elif key == "heatmap_style":
            self._on_heatmap(self.session.heatmap)

    # ------------------------------------------------------------------ rendering
    def _render_now(self) -> None:
        self._render_timer.stop()
        if self._record is None:
            return
        lo, hi = self._state.window
        # float path: benchmarks/bench_viewer.py measured it faster here than the uint16 lookup table
        self._u8 = window_to_uint8(self._record.pixels, lo, hi, invert=self._state.invert)
        self._image_item.setPixmap(QPixmap.fromImage(gray_to_qimage(self._u8)))

    def _fit_zoom(self) -> float:
        assert self._record is not None
        h, w = self._record.shape
        if self._state.orientation.quarter_turns % 2:
            h, w = w, h
        vp = self.viewport().size()
        return max(min(vp.width() / w, vp.height() / h) * _FIT_MARGIN, 1e-3)

    def _view_transform(self, state: DisplayState) -> QTransform:
        # Qt applies the last call first: mirror, then rotate clockwise, then zoom.
        t = QTransform()
        t.scale(state.zoom, state.zoom)
        t.rotate(state.rotation)
        if state.mirrored:
            t.scale(-1.0, 1.0)
        return t

    def _apply_geometry(self, force: bool = False) -> None:
        if self._record is None:
            return
        state = self._state
        if state.zoom_mode == "fit":
            z = self._fit_zoom()
            if not math.isclose(z, state.zoom, rel_tol=1e-9):
                self.session.set_zoom(z, "fit")  # re-enters via _on_display
                if not force:
                    return
                state = self._state
        keep = self.mapToScene(self.viewport().rect().center())
        self.setTransform(self._view_transform(state))
        self._image_item.setTransformationMode(
            Qt.TransformationMode.FastTransformation if state.zoom >= 3 else Qt.TransformationMode.SmoothTransformation
        )
        if state.zoom_mode == "fit" or force:
            h, w = self._record.shape
            self.centerOn(QPointF(w / 2.0, h / 2.0))
        else:
            self.centerOn(keep)

    def _keep_under(self, scene_pt: QPointF, anchor: QPointF) -> None:
        now = self.transform().map(scene_pt)
        hbar, vbar = self.horizontalScrollBar(), self.verticalScrollBar()
        here = QPointF(hbar.value(), vbar.value()) + anchor
        dx, dy = now.x() - here.x(), now.y() - here.y()
        hbar.setValue(hbar.value() + round(dx))
        vbar.setValue(vbar.value() + round(dy))

    def _place_colorbar(self) -> None:
        box = self.overlay_layout().get("colorbar")
        if box is not None:
            self.colorbar.setGeometry(box.toRect())

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        self._place_colorbar()
        if self._record is not None and self._state.zoom_mode == "fit":
            self._apply_geometry(force=True)

    # ------------------------------------------------------------------ foreground text
    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 - Qt override
        if self._record is None:
            self._draw_placeholder(painter)
            return
        if not self._overlays_visible or self._in_loupe:
            return
        painter.save()
        painter.resetTransform()
        painter.setFont(self._corner_font())
        layout = self.overlay_layout()
        for name in ("top_left", "top_right", "bottom_left"):
            box = layout.get(name)
            if box is not None:
                self._draw_block(painter, self._layout_lines[name], box, name.endswith("right"))
        self._draw_orientation(painter, layout)
        self._draw_scale_bar(painter, layout)
        self._draw_mask_legend(painter, layout)
        painter.restore()

    # ------------------------------------------------------------------ overlay layout
    def _corner_font(self) -> QFont:
        font = QFont(self.viewport().font())
        font.setPointSizeF(9.5)
        return font

    def _marker_font(self) -> QFont:
        font = QFont(self.viewport().font())
        font.setPointSizeF(12)
        font.setBold(True)
        return font

    def overlay_layout(self) -> dict[str, QRectF]:
        """Where every text and the colour bar go in the viewport, so that none overlaps another.

        Corner blocks wrap (a word too long is cut with "…") to the room beside the mid-edge markers; the
        colour bar sits at the bottom centre when the bottom corners leave room, else above them;
        the mask legend stacks above the bottom-left block and the colour bar, as many lines as fit
        below the left marker. Keys: top_left, top_right, bottom_left, scale_bar, colorbar, legend,
        orient_left/right/top/bottom (only what is shown). The lines each block draws are kept in
        ``self._layout_lines``.
        """
        vp = QRectF(self.viewport().rect())
        w, h = vp.width(), vp.height()
        m, gap = 10.0, 6.0
        fm = QFontMetricsF(self._corner_font())
        lh = fm.height()
        out: dict[str, QRectF] = {}
        self._layout_lines: dict[str, list[str]] = {}
        if self._record is None:
            return out
        ofm = QFontMetricsF(self._marker_font())
        markers = self.orientation_labels()
        centre = max((ofm.horizontalAdvance(markers.get(k, "")) for k in ("top", "bottom")), default=0.0)
        side = max((ofm.horizontalAdvance(markers.get(k, "")) for k in ("left", "right")), default=0.0)
        room = max(40.0, (w - 2 * m - centre) / 2 - gap * 2)  # a corner block's width

        def block(name: str, lines: list[str], right: bool, bottom: bool, floor: float | None = None,
                  width: float | None = None) -> QRectF | None:
            if not lines:
                return None
            cut = [part for t in lines for part in _wrap(fm, t, width or room)]
            bw = max(fm.horizontalAdvance(t) for t in cut)
            bh = lh * len(cut)
            x = w - m - bw if right else m
            y = (h - m - bh if floor is None else floor - bh) if bottom else m
            self._layout_lines[name] = cut
            out[name] = QRectF(x, y, bw, bh)
            return out[name]

        mh = ofm.height()
        if "top" in markers:
            tw = ofm.horizontalAdvance(markers["top"])
            out["orient_top"] = QRectF(w / 2 - tw / 2, 8, tw, mh)
        if "bottom" in markers:
            tw = ofm.horizontalAdvance(markers["bottom"])
            out["orient_bottom"] = QRectF(w / 2 - tw / 2, h - 8 - mh, tw, mh)
        # the right-hand corners first; a left-hand block may then use the rest of its edge (half of it when a
        # mid-edge marker sits between them)
        tr = block("top_right", self.display_lines(), True, False)
        if self._show_demographics:
            left = room if "top" in markers else max(room, w - 2 * m - (tr.width() if tr else 0.0) - 2 * gap)
            block("top_left", self.demographic_lines(), False, False, width=left)
        bar = self.scale_bar()
        if bar is not None:
            label_w = fm.horizontalAdvance(f"{bar[0]:.0f} mm")
            bw = max(bar[1], label_w) + 2
            out["scale_bar"] = QRectF(w - m - bw, h - m - 4 - 8 - fm.ascent() - 2, bw, 8 + fm.ascent() + 2 + 3)
        right_w = out["scale_bar"].width() if "scale_bar" in out else 0.0
        left = room if "bottom" in markers else max(room, w - 2 * m - right_w - 2 * gap)
        bl = block("bottom_left", self.image_lines(), False, True, width=left)
        bottoms = [r for r in (bl, out.get("scale_bar")) if r is not None]
        if not self.colorbar.isHidden():
            cb_h = float(self.colorbar.height())
            side_w = max((r.width() for r in bottoms), default=0.0)
            between = w - 2 * (m + side_w + gap)
            cb_floor = out["orient_bottom"].top() - gap if "orient_bottom" in out else h - 8
            if between >= ColorBar.MIN_WIDTH:
                cb_w = min(260.0, between)
                out["colorbar"] = QRectF(round((w - cb_w) / 2), math.floor(cb_floor - cb_h), round(cb_w), cb_h)
            else:  # no room between the bottom corners: above them
                top = min([r.top() for r in bottoms] + [cb_floor]) - gap
                cb_w = max(60.0, min(260.0, w - 2 * m))
                out["colorbar"] = QRectF(round((w - cb_w) / 2), math.floor(top - cb_h), round(cb_w), cb_h)
        # side markers at mid-height, moved into the free band between the top and bottom blocks
        for edge in ("left", "right"):
            if edge not in markers:
                continue
            tw = ofm.horizontalAdvance(markers[edge])
            x = 8.0 if edge == "left" else w - 8 - tw
            col = [r for r in out.values() if r.left() < x + tw + gap and r.right() > x - gap]
            lo = max([r.bottom() + gap for r in col if r.center().y() < h / 2] + [0.0])
            hi = min([r.top() - gap for r in col if r.center().y() >= h / 2] + [h])
            y = min(max(h / 2 - mh / 2, lo), hi - mh)
            out[f"orient_{edge}"] = QRectF(x, y, tw, mh)
        # the mask legend: above the bottom-left block (and the colour bar when they share columns)
        masks = [mk for mk in self.session.masks if mk.visible]
        if masks:
            llh = lh + 2
            x0 = m + (side + gap if "orient_left" in out else 0.0)
            wide = w - x0 - m - (side + gap if "orient_right" in out else 0.0)  # the film's width, beside markers
            texts = [fm.elidedText(mk.text, Qt.TextElideMode.ElideRight, wide - 18) for mk in masks]
            lw = min(18 + max(fm.horizontalAdvance(t) for t in texts), wide)
            floor = min([r.top() for k, r in out.items() if k not in ("top_left", "orient_left", "orient_right")
                         and r.left() < x0 + lw and r.right() > x0 and r.center().y() > h / 2] + [h - m]) - gap
            ceiling = max([r.bottom() for k, r in out.items() if r.left() < x0 + lw and r.right() > x0
                           and r.center().y() < floor and k != "legend"] + [m]) + gap
            n = min(len(texts), int(max(0.0, floor - ceiling) // llh))
            if 0 < n < len(texts):
                texts = texts[: n - 1] + [f"… {len(masks) - n + 1} more (Report panel)"]
            self._layout_lines["legend"] = texts[:n]
            self._legend_masks = masks[:n]
            if n:
                out["legend"] = QRectF(x0, floor - n * llh, lw, n * llh)
        return out

    def _draw_placeholder(self, painter: QPainter) -> None:
        painter.save()
        painter.resetTransform()
        painter.setPen(QColor("#6b7078"))
        font = QFont(painter.font())
        font.setPointSizeF(12)
        painter.setFont(font)
        painter.drawText(
            QRectF(self.viewport().rect()),
            Qt.AlignmentFlag.AlignCenter,
            "Drop a chest X-ray (DICOM, PNG, JPEG) or a folder here\nor use File > Open (Ctrl+O)",
        )
        painter.restore()

    def _draw_block(self, painter: QPainter, lines: list[str], box: QRectF, right: bool) -> None:
        fm = painter.fontMetrics()
        lh = fm.height()
        for i, text in enumerate(lines):
            x = box.right() - fm.horizontalAdvance(text) if right else box.left()
            halo_text(painter, QPointF(x, box.top() + i * lh + fm.ascent()), text, QColor("#f2f2f2"))

    def demographic_lines(self) -> list[str]:
        """Patient identity lines for the top-left corner (empty when nothing is known)."""
        return demographic_lines(self._record)

    def display_lines(self) -> list[str]:
        """Acquisition and display state for the top-right corner."""
        return display_lines(self._record, self._state, self.session.heatmap)

    def image_lines(self) -> list[str]:
        return image_lines(self._record)

    def orientation_labels(self) -> dict[str, str]:
        """Patient direction at each screen edge (left/right/top/bottom) from PatientOrientation."""
        codes = self._patient_orientation()
        if codes is None:
            return {}
        row_dir, col_dir = codes  # towards increasing column, towards increasing row
        inv, ok = self.transform().inverted()
        if not ok:
            return {}
        labels = {}
        for edge, (dx, dy) in {"right": (1, 0), "left": (-1, 0), "bottom": (0, 1), "top": (0, -1)}.items():
            v = inv.map(QPointF(dx, dy)) - inv.map(QPointF(0, 0))
            if abs(v.x()) >= abs(v.y()):
                labels[edge] = row_dir if v.x() > 0 else opposite(row_dir)
            else:
                labels[edge] = col_dir if v.y() > 0 else opposite(col_dir)
        return labels

    def _patient_orientation(self) -> tuple[str, str] | None:
        return patient_orientation(self._record)

    def _draw_orientation(self, painter: QPainter, layout: dict[str, QRectF]) -> None:
        labels = self.orientation_labels()
        if not labels:
            return
        painter.save()
        painter.setFont(self._marker_font())
        fm = painter.fontMetrics()
        for edge, text in labels.items():
            box = layout.get(f"orient_{edge}")
            if box is not None:
                halo_text(painter, QPointF(box.left(), box.top() + fm.ascent()), text, QColor("#f0c040"))
        painter.restore()

    def scale_bar(self) -> tuple[float, float] | None:
        """(length in mm, length in screen px) of the scale bar, or None without spacing."""
        if self._record is None or self._record.spacing_mm is None:
            return None
        spacing = self._record.spacing_mm[1] if self._state.rotation in (0, 180) else self._record.spacing_mm[0]
        px_per_mm = self._state.zoom / spacing
        # at most 160 px, and under a quarter of a narrow viewport (current | prior): clear of the bottom-left text
        limit = min(160.0, max(40.0, self.viewport().width() * 0.25))
        for mm in (200, 100, 50, 20, 10, 5, 2, 1):
            if mm * px_per_mm <= limit:
                return float(mm), mm * px_per_mm
        return 1.0, px_per_mm

    def _draw_scale_bar(self, painter: QPainter, layout: dict[str, QRectF]) -> None:
        bar, box = self.scale_bar(), layout.get("scale_bar")
        if bar is None or box is None:
            return
        mm, px = bar
        x1 = box.right() - 1
        x0 = x1 - px
        y = box.bottom() - 3
        for colour, off in ((QColor(0, 0, 0, 220), 1), (QColor("#e8e8e8"), 0)):
            pen = QPen(colour, 2)
            painter.setPen(pen)
            painter.drawLine(QPointF(x0 + off, y + off), QPointF(x1 + off, y + off))
            painter.drawLine(QPointF(x0 + off, y - 5 + off), QPointF(x0 + off, y + off))
            painter.drawLine(QPointF(x1 + off, y - 5 + off), QPointF(x1 + off, y + off))
        text = f"{mm:.0f} mm"
        tw = painter.fontMetrics().horizontalAdvance(text)
        tx = min((x0 + x1) / 2 - tw / 2, box.right() - tw)
        halo_text(painter, QPointF(tx, y - 8), text, QColor("#f2f2f2"))

    def _draw_mask_legend(self, painter: QPainter, layout: dict[str, QRectF]) -> None:
        box = layout.get("legend")
        if box is None:
            return
        fm = painter.fontMetrics()
        lh = fm.height() + 2
        y = box.top()
        for mk, text in zip(self._legend_masks, self._layout_lines.get("legend", [])):
            if not text.startswith("… "):
                painter.fillRect(QRectF(box.left(), y + 3, 12, 12), QColor(*mk.color))
            halo_text(painter, QPointF(box.left() + 18, y + fm.ascent() + 1), text, QColor("#f2f2f2"))
            y += lh

    # ------------------------------------------------------------------ measurements
    def _clamp(self, p: tuple[float, float]) -> tuple[float, float]:
        if self._record is None:
            return p
        h, w = self._record.shape
        return float(min(max(p[0], -0.5), h - 0.5)), float(min(max(p[1], -0.5), w - 0.5))

    def _new_measure_item(self, m: object | None) -> AnnotationItem:
        item = AnnotationItem(m, self._measure_colour)
        item.setZValue(Z_MEASURE)
        self._scene.addItem(item)
        return item

    def build_annotation(self, mode: str, points: list[tuple[float, float]]) -> object | None:
        """The annotation a tool makes from its collected (row, col) points (None until it has enough)."""
        rec = self._record
        n = TOOL_POINTS.get(mode, 0)
        if rec is None or len(points) < n:
            return None
        pts = [self._clamp(p) for p in points[:n]]
        if mode == "measure":
            return make_measurement(rec, pts[0], pts[1])
        if mode == "angle":
            return ann.make_angle(rec, *pts)
        if mode in ("roi_ellipse", "roi_rect"):
            return ann.make_roi(rec, "ellipse" if mode == "roi_ellipse" else "rectangle", pts[0], pts[1])
        if mode == "ctr":
            return ann.make_ctr(rec, *pts)
        if mode == "arrow":
            return ann.ArrowAnnotation(pts[0], pts[1])
        if mode == "text":
            return ann.TextAnnotation(pts[0], "")
        return None

    def add_annotation(self, mode: str, points: list[tuple[float, float]], text: str | None = None) -> object | None:
        """Finish a tool with these image points (what clicking/dragging does); text tools take ``text``."""
        made = self.build_annotation(mode, points)
        if made is None:
            return None
        if mode in ("text", "arrow"):
            if text is None:
                text = self.text_prompt("Annotation text" if mode == "text" else "Arrow label (may be empty)")
            if text is None or (mode == "text" and not text.strip()):
                return None  # cancelled
            from dataclasses import replace

            made = replace(made, text=text.strip())
        if isinstance(made, Measurement):
            return self.session.add_measurement(made.p0, made.p1)
        return self.session.add_annotation(made)

    def _ask_text(self, title: str) -> str | None:
        text, ok = QInputDialog.getText(self, title, title + ":")
        return text if ok else None

    def _update_draft(self, pos: QPoint) -> None:
        if not self._points or self._record is None:
            return
        live = self._clamp(self.viewport_to_image(pos))
        pts = [*self._points, live]
        made = self.build_annotation(self._mode, pts)
        if made is None and self._mode == "ctr" and len(pts) >= 2:
            made = ann.make_ctr(self._record, pts[0], pts[1], *(pts[2:4] if len(pts) >= 4 else (pts[0], pts[1])))
        if self._draft is not None:
            self._scene.removeItem(self._draft)
            self._draft = None
        if made is not None and not isinstance(made, (ann.TextAnnotation,)):
            self._draft = self._new_measure_item(made)
        else:
            from PySide6.QtGui import QPainterPath

            path = QPainterPath(QPointF(pts[0][1] + 0.5, pts[0][0] + 0.5))
            for r, c in pts[1:]:
                path.lineTo(QPointF(c + 0.5, r + 0.5))
            item = QGraphicsPathItem(path)
            pen = QPen(self._measure_colour, 1.5, Qt.PenStyle.DashLine)
            pen.setCosmetic(True)
            item.setPen(pen)
            item.setZValue(Z_MEASURE)
            self._scene.addItem(item)
            self._draft = item

    def _add_point(self, pos: QPoint) -> None:
        self._points.append(self._clamp(self.viewport_to_image(pos)))
        if len(self._points) >= TOOL_POINTS[self._mode]:
            points, mode = list(self._points), self._mode
            self._cancel_draft()
            self.add_annotation(mode, points)
        else:
            self._update_draft(pos)

    @property
    def drawing(self) -> bool:
        """True while a tool has collected some but not all of its points."""
        return bool(self._points)

    def _cancel_draft(self) -> None:
        if self._draft is not None:
            self._scene.removeItem(self._draft)
        self._draft = None
        self._points = []
        self._press_pos = None

    # ------------------------------------------------------------------ mouse
    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        pos = event.position().toPoint()
        button = event.button()
        if self._record is None:
            super().mousePressEvent(event)
            return
        if button in (Qt.MouseButton.BackButton, Qt.MouseButton.ForwardButton):
            self.navigate.emit(-1 if button == Qt.MouseButton.BackButton else 1)
            event.accept()
            return
        if button == Qt.MouseButton.RightButton or (button == Qt.MouseButton.LeftButton and self._mode == "window"):
            self._drag = ("window", pos, self._state.center_width)
            self.viewport().setCursor(Qt.CursorShape.SizeAllCursor)
        elif button == Qt.MouseButton.MiddleButton or (button == Qt.MouseButton.LeftButton and self._mode == "pan"):
            self._drag = ("pan", pos, pos)
            self.viewport().setCursor(Qt.CursorShape.ClosedHandCursor)
        elif button == Qt.MouseButton.LeftButton and self._mode in TOOL_POINTS:
            self._drag = ("tool", pos, None)
            self._add_point(pos)  # a press always places a point; a drag's release places the next
        elif button in (Qt.MouseButton.BackButton, Qt.MouseButton.ForwardButton):
            self.navigate.emit(-1 if button == Qt.MouseButton.BackButton else 1)
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        pos = event.position().toPoint()
        self.pixel_hovered.emit(self.pixel_at(pos))
        if self._loupe is not None and self._loupe.isVisible():
            self._update_loupe(pos)
        if self._drag is None:
            if self._points:
                self._update_draft(pos)
            return
        kind, start, data = self._drag
        if kind == "window":
            c0, w0 = data  # type: ignore[misc]
            d = pos - start
            width = w0 * 2.0 ** (d.x() / _WL_WIDTH_PX)
            center = c0 + d.y() / _WL_CENTER_PX * w0
            self.session.set_center_width(center, width)
        elif kind == "pan":
            last: QPoint = data  # type: ignore[assignment]
            d = pos - last
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - d.x())
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - d.y())
            self._drag = ("pan", start, pos)
            if self._state.zoom_mode == "fit":
                self.session.set_zoom_mode("free")
            self.viewport().update()
        elif kind == "tool":
            self._update_draft(pos)
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        pos = event.position().toPoint()
        if self._drag is not None:
            kind, start, _ = self._drag
            self._drag = None
            if kind == "window":
                self._render_now()
            elif kind == "tool":
                if self._points and (pos - start).manhattanLength() >= _CLICK_SLOP_PX:
                    self._add_point(pos)  # a drag: its end is the next point; a click waits for the next click
            if kind != "tool":
                self._restore_cursor()
        event.accept()

    def mouseDoubleClickEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt override
        if self._mode in TOOL_POINTS:
            self.mousePressEvent(event)
            return
        if event.button() == Qt.MouseButton.LeftButton and self._record is not None:
            self.fit()
        event.accept()

    def leaveEvent(self, event: object) -> None:  # noqa: N802 - Qt override
        self.pixel_hovered.emit(None)
        super().leaveEvent(event)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        steps = event.angleDelta().y() / 120.0
        if steps == 0 or self._record is None:
            event.ignore()
            return
        step = float(self.session.preference("zoom_step") or 1.25)
        self.zoom_by(step**steps, event.position().toPoint())
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() == Qt.Key.Key_Escape and self._points:
            self._cancel_draft()  # Esc abandons a half-drawn ruler
            return
        if event.key() == LOUPE_KEY and not event.isAutoRepeat():
            self.show_loupe(True)
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() == LOUPE_KEY and not event.isAutoRepeat():
            self.show_loupe(False)
            return
        super().keyReleaseEvent(event)

    # ------------------------------------------------------------------ magnifier
    @property
    def loupe(self) -> QLabel | None:
        return self._loupe

    def show_loupe(self, on: bool, pos: QPoint | None = None) -> None:
        """The magnifier: a round loupe under the cursor showing the image at LOUPE_FACTOR times the zoom."""
        if not on:
            if self._loupe is not None:
                self._loupe.hide()
            return
        if self._record is None:
            return
        if self._loupe is None:
            self._loupe = QLabel(self.viewport())
            self._loupe.setObjectName("loupe")
            self._loupe.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents, True)
            self._loupe.resize(LOUPE_SIZE, LOUPE_SIZE)
        if pos is None:
            pos = self.viewport().mapFromGlobal(self.cursor().pos())
            if not self.viewport().rect().contains(pos):
                pos = self.viewport().rect().center()
        self._loupe.show()
        self._update_loupe(pos)

    def _update_loupe(self, pos: QPoint) -> None:
        from PySide6.QtGui import QPainterPath

        assert self._loupe is not None
        size = LOUPE_SIZE
        src_half = size / (2.0 * LOUPE_FACTOR)
        source = QRect(int(pos.x() - src_half), int(pos.y() - src_half), int(2 * src_half), int(2 * src_half))
        view = QPixmap(size, size)
        view.fill(QColor("#000000"))
        vp_painter = QPainter(view)
        vp_painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self._in_loupe = True
        try:
            self.render(vp_painter, QRectF(0, 0, size, size), source)  # the scene re-drawn at higher zoom
        finally:
            self._in_loupe = False
            vp_painter.end()
        pm = QPixmap(size, size)
        pm.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pm)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        clip = QPainterPath()
        clip.addEllipse(QRectF(1, 1, size - 2, size - 2))
        painter.setClipPath(clip)
        painter.drawPixmap(0, 0, view)
        painter.setClipping(False)
        painter.setPen(QPen(QColor("#f0c040"), 2))
        painter.drawEllipse(QRectF(1, 1, size - 2, size - 2))
        painter.end()
        self._loupe.setPixmap(pm)
        self._loupe.move(pos.x() - size // 2, pos.y() - size // 2)

    # ------------------------------------------------------------------ drag and drop
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        paths = dropped_paths(event)
        if paths:
            event.acceptProposedAction()
            self.files_dropped.emit(paths)
        else:
            event.ignore()


def dropped_paths(event: QDropEvent) -> list[Path]:
    """Local files and folders carried by a drop."""
    mime = event.mimeData()
    if not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile()]
