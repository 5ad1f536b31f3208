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
    assert {"ssl_encoder", "binary", "multilabel", "text_segmentation"} <= tasks
    total = sum(f.stat().st_size for f in MODELS.rglob("*") if f.is_file())
    assert total < 100 * 1024 * 1024, f"resources/models is {total / 2**20:.1f} MiB"


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


def test_pneumonia_card_reports_ssl_vs_random_and_beats_chance() -> None:
    bundle = MODELS / "pneumonia-kermany-resnet18"
    m = json.loads((bundle / "manifest.json").read_text())
    a = m["metrics"]["auroc"]["pneumonia"]
    assert a["ci95"][0] > 0.5  # the lower bound, not the point, is above chance
    cmp_ = m["metrics"]["ssl_vs_random"]["labels"]["pneumonia"]
    assert (
        cmp_["difference_ci95"][0] <= cmp_["difference"] <= cmp_["difference_ci95"][1]
    )
    assert (
        "What self-supervised pre-training gained"
        in (bundle / "model_card.md").read_text()
    )


def test_segmenter_reports_tb_as_localisation_not_screening() -> None:
    bundle = MODELS / "report-segmenter-resnet18"
    m = json.loads((bundle / "manifest.json").read_text())
    tb = m["metrics"]["tuberculosis_lesion_score"]
    assert tb["threshold"]["method"] == "target sensitivity 0.9"
    assert "NOT MEASURED" in tb["specificity"]
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
