"""Score calibration: fitted on one split, measured by ECE, folded into a linear head."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_viewer.core.models.calibration import (
    Calibration,
    apply_calibration,
    choose_calibration,
    expected_calibration_error,
    fit_calibration,
    fold_affine_into_linear,
    logit,
)


def _overconfident(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities q; the 'model' reports q pushed to the extremes (T = 1/3)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    p = 1 / (1 + np.exp(-3 * z))
    return y, p


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_fitting_removes_overconfidence(method: str) -> None:
    y, p = _overconfident()
    before = expected_calibration_error(y, p)
    c = fit_calibration(y[:2000], p[:2000], method)
    after = expected_calibration_error(y[2000:], c(p[2000:]))
    assert before > 0.08 and after < 0.04, (before, after)
    if method == "temperature":
        assert c.a == pytest.approx(1 / 3, abs=0.06) and c.b == 0.0
    assert Calibration.from_dict(c.to_dict())(p[:5]) == pytest.approx(c(p[:5]), abs=1e-5)


def test_choice_by_cross_validated_ece() -> None:
    y, p = _overconfident()
    c, scores = choose_calibration(y, p)
    assert c.method != "none" and scores["none"] > 2 * min(scores.values())
    rng = np.random.default_rng(1)
    q = rng.random(4000)
    good = (rng.random(4000) < q).astype(float)
    c2, scores2 = choose_calibration(good, q, ("none", "temperature"))
    assert scores2["none"] < 0.03  # already calibrated: the refit changes next to nothing
    assert abs(c2(np.array([0.3]))[0] - 0.3) < 0.05


def test_affine_calibration_folds_into_the_head_exactly() -> None:
    import torch

    torch.manual_seed(0)
    head = torch.nn.Linear(8, 3)
    x = torch.randn(50, 8)
    raw = torch.sigmoid(head(x)).detach().numpy()
    cals = [Calibration("temperature", a=0.5), Calibration("platt", a=1.7, b=-0.4), Calibration("none")]
    W, b = fold_affine_into_linear(head.weight.detach().numpy(), head.bias.detach().numpy(), cals)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(W))
        head.bias.copy_(torch.from_numpy(b))
    folded = torch.sigmoid(head(x)).detach().numpy()
    np.testing.assert_allclose(folded, apply_calibration(raw, cals), atol=1e-5)
    with pytest.raises(ValueError, match="cannot be folded"):
        fold_affine_into_linear(W, b, [Calibration("isotonic", knots_x=(0.0, 1.0), knots_y=(0.0, 1.0))] * 3)


def test_logit_is_finite_at_the_edges_and_bad_parameters_refused() -> None:
    assert np.isfinite(logit(np.array([0.0, 1.0]))).all()
    with pytest.raises(ValueError):
        Calibration("platt", a=float("nan"))
    with pytest.raises(ValueError):
        Calibration("magic")
