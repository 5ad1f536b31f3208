"""Image-level tuberculosis LESION score from the report-conditioned segmenter, measured honestly.

TBX11K (the only TB set here) holds TB-positive films with lesion boxes and no
same-source negatives, so a TB-vs-normal classifier cannot be trained or validated.
What the data supports, and what this script measures:

- the lesion map: the segmenter prompted with "tuberculosis in the right lung" and
  "... left lung", pixel-wise maximum, on the original image grid;
- the image-level score: the maximum of that map;
- the threshold: the highest value that still flags 90% of VALIDATION TB films
  (target sensitivity 0.90; specificity cannot be chosen without negatives);
- on the held-out TEST TB films: sensitivity at that threshold, the pointing game
  (is the map's peak inside a lesion box?) and lesion Dice / box coverage, each with a
  patient-bootstrap 95% CI;
- the flag rate on held-out NORMAL films of every other source (``--normals``: the
  multi-source manifest's test films with ``Abnormal`` = 0: NIH "No Finding", Kermany
  normal, Shenzhen normal), next to the sensitivity: the goal is at most 10% flagged at a
  sensitivity of at least 0.85. These normals come from other hospitals, so this is a
  false-alarm rate across populations, not a same-source specificity. The derived
  finding is ``validated`` (may wear a POSITIVE badge) only when both goals are met on the
  held-out films; otherwise it is a research overlay (manifest ``role: research_overlay``): it
  leaves the findings (badges, worklist, report, SR) and the viewer offers only its map, on request;
- the reference scale of that overlay: the scores of the VALIDATION normal films of every other
  source (the same selection as ``--normals``, validation split), stored as 101 quantiles, so the
  viewer can say where a film's score falls among normals ("higher than 62% of validation normals")
  instead of showing a raw score that reads 0.98-0.998 on nearly every adult film;
- an exploratory flag rate on other sources' test films (``--others``).

Usage: python scripts/tb_lesion_score.py --bundle resources/models/report-segmenter-resnet18 \
    --manifest runs/data/tbx11k.csv --split-file runs/data/tbx11k-splits.csv \
    --others runs/data/nih14.csv:runs/data/nih14-splits.csv --out runs/tb
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

PROMPTS = ("tuberculosis in the right lung", "tuberculosis in the left lung")
TARGET_SENSITIVITY = 0.85
MAX_NORMAL_FLAG_RATE = 0.10
#: The finding the viewer shows (manifest ``derived_findings``; see docs/bundle-format.md).
DERIVED_LABEL = "Tuberculosis (lesion score)"
#: Its name when not validated: an opt-in research overlay, never a finding.
OVERLAY_LABEL = "TB lesion map (research)"
REFERENCE_QUANTILES = 101
DERIVED_NOTE = (
    "Localisation validated on held-out TBX11K; specificity not measured — not a screening result."
)

log = logging.getLogger("tb_lesion_score")


def lesion_map(seg: Any, record: Any) -> np.ndarray:
    """Pixel-wise max of the per-side TB prompts, at the original image size."""
    masks = seg.segment(record, list(PROMPTS))
    return np.maximum.reduce([m.prob for m in masks])


def derived_finding(result: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``derived_findings`` entry for this score, from this script's measured result.

    The viewer recomputes the score exactly as :func:`lesion_map` does (max of the prompts'
    pixel-wise max map), so prompts and threshold come from here and nowhere else.
    """
    thr = result["threshold"]
    validated = bool(result.get("validated", False))
    out = {
        "label": DERIVED_LABEL if validated else OVERLAY_LABEL,
        "role": "finding" if validated else "research_overlay",
        "prompts": list(PROMPTS),
        "score": "max",
        "threshold": {
            "value": float(thr["value"]),
            "method": thr["method"],
            "source": thr["source"],
        },
        "validated": validated,
        "note": result.get("note", DERIVED_NOTE),
    }
    if result.get("reference"):
        out["reference"] = result["reference"]
    return out


def reference_scale(scores_by_source: dict[str, np.ndarray]) -> dict[str, Any]:
    """The overlay's scale: quantiles 0%, 1%, ..., 100% of the validation normals' scores (pooled)."""
    pooled = np.concatenate([v for v in scores_by_source.values() if v.size]) if scores_by_source else np.zeros(0)
    if pooled.size < 2:
        return {}
    q = np.quantile(pooled, np.linspace(0.0, 1.0, REFERENCE_QUANTILES))
    return {
        "what": f"TB lesion scores of {pooled.size} validation normal films of other sources "
        "(NIH No Finding, Kermany normal, COVID-collection and Shenzhen normals)",
        "split": "val",
        "n_images": int(pooled.size),
        "per_source": {k: int(v.size) for k, v in scores_by_source.items()},
        "quantiles": [round(float(x), 7) for x in q],
        "reads_as": "the share of validation normals scoring lower",
    }


def box_mask(boxes_json: str, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for _label, x0, y0, x1, y1 in json.loads(boxes_json or "[]"):
        out[
            max(0, math.floor(y0)) : math.ceil(y1),
            max(0, math.floor(x0)) : math.ceil(x1),
        ] = True
    return out


def boot_ci(values: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    """Percentile 95% CI of the mean (one value per patient: TBX11K has one film per patient)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def score_rows(seg: Any, frame: Any, *, with_boxes: bool) -> list[dict[str, float]]:
    from cxr_viewer.core.io import read_image

    rows = []
    for rec in frame.itertuples(index=False):
        record = read_image(rec.image)
        m = lesion_map(seg, record)
        row = {"score": float(m.max())}
        if with_boxes:
            boxes = box_mask(getattr(rec, "boxes", "[]"), m.shape)
            peak = np.unravel_index(int(np.argmax(m)), m.shape)
            pred = m >= seg.threshold
            inter = float(np.logical_and(pred, boxes).sum())
            denom = float(pred.sum() + boxes.sum())
            row.update(
                pointing_hit=float(boxes[peak]),
                dice=2 * inter / denom if denom else float("nan"),
                box_coverage=inter / float(boxes.sum())
                if boxes.sum()
                else float("nan"),
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    from cxr_viewer.core.inference.segment import load_segmenter
    from trainer.data.manifest import label_columns, label_matrix, read_manifest
    from trainer.data.splits import apply_split_file, file_sha256

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--manifest", required=True, help="TBX11K manifest (boxes column)")
    p.add_argument("--split-file", required=True)
    p.add_argument(
        "--others",
        action="append",
        default=[],
        help="MANIFEST:SPLITS of other sources (test split used)",
    )
    p.add_argument("--normals", help="multi-source manifest: flag rate on its held-out normal films (Abnormal = 0)")
    p.add_argument("--target-sensitivity", type=float, default=TARGET_SENSITIVITY)
    p.add_argument("--out", required=True)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seg = load_segmenter(args.bundle)
    frame = apply_split_file(read_manifest(args.manifest).frame, args.split_file)
    val = frame[frame["split"] == "val"]
    test = frame[frame["split"] == "test"]
    val_scores = np.array([r["score"] for r in score_rows(seg, val, with_boxes=False)])
    # highest threshold that still flags >= 90% of validation TB films
    k = math.floor((1 - args.target_sensitivity) * len(val_scores))
    threshold = float(np.sort(val_scores)[k])
    val_sens = float((val_scores >= threshold).mean())
    rows = score_rows(seg, test, with_boxes=True)
    t_scores = np.array([r["score"] for r in rows])
    hit = (t_scores >= threshold).astype(float)
    result: dict[str, Any] = {
        "what": "image-level TB lesion score = max of the segmenter's lesion map for "
        + " / ".join(f'"{p}"' for p in PROMPTS),
        "threshold": {
            "value": threshold,
            "method": f"target sensitivity {args.target_sensitivity:g}",
            "source": f"validation split ({len(val_scores)} TB-positive TBX11K films; no negatives)",
            "validation_sensitivity": val_sens,
        },
        "test": {
            "n_images": len(test),
            "sensitivity": {
                "value": float(hit.mean()),
                "ci95": boot_ci(hit, args.bootstrap, args.seed),
            },
            "pointing_game": {
                "value": float(np.mean([r["pointing_hit"] for r in rows])),
                "ci95": boot_ci(
                    np.array([r["pointing_hit"] for r in rows]),
                    args.bootstrap,
                    args.seed + 1,
                ),
            },
            "lesion_dice": {
                "value": float(np.nanmean([r["dice"] for r in rows])),
                "ci95": boot_ci(
                    np.array([r["dice"] for r in rows]), args.bootstrap, args.seed + 2
                ),
                "at_threshold": seg.threshold,
            },
            "box_coverage": {
                "value": float(np.nanmean([r["box_coverage"] for r in rows])),
                "ci95": boot_ci(
                    np.array([r["box_coverage"] for r in rows]),
                    args.bootstrap,
                    args.seed + 3,
                ),
            },
            "score_median": float(np.median(t_scores)),
        },
        "specificity": "NOT MEASURED: TBX11K here has no TB-negative films from the same source.",
        "split_file_sha256": file_sha256(args.split_file),
        "bootstrap": {
            "resamples": args.bootstrap,
            "unit": "patient (one film each)",
            "seed": args.seed,
        },
        "other_sources": {},
    }
    for item in args.others:
        manifest, _, splits = item.partition(":")
        other = apply_split_file(read_manifest(manifest).frame, splits)
        other = other[other["split"] == "test"]
        s = np.array([r["score"] for r in score_rows(seg, other, with_boxes=False)])
        flags = (s >= threshold).astype(float)
        name = (
            str(other["dataset"].iloc[0]) if "dataset" in other else Path(manifest).stem
        )
        entry = {"n_images": len(s), "flag_rate": float(flags.mean()), "ci95": boot_ci(flags, args.bootstrap, args.seed),
                 "note": "exploratory: another hospital and population, TB status not recorded; NOT a specificity"}  # fmt: skip
        labels = label_columns(other)
        if labels:  # films with none of the set's findings marked
            nf = np.nan_to_num(label_matrix(other, labels), nan=1.0).sum(1) == 0
            entry["flag_rate_no_finding"] = (
                float(flags[nf].mean()) if nf.any() else None
            )
            entry["n_no_finding"] = int(nf.sum())
        result["other_sources"][name] = entry
    if args.normals:
        chest = read_manifest(args.normals).frame
        ref = chest[(chest["split"] == "val") & (chest["Abnormal"] == 0)]
        ref = ref[ref["dataset"].astype(str) != "tbx11k"]
        result["reference"] = reference_scale({
            str(name): np.array([r["score"] for r in score_rows(seg, part, with_boxes=False)])
            for name, part in ref.groupby(ref["dataset"].astype(str))
        })
        normal = chest[(chest["split"] == "test") & (chest["Abnormal"] == 0)]
        normal = normal[normal["dataset"].astype(str) != "tbx11k"]
        per: dict[str, Any] = {}
        all_flags = []
        for name, part in normal.groupby(normal["dataset"].astype(str)):
            s = np.array([r["score"] for r in score_rows(seg, part, with_boxes=False)])
            flags = (s >= threshold).astype(float)
            all_flags.append(flags)
            per[name] = {"n_images": len(s), "flag_rate": float(flags.mean()),
                         "ci95": boot_ci(flags, args.bootstrap, args.seed + 5)}  # fmt: skip
        pooled = np.concatenate(all_flags) if all_flags else np.zeros(0)
        sens = result["test"]["sensitivity"]["value"]
        rate = float(pooled.mean()) if pooled.size else float("nan")
        ok = bool(pooled.size and rate <= MAX_NORMAL_FLAG_RATE and sens >= args.target_sensitivity)
        result["normals"] = {
            "what": "held-out normal films of other sources (Abnormal = 0): NIH No Finding, Kermany normal, Shenzhen normal",
            "per_source": per,
            "pooled": {"n_images": int(pooled.size), "flag_rate": rate, "ci95": boot_ci(pooled, args.bootstrap, args.seed + 6)},
            "goal": f"flag rate <= {MAX_NORMAL_FLAG_RATE:g} at sensitivity >= {args.target_sensitivity:g}",
            "goal_met": ok,
        }  # fmt: skip
        result["validated"] = ok
        result["note"] = (
            f"TB lesion score: sensitivity {sens:.2f} on held-out TBX11K, {rate:.0%} of held-out normal films "
            "of other hospitals flagged; validated for a POSITIVE badge." if ok else
            f"Not validated for a POSITIVE badge: at the threshold for sensitivity {sens:.2f} on held-out TBX11K "
            f"it flags {rate:.0%} of held-out normal films (goal: at most {MAX_NORMAL_FLAG_RATE:.0%} at "
            f"sensitivity {args.target_sensitivity:.2f}), and TBX11K has no same-source negatives to validate it on. "
            "It is not a finding (no badge, worklist, report or SR entry): the lesion map is an opt-in research "
            "overlay, its colours scaled to the share of validation normal films scoring lower."
        )
    (out / "tb_metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
    (out / "derived_findings.json").write_text(
        json.dumps([derived_finding(result)], indent=2), encoding="utf-8"
    )
    print(json.dumps({"metrics": str(out / "tb_metrics.json"), "threshold": threshold,
                      "test_sensitivity": result["test"]["sensitivity"]["value"]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
