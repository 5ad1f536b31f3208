"""Folder scan: grouping by patient/study/series from headers only; junk is listed, never raised."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_viewer.core.io import read_image, scan_folder
from cxr_viewer.core.io.scan import Patient, ScanResult
from tests.core.test_io_dicom_synthetic import make_dicom


def _img(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4095, (16, 16), dtype=np.uint16)


@pytest.fixture()
def mixed_folder(tmp_path: Path, dicom_dir: Path) -> Path:
    root = tmp_path / "import"
    (root / "sub" / "deeper").mkdir(parents=True)
    # patient A: two studies, the first with two series (PA + lateral, two images in the lateral)
    make_dicom(root / "a1.dcm", _img(1), bits_stored=12, PatientID="A", PatientName="Alpha^Ann",
               StudyInstanceUID="1.1", StudyDate="20240102", StudyDescription="CHEST 2 VIEWS",
               SeriesInstanceUID="1.1.1", SeriesNumber=1, SeriesDescription="PA", InstanceNumber=1, ViewPosition="PA")
    make_dicom(root / "sub" / "a2", _img(2), bits_stored=12, PatientID="A", PatientName="Alpha^Ann",
               StudyInstanceUID="1.1", StudyDate="20240102", SeriesInstanceUID="1.1.2", SeriesNumber=2,
               SeriesDescription="LAT", InstanceNumber=2, ViewPosition="LL")
    make_dicom(root / "sub" / "a3.dcm", _img(3), bits_stored=12, PatientID="A", PatientName="Alpha^Ann",
               StudyInstanceUID="1.1", StudyDate="20240102", SeriesInstanceUID="1.1.2", SeriesNumber=2,
               SeriesDescription="LAT", InstanceNumber=1, ViewPosition="LL")
    make_dicom(root / "sub" / "deeper" / "a4.dcm", _img(4), bits_stored=12, PatientID="A",
               PatientName="Alpha^Ann", StudyInstanceUID="1.2", StudyDate="20230315",
               SeriesInstanceUID="1.2.1", SeriesNumber=1)
    # patient B: the real SIIM file
    shutil.copy(next(dicom_dir.glob("siim_pneumothorax_*.dcm")), root / "siim.dcm")
    # raster images and junk
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "film.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "sub" / "photo.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "fake.dcm").write_text("not a DICOM either")
    (root / "empty.png").write_bytes(b"")
    (root / "report.pdf").write_bytes(b"%PDF-1.4\n")
    make_dicom(root / "sr.dcm", None, PatientID="A", StudyInstanceUID="1.1",
               SOPClassUID="1.2.840.10008.5.1.4.1.1.88.22")  # a structured report: no image
    return root


def test_mixed_folder_groups_correctly(mixed_folder: Path) -> None:
    result = scan_folder(mixed_folder)
    assert isinstance(result, ScanResult) and isinstance(result, list)
    assert all(isinstance(p, Patient) for p in result)
    labels = [p.label for p in result]
    assert len(result) == 3 and labels[-1] == "Image files (no patient data)"

    a = next(p for p in result if p.patient_id == "A")
    assert a.label == "Alpha Ann"
    assert [s.study_instance_uid for s in a.studies] == ["1.2", "1.1"]  # oldest first
    assert a.studies[1].label == "2024-01-02 CHEST 2 VIEWS"
    pa, lat = a.studies[1].series
    assert (pa.number, lat.number) == (1, 2)
    assert [i.instance_number for i in lat.instances] == [1, 2]  # sorted by instance number
    assert lat.instances[1].path == mixed_folder / "sub" / "a2"  # extension-less DICOM found
    assert lat.label == "2: CR LAT (2 images)" and lat.instances[0].label == "#1 LL 16x16"
    assert len(a.instances) == 4

    b = next(p for p in result if p.patient_id.startswith("16d7f894"))
    (inst,) = b.instances
    assert inst.rows == 1024 and inst.format == "dicom" and inst.view_position == "PA"
    assert read_image(inst.path).shape == (1024, 1024)

    files = result[-1]
    assert sorted(i.path.name for i in files.instances) == ["film.png", "photo.jpg"]
    film = next(i for i in files.instances if i.path.name == "film.png")
    assert (film.rows, film.columns, film.format) == (20, 30, "png")

    skipped = {s.path.name: s.reason for s in result.skipped}
    assert set(skipped) == {"notes.txt", "fake.dcm", "empty.png", "report.pdf", "sr.dcm"}
    assert "not a DICOM" in skipped["fake.dcm"]
    assert skipped["empty.png"] == "empty file"
    assert "without an image" in skipped["sr.dcm"]
    assert result.instance_count == 7


def test_non_recursive(mixed_folder: Path) -> None:
    result = scan_folder(mixed_folder, recursive=False)
    paths = {i.path.name for p in result for i in p.instances}
    assert paths == {"a1.dcm", "siim.dcm", "film.png"}


def test_repr_hides_identifiers(mixed_folder: Path) -> None:
    result = scan_folder(mixed_folder)
    text = repr(list(result))
    assert "Alpha" not in text and "patient_id" not in text


def test_truncated_and_missing(tmp_path: Path, dicom_dir: Path) -> None:
    data = next(dicom_dir.glob("siim_pneumothorax_*.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:200])  # header cut inside the file meta
    result = scan_folder(tmp_path)
    assert result.instance_count == 0 and len(result.skipped) == 1
    missing = scan_folder(tmp_path / "nope")
    assert list(missing) == [] and missing.skipped[0].reason == "not a folder"


def test_scan_never_decodes_pixels(tmp_path: Path, dicom_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan must never decode pixels: make decoding fail loudly and scan anyway."""
    import pydicom.pixels.decoders.base as base

    for i in range(3):
        shutil.copy(dicom_dir / "pydicom-data_RG1_J2KR.dcm", tmp_path / f"{i}.dcm")

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels decoded during a scan")

    monkeypatch.setattr(base.Decoder, "as_array", boom)
    result = scan_folder(tmp_path)
    assert result.instance_count == 3 and not result.skipped
