"""The text a viewer draws in the image corners, and the patient orientation codes.

Qt-free so a second viewport (the prior), an export or a test produces the same
lines as the main canvas; the Qt layer only paints them.
"""

from __future__ import annotations

import math
from typing import Any

from cxr_viewer.core.imaging.windowing import window_in_source_units
from cxr_viewer.core.io.record import ImageRecord

ORIENTATION_CODES = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}


def opposite(code: str) -> str:
    """The opposite patient direction (L <-> R, A <-> P, H <-> F), letter by letter."""
    return "".join(ORIENTATION_CODES.get(ch, ch) for ch in code)


def format_date(da: str) -> str:
    """DICOM DA (YYYYMMDD) -> YYYY-MM-DD; other text unchanged."""
    da = str(da or "")
    return f"{da[:4]}-{da[4:6]}-{da[6:]}" if len(da) == 8 and da.isdigit() else da


def demographic_lines(record: ImageRecord | None) -> list[str]:
    """Patient identity lines for the top-left corner (empty when nothing is known)."""
    if record is None:
        return []
    md = record.metadata
    lines = []
    name = str(md.get("patient_name") or "").replace("^", " ").strip()
    if name:
        lines.append(name)
    if md.get("patient_id"):
        lines.append(f"ID {md['patient_id']}")
    age = md.get("patient_age_years")
    sex = md.get("patient_sex") or ""
    parts = []
    if sex:
        parts.append(f"Sex {sex}")
    if age is not None:
        parts.append(f"{age:.0f} y" if age >= 2 else f"{age * 12:.0f} mo")
    if parts:
        lines.append(", ".join(parts))
    date = format_date(str(md.get("study_date") or ""))
    if date:
        lines.append(f"Study {date}")
    return lines


def display_lines(record: ImageRecord | None, state: Any, heatmap: Any = None) -> list[str]:
    """Acquisition and display state for the top-right corner.

    ``state`` is a session ``DisplayState``; ``heatmap`` a ``HeatmapLayer`` or None.
    """
    if record is None:
        return []
    md = record.metadata
    head = " ".join(str(v) for v in (md.get("modality"), md.get("view_position")) if v)
    desc = str(md.get("series_description") or md.get("study_description") or "")
    c, w = state.center_width
    source = window_in_source_units(record, state.window)
    if source is not None:  # the file's own units, as a PACS shows them
        c, w = source
    cw = f"C {c:.0f}  W {w:.0f}" if source is not None else f"C {c:.3f}  W {w:.3f}"
    lines = [s for s in (head, desc) if s]
    lines.append(cw + (f"  ({state.preset})" if state.preset else ""))
    lines.append(f"Zoom {state.zoom * 100:.0f}%")
    flags = []
    if state.invert:
        flags.append("Inverted")
    if state.rotation:
        flags.append(f"Rotated {state.rotation}°")
    if state.mirrored:
        flags.append("Mirrored")
    if flags:
        lines.append(", ".join(flags))
    if heatmap is not None and heatmap.visible and heatmap.label:
        lines.append(f"Heatmap: {heatmap.label.replace('_', ' ')}" + (f" ({heatmap.method})" if heatmap.method else ""))
    return lines


def image_lines(record: ImageRecord | None) -> list[str]:
    """Size and pixel spacing for the bottom-left corner."""
    if record is None:
        return []
    h, w = record.shape
    lines = [f"{w} × {h} px"]
    if record.spacing_mm is not None:
        r, c = record.spacing_mm
        lines.append(f"{r:.3f} mm/px" if math.isclose(r, c, rel_tol=1e-6) else f"{r:.3f} × {c:.3f} mm/px")
    else:
        lines.append("No pixel spacing: measurements in px")
    from cxr_viewer.core.imaging.geometry import spacing_problem

    if spacing_problem(record):
        r, c = record.spacing_mm  # type: ignore[misc]
        lines.append(f"⚠ spacing implausible: film {w * c / 10:.0f} × {h * r / 10:.0f} cm")
    return lines


def patient_orientation(record: ImageRecord | None) -> tuple[str, str] | None:
    """PatientOrientation (towards increasing column, towards increasing row), or None when absent/odd."""
    header = record.header if record is not None else None
    value = getattr(header, "PatientOrientation", None) if header is not None else None
    try:
        parts = [str(v).strip().upper() for v in value] if value is not None else []
    except TypeError:
        parts = []
    if len(parts) != 2 or not all(parts) or not all(set(p) <= set(ORIENTATION_CODES) for p in parts):
        return None
    return parts[0], parts[1]
