"""The one canonical image record every reader produces and every model consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np


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
        from cxr_viewer.core.models.preprocess import to_unit_gray

        arr = to_unit_gray(pixels)
        kwargs.setdefault("source", None)
        kwargs.setdefault("format", "array")
        return cls(pixels=arr.astype(np.float32), **kwargs)
