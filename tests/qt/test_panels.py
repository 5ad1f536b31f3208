"""Report panel (sentences -> coloured masks, toggles, free phrases, export) and heatmap drawing controls."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.qt.bundles import seg_models, tiny_models  # noqa: F401  (fixtures)

WAIT_MS = 180_000
REPORT = "FINDINGS: There is an opacity in the right lower lobe. Blunting of the left costophrenic angle.\nIMPRESSION: No pneumothorax."


def _torch_threads() -> None:
    import torch

    torch.set_num_threads(2)


def _open(qtbot, make_window, models: Path, path: Path):
    win = make_window(models_dir=models)
    win.analysis.backend = "torch"
    win.open_paths([path])
    qtbot.waitUntil(lambda: win.session.record is not None and not win.session.busy, timeout=WAIT_MS)
    return win


def test_report_sentences_get_coloured_masks_toggles_phrases_and_export(qtbot, make_window, seg_models, nih_png,
                                                                        tmp_path) -> None:
    _torch_threads()
    image = tmp_path / "film.png"  # the pasted report is stored beside the film: never beside the repo's sample
    shutil.copy(nih_png, image)
    win = _open(qtbot, make_window, seg_models, image)
    panel = win.report_panel
    panel.editor.setPlainText(REPORT)
    panel.draw_button.click()
    rows = panel.rows
    assert [r.text for r in rows] == ["There is an opacity in the right lower lobe.", "Blunting of the left costophrenic angle.",
                                      "No pneumothorax."]
    assert [r.drawable for r in rows] == [True, True, False], "a sentence naming no region is listed, not drawn"
    qtbot.waitUntil(lambda: len(win.session.masks) == 2 and not win.session.busy, timeout=WAIT_MS)
    masks = win.session.masks
    assert [m.text for m in masks] == [rows[0].text, rows[1].text]
    assert masks[0].color != masks[1].color
    assert all(m.mask.shape == win.session.record.shape and m.visible for m in masks)
    assert len(win.canvas.mask_items) == 2 and all(it.isVisible() for it in win.canvas.mask_items)
    assert panel.sentence_list.item(0).icon().isNull() is False
    # toggling one sentence hides only its mask
    panel.set_row_visible(1, False)
    assert [m.visible for m in win.session.masks] == [True, False]
    assert [it.isVisible() for it in win.canvas.mask_items] == [True, False]
    # style: filled masks
    panel.style_combo.setCurrentText("fill")
    assert all(m.style == "fill" for m in win.session.masks)
    assert [m.visible for m in win.session.masks] == [True, False], "visibility survives a style change"
    # a free-text phrase adds its own mask
    panel.phrase_edit.setText("left upper zone")
    panel.phrase_button.click()
    qtbot.waitUntil(lambda: len(win.session.masks) == 3 and not win.session.busy, timeout=WAIT_MS)
    assert win.session.masks[2].text == "left upper zone"
    assert len({m.color for m in win.session.masks}) == 3
    # tri-panel export
    out = panel.export(tmp_path / "regions.png")
    from PIL import Image

    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] > 2 * img.shape[0] > 600, "three panels side by side"
    thirds = np.array_split(img[img.shape[0] // 4: 3 * img.shape[0] // 4], 3, axis=1)
    assert all(t.std() > 5 for t in (thirds[0], thirds[2])), "image and overlay panels are drawn"
    colourful = [float(np.mean(t.max(axis=2).astype(int) - t.min(axis=2) > 40)) for t in thirds]
    assert colourful[0] < 0.01 and colourful[1] > 0.001 and colourful[2] > 0.001, "masks in colour, image in grey"


def test_report_is_read_from_a_sidecar_text_file(qtbot, make_window, seg_models, nih_png, tmp_path) -> None:
    _torch_threads()
    image = tmp_path / "study.png"
    shutil.copy(nih_png, image)
    (tmp_path / "study.txt").write_text(REPORT, encoding="utf-8")
    win = _open(qtbot, make_window, seg_models, image)
    panel = win.report_panel
    assert panel.editor.toPlainText() == REPORT and panel.source_text == "study.txt"
    qtbot.waitUntil(lambda: len(win.session.masks) == 2 and not win.session.busy, timeout=WAIT_MS)
    # another image without a report clears the text and the masks
    win.open_paths([nih_png])
    qtbot.waitUntil(lambda: win.session.record.source == nih_png and not win.session.busy, timeout=WAIT_MS)
    assert panel.editor.toPlainText() == "" and win.session.masks == [] and panel.rows == []


def test_report_without_segmentation_model_says_so(qtbot, make_window, tiny_models, nih_png, tmp_path) -> None:
    _torch_threads()
    image = tmp_path / "film.png"
    shutil.copy(nih_png, image)
    win = _open(qtbot, make_window, tiny_models, image)
    win.report_panel.editor.setPlainText(REPORT)
    win.report_panel.draw_button.click()
    qtbot.waitUntil(lambda: win.report_panel.message.isVisible() and not win.session.busy, timeout=WAIT_MS)
    assert "No report-segmentation model" in win.report_panel.message.text()
    assert win.session.masks == []


def test_heatmap_drawing_controls(qtbot, make_window, tiny_models, nih_png) -> None:
    _torch_threads()
    win = _open(qtbot, make_window, tiny_models, nih_png)
    win.findings_panel.show_heatmap("nih-tiny", "Effusion")  # heatmaps are opt-in
    qtbot.waitUntil(lambda: win.session.heatmap is not None and not win.session.busy, timeout=WAIT_MS)
    hp = win.heatmap_panel
    heat = win.session.heatmap
    hp.opacity_slider.setValue(70)
    assert win.session.heatmap.opacity == pytest.approx(0.7)
    assert win.canvas.heatmap_item.opacity() == pytest.approx(0.7)
    hp.colormap_combo.setCurrentText("inferno")
    assert win.session.heatmap.colormap == "inferno" and win.canvas.colorbar.colormap == "inferno"
    hp.threshold_slider.setValue(60)
    assert win.session.heatmap.threshold == pytest.approx(0.6)
    hp.show_check.setChecked(False)
    assert not win.session.heatmap.visible and not win.canvas.heatmap_item.isVisible()
    hp.show_check.setChecked(True)
    assert np.array_equal(win.session.heatmap.data, heat.data), "drawing changes never recompute the map"
    # the finding selector lists every finding, highest score first
    items = [hp.finding_combo.itemData(i) for i in range(hp.finding_combo.count())]
    scores = {(f.label, f.model): f.score for f in list(win.analysis.state.findings)}
    assert set(items) == set(scores) and [scores[i] for i in items] == sorted(scores.values(), reverse=True)
    # the faithfulness score can be switched off (it costs seconds of CPU) and back on
    hp.faithfulness_check.setChecked(False)
    other = next(i for i in items if i[0] != heat.label)
    hp.choose(*other)
    qtbot.waitUntil(lambda: win.session.heatmap.label == other[0] and not win.session.busy, timeout=WAIT_MS)
    assert win.session.heatmap.faithfulness is None and hp.faithfulness_label.text() == "not computed"
    assert win.settings.value("heatmap/faithfulness") == "false"
    hp.faithfulness_check.setChecked(True)
    qtbot.waitUntil(lambda: win.session.heatmap.faithfulness is not None and not win.session.busy, timeout=WAIT_MS)
    assert win.session.heatmap.label == other[0]
    # the overlay stays aligned: rotating and flipping moves image and heatmap as one
    win.session.rotate(90)
    win.session.flip_horizontal()
    win.canvas.flush()
    image_rect = win.canvas._image_item.sceneBoundingRect()
    assert win.canvas.heatmap_item.sceneBoundingRect() == image_rect


def test_findings_sort_positive_first(qtbot, make_window, tiny_models, siim_dicom) -> None:
    _torch_threads()
    win = _open(qtbot, make_window, tiny_models, siim_dicom)
    qtbot.waitUntil(lambda: win.analysis.state.status == "done", timeout=WAIT_MS)
    panel = win.findings_panel
    by_score = [r for r in panel.rows() if r[0] == "nih-tiny"]
    low, high = by_score[-1][1], by_score[0][1]
    panel.set_threshold("nih-tiny", low, 0.0)  # the lowest score becomes positive
    panel.set_threshold("nih-tiny", high, 1.0)  # the highest becomes negative
    panel.sort_combo.setCurrentText("Positive first")
    nih = [r for r in panel.rows() if r[0] == "nih-tiny"]
    flags = [r[4].endswith("POSITIVE") for r in nih]
    assert flags == sorted(flags, reverse=True) and any(flags) and not all(flags)
    labels = [r[1] for r in nih]
    assert labels.index(low) < labels.index(high)
    positives = [r[2] for r in nih if r[4].endswith("POSITIVE")]
    assert positives == sorted(positives, reverse=True)
    panel.sort_combo.setCurrentText("Model order")
    assert [r[1] for r in panel.rows() if r[0] == "nih-tiny"] == ["Atelectasis", "Cardiomegaly", "Effusion", "Nodule"]
    assert win.settings.value("findings/sort") == "Model order"


def test_empty_masks_say_nothing_was_found_and_a_pasted_report_comes_back(qtbot, make_window, seg_models, nih_png,
                                                                          tmp_path) -> None:  # fmt: skip
    """A sentence whose region comes out empty is listed as "nothing found": no legend line, not counted, not
    exported; the list shows three sentences whole; the pasted report is stored with the study's annotations and
    back when the study is opened again (measurements saved there are kept)."""
    from PySide6.QtCore import Qt

    from cxr_viewer.core.imaging.measurements import load_annotations, load_report, sidecar_path
    from cxr_viewer.qt.panels.report import drawn_text

    _torch_threads()
    image = tmp_path / "film.png"
    shutil.copy(nih_png, image)
    win = _open(qtbot, make_window, seg_models, image)
    panel = win.report_panel
    win.resize(1400, 900)
    win.report_dock.raise_()
    panel.editor.setPlainText(REPORT)
    panel.draw_button.click()
    qtbot.waitUntil(lambda: len(win.analysis.masks) == 2 and len(win.session.masks) == 2 and not win.session.busy,
                    timeout=WAIT_MS)
    masks = win.analysis.masks
    assert len(masks) == 2
    # make the second sentence's region come out empty, as the model may: the panel gets the same signal
    import dataclasses

    empty = dataclasses.replace(masks[1], mask=np.zeros_like(masks[1].mask), area_fraction=0.0)
    win.analysis.masks_changed.emit([masks[0], empty])
    item = panel.sentence_list.item(1)
    assert item.text().endswith("— nothing found")
    assert item.data(Qt.ItemDataRole.CheckStateRole) is None, "no tick box: nothing to show"
    assert [m.text for m in win.session.masks] == [masks[0].text], "not in the on-image legend"
    assert panel.source_label.text() == "1 region drawn; nothing found for 1 sentence"
    assert drawn_text(2, 0) == "2 regions drawn" and drawn_text(0, 2) == "Nothing found for 2 sentences"
    # three sentences in view, whole
    lst = panel.sentence_list
    assert lst.isVisible()
    for row in range(lst.count()):
        r = lst.visualItemRect(lst.item(row))
        assert r.bottom() <= lst.viewport().height(), f"sentence {row + 1} is cut off"
    # stored with the study's annotations, beside a measurement saved earlier
    side = sidecar_path(image)
    assert load_report(side) == REPORT
    win.session.set_measurements([])
    win.canvas.add_annotation("measure", [(100, 100), (300, 100)])
    win.reading.save_annotations()
    assert load_report(side) == REPORT and len(load_annotations(side, win.session.record)) == 1
    win.open_paths([nih_png])
    qtbot.waitUntil(lambda: win.session.record.source == nih_png and not win.session.busy, timeout=WAIT_MS)
    assert panel.editor.toPlainText() == ""
    win.open_paths([image])
    qtbot.waitUntil(lambda: win.session.record.source == image and not win.session.busy, timeout=WAIT_MS)
    assert panel.editor.toPlainText() == REPORT and "annotations" in panel.source_text
    assert len(win.session.measurements) == 1
