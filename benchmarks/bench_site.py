"""Site calibration on real public films as "the site": ECE and sensitivity at the target, before and after.

The shipped ``chest-resnet18`` bundle scores the films of patients it never saw (its own
``splits.csv`` test split) through the viewer's engine; the site's patients are dealt into a
calibration part and a held-out part (``fit_site_finding``, stratified by patient); the
recalibration and the target-sensitivity threshold are fitted on the calibration part only, and
ECE, sensitivity and specificity before (the bundle's score and threshold) and after (the site
profile) are measured on the held-out part with patient-bootstrap 95 % CIs.

Sites: ``nih`` (adult NIH films, ``nih14`` + ``nih14_extra``, finding Pneumonia) and ``kermany``
(paediatric films, finding Pneumonia). Not a test::

    python benchmarks/bench_site.py --data-dir ../shared/data --site nih kermany --max-images 400
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "resources" / "models" / "chest-resnet18"


def site_films(data_dir: Path, site: str, test_patients: set[str], max_images: int, seed: int) -> pd.DataFrame:
    """The site's films of the bundle's held-out patients: image, patient_id, y (Pneumonia)."""
    frames = []
    if site == "nih":
        for folder in ("nih14", "nih14_extra"):
            lab = pd.read_csv(data_dir / folder / "labels.csv")
            lab = lab.assign(image=[str(data_dir / folder / f) for f in lab["file"]], y=lab["Pneumonia"],
                             pid="nih14:" + lab["patient_id"].astype(str))  # fmt: skip
            frames.append(lab[["image", "pid", "y"]])
    elif site == "kermany":
        lab = pd.read_csv(data_dir / "pneumonia_kermany" / "labels.csv")
        frames.append(lab.assign(image=[str(data_dir / "pneumonia_kermany" / f) for f in lab["file"]], y=lab["pneumonia"],
                                 pid="kermany:" + lab["patient_id"].astype(str))[["image", "pid", "y"]])  # fmt: skip
    else:
        raise SystemExit(f"unknown site {site!r}")
    frame = pd.concat(frames).drop_duplicates("image")
    frame = frame[frame["pid"].isin(test_patients)]
    if len(frame) > max_images:  # whole patients, at random
        pids = np.random.default_rng(seed).permutation(frame["pid"].unique())
        keep, n = [], 0
        counts = frame["pid"].value_counts()
        for p in pids:
            if n + counts[p] > max_images:
                continue
            keep.append(p)
            n += counts[p]
        frame = frame[frame["pid"].isin(keep)]
    return frame.reset_index(drop=True)


def score(frame: pd.DataFrame, label: str) -> np.ndarray:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import load_bundle

    engine = InferenceEngine([load_bundle(BUNDLE, device="cpu")], device="cpu", cache_size=0)
    out = np.empty(len(frame))
    for i, path in enumerate(frame["image"]):
        out[i] = engine.analyze(read_image(path)).finding(label).score
    return out


def fmt(v: float | None, ci: list[float] | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--site", nargs="+", default=["nih", "kermany"])
    ap.add_argument("--max-images", type=int, default=400, help="per site, whole patients")
    ap.add_argument("--target", default="sensitivity:0.9")
    ap.add_argument("--method", default="auto")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(2)
    from cxr_viewer.core.models.bundle import read_manifest
    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.stats import card_prevalence

    manifest = read_manifest(BUNDLE)
    splits = pd.read_csv(BUNDLE / "splits.csv")
    test_patients = set(splits.loc[splits["split"] == "test", "patient_id"].astype(str))
    label = "Pneumonia"
    results = {}
    for site in args.site:
        frame = site_films(Path(args.data_dir), site, test_patients, args.max_images, args.seed)
        t0 = time.perf_counter()
        p = score(frame, label)
        secs = time.perf_counter() - t0
        _fp, r = fit_site_finding(label, frame["y"].to_numpy(float), p, frame["pid"].to_numpy(), method=args.method,
                                 target=args.target, current_threshold=manifest.threshold(label), n_boot=args.bootstrap,
                                 seed=args.seed, card_prevalence=card_prevalence(manifest, label))  # fmt: skip
        ho = r["held_out"]
        b, a = ho["before"], ho["after"]
        results[site] = {
            "images": len(frame), "patients": int(frame["pid"].nunique()), "positives": int(frame["y"].sum()),
            "scoring_s": round(secs, 1), "auroc": r["auroc"], "calibration": r["fit"]["calibration"]["method"],
            "held_out": r["fit"]["held_out_part"], "ece_before": ho["ece_before"], "ece_after": ho["ece_after"],
            "threshold_before": b["threshold"], "threshold_after": a["threshold"],
            "sensitivity_before": [b["sensitivity"], b["sensitivity_ci95"]],
            "sensitivity_after": [a["sensitivity"], a["sensitivity_ci95"]],
            "specificity_before": [b["specificity"], b["specificity_ci95"]],
            "specificity_after": [a["specificity"], a["specificity_ci95"]], "warnings": r["warnings"],
        }  # fmt: skip
        hp = r["fit"]["held_out_part"]
        print(f"\n== site {site}: {len(frame)} films, {frame['pid'].nunique()} patients, {int(frame['y'].sum())} with "
              f"{label} (bundle's held-out patients); scored in {secs:.0f} s")
        print(f"   AUROC on all site films {fmt(r['auroc']['value'], r['auroc']['ci95'])}; recalibration "
              f"{r['fit']['calibration']['method']} (cross-validated ECE {r['fit']['ece_cv']})")
        print(f"   held-out part: {hp['n_images']} films, {hp['n_pos']} positive, {hp['n_patients']} patients")
        print(f"   ECE          before {fmt(ho['ece_before']['value'], ho['ece_before']['ci95'])}  after "
              f"{fmt(ho['ece_after']['value'], ho['ece_after']['ci95'])}")
        print(f"   threshold    before {b['threshold']:.3f} (bundle)  after {a['threshold']:.3f} ({args.target}, "
              "fitted on the calibration part)")
        print(f"   sensitivity  before {fmt(b['sensitivity'], b['sensitivity_ci95'])}  after "
              f"{fmt(a['sensitivity'], a['sensitivity_ci95'])}")
        print(f"   specificity  before {fmt(b['specificity'], b['specificity_ci95'])}  after "
              f"{fmt(a['specificity'], a['specificity_ci95'])}")
        for w in r["warnings"]:
            print(f"   ! {w}")
    if args.json:
        from cxr_viewer.core.jsonio import finite_or_none

        Path(args.json).write_text(json.dumps(finite_or_none(results), indent=2) + "\n")


if __name__ == "__main__":
    main()
