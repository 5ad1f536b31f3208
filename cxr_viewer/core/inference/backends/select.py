"""The one rule that picks a bundle's backend (used by the engine and the segmenter alike)."""

from __future__ import annotations

import logging
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


def onnx_artifact(bundle: "LoadedBundle") -> "OnnxArtifact":
    """The graph this process may run: the recorded export, or one regenerated from the verified weights.

    A recorded export was verified against the torch weights when it was written, and on load its
    sha256 and the sha256 of the weights it was made from are checked (``read_onnx_export``), so it is
    not re-run against torch here: that would import torch and cost seconds at every start.
    ``--self-test`` (golden scores through the backend that runs) and ``packaging/stage.py`` check it
    again. Never a file found anywhere else.
    """
    if bundle.onnx is not None:
        return bundle.onnx
    if bundle.model is None:
        raise BundleError(f"The model {bundle.name!r} has no ONNX export and no PyTorch to run it.")
    from cxr_viewer.core.inference.onnx_export import regenerate

    return regenerate(bundle)


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
