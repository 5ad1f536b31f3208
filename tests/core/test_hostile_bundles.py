"""Hostile model bundles, built here for real: each is refused (alone) or cannot make the viewer run what it brings."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_viewer.core.errors import BundleError, BundleHashMismatchError
from cxr_viewer.core.inference.engine import InferenceEngine
from cxr_viewer.core.io import read_image
from cxr_viewer.core.models.bundle import find_bundles, load_bundle, read_manifest, sha256_file
from cxr_viewer.core.models.testing import make_untrained_bundle

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "samples" / "nih_chest.png"


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_untrained_bundle(tmp_path_factory.mktemp("good") / "good", name="good", labels=["A", "B"], size=(64, 64))


def _copy(src: Path, dest: Path, **manifest_over) -> Path:
    shutil.copytree(src, dest)
    if manifest_over:
        m = json.loads((dest / "manifest.json").read_text())
        for key, value in manifest_over.items():
            if isinstance(value, dict) and isinstance(m.get(key), dict):
                m[key].update(value)
            else:
                m[key] = value
        (dest / "manifest.json").write_text(json.dumps(m))
    return dest


# ----------------------------------------------------------------------------- paths that leave the bundle
@pytest.mark.parametrize("over", [
    {"weights": {"file": "../good/model.safetensors"}},
    {"weights": {"file": "/etc/model.safetensors"}},
    {"onnx": {"schema": 2, "file": "../../elsewhere/classifier.onnx", "sha256": "0" * 64}},
    {"onnx": {"schema": 2, "file": "C:\\\\models\\\\x.onnx", "sha256": "0" * 64}},
    {"golden": [{"image": "../../../etc/passwd", "scores": {}}]},
])
def test_every_manifest_path_must_stay_inside(good: Path, tmp_path: Path, over: dict) -> None:
    bad = _copy(good, tmp_path / "models" / "bad", **over)
    (info,) = find_bundles([tmp_path / "models"])
    assert not info.ok and "must stay inside the bundle folder" in (info.error or "")
    with pytest.raises(BundleError, match="must stay inside the bundle folder"):
        load_bundle(bad)


def test_a_link_out_of_the_bundle_is_refused(good: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(good / "model.safetensors", outside)
    bad = _copy(good, tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    (bad / "model.safetensors").symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(bad)


# ----------------------------------------------------------------------------- ONNX artefacts
def _hostile_export(bundle_dir: Path) -> None:
    """Replace the recorded export by a graph that equals the weights on noise and scores real films 0.0.

    Normalised radiographs never exceed (1 - 0.5) / 0.25 = 2, fixed-seed noise always does: the
    graph tells them apart by the input's maximum. The manifest's record is updated to match, as
    an attacker who can write the bundle would.
    """
    from torch import nn

    from cxr_viewer.core.inference.onnx_export import _export, _WithFeatures

    b = load_bundle(bundle_dir)
    inner = _WithFeatures.build(b.model, b.manifest.cam_layers[0])

    class Hostile(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits, feats = self.inner(x)
            real = (x.amax(dim=(1, 2, 3)) < 2.5)[:, None]
            return torch.where(real, torch.full_like(logits, -30.0), logits), feats

    path = bundle_dir / "onnx" / "classifier.onnx"
    _export(Hostile().eval(), (torch.zeros(1, 1, 64, 64),), path, ["input"], ["logits", "features"],
            {"input": {0: "batch"}, "logits": {0: "batch"}, "features": {0: "batch"}})
    inner.handle.remove()
    m = json.loads((bundle_dir / "manifest.json").read_text())
    m["onnx"]["sha256"] = sha256_file(path)
    (bundle_dir / "manifest.json").write_text(json.dumps(m))


def test_an_export_that_agrees_only_on_noise_is_never_run(good: Path, tmp_path: Path) -> None:
    from cxr_viewer.core.inference.onnx_export import export_bundle

    bdir = _copy(good, tmp_path / "hostile")
    assert export_bundle(bdir) is not None
    _hostile_export(bdir)
    record = read_image(SAMPLE)
    ref = InferenceEngine([load_bundle(bdir)], device="cpu", backend="torch").analyze(record)
    engine = InferenceEngine([load_bundle(bdir)], device="cpu", backend="onnx")
    got = engine.analyze(record)
    # verification on the sample radiographs catches it: torch runs, and the result says so
    assert got.backend == {"good": "torch"}
    assert got.models[0]["executed"] == {"backend": "torch", "sha256": got.models[0]["sha256"], "source": "weights"}
    assert [f.score for f in got.findings] == pytest.approx([f.score for f in ref.findings], abs=1e-6)
    assert all(f.score > 1e-6 for f in got.findings)


def test_without_torch_the_hash_of_what_ran_is_reported(good: Path, tmp_path: Path, monkeypatch) -> None:
    from cxr_viewer.core.inference.onnx_export import export_bundle

    bdir = _copy(good, tmp_path / "exported")
    rec = export_bundle(bdir)
    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    result = InferenceEngine([load_bundle(bdir)]).analyze(read_image(SAMPLE))
    (m,) = result.models
    assert m["executed"] == {"backend": "onnx", "sha256": rec["sha256"], "source": "bundle"}
    assert m["sha256"] == read_manifest(bdir).weights["sha256"] != rec["sha256"]
    # a changed graph file is refused before anything runs
    onnx = bdir / rec["file"]
    onnx.write_bytes(onnx.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(BundleHashMismatchError, match="does not match its recorded checksum"):
        load_bundle(bdir)


def test_a_planted_cache_file_is_never_run(good: Path, tmp_path: Path, monkeypatch) -> None:
    """No export from the user cache is trusted: the CPU backend regenerates one from the verified weights."""
    monkeypatch.setenv("CXR_VIEWER_CACHE", str(tmp_path / "cache"))
    b = load_bundle(good)
    planted = tmp_path / "cache" / "onnx" / f"{b.sha256[:32]}.onnx"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"planted")
    result = InferenceEngine([b], device="cpu", backend="onnx").analyze(read_image(SAMPLE))
    ex = result.models[0]["executed"]
    assert ex["backend"] == "onnx" and ex["source"] == "regenerated" and ex["sha256"] != sha256_file(planted)
    assert {p.name for p in (tmp_path / "cache").rglob("*")} == {"onnx", planted.name}


# ----------------------------------------------------------------------------- zips, JSON, degenerate tasks
def _zip(src: Path, out: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in src.iterdir():
            if f.is_file():
                zf.write(f, f"b/{f.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return out


def test_zip_bombs_are_refused(good: Path, tmp_path: Path, monkeypatch) -> None:
    import cxr_viewer.core.models.bundle as bundle_mod

    monkeypatch.setenv("CXR_VIEWER_CACHE", str(tmp_path / "cache"))
    many = _zip(good, tmp_path / "many.zip", {f"b/pad/{i}.txt": b"" for i in range(bundle_mod.MAX_ZIP_MEMBERS)})
    with pytest.raises(BundleError, match=f"at most {bundle_mod.MAX_ZIP_MEMBERS}"):
        load_bundle(many)
    real = sum(f.stat().st_size for f in good.iterdir() if f.is_file())
    monkeypatch.setattr(bundle_mod, "MAX_ZIP_BYTES", real + (1 << 20))
    big = _zip(good, tmp_path / "big.zip", {"b/pad.bin": b"\0" * (8 << 20)})  # 8 MB of zeros, a few KB zipped
    assert zipfile.ZipFile(big).getinfo("b/pad.bin").compress_size < 64 << 10
    with pytest.raises(BundleError, match="would extract to"):
        load_bundle(big)
    assert not any((tmp_path / "cache").rglob("pad.bin"))
    assert load_bundle(_zip(good, tmp_path / "fine.zip")).name == "good"


def test_deeply_nested_manifest_refuses_that_bundle_only(good: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    _copy(good, models / "good")
    deep = models / "deep"
    deep.mkdir()
    depth = 200_000
    (deep / "manifest.json").write_text('{"name": "deep", "provenance": ' + "[" * depth + "]" * depth + "}")
    found = {i.path.name: i for i in find_bundles([models])}
    assert found["good"].ok
    assert not found["deep"].ok and "nested too deeply" in (found["deep"].error or "")
    engine = InferenceEngine.from_dirs([models], device="cpu", backend="torch")
    assert [b.name for b in engine.bundles] == ["good"]
    assert [p.name for p, _ in engine.load_errors] == ["deep"]


def test_degenerate_bundles_are_refused_at_load(good: Path, tmp_path: Path) -> None:
    one = make_untrained_bundle(tmp_path / "ok1", name="one", labels=["Only"], size=(64, 64))
    m = json.loads((one / "manifest.json").read_text())
    m["task"] = "multiclass"  # softmax over one label: always 1.0
    (one / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="at least two labels"):
        load_bundle(one)
    huge = _copy(good, tmp_path / "huge", preprocessing={"size": [30000, 30000]})
    with pytest.raises(BundleError, match="at most 2048 pixels a side"):
        load_bundle(huge)
    assert np.isfinite(InferenceEngine([load_bundle(good)], device="cpu", backend="torch")
                       .analyze(read_image(SAMPLE)).findings[0].score)
