"""Writing bundles: provenance, metrics, thresholds and golden images around ``save_bundle``.

The bundle is the whole contract with the viewer (docs/bundle-format.md): the viewer
rebuilds the network from ``architecture`` with ``create_model`` and feeds it through
``preprocess`` with the manifest's ``preprocessing`` (the exact spec the trainer's
datasets used), never importing this package.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import TrainingConfigError
from cxr_viewer.core.jsonio import dumps, finite_or_none

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

INTENDED_USE = "Research use only, not a medical device."
DEFAULT_LIMITATIONS = [
    "Not validated for clinical use; scores are research outputs and must not guide patient care.",
    "Trained on public data whose labels were partly mined from report text (noisy).",
    "Performance on images from other hospitals, devices, paediatric or lateral views is unknown.",
]


def code_version() -> str:
    """``git describe`` of the source checkout when available, else the installed package version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=repo, capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        if out.stdout.strip():
            return f"git:{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        return f"cxr-viewer {version('cxr-viewer')}"
    except Exception:  # noqa: BLE001 - metadata missing in odd installs
        return "unknown"


def base_provenance(config: Mapping[str, Any], split_info: Mapping[str, str], *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    datasets = [d for d in str(split_info.get("datasets", "")).split(",") if d]
    prov = {
        "datasets": datasets,
        "split_file": split_info.get("split_file", ""),
        "split_sha256": split_info.get("split_sha256", ""),
        "config": dict(config),
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    prov.update(dict(extra or {}))
    return prov


def write_bundle(model: "nn.Module", manifest: Mapping[str, Any], out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """``save_bundle`` with our defaults (intended use, limitations) filled in, swapped in whole at the end."""
    from cxr_viewer.core.models.bundle import save_bundle
    from cxr_viewer.core.staging import staged_dir

    m = finite_or_none(dict(manifest))  # an undefined metric (NaN AUROC of a one-class split) is written as null
    m.setdefault("intended_use", INTENDED_USE)
    m.setdefault("limitations", list(DEFAULT_LIMITATIONS))
    with staged_dir(out_dir) as stage:  # a kill while writing leaves the previous bundle as it was
        save_bundle(model, m, stage, dtype=dtype)
    return Path(out_dir)


def rewrite_manifest(manifest: Any, bundle_dir: str | Path, *, weights_from: str | Path | None = None) -> Path:
    """Write ``manifest.json`` next to unchanged weights (thresholds, metrics, golden images).

    The weights file is not re-encoded (only copied from ``weights_from`` when given), so
    its sha256 stays what the manifest records; the copy is re-hashed to be sure.
    """
    from cxr_viewer.core.errors import BundleHashMismatchError
    from cxr_viewer.core.models.bundle import MANIFEST_FILE, Manifest, sha256_file

    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(dict(manifest))
    dest = Path(bundle_dir)
    dest.mkdir(parents=True, exist_ok=True)
    wname = str(m.weights.get("file") or "model.safetensors")
    if weights_from is not None and Path(weights_from).resolve() != dest.resolve():
        shutil.copy2(Path(weights_from) / wname, dest / wname)
    if sha256_file(dest / wname) != m.weights.get("sha256"):
        raise BundleHashMismatchError(f"The weights in {dest} do not match the manifest being written.", path=dest)
    m = Manifest.from_dict(m.to_dict())  # validate before writing
    tmp = dest / (MANIFEST_FILE + ".tmp")
    tmp.write_text(dumps(finite_or_none(m.to_dict()), indent=2) + "\n", encoding="utf-8")
    tmp.replace(dest / MANIFEST_FILE)
    return dest


def load_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainingConfigError(f"Metrics file {path} not found; run `cxr-train evaluate` first.", path=path)
    return json.loads(path.read_text(encoding="utf-8"))


def export_bundle(
    bundle: str | Path,
    out_dir: str | Path,
    *,
    metrics: str | Path | Mapping[str, Any] | None = None,
    name: str | None = None,
    version: str | None = None,
    dtype: str = "float16",
    golden_images: list[str] | None = None,
    limitations: list[str] | None = None,
    onnx: bool = False,
) -> Path:
    """Final bundle from a trained (and calibrated) bundle: metrics in, golden images recorded.

    Golden images are stored as small PNGs inside the bundle with the scores the
    *exported* weights give them (after the dtype round trip), so the viewer's
    ``--self-test`` compares like with like.

    Everything is written into a staging folder and swapped in for ``out_dir`` at the
    end: an export that is interrupted or fails leaves the previous bundle intact.
    """
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.staging import staged_dir

    src = load_bundle(bundle)
    m = src.manifest.to_dict()
    if metrics is not None:
        m["metrics"] = {**m.get("metrics", {}), **(load_metrics(metrics) if not isinstance(metrics, Mapping) else dict(metrics))}
    if name:
        m["name"] = name
    if version:
        m["version"] = version
    m["intended_use"] = INTENDED_USE
    if limitations:
        m["limitations"] = list(limitations)
    elif not m.get("limitations"):
        m["limitations"] = list(DEFAULT_LIMITATIONS)
    out = Path(out_dir)
    if out.resolve() == Path(bundle).resolve():
        raise TrainingConfigError("Export to a new folder: --out must differ from the source bundle.")
    m["golden"] = []
    with staged_dir(out) as stage:
        _write_export(src, m, stage, Path(bundle), dtype=dtype, onnx=onnx, golden_images=golden_images)
    log.info("exported bundle to %s", out)
    return out


def _write_export(src: Any, m: dict[str, Any], out: Path, bundle: Path, *, dtype: str, onnx: bool,
                  golden_images: list[str] | None) -> None:
    """The export's files, written into ``out`` (a staging folder)."""
    import numpy as np
    import torch
    from PIL import Image

    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.bundle import load_bundle, save_bundle
    from cxr_viewer.core.models.preprocess import preprocess
    from trainer.tasks.classify import scores_from_logits

    save_bundle(src.model, m, out, dtype=dtype)
    if golden_images and src.manifest.is_classifier:
        exported = load_bundle(out)
        (out / "golden").mkdir(exist_ok=True)
        for i, path in enumerate(golden_images):
            record = read_image(path)
            px = record.model_pixels()
            small = Image.fromarray((np.clip(px, 0, 1) * 255 + 0.5).astype(np.uint8))
            small.thumbnail((256, 256))
            rel = f"golden/golden_{i}.png"
            small.save(out / rel)
            x = torch.from_numpy(preprocess(read_image(out / rel), exported.manifest.preprocessing)[None])
            with torch.no_grad():
                s = scores_from_logits(exported.task, exported.model(x))[0].tolist()
            m["golden"].append({"image": rel, "scores": {lab: round(float(v), 6) for lab, v in zip(exported.labels, s)}})
        final = exported.manifest
        final.golden = m["golden"]
        rewrite_manifest(final, out)  # weights untouched: the recorded sha256 stays valid
    for extra in ("report.md", "splits.csv"):
        p = bundle / extra
        if p.is_file():
            shutil.copy2(p, out / extra)
    if onnx:  # after the golden images, which the export is verified on
        from cxr_viewer.core.inference.onnx_export import export_bundle as export_onnx

        export_onnx(out)
    from cxr_viewer.core.models.bundle import read_manifest
    from cxr_viewer.core.models.card import model_card_markdown

    (out / "model_card.md").write_text(model_card_markdown(read_manifest(out)), encoding="utf-8")
