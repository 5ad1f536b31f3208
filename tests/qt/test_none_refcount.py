"""The window's drawing paths must not leak references to None.

PySide6 6.12.0 on CPython 3.11 drops a reference to ``None`` on every Qt call that returns nothing
(``QPainterPath.lineTo``, ``QPen.setWidthF``, ``QGraphicsItem.setPos``, ...). The count falls with every
repaint until CPython aborts with "none_dealloc: deallocating None" (a black window and lost work).
``pyproject.toml`` and the lock exclude that release line; these tests drive the app's real drawing
paths a few thousand times and fail, rather than abort, when a binding leaks again.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import Qt

from cxr_viewer.core.imaging import measurements as marks
from cxr_viewer.core.session import HeatmapLayer, MaskLayer
from tests.qt.bundles import tiny_models  # noqa: F401  (fixture)

# None's count moves by a few as objects holding None come and go; a leaking binding moves it by one or
# more per Qt call, i.e. by tens of thousands over these loops.
TOLERANCE = 200


def _none_refs() -> int:
    gc.collect()
    return sys.getrefcount(None)


def _spot(shape: tuple[int, int], row: float, col: float) -> np.ndarray:
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * 6.0**2)).astype(np.float32)


def test_qt_void_calls_keep_none_alive() -> None:
    """The binding itself: the calls the reported abort went through."""
    from PySide6.QtGui import QPainterPath, QPen
    from PySide6.QtWidgets import QApplication, QGraphicsRectItem

    _ = QApplication.instance() or QApplication([])
    path, pen, item = QPainterPath(), QPen(), QGraphicsRectItem()
    before = _none_refs()
    for i in range(3000):
        path.lineTo(float(i), float(i))
        pen.setWidthF(1.5)
        item.setPos(float(i), 1.0)
    assert before - _none_refs() < TOLERANCE, f"PySide6 leaks None references ({sys.version.split()[0]})"


def test_canvas_overlays_contours_and_measurements_keep_none_alive(qtbot, window, helpers, siim_dicom):
    """Heatmaps (fill and contour), report masks, every measurement kind with its handles and labels,
    zoom and rotation: each loop repaints the viewport for real."""
    helpers.load(qtbot, window, siim_dicom)
    s, c = window.session, window.canvas
    record = s.record
    window.resize(1400, 900)
    square = np.zeros((1024, 1024), bool)
    square[300:420, 500:660] = True
    annotations = [
        marks.make_distance(record, (200.0, 200.0), (400.0, 600.0)),
        marks.make_angle(record, (100.0, 500.0), (400.0, 500.0), (400.0, 800.0)),
        marks.make_roi(record, "ellipse", (600.0, 300.0), (800.0, 500.0)),
        marks.make_roi(record, "rectangle", (600.0, 600.0), (700.0, 800.0)),
        marks.make_ctr(record, (600.0, 350.0), (600.0, 700.0), (700.0, 120.0), (700.0, 920.0)),
    ]
    window.action_map["heatmap_style"].trigger()  # contour heatmaps: iso-lines built from QPainterPaths
    assert s.preference("heatmap_style") == "contour"
    before = _none_refs()
    for i in range(60):
        s.set_heatmap(HeatmapLayer(_spot((32, 32), 8 + i % 16, 4 + i % 20), label="Effusion", threshold=0.3))
        s.set_masks([MaskLayer("right upper zone", square, color=(0, 200, 255), style="contour" if i % 2 else "fill")])
        s.set_measurements(annotations[: 1 + i % len(annotations)])
        if i % 10 == 0:
            s.rotate(90)
            c.zoom_by(1.25 if i % 20 else 0.8)
        c.flush()
        c.viewport().grab()  # a real paint of every item
        qtbot.keyClick(window, Qt.Key.Key_O)  # hide and show every overlay
        qtbot.keyClick(window, Qt.Key.Key_O)
    assert before - _none_refs() < TOLERANCE


@pytest.mark.slow
def test_findings_panel_repaints_and_heatmap_steps_keep_none_alive(qtbot, make_window, tiny_models):
    """Findings rows with score bars (the delegate paints with QPainter) and N / Shift+N stepping."""
    from tests.qt.test_analysis import analysed_window

    win = analysed_window(qtbot, make_window, tiny_models,
                          Path(__file__).resolve().parents[2] / "resources/samples/nih_chest.png")
    win.resize(1400, 900)
    win.session.set_preference("heatmap_style", "contour")
    tree = win.findings_panel.tree
    state = win.findings_panel.state
    before = _none_refs()
    for i in range(40):
        win.findings_panel.set_state(state)
        tree.viewport().grab()
        win.reading.step_finding(1 if i % 3 else -1)
        qtbot.wait(5)
        win.canvas.viewport().grab()
    assert win.wait_idle(120)
    assert before - _none_refs() < TOLERANCE
