"""Image classifiers and bare encoders on timm backbones, single-channel input.

``CXRClassifier`` keeps the timm feature extractor in ``.backbone`` and our own
linear head in ``.head``: self-supervised encoders (``encoder`` bundles) load
straight into ``.backbone`` and a classifier fine-tunes on top.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import torch
from torch import nn

from cxr_viewer.core.models.registry import register_model

__all__ = ["CXRClassifier", "CXREncoder", "default_cam_layer", "build_backbone"]


def build_backbone(backbone: str, in_chans: int = 1, **timm_kwargs: Any) -> nn.Module:
    """A timm feature extractor (pooled features, no classifier), never downloading weights."""
    import timm

    timm_kwargs.pop("pretrained", None)  # weights only ever come from our bundles
    return timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans, **timm_kwargs)


def _feature_dim(backbone: nn.Module) -> int:
    # MobileNetV3 and friends add a conv head after pooling: head_hidden_size is the pooled width.
    dim = getattr(backbone, "head_hidden_size", None) or getattr(backbone, "num_features")
    return int(dim)


# Last layer that still has a spatial map, per family (checked in tests by running CAM).
_CAM_RULES: tuple[tuple[str, str], ...] = (
    (r"^(resnet|resnext|wide_resnet|seresnet|resnetv2)", "layer4"),
    (r"^densenet", "features.norm5"),
    (r"^(efficientnet|tf_efficientnet|mixnet|mnasnet)", "bn2"),
)


@functools.lru_cache(maxsize=32)
def _timm_last_feature_module(backbone_name: str) -> str:
    model = build_backbone(backbone_name)
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"cannot infer a Grad-CAM layer for backbone {backbone_name!r}; name it in the manifest")
    return str(info[-1]["module"])


def default_cam_layer(backbone_name: str, prefix: str = "backbone.") -> str:
    """Dotted name of the Grad-CAM target layer for ``backbone_name`` inside ``CXRClassifier``.

    Uses the last module with a spatial map before global pooling: the one whose
    activations the classifier's decision is a linear function of (after pooling).
    """
    # ResNet-style models expose layer4 even when timm calls them differently (e.g. resnet50d).
    for pattern, layer in _CAM_RULES:
        if re.match(pattern, backbone_name):
            if layer == "layer4" and backbone_name.startswith("resnetv2"):
                return prefix + "norm"
            return prefix + layer
    return prefix + _timm_last_feature_module(backbone_name)


@register_model("classifier")
class CXRClassifier(nn.Module):
    """timm backbone -> pooled features -> dropout -> linear logits (one per label).

    Outputs logits; the caller applies sigmoid (multilabel/binary) or softmax
    (multiclass) according to the bundle's task.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        num_classes: int = 14,
        in_chans: int = 1,
        drop_rate: float = 0.0,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be at least 1")
        self.backbone_name = backbone
        self.in_chans = in_chans
        self.backbone = build_backbone(backbone, in_chans=in_chans, **timm_kwargs)
        self.num_features = _feature_dim(self.backbone)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled feature vector (B, num_features): what the head and SSL losses see."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.forward_features(x)))

    def cam_layer_name(self) -> str:
        return default_cam_layer(self.backbone_name)


@register_model("encoder")
class CXREncoder(nn.Module):
    """A bare backbone (``ssl_encoder`` bundles): forward returns pooled features.

    Its state dict keys start with ``backbone.``, the same as ``CXRClassifier``'s,
    so an encoder bundle loads into a classifier with ``strict=False``.
    """

    def __init__(self, backbone: str = "resnet18", in_chans: int = 1, **timm_kwargs: Any) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.in_chans = in_chans
        self.backbone = build_backbone(backbone, in_chans=in_chans, **timm_kwargs)
        self.num_features = _feature_dim(self.backbone)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def cam_layer_name(self) -> str:
        return default_cam_layer(self.backbone_name)
