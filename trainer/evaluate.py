"""Held-out evaluation of a bundle, through the same loading and preprocessing as the viewer.

Per label: AUROC with a seeded bootstrap 95 % CI (resampling patients, so several
images of one patient do not narrow the interval falsely), sensitivity, specificity,
PPV, NPV and F1 at the bundle's operating threshold, confusion counts, ROC and PR
curves, a reliability diagram with the expected calibration error (ECE), and Grad-CAM
galleries of the most confident false positives and the most missed false negatives.
Everything lands in ``out/``: PNGs (matplotlib, Agg), ``report.md`` embedding them
and ``metrics.json`` (which ``cxr-train export`` copies into the bundle manifest).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import TrainingDataError
from cxr_viewer.core.jsonio import dumps, finite_or_none
from cxr_viewer.core.models.calibration import expected_calibration_error
from cxr_viewer.core.models.metrics import auroc, bootstrap_auroc, operating_point  # written once, in core

if TYPE_CHECKING:
    import pandas as pd

    from cxr_viewer.core.models.bundle import LoadedBundle

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ prediction
def pick_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def split_frame(
    manifest: str | Path, split: str, split_file: str | Path | None, loaded: "LoadedBundle | None" = None
) -> "pd.DataFrame":
    """Manifest rows of ``split``; the split comes from ``split_file``, else the bundle's recorded one."""
    from trainer.data.manifest import read_manifest
    from trainer.data.splits import apply_split_file, file_sha256

    frame = read_manifest(manifest).frame
    if split == "all":
        return frame.reset_index(drop=True)
    if split_file is None and loaded is not None:
        prov = loaded.manifest.provenance
        recorded = prov.get("split_file")
        if recorded and Path(recorded).is_file():
            if prov.get("split_sha256") and file_sha256(recorded) != prov["split_sha256"]:
                raise TrainingDataError(
                    f"The split file {recorded} changed since the model was trained (sha256 differs); "
                    "pass the original with --split-file."
                )
            split_file = recorded
    if split_file is not None:
        frame = apply_split_file(frame, split_file)
    if "split" not in frame or not (frame["split"] == split).any():
        raise TrainingDataError(
            f"No images in the '{split}' split. Pass --split-file (the run's splits.csv) or use --split all."
        )
    return frame[frame["split"] == split].reset_index(drop=True)


def predict(
    loaded: "LoadedBundle", frame: "pd.DataFrame", *, batch_size: int = 32, num_workers: int = 0,
    with_features: bool = False, cache_dir: str | Path | None = None,
) -> Any:  # fmt: skip
    """Scores (N, L) the viewer would show for each row, and the (N, L) targets (NaN = unknown).

    ``with_features``: also the (N, F) pooled features (one forward pass gives both), for the
    population checks and the age head. ``cache_dir``: a training run's decode cache to read.
    """
    import torch
    from torch.utils.data import DataLoader

    from trainer.data.dataset import CXRDataset, ImageCache
    from trainer.tasks.classify import scores_from_logits

    labels = loaded.labels
    missing = [lab for lab in labels if lab not in frame.columns]
    if missing:
        raise TrainingDataError(f"The manifest has no column for the model's label(s) {missing}.")
    cache = ImageCache(memory=False, disk_dir=cache_dir) if cache_dir else None
    ds = CXRDataset(frame, loaded.preprocessing, labels, cache=cache)
    dl = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    device = next(loaded.model.parameters()).device
    model = loaded.model
    split = with_features and hasattr(model, "forward_features") and hasattr(model, "head")
    out, tgt, feats = [], [], []
    with loaded.lock, torch.inference_mode():
        model.eval()
        for batch in dl:
            x = batch["image"].to(device)
            if split:
                f = model.forward_features(x)
                logits = model.head(f)  # dropout is the identity in eval mode
                feats.append(f.float().cpu())
            else:
                logits = model(x)
            out.append(scores_from_logits(loaded.task, logits).float().cpu())
            tgt.append(batch["target"])
    P, Y = torch.cat(out).numpy(), torch.cat(tgt).numpy()
    if with_features:
        return P, Y, (torch.cat(feats).numpy() if feats else None)
    return P, Y


# ------------------------------------------------------------------ metrics
def bootstrap_macro_auroc(
    Y: np.ndarray, P: np.ndarray, groups: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Macro AUROC (labels with both classes) and its patient-bootstrap 95 % CI."""
    def macro(idx: np.ndarray) -> float:
        vals = []
        for j in range(Y.shape[1]):
            known = ~np.isnan(Y[idx, j])
            v = auroc(Y[idx, j][known], P[idx, j][known])
            if not math.isnan(v):
                vals.append(v)
        return float(np.mean(vals)) if vals else float("nan")

    point = macro(np.arange(len(Y)))
    rng = np.random.default_rng(seed)
    uniq, inverse = np.unique(groups, return_inverse=True)
    rows = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    stats = []
    for _ in range(int(n_boot)):
        idx = np.concatenate([rows[i] for i in rng.integers(0, len(uniq), len(uniq))])
        v = macro(idx)
        if not math.isnan(v):
            stats.append(v)
    if math.isnan(point) or len(stats) < max(10, n_boot // 10):
        return point, float("nan"), float("nan")
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return point, float(lo), float(hi)


# ------------------------------------------------------------------ plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, max(1, n))
    return int(math.ceil(n / cols)), cols


def plot_curves(Y: np.ndarray, P: np.ndarray, labels: list[str], out: Path) -> dict[str, str]:
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    files = {}
    fig_roc, ax_roc = plt.subplots(figsize=(6, 6))
    fig_pr, ax_pr = plt.subplots(figsize=(6, 6))
    for j, lab in enumerate(labels):
        known = ~np.isnan(Y[:, j])
        y, p = Y[known, j], P[known, j]
        if y.size == 0 or y.min() == y.max():
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax_roc.plot(fpr, tpr, label=f"{lab} ({auroc(y, p):.2f})")
        prec, rec, _ = precision_recall_curve(y, p)
        ax_pr.plot(rec, prec, label=f"{lab} (prev. {y.mean():.2f})")
    ax_roc.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax_roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax_pr.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    for fig, ax, name in ((fig_roc, ax_roc, "roc.png"), (fig_pr, ax_pr, "pr.png")):
        ax.legend(fontsize=7, loc="lower right" if name == "roc.png" else "upper right")
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files[name[:-4]] = name
    return files


def plot_confusions(ops: dict[str, dict[str, Any]], out: Path) -> str:
    plt = _plt()
    labels = list(ops)
    r, c = _grid(len(labels))
    fig, axes = plt.subplots(r, c, figsize=(2.6 * c, 2.6 * r), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, lab in zip(axes.flat, labels):
        o = ops[lab]
        m = np.array([[o["tn"], o["fp"]], [o["fn"], o["tp"]]])
        ax.axis("on")
        ax.imshow(m, cmap="Blues")
        for (i, k), v in np.ndenumerate(m):
            ax.text(k, i, str(v), ha="center", va="center", fontsize=9)
        ax.set_xticks([0, 1], ["pred -", "pred +"], fontsize=7)
        ax.set_yticks([0, 1], ["true -", "true +"], fontsize=7)
        ax.set_title(f"{lab} @ {o['threshold']:.2f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)
    return "confusion.png"


def plot_calibration(Y: np.ndarray, P: np.ndarray, labels: list[str], out: Path) -> str:
    from sklearn.calibration import calibration_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6))
    for j, lab in enumerate(labels):
        known = ~np.isnan(Y[:, j])
        y, p = Y[known, j], P[known, j]
        if y.size == 0 or y.min() == y.max():
            continue
        frac, mean = calibration_curve(y, p, n_bins=10, strategy="uniform")
        ax.plot(mean, frac, marker="o", ms=3, label=f"{lab} (ECE {expected_calibration_error(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="mean predicted score", ylabel="observed frequency", title="Calibration", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)
    return "calibration.png"


def cam_gallery(
    loaded: "LoadedBundle", frame: "pd.DataFrame", Y: np.ndarray, P: np.ndarray, label: str, k: int, out: Path
) -> str | None:
    """Top-``k`` false positives (highest scores among negatives) and false negatives (lowest
    scores among positives) at the operating threshold, each with its Grad-CAM overlay."""
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io import read_image

    j = loaded.labels.index(label)
    thr = loaded.manifest.threshold(label)
    y, p = Y[:, j], P[:, j]
    fp = [i for i in np.argsort(-p) if y[i] == 0 and p[i] >= thr][:k]
    fn = [i for i in np.argsort(p) if y[i] == 1 and p[i] < thr][:k]
    if not fp and not fn:
        return None
    plt = _plt()
    engine = InferenceEngine([loaded], device=str(next(loaded.model.parameters()).device), backend="torch", cache_size=0)
    rows = [("false positive", fp), ("false negative", fn)]
    cols = max(len(fp), len(fn), 2)
    fig, axes = plt.subplots(2, cols, figsize=(2.4 * cols, 5.0), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (kind, idx) in enumerate(rows):
        for c, i in enumerate(idx):
            record = read_image(frame["image"].iloc[i])
            heat = engine.cam(record, label, faithfulness=False).values  # the viewer's Grad-CAM path
            ax = axes[r, c]
            ax.imshow(record.model_pixels(), cmap="gray")
            ax.imshow(np.asarray(heat), cmap="jet", alpha=0.35, vmin=0, vmax=1)
            ax.set_title(f"{kind}\nscore {p[i]:.2f}", fontsize=8)
    fig.suptitle(f"{label}: worst errors at threshold {thr:.2f} (Grad-CAM)", fontsize=9)
    fig.tight_layout()
    name = f"gallery_{_safe(label)}.png"
    fig.savefig(out / name, dpi=100)
    plt.close(fig)
    return name


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------ entry point
def evaluate(
    bundle: str | Path,
    manifest: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    split_file: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    gallery: int = 4,
    gallery_labels: int = 4,
    batch_size: int = 32,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
) -> Path:
    """Evaluate ``bundle`` on ``split`` of ``manifest``; write report.md, metrics.json and PNGs to ``out``."""
    from cxr_viewer.core.models.bundle import load_bundle

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_bundle(bundle, device=pick_device())
    if not loaded.manifest.is_classifier:
        raise TrainingDataError(f"Bundle {loaded.name} is a {loaded.task} model; evaluate needs a classifier.")
    frame = split_frame(manifest, split, split_file, loaded)
    P, Y, F = predict(loaded, frame, batch_size=batch_size, num_workers=num_workers, with_features=True,
                      cache_dir=cache_dir)  # fmt: skip
    groups = frame["patient_id"].astype(str).to_numpy()
    labels = loaded.labels
    metrics: dict[str, Any] = {
        "split": split,
        "n_images": int(len(frame)),
        "n_patients": int(len(set(groups))),
        "bootstrap": {"resamples": int(n_boot), "unit": "patient", "seed": int(seed), "interval": "percentile 95%"},
        "auroc": {},
        "operating_point": {},
        "ece": {},
    }
    for j, lab in enumerate(labels):
        known = ~np.isnan(Y[:, j])
        y, p, g = Y[known, j], P[known, j], groups[known]
        point = auroc(y, p)
        lo, hi, used = bootstrap_auroc(y, p, g, n_boot=n_boot, seed=seed + j) if not math.isnan(point) else (math.nan,) * 2 + (0,)
        metrics["auroc"][lab] = {
            "value": None if math.isnan(point) else point,
            "ci95": None if math.isnan(lo) else [lo, hi],
            "n_pos": int(y.sum()), "n_neg": int((y == 0).sum()), "resamples_used": int(used),
        }  # fmt: skip
        metrics["operating_point"][lab] = operating_point(y, p, loaded.manifest.threshold(lab))
        metrics["operating_point"][lab]["threshold_method"] = loaded.manifest.thresholds.get(lab, {}).get("method", "default")
        metrics["ece"][lab] = expected_calibration_error(y, p)
    point, lo, hi = bootstrap_macro_auroc(Y, P, groups, n_boot=n_boot, seed=seed)
    metrics["auroc_macro"] = {"value": None if math.isnan(point) else point, "ci95": None if math.isnan(lo) else [lo, hi]}
    if "dataset" in frame and (frame["dataset"] == "nih14").any() and "Abnormal" in labels:
        # the NIH-14 goal: the NIH findings (every label but Abnormal) on NIH films only
        nih = (frame["dataset"] == "nih14").to_numpy()
        cols = [j for j, lab in enumerate(labels) if lab != "Abnormal"]
        point, lo, hi = bootstrap_macro_auroc(Y[nih][:, cols], P[nih][:, cols], groups[nih], n_boot=n_boot, seed=seed)
        metrics["auroc_macro_nih14"] = {"value": None if math.isnan(point) else point,
                                        "ci95": None if math.isnan(lo) else [lo, hi], "n_images": int(nih.sum())}  # fmt: skip
    metrics.update(population_metrics(loaded, frame, Y, P, groups, n_boot=n_boot, seed=seed))
    metrics.update(badge_metrics(loaded, frame, Y, P, F, groups, n_boot=n_boot, seed=seed))
    if loaded.task == "multiclass":
        from sklearn.metrics import confusion_matrix

        metrics["multiclass_confusion"] = {
            "labels": labels,
            "matrix": confusion_matrix(np.nan_to_num(Y).argmax(1), P.argmax(1), labels=list(range(len(labels)))).tolist(),
        }
    figures = plot_curves(Y, P, labels, out)
    figures["confusion"] = plot_confusions(metrics["operating_point"], out)
    figures["calibration"] = plot_calibration(Y, P, labels, out)
    galleries: dict[str, str] = {}
    if gallery > 0:
        by_pos = sorted(labels, key=lambda lab: -metrics["auroc"][lab]["n_pos"])[:gallery_labels]
        for lab in by_pos:
            name = cam_gallery(loaded, frame, np.nan_to_num(Y, nan=-1), P, lab, gallery, out)
            if name:
                galleries[lab] = name
    metrics["figures"] = {**figures, **{f"gallery/{k}": v for k, v in galleries.items()}}
    (out / "metrics.json").write_text(dumps(finite_or_none(metrics), indent=2), encoding="utf-8")  # NaN -> null
    np.savez_compressed(out / "predictions.npz", scores=P, targets=Y, patients=groups, labels=np.array(labels))
    (out / "report.md").write_text(_report(loaded, metrics, figures, galleries), encoding="utf-8")
    log.info("evaluation written to %s (macro AUROC %s)", out, _fmt(metrics["auroc_macro"]["value"]))
    return out


def _auroc_ci(y: np.ndarray, p: np.ndarray, g: np.ndarray, *, n_boot: int, seed: int) -> dict[str, Any] | None:
    if y.size == 0 or y.min() == y.max():
        return None
    point = auroc(y, p)
    lo, hi, _ = bootstrap_auroc(y, p, g, n_boot=n_boot, seed=seed)
    return {"value": point, "ci95": None if math.isnan(lo) else [lo, hi], "n_pos": int(y.sum()), "n_neg": int((y == 0).sum())}


def _mean_ci(values: np.ndarray, g: np.ndarray, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of per-image values with a patient-level bootstrap 95% interval."""
    rng = np.random.default_rng(seed)
    patients = np.unique(g)
    idx = {pid: np.flatnonzero(g == pid) for pid in patients}
    boots = []
    for _ in range(n_boot):
        take = np.concatenate([idx[pid] for pid in rng.choice(patients, size=len(patients))])
        boots.append(float(values[take].mean()))
    lo, hi = (np.percentile(boots, [2.5, 97.5]).tolist() if boots else [math.nan, math.nan])
    return {"value": float(values.mean()), "ci95": [lo, hi], "n_images": int(values.size)}


def population_metrics(
    loaded: "LoadedBundle", frame: "pd.DataFrame", Y: np.ndarray, P: np.ndarray, groups: np.ndarray, *, n_boot: int, seed: int
) -> dict[str, Any]:
    """What a multi-source model must show per population: sub-group AUROCs, ECE before/after, false alarms.

    - ``subgroups``: each label's AUROC within each source that labels it both ways
      (children = Kermany, adults = NIH and the COVID collection), plus "adult pneumonia
      vs no finding" (NIH Pneumonia against NIH No Finding films);
    - ``false_alarm_burden``: on held-out normal films (``Abnormal`` = 0, per source), the
      mean number of findings the viewer would badge POSITIVE (validated thresholds only),
      and the same count over every threshold;
    - ``ece_uncalibrated``: the ECE the raw (pre-calibration) scores would have, recovered by
      inverting the calibration folded into the head.
    """
    from cxr_viewer.core.models.calibration import Calibration, logit

    out: dict[str, Any] = {"subgroups": {}, "false_alarm_burden": {}, "ece_uncalibrated": {}}
    labels = loaded.labels
    dataset = frame["dataset"].astype(str).to_numpy() if "dataset" in frame else np.array(["all"] * len(frame))
    for j, lab in enumerate(labels):
        for ds in sorted(set(dataset)):
            m = (dataset == ds) & ~np.isnan(Y[:, j])
            r = _auroc_ci(Y[m, j], P[m, j], groups[m], n_boot=n_boot, seed=seed + j)
            if r is not None and len(set(dataset[~np.isnan(Y[:, j])])) > 1:
                out["subgroups"].setdefault(lab, {})[ds] = r
        adults = np.isin(dataset, ["nih14", "covid"]) & ~np.isnan(Y[:, j])
        if lab == "Pneumonia" and adults.any() and "kermany" in set(dataset):
            r = _auroc_ci(Y[adults, j], P[adults, j], groups[adults], n_boot=n_boot, seed=seed + 99)
            if r is not None:
                out["subgroups"][lab]["adults (nih14 + covid)"] = r
    if "Pneumonia" in labels and "Abnormal" in labels:
        jp, ja = labels.index("Pneumonia"), labels.index("Abnormal")
        nih = dataset == "nih14"
        pos, normal = nih & (Y[:, jp] == 1), nih & (Y[:, ja] == 0)
        m = pos | normal
        r = _auroc_ci(Y[m, jp], P[m, jp], groups[m], n_boot=n_boot, seed=seed + 7)
        if r is not None:
            out["subgroups"]["Pneumonia"]["adult pneumonia vs no finding (nih14)"] = r
    if "Abnormal" in labels:
        ja = labels.index("Abnormal")
        thr = np.array([loaded.manifest.threshold(lab) for lab in labels])
        validated = np.array([loaded.manifest.thresholds.get(lab, {}).get("validated", True) is not False for lab in labels])
        pos = P >= thr[None, :]
        for ds in sorted(set(dataset)):
            m = (dataset == ds) & (Y[:, ja] == 0)
            if not m.any():
                continue
            out["false_alarm_burden"][ds] = {
                "badged": _mean_ci(pos[m][:, validated].sum(1).astype(float), groups[m], n_boot=n_boot, seed=seed),
                "every_threshold": float(pos[m].sum(1).mean()),
                "labels_counted": [lab for lab, v in zip(labels, validated) if v],
            }
    record = loaded.manifest.calibration
    cal = {} if record is None else record.labels
    for j, lab in enumerate(labels):
        known = ~np.isnan(Y[:, j])
        c = cal[lab].calibration if lab in cal else Calibration()
        if c.method in ("temperature", "platt") and known.any():
            raw = 1.0 / (1.0 + np.exp(-(logit(P[known, j]) - c.b) / c.a))
            out["ece_uncalibrated"][lab] = expected_calibration_error(Y[known, j], raw)
    return out


def badge_metrics(
    loaded: "LoadedBundle", frame: "pd.DataFrame", Y: np.ndarray, P: np.ndarray, F: np.ndarray | None,
    groups: np.ndarray, *, n_boot: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """What the viewer's POSITIVE badges do on these films, judged as the viewer judges a film
    without a recorded age (each finding's population by the age head's estimate):

    - ``badges``: POSITIVE badges per normal film (``Abnormal`` = 0), adults and children
      separately, and the fraction of true findings that wear a badge, per finding and overall;
    - ``age_head``: the age head's error on these films (when the bundle has one).
    """
    from trainer.budget import badge_figures
    from trainer.calibrate import viewer_eligibility
    from trainer.population import age_head_metrics, is_child

    labels = loaded.labels
    if "Abnormal" not in labels or "dataset" not in frame:
        return {}
    population = loaded.manifest.population
    eligible = viewer_eligibility(population, labels, F) if F is not None else np.ones(P.shape, dtype=bool)
    thr = np.array([loaded.manifest.threshold(lab) for lab in labels])
    counted = np.array([loaded.manifest.thresholds.get(lab, {}).get("validated", True) is not False for lab in labels])
    child = is_child(frame)
    out: dict[str, Any] = {
        "badges": badge_figures(
            P, Y, thr, eligible, normal=Y[:, labels.index("Abnormal")] == 0, group=np.where(child, "children", "adults"),
            counted=counted, labels=labels, patients=groups, n_boot=n_boot, seed=seed,
        )
    }
    out["badges"]["labels_counted"] = [lab for lab, c in zip(labels, counted) if c]
    head = None if population is None else population.age_head
    if head is not None and F is not None:
        from cxr_viewer.core.inference.population import estimate_age

        est = np.array([estimate_age(f, population) for f in F])
        out["age_head"] = age_head_metrics(est, frame, groups, n_boot=n_boot, seed=seed,
                                           child_below=float(11.5 if head.child_below is None else head.child_below))  # fmt: skip
    return out


def _report(loaded: "LoadedBundle", m: dict[str, Any], figures: dict[str, str], galleries: dict[str, str]) -> str:
    mac = m["auroc_macro"]
    ci = mac["ci95"]
    lines = [
        f"# Evaluation of {loaded.name} {loaded.version}",
        "",
        f"Split **{m['split']}**: {m['n_images']} images from {m['n_patients']} patients. "
        f"Confidence intervals: {m['bootstrap']['resamples']} bootstrap resamples of patients (seed {m['bootstrap']['seed']}).",
        "",
        f"**Macro AUROC {_fmt(mac['value'])}** (95% CI {_fmt(ci[0]) if ci else 'n/a'} - {_fmt(ci[1]) if ci else 'n/a'}).",
        "",
        "Research use only, not a medical device. Small test sets give wide intervals: read the CI, not the point.",
        "",
        "| label | positives | negatives | AUROC | 95% CI | threshold (method) | sensitivity | specificity | PPV | F1 | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lab, a in m["auroc"].items():
        o = m["operating_point"][lab]
        ci = a["ci95"]
        lines.append(
            f"| {lab} | {a['n_pos']} | {a['n_neg']} | {_fmt(a['value'])} | "
            f"{(_fmt(ci[0]) + ' - ' + _fmt(ci[1])) if ci else 'n/a'} | {o['threshold']:.3f} ({o['threshold_method']}) | "
            f"{_fmt(o['sensitivity'])} | {_fmt(o['specificity'])} | {_fmt(o['ppv'])} | {_fmt(o['f1'])} | {_fmt(m['ece'][lab])} |"
        )
    from cxr_viewer.core.models.card import badge_sections

    lines += badge_sections(loaded.manifest, m)
    lines += ["", "## ROC", "", f"![ROC curves]({figures['roc']})", "", "## Precision-recall", "", f"![PR curves]({figures['pr']})"]
    lines += ["", "## Confusion at the operating thresholds", "", f"![confusion matrices]({figures['confusion']})"]
    lines += ["", "## Calibration", "", f"![reliability diagram]({figures['calibration']})"]
    if galleries:
        lines += ["", "## Worst errors with Grad-CAM", ""]
        for lab, name in galleries.items():
            lines += [f"### {lab}", "", f"![{lab} gallery]({name})", ""]
    return "\n".join(lines) + "\n"

