"""Every CAM method yields a finite map at the original image size; faithfulness is a number."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_viewer.core.errors import InferenceError, UnknownLabelError
from cxr_viewer.core.inference.cam import CAM_METHODS, canonical_method, compute_cam, road_faithfulness
from cxr_viewer.core.inference.engine import InferenceEngine
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.models import create_model
from cxr_viewer.core.models.testing import make_untrained_bundle

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> InferenceEngine:
    root = tmp_path_factory.mktemp("cam_models")
    make_untrained_bundle(root / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64), seed=3)
    return InferenceEngine.from_dirs([root], device="cpu", backend="torch")


@pytest.fixture(scope="module")
def record(data_dir: Path) -> ImageRecord:
    from cxr_viewer.core.io import read_image

    rec = read_image(sorted((data_dir / "nih14" / "images").iterdir())[0])
    # a non-square crop exercises the letterbox inverse
    px = rec.pixels[:, : int(rec.shape[1] * 0.7)]
    return ImageRecord(pixels=np.ascontiguousarray(px), source=None, format="array")


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_each_method_maps_at_original_size(engine: InferenceEngine, record: ImageRecord, method: str) -> None:
    heat = engine.cam(record, "Nodule", method, faithfulness=False)
    assert heat.values.shape == record.shape and heat.values.dtype == np.float32
    assert np.isfinite(heat.values).all()
    assert heat.values.min() >= 0.0 and heat.values.max() <= 1.0
    assert heat.method == method and heat.label == "Nodule" and heat.model == "nih"
    assert heat.target_layer == "backbone.layer4" and heat.target_index == 1
    assert heat.faithfulness is None
    assert 0.0 <= heat.score <= 1.0


def test_faithfulness_is_a_bounded_number(engine: InferenceEngine, record: ImageRecord) -> None:
    plain = engine.cam(record, "Effusion", "gradcam++")
    assert plain.faithfulness is None and plain.network_map.shape == (64, 64)
    heat = engine.faithfulness(record, plain)
    assert isinstance(heat.faithfulness, float) and -1.0 <= heat.faithfulness <= 1.0
    assert "ROAD" in heat.faithfulness_method
    assert engine.cam(record, "Effusion", "gradcam++", faithfulness=True).faithfulness == pytest.approx(heat.faithfulness, abs=0.05)
    assert heat.to_dict()["faithfulness"] == pytest.approx(heat.faithfulness, abs=1e-6)


def test_road_detects_a_faithful_map() -> None:
    """A model that scores one image region gets a higher ROAD score for a map on that region."""

    class RegionModel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x[:, 0, 8:24, 8:24].mean(dim=(1, 2)) * 4.0)[:, None]

    model = RegionModel().eval()
    x = torch.full((1, 1, 32, 32), 0.1)
    x[..., 8:24, 8:24] = 1.0  # the evidence the model scores
    right = np.zeros((32, 32), np.float32)
    right[8:24, 8:24] = 1.0
    right += np.random.default_rng(0).random((32, 32)).astype(np.float32) * 0.01  # break ties
    good = road_faithfulness(model, x, right, 0)
    bad = road_faithfulness(model, x, 1.0 - right, 0)
    assert good > 0.05 and bad < -0.05


def test_road_in_steps_equals_the_library_and_can_be_cancelled() -> None:
    """The stepwise ROAD (cancellable between imputations) is the library's ROADCombined, noise included."""
    from pytorch_grad_cam.metrics.road import ROADCombined

    from cxr_viewer.core.errors import AnalysisCancelledError
    from cxr_viewer.core.inference.cam import _SigmoidTarget
    from cxr_viewer.core.inference.results import CancelToken

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = torch.rand(1, 1, 24, 24)
    cam = np.random.default_rng(1).random((24, 24)).astype(np.float32)
    torch.manual_seed(5)
    with torch.no_grad():
        ref = float(np.asarray(ROADCombined(percentiles=[25, 50, 75])(x, cam[None], [_SigmoidTarget(1)], model))[0])
    torch.manual_seed(5)
    assert road_faithfulness(model, x, cam, 1) == pytest.approx(ref, abs=1e-6)
    token = CancelToken()
    token.cancel()
    with pytest.raises(AnalysisCancelledError):
        road_faithfulness(model, x, cam, 1, cancel=token)


def test_gradcam_reaches_frozen_models() -> None:
    """Loaded bundles freeze parameters; gradients must still reach the hooked layer."""
    model = create_model("classifier", backbone="resnet18", num_classes=2).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64)
    outs = [compute_cam(model, x, 0, method=m, target_layers=["backbone.layer3"]) for m in ("gradcam", "layercam")]
    assert any(float(m.max()) > 0 for m, _ in outs)
    # the logits come from the CAM's own forward pass and parameters are frozen again after
    with torch.no_grad():
        assert np.allclose(outs[0][1], model(x)[0].numpy(), atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_bad_requests_give_clear_errors(engine: InferenceEngine, record: ImageRecord) -> None:
    with pytest.raises(UnknownLabelError, match="Effusion, Nodule"):
        engine.cam(record, "Cardiomegaly")
    with pytest.raises(InferenceError, match="Choose one of"):
        engine.cam(record, "Nodule", "magiccam")
    assert canonical_method("GradCAMPlusPlus") == "gradcam++"
    model = create_model("classifier", backbone="resnet18", num_classes=2)
    with pytest.raises(InferenceError, match="target_layers"):
        compute_cam(model, torch.zeros(1, 1, 64, 64), 0, target_layers=["backbone.layer9"])


def _tiny_classifier(tmp_path: Path, size: int):
    from cxr_viewer.core.inference.backends.torch_backend import TorchClassifier
    from cxr_viewer.core.models.bundle import load_bundle

    bdir = make_untrained_bundle(tmp_path / f"sc{size}", name="sc", labels=["Effusion", "Nodule"], size=(size, size),
                                 seed=7)  # fmt: skip
    return TorchClassifier(load_bundle(bdir))


def test_scorecam_uncapped_is_the_librarys_scorecam(tmp_path: Path) -> None:
    """Every channel at full size: the one ScoreCAM both backends draw is pytorch-grad-cam's, to float precision."""
    from cxr_viewer.core.inference.cam_closed_form import scorecam

    backend = _tiny_classifier(tmp_path, 64)
    x = np.random.default_rng(2).standard_normal((1, 1, 64, 64)).astype(np.float32)
    for idx in (1,):  # 512 masked forwards per map
        with backend.bundle.lock:
            ref, ref_logits = compute_cam(backend.model, torch.from_numpy(x), idx, method="scorecam",
                                          target_layers=backend.layers)  # fmt: skip
        got, logits = scorecam(backend, x, idx, top_k=None, max_side=None)
        np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(logits, ref_logits, atol=1e-5)


def test_scorecam_runs_a_bounded_number_of_small_forwards(tmp_path: Path) -> None:
    """Default ScoreCAM: one full forward, then at most top-k masked inputs at the capped size, in batches."""
    from cxr_viewer.core.inference import cam_closed_form as ccf

    backend = _tiny_classifier(tmp_path, 160)
    seen: list[tuple[int, ...]] = []
    logits, features = backend.logits, backend.features

    class Counting:
        head = backend.head

        def logits(self, x: np.ndarray) -> np.ndarray:
            seen.append(x.shape)
            return logits(x)

        def features(self, x: np.ndarray):
            seen.append(x.shape)
            return features(x)

    x = np.random.default_rng(3).standard_normal((1, 1, 160, 160)).astype(np.float32)
    net_map, _ = ccf.scorecam(Counting(), x, 1)
    assert net_map.shape == (160, 160) and 0.0 <= net_map.min() and net_map.max() <= 1.0
    assert seen[0] == (1, 1, 160, 160)  # the one forward that gives the logits and the feature map
    masked = seen[1:]
    assert sum(s[0] for s in masked) == ccf.SCORECAM_TOP_K < 512
    assert len(masked) <= -(-ccf.SCORECAM_TOP_K // ccf.SCORECAM_BATCH)
    assert all(max(s[-2:]) <= ccf.SCORECAM_MAX_SIDE for s in masked)
    # through the engine's torch backend the same function draws it
    np.testing.assert_allclose(backend.cam(x, 1, "scorecam")[0], net_map, atol=1e-6)
