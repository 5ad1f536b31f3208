"""Where the chest model's heatmaps point, measured on held-out films: pointing game and ROAD.

- **Pointing game on TBX11K lesion boxes** (held-out TEST films): is the peak of the
  Grad-CAM map of ``--tb-finding`` (default ``Abnormal``: the model has no TB finding,
  and every TBX11K film is abnormal) inside a tuberculosis box? Chance is the mean
  fraction of the image the boxes cover (a uniformly random peak).
- **Pointing game on the NIH boxes** (``labels_only/BBox_List_2017``) joined to our NIH
  films by file name, per finding; the number of joined films is reported (it may be 0).
- **ROAD faithfulness on true positives**: for the findings with the most held-out true
  positives, the ROAD combined score (pytorch-grad-cam; > 0 explains the score, ~0 is
  chance) of each true positive's Grad-CAM map.
- **Lung-field constraint** (``--lung-field``, the viewer's own path: the engine with the chest
  bundle and the report segmenter, ``inference.lung_field``): the pointing game on TBX11K boxes for
  Abnormal's class maps and the segmenter's TB lesion map, unconstrained and constrained. The
  dilation is chosen on the VALIDATION films (``--dilations``); the held-out TEST films (the chest
  bundle's ``splits.csv``, whose TBX11K patients are the segmenter's too) are read once, with the
  engine's default dilation, and reported with the within-lung chance level. ScoreCAM's coverage
  (share of the image at >= half the map's maximum) is measured on the first validation films.

Every figure carries a patient-bootstrap 95% CI. Usage:
  python scripts/localisation.py --bundle resources/models/chest-resnet18 --manifest runs/data/chest.csv \
      --tbx11k runs/data/tbx11k.csv --bbox ../shared/data/labels_only/BBox_List_2017.csv.gz --out runs/localisation
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

from tb_lesion_score import boot_ci  # the one patient-bootstrap CI of the default-model scripts

log = logging.getLogger("localisation")
NIH_BOX_NAMES = {"Infiltrate": "Infiltration"}


def summary(values: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    v = np.asarray(values, dtype=float)
    return {"value": float(np.nanmean(v)) if v.size else None, "ci95": boot_ci(v, n_boot, seed), "n": int(v.size)}


class Mapper:
    """Grad-CAM maps at the original image size, through the one preprocessing path."""

    def __init__(self, bundle: str) -> None:
        from cxr_viewer.core.models.bundle import load_bundle

        self.b = load_bundle(bundle)
        self.b.model.eval()

    def input(self, record: Any) -> Any:
        import torch

        from cxr_viewer.core.models.preprocess import preprocess

        return torch.from_numpy(preprocess(record, self.b.preprocessing)[None])

    def cam(self, record: Any, label: str) -> tuple[np.ndarray, np.ndarray, Any]:
        from cxr_viewer.core.inference.cam import compute_cam
        from cxr_viewer.core.models.preprocess import restore_map

        x = self.input(record)
        idx = self.b.labels.index(label)
        out = compute_cam(self.b.model, x, idx, method="gradcam", target_layers=self.b.manifest.cam_layers)
        net = out[0] if isinstance(out, tuple) else out
        return restore_map(net, self.b.preprocessing, record.shape), np.asarray(net), x


def box_mask(boxes: list[tuple[float, float, float, float]], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        out[max(0, math.floor(y0)) : math.ceil(y1), max(0, math.floor(x0)) : math.ceil(x1)] = True
    return out


def pointing(mapper: Mapper, record: Any, label: str, boxes: list[tuple[float, float, float, float]]) -> tuple[float, float]:
    m, _, _ = mapper.cam(record, label)
    inside = box_mask(boxes, m.shape)
    peak = np.unravel_index(int(np.argmax(m)), m.shape)
    return float(inside[peak]), float(inside.mean())


def tbx11k_split(manifest: str, split_file: str, split: str) -> Any:
    """TBX11K films (with boxes) of one split, the split taken per patient from ``split_file``.

    The multi-source split files (the chest bundle's ``splits.csv``) name patients ``tbx11k:<id>``;
    the TBX11K manifest names them ``<id>``: both are accepted.
    """
    import pandas as pd

    from trainer.data.manifest import read_manifest
    from trainer.data.splits import apply_split_file

    frame = read_manifest(manifest).frame.copy()
    ids = pd.read_csv(split_file, usecols=["patient_id"], dtype=str)["patient_id"]
    if ids.str.startswith("tbx11k:").any():
        frame["patient_id"] = "tbx11k:" + frame["patient_id"].astype(str).str.removeprefix("tbx11k:")
        keep = frame["patient_id"].isin(set(ids))
        frame = frame[keep]
    frame = apply_split_file(frame, split_file)
    return frame[frame["split"] == split]


def _boxes(row: Any) -> list[tuple[float, float, float, float]]:
    return [tuple(b[1:5]) for b in json.loads(row.boxes or "[]")]


def _peak_hit(values: np.ndarray, inside: np.ndarray) -> float:
    return float(inside[np.unravel_index(int(np.argmax(values)), values.shape)])


def lung_field_study(engine: Any, frame: Any, targets: list[tuple[str, str | None, str]], *,
                     dilations: list[float], scorecam_films: int, n_boot: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Validation: pointing with no constraint and with each dilation, per (label, model, method) target.

    The unconstrained map comes from the engine (``lung_constraint`` off); each dilation's field is
    built by ``lung_field_from_probabilities`` from the same lung probabilities and applied with
    ``constrain_map``, at the original size.
    """
    from cxr_viewer.core.inference.lung_field import (
        LUNG_PROMPTS,
        UNCONSTRAINED,
        constrain_map,
        lung_field_from_probabilities,
    )
    from cxr_viewer.core.io import read_image

    seg = engine.segmenter(engine.lung_segmenter())
    hits: dict[str, dict[str, list[float]]] = {f"{lab} ({meth})": {} for lab, _, meth in targets}
    coverage: dict[str, list[float]] = {"unconstrained": [], "constrained": []}
    engine.lung_constraint = False
    for n, row in enumerate(frame.itertuples(index=False)):
        boxes = _boxes(row)
        if not boxes:
            continue
        record = read_image(row.image)
        probs = [m.prob for m in seg.segment(record, list(LUNG_PROMPTS))]
        fields = {d: lung_field_from_probabilities(probs, seg.threshold, dilation=d).mask for d in dilations}
        inside = box_mask(boxes, record.shape)
        for label, model, method in targets:
            values = engine.cam(record, label, method, model=model).values
            per = hits[f"{label} ({method})"]
            per.setdefault("none", []).append(_peak_hit(values, inside))
            for d, field in fields.items():
                m = values if label in UNCONSTRAINED else constrain_map(values, field)
                per.setdefault(f"{d:g}", []).append(_peak_hit(m, inside))
        if n < scorecam_films:
            sc = engine.cam(record, targets[0][0], "scorecam", model=targets[0][1]).values
            coverage["unconstrained"].append(float((sc >= 0.5 * sc.max()).mean()))
            field = fields[max(dilations)]
            c = constrain_map(sc, field)
            coverage["constrained"].append(float((c >= 0.5 * c.max()).mean()))
    engine.lung_constraint = True
    out: dict[str, Any] = {"films": len(frame), "targets": {}}
    for name, per in hits.items():
        table = {k: summary(v, n_boot, seed) for k, v in per.items()}
        best = max((k for k in table if k != "none"), key=lambda k: (table[k]["value"] or 0.0, float(k)))  # ties: wider
        out["targets"][name] = {"pointing": table, "best_dilation": float(best)}
    out["scorecam_coverage"] = {k: summary(v, n_boot, seed) for k, v in coverage.items()}
    out["scorecam_coverage"]["what"] = (f"share of the image at >= half the ScoreCAM map's maximum ({targets[0][0]}), "
                                        f"first {scorecam_films} validation films; constrained at dilation {max(dilations):g}")
    return out


def lung_field_test(engine: Any, frame: Any, targets: list[tuple[str, str | None, str]], *,
                    n_boot: int, seed: int) -> dict[str, Any]:  # fmt: skip
    """Held-out test films, read once: pointing of each target through the engine, unconstrained and
    constrained (the viewer's path), with the chance levels of a uniformly random peak."""
    from cxr_viewer.core.io import read_image

    res: dict[str, dict[str, list[float]]] = {f"{lab} ({meth})": {"unconstrained": [], "lung_field": []}
                                              for lab, _, meth in targets}
    chance: dict[str, list[float]] = {"image": [], "lung_field": []}
    for row in frame.itertuples(index=False):
        boxes = _boxes(row)
        if not boxes:
            continue
        record = read_image(row.image)
        inside = box_mask(boxes, record.shape)
        field = engine.lung_field(record)
        chance["image"].append(float(inside.mean()))
        if field is not None and field.mask.any():
            chance["lung_field"].append(float((inside & field.mask).sum() / field.mask.sum()))
        for label, model, method in targets:
            for key, on in (("unconstrained", False), ("lung_field", True)):
                engine.lung_constraint = on
                res[f"{label} ({method})"][key].append(_peak_hit(engine.cam(record, label, method, model=model).values,
                                                                 inside))
    engine.lung_constraint = True
    return {
        "films": len(frame),
        "dilation": engine.lung_dilation,
        "pointing": {name: {k: summary(v, n_boot, seed) for k, v in per.items()} for name, per in res.items()},
        "chance": {k: float(np.mean(v)) if v else None for k, v in chance.items()},
        "what": "peak of the map inside a TB lesion box; held-out TBX11K test films of the chest bundle's splits.csv",
    }


def lung_field_main(args: Any) -> dict[str, Any]:
    from cxr_viewer.core.inference.engine import InferenceEngine, derived_specs

    engine = InferenceEngine.from_dirs([args.bundle, *args.segmenter], device="cpu", backend=args.backend)
    overlays = [(d.label, b.name, "lesion map") for b in engine.bundles for d in derived_specs(b)]
    targets = [(args.tb_finding, engine.classifiers[0].name, m) for m in args.methods] + overlays[:1]
    split_file = args.split_file or str(Path(args.bundle) / "splits.csv")
    out: dict[str, Any] = {"split_file": split_file, "segmenter": engine.lung_segmenter().name,
                           "backend": {b.name: engine.backend_for(b) for b in engine.bundles if b.task != "ssl_encoder"}}
    val = tbx11k_split(args.tbx11k, split_file, "val")
    out["validation"] = lung_field_study(engine, val, targets, dilations=args.dilations,
                                         scorecam_films=args.scorecam_films, n_boot=args.bootstrap, seed=args.seed)
    if not args.no_test:
        test = tbx11k_split(args.tbx11k, split_file, "test")
        out["test"] = lung_field_test(engine, test, targets, n_boot=args.bootstrap, seed=args.seed)
    return out


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from cxr_viewer.core.inference.cam import road_faithfulness
    from cxr_viewer.core.io import read_image
    from trainer.data.manifest import read_manifest
    from trainer.data.splits import apply_split_file

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--manifest", required=True, help="the multi-source manifest (split column)")
    p.add_argument("--tbx11k", required=True, help="TBX11K manifest with the boxes column")
    p.add_argument("--tbx11k-splits", help="required without --lung-field")
    p.add_argument("--bbox", help="NIH BBox_List_2017.csv(.gz)")
    p.add_argument("--tb-finding", default="Abnormal")
    p.add_argument("--road-findings", type=int, default=3, help="ROAD on the N findings with most true positives")
    p.add_argument("--road-per-finding", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--lung-field", action="store_true",
                   help="only the lung-field study (validation grid, then the test films once) -> lung_field.json")
    p.add_argument("--segmenter", action="append", default=[], help="report segmenter bundle (lung field, TB map)")
    p.add_argument("--split-file", help="default: the chest bundle's splits.csv")
    p.add_argument("--methods", nargs="+", default=["gradcam", "gradcam++", "layercam"])
    p.add_argument("--dilations", nargs="+", type=float, default=[0.0, 0.02, 0.04, 0.08])
    p.add_argument("--scorecam-films", type=int, default=20)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    p.add_argument("--no-test", action="store_true", help="validation grid only (choosing the dilation)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.lung_field:
        result = lung_field_main(args)
        (out / "lung_field.json").write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
        print(json.dumps(result.get("test", result["validation"]), allow_nan=False))
        return 0
    mapper = Mapper(args.bundle)
    result: dict[str, Any] = {"bundle": mapper.b.name, "weights_sha256": mapper.b.manifest.weights.get("sha256"), "method": "gradcam"}

    # -- TBX11K boxes
    tb = apply_split_file(read_manifest(args.tbx11k).frame, args.tbx11k_splits)
    tb = tb[tb["split"] == "test"]
    hits, chance = [], []
    for row in tb.itertuples(index=False):
        boxes = [tuple(b[1:5]) for b in json.loads(row.boxes or "[]")]
        if not boxes:
            continue
        h, c = pointing(mapper, read_image(row.image), args.tb_finding, boxes)
        hits.append(h)
        chance.append(c)
    result["pointing_game_tbx11k"] = {
        "finding": args.tb_finding, **summary(hits, args.bootstrap, args.seed),
        "chance": float(np.mean(chance)) if chance else None,
        "what": "peak of the Grad-CAM map inside a TB lesion box, held-out TBX11K test films",
    }  # fmt: skip

    # -- NIH boxes joined by file name
    chest = read_manifest(args.manifest).frame
    test = chest[chest["split"] == "test"]
    if args.bbox:
        bb = pd.read_csv(args.bbox)
        bb.columns = ["image_index", "label", "x", "y", "w", "h", *bb.columns[6:]]
        nih = test[test["dataset"] == "nih14"].copy()
        nih["image_index"] = nih["image"].map(lambda s: Path(s).name)
        joined = nih.merge(bb, on="image_index")
        per: dict[str, list[float]] = {}
        for (path, label), grp in joined.groupby(["image", "label"]):
            lab = NIH_BOX_NAMES.get(label, label)
            if lab not in mapper.b.labels:
                continue
            record = read_image(path)
            scale = record.shape[1] / 1024.0  # BBox_List coordinates are on the 1024 px originals
            boxes = [(r.x * scale, r.y * scale, (r.x + r.w) * scale, (r.y + r.h) * scale) for r in grp.itertuples()]
            per.setdefault(lab, []).append(pointing(mapper, record, lab, boxes)[0])
        result["pointing_game_nih"] = {
            "joined_films": int(joined["image"].nunique()) if len(joined) else 0,
            "per_finding": {k: summary(v, args.bootstrap, args.seed) for k, v in per.items()},
            "note": "our held-out NIH films joined to BBox_List_2017 by file name",
        }

    # -- ROAD on true positives
    thresholds = {lab: mapper.b.manifest.threshold(lab) for lab in mapper.b.labels}
    import torch

    counts = {lab: int((test[lab] == 1).sum()) for lab in mapper.b.labels if lab in test}
    chosen = [lab for lab, _ in sorted(counts.items(), key=lambda kv: -kv[1])][: args.road_findings]
    rng = np.random.default_rng(args.seed)
    road: dict[str, Any] = {}
    for lab in chosen:
        pos = test[test[lab] == 1]
        order = rng.permutation(len(pos))
        values, random_values = [], []
        for i in order:
            if len(values) >= args.road_per_finding:
                break
            row = pos.iloc[int(i)]
            record = read_image(row["image"])
            m, net, x = mapper.cam(record, lab)
            idx = mapper.b.labels.index(lab)
            with torch.no_grad():
                score = float(torch.sigmoid(mapper.b.model(x))[0, idx])
            if score < thresholds[lab]:
                continue  # true positives only
            values.append(road_faithfulness(mapper.b.model, x, net, idx))
            noise = rng.random(net.shape).astype(np.float32)  # a map that knows nothing: the chance level
            random_values.append(road_faithfulness(mapper.b.model, x, noise, idx))
        road[lab] = {"gradcam": summary(values, args.bootstrap, args.seed), "random_map": summary(random_values, args.bootstrap, args.seed)}
    result["road_true_positives"] = road
    (out / "localisation.json").write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("pointing_game_tbx11k",)}, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
