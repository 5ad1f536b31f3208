"""Finish an exported default bundle: card notes into the manifest, split file beside it, model_card.md.

The manifest stays the single source of truth: this script writes the human notes
(description, data, limitations) INTO ``manifest.json`` (weights untouched, so the
sha256 still holds), copies the split file into the bundle as ``splits.csv`` (its hash
is the one recorded at training time), and renders ``model_card.md`` from the manifest
alone, so a card can never disagree with the bundle it describes.

Usage: python scripts/model_card.py BUNDLE_DIR --notes configs/recipes/cards/NAME.yaml
           [--extra-metrics FILE.json ...] [--wall-time KEY=MINUTES ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from cxr_viewer.core.models.card import write_model_card


def main(argv: list[str] | None = None) -> int:
    import yaml

    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.data.splits import file_sha256
    from trainer.export import rewrite_manifest

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument(
        "--notes",
        required=True,
        help="YAML: description, data, recipe, results, limitations, citations",
    )
    p.add_argument(
        "--extra-metrics",
        action="append",
        default=[],
        help="KEY=FILE.json merged into metrics[KEY]",
    )
    p.add_argument(
        "--derived-findings",
        help="FILE.json (a list) written as the manifest's derived_findings "
        "(scripts/tb_lesion_score.py makes it)",
    )
    args = p.parse_args(argv)
    bundle = Path(args.bundle)
    notes = yaml.safe_load(Path(args.notes).read_text(encoding="utf-8")) or {}
    loaded = load_bundle(bundle)  # hash-checked
    m = loaded.manifest.to_dict()
    for item in args.extra_metrics:
        key, _, path = item.partition("=")
        m.setdefault("metrics", {})[key] = json.loads(
            Path(path).read_text(encoding="utf-8")
        )
    if args.derived_findings:
        m["derived_findings"] = json.loads(
            Path(args.derived_findings).read_text(encoding="utf-8")
        )
    if notes.get("description"):
        m["description"] = str(notes["description"]).strip()
    if notes.get("limitations"):
        m["limitations"] = [str(x).strip() for x in notes["limitations"]]
    prov = m.setdefault("provenance", {})
    split_src = Path(str(prov.get("split_file", "")))
    if split_src.is_file():
        if file_sha256(split_src) != prov.get("split_sha256"):
            raise SystemExit(
                f"{split_src} no longer matches the split hash recorded in the bundle"
            )
        shutil.copy2(split_src, bundle / "splits.csv")
        prov["split_file"] = "splits.csv"
    rewrite_manifest(m, bundle)
    write_model_card(bundle, notes)
    print(json.dumps({"bundle": str(bundle), "card": str(bundle / "model_card.md")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
