"""The ONNX Runtime backend (the torch-free app) against torch: same pixels in, same scores, heatmaps and masks out.

Tiny real models (ResNet-18 classifier, tiny text U-Net) and the real MiniLM text
encoder; the exports are made by the same code ``packaging/stage.py`` runs. The last
tests run the headless commands in a subprocess where importing torch (or any
training package) fails, as in the frozen CPU app.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_viewer.core.errors import BundleError, BundleHashMismatchError, InferenceError

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "resources" / "samples"
LABELS = ["Atelectasis", "Effusion", "Pneumothorax"]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lane_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: classifier with golden images, segmentation bundle, both exported."""
    from cxr_viewer.core.inference.golden import add_golden
    from cxr_viewer.core.inference.onnx_export import export_bundle
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle
    from cxr_viewer.core.models.testing import make_untrained_bundle

    root = tmp_path_factory.mktemp("lane_models")
    clf = make_untrained_bundle(root / "findings", name="findings", labels=LABELS, size=(96, 96), seed=1)
    add_golden(clf, [SAMPLES / "siim_cr_chest.dcm", SAMPLES / "nih_chest.png"])
    torch.manual_seed(0)
    seg = create_model("text_unet_tiny", text_dim=384)
    save_bundle(seg, {
        "name": "report-seg", "version": "0.0.1", "task": "text_segmentation", "trained": False,
        "architecture": {"name": "text_unet_tiny", "kwargs": {"text_dim": 384}},
        "labels": ["region"], "thresholds": {"region": {"value": 0.45, "method": "test"}},
        "preprocessing": {"size": [64, 64], "resize": "letterbox"},
        "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384},
    }, root / "report-seg", dtype="float32")  # fmt: skip
    rec_c = export_bundle(clf)
    rec_s = export_bundle(root / "report-seg")
    assert rec_c is not None and rec_s is not None
    return root


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxr_viewer.core.inference.onnx_export import export_text_encoder

    out = tmp_path_factory.mktemp("text") / "all-MiniLM-L6-v2"
    rec = export_text_encoder(out, float16=False)  # the export itself is exact; float16 storage: test_quick_start
    assert rec["verified"]["embedding_max_abs_diff"] <= 1e-5
    return out


@pytest.fixture(scope="module")
def record():
    from cxr_viewer.core.io import read_image

    return read_image(SAMPLES / "siim_cr_chest.dcm")


# ----------------------------------------------------------------------------- classifiers
def _onnx_bundle(path: Path, monkeypatch: pytest.MonkeyPatch):
    """The bundle as the torch-free app loads it: weights verified, the recorded ONNX export, no network in torch."""
    from cxr_viewer.core.models.bundle import load_bundle

    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    try:
        return load_bundle(path)
    finally:
        monkeypatch.delenv("CXR_VIEWER_NO_TORCH")


def _onnx_engine(bundles, monkeypatch: pytest.MonkeyPatch, **kw):
    from cxr_viewer.core.inference.engine import InferenceEngine

    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    return InferenceEngine(bundles, **kw)


def test_export_records_the_gap_linear_identity(lane_models: Path) -> None:
    from cxr_viewer.core.models.bundle import read_manifest

    rec = read_manifest(lane_models / "findings").onnx.to_dict()
    assert rec["cam"]["exact"] is True and rec["cam"]["layer"] == "backbone.layer4"
    assert rec["cam"]["gap_linear_max_diff"] < 1e-4
    assert rec["verified"]["logits_max_abs_diff"] < 1e-4
    # verified on the bundle's golden images and the sample radiographs, not on noise alone
    assert rec["verified"]["inputs"] == {"golden": 2, "samples": 2, "noise": 2}


def test_onnx_scores_equal_torch_and_golden(lane_models: Path, record, monkeypatch) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.golden import check_golden
    from cxr_viewer.core.models.bundle import load_bundle

    torch_engine = InferenceEngine([load_bundle(lane_models / "findings")], device="cpu", backend="torch")
    onnx_bundle = _onnx_bundle(lane_models / "findings", monkeypatch)
    assert onnx_bundle.model is None and onnx_bundle.onnx is not None
    onnx_engine = _onnx_engine([onnx_bundle], monkeypatch)
    ref = torch_engine.analyze(record)
    got = onnx_engine.analyze(record)
    assert got.backend == {"findings": "onnx"}
    assert [f.label for f in got.findings] == LABELS
    np.testing.assert_allclose([f.score for f in got.findings], [f.score for f in ref.findings], atol=1e-5)
    assert [f.threshold for f in got.findings] == [f.threshold for f in ref.findings]
    check = check_golden(onnx_bundle, engine=onnx_engine)
    assert check.ok and check.images == 2 and check.max_diff < 1e-4, check.failures


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam", "gradcam++", "layercam", "eigencam", "scorecam"])
def test_onnx_heatmap_equals_pytorch_grad_cam(lane_models: Path, record, method: str, monkeypatch) -> None:
    """Closed forms from the exported feature map == the library's gradient path, label by label."""
    from cxr_viewer.core.inference.backends.ort_backend import OrtClassifier
    from cxr_viewer.core.inference.backends.torch_backend import TorchClassifier
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.preprocess import preprocess

    tb = load_bundle(lane_models / "findings")
    torch_backend = TorchClassifier(tb)
    onnx_backend = OrtClassifier(tb.onnx, model=tb.name)
    x = preprocess(record, tb.preprocessing)[None]
    drawn = 0
    for idx in range(1 if method == "scorecam" else len(LABELS)):  # ScoreCAM: 512 forwards per map
        ref, ref_logits = torch_backend.cam(x, idx, method)
        got, logits = onnx_backend.cam(x, idx, method)
        assert got.shape == ref.shape
        drawn += float(np.ptp(ref)) > 0.5  # a real map (random heads can give an all-negative, blank one)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=f"{method} label {idx}")
        np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
    assert drawn >= 1
    # the feature maps themselves agree across backends
    np.testing.assert_allclose(onnx_backend.features(x)[1], torch_backend.features(x)[1], atol=1e-4)


def test_onnx_engine_heatmap_at_image_size(lane_models: Path, record, monkeypatch) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.models.bundle import load_bundle

    ref = InferenceEngine([load_bundle(lane_models / "findings")], device="cpu", backend="torch").cam(
        record, "Effusion", "gradcam")
    engine = _onnx_engine([_onnx_bundle(lane_models / "findings", monkeypatch)], monkeypatch)
    got = engine.cam(record, "Effusion", "gradcam", faithfulness=True)
    assert got.values.shape == record.shape == ref.values.shape
    np.testing.assert_allclose(got.values, ref.values, atol=1e-4)
    assert got.score == pytest.approx(ref.score, abs=1e-5)
    assert got.faithfulness is None and "PyTorch" in got.faithfulness_method
    assert engine.faithfulness(record, got) is got


def test_onnx_without_exact_head_keeps_feature_only_methods(lane_models: Path, tmp_path: Path, record, monkeypatch) -> None:
    bdir = tmp_path / "inexact"
    shutil.copytree(lane_models / "findings", bdir)
    man = json.loads((bdir / "manifest.json").read_text())
    man["onnx"]["cam"]["exact"] = False  # as exported for a model whose head is not pooling + linear
    (bdir / "manifest.json").write_text(json.dumps(man))
    bundle = _onnx_bundle(bdir, monkeypatch)
    engine = _onnx_engine([bundle], monkeypatch)
    missing = engine.unavailable_cam_methods(bundle)
    assert set(missing) == {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"}
    assert "EigenCAM and ScoreCAM" in missing["gradcam"]
    exact = _onnx_bundle(lane_models / "findings", monkeypatch)
    assert _onnx_engine([exact], monkeypatch).unavailable_cam_methods(exact) == {}
    with pytest.raises(InferenceError, match="only EigenCAM and ScoreCAM"):
        engine.cam(record, "Effusion", "gradcam")
    heat = engine.cam(record, "Effusion", "eigencam")
    assert heat.values.shape == record.shape and float(heat.values.max()) == pytest.approx(1.0)


def test_onnx_refuses_tampered_or_foreign_exports(lane_models: Path, tmp_path: Path, monkeypatch) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine

    bad = tmp_path / "tampered"
    shutil.copytree(lane_models / "findings", bad)
    onnx = bad / "onnx" / "classifier.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleHashMismatchError, match="does not match its recorded checksum"):
        _onnx_bundle(bad, monkeypatch)

    foreign = tmp_path / "foreign"
    shutil.copytree(lane_models / "findings", foreign)
    man = json.loads((foreign / "manifest.json").read_text())
    man["onnx"]["weights_sha256"] = "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="made from other weights"):
        _onnx_bundle(foreign, monkeypatch)

    bare = tmp_path / "bare"
    shutil.copytree(lane_models / "findings", bare)
    man = json.loads((bare / "manifest.json").read_text())
    del man["onnx"]
    (bare / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BundleError, match="has no ONNX export"):
        _onnx_bundle(bare, monkeypatch)

    monkeypatch.setenv("CXR_VIEWER_NO_TORCH", "1")
    with pytest.raises(InferenceError, match="CPU only"):
        InferenceEngine(device="cuda")


# ----------------------------------------------------------------------------- segmentation and text
def test_onnx_text_encoder_equals_minilm(text_dir: Path) -> None:
    from cxr_viewer.core.inference.onnx_runtime import OrtMiniLMEncoder
    from cxr_viewer.core.models.text import MiniLMEncoder

    texts = ["Left basilar opacity.", "No pneumothorax or pleural effusion. " * 60, "Cardiomegaly."]
    got = OrtMiniLMEncoder(text_dir).encode(texts)
    ref = MiniLMEncoder(device="cpu").encode(texts)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_onnx_segmenter_masks_equal_torch(lane_models: Path, text_dir: Path, record, monkeypatch) -> None:
    from cxr_viewer.core.inference.onnx_runtime import ort_text_encoder
    from cxr_viewer.core.inference.segment import Segmenter
    from cxr_viewer.core.models.bundle import load_bundle

    phrases = ["Right lower lobe consolidation.", "No pneumothorax.", "Left pleural effusion."]
    ref_seg = Segmenter(load_bundle(lane_models / "report-seg", device="cpu"))
    assert ref_seg.backend.name == "torch"
    ref = ref_seg.segment(record, phrases)
    onnx_bundle = _onnx_bundle(lane_models / "report-seg", monkeypatch)
    seg = Segmenter(onnx_bundle, text_encoder=ort_text_encoder(onnx_bundle.manifest.text_encoder, folder=text_dir))
    assert seg.backend.name == "onnx" and seg.backend.executed.sha256 == onnx_bundle.onnx.sha256
    got = seg.segment(record, phrases)
    assert [m.text for m in got] == phrases
    for a, b in zip(got, ref, strict=True):
        assert a.prob.shape == record.shape
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)
        assert a.colour == b.colour and a.negative == b.negative
        near = np.abs(b.prob - b.threshold) < 1e-4  # pixels on the threshold may round either way
        assert np.array_equal(a.mask[~near], b.mask[~near])


# ----------------------------------------------------------------------------- no torch at all
BLOCKER = textwrap.dedent(
    """
    import sys
    BLOCKED = {"torch", "torchvision", "timm", "segmentation_models_pytorch", "pytorch_grad_cam",
               "transformers", "sentence_transformers", "lightning", "pytorch_lightning", "trainer"}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def _torch_free(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "run.py"
    script.write_text(BLOCKER + textwrap.dedent(code) + textwrap.dedent(
        """
        heavy = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
        print("HEAVY", heavy)
        """
    ))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**__import__("os").environ, "CXR_VIEWER_THREADS": "1"})


def test_headless_commands_without_torch(lane_models: Path, text_dir: Path, tmp_path: Path) -> None:
    """Self-test, analyze (with heatmap) and report masks in a process where torch cannot be imported."""
    out = tmp_path / "a.json"
    p = _torch_free(f"""
        from cxr_viewer.core.inference.engine import InferenceEngine
        from cxr_viewer.core.inference.onnx_runtime import ort_text_encoder
        from cxr_viewer.core.inference.segment import Segmenter
        from cxr_viewer.core.io import read_image
        from cxr_viewer.core.models.bundle import load_bundle
        from cxr_viewer.headless import analyze_main, self_test_main
        assert InferenceEngine().device == "cpu"
        print("SELFTEST_RC", self_test_main(["--no-default-models", "--models", r"{lane_models}"]))
        print("ANALYZE_RC", analyze_main([r"{SAMPLES / 'siim_cr_chest.dcm'}", r"{SAMPLES / 'nih_chest.png'}",
              "--no-default-models", "--models", r"{lane_models}", "--cam", "Effusion", "--cam-out", r"{tmp_path}", "--json", r"{out}"]))
        b = load_bundle(r"{lane_models / 'report-seg'}")
        seg = Segmenter(b, text_encoder=ort_text_encoder(b.manifest.text_encoder, folder=r"{text_dir}"))
        masks = seg.segment(read_image(r"{SAMPLES / 'nih_chest.png'}"), ["Left effusion.", "Clear lungs."])
        print("MASKS", [m.prob.shape for m in masks])
    """, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "SELFTEST_RC 0" in p.stdout and "ANALYZE_RC 0" in p.stdout, p.stdout + p.stderr[-2000:]
    assert "OK    findings 0.0.0 [UNTRAINED]: checksum verified; 2 golden image(s) match" in p.stdout
    assert "backend onnx" in p.stdout
    assert "MASKS [(1024, 1024), (1024, 1024)]" in p.stdout
    assert "HEAVY []" in p.stdout
    results = json.loads(out.read_text())
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert all(r["backend"] == {"findings": "onnx"} for r in results)
    onnx_sha = json.loads((lane_models / "findings" / "manifest.json").read_text())["onnx"]["sha256"]
    assert all(r["models"][0]["executed"] == {"backend": "onnx", "sha256": onnx_sha, "source": "bundle"}
               for r in results)
    assert Path(results[0]["cam"]["path"]).is_file()


def test_self_test_without_torch_reports_a_golden_mismatch(lane_models: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(lane_models / "findings", models / "findings")
    man_path = models / "findings" / "manifest.json"
    man = json.loads(man_path.read_text())
    man["golden"][1]["scores"]["Effusion"] += 0.05  # as if the weights or a library had changed behaviour
    man_path.write_text(json.dumps(man))
    p = _torch_free(f"""
        from cxr_viewer.headless import self_test_main
        print("SELFTEST_RC", self_test_main(["--no-default-models", "--models", r"{models}"]))
    """, tmp_path)
    assert "SELFTEST_RC 1" in p.stdout, p.stdout + p.stderr[-2000:]
    assert "FAIL  findings 0.0.0 [UNTRAINED]: golden/01_nih_chest.png: Effusion scored" in p.stdout
    assert "1 problem(s)" in p.stdout and "HEAVY []" in p.stdout


def test_viewer_window_analyses_without_torch(lane_models: Path, tmp_path: Path) -> None:
    """What the frozen CPU app runs: its runtime hook and entry point, torch unimportable, real window."""
    shot = tmp_path / "shot.png"
    code = f"""
        import os, runpy
        os.environ.update(QT_QPA_PLATFORM="offscreen", CXR_VIEWER_GUI_CHECK="1", HOME=r"{tmp_path}",
                          XDG_CONFIG_HOME=r"{tmp_path / 'config'}", XDG_DATA_HOME=r"{tmp_path / 'data'}",
                          XDG_CACHE_HOME=r"{tmp_path / 'cache'}")
        runpy.run_path(r"{REPO / 'packaging' / 'hooks' / 'rthook_cxr_viewer.py'}")
        sys.argv = ["cxr-viewer", "--models", r"{lane_models}", "--screenshot", r"{shot}",
                    r"{SAMPLES / 'nih_chest.png'}"]
        entry = runpy.run_path(r"{REPO / 'packaging' / 'entry.py'}")
        print("ENTRY_RC", entry["main"]())
    """
    p = _torch_free(code, tmp_path)
    assert "ENTRY_RC 0" in p.stdout, p.stdout[-2000:] + p.stderr[-3000:]
    assert "GUI_FINDINGS 3 " in p.stdout and "GUI_ERROR None" in p.stdout, p.stdout[-2000:]
    assert "HEAVY []" in p.stdout
    assert shot.stat().st_size > 10_000
