"""A score is only badged POSITIVE above a validated threshold, on a film inside the model's population."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cxr_viewer.core.inference.population import outside_population
from cxr_viewer.core.inference.results import Finding, QCFlag
from cxr_viewer.core.models.blocks import Population

POP_DICT = {"age_years": {"min": 1.0, "max": 95.0}, "accepted_views": ["PA", "AP", "AP SUPINE"]}
POP = Population.from_dict(POP_DICT)


def test_population_rules() -> None:
    assert outside_population({"patient_age_years": 45.0, "view_position": "PA"}, [], POP) == ""
    assert "age 0.5" in outside_population({"patient_age_years": 0.5}, [], POP)
    assert "view LL" in outside_population({"view_position": "LL"}, [], POP)
    assert outside_population({}, [], POP) == ""  # a PNG: nothing says it is outside
    assert outside_population({}, [], None) == ""
    lateral = QCFlag("lateral_view", "Lateral view (LAT).", "warning")
    assert "Lateral view" in outside_population({}, [lateral], None)
    assert outside_population({}, [QCFlag("ap_view", "AP view", "info")], POP) == ""


def test_badge_states() -> None:
    base = Finding("Effusion", 0.8, 0.5, "m")
    assert base.positive and base.state == "positive"
    assert not Finding("Effusion", 0.2, 0.5, "m").positive
    rare = Finding("Hernia", 0.9, 0.5, "m", validated=False)
    assert rare.above_threshold and not rare.positive and rare.state == "above_not_validated"
    out = Finding("Effusion", 0.9, 0.5, "m", outside="outside the model's population: view LL")
    assert not out.positive and out.state == "outside_population"
    d = out.to_dict()
    assert d["positive"] is False and d["state"] == "outside_population" and "view LL" in d["outside_population"]


def test_engine_applies_validated_thresholds_and_population(tmp_path: Path) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.testing import make_untrained_bundle

    bdir = make_untrained_bundle(tmp_path / "b", name="pop", labels=["Effusion", "Hernia"], size=(64, 64),
                                 thresholds={"Effusion": 0.0, "Hernia": 0.0}, seed=3)  # fmt: skip
    man = json.loads((bdir / "manifest.json").read_text())
    man["thresholds"]["Hernia"].update(validated=False, val_positives=3)
    man["population"] = POP_DICT
    (bdir / "manifest.json").write_text(json.dumps(man))
    engine = InferenceEngine([load_bundle(bdir)], device="cpu", backend="torch")
    rng = np.random.default_rng(0)
    px = rng.random((300, 260)).astype(np.float32)
    adult = ImageRecord(pixels=px, source=None, format="array", metadata={"patient_age_years": 40.0, "view_position": "PA"})
    infant = ImageRecord(pixels=px.copy(), source=None, format="array",
                         metadata={"patient_age_years": 0.25, "view_position": "PA"})  # fmt: skip
    r = {f.label: f for f in engine.analyze(adult).findings}
    assert r["Effusion"].state == "positive" and r["Hernia"].state == "above_not_validated"  # threshold 0
    r2 = {f.label: f for f in engine.analyze(infant).findings}
    assert all(f.state == "outside_population" and not f.positive for f in r2.values())


def test_engine_flags_an_out_of_population_image_from_its_pooled_features() -> None:
    """The shipped chest model's fitted OOD check (population.ood) runs inside the engine: a real chest
    film stays inside, a noise image that passes every QC check is flagged by its features alone."""
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.models.bundle import load_bundle

    repo = Path(__file__).resolve().parents[2]
    bundle = load_bundle(repo / "resources" / "models" / "chest-resnet18")
    assert bundle.manifest.population.ood.threshold is not None
    engine = InferenceEngine([bundle], device="cpu", backend="torch")
    film = engine.analyze(read_image(repo / "resources" / "samples" / "nih_chest.png"))
    assert all(f.outside == "" for f in film.findings)
    noise = ImageRecord(pixels=np.random.default_rng(0).random((512, 512)).astype(np.float32), source=None,
                        format="array", metadata={})
    res = engine.analyze(noise)
    assert not any(q.code in ("not_radiograph", "blank_image", "not_chest") for q in res.qc)  # QC alone lets it in
    assert res.findings and all("features are unlike the training films" in f.outside for f in res.findings)
    assert not any(f.positive for f in res.findings)


ADULT_ONLY = {"age_years": {"min": 18.0, "max": 90.0}, "children": False, "sources": {"nih14": 180}}
WITH_CHILDREN = {"age_years": {"min": 1.0, "max": 90.0}, "children": True, "sources": {"nih14": 180, "kermany": 800}}


def test_each_finding_has_its_own_population_by_dicom_age_or_the_age_head() -> None:
    from dataclasses import replace

    from cxr_viewer.core.inference.population import FilmAge, estimate_age, film_age, finding_outside

    w = np.zeros(4)
    w[0] = 10.0
    pop = Population.from_dict({"findings": {"Effusion": ADULT_ONLY, "Pneumonia": WITH_CHILDREN},
                                "age_head": {"weights": w.tolist(), "bias": 2.0, "child_below": 11.5}})  # fmt: skip
    assert estimate_age([0.1, 5, 5, 5], pop) == 3.0 and estimate_age([5.0, 0, 0, 0], pop) == 52.0
    # a DICOM age wins over the estimate; without one the age head decides child or adult
    assert film_age({"patient_age_years": 40.0}, pop, [0.1, 0, 0, 0]) == FilmAge(40.0, "dicom")
    child = film_age({}, pop, [0.1, 0, 0, 0])
    assert child == FilmAge(3.0, "estimate")
    assert "estimates a child" in finding_outside(pop, "Effusion", child)
    assert finding_outside(pop, "Pneumonia", child) == ""
    assert finding_outside(pop, "Effusion", film_age({}, pop, [5.0, 0, 0, 0])) == ""
    assert "patient age 4" in finding_outside(pop, "Effusion", FilmAge(4.0, "dicom"))
    assert finding_outside(pop, "Effusion", FilmAge(30.0, "dicom")) == ""
    assert finding_outside(pop, "Hernia", child) == ""  # no population recorded for it: nothing says outside
    assert finding_outside(pop, "Effusion", None) == ""
    # the cut-off is the one the bundle's calibration chose, not a constant
    teen = FilmAge(14.0, "estimate")
    assert finding_outside(pop, "Effusion", teen) == ""
    older_cut = replace(pop, age_head=replace(pop.age_head, child_below=16.0))
    assert "estimates a child" in finding_outside(older_cut, "Effusion", teen)
    try:
        estimate_age([1.0, 2.0], pop)
    except ValueError as exc:
        assert "age head" in str(exc)
    else:
        raise AssertionError("a feature vector of the wrong size must be refused")


def test_engine_shows_adult_findings_outside_population_on_a_child_film(tmp_path: Path) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.testing import make_untrained_bundle

    bdir = make_untrained_bundle(tmp_path / "b", name="kids", labels=["Effusion", "Pneumonia"], size=(64, 64),
                                 thresholds={"Effusion": 0.0, "Pneumonia": 0.0}, seed=3)  # fmt: skip
    k = load_bundle(bdir).model.num_features
    man = json.loads((bdir / "manifest.json").read_text())

    def run(bias: float, metadata: dict) -> dict:
        man["population"] = {**POP_DICT, "findings": {"Effusion": ADULT_ONLY, "Pneumonia": WITH_CHILDREN},
                             "age_head": {"weights": [0.0] * k, "bias": bias, "child_below": 11.5}}  # fmt: skip
        (bdir / "manifest.json").write_text(json.dumps(man))
        engine = InferenceEngine([load_bundle(bdir)], device="cpu", backend="torch")
        px = np.random.default_rng(0).random((300, 260)).astype(np.float32)
        return {f.label: f for f in engine.analyze(ImageRecord(pixels=px, source=None, format="array", metadata=metadata)).findings}

    kid = run(3.0, {})  # a PNG of a child: the age head says about 3 years
    assert kid["Effusion"].state == "outside_population" and "estimates a child" in kid["Effusion"].outside
    assert kid["Pneumonia"].state == "positive"
    adult = run(45.0, {})
    assert adult["Effusion"].state == "positive" and adult["Pneumonia"].state == "positive"
    dicom_kid = run(45.0, {"patient_age_years": 4.0})  # the header's age beats the estimate
    assert dicom_kid["Effusion"].state == "outside_population" and dicom_kid["Pneumonia"].state == "positive"
