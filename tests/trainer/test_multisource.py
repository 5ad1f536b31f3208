"""The default chest model's recipe, tiny but real: every source in one manifest, masked labels,
calibration folded into the head, validated thresholds, population and false-alarm figures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_manifest_blocks import assert_written_back
from tests.trainer.conftest import common_args
from tests.trainer.test_pipeline import _run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def chest_manifest(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real multi-source manifest, cut to 12 films per source and split (seeded)."""
    import pandas as pd

    from scripts.make_chest_manifest import LABELS, build
    from trainer.data.manifest import write_manifest

    frame, counts = build(data_dir, seed=0)
    # NIH is split by patient across both folders, every other source keeps its own seeded split
    nih = frame[frame["dataset"] == "nih14"]
    assert set(nih["meta_folder"]) == {"nih14", "nih14_extra"}
    assert nih.groupby("patient_id")["split"].nunique().max() == 1
    assert counts["nih14"]["patients"] < len(nih)  # patients with films in both folders
    # labels a source does not have are unknown (NaN) on its abnormal films; its normal films are
    # negative for every finding (normal means normal)
    kermany = frame[frame["dataset"] == "kermany"]
    assert kermany["Pneumonia"].notna().all()
    assert (kermany[kermany["Pneumonia"] == 0][LABELS] == 0).all().all()
    assert kermany[kermany["Pneumonia"] == 1]["Effusion"].isna().all()
    covid = frame[frame["dataset"] == "covid"]
    assert (covid[covid["meta_finding"] == "No Finding"][LABELS] == 0).all().all()
    assert (frame[frame["dataset"] == "shenzhen"][LABELS] == 0).all().all()
    # the COVID collection records ages: the age head learns from every one the labels file gives
    raw = pd.read_csv(data_dir / "covid_ieee8023" / "labels.csv")
    with_age = {str((data_dir / "covid_ieee8023" / f).resolve()) for f in raw.loc[raw["age"].notna(), "file"]}
    kept = covid["image"].isin(with_age)
    assert covid["meta_age"].notna().sum() == kept.sum() > 0
    assert (frame[frame["dataset"] == "tbx11k"]["Abnormal"] == 1).all()
    nofind = nih[nih[[c for c in LABELS if c != "Abnormal"]].sum(axis=1) == 0]
    assert (nofind["Abnormal"] == 0).all()
    small = pd.concat([g.sample(min(len(g), 12), random_state=0) for _, g in frame.groupby(["dataset", "split"])])
    out = tmp_path_factory.mktemp("chest") / "chest.csv"
    write_manifest(small.reset_index(drop=True), out)
    return out


def test_one_model_every_source_calibrated_and_honest(
    chest_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cxr_viewer.core.models.bundle import load_bundle

    runs = tmp_path / "runs"
    res = _run(["finetune", "--manifest", str(chest_manifest), "--max-epochs", "1", "--init", "random",
                "--task", "multilabel", "--source-weighting", "sqrt", *common_args(runs, "chest")], capsys)  # fmt: skip
    bundle = Path(res["bundle"])
    before = load_bundle(bundle)
    weights = before.manifest.provenance["source_weights"]
    # per-source weights for every source that labels Pneumonia (12 films each here, so equal; the
    # unit test shows a large source weighing less per film)
    assert {"kermany", "nih14", "covid"} <= set(weights["Pneumonia"]) and min(weights["Pneumonia"].values()) > 0
    assert before.labels[-2:] == ["Hernia", "Abnormal"] and len(before.labels) == 15
    _run(["calibrate", "--bundle", str(bundle), "--manifest", str(chest_manifest), "--scaling", "platt",
          "--method", "budget", "--budget", "0.5", "--min-positives", "10"], capsys)  # fmt: skip
    after = load_bundle(bundle)
    m = after.manifest
    assert_written_back(bundle)  # population, calibration and budget blocks as the trainer wrote them
    # calibration lives in the weights: a new hash, and the head really changed where a platt fit was chosen
    assert m.weights["sha256"] != before.manifest.weights["sha256"]
    cal = m.calibration.labels
    assert cal and all(c.method in ("none", "temperature", "platt") for c in cal.values())
    for lab, t in m.thresholds.items():
        if "val_positives" in t:
            assert t["validated"] == (t["val_positives"] >= 10)
    assert any(t.get("validated") is False for t in m.thresholds.values())  # 12 films per split: rare findings
    pop = m.population
    assert set(pop.sources) == {"nih14", "kermany", "covid", "tbx11k", "shenzhen"}
    assert pop.age_years.min == 1.0 and "PA" in pop.accepted_views
    ood = pop.ood
    assert len(ood.mean) == len(ood.std) == 512 and ood.threshold > 0
    from cxr_viewer.core.inference.population import outside_population

    far = np.asarray(ood.mean) + 50 * np.asarray(ood.std)
    assert "unlike the training films" in outside_population({}, [], pop, features=far)
    assert outside_population({}, [], pop, features=np.asarray(ood.mean)) == ""

    # one false-alarm budget: validated findings spend it (or get none), the rest keep a display threshold
    assert m.extra["false_alarm_budget"]["badges_per_normal_film"] == 0.5
    spent = {"adults": 0.0, "children": 0.0}
    for lab, t in m.thresholds.items():
        if t.get("validated") is not False:
            assert t["method"].startswith("false-alarm budget")
            for g, v in t["budget_spent"].items():
                spent[g] += v
    assert all(v <= 0.5 + 1e-3 for v in spent.values())
    # the age head and each finding's validated population: NIH findings are adults-only
    head = pop.age_head
    assert len(head.weights) == 512 and {"nih14", "kermany", "covid"} <= set(head.raw["fitted_on"])
    findings = pop.findings
    assert "kermany" in findings["Pneumonia"].sources  # validated on children too (given enough positives)
    assert findings["Pneumonia"].age_years.min == (1.0 if findings["Pneumonia"].children else 18.0)
    nih_only = [lab for lab in findings if lab not in ("Pneumonia", "Abnormal")]
    assert nih_only and all(findings[lab].age_years.min >= 18 and not findings[lab].children for lab in nih_only)
    ev = tmp_path / "eval"
    _run(["evaluate", "--bundle", str(bundle), "--manifest", str(chest_manifest), "--out", str(ev),
          "--bootstrap", "50", "--gallery", "0"], capsys)  # fmt: skip
    metrics = json.loads((ev / "metrics.json").read_text())  # strict JSON: no NaN literals
    fab = metrics["false_alarm_burden"]
    assert "nih14" in fab and "kermany" in fab
    labels = fab["nih14"]["labels_counted"]
    assert "Hernia" not in labels or m.thresholds["Hernia"].get("validated") is not False
    assert 0 <= fab["nih14"]["badged"]["value"] <= len(labels)
    sub = metrics["subgroups"]["Pneumonia"]
    assert {"kermany", "adults (nih14 + covid)"} <= set(sub)
    badges = metrics["badges"]
    assert set(badges["badges_per_normal_film"]) == {"adults", "children"}
    assert 0 <= badges["true_findings_badged"]["overall"]["value"] <= 1
    age = metrics["age_head"]
    assert age["mae_years_recorded"]["value"] >= 0 and 0 <= age["child_adult_accuracy"]["value"] <= 1
    card = (ev / "report.md").read_text()
    assert "POSITIVE badges per normal film, children" in card and "Age head" in card
    for lab in metrics["ece_uncalibrated"]:
        assert cal[lab].method in ("temperature", "platt")
    assert np.isfinite(list(metrics["ece"].values())[0])
