"""Derived findings: an image-level score read off a text_segmentation bundle's masks.

A tiny random text U-Net checks the contract (score = max of the pixel-wise max map,
threshold/positive, note/validated in JSON, cam = the lesion map); the shipped
segmenter is then run on real TBX11K test films.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.errors import BundleError
from cxr_viewer.core.io import read_image
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.judging import judge

LABEL = "Tuberculosis (lesion score)"
PROMPTS = ["tuberculosis in the right lung", "tuberculosis in the left lung"]
NOTE = "Localisation validated on held-out TBX11K; specificity not measured — not a screening result."


def _manifest(derived: object) -> dict:
    return {
        "name": "seg-derived", "version": "0.0.1", "task": "text_segmentation", "trained": True,
        "architecture": {"name": "text_unet_tiny", "kwargs": {"text_dim": 384}},
        "labels": ["region"], "thresholds": {"region": {"value": 0.5, "method": "test"}},
        "preprocessing": {"size": [64, 64], "resize": "letterbox"},
        "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384},
        "derived_findings": derived,
    }  # fmt: skip


def _spec(threshold: float) -> dict:
    return {"label": LABEL, "prompts": PROMPTS, "score": "max",
            "threshold": {"value": threshold, "method": "test", "source": "test"},
            "validated": False, "note": NOTE}  # fmt: skip


def _save(tmp_path: Path, derived: object, name: str = "seg") -> Path:
    import torch

    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    torch.manual_seed(0)
    return save_bundle(create_model("text_unet_tiny", text_dim=384), _manifest(derived), tmp_path / name,
                       dtype="float32")  # fmt: skip


@pytest.fixture(scope="module")
def record() -> ImageRecord:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:90, 0:70]
    pixels = (0.5 + 0.3 * np.sin(x / 7.0) * np.cos(y / 9.0) + 0.05 * rng.standard_normal((90, 70))).clip(0, 1)
    return ImageRecord(pixels=pixels.astype(np.float32), source=None, format="array")


def _engine(bundle_dir: Path):
    import torch

    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.models.bundle import load_bundle

    torch.set_num_threads(1)
    return InferenceEngine([load_bundle(bundle_dir)], device="cpu", backend="torch")


def test_analyze_emits_the_derived_finding(tmp_path: Path, record: ImageRecord) -> None:
    """Score = max of the pixel-wise max of the prompts' masks; threshold, positive and note as declared."""
    from cxr_viewer.core.inference.segment import Segmenter

    engine = _engine(_save(tmp_path, [_spec(0.5)]))
    result = engine.analyze(record)
    f = result.finding(LABEL)
    assert f is not None and f.model == "seg-derived"
    masks = Segmenter(engine.bundle("seg-derived")).segment(record, PROMPTS)
    expected = float(np.maximum(masks[0].prob, masks[1].prob).max())
    assert 0.0 <= f.score <= 1.0 and f.score == pytest.approx(expected, abs=1e-6)
    assert f.threshold == 0.5 and f.above_threshold == (f.score >= 0.5)
    # unvalidated: never a POSITIVE badge, and above its threshold it says so
    assert not f.positive and f.state == ("above_not_validated" if f.above_threshold else "not_validated")
    assert f.note == NOTE and f.validated is False
    d = json.loads(json.dumps(result.to_dict()))["findings"][0]
    assert d["label"] == LABEL and d["validated"] is False and d["note"] == NOTE
    assert d["above_threshold"] == (d["score"] >= d["threshold"]) and d["positive"] is False
    assert [m["name"] for m in result.models] == ["seg-derived"]
    assert engine.analyze(record).cached  # cached like any other finding


def test_threshold_decides_positive_and_user_override(tmp_path: Path, record: ImageRecord) -> None:
    """A threshold above the score is negative, one below is positive; a user threshold overrides the manifest."""
    engine = _engine(_save(tmp_path, [_spec(1.0)]))
    f = engine.analyze(record).finding(LABEL)
    assert f.threshold == 1.0 and not f.above_threshold  # a sigmoid never reaches exactly 1 in float32 here
    g = judge(engine.analyze(record), user_thresholds={("seg-derived", LABEL): 0.0}).result.finding(LABEL)
    assert g.above_threshold and not g.positive and g.threshold_method == "user" and g.score == f.score
    h = g.with_threshold(0.99)
    assert h.note == NOTE and h.validated is False  # the Qt panel's site thresholds keep the note


def test_cam_returns_the_lesion_map(tmp_path: Path, record: ImageRecord) -> None:
    engine = _engine(_save(tmp_path, [_spec(0.5)]))
    heat = engine.cam(record, LABEL)
    assert heat.method == "lesion map" and heat.faithfulness is None
    assert heat.shape == record.shape and heat.values.dtype == np.float32
    assert float(heat.values.max()) == pytest.approx(engine.analyze(record).finding(LABEL).score, abs=1e-6)
    assert engine.faithfulness(record, heat) is heat  # nothing to score; no error


def test_bundle_without_derived_findings_adds_no_finding(tmp_path: Path, record: ImageRecord) -> None:
    engine = _engine(_save(tmp_path, []))
    assert engine.analyze(record).findings == ()


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ([{"label": LABEL, "prompts": [], "threshold": {"value": 0.5}}], r"'derived_findings\[0\]\.prompts'"),
        ([{"label": LABEL, "prompts": PROMPTS, "threshold": {"value": 1.5}}], r"'derived_findings\[0\]\.threshold\.value' is 1\.5"),
        ([{"label": LABEL, "prompts": PROMPTS, "score": "mean", "threshold": {"value": 0.5}}], r"'derived_findings\[0\]\.score' is 'mean'"),
        ([_spec(0.5), {"label": LABEL, "prompts": PROMPTS}], r"'derived_findings\[1\]\.threshold' is missing"),
        ([{**_spec(0.5), "role": "badge"}], r"'derived_findings\[0\]\.role' is 'badge'"),
        ([{**_spec(0.5), "reference": {"quantiles": [0.9, 0.1]}}], r"'derived_findings\[0\]\.reference\.quantiles'"),
        ({"label": LABEL}, r"'derived_findings' must be a list"),
    ],
)
def test_broken_derived_block_is_refused_by_name(tmp_path: Path, bad: object, named: str) -> None:
    """The manifest refuses a broken entry when it is read, naming the bundle folder and the field."""
    from cxr_viewer.core.models.bundle import load_bundle

    bdir = _save(tmp_path, [_spec(0.5)])
    man = json.loads((bdir / "manifest.json").read_text(encoding="utf-8"))
    man["derived_findings"] = bad
    (bdir / "manifest.json").write_text(json.dumps(man), encoding="utf-8")
    with pytest.raises(BundleError, match=named) as err:
        load_bundle(bdir)
    assert "bundle in seg " in str(err.value) and err.value.path is not None
    with pytest.raises(BundleError, match=named):  # nor can the trainer save one
        _save(tmp_path, bad, name="again")


def test_default_segmenter_scores_real_tbx11k_test_films(repo_root: Path, data_dir: Path) -> None:
    """The shipped segmenter on three held-out TBX11K films (all TB-positive): its unvalidated TB score is a
    research overlay -- no finding in the JSON -- whose map and score are still there on request."""
    bundle_dir = repo_root / "resources" / "models" / "report-segmenter-resnet18"
    man = json.loads((bundle_dir / "manifest.json").read_text(encoding="utf-8"))
    (spec,) = man["derived_findings"]
    assert spec["role"] == "research_overlay" and spec["validated"] is False
    assert spec["threshold"]["value"] == man["metrics"]["tuberculosis_lesion_score"]["threshold"]["value"]
    engine = _engine(bundle_dir)
    test_ids = [line.split(",")[0].split(":")[1] for line in (bundle_dir / "splits.csv").read_text().splitlines()
                if line.startswith("tbx11k:") and line.endswith(",test")][:3]  # fmt: skip
    assert len(test_ids) == 3
    scores = []
    for tb_id in test_ids:
        rec = read_image(data_dir / "tbx11k" / "images" / f"{tb_id}.jpg")
        d = engine.analyze(rec).to_dict()
        assert d["findings"] == []  # nothing to list: the segmenter's only derived score is research
        heat = engine.cam(rec, spec["label"])
        assert heat.shape == rec.shape and heat.research and math.isfinite(heat.score) and 0.0 <= heat.score <= 1.0
        assert 0.0 <= heat.reference_rank <= 1.0
        scores.append(heat.score)
    # test sensitivity at this threshold was 0.86 on 105 films; at least two of three should reach it
    assert sum(s >= spec["threshold"]["value"] for s in scores) >= 2, scores


def test_torch_free_lane_gives_the_same_finding(tmp_path: Path, record: ImageRecord, monkeypatch) -> None:
    """Without torch (ONNX Runtime backend, ONNX text encoder) the derived finding scores as with torch."""
    import cxr_viewer.core.inference.onnx_runtime as ort_rt
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.onnx_export import export_bundle, export_text_encoder
    from cxr_viewer.core.models.bundle import load_bundle

    bdir = _save(tmp_path, [_spec(0.5)])
    assert export_bundle(bdir) is not None
    text_dir = tmp_path / "text" / "all-MiniLM-L6-v2"
    export_text_encoder(text_dir)
    monkeypatch.setattr(ort_rt, "default_text_dir", lambda: text_dir)
    ref = _engine(bdir).analyze(record).finding(LABEL)
    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    engine = InferenceEngine([load_bundle(bdir)])
    result = engine.analyze(record)
    assert result.backend == {"report-seg": "onnx"} or set(result.backend.values()) == {"onnx"}
    got = result.finding(LABEL)
    assert got.score == pytest.approx(ref.score, abs=1e-4) and got.note == NOTE and got.validated is False
    heat = engine.cam(record, LABEL)
    assert heat.method == "lesion map" and heat.shape == record.shape


def test_missing_text_encoder_skips_only_the_derived_finding(tmp_path: Path, record: ImageRecord, monkeypatch) -> None:
    """Without torch and without the shipped text encoder, analyze still succeeds and says what was skipped."""
    import cxr_viewer.core.inference.onnx_runtime as ort_rt
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.onnx_export import export_bundle
    from cxr_viewer.core.models.bundle import load_bundle

    bdir = _save(tmp_path, [_spec(0.5)])
    assert export_bundle(bdir) is not None
    monkeypatch.setattr(ort_rt, "default_text_dir", lambda: tmp_path / "no-text-encoder-here")
    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    engine = InferenceEngine([load_bundle(bdir)])
    result = engine.analyze(record)
    assert result.finding(LABEL) is None
    assert any(w.startswith(f"{LABEL} could not be computed") for w in result.warnings)
