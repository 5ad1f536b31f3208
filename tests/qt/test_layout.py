"""What a reader sees laid out: no overlay text on another, at every window size (pytest-qt, real widgets)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PySide6.QtCore import QRectF

from cxr_viewer.core.session import HeatmapLayer, MaskLayer

SIZES = [(1000, 640), (1400, 900), (1920, 1080)]


def _assert_apart(boxes: dict[str, QRectF], where: str) -> None:
    for (a, ra), (b, rb) in itertools.combinations(boxes.items(), 2):
        assert not ra.intersects(rb), f"{where}: {a} {ra.getRect()} overlaps {b} {rb.getRect()}"


def _assert_colour_bar_readable(canvas, where: str) -> None:
    bar = canvas.colorbar
    ticks = bar.ticks()
    assert len(ticks) >= 2, where
    for (_va, a), (_vb, b) in zip(ticks, ticks[1:]):
        assert b.left() - a.right() >= 6, f"{where}: tick labels run together"
    for _v, r in ticks:
        assert r.left() >= 0 and r.right() <= bar.width(), f"{where}: a tick label is cut by the bar's edge"


def _dress(window) -> None:
    """Everything that draws on the film at once: demographics, heatmap + colour bar, three masks."""
    window.session.set_preference("show_demographics", True)
    window.session.set_heatmap(HeatmapLayer(np.ones((8, 8), np.float32) * 0.7, label="Effusion", method="gradcam++",
                                            threshold=0.2))
    shape = window.session.record.shape
    masks = [MaskLayer(text, np.zeros(shape, bool), colour) for text, colour in (
        ("Opacity in the right lower zone with air bronchograms.", (230, 160, 0)),
        ("The left lung is clear.", (170, 170, 170)),
        ("Left costophrenic angle blunting.", (0, 200, 255)))]
    window.session.set_masks(masks)


@pytest.mark.parametrize("size", SIZES)
def test_corner_texts_markers_and_colour_bar_never_overlap(qtbot, window, helpers, rg1_dicom, size):
    """RG1: no pixel spacing (the long "measurements in px" line) and L/F orientation markers."""
    helpers.load(qtbot, window, rg1_dicom)
    _dress(window)
    window.resize(*size)
    qtbot.waitUntil(lambda: window.width() >= size[0] - 1)
    qtbot.wait(50)
    c = window.canvas
    boxes = c.overlay_layout()
    assert {"top_left", "top_right", "bottom_left", "colorbar", "legend", "orient_left", "orient_right",
            "orient_top", "orient_bottom"} <= set(boxes), sorted(boxes)
    assert "No pixel spacing" in " ".join(c._layout_lines["bottom_left"]), c._layout_lines
    _assert_apart(boxes, f"window {size}")
    vp = QRectF(c.viewport().rect())
    for name, r in boxes.items():
        assert vp.contains(r), f"{name} leaves the viewport at {size}"
    assert c.colorbar.geometry() == boxes["colorbar"].toRect()
    _assert_colour_bar_readable(c, f"window {size}")


@pytest.mark.parametrize("width", [300, 420, 560])
def test_narrow_viewports_keep_the_texts_apart(qtbot, window, helpers, siim_dicom, rg1_dicom, width):
    """Current | prior halves and small windows: corner texts are cut with "…" rather than run into each other."""
    for path in (siim_dicom, rg1_dicom):
        helpers.load(qtbot, window, path)
        _dress(window)
        window.findings_dock.hide()
        window.studies_dock.hide()
        window.resize(width + 40, 640)
        window.canvas.setFixedWidth(width)
        qtbot.wait(50)
        c = window.canvas
        boxes = c.overlay_layout()
        _assert_apart(boxes, f"{path.name} at {width} px")
        _assert_colour_bar_readable(c, f"{path.name} at {width} px")
        window.canvas.setMinimumWidth(0)
        window.canvas.setMaximumWidth(16777215)


def test_file_notes_stay_readable_while_the_file_is_open(qtbot, window, helpers, rg1_dicom):
    """The notes of a file (RG1 has two) stay in the status bar until another file is opened: a later message
    no longer hides them before they can be hovered."""
    helpers.load(qtbot, window, rg1_dicom)
    record = window.session.record
    assert len(record.notices) >= 1
    label = window.notes_label
    window.statusBar().showMessage("something else", 1000)
    assert label.isVisible() and label.text().startswith(f"{len(record.notices)} note")
    assert label.toolTip() == "\n".join(record.notices)


def test_study_names_wrap_instead_of_eliding(qtbot, window, nih_png, tmp_path):
    """NIH films differ only at the end of their names: every label in the Studies list may wrap after _ . -
    (never "000…5_000.png") and says its whole name when hovered."""
    import shutil

    from PySide6.QtWidgets import QTreeWidgetItemIterator

    folder = tmp_path / "nih"
    folder.mkdir()
    for name in ("00000013_005.png", "00000013_026.png"):
        shutil.copy(nih_png, folder / name)
    window.open_paths([folder])
    qtbot.waitUntil(lambda: len(window.study_browser.image_paths()) == 2, timeout=60_000)
    it = QTreeWidgetItemIterator(window.study_browser)
    seen = []
    while it.value():
        item = it.value()
        text = item.text(0)
        if "_" in text:
            assert "_\u200b" in text, text
            assert item.toolTip(0).replace("\u200b", "") == item.toolTip(0)
            seen.append(text.replace("\u200b", ""))
        it += 1
    assert any("00000013_005" in t for t in seen) and any("00000013_026" in t for t in seen)
