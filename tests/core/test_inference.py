"""InferenceEngine on real images with tiny random-weight bundles built by save_bundle (no mocks)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_viewer.core.errors import AnalysisCancelledError, InferenceError
from cxr_viewer.core.inference.engine import InferenceEngine, select_device
from cxr_viewer.core.judging import judge
from cxr_viewer.core.inference.qc import check_quality
from cxr_viewer.core.inference.results import CancelToken
from cxr_viewer.core.io import read_image
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.models.bundle import load_bundle
from cxr_viewer.core.models.testing import make_untrained_bundle
from cxr_viewer.core.models.preprocess import preprocess

torch.set_num_threads(2)

SIIM = "siim_pneumothorax_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_untrained_bundle(
        root / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64), thresholds={"Effusion": 0.2}, seed=1
    )
    make_untrained_bundle(root / "tb", name="tb", labels=["Tuberculosis"], size=(64, 80), backbone="mobilenetv3_small_100", seed=2)
    return root


@pytest.fixture()
def engine(bundle_dir: Path) -> InferenceEngine:
    return InferenceEngine.from_dirs([bundle_dir], device="cpu", backend="torch")


@pytest.fixture(scope="module")
def dicom_record(dicom_dir: Path) -> ImageRecord:
    return read_image(dicom_dir / SIIM)


def test_analyze_real_dicom_with_two_bundles(engine: InferenceEngine, dicom_record: ImageRecord, bundle_dir: Path) -> None:
    result = engine.analyze(dicom_record)
    assert [(f.model, f.label) for f in result.findings] == [("nih", "Effusion"), ("nih", "Nodule"), ("tb", "Tuberculosis")]
    eff = result.finding("Effusion")
    assert eff is not None and eff.threshold == pytest.approx(0.2) and eff.threshold_method == "fixed"
    for f in result.findings:
        assert 0.0 <= f.score <= 1.0 and f.positive == (f.score >= f.threshold)
    # the scores are exactly sigmoid(model(preprocess(record))) through the shared path
    b = load_bundle(bundle_dir / "tb")
    with torch.no_grad():
        ref = torch.sigmoid(b.model(torch.from_numpy(preprocess(dicom_record, b.preprocessing)[None])))[0, 0].item()
    assert result.finding("Tuberculosis").score == pytest.approx(ref, abs=1e-6)
    assert result.qc == ()  # adult PA CR chest
    assert {m["name"] for m in result.models} == {"nih", "tb"}
    assert all(m["trained"] is False for m in result.models)
    assert any("UNTRAINED" in w for w in result.warnings)
    assert {"qc", "preprocess", "inference:nih", "inference:tb", "total"} <= set(result.timing_ms)
    d = result.to_dict()
    assert d["findings"][0]["label"] == "Effusion" and "positive" in d["findings"][0]


def test_cache_hit_on_same_content_and_threshold_override(engine: InferenceEngine, dicom_record: ImageRecord) -> None:
    first = engine.analyze(dicom_record)
    assert not first.cached
    same_pixels = ImageRecord(pixels=dicom_record.pixels.copy(), source=None, format="array",
                              default_window=dicom_record.default_window, metadata=dict(dicom_record.metadata))
    again = engine.analyze(same_pixels)
    assert again.cached and again.findings == first.findings
    score = first.finding("Nodule").score
    changed = engine.analyze(dicom_record)
    assert changed.cached  # the model outputs are reused; the reader's threshold judges them anew
    nod = judge(changed, user_thresholds={("nih", "Nodule"): min(1.0, score + 0.1)}).result.finding("Nodule")
    assert nod.score == pytest.approx(score) and nod.threshold_method == "user" and not nod.positive
    assert engine.analyze(dicom_record).finding("Nodule").threshold == pytest.approx(0.5)  # the engine keeps none


def test_same_pixels_other_header_never_share_a_result(engine: InferenceEngine, dicom_record: ImageRecord) -> None:
    """Only what the network saw is cached: QC flags come from each file's own header, the window is in the key."""
    px = dicom_record.model_pixels()
    adult = _rec(px)
    child_ct = _rec(px.copy(), modality="CT", patient_age_years=9.0, view_position="LL", body_part="KNEE", frames=3)
    first = engine.analyze(adult)
    assert first.qc == () and not first.cached
    second = engine.analyze(child_ct)
    assert second.cached  # same pixels, same network input: the outputs are reused...
    assert {q.code for q in second.qc} == {"not_radiograph", "paediatric", "lateral_view", "not_chest", "multi_frame"}
    assert not second.reliable and first.reliable  # ...but nothing of the first file's judgement is
    assert engine.analyze(adult).qc == ()
    # a default window changes what the network sees: another input, other scores
    windowed = ImageRecord(pixels=px.copy(), source=None, format="dicom", default_window=(0.3, 0.2),
                           metadata=dict(adult.metadata))
    third = engine.analyze(windowed)
    assert not third.cached
    assert [f.score for f in third.findings] != pytest.approx([f.score for f in first.findings], abs=1e-6)
    # a user threshold applies to a cached result at once, and is undone at once
    eff = first.finding("Effusion")
    again = engine.analyze(adult)
    flipped = judge(again, user_thresholds={("nih", "Effusion"): 0.0 if not eff.positive else 1.0}).result
    assert flipped.finding("Effusion").positive != eff.positive
    assert flipped.finding("Effusion").threshold_method == "user"
    assert judge(again).result.finding("Effusion").positive == eff.positive


def test_other_pixels_are_not_a_cache_hit(engine: InferenceEngine, dicom_record: ImageRecord) -> None:
    engine.analyze(dicom_record)
    flipped = ImageRecord(pixels=np.ascontiguousarray(dicom_record.pixels[:, ::-1]), source=None, format="array")
    assert not engine.analyze(flipped).cached


def _rec(pixels: np.ndarray, **meta) -> ImageRecord:
    base = {"modality": "CR", "view_position": "PA", "body_part": "CHEST", "patient_age_years": 50.0, "frames": 1}
    base.update(meta)
    return ImageRecord(pixels=pixels.astype(np.float32), source=None, format="dicom", metadata=base)


@pytest.mark.parametrize(
    "meta, code, severity",
    [
        ({"modality": "CT"}, "not_radiograph", "error"),
        ({"modality": "SC"}, "secondary_capture", "warning"),
        ({"view_position": "LL"}, "lateral_view", "warning"),
        ({"view_position": "AP"}, "ap_view", "info"),
        ({"patient_age_years": 9.0}, "paediatric", "warning"),
        ({"body_part": "KNEE"}, "not_chest", "error"),
        ({"frames": 3}, "multi_frame", "info"),
    ],
)
def test_qc_flags_from_metadata(engine, dicom_record: ImageRecord, meta: dict, code: str, severity: str) -> None:
    rec = _rec(dicom_record.model_pixels(), **meta)
    result = engine.analyze(rec)
    flags = {q.code: q for q in result.qc}
    assert code in flags and flags[code].severity == severity and flags[code].message
    assert len(result.findings) == 3  # still scored, never silently: flags travel with the scores
    assert result.reliable == (severity != "error")


def test_qc_flags_from_pixels(dicom_record: ImageRecord, data_dir: Path) -> None:
    px = dicom_record.model_pixels()
    assert check_quality(_rec(px)) == []
    assert "possibly_inverted" in {q.code for q in check_quality(_rec(1.0 - px))}
    assert "low_resolution" in {q.code for q in check_quality(_rec(px[::8, ::8].copy()))}
    assert "blank_image" in {q.code for q in check_quality(_rec(np.full((600, 600), 0.4)))}
    # a real NIH frontal PNG/JPEG raises no inversion flag
    nih = sorted((data_dir / "nih14" / "images").iterdir())[:5]
    for f in nih:
        assert "possibly_inverted" not in {q.code for q in check_quality(read_image(f))}


def test_cancel_token_stops_analysis(engine: InferenceEngine, dicom_record: ImageRecord) -> None:
    token = CancelToken()
    token.cancel()
    with pytest.raises(AnalysisCancelledError):
        engine.analyze(dicom_record, cancel=token)


def test_concurrent_analyses_agree(bundle_dir: Path, dicom_record: ImageRecord) -> None:
    eng = InferenceEngine.from_dirs([bundle_dir], device="cpu", backend="torch", cache_size=0)
    ref = eng.analyze(dicom_record).findings
    out: list = []
    errors: list = []

    def work() -> None:
        try:
            out.append(eng.analyze(dicom_record).findings)
            eng.cam(dicom_record, "Effusion", "gradcam", faithfulness=False)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for fs in out:
        assert [f.score for f in fs] == pytest.approx([f.score for f in ref], abs=1e-6)


def test_onnx_backend_matches_torch(bundle_dir: Path, dicom_record: ImageRecord, tmp_path: Path) -> None:
    torch_engine = InferenceEngine.from_dirs([bundle_dir], device="cpu", backend="torch")
    onnx_engine = InferenceEngine.from_dirs([bundle_dir], device="cpu", backend="onnx")
    a = torch_engine.analyze(dicom_record)
    b = onnx_engine.analyze(dicom_record)
    assert b.backend == {"nih": "onnx", "tb": "onnx"}
    assert [f.score for f in b.findings] == pytest.approx([f.score for f in a.findings], abs=1e-4)
    # what ran is reported: the regenerated graph's own hash on ONNX Runtime, the weights' on torch
    for m_onnx, m_torch in zip(b.models, a.models, strict=True):
        assert m_onnx["executed"]["backend"] == "onnx" and m_onnx["executed"]["source"] == "regenerated"
        assert m_onnx["executed"]["sha256"] != m_onnx["sha256"]
        assert m_torch["executed"] == {"backend": "torch", "sha256": m_torch["sha256"], "source": "weights"}
    assert not list(tmp_path.iterdir())  # nothing written to disk to be trusted later


def test_no_models_still_checks_the_image(dicom_record: ImageRecord, tmp_path: Path) -> None:
    eng = InferenceEngine.from_dirs([tmp_path], device="cpu")
    result = eng.analyze(_rec(dicom_record.model_pixels(), view_position="LL"))
    assert result.findings == ()
    assert any("No models found" in w for w in result.warnings)
    assert [q.code for q in result.qc] == ["lateral_view"]


def test_broken_bundle_is_skipped_with_reason(bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(bundle_dir / "nih", tmp_path / "nih")
    (tmp_path / "nih" / "model.safetensors").write_bytes(b"\x00" * 64)
    eng = InferenceEngine.from_dirs([tmp_path], device="cpu", backend="torch")
    assert eng.bundles == []
    assert len(eng.load_errors) == 1 and "damaged" in eng.load_errors[0][1]


def test_select_device() -> None:
    assert select_device("cpu").type == "cpu"
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        with pytest.raises(InferenceError, match="GPU"):
            select_device("cuda")
