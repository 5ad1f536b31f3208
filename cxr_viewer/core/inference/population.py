"""Is this image inside the population a model was trained on? (The bundle's ``population`` block.)

A score is only worth a POSITIVE badge on the kind of film the model learned from. The
trainer writes what that was (sources, ages, views; ``trainer/population.py``); here the
image's own header (DICOM PatientAge, ViewPosition) and the QC verdict are compared with
it. An image outside gets the finding state "outside the model's population" with the
reason, never a POSITIVE badge. Images without the header fields (PNG, JPEG) are judged on
QC alone: nothing says they are outside.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from cxr_viewer.core.inference.results import QCFlag

__all__ = ["outside_population"]

#: QC codes that put an image outside every chest model's population.
OUTSIDE_CODES = frozenset({"not_radiograph", "not_chest", "blank_image", "lateral_view"})
AGE_MARGIN_YEARS = 5.0


def outside_population(
    metadata: Mapping[str, Any] | None, qc: Iterable[QCFlag], population: Mapping[str, Any] | None
) -> str:
    """The reason this image is outside ``population`` ("" when it is inside or nothing says otherwise)."""
    for flag in qc:
        if flag.code in OUTSIDE_CODES:
            return f"outside the model's population: {flag.message}"
    if not population:
        return ""
    meta = metadata or {}
    ages = population.get("age_years") or {}
    age = meta.get("patient_age_years")
    if isinstance(age, (int, float)) and ages.get("min") is not None:
        lo, hi = float(ages["min"]), float(ages.get("max") or 200.0)
        if age < lo or age > hi + AGE_MARGIN_YEARS:
            return f"outside the model's population: patient age {age:g} years, trained on {lo:g}-{hi:g} years"
    view = str(meta.get("view_position") or "").upper().strip()
    accepted = [str(v).upper() for v in population.get("accepted_views") or ()]
    if view and accepted and view not in accepted:
        return f"outside the model's population: view {view}, trained on {', '.join(accepted)}"
    return ""
