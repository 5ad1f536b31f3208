"""NumPy kernels for :func:`~cxr_viewer.core.models.preprocess.preprocess` and ``restore_map``.

Why: the CPU application bundle ships without PyTorch (see ``packaging/README.md``),
yet a model must see exactly the pixels it saw in training. The POLICY (window,
geometry, letterbox/crop, normalisation) stays in ``preprocess.py`` and is reused
here; only the resampling kernel is re-expressed in NumPy, with the same weights
as ``torch.nn.functional.interpolate``:

- ``bilinear`` / ``bicubic`` with ``antialias=True``: separable filters whose
  support widens by the scale when shrinking (triangle, and Keys cubic with
  a = -0.5), renormalised at the borders; for enlarging this is ordinary
  half-pixel bilinear/bicubic interpolation;
- ``nearest``: source index ``floor(i * in / out)`` in float32 (torch's ``nearest``);
- ``area``: adaptive average pooling windows.

``tests/packaging/test_onnx_lane.py`` checks both paths agree to 1e-5 on random
images, every resize mode and interpolation, shrinking and enlarging.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.models.preprocess import Preprocessing, _unit_pixels, compute_geometry

if TYPE_CHECKING:
    from cxr_viewer.core.io.record import ImageRecord

__all__ = ["preprocess_numpy", "resize2d", "restore_map_numpy"]


def _bilinear(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.float32(0.0), np.float32(1.0) - np.abs(x))


def _bicubic(x: np.ndarray) -> np.ndarray:
    # Keys cubic convolution with a = -0.5 (what torch's antialiased bicubic uses).
    f32 = np.float32
    a = f32(-0.5)
    x = np.abs(x)
    near = ((a + f32(2.0)) * x - (a + f32(3.0))) * x * x + f32(1.0)
    far = (((x - f32(5.0)) * x + f32(8.0)) * x - f32(4.0)) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, f32(0.0)))


@functools.lru_cache(maxsize=128)
def _taps(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out, K) and weights (out, K) for one axis; unused taps have weight 0."""
    i = np.arange(out_size)
    if mode == "nearest":
        if out_size == in_size:
            src = i
        elif out_size == 2 * in_size:
            src = i >> 1
        else:
            scale = np.float32(in_size) / np.float32(out_size)
            src = np.minimum(np.floor(i.astype(np.float32) * scale).astype(np.int64), in_size - 1)
        return src[:, None].astype(np.int64), np.ones((out_size, 1), dtype=np.float32)
    if mode == "area":
        start = (i * in_size) // out_size
        end = ((i + 1) * in_size + out_size - 1) // out_size
        k = int((end - start).max())
        idx = start[:, None] + np.arange(k)[None]
        w = (idx < end[:, None]).astype(np.float64)
        w /= w.sum(1, keepdims=True)
        return np.minimum(idx, in_size - 1), w.astype(np.float32)
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"unknown interpolation {mode!r}")
    # float32 arithmetic throughout, as in the reference kernel: the weights then agree bit for bit.
    f32 = np.float32
    filt, half = (_bilinear, f32(1.0)) if mode == "bilinear" else (_bicubic, f32(2.0))
    scale = f32(in_size) / f32(out_size)
    support = half * scale if scale >= 1.0 else half
    invscale = f32(1.0) / scale if scale >= 1.0 else f32(1.0)
    center = scale * (i.astype(f32) + f32(0.5))
    # C-style truncation toward zero, as in the reference kernel.
    xmin = np.maximum(np.trunc(center - support + f32(0.5)).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + f32(0.5)).astype(np.int64), in_size)
    k = int((xmax - xmin).max())
    idx = xmin[:, None] + np.arange(k)[None]
    w = filt((idx.astype(f32) - center[:, None] + f32(0.5)) * invscale).astype(f32)
    w = np.where(idx < xmax[:, None], w, f32(0.0))
    w = w / w.sum(1, keepdims=True, dtype=f32)
    return np.minimum(idx, in_size - 1), w.astype(np.float32)


def _along(img: np.ndarray, axis: int, out_size: int, mode: str) -> np.ndarray:
    n = img.shape[axis]
    if n == out_size:
        return img
    idx, w = _taps(n, out_size, mode)
    if axis == 0:
        out = w[:, 0, None] * img[idx[:, 0], :]
        for k in range(1, idx.shape[1]):
            out += w[:, k, None] * img[idx[:, k], :]
    else:
        out = img[:, idx[:, 0]] * w[None, :, 0]
        for k in range(1, idx.shape[1]):
            out += img[:, idx[:, k]] * w[None, :, k]
    return out


def resize2d(img: np.ndarray, size: Sequence[int], interpolation: str = "bilinear") -> np.ndarray:
    """Resize a float32 (H, W) array like the preprocessing path's torch resize does."""
    a = np.ascontiguousarray(img, dtype=np.float32)
    h, w = int(size[0]), int(size[1])
    if a.shape == (h, w):
        return a
    # Shrink the longer reduction first: fewer rows to carry through the second pass.
    if a.shape[0] / h >= a.shape[1] / w:
        a = _along(a, 0, h, interpolation)
        a = _along(a, 1, w, interpolation)
    else:
        a = _along(a, 1, w, interpolation)
        a = _along(a, 0, h, interpolation)
    return np.ascontiguousarray(a, dtype=np.float32)


def _spec(spec: Preprocessing | Mapping[str, Any]) -> Preprocessing:
    return spec if isinstance(spec, Preprocessing) else Preprocessing.from_dict(spec)


def preprocess_numpy(item: "ImageRecord | np.ndarray", spec: Preprocessing | Mapping[str, Any]) -> np.ndarray:
    """Record or array -> float32 (C, H, W), the same values ``preprocess`` gives as a tensor."""
    spec = _spec(spec)
    px = _unit_pixels(item, spec)
    geo = compute_geometry(px.shape, spec)
    t = resize2d(px, geo.resized, spec.interpolation)
    H, W = spec.size
    oy, ox = geo.offset
    if spec.resize == "letterbox":
        out = np.full((H, W), float(spec.pad_value), dtype=np.float32)
        out[oy : oy + geo.resized[0], ox : ox + geo.resized[1]] = t
        t = out
    elif spec.resize == "center_crop":
        t = t[-oy : -oy + H, -ox : -ox + W]
    if spec.interpolation == "bicubic":
        t = np.clip(t, 0.0, 1.0)
    t = np.broadcast_to(t, (spec.channels, H, W))
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((t - mean) / std, dtype=np.float32)


def restore_map_numpy(
    map_hw: np.ndarray,
    spec: Preprocessing | Mapping[str, Any],
    original_shape: Sequence[int],
    *,
    interpolation: str = "bilinear",
    fill: float = 0.0,
) -> np.ndarray:
    """Network-space map -> original image size; the twin of ``restore_map``."""
    spec = _spec(spec)
    m = np.asarray(map_hw, dtype=np.float32)
    if m.ndim != 2:
        raise ValueError(f"restore_map expects a 2-D map, got shape {tuple(m.shape)}")
    geo = compute_geometry(original_shape, spec)
    m = resize2d(m, spec.size, "bilinear" if interpolation != "nearest" else "nearest")
    oy, ox = geo.offset
    rh, rw = geo.resized
    if spec.resize == "letterbox":
        m = m[oy : oy + rh, ox : ox + rw]
    elif spec.resize == "center_crop":
        full = np.full((rh, rw), float(fill), dtype=np.float32)
        full[-oy : -oy + spec.size[0], -ox : -ox + spec.size[1]] = m
        m = full
    return resize2d(m, geo.original, interpolation)
