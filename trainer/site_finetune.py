"""``cxr-train finetune --site --init BUNDLE --manifest site.csv``: few-shot fine-tuning on a site's films, behind gates.

The run is an ordinary fine-tune (:func:`trainer.run.run_finetune`) started from every
weight of the installed bundle, with the bundle's own input contract (size, resize,
normalisation, backbone, labels). Then:

1. thresholds of the new weights are chosen on the site's validation split
   (:func:`trainer.calibrate.calibrate`);
2. the new and the original bundle are scored on the **same** held-out site test split:
   AUROC per finding with patient-bootstrap 95 % CIs, and the paired difference with its CI;
3. gates: ``golden`` (the candidate, exported with golden images, reproduces their scores
   through the viewer's loader), ``original_split`` (on the original bundle's own held-out
   split the new macro AUROC stays at or above the lower end of the original's CI) and
   ``site_improvement`` (the new AUROC on the site test split is higher than the original's);
4. ``--install`` (only when every gate passes) puts the candidate into the user's models
   folder under its own name and version, switched off (``enabled: false``) with its gate
   report, next to the original, which stays installed for rollback.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cxr_viewer.core.errors import TrainingConfigError, TrainingDataError

log = logging.getLogger(__name__)


def _site_manifest(args: argparse.Namespace, labels: list[str], run_dir: Path) -> str:
    """The site manifest with a blank (unknown) column for each bundle label it lacks."""
    from trainer.data.manifest import read_manifest

    frame = read_manifest(args.manifest).frame
    have = [lab for lab in labels if lab in frame.columns]
    if not have:
        raise TrainingDataError(f"The site manifest has no column for the bundle's findings ({', '.join(labels)}).")
    if len(have) == len(labels):
        return str(args.manifest)
    for lab in labels:
        if lab not in frame.columns:
            frame[lab] = np.nan
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "site_manifest.csv"
    from cxr_viewer.core.csvio import neutralise_frame
    from cxr_viewer.core.staging import staged_file

    with staged_file(out) as part:
        neutralise_frame(frame).to_csv(part, index=False)
    return str(out)


def adopt_bundle_contract(args: argparse.Namespace) -> Any:
    """Set backbone, input size, resize, normalisation, task and labels from the ``--init`` bundle."""
    from cxr_viewer.core.models.bundle import read_manifest

    if not args.init or args.init == "random":
        raise TrainingConfigError("--site fine-tunes an installed bundle: pass --init BUNDLE.")
    m = read_manifest(args.init)
    if not m.is_classifier:
        raise TrainingConfigError(f"--init {m.name} is a {m.task} bundle; site fine-tuning needs a classifier.")
    pre = m.preprocessing
    if pre.size[0] != pre.size[1] or len(pre.mean) != 1:
        raise TrainingConfigError(f"Bundle {m.name} has a non-square or multi-channel input; the trainer builds square 1-channel ones.")
    args.image_size, args.resize, args.mean, args.std = int(pre.size[0]), pre.resize, float(pre.mean[0]), float(pre.std[0])
    args.backbone = m.architecture.get("kwargs", {}).get("backbone", args.backbone)
    args.task = m.task
    args.labels = list(m.labels)
    return m


def _compare(orig: Any, new: Any, frame: Any, *, n_boot: int, seed: int) -> dict[str, Any]:
    from cxr_viewer.core.models.metrics import auroc, bootstrap_auroc, bootstrap_stat
    from trainer.evaluate import predict

    Po, Y = predict(orig, frame)
    Pn, _ = predict(new, frame)
    groups = frame["patient_id"].astype(str).to_numpy()
    out: dict[str, Any] = {"n_images": int(len(frame)), "n_patients": int(len(set(groups))), "labels": {}}
    for j, lab in enumerate(orig.labels):
        known = ~np.isnan(Y[:, j])
        y, po, pn, g = Y[known, j], Po[known, j], Pn[known, j], groups[known]
        if y.size == 0 or y.min() == y.max():
            continue
        row: dict[str, Any] = {"n_pos": int(y.sum()), "n_neg": int((y == 0).sum())}
        for key, p in (("original", po), ("new", pn)):
            lo, hi, _ = bootstrap_auroc(y, p, g, n_boot=n_boot, seed=seed + j)
            row[key] = {"auroc": auroc(y, p), "ci95": None if math.isnan(lo) else [lo, hi]}
        lo, hi, _ = bootstrap_stat(lambda idx: auroc(y[idx], pn[idx]) - auroc(y[idx], po[idx]), g, n_boot=n_boot, seed=seed + j)
        row["difference"] = {"auroc": row["new"]["auroc"] - row["original"]["auroc"], "ci95": None if math.isnan(lo) else [lo, hi]}
        out["labels"][lab] = row
    return out


def _original_split_gate(orig: Any, new: Any, manifest: str | None, *, n_boot: int, seed: int) -> dict[str, Any]:
    from trainer.evaluate import bootstrap_macro_auroc, predict, split_frame

    if not manifest:
        return {"passed": False, "reason": "not checked: pass --original-manifest (the data the bundle was trained on)"}
    try:
        frame = split_frame(manifest, "test", None, orig)
    except TrainingDataError as exc:
        return {"passed": False, "reason": f"not checked: {exc.message}"}
    missing = [lab for lab in orig.labels if lab not in frame.columns]
    if missing:
        return {"passed": False, "reason": f"not checked: the original manifest has no column for {missing}"}
    groups = frame["patient_id"].astype(str).to_numpy()
    Po, Y = predict(orig, frame)
    Pn, _ = predict(new, frame)
    o, lo, hi = bootstrap_macro_auroc(Y, Po, groups, n_boot=n_boot, seed=seed)
    n, nlo, nhi = bootstrap_macro_auroc(Y, Pn, groups, n_boot=n_boot, seed=seed)
    passed = not math.isnan(lo) and n >= lo
    weak = math.isnan(lo) or hi - lo > 0.4
    return {
        "informative": not weak,
        "note": (f"the original held-out split ({len(frame)} images) gives a CI {lo:.2f}-{hi:.2f}: too wide to "
                 "detect a drop; check on a larger held-out set before enabling") if weak else "",
        "passed": bool(passed), "n_images": int(len(frame)),
        "original": {"auroc_macro": o, "ci95": [lo, hi]}, "new": {"auroc_macro": n, "ci95": [nlo, nhi]},
        "reason": (f"new macro AUROC {n:.3f} {'>=' if passed else '<'} the original's CI lower bound {lo:.3f} "
                   "on the original held-out split"),
    }  # fmt: skip


def _golden_gate(candidate: Path) -> dict[str, Any]:
    from cxr_viewer.core.inference.golden import check_golden
    from cxr_viewer.core.models.bundle import load_bundle

    b = load_bundle(candidate)
    check = check_golden(b)
    ok = check.ok and check.images > 0
    return {"passed": bool(ok), "images": int(check.images), "max_diff": float(check.max_diff),
            "reason": "; ".join(check.failures) or (f"{check.images} golden image(s) reproduced" if ok else "no golden images")}  # fmt: skip


def _golden_images(orig: Any, frame: Any, given: list[str]) -> list[str]:
    if given:
        return list(given)[:2]
    own = [str(orig.path / g["image"]) for g in orig.manifest.golden if (orig.path / g["image"]).is_file()]
    return (own or list(frame["image"].astype(str)))[:2]


def install_site_version(candidate: Path, original: Any, report: dict[str, Any], install_dir: str | Path | None = None) -> Path:
    """Copy the candidate beside the original (which stays for rollback), switched off until the user enables it."""
    from cxr_viewer.core.models.bundle import read_manifest
    from cxr_viewer.core.paths import user_models_dir
    from trainer.export import rewrite_manifest

    root = Path(install_dir) if install_dir else user_models_dir()
    m = read_manifest(candidate)
    dest = root / f"{m.name}-{m.version}".replace("+", "_")
    if dest.exists():
        raise TrainingConfigError(f"{dest} is already installed; remove it or fine-tune under another --name.")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(candidate, dest)
    from cxr_viewer.core.jsonio import finite_or_none
    from cxr_viewer.core.models.blocks import SiteVersion

    m.enabled = False
    m.site_version = SiteVersion.from_dict(finite_or_none({
        "replaces": original.ref.to_dict(), "installed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gates": report["gates"], "site_test": report["site_test"],
        "rollback": f"the original {original.name} {original.version} stays installed; switch this one off to roll back",
    }))  # fmt: skip
    rewrite_manifest(m, dest)
    return dest


def run_site_finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune, compare, gate and (with ``--install``) install; returns the report (also ``site_report.json``)."""
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.calibrate import calibrate
    from trainer.evaluate import split_frame
    from trainer.export import export_bundle
    from trainer.run import run_dir_for, run_finetune

    manifest = adopt_bundle_contract(args)
    run_dir = run_dir_for(args, "site-finetune")
    args.manifest = _site_manifest(args, args.labels, run_dir)
    res = run_finetune(args)
    split_file = res.run_dir / "splits.csv"
    try:
        calibrate(res.bundle_dir, args.manifest, method="youden", split="val", split_file=split_file)
    except TrainingDataError as exc:  # a tiny val split: keep the default thresholds, say so
        log.warning("thresholds not re-chosen: %s", exc.message)
    orig = load_bundle(args.init)
    new = load_bundle(res.bundle_dir)
    test = split_frame(args.manifest, "test", split_file)
    n_boot, seed = int(args.site_bootstrap), int(args.seed)
    site_test = _compare(orig, new, test, n_boot=n_boot, seed=seed)
    candidate = export_bundle(
        res.bundle_dir, res.run_dir / "candidate", name=f"{manifest.name}-site", dtype="float32",
        version=f"{manifest.version}+site.{args.name}", golden_images=_golden_images(orig, test, list(args.golden or [])),
    )  # fmt: skip
    diffs = {lab: r["difference"]["auroc"] for lab, r in site_test["labels"].items()}
    gates = {
        "golden": _golden_gate(candidate),
        "original_split": _original_split_gate(orig, new, args.original_manifest, n_boot=n_boot, seed=seed),
        "site_improvement": {
            "passed": bool(diffs) and all(d > 0 for d in diffs.values()),
            "reason": ", ".join(f"{lab}: AUROC {site_test['labels'][lab]['original']['auroc']:.3f} -> "
                                f"{site_test['labels'][lab]['new']['auroc']:.3f}" for lab in diffs)
            or "no finding has both classes in the site test split",
        },
    }  # fmt: skip
    report: dict[str, Any] = {
        "run": str(res.run_dir), "bundle": str(res.bundle_dir), "candidate": str(candidate),
        "fraction": float(args.fraction), "train_images": new.manifest.provenance.get("train_images"),
        "site_test": site_test, "gates": gates, "passed": all(g["passed"] for g in gates.values()), "installed": None,
    }  # fmt: skip
    if args.install:
        if report["passed"]:
            report["installed"] = str(install_site_version(candidate, orig, report, args.install_dir))
        else:
            failed = [k for k, g in gates.items() if not g["passed"]]
            log.warning("not installed: gate(s) %s failed", ", ".join(failed))
    from cxr_viewer.core.jsonio import finite_or_none

    (res.run_dir / "site_report.json").write_text(json.dumps(finite_or_none(report), indent=2, allow_nan=False), encoding="utf-8")
    return report
