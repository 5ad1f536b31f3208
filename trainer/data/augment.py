"""Augmentations for grayscale chest radiographs (torchvision.transforms.v2 where it fits).

They run on the tensor :func:`cxr_viewer.core.models.preprocess.preprocess` produced
(normalised, at the training size): the tensor is mapped back to [0, 1] with the
manifest's mean/std, augmented, and normalised again, so the viewer's preprocessing
stays the one path and augmentation is a training-only detour.

Horizontal flips are OFF by default: a flipped PA film puts the heart on the right
(dextrocardia) and swaps every left/right statement of the report, which teaches the
model anatomy that does not exist. Turn it on only for side-agnostic tasks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from cxr_viewer.core.models.preprocess import Preprocessing


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; ``0`` (or ``False``) turns one off."""

    rotate_deg: float = 7.0  # patients are never perfectly straight, rarely more than ~10 degrees off
    translate: float = 0.05
    crop_scale: float = 0.85  # RandomResizedCrop keeps at least this fraction of the area
    brightness: float = 0.15
    contrast: float = 0.15
    gamma: float = 0.2  # gamma drawn from [1 - g, 1 + g]: exposure / detector curves differ
    blur_p: float = 0.1
    noise_sigma: float = 0.02  # quantum noise of low-dose films, in [0, 1] pixel units
    clahe_p: float = 0.0  # optional CLAHE (OpenCV), e.g. 0.3
    hflip: bool = False  # see module docstring

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "AugmentConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            from cxr_viewer.core.errors import TrainingConfigError

            raise TrainingConfigError(f"Unknown augmentation option(s) {unknown}; known: {sorted(known)}.")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, AugmentConfig] = {
    "none": AugmentConfig(0, 0, 1.0, 0, 0, 0, 0, 0, 0, False),
    "light": AugmentConfig(),
    # SimCLR needs views that differ a lot, or the contrastive task is trivial.
    "ssl": AugmentConfig(
        rotate_deg=10, translate=0.1, crop_scale=0.4, brightness=0.4, contrast=0.4, gamma=0.4,
        blur_p=0.5, noise_sigma=0.04, clahe_p=0.2,
    ),  # fmt: skip
}


def augment_config(preset_or_cfg: str | Mapping[str, Any] | AugmentConfig | None) -> AugmentConfig:
    """A preset name (none | light | ssl), a dict of overrides on ``light``, or a config."""
    from cxr_viewer.core.errors import TrainingConfigError

    if preset_or_cfg is None:
        return PRESETS["none"]
    if isinstance(preset_or_cfg, AugmentConfig):
        return preset_or_cfg
    if isinstance(preset_or_cfg, str):
        if preset_or_cfg not in PRESETS:
            raise TrainingConfigError(f"Unknown augmentation preset {preset_or_cfg!r}; use one of {sorted(PRESETS)}.")
        return PRESETS[preset_or_cfg]
    base = asdict(PRESETS["light"])
    base.update(dict(preset_or_cfg))
    return AugmentConfig.from_dict(base)


class RadiographAugment:
    """Callable (C, H, W) normalised tensor -> augmented tensor of the same size and normalisation."""

    def __init__(self, cfg: AugmentConfig, spec: "Preprocessing") -> None:
        import torch
        from torchvision.transforms import v2

        self.cfg = cfg
        self.size = tuple(spec.size)
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
        geo: list[Any] = []
        if cfg.rotate_deg or cfg.translate:
            geo.append(v2.RandomAffine(degrees=cfg.rotate_deg, translate=(cfg.translate, cfg.translate)))
        if cfg.crop_scale < 1.0:
            geo.append(v2.RandomResizedCrop(self.size, scale=(cfg.crop_scale, 1.0), ratio=(0.9, 1.1), antialias=True))
        if cfg.hflip:
            geo.append(v2.RandomHorizontalFlip())
        self.geometric = v2.Compose(geo) if geo else None
        self.jitter = (
            v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast) if (cfg.brightness or cfg.contrast) else None
        )
        self.blur = v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=cfg.blur_p) if cfg.blur_p else None
        self.noise = v2.GaussianNoise(sigma=cfg.noise_sigma, clip=True) if cfg.noise_sigma else None

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        unit = (x * self.std + self.mean).clamp(0.0, 1.0)
        if self.cfg.clahe_p and torch.rand(()) < self.cfg.clahe_p:
            unit = clahe(unit)
        if self.geometric is not None:
            unit = self.geometric(unit)
        if self.jitter is not None:
            unit = self.jitter(unit)
        if self.cfg.gamma:
            g = 1.0 + (torch.rand(()) * 2 - 1) * self.cfg.gamma
            unit = unit.clamp(0.0, 1.0).pow(float(g))
        if self.blur is not None:
            unit = self.blur(unit)
        if self.noise is not None:
            unit = self.noise(unit)
        return ((unit.clamp(0.0, 1.0) - self.mean) / self.std).contiguous()


def clahe(unit: "torch.Tensor", clip_limit: float = 2.0, tiles: int = 8) -> "torch.Tensor":
    """Contrast-limited adaptive histogram equalisation of a [0, 1] (C, H, W) tensor (OpenCV)."""
    import cv2
    import numpy as np
    import torch

    op = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    out = []
    for ch in unit:
        u8 = (ch.numpy() * 255.0 + 0.5).astype(np.uint8)
        out.append(torch.from_numpy(op.apply(u8).astype(np.float32) / 255.0))
    return torch.stack(out)
