"""Measurements and display orientation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.imaging import DisplayTransform, describe_spacing, distance_mm, distance_px
from cxr_viewer.core.io import ImageRecord, read_image


def test_distance_with_anisotropic_spacing() -> None:
    assert distance_px((0, 0), (3, 4)) == pytest.approx(5.0)
    assert distance_mm((0, 0), (3, 4), (1.0, 1.0)) == pytest.approx(5.0)
    # 3 rows at 0.2 mm and 4 columns at 0.1 mm: sqrt(0.6^2 + 0.4^2)
    assert distance_mm((0, 0), (3, 4), (0.2, 0.1)) == pytest.approx(np.hypot(0.6, 0.4))
    assert distance_mm((10, 10), (10, 10), (0.2, 0.1)) == 0.0
    with pytest.raises(ValueError):
        distance_mm((0, 0), (1, 1), None)  # type: ignore[arg-type]


def test_describe_spacing(dicom_dir: Path) -> None:
    siim = read_image(next(dicom_dir.glob("siim_pneumothorax_*.dcm")))
    assert describe_spacing(siim) == "0.168 mm/px (PixelSpacing, at the patient as stated by the file)"
    px = np.zeros((4, 4), np.float32)
    imager = ImageRecord(pixels=px, source=None, format="dicom", spacing_mm=(0.143, 0.143),
                         spacing_source="ImagerPixelSpacing")
    assert describe_spacing(imager) == "0.143 mm/px (ImagerPixelSpacing, not calibrated at the patient)"
    aniso = ImageRecord(pixels=px, source=None, format="dicom", spacing_mm=(0.2, 0.1), spacing_source="PixelSpacing")
    assert "0.200 x 0.100" in describe_spacing(aniso)
    assert "pixels" in describe_spacing(ImageRecord(pixels=px, source=None, format="png"))


ALL_TRANSFORMS = [DisplayTransform(k, m) for k, m in itertools.product(range(4), (False, True))]


@pytest.mark.parametrize("t", ALL_TRANSFORMS, ids=str)
def test_points_follow_pixels(t: DisplayTransform) -> None:
    img = np.arange(5 * 7).reshape(5, 7)
    shown = t.apply(img)
    assert shown.shape == t.display_shape(img.shape)
    rr, cc = np.mgrid[0:5, 0:7]
    pts = np.stack([rr.ravel(), cc.ravel()], axis=1)
    d = t.image_to_display(pts, img.shape).round().astype(int)
    assert np.array_equal(shown[d[:, 0], d[:, 1]], img[rr.ravel(), cc.ravel()])
    back = t.display_to_image(d, img.shape)
    assert np.allclose(back, pts)
    # sub-pixel points survive the round trip too
    sub = np.array([[1.25, 3.5], [0.0, 6.9]])
    assert np.allclose(t.display_to_image(t.image_to_display(sub, img.shape), img.shape), sub)


def test_composition_matches_numpy() -> None:
    img = np.arange(3 * 4).reshape(3, 4)
    t = DisplayTransform()
    expected = img
    for op in ["rot", "flip_h", "rot", "flip_v", "rot", "rot", "flip_h"]:
        if op == "rot":
            t, expected = t.rotated(90), np.rot90(expected, k=-1)
        elif op == "flip_h":
            t, expected = t.flipped_horizontal(), expected[:, ::-1]
        else:
            t, expected = t.flipped_vertical(), expected[::-1, :]
        assert np.array_equal(t.apply(img), expected), op
    assert DisplayTransform().rotated(360).is_identity
    assert DisplayTransform().flipped_horizontal().flipped_horizontal().is_identity
    with pytest.raises(ValueError):
        DisplayTransform().rotated(45)


def test_distance_is_unchanged_by_display_transform() -> None:
    shape = (100, 60)
    p = np.array([[10.0, 5.0], [70.0, 40.0]])
    for t in ALL_TRANSFORMS:
        d = t.image_to_display(p, shape)
        assert distance_px(tuple(d[0]), tuple(d[1])) == pytest.approx(distance_px(tuple(p[0]), tuple(p[1])))
