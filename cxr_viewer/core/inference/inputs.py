"""The model input, computed once per (image, preprocessing spec) and shared by scores, CAM, ROAD and masks."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.models.preprocess import Preprocessing, preprocess

if TYPE_CHECKING:
    from cxr_viewer.core.io.record import ImageRecord

__all__ = ["ModelInputs", "input_key"]


def input_key(record: "ImageRecord", spec: Preprocessing) -> tuple[Any, ...]:
    """Everything the network input depends on: the pixels, the default window the spec applies, the spec."""
    window = record.default_window if spec.window == "default" else None
    return (record.content_hash, None if window is None else tuple(float(v) for v in window), spec)


class ModelInputs:
    """A small thread-safe LRU of ``preprocess`` outputs, (1, C, H, W) float32, read-only."""

    def __init__(self, size: int = 8) -> None:
        self._size = max(0, int(size))
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()

    def get(self, record: "ImageRecord | np.ndarray", spec: Preprocessing, windowed: np.ndarray | None = None) -> np.ndarray:
        """The input for ``record``; ``windowed`` is its :meth:`model_pixels` when the caller has them."""
        if isinstance(record, np.ndarray):  # a bare array: nothing to key it by cheaply
            return preprocess(record, spec)[None]
        key = input_key(record, spec)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        src = windowed if (windowed is not None and spec.window == "default") else record
        x = preprocess(src, spec)[None]
        x.setflags(write=False)
        with self._lock:
            self._items[key] = x
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return x

    def reserve(self, size: int) -> None:
        """Keep at least ``size`` inputs (a batch being prepared ahead must not evict itself)."""
        with self._lock:
            self._size = max(self._size, int(size))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
