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
    p.add_argument("--tbx11k-splits", required=True)
    p.add_argument("--bbox", help="NIH BBox_List_2017.csv(.gz)")
    p.add_argument("--tb-finding", default="Abnormal")
    p.add_argument("--road-findings", type=int, default=3, help="ROAD on the N findings with most true positives")
    p.add_argument("--road-per-finding", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
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
