"""Heatmaps that point: class maps constrained to the lung field, and the TB score as a research overlay.

Unit checks of the one constraint function, then the engine on real bundles: the shipped chest model
and report segmenter on the NIH sample film (both backends draw the same constrained map), and a
tiny segmenter whose derived finding is a research overlay (never a finding, anywhere).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.errors import BundleError
from cxr_viewer.core.inference.lung_field import (
    MIN_LUNG_FRACTION,
    constrain_map,
    lung_field_from_probabilities,
)
from cxr_viewer.core.io import read_image

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "resources" / "models"
SAMPLE = ROOT / "resources" / "samples" / "nih_chest.png"


# ---------------------------------------------------------------- the one constraint function
def test_constrain_map_zeroes_outside_and_rescales_inside() -> None:
    values = np.zeros((40, 50), np.float32)
    values[5, 5] = 1.0  # the unconstrained peak, outside the field
    values[30, 30] = 0.4
    field = np.zeros((40, 50), bool)
    field[20:40, 20:40] = True
    out = constrain_map(values, field)
    assert out[5, 5] == 0.0 and not out[~field].any()
    assert np.unravel_index(int(out.argmax()), out.shape) == (30, 30)
    assert out.max() == pytest.approx(1.0)


def test_constrain_map_leaves_the_map_whole_without_a_usable_field() -> None:
    values = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    assert np.array_equal(constrain_map(values, None), values)
    assert np.array_equal(constrain_map(values, np.zeros((20, 20), bool)), values)
    assert np.array_equal(constrain_map(values, np.ones((10, 10), bool)), values)  # another grid: not applied
    zero_inside = values.copy()
    zero_inside[:5] = 0.0
    field = np.zeros((20, 20), bool)
    field[:5] = True
    assert np.array_equal(constrain_map(zero_inside, field), zero_inside)


def test_lung_field_dilation_grows_by_the_radius() -> None:
    prob = np.zeros((100, 100), np.float32)
    prob[40:60, 40:60] = 0.9
    tight = lung_field_from_probabilities([prob, np.zeros_like(prob)], 0.5, dilation=0.0)
    wide = lung_field_from_probabilities([prob, np.zeros_like(prob)], 0.5, dilation=0.05)
    assert tight.mask.sum() == 400
    assert wide.mask[40:60, 35].all() and wide.mask[50, 64] and not wide.mask[50, 65]  # radius 5 px
    assert not wide.mask[34, 34]  # a disc, not a square
    assert "dilated 5%" in wide.source
    assert not lung_field_from_probabilities([np.zeros_like(prob)], 0.5).found
    assert MIN_LUNG_FRACTION > 0


# ---------------------------------------------------------------- the shipped bundles
@pytest.fixture(scope="module")
def shipped():
    from cxr_viewer.core.inference.engine import InferenceEngine

    engine = InferenceEngine.from_dirs([MODELS / "chest-resnet18", MODELS / "report-segmenter-resnet18"],
                                       device="cpu")
    return engine, read_image(SAMPLE)


def test_shipped_abnormal_map_stays_in_the_lung_field_on_both_backends(shipped) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine

    engine, record = shipped
    field = engine.lung_field(record)
    assert field is not None and field.found and 0.15 < field.mask.mean() < 0.8
    heat = engine.cam(record, "Abnormal", "gradcam")
    assert heat.region.startswith("lung field (report-segmenter-resnet18)")
    # bilinear restore of the network-grid field blurs one network pixel at its edge
    grown = lung_field_from_probabilities([field.mask.astype(np.float32)], 0.5, dilation=0.01).mask
    assert heat.values[~grown].max() < 0.05 and heat.values.max() == pytest.approx(1.0)
    assert heat.colour_peak == pytest.approx(heat.score)
    engine.lung_constraint = False
    try:
        whole = engine.cam(record, "Abnormal", "gradcam")
    finally:
        engine.lung_constraint = True
    assert whole.region == "whole image" and whole.values[~grown].max() > 0.05
    # the torch backend's map goes through the same constraint above the backends
    torch_engine = InferenceEngine.from_dirs([MODELS / "chest-resnet18", MODELS / "report-segmenter-resnet18"],
                                             device="cpu", backend="torch")
    t = torch_engine.cam(record, "Abnormal", "gradcam")
    assert torch_engine.backend_for(torch_engine.bundle("chest-resnet18")) == "torch"
    assert t.region == heat.region and t.values[~grown].max() < 0.05
    peak = np.unravel_index(int(np.argmax(t.values)), t.values.shape)
    assert field.mask[peak]


def test_findings_outside_the_lungs_keep_the_whole_map(shipped) -> None:
    engine, record = shipped
    heat = engine.cam(record, "Cardiomegaly", "gradcam")
    assert heat.region.startswith("whole image")


def test_shipped_tb_score_is_a_research_overlay_not_a_finding(shipped) -> None:
    engine, record = shipped
    seg = engine.bundle("report-segmenter-resnet18")
    (spec,) = seg.manifest.derived_findings
    assert spec.role == "research_overlay" and spec.validated is False
    assert seg.manifest.derived("finding") == [] and seg.manifest.derived("research_overlay")
    result = engine.analyze(record)
    assert not any("tuberculosis" in f.label.lower() or "tb " in f.label.lower() for f in result.findings)
    assert engine.research_overlays() == [(spec.label, seg.name)]
    heat = engine.cam(record, spec.label, model=seg.name)
    assert heat.research and heat.method == "lesion map"
    assert heat.reference_rank == pytest.approx(spec.reference_rank(heat.score))
    assert heat.colour_peak == heat.reference_rank and 0.0 <= heat.reference_rank <= 1.0
    ref = spec.reference
    assert ref.raw["split"] == "val" and ref.raw["n_images"] >= 100 and len(ref.quantiles) == 101


# ---------------------------------------------------------------- a tiny research overlay
def _tiny_overlay(tmp_path: Path, **changes) -> Path:
    """The tiny derived segmenter of the Qt tests, its derived finding turned into a research overlay."""
    import json

    from tests.qt.bundles import build_derived_segmenter

    out = build_derived_segmenter(tmp_path / "seg", "TB lesion map (research)", "not validated",
                                  ["tuberculosis in the right lung"])
    path = out / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    m["derived_findings"][0].update({"role": "research_overlay",
                                     "reference": {"what": "test normals", "quantiles": list(np.linspace(0.2, 0.8, 7))},
                                     **changes})
    path.write_text(json.dumps(m), encoding="utf-8")  # weights untouched: the sha256 still holds
    return out


def test_a_research_overlay_is_never_a_finding(tmp_path: Path) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.models.bundle import find_bundles, load_bundle
    from cxr_viewer.core.worklist.worklist import _is_scoring

    out = _tiny_overlay(tmp_path)
    bundle = load_bundle(out)
    engine = InferenceEngine([bundle], device="cpu", backend="torch")
    record = read_image(SAMPLE)
    result = engine.analyze(record)
    assert result.findings == () and engine.derived_bundles == []
    assert engine.research_overlays() == [("TB lesion map (research)", "seg-derived")]
    heat = engine.cam(record, "TB lesion map (research)")
    assert heat.research and heat.values.max() == pytest.approx(1.0)  # drawn on its rank, not raw probabilities
    assert heat.reference_rank == bundle.manifest.derived("research_overlay")[0].reference_rank(heat.score)
    assert heat.to_dict()["research_overlay"] is True
    (info,) = find_bundles([tmp_path])
    assert not _is_scoring(info.manifest), "the worklist does not wait for a model that scores nothing"


def test_reference_rank_reads_the_quantiles() -> None:
    from cxr_viewer.core.models.blocks import DerivedFinding

    base = {"label": "x", "prompts": ["p"], "threshold": {"value": 0.5}}
    spec = DerivedFinding.from_dict({**base, "reference": {"quantiles": [0.1, 0.2, 0.3, 0.4, 0.5]}}, "d")
    assert spec.reference_rank(0.05) == 0.0 and spec.reference_rank(0.9) == 1.0
    assert spec.reference_rank(0.3) == pytest.approx(0.5)
    assert spec.reference_rank(0.25) == pytest.approx(0.375)
    assert DerivedFinding.from_dict(base, "d").reference_rank(0.3) is None


@pytest.mark.parametrize("change", [{"role": "alarm"}, {"reference": {"quantiles": [0.5, 0.2]}},
                                    {"reference": {"quantiles": [0.1, 1.5]}}])
def test_a_broken_role_or_reference_is_refused_by_name(tmp_path: Path, change: dict) -> None:
    from cxr_viewer.core.models.bundle import load_bundle

    field = "role" if "role" in change else "reference.quantiles"
    with pytest.raises(BundleError, match=rf"bundle in seg .*'derived_findings\[0\]\.{field}'"):
        load_bundle(_tiny_overlay(tmp_path, **change))


def test_the_card_says_research_overlay_and_why() -> None:
    from cxr_viewer.core.models.bundle import read_manifest
    from cxr_viewer.core.models.card import model_card_markdown

    card = model_card_markdown(read_manifest(MODELS / "report-segmenter-resnet18"))
    assert "Research overlay, not a finding" in card and "TB lesion map (research)" in card
    assert "share of validation normals scoring lower" in card
    assert "Where the heatmaps point" in card


def test_headless_analyze_lists_no_tb_finding_and_draws_the_overlay_on_request(tmp_path: Path) -> None:
    """`cxr-viewer analyze` with the shipped bundles: no TB row in the JSON; --cam names the research overlay."""
    import json

    from cxr_viewer.headless import analyze_main

    out = tmp_path / "r.json"
    rc = analyze_main([str(SAMPLE), "--no-default-models", "--models", str(MODELS), "--json", str(out),
                       "--cam", "TB lesion map", "--cam-format", "npy", "--cam-out", str(tmp_path), "--no-faithfulness"])
    assert rc == 0
    (d,) = json.loads(out.read_text(encoding="utf-8"))
    assert d["findings"] and not any("tb" in f["label"].lower().split() or "tuberculosis" in f["label"].lower()
                                     for f in d["findings"])
    cam = d["cam"]
    assert cam["label"] == "TB lesion map (research)" and cam["research_overlay"] is True
    assert 0.0 <= cam["reference_rank"] <= 1.0 and cam["region"].startswith("lung field")
    assert np.load(cam["path"]).shape == read_image(SAMPLE).shape
