"""Pixel values in the file's own units: what the readout and ROI statistics report.

An :class:`ImageRecord` keeps its pixels as float32 in [0, 1]. For DICOM the reader
records the modality-LUT value range behind that scale (``metadata["value_range"]``,
``value_inverted`` for MONOCHROME1), so the modality value (PS3.3 C.11.1: the stored
value after Rescale Slope/Intercept or a Modality LUT) is recovered exactly. The
stored value is the inverse of a linear rescale; a non-linear Modality LUT has no
unique inverse, so only the modality value is shown there. PNG/JPEG have no units
beyond [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr_viewer.core.io.record import ImageRecord


@dataclass(frozen=True)
class ValueScale:
    """How [0, 1] pixels map to modality values (and back to stored values) for one record."""

    vmin: float
    vmax: float
    inverted: bool
    slope: float | None  # Rescale Slope when the modality LUT is linear, else None
    intercept: float | None
    unit: str  # Rescale Type (e.g. "HU", "OD") or "" when the file names none
    has_modality_lut: bool  # True when modality values differ from stored values

    def modality(self, unit_values: np.ndarray | float) -> np.ndarray:
        """[0, 1] pixel values -> modality-LUT output values."""
        u = np.asarray(unit_values, dtype=np.float64)
        span = self.vmax - self.vmin
        return self.vmax - u * span if self.inverted else self.vmin + u * span

    def stored(self, modality_values: np.ndarray | float) -> np.ndarray | None:
        """Modality values -> stored values (only for a linear rescale)."""
        if self.slope is None or self.intercept is None or self.slope == 0:
            return None
        return (np.asarray(modality_values, dtype=np.float64) - self.intercept) / self.slope


def value_scale(record: ImageRecord | None) -> ValueScale | None:
    """The record's value scale, or None when [0, 1] is the only meaningful unit (PNG/JPEG)."""
    if record is None:
        return None
    md = record.metadata or {}
    rng = md.get("value_range")
    if rng is None or not float(rng[1]) >= float(rng[0]):
        return None
    header = record.header
    slope = intercept = None
    lut = False
    unit = ""
    if header is not None:
        if "ModalityLUTSequence" in header:
            lut = True
        else:
            try:
                slope = float(header.get("RescaleSlope", 1.0) or 1.0)
                intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
            except (TypeError, ValueError):
                slope, intercept = 1.0, 0.0
            lut = not (slope == 1.0 and intercept == 0.0)
        unit = str(header.get("RescaleType", "") or "").strip()
        if unit.upper() in ("US", "UNSPECIFIED"):
            unit = ""
    else:
        slope, intercept = 1.0, 0.0
    return ValueScale(float(rng[0]), float(rng[1]), bool(md.get("value_inverted")), slope, intercept, unit, lut)


@dataclass(frozen=True)
class PixelReadout:
    """What is under the cursor: indices, the [0, 1] value and the file's own values."""

    row: int
    col: int
    value: float  # [0, 1] display scale
    stored: float | None = None
    modality: float | None = None
    unit: str = ""
    has_modality_lut: bool = False

    def text(self) -> str:
        where = f"row {self.row}, col {self.col}"
        if self.modality is None:
            return f"{where}: value {self.value:.4f} (of 0–1)"
        unit = f" {self.unit}" if self.unit else ""
        if not self.has_modality_lut:
            return f"{where}: stored {self.modality:.0f}"
        stored = f"stored {self.stored:.0f}, " if self.stored is not None else ""
        return f"{where}: {stored}modality {_num(self.modality)}{unit}"


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 else f"{v:.1f}"


def pixel_readout(record: ImageRecord, row: int, col: int) -> PixelReadout:
    """Readout of pixel (row, col): stored and modality values where the file defines them."""
    value = float(record.pixels[row, col])
    scale = value_scale(record)
    if scale is None:
        return PixelReadout(row, col, value)
    modality = float(scale.modality(value))
    stored = scale.stored(modality)
    if stored is not None:
        stored = float(np.round(stored))
        # the stored value is an integer: report the modality value it maps to, not float32 noise
        modality = float(stored * scale.slope + scale.intercept) if scale.slope is not None else modality
    return PixelReadout(row, col, value, stored, modality, scale.unit, scale.has_modality_lut)
