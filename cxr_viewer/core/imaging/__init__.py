"""Display-side image handling: window/level presets and geometry (never changes model input)."""

from __future__ import annotations

from cxr_viewer.core.imaging.geometry import (
    DisplayTransform,
    describe_spacing,
    distance_mm,
    distance_px,
    flip_points_lr,
    rotate_points_cw,
)
from cxr_viewer.core.imaging.windowing import (
    PRESETS,
    Auto,
    Bone,
    DefaultWindow,
    FullRange,
    Lung,
    Manual,
    Mediastinum,
    Percentile,
    WindowPreset,
    center_width_to_limits,
    limits_to_center_width,
    quantize,
    window_lut,
    window_to_uint8,
)

__all__ = [
    "PRESETS", "Auto", "Bone", "DefaultWindow", "DisplayTransform", "FullRange", "Lung", "Manual",
    "Mediastinum", "Percentile", "WindowPreset", "center_width_to_limits", "describe_spacing",
    "distance_mm", "distance_px", "flip_points_lr", "limits_to_center_width", "quantize",
    "rotate_points_cw", "window_lut", "window_to_uint8",
]
