"""What a site's films show about a model, before and after recalibration: counts, AUROC, ECE and
operating points with patient-bootstrap confidence intervals, on a patient-level split."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cxr_viewer.core.errors import SiteProfileError
from cxr_viewer.core.models.calibration import expected_calibration_error
from cxr_viewer.core.models.metrics import auroc, bootstrap_auroc, bootstrap_stat, operating_point, roc_curve

__all__ = ["MIN_POSITIVES", "card_prevalence", "describe_site_scores", "rates", "ece_ci", "reliability",
           "split_patients"]

MIN_POSITIVES = 20  # fewer site positives: the threshold is shown as not validated


def card_prevalence(manifest: Any, label: str) -> float | None:
    """The held-out prevalence the model card reports for ``label`` (None when it reports none)."""
    a = (manifest.metrics.get("auroc") or {}).get(label) or {}
    n_pos, n_neg = a.get("n_pos"), a.get("n_neg")
    return None if not n_pos or n_neg is None else float(n_pos) / (n_pos + n_neg)


def split_patients(y: np.ndarray, groups: np.ndarray, *, holdout: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out rows: patients dealt at random, stratified by whether they have a positive."""
    if not 0 < holdout < 1:
        raise SiteProfileError(f"The held-out part must be a fraction between 0 and 1, got {holdout}.")
    groups = np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(groups), dtype=bool)
    pos_patients = set(groups[np.asarray(y) == 1])
    uniq = np.unique(groups)
    for stratum in ([g for g in uniq if g in pos_patients], [g for g in uniq if g not in pos_patients]):
        stratum = list(rng.permutation(stratum))
        k = int(round(len(stratum) * holdout))
        held |= np.isin(groups, stratum[:k])
    return held


def reliability(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Reliability-diagram data: per equal-width score bin, the count, mean score and observed frequency."""
    bins = np.clip((np.asarray(p) * n_bins).astype(int), 0, n_bins - 1)
    out = []
    for k in range(n_bins):
        m = bins == k
        out.append({"bin": [k / n_bins, (k + 1) / n_bins], "n": int(m.sum()),
                    "mean_score": float(p[m].mean()) if m.any() else None,
                    "observed": float(y[m].mean()) if m.any() else None})  # fmt: skip
    return out


def _ci(stat: Any, y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    lo, hi, _ = bootstrap_stat(stat, groups, n_boot=n_boot, seed=seed)
    return None if math.isnan(lo) else [lo, hi]


def rates(y: np.ndarray, q: np.ndarray, thr: float, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Operating point at ``thr`` with patient-bootstrap CIs of sensitivity and specificity."""
    op = operating_point(y, q, thr)

    def sens(idx: np.ndarray) -> float:
        pos = y[idx] == 1
        return float(np.mean(q[idx][pos] >= thr)) if pos.any() else math.nan

    def spec(idx: np.ndarray) -> float:
        neg = y[idx] == 0
        return float(np.mean(q[idx][neg] < thr)) if neg.any() else math.nan

    op["sensitivity_ci95"] = _ci(sens, y, groups, n_boot, seed)
    op["specificity_ci95"] = _ci(spec, y, groups, n_boot, seed + 1)
    return op


def ece_ci(y: np.ndarray, q: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    return {"value": expected_calibration_error(y, q),
            "ci95": _ci(lambda idx: expected_calibration_error(y[idx], q[idx]), y, groups, n_boot, seed)}  # fmt: skip


def describe_site_scores(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, threshold: float, *, card_prevalence: float | None = None,
    n_boot: int = 500, seed: int = 0, min_positives: int = MIN_POSITIVES,
) -> dict[str, Any]:  # fmt: skip
    """How the model behaves on the site's films, before any recalibration."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    a = auroc(y, p)
    lo, hi, _ = bootstrap_auroc(y, p, groups, n_boot=n_boot, seed=seed) if not math.isnan(a) else (math.nan, 0, 0)
    out: dict[str, Any] = {
        "n_images": int(y.size), "n_patients": int(len(set(np.asarray(groups).astype(str)))),
        "n_pos": n_pos, "n_neg": n_neg, "prevalence": n_pos / y.size if y.size else None,
        "card_prevalence": card_prevalence,
        "auroc": {"value": a, "ci95": None if math.isnan(lo) else [lo, hi]},
        "current_threshold": rates(y, p, threshold, groups, n_boot, seed + 2),
        "ece": ece_ci(y, p, groups, n_boot, seed + 4),
        "reliability": reliability(y, p),
        "warnings": [],
    }  # fmt: skip
    if n_pos and n_neg:
        fpr, tpr, thr = roc_curve(y, p)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 101)).astype(int))
        out["roc"] = {"fpr": [round(float(v), 4) for v in fpr[keep]], "tpr": [round(float(v), 4) for v in tpr[keep]],
                      "threshold": [round(float(min(v, 1.0)), 4) for v in thr[keep]]}  # fmt: skip
    if n_pos < min_positives:
        out["warnings"].append(f"only {n_pos} positive film{'' if n_pos == 1 else 's'} (fewer than {min_positives}): "
                               "the intervals are wide "
                               "and the site threshold is not validated")  # fmt: skip
    if not math.isnan(lo) and hi < 0.7:
        out["warnings"].append(f"the model ranks these films poorly (AUROC {a:.2f}, CI {lo:.2f}-{hi:.2f}): "
                               "recalibration cannot repair the ranking; do not rely on this model at this site")  # fmt: skip
    if card_prevalence is not None and y.size and abs(out["prevalence"] - card_prevalence) > 0.1:
        out["warnings"].append(f"prevalence at this site {out['prevalence']:.2f} differs from the model card's "
                               f"{card_prevalence:.2f}: predictive values will differ")  # fmt: skip
    return out

