"""The one preprocessing path and its exact inverse (CAM and mask overlays depend on it)."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_viewer.core.io.record import ImageRecord, to_unit_gray
from cxr_viewer.core.models.preprocess import (
    Preprocessing,
    compute_geometry,
    preprocess,
    preprocess_batch,
    restore_map,
)

MODES = ["letterbox", "stretch", "center_crop"]
SHAPES = [(300, 200), (200, 310), (977, 921), (64, 64), (40, 90)]


def _centroid(m: np.ndarray) -> np.ndarray:
    m = np.clip(m, 0, None)
    ys, xs = np.indices(m.shape)
    return np.array([(m * ys).sum(), (m * xs).sum()]) / m.sum()


def test_spec_round_trip_and_validation() -> None:
    spec = Preprocessing(size=(96, 128), resize="center_crop", mean=(0.4,), std=(0.2,))
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="resize"):
        Preprocessing(resize="squash")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown field"):
        Preprocessing.from_dict({"size": [64, 64], "szie": 3})
    with pytest.raises(ValueError, match="std"):
        Preprocessing(std=(0.0,))


@pytest.mark.parametrize("mode", MODES)
def test_output_shape_dtype_and_normalisation(mode: str) -> None:
    spec = Preprocessing(size=(48, 64), resize=mode, mean=(0.5,), std=(0.25,))
    img = np.full((120, 90), 0.5, np.float32)
    t = preprocess(img, spec)
    assert t.shape == (1, 48, 64) and t.dtype == np.float32 and isinstance(t, np.ndarray)
    geo = compute_geometry(img.shape, spec)
    inside = t[0, max(geo.offset[0], 0) + 2 : 46, max(geo.offset[1], 0) + 2 : geo.offset[1] + geo.resized[1] - 2]
    assert np.allclose(inside, 0.0, atol=1e-5)  # (0.5 - 0.5) / 0.25
    if mode == "letterbox":  # portrait into landscape: padded columns at the sides
        assert geo.offset[1] > 0 and np.allclose(t[0, :, 0], -2.0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_single_bright_spot_restores_to_its_location(mode: str, shape: tuple[int, int]) -> None:
    """A spot in the original image, taken through preprocess and back, lands where it started."""
    spec = Preprocessing(size=(64, 64), resize=mode, mean=(0.0,), std=(1.0,))
    h, w = shape
    r, c = int(h * 0.55), int(w * 0.4)
    img = np.zeros(shape, np.float32)
    img[r, c] = 1.0
    net = preprocess(img, spec)[0]
    geo = compute_geometry(shape, spec)
    # forward: the spot's network position matches the geometry's point mapping
    ny, nx = geo.to_network([[r, c]])[0]
    assert np.allclose(_centroid(net), (ny, nx), atol=0.75)
    # back: restored map peaks at the original pixel (within half a network pixel)
    back = restore_map(net, spec, shape)
    assert back.shape == shape and back.dtype == np.float32
    tol = 0.5 / min(geo.scale) + 0.75
    assert np.allclose(_centroid(back), (r, c), atol=tol), (_centroid(back), (r, c), tol)
    assert np.allclose(geo.to_original(geo.to_network([[r, c]])), [[r, c]])


def test_restore_map_is_identity_for_same_size_stretch() -> None:
    rng = np.random.default_rng(0)
    m = rng.random((64, 64)).astype(np.float32)
    back = restore_map(m, Preprocessing(size=(64, 64), resize="stretch"), (64, 64))
    assert np.array_equal(back, m)


def test_restore_map_letterbox_discards_padding_exactly() -> None:
    spec = Preprocessing(size=(64, 64), resize="letterbox")
    shape = (64, 32)  # scale 1: network holds the image in columns 16..47
    m = np.zeros((64, 64), np.float32)
    m[:, 16:48] = np.arange(32, dtype=np.float32)[None, :]
    back = restore_map(m, spec, shape)
    assert np.array_equal(back, np.tile(np.arange(32, dtype=np.float32), (64, 1)))


def test_center_crop_fills_unseen_area() -> None:
    spec = Preprocessing(size=(64, 64), resize="center_crop")
    back = restore_map(np.ones((64, 64), np.float32), spec, (64, 128), fill=-1.0, interpolation="nearest")
    assert (back[:, :32] == -1).all() and (back[:, 96:] == -1).all() and (back[:, 32:96] == 1).all()


def test_coarse_map_is_upsampled_to_original() -> None:
    spec = Preprocessing(size=(64, 64))
    back = restore_map(np.ones((7, 7), np.float32), spec, (100, 80))
    assert back.shape == (100, 80) and np.allclose(back, 1.0)


def test_record_default_window_and_array_inputs() -> None:
    raw = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    rec = ImageRecord(pixels=raw, source=None, format="array", default_window=(0.5, 0.5))
    spec = Preprocessing(size=(64, 64), mean=(0.0,), std=(1.0,))
    windowed = preprocess(rec, spec)
    full = preprocess(rec, Preprocessing(size=(64, 64), mean=(0.0,), std=(1.0,), window="none"))
    assert np.allclose(windowed[0], rec.model_pixels())
    assert np.allclose(full[0], raw)
    # uint8 / uint16 / RGB arrays come in through the same path
    assert np.allclose(preprocess((raw * 255).astype(np.uint8), spec), full, atol=1 / 255)
    assert np.allclose(preprocess((raw * 65535).astype(np.uint16), spec), full, atol=1e-4)
    rgb = np.repeat((raw * 255).astype(np.uint8)[..., None], 3, axis=2)
    assert np.allclose(preprocess(rgb, spec), full, atol=1 / 255)
    with pytest.raises(ValueError):
        to_unit_gray(np.zeros((2, 3, 4, 5)))


def test_three_channel_and_batch() -> None:
    spec = Preprocessing(size=(32, 32), channels=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    batch = preprocess_batch([np.zeros((50, 40), np.float32), np.ones((40, 50), np.float32)], spec)
    assert batch.shape == (2, 3, 32, 32)
    assert not np.allclose(batch[0, 0], batch[0, 1])  # per-channel normalisation applied


def test_one_kernel_is_torch_free_and_shared_by_trainer_and_engine(tmp_path) -> None:
    """The trainer's dataset tensor is exactly the engine's model input (one kernel, no twin)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from cxr_viewer.core.models.preprocess import Preprocessing, preprocess, restore_map\n"
        "x = preprocess(np.random.default_rng(0).random((300, 200), dtype=np.float32), Preprocessing(size=(64, 64)))\n"
        "m = restore_map(x[0], Preprocessing(size=(64, 64)), (300, 200))\n"
        "print(x.shape, m.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "(1, 64, 64) (300, 200)" in out
    from PIL import Image

    from cxr_viewer.core.io import read_image

    img = (np.random.default_rng(1).random((180, 150)) * 255).astype(np.uint8)
    path = tmp_path / "film.png"
    Image.fromarray(img).save(path)
    spec = Preprocessing(size=(64, 64), mean=(0.5,), std=(0.25,))
    from trainer.data.dataset import load_tensor

    assert np.array_equal(load_tensor(str(path), spec).numpy(), preprocess(read_image(path), spec))


def test_shrinking_averages_thin_lines_instead_of_skipping_them() -> None:
    """Antialiased reduction: a one-pixel line in a 1000 px film survives at 64 px."""
    img = np.zeros((1000, 1000), np.float32)
    img[:, 503] = 1.0
    net = preprocess(img, Preprocessing(size=(64, 64), mean=(0.0,), std=(1.0,)))[0]
    col = net.mean(axis=0)
    assert col.max() > 0.04 and np.isclose(col.sum(), 64 / 1000, atol=0.01)


def test_non_finite_arrays_are_refused() -> None:
    img = np.ones((10, 10), np.float32)
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        to_unit_gray(img)
