"""A factory of real, tiny, random-weight bundles for tests, benchmarks and demos (``trained: false``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["make_untrained_bundle"]


def make_untrained_bundle(
    out_dir: str | Path,
    *,
    name: str = "untrained-classifier",
    labels: Iterable[str] = ("Finding",),
    backbone: str = "resnet18",
    size: tuple[int, int] = (224, 224),
    task: str = "multilabel",
    thresholds: Mapping[str, float] | None = None,
    seed: int = 0,
    dtype: str = "float16",
) -> Path:
    """A random-weight classifier bundle (``trained: false``) for tests, benchmarks and demos.

    It goes through :func:`save_bundle` like any trained bundle, so everything that
    consumes it exercises the real contract; the UI labels it UNTRAINED.
    """
    import torch

    from cxr_viewer.core.models.bundle import save_bundle
    from cxr_viewer.core.models.registry import create_model

    labels = list(labels)
    kwargs = {"backbone": backbone, "num_classes": len(labels)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("classifier", **kwargs).eval()
    manifest = {
        "name": name,
        "version": "0.0.0",
        "task": task,
        "trained": False,
        "architecture": {"name": "classifier", "kwargs": kwargs},
        "labels": labels,
        "thresholds": {
            lab: {"value": float((thresholds or {}).get(lab, 0.5)), "method": "fixed", "source": "untrained default"}
            for lab in labels
        },
        "preprocessing": {"size": list(size)},
        "limitations": ["Random weights: for software testing and timing only."],
    }
    return save_bundle(model, manifest, out_dir, dtype=dtype)
