"""`cxr-viewer analyze` and `--self-test` end to end, with tiny random-weight bundles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_viewer.core.models.testing import make_untrained_bundle
from cxr_viewer.headless import analyze_main, self_test_main

SIIM = "siim_pneumothorax_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_models")
    make_untrained_bundle(root / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64), seed=5)
    make_untrained_bundle(root / "tb", name="tb", labels=["Tuberculosis"], size=(64, 64), seed=6)
    return root


@pytest.fixture(scope="module")
def png(data_dir: Path) -> Path:
    return sorted((data_dir / "nih14" / "images").iterdir())[0]


def test_analyze_subprocess_good_and_bad_inputs(models: Path, dicom_dir: Path, png: Path, tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.dcm"  # a real DICOM cut off inside its pixel data
    bad.write_bytes((dicom_dir / "pydicom-data_RG1_UNCR.dcm").read_bytes()[:200_000])
    out = tmp_path / "result.json"
    env = {**os.environ, "CXR_VIEWER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_viewer.cli", "analyze", str(dicom_dir / SIIM), str(png), str(bad),
         "--no-default-models", "--models", str(models), "--json", str(out), "--cam", "Nodule", "--cam-out", str(tmp_path / "cams"),
         "--backend", "torch", "--threads", "2"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    data = json.loads(out.read_text())
    assert [d["status"] for d in data] == ["ok", "ok", "error"]
    assert data[0]["file"] == str(dicom_dir / SIIM)
    assert data[2]["error"]["code"] not in ("", "internal_error") and data[2]["error"]["message"]
    for d in data[:2]:
        labels = [(f["model"], f["label"]) for f in d["findings"]]
        assert labels == [("nih", "Effusion"), ("nih", "Nodule"), ("tb", "Tuberculosis")]
        for f in d["findings"]:
            assert 0 <= f["score"] <= 1 and f["positive"] == (f["score"] >= f["threshold"] and f.get("validated") is not False and "outside_population" not in f)
        assert {m["name"] for m in d["models"]} == {"nih", "tb"} and all(len(m["sha256"]) == 64 for m in d["models"])
        assert {"read", "preprocess", "inference:nih", "inference:tb", "cam"} <= set(d["timing_ms"])
        assert isinstance(d["qc"], list)
        cam = d["cam"]
        assert cam["label"] == "Nodule" and cam["method"] == "gradcam" and isinstance(cam["faithfulness"], float)
        img = Image.open(cam["path"])
        assert img.mode == "L" and img.size == (d["image"]["columns"], d["image"]["rows"])
    assert Image.open(data[1]["cam"]["path"]).size == Image.open(png).size


def test_analyze_in_process_stdout_npy_and_reserved_report(models: Path, png: Path, tmp_path: Path, capsys) -> None:
    rc = analyze_main([str(png), "--no-default-models", "--models", str(models), "--cam", "Tuberculosis", "--cam-format", "npy",
                       "--cam-method", "eigencam", "--no-faithfulness", "--cam-out", str(tmp_path), "--backend", "torch"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    arr = np.load(data[0]["cam"]["path"])
    assert arr.dtype == np.float32 and arr.shape == (data[0]["image"]["rows"], data[0]["image"]["columns"])
    assert data[0]["cam"]["faithfulness"] is None
    # unknown CAM label and the reserved segmentation options: clear errors in the JSON, exit 2
    rc = analyze_main([str(png), "--no-default-models", "--models", str(models), "--cam", "Cardiomegaly", "--report", "left effusion",
                       "--backend", "torch"])
    assert rc == 2
    obj = json.loads(capsys.readouterr().out)[0]
    assert obj["status"] == "ok" and obj["cam"]["error"]["code"] == "unknown_label"
    assert obj["segmentation"]["error"]["code"] == "no_segmentation_model"


def test_analyze_without_models_still_reads_and_checks(tmp_path: Path, png: Path, capsys) -> None:
    small = tmp_path / "small.png"
    Image.open(png).convert("L").resize((128, 128)).save(small)
    rc = analyze_main([str(small), "--no-default-models", "--models", str(tmp_path / "empty")])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)[0]
    assert obj["status"] == "ok" and obj["findings"] == []
    assert any("no models found" in w.lower() for w in obj["warnings"])
    assert "low_resolution" in {q["code"] for q in obj["qc"]}


def test_self_test_passes_then_detects_changes(tmp_path: Path, png: Path, capsys) -> None:
    from cxr_viewer.core.inference.golden import add_golden

    b = make_untrained_bundle(tmp_path / "m" / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64), seed=7)
    entries = add_golden(b, [png])
    assert entries[0]["image"].startswith("golden/") and set(entries[0]["scores"]) == {"Effusion", "Nodule"}
    assert self_test_main(["--no-default-models", "--models", str(tmp_path / "m"), "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "OK    nih 0.0.0 [UNTRAINED]" in out and "1 golden image(s) match" in out
    # a recorded score that no longer matches
    man = json.loads((b / "manifest.json").read_text())
    man["golden"][0]["scores"]["Nodule"] += 0.01
    (b / "manifest.json").write_text(json.dumps(man))
    assert self_test_main(["--no-default-models", "--models", str(tmp_path / "m"), "--backend", "torch"]) == 1
    assert "FAIL  nih 0.0.0" in capsys.readouterr().out
    # tampered weights
    man["golden"][0]["scores"]["Nodule"] -= 0.01
    (b / "manifest.json").write_text(json.dumps(man))
    w = b / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-3] ^= 0x55
    w.write_bytes(bytes(data))
    assert self_test_main(["--no-default-models", "--models", str(tmp_path / "m")]) == 1
    assert "checksum" in capsys.readouterr().out


def test_analyze_report_writes_one_mask_per_sentence(models: Path, png: Path, tmp_path: Path, capsys) -> None:
    """--report/--mask-out: one 0/255 PNG per report sentence, at the input's size, listed as `masks`."""
    import torch

    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    torch.manual_seed(0)
    seg_dir = tmp_path / "seg_models"
    save_bundle(create_model("text_unet_tiny", text_dim=384), {
        "name": "seg-test", "version": "0.0.1", "task": "text_segmentation", "trained": False,
        "architecture": {"name": "text_unet_tiny", "kwargs": {"text_dim": 384}},
        "labels": ["region"], "thresholds": {"region": {"value": 0.5, "method": "test"}},
        "preprocessing": {"size": [64, 64], "resize": "letterbox"},
        "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384},
    }, seg_dir / "seg", dtype="float32")  # fmt: skip
    report = "FINDINGS: Right lower lobe opacity. The left lung is clear. IMPRESSION: Pneumonia in the right lung."
    out = tmp_path / "masks"
    rc = analyze_main([str(png), "--no-default-models", "--models", str(models), "--models", str(seg_dir),
                       "--report", report, "--mask-out", str(out), "--backend", "torch"])
    assert rc == 0
    obj = json.loads(capsys.readouterr().out)[0]
    assert obj["segmentation"]["model"]["name"] == "seg-test"
    texts = [m["text"] for m in obj["masks"]]
    assert len(texts) == 3 and "Right lower lobe opacity." in texts[0]
    size = Image.open(png).size
    for m in obj["masks"]:
        img = np.asarray(Image.open(m["path"]))
        assert img.shape == (size[1], size[0]) and img.dtype == np.uint8
        assert set(np.unique(img)) <= {0, 255}
        assert abs(m["area_fraction"] - float((img > 0).mean())) < 1e-3
    assert len({m["path"] for m in obj["masks"]}) == 3
    assert "segment" in obj["timing_ms"]


def test_batched_analyze_with_reader_thread_equals_one_at_a_time(models: Path, data_dir: Path, dicom_dir: Path,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    """--batch N (batched forwards, decode + preprocess on a reader thread) writes what --batch 1 writes,
    input for input, errors and duplicates included; only the timings differ."""
    films = sorted((data_dir / "nih14" / "images").iterdir())[:5]
    files = [str(f) for f in films[:3]] + [str(tmp_path / "missing.png"), str(dicom_dir / SIIM), str(films[0]),
                                           *map(str, films[3:5])]  # fmt: skip
    outs = {}
    for n in (1, 3):
        out = tmp_path / f"b{n}.json"
        rc = analyze_main([*files, "--no-default-models", "--models", str(models), "--json", str(out),
                           "--backend", "torch", "--batch", str(n)])  # fmt: skip
        assert rc == 2  # the missing file
        outs[n] = [{k: v for k, v in d.items() if k != "timing_ms"} for d in json.loads(out.read_text())]
    assert [d["file"] for d in outs[3]] == files
    assert [d["status"] for d in outs[3]] == ["ok"] * 3 + ["error"] + ["ok"] * 4
    for one, many in zip(outs[1], outs[3]):
        for f1, f3 in zip(one.get("findings", []), many.pop("findings", [])):
            assert f3.pop("score") == pytest.approx(f1.pop("score"), abs=1e-5)
            assert f3 == f1
        one.pop("findings", None)
        assert many == one


def test_analyze_judges_with_the_readers_threshold_and_refuses_a_bad_one(models: Path, png: Path, tmp_path: Path,
                                                                        capsys) -> None:
    out = tmp_path / "a.json"
    assert analyze_main([str(png), "--json", str(out), "--models", str(models), "--no-default-models"]) == 0
    (plain,) = json.loads(out.read_text())
    f = plain["findings"][0]
    flip = max(0.0, f["score"] - 1e-3) if f["state"] != "positive" else min(1.0, f["score"] + 1e-3)
    assert analyze_main([str(png), "--json", str(out), "--models", str(models), "--no-default-models",
                         "--threshold", f"{f['model']}:{f['label']}={flip}"]) == 0
    (mine,) = json.loads(out.read_text())
    g = next(x for x in mine["findings"] if (x["model"], x["label"]) == (f["model"], f["label"]))
    assert g["threshold"] == pytest.approx(flip) and g["threshold_source"] == "user" and g["score"] == f["score"]
    assert g["above_threshold"] != f["above_threshold"]
    capsys.readouterr()
    assert analyze_main([str(png), "--json", str(out), "--models", str(models), "--no-default-models",
                         "--threshold", "Nothing=0.2"]) == 2
    assert "no model has a finding named 'Nothing'" in capsys.readouterr().err
