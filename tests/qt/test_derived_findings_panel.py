"""The findings panel shows a derived (segmenter-read) finding with its note, marker and editable threshold."""

from __future__ import annotations

from pathlib import Path

import pytest

WAIT_MS = 180_000
LABEL = "Tuberculosis (lesion score)"
NOTE = "Localisation validated on held-out TBX11K; specificity not measured — not a screening result."


@pytest.fixture(scope="module")
def derived_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.qt.bundles import build_derived_segmenter

    root = tmp_path_factory.mktemp("derived_models")
    build_derived_segmenter(root / "seg", LABEL, NOTE, ["tuberculosis in the right lung", "tuberculosis in the left lung"])
    return root


def test_derived_row_has_note_marker_threshold_and_lesion_map(qtbot, make_window, derived_models, nih_png) -> None:
    import torch

    from cxr_viewer.qt.panels.findings import COL_LABEL, UNVALIDATED_MARK

    torch.set_num_threads(2)
    win = make_window(models_dir=derived_models)
    win.analysis.backend = "torch"
    win.open_paths([nih_png])
    qtbot.waitUntil(lambda: win.analysis.state.status == "done", timeout=WAIT_MS)
    panel = win.findings_panel
    rows = [r for r in panel.rows() if r[0] == "seg-derived"]
    assert [r[1] for r in rows] == [LABEL]
    score = rows[0][2]
    assert 0.0 <= score <= 1.0 and rows[0][3] == pytest.approx(0.5)
    item = panel.item_for("seg-derived", LABEL)
    assert item.text(COL_LABEL).startswith("⚠ ") and UNVALIDATED_MARK in item.toolTip(COL_LABEL)
    assert NOTE in item.toolTip(COL_LABEL)
    # a site threshold below / above the score flips the result; an unvalidated score never reads POSITIVE
    panel.set_threshold("seg-derived", LABEL, 0.0)
    row = next(r for r in panel.rows() if r[1] == LABEL)
    assert row[3] == 0.0 and row[4] == "◌ above · not validated"
    assert "No POSITIVE badge" in panel.item_for("seg-derived", LABEL).toolTip(COL_LABEL)
    panel.set_threshold("seg-derived", LABEL, 1.0)
    row = next(r for r in panel.rows() if r[1] == LABEL)
    assert row[3] == 1.0 and not row[4].endswith("POSITIVE")
    assert NOTE in panel.item_for("seg-derived", LABEL).toolTip(COL_LABEL)
    panel.set_threshold("seg-derived", LABEL, None)
    assert next(r for r in panel.rows() if r[1] == LABEL)[3] == pytest.approx(0.5)
    # the heatmap of this finding is the lesion map itself
    seen = []
    win.analysis.heatmap_changed.connect(seen.append)
    panel.show_heatmap("seg-derived", LABEL)
    qtbot.waitUntil(lambda: any(h is not None and h.label == LABEL for h in seen), timeout=WAIT_MS)
    heat = next(h for h in seen if h is not None and h.label == LABEL)
    assert heat.method == "lesion map" and heat.shape == win.session.record.shape
    qtbot.waitUntil(lambda: "not validated for screening" in win.heatmap_panel.info_label.text(), timeout=WAIT_MS)
    assert win.heatmap_panel.faithfulness_label.text() == "not applicable"


def test_heatmaps_are_opt_in_and_the_show_choice_stays_with_the_patient(qtbot, make_window, derived_models,
                                                                         nih_png, tmp_path) -> None:
    """No heatmap until the reader asks; the choice is not written to the settings, and a film whose
    patient is unknown (a PNG) does not inherit it (see tests/qt/test_heatmap_rules.py for the same patient)."""
    import shutil

    import torch

    from tests.qt.bundles import build_classifier

    torch.set_num_threads(2)
    shutil.copytree(derived_models / "seg", tmp_path / "models" / "seg")
    build_classifier(tmp_path / "models" / "nih", "nih-tiny", ("Atelectasis", "Effusion"), trained=True, seed=1,
                     thresholds={"Atelectasis": 0.0, "Effusion": 0.0})  # both above threshold: still no map unasked
    win = make_window(models_dir=tmp_path / "models")
    win.analysis.backend = "torch"
    win.open_paths([nih_png])
    qtbot.waitUntil(lambda: win.analysis.state.status == "done" and not win.session.busy, timeout=WAIT_MS)
    qtbot.wait(300)
    assert win.analysis.heatmap is None and win.session.heatmap is None
    win.findings_panel.show_heatmap("nih-tiny", "Effusion")  # the reader asks
    qtbot.waitUntil(lambda: win.analysis.heatmap is not None and not win.session.busy, timeout=WAIT_MS)
    assert win.analysis.heatmap.label == "Effusion"
    assert win.analysis.shown_cam == ("Effusion", "nih-tiny") and not win.settings.value("heatmap/show")
    # the next image (a flipped copy, no patient recorded) does not get the map
    from PIL import Image

    other = tmp_path / "other.png"
    Image.open(nih_png).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    win.open_paths([other])
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == other
                    and win.analysis.state.status == "done" and not win.session.busy, timeout=WAIT_MS)
    qtbot.wait(300)
    assert win.analysis.heatmap is None and win.session.heatmap is None and win.analysis.shown_cam is None


def test_start_up_warm_up_loads_models_and_encodes_the_stock_prompts(qtbot, make_window, derived_models) -> None:
    """Before any image: bundles loaded, backends chosen, the text encoder loaded and the derived findings'
    prompts encoded, all on the model worker; closing the window then cancels what is left of it."""
    import torch

    torch.set_num_threads(2)
    win = make_window(models_dir=derived_models)
    win.analysis.backend = "torch"
    win.analysis.warm_up()
    qtbot.waitUntil(lambda: not win.session.busy, timeout=WAIT_MS)
    engine = win.analysis.pool.engine
    assert engine is not None and [b.name for b in engine.bundles] == ["seg-derived"]
    seg = engine.segmenter(engine.bundle("seg-derived"))
    cache = seg.text_encoder.cache
    hits = cache.hits
    seg.embed(["tuberculosis in the right lung", "tuberculosis in the left lung"])
    assert cache.hits == hits + 2  # already encoded by the warm-up
    assert [s.name for s in win.analysis.bundles] == ["seg-derived"]
    win.analysis.warm_up()  # a second warm-up, cancelled by closing: nothing is left running or raised
    win.close()
