"""The one canonical image record every reader produces and every model consumes, and THE array rule
(:func:`to_unit_gray`) by which any in-memory array becomes its pixels."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np


def to_unit_gray(image: np.ndarray) -> np.ndarray:
    """THE array rule: any decoded image array -> float32 HxW in [0, 1], bright = dense.

    - integers are scaled by their dtype's range (uint8 / 255, uint16 / 65535);
    - booleans become 0/1;
    - floats already inside [0, 1] are kept; other floats are scaled by their own
      min..max (a float array has no intrinsic range);
    - colour is reduced to luminance (ITU-R 601) first.

    Non-finite values (NaN, Inf) are refused: they would reach the scores.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        luma = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if np.issubdtype(arr.dtype, np.integer):
            return np.clip(luma / float(np.iinfo(arr.dtype).max), 0.0, 1.0).astype(np.float32)
        arr = luma
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got an array of shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
        return np.clip(out, 0.0, 1.0) if np.issubdtype(arr.dtype, np.signedinteger) else out
    out = arr.astype(np.float32, copy=False)
    if not np.isfinite(out).all():
        raise ValueError("the image holds non-finite values (NaN or infinity)")
    lo, hi = (float(out.min()), float(out.max())) if out.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return out
    return ((out - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(out)


@dataclass(frozen=True, eq=False)
class ImageRecord:
    """A chest radiograph as float32 pixels in [0, 1], bright = dense.

    ``pixels`` keep the full dynamic range of the source (after the DICOM modality
    LUT and MONOCHROME1 inversion), scaled to [0, 1]. ``default_window`` is the
    window the source asks for (DICOM VOI LUT / window centre-width), expressed as
    ``(center, width)`` in the same [0, 1] units, or ``None``. Models see
    :meth:`model_pixels` (the default window applied), which is how exported
    PNG/JPEG training images look; the display may window freely.
    """

    pixels: np.ndarray
    source: Path | None
    format: str  # "dicom" | "png" | "jpeg" | "tiff" | "array"
    spacing_mm: tuple[float, float] | None = None  # (row, column) spacing in mm
    spacing_source: str | None = None  # "PixelSpacing" | "ImagerPixelSpacing" | ...
    default_window: tuple[float, float] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    notices: tuple[str, ...] = ()
    header: Any = None  # pydicom Dataset without pixel data, for the tag browser

    def __post_init__(self) -> None:
        px = self.pixels
        if px.ndim != 2 or px.dtype != np.float32:
            raise ValueError("ImageRecord.pixels must be a float32 HxW array")

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the pixel content: the cache key for inference results."""
        h = hashlib.sha256()
        h.update(str(self.pixels.shape).encode())
        h.update(np.ascontiguousarray(self.pixels))  # buffer protocol: no copy
        return h.hexdigest()

    def model_pixels(self) -> np.ndarray:
        """Pixels with the default window applied, clipped to [0, 1] (what models see)."""
        if self.default_window is None:
            return self.pixels
        c, w = self.default_window
        if not (np.isfinite(c) and np.isfinite(w)):  # readers never set one; an array caller might
            return self.pixels
        w = max(float(w), 1e-6)
        lo = c - w / 2.0
        return np.clip((self.pixels - lo) / w, 0.0, 1.0).astype(np.float32)

    @classmethod
    def from_array(cls, pixels: np.ndarray, **kwargs: Any) -> "ImageRecord":
        """Wrap an in-memory array (any dtype), scaled to [0, 1] by THE array rule (:func:`to_unit_gray`)."""
        arr = to_unit_gray(pixels)
        kwargs.setdefault("source", None)
        kwargs.setdefault("format", "array")
        return cls(pixels=arr.astype(np.float32), **kwargs)
