"""Networks, bundles and the one preprocessing path shared by viewer and trainer.

Importing this package registers the built-in architectures with the registry.
Torch is imported here (when installed), so GUI code imports this package lazily.
"""

from __future__ import annotations

from cxr_viewer.core.runtime import torch_available
from cxr_viewer.core.models.registry import create_model, list_models, register_model

if torch_available():  # the torch-free app bundle runs ONNX exports instead (core.inference.backends.ort_backend)
    from cxr_viewer.core.models import classifier as _classifier  # noqa: F401  (registers models)
    from cxr_viewer.core.models import segmenter as _segmenter  # noqa: F401  (registers text_unet for load_bundle)

__all__ = ["create_model", "list_models", "register_model"]
