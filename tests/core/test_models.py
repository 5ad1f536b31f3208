"""Every registered architecture builds and runs at tiny size; the registry refuses unknown names."""

from __future__ import annotations

import pytest
import torch

from cxr_viewer.core.errors import UnknownModelError
from cxr_viewer.core.models import create_model, list_models, register_model
from cxr_viewer.core.models.classifier import CXRClassifier, default_cam_layer
from cxr_viewer.core.models.registry import _REGISTRY

torch.set_num_threads(2)

BACKBONES = ["resnet18", "resnet34", "resnet50", "densenet121", "efficientnet_b0", "convnext_nano", "mobilenetv3_small_100"]

# Tiny (kwargs, inputs) per registered architecture. A model registered elsewhere provides
# ``tiny_example() -> (kwargs, args)`` on its factory; one with neither fails here.
TINY = {
    "classifier": lambda: ({"backbone": "resnet18", "num_classes": 3}, (torch.randn(2, 1, 64, 64),)),
    "encoder": lambda: ({"backbone": "resnet18"}, (torch.randn(2, 1, 64, 64),)),
    "text_unet": lambda: (
        {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": (32, 16, 8), "text_dim": 8},
        (torch.randn(2, 1, 64, 64), torch.randn(2, 8)),
    ),
    "text_unet_tiny": lambda: ({"text_dim": 8}, (torch.randn(2, 1, 64, 64), torch.randn(2, 8))),
}


def _tiny(name: str) -> tuple[dict, tuple]:
    if name in TINY:
        return TINY[name]()
    factory = _REGISTRY[name]
    example = getattr(factory, "tiny_example", None)
    if example is None:
        pytest.fail(f"registered model {name!r} has no tiny_example() for the registry-wide forward test")
    return example()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_at_64px(name: str) -> None:
    kwargs, args = _tiny(name)
    model = create_model(name, **kwargs).eval()
    with torch.no_grad():
        out = model(*args)
    out = out if isinstance(out, torch.Tensor) else next(iter(out.values())) if isinstance(out, dict) else out[0]
    assert out.shape[0] == args[0].shape[0]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_classifier_backbones_forward_and_cam_layer(backbone: str) -> None:
    model = create_model("classifier", backbone=backbone, num_classes=4).eval()
    assert isinstance(model, CXRClassifier)
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 4
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_features(x)
    assert logits.shape == (1, 4)
    assert feats.shape == (1, model.num_features)
    # The CAM layer exists and still has a spatial map (it is what Grad-CAM hooks).
    layer_name = default_cam_layer(backbone)
    layer = dict(model.named_modules())[layer_name]
    seen = {}

    def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["shape"] = tuple(output.shape)

    handle = layer.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    handle.remove()
    assert len(seen["shape"]) == 4 and seen["shape"][-1] >= 2, seen


def test_encoder_weights_load_into_classifier_backbone() -> None:
    enc = create_model("encoder", backbone="resnet18")
    clf = create_model("classifier", backbone="resnet18", num_classes=2)
    missing, unexpected = clf.load_state_dict(enc.state_dict(), strict=False)
    assert not unexpected
    assert set(missing) == {"head.weight", "head.bias"}
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(enc.eval()(x), clf.eval().forward_features(x))


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        create_model("no_such_net")
    assert "classifier" in info.value.message and "encoder" in info.value.message


def test_register_conflict_refused() -> None:
    with pytest.raises(ValueError):

        @register_model("classifier")
        def other(**kw):  # pragma: no cover - never built
            return None
