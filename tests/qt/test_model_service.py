"""One model service per window: the viewer, the worklist, current | prior and the site wizard share one engine.

Real tiny bundles (tests/qt/bundles.py), real films, a real SQLite result store; engine
constructions are counted on ``InferenceEngine.__init__`` itself, so an engine built anywhere
in the process counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.qt.bundles import tiny_models  # noqa: F401  (fixture)
from tests.qt.test_reading_room import _study_pair
from tests.qt.test_worklist_panel import _png

SLOW_MS = 600_000  # the first analysis imports torch and loads the models: minutes on a busy 2-core machine


@pytest.fixture
def engines_built(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every InferenceEngine constructed from now on (by any feature, on any thread)."""
    from cxr_viewer.core.inference.engine import InferenceEngine

    built: list[object] = []
    real = InferenceEngine.__init__

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN202
        built.append(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(InferenceEngine, "__init__", spy)
    return built


@pytest.fixture
def studies(tmp_path: Path, siim_dicom: Path, dicom_dir: Path) -> Path:
    """A current / prior DICOM pair of one patient and three PNG films."""
    d = tmp_path / "studies"
    _study_pair(d, siim_dicom, dicom_dir)
    for i in range(3):
        _png(d / f"film_{i}.png", seed=i)
    return d


def _wait_listed(qtbot, panel, n: int) -> None:
    qtbot.waitUntil(lambda: panel.model.rowCount() >= n and not panel.controller.running, timeout=SLOW_MS)


def _count_analyze(monkeypatch: pytest.MonkeyPatch, engine) -> list[str]:  # noqa: ANN001
    calls: list[str] = []
    real = engine.analyze

    def analyze(record, **kwargs):  # noqa: ANN001, ANN202
        calls.append(Path(str(record.source)).name)
        return real(record, **kwargs)

    monkeypatch.setattr(engine, "analyze", analyze)
    return calls


def test_one_engine_for_viewer_worklist_prior_and_wizard(qtbot, make_window, tiny_models, studies: Path,  # noqa: F811
                                                         engines_built, monkeypatch, tmp_path: Path) -> None:
    win = make_window(models_dir=tiny_models)
    svc = win.models
    assert win.analysis.models is svc and win.reading.compare.models is svc and win.site_calibration.models is svc
    assert win.worklist_panel.controller.worklist.service is svc

    # the viewer scores the current film
    win.open_file(studies / "current.dcm")
    qtbot.waitUntil(lambda: win.session.record is not None and win.analysis.state.status == "done", timeout=SLOW_MS)
    assert len(engines_built) == 1 and svc.pool.engine is engines_built[0]

    # the worklist scores the folder on the same engine
    panel = win.worklist_panel
    panel.open_folder(studies)
    _wait_listed(qtbot, panel, 5)
    assert len(engines_built) == 1

    # opening a listed study shows the stored result: the engine is not asked again
    calls = _count_analyze(monkeypatch, svc.pool.engine)
    row = next(r for r in range(panel.model.rowCount()) if panel.model.entry_at(r).path.name == "film_1.png")
    entry = panel.model.entry_at(row)
    win.open_file(entry.path)
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == entry.path
                    and win.analysis.state.status == "done", timeout=SLOW_MS)
    assert calls == []
    shown = {(f.model, f.label): f.score for f in win.analysis.state.findings}
    assert shown == pytest.approx({(f.model, f.label): f.score for f in entry.findings})
    assert win.analysis.state.judged.result.cached

    # current | prior: the prior is scored on the same engine, judged as the current film
    win.open_file(studies / "current.dcm")
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == studies / "current.dcm"
                    and win.analysis.state.status == "done", timeout=SLOW_MS)
    compare = win.reading.compare
    assert compare.open(studies / "prior.dcm")
    qtbot.waitUntil(lambda: bool(compare.deltas), timeout=SLOW_MS)
    assert len(engines_built) == 1
    # both films judged by one rule: a threshold the reader sets reaches the prior's findings too
    f = win.analysis.state.findings[0]
    win.analysis.set_threshold(f.model, f.label, 0.37)
    prior = next(p for p in compare.prior_findings if (p.model, p.label) == (f.model, f.label))
    assert prior.threshold == pytest.approx(0.37) and prior.threshold_method == "user"
    win.analysis.set_threshold(f.model, f.label, None)

    # the site wizard (Tools › Site Calibration…) scores labelled films with one of the bundles, on the same engine
    labels = tmp_path / "site_labels.csv"
    labels.write_text("file,Effusion,patient_id\n" + "".join(f"film_{i}.png,{i % 2},p{i}\n" for i in range(3)))
    win.action_map["site_calibration"].trigger()
    dlg = win.site_calibration.dialog
    assert dlg.models is svc
    dlg.model_box.setCurrentIndex(dlg.model_box.findData(str(tiny_models / "nih")))
    dlg.folder_edit.setText(str(studies))
    dlg.labels_edit.setText(str(labels))
    dlg.score_button.click()
    qtbot.waitUntil(lambda: dlg.data is not None and dlg.data.get("n_images") == 3, timeout=SLOW_MS)
    assert np.isfinite(dlg.data["scores"]).all()
    assert len(engines_built) == 1, f"{len(engines_built)} engines in one window"


def test_one_workspace_carries_the_site_profile_and_corrections_to_every_surface(
        qtbot, make_window, tiny_models, studies: Path, tmp_path: Path) -> None:  # noqa: F811
    """The site profile is set once, on the workspace: the viewer, the worklist and its rows follow it."""
    from cxr_viewer.core.models.bundle import read_manifest
    from tests.core.test_worklist import _site_profile

    win = make_window(models_dir=tiny_models)
    ws = win.workspace
    controller = win.worklist_panel.controller
    assert win.analysis.workspace is ws and controller.workspace is ws and win.site_calibration.workspace is ws
    win.action_map["site_calibration"].trigger()
    assert win.site_calibration.dialog.corrections is controller.corrections is ws.corrections  # one store

    panel = win.worklist_panel
    panel.open_folder(studies)
    _wait_listed(qtbot, panel, 5)
    assert all(panel.model.entry_at(r).site_profile is None for r in range(panel.model.rowCount()))
    m = read_manifest(tiny_models / "nih")
    key = m.ref
    profile = _site_profile(key, "Effusion", tmp_path / "profiles")

    win.site_calibration.set_profile(profile)
    assert ws.site_profile is profile and win.analysis.site_profile is profile and controller.site_profile is profile
    qtbot.waitUntil(lambda: not controller.running and controller.worklist.site_profile is profile
                    and all(panel.model.entry_at(r).site_profile for r in range(panel.model.rowCount())
                            if panel.model.entry_at(r).ok), timeout=SLOW_MS)
    ws.set_site_profile(None)  # from the workspace alone: every surface drops it
    assert win.analysis.site_profile is None and win.site_calibration.profile is None
    qtbot.waitUntil(lambda: not controller.running and controller.worklist.site_profile is None
                    and all(panel.model.entry_at(r).site_profile is None for r in range(panel.model.rowCount())),
                    timeout=SLOW_MS)
