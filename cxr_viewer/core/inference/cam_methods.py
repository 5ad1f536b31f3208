"""Heatmap method names (torch-free): what the UI offers and both backends understand."""

from __future__ import annotations

from cxr_viewer.core.errors import InferenceError

__all__ = ["CAM_METHODS", "DEFAULT_ROAD_PERCENTILES", "canonical_method"]

# name -> pytorch_grad_cam class name
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
}
_ALIASES = {"gradcampp": "gradcam++", "gradcamplusplus": "gradcam++", "grad-cam": "gradcam", "score-cam": "scorecam"}
DEFAULT_ROAD_PERCENTILES: tuple[int, ...] = (25, 50, 75)


def canonical_method(method: str) -> str:
    """Normalise a user-typed method name; unknown names raise with the list of choices."""
    key = method.strip().lower().replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in CAM_METHODS:
        raise InferenceError(f"Unknown heatmap method {method!r}. Choose one of: {', '.join(CAM_METHODS)}.")
    return key
