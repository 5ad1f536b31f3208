"""Segmenter on a (random-weight) bundle: geometry back to the original image, batching, caching, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_viewer.core.errors import BundleError
from cxr_viewer.core.inference.segment import Segmenter, load_segmenter
from cxr_viewer.core.models.text import CachedTextEncoder, EmbeddingCache, MiniLMEncoder

torch.set_num_threads(1)


def _bundle(out: Path, *, text_dim: int | None = 384, size: int = 64, task: str = "text_segmentation") -> Path:
    import cxr_viewer.core.models.segmenter  # noqa: F401
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import save_bundle

    torch.manual_seed(0)
    model = create_model("text_unet_tiny", text_dim=text_dim)
    manifest = {
        "name": "seg-test", "version": "0.0.1", "task": task, "trained": False,
        "architecture": {"name": "text_unet_tiny", "kwargs": {"text_dim": text_dim}},
        "labels": ["region"], "thresholds": {"region": {"value": 0.45, "method": "test"}},
        "preprocessing": {"size": [size, size], "resize": "letterbox"},
        "text_encoder": None if text_dim is None else {"name": "all-MiniLM-L6-v2", "dim": text_dim},
    }  # fmt: skip
    return save_bundle(model, manifest, out, dtype="float32")


@pytest.fixture(scope="module")
def minilm() -> MiniLMEncoder:
    return MiniLMEncoder(device="cpu")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _bundle(tmp_path_factory.mktemp("b") / "seg")


def test_masks_at_original_size_and_batching(bundle: Path, minilm: MiniLMEncoder) -> None:
    calls: list[list[str]] = []

    class Counting:
        name, dim = minilm.name, minilm.dim

        def encode(self, texts: list[str]) -> np.ndarray:
            calls.append(list(texts))
            return minilm.encode(texts)

    enc = CachedTextEncoder(Counting(), EmbeddingCache())
    seg = load_segmenter(bundle, device="cpu", text_encoder=enc)
    assert seg.threshold == pytest.approx(0.45)
    rng = np.random.default_rng(0)
    img = rng.random((90, 130), dtype=np.float32)  # not square: letterboxed in, un-letterboxed out
    phrases = ["left lung", "right lower lobe", "Both lungs are clear."]
    together = seg.segment(img, phrases)
    assert [m.prob.shape for m in together] == [(90, 130)] * 3
    alone = [seg.segment(img, [p])[0] for p in phrases]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-5)
    # each sentence was embedded once, then came from the cache
    assert sorted(t for c in calls for t in c) == sorted(phrases)
    colours = [m.colour for m in together]
    assert together[2].negative and colours[2] == (170, 170, 170) and colours[0] != colours[1]
    # max_batch splits the decoder batches without changing results
    seg.max_batch = 1
    np.testing.assert_allclose(seg.segment(img, phrases)[1].prob, together[1].prob, atol=1e-5)


def test_image_only_bundle_ignores_text(tmp_path: Path) -> None:
    seg = load_segmenter(_bundle(tmp_path / "img", text_dim=None), device="cpu")
    assert seg.text_encoder is None
    img = np.random.default_rng(1).random((64, 48), dtype=np.float32)
    a, b = seg.segment(img, ["left lung", "right lung"])
    np.testing.assert_array_equal(a.prob, b.prob)
    assert a.prob.shape == (64, 48)


def test_bad_bundles_and_encoders_are_refused(tmp_path: Path, minilm: MiniLMEncoder) -> None:
    from cxr_viewer.core.models import create_model
    from cxr_viewer.core.models.bundle import load_bundle, save_bundle

    clf = create_model("classifier", backbone="resnet18", num_classes=1)
    save_bundle(clf, {"name": "c", "version": "1", "task": "binary", "labels": ["tb"],
                      "architecture": {"name": "classifier", "kwargs": {"backbone": "resnet18", "num_classes": 1}}},
                tmp_path / "clf")  # fmt: skip
    with pytest.raises(BundleError, match="not a report-conditioned segmentation model"):
        Segmenter(load_bundle(tmp_path / "clf"))

    class Small:
        name, dim = "small", 16

        def encode(self, texts: list[str]) -> np.ndarray:
            return np.zeros((len(texts), 16), np.float32)

    with pytest.raises(BundleError, match="384"):
        load_segmenter(_bundle(tmp_path / "seg"), device="cpu", text_encoder=Small())


def test_cancel_stops_segmentation(bundle: Path, minilm: MiniLMEncoder) -> None:
    import threading

    from cxr_viewer.core.errors import AnalysisCancelledError
    from cxr_viewer.core.inference.results import CancelToken

    seg = load_segmenter(bundle, device="cpu", text_encoder=minilm)
    img = np.zeros((80, 100), np.float32)
    ev = threading.Event()
    ev.set()
    token = CancelToken()
    token.cancel()
    for cancel in (ev, token, lambda: True):
        with pytest.raises(AnalysisCancelledError):
            seg.segment(img, ["left lung"], cancel=cancel)
    assert len(seg.segment(img, ["left lung"], cancel=CancelToken())) == 1
    assert seg.segment(img, []) == []


def test_write_report_masks_for_headless(bundle: Path, minilm: MiniLMEncoder, tmp_path: Path) -> None:
    from PIL import Image

    from cxr_viewer.core.inference.segment import write_report_masks

    seg = load_segmenter(bundle, device="cpu", text_encoder=minilm)
    img = np.random.default_rng(2).random((70, 90), dtype=np.float32)
    rows = write_report_masks(seg, img, "Right lower lobe opacity. Both lungs are clear.", tmp_path / "masks", "case1")
    assert [r["text"] for r in rows] == ["Right lower lobe opacity.", "Both lungs are clear."]
    for r in rows:
        with Image.open(r["path"]) as im:
            arr = np.asarray(im)
        assert arr.shape == (70, 90) and arr.dtype == np.uint8 and set(np.unique(arr).tolist()) <= {0, 255}
        assert r["area_fraction"] == pytest.approx((arr == 255).mean(), abs=1e-6)
    assert Path(rows[0]["path"]).name == "case1_mask01_right_lower_lobe_opacity.png"
    assert rows[1]["negative"] is True and rows[1]["regions"] == ["both lungs"]
