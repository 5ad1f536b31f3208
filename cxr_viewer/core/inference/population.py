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

__all__ = ["feature_distance", "outside_population"]

#: QC codes that put an image outside every chest model's population.
OUTSIDE_CODES = frozenset({"not_radiograph", "not_chest", "blank_image", "lateral_view", "possibly_inverted"})
AGE_MARGIN_YEARS = 5.0


def feature_distance(features: Any, ood: Mapping[str, Any]) -> float:
    """The model's own out-of-distribution signal: mean squared z-score of its pooled features.

    ``ood`` (the manifest's ``population.ood`` block, fitted by the trainer on validation
    films) holds the per-feature ``mean`` and ``std``; a film the model has seen the like of
    scores about 1, one unlike anything it learned from scores far higher.
    """
    import numpy as np

    f = np.asarray(features, dtype=np.float64).reshape(-1)
    mean = np.asarray(ood["mean"], dtype=np.float64)
    std = np.maximum(np.asarray(ood["std"], dtype=np.float64), 1e-6)
    if f.shape != mean.shape:
        raise ValueError(f"feature size {f.size} does not match the bundle's OOD statistics ({mean.size})")
    return float(np.mean(((f - mean) / std) ** 2))


def outside_population(
    metadata: Mapping[str, Any] | None,
    qc: Iterable[QCFlag],
    population: Mapping[str, Any] | None,
    features: Any = None,
) -> str:
    """The reason this image is outside ``population`` ("" when it is inside or nothing says otherwise).

    ``features``: the model's pooled features of this image, when the caller has them and
    the population block carries ``ood`` statistics.
    """
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
    ood = population.get("ood")
    if features is not None and ood and ood.get("threshold") is not None:
        d = feature_distance(features, ood)
        if d > float(ood["threshold"]):
            return (f"outside the model's population: its features are unlike the training films "
                    f"(distance {d:.1f}, above the {ood.get('quantile', 0.995):g} quantile {float(ood['threshold']):.1f} of validation films)")  # fmt: skip
    return ""
