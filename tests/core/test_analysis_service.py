"""The Qt-free analysis service: requests, user thresholds through a settings interface (supersede: test_executor)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_viewer.core.analysis import (
    AnalysisRequest,
    MemorySettings,
    ModelConfig,
    ModelPool,
    UserThresholds,
    run_analysis,
)
from cxr_viewer.core.errors import AnalysisCancelledError
from cxr_viewer.core.inference.results import Finding

REPO = Path(__file__).resolve().parents[2]


def test_user_thresholds_persist_per_weights_and_judge_findings() -> None:
    settings = MemorySettings()
    th = UserThresholds(settings)
    f = Finding("Effusion", 0.4, 0.5, "nih", "1")
    th.set("nih", "a" * 64, "Effusion", 0.3)
    assert UserThresholds(settings).get("nih", "a" * 64, "Effusion") == 0.3  # through the settings, not memory
    assert th.get("nih", "b" * 64, "Effusion") is None  # new weights start fresh
    (judged,) = th.judged([f], lambda model: "a" * 64)
    assert judged.positive and judged.threshold_method == "user" and judged.score == f.score
    with pytest.raises(ValueError):
        th.set("nih", "a" * 64, "Effusion", 1.5)
    th.set("nih", "a" * 64, "Effusion", None)
    assert th.judged([f], lambda model: "a" * 64) == (f,) and not settings.data


def test_run_analysis_yields_the_outcome_and_honours_cancel(tmp_path: Path) -> None:
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.testing import make_untrained_bundle

    make_untrained_bundle(tmp_path / "m" / "nih", name="nih", labels=["Effusion"], size=(64, 64))
    pool = ModelPool()
    record = read_image(REPO / "resources" / "samples" / "nih_chest.png")
    req = AnalysisRequest(7, record, ModelConfig((tmp_path / "m",), backend="torch"))
    items = list(run_analysis(pool, req))
    kinds = [k for k, _ in items]
    assert kinds[-1] == "outcome" and "progress" in kinds
    outcome = items[-1][1]
    assert outcome.generation == 7 and [f.label for f in outcome.result.findings] == ["Effusion"]
    assert [s.name for s in outcome.bundles] == ["nih"] and outcome.bundles[0].loaded
    cancelled = AnalysisRequest(8, record, ModelConfig((tmp_path / "m",), backend="torch"))
    cancelled.token.cancel()
    with pytest.raises(AnalysisCancelledError):
        list(run_analysis(pool, cancelled))
