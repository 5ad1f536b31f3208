"""The whole site loop on real films, headless, in one test.

The "shipped" model was trained on adult NIH films (pneumonia vs no finding); the "site" is a
children's hospital: Kermany paediatric films. Steps: 1 calibrate on the site's films
(``cxr-train calibrate --site``), 2 the profile saved (versioned, bound to the weights),
3 ``cxr-viewer analyze --site-profile`` (the JSON and the DICOM SR name the profile), 4 the
reader's labels stored as corrections with provenance and exported (``export-corrections``),
5 ``cxr-train finetune --site`` a few steps, 6 the gates, 7 the new version installed beside the
original (switched off) and enabled, the original kept for rollback. Tiny: 64 px, a few dozen
films, one or two epochs; the site's films are scored once by ``analyze`` (one engine start-up), and
the reader's labels are given on what it showed. The learning curve (how many more labels) is a second test.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pandas as pd
import pydicom
import pytest

from tests.core.dicom_check import dciodvfy_errors
from tests.core.test_manifest_blocks import assert_written_back
from tests.trainer.conftest import common_args
from trainer.cli import main as train_main

pytestmark = pytest.mark.slow

SIIM = Path(__file__).resolve().parents[2] / "resources" / "samples" / "siim_cr_chest.dcm"
N_SITE = 60  # site films: 30 positive, 30 negative


def _json_out(argv: list[str], main=train_main) -> tuple[int, dict]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    lines = [ln for ln in buf.getvalue().strip().splitlines() if ln.startswith("{")]
    return rc, (json.loads(lines[-1]) if lines else {})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("site-runs")


@pytest.fixture(scope="module")
def adult_manifest(data_dir: Path, runs: Path) -> Path:
    """40 adult NIH films, 20 with pneumonia and 20 with no finding (one per patient), label ``pneumonia``."""
    root = data_dir / "nih14_extra"
    labels = pd.read_csv(root / "labels.csv").drop_duplicates("patient_id")
    pick = pd.concat([labels[labels["Pneumonia"] == 1].sample(20, random_state=0),
                      labels[labels["No_Finding"] == 1].sample(20, random_state=0)])  # fmt: skip
    out = runs / "adult.csv"
    pd.DataFrame({"image": [str(root / f) for f in pick["file"]], "patient_id": pick["patient_id"].astype(str),
                  "dataset": "nih14_extra", "pneumonia": pick["Pneumonia"]}).to_csv(out, index=False)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def original(runs: Path, adult_manifest: Path) -> Path:
    """The 'shipped' bundle: one epoch on the adult films, thresholds by Youden on its validation split."""
    assert train_main(["finetune", "--manifest", str(adult_manifest), "--max-epochs", "1", "--backbone", "resnet18",
                       "--early-stop", "0", *common_args(runs, "orig")]) == 0  # fmt: skip
    bundle = runs / "orig" / "bundle"
    assert train_main(["calibrate", "--bundle", str(bundle), "--manifest", str(adult_manifest)]) == 0
    return bundle


@pytest.fixture(scope="module")
def site(data_dir: Path, runs: Path) -> tuple[Path, Path]:
    """60 Kermany films (30 normal, 30 pneumonia, one per patient) and the site's labels CSV."""
    root = data_dir / "pneumonia_kermany"
    labels = pd.read_csv(root / "labels.csv").drop_duplicates("patient_id")
    pick = pd.concat([labels[labels["pneumonia"] == v].sample(N_SITE // 2, random_state=1) for v in (0, 1)])
    out = runs / "site.csv"
    pick[["file", "pneumonia", "patient_id"]].to_csv(out, index=False)
    return root, out


def test_whole_site_loop(original: Path, site: tuple[Path, Path], runs: Path, adult_manifest: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from cxr_viewer.cli import main as viewer_main
    from cxr_viewer.core.corrections import CorrectionStore
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.results import Finding
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import find_bundles, load_bundle, read_manifest
    from cxr_viewer.core.site.profile import load_profile

    folder, labels_csv = site
    frame = pd.read_csv(labels_csv)
    orig = load_bundle(original, device="cpu")

    # 1-2. calibrate on the site's films; the profile is saved, versioned, bound to the weights
    rc, res = _json_out(["calibrate", "--site", "--bundle", str(original), "--folder", str(folder), "--labels",
                         str(labels_csv), "--target", "pneumonia=sensitivity:0.9", "--name", "kermany-ward", "--note",
                         "children's hospital", "--profiles-dir", str(runs / "profiles"), "--bootstrap", "100",
                         "--report", str(runs / "site_report.json")])  # fmt: skip
    assert rc == 0 and res["id"] == "kermany-ward v1"
    f = res["findings"]["pneumonia"]
    assert f["n_pos"] == N_SITE // 2 and f["n_neg"] == N_SITE // 2
    assert f["validated"] is False  # 15 calibration positives < 20
    report = json.loads((runs / "site_report.json").read_text())["findings"]["pneumonia"]
    ho = report["held_out"]
    print("SITE CALIBRATION (held-out site films):", json.dumps({
        "calibration": report["fit"]["calibration"]["method"], "auroc": report["auroc"],
        "ece_before": ho["ece_before"], "ece_after": ho["ece_after"],
        "sensitivity_before": [ho["before"]["sensitivity"], ho["before"]["sensitivity_ci95"], ho["before"]["threshold"]],
        "sensitivity_after": [ho["after"]["sensitivity"], ho["after"]["sensitivity_ci95"], ho["after"]["threshold"]],
        "specificity_before": ho["before"]["specificity"], "specificity_after": ho["after"]["specificity"]}))  # fmt: skip
    assert report["fit"]["held_out_part"]["n_images"] == N_SITE // 2
    assert ho["ece_before"]["ci95"] and ho["after"]["sensitivity_ci95"]
    assert ho["ece_after"]["value"] <= ho["ece_before"]["value"] + 0.02  # never worse beyond noise
    assert any("fewer than 20" in w for w in report["warnings"])
    prof = load_profile(res["profile"])
    assert prof.bundle["sha256"] == orig.sha256 and prof.note == "children's hospital" and prof.created

    # 3. analyse with it: the JSON and the DICOM SR name the profile; the scores are the calibrated ones.
    # Every site film in one call (one engine start-up): step 4's reader labels what it showed.
    films = [str(folder / p) for p in frame["file"]]
    out_json = runs / "analysis.json"
    models = ["--no-default-models", "--models", str(original.parent), "--backend", "torch", "--device", "cpu"]
    assert viewer_main(["analyze", *films, "--json", str(out_json), *models, "--site-profile", res["profile"]]) == 0
    shown = json.loads(out_json.read_text())
    assert len(shown) == N_SITE
    assert viewer_main(["analyze", str(SIIM), "--json", str(runs / "dicom.json"), *models, "--site-profile",
                        res["profile"], "--dicom-out", str(runs / "dicom")]) == 0  # a DICOM film: SR, SC, PDF
    objs = shown + json.loads((runs / "dicom.json").read_text())
    fp = prof.findings["pneumonia"]
    for obj in objs:
        assert obj["site_profile"]["name"] == "kermany-ward" and obj["site_profile"]["version"] == 1
        assert obj["site_profile"]["created"] == prof.created
        fd = obj["findings"][0]
        assert fd["threshold_method"] == "site profile kermany-ward v1: target sensitivity 0.9"
        assert fd["threshold"] == pytest.approx(fp.threshold, abs=1e-6)
        assert fd["score"] == pytest.approx(float(fp.calibration([fd["raw_score"]])[0]), abs=2e-3)
    sr_path = next((runs / "dicom").glob("SR_*.dcm"))
    assert dciodvfy_errors(sr_path) == []
    sr = pydicom.dcmread(sr_path)
    named = [str(item.TextValue) for item in sr.ContentSequence if getattr(item, "ValueType", "") == "TEXT"]
    assert any(t.startswith(f"kermany-ward v1, created {prof.created[:10]}") and orig.sha256[:16] in t for t in named)
    stale = json.loads(Path(res["profile"]).read_text())
    stale["bundle"]["sha256"] = "0" * 64
    (runs / "stale.json").write_text(json.dumps(stale))
    capsys.readouterr()
    assert viewer_main(["analyze", films[0], "--json", str(runs / "stale_out.json"), *models, "--site-profile",
                        str(runs / "stale.json")]) == 2  # a bundle update invalidates it
    assert "the model was updated" in capsys.readouterr().err

    # 4. the reader's labels of what the viewer showed, stored with provenance, exported by the CLI
    store = CorrectionStore(runs / "corrections")
    for row, obj in zip(frame.itertuples(), shown):
        fd = obj["findings"][0]
        finding = Finding(fd["label"], fd["score"], fd["threshold"], fd["model"], fd["model_version"],
                          fd["threshold_method"], fd["trained"], validated=fd.get("validated"), raw_score=fd["raw_score"])
        store.add_label(folder / row.file, "pneumonia", float(row.pneumonia), patient_id=str(row.patient_id),
                        content_hash=read_image(folder / row.file).content_hash, finding=finding, model_sha256=orig.sha256,
                        site_profile=prof.id, reader="test reader")  # fmt: skip
    first = store.all()[0]
    assert first.model == {"name": "orig", "version": orig.version, "sha256": orig.sha256}
    assert first.model_score == pytest.approx(shown[0]["findings"][0]["raw_score"])  # the model's own score
    assert first.model_state == shown[0]["findings"][0]["state"] and first.site_profile == "kermany-ward v1"
    manifest = runs / "site_manifest.csv"
    assert viewer_main(["export-corrections", "--out", str(manifest), "--store", str(store.folder)]) == 0
    exported = pd.read_csv(manifest)
    assert len(exported) == N_SITE and set(exported["patient_id"].astype(str)) == set(frame["patient_id"].astype(str))
    truth = dict(zip(frame["patient_id"].astype(str), frame["pneumonia"]))
    assert all(truth[str(r.patient_id)] == r.pneumonia for r in exported.itertuples())

    # 5-7. fine-tune a few steps on the site, compare on the same held-out split, gates, install
    install = runs / "user_models"
    capsys.readouterr()
    rc = train_main(["finetune", "--site", "--init", str(original), "--manifest", str(manifest), "--fraction", "1.0",
                     "--max-epochs", "2", "--early-stop", "0", "--val-frac", "0.2", "--test-frac", "0.4",
                     "--original-manifest", str(adult_manifest), "--site-bootstrap", "100", "--install",
                     "--install-dir", str(install), *common_args(runs, "site-ft")])  # fmt: skip
    out = capsys.readouterr()
    rep = json.loads(out.out.strip().splitlines()[-1])
    lab = rep["site_test"]["labels"]["pneumonia"]
    print("SITE FINE-TUNE (site test split):", json.dumps(lab), json.dumps(rep["gates"]))
    assert lab["original"]["ci95"] and lab["new"]["ci95"] and lab["difference"]["ci95"]
    assert rep["gates"]["golden"]["passed"] and rep["gates"]["golden"]["images"] == 2
    assert rep["gates"]["original_split"]["original"]["ci95"][0] is not None
    # An adult model at a children's hospital: two epochs on the site's films beat it on the site test split.
    assert rep["passed"], rep["gates"]
    assert rc == 0, out.err[-3000:]
    new = read_manifest(rep["installed"])
    assert new.name == "orig-site" and not new.enabled and load_bundle(rep["installed"]).manifest.golden
    assert new.site_version.replaces == orig.ref
    assert_written_back(Path(rep["installed"]))
    assert (original / "manifest.json").is_file()  # the old version stays for rollback
    # installed switched off: nothing loads it until the user enables it (Tools › Models…, tested in the viewer)
    shelf = [original.parent, install]
    assert [b.name for b in InferenceEngine.from_dirs(shelf, device="cpu").bundles] == ["orig"]
    enabled = InferenceEngine.from_dirs(shelf, device="cpu", enabled=["orig-site"])
    assert {b.name for b in enabled.bundles} == {"orig", "orig-site"}
    assert {i.manifest.name for i in find_bundles(shelf) if i.ok} == {"orig", "orig-site"}
    # the profile was fitted to the original: the new version needs its own calibration, and says so
    assert viewer_main(["analyze", films[0], "--json", str(runs / "new.json"), "--no-default-models", "--models",
                        str(install), "--backend", "torch", "--device", "cpu", "--site-profile",
                        res["profile"]]) == 2  # fmt: skip


def test_learning_curve_from_fractions(original: Path, site: tuple[Path, Path], runs: Path) -> None:
    """How many more labelled patients the trend needs for a target AUROC (fits on fractions of the site)."""
    folder, labels_csv = site
    frame = pd.read_csv(labels_csv)
    manifest = runs / "site_lc.csv"
    pd.DataFrame({"image": [str(folder / f) for f in frame["file"]], "patient_id": frame["patient_id"],
                  "pneumonia": frame["pneumonia"]}).to_csv(manifest, index=False)  # fmt: skip
    rc, out = _json_out(["experiment", "fractions", "--manifest", str(manifest), "--inits", "bundle", "--init",
                         str(original), "--fractions", "0.25", "1.0", "--max-epochs", "1", "--early-stop", "0",
                         "--bootstrap", "100", "--target-auroc", "0.99", "--test-frac", "0.4",
                         *common_args(runs, "lc")])  # fmt: skip
    assert rc == 0
    curve = json.loads((Path(out["results"]).parent / "learning_curve.json").read_text())["bundle"]
    print("LEARNING CURVE:", json.dumps(curve))
    assert len(curve["points"]) == 2 and curve["points"][0][0] < curve["points"][1][0]
    assert curve["message"] and (curve["patients_needed"] is None or curve["patients_needed"] > 0)
    assert "Labels needed" in Path(out["results"]).read_text()
