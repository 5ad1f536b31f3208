"""Torch datasets over a manifest: the viewer's reader and preprocessing, plus a decode cache.

Every image goes through :func:`cxr_viewer.core.io.read_image` (DICOM included) and
:func:`cxr_viewer.core.models.preprocess.preprocess` with the run's ``Preprocessing``,
the same spec the exported bundle's manifest carries: the viewer therefore feeds the
network exactly what it was trained on.

Decoding a 2 000 px DICOM or JPEG and resizing it costs far more than a small network's
forward pass on a CPU, so :class:`ImageCache` keeps the preprocessed tensor (at the
training size, float16) in memory and/or as ``.npy`` files on disk, keyed by the file's
absolute path, modification time, size and the preprocessing spec. A changed file or a
changed spec is simply a cache miss. Augmentations run after the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset

from cxr_viewer.core.errors import ImageReadError, TrainingDataError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from cxr_viewer.core.models.preprocess import Preprocessing

log = logging.getLogger(__name__)


class ImageCache:
    """Preprocessed tensors by (path, mtime, size, spec): in memory (LRU, bounded) and/or on disk.

    With ``num_workers > 0`` each worker holds its own memory cache; the disk cache is
    shared by all workers and all later runs with the same spec.
    """

    def __init__(self, *, memory: bool = True, disk_dir: str | Path | None = None, max_bytes: int = 2 << 30) -> None:
        self.memory = memory
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self.max_bytes = int(max_bytes)
        self._mem: OrderedDict[str, "torch.Tensor"] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        if self.disk_dir:
            self.disk_dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(path: str | Path, spec: "Preprocessing") -> str:
        st = os.stat(path)
        raw = json.dumps([os.path.abspath(path), st.st_mtime_ns, st.st_size, spec.to_dict()], sort_keys=True)
        return hashlib.sha1(raw.encode("utf-8")).hexdigest()

    def get(self, path: str | Path, spec: "Preprocessing", load: Callable[[], "torch.Tensor"]) -> "torch.Tensor":
        """The cached tensor for ``path`` under ``spec``, computing it with ``load`` on a miss."""
        import numpy as np
        import torch

        k = self.key(path, spec)
        if self.memory:
            with self._lock:
                t = self._mem.get(k)
                if t is not None:
                    self._mem.move_to_end(k)
                    self.hits += 1
                    return t.float()
        t16 = None
        disk = self.disk_dir / k[:2] / f"{k}.npy" if self.disk_dir else None
        if disk is not None and disk.is_file():
            try:
                t16 = torch.from_numpy(np.load(disk, allow_pickle=False))
                self.hits += 1
            except (OSError, ValueError):
                t16 = None  # half-written or corrupt: recompute
        if t16 is None:
            self.misses += 1
            t16 = load().to(torch.float16)
            if disk is not None:
                disk.parent.mkdir(parents=True, exist_ok=True)
                tmp = disk.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, t16.numpy(), allow_pickle=False)
                os.replace(tmp, disk)
        if self.memory:
            with self._lock:
                self._mem[k] = t16
                self._bytes += t16.numel() * 2
                while self._bytes > self.max_bytes and self._mem:
                    _, old = self._mem.popitem(last=False)
                    self._bytes -= old.numel() * 2
        return t16.float()


def load_tensor(path: str, spec: "Preprocessing") -> "torch.Tensor":
    """Decode ``path`` with the viewer's reader and preprocess it; unreadable files name themselves."""
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.models.preprocess import preprocess

    try:
        record = read_image(path)
    except ImageReadError as exc:
        raise TrainingDataError(f"Training image {path} could not be read: {exc.message}", path=path) from exc
    import torch

    return torch.from_numpy(preprocess(record, spec))


class CXRDataset(Dataset):
    """Manifest rows -> ``{"image": (C,H,W), "target": (L,) float with NaN = unknown, "index": i}``.

    With ``views=2`` (SimCLR) it returns ``view1``/``view2``: two independent
    augmentations of the same image.
    """

    def __init__(
        self,
        frame: "pd.DataFrame",
        spec: "Preprocessing",
        labels: Sequence[str] = (),
        *,
        transform: Callable[["torch.Tensor"], "torch.Tensor"] | None = None,
        cache: ImageCache | None = None,
        views: int = 1,
        weights: Any = None,
    ) -> None:
        import numpy as np

        from trainer.data.manifest import IMAGE, label_matrix

        if len(frame) == 0:
            raise TrainingDataError("The dataset has no images (empty split or fraction).")
        self.paths = [str(p) for p in frame[IMAGE]]
        self.labels = list(labels)
        self.targets = label_matrix(frame, self.labels) if self.labels else np.zeros((len(frame), 0), np.float32)
        self.spec = spec
        self.transform = transform
        self.cache = cache
        self.views = views
        # optional (N, L) per-film loss weights (per-source weighting); returned as "weight"
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> "torch.Tensor":
        """The preprocessed, un-augmented tensor of item ``i``."""
        path = self.paths[i]
        if self.cache is None:
            return load_tensor(path, self.spec)
        return self.cache.get(path, self.spec, lambda: load_tensor(path, self.spec))

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        x = self.image(i)
        target = torch.from_numpy(self.targets[i].copy())
        if self.views == 2:
            t = self.transform or (lambda v: v)
            return {"view1": t(x), "view2": t(x), "target": target, "index": i}
        if self.transform is not None:
            x = self.transform(x)
        item = {"image": x, "target": target, "index": i}
        if self.weights is not None:
            item["weight"] = torch.from_numpy(self.weights[i].copy())
        return item
