"""The torch-free lane against torch: same pixels in, same scores, heatmaps and masks out.

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
    from cxr_viewer.core.inference.onnx_lane_export import export_lane
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import make_untrained_bundle, save_bundle

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
    rec_c = export_lane(clf)
    rec_s = export_lane(root / "report-seg")
    assert rec_c is not None and rec_s is not None
    return root


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxr_viewer.core.inference.onnx_lane_export import export_text_encoder

    out = tmp_path_factory.mktemp("text") / "all-MiniLM-L6-v2"
    rec = export_text_encoder(out)
    assert rec["verified"]["embedding_max_abs_diff"] <= 1e-5
    return out


@pytest.fixture(scope="module")
def record():
    from cxr_viewer.core.io import read_image

    return read_image(SAMPLES / "siim_cr_chest.dcm")


# ----------------------------------------------------------------------------- classifiers
def test_export_records_the_gap_linear_identity(lane_models: Path) -> None:
    from cxr_viewer.core.inference.onnx_lane import read_lane

    lane = read_lane(lane_models / "findings")
    assert lane is not None
    assert lane["cam"]["exact"] is True and lane["cam"]["layer"] == "backbone.layer4"
    assert lane["cam"]["gap_linear_max_diff"] < 1e-4
    assert lane["verified"]["logits_max_abs_diff"] < 1e-4
    assert read_lane(lane_models / "nothing-here") is None


def test_lane_engine_keeps_every_engine_attribute() -> None:
    """LaneEngine sets up its own state (no torch): it must not fall behind InferenceEngine's."""
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.onnx_lane import LaneEngine

    assert set(vars(InferenceEngine(None, device="cpu"))) <= set(vars(LaneEngine()))


def test_lane_scores_equal_torch_and_golden(lane_models: Path, record) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.golden import check_golden
    from cxr_viewer.core.inference.onnx_lane import LaneEngine, load_lane_bundle
    from cxr_viewer.core.models.bundle import load_bundle

    torch_engine = InferenceEngine([load_bundle(lane_models / "findings")], device="cpu", backend="torch")
    lane_bundle = load_lane_bundle(lane_models / "findings")
    lane_engine = LaneEngine([lane_bundle])
    ref = torch_engine.analyze(record)
    got = lane_engine.analyze(record)
    assert got.backend == {"findings": "onnx"}
    assert [f.label for f in got.findings] == LABELS
    np.testing.assert_allclose([f.score for f in got.findings], [f.score for f in ref.findings], atol=1e-5)
    assert [f.threshold for f in got.findings] == [f.threshold for f in ref.findings]
    check = check_golden(lane_bundle, engine=lane_engine)
    assert check.ok and check.images == 2 and check.max_diff < 1e-4, check.failures


@pytest.mark.parametrize("method", ["gradcam", "hirescam", "xgradcam", "gradcam++", "layercam", "eigencam", "scorecam"])
def test_lane_heatmap_equals_pytorch_grad_cam(lane_models: Path, record, method: str) -> None:
    """Closed forms from the exported feature map == the library's gradient path, label by label."""
    from cxr_viewer.core.inference.cam import compute_cam
    from cxr_viewer.core.inference.onnx_lane import cam_from_features, load_lane_bundle, scorecam_weights
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.preprocess import preprocess

    tb = load_bundle(lane_models / "findings")
    lb = load_lane_bundle(lane_models / "findings")
    x = torch.from_numpy(preprocess(record, tb.preprocessing)[None])
    _, feats = lb.model.forward(x.numpy())
    drawn = 0
    for idx in range(1 if method == "scorecam" else len(LABELS)):  # ScoreCAM: 512 forwards per map
        out = compute_cam(tb.model, x, idx, method=method, target_layers=tb.manifest.cam_layers)
        ref = out[0] if isinstance(out, tuple) else out
        if method == "scorecam":
            weights = scorecam_weights(lb.model, x.numpy(), feats[0], idx)
            got = cam_from_features(feats[0], weights[None], 0, "weighted", tb.preprocessing.size)
        else:
            got = cam_from_features(feats[0], lb.model.head[0], idx, method, tb.preprocessing.size)
        assert got.shape == ref.shape
        drawn += float(np.ptp(ref)) > 0.5  # a real map (random heads can give an all-negative, blank one)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0, err_msg=f"{method} label {idx}")
    assert drawn >= 1


def test_lane_engine_heatmap_at_image_size(lane_models: Path, record) -> None:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.onnx_lane import LaneEngine, load_lane_bundle
    from cxr_viewer.core.models.bundle import load_bundle

    ref = InferenceEngine([load_bundle(lane_models / "findings")], device="cpu").cam(record, "Effusion", "gradcam")
    lane = LaneEngine([load_lane_bundle(lane_models / "findings")])
    got = lane.cam(record, "Effusion", "gradcam", faithfulness=True)
    assert got.values.shape == record.shape == ref.values.shape
    np.testing.assert_allclose(got.values, ref.values, atol=1e-4)
    assert got.score == pytest.approx(ref.score, abs=1e-5)
    assert got.faithfulness is None and "PyTorch" in got.faithfulness_method
    assert lane.faithfulness(record, got) is got


def test_lane_without_exact_head_keeps_feature_only_methods(lane_models: Path, tmp_path: Path, record) -> None:
    from cxr_viewer.core.inference.onnx_lane import LaneEngine, load_lane_bundle, unavailable_cam_methods

    bdir = tmp_path / "inexact"
    shutil.copytree(lane_models / "findings", bdir)
    rec = json.loads((bdir / "lane" / "lane.json").read_text())
    rec["cam"]["exact"] = False  # as exported for a model whose head is not pooling + linear
    (bdir / "lane" / "lane.json").write_text(json.dumps(rec))
    bundle = load_lane_bundle(bdir)
    missing = unavailable_cam_methods(bundle)
    assert set(missing) == {"gradcam", "gradcam++", "xgradcam", "hirescam", "layercam"}
    assert "EigenCAM and ScoreCAM" in missing["gradcam"]
    assert unavailable_cam_methods(load_lane_bundle(lane_models / "findings")) == {}
    engine = LaneEngine([bundle])
    with pytest.raises(InferenceError, match="only EigenCAM and ScoreCAM"):
        engine.cam(record, "Effusion", "gradcam")
    heat = engine.cam(record, "Effusion", "eigencam")
    assert heat.values.shape == record.shape and float(heat.values.max()) == pytest.approx(1.0)


def test_lane_refuses_tampered_or_foreign_exports(lane_models: Path, tmp_path: Path) -> None:
    from cxr_viewer.core.inference.onnx_lane import LaneEngine, load_lane_bundle

    bad = tmp_path / "tampered"
    shutil.copytree(lane_models / "findings", bad)
    onnx = bad / "lane" / "classifier.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(BundleHashMismatchError, match="does not match its recorded checksum"):
        load_lane_bundle(bad)

    foreign = tmp_path / "foreign"
    shutil.copytree(lane_models / "findings", foreign)
    rec = json.loads((foreign / "lane" / "lane.json").read_text())
    rec["weights_sha256"] = "0" * 64
    (foreign / "lane" / "lane.json").write_text(json.dumps(rec))
    with pytest.raises(BundleError, match="made from other weights"):
        load_lane_bundle(foreign)

    bare = tmp_path / "bare"
    shutil.copytree(lane_models / "findings", bare, ignore=shutil.ignore_patterns("lane"))
    with pytest.raises(BundleError, match="has no ONNX export"):
        load_lane_bundle(bare)

    with pytest.raises(InferenceError, match="CPU only"):
        LaneEngine(device="cuda")


# ----------------------------------------------------------------------------- segmentation and text
def test_lane_text_encoder_equals_minilm(text_dir: Path) -> None:
    from cxr_viewer.core.inference.onnx_lane import LaneMiniLMEncoder
    from cxr_viewer.core.models.text import MiniLMEncoder

    texts = ["Left basilar opacity.", "No pneumothorax or pleural effusion. " * 60, "Cardiomegaly."]
    got = LaneMiniLMEncoder(text_dir).encode(texts)
    ref = MiniLMEncoder(device="cpu").encode(texts)
    assert got.shape == (3, 384)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_lane_segmenter_masks_equal_torch(lane_models: Path, text_dir: Path, record) -> None:
    from cxr_viewer.core.inference.onnx_lane import LaneSegmenter, lane_text_encoder, load_lane_bundle
    from cxr_viewer.core.inference.segment import Segmenter
    from cxr_viewer.core.models.bundle import load_bundle

    phrases = ["Right lower lobe consolidation.", "No pneumothorax.", "Left pleural effusion."]
    ref = Segmenter(load_bundle(lane_models / "report-seg", device="cpu")).segment(record, phrases)
    lane_bundle = load_lane_bundle(lane_models / "report-seg")
    seg = Segmenter(lane_bundle, text_encoder=lane_text_encoder(lane_bundle.manifest.text_encoder, folder=text_dir))
    assert isinstance(seg, LaneSegmenter)
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
               "transformers", "sentence_transformers", "lightning", "pytorch_lightning", "trainer", "cv2"}

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
        from cxr_viewer.core.inference.onnx_lane import LaneEngine, lane_text_encoder
        from cxr_viewer.core.inference.segment import Segmenter
        from cxr_viewer.core.io import read_image
        from cxr_viewer.core.models.bundle import load_bundle
        from cxr_viewer.headless import analyze_main, self_test_main
        assert type(InferenceEngine()) is LaneEngine
        print("SELFTEST_RC", self_test_main(["--no-default-models", "--models", r"{lane_models}"]))
        print("ANALYZE_RC", analyze_main([r"{SAMPLES / 'siim_cr_chest.dcm'}", r"{SAMPLES / 'nih_chest.png'}",
              "--no-default-models", "--models", r"{lane_models}", "--cam", "Effusion", "--cam-out", r"{tmp_path}", "--json", r"{out}"]))
        b = load_bundle(r"{lane_models / 'report-seg'}")
        seg = Segmenter(b, text_encoder=lane_text_encoder(b.manifest.text_encoder, folder=r"{text_dir}"))
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
