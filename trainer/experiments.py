"""``experiment fractions``: how much does pre-training buy when labels are scarce?

For each label fraction (1 %, 10 %, 100 % of training patients, nested and stratified,
see :mod:`trainer.data.splits`) and each initialisation (random, SimCLR encoder,
reconstruction encoder) one fine-tuning run is made with otherwise identical options and
the same split; each is evaluated on the same held-out test split (macro AUROC with a
patient-bootstrap 95 % CI). Results: ``results.md`` (table), ``results.json`` and
``results.png`` (AUROC vs fraction, one line per initialisation, CI as error bars).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

from cxr_viewer.core.errors import TrainingConfigError
from cxr_viewer.core.jsonio import dumps, finite_or_none

log = logging.getLogger(__name__)


def run_fractions(args: argparse.Namespace) -> Path:
    from trainer.config import resolved, save_config
    from trainer.evaluate import evaluate
    from trainer.run import run_dir_for, run_finetune

    root = run_dir_for(args, "fractions")
    save_config(resolved(args), root, command="experiment fractions")
    bundles = {"random": "random", "simclr": args.simclr, "recon": args.recon,
               "bundle": args.init if args.init not in (None, "random") else None}  # e.g. a site's installed bundle
    for init in args.inits:
        if init not in bundles:
            raise TrainingConfigError(f"Unknown initialisation {init!r}; use random, simclr, recon or bundle (--init).")
        if not bundles[init]:
            raise TrainingConfigError(f"--inits includes {init} but no --{init} encoder bundle was given.")
    rows: list[dict[str, Any]] = []
    split_file = args.split_file or _shared_split(args, root)
    for fraction in sorted(args.fractions):
        for init in args.inits:
            run = copy.copy(args)
            run.name = f"frac{fraction:g}-{init}"
            run.runs_dir = str(root)
            run.fraction = float(fraction)
            run.init = bundles[init]
            run.split_file = split_file
            run.resume = False
            res = run_finetune(run)
            ev = evaluate(res.bundle_dir, args.manifest, res.run_dir / "eval", split="test", split_file=split_file,
                          n_boot=args.bootstrap, seed=args.seed, gallery=0)  # fmt: skip
            m = json.loads((ev / "metrics.json").read_text())
            prov = json.loads((res.bundle_dir / "manifest.json").read_text())["provenance"]
            rows.append({
                "fraction": float(fraction), "init": init, "train_patients": prov.get("train_patients"),
                "auroc": m["auroc_macro"]["value"], "ci95": m["auroc_macro"]["ci95"], "run": str(res.run_dir),
            })  # fmt: skip
            log.info("fraction %g, %s init: macro AUROC %s", fraction, init, m["auroc_macro"]["value"])
    (root / "results.json").write_text(dumps(finite_or_none(rows), indent=2), encoding="utf-8")
    _plot(rows, root / "results.png")
    table = _table(rows, args)
    if getattr(args, "target_auroc", None):
        curves = {init: labels_needed(rows, float(args.target_auroc), init) for init in args.inits}
        (root / "learning_curve.json").write_text(json.dumps(curves, indent=2), encoding="utf-8")
        table += "\n## Labels needed\n\n" + "\n".join(f"- {init}: {c['message']}" for init, c in curves.items()) + "\n"
    (root / "results.md").write_text(table, encoding="utf-8")
    return root / "results.md"


def labels_needed(rows: list[dict[str, Any]], target: float, init: str) -> dict[str, Any]:
    """How many labelled patients the trend of one initialisation's runs needs for ``target`` AUROC.

    Fits AUROC = a + b ln(patients) to the fractions runs (least squares), and the same to
    the CI bounds for a range; an extrapolation beyond the largest run is marked as such.
    """
    import numpy as np

    rs = [r for r in rows if r["init"] == init and r.get("auroc") is not None and r.get("train_patients")]
    x = np.log([float(r["train_patients"]) for r in rs]) if rs else np.array([])
    out: dict[str, Any] = {"init": init, "target_auroc": target, "points": [[r["train_patients"], r["auroc"]] for r in rs]}
    if len(set(x.tolist())) < 2:
        return {**out, "patients_needed": None, "message": "needs runs at two or more label fractions"}

    def solve(y: list[float]) -> float | None:
        b, a = np.polyfit(x, y, 1)
        if b <= 1e-6:
            return None
        return float(np.exp((target - a) / b))

    n = solve([r["auroc"] for r in rs])
    with_ci = [r for r in rs if r.get("ci95")]
    lo = solve([r["ci95"][1] for r in rs]) if len(with_ci) == len(rs) else None  # optimistic bound: fewer needed
    hi = solve([r["ci95"][0] for r in rs]) if len(with_ci) == len(rs) else None
    largest = max(float(r["train_patients"]) for r in rs)
    slope = float(np.polyfit(x, [r["auroc"] for r in rs], 1)[0])
    out.update(patients_needed=None if n is None else int(math.ceil(n - 1e-6)), range=[lo, hi], slope_per_log_patient=slope,
               largest_run=int(largest), extrapolated=bool(n is not None and n > largest))  # fmt: skip
    if n is None:
        out["message"] = f"AUROC does not rise with more labels in these runs (slope {slope:.3f}); more labels may not help"
    elif n > 1000 * largest:
        out["message"] = (f"AUROC {target:g} is out of reach on this trend (slope {slope:.3f} per e-fold from "
                          f"{int(largest)} patients: over 1000 times more labels); more labels alone will not get there")  # fmt: skip
    elif n <= largest:
        out["message"] = f"target AUROC {target:g} reached with about {int(math.ceil(n - 1e-6))} labelled patients (within the runs)"
    else:
        out["message"] = (f"about {int(math.ceil(n - 1e-6))} labelled patients for AUROC {target:g} by a log-linear extrapolation "
                          f"from {int(largest)} (slope {slope:.3f} per e-fold); read it as an order of magnitude")  # fmt: skip
    return out


def _shared_split(args: argparse.Namespace, root: Path) -> str:
    """One patient-level split with every requested fraction, shared by all runs."""
    from trainer.data.manifest import label_columns, read_manifest
    from trainer.data.splits import label_fractions, make_splits, write_split_file

    frame = read_manifest(args.manifest).frame
    labels = list(args.labels or label_columns(frame))
    frame = make_splits(frame, seed=args.seed, val=args.val_frac, test=args.test_frac, labels=labels)
    frame = label_fractions(frame, tuple(sorted(set(args.fractions) | {1.0})), seed=args.seed, labels=labels)
    path = root / "splits.csv"
    write_split_file(frame, path)
    return str(path)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Label fractions x initialisation",
        "",
        f"Manifest `{args.manifest}`, backbone {args.backbone}, {args.max_epochs} epochs max, image size {args.image_size}, "
        f"seed {args.seed}. Test-split macro AUROC with a {args.bootstrap}-resample patient bootstrap 95% CI.",
        "",
        "| label fraction | train patients | initialisation | macro AUROC | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ci = r["ci95"]
        lines.append(f"| {r['fraction']:g} | {r['train_patients']} | {r['init']} | {_fmt(r['auroc'])} | "
                     f"{(_fmt(ci[0]) + ' - ' + _fmt(ci[1])) if ci else 'n/a'} |")  # fmt: skip
    lines += ["", "![AUROC by label fraction](results.png)", ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    from trainer.evaluate import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for init in dict.fromkeys(r["init"] for r in rows):
        rs = [r for r in rows if r["init"] == init and r["auroc"] is not None]
        if not rs:
            continue
        x = [r["fraction"] for r in rs]
        y = [r["auroc"] for r in rs]
        lo = [r["auroc"] - r["ci95"][0] if r["ci95"] else 0 for r in rs]
        hi = [r["ci95"][1] - r["auroc"] if r["ci95"] else 0 for r in rs]
        ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=init)
    ax.set_xscale("log")
    ax.set(xlabel="fraction of labelled training patients", ylabel="test macro AUROC", ylim=(0, 1))
    ax.axhline(0.5, color="k", lw=0.6, ls="--")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
