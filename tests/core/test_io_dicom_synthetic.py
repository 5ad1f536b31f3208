"""DICOM features checked on small files built with pydicom in tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cxr_viewer.core.errors import (
    ImageReadError,
    ImageTooLargeError,
    MissingDecoderError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedFileError,
    UnsupportedImageError,
)
from cxr_viewer.core.io import read_header, read_image
from cxr_viewer.core.io.dicom import parse_age


def make_dicom(
    path: Path,
    arr: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    preamble: bool = True,
    **tags: Any,
) -> Path:
    """Write a small CR image with the given pixels and tags (a test helper, also used by the scan tests)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "CR"
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3.1"
    ds.SeriesInstanceUID = "1.2.3.1.1"
    if arr is not None:
        ds.set_pixel_data(arr, photometric, bits_stored or arr.dtype.itemsize * 8, generate_instance_uid=False)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=preamble)
    if not preamble:  # strip the 128-byte preamble, "DICM" and the meta group: a bare dataset
        from pydicom import dcmwrite

        dcmwrite(path, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
        raw = path.read_bytes()
        if raw[128:132] == b"DICM":
            raise AssertionError("expected a file without preamble")
    return path


def _ramp(h: int = 32, w: int = 40, top: int = 4095, dtype: Any = np.uint16) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * top // (h * w - 1)).astype(dtype)


# --------------------------------------------------------------------------- pixel pipeline
def test_modality_lut_rescale_and_window(tmp_path: Path) -> None:
    arr = _ramp(top=1000)
    f = make_dicom(tmp_path / "a.dcm", arr, bits_stored=12, RescaleSlope=2, RescaleIntercept=-100,
                   WindowCenter=900, WindowWidth=801)
    rec = read_image(f)
    values = arr.astype(np.float64) * 2 - 100  # -100 .. 1900
    assert np.allclose(rec.pixels, (values - values.min()) / np.ptp(values), atol=1e-6)
    # LINEAR window c=900 w=801 -> 499.5 .. 1299.5 in rescaled units
    lo, hi = 499.5, 1299.5
    c, w = rec.default_window
    assert c == pytest.approx(((lo + hi) / 2 + 100) / 2000)
    assert w == pytest.approx((hi - lo) / 2000)
    assert rec.model_pixels().min() == 0.0 and rec.model_pixels().max() == 1.0


def test_first_of_several_windows_with_explanation(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "w.dcm", _ramp(), bits_stored=12, WindowCenter=[2000, 1000],
                   WindowWidth=[1000, 500], WindowCenterWidthExplanation=["LUNG", "BONE"])
    rec = read_image(f)
    c, w = rec.default_window
    assert c == pytest.approx((1999.5) / 4095) and w == pytest.approx(999 / 4095)
    assert any("2 windows" in n and "LUNG" in n for n in rec.notices)


def test_linear_exact_window(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "w.dcm", _ramp(), bits_stored=12, WindowCenter=2000, WindowWidth=1000,
                   VOILUTFunction="LINEAR_EXACT")
    c, w = read_image(f).default_window
    assert c == pytest.approx(2000 / 4095) and w == pytest.approx(1000 / 4095)


def test_voi_lut_sequence_becomes_window(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    # 4096 entries from input 0: flat at 0 up to ~1000, rising to 2000, flat at 255 above
    lut = np.clip((np.arange(4096) - 1000) * 255 // 1000, 0, 255).astype(np.uint16)
    item.LUTDescriptor = [4096, 0, 8]
    item.LUTData = lut.astype("<u2").tobytes()
    f = make_dicom(tmp_path / "v.dcm", _ramp(), bits_stored=12, VOILUTSequence=[item])
    rec = read_image(f)
    c, w = rec.default_window
    lo, hi = (c - w / 2) * 4095, (c + w / 2) * 4095
    first_rise = int(np.nonzero(lut > 0)[0][0])  # 1004: integer division keeps 1000..1003 at 0
    assert lo == pytest.approx(first_rise - 1, abs=1e-6) and hi == pytest.approx(2000, abs=1e-6)
    assert any("lookup table" in n for n in rec.notices)


def test_modality_lut_sequence(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.LUTData = (np.arange(256)[::-1] * 10).astype("<u2").tobytes()  # decreasing mapping
    item.ModalityLUTType = "US"
    f = make_dicom(tmp_path / "m.dcm", _ramp(top=255, dtype=np.uint8), ModalityLUTSequence=[item])
    rec = read_image(f)
    # the LUT reverses the ramp: the first pixel becomes the brightest
    assert rec.pixels[0, 0] == pytest.approx(1.0) and rec.pixels[-1, -1] == pytest.approx(0.0)


def test_monochrome1_window_follows_inversion(tmp_path: Path) -> None:
    arr = _ramp()
    m2 = read_image(make_dicom(tmp_path / "m2.dcm", arr, bits_stored=12, WindowCenter=1000, WindowWidth=500))
    m1 = read_image(make_dicom(tmp_path / "m1.dcm", (4095 - arr).astype(np.uint16), photometric="MONOCHROME1",
                               bits_stored=12, WindowCenter=4095 - 1000 + 1, WindowWidth=500))
    # LINEAR: c=1000 covers 750..1249; in the inverted stored values 2846..3345, i.e. c=3096
    assert np.allclose(m1.pixels, m2.pixels, atol=1e-6)
    assert np.allclose(m1.model_pixels(), m2.model_pixels(), atol=1e-3)


def test_bits_stored_masks_high_bits_and_signed_data(tmp_path: Path) -> None:
    arr = _ramp(top=4095)
    dirty = arr | np.uint16(0xF000)  # overlay garbage in the 4 unused high bits
    f = make_dicom(tmp_path / "b.dcm", arr, bits_stored=12)
    import pydicom

    ds = pydicom.dcmread(f)
    ds.PixelData = dirty.tobytes()
    ds.save_as(f)
    assert np.allclose(read_image(f).pixels, arr / 4095.0, atol=1e-6)

    signed = (_ramp(top=2000).astype(np.int16) - 1000)
    g = make_dicom(tmp_path / "s.dcm", signed, bits_stored=16)
    rec = read_image(g)
    assert np.allclose(rec.pixels, (signed + 1000) / 2000.0, atol=1e-6)


def test_spacing_sources(tmp_path: Path) -> None:
    arr = _ramp()
    imager = read_image(make_dicom(tmp_path / "i.dcm", arr, ImagerPixelSpacing=[0.143, 0.15]))
    assert imager.spacing_mm == pytest.approx((0.143, 0.15)) and imager.spacing_source == "ImagerPixelSpacing"
    mag = read_image(make_dicom(tmp_path / "g.dcm", arr, ImagerPixelSpacing=[0.15, 0.15],
                                EstimatedRadiographicMagnificationFactor=1.2))
    assert mag.spacing_mm == pytest.approx((0.125, 0.125))
    assert "Magnification" in mag.spacing_source
    both = read_image(make_dicom(tmp_path / "p.dcm", arr, PixelSpacing=[0.1, 0.1], ImagerPixelSpacing=[0.15, 0.15]))
    assert both.spacing_mm == pytest.approx((0.1, 0.1)) and both.spacing_source == "PixelSpacing"
    none = read_image(make_dicom(tmp_path / "n.dcm", arr))
    assert none.spacing_mm is None and any("no pixel spacing" in n for n in none.notices)


def test_multiframe_shows_first_frame(tmp_path: Path) -> None:
    frames = np.stack([_ramp(top=4000), np.full((32, 40), 7, np.uint16), _ramp(top=100)])
    rec = read_image(make_dicom(tmp_path / "mf.dcm", frames, bits_stored=12))
    assert rec.shape == (32, 40)
    assert np.allclose(rec.pixels, frames[0] / 4000.0, atol=1e-6)
    assert any("3 frames" in n for n in rec.notices)
    assert rec.metadata["frames"] == 3


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_dicom_becomes_luminance(tmp_path: Path, photometric: str) -> None:
    rgb = np.zeros((16, 20, 3), np.uint8)  # black | red | white columns
    rgb[:, 5:10, 0] = 200
    rgb[:, 10:] = 255
    if photometric == "YBR_FULL":
        from pydicom.pixels import convert_color_space

        stored = convert_color_space(rgb, "RGB", "YBR_FULL")
    else:
        stored = rgb
    rec = read_image(make_dicom(tmp_path / "c.dcm", stored, photometric=photometric, bits_stored=8))
    assert rec.shape == (16, 20)
    assert any("Colour" in n and "luminance" in n for n in rec.notices)
    # luminance of (200, 0, 0) is 0.299 * 200 = 59.8 on a 0..255 scale
    assert rec.pixels[:, :5].max() == pytest.approx(0.0, abs=0.01)
    assert rec.pixels[:, 5:10].mean() == pytest.approx(59.8 / 255, abs=0.02)
    assert rec.pixels[:, 10:].min() == pytest.approx(1.0, abs=0.01)


# JPEG lossless (process 14) has no Python encoder to build a test file with; its decoder is pylibjpeg-libjpeg
@pytest.mark.parametrize("compress_as", ["RLELossless", "JPEG2000Lossless", "JPEGLSLossless"])
def test_compressed_transfer_syntaxes(tmp_path: Path, compress_as: str) -> None:
    import pydicom.uid

    arr = _ramp(top=4095)
    f = make_dicom(tmp_path / "c.dcm", arr, bits_stored=12)
    import pydicom

    ds = pydicom.dcmread(f)
    ds.compress(getattr(pydicom.uid, compress_as))
    ds.save_as(f)
    rec = read_image(f)
    assert np.allclose(rec.pixels, arr / 4095.0, atol=1e-6)


def test_metadata_and_header(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "m.dcm", _ramp(), PatientAge="045Y", PatientSex="F", ViewPosition="AP",
                   BodyPartExamined="CHEST", StudyDate="20240131", Manufacturer="ACME")
    rec = read_image(f)
    md = rec.metadata
    assert md["patient_age_years"] == 45.0 and md["patient_sex"] == "F" and md["view_position"] == "AP"
    assert md["patient_name"] == "Test^Patient" and md["patient_id"] == "P1"
    assert md["study_date"] == "20240131" and md["manufacturer"] == "ACME" and md["rows"] == 32
    assert "PixelData" not in rec.header and rec.header.PatientAge == "045Y"
    hdr = read_header(f)
    assert hdr.Rows == 32 and "PixelData" not in hdr
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "x.dcm", format="PNG")
    with pytest.raises(NotAnImageError, match="PNG image"):
        read_header(tmp_path / "x.dcm")


def test_parse_age() -> None:
    assert parse_age("045Y") == 45.0
    assert parse_age("006M") == 0.5
    assert parse_age("62") == 62.0
    assert parse_age("002W") == pytest.approx(14 / 365.25)
    assert parse_age("") is None and parse_age(None) is None and parse_age("old") is None


def test_dicom_without_preamble_is_recognised(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "noext", _ramp(), preamble=False)
    assert f.read_bytes()[128:132] != b"DICM"
    assert read_image(f).format == "dicom"


def test_patient_identifiers_are_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    f = make_dicom(tmp_path / "m.dcm", _ramp(), PatientName="Secret^Name", PatientID="ID-98765")
    with caplog.at_level(logging.DEBUG, logger="cxr_viewer"):
        read_image(f)
    assert caplog.records  # something was logged at debug level
    assert "Secret" not in caplog.text and "ID-98765" not in caplog.text


# --------------------------------------------------------------------------- bad DICOM
def test_no_pixel_data(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "sr.dcm", None, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11")
    with pytest.raises(NoPixelDataError, match="holds no image"):
        read_image(f)


def test_absurd_size_refused_before_decoding(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "big.dcm", _ramp())
    import pydicom

    ds = pydicom.dcmread(f)
    ds.Rows = ds.Columns = 60000
    ds.save_as(f)
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(ImageTooLargeError, match="60000 x 60000"):
        read_image(f)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50_000_000  # nothing near 60000*60000*2 bytes was allocated
    with pytest.raises(ImageTooLargeError):
        read_image(make_dicom(tmp_path / "ok.dcm", _ramp()), max_pixels=100)


def test_truncated_native_dicom(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "t.dcm", _ramp())
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(TruncatedFileError, match="cut short"):
        read_image(f)


def test_truncated_compressed_dicom(tmp_path: Path, dicom_dir: Path) -> None:
    data = next(dicom_dir.glob("siim_pneumothorax_*.dcm")).read_bytes()
    f = tmp_path / "siim_cut.dcm"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match="cut short"):
        read_image(f)


def test_damaged_compressed_stream(tmp_path: Path, dicom_dir: Path) -> None:
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(next(dicom_dir.glob("siim_pneumothorax_*.dcm")))
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + b"\x00" * 64])  # a JPEG that stops after its marker
    f = tmp_path / "bad_stream.dcm"
    ds.save_as(f)
    with pytest.raises(ImageReadError) as info:
        read_image(f)
    assert "could not be decoded" in info.value.message


def test_missing_decoder_names_the_package(tmp_path: Path, dicom_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide every JPEG 2000 plugin the way pydicom records a missing dependency, then read RG1 J2KR."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000Lossless

    decoder = get_decoder(JPEG2000Lossless)
    hidden = {label: ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0") for label in decoder._available}
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(decoder, "_unavailable", {**decoder._unavailable, **hidden})
    assert not decoder.is_available
    with pytest.raises(MissingDecoderError) as info:
        read_image(dicom_dir / "pydicom-data_RG1_J2KR.dcm")
    assert "pip install pylibjpeg-openjpeg" in info.value.message
    assert "JPEG 2000" in info.value.message


def test_transfer_syntax_nobody_decodes(tmp_path: Path) -> None:
    import pydicom

    f = make_dicom(tmp_path / "v.dcm", _ramp())
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 video
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x00\x01" + b"\x00" * 32])
    ds.save_as(f, enforce_file_format=True)
    with pytest.raises(UnsupportedImageError, match="cannot decode"):
        read_image(f)
