"""The model input, computed once per (image, preprocessing spec) and shared by scores, CAM, ROAD and masks."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.models.preprocess import Preprocessing, preprocess

if TYPE_CHECKING:
    from cxr_viewer.core.io.record import ImageRecord

__all__ = ["ModelInputs", "analysis_key", "input_key"]

#: Header fields that name the study or the patient and that no part of the analysis reads.
IDENTITY_FIELDS = frozenset({
    "patient_name", "patient_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid",
    "study_date", "study_description", "series_description", "transfer_syntax",
})


def input_key(record: "ImageRecord", spec: Preprocessing) -> tuple[Any, ...]:
    """Everything the network input depends on: the pixels, the default window the spec applies, the spec."""
    window = record.default_window if spec.window == "default" else None
    return (record.content_hash, None if window is None else tuple(float(v) for v in window), spec)


def analysis_key(record: "ImageRecord") -> str:
    """The key of everything ``analyze`` derives from one record, as a hex digest.

    It holds what :func:`input_key` keys a model input on (the pixel hash and the default
    window; the spec is the model's, which the store keys by the model's sha256) and every
    header field except those naming the study or patient (:data:`IDENTITY_FIELDS`): the QC
    flags and the population check read the modality, view, body part and age, so two files
    with the same pixels and another header never share findings or QC.
    """
    import hashlib
    import json

    window = record.default_window
    header = {k: v for k, v in sorted((record.metadata or {}).items()) if k not in IDENTITY_FIELDS}
    doc = {"pixels": record.content_hash, "format": record.format,
           "window": None if window is None else [float(v) for v in window], "header": header}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=repr).encode("utf-8")).hexdigest()


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
