"""Measure each finding's score noise on a bundle's validation films and record it in the manifest.

The current | prior layout puts an arrow on a score change only when the change is larger
than the score's own noise. That noise is measured here, once, on validation films (never
on the film being read): each film is scored under K small augmentations (the ones in
``cxr_viewer.core.compare.augmentations``: a shift of up to 2% of the size, a zoom of up to
±3%, ±4% contrast and brightness, what a repeat exposure changes), the standard deviation
of each finding's score over the K copies is taken per film, and the median over films is
the finding's noise. The 90th percentile and a bootstrap 95% CI of the median (films
resampled) are recorded beside it.

The result goes into ``manifest.json`` as ONE top-level key, ``score_noise`` (placed after
``calibration``, every other key left as it was), bound to the weights' sha256; the model
card is rendered again from the manifest by the one renderer (``core.models.card``). The
weights are not touched, so their checksum, golden scores and any ONNX export stay valid.

Validation films: the rows of the bundle's own ``splits.csv`` (patient -> split) whose split
is ``val``, found in the multi-source manifest ``scripts/make_chest_manifest.py`` builds from
``--data-dir`` (or the one given with ``--manifest``), sampled per source with a cap.

Usage: python scripts/score_noise.py resources/models/chest-resnet18 --data-dir ../shared/data
           [--films 300] [--augmentations 8] [--notes configs/recipes/cards/chest.yaml] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

#: At most this many validation films per source (NIH first: its findings are most of the rows).
DEFAULT_CAPS = {"nih14": 150, "kermany": 60, "tbx11k": 40, "covid": 40, "shenzhen": 10}
#: Films are reduced to this long side before augmenting (the network sees 224 px anyway).
WORK_SIDE = 512


def _reduced(record: Any, side: int = WORK_SIDE) -> Any:
    """The film at most ``side`` px long (area average), same metadata: faster augmentation, same network input."""
    from PIL import Image

    from cxr_viewer.core.io.record import ImageRecord

    h, w = record.shape
    scale = side / max(h, w)
    if scale >= 1.0:
        return record
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    px = np.asarray(Image.fromarray(record.pixels, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float32)
    return ImageRecord(pixels=px, source=record.source, format=record.format, default_window=record.default_window,
                       metadata=dict(record.metadata))


def validation_films(bundle: Path, data_dir: Path, manifest: Path | None, caps: dict[str, int], seed: int) -> Any:
    """Rows of the validation split (image, dataset), per source at most its cap, seeded."""
    import pandas as pd

    from trainer.data.splits import apply_split_file, file_sha256

    if manifest is not None:
        from trainer.data.manifest import read_manifest

        frame = read_manifest(manifest).frame
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from make_chest_manifest import build

        frame, _ = build(data_dir, seed=0)
    split_file = bundle / "splits.csv"
    recorded = json.loads((bundle / "manifest.json").read_text(encoding="utf-8")).get("provenance", {}).get("split_sha256")
    if recorded and file_sha256(split_file) != recorded:
        raise SystemExit(f"{split_file} does not match the split hash the bundle records")
    frame = apply_split_file(frame.drop(columns=[c for c in ("split",) if c in frame]), split_file)
    val = frame[frame["split"] == "val"]
    if "dataset" not in val:
        val = val.assign(dataset="all")
    parts = []
    for name, group in val.groupby("dataset", sort=True):
        n = min(len(group), int(caps.get(str(name), caps.get("*", 50))))
        parts.append(group.sample(n=n, random_state=seed) if n < len(group) else group)
    out = pd.concat(parts).reset_index(drop=True)
    if out.empty:
        raise SystemExit("no validation films found: check --data-dir and the bundle's splits.csv")
    return out


def measure(bundle_dir: Path, films: Any, k: int, seed: int, resamples: int = 1000, threads: int = 2) -> dict[str, Any]:
    """The ``score_noise`` record: per-label median (over films) of the per-film SD over ``k`` augmentations."""
    from cxr_viewer.core.compare import augmentations
    from cxr_viewer.core.inference.engine import InferenceEngine, _scores
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.models.preprocess import preprocess

    loaded = load_bundle(bundle_dir, device="cpu")
    if not loaded.manifest.is_classifier:
        raise SystemExit(f"{loaded.name} is a {loaded.task} bundle: it gives no scores to measure")
    # the viewer's own CPU path: ONNX Runtime on the verified export (torch when none can be verified)
    engine = InferenceEngine([loaded], device="cpu", backend="onnx", threads=threads)
    backend = engine._backend(loaded)
    sds, used, skipped = [], {}, 0
    t0 = time.perf_counter()
    for i, row in enumerate(films.itertuples()):
        try:
            record = _reduced(read_image(row.image))
        except Exception as exc:  # noqa: BLE001 - an unreadable film is skipped and counted, not fatal
            print(f"skipped {row.image}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        copies = augmentations(record, k, seed=seed + i)
        x = np.stack([preprocess(c, loaded.preprocessing) for c in copies]).astype(np.float32)
        p = np.stack([_scores(z, loaded.task) for z in backend.logits(x)])  # (k, L), the scores the viewer shows
        sds.append(p.std(axis=0, ddof=1))
        used[str(row.dataset)] = used.get(str(row.dataset), 0) + 1
        if (i + 1) % 50 == 0:
            print(f"{i + 1} films, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    S = np.stack(sds)  # (films, labels)
    rng = np.random.default_rng(seed)
    boot = np.stack([np.median(S[rng.integers(0, len(S), len(S))], axis=0) for _ in range(resamples)])
    labels = OrderedDict()
    for j, lab in enumerate(loaded.labels):
        lo, hi = np.percentile(boot[:, j], [2.5, 97.5])
        labels[lab] = {"value": round(float(np.median(S[:, j])), 4), "p90": round(float(np.percentile(S[:, j], 90)), 4),
                       "ci95": [round(float(lo), 4), round(float(hi), 4)]}
    return {
        "what": ("standard deviation of each finding's score over small augmentations of the same film "
                 "(shift up to 2% of the size, zoom ±3%, contrast and brightness ±4%), median over validation films"),
        "statistic": "median over films of the per-film SD (ddof=1); p90: 90th percentile over films; "
                     f"ci95: {resamples} bootstrap resamples of films (percentile)",
        "split": "val",
        "n_films": int(len(S)),
        "films_by_source": dict(sorted(used.items())),
        "skipped_films": skipped,
        "augmentations_per_film": int(k),
        "seed": int(seed),
        "film_side_px": WORK_SIDE,
        "weights_sha256": loaded.sha256,
        "backend": engine.backend_for(loaded),
        "rule": "the viewer's current | prior arrow: |prior - current| > 2 x max(noise, 0.02)",
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "labels": labels,
    }


def write_record(bundle_dir: Path, record: dict[str, Any], notes: Path | None) -> None:
    """Put ``score_noise`` into manifest.json (only that key changes) and render the model card again."""
    import yaml

    from cxr_viewer.core.compare import NOISE_KEY
    from cxr_viewer.core.models.bundle import read_manifest
    from cxr_viewer.core.models.card import write_model_card

    path = bundle_dir / "manifest.json"
    old = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=OrderedDict)
    new: OrderedDict[str, Any] = OrderedDict()
    anchor = "calibration" if "calibration" in old else "weights"
    for key, value in old.items():
        if key == NOISE_KEY:
            continue
        new[key] = value
        if key == anchor:
            new[NOISE_KEY] = record
    if NOISE_KEY not in new:
        new[NOISE_KEY] = record
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(new, indent=2) + "\n", encoding="utf-8")  # as core.models.bundle writes it
    os.replace(tmp, path)
    read_manifest(bundle_dir)  # still a valid manifest
    card_notes = yaml.safe_load(notes.read_text(encoding="utf-8")) if notes else None
    if (bundle_dir / "model_card.md").is_file() or card_notes:
        write_model_card(bundle_dir, card_notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CXR_DATA_DIR", "../shared/data")))
    p.add_argument("--manifest", type=Path, help="a labelled manifest CSV (default: build the chest manifest from --data-dir)")
    p.add_argument("--films", type=int, default=300, help="about this many validation films in all")
    p.add_argument("--augmentations", type=int, default=8, help="K copies of each film")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--notes", type=Path, help="the card's YAML notes (configs/recipes/cards/NAME.yaml)")
    p.add_argument("--dry-run", action="store_true", help="print the record, write nothing")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    total = sum(DEFAULT_CAPS.values())
    caps = {k: max(1, round(v * args.films / total)) for k, v in DEFAULT_CAPS.items()} | {"*": max(1, args.films // 6)}
    films = validation_films(args.bundle, args.data_dir, args.manifest, caps, args.seed)
    record = measure(args.bundle, films, args.augmentations, args.seed, threads=args.threads)
    print(json.dumps(record, indent=1))
    if not args.dry_run:
        write_record(args.bundle, record, args.notes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
