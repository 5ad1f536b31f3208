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
import sys

__all__ = ["NO_TORCH_ENV", "configure_threads", "torch_available", "torch_installed"]

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


def configure_threads(threads: int | None = None) -> int:
    """CPU threads: ``threads``, else ``CXR_VIEWER_THREADS``, else the library default.

    torch defaults to the number of physical cores, which suits a desktop; the
    variable lets a shared server keep the viewer to a few cores. ONNX Runtime
    sessions are given the same number. torch is configured only once something has
    imported it (the torch backend calls this again when it builds a deferred model).
    """
    n = threads or int(os.environ.get("CXR_VIEWER_THREADS", "0") or 0)
    if not torch_available() or "torch" not in sys.modules:
        return n if n > 0 else (os.cpu_count() or 1)
    import torch

    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
