"""The ONE preprocessing policy and kernel: pixels -> network input, network maps -> pixels.

The trainer's datasets, the torch backend and the ONNX Runtime backend all call
:func:`preprocess` with the ``preprocessing`` block of a bundle manifest, so what a
model saw in training is what it sees in the viewer. It is NumPy/OpenCV only (no
torch), returns a float32 ``(C, H, W)`` array, and :func:`restore_map` undoes the
geometry exactly so Grad-CAM heatmaps and masks land on the right original pixels.

The kernel (OpenCV ``cv2.resize``, pixel-centre convention: original pixel centre
``y`` maps to network coordinate ``(y + 0.5) * scale_y - 0.5 + offset_y``):

- shrinking: ``INTER_AREA`` (pixel-area averaging, i.e. antialiased, so thin lines
  and small nodules are averaged in rather than skipped) for every smooth mode;
- enlarging: ``INTER_LINEAR`` for ``bilinear``/``area``, ``INTER_CUBIC`` for ``bicubic``
  (then clipped to [0, 1]);
- ``nearest`` always ``INTER_NEAREST_EXACT`` (for label masks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
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
    "normalise",
    "place",
    "resize2d",
    "restore_map",
    "unit_pixels",
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
        elif max(size) > (max_side := 2048):  # a network input this large allocates gigabytes per image
            problems.append(f"size must be at most {max_side} pixels a side, got {list(self.size)}")
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
        if not all(np.isfinite(v) for v in (*self.mean, *self.std)):
            problems.append("mean and std values must be finite numbers")
        elif any(s <= 0 for s in self.std):
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


def resize2d(img: np.ndarray, size: Sequence[int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize a 2-D float32 array to ``size`` (H, W) with the policy's kernel (see the module doc)."""
    import cv2

    a = np.ascontiguousarray(img, dtype=np.float32)
    h, w = int(size[0]), int(size[1])
    if a.shape == (h, w):
        return a
    if interpolation == "nearest":
        flag = cv2.INTER_NEAREST_EXACT
    elif h <= a.shape[0] and w <= a.shape[1]:
        flag = cv2.INTER_AREA
    elif interpolation == "bicubic":
        flag = cv2.INTER_CUBIC
    else:
        flag = cv2.INTER_LINEAR
    if flag == cv2.INTER_AREA or (h >= a.shape[0] and w >= a.shape[1]):
        out = cv2.resize(a, (w, h), interpolation=flag)
    else:  # shrink one axis, enlarge the other: each axis with its own kernel
        out = resize2d(resize2d(a, (min(h, a.shape[0]), min(w, a.shape[1])), interpolation), (h, w), interpolation)
    out = np.asarray(out, dtype=np.float32).reshape(h, w)
    if interpolation == "bicubic":
        np.clip(out, 0.0, 1.0, out=out)
    return out


def _spec(spec: "Preprocessing | Mapping[str, Any]") -> Preprocessing:
    return spec if isinstance(spec, Preprocessing) else Preprocessing.from_dict(spec)


def unit_pixels(item: "ImageRecord | np.ndarray", spec: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """What the network looks at before geometry: records windowed per ``spec.window``; arrays by
    :func:`~cxr_viewer.core.io.record.to_unit_gray`."""
    from cxr_viewer.core.io.record import ImageRecord, to_unit_gray

    spec = _spec(spec)
    if isinstance(item, ImageRecord):
        return item.model_pixels() if spec.window == "default" else item.pixels
    return to_unit_gray(item)


def place(px: np.ndarray, spec: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """Unit pixels (H, W) -> the network grid (H', W') per the resize policy, before normalisation."""
    spec = _spec(spec)
    geo = compute_geometry(px.shape, spec)
    t = resize2d(px, geo.resized, spec.interpolation)
    H, W = spec.size
    oy, ox = geo.offset
    if spec.resize == "letterbox":
        if geo.resized != (H, W):
            out = np.full((H, W), float(spec.pad_value), dtype=np.float32)
            out[oy : oy + geo.resized[0], ox : ox + geo.resized[1]] = t
            t = out
    elif spec.resize == "center_crop":
        t = t[-oy : -oy + H, -ox : -ox + W]
    return np.ascontiguousarray(t, dtype=np.float32)


def normalise(grid: np.ndarray, spec: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """Network-grid pixels (H, W) in [0, 1] -> float32 (C, H, W) with the spec's mean/std and channels."""
    spec = _spec(spec)
    H, W = grid.shape
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    inv = (1.0 / np.asarray(spec.std, dtype=np.float32)).reshape(-1, 1, 1)
    t = np.broadcast_to(grid[None], (spec.channels, H, W))
    return np.ascontiguousarray((t - mean) * inv, dtype=np.float32)


def preprocess(item: "ImageRecord | np.ndarray", spec: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """Record or decoded array -> float32 array (C, H, W), normalised per ``spec``.

    Records are windowed with their default (DICOM VOI) window when
    ``spec.window == "default"``; arrays follow :func:`~cxr_viewer.core.io.record.to_unit_gray`.
    """
    spec = _spec(spec)
    return normalise(place(unit_pixels(item, spec), spec), spec)


def preprocess_batch(items: Iterable["ImageRecord | np.ndarray"], spec: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """Stack :func:`preprocess` outputs into float32 (N, C, H, W)."""
    spec = _spec(spec)
    arrays = [preprocess(i, spec) for i in items]
    if not arrays:
        raise ValueError("preprocess_batch needs at least one image")
    return np.stack(arrays)


def restore_map(
    map_hw: Any,
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
    Use ``interpolation="nearest"`` for label masks. Accepts arrays or (CPU/GPU) tensors.
    """
    spec = _spec(spec)
    if hasattr(map_hw, "detach"):  # a tensor: no torch import needed to read it
        map_hw = map_hw.detach().float().cpu().numpy()
    m = np.asarray(map_hw, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"restore_map expects a 2-D map, got shape {tuple(m.shape)}")
    geo = compute_geometry(original_shape, spec)
    grid_mode = "nearest" if interpolation == "nearest" else "bilinear"
    m = resize2d(m, spec.size, grid_mode)
    oy, ox = geo.offset
    rh, rw = geo.resized
    if spec.resize == "letterbox":
        m = m[oy : oy + rh, ox : ox + rw]
    elif spec.resize == "center_crop":
        full = np.full((rh, rw), float(fill), dtype=np.float32)
        full[-oy : -oy + spec.size[0], -ox : -ox + spec.size[1]] = m
        m = full
    return resize2d(m, geo.original, interpolation)
