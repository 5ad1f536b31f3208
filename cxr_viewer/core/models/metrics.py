"""Classifier metrics shared by the trainer and the viewer (site calibration runs in both).

AUROC with a patient-level bootstrap (NumPy/SciPy only, so the viewer can run them), confusion counts at a threshold, the choice of an
operating threshold by a rule (Youden, target sensitivity, target specificity), and a
generic patient-bootstrap interval for any statistic. Written once here; ``trainer.evaluate``
and ``trainer.calibrate`` import them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from cxr_viewer.core.errors import TrainingConfigError

__all__ = [
    "THRESHOLD_METHODS",
    "auroc",
    "bootstrap_auroc",
    "bootstrap_stat",
    "choose_threshold",
    "operating_point",
    "roc_curve",
]

THRESHOLD_METHODS = ("youden", "sensitivity", "specificity")


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        return float("nan")
    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    return float((rankdata(p)[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, highest first; the first threshold is +inf."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ps)), ys.size - 1]
    tps = np.r_[0.0, np.cumsum(ys)[last]]
    fps = np.r_[0.0, (last + 1) - tps[1:]]
    return fps / max(fps[-1], 1.0), tps / max(tps[-1], 1.0), np.r_[np.inf, ps[last]]


def _patient_rows(groups: np.ndarray) -> list[np.ndarray]:
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, bounds)


def bootstrap_stat(
    stat: Callable[[np.ndarray], float], groups: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, int]:
    """Percentile 95 % interval of ``stat(rows)`` over resamples of patients (``groups``) with replacement.

    ``stat`` receives the row indices of one resample and returns a number (NaN draws are
    skipped). Returns (lower, upper, resamples used); NaNs when too few draws were usable.
    """
    rows = _patient_rows(groups)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(int(n_boot)):
        idx = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
        v = stat(idx)
        if v is not None and not math.isnan(v):
            stats.append(v)
    if len(stats) < max(10, int(n_boot) // 10):
        return float("nan"), float("nan"), len(stats)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi), len(stats)


def bootstrap_auroc(
    y: np.ndarray, p: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, int]:
    """Percentile 95 % CI of AUROC resampling ``groups`` (patients) with replacement.

    Returns (lower, upper, resamples used): draws with only one class are skipped.
    """
    return bootstrap_stat(lambda idx: auroc(y[idx], p[idx]), groups, n_boot=n_boot, seed=seed)


def operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion counts and the usual rates at ``threshold`` (score >= threshold is positive)."""
    pred = p >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    tn = int(np.sum(~pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))

    def ratio(a: int, b: int) -> float | None:
        return None if b == 0 else a / b

    sens, ppv = ratio(tp, tp + fn), ratio(tp, tp + fp)
    f1 = None if not sens or not ppv else 2 * sens * ppv / (sens + ppv)
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": sens, "specificity": ratio(tn, tn + fp), "ppv": ppv, "npv": ratio(tn, tn + fn),
        "f1": f1 if f1 is not None else (0.0 if tp == 0 and (fp + fn) > 0 else None),
    }  # fmt: skip


def choose_threshold(y: np.ndarray, p: np.ndarray, method: str = "youden", target: float = 0.9) -> dict[str, Any]:
    """Threshold in [0, 1] by ``method`` with the sensitivity/specificity it achieves on (y, p).

    ``youden`` maximises sensitivity + specificity - 1; ``sensitivity`` is the highest
    threshold that still reaches ``target`` sensitivity (the most specific rule that misses
    few patients); ``specificity`` the lowest threshold that keeps ``target`` specificity.
    """
    if method not in THRESHOLD_METHODS:
        raise TrainingConfigError(f"Unknown calibration method {method!r}; use one of {', '.join(THRESHOLD_METHODS)}.")
    fpr, tpr, thr = roc_curve(y, p)
    thr = np.clip(thr, 0.0, 1.0)  # the first threshold is +inf ("nothing positive")
    spec = 1 - fpr
    if method == "youden":
        i = int(np.argmax(tpr - fpr))
    elif method == "sensitivity":
        ok = np.flatnonzero(tpr >= target)  # thresholds decrease along the curve: first is the highest
        i = int(ok[0])
    else:
        ok = np.flatnonzero(spec >= target)
        i = int(ok[-1])
    return {"value": float(thr[i]), "sensitivity": float(tpr[i]), "specificity": float(spec[i])}
