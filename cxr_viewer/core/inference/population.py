"""Is this image inside the population a model was trained on? (The bundle's ``population`` block.)

A score is only worth a POSITIVE badge on the kind of film the model learned from. The
trainer writes what that was (sources, ages, views; ``trainer/population.py``); here the
image's own header (DICOM PatientAge, ViewPosition) and the QC verdict are compared with
it. An image outside gets the finding state "outside the model's population" with the
reason, never a POSITIVE badge. Images without the header fields (PNG, JPEG) are judged on
QC alone: nothing says they are outside.

Each finding also carries the population its threshold was validated on (the block's
``findings``: ages, views, sources). A film outside a finding's population, judged by its
DICOM PatientAge or, without one, by the model's own age head (``age_head``: a linear read of
the pooled features, fitted by the trainer on the sources that record age), shows that
finding as "outside population": the NIH findings were validated on adults only, so a child's
film gets no POSITIVE badge from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from cxr_viewer.core.inference.results import QCFlag
from cxr_viewer.core.models.blocks import OodStats, Population

__all__ = ["FilmAge", "estimate_age", "feature_distance", "film_age", "finding_outside", "outside_population"]

#: QC codes that put an image outside every chest model's population.
OUTSIDE_CODES = frozenset({"not_radiograph", "not_chest", "blank_image", "lateral_view", "possibly_inverted"})
AGE_MARGIN_YEARS = 5.0


def feature_distance(features: Any, ood: OodStats) -> float:
    """The model's own out-of-distribution signal: mean squared z-score of its pooled features.

    ``ood`` (the manifest's ``population.ood`` block, fitted by the trainer on validation
    films) holds the per-feature ``mean`` and ``std``; a film the model has seen the like of
    scores about 1, one unlike anything it learned from scores far higher.
    """
    import numpy as np

    f = np.asarray(features, dtype=np.float64).reshape(-1)
    mean = np.asarray(ood.mean, dtype=np.float64)
    std = np.maximum(np.asarray(ood.std, dtype=np.float64), 1e-6)
    if f.shape != mean.shape:
        raise ValueError(f"feature size {f.size} does not match the bundle's OOD statistics ({mean.size})")
    return float(np.mean(((f - mean) / std) ** 2))


def outside_population(
    metadata: Mapping[str, Any] | None,
    qc: Iterable[QCFlag],
    population: Population | None,
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
    ages = population.age_years
    age = meta.get("patient_age_years")
    if isinstance(age, (int, float)) and ages is not None and ages.min is not None:
        lo, hi = float(ages.min), ages.upper
        if age < lo or age > hi + AGE_MARGIN_YEARS:
            return f"outside the model's population: patient age {age:g} years, trained on {lo:g}-{hi:g} years"
    view = str(meta.get("view_position") or "").upper().strip()
    accepted = [v.upper() for v in population.accepted_views]
    if view and accepted and view not in accepted:
        return f"outside the model's population: view {view}, trained on {', '.join(accepted)}"
    ood = population.ood
    if features is not None and ood is not None and ood.threshold is not None:
        d = feature_distance(features, ood)
        if d > float(ood.threshold):
            q = 0.995 if ood.quantile is None else ood.quantile
            return (f"outside the model's population: its features are unlike the training films "
                    f"(distance {d:.1f}, above the {q:g} quantile {float(ood.threshold):.1f} of validation films)")  # fmt: skip
    return ""


class FilmAge(NamedTuple):
    """A film's age in years and where it came from (``dicom`` or ``estimate``)."""

    years: float
    source: str


def estimate_age(features: Any, population: Population | None) -> float | None:
    """The age head's estimate (years) from the model's pooled features, or None without a head."""
    head = None if population is None else population.age_head
    if features is None or head is None or not head.weights:
        return None
    import numpy as np

    f = np.asarray(features, dtype=np.float64).reshape(-1)
    w = np.asarray(head.weights, dtype=np.float64)
    if f.shape != w.shape:
        raise ValueError(f"feature size {f.size} does not match the bundle's age head ({w.size})")
    return float(np.clip(f @ w + float(head.bias), 0.0, 110.0))


def film_age(metadata: Mapping[str, Any] | None, population: Population | None, features: Any = None) -> FilmAge | None:
    """DICOM PatientAge when the header has one, else the model's age estimate, else None."""
    age = (metadata or {}).get("patient_age_years")
    if isinstance(age, (int, float)) and age >= 0:
        return FilmAge(float(age), "dicom")
    est = estimate_age(features, population)
    return None if est is None else FilmAge(est, "estimate")


def finding_outside(population: Population | None, label: str, age: FilmAge | None) -> str:
    """Why this film is outside the population ``label``'s threshold was validated on ("" when inside).

    With a recorded age: outside when it lies below the finding's validated ages (or far above).
    With the age head's estimate (error of years): only the child/adult decision is trusted, so a
    film the head calls a child (below its ``child_below`` cut-off) is outside every finding not
    validated on children.
    """
    if age is None or not population:
        return ""
    fp = population.findings.get(label)
    ages = None if fp is None else fp.age_years
    if fp is None or ages is None or ages.min is None:
        return ""
    lo, hi = float(ages.min), ages.upper
    where = f"{label} was validated on ages {lo:g}-{hi:g}"
    if age.source == "dicom":
        if age.years < lo or age.years > hi + AGE_MARGIN_YEARS:
            return f"outside the finding's population: patient age {age.years:g} years; {where}"
        return ""
    head = population.age_head
    cut = float((head.child_below if head is not None else None) or 12.0)
    children = lo < cut if fp.children is None else fp.children
    if age.years < cut and not children:
        return f"outside the finding's population: the model estimates a child (about {age.years:.0f} years); {where}"
    return ""
