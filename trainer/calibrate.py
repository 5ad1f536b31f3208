"""Per-label operating thresholds chosen on a validation split and written into a bundle.

Methods: ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity`` (the
highest threshold that still reaches a target sensitivity, e.g. 0.90 as the WHO asks of
TB triage tests: the most specific rule that misses few patients), ``specificity`` (the
lowest threshold that keeps a target specificity), ``budget`` (one false-alarm budget of
POSITIVE badges per normal film shared by every validated finding, adults and children
separately; :mod:`trainer.budget`). The weights do not change unless scores are calibrated,
so the rewritten bundle keeps its sha256; each threshold records its method and source.

With ``age_head`` the bundle's population block also gets a linear age head on the pooled
features (fitted on the training films that record age) and, per finding, the population its
threshold is validated on; the viewer shows a finding as "outside population" on a film
outside it (:mod:`cxr_viewer.core.inference.population`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxr_viewer.core.errors import TrainingConfigError
from cxr_viewer.core.models.blocks import CalibrationRecord, Population
from cxr_viewer.core.models.metrics import THRESHOLD_METHODS as METHODS
from cxr_viewer.core.models.metrics import choose_threshold  # written once, in core

log = logging.getLogger(__name__)


def _label_rule(label: str, method: str, target: float, per_label: dict[str, str] | None) -> tuple[str, float]:
    """``--label-method Abnormal=youden`` or ``Pneumothorax=sensitivity:0.9`` overrides the default rule."""
    rule = (per_label or {}).get(label)
    if not rule:
        return method, target
    m, _, t = rule.partition(":")
    return m.strip(), float(t) if t else target


def calibrate(
    bundle: str | Path,
    manifest: str | Path,
    *,
    method: str = "youden",
    target: float = 0.9,
    split: str = "val",
    split_file: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    scaling: str = "none",
    label_methods: dict[str, str] | None = None,
    min_positives: int = 0,
    budget: float = 0.5,
    budget_confidence: float = 0.0,
    age_head: bool = False,
    cache_dir: str | Path | None = None,
    age_films_per_source: int = 400,
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Calibrate scores and choose thresholds on ``split``; save the bundle (in place, or a copy at ``out``).

    ``scaling``: ``none`` keeps the weights (same sha256); ``temperature``/``platt`` fit that
    per label; ``auto`` picks per label among none/temperature/platt by cross-validated ECE
    on the split (isotonic is measured too and reported, but it cannot live in the weights).
    The chosen affine calibration is folded into the linear head, so every backend shows
    calibrated scores. Thresholds are then chosen on the calibrated scores. A threshold
    resting on fewer than ``min_positives`` positives is marked ``validated: false``: the
    viewer then shows the score without a POSITIVE badge. ``budget_confidence`` > 0: the budget
    must hold at that quantile of patient-bootstrap replicates of the validation normal films
    (:func:`trainer.budget.allocate_budget`).
    """
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.calibration import (
        Calibration,
        choose_calibration,
        expected_calibration_error,
        fit_calibration,
    )
    from trainer.evaluate import pick_device, predict, split_frame

    if not 0 <= budget_confidence < 1:
        raise TrainingConfigError(f"--budget-confidence must lie in [0, 1), got {budget_confidence}.")
    if method == "budget":
        age_head = True  # the budget is spent per group (adults, children) inside each finding's population
    elif method != "youden" and not 0 < target < 1:
        raise TrainingConfigError(f"Target {method} must lie between 0 and 1, got {target}.")
    if scaling not in ("none", "auto", "temperature", "platt"):
        raise TrainingConfigError(f"Unknown --scaling {scaling!r}; use none, auto, temperature or platt.")
    loaded = load_bundle(bundle, device=pick_device())
    if not loaded.manifest.is_classifier:
        raise TrainingConfigError(f"Bundle {loaded.name} is a {loaded.task} model; only classifiers have thresholds.")
    src = Path(bundle)
    if out is None and not src.is_dir():
        raise TrainingConfigError("A zipped bundle cannot be updated in place; pass --out FOLDER.")
    frame = split_frame(manifest, split, split_file, loaded)
    P, Y, F = predict(loaded, frame, batch_size=batch_size, num_workers=num_workers, with_features=True,
                      cache_dir=cache_dir)  # fmt: skip
    m = loaded.manifest
    scaled = scaling != "none" and loaded.task != "multiclass"
    cals: list[Calibration] = []
    cal_report: dict[str, Any] = {}
    for j, lab in enumerate(loaded.labels):
        known = ~np.isnan(Y[:, j])
        y, p = Y[known, j], P[known, j]
        if not scaled or y.size == 0 or y.min() == y.max():
            cals.append(Calibration("none"))
            continue
        methods = ("none", "temperature", "platt", "isotonic") if scaling == "auto" else ("none", scaling, "isotonic")
        _, cv = choose_calibration(y, p, methods)
        usable = {k: v for k, v in cv.items() if k != "isotonic"}
        best = min(usable, key=lambda k: (round(usable[k], 4), ("none", "temperature", "platt").index(k)))
        c = fit_calibration(y, p, best)
        cals.append(c)
        cal_report[lab] = {
            **c.to_dict(),
            "ece_before": round(expected_calibration_error(y, p), 4),
            "ece_cv": {k: round(v, 4) for k, v in cv.items()},
        }
    if scaled and any(c.method != "none" for c in cals):
        import torch

        from cxr_viewer.core.models.calibration import apply_calibration, fold_affine_into_linear

        head = getattr(loaded.model, "head", None)
        if not isinstance(head, torch.nn.Linear):
            raise TrainingConfigError(f"Bundle {loaded.name} has no linear head to fold the calibration into.")
        W, b = fold_affine_into_linear(head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy(), cals)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(W).to(head.weight))
            head.bias.copy_(torch.from_numpy(b).to(head.bias))
        P = apply_calibration(P, cals)
        m.calibration = CalibrationRecord.from_dict({
            "split": split, "method": "per-label choice by 5-fold cross-validated ECE (folded into the head)",
            "labels": cal_report,
        })  # fmt: skip
    chosen: dict[str, dict[str, Any]] = {}
    base_method = "specificity" if method == "budget" else method
    base_target = 0.95 if method == "budget" else target  # display thresholds of findings the budget cannot use
    for j, lab in enumerate(loaded.labels):
        known = ~np.isnan(Y[:, j])
        y, p = Y[known, j], P[known, j]
        if y.size == 0 or y.min() == y.max():
            log.warning("%s: the %s split has no %s; threshold left at %.2f", lab, split,
                        "positives" if y.size and y.max() == 0 else "negatives", m.threshold(lab))  # fmt: skip
            if min_positives:
                t = dict(m.thresholds.get(lab) or {"value": 0.5, "method": "none"})
                t.update(validated=False, val_positives=int(y.sum()) if y.size else 0)
                m.thresholds[lab] = chosen[lab] = t
            continue
        lm, lt = _label_rule(lab, base_method, base_target, label_methods)
        t = choose_threshold(y, p, lm, lt)
        what = "youden" if lm == "youden" else f"target {lm} {lt:g}"
        npos = int(y.sum())
        t.update({"method": what, "source": f"{split} split ({npos} positive / {int((y == 0).sum())} negative images)"})
        if min_positives:
            t.update(validated=npos >= min_positives, val_positives=npos, min_positives=int(min_positives))
        chosen[lab] = t
        m.thresholds[lab] = t
    if "dataset" in frame:
        from trainer.population import describe_population

        train_frame = None
        population: dict[str, Any] | None = None
        try:
            train_frame = split_frame(manifest, "train", split_file, loaded)
            population = describe_population(train_frame)
        except Exception as exc:  # noqa: BLE001 - a manifest without a train split still calibrates
            log.info("population not described: %s", exc)
        if population is not None and len(frame) >= 20:
            from trainer.population import fit_feature_ood

            population["ood"] = fit_feature_ood(loaded, frame, batch_size=batch_size, features=F)
        if age_head and population is not None and train_frame is not None:
            _population_per_finding(loaded, population, train_frame, frame, Y, F, min_positives=min_positives,
                                    per_source=age_films_per_source, batch_size=batch_size, cache_dir=cache_dir,
                                    split=split)  # fmt: skip
        if population is not None:
            m.population = Population.from_dict(population)
        if method == "budget":
            _spend_budget(loaded, m, frame, P, Y, F, chosen, budget=budget, split=split, confidence=budget_confidence)
    dest = Path(out) if out else src
    if scaled or not src.is_dir():
        from cxr_viewer.core.models.bundle import save_bundle

        save_bundle(loaded.model.cpu(), m, dest, dtype=str(m.weights.get("dtype") or "float32"))
    else:
        from trainer.export import rewrite_manifest

        rewrite_manifest(m, dest, weights_from=src)  # weights unchanged: same sha256
    return dest, chosen


def _population_per_finding(loaded: Any, population: dict[str, Any], train: Any, val: Any, Y: np.ndarray,
                            F: np.ndarray | None, *, min_positives: int, per_source: int, batch_size: int,
                            cache_dir: Any, split: str) -> None:  # fmt: skip
    """The age head (fitted on training films that record age, at most ``per_source`` per source),
    its child/adult cut-off (chosen on the ``split`` films of known age) and each finding's
    validated population, into the bundle's population block."""
    from cxr_viewer.core.inference.population import estimate_age
    from trainer.evaluate import predict
    from trainer.population import choose_child_cutoff, film_ages, finding_populations, fit_age_head

    aged = train[~np.isnan(film_ages(train))]
    keep = [i for _, g in aged.groupby("dataset") for i in g.sample(min(len(g), per_source), random_state=0).index]
    aged = aged.loc[sorted(keep)].reset_index(drop=True)
    _, _, F_train = predict(loaded, aged, batch_size=batch_size, with_features=True, cache_dir=cache_dir)
    head = population["age_head"] = fit_age_head(F_train, aged)
    if F is not None:
        try:  # the viewer reads the head's estimate exactly so: choose the cut-off on that
            typed = Population.from_dict(population)
            head.update(choose_child_cutoff(np.array([estimate_age(f, typed) for f in F]), val, split=split))
        except ValueError as exc:
            log.warning("age head: child/adult cut-off left at %g years (%s)", head["child_below"], exc)
            head["chosen_on"] = {"rule": f"fixed {head['child_below']:g} years ({exc})"}
    population["findings"] = finding_populations(val, loaded.labels, Y, min_positives=max(min_positives, 1))


def viewer_eligibility(population: Population | None, labels: list[str], F: np.ndarray | None) -> np.ndarray:
    """(N, L): the viewer would judge finding L on film N (inside its population), by the age
    head's estimate, as for a film whose header records no age."""
    from cxr_viewer.core.inference.population import film_age, finding_outside

    n = 0 if F is None else len(F)
    out = np.ones((n, len(labels)), dtype=bool)
    for i in range(n):
        age = film_age({}, population, F[i])
        for j, lab in enumerate(labels):
            out[i, j] = not finding_outside(population, lab, age)
    return out


def _spend_budget(loaded: Any, m: Any, frame: Any, P: np.ndarray, Y: np.ndarray, F: np.ndarray | None,
                  chosen: dict[str, dict[str, Any]], *, budget: float, split: str, confidence: float = 0.0,
                  n_boot: int = 1000, seed: int = 0) -> None:  # fmt: skip
    """Replace the validated findings' thresholds by the false-alarm budget's allocation."""
    from trainer.budget import allocate_budget, badge_counts, budget_bound
    from trainer.population import is_child

    labels = loaded.labels
    eligible = viewer_eligibility(m.population, labels, F)
    group = np.where(is_child(frame), "children", "adults")
    normal = Y[:, labels.index("Abnormal")] == 0 if "Abnormal" in labels else np.all(np.nan_to_num(Y, nan=1.0) == 0, axis=1)
    cand = [j for j, lab in enumerate(labels) if m.thresholds.get(lab, {}).get("validated") is not False]
    patients = frame["patient_id"].astype(str).to_numpy() if "patient_id" in frame else None
    alloc = allocate_budget(P, Y, normal=normal, group=group, eligible=eligible, candidates=cand, budget=budget,
                            confidence=confidence, patients=patients, n_boot=n_boot, seed=seed)  # fmt: skip
    for j, a in alloc.items():
        lab = labels[j]
        t = dict(m.thresholds.get(lab) or {})
        spent = ", ".join(f"{g} {v:.3f}" for g, v in a["badges_per_normal_film"].items())
        t.update(value=float(a["value"]), sensitivity=a["true_badged"] / max(a["positives"], 1))
        if a["funded"]:
            t["method"] = f"false-alarm budget {budget:g} badges per normal film (spends {spent})"
        else:
            t["method"] = f"false-alarm budget {budget:g}: none allocated (above every validation normal film)"
        t.update(budget_spent=a["badges_per_normal_film"], val_true_badged=a["true_badged"],
                 val_positives_in_population=a["positives"])  # fmt: skip
        t.pop("specificity", None)
        m.thresholds[lab] = chosen[lab] = t
    n_groups = {g: int(((group == g) & normal).sum()) for g in ("adults", "children")}
    m.extra["false_alarm_budget"] = {
        "badges_per_normal_film": budget, "split": split, "normal_films": n_groups,
        "groups": "children: recorded age under 18 or Kermany; adults: every other film",
        "objective": "expected true findings badged on validation (films inside each finding's population)",
    }  # fmt: skip
    if confidence > 0:
        thr = np.array([m.thresholds[lab]["value"] if j in alloc else np.inf for j, lab in enumerate(labels)])
        badges = badge_counts(P, thr, eligible).sum(1)
        m.extra["false_alarm_budget"].update(
            confidence=confidence,
            rule=(f"every group's validation badge rate per normal film stays within the budget at the {confidence:g} "
                  f"quantile of {n_boot} patient-bootstrap replicates of its validation normal films (seed {seed})"),
            validation=budget_bound(badges, normal, group, confidence=confidence, patients=patients, n_boot=n_boot,
                                    seed=seed),
        )  # fmt: skip
