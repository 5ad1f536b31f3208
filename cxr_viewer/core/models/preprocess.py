"""The ONE preprocessing path: pixels -> network tensor, and network maps -> pixels.

The trainer's datasets and the viewer's engine both call :func:`preprocess` with
the ``preprocessing`` block of a bundle manifest, so what a model saw in training
is what it sees in the viewer. :func:`restore_map` undoes the geometry exactly so
Grad-CAM heatmaps and segmentation masks land on the right original pixels.

Geometry follows the pixel-centre convention of ``torch.nn.functional.interpolate``
with ``align_corners=False``: original pixel centre ``y`` maps to network
coordinate ``(y + 0.5) * scale_y - 0.5 + offset_y``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch

    from cxr_viewer.core.io.record import ImageRecord

ResizeMode = Literal["letterbox", "stretch", "center_crop"]
_RESIZE = ("letterbox", "stretch", "center_crop")
_INTERP = ("nearest", "bilinear", "bicubic", "area")
_WINDOW = ("default", "none")

__all__ = [
    "Geometry",
    "Preprocessing",
    "compute_geometry",
    "preprocess",
    "preprocess_batch",
    "restore_map",
    "to_unit_gray",
]


@dataclass(frozen=True)
class Preprocessing:
    """What a network expects: size (H, W), resize policy, window, normalisation, channels."""

    size: tuple[int, int] = (224, 224)
    resize: ResizeMode = "letterbox"
    interpolation: str = "bilinear"
    window: str = "default"
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    channels: int = 1
    pad_value: float = 0.0  # letterbox fill, in [0, 1] pixel units (before normalisation)

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        problems = []
        if len(size) != 2 or min(size) < 8:
            problems.append(f"size must be [height, width] of at least 8 pixels, got {list(self.size)}")
        if self.resize not in _RESIZE:
            problems.append(f"resize must be one of {', '.join(_RESIZE)}, got {self.resize!r}")
        if self.interpolation not in _INTERP:
            problems.append(f"interpolation must be one of {', '.join(_INTERP)}, got {self.interpolation!r}")
        if self.window not in _WINDOW:
            problems.append(f"window must be one of {', '.join(_WINDOW)}, got {self.window!r}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels!r}")
        for name, vals in (("mean", self.mean), ("std", self.std)):
            if len(vals) not in (1, self.channels):
                problems.append(f"{name} needs 1 or {self.channels} values, got {len(vals)}")
        if any(s <= 0 for s in self.std):
            problems.append("std values must be positive")
        if problems:
            raise ValueError("invalid preprocessing: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "Preprocessing":
        """Build from a manifest ``preprocessing`` block; unknown keys are an error (typos matter here)."""
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"invalid preprocessing: unknown field(s) {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


@dataclass(frozen=True)
class Geometry:
    """Affine map between original pixels and the network grid (per-axis scale + offset).

    ``resized`` is the size the image was scaled to before padding (letterbox) or
    cropping (center_crop); ``offset`` is where its top-left corner sits in the
    network grid (negative for a crop).
    """

    original: tuple[int, int]
    network: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    scale: tuple[float, float] = field(init=False)

    def __post_init__(self) -> None:
        sy = self.resized[0] / self.original[0]
        sx = self.resized[1] / self.original[1]
        object.__setattr__(self, "scale", (sy, sx))

    def to_network(self, points_yx: np.ndarray) -> np.ndarray:
        """Original (y, x) pixel coordinates -> network coordinates (pixel-centre convention)."""
        p = np.asarray(points_yx, dtype=np.float64)
        s = np.asarray(self.scale)
        o = np.asarray(self.offset, dtype=np.float64)
        return (p + 0.5) * s - 0.5 + o

    def to_original(self, points_yx: np.ndarray) -> np.ndarray:
        """Network (y, x) coordinates -> original pixel coordinates."""
        p = np.asarray(points_yx, dtype=np.float64)
        s = np.asarray(self.scale)
        o = np.asarray(self.offset, dtype=np.float64)
        return (p - o + 0.5) / s - 0.5


def compute_geometry(original_shape: Sequence[int], spec: Preprocessing) -> Geometry:
    """How an image of ``original_shape`` is placed on the ``spec.size`` grid."""
    h, w = int(original_shape[0]), int(original_shape[1])
    if h < 1 or w < 1:
        raise ValueError("image has no pixels")
    H, W = spec.size
    if spec.resize == "stretch":
        return Geometry((h, w), (H, W), (H, W), (0, 0))
    if spec.resize == "letterbox":
        s = min(H / h, W / w)
        nh, nw = min(H, max(1, round(h * s))), min(W, max(1, round(w * s)))
        return Geometry((h, w), (H, W), (nh, nw), ((H - nh) // 2, (W - nw) // 2))
    s = max(H / h, W / w)  # center_crop: cover the grid, then cut the centre
    nh, nw = max(H, round(h * s)), max(W, round(w * s))
    return Geometry((h, w), (H, W), (nh, nw), (-((nh - H) // 2), -((nw - W) // 2)))


def to_unit_gray(image: np.ndarray) -> np.ndarray:
    """Any decoded image array -> float32 HxW in [0, 1].

    Integers are scaled by their dtype's range (uint8 / 255, uint16 / 65535), floats are
    taken as already in [0, 1] and clipped; colour is reduced to luminance (ITU-R 601).
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] in (3, 4):
            rgb = arr[..., :3].astype(np.float32)
            arr_f = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            if np.issubdtype(arr.dtype, np.integer):
                arr_f /= float(np.iinfo(arr.dtype).max)
            return np.clip(arr_f, 0.0, 1.0).astype(np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got an array of shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)).astype(np.float32)
    return np.clip(arr.astype(np.float32, copy=False), 0.0, 1.0)


def _resize(t: "torch.Tensor", size: tuple[int, int], interpolation: str) -> "torch.Tensor":
    """Resize a (N, C, H, W) tensor; antialias when shrinking so thin lines survive.

    (A box-average pre-reduction was measured and brought no gain over torch's
    antialiased kernel, so geometry stays exact with one pass.)
    """
    import torch.nn.functional as F

    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if interpolation in ("bilinear", "bicubic"):
        return F.interpolate(t, size=size, mode=interpolation, align_corners=False, antialias=True)
    return F.interpolate(t, size=size, mode=interpolation)


def _unit_pixels(item: "ImageRecord | np.ndarray", spec: Preprocessing) -> np.ndarray:
    from cxr_viewer.core.io.record import ImageRecord

    if isinstance(item, ImageRecord):
        return item.model_pixels() if spec.window == "default" else item.pixels
    return to_unit_gray(item)


def preprocess(item: "ImageRecord | np.ndarray", spec: Preprocessing | Mapping[str, Any]) -> "torch.Tensor":
    """Record or decoded array -> float32 tensor (C, H, W), normalised per ``spec``.

    Records are windowed with their default (DICOM VOI) window when
    ``spec.window == "default"``; arrays are taken as already windowed.
    """
    from cxr_viewer.core.runtime import torch_available

    if not torch_available():  # torch-free app bundle: this policy with NumPy kernels (same values, tested)
        from cxr_viewer.core.models.preprocess_numpy import preprocess_numpy

        return preprocess_numpy(item, spec)  # type: ignore[return-value]
    import torch
    import torch.nn.functional as F

    if not isinstance(spec, Preprocessing):
        spec = Preprocessing.from_dict(spec)
    px = _unit_pixels(item, spec)
    geo = compute_geometry(px.shape, spec)
    t = torch.from_numpy(np.ascontiguousarray(px, dtype=np.float32))[None, None]
    t = _resize(t, geo.resized, spec.interpolation)
    H, W = spec.size
    oy, ox = geo.offset
    if spec.resize == "letterbox":
        pad = (ox, W - ox - geo.resized[1], oy, H - oy - geo.resized[0])
        if any(pad):
            t = F.pad(t, pad, mode="constant", value=float(spec.pad_value))
    elif spec.resize == "center_crop":
        t = t[..., -oy : -oy + H, -ox : -ox + W]
    t = t[0].clamp(0.0, 1.0) if spec.interpolation == "bicubic" else t[0]
    if spec.channels == 3:
        t = t.expand(3, H, W)
    if len(set(spec.mean)) == 1 and len(set(spec.std)) == 1:
        return ((t - spec.mean[0]) * (1.0 / spec.std[0])).contiguous()
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1)
    return ((t - mean) / std).contiguous()


def preprocess_batch(
    items: Iterable["ImageRecord | np.ndarray"], spec: Preprocessing | Mapping[str, Any]
) -> "torch.Tensor":
    """Stack :func:`preprocess` outputs into (N, C, H, W)."""
    import torch

    if not isinstance(spec, Preprocessing):
        spec = Preprocessing.from_dict(spec)
    tensors = [preprocess(i, spec) for i in items]
    if not tensors:
        raise ValueError("preprocess_batch needs at least one image")
    return torch.stack(tensors)


def restore_map(
    map_hw: "np.ndarray | torch.Tensor",
    spec: Preprocessing | Mapping[str, Any],
    original_shape: Sequence[int],
    *,
    interpolation: str = "bilinear",
    fill: float = 0.0,
) -> np.ndarray:
    """A network-space map (CAM, mask probability) -> float32 map at the original image size.

    Undoes the letterbox padding / centre crop / stretch of :func:`preprocess`
    exactly. A map coarser than the network grid (e.g. a 7x7 feature map) is first
    upsampled to the grid. Regions the network never saw (cropped away) get ``fill``.
    Use ``interpolation="nearest"`` for label masks.
    """
    from cxr_viewer.core.runtime import torch_available

    if not torch_available():  # torch-free app bundle
        from cxr_viewer.core.models.preprocess_numpy import restore_map_numpy

        return restore_map_numpy(np.asarray(map_hw), spec, original_shape, interpolation=interpolation, fill=fill)
    import torch

    if not isinstance(spec, Preprocessing):
        spec = Preprocessing.from_dict(spec)
    if isinstance(map_hw, torch.Tensor):
        m = map_hw.detach().to("cpu", torch.float32)
    else:
        m = torch.from_numpy(np.ascontiguousarray(map_hw, dtype=np.float32))
    if m.ndim != 2:
        raise ValueError(f"restore_map expects a 2-D map, got shape {tuple(m.shape)}")
    m = m[None, None]
    geo = compute_geometry(original_shape, spec)
    m = _resize(m, spec.size, "bilinear" if interpolation != "nearest" else "nearest")
    oy, ox = geo.offset
    rh, rw = geo.resized
    if spec.resize == "letterbox":
        m = m[..., oy : oy + rh, ox : ox + rw]
    elif spec.resize == "center_crop":
        full = torch.full((1, 1, rh, rw), float(fill), dtype=torch.float32)
        full[..., -oy : -oy + spec.size[0], -ox : -ox + spec.size[1]] = m
        m = full
    m = _resize(m, geo.original, interpolation)
    return m[0, 0].numpy().astype(np.float32, copy=False)
