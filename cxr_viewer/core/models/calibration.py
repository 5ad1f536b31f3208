"""Score calibration, written once: fitted by the trainer on validation, by a site on its own films.

Every method here maps a model's raw probability ``p`` of one label to a calibrated one:

- ``temperature``: ``sigmoid(logit(p) / T)``, one parameter per label;
- ``platt``: ``sigmoid(a * logit(p) + b)``, Platt's logistic recalibration (temperature
  plus a shift);
- ``isotonic``: a monotone step function (scikit-learn's isotonic regression), stored as
  interpolation knots.

Temperature and Platt are affine in the logit, so a classifier's linear head can absorb
them (:func:`fold_affine_into_linear`): the exported weights then produce calibrated scores
in every backend with no extra step. The choice between methods is made by
cross-validated ECE on the calibration split (:func:`choose_calibration`), never on a test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Calibration",
    "apply_calibration",
    "choose_calibration",
    "expected_calibration_error",
    "fit_calibration",
    "fold_affine_into_linear",
    "logit",
]

METHODS = ("none", "temperature", "platt", "isotonic")
_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


#: Bounds of a valid calibration: logit coefficients and the number of isotonic knots.
MAX_COEFFICIENT = 1e3
MAX_KNOTS = 10_000


@dataclass(frozen=True)
class Calibration:
    """One label's fitted calibration; ``to_dict``/``from_dict`` round-trip through a manifest or profile."""

    method: str = "none"
    a: float = 1.0  # slope on the logit (1/T for temperature)
    b: float = 0.0  # shift on the logit
    knots_x: tuple[float, ...] = field(default_factory=tuple)  # isotonic
    knots_y: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; use one of {', '.join(METHODS)}")
        if not (np.isfinite(self.a) and np.isfinite(self.b)):
            raise ValueError("calibration parameters must be finite")
        if abs(self.a) > MAX_COEFFICIENT or abs(self.b) > MAX_COEFFICIENT:
            raise ValueError(f"calibration coefficients must lie within +-{MAX_COEFFICIENT:g} (a={self.a:g}, b={self.b:g})")
        if self.method == "isotonic":
            x, y = np.asarray(self.knots_x, dtype=np.float64), np.asarray(self.knots_y, dtype=np.float64)
            if x.size == 0 or x.size != y.size or x.size > MAX_KNOTS:
                raise ValueError(f"isotonic calibration needs 1 to {MAX_KNOTS} matching knots_x and knots_y")
            if not (np.isfinite(x).all() and np.isfinite(y).all()):
                raise ValueError("isotonic knots must be finite numbers")
            if x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1:
                raise ValueError("isotonic knots must lie in [0, 1] (they map a score to a probability)")
            if (np.diff(x) < 0).any() or (np.diff(y) < 0).any():
                raise ValueError("isotonic knots must be sorted and non-decreasing")

    @property
    def affine(self) -> bool:
        return self.method in ("none", "temperature", "platt")

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, always within [0, 1] (a NaN input stays NaN, to be reported)."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "none":
            return p
        if self.method == "isotonic":
            return np.clip(np.interp(p, self.knots_x, self.knots_y), 0.0, 1.0)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.clip(_sigmoid(self.a * logit(p) + self.b), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method}
        if self.affine:
            d.update(a=round(float(self.a), 6), b=round(float(self.b), 6))
        else:
            d.update(knots_x=[round(float(v), 6) for v in self.knots_x], knots_y=[round(float(v), 6) for v in self.knots_y])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Calibration":
        """A calibration from JSON; ``ValueError``/``TypeError`` name what is wrong (never a bad score later)."""
        if d is not None and not isinstance(d, dict):
            raise TypeError("a calibration must be an object")
        d = dict(d or {})
        for key in ("knots_x", "knots_y"):
            if not isinstance(d.get(key, ()), (list, tuple)):
                raise TypeError(f"'{key}' must be a list of numbers")
        return cls(
            method=str(d.get("method", "none")),
            a=float(d.get("a", 1.0)),
            b=float(d.get("b", 0.0)),
            knots_x=tuple(float(v) for v in d.get("knots_x", ())),
            knots_y=tuple(float(v) for v in d.get("knots_y", ())),
        )


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Mean |observed frequency - mean score| over equal-width score bins, weighted by bin size."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for k in range(n_bins):
        m = bins == k
        if m.any():
            ece += m.mean() * abs(float(y[m].mean()) - float(p[m].mean()))
    return float(ece)


def fit_calibration(y: np.ndarray, p: np.ndarray, method: str) -> Calibration:
    """Fit ``method`` on labels ``y`` (0/1) and raw probabilities ``p`` of one label."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if method == "none" or y.size == 0 or y.min() == y.max():
        return Calibration("none")
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return Calibration("isotonic", knots_x=tuple(iso.X_thresholds_), knots_y=tuple(iso.y_thresholds_))
    from scipy.optimize import minimize

    z = logit(p)

    def nll(params: np.ndarray) -> float:
        a, b = (params[0], 0.0) if method == "temperature" else (params[0], params[1])
        q = np.clip(_sigmoid(a * z + b), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    x0 = np.array([1.0] if method == "temperature" else [1.0, 0.0])
    bounds = [(0.02, 50.0)] if method == "temperature" else [(0.02, 50.0), (-20.0, 20.0)]
    res = minimize(nll, x0, method="L-BFGS-B", bounds=bounds)
    a = float(res.x[0])
    b = 0.0 if method == "temperature" else float(res.x[1])
    return Calibration(method, a=a, b=b)


def apply_calibration(P: np.ndarray, calibrations: Sequence[Calibration]) -> np.ndarray:
    """Calibrate a (N, L) probability matrix column by column."""
    P = np.asarray(P, dtype=np.float64)
    return np.stack([c(P[:, j]) for j, c in enumerate(calibrations)], axis=1) if P.size else P


def choose_calibration(
    y: np.ndarray,
    p: np.ndarray,
    methods: Sequence[str] = ("none", "temperature", "platt", "isotonic"),
    *,
    folds: int = 5,
    seed: int = 0,
) -> tuple[Calibration, dict[str, float]]:
    """The method with the lowest cross-validated ECE on (y, p), refitted on all of it.

    Returns the fitted calibration and every method's cross-validated ECE (so the card can
    say how much better the chosen one measured).
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    n = y.size
    if n < 2 * folds or y.min() == y.max():
        return Calibration("none"), {}
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    fold_of = np.empty(n, dtype=int)
    fold_of[order] = np.arange(n) % folds
    scores: dict[str, float] = {}
    for method in methods:
        out = np.empty(n)
        for k in range(folds):
            train, held = fold_of != k, fold_of == k
            out[held] = fit_calibration(y[train], p[train], method)(p[held])
        scores[method] = expected_calibration_error(y, out)
    best = min(scores, key=lambda m: (round(scores[m], 4), METHODS.index(m)))  # ties: the simpler method
    return fit_calibration(y, p, best), scores


def fold_affine_into_linear(weight: np.ndarray, bias: np.ndarray, calibrations: Sequence[Calibration]) -> tuple[np.ndarray, np.ndarray]:
    """New (W, b) of a linear head whose sigmoid outputs are the calibrated scores.

    ``sigmoid(a * (W x + b0) + c) = sigmoid((a W) x + (a b0 + c))``: only temperature
    and Platt calibrations fold; isotonic ones must be applied after the sigmoid.
    """
    W = np.array(weight, dtype=np.float64, copy=True)
    b = np.array(bias, dtype=np.float64, copy=True)
    for j, c in enumerate(calibrations):
        if not c.affine:
            raise ValueError(f"label {j}: an {c.method} calibration cannot be folded into the head")
        W[j] *= c.a
        b[j] = c.a * b[j] + c.b
    return W, b
