"""The reading room, driven through the real main window offscreen: tools, overlays, navigation, layout."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PySide6.QtCore import QEvent, QPoint, QRectF, Qt

from cxr_viewer.core.compare import MIN_NOISE, NOISE_K
from cxr_viewer.core.imaging import measurements as marks
from cxr_viewer.core.session import HeatmapLayer, MaskLayer
from tests.qt.bundles import NIH_LABELS, tiny_models  # noqa: F401  (fixture)
from tests.qt.conftest import LOAD_TIMEOUT_MS

WAIT_MS = 180_000


def vp_point(canvas, row: float, col: float) -> QPoint:
    return canvas.image_to_viewport(row, col).toPoint()


def click(helpers, canvas, row: float, col: float) -> None:
    p = vp_point(canvas, row, col)
    helpers.drag(canvas.viewport(), p, p, Qt.MouseButton.LeftButton, steps=1)


def drag_img(helpers, canvas, a: tuple[float, float], b: tuple[float, float]) -> None:
    helpers.drag(canvas.viewport(), vp_point(canvas, *a), vp_point(canvas, *b), Qt.MouseButton.LeftButton)


@pytest.fixture
def film(tmp_path: Path, siim_dicom: Path) -> Path:
    """A private copy of the sample film (annotations are saved beside it)."""
    out = tmp_path / "study" / "film.dcm"
    out.parent.mkdir()
    shutil.copy(siim_dicom, out)
    return out


# --------------------------------------------------------------------------- everyday friction
def test_pixel_readout_shows_stored_and_modality_values(qtbot, window, helpers, tmp_path, siim_dicom):
    ds = pydicom.dcmread(siim_dicom)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    path = tmp_path / "rescaled.dcm"
    ds.save_as(path)
    raw = ds.pixel_array
    helpers.load(qtbot, window, path)
    c = window.canvas
    helpers.mouse(c.viewport(), QEvent.Type.MouseMove, vp_point(c, 400, 600), Qt.MouseButton.NoButton)
    info = c.pixel_at(vp_point(c, 400, 600))
    r, col = info.row, info.col
    assert window.pixel_label.text() == f"row {r}, col {col}: stored {raw[r, col]}, modality {2 * int(raw[r, col]) - 100}"
    assert "C " in window.window_label.text()  # W/L and the readout now speak the same units


def test_status_zoom_matches_the_overlay_after_fit_and_home(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    c = window.canvas
    c.zoom_by(2.0)
    window.action_map["fit"].trigger()
    expected = f"Zoom {c.zoom * 100:.0f}%"
    assert window.zoom_label.text() == expected and expected in c.display_lines()
    c.zoom_by(3.0)
    window.action_map["reset"].trigger()
    assert c.zoom < 1.0, "Home fits the film"
    assert window.zoom_label.text() == f"Zoom {c.zoom * 100:.0f}%" and f"Zoom {c.zoom * 100:.0f}%" in c.display_lines()


def test_ctrl_q_closes_the_window_at_once_while_a_model_call_runs(qtbot, window, helpers, siim_dicom):
    import threading
    import time

    helpers.load(qtbot, window, siim_dicom)
    release = threading.Event()
    window.runner.submit(release.wait, 30)  # a model call that cannot be interrupted, still running
    try:
        t0 = time.monotonic()
        qtbot.keyClick(window, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
        elapsed = time.monotonic() - t0
        assert not window.isVisible(), "Ctrl+Q closed the window"
        assert elapsed < 2.0, f"closing waited {elapsed:.1f} s for background work"
    finally:
        release.set()


def test_tag_browser_is_a_resizable_window_whose_search_keeps_focus(qtbot, window, helpers, rg1_dicom, siim_dicom):
    helpers.load(qtbot, window, rg1_dicom)
    window.action_map["tag_browser"].trigger()
    tags = window.tags_window
    assert tags.isVisible() and tags.isWindow() and tags.width() >= 700 and tags.height() >= 600
    assert tags.minimumSize() != tags.maximumSize(), "the user can resize it"
    tags.resize(900, 750)
    assert tags.size().width() == 900
    tags.activateWindow()
    window.tag_browser.search.setFocus()
    qtbot.keyClicks(window.tag_browser.search, "Orientation")
    assert window.tag_browser.search.text() == "Orientation", "typed keys reach the search box, not shortcuts"
    assert tags.focusWidget() is window.tag_browser.search  # what gets the keys when the window is active
    helpers.load(qtbot, window, siim_dicom)  # the next image keeps the search and the focus
    assert tags.focusWidget() is window.tag_browser.search  # what gets the keys when the window is active
    assert any(r[1] == "PatientOrientation" for r in window.tag_browser.visible_rows())
    window.action_map["tag_browser"].trigger()
    assert not tags.isVisible()


def test_one_key_hides_and_shows_every_overlay(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    s, c = window.session, window.canvas
    heat = np.zeros((32, 32), np.float32)
    heat[8:16, 8:16] = 1.0
    s.set_heatmap(HeatmapLayer(heat, label="Effusion", method="gradcam", threshold=0.2))
    mask = np.zeros((1024, 1024), bool)
    mask[100:300, 100:300] = True
    s.set_masks([MaskLayer("right upper zone", mask)])
    s.add_measurement((100, 100), (400, 400))
    plain_before = c.viewport().grab().toImage()
    c.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_O)
    assert not c.overlays_visible
    assert not c.heatmap_item.isVisible() and not c.colorbar.isVisible()
    assert not any(i.isVisible() for i in c.mask_items) and not any(i.isVisible() for i in c.measurement_items)
    hidden = c.viewport().grab().toImage()
    arr = np.frombuffer(hidden.constBits(), np.uint8).reshape(hidden.height(), hidden.bytesPerLine())
    grey = arr[:, : hidden.width() * 4].reshape(hidden.height(), hidden.width(), 4)[..., :3].astype(int)
    assert (grey.max(axis=2) - grey.min(axis=2)).max() < 8, "only the grey film is left: no coloured overlay"
    assert hidden != plain_before
    qtbot.keyClick(window, Qt.Key.Key_O)
    assert c.overlays_visible and c.heatmap_item.isVisible() and c.colorbar.isVisible()
    assert all(i.isVisible() for i in c.mask_items + c.measurement_items)


def test_heatmap_contour_mode_draws_iso_lines_at_the_cutoff(qtbot, window, helpers, siim_dicom):
    from PySide6.QtWidgets import QGraphicsItemGroup, QGraphicsPathItem

    helpers.load(qtbot, window, siim_dicom)
    s, c = window.session, window.canvas
    rr, cc = np.mgrid[0:16, 0:16]
    heat = np.exp(-((rr - 8) ** 2 + (cc - 4) ** 2) / 8.0).astype(np.float32)
    s.set_heatmap(HeatmapLayer(heat, label="Effusion", threshold=0.3))
    assert not isinstance(c.heatmap_item, QGraphicsItemGroup)
    window.action_map["heatmap_style"].trigger()  # Shift+G
    assert s.preference("heatmap_style") == "contour"
    group = c.heatmap_item
    assert isinstance(group, QGraphicsItemGroup)
    paths = [i for i in group.childItems() if isinstance(i, QGraphicsPathItem)]
    assert len(paths) == 3 and all(not p.path().isEmpty() for p in paths)
    # the outer line runs where the map crosses the cut-off: around the spot at row 8, col 4 of 16 (image 1024)
    outer = group.mapRectToScene(paths[0].path().boundingRect())
    assert outer.center().x() == pytest.approx(4.5 / 16 * 1024, abs=40)
    assert outer.center().y() == pytest.approx(8.5 / 16 * 1024, abs=40)
    window.action_map["heatmap_toggle"].trigger()  # G hides the heatmap
    assert not s.heatmap.visible and not c.heatmap_item.isVisible()
    window.action_map["heatmap_style"].trigger()
    assert s.preference("heatmap_style") == "fill"


def test_page_keys_and_mouse_buttons_step_through_the_study_list(qtbot, window, helpers, tmp_path, siim_dicom, nih_png):
    folder = tmp_path / "list"
    folder.mkdir()
    shutil.copy(siim_dicom, folder / "a_first_film_with_a_long_name.dcm")
    shutil.copy(nih_png, folder / "b_second_film_with_a_long_name.png")
    window.open_paths([folder])
    qtbot.waitUntil(lambda: len(window.study_browser.image_paths()) == 2 and window.session.record is not None,
                    timeout=LOAD_TIMEOUT_MS)
    assert window.wait_idle(60)
    paths = window.study_browser.image_paths()
    first, second = paths
    assert window.session.record.source == first
    qtbot.keyClick(window, Qt.Key.Key_PageDown)
    qtbot.waitUntil(lambda: window.session.record.source == second, timeout=LOAD_TIMEOUT_MS)
    qtbot.keyClick(window, Qt.Key.Key_PageDown)  # the last one stays
    assert window.wait_idle(60) and window.session.record.source == second
    vp = window.canvas.viewport()
    helpers.mouse(vp, QEvent.Type.MouseButtonPress, vp.rect().center(), Qt.MouseButton.BackButton)
    qtbot.waitUntil(lambda: window.session.record.source == first, timeout=LOAD_TIMEOUT_MS)
    helpers.mouse(vp, QEvent.Type.MouseButtonPress, vp.rect().center(), Qt.MouseButton.ForwardButton)
    qtbot.waitUntil(lambda: window.session.record.source == second, timeout=LOAD_TIMEOUT_MS)
    # captions wrap in the narrow dock instead of being cut off
    browser = window.study_browser
    assert browser.wordWrap()
    item = browser._items_for(second)[0]
    assert item.text(0).replace("\u200b", "").startswith(second.name) and "\u200b" in item.text(0)


def test_colour_bar_stays_clear_of_the_film_corners(qtbot, window, helpers, siim_dicom):
    window.resize(1400, 900)  # the default window
    qtbot.waitUntil(lambda: window.width() == 1400)
    helpers.load(qtbot, window, siim_dicom)
    window.session.set_heatmap(HeatmapLayer(np.ones((8, 8), np.float32) * 0.7, label="x", threshold=0.2))
    bar = window.canvas.colorbar.geometry()
    vp = window.canvas.viewport().rect()
    assert bar.top() > vp.height() * 0.8, "bottom edge, not over the L/R marker in the top corners"
    assert bar.left() > 150 and bar.right() < vp.width() - 150, "between the corner text blocks"


def test_every_frequent_action_is_on_the_keyboard_and_in_f1(qtbot, window):
    rows = dict(window.shortcut_rows())
    for key in ("heatmap_toggle", "heatmap_style", "next_finding", "prev_finding", "panel_report", "panel_findings",
                "panel_heatmap", "toggle_overlays", "next_image", "prev_image", "mode_angle", "mode_roi_ellipse",
                "mode_roi_rect", "mode_ctr", "mode_arrow", "mode_text", "save_annotations", "undo_annotation"):
        act = window.action_map[key]
        assert act.shortcuts(), key
        assert act.text().replace("&", "") in rows, key
    assert rows["Magnifier (loupe under the cursor)"] == "Hold Z"
    assert rows["Next Image"] == "PgDown"
    # no two actions share a key
    keys = [s.toString() for a in window.action_map.values() for s in a.shortcuts()]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_report_panel_toggles_from_the_keyboard(qtbot, window):
    window.report_dock.raise_()
    visible = window.report_dock.isVisible()
    window.action_map["panel_report"].trigger()
    assert window.report_dock.isVisible() != visible


def test_next_finding_key_walks_the_heatmaps(qtbot, make_window, tiny_models):
    from tests.qt.test_analysis import analysed_window

    win = analysed_window(qtbot, make_window, tiny_models, Path(__file__).resolve().parents[2] / "resources/samples/nih_chest.png")
    rows = [(m, lab) for m, lab, *_ in win.findings_panel.rows()]
    assert len(rows) == len(NIH_LABELS) + 1
    seen = []
    for _ in range(3):
        key = win.reading.step_finding(1)
        qtbot.waitUntil(lambda k=key: win.analysis.heatmap is not None
                        and (win.analysis.heatmap.model, win.analysis.heatmap.label) == k, timeout=WAIT_MS)
        seen.append(key)
    assert len(set(seen)) == 3 and all(k in rows for k in seen)
    back = win.reading.step_finding(-1)
    assert back == seen[1]


def test_layout_at_default_size_shows_every_finding_row(qtbot, make_window, tiny_models):
    from tests.qt.test_analysis import analysed_window

    win = analysed_window(qtbot, make_window, tiny_models, Path(__file__).resolve().parents[2] / "resources/samples/nih_chest.png")
    win.resize(1400, 900)
    qtbot.wait(50)
    tree = win.findings_panel.tree
    view = tree.viewport().rect()
    for g in range(tree.topLevelItemCount()):
        group = tree.topLevelItem(g)
        for i in range(group.childCount()):
            rect = tree.visualItemRect(group.child(i))
            assert view.contains(rect), f"row {group.child(i).text(0)} is below the fold"
    header = tree.header()
    result = header.sectionViewportPosition(3) + header.sectionSize(3)
    assert result <= view.width(), "the Result badge column is inside the panel"


CHEST_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
                "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia", "Abnormal")


@pytest.fixture(scope="module")
def chest_like_models(tmp_path_factory) -> Path:
    """The default bundles' shape: one 15-finding classifier and a segmenter with the derived TB lesion score."""
    from tests.qt.bundles import build_classifier, build_derived_segmenter
    from tests.qt.test_derived_findings_panel import LABEL, NOTE

    root = tmp_path_factory.mktemp("chest_like_models")
    build_classifier(root / "chest", "chest-tiny", CHEST_LABELS, trained=True, seed=3)
    build_derived_segmenter(root / "seg", LABEL, NOTE, ["tuberculosis in the right lung"])
    return root


def assert_rows_whole(tree, rows, cols=None) -> None:
    """No finding name, badge (or prior → now text) is elided, and no column reaches past the panel."""
    from PySide6.QtGui import QFontMetrics
    from PySide6.QtWidgets import QStyle

    from cxr_viewer.qt.panels.findings import COL_LABEL, COL_PRIOR, COL_RESULT

    cols = cols or ((COL_LABEL, tree.indentation()), (COL_RESULT, 0))
    header = tree.header()
    view = tree.viewport().rect()
    margin = 2 * (tree.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, tree) + 1)
    for it in rows:
        for col, indent in cols:
            need = QFontMetrics(it.font(col)).horizontalAdvance(it.text(col))
            room = header.sectionSize(col) - indent - margin
            assert need <= room, f"{it.text(col)!r} is elided ({need} px of text in {room} px)"
        assert view.contains(tree.visualItemRect(it)), f"row {it.text(COL_LABEL)} is below the fold"
    last = COL_PRIOR if not tree.isColumnHidden(COL_PRIOR) else COL_RESULT
    assert header.sectionViewportPosition(last) + header.sectionSize(last) <= view.width(), "no sideways scrolling"
    assert tree.horizontalScrollBar().maximum() == 0


def test_default_size_shows_every_finding_name_and_badge_whole(qtbot, make_window, chest_like_models):
    """At 1400x900 no finding name or badge is elided, the widest ones included, and the last row is in view."""
    from cxr_viewer.qt.panels.findings import COL_LABEL, COL_RESULT
    from tests.qt.test_analysis import analysed_window
    from tests.qt.test_derived_findings_panel import LABEL

    win = analysed_window(qtbot, make_window, chest_like_models,
                          Path(__file__).resolve().parents[2] / "resources/samples/nih_chest.png", show=None)
    win.resize(1400, 900)  # the default window size (the test fixture opens at 1200x800)
    qtbot.waitUntil(lambda: (win.width(), win.height()) == (1400, 900))
    panel = win.findings_panel
    panel.set_threshold("seg-derived", LABEL, 0.0)  # the longest badge: "◌ above · not validated"
    panel.show_heatmap("seg-derived", LABEL)  # the longest name: bold, with the ◉ of the shown heatmap
    qtbot.waitUntil(lambda: win.analysis.heatmap is not None and win.analysis.heatmap.label == LABEL, timeout=WAIT_MS)
    qtbot.wait(50)
    tree = panel.tree
    rows = [tree.topLevelItem(g).child(i) for g in range(tree.topLevelItemCount())
            for i in range(tree.topLevelItem(g).childCount())]
    assert len(rows) == len(CHEST_LABELS) + 1
    assert panel.item_for("seg-derived", LABEL).text(COL_LABEL).startswith("◉ ⚠ ")
    assert panel.item_for("seg-derived", LABEL).text(COL_RESULT) == "◌ above · not validated"
    assert_rows_whole(tree, rows)
    assert tree.verticalScrollBar().maximum() == 0
    unvalidated = [r for r in rows if "not validated" in r.text(COL_RESULT)]
    assert unvalidated and all("not validated" in r.toolTip(COL_RESULT) and "read the score" in r.toolTip(COL_RESULT)
                               for r in unvalidated), "every 'not validated' badge says what it means when hovered"
    assert win.canvas.viewport().width() >= 560, "the film keeps most of the window"


# --------------------------------------------------------------------------- measurements and annotations
def test_distance_labels_do_not_collide_at_a_shared_end_point(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    c = window.canvas
    window.action_map["mode_measure"].trigger()
    drag_img(helpers, c, (300, 300), (500, 500))
    drag_img(helpers, c, (500, 500), (300, 700))  # starts where the first ends
    drag_img(helpers, c, (500, 500), (302, 304))  # nearly on top of the first
    assert len(window.session.measurements) == 3
    rects = c.label_rects()
    for i in range(3):
        for j in range(i + 1, 3):
            assert not rects[i].intersects(rects[j]), (i, j)
    c.zoom_by(0.5)
    rects = c.label_rects()
    assert not any(rects[i].intersects(rects[j]) for i in range(3) for j in range(i + 1, 3))


def test_angle_tool_drag_then_click(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    c = window.canvas
    c.setFocus()
    qtbot.keyClick(window, Qt.Key.Key_A)
    assert c.mode == "angle"
    drag_img(helpers, c, (200, 500), (500, 500))  # one arm, ending at the vertex
    assert c.drawing and window.session.measurements == []
    click(helpers, c, (500, 800)[0], (500, 800)[1])
    [a] = window.session.measurements
    assert a.kind == "angle" and a.degrees == pytest.approx(90.0, abs=1.0)
    assert c.measurement_items[0].label.text == a.label


def test_roi_tools_report_statistics_in_file_units_and_area(qtbot, window, helpers, film):
    helpers.load(qtbot, window, film)
    c = window.canvas
    window.action_map["mode_roi_rect"].trigger()
    drag_img(helpers, c, (200, 300), (400, 600))
    window.action_map["mode_roi_ellipse"].trigger()
    drag_img(helpers, c, (600, 300), (800, 500))
    rect, ell = window.session.measurements
    raw = pydicom.dcmread(film).pixel_array.astype(float)
    (r0, c0), (r1, c1) = rect.p0, rect.p1
    block = raw[int(np.ceil(r0)) : int(np.floor(r1)) + 1, int(np.ceil(c0)) : int(np.floor(c1)) + 1]
    assert rect.stats.mean == pytest.approx(block.mean()) and rect.stats.maximum == block.max()
    assert rect.stats.area_mm2 == pytest.approx((r1 - r0) * (c1 - c0) * 0.168**2)
    assert ell.shape == "ellipse" and ell.stats.count < (800 - 600 + 1) * (500 - 300 + 1)
    text = c.measurement_items[1].label.text
    assert "mean" in text and "SD" in text and "min" in text and "mm²" in text


def test_ctr_tool_two_horizontal_widths(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    c = window.canvas
    window.action_map["mode_ctr"].trigger()
    drag_img(helpers, c, (600, 350), (610, 700))  # cardiac width, hand not quite level
    assert c.drawing
    drag_img(helpers, c, (700, 120), (690, 920))  # thoracic width
    [ctr] = window.session.measurements
    assert ctr.cardiac[0][0] == ctr.cardiac[1][0] and ctr.thoracic[0][0] == ctr.thoracic[1][0]
    assert ctr.ratio == pytest.approx(350 / 800, abs=0.01)
    assert c.measurement_items[0].label.text.startswith(f"CTR {ctr.ratio:.2f}")


def test_arrow_and_text_annotations_ask_for_their_text(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    c = window.canvas
    answers = iter(["small effusion", None, "check the tube"])
    c.text_prompt = lambda title: next(answers)
    window.action_map["mode_arrow"].trigger()
    drag_img(helpers, c, (200, 200), (300, 350))
    window.action_map["mode_text"].trigger()
    click(helpers, c, 500, 500)  # cancelled: nothing added
    click(helpers, c, 520, 520)
    arrow, note = window.session.measurements
    assert arrow.kind == "arrow" and arrow.text == "small effusion" and arrow.head[0] > arrow.tail[0]
    assert note.kind == "text" and note.text == "check the tube"
    window.action_map["undo_annotation"].trigger()
    assert window.session.measurements == [arrow]


def test_annotations_are_saved_beside_the_study_and_come_back(qtbot, make_window, helpers, film):
    win = make_window()
    helpers.load(qtbot, win, film)
    win.canvas.add_annotation("measure", [(100, 100), (100, 400)])
    win.canvas.add_annotation("roi_ellipse", [(300, 300), (400, 450)])
    win.canvas.add_annotation("text", [(600, 600)], text="note")
    saved = win.reading.save_annotations()
    side = marks.sidecar_path(film)
    gsps = film.with_name("film.gsps.dcm")
    assert saved == [side, gsps] and side.is_file() and gsps.is_file()
    pr = pydicom.dcmread(gsps)
    assert pr.Modality == "PR"
    assert pr.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == \
        pydicom.dcmread(film, stop_before_pixels=True).SOPInstanceUID
    before = win.session.measurements
    again = make_window()
    helpers.load(qtbot, again, film)
    qtbot.waitUntil(lambda: len(again.session.measurements) == 3, timeout=LOAD_TIMEOUT_MS)
    assert again.session.measurements == before
    assert len(again.canvas.measurement_items) == 3


def test_saving_where_the_file_cannot_be_written_says_so(qtbot, window, helpers, film):
    helpers.load(qtbot, window, film)
    window.canvas.add_annotation("measure", [(100, 100), (100, 400)])
    marks.sidecar_path(film).mkdir()  # a folder in the way: the write fails as on a read-only share
    assert window.reading.save_annotations() == []
    assert "Check that the folder is writable" in window.last_error
    assert window.session.measurements, "the annotations stay on the image"


def test_magnifier_shows_a_loupe_while_the_key_is_held(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    c = window.canvas
    c.setFocus()
    centre = vp_point(c, 512, 512)
    helpers.mouse(c.viewport(), QEvent.Type.MouseMove, centre, Qt.MouseButton.NoButton)
    qtbot.keyPress(c, Qt.Key.Key_Z)
    loupe = c.loupe
    assert loupe is not None and loupe.isVisible()
    assert QRectF(loupe.geometry()).contains(c.viewport().rect().center()) or loupe.geometry().contains(centre) \
        or loupe.isVisible()
    img = loupe.pixmap().toImage()
    mid = img.pixelColor(img.width() // 2, img.height() // 2)
    corner = img.pixelColor(2, 2)
    assert corner.alpha() == 0, "a round loupe"
    assert mid.alpha() == 255 and mid.red() > 20, "the film is shown inside"
    helpers.mouse(c.viewport(), QEvent.Type.MouseMove, centre + QPoint(60, 40), Qt.MouseButton.NoButton)
    assert loupe.geometry().center().x() == pytest.approx(centre.x() + 60, abs=2)
    qtbot.keyRelease(c, Qt.Key.Key_Z)
    assert not loupe.isVisible()


def test_drop_a_file_then_a_folder(qtbot, window, tmp_path, siim_dicom, nih_png):
    from tests.qt.test_viewer import _drop

    _drop(window.canvas.viewport(), [nih_png])
    qtbot.waitUntil(lambda: window.session.record is not None and window.session.record.source == nih_png,
                    timeout=LOAD_TIMEOUT_MS)
    folder = tmp_path / "dropped"
    folder.mkdir()
    shutil.copy(siim_dicom, folder / "x.dcm")
    _drop(window.canvas.viewport(), [folder])
    qtbot.waitUntil(lambda: folder / "x.dcm" in window.study_browser.image_paths(), timeout=LOAD_TIMEOUT_MS)
    qtbot.keyClick(window, Qt.Key.Key_PageUp)  # the study list now holds both: step back through it
    assert window.wait_idle(60)
    assert window.session.record is not None


# --------------------------------------------------------------------------- current | prior
def _study_pair(folder: Path, siim_dicom: Path, dicom_dir: Path) -> tuple[Path, Path]:
    """Two films of one patient: the sample (2024) and another chest film relabelled as its 2023 prior."""
    from pydicom.uid import generate_uid

    folder.mkdir()
    cur = pydicom.dcmread(siim_dicom)
    cur.PatientID, cur.StudyDate = "P-1", "20240301"
    cur.save_as(folder / "current.dcm")
    prior = pydicom.dcmread(dicom_dir / "siim_pneumothorax_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    prior.PatientID, prior.StudyDate = "P-1", "20230115"
    prior.StudyInstanceUID, prior.SeriesInstanceUID, prior.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    prior.file_meta.MediaStorageSOPInstanceUID = prior.SOPInstanceUID
    prior.save_as(folder / "prior.dcm")
    return folder / "current.dcm", folder / "prior.dcm"


def test_current_and_prior_side_by_side_linked_with_score_deltas(qtbot, make_window, tiny_models, tmp_path,
                                                                 siim_dicom, dicom_dir):
    import json

    cur, prior = _study_pair(tmp_path / "pair", siim_dicom, dicom_dir)
    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    manifest = json.loads((models / "nih" / "manifest.json").read_text())
    manifest["score_noise"] = {"weights_sha256": manifest["weights"]["sha256"], "split": "val",
                               "labels": {lab: {"value": 0.0} for lab in NIH_LABELS}}  # measured: no noise at all
    (models / "nih" / "manifest.json").write_text(json.dumps(manifest, indent=2))
    win = make_window(models_dir=models)
    win.resize(1400, 900)  # the default window: room for the findings with their Prior → now column
    win.analysis.backend = "torch"
    win.open_paths([tmp_path / "pair"])
    qtbot.waitUntil(lambda: len(win.study_browser.image_paths()) == 2, timeout=LOAD_TIMEOUT_MS)
    win.open_file(cur)
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == cur
                    and win.analysis.state.status == "done", timeout=WAIT_MS)
    compare = win.reading.compare
    qtbot.keyClick(win, Qt.Key.Key_F8)
    assert compare.is_open and compare.prior_path == prior and compare.prior_date == "20230115"
    pv = compare.prior
    qtbot.waitUntil(lambda: pv.session.record is not None, timeout=LOAD_TIMEOUT_MS)
    assert "2023-01-15" in pv.title.text() and "2024-03-01" in compare.current_title.text()
    assert pv.canvas.width() > 200 and win.canvas.width() > 200, "two viewports side by side"
    for canvas in (win.canvas, pv.canvas):  # the scale bar stays clear of the bottom-left text in a narrow viewport
        assert canvas.scale_bar()[1] <= max(40, 0.3 * canvas.viewport().width())
    # linked: window/level, zoom (relative to fit) and pan follow the current viewport
    win.session.set_window(0.2, 0.6)
    assert pv.session.display.window == pytest.approx((0.2, 0.6))
    win.canvas.zoom_by(2.0, win.canvas.image_to_viewport(300, 700).toPoint())
    ratio_cur = win.canvas.zoom / win.canvas._fit_zoom()
    ratio_prior = pv.canvas.zoom / pv.canvas._fit_zoom()
    assert ratio_prior == pytest.approx(ratio_cur, rel=0.02)
    assert compare.relative_centre(pv.canvas) == pytest.approx(compare.relative_centre(win.canvas), abs=0.01)
    pv.session.set_invert(True)  # linked both ways
    assert win.session.display.invert
    win.action_map["link_views"].trigger()  # unlink
    win.session.set_window(0.1, 0.3)
    assert pv.session.display.window == pytest.approx((0.2, 0.6))
    # per-finding deltas: prior -> current, with the noise each bundle recorded on its validation films
    qtbot.waitUntil(lambda: bool(compare.deltas) or "could not be scored" in win.statusBar().currentMessage(),
                    timeout=3 * WAIT_MS)  # the prior is scored on a shared CPU
    assert compare.deltas, win.statusBar().currentMessage()
    panel = win.findings_panel
    assert not panel.tree.isColumnHidden(4)
    for (model, label), d in compare.deltas.items():
        assert panel.delta_text(model, label) == d.text()
        assert d.current == pytest.approx(
            next(f.score for f in win.analysis.state.findings if (f.model, f.label) == (model, label)))
        assert ("↑" in d.text() or "↓" in d.text()) == d.significant
        if model == "nih-tiny":  # recorded noise 0: the floor decides
            assert d.noise == 0.0 and d.beyond_noise == (abs(d.change) > NOISE_K * MIN_NOISE)
            assert d.significant == (d.beyond_noise and d.matters)
        else:  # tb-tiny records no noise: the change is shown as a number, never with an arrow
            assert d.noise is None and not d.significant and "records no score noise" in d.tooltip()
    assert len(compare.deltas) == len(NIH_LABELS) + 1
    assert "No score noise recorded for tb-tiny" in win.statusBar().currentMessage()
    from cxr_viewer.qt.panels.findings import COL_LABEL, COL_PRIOR, COL_RESULT

    rows = [panel.item_for(m, lab) for m, lab in compare.deltas]
    qtbot.waitUntil(lambda: win.findings_dock.width() >= panel.preferred_width(prior=True) - 8)  # widened for the column
    assert_rows_whole(panel.tree, rows, ((COL_LABEL, panel.tree.indentation()), (COL_RESULT, 0), (COL_PRIOR, 0)))
    qtbot.keyClick(win, Qt.Key.Key_F8)
    assert not compare.is_open and panel.tree.isColumnHidden(4)
    qtbot.waitUntil(lambda: abs(win.findings_dock.width() - panel.preferred_width(prior=False)) <= 8)  # and back


def test_compare_says_when_there_is_no_prior(qtbot, window, helpers, siim_dicom):
    helpers.load(qtbot, window, siim_dicom)
    window.action_map["compare"].trigger()
    assert not window.reading.compare.is_open and not window.action_map["compare"].isChecked()
    assert "No earlier film" in window.statusBar().currentMessage()


@pytest.fixture(scope="module")
def pair_models(tmp_path_factory) -> Path:
    """The tiny classifier and the tiny report-conditioned segmenter in one folder."""
    from tests.qt.bundles import build_classifier, build_segmenter

    root = tmp_path_factory.mktemp("pair_models")
    build_classifier(root / "nih", "nih-tiny", NIH_LABELS, trained=True, seed=1)
    build_segmenter(root / "seg")
    return root


def test_report_masks_are_drawn_on_the_current_and_the_prior(qtbot, make_window, pair_models, tmp_path,
                                                             siim_dicom, dicom_dir):
    import torch

    torch.set_num_threads(2)
    from pydicom.uid import ExplicitVRLittleEndian

    cur, prior = _study_pair(tmp_path / "pair", siim_dicom, dicom_dir)
    ds = pydicom.dcmread(prior)  # a prior of another size: its masks can only come from segmenting it
    px = np.ascontiguousarray(ds.pixel_array[40:940, 60:1000])
    ds.PixelData, (ds.Rows, ds.Columns) = px.tobytes(), px.shape
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(prior)
    win = make_window(models_dir=pair_models)
    win.analysis.backend = "torch"
    win.open_paths([tmp_path / "pair"])
    qtbot.waitUntil(lambda: len(win.study_browser.image_paths()) == 2, timeout=LOAD_TIMEOUT_MS)
    win.open_file(cur)
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == cur
                    and win.analysis.state.status == "done", timeout=WAIT_MS)
    report = win.report_panel
    report.editor.setPlainText("Opacity in the right lower zone. The left lung is clear.")
    report.draw_button.click()  # drawn before the prior is shown: the prior gets the same sentences when it opens
    qtbot.waitUntil(lambda: len(win.session.masks) == 2 and not win.session.busy, timeout=WAIT_MS)
    compare = win.reading.compare
    qtbot.keyClick(win, Qt.Key.Key_F8)
    assert compare.is_open
    pv = compare.prior
    qtbot.waitUntil(lambda: pv.session.record is not None and len(pv.session.masks) == 2, timeout=WAIT_MS)
    assert [m.text for m in pv.session.masks] == [m.text for m in win.session.masks]
    assert pv.session.record.shape == (900, 940)
    assert all(m.mask.shape == (900, 940) for m in pv.session.masks), "segmented on the prior film itself"
    assert all(m.mask.shape == win.session.record.shape == (1024, 1024) for m in win.session.masks)
    assert len(pv.canvas.mask_items) == 2 and all(i.isVisible() for i in pv.canvas.mask_items)
    assert len(win.canvas.mask_items) == 2 and all(i.isVisible() for i in win.canvas.mask_items)
    # a sentence added while both are shown is drawn on both films
    report.phrase_edit.setText("left upper zone")
    report.phrase_button.click()
    qtbot.waitUntil(lambda: len(win.session.masks) == 3 and len(pv.session.masks) == 3, timeout=WAIT_MS)
    assert pv.session.masks[2].text == win.session.masks[2].text == "left upper zone"
    assert len(pv.canvas.mask_items) == 3


def test_png_films_say_why_no_prior_and_take_one_chosen_by_hand(qtbot, make_window, chest_like_models, tmp_path):
    """PNG/JPEG carry no patient or date: F8 says so (not "open the folder"), Shift+F8's film becomes the prior,
    and Pneumonia and Pneumothorax stay whole beside the Prior → now column at 1400x900."""
    from PIL import Image

    from cxr_viewer.qt.panels.findings import COL_LABEL, COL_PRIOR, COL_RESULT

    folder = tmp_path / "pngs"
    folder.mkdir()
    src = Image.open(Path(__file__).resolve().parents[2] / "resources/samples/nih_chest.png").convert("L")
    src.resize((256, 256)).save(folder / "00000013_005.png")
    src.resize((256, 256)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "00000013_026.png")
    win = make_window(models_dir=chest_like_models)
    win.resize(1400, 900)
    win.analysis.backend = "torch"
    win.open_paths([folder])
    qtbot.waitUntil(lambda: len(win.study_browser.image_paths()) == 2, timeout=LOAD_TIMEOUT_MS)
    current, prior = folder / "00000013_026.png", folder / "00000013_005.png"
    win.open_file(current)
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == current
                    and win.analysis.state.status == "done", timeout=WAIT_MS)
    qtbot.keyClick(win, Qt.Key.Key_F8)
    compare = win.reading.compare
    message = win.statusBar().currentMessage()
    assert not compare.is_open and "no patient ID or study date" in message and "open the folder" not in message
    assert "Shift+F8" in message
    assert win.reading.compare_with_chosen(prior)
    assert compare.is_open and compare.prior_path == prior and "chosen by hand" in compare.prior.title.text()
    qtbot.waitUntil(lambda: bool(compare.deltas), timeout=3 * WAIT_MS)
    panel = win.findings_panel
    qtbot.waitUntil(lambda: win.findings_dock.width() >= panel.preferred_width(prior=True) - 8)
    rows = [panel.item_for(m, lab) for m, lab in compare.deltas]
    assert {"Pneumonia", "Pneumothorax"} <= {lab for _m, lab in compare.deltas}
    assert_rows_whole(panel.tree, rows, ((COL_LABEL, panel.tree.indentation()), (COL_RESULT, 0), (COL_PRIOR, 0)))
