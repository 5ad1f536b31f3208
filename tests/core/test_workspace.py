"""The Qt-free Workspace: one place for the enabled models, the site profile, the thresholds and the corrections."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_viewer.core.analysis import MemorySettings, UserThresholds
from cxr_viewer.core.corrections import CorrectionStore
from cxr_viewer.core.inference.results import AnalysisResult, Finding, FindingState
from cxr_viewer.core.worklist import ResultStore, Worklist
from cxr_viewer.core.workspace import Workspace


def test_workspace_persists_and_announces_every_change(tmp_path: Path) -> None:
    settings = MemorySettings()
    ws = Workspace(settings)
    seen: list[tuple] = []
    ws.models_changed.connect(lambda: seen.append(("models",)))
    ws.site_profile_changed.connect(lambda p: seen.append(("profile", p)))
    ws.thresholds_changed.connect(lambda m, lab: seen.append(("threshold", m, lab)))

    ws.set_enabled({"tb": False, "site-tb": True})
    assert ws.disabled_models == {"tb"} and ws.enabled_models == {"site-tb"}
    assert not ws.is_enabled("tb") and ws.is_enabled("site-tb", default=False) and ws.is_enabled("nih")
    ws.set_enabled({"tb": True})
    assert ws.disabled_models == frozenset() and ws.is_enabled("tb")

    ws.set_threshold("nih", "a" * 64, "Effusion", 0.3)
    # persisted where the viewer has always kept it: a new workspace on the same settings reads it back
    assert Workspace(settings).threshold("nih", "a" * 64, "Effusion") == pytest.approx(0.3)
    assert UserThresholds(settings).get("nih", "a" * 64, "Effusion") == pytest.approx(0.3)
    assert ws.threshold("nih", "b" * 64, "Effusion") is None  # other weights start fresh
    with pytest.raises(ValueError):
        ws.set_threshold("nih", "a" * 64, "Effusion", 1.5)

    marker = object()
    ws.set_site_profile(marker)
    assert ws.site_profile is marker
    ws.set_site_profile(None)
    assert seen == [("models",), ("models",), ("threshold", "nih", "Effusion"), ("profile", marker), ("profile", None)]

    settings.set_value("corrections/dir", str(tmp_path / "labels"))
    store = Workspace(settings).corrections
    assert isinstance(store, CorrectionStore) and store.folder == tmp_path / "labels"
    assert ws.corrections is ws.corrections  # one store per workspace


def test_worklist_judges_with_the_workspace_thresholds(tmp_path: Path) -> None:
    """The worklist's judging reads the reader's thresholds from the same source the findings panel does."""
    settings = MemorySettings()
    ws = Workspace(settings)
    wl = Worklist(ResultStore(tmp_path / "wl.sqlite"), model_dirs=[tmp_path / "none"],
                  user_thresholds=ws.thresholds.get)
    sha = "c" * 64
    f = Finding("Effusion", 0.40, 0.5, "nih", "1", "fixed", True, validated=True)
    result = AnalysisResult("h", (f,), (), ({"name": "nih", "version": "1", "sha256": sha},))
    assert wl.judge(result).get("Effusion").state is FindingState.NEGATIVE
    ws.set_threshold("nih", sha, "Effusion", 0.35)
    judged = wl.judge(result).get("Effusion")
    assert judged.state is FindingState.POSITIVE and judged.threshold_source == "user"
    assert judged.threshold == pytest.approx(0.35)


def test_thresholds_from_the_command_line_reach_the_judged_result() -> None:
    """``--threshold [MODEL:]LABEL=VALUE``: set on the workspace per weights, judged like the viewer's own."""
    from cxr_viewer.core.workspace import parse_threshold

    assert parse_threshold("Effusion=0.3") == (None, "Effusion", 0.3)
    assert parse_threshold("chest-resnet18:Pleural_Thickening=0.05") == ("chest-resnet18", "Pleural_Thickening", 0.05)
    for bad in ("Effusion", "Effusion=high", "Effusion=1.5", "=0.3", "Effusion=-0.1"):
        with pytest.raises(ValueError, match=r"\[MODEL:\]LABEL=VALUE"):
            parse_threshold(bad)

    ws = Workspace(MemorySettings())
    models = [("nih", "A" * 64, ["Effusion", "Pleural_Thickening"]), ("tb", "b" * 64, ["Tuberculosis", "Effusion"])]
    ws.set_thresholds(["pleural thickening=0.2", "nih:effusion=0.4"], models)  # any case, space or _
    assert ws.threshold("nih", "a" * 64, "Pleural_Thickening") == pytest.approx(0.2)
    assert ws.threshold("nih", "a" * 64, "Effusion") == pytest.approx(0.4)
    assert ws.threshold("tb", "b" * 64, "Effusion") is None  # MODEL: names one model only
    with pytest.raises(ValueError, match="no model tb has a finding named 'Nodule'; the findings are: Effusion, Tuberculosis"):
        ws.set_thresholds(["tb:Nodule=0.3"], models)

    result = AnalysisResult("h", (Finding("Effusion", 0.45, 0.5, "nih", threshold_method="youden", validated=True),
                                  Finding("Effusion", 0.45, 0.5, "tb", validated=True)), (),
                            models=({"name": "nih", "sha256": "A" * 64}, {"name": "tb", "sha256": "b" * 64}))
    judged = ws.judge(result)
    assert judged.get("Effusion", "nih").state is FindingState.POSITIVE
    assert judged.get("Effusion", "nih").threshold_source == "user"
    assert judged.get("Effusion", "tb").state is FindingState.NEGATIVE
    assert judged.get("Effusion", "tb").threshold_source == "model"


def test_the_workspace_holds_the_film_and_its_analysis_once_and_judges_it_again(tmp_path: Path) -> None:
    """The session is the workspace's; a new threshold judges the kept outcome again; a new film clears it."""
    import numpy as np

    from cxr_viewer.core.analysis import AnalysisOutcome, BundleSummary
    from cxr_viewer.core.models.ref import ModelRef
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.session import Session

    session = Session()
    ws = Workspace(MemorySettings(), session=session)
    assert ws.session is session and Workspace(MemorySettings()).session is not session
    record = ImageRecord.from_array(np.eye(16, dtype=np.float32), source=tmp_path / "a.png")
    session.set_record(record)
    sha = "d" * 64
    f = Finding("Effusion", 0.40, 0.5, "nih", "1", "fixed", True, validated=True)
    result = AnalysisResult("h", (f,), (), ({"name": "nih", "version": "1", "sha256": sha, "trained": True},))
    bundle = BundleSummary(ModelRef("nih", "1", sha, "multilabel", True), tmp_path / "nih", loaded=True)
    states: list[object] = []
    ws.analysis.state_changed.connect(states.append)
    ws.analysis.set_outcome(AnalysisOutcome(1, record, result, (bundle,), "cpu"), ws.judge(result))
    first = ws.analysis.state
    assert first.status == "done" and first.judged.get("Effusion").state is FindingState.NEGATIVE
    assert ws.analysis.model_threshold("nih", "Effusion") == pytest.approx(0.5)

    ws.set_threshold("nih", sha, "Effusion", 0.35)  # judged again from the kept outcome, nothing scored
    again = ws.analysis.state
    assert again is not first and again.judged.get("Effusion").state is FindingState.POSITIVE
    assert [x.threshold_method for x in again.findings] == ["user"] and again.findings[0].score == pytest.approx(0.40)
    assert ws.analysis.outcome.result is result

    session.set_record(ImageRecord.from_array(np.eye(8, dtype=np.float32), source=tmp_path / "b.png"))
    assert ws.analysis.outcome is None and ws.analysis.state.status == "idle" and ws.analysis.state.findings == ()
    ws.set_threshold("nih", sha, "Effusion", None)  # nothing kept: nothing to judge
    assert ws.analysis.state.status == "idle" and len(states) == 3
