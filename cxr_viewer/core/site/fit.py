"""Fitting one finding's site calibration and threshold: the one place the site analysis is done.

``cxr-train calibrate --site`` and the viewer's wizard both call :func:`fit_site_finding`
with scores they computed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cxr_viewer.core.errors import SiteProfileError
from cxr_viewer.core.models.calibration import choose_calibration, fit_calibration
from cxr_viewer.core.models.metrics import auroc, choose_threshold
from cxr_viewer.core.site.drift import reference_distribution
from cxr_viewer.core.site.profile import FindingProfile, parse_target
from cxr_viewer.core.site.stats import MIN_POSITIVES, describe_site_scores, ece_ci, rates, reliability, split_patients

__all__ = ["CAL_METHODS", "fit_site_finding", "operating_point_problem"]

CAL_METHODS = ("auto", "none", "temperature", "platt", "isotonic")


def fit_site_finding(
    label: str, y: np.ndarray, p: np.ndarray, groups: np.ndarray, *, current_threshold: float,
    target: str = "youden", method: str = "auto", holdout: float = 0.5, seed: int = 0, n_boot: int = 500,
    card_prevalence: float | None = None, min_positives: int = MIN_POSITIVES,
) -> tuple[FindingProfile, dict[str, Any]]:  # fmt: skip
    """Fit one finding's site calibration and threshold on a calibration part; measure on the held-out part.

    The patients are dealt into a calibration part and a held-out part (``holdout``).
    The calibration (``method``, or the lowest cross-validated ECE for ``auto``) and the
    threshold (``target``) are fitted on the calibration part only; ECE and the operating
    point before (the bundle's score and threshold) and after (the site profile) are
    measured on the held-out part, with patient-bootstrap CIs. The profile saved is the
    one measured (it is not refitted on the held-out films).
    """
    if method not in CAL_METHODS:
        raise SiteProfileError(f"Unknown calibration method {method!r}; use one of {', '.join(CAL_METHODS)}.")
    rule, tval = parse_target(target)
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    groups = np.asarray(groups).astype(str)
    report = describe_site_scores(y, p, groups, current_threshold, card_prevalence=card_prevalence, n_boot=n_boot,
                                  seed=seed, min_positives=min_positives)  # fmt: skip
    held = split_patients(y, groups, holdout=holdout, seed=seed)
    cal = ~held
    yc, pc, yh, ph, gh = y[cal], p[cal], y[held], p[held], groups[held]
    for part, yy in (("calibration", yc), ("held-out", yh)):
        if yy.size == 0 or yy.min() == yy.max():
            raise SiteProfileError(
                f"{label}: the site's {part} part has only {'positive' if yy.size and yy.min() == 1 else 'negative'} "
                "films; label more films of both kinds (or change --holdout)."
            )
    import importlib.util

    has_sklearn = importlib.util.find_spec("sklearn") is not None  # isotonic fits need scikit-learn
    if method == "isotonic" and not has_sklearn:
        raise SiteProfileError("Isotonic recalibration needs scikit-learn, which this installation lacks; "
                               "choose temperature or Platt scaling.")  # fmt: skip
    if method == "auto":
        methods = ("none", "temperature", "platt", *(("isotonic",) if has_sklearn else ()))
        calib, cv = choose_calibration(yc, pc, methods)
    else:
        calib, cv = fit_calibration(yc, pc, method), {}
    qc = calib(pc)
    t = choose_threshold(yc, qc, rule, tval if tval is not None else 0.9)
    qh = calib(ph)
    cal_pos = int(yc.sum())
    report["fit"] = {
        "calibration": calib.to_dict(), "ece_cv": {k: round(v, 4) for k, v in cv.items()},
        "target": target, "threshold": t["value"], "calibration_part": {"n_images": int(yc.size), "n_pos": cal_pos},
        "held_out_part": {"n_images": int(yh.size), "n_pos": int(yh.sum()), "n_patients": int(len(set(gh)))},
    }  # fmt: skip
    report["held_out"] = {
        "auroc": {"value": auroc(yh, qh)},
        "ece_before": ece_ci(yh, ph, gh, n_boot, seed + 5),
        "ece_after": ece_ci(yh, qh, gh, n_boot, seed + 5),
        "before": rates(yh, ph, current_threshold, gh, n_boot, seed + 6),
        "after": rates(yh, qh, t["value"], gh, n_boot, seed + 6),
        "reliability_before": reliability(yh, ph),
        "reliability_after": reliability(yh, qh),
    }  # fmt: skip
    validated = cal_pos >= min_positives
    if not validated:
        report["warnings"].append(f"the threshold rests on {cal_pos} positive{'' if cal_pos == 1 else 's'} of the "
                                  "calibration part "
                                  f"(fewer than {min_positives}): marked not validated")  # fmt: skip
    summary = {
        "n_pos": report["n_pos"], "n_neg": report["n_neg"], "prevalence": report["prevalence"],
        "auroc": report["auroc"], "ece_before": report["held_out"]["ece_before"], "ece_after": report["held_out"]["ece_after"],
        "sensitivity_before": report["held_out"]["before"]["sensitivity"],
        "sensitivity_after": report["held_out"]["after"]["sensitivity"],
        "specificity_before": report["held_out"]["before"]["specificity"],
        "specificity_after": report["held_out"]["after"]["specificity"],
        "bundle_threshold": float(current_threshold),
    }  # fmt: skip
    fp = FindingProfile(label, calib, t["value"], target, validated, summary, reference_distribution(p))
    return fp, report


def operating_point_problem(report: dict[str, Any]) -> str | None:
    """Why a fitted site threshold is not a usable operating point (None when it is).

    ``report`` is :func:`fit_site_finding`'s. Unusable: a threshold at either end of the score range (it flags
    no film, or every film), no positive film found on the held-out part (sensitivity 0), every negative
    film flagged (specificity 0), or a held-out part with no positive (or no negative) film to check it on.
    """
    fit, held = report.get("fit") or {}, report.get("held_out") or {}
    t = fit.get("threshold")
    if t is None or not math.isfinite(float(t)):
        return "no threshold could be chosen"
    t = float(t)
    if t >= 0.995 or t <= 0.005:
        flags = "no film" if t >= 0.995 else "every film"
        return f"the proposed threshold {t:.2f} sits at the end of the score range: it flags {flags}"
    part = fit.get("held_out_part") or {}
    n_img, n_pos = int(part.get("n_images") or 0), int(part.get("n_pos") or 0)
    if n_pos == 0 or n_pos == n_img:
        kind = "positive" if n_pos == 0 else "negative"
        return f"the held-out films hold no {kind} film, so the threshold cannot be checked: label more films"
    after = held.get("after") or {}
    sens, spec = after.get("sensitivity"), after.get("specificity")
    if sens is not None and math.isfinite(float(sens)) and float(sens) == 0.0:
        return f"at the proposed threshold {t:.2f} no held-out positive film is found (sensitivity 0.00)"
    if spec is not None and math.isfinite(float(spec)) and float(spec) == 0.0:
        return f"at the proposed threshold {t:.2f} every held-out negative film is flagged (specificity 0.00)"
    return None

