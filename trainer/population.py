"""The population a bundle was trained on, written into its manifest for the viewer's QC.

The viewer compares each image with it (DICOM PatientAge, view position) and shows an
"outside the model's population" state instead of a POSITIVE badge when they disagree.
Sources that record no age per film declare their documented range (Kermany: children
aged 1-5 years, from the dataset's publication).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# documented age ranges of sources whose films carry no age
DOCUMENTED_AGES = {"kermany": (1.0, 5.0)}
FRONTAL = ("PA", "AP", "AP SUPINE", "AP ERECT")


def describe_population(frame: "pd.DataFrame") -> dict[str, Any]:
    """Sources, ages and views of the training rows of a manifest."""
    import pandas as pd

    ds = frame["dataset"].astype(str) if "dataset" in frame else pd.Series(["unknown"] * len(frame))
    sources = {str(k): int(v) for k, v in ds.value_counts().sort_index().items()}
    ages: list[float] = []
    if "meta_age" in frame:
        a = pd.to_numeric(frame["meta_age"], errors="coerce")
        ages = [float(v) for v in a[(a > 0) & (a < 120)].dropna()]
    lo = min([*ages, *(r[0] for k, r in DOCUMENTED_AGES.items() if k in sources)], default=None)
    hi = max([*ages, *(r[1] for k, r in DOCUMENTED_AGES.items() if k in sources)], default=None)
    views: dict[str, int] = {}
    if "meta_view" in frame:
        v = frame["meta_view"].fillna("").astype(str).str.upper().str.strip()
        views = {k or "unrecorded": int(n) for k, n in v.value_counts().sort_index().items()}
    return {
        "sources": sources,
        "images": int(len(frame)),
        "age_years": None if lo is None else {
            "min": float(lo), "max": float(hi),
            "recorded_p5": float(np.percentile(ages, 5)) if ages else None,
            "recorded_p95": float(np.percentile(ages, 95)) if ages else None,
            "documented": {k: list(r) for k, r in DOCUMENTED_AGES.items() if k in sources},
        },
        "views": views,
        "accepted_views": [v for v in FRONTAL if v in views or v.startswith("AP")],
        "note": "frontal chest radiographs of adults (NIH, COVID collection, TBX11K, Shenzhen) and children aged 1-5 (Kermany)",
    }  # fmt: skip


def fit_feature_ood(loaded: Any, frame: "pd.DataFrame", *, quantile: float = 0.995, seed: int = 0,
                    batch_size: int = 32, features: np.ndarray | None = None) -> dict[str, Any]:  # fmt: skip
    """Per-feature mean/std of the model's pooled features on one half of ``frame`` (validation films),
    and the ``quantile`` of :func:`~cxr_viewer.core.inference.population.feature_distance` on the other
    half: films farther than that are "outside the model's population"."""
    from cxr_viewer.core.inference.population import feature_distance
    from cxr_viewer.core.models.blocks import OodStats

    if features is not None:
        F = np.asarray(features, dtype=np.float64)
    else:
        from trainer.evaluate import predict

        if not hasattr(loaded.model, "forward_features"):
            raise ValueError("the model exposes no pooled features")
        _, _, F = predict(loaded, frame, batch_size=batch_size, with_features=True)
        if F is None:
            raise ValueError("the model exposes no pooled features")
        F = F.astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(F))
    fit, held = F[order[: len(F) // 2]], F[order[len(F) // 2 :]]
    std = fit.std(0)
    # a feature nearly constant on the fitting half (a unit that rarely fires) must not dominate the distance
    mean, std = fit.mean(0), np.maximum(std, 0.1 * float(np.median(std)) + 1e-6)
    stats = OodStats(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
    d = np.array([feature_distance(f, stats) for f in held])
    return {
        "mean": [round(float(v), 5) for v in mean],
        "std": [round(float(v), 5) for v in std],
        "quantile": quantile,
        "threshold": float(np.quantile(d, quantile)),
        "fitted_on": f"{len(fit)} validation films (statistics) and {len(held)} others (threshold)",
    }


CHILD_BELOW_YEARS = 18.0  # a film of a patient younger than this is a child's


def film_ages(frame: "pd.DataFrame") -> np.ndarray:
    """Each film's age in years: the recorded age, else its source's documented range's middle
    (Kermany: 3), else NaN (unknown)."""
    age = recorded_ages(frame)
    if "dataset" in frame:
        ds = frame["dataset"].astype(str).to_numpy()
        for name, (lo, hi) in DOCUMENTED_AGES.items():
            age = np.where(np.isnan(age) & (ds == name), (lo + hi) / 2.0, age)
    return age


def is_child(frame: "pd.DataFrame") -> np.ndarray:
    """True for children's films: a recorded age under 18, or a source of children only (Kermany)."""
    age = film_ages(frame)
    return np.nan_to_num(age, nan=CHILD_BELOW_YEARS + 1) < CHILD_BELOW_YEARS


def finding_populations(frame: "pd.DataFrame", labels: list[str], Y: np.ndarray, *, min_positives: int = 10) -> dict[str, Any]:
    """The population each finding's threshold is validated on, from the validation films.

    A source counts for a finding when its validation films hold positives of it (else its
    sensitivity there was never measured). Ages: the recorded (or documented) ages of those
    films, 2.5th percentile to maximum (with the documented range of sources that record none);
    a finding with fewer than ``min_positives`` positive
    children is validated on adults only (ages from 18), so a child's film shows it as
    "outside population". Views: the recorded views of those films.
    """
    ds = frame["dataset"].astype(str).to_numpy() if "dataset" in frame else np.array(["unknown"] * len(frame))
    ages = recorded_ages(frame)
    child = is_child(frame)
    view = (frame["meta_view"].fillna("").astype(str).str.upper().str.strip().to_numpy()
            if "meta_view" in frame else np.array([""] * len(frame)))  # fmt: skip
    out: dict[str, Any] = {}
    for j, lab in enumerate(labels):
        pos = Y[:, j] == 1
        sources = sorted({s for s in ds[pos]})
        inside = np.isin(ds, sources) & ~np.isnan(Y[:, j])
        if not inside.any():
            continue
        a = ages[inside & ~np.isnan(ages)]
        children = int((pos & child & inside).sum()) >= min_positives
        documented = [r for name, r in DOCUMENTED_AGES.items() if name in sources]
        lows = ([float(np.percentile(a, 2.5))] if a.size else []) + [r[0] for r in documented]
        highs = ([float(a.max())] if a.size else []) + [r[1] for r in documented]
        lo, hi = (min(lows), max(highs)) if lows else (None, None)
        if lo is not None and not children:
            lo = max(lo, CHILD_BELOW_YEARS)
        views = sorted({v for v in view[inside] if v and v != "?"})
        out[lab] = {
            "sources": {s: int(((ds == s) & inside).sum()) for s in sources},
            "positives": {s: int(((ds == s) & pos).sum()) for s in sources},
            "age_years": None if lo is None else {"min": round(lo, 1), "max": round(hi, 1)},
            "children": bool(children),
            "views": views,
            "note": ("adults and children" if children else "adults only") + " (validation films of "
                    + ", ".join(sources) + ")",
        }  # fmt: skip
    return out


def fit_age_head(F: np.ndarray, frame: "pd.DataFrame", *, seed: int = 0) -> dict[str, Any]:
    """A linear age head on the model's pooled features, fitted (ridge, alpha by cross-validation)
    on the films whose age is recorded or documented (NIH, the COVID collection, Kermany 1-5).

    Stored as one weight per feature plus a bias (standardisation folded in), so the viewer
    reads it with a dot product; ``child_below`` is the estimate under which a film counts as
    a child's: here midway between the oldest child source, 5, and adulthood, 18, until
    :func:`choose_child_cutoff` sets it from validation films.
    """
    from sklearn.linear_model import RidgeCV

    age = film_ages(frame)
    ok = ~np.isnan(age)
    if ok.sum() < 20:
        raise ValueError(f"only {int(ok.sum())} films with a known age: too few for an age head")
    X, y = F[ok].astype(np.float64), age[ok]
    mu, sd = X.mean(0), X.std(0) + 1e-6
    # every source weighs the same in the fit (3,600 Kermany children must not swamp the adults)
    ds = frame["dataset"].astype(str).to_numpy()[ok] if "dataset" in frame else np.array(["all"] * len(y))
    names, counts = np.unique(ds, return_counts=True)
    w_src = dict(zip(names, len(y) / (len(names) * counts)))
    sw = np.array([w_src[d] for d in ds])
    reg = RidgeCV(alphas=np.logspace(-1, 4, 12)).fit((X - mu) / sd, y, sample_weight=sw)
    w = reg.coef_ / sd
    b = float(reg.intercept_ - (reg.coef_ * mu / sd).sum())
    pred = np.clip(X @ w + b, 0, 110)
    return {
        "weights": [round(float(v), 7) for v in w],
        "bias": round(b, 5),
        "child_below": 11.5,
        "alpha": float(reg.alpha_),
        "fitted_on": {str(k): int(v) for k, v in zip(names, counts)},
        "train_mae_years": round(float(np.mean(np.abs(pred - y))), 2),
        "note": "linear read of the pooled features; Kermany films count as 3 years (documented 1-5)",
    }


def choose_child_cutoff(est: np.ndarray, frame: "pd.DataFrame", *, split: str = "val") -> dict[str, Any]:
    """The age-head cut-off (years) that best tells children from adults on ``frame``'s films of
    known age (recorded, or a children-only source): the one maximising balanced accuracy (the
    mean of the share of children called children and of adults called adults, so 800 Kermany
    children do not outvote 200 adults), searched on a 0.25-year grid from 2 to 18; among equally
    good cut-offs, the middle one. ``est``: the head's estimate for every film of ``frame``."""
    known = ~np.isnan(film_ages(frame))
    child = is_child(frame)[known]
    e = np.asarray(est, dtype=np.float64)[known]
    if child.all() or not child.any():
        raise ValueError("choosing the child/adult cut-off needs films of known age of both children and adults")
    grid = np.arange(2.0, CHILD_BELOW_YEARS + 1e-9, 0.25)
    called = e[None, :] < grid[:, None]  # (cut-offs, films): called a child
    sens_child = called[:, child].mean(1)
    spec_adult = (~called[:, ~child]).mean(1)
    bal = (sens_child + spec_adult) / 2
    best = np.flatnonzero(np.isclose(bal, bal.max()))
    k = int(best[len(best) // 2])
    at_fixed = int(np.argmin(np.abs(grid - 11.5)))
    return {
        "child_below": float(grid[k]),
        "chosen_on": {
            "split": split, "rule": "maximise balanced child/adult accuracy of the age head's estimate "
            "(0.25-year grid, 2-18 years; middle of ties) on films of known age",
            "children": int(child.sum()), "adults": int((~child).sum()),
            "balanced_accuracy": round(float(bal[k]), 4), "accuracy_children": round(float(sens_child[k]), 4),
            "accuracy_adults": round(float(spec_adult[k]), 4),
            "balanced_accuracy_at_11.5": round(float(bal[at_fixed]), 4),
        },
    }  # fmt: skip


def age_head_metrics(est: np.ndarray, frame: "pd.DataFrame", groups: np.ndarray, *, n_boot: int, seed: int,
                     child_below: float) -> dict[str, Any]:  # fmt: skip
    """Held-out error of the age head: MAE on recorded ages (per source), the distance outside the
    documented 1-5 years for Kermany, and child/adult accuracy, with patient bootstrap 95% CIs."""
    from trainer.evaluate import _mean_ci

    ages = recorded_ages(frame)
    ds = frame["dataset"].astype(str).to_numpy()
    child = is_child(frame)
    out: dict[str, Any] = {"child_below": child_below}
    rec = ~np.isnan(ages)
    if rec.any():
        out["mae_years_recorded"] = _mean_ci(np.abs(est[rec] - ages[rec]), groups[rec], n_boot=n_boot, seed=seed)
        for s in sorted(set(ds[rec])):
            m = rec & (ds == s)
            out[f"mae_years_{s}"] = _mean_ci(np.abs(est[m] - ages[m]), groups[m], n_boot=n_boot, seed=seed)
    for name, (lo, hi) in DOCUMENTED_AGES.items():
        m = (ds == name) & ~rec
        if m.any():
            dist = np.maximum(0.0, np.maximum(lo - est[m], est[m] - hi))
            out[f"error_outside_documented_{name}"] = _mean_ci(dist, groups[m], n_boot=n_boot, seed=seed)
    known = rec | np.isin(ds, list(DOCUMENTED_AGES))
    correct = ((est < child_below) == child).astype(float)
    out["child_adult_accuracy"] = _mean_ci(correct[known], groups[known], n_boot=n_boot, seed=seed)
    for name, m in (("children", known & child), ("adults", known & ~child)):
        if m.any():
            out[f"accuracy_{name}"] = _mean_ci(correct[m], groups[m], n_boot=n_boot, seed=seed)
    return out


def recorded_ages(frame: "pd.DataFrame") -> np.ndarray:
    """Recorded ages only (NaN where the film has none)."""
    import pandas as pd

    if "meta_age" not in frame:
        return np.full(len(frame), np.nan)
    a = pd.to_numeric(frame["meta_age"], errors="coerce").to_numpy(dtype=float)
    return np.where((a > 0) & (a < 120), a, np.nan)
