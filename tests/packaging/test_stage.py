"""packaging/stage.py: what the frozen app will ship, staged from bundle folders (tiny real bundles)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"cxr_packaging_{name}", REPO / "packaging" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_ships_viewer_bundles_with_verified_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import load_bundle, read_manifest, save_bundle
    from cxr_viewer.core.models.testing import make_untrained_bundle

    models = tmp_path / "models"
    make_untrained_bundle(models / "clf", name="clf", labels=["A", "B"], size=(64, 64))
    save_bundle(create_model("text_unet_tiny", text_dim=384), {
        "name": "seg", "version": "0", "task": "text_segmentation",
        "architecture": {"name": "text_unet_tiny", "kwargs": {"text_dim": 384}}, "labels": ["region"],
        "preprocessing": {"size": [64, 64]}, "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384},
    }, models / "seg")  # fmt: skip
    save_bundle(create_model("encoder", backbone="resnet18"), {
        "name": "ssl", "version": "0", "task": "ssl_encoder",
        "architecture": {"name": "encoder", "kwargs": {"backbone": "resnet18"}},
    }, models / "ssl")  # fmt: skip
    from cxr_viewer.core.inference.onnx_export import TEXT_FLOAT16_ATOL, export_bundle

    clf_rec = export_bundle(models / "clf")  # a bundle that carries its export, as the default ones do
    assert clf_rec is not None
    broken = models / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    source_files = sorted(p.relative_to(models) for p in models.rglob("*"))

    stage = _load_script("stage")
    failures = stage.stage([models], tmp_path / "stage")
    out = capsys.readouterr().out
    res = tmp_path / "stage" / "resources"
    assert failures == 1 and re.search(r"FAIL  broken: .*not valid JSON", out)
    assert "SKIP  ssl 0: task ssl_encoder is not run by the viewer" in out
    assert sorted(p.name for p in (res / "models").iterdir()) == ["clf", "seg"]
    assert read_manifest(res / "models" / "clf").onnx.exact_cam is True
    assert read_manifest(res / "models" / "seg").onnx.conditioned is True
    assert re.search(r"OK    clf 0[^:]*: onnx/classifier.onnx recorded, re-verified", out), out
    assert re.search(r"OK    seg 0[^:]*: onnx/segmenter.onnx exported, verified", out), out
    staged = read_manifest(res / "models" / "clf").onnx
    assert staged.sha256 == clf_rec["sha256"]  # the frozen app runs the very file a normal install runs
    assert "text encoder all-MiniLM-L6-v2: recorded, re-verified" in out  # the repository's resources/text
    text_rec = json.loads((res / "text" / "all-MiniLM-L6-v2" / "onnx.json").read_text())
    assert text_rec["verified"]["embedding_max_abs_diff"] <= TEXT_FLOAT16_ATOL
    assert (res / "samples" / "siim_cr_chest.dcm").is_file()
    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    for name in ("clf", "seg"):  # staged bundles load without torch, checksums and all
        b = load_bundle(res / "models" / name)
        assert b.model is None and b.onnx is not None and b.sha256
    assert sorted(p.relative_to(models) for p in models.rglob("*")) == source_files  # sources untouched


def test_spec_leaves_the_torch_stack_and_trainer_out() -> None:
    text = (REPO / "packaging" / "cxr-viewer.spec").read_text()
    excludes = set(re.findall(r'"([\w.]+)"', text[text.index("EXCLUDES = [") : text.index("]  # fmt: skip")]))
    assert {"torch", "torchvision", "timm", "segmentation_models_pytorch", "pytorch_grad_cam", "transformers",
            "lightning", "pytorch_lightning", "trainer", "cxr_viewer.core.inference.onnx_export"} <= excludes
    check = _load_script("check_bundle")
    assert {"torch", "lightning", "transformers", "nvidia"} <= set(check.FORBIDDEN)
