"""The one use case: a film analysed with a workspace is judged as the workspace judges it, and its record written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_viewer.core.analysis import MemorySettings
from cxr_viewer.core.errors import NoSegmentationModelError, UnknownLabelError
from cxr_viewer.core.inference.engine import InferenceEngine
from cxr_viewer.core.inference.results import FindingState
from cxr_viewer.core.io import read_image
from cxr_viewer.core.models.testing import make_untrained_bundle
from cxr_viewer.core.usecase import CamRequest, analyse, export_record, scored_files
from cxr_viewer.core.workspace import Workspace

SAMPLES = Path(__file__).resolve().parents[2] / "resources" / "samples"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> InferenceEngine:
    root = tmp_path_factory.mktemp("usecase_models")
    make_untrained_bundle(root / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64), seed=11)
    return InferenceEngine.from_dirs([root], device="cpu", backend="torch")


def test_analyse_judges_with_the_workspace(engine: InferenceEngine) -> None:
    record = read_image(SAMPLES / "nih_chest.png")
    ws = Workspace(MemorySettings())
    plain = analyse(record, ws, engine)
    assert {j.label for j in plain.judged.findings} == {"Effusion", "Nodule"}
    assert all(j.threshold_source == "model" for j in plain.judged.findings)
    assert plain.heatmap is None and plain.masks == () and plain.timing_ms == {}

    effusion = plain.judged.get("Effusion")
    sha = next(m["sha256"] for m in plain.judged.models if m["name"] == "nih")
    ws.set_threshold("nih", sha, "Effusion", 0.0)  # every score is at or above it
    low = analyse(record, ws, engine, result=plain.judged.result).judged.get("Effusion")
    assert low.threshold_source == "user" and low.threshold == 0.0 and low.score == pytest.approx(effusion.score)
    assert low.state in (FindingState.POSITIVE, FindingState.ABOVE_NOT_VALIDATED)
    ws.set_threshold("nih", sha, "Effusion", 1.0)  # no score is above it
    high = analyse(record, ws, engine).judged.get("Effusion")
    assert high.threshold == 1.0 and high.state in (FindingState.NEGATIVE, FindingState.NOT_VALIDATED)
    # the other finding keeps the model's threshold; the workspace's own judging agrees with the use case
    again = ws.judge(engine.analyze(record))
    assert again.states() == analyse(record, ws, engine).judged.states()
    assert again.get("Nodule").threshold_source == "model"


def test_what_cannot_be_made_is_recorded_not_raised(engine: InferenceEngine, tmp_path: Path) -> None:
    record = read_image(SAMPLES / "nih_chest.png")
    ws = Workspace(MemorySettings())
    a = analyse(record, ws, engine, cam=CamRequest("no such finding"), report="Small left effusion.")
    assert isinstance(a.cam_error, UnknownLabelError) and a.heatmap is None and "cam" in a.timing_ms
    assert isinstance(a.segmentation_error, NoSegmentationModelError) and a.masks == ()
    assert len(a.judged.findings) == 2  # the findings never depend on the extras

    ok = analyse(record, ws, engine, cam=CamRequest("effus", method="gradcam", faithfulness=False))
    assert ok.cam_error is None and ok.heatmap.label == "Effusion" and ok.heatmap.values.shape == record.shape

    out = export_record(ok, SAMPLES / "nih_chest.png", pdf_path=tmp_path / "r.pdf", dicom_dir=tmp_path / "dcm",
                        anonymised_dir=tmp_path / "anon")
    assert out.outputs["report_pdf"] == str(tmp_path / "r.pdf") and (tmp_path / "r.pdf").read_bytes()[:5] == b"%PDF-"
    assert "error" in out.outputs["dicom"] and "error" in out.outputs["anonymised"]  # a PNG has no DICOM header
    assert out.done is False and not (tmp_path / "dcm").exists()


def test_scored_files_keeps_input_order_and_errors(engine: InferenceEngine, tmp_path: Path) -> None:
    files = [str(SAMPLES / "nih_chest.png"), str(tmp_path / "missing.png"), str(SAMPLES / "siim_cr_chest.dcm"),
             str(SAMPLES / "nih_chest.png")]
    rows = list(scored_files(engine, files, batch=2))
    assert [r[0] for r in rows] == files
    (_, (bad, _ms), none) = rows[1]
    assert isinstance(bad, Exception) and none is None
    # the first pair holds one readable film (scored alone later); the second pair is scored as a batch
    assert [r[2] is not None for r in rows] == [False, False, True, True]
    ws = Workspace(MemorySettings())
    for path, (record, _ms), result in rows[2:]:
        batched = analyse(record, ws, engine, result=result).judged
        alone = analyse(read_image(Path(path)), ws, engine).judged
        assert [(j.label, j.state) for j in batched.findings] == [(j.label, j.state) for j in alone.findings]
        assert [j.score for j in batched.findings] == pytest.approx([j.score for j in alone.findings], abs=1e-4)
