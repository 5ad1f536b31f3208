"""Golden images: a bundle carries a few images and the scores it gave them when built.

``--self-test`` re-scores them on the user's machine; a mismatch means the weights,
the preprocessing code or a numeric library changed behaviour since the bundle was
made (the check the hash alone cannot give).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import BundleError

if TYPE_CHECKING:
    from cxr_viewer.core.models.bundle import LoadedBundle

__all__ = ["GOLDEN_TOLERANCE", "GoldenCheck", "add_golden", "check_golden", "score_image"]

GOLDEN_TOLERANCE = 1e-3
GOLDEN_DIR = "golden"


def score_image(bundle: "LoadedBundle", path: str | Path) -> dict[str, float]:
    """Label -> probability for one image file through the one read/preprocess/forward path (torch)."""
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.io import read_image

    engine = InferenceEngine([bundle], device=bundle.device, backend="torch", cache_size=0)
    result = engine.analyze(read_image(path))
    return {f.label: f.score for f in result.findings}


def add_golden(bundle_dir: str | Path, images: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Copy ``images`` into ``<bundle>/golden/`` and record their scores in the manifest.

    Called by the trainer's export step after :func:`save_bundle`. The weights hash is
    unchanged; only ``golden`` in manifest.json is rewritten.
    """
    import json

    from cxr_viewer.core.models.bundle import MANIFEST_FILE, Manifest, _write_json, load_bundle

    bdir = Path(bundle_dir)
    bundle = load_bundle(bdir)
    if not bundle.manifest.is_classifier:
        raise BundleError(f"Golden scores are recorded for classifier bundles; {bundle.name} is {bundle.task}.")
    gdir = bdir / GOLDEN_DIR
    gdir.mkdir(exist_ok=True)
    entries = []
    for i, src in enumerate(images):
        src = Path(src)
        dest = gdir / f"{i:02d}_{src.name}"
        shutil.copyfile(src, dest)
        scores = score_image(bundle, dest)
        entries.append({"image": f"{GOLDEN_DIR}/{dest.name}", "scores": {k: round(v, 7) for k, v in scores.items()}})
    data = json.loads((bdir / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["golden"] = entries
    Manifest.from_dict(data)  # still valid
    _write_json(bdir / MANIFEST_FILE, data)
    return entries


@dataclass
class GoldenCheck:
    """Outcome of re-scoring one bundle's golden images."""

    bundle: str
    images: int = 0
    max_diff: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def check_golden(bundle: "LoadedBundle", *, tolerance: float = GOLDEN_TOLERANCE, engine: Any = None) -> GoldenCheck:
    """Re-score every golden image of ``bundle``; any score off by more than ``tolerance`` fails.

    ``engine`` (an InferenceEngine holding this bundle) lets the check use the same
    backend the user will run; by default torch is used.
    """
    from cxr_viewer.core.errors import CXRError
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import bundle_file

    check = GoldenCheck(bundle=f"{bundle.name} {bundle.version}")
    for g in bundle.manifest.golden:
        rel = Path(str(g["image"]))
        try:
            path = bundle_file(bundle.path, str(g["image"]), "golden image")
        except BundleError:
            check.failures.append(f"golden image path {rel} leaves the bundle folder")
            continue
        try:
            if engine is not None:
                result = engine.analyze(read_image(path), models=[bundle.name])
                got = {f.label: f.score for f in result.findings}
            else:
                got = score_image(bundle, path)
        except CXRError as exc:
            check.failures.append(f"{rel}: {exc.message}")
            continue
        check.images += 1
        for label, expected in g["scores"].items():
            if label not in got:
                check.failures.append(f"{rel}: the model gives no score for {label!r}")
                continue
            diff = abs(float(got[label]) - float(expected))
            check.max_diff = max(check.max_diff, diff)
            if diff > tolerance:
                check.failures.append(
                    f"{rel}: {label} scored {got[label]:.5f}, recorded {float(expected):.5f} (diff {diff:.1e})"
                )
    return check
