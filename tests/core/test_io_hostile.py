"""Hostile DICOM files built in the test: decompression bombs, lying frame counts, non-finite values,
pixel data that disagrees with the header, and values we do not support.

Each case is refused with a message that names the cause (or read with a notice), before
anything large is allocated.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_viewer.core.errors import (
    ImageTooLargeError,
    InconsistentImageError,
    TruncatedFileError,
    UnsupportedImageError,
)
from cxr_viewer.core.io import read_image
from cxr_viewer.core.io.codestream import j2k_header, jpeg_header
from tests.core.test_io_dicom_synthetic import make_dicom

REPO = Path(__file__).resolve().parents[2]


def _gray(h: int = 32, w: int = 32) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)


def _jpeg_dicom(path: Path, *, sof_size: tuple[int, int] | None = None, frames: int | None = None) -> Path:
    """A real 32x32 JPEG baseline DICOM; ``sof_size`` rewrites the (rows, columns) its stream declares."""
    import pydicom
    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    arr = _gray()
    make_dicom(path, arr)
    ds = pydicom.dcmread(path)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    jpg = bytearray(buf.getvalue())
    if sof_size is not None:
        at = jpg.find(b"\xff\xc0")
        jpg[at + 5 : at + 9] = sof_size[0].to_bytes(2, "big") + sof_size[1].to_bytes(2, "big")
    ds.PixelData = encapsulate([bytes(jpg)])
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.save_as(path)
    return path


def _compressed_dicom(path: Path, syntax: str) -> Path:
    import pydicom
    import pydicom.uid

    make_dicom(path, _gray().astype(np.uint16), bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.compress(getattr(pydicom.uid, syntax))
    ds.save_as(path)
    return path


def _patch_pixel_bytes(path: Path, find: bytes, offset: int, new: bytes) -> None:
    """Rewrite bytes inside the compressed stream in place (lengths unchanged)."""
    data = bytearray(path.read_bytes())
    at = data.rfind(find)
    assert at > 0, "marker not found"
    data[at + offset : at + offset + len(new)] = new
    path.write_bytes(bytes(data))


# --------------------------------------------------------------------------- decompression bombs
def test_jpeg_stream_header_is_parsed(tmp_path: Path) -> None:
    f = _jpeg_dicom(tmp_path / "ok.dcm")
    rec = read_image(f)
    assert rec.shape == (32, 32)
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(f)
    head = jpeg_header(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert head is not None and (head.rows, head.columns, head.components, head.precision) == (32, 32, 1, 8)


def test_jpeg_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    """127 KB-class files whose JPEG frame claims 30000 x 30000 took 16 GB; now refused from the header."""
    f = _jpeg_dicom(tmp_path / "bomb.dcm", sof_size=(30000, 30000))
    assert f.stat().st_size < 10_000
    with pytest.raises(ImageTooLargeError, match="30000 x 30000") as info:
        read_image(f)
    assert "not decoded" in info.value.message


def test_jpeg_stream_disagreeing_with_rows_columns(tmp_path: Path) -> None:
    f = _jpeg_dicom(tmp_path / "lie.dcm", sof_size=(9000, 9000))  # under the pixel limit, but not what the header says
    with pytest.raises(InconsistentImageError) as info:
        read_image(f)
    msg = info.value.message
    assert "32 x 32" in msg and "9000 x 9000" in msg and "disagree" in msg


@pytest.mark.parametrize(("syntax", "marker", "offset"), [
    ("JPEG2000Lossless", b"\xff\x4f\xff\x51", 8),  # SIZ: Lsiz Rsiz then Xsiz, Ysiz
    ("JPEGLSLossless", b"\xff\xf7", 5),  # SOF55: length, precision, then Y, X
])
def test_other_codestreams_are_checked(tmp_path: Path, syntax: str, marker: bytes, offset: int) -> None:
    f = _compressed_dicom(tmp_path / "c.dcm", syntax)
    assert read_image(f).shape == (32, 32)
    if syntax.startswith("JPEG2000"):
        new = (30000).to_bytes(4, "big") * 2
    else:
        new = (30000).to_bytes(2, "big") * 2
    _patch_pixel_bytes(f, marker, offset, new)
    with pytest.raises(ImageTooLargeError, match="30000 x 30000"):
        read_image(f)


def test_codestream_parsers_on_garbage() -> None:
    assert jpeg_header(b"") is None and jpeg_header(b"\xff\xd8\xff\xda\x00\x02") is None
    assert jpeg_header(b"\xff\xd8\xff\xc0\x00\x01") is None
    assert j2k_header(b"\x00" * 100) is None and j2k_header(b"\xff\x4f\xff\x51\x00") is None


def test_bomb_memory_stays_bounded(tmp_path: Path) -> None:
    """Peak RSS of reading the bomb, measured in a fresh process, stays near the interpreter's own."""
    f = _jpeg_dicom(tmp_path / "bomb.dcm", sof_size=(30000, 30000))
    ok = _jpeg_dicom(tmp_path / "ok.dcm")
    code = (  # VmHWM, reset first: a forked child's ru_maxrss starts at its parent's high-water mark
        "import sys, json\n"
        "def hwm():\n"
        "    with open('/proc/self/status') as fh:\n"
        "        return int(next(x for x in fh if x.startswith('VmHWM')).split()[1])\n"
        "from cxr_viewer.core.io import read_image\n"
        "read_image(sys.argv[2])\n"  # warm every import on a good file first
        "open('/proc/self/clear_refs', 'w').write('5')\n"
        "base = hwm()\n"
        "try:\n    read_image(sys.argv[1]); outcome = 'ok'\n"
        "except Exception as exc:\n    outcome = type(exc).__name__\n"
        "print(json.dumps([outcome, base, hwm()]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(f), str(ok)], capture_output=True, text=True,
                         timeout=120, cwd=REPO, check=True)
    outcome, base_kb, peak_kb = json.loads(out.stdout.strip().splitlines()[-1])
    assert outcome == "ImageTooLargeError"
    assert (peak_kb - base_kb) < 50_000  # < 50 MB more than reading a 32 x 32 image (30000^2 would be 900 MB)


def test_frame_count_is_bounded_by_the_data(tmp_path: Path) -> None:
    f = _jpeg_dicom(tmp_path / "frames.dcm", frames=2**31 - 1)
    rec = read_image(f)
    assert rec.shape == (32, 32)
    assert any("2,147,483,647 frames" in n and "only 1" in n for n in rec.notices)
    native = make_dicom(tmp_path / "native.dcm", _gray().astype(np.uint16), NumberOfFrames=1_000_000)
    rec = read_image(native)
    assert rec.shape == (32, 32) and any("only 1 of its 1,000,000 frames" in n for n in rec.notices)


def test_decoded_bytes_are_capped(tmp_path: Path) -> None:
    import pydicom

    f = make_dicom(tmp_path / "wide.dcm", _gray().astype(np.uint16))
    ds = pydicom.dcmread(f)
    ds.Rows = ds.Columns = 9000  # 81 M pixels: under the pixel limit
    ds.BitsAllocated = ds.BitsStored = 64  # but 648 MB decoded
    ds.HighBit = 63
    ds.save_as(f)
    with pytest.raises(ImageTooLargeError, match="MB once decoded"):
        read_image(f)


# --------------------------------------------------------------------------- NaN and Inf
def _float_dicom(path: Path, arr: np.ndarray) -> Path:
    import pydicom

    make_dicom(path, None, Rows=arr.shape[0], Columns=arr.shape[1], SamplesPerPixel=1,
               PhotometricInterpretation="MONOCHROME2", BitsAllocated=32)
    ds = pydicom.dcmread(path)
    ds.FloatPixelData = arr.astype(np.float32).tobytes()
    ds.save_as(path)
    return path


def test_float_pixel_data_with_nan_and_inf_is_cleaned(tmp_path: Path) -> None:
    arr = np.linspace(0, 100, 256, dtype=np.float32).reshape(16, 16)
    arr[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    rec = read_image(_float_dicom(tmp_path / "f.dcm", arr))
    assert np.isfinite(rec.pixels).all() and np.isfinite(rec.model_pixels()).all()
    assert rec.pixels[0, 1] == pytest.approx(1.0) and rec.pixels[0, 0] == pytest.approx(0.0)  # +inf top, NaN bottom
    assert any("4 pixel value(s) are not numbers" in n for n in rec.notices)


def test_float_pixel_data_all_nan_is_refused(tmp_path: Path) -> None:
    f = _float_dicom(tmp_path / "f.dcm", np.full((16, 16), np.nan, np.float32))
    with pytest.raises(UnsupportedImageError, match="every value is NaN or infinite") as info:
        read_image(f)
    assert info.value.path == f


@pytest.mark.parametrize("width", ["1e300", "1e308"])
def test_absurd_window_width_is_ignored_with_notice(tmp_path: Path, width: str) -> None:
    f = make_dicom(tmp_path / "w.dcm", (np.arange(256).reshape(16, 16) * 16).astype(np.uint16), bits_stored=12,
                   WindowCenter=2000, WindowWidth=width)
    rec = read_image(f)
    assert rec.default_window is None
    assert np.isfinite(rec.model_pixels()).all()
    assert any("lies far outside its pixel values" in n and f"width {float(width):.4g}" in n for n in rec.notices)


def test_overflowing_rescale_is_refused(tmp_path: Path) -> None:
    f = make_dicom(tmp_path / "r.dcm", (np.arange(256).reshape(16, 16) * 16).astype(np.uint16), bits_stored=12,
                   RescaleSlope="1e308", RescaleIntercept="0")
    with pytest.raises(UnsupportedImageError, match="overflow"):
        read_image(f)


def test_float_tiff_with_nan_and_inf(tmp_path: Path) -> None:
    import tifffile

    arr = np.linspace(-5, 500, 64 * 64, dtype=np.float32).reshape(64, 64)
    arr[3, 3], arr[4, 4] = np.nan, np.inf
    tifffile.imwrite(tmp_path / "f.tif", arr)
    rec = read_image(tmp_path / "f.tif")
    assert np.isfinite(rec.pixels).all() and rec.pixels[4, 4] == pytest.approx(1.0)
    assert any("2 pixel value(s) are not numbers" in n for n in rec.notices)
    tifffile.imwrite(tmp_path / "nan.tif", np.full((8, 8), np.nan, np.float32))
    with pytest.raises(UnsupportedImageError, match="NaN or infinite"):
        read_image(tmp_path / "nan.tif")


def test_json_writer_refuses_nan() -> None:
    from cxr_viewer.core.jsonio import dumps, finite_or_none, non_finite_paths

    obj = {"findings": [{"score": 0.2}, {"score": float("nan")}], "x": np.float32("inf")}
    assert non_finite_paths(obj) == ["findings[1].score", "x"]
    with pytest.raises(ValueError, match=r"findings\[1\]\.score"):
        dumps(obj)
    assert json.loads(dumps(finite_or_none({"a": [float("inf"), 1.0]}))) == {"a": [None, 1.0]}


# --------------------------------------------------------------------------- pixel data vs header
@pytest.mark.parametrize("factor", [2, 3])
def test_pixel_data_longer_than_declared_is_refused(tmp_path: Path, factor: int) -> None:
    """16-bit pixels declared as 8-bit (data twice as long) were read as noise and scored; now refused."""
    import pydicom

    arr = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    f = make_dicom(tmp_path / "long.dcm", arr.astype(np.uint8))
    ds = pydicom.dcmread(f)
    ds.PixelData = np.tile(arr.astype(np.uint8).ravel(), factor).tobytes()
    ds.save_as(f)
    with pytest.raises(InconsistentImageError) as info:
        read_image(f)
    msg = info.value.message
    assert f"{32 * 32 * factor:,} bytes" in msg and "1,024" in msg and "disagree" in msg


def test_odd_length_padding_and_exact_frames_still_read(tmp_path: Path) -> None:
    import pydicom

    f = make_dicom(tmp_path / "odd.dcm", np.arange(5 * 5, dtype=np.uint8).reshape(5, 5))  # 25 bytes, padded to 26
    assert read_image(f).shape == (5, 5)
    two = np.stack([_gray(), _gray()[::-1]])
    g = make_dicom(tmp_path / "two.dcm", _gray())
    ds = pydicom.dcmread(g)
    ds.NumberOfFrames = 2
    ds.PixelData = two.tobytes()
    ds.save_as(g)
    rec = read_image(g)
    assert rec.shape == (32, 32) and any("2 frames" in n for n in rec.notices)


# --------------------------------------------------------------------------- messages name the cause
def test_decoder_tracebacks_go_to_our_debug_log_not_stderr(tmp_path: Path, dicom_dir: Path) -> None:
    """A stream libjpeg refuses (no Huffman tables) is logged by pydicom with a traceback; the user sees none."""
    code = (
        "import logging, sys, pydicom\n"
        "from pydicom.encaps import encapsulate, generate_frames\n"
        "logging.basicConfig(level=logging.WARNING, stream=sys.stderr)\n"
        "from cxr_viewer.core.io import read_image\n"
        "ds = pydicom.dcmread(sys.argv[1])\n"
        "jpg = next(generate_frames(ds.PixelData, number_of_frames=1))\n"
        "i = jpg.find(b'\\xff\\xc0'); n = int.from_bytes(jpg[i + 2:i + 4], 'big')\n"
        "ds.PixelData = encapsulate([jpg[:i + 2 + n] + b'\\xff\\xda\\x00\\x08\\x01\\x01\\x00\\x00\\x3f\\x00'"
        " + b'\\x55' * 500 + b'\\xff\\xd9'])\n"
        "ds.save_as(sys.argv[2])\n"
        "try:\n    read_image(sys.argv[2])\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
        "if len(sys.argv) > 3:\n"
        "    logging.getLogger('cxr_viewer').setLevel(logging.DEBUG)\n    read_image(sys.argv[2])\n"
    )
    src = str(next(dicom_dir.glob("siim_pneumothorax_*.dcm")))
    quiet = subprocess.run([sys.executable, "-c", code, src, str(tmp_path / "b.dcm")], capture_output=True,
                           text=True, timeout=120, cwd=REPO)
    assert quiet.returncode == 0, quiet.stderr
    assert "Traceback" not in quiet.stderr and "libjpeg" not in quiet.stderr
    verbose = subprocess.run([sys.executable, "-c", code, src, str(tmp_path / "b.dcm"), "-v"], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
    assert "DEBUG:cxr_viewer.core.io.decoders" in verbose.stderr and "libjpeg" in verbose.stderr


def test_dicom_cut_inside_its_preamble_is_not_called_tiff(tmp_path: Path) -> None:
    from cxr_viewer.core.io import read_header

    f = make_dicom(tmp_path / "d.dcm", _gray())
    data = bytearray(f.read_bytes())
    data[:4] = b"II*\x00"  # a dual-personality preamble: the file starts like a TIFF
    for cut in (8, 100, 131):
        g = tmp_path / f"cut{cut}.dcm"
        g.write_bytes(bytes(data[:cut]))
        for reader in (read_image, read_header):
            with pytest.raises(TruncatedFileError) as info:
                reader(g)
            assert "TIFF" not in info.value.message and f"only {cut} bytes" in info.value.message


@pytest.mark.parametrize(("tags", "words"), [
    ({"BitsStored": 0}, "BitsStored 0"),
    ({"BitsStored": 20}, "BitsStored 20"),
    ({"BitsAllocated": 12, "BitsStored": 12, "HighBit": 11}, "BitsAllocated 12"),
    ({"PhotometricInterpretation": "MONOCHROME3"}, "'MONOCHROME3'"),
    ({"SamplesPerPixel": 2}, "2 samples per pixel"),
])
def test_unsupported_values_are_called_unsupported(tmp_path: Path, tags: dict, words: str) -> None:
    import pydicom

    f = make_dicom(tmp_path / "u.dcm", _gray().astype(np.uint16), bits_stored=12)
    ds = pydicom.dcmread(f)
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.save_as(f)
    with pytest.raises(UnsupportedImageError) as info:
        read_image(f)
    msg = info.value.message
    assert words in msg and "does not support" in msg
    assert "damaged" not in msg and "cut short" not in msg


def test_unexpected_reader_errors_name_a_cause() -> None:
    """Refusals used to end in a bare exception name such as "(ValueError)" or "(RecursionError)"."""
    from cxr_viewer.core.io.reader import _cause

    assert "nests too deeply" in _cause(RecursionError())
    assert "value that cannot be interpreted" in _cause(ValueError("x"))
    assert "end early" in _cause(EOFError())
    assert all(_cause(e) for e in (KeyError(), ZeroDivisionError(), RuntimeError()))


@pytest.mark.parametrize("spacing", [["1e308", "1e308"], ["0", "0.2"], ["-0.1", "-0.1"], ["1e-9", "1e-9"]])
def test_nonsense_pixel_spacing_is_ignored_with_notice(tmp_path: Path, spacing: list[str]) -> None:
    f = make_dicom(tmp_path / "s.dcm", _gray(), PixelSpacing=spacing)
    rec = read_image(f)
    assert rec.spacing_mm is None
    note = next(n for n in rec.notices if "pixel spacing" in n)
    assert "not a plausible size" in note and len(note) < 200  # no 309-digit figure
    good = make_dicom(tmp_path / "g.dcm", _gray(), ImagerPixelSpacing=["0.2", "0.2"],
                      EstimatedRadiographicMagnificationFactor="1e308")
    assert read_image(good).spacing_mm == pytest.approx((0.2, 0.2))  # an absurd magnification is not applied


def test_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom inflates a Deflated Explicit VR dataset whole; the reader counts while inflating first."""
    import zlib

    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    import cxr_viewer.core.io.dicom as dicom

    f = make_dicom(tmp_path / "ok.dcm", _gray())
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(f)
    assert read_image(f).shape == (32, 32)  # a normal deflated file still reads
    # the same meta group followed by a deflate stream that unpacks to 20 MB of zeros
    data = f.read_bytes()
    meta = pydicom.filereader.read_file_meta_info(f)
    with open(f, "rb") as fh:
        pydicom.filereader.read_preamble(fh, force=True)
        pydicom.filereader._read_file_meta_info(fh)  # noqa: SLF001
        start = fh.tell()
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = b"".join(z.compress(b"\x00" * 1_000_000) for _ in range(20)) + z.flush()
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(data[:start] + body)
    assert bomb.stat().st_size < 100_000 and str(meta.TransferSyntaxUID) == DeflatedExplicitVRLittleEndian
    monkeypatch.setattr(dicom, "MAX_INFLATED_BYTES", 10_000_000)
    with pytest.raises(ImageTooLargeError, match="deflated contents grow past 10 MB"):
        read_image(bomb)


def test_a_text_file_named_png_is_named_for_what_it_is(tmp_path: Path) -> None:
    """A 32-byte note saved as .png is text, not a cut-short DICOM: the message says so (no talk of preambles)."""
    from cxr_viewer.core.errors import NotAnImageError
    from cxr_viewer.core.io import read_image

    for name, data in (("note.png", b"this is not an image, just text\n"), ("long.dcm", b"patient notes\n" * 400)):
        f = tmp_path / name
        f.write_bytes(data)
        with pytest.raises(NotAnImageError) as exc:
            read_image(f)
        assert "plain text" in exc.value.message and "preamble" not in exc.value.message
        assert f"{len(data):,} bytes" in exc.value.message
    short_binary = tmp_path / "cut.dcm"
    short_binary.write_bytes(bytes(range(32)))  # binary and short: still the cut-short message
    with pytest.raises(Exception) as exc:
        read_image(short_binary)
    assert "plain text" not in str(exc.value)
