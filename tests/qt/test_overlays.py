"""Overlay layers stay on the same image pixel through rotation, mirroring and zoom.

The arrays are synthetic (a bright spot, a square mask): this tests display, not models.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from cxr_viewer.core.imaging.geometry import DisplayTransform
from cxr_viewer.core.session import HeatmapLayer, MaskLayer

SPOT = (200, 700)  # (row, col) in the 1024 x 1024 SIIM image
FAR = (800, 200)


def _spot_heatmap(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.exp(-((rr - centre[0]) ** 2 + (cc - centre[1]) ** 2) / (2 * sigma**2)).astype(np.float32)


def _rgb(window, row: float, col: float, pan: bool = False) -> tuple[int, int, int]:
    window.canvas.flush()
    if pan:  # bring the point into view (panning must not move overlays either)
        window.canvas.centerOn(QPointF(col + 0.5, row + 0.5))
    p = window.canvas.image_to_viewport(row, col).toPoint()
    c = window.canvas.viewport().grab().toImage().pixelColor(p)
    return c.red(), c.green(), c.blue()


def _is_colour(rgb: tuple[int, int, int], margin: int = 50) -> bool:
    return max(rgb) - min(rgb) > margin


@pytest.fixture
def loaded(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    return window


STEPS = [
    ("identity", lambda w: None),
    ("rotate", lambda w: w.session.rotate(90)),
    ("flip_h", lambda w: w.session.flip_horizontal()),
    ("zoom", lambda w: w.canvas.zoom_by(2.5, w.canvas.image_to_viewport(*SPOT).toPoint())),
    ("flip_v", lambda w: w.session.flip_vertical()),
    ("rotate_ccw", lambda w: w.session.rotate(-90)),
]


def test_heatmap_spot_stays_on_its_pixel(loaded):
    w = loaded
    heat = _spot_heatmap((1024, 1024), SPOT, sigma=10)
    w.session.set_heatmap(HeatmapLayer(heat, label="test", method="synthetic", colormap="jet", opacity=1.0, threshold=0.3))
    assert w.canvas.colorbar.isVisible() and w.canvas.colorbar.colormap == "jet"
    for name, step in STEPS:
        step(w)
        hot = _rgb(w, *SPOT)
        assert _is_colour(hot) and hot[0] > hot[2], f"after {name}: {hot} is not the heatmap's peak colour"
        cold = _rgb(w, *FAR)
        assert not _is_colour(cold, 12), f"after {name}: below-threshold area must stay grey, got {cold}"


def test_low_resolution_heatmap_is_stretched_over_the_image(loaded):
    w = loaded
    small = _spot_heatmap((256, 256), (SPOT[0] / 4, SPOT[1] / 4), sigma=3)
    w.session.set_heatmap(HeatmapLayer(small, colormap="jet", opacity=1.0, threshold=0.3))
    item = w.canvas.heatmap_item
    # the centre of heatmap pixel (50, 175) lands on image pixels 200..203 / 700..703
    scene = item.mapToScene(QPointF(175 + 0.5, 50 + 0.5))
    assert scene.x() == pytest.approx(702.0) and scene.y() == pytest.approx(202.0)
    for name, step in STEPS:
        step(w)
        assert _is_colour(_rgb(w, SPOT[0] + 2, SPOT[1] + 2)), f"after {name}"


def test_canvas_agrees_with_core_display_transform(loaded):
    """Vectors between two pixels on screen equal the core geometry's display vectors x zoom."""
    w = loaded
    a, b = (100.0, 150.0), (600.0, 900.0)
    for name, step in STEPS:
        step(w)
        t: DisplayTransform = w.session.display.orientation
        da, db = t.image_to_display([a, b], (1024, 1024))
        va = w.canvas.image_to_viewport(*a)
        vb = w.canvas.image_to_viewport(*b)
        z = w.canvas.zoom
        assert (vb.x() - va.x()) == pytest.approx((db[1] - da[1]) * z, abs=1e-6), name
        assert (vb.y() - va.y()) == pytest.approx((db[0] - da[0]) * z, abs=1e-6), name


def test_masks_contour_and_fill_follow_the_image(loaded):
    w = loaded
    square = np.zeros((1024, 1024), dtype=bool)
    square[300:400, 500:650] = True
    prob = np.zeros((1024, 1024), dtype=np.float32)
    prob[600:700, 300:400] = 0.9
    w.session.set_masks([
        MaskLayer("left upper zone opacity", square, color=(0, 200, 255), style="contour"),
        MaskLayer("effusion", prob, color=(255, 0, 255), style="fill", opacity=0.6),
    ])
    contour, fill = w.canvas.mask_items
    r = contour.sceneBoundingRect()
    assert (r.left(), r.top(), r.right(), r.bottom()) == pytest.approx((500, 300, 650, 400), abs=1.0)
    for name, step in STEPS:
        step(w)
        rgb = _rgb(w, 650, 350, pan=True)  # inside the filled mask
        assert rgb[0] > rgb[1] + 40 and rgb[2] > rgb[1] + 40, f"after {name}: fill not magenta-tinted: {rgb}"
        # the contour runs along row 300 between columns 500 and 650: look a few pixels around it
        w.canvas.centerOn(QPointF(575, 300))
        p = w.canvas.image_to_viewport(299.5, 575)
        img = w.canvas.viewport().grab().toImage()
        near = [img.pixelColor(int(p.x()) + dx, int(p.y()) + dy) for dx in range(-2, 3) for dy in range(-2, 3)]
        assert any(c.blue() > 180 and c.red() < 90 for c in near), f"after {name}: no contour at the mask edge"
    w.session.update_mask(0, visible=False)
    assert not w.canvas.mask_items[0].isVisible()


def test_heatmap_controls_update_the_layer(loaded):
    w = loaded
    w.session.set_heatmap(HeatmapLayer(_spot_heatmap((64, 64), (10, 40), 4), colormap="viridis", opacity=0.4))
    assert w.canvas.heatmap_item.opacity() == pytest.approx(0.4)
    w.session.update_heatmap(opacity=0.8, colormap="inferno")
    assert w.canvas.heatmap_item.opacity() == pytest.approx(0.8)
    assert w.canvas.colorbar.colormap == "inferno"
    w.session.update_heatmap(visible=False)
    assert not w.canvas.heatmap_item.isVisible() and not w.canvas.colorbar.isVisible()
    w.session.set_heatmap(None)
    assert w.canvas.heatmap_item is None
