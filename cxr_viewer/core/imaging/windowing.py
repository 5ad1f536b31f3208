"""Window/level presets and fast conversion of [0, 1] pixels to 8-bit display values.

Projection radiographs (CR/DX) have no Hounsfield units: a stored value depends on
the detector, the exposure and the vendor's processing, so CT-style fixed windows
("lung = -600/1500 HU") mean nothing here. Apart from the file's own DICOM window,
the presets are therefore defined by percentiles of the image's own histogram:
the lungs are the darker (less dense) part of a chest film, the mediastinum and
bone the brighter part. Presets are small frozen classes with
``get_limits(record_or_pixels) -> (lo, hi)`` in the record's [0, 1] units.

Windowing is display-only: it never changes what the models see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

import numpy as np

from cxr_viewer.core.io.record import ImageRecord

Image = Union[ImageRecord, np.ndarray]

#: Pixels sampled for histogram presets; percentiles of ~256k pixels match the full image closely.
_SAMPLE_TARGET = 262_144
_MIN_WIDTH = 1e-4


class WindowPreset(Protocol):
    name: str

    def get_limits(self, image: Image) -> tuple[float, float]: ...


def _pixels(image: Image) -> np.ndarray:
    return image.pixels if isinstance(image, ImageRecord) else np.asarray(image)


def _sample(px: np.ndarray) -> np.ndarray:
    """A strided subsample: percentiles without sorting millions of pixels."""
    step = max(1, int(np.sqrt(px.size / _SAMPLE_TARGET)))
    return px[::step, ::step] if px.ndim == 2 else px.ravel()[:: step * step]


def _body(sample: np.ndarray) -> np.ndarray:
    """Drop pixels sitting exactly at the image minimum or maximum.

    Collimator shutters, burnt-out air and burnt-in labels pile up at the extremes and
    would otherwise drag every percentile towards them.
    """
    flat = sample.ravel()
    lo, hi = flat.min(), flat.max()
    inner = flat[(flat > lo) & (flat < hi)]
    return inner if inner.size >= max(16, flat.size // 20) else flat


def _ordered(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if hi - lo < _MIN_WIDTH:
        mid = (lo + hi) / 2.0
        lo, hi = mid - _MIN_WIDTH / 2.0, mid + _MIN_WIDTH / 2.0
    return lo, hi


def center_width_to_limits(center: float, width: float) -> tuple[float, float]:
    """``(center, width)`` -> ``(lo, hi)``; the width is kept positive."""
    width = max(float(width), _MIN_WIDTH)
    return float(center) - width / 2.0, float(center) + width / 2.0


def limits_to_center_width(lo: float, hi: float) -> tuple[float, float]:
    """``(lo, hi)`` -> ``(center, width)``."""
    lo, hi = _ordered(min(lo, hi), max(lo, hi))
    return (lo + hi) / 2.0, hi - lo


@dataclass(frozen=True)
class FullRange:
    """Every value from the darkest to the brightest pixel."""

    name: str = "Full range"

    def get_limits(self, image: Image) -> tuple[float, float]:
        px = _pixels(image)
        return _ordered(float(px.min()), float(px.max()))


@dataclass(frozen=True)
class DefaultWindow:
    """The window the file asks for (DICOM VOI window or LUT), else the full range."""

    name: str = "Default"

    def get_limits(self, image: Image) -> tuple[float, float]:
        if isinstance(image, ImageRecord) and image.default_window is not None:
            return center_width_to_limits(*image.default_window)
        return FullRange().get_limits(image)


@dataclass(frozen=True)
class Percentile:
    """Limits at two percentiles of the image histogram (saturated extremes excluded)."""

    lower: float
    upper: float
    name: str = "Percentile"
    exclude_extremes: bool = True

    def get_limits(self, image: Image) -> tuple[float, float]:
        sample = _sample(_pixels(image))
        values = _body(sample) if self.exclude_extremes else sample.ravel()
        lo, hi = np.percentile(values, [self.lower, self.upper])
        return _ordered(lo, hi)


@dataclass(frozen=True)
class Auto(Percentile):
    """0.5-99.5 percentile stretch: robust to a few hot or dead pixels."""

    lower: float = 0.5
    upper: float = 99.5
    name: str = "Auto"
    exclude_extremes: bool = False


@dataclass(frozen=True)
class Lung(Percentile):
    """Contrast spread over the darker four fifths of the body: lung parenchyma and vessels.

    The brightest fifth (heart, diaphragm, spine) saturates to white.
    """

    lower: float = 1.0
    upper: float = 80.0
    name: str = "Lung"


@dataclass(frozen=True)
class Mediastinum(Percentile):
    """Contrast in the brighter part: lines, tubes and lesions behind the heart and diaphragm."""

    lower: float = 35.0
    upper: float = 99.8
    name: str = "Mediastinum"


@dataclass(frozen=True)
class Bone(Percentile):
    """A narrow, high-contrast window on the brightest values: ribs, clavicles, spine."""

    lower: float = 60.0
    upper: float = 99.9
    name: str = "Bone"


@dataclass(frozen=True)
class Manual:
    """A window the user set (e.g. by dragging), in [0, 1] units."""

    lo: float
    hi: float
    name: str = "Manual"

    def get_limits(self, image: Image) -> tuple[float, float]:
        return _ordered(min(self.lo, self.hi), max(self.lo, self.hi))


#: The presets offered in the viewer's menu, in menu order.
PRESETS: dict[str, WindowPreset] = {
    p.name: p for p in (DefaultWindow(), Lung(), Mediastinum(), Bone(), Auto(), FullRange())
}


# --------------------------------------------------------------------------- display
_LEVELS = 65535


def window_in_source_units(record: ImageRecord | None, window: tuple[float, float]) -> tuple[float, float] | None:
    """(centre, width) of a [0, 1] display window in the file's own values (DICOM modality-LUT output).

    Uses ``metadata["value_range"]`` (and ``value_inverted`` for MONOCHROME1, whose
    [0, 1] scale runs the other way); ``None`` when the source has no such range
    (PNG/JPEG), where [0, 1] is the only meaningful unit. Reported in the DICOM LINEAR
    convention (PS3.3 C.11.2.1.2.1: limits ``c - 0.5 -/+ (w - 1) / 2``), so the file's
    own window reads back as its WindowCenter/WindowWidth.
    """
    if record is None:
        return None
    rng = (record.metadata or {}).get("value_range")
    if rng is None:
        return None
    vmin, vmax = float(rng[0]), float(rng[1])
    if not vmax > vmin:
        return None
    lo, hi = float(window[0]), float(window[1])
    span = vmax - vmin
    centre = (lo + hi) / 2.0
    value = vmax - centre * span if (record.metadata or {}).get("value_inverted") else vmin + centre * span
    return value + 0.5, (hi - lo) * span + 1.0


def quantize(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] float pixels -> uint16 codes (e.g. for 16-bit export or a GPU texture)."""
    out = np.empty(pixels.shape, dtype=np.float32)
    np.multiply(pixels, np.float32(_LEVELS), out=out)
    np.clip(out, 0, _LEVELS, out=out)
    np.rint(out, out=out)
    return out.astype(np.uint16)


def window_lut(lo: float, hi: float, invert: bool = False) -> np.ndarray:
    """The 65536-entry uint8 table mapping :func:`quantize` codes through a window."""
    codes = np.arange(_LEVELS + 1, dtype=np.float32) / np.float32(_LEVELS)
    return _window_float(codes, lo, hi, invert)


def _window_float(pixels: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    lo, hi = _ordered(lo, hi)
    scale = np.float32(255.0 / (hi - lo))
    work = np.subtract(pixels, np.float32(lo), dtype=np.float32)
    np.multiply(work, scale, out=work)
    np.clip(work, 0.0, 255.0, out=work)
    if invert:
        np.subtract(np.float32(255.0), work, out=work)
    np.add(work, np.float32(0.5), out=work)  # round half up on the cast
    return work.astype(np.uint8)


def window_to_uint8(pixels: np.ndarray, lo: float, hi: float, invert: bool = False) -> np.ndarray:
    """Pixels -> uint8 display values: ``lo`` and below black, ``hi`` and above white.

    ``pixels`` is normally the float32 [0, 1] image: four in-place numpy passes, about
    3 ms for a 1955 x 1841 radiograph on one core (benchmarks/bench_window.py). Its
    :func:`quantize`\\ d uint16 codes are accepted too and go through a 65536-entry
    lookup table; with numpy that gather measured slower than the float path, so the
    float path is the one to use while dragging. ``invert`` shows bone dark.
    """
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint16:
        return window_lut(lo, hi, invert)[pixels]
    return _window_float(pixels, lo, hi, invert)
