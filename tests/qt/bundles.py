"""Tiny real model bundles for the viewer's analysis tests, built once per test session.

Every bundle goes through the real ``save_bundle`` (safetensors + manifest + sha256),
so the viewer loads them exactly as it loads trained ones. Import the fixtures into a
test module with ``from tests.qt.bundles import tiny_models, seg_models  # noqa: F401``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NIH_LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Nodule")
INPUT = [64, 64]


def build_classifier(out: Path, name: str, labels: tuple[str, ...], *, trained: bool, seed: int,
                     task: str = "multilabel", thresholds: dict[str, float] | None = None) -> Path:
    import torch

    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    kwargs = {"backbone": "resnet10t", "num_classes": len(labels)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("classifier", **kwargs).eval()
    manifest = {
        "name": name, "version": "0.0.1", "task": task, "trained": trained,
        "architecture": {"name": "classifier", "kwargs": kwargs},
        "labels": list(labels),
        "thresholds": {lab: {"value": float((thresholds or {}).get(lab, 0.5)), "method": "fixed", "source": "test"}
                       for lab in labels},
        "preprocessing": {"size": INPUT},
        "metrics": {"auroc": {lab: {"value": 0.5, "ci95": [0.4, 0.6]} for lab in labels}},
    }
    return save_bundle(model, manifest, out)


def build_segmenter(out: Path, *, seed: int = 0) -> Path:
    import torch

    import cxr_viewer.core.models.segmenter  # noqa: F401  (registers text_unet)
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    kwargs = {"encoder": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8], "text_dim": 384,
              "text_hidden": 64}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("text_unet", **kwargs).eval()
    manifest = {
        "name": "seg-tiny", "version": "0.0.1", "task": "text_segmentation", "trained": False,
        "architecture": {"name": "text_unet", "kwargs": kwargs},
        "labels": ["region"], "thresholds": {"region": {"value": 0.5, "method": "fixed"}},
        "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384},
        "preprocessing": {"size": INPUT},
    }
    return save_bundle(model, manifest, out)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a 'trained' 4-label classifier and an untrained binary TB classifier."""
    root = tmp_path_factory.mktemp("tiny_models")
    build_classifier(root / "nih", "nih-tiny", NIH_LABELS, trained=True, seed=1)
    build_classifier(root / "tb", "tb-tiny", ("Tuberculosis",), trained=False, seed=2, task="binary")
    return root


@pytest.fixture(scope="session")
def seg_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with only the tiny report-conditioned segmentation bundle."""
    root = tmp_path_factory.mktemp("seg_models")
    build_segmenter(root / "seg")
    return root


def open_and_wait(qtbot, make_window, models: Path, path: Path, *, timeout_ms: int = 180_000):
    """A window on ``models`` (torch backend, 2 threads) with ``path`` opened and its analysis finished."""
    import torch

    torch.set_num_threads(2)
    win = make_window(models_dir=models)
    win.analysis.backend = "torch"
    win.open_paths([path])
    qtbot.waitUntil(lambda: win.session.record is not None and win.analysis.state.status == "done"
                    and not win.session.busy, timeout=timeout_ms)  # fmt: skip
    return win


def build_derived_segmenter(out: Path, label: str, note: str, prompts: list[str]) -> Path:
    """A tiny report segmenter (random weights, seed 0) with one derived, unvalidated lesion finding."""
    import torch

    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    torch.manual_seed(0)
    save_bundle(create_model("text_unet_tiny", text_dim=384), {
        "name": "seg-derived", "version": "0.0.1", "task": "text_segmentation", "trained": True,
        "architecture": {"name": "text_unet_tiny", "kwargs": {"text_dim": 384}},
        "labels": ["region"], "thresholds": {"region": {"value": 0.5, "method": "test"}},
        "preprocessing": {"size": [64, 64], "resize": "letterbox"},
        "text_encoder": {"name": "all-MiniLM-L6-v2", "dim": 384},
        "derived_findings": [{"label": label, "prompts": list(prompts), "score": "max",
                              "threshold": {"value": 0.5, "method": "test", "source": "test"},
                              "validated": False, "note": note}],
    }, out, dtype="float32")  # fmt: skip
    return out
