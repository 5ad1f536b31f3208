"""Class-activation maps in closed form from a feature map and the linear head: no gradients, no torch.

Heatmaps without gradients. Our classifiers are ``backbone -> global average
pool -> linear head``, and the heatmap layer is the last spatial map ``A`` (K, h, w)
before the pool. Then the logit is ``y_c = b_c + sum_k W_ck * mean_ij A_kij``, so
its gradient with respect to ``A`` is the CONSTANT ``W_ck / (h*w)``. Every
gradient method therefore has a closed form in ``A`` and ``W`` alone (the ONNX
export outputs ``A``; ``W`` is read from the bundle's own safetensors):

- Grad-CAM: ``relu(sum_k W_ck A_k)`` (the 1/(h*w) factor vanishes in the min-max
  scaling), which is exactly the classic CAM of Zhou et al. 2016;
- HiResCAM: identical to Grad-CAM here (gradient times activation, summed);
- XGrad-CAM, Grad-CAM++ and LayerCAM: their weight formulas with ``g = W_ck/(h*w)``;
- EigenCAM needs only ``A`` (first principal component);
- ScoreCAM is forward-only: each channel of ``A``, upsampled and scaled to [0, 1],
  masks the input; the label's logits on those inputs (batched forwards),
  softmaxed, weight the channels. Scoring all K channels at full size costs K
  forwards (512 for a ResNet-18: tens of seconds on a CPU), so :func:`scorecam`
  scores only the ``top_k`` channels that contribute most to the label's logit
  (``W_ck * mean(A_k)``, or mean activation without a linear head) and runs the
  masked forwards at an input capped to ``max_side`` pixels, in batches; the other
  channels get weight 0. With ``top_k=None, max_side=None`` it is the library's
  ScoreCAM exactly. Both backends draw ScoreCAM through this one function.

The export checks the identity numerically (``logits == W @ mean(A) + b``) and
records ``cam.exact``; ``tests/packaging/test_onnx_lane.py`` checks every map
against pytorch-grad-cam on the torch path. A model that does not end in pooling
and a linear layer keeps EigenCAM and ScoreCAM only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cxr_viewer.core.errors import InferenceError
from cxr_viewer.core.inference.results import CancelToken
from cxr_viewer.core.models.preprocess import resize2d

__all__ = ["CLOSED_FORM_METHODS", "FEATURE_ONLY_METHODS", "cam_from_features", "scorecam", "scorecam_weights"]

#: Heatmap methods computed here (closed forms, see the module docstring).
CLOSED_FORM_METHODS: tuple[str, ...] = (
    "gradcam", "hirescam", "xgradcam", "gradcam++", "layercam", "eigencam", "scorecam",
)  # fmt: skip
#: Methods that work from the feature map alone, for models without a pooling + linear ending.
FEATURE_ONLY_METHODS: tuple[str, ...] = ("eigencam", "scorecam")
SCORECAM_BATCH = 32
#: Channels ScoreCAM scores (the label's largest contributions); None scores every channel. On the default
#: chest model, 24 channels at 112 px keep the map's correlation with the uncapped 512-channel, full-size
#: ScoreCAM at about 0.7-0.8 (32 channels: about 0.8) for 7-11 forwards' time (32: 11-16).
SCORECAM_TOP_K: int | None = 24
#: Longest side of the masked inputs ScoreCAM runs (the map itself stays at the model's size); None: full size.
SCORECAM_MAX_SIDE: int | None = 112


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a - np.min(a)
    return (a / (1e-7 + np.max(a))).astype(np.float32)


def _first_component(acts: np.ndarray) -> np.ndarray:
    """Projection of each position's K-vector on the first principal axis (EigenCAM)."""
    k = acts.shape[0]
    x = acts.reshape(k, -1).T.astype(np.float32)
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=True)
    return (x @ vt[0]).reshape(acts.shape[1:]).astype(np.float32)


def cam_from_features(
    features: np.ndarray,
    weight: np.ndarray | None,
    index: int,
    method: str,
    size: Sequence[int],
) -> np.ndarray:
    """Network-space heatmap (H, W) in [0, 1] from one image's map ``features`` (K, h, w).

    ``weight`` is the linear head (L, K); ``index`` the label. ``method="weighted"``
    takes ``weight[index]`` as the channel weights themselves (ScoreCAM's, from
    :func:`scorecam_weights`). The map is made at
    feature resolution, clipped at 0, scaled to [0, 1], upsampled bilinearly to
    ``size`` and scaled again (the steps pytorch-grad-cam takes for one layer).
    """
    a = np.nan_to_num(np.asarray(features, dtype=np.float32))
    if a.ndim != 3:
        raise InferenceError(f"Expected a (channels, h, w) feature map, got shape {a.shape}.")
    if method == "eigencam":
        cam = _first_component(a)
    else:
        if weight is None:
            raise InferenceError(f"The {method} heatmap needs the model's linear head, which this export lacks.")
        g = (np.asarray(weight, dtype=np.float32)[index] / float(a.shape[1] * a.shape[2]))[:, None, None]
        if method == "weighted":  # channel weights given directly (ScoreCAM)
            cam = (np.asarray(weight, dtype=np.float32)[index][:, None, None] * a).sum(0)
        elif method in ("gradcam", "hirescam"):
            cam = (g * a).sum(0)
        elif method == "xgradcam":
            s = a.sum(axis=(1, 2), keepdims=True)
            cam = ((g * a / (s + 1e-7)).sum(axis=(1, 2), keepdims=True) * a).sum(0)
        elif method == "gradcam++":
            g2 = g * g
            s = a.sum(axis=(1, 2), keepdims=True)
            aij = g2 / (2 * g2 + s * g2 * g + 1e-6)
            aij = np.where(g != 0, aij, 0.0)
            w = (np.maximum(g, 0) * aij * np.ones_like(a)).sum(axis=(1, 2), keepdims=True)
            cam = (w * a).sum(0)
        elif method == "layercam":
            cam = (np.maximum(g, 0) * a).sum(0)
        else:
            raise InferenceError(f"The {method} heatmap has no closed form here; it needs PyTorch.")
    cam = _minmax(np.maximum(cam.astype(np.float32), 0))
    cam = resize2d(cam, size, "bilinear")
    return _minmax(np.maximum(cam, 0))


def _upsample_corners(a: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of (N, h, w) with corner-aligned sampling (``align_corners=True``), float32."""
    f32 = np.float32
    out = a.astype(f32)
    for axis, n_out in ((1, int(size[0])), (2, int(size[1]))):
        n_in = out.shape[axis]
        scale = f32(n_in - 1) / f32(n_out - 1) if n_out > 1 else f32(0.0)
        src = scale * np.arange(n_out, dtype=f32)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        lam = (src - i0.astype(f32)).astype(f32)
        shape = [1, 1, 1]
        shape[axis] = n_out
        lam = lam.reshape(shape)
        out = np.take(out, i0, axis=axis) * (f32(1.0) - lam) + np.take(out, i1, axis=axis) * lam
    return out


def scorecam_channels(features: np.ndarray, head_row: np.ndarray | None, top_k: int | None) -> np.ndarray:
    """The channels ScoreCAM scores: the ``top_k`` largest contributions ``W_ck * mean(A_k)`` to the label's
    logit (the closed-form Grad-CAM weight times the activation), or the largest mean activations without a
    linear head; every channel when ``top_k`` is None or not smaller than K. Sorted, for a stable batch order."""
    k = features.shape[0]
    if top_k is None or top_k >= k:
        return np.arange(k)
    strength = features.reshape(k, -1).mean(1).astype(np.float64)
    if head_row is not None and np.shape(head_row) == (k,):
        strength = strength * np.asarray(head_row, dtype=np.float64)
    return np.sort(np.argsort(-strength, kind="stable")[: max(1, int(top_k))])


def _capped(x: np.ndarray, max_side: int | None) -> np.ndarray:
    """``x`` (1, C, H, W) resized (area kernel) so its longer side is at most ``max_side``."""
    h, w = x.shape[-2:]
    if max_side is None or max(h, w) <= max_side:
        return x
    scale = float(max_side) / float(max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return np.stack([resize2d(c, size, "bilinear") for c in x[0]])[None]


def scorecam_weights(
    logits: Any,
    x: np.ndarray,
    features: np.ndarray,
    index: int,
    *,
    channels: np.ndarray | None = None,
    cancel: CancelToken | None = None,
    batch: int = SCORECAM_BATCH,
) -> np.ndarray:
    """ScoreCAM channel weights (K,): softmax over the label's logits on channel-masked inputs.

    ``logits`` is any callable (N, C, H, W) -> (N, L): a backend's forward. ``channels`` (default:
    all) are the channels scored; the others get weight 0. The masks are made at ``x``'s size,
    and the masked inputs go through ``logits`` in batches of ``batch``.
    """
    size = x.shape[-2:]
    k = features.shape[0]
    chosen = np.arange(k) if channels is None else np.asarray(channels, dtype=np.int64)
    scores = np.empty(len(chosen), dtype=np.float64)
    for i in range(0, len(chosen), batch):
        if cancel is not None:
            cancel.raise_if_cancelled()
        up = _upsample_corners(features[chosen[i : i + batch]], size)
        flat = up.reshape(up.shape[0], -1)
        lo, hi = flat.min(1)[:, None, None], flat.max(1)[:, None, None]
        up = (up - lo) / (hi - lo + np.float32(1e-8))
        masked = x[0][None] * up[:, None]  # (B, C, H, W)
        scores[i : i + up.shape[0]] = np.asarray(logits(masked))[:, index]
    e = np.exp(scores - scores.max())
    weights = np.zeros(k, dtype=np.float32)
    weights[chosen] = e / e.sum()
    return weights


def scorecam(
    backend: Any,
    x: np.ndarray,
    index: int,
    *,
    top_k: int | None = SCORECAM_TOP_K,
    max_side: int | None = SCORECAM_MAX_SIDE,
    cancel: CancelToken | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ScoreCAM on any classifier backend: (network-space map (H, W) in [0, 1], logits (L,)).

    One forward gives the logits and the heatmap layer's map; then at most ``ceil(top_k / batch)``
    batched forwards of ``top_k`` masked inputs at ``max_side`` pixels (see the module docstring).
    A backend whose graph takes one input size only (``fixed_size``: an ONNX export with fixed
    spatial axes) runs them at the model's size instead.
    """
    if getattr(backend, "fixed_size", None) is not None:
        max_side = None
    logits, feats = backend.features(x)
    a = np.nan_to_num(np.asarray(feats[0], dtype=np.float32))
    head = getattr(backend, "head", None)
    row = None if head is None else np.asarray(head[0])[index]
    channels = scorecam_channels(a, row, top_k)
    weights = scorecam_weights(backend.logits, _capped(x, max_side), a, index, channels=channels, cancel=cancel)
    return cam_from_features(a, weights[None], 0, "weighted", x.shape[-2:]), np.asarray(logits[0], dtype=np.float64)
