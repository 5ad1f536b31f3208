"""Networks, bundles and the one preprocessing path shared by viewer and trainer.

The built-in architectures register themselves when the registry is first asked for one
(:func:`create_model`, :func:`list_models` call :func:`register_builtin_models`), so importing
this package imports no torch: a start-up that runs ONNX Runtime exports never pays for it.
"""

from __future__ import annotations

from cxr_viewer.core.models.registry import create_model, list_models, register_model, set_builtin_loader

__all__ = ["create_model", "list_models", "register_builtin_models", "register_model"]


def register_builtin_models() -> None:
    """Import the modules that register the built-in architectures (they need torch; without it, none)."""
    from cxr_viewer.core.runtime import torch_available

    if torch_available():
        from cxr_viewer.core.models import classifier as _classifier  # noqa: F401  (registers models)
        from cxr_viewer.core.models import segmenter as _segmenter  # noqa: F401  (registers text_unet)


set_builtin_loader(register_builtin_models)
