"""Segmentation targets from real masks and boxes; phrases; flips that keep image, mask and text consistent."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_viewer.core.errors import TrainingDataError
from cxr_viewer.core.models.preprocess import Preprocessing
from trainer.data.segmentation import (
    SegmentationDataset,
    build_image_manifest,
    build_samples,
    iu_sentences,
    lung_zones,
    read_samples,
    split_lungs,
    swap_sides,
    swap_target,
    target_mask,
    write_samples,
)

torch.set_num_threads(1)


def _mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


@pytest.mark.parametrize(
    "rel",
    ["shenzhen_sample/masks/CHNCXR_0001_0_mask.png", "covid_ieee8023/masks_lung_v7labs/12941_2020_358_Fig1_HTML.png"],
)
def test_split_real_lung_mask_into_patient_sides(data_dir: Path, rel: str) -> None:
    m = _mask(data_dir / rel)
    sides = split_lungs(m)
    assert set(sides) == {"left", "right"}
    left, right = sides["left"], sides["right"]
    assert left.any() and right.any() and not (left & right).any()
    np.testing.assert_array_equal(left | right, m > 127)  # nothing lost, nothing invented
    cols = np.arange(m.shape[1])
    # the patient's LEFT lung lies on the IMAGE's right half in a PA view
    assert (left * cols).sum() / left.sum() > m.shape[1] / 2 > (right * cols).sum() / right.sum()
    assert 0.5 < left.sum() / right.sum() < 2.0


def test_split_refuses_masks_without_two_lungs() -> None:
    with pytest.raises(TrainingDataError, match="two separate lungs"):
        split_lungs(np.zeros((32, 32), np.uint8))
    one = np.zeros((32, 32), np.uint8)
    one[5:25, 5:25] = 255
    with pytest.raises(TrainingDataError):
        split_lungs(one)


def test_zones_are_thirds_of_the_lung(data_dir: Path) -> None:
    lung = split_lungs(_mask(data_dir / "shenzhen_sample/masks/CHNCXR_0002_0_mask.png"))["right"]
    zones = lung_zones(lung)
    np.testing.assert_array_equal(zones["upper"] | zones["middle"] | zones["lower"], lung)
    rows = {k: np.flatnonzero(v.any(1)) for k, v in zones.items()}
    assert rows["upper"].max() < rows["middle"].min() <= rows["middle"].max() < rows["lower"].min()


@pytest.mark.parametrize(
    ("text", "swapped"),
    [
        ("left lung", "right lung"),
        ("Right lower lobe opacity", "Left lower lobe opacity"),
        ("opacity in the LEFT upper zone", "opacity in the RIGHT upper zone"),
        ("left-sided effusion, right base clear", "right-sided effusion, left base clear"),
        ("Opacity in the LLL and RUL.", "Opacity in the RLL and LUL."),
        ("both lungs are clear", "both lungs are clear"),
        ("bilateral upper zones", "bilateral upper zones"),
        ("copyright leftover", "copyright leftover"),  # whole words only
    ],
)
def test_swap_sides(text: str, swapped: str) -> None:
    assert swap_sides(text) == swapped
    assert swap_sides(swap_sides(text)) == text


def test_targets_rasterise_and_flip_consistently(data_dir: Path) -> None:
    mpath = data_dir / "shenzhen_sample/masks/CHNCXR_0001_0_mask.png"
    m = _mask(mpath)
    shape = m.shape
    left = target_mask("lung:left", shape, str(mpath))
    both = target_mask("lung:both", shape, str(mpath))
    np.testing.assert_array_equal(both, m > 127)
    zone = target_mask("zone:left:lower", shape, str(mpath))
    assert zone.any() and not (zone & ~left).any()
    assert target_mask("empty", shape).sum() == 0
    boxes = "boxes:" + json.dumps([[10.2, 20.0, 30.0, 40.5]])
    b = target_mask(boxes, (64, 64))
    assert b.sum() == 20 * 21 and b[20, 10] and not b[19, 10]
    # flipping an image flips its box and swaps its sides
    fb = target_mask(swap_target(boxes, 64), (64, 64))
    np.testing.assert_array_equal(fb, b[:, ::-1])
    assert swap_target("zone:left:upper") == "zone:right:upper" and swap_target("lung:both") == "lung:both"


def test_iu_sentences_grouped(data_dir: Path) -> None:
    groups = iu_sentences(data_dir / "reports_iu" / "indiana_reports.csv")
    assert "No acute cardiopulmonary abnormality." in groups["none"]
    assert len(groups["none"]) > 200 and len(groups["both"]) > 50
    assert any(s.lower().startswith("the lungs are clear") for s in groups["both"])
    assert not any("XXXX" in s for g in groups.values() for s in g)


@pytest.fixture(scope="module")
def small_build(data_dir: Path):
    images = build_image_manifest(data_dir, max_images=3, seed=1)
    samples = build_samples(images, reports_csv=data_dir / "reports_iu" / "indiana_reports.csv", seed=1)
    return images, samples


def test_manifest_and_samples_from_real_data(small_build, tmp_path: Path) -> None:
    images, samples = small_build
    assert set(images["dataset"]) == {"covid", "shenzhen", "tbx11k"}
    assert images["patient_id"].str.contains(":").all()
    # patient-level split: one split per patient, and every split populated
    assert images.groupby("patient_id")["split"].nunique().max() == 1
    assert set(images["split"]) == {"train", "val", "test"}
    kinds = set(samples["kind"])
    assert {"left_lung", "right_lung", "both_lungs", "zone", "tb_lesion", "negative"} <= kinds
    tb = samples[samples["kind"] == "tb_lesion"]
    assert tb["target"].str.startswith("boxes:").all()
    assert all(s in p for p, s in zip(tb["phrase"], tb["side"]) if s in ("left", "right"))
    assert (samples.loc[samples["kind"] == "negative", "target"] == "empty").all()
    left = samples[samples["kind"] == "left_lung"]
    assert left["phrase"].str.contains("left", case=False).all()
    path = write_samples(samples, tmp_path / "samples.csv")
    back = read_samples(path)
    assert list(back["image"]) == list(samples["image"])
    assert Path(back["image"].iloc[0]).is_file()


def test_dataset_flip_swaps_phrase_and_mask(small_build) -> None:
    _, samples = small_build
    rows = samples[samples["kind"] == "left_lung"].head(1)
    phrase = rows["phrase"].iloc[0]
    vocab = sorted({phrase, swap_sides(phrase)})
    index = {p: i for i, p in enumerate(vocab)}
    spec = Preprocessing(size=(64, 64))
    plain = SegmentationDataset(rows, spec, index)
    flipped = SegmentationDataset(rows, spec, index, hflip_p=1.0)
    a, b = plain[0], flipped[0]
    assert a["phrase"] == index[phrase] and b["phrase"] == index[swap_sides(phrase)]
    torch.testing.assert_close(b["image"], a["image"].flip(-1))
    torch.testing.assert_close(b["mask"], a["mask"].flip(-1))
    # the left-lung mask sits on the image's right half; after the flip (now "right lung") on the left half
    cols = torch.arange(64, dtype=torch.float32)
    ca = (a["mask"][0].sum(0) * cols).sum() / a["mask"].sum()
    cb = (b["mask"][0].sum(0) * cols).sum() / b["mask"].sum()
    assert ca > 32 > cb
    assert a["mask"].shape == (1, 64, 64) and set(a["mask"].unique().tolist()) <= {0.0, 1.0}


def test_joint_geometry_moves_mask_with_image(small_build) -> None:
    """Affine + resized crop use the same parameters for image and mask.

    The image here IS the mask (normalised), so after the joint transform the image,
    thresholded, must equal the transformed mask up to a few edge pixels.
    """
    from trainer.data.augment import augment_config
    from trainer.data.segmentation import _JointGeometry

    _, samples = small_build
    rows = samples[samples["kind"] == "left_lung"].head(1)
    phrase = rows["phrase"].iloc[0]
    spec = Preprocessing(size=(64, 64))
    y = SegmentationDataset(rows, spec, {phrase: 0, swap_sides(phrase): 1}).mask(0)
    x = (y - 0.5) / 0.25  # the mask as a normalised image
    geo = _JointGeometry(augment_config("light"), spec)
    torch.manual_seed(0)
    changed = 0
    for _ in range(6):
        gx, gy = geo(x, y)
        assert gx.shape == x.shape and gy.shape == y.shape
        img_mask = (gx * 0.25 + 0.5) > 0.5
        disagree = (img_mask != (gy > 0.5)).float().mean().item()
        assert disagree < 0.02
        changed += int(not torch.equal(gy, y))
    assert changed >= 4  # the augmentation really moves things
