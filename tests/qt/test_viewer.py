"""Drive the real main window offscreen: drop, zoom, window/level, invert, measure, tags, errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QTableWidget

from tests.qt.conftest import LOAD_TIMEOUT_MS


def _drop(widget, paths: list[Path]) -> QDropEvent:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    pos = widget.rect().center()
    enter = QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted(), "the canvas must accept a drag carrying file URLs"
    drop = QDropEvent(QPointF(pos), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)
    return drop


def test_drop_file_loads_it(qtbot, window, rg1_dicom):
    drop = _drop(window.canvas.viewport(), [rg1_dicom])
    assert drop.isAccepted()
    assert window.busy_bar.isVisible(), "loading shows a busy indicator"
    qtbot.waitUntil(lambda: window.session.record is not None, timeout=LOAD_TIMEOUT_MS)
    qtbot.waitUntil(lambda: not window.session.busy, timeout=LOAD_TIMEOUT_MS)
    import pydicom

    rec = window.session.record
    header = pydicom.dcmread(rg1_dicom, stop_before_pixels=True)
    rows, cols = header.Rows, header.Columns  # 1955 x 1841 in the full set, reduced in tests/data
    assert rec.source == rg1_dicom and rec.shape == (rows, cols)
    assert not window.busy_bar.isVisible()
    assert rg1_dicom in window.study_browser.image_paths()
    assert window.study_browser.has_thumbnail(rg1_dicom)
    # fitted and centred: the whole image is inside the viewport
    vp = window.canvas.viewport().rect()
    for r, c in ((0, 0), (rows - 1, cols - 1)):
        p = window.canvas.image_to_viewport(r, c)
        assert 0 <= p.x() <= vp.width() and 0 <= p.y() <= vp.height()
    centre = window.canvas.image_to_viewport(rows / 2 - 0.5, cols / 2 - 0.5)
    assert abs(centre.x() - vp.width() / 2) < 2 and abs(centre.y() - vp.height() / 2) < 2
    assert "CompressedSamples" not in window.windowTitle()  # title names the file, not the patient


def test_drop_folder_fills_study_browser(qtbot, window, tmp_path, siim_dicom, nih_png):
    folder = tmp_path / "study"
    folder.mkdir()
    shutil.copy(siim_dicom, folder / "a.dcm")
    shutil.copy(nih_png, folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    _drop(window.canvas.viewport(), [folder])
    qtbot.waitUntil(lambda: len(window.study_browser.image_paths()) == 2, timeout=LOAD_TIMEOUT_MS)
    assert window.wait_idle(60)
    paths = set(window.study_browser.image_paths())
    assert paths == {folder / "a.dcm", folder / "b.png"}
    assert all(window.study_browser.has_thumbnail(p) for p in paths), "thumbnails are generated off-thread"
    assert window.session.record is not None and window.session.record.source in paths
    # clicking another image in the browser opens it
    other = (paths - {window.session.record.source}).pop()
    window.study_browser.open_requested.emit(other)
    qtbot.waitUntil(lambda: window.session.record.source == other, timeout=LOAD_TIMEOUT_MS)


def test_wheel_zooms_around_the_cursor(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    canvas = window.canvas
    vp = canvas.viewport()
    cursor = QPoint(vp.width() // 2 + 120, vp.height() // 2 - 90)
    before_pt = canvas.mapToScene(cursor)
    z0 = canvas.zoom
    helpers.wheel(vp, cursor, clicks=2)
    assert canvas.zoom == pytest.approx(z0 * 1.25**2, rel=1e-6)
    after_pt = canvas.mapToScene(cursor)
    # the image point under the cursor stays under it (within a screen pixel)
    assert abs(after_pt.x() - before_pt.x()) * canvas.zoom < 1.5
    assert abs(after_pt.y() - before_pt.y()) * canvas.zoom < 1.5
    # while the viewport centre moved towards the cursor
    assert canvas.mapToScene(vp.rect().center()) != before_pt
    assert window.zoom_label.text() == f"Zoom {canvas.zoom * 100:.0f}%"
    helpers.wheel(vp, cursor, clicks=-2)
    assert canvas.zoom == pytest.approx(z0, rel=1e-6)


def test_right_drag_changes_window_level(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    canvas = window.canvas
    lo0, hi0 = canvas.display_range
    img0 = canvas.rendered_array().copy()
    start = canvas.viewport().rect().center()
    helpers.drag(canvas.viewport(), start, start + QPoint(150, 60), Qt.MouseButton.RightButton)
    lo1, hi1 = canvas.display_range
    assert (hi1 - lo1) == pytest.approx(2 * (hi0 - lo0), rel=1e-6), "150 px right doubles the width"
    assert (lo1 + hi1) / 2 == pytest.approx((lo0 + hi0) / 2 + 60 / 300 * (hi0 - lo0), rel=1e-6)
    img1 = canvas.rendered_array()
    assert not np.array_equal(img0, img1), "the displayed pixels follow the new window"
    assert window.session.display.preset is None
    assert window.window_label.text().startswith("C ")
    # a preset and reset bring the file's default back
    window.action_map["preset_Lung"].trigger()
    assert window.session.display.preset == "Lung"
    window.action_map["reset"].trigger()
    assert canvas.display_range == pytest.approx((lo0, hi0))


def test_invert_inverts_rendered_pixels(qtbot, window, helpers, nih_png):
    helpers.load(qtbot, window, nih_png)
    canvas = window.canvas
    before = canvas.rendered_array().astype(int)
    centre = canvas.viewport().rect().center()
    shot0 = canvas.viewport().grab().toImage().pixelColor(centre).red()
    window.action_map["invert"].trigger()
    assert window.session.display.invert
    after = canvas.rendered_array().astype(int)
    assert np.abs(after - (255 - before)).max() <= 1
    shot1 = canvas.viewport().grab().toImage().pixelColor(centre).red()
    assert abs(shot1 - (255 - shot0)) <= 3, "what is on screen is inverted too"
    assert window.action_map["invert"].isChecked()
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_I)  # the keyboard shortcut toggles it back
    assert not window.session.display.invert
    assert np.array_equal(canvas.rendered_array(), before.astype(np.uint8))


def _measure_by_drag(helpers, canvas, p0, p1):
    a = canvas.image_to_viewport(*p0).toPoint()
    b = canvas.image_to_viewport(*p1).toPoint()
    helpers.drag(canvas.viewport(), a, b, Qt.MouseButton.LeftButton)
    return canvas.viewport_to_image(a), canvas.viewport_to_image(b)


def test_measure_in_mm_with_spacing(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    canvas = window.canvas
    window.action_map["mode_measure"].trigger()
    assert canvas.mode == "measure"
    a, b = _measure_by_drag(helpers, canvas, (300, 200), (300, 800))
    [m] = window.session.measurements
    assert m.unit == "mm"
    expected = np.hypot(b[0] - a[0], b[1] - a[1]) * 0.168
    assert m.length == pytest.approx(expected, rel=1e-6)
    assert 95 < m.length < 107  # ~600 px at 0.168 mm/px, give or take a screen pixel
    [item] = canvas.measurement_items
    assert item.label.text == f"{m.length:.1f} mm"
    assert window.spacing_label.text() == "⚠ Spacing 0.168 mm (implausible)"  # the SIIM film is 17 cm across
    assert "17 × 17 cm" in window.spacing_label.toolTip()


def test_measure_in_px_without_spacing(qtbot, window, helpers, nih_png):
    helpers.load(qtbot, window, nih_png)
    canvas = window.canvas
    canvas.set_mode("measure")
    # click-click measuring
    a = canvas.image_to_viewport(100, 100).toPoint()
    b = canvas.image_to_viewport(400, 500).toPoint()
    helpers.drag(canvas.viewport(), a, a, Qt.MouseButton.LeftButton, steps=1)
    assert window.session.measurements == []
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Escape)  # Esc abandons the half-drawn ruler
    helpers.drag(canvas.viewport(), b, b, Qt.MouseButton.LeftButton, steps=1)
    assert window.session.measurements == []
    helpers.drag(canvas.viewport(), a, a, Qt.MouseButton.LeftButton, steps=1)
    helpers.drag(canvas.viewport(), b, b, Qt.MouseButton.LeftButton, steps=1)
    [m] = window.session.measurements
    assert m.unit == "px" and m.label.endswith(" px") and "mm" not in m.label
    assert m.length == pytest.approx(500, abs=5)
    window.action_map["clear_measurements"].trigger()
    assert window.session.measurements == [] and canvas.measurement_items == []


def test_tag_browser_search_filters_rows(qtbot, window, helpers, rg1_dicom):
    helpers.load(qtbot, window, rg1_dicom)
    window.action_map["tag_browser"].trigger()
    assert window.tags_dock.isVisible()
    tags = window.tag_browser
    total = len(tags.visible_rows())
    assert total > 20
    qtbot.keyClicks(tags.search, "PatientOrientation")
    rows = tags.visible_rows()
    assert ("(0020,0020)", "PatientOrientation", "CS", "['L', 'F']") in rows
    assert len(rows) < total
    assert all(any("patientorientation" in cell.lower() for cell in row) for row in rows)
    tags.search.clear()
    qtbot.keyClicks(tags.search, "modality")
    rows = tags.visible_rows()
    assert any(r[1] == "Modality" and r[3] == "CR" for r in rows)
    tags.search.clear()
    assert len(tags.visible_rows()) == total


def test_bad_file_shows_error_and_app_keeps_working(qtbot, window, helpers, tmp_path, siim_dicom):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"DICM but not really" * 10)
    with qtbot.waitSignal(window.load_failed, timeout=LOAD_TIMEOUT_MS) as blocker:
        window.open_paths([bad])
    message = blocker.args[0]
    assert "broken.dcm" in message and "Traceback" not in message
    assert window.error_dialog is not None and window.error_dialog.isVisible()
    assert not window.error_dialog.isModal(), "errors never block the app"
    assert window.error_dialog.text() == message
    assert message in window.statusBar().currentMessage()
    assert window.session.record is None
    helpers.load(qtbot, window, siim_dicom)  # still works
    assert window.session.record.shape == (1024, 1024)
    # a missing file is an error too, and the shown image stays
    with qtbot.waitSignal(window.load_failed, timeout=LOAD_TIMEOUT_MS):
        window.open_paths([tmp_path / "gone.dcm"])
    assert window.session.record.source == siim_dicom


def test_newer_load_supersedes_older(qtbot, window, rg1_dicom, siim_dicom):
    window.open_file(rg1_dicom)  # slower: 15-bit MONOCHROME1
    window.open_file(siim_dicom)
    assert window.wait_idle(60)
    assert window.session.record.source == siim_dicom


def test_shortcuts_dialog_lists_actions(qtbot, window):
    dlg = window.show_shortcuts()
    assert dlg.isVisible() and not dlg.isModal()
    rows = window.shortcut_rows()
    names = {name for name, _ in rows}
    for expected in ("Invert", "Fit to Window", "Measure Distance", "Open File…", "Rotate Right 90°", "Lung"):
        assert expected in names
    assert ("Invert", "I") in rows
    table = dlg.findChild(QTableWidget)
    assert table.rowCount() == len(rows)
    # the key column is in view without a sideways scroll, every key whole
    qtbot.waitExposed(dlg)
    vp = table.viewport().width()
    assert table.columnViewportPosition(1) + table.columnWidth(1) <= vp
    assert table.columnWidth(1) >= table.sizeHintForColumn(1) - 2
    assert not table.horizontalScrollBar().isVisible()
    # every frequent action has a shortcut
    for key in ("open_file", "fit", "zoom_in", "rotate_cw", "flip_h", "invert", "reset", "mode_measure",
                "tag_browser", "export_view", "demographics"):
        assert window.action_map[key].shortcuts(), key


def test_rotate_flip_keep_image_fitted(qtbot, window, helpers, rg1_dicom):
    helpers.load(qtbot, window, rg1_dicom)
    canvas = window.canvas
    labels = canvas.orientation_labels()
    assert labels == {"right": "L", "left": "R", "bottom": "F", "top": "H"}
    window.action_map["rotate_cw"].trigger()
    assert window.session.display.rotation == 90
    # turned clockwise: the head now points to the right edge
    assert canvas.orientation_labels() == {"right": "H", "left": "F", "bottom": "L", "top": "R"}
    vp = canvas.viewport().rect()
    rows, cols = window.session.record.shape
    for r, c in ((0, 0), (rows - 1, cols - 1)):
        p = canvas.image_to_viewport(r, c)
        assert -1 <= p.x() <= vp.width() + 1 and -1 <= p.y() <= vp.height() + 1
    window.action_map["flip_h"].trigger()
    assert canvas.orientation_labels()["right"] == "F"
    window.action_map["reset"].trigger()
    assert canvas.orientation_labels()["right"] == "L"


def test_demographics_overlay_toggles(qtbot, window, helpers, rg1_dicom):
    helpers.load(qtbot, window, rg1_dicom)
    canvas = window.canvas
    assert "CompressedSamples RG1" in canvas.demographic_lines()
    assert canvas.show_demographics
    patient_labels = [window.study_browser.topLevelItem(i).text(0) for i in range(window.study_browser.topLevelItemCount())]
    img_on = canvas.viewport().grab().toImage()
    window.action_map["demographics"].trigger()
    assert not canvas.show_demographics
    img_off = canvas.viewport().grab().toImage()
    assert img_on != img_off, "the corner text disappears"
    assert window.session.preference("show_demographics") is False
    assert patient_labels == ["Opened files"]


def test_export_view_png(qtbot, window, helpers, tmp_path, nih_png):
    from PIL import Image

    helpers.load(qtbot, window, nih_png)
    out = tmp_path / "view.png"
    assert window.export_view(out)
    arr = np.asarray(Image.open(out).convert("L"))
    vp = window.canvas.viewport()
    assert arr.shape == (vp.height(), vp.width())
    assert arr.std() > 20


def test_settings_persist_between_sessions(qtbot, make_window, helpers, settings_path, siim_dicom):
    win = make_window()
    helpers.load(qtbot, win, siim_dicom)
    win.action_map["demographics"].trigger()
    win.tags_dock.show()
    win.resize(1000, 700)
    win.close()
    assert settings_path.exists()
    again = make_window()
    assert again.recent_files()[0] == siim_dicom.resolve()
    assert again.session.preference("show_demographics") is False
    assert not again.action_map["demographics"].isChecked()
    assert not again.tags_dock.isVisible(), "the tag window opens when asked for, not by itself at start-up"
    again.recent_menu.aboutToShow.emit()
    assert any(siim_dicom.name in a.text() for a in again.recent_menu.actions())


def test_add_panel_docks_on_the_right(qtbot, window):
    from PySide6.QtWidgets import QLabel

    dock = window.add_panel(QLabel("findings"), "Findings")
    assert window.dockWidgetArea(dock) == Qt.DockWidgetArea.RightDockWidgetArea
    assert dock in window.panels and dock.isVisible()
    window.action_map["toggle_panels"].trigger()
    assert not dock.isVisible() and not window.studies_dock.isVisible()
    window.action_map["toggle_panels"].trigger()
    assert dock.isVisible() and window.studies_dock.isVisible()
