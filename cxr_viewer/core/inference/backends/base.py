"""The backend protocol: network-space arrays in and out (float32 NumPy), no image policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from cxr_viewer.core.inference.results import CancelToken

__all__ = ["ClassifierBackend", "Executed", "SegmentationBackend"]


@dataclass(frozen=True)
class Executed:
    """What actually runs for a bundle, reported in every result's ``models`` entry."""

    backend: str  # "onnx" | "torch"
    sha256: str  # of the ONNX graph that runs, or of the weights torch runs
    source: str  # "bundle" (an export recorded in the manifest), "regenerated" (made now from the weights), "weights"

    def to_dict(self) -> dict[str, str]:
        return {"backend": self.backend, "sha256": self.sha256, "source": self.source}


class ClassifierBackend(Protocol):
    """A classifier network: ``x`` is (N, C, H, W) float32 from the one ``preprocess``."""

    name: str  # "torch" | "onnx"
    executed: Executed
    cam_layer: str  # the heatmap layer's name, for display

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, L) float64 logits."""

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, L), the heatmap layer's map (N, K, h, w)) from one forward."""

    def cam(self, x: np.ndarray, index: int, method: str, *, cancel: "CancelToken | None" = None) -> tuple[np.ndarray, np.ndarray]:
        """(network-space map (H, W) in [0, 1], logits (L,)) for one image (1, C, H, W)."""

    def unavailable_cam_methods(self) -> dict[str, str]:
        """Heatmap methods this backend cannot draw -> the reason, in words."""

    def road(self, x: np.ndarray, network_map: np.ndarray, index: int, *, multiclass: bool,
             cancel: "CancelToken | None" = None) -> float | None:
        """ROAD faithfulness of a map at model resolution, or None when the backend cannot compute it;
        ``cancel`` is checked between the metric's steps."""


class SegmentationBackend(Protocol):
    """A (text-conditioned) segmentation network."""

    name: str
    executed: Executed
    conditioned: bool

    def probabilities(self, x: np.ndarray, emb: np.ndarray, *, max_batch: int, cancel: object = None) -> np.ndarray:
        """(N, H, W) float32 probabilities for one image (1, C, H, W) and N sentence embeddings (one map if unconditioned)."""
