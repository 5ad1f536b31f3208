"""Stage what the frozen CPU app ships: model bundles with verified ONNX exports, samples, text encoder.

``python packaging/stage.py [--models DIR] [--out build/stage]`` (run by ``build.sh``)
copies every bundle the viewer runs (classifiers, report segmentation) into
``OUT/resources/models``, writes each one's ``onnx/`` export, recorded in its manifest
(checked against torch on this machine, see ``cxr_viewer.core.inference.onnx_export``), exports the
MiniLM text encoder to ``OUT/resources/text`` when a segmentation bundle needs it,
copies ``resources/samples``, and prints one line per item. Nothing under the source
``resources/`` is modified. Exit status 1 if any bundle cannot be exported.

Torch is needed here (build time) and nowhere in the staged output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Bundle tasks the viewer runs; others (e.g. self-supervised encoders) stay out of the app.
VIEWER_TASKS = ("multilabel", "binary", "multiclass", "text_segmentation")


def stage(models: list[Path], out: Path, *, samples: Path | None = None) -> int:
    """Fill ``out/resources``; returns the number of failures (0 = ready to freeze)."""
    from cxr_viewer.core.errors import CXRError
    from cxr_viewer.core.inference.onnx_export import export_bundle, export_text_encoder
    from cxr_viewer.core.inference.onnx_runtime import ONNX_DIR, TEXT_DIR_NAME
    from cxr_viewer.core.models.bundle import find_bundles

    res = out / "resources"
    if res.exists():
        shutil.rmtree(res)
    (res / "models").mkdir(parents=True)
    samples = samples if samples is not None else REPO / "resources" / "samples"
    if samples.is_dir():
        shutil.copytree(samples, res / "samples")
    failures = 0
    needs_text = False
    for info in find_bundles(models):
        if not info.ok or info.manifest is None:
            print(f"FAIL  {info.path.name}: {info.error}")
            failures += 1
            continue
        m = info.manifest
        if m.task not in VIEWER_TASKS:
            print(f"SKIP  {m.display_name}: task {m.task} is not run by the viewer")
            continue
        if not info.path.is_dir():
            print(f"FAIL  {info.path.name}: unpack zipped bundles before building")
            failures += 1
            continue
        dest = res / "models" / info.path.name
        shutil.copytree(info.path, dest, ignore=shutil.ignore_patterns(ONNX_DIR, "lane", "*.onnx", "__pycache__"))
        try:
            rec = export_bundle(dest)
        except CXRError as exc:
            print(f"FAIL  {m.display_name}: {exc.message}")
            shutil.rmtree(dest)
            failures += 1
            continue
        assert rec is not None
        extra = f", heatmaps exact={rec['cam']['exact']}" if "cam" in rec else ""
        print(f"OK    {m.display_name}: {rec['file']} verified (max diff "
              f"{rec['verified']['logits_max_abs_diff']:.1e}{extra}); {len(m.golden)} golden image(s)")
        needs_text |= m.task == "text_segmentation" and bool(rec.get("conditioned", True))
    if needs_text:
        try:
            rec = export_text_encoder(res / "text" / TEXT_DIR_NAME)
            print(f"OK    text encoder {rec['name']}: verified (max diff {rec['verified']['embedding_max_abs_diff']:.1e})")
        except CXRError as exc:
            print(f"FAIL  text encoder: {exc.message}")
            failures += 1
    (out / "stage.json").write_text(json.dumps({"models": [str(m) for m in models]}, indent=2) + "\n")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, action="append",
                   help="bundle folder(s) to ship (default: resources/models)")
    p.add_argument("--out", type=Path, default=REPO / "build" / "stage")
    args = p.parse_args(argv)
    return 1 if stage(args.models or [REPO / "resources" / "models"], args.out) else 0


if __name__ == "__main__":
    sys.exit(main())
