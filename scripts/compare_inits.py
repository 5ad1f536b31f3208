"""What self-supervised pre-training gained: paired comparison of two fine-tunes on one test split.

Both bundles (same recipe, same split, same seed; only the initial weights differ) score
the same held-out TEST films; the AUROC difference gets a paired patient-bootstrap 95% CI
(each resample draws the same patients for both models), which is tighter and more honest
than comparing two separate intervals.

Usage: python scripts/compare_inits.py --a runs/compare-ssl/bundle --b runs/compare-random/bundle \
           --manifest runs/data/kermany.csv --split-file runs/data/kermany-splits.csv --out runs/compare.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.evaluate import auroc, predict, split_frame

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="bundle A (e.g. SSL-initialised)")
    p.add_argument("--b", required=True, help="bundle B (e.g. random-initialised)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--split-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    a, b = load_bundle(args.a), load_bundle(args.b)
    if a.labels != b.labels:
        raise SystemExit("the two bundles predict different labels")
    frame = split_frame(args.manifest, "test", args.split_file)
    pa, y = predict(a, frame)
    pb, _ = predict(b, frame)
    groups = frame["patient_id"].astype(str).to_numpy()
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == i) for i in range(len(uniq))]
    rng = np.random.default_rng(args.seed)
    out: dict[str, object] = {"split": "test", "n_images": len(frame), "n_patients": len(uniq),
                              "a": {"bundle": a.name, "init": a.manifest.provenance.get("init")},
                              "b": {"bundle": b.name, "init": b.manifest.provenance.get("init")},
                              "bootstrap": {"resamples": args.bootstrap, "unit": "patient", "paired": True}, "labels": {}}  # fmt: skip
    for j, lab in enumerate(a.labels):
        known = ~np.isnan(y[:, j])
        va, vb = auroc(y[known, j], pa[known, j]), auroc(y[known, j], pb[known, j])
        diffs = []
        for _ in range(args.bootstrap):
            idx = np.concatenate(
                [members[i] for i in rng.integers(0, len(uniq), len(uniq))]
            )
            idx = idx[known[idx]]
            yy = y[idx, j]
            if yy.min() == yy.max():
                continue
            diffs.append(auroc(yy, pa[idx, j]) - auroc(yy, pb[idx, j]))
        d = np.array(diffs)
        out["labels"][lab] = {
            "auroc_a": va, "auroc_b": vb, "difference": va - vb,
            "difference_ci95": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))] if len(d) else None,
            "p_a_not_better": float((d <= 0).mean()) if len(d) else None,
        }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    print(json.dumps(out["labels"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
