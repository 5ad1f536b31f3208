"""The one rule that picks a bundle's backend (used by the engine and the segmenter alike)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import BundleError

if TYPE_CHECKING:
    from cxr_viewer.core.inference.backends.base import ClassifierBackend, SegmentationBackend
    from cxr_viewer.core.models.bundle import LoadedBundle, OnnxArtifact

log = logging.getLogger(__name__)

__all__ = ["classifier_backend", "segmentation_backend", "wants_onnx"]


def wants_onnx(bundle: "LoadedBundle", prefer: str = "auto") -> bool:
    """ONNX Runtime without torch; on a CPU for a bundle that carries a recorded export (``auto``) or for any
    bundle when asked (``onnx``: an export is regenerated from the weights, which costs seconds); else torch."""
    if bundle.model is None and (prefer != "torch" or not bundle.ensure_model()):
        return True  # no torch here, or torch deferred until something needs it
    if prefer == "torch" or str(bundle.device).split(":")[0] != "cpu":
        return False
    return prefer == "onnx" or bundle.onnx is not None


def _shipped(bundle: "LoadedBundle") -> bool:
    """True for a bundle installed with the application itself (its ``resources/models``), as trusted as its code."""
    from cxr_viewer.core.paths import resources_dir

    try:
        return Path(bundle.path).resolve().is_relative_to((resources_dir() / "models").resolve())
    except (OSError, ValueError):
        return False


def onnx_artifact(bundle: "LoadedBundle") -> "OnnxArtifact":
    """The graph this process may run: the recorded export, or one regenerated from the verified weights.

    Every recorded export is hash-checked on load (its sha256 and that of the weights it was made
    from, ``read_onnx_export``). Where torch is here, one that came with a user's bundle is also run
    against the torch weights on golden images, sample radiographs and noise before use (a graph is
    code; a hostile one could agree on noise only); the application's own bundles were verified when
    their exports were written and are not re-run against torch at every start, so a CPU start-up
    imports no torch. ``--self-test`` and ``packaging/stage.py`` check those again. Never a file found
    anywhere else.
    """
    if bundle.onnx is not None and (not bundle.torch_capable or _shipped(bundle)):
        return bundle.onnx
    if not bundle.ensure_model():
        raise BundleError(f"The model {bundle.name!r} has no ONNX export and no PyTorch to run it.")
    from cxr_viewer.core.inference.onnx_export import ort_artifact_for

    return ort_artifact_for(bundle)


def _choose(bundle: "LoadedBundle", prefer: str, make_ort: Any, make_torch: Any) -> Any:
    if wants_onnx(bundle, prefer):
        try:
            return make_ort(onnx_artifact(bundle))
        except Exception as exc:  # noqa: BLE001 - no verified export: torch runs the weights instead
            if not bundle.ensure_model():
                raise
            log.warning("ONNX backend unavailable for %s, using torch: %s", bundle.name, exc)
    return make_torch(bundle)


def classifier_backend(bundle: "LoadedBundle", *, prefer: str = "auto", threads: int | None = None) -> "ClassifierBackend":
    from cxr_viewer.core.inference.backends.ort_backend import OrtClassifier

    def torch_backend(b: "LoadedBundle") -> "ClassifierBackend":
        from cxr_viewer.core.inference.backends.torch_backend import TorchClassifier

        return TorchClassifier(b)

    return _choose(bundle, prefer, lambda a: OrtClassifier(a, model=bundle.name, threads=threads), torch_backend)


def segmentation_backend(bundle: "LoadedBundle", *, prefer: str = "auto", threads: int | None = None) -> "SegmentationBackend":
    from cxr_viewer.core.inference.backends.ort_backend import OrtSegmentation

    def torch_backend(b: "LoadedBundle") -> "SegmentationBackend":
        from cxr_viewer.core.inference.backends.torch_backend import TorchSegmentation

        return TorchSegmentation(b)

    return _choose(bundle, prefer, lambda a: OrtSegmentation(a, threads=threads), torch_backend)
