"""Build the unlabelled manifest for self-supervised pre-training.

Every image of the given manifests is pooled, except the patients a labelled task keeps
for its held-out TEST split: those images are never seen, not even unlabelled, so the
test metrics in the model cards stay clean. Patient ids are prefixed by dataset so two
sets cannot share an id by accident.

Usage: python scripts/make_ssl_manifest.py --out runs/data/ssl.csv \
           runs/data/nih14.csv:runs/data/nih14-splits.csv runs/data/shenzhen.csv ...
(``manifest[:split_file]``; without a split file every image is used.)
``--split-out`` also writes one split file for all sources with the same prefixed patient
ids, so other trainers (e.g. ``cxr-train segment --split-file``) hold out the same patients.
"""

from __future__ import annotations

import argparse
import json
import sys

from trainer.data.manifest import DATASET, IMAGE, PATIENT, read_manifest, write_manifest
from trainer.data.splits import apply_split_file, write_split_file


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--split-out",
        help="also write the combined split file (prefixed patient ids) here",
    )
    p.add_argument("sources", nargs="+", help="manifest.csv[:split_file.csv]")
    args = p.parse_args(argv)
    parts, splits, counts = [], [], {}
    for src in args.sources:
        path, _, split_file = src.partition(":")
        frame = read_manifest(path).frame
        name = str(frame[DATASET].iloc[0]) if DATASET in frame else path
        kept = frame
        if split_file:
            kept = apply_split_file(frame, split_file)
            splits.append(
                pd.DataFrame(
                    {
                        PATIENT: name + ":" + kept[PATIENT].astype(str),
                        "split": kept["split"],
                    }
                )
            )
            kept = kept[kept["split"] != "test"]
        counts[name] = {
            "images": len(kept),
            "excluded_test": int(len(frame) - len(kept)),
        }
        parts.append(
            pd.DataFrame(
                {
                    IMAGE: kept[IMAGE],
                    PATIENT: name + ":" + kept[PATIENT].astype(str),
                    DATASET: name,
                }
            )
        )
    write_manifest(pd.concat(parts, ignore_index=True), args.out)
    info: dict[str, object] = {"manifest": args.out, "sources": counts}
    if args.split_out:
        info["split_sha256"] = write_split_file(
            pd.concat(splits, ignore_index=True), args.split_out
        )
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
