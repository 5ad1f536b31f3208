"""Class-activation maps via pytorch-grad-cam, plus a faithfulness score.

Targets: gradient methods differentiate the chosen label's LOGIT
(``ClassifierOutputTarget``), not its sigmoid probability. The sigmoid's
derivative ``p(1-p)`` multiplies every gradient by the same positive factor,
which adds nothing to the map but underflows to zero (a blank or noisy map)
exactly when the model is most confident (p near 0 or 1). Grad-CAM++ and
XGrad-CAM also assume a pre-activation score in their weight formulas. Our
networks output one logit per label (multi-label, independent sigmoids), so
the logit of label ``k`` is the right target; for ``multiclass`` bundles the
logit is also the pre-softmax score the methods were derived for.

Single-channel input needs no special handling in the CAM methods (they hook a
feature layer; the input's channel count never enters); we never call the
library's RGB overlay helpers.

Faithfulness: the library's ROAD metric (Rong et al., ICML 2022), combined form:
``(LeRF - MoRF) / 2`` averaged over removal percentiles, where MoRF/LeRF are the
changes in the label's sigmoid PROBABILITY after imputing away the most/least
relevant pixels (noisy linear imputation, which avoids leaking the mask shape).
Range [-1, 1]: positive means removing what the map highlights lowers the score
more than removing what it ignores (the map explains the score); near 0 means
the map is no better than chance; negative means it points at the wrong pixels.
Probability units keep the number comparable between images and models.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import InferenceError
from cxr_viewer.core.inference.cam_methods import CAM_METHODS, DEFAULT_ROAD_PERCENTILES, canonical_method

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "CAM_METHODS",
    "DEFAULT_ROAD_PERCENTILES",
    "canonical_method",
    "compute_cam",
    "resolve_layers",
    "road_faithfulness",
]

SCORECAM_BATCH = 32


def resolve_layers(model: "nn.Module", names: Sequence[str]) -> list["nn.Module"]:
    """Dotted layer names (from the manifest's ``cam.target_layers``) -> modules."""
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing or not names:
        raise InferenceError(
            f"The model has no layer {', '.join(missing) or '(none named)'} for heatmaps; "
            "the bundle's 'cam.target_layers' is wrong."
        )
    return [modules[n] for n in names]


class _SigmoidTarget:
    """Probability of one label (multi-label / binary heads), used by the ROAD metric."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.sigmoid(output[..., self.index])


class _SoftmaxTarget:
    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: "torch.Tensor") -> "torch.Tensor":
        import torch

        return torch.softmax(output, dim=-1)[..., self.index]


def _silence_scorecam_progress() -> None:
    # ScoreCAM prints a tqdm bar to stderr per call; replace the name it looks up
    # (only inside that one library module) with a pass-through.
    import types

    from pytorch_grad_cam import score_cam

    if not getattr(score_cam, "_cxr_quiet", False):
        score_cam.tqdm = types.SimpleNamespace(tqdm=lambda it, *a, **k: it)  # type: ignore[attr-defined]
        score_cam._cxr_quiet = True  # type: ignore[attr-defined]


def compute_cam(
    model: "nn.Module",
    input_tensor: "torch.Tensor",
    target_index: int,
    *,
    method: str = "gradcam",
    target_layers: Sequence[str],
) -> tuple[np.ndarray, np.ndarray]:
    """One image's CAM in NETWORK space and the logits of that same forward pass.

    Returns ``(map, logits)``: float32 (H, W) of the input scaled to [0, 1], and the
    model's logits (L,). ``input_tensor`` is (1, C, H, W) on the model's device. The
    caller must hold the model's lock: hooks are registered and, for gradient
    methods, the target layers' parameters briefly require grad.

    Why the parameters: bundles load frozen. Letting only the hooked layers' weights
    require grad makes autograd stop there, so the backward pass covers the head
    and the last block instead of the whole network down to the input.
    """
    import pytorch_grad_cam as pgc
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from threadpoolctl import threadpool_limits

    key = canonical_method(method)
    if input_tensor.ndim != 4 or input_tensor.shape[0] != 1:
        raise InferenceError("compute_cam expects a single image batch (1, C, H, W).")
    layers = resolve_layers(model, target_layers)
    cls: Any = getattr(pgc, CAM_METHODS[key])
    if key == "scorecam":
        _silence_scorecam_progress()
    params = [p for layer in layers for p in layer.parameters() if not p.requires_grad]
    x = input_tensor.detach()
    if not params:  # a parameter-free target layer: gradients must come from the input
        x = x.clone().requires_grad_(True)
    was_training = model.training
    try:
        for p in params:
            p.requires_grad_(True)
        # The library's numpy maths (EigenCAM's SVD, weight sums) works on tiny matrices:
        # one BLAS thread avoids thread start-up that costs more than the maths (0.7 s vs 0.02 s
        # for EigenCAM's SVD on a busy machine).
        with torch.enable_grad(), threadpool_limits(limits=1, user_api="blas"), cls(
            model=model, target_layers=layers
        ) as cam:
            if key == "scorecam":
                cam.batch_size = SCORECAM_BATCH
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target_index))])
            logits = cam.outputs.detach().float().cpu().numpy()[0]
    except InferenceError:
        raise
    except Exception as exc:  # noqa: BLE001 - library errors become one domain error
        raise InferenceError(f"The {key} heatmap could not be computed: {exc}") from exc
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        model.train(was_training)
    out = np.asarray(maps[0], dtype=np.float32)
    if not np.isfinite(out).all():
        out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return out, logits


def road_faithfulness(
    model: "nn.Module",
    input_tensor: "torch.Tensor",
    cam_hw: np.ndarray,
    target_index: int,
    *,
    multiclass: bool = False,
    percentiles: Sequence[int] = DEFAULT_ROAD_PERCENTILES,
    cancel: Any = None,
) -> float:
    """ROAD combined score of a network-space CAM (see module docstring); range [-1, 1].

    Costs two imputations and two forwards per percentile (the imputation, a sparse
    solve over the image, dominates: a fraction of a second per percentile at 224 px).
    The library's ``ROADCombined`` in steps -- every LeRF percentile, then every MoRF one,
    the order (and so the imputation noise) it uses -- with ``cancel`` (a CancelToken)
    checked before each step, so a superseded request frees the worker within one step.
    """
    import torch
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst

    target = _SoftmaxTarget(target_index) if multiclass else _SigmoidTarget(target_index)
    cams = np.asarray(cam_hw, dtype=np.float32)[None]
    x = input_tensor.detach()
    parts: dict[str, list[float]] = {"lerf": [], "morf": []}
    with torch.no_grad(), warnings.catch_warnings():
        # numpy deprecation noise from inside the library's metric code
        warnings.simplefilter("ignore", DeprecationWarning)
        for name, metric_cls in (("lerf", ROADLeastRelevantFirst), ("morf", ROADMostRelevantFirst)):
            for pct in percentiles:
                if cancel is not None:
                    cancel.raise_if_cancelled()
                score = metric_cls(pct)(x, cams, [target], model)
                parts[name].append(float(np.asarray(score).reshape(-1)[0]))
    value = (float(np.mean(parts["lerf"])) - float(np.mean(parts["morf"]))) / 2
    return value if np.isfinite(value) else 0.0
