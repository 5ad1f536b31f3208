"""The default bundles shipped in resources/models: loadable, honest, small, reproducible.

These check the contract the viewer relies on (hash-checked safetensors, preprocessing,
calibrated thresholds with their method, held-out metrics with CIs, a model card and the
split file whose hash the manifest records) on the real exported bundles, and the SSL
manifest builder's promise that held-out test patients are never pooled for pre-training.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "resources" / "models"
BUNDLES = sorted(p for p in MODELS.glob("*") if (p / "manifest.json").is_file())
CLASSIFIERS = [
    p
    for p in BUNDLES
    if json.loads((p / "manifest.json").read_text())["task"]
    in ("binary", "multilabel", "multiclass")
]


def test_default_bundles_exist_and_fit_the_size_budget() -> None:
    tasks = {json.loads((p / "manifest.json").read_text())["task"] for p in BUNDLES}
    assert {"ssl_encoder", "multilabel", "text_segmentation"} <= tasks
    # one chest model gives every finding: no two rows can contradict each other
    assert [p.name for p in CLASSIFIERS] == ["chest-resnet18"]
    labels = json.loads((CLASSIFIERS[0] / "manifest.json").read_text())["labels"]
    assert len(labels) == len(set(labels)) == 15 and "Pneumonia" in labels and "Abnormal" in labels
    # Weights (float16 safetensors) within 100 MiB; the ONNX exports the torch-free install runs are
    # float16 too, so they add no more than the weights of the bundles the viewer runs.
    files = [f for f in MODELS.rglob("*") if f.is_file()]
    onnx = sum(f.stat().st_size for f in files if f.suffix == ".onnx")
    rest = sum(f.stat().st_size for f in files) - onnx
    assert rest < 100 * 1024 * 1024, f"resources/models without ONNX is {rest / 2**20:.1f} MiB"
    run_weights = sum((p / "model.safetensors").stat().st_size for p in BUNDLES
                      if json.loads((p / "manifest.json").read_text())["task"] != "ssl_encoder")
    assert 0 < onnx < 1.1 * run_weights, f"ONNX exports {onnx / 2**20:.1f} MiB for {run_weights / 2**20:.1f} MiB of weights"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_loads_hash_checked_with_card_and_split(bundle: Path) -> None:
    import cxr_viewer.core.models.segmenter  # noqa: F401  (registers text_unet)
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.data.splits import file_sha256

    loaded = load_bundle(bundle)
    m = loaded.manifest
    assert m.trained
    assert m.weights["dtype"] == "float16"
    assert "not a medical device" in m.intended_use.lower()
    assert m.limitations and all(isinstance(x, str) and x for x in m.limitations)
    card = (bundle / "model_card.md").read_text(encoding="utf-8")
    assert m.name in card and "Research use only" in card and "Limitations" in card
    assert m.weights["sha256"] in card  # the card describes exactly these weights
    split = bundle / "splits.csv"
    assert split.is_file() and file_sha256(split) == m.provenance["split_sha256"]
    assert not list(bundle.glob("*.pt")) and not list(bundle.glob("*.ckpt"))


@pytest.mark.parametrize("bundle", CLASSIFIERS, ids=lambda p: p.name)
def test_classifier_thresholds_metrics_and_golden_scores(bundle: Path) -> None:
    import torch

    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.preprocess import preprocess

    torch.set_num_threads(2)
    loaded = load_bundle(bundle)
    m = loaded.manifest
    for label in m.labels:
        t = m.thresholds[label]
        assert 0.0 < t["value"] < 1.0
        assert (
            t["source"].startswith("val") and t["method"] != "default"
        )  # chosen on validation, never on test
    auroc = m.metrics["auroc"]
    assert m.metrics["split"] == "test"
    defined = [a for a in auroc.values() if a["value"] is not None]
    assert defined, "no label has a defined held-out AUROC"
    for a in defined:
        lo, hi = a["ci95"]
        assert 0.0 <= lo <= hi <= 1.0 and 0.0 <= a["value"] <= 1.0
    # the recorded golden scores are what these weights give through the shared preprocessing
    assert m.golden
    for g in m.golden:
        x = torch.from_numpy(preprocess(read_image(bundle / g["image"]), m.preprocessing)[None])
        with torch.no_grad():
            logits = loaded.model(x)
        scores = (
            torch.sigmoid(logits)[0]
            if m.task != "multiclass"
            else torch.softmax(logits, 1)[0]
        )
        for label, s in zip(m.labels, scores.tolist()):
            assert math.isclose(s, g["scores"][label], abs_tol=1e-3)


def test_chest_card_reports_populations_calibration_and_false_alarms() -> None:
    bundle = MODELS / "chest-resnet18"
    m = json.loads((bundle / "manifest.json").read_text())
    met = m["metrics"]
    mac = met["auroc_macro"]
    assert mac["ci95"][0] <= mac["value"] <= mac["ci95"][1] and mac["ci95"][0] > 0.5
    pn = met["subgroups"]["Pneumonia"]
    assert {"kermany", "adults (nih14 + covid)", "adult pneumonia vs no finding (nih14)"} <= set(pn)
    assert pn["kermany"]["ci95"][0] > 0.5
    # every threshold was chosen on validation, and the badge rule follows the positives it rests on
    for t in m["thresholds"].values():
        assert t["source"].startswith("val") and t["validated"] == (t["val_positives"] >= t["min_positives"] >= 10)
    # calibration measured before and after; false alarms on held-out normal films
    assert set(m["calibration"]["labels"]) and met["ece"]
    fab = met["false_alarm_burden"]["nih14"]["badged"]
    assert fab["n_images"] >= 30 and fab["value"] <= 1.0
    pop = m["population"]
    assert set(pop["sources"]) == {"nih14", "kermany", "covid", "tbx11k", "shenzhen"}
    loc = met["localisation"]
    assert loc["pointing_game_tbx11k"]["n"] > 50 and "road_true_positives" in loc
    assert "wall_time_s" in met and met["wall_time_s"]["ssl"] >= 3600  # the SSL stage ran for at least an hour
    card = (bundle / "model_card.md").read_text()
    for section in ("Calibration", "False alarms on normal films", "Sub-groups", "Population", "localisation"):
        assert section in card


def test_normal_films_carry_at_most_one_badge_on_average(data_dir: Path) -> None:
    """The shipped models on held-out NIH "No Finding" films, through the viewer's engine."""
    import pandas as pd
    import torch

    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import load_bundle

    torch.set_num_threads(2)
    bundle = MODELS / "chest-resnet18"
    splits = pd.read_csv(bundle / "splits.csv")
    test_ids = set(splits.loc[splits["split"] == "test", "patient_id"].astype(str))
    labels = pd.concat([pd.read_csv(data_dir / f / "labels.csv").assign(folder=f) for f in ("nih14", "nih14_extra")])
    normal = labels[(labels["No_Finding"] == 1) & ("nih14:" + labels["patient_id"].astype(str)).isin(test_ids)]
    files = [data_dir / r.folder / r.file for r in normal.sort_values("file").head(20).itertuples()]
    assert len(files) == 20
    engine = InferenceEngine([load_bundle(bundle)], device="cpu", backend="torch")
    badges = []
    for f in files:
        found = engine.analyze(read_image(f)).findings
        badges.append(sum(x.positive for x in found))
        assert all(not x.positive or x.validated is not False for x in found)
    assert sum(badges) / len(badges) <= 1.0, badges


def test_segmenter_reports_tb_as_localisation_not_screening() -> None:
    bundle = MODELS / "report-segmenter-resnet18"
    m = json.loads((bundle / "manifest.json").read_text())
    tb = m["metrics"]["tuberculosis_lesion_score"]
    assert tb["threshold"]["method"] == "target sensitivity 0.85"
    assert "NOT MEASURED" in tb["specificity"]
    normals = tb["normals"]
    assert set(normals["per_source"]) >= {"nih14", "kermany"} and normals["pooled"]["n_images"] >= 100
    (derived,) = m["derived_findings"]
    assert derived["validated"] == normals["goal_met"]  # a POSITIVE badge only when the goal was met
    # not validated: a research overlay (never a finding), read on the validation normals' scores
    assert derived["role"] == ("finding" if derived["validated"] else "research_overlay")
    ref = derived["reference"]
    assert ref["split"] == "val" and ref["n_images"] >= 100 and len(ref["quantiles"]) == 101
    assert ref["quantiles"] == sorted(ref["quantiles"])
    lf = m["metrics"]["lung_field"]["test"]
    assert lf["films"] == tb["test"]["n_images"] and lf["dilation"] > 0  # the same held-out TBX11K films
    assert 0.0 <= tb["test"]["pointing_game"]["value"] <= 1.0
    assert any("NOT VALIDATED AS TB SCREENING" in lim for lim in m["limitations"])
    assert m["text_encoder"]["name"]


def test_ssl_manifest_excludes_test_patients(tmp_path: Path, data_dir: Path) -> None:
    """Build a small labelled manifest + split, pool it, and check no test patient's image is pooled."""
    import pandas as pd

    from trainer.data.manifest import read_manifest, write_manifest
    from trainer.data.splits import make_splits, write_split_file

    images = sorted((data_dir / "tbx11k" / "images").glob("*.jpg"))[:20]
    frame = pd.DataFrame({"image": [str(p) for p in images], "patient_id": [p.stem for p in images],
                          "dataset": "tbx11k", "tb": [i % 2 for i in range(len(images))]})  # fmt: skip
    write_manifest(frame, tmp_path / "m.csv")
    split = make_splits(
        read_manifest(tmp_path / "m.csv").frame, seed=0, val=0.2, test=0.3
    )
    write_split_file(split, tmp_path / "s.csv")
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_ssl_manifest.py"), "--out", str(tmp_path / "ssl.csv"),
         "--split-out", str(tmp_path / "all.csv"), f"{tmp_path / 'm.csv'}:{tmp_path / 's.csv'}"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )  # fmt: skip
    info = json.loads(out.stdout.strip().splitlines()[-1])
    pooled = read_manifest(tmp_path / "ssl.csv").frame
    test_ids = {
        "tbx11k:" + p for p in split.loc[split["split"] == "test", "patient_id"]
    }
    assert test_ids and not test_ids & set(pooled["patient_id"])
    assert (
        len(pooled) + len(test_ids)
        == len(images)
        == info["sources"]["tbx11k"]["images"]
        + info["sources"]["tbx11k"]["excluded_test"]
    )
    combined = pd.read_csv(tmp_path / "all.csv")
    assert set(combined.loc[combined["split"] == "test", "patient_id"]) == test_ids


def test_chest_score_noise_was_measured_on_validation_films_for_these_weights() -> None:
    """The current | prior arrow reads each finding's noise from the bundle, measured on validation, not at run time."""
    from cxr_viewer.core.compare import NOISE_KEY, recorded_noise
    from cxr_viewer.core.models.bundle import read_manifest

    bundle = MODELS / "chest-resnet18"
    raw = json.loads((bundle / "manifest.json").read_text())
    noise = raw[NOISE_KEY]
    assert noise["split"] == "val" and noise["n_films"] >= 200 and noise["augmentations_per_film"] >= 4
    assert noise["weights_sha256"] == raw["weights"]["sha256"]
    values = recorded_noise(read_manifest(bundle))
    assert set(values) == set(raw["labels"])
    assert all(0.0 <= v < 0.2 for v in values.values()), values
    card = (bundle / "model_card.md").read_text()
    assert "### Score noise" in card and f"Measured on {noise['n_films']} val films" in card
