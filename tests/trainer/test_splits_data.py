"""Splits are per patient, seeded and stratified; fractions nest; the dataset reads through the core."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_viewer.core.errors import TrainingDataError
from cxr_viewer.core.models.preprocess import Preprocessing, preprocess
from trainer.data.adapters import NIH_FINDINGS, build_manifest
from trainer.data.splits import (
    apply_split_file,
    check_patient_level,
    fraction_column,
    label_fractions,
    make_splits,
    write_split_file,
)


@pytest.fixture(scope="module")
def nih(data_dir: Path) -> pd.DataFrame:
    return build_manifest("nih14", data_dir / "nih14")


def test_splits_patient_level_deterministic_and_stratified(nih: pd.DataFrame, tmp_path: Path) -> None:
    a = make_splits(nih, seed=3, val=0.15, test=0.15)
    check_patient_level(a)
    assert (a.groupby("patient_id")["split"].nunique() == 1).all()
    # same seed, rows in another order -> same assignment; another seed -> a different one
    b = make_splits(nih.sample(frac=1.0, random_state=1), seed=3, val=0.15, test=0.15)
    assert a.set_index("image")["split"].equals(b.set_index("image")["split"].loc[a["image"]])
    c = make_splits(nih, seed=4, val=0.15, test=0.15)
    assert not a["split"].equals(c["split"])
    # every label with a few positive patients appears in every split
    for lab in ("Hernia", "Edema", "Pneumonia"):
        assert all(a.loc[a["split"] == s, lab].sum() > 0 for s in ("train", "val", "test")), lab
    patients = a.groupby("split")["patient_id"].nunique()
    assert abs(patients["test"] / patients.sum() - 0.15) < 0.05
    # the split file is keyed by patient: same split -> same sha256, reapplied exactly
    sha1 = write_split_file(a, tmp_path / "s1.csv")
    sha2 = write_split_file(b, tmp_path / "s2.csv")
    assert sha1 == sha2
    again = apply_split_file(nih, tmp_path / "s1.csv")
    assert list(again["split"]) == list(a["split"])


def test_existing_official_split_kept_and_leaks_refused(nih: pd.DataFrame) -> None:
    f = nih.copy()
    f["split"] = ""
    pid = f["patient_id"].iloc[0]
    f.loc[f["patient_id"] == pid, "split"] = "test"
    s = make_splits(f, seed=0)
    assert (s.loc[s["patient_id"] == pid, "split"] == "test").all()
    multi = f["patient_id"].value_counts()
    leaky_pid = multi[multi > 1].index[0]
    rows = f.index[f["patient_id"] == leaky_pid]
    f.loc[rows[0], "split"], f.loc[rows[1], "split"] = "train", "test"
    with pytest.raises(TrainingDataError, match="more than one split"):
        make_splits(f, seed=0)


def test_fractions_nested_stratified_with_positives(nih: pd.DataFrame) -> None:
    s = label_fractions(make_splits(nih, seed=0), (0.01, 0.1, 1.0), seed=0)
    f1, f10, f100 = (s[fraction_column(x)] for x in (0.01, 0.1, 1.0))
    assert (f1 <= f10).all() and (f10 <= f100).all()  # nested
    assert f100.equals(s["split"] == "train")
    # whole patients only
    for col in (f1, f10):
        assert (col.groupby(s["patient_id"]).nunique() == 1).all()
    # at least one positive per label wherever the training split has one
    train = s[s["split"] == "train"]
    for lab in NIH_FINDINGS:
        if train[lab].sum() > 0:
            assert s.loc[f1, lab].sum() >= 1, lab
    n_train = train["patient_id"].nunique()
    n10 = s.loc[f10, "patient_id"].nunique()
    # about a tenth of the patients, plus at most one patient per label that still needed a positive
    needed = sum(train[lab].sum() > 0 for lab in NIH_FINDINGS)
    assert 0.08 * n_train <= n10 <= 0.2 * n_train + needed
    # stratified: the 10 % subset keeps the share of no-finding patients close to the full split
    none_full = (train[list(NIH_FINDINGS)].sum(axis=1) == 0).mean()
    sub = s[f10]
    assert abs((sub[list(NIH_FINDINGS)].sum(axis=1) == 0).mean() - none_full) < 0.15


def test_dataset_reads_dicom_and_caches(data_dir: Path, tmp_path: Path) -> None:
    from cxr_viewer.core.io import read_image
    from trainer.data.dataset import CXRDataset, ImageCache

    frame = build_manifest("folder", data_dir / "dicom")
    spec = Preprocessing(size=(64, 64))
    cache = ImageCache(memory=True, disk_dir=tmp_path / "cache")
    ds = CXRDataset(frame, spec, cache=cache)
    item = ds[0]
    expected = torch.from_numpy(preprocess(read_image(frame["image"].iloc[0]), spec))  # the viewer's own path
    assert item["image"].shape == (1, 64, 64)
    assert torch.allclose(item["image"], expected, atol=2e-2)  # float16 cache storage
    assert cache.misses == 1 and len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    ds[0]
    assert cache.hits == 1
    # a fresh process-like cache (memory off) reads the .npy written before
    disk_only = ImageCache(memory=False, disk_dir=tmp_path / "cache")
    assert torch.equal(CXRDataset(frame, spec, cache=disk_only)[0]["image"], item["image"])
    assert disk_only.hits == 1 and disk_only.misses == 0
    # another spec is another key
    CXRDataset(frame, Preprocessing(size=(32, 32)), cache=disk_only)[0]
    assert disk_only.misses == 1


def test_unreadable_training_image_names_itself(tmp_path: Path) -> None:
    from trainer.data.dataset import CXRDataset

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    ds = CXRDataset(pd.DataFrame({"image": [str(bad)], "patient_id": ["1"]}), Preprocessing(size=(32, 32)))
    with pytest.raises(TrainingDataError, match="broken.png"):
        ds[0]


def test_augmentations_keep_geometry_and_no_flip_by_default() -> None:
    from trainer.data.augment import PRESETS, RadiographAugment, augment_config

    spec = Preprocessing(size=(64, 64))
    assert PRESETS["light"].hflip is False and PRESETS["ssl"].hflip is False
    # a bright block on the image's left must stay on the left
    img = np.zeros((64, 64), np.float32)
    img[:, :20] = 1.0
    x = torch.from_numpy(preprocess(img, spec))
    torch.manual_seed(0)
    aug = RadiographAugment(augment_config("light"), spec)
    for _ in range(10):
        y = aug(x)
        assert y.shape == x.shape and torch.isfinite(y).all()
        assert y[0, :, :24].mean() > y[0, :, 40:].mean()
    # values stay in the normalised [0, 1] range
    lo, hi = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert y.min() >= lo - 1e-5 and y.max() <= hi + 1e-5
    flip = RadiographAugment(augment_config({"hflip": True, "rotate_deg": 0, "translate": 0, "crop_scale": 1.0}), spec)
    flipped = [flip(x)[0, :, :24].mean() < flip(x)[0, :, 40:].mean() for _ in range(20)]
    assert any(flipped)
    clahe = RadiographAugment(augment_config({"clahe_p": 1.0}), spec)
    assert clahe(x).shape == x.shape
