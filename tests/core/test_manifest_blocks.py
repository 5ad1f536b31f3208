"""The typed manifest blocks and the one model identity (:class:`ModelRef`).

Every shipped bundle's manifest.json is read and written back to the same bytes; a bad value in
a block is refused when the manifest is read, with a message naming the field.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from cxr_viewer.core.errors import BundleError
from cxr_viewer.core.models.blocks import (
    AgeHead,
    CalibrationRecord,
    DerivedFinding,
    OnnxRecord,
    OodStats,
    Population,
    SiteVersion,
)
from cxr_viewer.core.models.manifest import Manifest
from cxr_viewer.core.models.ref import ModelRef

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "resources" / "models").glob("*/manifest.json"))


def _dumps(d: dict) -> str:
    return json.dumps(d, indent=2, sort_keys=False) + "\n"  # how bundles write their manifest


def assert_written_back(bundle_dir: Path) -> None:
    """A bundle's manifest.json, read and written again, is the same bytes (trainer-written bundles too)."""
    text = (Path(bundle_dir) / "manifest.json").read_text(encoding="utf-8")
    assert _dumps(Manifest.from_dict(json.loads(text)).to_dict()) == text


def _base(**extra: object) -> dict:
    return {
        "name": "m", "version": "1.0.0", "task": "multilabel", "architecture": {"name": "classifier", "kwargs": {}},
        "labels": ["Effusion", "Pneumonia"], "thresholds": {"Effusion": {"value": 0.5, "method": "youden"}},
        **extra,
    }  # fmt: skip


POPULATION = {
    "sources": {"nih14": 900, "kermany": 300}, "images": 1200,
    "age_years": {"min": 1.0, "max": 86, "recorded_p5": 15.3, "recorded_p95": 71.0, "documented": {"kermany": [1.0, 5.0]}},
    "views": {"PA": 700, "unrecorded": 500}, "accepted_views": ["PA", "AP"], "note": "adults and children",
    "ood": {"mean": [0.1, 0.2, 0.3], "std": [1, 1, 2], "quantile": 0.995, "threshold": 4.5, "fitted_on": "600 films"},
    "age_head": {"weights": [10.0, 0.0, 0.0], "bias": 2, "child_below": 11.5, "alpha": 3.0},
    "findings": {"Effusion": {"sources": {"nih14": 90}, "positives": {"nih14": 12}, "age_years": {"min": 18.0, "max": 80.0},
                              "children": False, "views": ["PA"], "note": "adults only"}},
    "a_key_of_the_future": {"kept": [1, 2]},
}  # fmt: skip
CALIBRATION = {"split": "val", "method": "per-label choice", "labels": {
    "Effusion": {"method": "platt", "a": 0.5975, "b": -1.98, "ece_before": 0.3, "ece_cv": {"none": 0.3, "platt": 0.01}}}}
SITE_VERSION = {
    "replaces": {"name": "chest", "version": "0.3.0", "sha256": "ab" * 32, "trained": True, "task": "multilabel"},
    "installed": "2026-12-01T10:00:00+00:00", "gates": {"auroc": {"passed": True, "delta": 0.01}},
    "site_test": {"n": 40}, "rollback": "the original stays installed",
}  # fmt: skip
ONNX = {"schema": 2, "kind": "classifier", "file": "onnx/classifier.onnx", "sha256": "cd" * 32, "weights_sha256": "ab" * 32,
        "cam": {"layer": "backbone.layer4", "exact": True, "head": {"weight": "head.weight", "bias": "head.bias"}},
        "verified": {"atol": 1e-4}, "opset": 18}  # fmt: skip
DERIVED = [{"label": "TB map", "role": "research_overlay", "prompts": ["tuberculosis in the right lung"], "score": "max",
            "threshold": {"value": 0.99, "method": "target sensitivity 0.85", "source": "val"}, "validated": False,
            "note": "research", "reference": {"what": "val normals", "quantiles": [0.1, 0.5, 0.9]}}]  # fmt: skip


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.parent.name)
def test_every_shipped_manifest_is_written_back_to_the_same_bytes(path: Path) -> None:
    assert_written_back(path.parent)
    m = Manifest.from_dict(json.loads(path.read_text(encoding="utf-8")))
    assert _dumps(Manifest.from_dict(m.to_dict()).to_dict()) == path.read_text(encoding="utf-8")  # and again


def test_shipped_blocks_are_typed() -> None:
    chest = Manifest.from_dict(json.loads((REPO / "resources/models/chest-resnet18/manifest.json").read_text()))
    assert isinstance(chest.population, Population) and isinstance(chest.population.ood, OodStats)
    assert chest.population.ood.fitted and chest.population.wants_features and len(chest.population.ood.mean) > 100
    assert isinstance(chest.calibration, CalibrationRecord) and chest.calibration.labels["Effusion"].method in (
        "none", "temperature", "platt", "isotonic")
    assert isinstance(chest.onnx, OnnxRecord) and chest.onnx.file == "onnx/classifier.onnx" and chest.onnx.exact_cam
    assert "population" not in chest.extra and "onnx" not in chest.extra and "score_noise" in chest.extra
    seg = Manifest.from_dict(json.loads((REPO / "resources/models/report-segmenter-resnet18/manifest.json").read_text()))
    (d,) = seg.derived_findings
    assert isinstance(d, DerivedFinding) and not d.is_finding and seg.derived("research_overlay") == [d]
    assert d.reference is not None and 0.0 <= d.reference_rank(0.9) <= 1.0


def test_every_block_round_trips_with_unknown_keys_and_original_order() -> None:
    d = _base(description="x", population=POPULATION, calibration=CALIBRATION)
    d = {"future_top": 1, **d, "site_version": SITE_VERSION, "onnx": ONNX}
    m = Manifest.from_dict(copy.deepcopy(d))
    out = m.to_dict()
    assert out["population"] == POPULATION and list(out["population"]) == list(POPULATION)
    assert out["calibration"] == CALIBRATION and out["site_version"] == SITE_VERSION and out["onnx"] == ONNX
    assert out["future_top"] == 1 and list(out)[0] == "future_top"
    assert isinstance(out["population"]["age_years"]["max"], int) and out["population"]["age_head"]["bias"] == 2  # ints stay ints
    assert m.population.findings["Effusion"].children is False and m.population.age_head.child_below == 11.5
    assert isinstance(m.site_version, SiteVersion) and m.site_version.gates["auroc"]["passed"] is True
    assert m.site_version.replaces == ModelRef("chest", "0.3.0", "ab" * 32, "multilabel") and m.replaces == "chest"
    seg = Manifest.from_dict(_base(task="text_segmentation", labels=["region"], thresholds={}, derived_findings=DERIVED))
    assert seg.to_dict()["derived_findings"] == DERIVED


def test_a_block_changed_in_code_is_written_with_its_new_value() -> None:
    """The trainer sets blocks as objects; the new values reach the file, unknown keys stay."""
    from dataclasses import replace

    m = Manifest.from_dict(_base(population=POPULATION, onnx=ONNX))
    m.population = replace(m.population, ood=OodStats.from_dict({"mean": [0.0], "std": [1.0], "threshold": 9.0}))
    m.onnx = None
    out = m.to_dict()
    assert out["population"]["ood"] == {"mean": [0.0], "std": [1.0], "threshold": 9.0}
    assert out["population"]["a_key_of_the_future"] == {"kept": [1, 2]} and "onnx" not in out
    fresh = Population(sources={"nih14": 10}, age_head=AgeHead(weights=(1.0, 2.0)))
    assert fresh.to_dict() == {"sources": {"nih14": 10}, "age_head": {"weights": [1.0, 2.0]}}  # defaults left out
    assert Population.from_dict(fresh.to_dict()) == fresh


def _bad(block: str, value: object, **extra: object) -> str:
    with pytest.raises(BundleError) as err:
        Manifest.from_dict(_base(**{block: value}, **extra), source="bundles/bad")
    assert "bundles/bad" in err.value.message
    return err.value.message


@pytest.mark.parametrize(
    ("block", "patch", "named"),
    [
        ("population", {"ood": {"mean": [0.1, 0.2], "std": [1.0], "threshold": 3.0}}, "'population.ood.mean' has 2 values but 'population.ood.std' has 1"),
        ("population", {"ood": {"mean": [0.1], "std": [1.0], "threshold": "high"}}, "'population.ood.threshold' must be a number (got 'high')"),
        ("population", {"age_years": {"min": 60, "max": 20}}, "'population.age_years.max' (20) is below 'population.age_years.min' (60)"),
        ("population", {"age_head": {"weights": [1.0, "x"]}}, "'population.age_head.weights' must be a list of numbers"),
        ("population", {"accepted_views": "PA"}, "'population.accepted_views' must be a list of texts"),
        ("population", {"findings": {"Effusion": {"children": "yes"}}}, "'population.findings.Effusion.children' must be true or false"),
        ("population", {"findings": {"Effusion": {"age_years": {"min": -3}}}}, "'population.findings.Effusion.age_years.min' is -3"),
        ("calibration", {"labels": {"Effusion": {"method": "magic"}}}, "'calibration.labels.Effusion': unknown calibration method 'magic'"),
        ("site_version", {"replaces": {"version": "1"}}, "'site_version.replaces': a model reference needs a text 'name'"),
        ("site_version", {"gates": {"auroc": {"passed": "yes"}}}, "'site_version.gates.auroc.passed' must be true or false"),
        ("onnx", {"schema": "2"}, "'onnx.schema' must be an integer (got '2')"),
        ("onnx", {"cam": ["layer4"]}, "'onnx.cam' must be an object"),
    ],
)
def test_a_bad_block_value_is_refused_naming_the_field(block: str, patch: dict, named: str) -> None:
    base = {"population": POPULATION, "calibration": CALIBRATION, "site_version": SITE_VERSION, "onnx": ONNX}[block]
    assert named in _bad(block, {**copy.deepcopy(base), **patch})


def test_a_block_that_is_not_an_object_is_refused() -> None:
    assert "'population' must be an object (got list)" in _bad("population", [1, 2])
    assert "'derived_findings' must be a list" in _bad("derived_findings", {"label": "x"}, task="text_segmentation")


def test_model_ref_is_the_one_identity() -> None:
    from cxr_viewer.core.analysis import BundleSummary

    m = Manifest.from_dict(_base(weights={"file": "model.safetensors", "sha256": "AB" * 32, "dtype": "float16"}))
    ref = m.ref
    assert ref == ModelRef("m", "1.0.0", "ab" * 32, "multilabel", trained=False) and ref.sha256 == "ab" * 32
    assert ref.to_dict() == {"name": "m", "version": "1.0.0", "sha256": "ab" * 32, "trained": False, "task": "multilabel"}
    assert ModelRef.from_dict(ref.to_dict()) == ref and ref.key == ("m", "1.0.0", "ab" * 32)
    s = BundleSummary(ref, Path("m"), enabled=True)
    assert (s.name, s.version, s.task, s.trained, s.sha256, s.display_name) == ("m", "1.0.0", "multilabel", False, "ab" * 32, "m 1.0.0")
    with pytest.raises(TypeError, match="'trained' must be true or false"):
        ModelRef.from_dict({"name": "m", "version": "1", "trained": "yes"})
    with pytest.raises(ValueError, match="needs a text 'version'"):
        ModelRef.from_dict({"name": "m"})


def test_the_card_reads_the_age_head_cut_off_from_the_typed_population() -> None:
    from cxr_viewer.core.models.card import model_card_markdown

    chosen = {"split": "val", "rule": "balance children and adults", "children": 30, "adults": 70, "balanced_accuracy": 0.9}
    pop = {**POPULATION, "age_head": {**POPULATION["age_head"], "chosen_on": chosen}}
    metrics = {"age_head": {"mae_years_recorded": {"value": 5.0, "ci95": [4.0, 6.0], "n_images": 50}}}
    card = model_card_markdown(_base(population=pop, metrics=metrics))
    assert "counts as a child's: chosen on the val split to balance children and adults (30 children, 70 adults" in card
    assert "| Effusion | 18-80 | no | PA | nih14 90 (12) |" in card  # each finding's population, from the typed block
    assert "'population.age_head.chosen_on' must be an object" in _bad("population", {**POPULATION, "age_head": {"chosen_on": 3}})
