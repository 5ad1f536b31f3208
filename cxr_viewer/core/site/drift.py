"""Score drift: recent raw scores against the reference distribution a site profile was fitted on."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.jsonio import finite_or_none

if TYPE_CHECKING:
    from cxr_viewer.core.inference.results import Finding
    from cxr_viewer.core.site.profile import SiteProfile

__all__ = ["DriftMonitor", "DriftResult", "check_drift", "reference_distribution", "score_drift"]

PSI_LIMIT = 0.25  # population stability index beyond which scores have shifted (0.1 = moderate)
KS_ALPHA = 0.01
DRIFT_MIN_IMAGES = 50


# ---------------------------------------------------------------------- drift
@dataclass(frozen=True)
class DriftResult:
    label: str
    n: int
    psi: float
    ks: float
    ks_p: float
    drifted: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return finite_or_none({"label": self.label, "n": self.n, "psi": round(self.psi, 4), "ks": round(self.ks, 4),
                        "ks_p": self.ks_p, "drifted": self.drifted, "message": self.message})  # fmt: skip


def reference_distribution(p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """What drift is measured against: 101 quantiles and a decile histogram of raw scores."""
    p = np.asarray(p, dtype=np.float64)
    q = np.quantile(p, np.linspace(0, 1, 101))
    edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1))[1:-1])
    counts = np.bincount(np.searchsorted(edges, p, side="right"), minlength=len(edges) + 1)
    return {"n": int(p.size), "quantiles": [round(float(v), 6) for v in q], "edges": [round(float(v), 6) for v in edges],
            "fractions": [round(float(c) / p.size, 6) for c in counts]}  # fmt: skip


def score_drift(
    label: str, reference: Mapping[str, Any], scores: Sequence[float], *, psi_limit: float = PSI_LIMIT,
    ks_alpha: float = KS_ALPHA, min_n: int = DRIFT_MIN_IMAGES,
) -> DriftResult:  # fmt: skip
    """PSI over the reference deciles and a two-sample KS test (against the reference quantiles).

    Drift is flagged when both agree: the KS test says the distributions differ (p below
    ``ks_alpha``) and the PSI says by enough to matter (above ``psi_limit``); PSI alone is
    noisy on a few dozen images, and KS alone flags trivial shifts on thousands.

    Feed raw model scores (``Finding.raw_score`` when a profile was applied, else ``score``).
    """
    from scipy.stats import kstwobign

    s = np.asarray([v for v in scores if v is not None and math.isfinite(v)], dtype=np.float64)
    n_ref = int(reference.get("n", 0))
    if s.size == 0 or n_ref == 0:
        return DriftResult(label, int(s.size), math.nan, math.nan, math.nan, False, f"{label}: no scores to compare yet.")
    edges = np.asarray(reference["edges"], dtype=np.float64)
    expected = np.maximum(np.asarray(reference["fractions"], dtype=np.float64), 1e-4)
    actual = np.maximum(np.bincount(np.searchsorted(edges, s, side="right"), minlength=len(expected)) / s.size, 1e-4)
    psi = float(np.sum((actual - expected) * np.log(actual / expected)))
    qs = np.maximum.accumulate(np.asarray(reference["quantiles"], dtype=np.float64))
    grid = np.linspace(0, 1, qs.size)
    xs = np.sort(s)
    ref_cdf = np.interp(xs, qs, grid)
    ecdf_hi = np.arange(1, xs.size + 1) / xs.size
    ecdf_lo = np.arange(0, xs.size) / xs.size
    ks = float(max(np.max(ecdf_hi - ref_cdf), np.max(ref_cdf - ecdf_lo)))
    ne = s.size * n_ref / (s.size + n_ref)
    ks_p = float(kstwobign.sf(ks * math.sqrt(ne)))
    enough = s.size >= min_n
    drifted = enough and psi > psi_limit and ks_p < ks_alpha  # a real shift (KS) that is large enough (PSI)
    if not enough:
        msg = f"{label}: {s.size} recent images; drift is judged from {min_n}."
    elif drifted:
        msg = (f"{label}: recent scores have drifted from the site profile's reference (PSI {psi:.2f}, "
               f"KS {ks:.2f}, p = {ks_p:.1g}, {s.size} images); the site calibration may no longer hold: recalibrate.")  # fmt: skip
    else:
        msg = f"{label}: scores match the site profile's reference (PSI {psi:.2f}, KS p = {ks_p:.2f})."
    return DriftResult(label, int(s.size), psi, ks, ks_p, drifted, msg)


def check_drift(profile: SiteProfile, recent: Mapping[str, Sequence[float]], **kwargs: Any) -> list[DriftResult]:
    """One :class:`DriftResult` per profile finding with recent raw scores."""
    return [score_drift(lab, fp.reference, recent[lab], **kwargs)
            for lab, fp in profile.findings.items() if lab in recent and fp.reference]  # fmt: skip


class DriftMonitor:
    """Recent raw scores per finding of the profile's model, checked against the profile's reference.

    Fed with each analysed image's findings (a worklist feeds its stored scores the same
    way); ``check`` returns the drift of every finding with enough recent images.
    """

    def __init__(self, profile: SiteProfile, window: int = 500, **limits: Any) -> None:
        from collections import deque

        self.profile = profile
        self.limits = limits
        self.recent: dict[str, Any] = {lab: deque(maxlen=int(window)) for lab in profile.findings}

    def add(self, findings: Iterable["Finding"]) -> None:
        for f in findings:
            if f.model == self.profile.bundle.get("name") and f.label in self.recent:
                self.recent[f.label].append(float(f.raw_score if f.raw_score is not None else f.score))

    def check(self) -> list[DriftResult]:
        return check_drift(self.profile, {lab: list(v) for lab, v in self.recent.items()}, **self.limits)

