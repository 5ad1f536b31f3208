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
                    batch_size: int = 32) -> dict[str, Any]:  # fmt: skip
    """Per-feature mean/std of the model's pooled features on one half of ``frame`` (validation films),
    and the ``quantile`` of :func:`~cxr_viewer.core.inference.population.feature_distance` on the other
    half: films farther than that are "outside the model's population"."""
    import torch
    from torch.utils.data import DataLoader

    from cxr_viewer.core.inference.population import feature_distance
    from trainer.data.dataset import CXRDataset

    model = loaded.model
    if not hasattr(model, "forward_features"):
        raise ValueError("the model exposes no pooled features")
    ds = CXRDataset(frame, loaded.preprocessing, [])
    feats = []
    with torch.inference_mode():
        model.eval()
        for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
            feats.append(model.forward_features(batch["image"]).float().cpu().numpy())
    F = np.concatenate(feats).astype(np.float64)
    order = np.random.default_rng(seed).permutation(len(F))
    fit, held = F[order[: len(F) // 2]], F[order[len(F) // 2 :]]
    std = fit.std(0)
    # a feature nearly constant on the fitting half (a unit that rarely fires) must not dominate the distance
    stats = {"mean": fit.mean(0), "std": np.maximum(std, 0.1 * float(np.median(std)) + 1e-6)}
    d = np.array([feature_distance(f, stats) for f in held])
    return {
        "mean": [round(float(v), 5) for v in stats["mean"]],
        "std": [round(float(v), 5) for v in stats["std"]],
        "quantile": quantile,
        "threshold": float(np.quantile(d, quantile)),
        "fitted_on": f"{len(fit)} validation films (statistics) and {len(held)} others (threshold)",
    }
