"""The viewer without torch (the small CPU app): same panels, ONNX Runtime underneath."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.qt.bundles import NIH_LABELS, tiny_models  # noqa: F401  (fixture)

WAIT_MS = 180_000


@pytest.fixture(scope="module")
def lane_models(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:  # noqa: F811
    from cxr_viewer.core.inference.onnx_export import export_bundle

    root = tmp_path_factory.mktemp("lane_models")
    shutil.copytree(tiny_models / "nih", root / "nih")
    assert export_bundle(root / "nih") is not None
    return root


def test_viewer_runs_on_the_torch_free_lane(qtbot, make_window, lane_models, nih_png, monkeypatch) -> None:
    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    win = make_window(models_dir=lane_models)
    win.analysis.set_shown_cam("Effusion", None)  # the reader asked for this finding's heatmap
    win.open_paths([nih_png])
    qtbot.waitUntil(lambda: win.session.record is not None and win.analysis.state.status == "done"
                    and not win.session.busy, timeout=WAIT_MS)
    engine = win.analysis.pool.engine
    assert engine.device == "cpu" and all(b.model is None for b in engine.bundles)
    assert {engine.backend_for(b) for b in engine.bundles} == {"onnx"}
    assert sorted(lab for _m, lab, *_ in win.findings_panel.rows()) == sorted(NIH_LABELS)
    heat = win.session.heatmap
    assert heat is not None and heat.data.shape == win.session.record.shape
    # no ROAD score without torch: said plainly, not left "computing…"
    assert heat.faithfulness is None and win.heatmap_panel.faithfulness_label.text() == "not available"
    # every method this model can draw is offered; the rest are greyed with the reason
    from cxr_viewer.qt.analysis import CAM_CHOICES

    missing = win.analysis.unavailable_methods("nih-tiny")
    combo_model = win.heatmap_panel.method_combo.model()
    for row, key in enumerate(CAM_CHOICES.values()):
        assert combo_model.item(row).isEnabled() == (key not in missing)
    win.heatmap_panel.choose(heat.label, "nih-tiny", method="layercam")
    qtbot.waitUntil(lambda: win.session.heatmap.method == "layercam" and not win.session.busy, timeout=WAIT_MS)
    assert win.last_error is None
