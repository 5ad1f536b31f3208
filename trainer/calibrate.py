"""Per-label operating thresholds chosen on a validation split and written into a bundle.

Methods: ``youden`` (maximise sensitivity + specificity - 1), ``sensitivity`` (the
highest threshold that still reaches a target sensitivity, e.g. 0.90 as the WHO asks of
TB triage tests: the most specific rule that misses few patients), ``specificity`` (the
lowest threshold that keeps a target specificity). The weights do not change, so the
rewritten bundle keeps its sha256; each threshold records its method and source.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cxr_viewer.core.errors import TrainingConfigError

log = logging.getLogger(__name__)

METHODS = ("youden", "sensitivity", "specificity")


def choose_threshold(y: np.ndarray, p: np.ndarray, method: str = "youden", target: float = 0.9) -> dict[str, Any]:
    """Threshold in [0, 1] by ``method`` with the sensitivity/specificity it achieves on (y, p)."""
    from sklearn.metrics import roc_curve

    if method not in METHODS:
        raise TrainingConfigError(f"Unknown calibration method {method!r}; use one of {', '.join(METHODS)}.")
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
) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Choose thresholds on ``split`` and save the bundle (in place, or a copy at ``out``)."""
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.evaluate import pick_device, predict, split_frame

    if method != "youden" and not 0 < target < 1:
        raise TrainingConfigError(f"Target {method} must lie between 0 and 1, got {target}.")
    loaded = load_bundle(bundle, device=pick_device())
    if not loaded.manifest.is_classifier:
        raise TrainingConfigError(f"Bundle {loaded.name} is a {loaded.task} model; only classifiers have thresholds.")
    src = Path(bundle)
    if out is None and not src.is_dir():
        raise TrainingConfigError("A zipped bundle cannot be updated in place; pass --out FOLDER.")
    frame = split_frame(manifest, split, split_file, loaded)
    P, Y = predict(loaded, frame, batch_size=batch_size, num_workers=num_workers)
    m = loaded.manifest
    chosen: dict[str, dict[str, Any]] = {}
    for j, lab in enumerate(loaded.labels):
        known = ~np.isnan(Y[:, j])
        y, p = Y[known, j], P[known, j]
        if y.size == 0 or y.min() == y.max():
            log.warning("%s: the %s split has no %s; threshold left at %.2f", lab, split,
                        "positives" if y.size and y.max() == 0 else "negatives", m.threshold(lab))  # fmt: skip
            continue
        t = choose_threshold(y, p, method, target)
        what = "youden" if method == "youden" else f"target {method} {target:g}"
        t.update({"method": what, "source": f"{split} split ({int(y.sum())} positive / {int((y == 0).sum())} negative images)"})
        chosen[lab] = t
        m.thresholds[lab] = t
    dest = Path(out) if out else src
    if not src.is_dir():
        from cxr_viewer.core.models.bundle import save_bundle

        save_bundle(loaded.model.cpu(), m, dest, dtype=str(m.weights.get("dtype") or "float32"))
    else:
        from trainer.export import rewrite_manifest

        rewrite_manifest(m, dest, weights_from=src)  # weights unchanged: same sha256
    return dest, chosen
