"""Stage what the frozen CPU app ships: model bundles with verified ONNX exports, samples, text encoder.

``python packaging/stage.py [--models DIR] [--out build/stage]`` (run by ``build.sh``)
copies every bundle the viewer runs (classifiers, report segmentation) into
``OUT/resources/models`` with the ONNX export its manifest records -- the same file a normal
install runs -- verified again here against the bundle's torch weights; a bundle that records none
gets one written now (see ``cxr_viewer.core.inference.onnx_export``). The MiniLM text encoder goes to
``OUT/resources/text`` when a segmentation bundle needs it: the repository's verified export when
it is there, else one exported now. ``resources/samples`` is copied, one line is printed per item,
and nothing under the source ``resources/`` is modified. Exit status 1 if any bundle cannot be shipped.

Torch is needed here (build time) and nowhere in the staged output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: Bundle tasks the viewer runs; others (e.g. self-supervised encoders) stay out of the app.
VIEWER_TASKS = ("multilabel", "binary", "multiclass", "text_segmentation")


def _stage_text(dest: Path, source: Path, export: Any) -> dict[str, Any]:
    """The shipped MiniLM export copied from ``source`` and checked against transformers, else exported now."""
    from cxr_viewer.core.inference.onnx_export import TEXT_FLOAT16_ATOL, max_diff
    from cxr_viewer.core.inference.onnx_runtime import TEXT_RECORD, OrtMiniLMEncoder
    from cxr_viewer.core.models.text import MiniLMEncoder

    if not (source / TEXT_RECORD).is_file():
        return {**export(dest), "how": "exported, verified"}
    shutil.copytree(source, dest)
    texts = ["No acute cardiopulmonary abnormality.", "Right lower lobe consolidation, likely pneumonia."]
    rec = json.loads((dest / TEXT_RECORD).read_text(encoding="utf-8"))
    diff = max_diff(OrtMiniLMEncoder(dest, threads=1).encode(texts), MiniLMEncoder(device="cpu").encode(texts),
                    "shipped sentence embeddings", TEXT_FLOAT16_ATOL)
    return {**rec, "how": "recorded, re-verified", "verified": {**rec.get("verified", {}), "embedding_max_abs_diff": diff}}


def stage(models: list[Path], out: Path, *, samples: Path | None = None, text_source: Path | None = None) -> int:
    """Fill ``out/resources``; returns the number of failures (0 = ready to freeze)."""
    from cxr_viewer.core.errors import CXRError
    from cxr_viewer.core.inference.onnx_export import export_bundle, export_text_encoder, ort_artifact_for
    from cxr_viewer.core.inference.onnx_runtime import ONNX_DIR, TEXT_DIR_NAME, default_text_dir
    from cxr_viewer.core.models.bundle import find_bundles, load_bundle

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
        recorded = m.onnx is not None
        ignore = ("lane", "__pycache__") if recorded else (ONNX_DIR, "lane", "*.onnx", "__pycache__")
        shutil.copytree(info.path, dest, ignore=shutil.ignore_patterns(*ignore))
        try:
            if recorded:  # the export a normal install runs: hash-checked on load, re-verified against torch
                art = ort_artifact_for(load_bundle(dest, device="cpu"))
                rec, how = art.record.to_dict(), "recorded, re-verified"
            else:
                rec, how = export_bundle(dest), "exported, verified"
        except CXRError as exc:
            print(f"FAIL  {m.display_name}: {exc.message}")
            shutil.rmtree(dest)
            failures += 1
            continue
        assert rec is not None
        extra = f", heatmaps exact={rec['cam']['exact']}" if "cam" in rec else ""
        print(f"OK    {m.display_name}: {rec['file']} {how} (max diff "
              f"{rec['verified']['logits_max_abs_diff']:.1e}{extra}); {len(m.golden)} golden image(s)")
        needs_text |= m.task == "text_segmentation" and bool(rec.get("conditioned", True))
    if needs_text:
        try:
            rec = _stage_text(res / "text" / TEXT_DIR_NAME, text_source if text_source is not None else default_text_dir(),
                              export_text_encoder)
            print(f"OK    text encoder {rec['name']}: {rec['how']} (max diff "
                  f"{rec['verified']['embedding_max_abs_diff']:.1e})")
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
