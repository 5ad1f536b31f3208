"""Models in the viewer: findings, thresholds, Grad-CAM, stale results, device, screenshot.

Real tiny bundles (tests/qt/bundles.py) run through the real engine; no model is mocked.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QDoubleSpinBox

from tests.qt.bundles import NIH_LABELS, tiny_models  # noqa: F401  (fixture)

WAIT_MS = 180_000


def _torch_threads() -> None:
    import torch

    torch.set_num_threads(2)


def analysed_window(qtbot, make_window, models: Path, path: Path, show: str | None = "Effusion"):
    """A window that analysed ``path``; ``show``: the finding whose heatmap the reader chose (opt-in)."""
    win = make_window(models_dir=models)
    win.analysis.backend = "torch"
    if show is not None:
        win.analysis.set_shown_cam(show, None)
    win.progress_lines = []
    win.analysis.progress.connect(win.progress_lines.append)
    win.open_paths([path])
    qtbot.waitUntil(lambda: win.session.record is not None and win.analysis.state.status == "done"
                    and not win.session.busy, timeout=WAIT_MS)
    return win


def test_window_opens_without_importing_torch(tmp_path: Path) -> None:
    code = (
        "import sys, os\n"
        "os.environ['QT_QPA_PLATFORM'] = 'offscreen'\n"
        "from PySide6.QtCore import QSettings\n"
        "from PySide6.QtWidgets import QApplication\n"
        "app = QApplication([])\n"
        "from cxr_viewer.qt.app import compose\n"
        f"w = compose(settings=QSettings({str(tmp_path / 's.ini')!r}, QSettings.Format.IniFormat))\n"
        "w.show(); app.processEvents()\n"
        "assert w.findings_panel and w.heatmap_panel and w.report_panel\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CXR_VIEWER_MODELS": str(tmp_path / "m")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_dicom_fills_findings_with_marks_and_heatmap(qtbot, make_window, tiny_models, siim_dicom) -> None:
    _torch_threads()
    win = analysed_window(qtbot, make_window, tiny_models, siim_dicom)
    panel = win.findings_panel
    rows = panel.rows()
    assert sorted((m, lab) for m, lab, *_ in rows) == sorted(
        [("nih-tiny", lab) for lab in NIH_LABELS] + [("tb-tiny", "Tuberculosis")])
    for _m, _lab, score, threshold, mark in rows:
        assert 0.0 <= score <= 1.0 and threshold == pytest.approx(0.5)
        assert mark == ("● POSITIVE" if score >= threshold else "○ negative")
    # grouped by model, sorted by score inside each group
    nih = [r[2] for r in rows if r[0] == "nih-tiny"]
    assert nih == sorted(nih, reverse=True)
    group_titles = [panel.tree.topLevelItem(i).text(0) for i in range(panel.tree.topLevelItemCount())]
    assert group_titles[0].startswith("nih-tiny 0.0.1") and "UNTRAINED" in group_titles[1]
    # the untrained model is called out plainly
    assert panel.banner.isVisible() and "UNTRAINED" in panel.banner.text() and "tb-tiny" in panel.banner.text()
    # the session holds the same findings; the heatmap the reader chose to show came at the image's size
    assert {(f.model, f.label) for f in list(win.analysis.state.findings)} == {(r[0], r[1]) for r in rows}
    heat = win.session.heatmap
    assert heat is not None and heat.data.shape == win.session.record.shape
    assert heat.label == "Effusion", "the heatmap is the finding the reader chose to show"
    assert win.canvas.heatmap_item is not None and win.canvas.colorbar.isVisible()
    assert f"Heatmap: {heat.label} (gradcam)" in win.canvas.display_lines(), "the image says what the map shows"
    assert re.match(r"[+-]\d\.\d\d ", win.heatmap_panel.faithfulness_label.text())
    assert win.analysis_label.text() == "" and win.last_error is None
    # progress named the models while they loaded and ran
    assert any("Loading model nih-tiny" in line for line in win.progress_lines)
    assert any(line.startswith("Analysing with") and "tb-tiny" in line for line in win.progress_lines)


def test_qc_flags_are_shown_above_the_findings(qtbot, make_window, tiny_models, nih_png) -> None:
    _torch_threads()
    from dataclasses import replace

    from cxr_viewer.core.io import read_image

    win = make_window(models_dir=tiny_models)
    win.analysis.backend = "torch"
    rec = read_image(nih_png)
    lateral = replace(rec, metadata={**rec.metadata, "view_position": "LL", "modality": "DX"})
    win.session.set_record(lateral)
    win.analysis.analyze(lateral)
    assert win.wait_idle(WAIT_MS / 1000)
    assert [q.code for q in win.analysis.state.qc] == ["lateral_view"]
    qc = win.findings_panel.qc_label
    assert qc.isVisible() and "Lateral view (LL)" in qc.text() and "WARNING" in qc.text()
    layout = win.findings_panel.layout()
    assert layout.indexOf(qc) < layout.indexOf(win.findings_panel.tree), "flags sit above the findings"
    assert win.findings_panel.rows(), "scores are still listed, with the flag beside them"


def test_threshold_edit_flips_mark_persists_and_resets(qtbot, make_window, tiny_models, siim_dicom, settings_path) -> None:
    _torch_threads()
    win = analysed_window(qtbot, make_window, tiny_models, siim_dicom)
    panel = win.findings_panel
    model, label, score, threshold, mark = next(r for r in panel.rows() if r[0] == "nih-tiny")
    new = round(min(score + 0.05, 1.0), 3) if score >= threshold else round(max(score - 0.05, 0.0), 3)
    # double-click editing path: the spin box delegate commits on Enter
    item = panel.item_for(model, label)
    panel.tree.setCurrentItem(item, 2)
    panel.tree.editItem(item, 2)
    editor = panel.tree.findChild(QDoubleSpinBox)
    assert editor is not None and editor.value() == pytest.approx(threshold)
    editor.setValue(new)
    QTest.keyClick(editor, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: next(r for r in panel.rows() if r[1] == label)[3] == pytest.approx(new), timeout=5000)
    row = next(r for r in panel.rows() if r[1] == label)
    assert row[4] != mark and row[4] == ("● POSITIVE" if score >= new else "○ negative")
    f = next(f for f in list(win.analysis.state.findings) if f.label == label)
    assert f.threshold == pytest.approx(new) and f.threshold_method == "user" and f.score == pytest.approx(score)
    sha = win.analysis.state.model_sha(model)
    from cxr_viewer.qt.analysis import threshold_key

    key = threshold_key(model, sha, label)
    assert float(QSettings(str(settings_path), QSettings.Format.IniFormat).value(key)) == pytest.approx(new)
    # a new window with the same settings judges the finding against the site's threshold
    win.close()
    win2 = analysed_window(qtbot, make_window, tiny_models, siim_dicom)
    row2 = next(r for r in win2.findings_panel.rows() if r[1] == label)
    assert row2[3] == pytest.approx(new) and row2[4] == row[4]
    # reset restores the model's threshold and forgets the override
    win2.findings_panel.tree.setCurrentItem(win2.findings_panel.item_for(model, label))
    win2.findings_panel.reset_button.click()
    row3 = next(r for r in win2.findings_panel.rows() if r[1] == label)
    assert row3[3] == pytest.approx(threshold) and row3[4] == mark
    assert QSettings(str(settings_path), QSettings.Format.IniFormat).value(key) is None


def test_clicking_a_finding_and_method_sets_the_heatmap(qtbot, make_window, tiny_models, nih_png) -> None:
    _torch_threads()
    win = analysed_window(qtbot, make_window, tiny_models, nih_png)
    panel = win.findings_panel
    first = win.session.heatmap
    other = next(lab for lab in NIH_LABELS if lab != first.label)
    panel.tree.setCurrentItem(panel.item_for("nih-tiny", other))  # what a click does
    qtbot.waitUntil(lambda: win.session.heatmap is not None and win.session.heatmap.label == other
                    and win.session.heatmap.faithfulness is not None and not win.session.busy, timeout=WAIT_MS)
    assert panel.item_for("nih-tiny", other).text(0).startswith("◉ ")
    win.heatmap_panel.choose(other, "nih-tiny", method="gradcam++")
    qtbot.waitUntil(lambda: win.session.heatmap.method == "gradcam++" and not win.session.busy, timeout=WAIT_MS)
    heat = win.session.heatmap
    assert heat.data.shape == win.session.record.shape and heat.label == other
    assert heat.faithfulness is not None and -1.0 <= heat.faithfulness <= 1.0
    assert win.heatmap_panel.faithfulness_label.text().startswith(f"{heat.faithfulness:+.2f}")
    assert win.heatmap_panel.method_combo.currentText() == "GradCAM++"
    assert not np.allclose(heat.data, first.data), "another finding and method give another map"


def test_switching_image_drops_stale_results(qtbot, make_window, tiny_models, siim_dicom, nih_png) -> None:
    _torch_threads()
    from cxr_viewer.core.io import read_image

    win = make_window(models_dir=tiny_models)
    win.analysis.set_shown_cam("Effusion", None)  # the reader asked for heatmaps
    win.analysis.backend = "torch"
    a, b = read_image(siim_dicom), read_image(nih_png)
    landed: list[tuple[object, object]] = []
    win.workspace.analysis.state_changed.connect(lambda st: landed.append((win.session.record, st.findings)))
    win.session.events.heatmap_changed.connect(lambda h: landed.append((win.session.record, h)))
    win.session.set_record(a)
    win.analysis.analyze(a)
    assert win.analysis.runner.wait(WAIT_MS)  # A's result is computed and waits in the event queue...
    win.session.set_record(b)  # ...but the user has moved on to B
    assert win.wait_idle(WAIT_MS / 1000)
    assert list(win.analysis.state.findings) == [] and win.session.heatmap is None
    assert win.analysis.state.status == "idle"
    # a request still running when the image changes is cancelled and dropped too
    win.session.set_record(a)
    win.analysis.analyze(a)
    win.session.set_record(b)
    assert win.wait_idle(WAIT_MS / 1000)
    assert list(win.analysis.state.findings) == [] and win.session.heatmap is None
    assert [v for rec, v in landed if rec is b and v] == [], "nothing computed for A reached B"
    win.analysis.analyze(b)
    assert win.wait_idle(WAIT_MS / 1000)
    assert list(win.analysis.state.findings) and win.session.heatmap is None  # B is another patient: A's choice is not carried
    win.analysis.request_cam("Effusion")
    assert win.wait_idle(WAIT_MS / 1000)
    assert win.session.heatmap.data.shape == b.shape
    assert [v for rec, v in landed if rec is b and v], "B's own results do land"


def test_no_models_banner(qtbot, make_window, tmp_path, nih_png) -> None:
    empty = tmp_path / "none"
    empty.mkdir()
    win = analysed_window(qtbot, make_window, empty, nih_png)
    panel = win.findings_panel
    assert panel.banner.isVisible() and panel.banner.text().startswith("No models installed")
    assert panel.rows() == [] and list(win.analysis.state.findings) == [] and win.session.heatmap is None


def test_device_preference_persists_and_errors_reach_the_ui(qtbot, make_window, tiny_models, nih_png,
                                                           settings_path) -> None:
    _torch_threads()
    import torch

    win = analysed_window(qtbot, make_window, tiny_models, nih_png)
    win.set_device("cpu")
    assert QSettings(str(settings_path), QSettings.Format.IniFormat).value("analysis/device") == "cpu"
    assert win.wait_idle(WAIT_MS / 1000) and win.analysis.state.device == "cpu"
    if not torch.cuda.is_available():
        win.set_device("cuda")
        assert win.wait_idle(WAIT_MS / 1000)
        assert win.analysis.state.status == "error" and "CUDA" in (win.last_error or "")
        assert "CUDA" in win.findings_panel.banner.text()
    win.close()
    win2 = make_window(models_dir=tiny_models)
    assert win2.action_map[f"device_{win2.analysis.device}"].isChecked()


def test_status_bar_shows_window_in_the_files_units(qtbot, window, helpers, rg1_dicom) -> None:
    import pydicom

    helpers.load(qtbot, window, rg1_dicom)
    # RG1 stores WindowCenter 15000 / WindowWidth 30000 (MONOCHROME1, modality values 874..26479 in the full film)
    stored = pydicom.dcmread(rg1_dicom).pixel_array
    assert window.session.record.metadata["value_range"] == (float(stored.min()), float(stored.max()))
    assert window.window_label.text() == "C 15000  W 30000"
    assert any(line.startswith("C 15000  W 30000") for line in window.canvas.display_lines())


def test_screenshot_waits_for_findings_and_heatmap(tmp_path: Path, tiny_models: Path, siim_dicom: Path) -> None:
    from PIL import Image

    out = tmp_path / "shot.png"
    env = {**os.environ, "CXR_VIEWER_MODELS": str(tmp_path / "user"), "CXR_VIEWER_CACHE": str(tmp_path / "cache"),
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "CXR_VIEWER_THREADS": "2"}
    env.pop("QT_QPA_PLATFORM", None)
    proc = subprocess.run([sys.executable, "-m", "cxr_viewer.cli", "--screenshot", str(out), "--heatmap", "Cardiomegaly",
                           "--models", str(tiny_models), str(siim_dicom)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(np.int32)
    canvas = rgb[200:700, 350:850]
    saturation = canvas.max(axis=2) - canvas.min(axis=2)
    assert np.mean(saturation > 60) > 0.2, "the heatmap is drawn over the radiograph"
    panel = rgb[120:500, 1050:]
    assert np.any((panel[..., 0] > 200) & (panel[..., 1] < 160) & (panel[..., 2] < 140)) or np.any(
        (panel[..., 1] > 150) & (panel[..., 0] < 160)), "findings with coloured marks are listed"


def test_sync_switch_runs_requests_inline(qtbot, make_window, tiny_models, nih_png) -> None:
    _torch_threads()
    from cxr_viewer.core.io import read_image

    win = make_window(models_dir=tiny_models)
    win.analysis.backend = "torch"
    win.analysis.set_shown_cam("Effusion", None)  # the reader's "Show" choice from an earlier image
    win.analysis.set_sync(True)
    rec = read_image(nih_png)
    win.session.set_record(rec)
    win.analysis.analyze(rec)  # returns with everything done: no event loop, no worker
    assert win.analysis.state.status == "done" and len(list(win.analysis.state.findings)) == len(NIH_LABELS) + 1
    assert win.session.heatmap is not None and win.session.heatmap.faithfulness is not None
    assert not win.session.busy and win.analysis.runner.pending == 0
