"""The reader's measurements as rows of a record: kind, name, value with its unit (PDF table, SR groups).

One formatter for every export, from the annotation objects of
:mod:`cxr_viewer.core.imaging.measurements` (arrows and text notes are not measurements
and are left to the GSPS, which draws every annotation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MEASUREMENT_KINDS", "MeasurementRow", "measurement_rows"]

MEASUREMENT_KINDS = ("distance", "angle", "roi", "ctr")


@dataclass(frozen=True, eq=False)
class MeasurementRow:
    kind: str
    name: str
    value: str  # the value(s) with units, as printed
    annotation: Any


def _number(value: float, unit: str) -> str:
    if unit in ("0-1", ""):
        return f"{value:.3f}" if unit == "0-1" else f"{value:.1f}"
    return f"{value:.1f} {unit}"


def measurement_rows(annotations: Sequence[Any]) -> list[MeasurementRow]:
    """One row per measurement (distance, angle, ROI, cardiothoracic ratio), in drawing order."""
    rows: list[MeasurementRow] = []
    n = {k: 0 for k in MEASUREMENT_KINDS}
    for ann in annotations or ():
        kind = getattr(ann, "kind", "")
        if kind not in MEASUREMENT_KINDS:
            continue
        n[kind] += 1
        if kind == "distance":
            rows.append(MeasurementRow(kind, f"Distance {n[kind]}", _number(ann.length, ann.unit), ann))
        elif kind == "angle":
            rows.append(MeasurementRow(kind, f"Angle {n[kind]}", f"{ann.degrees:.1f} deg", ann))
        elif kind == "ctr":
            rows.append(MeasurementRow(kind, f"Cardiothoracic ratio {n[kind]}",
                                       f"{ann.ratio:.2f} (cardiac {_number(ann.cardiac_width, ann.unit)}, "
                                       f"thoracic {_number(ann.thoracic_width, ann.unit)})", ann))
        else:
            s = ann.stats
            unit = "" if s.unit in ("0-1",) else s.unit
            area = f"{s.area_mm2:.1f} mm2" if s.area_mm2 is not None else f"{s.area_px:.0f} px"
            rows.append(MeasurementRow(kind, f"ROI {n[kind]} ({ann.shape})",
                                       f"mean {_number(s.mean, unit)}, SD {_number(s.sd, unit)}, "
                                       f"min {_number(s.minimum, unit)}, max {_number(s.maximum, unit)}, area {area}",
                                       ann))
    return rows
