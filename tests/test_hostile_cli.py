"""`cxr-viewer analyze` facing hostile bundles and inputs: refusals are named and fail the run,
non-finite values never reach the JSON (which every strict parser reads)."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_viewer.core.models.testing import make_untrained_bundle
from cxr_viewer.headless import EXIT_MODELS_REFUSED, analyze_main


def _strict(text: str) -> object:
    """json.loads that fails on NaN / Infinity literals, as RFC 8259 parsers do."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-JSON literal {name}")
    return json.loads(text, parse_constant=refuse)


def _bundle(root: Path, name: str, seed: int) -> Path:
    return make_untrained_bundle(root / name, name=name, labels=["Effusion", "Nodule"], backbone="resnet10t",
                                 size=(64, 64), seed=seed)


@pytest.fixture(scope="module")
def small_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("img") / "small.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(f)
    return f


def test_every_bundle_refused_fails_the_run_and_names_them(tmp_path: Path, small_png: Path, capsys) -> None:
    root = tmp_path / "models"
    tampered = _bundle(root, "tampered", 1)
    w = tampered / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    pickled = _bundle(root, "pickled", 2)
    (pickled / "model.safetensors").write_bytes(pickle.dumps({"w": 1}, protocol=4))
    huge = _bundle(root, "huge-input", 3)
    man = json.loads((huge / "manifest.json").read_text())
    man["preprocessing"]["size"] = [30000, 30000]  # reached 15 GB before the bound
    (huge / "manifest.json").write_text(json.dumps(man))

    rc = analyze_main([str(small_png), "--no-default-models", "--models", str(root), "--backend", "torch"])
    captured = capsys.readouterr()
    assert rc == EXIT_MODELS_REFUSED
    obj = _strict(captured.out)[0]
    assert obj["status"] == "error" and obj["error"]["code"] == "models_refused"
    msg = obj["error"]["message"]
    assert "(3) was refused" in msg
    for name in ("tampered", "pickled", "huge-input"):
        assert name in msg
    assert "at most 2048" in msg
    assert obj["warnings"][0].startswith("model bundle ") and "refused" in obj["warnings"][0]
    assert not any(w.lower().startswith("no models found") for w in obj["warnings"])
    assert obj["findings"] == [] and isinstance(obj["qc"], list)  # the image checks still ran
    assert "was refused" in captured.err


def test_no_bundles_at_all_is_not_a_refusal(tmp_path: Path, small_png: Path, capsys) -> None:
    rc = analyze_main([str(small_png), "--no-default-models", "--models", str(tmp_path / "empty")])
    assert rc == 0
    assert _strict(capsys.readouterr().out)[0]["status"] == "ok"


def test_nan_pixels_give_finite_scores_and_strict_json(tmp_path: Path, capsys) -> None:
    import pydicom

    from tests.core.test_io_dicom_synthetic import make_dicom

    root = tmp_path / "models"
    _bundle(root, "m", 4)
    f = make_dicom(tmp_path / "f.dcm", None, Rows=64, Columns=64, SamplesPerPixel=1,
                   PhotometricInterpretation="MONOCHROME2", BitsAllocated=32, WindowCenter=50, WindowWidth="1e308")
    ds = pydicom.dcmread(f)
    arr = np.linspace(0, 100, 64 * 64, dtype=np.float32).reshape(64, 64)
    arr[::7, ::5] = np.nan
    arr[3, :] = np.inf
    ds.FloatPixelData = arr.tobytes()
    ds.save_as(f)
    rc = analyze_main([str(f), "--no-default-models", "--models", str(root), "--backend", "torch"])
    obj = _strict(capsys.readouterr().out)[0]
    assert rc == 0 and obj["status"] == "ok"
    assert obj["findings"] and all(math.isfinite(x["score"]) for x in obj["findings"])
    notices = " ".join(obj["image"]["notices"])
    assert "not numbers" in notices and "window" in notices


def test_model_giving_nan_is_an_error_not_a_negative(tmp_path: Path, small_png: Path, capsys) -> None:
    """A bundle whose (hash-verified) weights hold NaN scores NaN: the JSON says so, exit non-zero."""
    import torch

    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    kwargs = {"backbone": "resnet10t", "num_classes": 2}
    model = create_model("classifier", **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_bundle(model, {
        "name": "nan-model", "version": "0.0.1", "task": "multilabel", "trained": True,
        "architecture": {"name": "classifier", "kwargs": kwargs}, "labels": ["Effusion", "Nodule"],
        "preprocessing": {"size": [64, 64]},
    }, tmp_path / "models" / "nan", dtype="float32")
    rc = analyze_main([str(small_png), "--no-default-models", "--models", str(tmp_path / "models"),
                       "--backend", "torch"])
    obj = _strict(capsys.readouterr().out)[0]
    assert rc != 0
    assert obj["status"] == "error" and obj["error"]["code"] == "non_finite_result"
    assert "findings[0].score" in obj["error"]["message"]
    assert all(f["score"] is None for f in obj["findings"])
