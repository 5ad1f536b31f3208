"""The ONNX Runtime backend: CPU default, closed-form CAMs from features + head weights. Never imports torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import AnalysisCancelledError, InferenceError
from cxr_viewer.core.inference.backends.base import Executed
from cxr_viewer.core.inference.cam_methods import CAM_METHODS
from cxr_viewer.core.inference.cam_closed_form import (
    CLOSED_FORM_METHODS,
    FEATURE_ONLY_METHODS,
    cam_from_features,
    scorecam,
)
from cxr_viewer.core.inference.onnx_runtime import ort_session
from cxr_viewer.core.inference.results import CancelToken, is_cancelled

if TYPE_CHECKING:
    from cxr_viewer.core.models.bundle import OnnxArtifact

__all__ = ["NOT_EXACT_REASON", "TORCH_ONLY_REASON", "OrtClassifier", "OrtSegmentation"]

TORCH_ONLY_REASON = (
    "This copy of cxr-viewer runs without PyTorch (the small CPU build), so {method} is not available. "
    "Choose GradCAM, HiResCAM, XGradCAM, GradCAM++, LayerCAM, EigenCAM or ScoreCAM, or install the full version."
)
NOT_EXACT_REASON = (
    "Without PyTorch, {method} needs a model that ends in average pooling and a linear layer; "
    "{model!r} does not, so only EigenCAM and ScoreCAM can be drawn."
)


class OrtClassifier:
    """A classifier export: logits and the heatmap layer's map from one session run."""

    name = "onnx"

    def __init__(self, artifact: "OnnxArtifact", *, model: str = "", threads: int | None = None) -> None:
        self.session = ort_session(artifact.graph, threads=threads)
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        dims = list(self.session.get_inputs()[0].shape)[-2:]
        #: (H, W) when the graph takes only that input size (ScoreCAM then cannot shrink its masked inputs)
        self.fixed_size = tuple(dims) if len(dims) == 2 and all(isinstance(d, int) for d in dims) else None
        self.head = artifact.head
        self.cam_exact = artifact.record.exact_cam and self.head is not None
        self.cam_layer = artifact.record.cam_layer or ""
        self.model = model
        self.executed = Executed("onnx", artifact.sha256, artifact.record.source or "bundle")

    def _run(self, names: list[str], x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(names, {self.input_name: np.ascontiguousarray(x, np.float32)})

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(["logits"], x)[0], dtype=np.float64)

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if "features" not in self.outputs:
            raise InferenceError(f"The ONNX export of {self.model!r} carries no feature map for heatmaps.")
        logits, feats = self._run(["logits", "features"], x)
        return np.asarray(logits, dtype=np.float64), feats

    def unavailable_cam_methods(self) -> dict[str, str]:
        out = {m: TORCH_ONLY_REASON.format(method=m) for m in CAM_METHODS if m not in CLOSED_FORM_METHODS}
        if not self.cam_exact:
            out.update({m: NOT_EXACT_REASON.format(method=m, model=self.model)
                        for m in CLOSED_FORM_METHODS if m not in FEATURE_ONLY_METHODS})
        return out

    def cam(self, x: np.ndarray, index: int, method: str, *, cancel: CancelToken | None = None) -> tuple[np.ndarray, np.ndarray]:
        reason = self.unavailable_cam_methods().get(method)
        if reason:
            raise InferenceError(reason)
        if method == "scorecam":
            return scorecam(self, x, index, cancel=cancel)
        logits, feats = self.features(x)
        weight = self.head[0] if self.head is not None else None
        return cam_from_features(feats[0], weight, index, method, x.shape[-2:]), logits[0]

    def road(self, x: np.ndarray, network_map: np.ndarray, index: int, *, multiclass: bool,
             cancel: CancelToken | None = None) -> float | None:
        return None  # the library's ROAD imputation runs on torch tensors


class OrtSegmentation:
    """A segmentation export: one image (1, C, H, W) + N embeddings -> probabilities (N, H, W)."""

    name = "onnx"

    def __init__(self, artifact: "OnnxArtifact", *, threads: int | None = None) -> None:
        self.session = ort_session(artifact.graph, threads=threads)
        self.conditioned = artifact.record.conditioned is not False
        self.text_dim = int(next((i.shape[-1] for i in self.session.get_inputs() if i.name == "text"), 0) or 0)
        self.executed = Executed("onnx", artifact.sha256, artifact.record.source or "bundle")

    def probabilities(self, x: np.ndarray, emb: np.ndarray, *, max_batch: int, cancel: Any = None) -> np.ndarray:
        n = emb.shape[0] if self.conditioned else 1
        out = []
        for i in range(0, n, max_batch):
            if is_cancelled(cancel):
                raise AnalysisCancelledError("Segmentation was cancelled.")
            feeds = {"image": np.ascontiguousarray(x, np.float32)}
            if self.conditioned:
                feeds["text"] = np.ascontiguousarray(emb[i : i + max_batch], np.float32)
            logits = self.session.run(["logits"], feeds)[0][:, 0].astype(np.float64)
            out.append((1.0 / (1.0 + np.exp(-logits))).astype(np.float32))
        return np.concatenate(out, 0)
