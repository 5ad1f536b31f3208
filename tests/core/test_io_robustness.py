"""Damaged files of every kind end in a domain exception (or a record), never anything else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.errors import ImageReadError
from cxr_viewer.core.io import read_image, scan_folder
from tests.core.test_io_dicom_synthetic import make_dicom


def _sources(repo_root: Path, tmp_path: Path) -> list[Path]:
    native = make_dicom(tmp_path / "native.dcm", np.arange(64 * 64, dtype=np.uint16).reshape(64, 64),
                        bits_stored=12, WindowCenter=2000, WindowWidth=1000, PixelSpacing=[0.2, 0.2])
    samples = repo_root / "resources" / "samples"
    return [samples / "siim_cr_chest.dcm", samples / "nih_chest.png", native]


def _outcome(f: Path) -> str:
    try:
        read_image(f)
    except ImageReadError as exc:
        assert exc.message and exc.path == f
        return type(exc).__name__
    return "ok"


def test_truncation_at_many_offsets(repo_root: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    seen: set[str] = set()
    for src in _sources(repo_root, tmp_path):
        data = src.read_bytes()
        cuts = {1, 4, 100, 131, 132, 200, 500, 1500, *rng.integers(1, len(data) - 1, 6).tolist()}
        for cut in sorted(cuts):
            f = tmp_path / f"cut{src.suffix}"
            f.write_bytes(data[:cut])
            outcome = _outcome(f)
            assert outcome != "ok", (src.name, cut)  # a cut file is never silently shown
            seen.add(outcome)
    assert "TruncatedFileError" in seen


def test_random_header_corruption(repo_root: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for src in _sources(repo_root, tmp_path):
        data = src.read_bytes()
        for _ in range(12):
            corrupt = bytearray(data)
            for i in rng.integers(0, min(len(corrupt), 2000), 8):
                corrupt[i] = int(rng.integers(0, 256))
            f = tmp_path / f"bad{src.suffix}"
            f.write_bytes(bytes(corrupt))
            _outcome(f)  # a record or a domain exception; anything else fails the test


def test_scan_survives_damaged_files(repo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "damaged"
    folder.mkdir()
    for i, src in enumerate(_sources(repo_root, tmp_path)):
        data = src.read_bytes()
        # cut inside the header (a scan reads headers only, so a cut further on is found on opening)
        (folder / f"{i}_cut{src.suffix}").write_bytes(data[: 20 if src.suffix == ".png" else 150])
        (folder / f"{i}_ok{src.suffix}").write_bytes(data)
    result = scan_folder(folder)
    assert result.instance_count >= 3
    assert {s.path.name for s in result.skipped} >= {"0_cut.dcm", "1_cut.png"}


def test_samples_are_small_and_open(repo_root: Path) -> None:
    samples = repo_root / "resources" / "samples"
    files = [f for f in samples.iterdir() if f.is_file()]
    assert sum(f.stat().st_size for f in files) < 3_000_000
    assert (samples / "README.md").read_text(encoding="utf-8").count("licence") >= 1
    dcm, png = read_image(samples / "siim_cr_chest.dcm"), read_image(samples / "nih_chest.png")
    assert dcm.shape == png.shape == (1024, 1024)
    assert dcm.spacing_mm == pytest.approx((0.168, 0.168))
