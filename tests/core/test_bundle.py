"""Bundles through the real save/load code: round trip, hash check, pickle refusal, bad manifests."""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from cxr_viewer.core.errors import BundleError, BundleHashMismatchError, UnknownModelError, UnsafeWeightsError
from cxr_viewer.core.models import create_model
from cxr_viewer.core.models.bundle import (
    Manifest,
    find_bundles,
    load_bundle,
    model_card_markdown,
    read_manifest,
    save_bundle,
)
from cxr_viewer.core.models.testing import make_untrained_bundle

torch.set_num_threads(2)

KW = {"backbone": "resnet18", "num_classes": 2}


def _manifest(**over) -> dict:
    m = {
        "name": "tiny",
        "version": "0.1.0",
        "task": "multilabel",
        "trained": True,
        "architecture": {"name": "classifier", "kwargs": dict(KW)},
        "labels": ["Effusion", "Nodule"],
        "thresholds": {"Effusion": {"value": 0.3, "method": "youden", "source": "validation split"}},
        "preprocessing": {"size": [64, 64]},
        "metrics": {"auroc": {"Effusion": {"value": 0.81, "ci95": [0.74, 0.88]}}},
    }
    m.update(over)
    return m


@pytest.fixture()
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("classifier", **KW).eval()


def test_round_trip_float32_is_exact(model, tmp_path: Path) -> None:
    out = save_bundle(model, _manifest(), tmp_path / "b", dtype="float32")
    b = load_bundle(out)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(b.model(x), model(x))
    assert not b.model.training
    assert b.manifest.threshold("Effusion") == 0.3 and b.manifest.threshold("Nodule") == 0.5
    assert b.manifest.cam_layers == ["backbone.layer4"]  # filled in by save_bundle
    assert b.describe()["sha256"] == json.loads((out / "manifest.json").read_text())["weights"]["sha256"]


def test_float16_storage_upcasts_and_stays_close(model, tmp_path: Path) -> None:
    out = save_bundle(model, _manifest(), tmp_path / "b")  # float16 default
    assert read_manifest(out).weights["dtype"] == "float16"
    b = load_bundle(out)
    assert all(p.dtype == torch.float32 for p in b.model.parameters())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref, got = model(x), b.model(x)
    assert torch.allclose(ref, got, atol=5e-2, rtol=1e-2)
    # a second save/load is bit-identical (fp16 values survive)
    out2 = save_bundle(b.model, b.manifest, tmp_path / "b2")
    with torch.no_grad():
        assert torch.equal(load_bundle(out2).model(x), got)


def test_tampered_weights_are_refused(model, tmp_path: Path) -> None:
    out = save_bundle(model, _manifest(), tmp_path / "b")
    w = out / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-10] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(BundleHashMismatchError, match="checksum"):
        load_bundle(out)


@pytest.mark.parametrize("suffix", [".pt", ".pkl", ".ckpt"])
def test_pickle_files_are_refused(model, tmp_path: Path, suffix: str) -> None:
    evil = tmp_path / f"weights{suffix}"
    evil.write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        load_bundle(evil)
    # named as weights inside a manifest
    out = save_bundle(model, _manifest(), tmp_path / "b")
    man = json.loads((out / "manifest.json").read_text())
    shutil.copy(evil, out / evil.name)
    man["weights"]["file"] = evil.name
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UnsafeWeightsError):
        load_bundle(out)


def test_pickle_disguised_as_safetensors_is_refused(model, tmp_path: Path) -> None:
    out = save_bundle(model, _manifest(), tmp_path / "b")
    (out / "model.safetensors").write_bytes(pickle.dumps({"w": 1}, protocol=4))
    with pytest.raises(UnsafeWeightsError):
        load_bundle(out)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"task": "regression"}, "task"),
        ({"labels": ["A"]}, "2 outputs but 1 labels"),
        ({"thresholds": {"Effusion": {"value": 1.7}}}, "[0, 1]"),
        ({"preprocessing": {"size": [64, 64], "resize": "squash"}}, "resize"),
        ({"architecture": "resnet"}, "architecture"),
        ({"schema_version": 99}, "update cxr-viewer"),
    ],
)
def test_malformed_manifest_gives_clear_error(model, tmp_path: Path, change: dict, words: str) -> None:
    out = save_bundle(model, _manifest(), tmp_path / "b")
    man = json.loads((out / "manifest.json").read_text())
    man.update(change)
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError) as info:
        load_bundle(out)
    assert words in info.value.message
    assert "invalid manifest" in info.value.message


def test_manifest_not_json_and_missing_weights(model, tmp_path: Path) -> None:
    out = save_bundle(model, _manifest(), tmp_path / "b")
    (out / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="missing its weights"):
        load_bundle(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(out)


def test_unknown_architecture_and_wrong_shapes(model, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not match"):
        save_bundle(model, _manifest(architecture={"name": "classifier", "kwargs": {"backbone": "resnet34", "num_classes": 2}}), tmp_path / "x")
    out = save_bundle(model, _manifest(), tmp_path / "b")
    man = json.loads((out / "manifest.json").read_text())
    man["architecture"]["name"] = "no_such_net"
    (out / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UnknownModelError, match="classifier"):
        load_bundle(out)


def test_zip_bundle_loads(model, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXR_VIEWER_CACHE", str(tmp_path / "cache"))
    out = save_bundle(model, _manifest(), tmp_path / "tiny")
    z = tmp_path / "tiny.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in out.iterdir():
            zf.write(f, f"tiny/{f.name}")
    b = load_bundle(z)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(b.model(x), load_bundle(out).model(x))
    found = find_bundles([tmp_path])
    assert {f.path.name for f in found} >= {"tiny", "tiny.zip"}


def test_find_bundles_reads_manifests_and_reports_broken(model, tmp_path: Path) -> None:
    make_untrained_bundle(tmp_path / "a", name="a", labels=["X"], size=(64, 64))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"name": 3}')
    found = {f.path.name: f for f in find_bundles([tmp_path, tmp_path / "absent"])}
    assert found["a"].ok and found["a"].enabled and found["a"].manifest.trained is False
    assert not found["broken"].ok and "name" in found["broken"].error


def test_model_card(model, tmp_path: Path) -> None:
    from cxr_viewer.core.models.card import model_card_markdown as the_renderer

    assert model_card_markdown is the_renderer  # the old import path is the one renderer
    m = Manifest.from_dict(_manifest())
    card = model_card_markdown(m)
    assert "| Effusion | None / None | 0.810 | 0.740 - 0.880 | 0.300 | youden on validation split |" in card
    assert m.weights.get("sha256", "") in card and "Research use only" in card and "## Limitations" in card
    assert "UNTRAINED" not in card
    untrained = model_card_markdown(_manifest(trained=False))
    assert "UNTRAINED — random weights" in untrained
    with_notes = model_card_markdown(m, {"data": ["NIH ChestX-ray14, patient-level split"], "citations": ["Wang 2017"]})
    assert "- NIH ChestX-ray14, patient-level split" in with_notes and "- Wang 2017" in with_notes


def test_manifest_round_trip_keeps_unknown_keys() -> None:
    d = _manifest(future_field={"x": 1})
    m = Manifest.from_dict(d)
    assert m.extra == {"future_field": {"x": 1}}
    assert Manifest.from_dict(m.to_dict()).to_dict() == m.to_dict()


def test_onnx_export_recorded_in_the_manifest_matches_torch(model, tmp_path: Path) -> None:
    import numpy as np

    from cxr_viewer.core.inference.onnx_export import export_bundle
    from cxr_viewer.core.inference.onnx_runtime import ort_session

    out = save_bundle(model, _manifest(), tmp_path / "b")
    rec = export_bundle(out)
    man = read_manifest(out)
    assert man.onnx.to_dict() == rec and man.onnx.weights_sha256 == man.weights["sha256"]
    assert rec["file"] == "onnx/classifier.onnx" and rec["verified"]["inputs"]["samples"] == 2
    b = load_bundle(out)
    assert b.onnx is not None and b.onnx.sha256 == rec["sha256"]
    x = torch.randn(3, 1, 64, 64)
    with torch.no_grad():
        ref = b.model(x).numpy()
    got = ort_session(out / rec["file"]).run(["logits"], {"input": x.numpy()})[0]
    assert np.abs(got - ref).max() <= 1e-4
    # saving other weights over the bundle drops the now-stale record
    save_bundle(create_model("classifier", **KW), _manifest(), out)
    assert read_manifest(out).onnx is None and "onnx" not in json.loads((out / "manifest.json").read_text())


def test_find_bundles_rereads_only_changed_manifests(tmp_path: Path, monkeypatch) -> None:
    import cxr_viewer.core.models.bundle as bundle_mod

    make_untrained_bundle(tmp_path / "a", name="a", labels=["X"], size=(64, 64))
    make_untrained_bundle(tmp_path / "b", name="b", labels=["Y"], size=(64, 64))
    reads: list[str] = []
    real = bundle_mod.read_manifest
    monkeypatch.setattr(bundle_mod, "read_manifest", lambda p: reads.append(Path(p).name) or real(p))
    first = find_bundles([tmp_path])
    assert sorted(reads) == ["a", "b"]
    first[0].manifest.labels.append("mutated by a caller")  # callers get copies
    again = find_bundles([tmp_path])
    assert sorted(reads) == ["a", "b"] and again[0].manifest.labels == ["X"]
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    man["description"] = "changed on disk"
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(man, indent=1))
    third = {i.path.name: i for i in find_bundles([tmp_path])}
    assert sorted(reads) == ["a", "b", "b"] and third["b"].manifest.description == "changed on disk"
