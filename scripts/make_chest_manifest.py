"""Build the one multi-source manifest of the default chest model (every labelled source at once).

One backbone learns every finding from every source; a finding a source does not label is
blank (unknown), and the trainer masks its loss there (torchxrayvision's "all" recipe):

- the 14 NIH ChestX-ray14 findings: NIH films only (``nih14/`` + ``nih14_extra/``);
- ``Pneumonia``: one finding learned from adults and children: NIH "Pneumonia",
  Kermany (children, 1-5 years) ``pneumonia``, and the COVID collection's
  ``pneumonia_infectious`` (adults);
- ``Abnormal``: NIH "No Finding" (0) against any finding (1), Kermany normal/pneumonia,
  the COVID collection's findings (its "No Finding" films are 0), TBX11K (all 1: active or
  old tuberculosis) and the Shenzhen normals (0).

Normal means normal (:func:`trainer.data.manifest.normal_means_normal`): a film a source labels
normal (NIH "No Finding", Kermany normal, Shenzhen normal, the COVID collection's "No Finding")
is negative for every finding, so the NIH findings also learn from normal children.

Splits are per patient and seeded. Every source but NIH keeps exactly the split that
``cxr-train data split --seed SEED`` gives its own manifest (so the segmenter trained on
those splits keeps a clean test set); NIH is split once over both folders by
``patient_id`` (the same NIH numbers in both), stratified by finding.

Usage: python scripts/make_chest_manifest.py --data-dir ../shared/data --out runs/data/chest.csv
       [--ssl-out runs/data/ssl.csv --split-out runs/data/all-splits.csv]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

NIH = (
    "Atelectasis Cardiomegaly Effusion Infiltration Mass Nodule Pneumonia Pneumothorax "
    "Consolidation Edema Emphysema Fibrosis Pleural_Thickening Hernia"
).split()
LABELS = [*NIH, "Abnormal"]
SOURCES = {  # adapter -> shared-data folder(s)
    "nih14": ("nih14", "nih14_extra"),
    "kermany": ("pneumonia_kermany",),
    "covid": ("covid_ieee8023",),
    "tbx11k": ("tbx11k",),
    "shenzhen": ("shenzhen_sample",),
}


def _normal_films(name: str, frame, pd):  # noqa: ANN001
    """True where the source labels the film normal (no finding at all)."""
    if name == "nih14":
        return frame[NIH].sum(axis=1) == 0
    if name == "kermany":
        return frame["pneumonia"] == 0
    if name == "covid":
        return frame["meta_finding"].fillna("").astype(str).str.strip() == "No Finding"
    if name == "shenzhen":
        return frame["tuberculosis"] == 0
    return pd.Series(False, index=frame.index)


def _labels_for(name: str, frame, pd, np):  # noqa: ANN001 - pandas/numpy passed in to keep imports lazy
    from trainer.data.manifest import normal_means_normal

    out = pd.DataFrame(np.nan, index=frame.index, columns=LABELS)
    if name == "nih14":
        for lab in NIH:
            out[lab] = frame[lab].astype(float)
        out["Abnormal"] = (frame[NIH].sum(axis=1) > 0).astype(float)
    elif name == "kermany":
        out["Pneumonia"] = frame["pneumonia"].astype(float)
        out["Abnormal"] = frame["pneumonia"].astype(float)
    elif name == "covid":
        out["Pneumonia"] = pd.to_numeric(frame.get("pneumonia_infectious"), errors="coerce")
        finding = frame["meta_finding"].fillna("").astype(str)
        known = ~finding.str.lower().isin(["", "todo"])
        out["Abnormal"] = (~finding.str.contains("No Finding")).astype(float).where(known)
    elif name == "tbx11k":
        out["Abnormal"] = 1.0
    elif name == "shenzhen":
        out["Abnormal"] = frame["tuberculosis"].astype(float)
    return normal_means_normal(out, _normal_films(name, frame, pd))


def build(data_dir: Path, seed: int) -> "tuple[object, dict]":
    import numpy as np
    import pandas as pd

    from trainer.data.adapters import build_manifest
    from trainer.data.manifest import DATASET, IMAGE, PATIENT, SPLIT, label_columns
    from trainer.data.splits import make_splits

    parts, counts = [], {}
    for name, folders in SOURCES.items():
        frames = [build_manifest(name, data_dir / f) for f in folders]
        for f, folder in zip(frames, folders):
            f["meta_folder"] = folder
        frame = pd.concat(frames, ignore_index=True)
        if SPLIT in frame:
            frame = frame.drop(columns=[SPLIT])
        frame = frame.drop_duplicates(subset=[IMAGE]).reset_index(drop=True)
        if name == "nih14":  # one split over both folders, by patient, stratified by finding
            split = make_splits(frame, seed=seed, labels=NIH)
        else:  # the split `cxr-train data split --seed SEED` gives this source alone
            split = make_splits(frame, seed=seed, labels=label_columns(frame.drop(columns=["meta_folder"])))
        labels = _labels_for(name, frame, pd, np)
        keep = [c for c in frame.columns if str(c).startswith("meta_")]
        part = pd.concat([split[[IMAGE]], labels, frame[keep]], axis=1)
        part[PATIENT] = name + ":" + split[PATIENT].astype(str)
        part[SPLIT] = split[SPLIT].to_numpy()
        part[DATASET] = name
        parts.append(part)
        counts[name] = {
            s: int((part[SPLIT] == s).sum()) for s in ("train", "val", "test")
        } | {"patients": int(part[PATIENT].nunique())}
    frame = pd.concat(parts, ignore_index=True)
    cols = [IMAGE, PATIENT, SPLIT, DATASET, *LABELS]
    frame = frame[cols + [c for c in frame.columns if c not in cols]]
    return frame, counts


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from trainer.data.manifest import IMAGE, PATIENT, SPLIT, write_manifest
    from trainer.data.splits import write_split_file

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", required=True, help="the labelled multi-source manifest")
    p.add_argument("--ssl-out", help="also write the unlabelled SSL manifest: every image but the TEST patients")
    p.add_argument("--split-out", help="also write the one split file (patient -> split) of every source")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    frame, counts = build(Path(args.data_dir), args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(frame, out)
    if args.split_out:
        write_split_file(frame[[PATIENT, SPLIT]], args.split_out)
    if args.ssl_out:
        ssl = frame[frame[SPLIT] != "test"][[IMAGE, PATIENT, "dataset"]].copy()
        write_manifest(pd.DataFrame(ssl).reset_index(drop=True), args.ssl_out)
        counts["ssl_images"] = len(ssl)
    counts["prevalence"] = {
        lab: {"positives": int((frame[lab] == 1).sum()), "labelled": int(frame[lab].notna().sum())}
        for lab in frame.columns[4 : 4 + 15]
    }
    print(json.dumps(counts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
