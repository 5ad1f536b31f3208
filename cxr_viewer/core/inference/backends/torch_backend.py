"""The torch backend: GPUs, gradient CAMs (pytorch-grad-cam) and the ROAD faithfulness score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import AnalysisCancelledError, InferenceError
from cxr_viewer.core.inference.backends.base import Executed
from cxr_viewer.core.inference.results import CancelToken, is_cancelled

if TYPE_CHECKING:
    from cxr_viewer.core.models.bundle import LoadedBundle

__all__ = ["TorchClassifier", "TorchSegmentation"]


class _TorchNet:
    """A bundle's torch network; every use holds the bundle's lock (CAM hooks mutate the model)."""

    name = "torch"

    def __init__(self, bundle: "LoadedBundle") -> None:
        if not bundle.ensure_model():
            raise InferenceError(f"Model {bundle.name!r} was loaded without PyTorch.")
        from cxr_viewer.core.runtime import configure_threads

        configure_threads()  # torch may have been imported only now (deferred): give it the thread setting
        self.bundle = bundle
        self.model = bundle.model
        self.executed = Executed("torch", bundle.sha256, "weights")


class TorchClassifier(_TorchNet):
    """A classifier in torch: gradient CAMs through pytorch-grad-cam, and ROAD."""

    def __init__(self, bundle: "LoadedBundle") -> None:
        super().__init__(bundle)
        layers = bundle.manifest.cam_layers
        if not layers and hasattr(self.model, "cam_layer_name"):
            layers = [self.model.cam_layer_name()]
        self.layers = list(layers)
        self.cam_layer = ",".join(self.layers)
        self.head = _linear_head(self.model, len(bundle.labels))

    def _tensor(self, x: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.require(x, np.float32, ["C", "W"])).to(self.bundle.device, non_blocking=True)

    def logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with self.bundle.lock, torch.inference_mode():
            return self.model(self._tensor(x)).float().cpu().numpy().astype(np.float64)

    def features(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from cxr_viewer.core.inference.cam import resolve_layers

        store: list[Any] = []
        with self.bundle.lock, torch.inference_mode():
            handle = resolve_layers(self.model, self.layers[:1])[0].register_forward_hook(lambda m, i, o: store.append(o))
            try:
                logits = self.model(self._tensor(x))
            finally:
                handle.remove()
        return logits.float().cpu().numpy().astype(np.float64), store[-1].float().cpu().numpy()

    def unavailable_cam_methods(self) -> dict[str, str]:
        return {}

    def cam(self, x: np.ndarray, index: int, method: str, *, cancel: CancelToken | None = None) -> tuple[np.ndarray, np.ndarray]:
        from cxr_viewer.core.inference.cam import compute_cam
        from cxr_viewer.core.inference.cam_closed_form import scorecam

        if not self.layers:
            raise InferenceError(f"Model {self.bundle.name!r} names no heatmap layer in its bundle.")
        if method == "scorecam":  # forward-only: the one batched, capped ScoreCAM both backends draw
            return scorecam(self, x, index, cancel=cancel)
        with self.bundle.lock:
            net_map, logits = compute_cam(self.model, self._tensor(x), index, method=method, target_layers=self.layers)
        return net_map, np.asarray(logits, dtype=np.float64)

    def road(self, x: np.ndarray, network_map: np.ndarray, index: int, *, multiclass: bool,
             cancel: CancelToken | None = None) -> float | None:
        from cxr_viewer.core.inference.cam import road_faithfulness

        with self.bundle.lock:
            return road_faithfulness(self.model, self._tensor(x), network_map, index, multiclass=multiclass,
                                     cancel=cancel)


def _linear_head(model: Any, n_labels: int) -> "tuple[np.ndarray, np.ndarray] | None":
    """The final linear layer (W (L, K), b (L,)) of a pooled classifier, when it has one named ``head``."""
    import torch

    head = getattr(model, "head", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != n_labels or head.bias is None:
        return None
    return head.weight.detach().float().cpu().numpy(), head.bias.detach().float().cpu().numpy()


class TorchSegmentation(_TorchNet):
    """A text-conditioned U-Net in torch: the encoder runs once, each sentence batch is decoded."""

    def __init__(self, bundle: "LoadedBundle") -> None:
        import cxr_viewer.core.models.segmenter  # noqa: F401  (registers text_unet for bundles)

        super().__init__(bundle)
        self.conditioned = bool(getattr(self.model, "conditioned", True))
        self.text_dim = int(getattr(self.model, "text_dim", 0) or 0)

    def probabilities(self, x: np.ndarray, emb: np.ndarray, *, max_batch: int, cancel: Any = None) -> np.ndarray:
        import torch

        n = emb.shape[0] if self.conditioned else 1
        out = []
        with self.bundle.lock, torch.inference_mode():
            xt = torch.from_numpy(np.require(x, np.float32, ["C", "W"])).to(self.bundle.device)
            feats = self.model.encode(xt)
            for i in range(0, n, max_batch):
                if is_cancelled(cancel):
                    raise AnalysisCancelledError("Segmentation was cancelled.")
                t = torch.from_numpy(emb[i : i + max_batch]).to(xt.device) if self.conditioned else None
                out.append(torch.sigmoid(self.model.decode(feats, t)[:, 0].float()).cpu().numpy())
        return np.concatenate(out, 0).astype(np.float32, copy=False)
