"""Window presets and the uint8 display conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.imaging import (
    PRESETS,
    Auto,
    Bone,
    DefaultWindow,
    FullRange,
    Lung,
    Manual,
    Mediastinum,
    center_width_to_limits,
    limits_to_center_width,
    quantize,
    window_lut,
    window_to_uint8,
)
from cxr_viewer.core.io import ImageRecord, read_image


def test_center_width_round_trip() -> None:
    lo, hi = center_width_to_limits(0.4, 0.2)
    assert (lo, hi) == pytest.approx((0.3, 0.5))
    assert limits_to_center_width(lo, hi) == pytest.approx((0.4, 0.2))
    assert limits_to_center_width(0.5, 0.3) == pytest.approx((0.4, 0.2))  # order does not matter
    lo, hi = center_width_to_limits(0.5, -3)  # never a negative or zero width
    assert hi > lo


def test_window_to_uint8_maps_limits_and_clips() -> None:
    px = np.array([[0.0, 0.2, 0.25, 0.35, 0.4, 1.0]], dtype=np.float32)
    out = window_to_uint8(px, 0.2, 0.4)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 0, 64, 191, 255, 255]]  # 63.75 and 191.25 rounded
    inv = window_to_uint8(px, 0.2, 0.4, invert=True)
    assert inv.tolist() == [[255, 255, 191, 64, 0, 0]]


def test_lut_path_matches_float_path() -> None:
    rng = np.random.default_rng(0)
    px = rng.random((64, 80), dtype=np.float32)
    q = quantize(px)
    assert q.dtype == np.uint16 and q.max() <= 65535
    for lo, hi in [(0.0, 1.0), (0.3, 0.45), (0.1, 0.9), (-0.2, 1.3)]:
        for inv in (False, True):
            a = window_to_uint8(px, lo, hi, invert=inv)
            b = window_to_uint8(q, lo, hi, invert=inv)
            assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert window_lut(0.0, 1.0).shape == (65536,)


def test_default_window_uses_file_window(dicom_dir: Path) -> None:
    rec = read_image(dicom_dir / "pydicom-data_RG1_UNCR.dcm")
    lo, hi = DefaultWindow().get_limits(rec)
    c, w = rec.default_window
    assert (lo, hi) == pytest.approx((c - w / 2, c + w / 2))
    plain = ImageRecord.from_array(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10))
    assert DefaultWindow().get_limits(plain) == pytest.approx((0.0, 1.0))


def test_presets_on_a_real_radiograph(dicom_dir: Path) -> None:
    rec = read_image(next(dicom_dir.glob("siim_pneumothorax_*.dcm")))
    limits = {name: p.get_limits(rec) for name, p in PRESETS.items()}
    assert list(PRESETS) == ["Default", "Lung", "Mediastinum", "Bone", "Auto", "Full range"]
    assert limits["Full range"] == pytest.approx((0.0, 1.0))
    for name, (lo, hi) in limits.items():
        assert 0.0 <= lo < hi <= 1.0, name
    # lung: the darker part; mediastinum and bone: the brighter part, bone narrowest
    lung, med, bone = limits["Lung"], limits["Mediastinum"], limits["Bone"]
    assert lung[0] < med[0] < bone[0]
    assert bone[1] - bone[0] < med[1] - med[0]
    median = float(np.median(rec.pixels))
    assert lung[0] < median < lung[1]
    assert bone[0] > median


def test_auto_ignores_a_few_outliers() -> None:
    rng = np.random.default_rng(1)
    px = (0.4 + 0.1 * rng.random((200, 200))).astype(np.float32)
    px[0, :5] = 1.0
    px[1, :5] = 0.0
    lo, hi = Auto().get_limits(px)
    assert 0.39 < lo < 0.41 and 0.49 < hi < 0.51
    assert FullRange().get_limits(px) == pytest.approx((0.0, 1.0))


def test_percentile_presets_ignore_saturated_borders() -> None:
    # a collimated film: 40% of the pixels are pure black shutters
    rng = np.random.default_rng(2)
    px = (0.3 + 0.4 * rng.random((100, 100))).astype(np.float32)
    px[:, :40] = 0.0
    lo, hi = Lung().get_limits(px)
    assert lo > 0.29  # the shutters do not drag the window to black
    assert Mediastinum().get_limits(px)[0] > 0.3 and Bone().get_limits(px)[1] <= 0.7 + 1e-6


def test_manual_window_orders_limits() -> None:
    assert Manual(0.7, 0.2).get_limits(np.zeros((2, 2), np.float32)) == pytest.approx((0.2, 0.7))


def test_flat_image_gets_a_usable_window() -> None:
    px = np.full((10, 10), 0.5, dtype=np.float32)
    for preset in PRESETS.values():
        lo, hi = preset.get_limits(px)
        assert hi > lo
        window_to_uint8(px, lo, hi)  # no division by zero
