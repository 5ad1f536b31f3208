"""Which numeric runtime this process has: PyTorch, or only the ONNX lane.

The CPU application bundle leaves PyTorch out to stay small (see
``packaging/README.md``); models then run through ONNX Runtime exports made at
build time (:mod:`cxr_viewer.core.inference.backends.ort_backend`). Core modules ask
:func:`torch_available` before importing torch so the same code serves both.
"""

from __future__ import annotations

import functools
import importlib.util
import os

__all__ = ["NO_TORCH_ENV", "torch_available", "torch_installed"]

#: Set to 1 to run as the torch-free bundle does even where torch is installed (tests, comparisons).
NO_TORCH_ENV = "CXR_VIEWER_NO_TORCH"


@functools.lru_cache(maxsize=1)
def torch_installed() -> bool:
    """True when ``import torch`` can succeed (checked without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def torch_available() -> bool:
    """True when models may run on PyTorch; False leaves ONNX Runtime only."""
    if os.environ.get(NO_TORCH_ENV, "").strip() not in ("", "0"):
        return False
    return torch_installed()
