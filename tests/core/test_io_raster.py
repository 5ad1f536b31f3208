"""PNG / JPEG / TIFF reading and the bad files a radiologist may drop on the viewer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_viewer.core.errors import (
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedFileError,
)
from cxr_viewer.core.io import SUPPORTED_SUFFIXES, read_image


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 255 // (h * w - 1)).astype(np.uint8)


def test_real_nih_png(data_dir: Path) -> None:
    f = data_dir / "nih14" / "originals" / "00000075_000.png"
    rec = read_image(f)
    assert rec.format == "png" and rec.shape == (1024, 1024)
    assert rec.pixels.dtype == np.float32 and 0.0 <= rec.pixels.min() < rec.pixels.max() <= 1.0
    expected = np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0
    assert np.allclose(rec.pixels, expected, atol=1e-6)
    assert rec.default_window is None and rec.spacing_mm is None


def test_8bit_png_keeps_its_scale(tmp_path: Path) -> None:
    arr = (_gradient() // 2 + 60).astype(np.uint8)  # 60..187: must not be stretched
    Image.fromarray(arr).save(tmp_path / "a.png")
    rec = read_image(tmp_path / "a.png")
    assert np.allclose(rec.pixels, arr / 255.0, atol=1e-6)
    assert rec.notices == ()


def test_16bit_png_with_12_bits_is_not_black(tmp_path: Path) -> None:
    arr = (np.arange(48 * 64).reshape(48, 64) * 4095 // (48 * 64 - 1)).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode.startswith("I")
    rec = read_image(tmp_path / "b.png")
    assert rec.pixels.max() == pytest.approx(1.0)  # 4095 is white, not 1/16 grey
    assert np.allclose(rec.pixels, arr / 4095.0, atol=1e-6)
    full = (arr.astype(np.uint32) * 16).astype(np.uint16)  # the same image using all 16 bits
    Image.fromarray(full).save(tmp_path / "c.png")
    assert np.allclose(read_image(tmp_path / "c.png").pixels, full / 65535.0, atol=1e-6)


def test_rgb_jpeg_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (0, 0, 200)  # blue left
    rgb[:, 32:] = (255, 255, 255)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=98)
    rec = read_image(tmp_path / "c.jpg")
    assert rec.format == "jpeg" and rec.shape == (48, 64)
    assert rec.pixels[:, :28].mean() == pytest.approx(0.114 * 200 / 255, abs=0.03)
    assert rec.pixels[:, 36:].mean() == pytest.approx(1.0, abs=0.01)
    assert any("luminance" in n for n in rec.notices)


def test_gray_stored_as_rgb_is_silent(tmp_path: Path) -> None:
    g = _gradient()
    Image.fromarray(np.stack([g, g, g], axis=-1)).save(tmp_path / "g.png")
    rec = read_image(tmp_path / "g.png")
    assert np.allclose(rec.pixels, g / 255.0, atol=1e-6) and rec.notices == ()


def test_palette_png(tmp_path: Path) -> None:
    g = _gradient() // 16 * 16
    im = Image.fromarray(g).convert("P")
    assert im.mode == "P"
    im.save(tmp_path / "p.png")
    rec = read_image(tmp_path / "p.png")
    assert np.allclose(rec.pixels, g / 255.0, atol=1e-6)
    assert any("Palette" in n for n in rec.notices)


def test_alpha_png(tmp_path: Path) -> None:
    g = _gradient()
    alpha = np.full_like(g, 255)
    Image.fromarray(np.stack([g, alpha], -1), mode="LA").save(tmp_path / "opaque.png")
    rec = read_image(tmp_path / "opaque.png")
    assert np.allclose(rec.pixels, g / 255.0, atol=1e-6) and rec.notices == ()
    alpha[:, :10] = 0
    Image.fromarray(np.stack([g, alpha], -1), mode="LA").save(tmp_path / "holes.png")
    rec = read_image(tmp_path / "holes.png")
    assert rec.pixels[:, :10].max() == 0.0 and any("Transparent" in n for n in rec.notices)


def test_16bit_tiff(tmp_path: Path) -> None:
    import tifffile

    arr = (np.arange(48 * 64).reshape(48, 64) * 16383 // (48 * 64 - 1)).astype(np.uint16)  # 14-bit detector
    tifffile.imwrite(tmp_path / "t.tif", arr)
    rec = read_image(tmp_path / "t.tif")
    assert rec.format == "tiff" and np.allclose(rec.pixels, arr / 16383.0, atol=1e-6)
    rgb16 = np.stack([arr, arr, arr], -1)  # 16-bit RGB: Pillow cannot, tifffile can
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    rec = read_image(tmp_path / "rgb16.tif")
    assert np.allclose(rec.pixels, arr / 16383.0, atol=1e-6) and rec.notices == ()


def test_multipage_tiff_first_page(tmp_path: Path) -> None:
    pages = [Image.fromarray(_gradient()), Image.fromarray(np.zeros((48, 64), np.uint8))]
    pages[0].save(tmp_path / "m.tiff", save_all=True, append_images=pages[1:])
    rec = read_image(tmp_path / "m.tiff")
    assert rec.pixels.max() > 0.9 and any("2 pages" in n for n in rec.notices)


def test_content_wins_over_extension(tmp_path: Path) -> None:
    Image.fromarray(_gradient()).save(tmp_path / "x.png")
    renamed = tmp_path / "really_a_png.dcm"
    renamed.write_bytes((tmp_path / "x.png").read_bytes())
    assert read_image(renamed).format == "png"
    jpeg_as_png = tmp_path / "j.png"
    Image.fromarray(_gradient()).save(jpeg_as_png, format="JPEG")
    assert read_image(jpeg_as_png).format == "jpeg"


def test_unicode_path(tmp_path: Path) -> None:
    folder = tmp_path / "Ströme_胸部"
    folder.mkdir()
    f = folder / "Ströme_胸部.png"
    Image.fromarray(_gradient()).save(f)
    rec = read_image(f)
    assert rec.source == f and rec.shape == (48, 64)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    im = Image.fromarray(_gradient(40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / "o.jpg", exif=exif)
    rec = read_image(tmp_path / "o.jpg")
    assert rec.shape == (60, 40) and any("EXIF" in n for n in rec.notices)


# --------------------------------------------------------------------------- bad files
@pytest.mark.parametrize("name", ["empty.dcm", "empty.png", "empty.jpg", "empty"])
def test_empty_files(tmp_path: Path, name: str) -> None:
    f = tmp_path / name
    f.write_bytes(b"")
    with pytest.raises(EmptyFileError, match="empty"):
        read_image(f)


@pytest.mark.parametrize("name", ["notes.dcm", "notes.png", "notes.jpg", "notes.tif"])
def test_text_file_with_image_extension(tmp_path: Path, name: str) -> None:
    f = tmp_path / name
    f.write_text("Findings: no acute cardiopulmonary process.\n" * 20, encoding="utf-8")
    with pytest.raises(NotAnImageError) as info:
        read_image(f)
    assert "not a DICOM, PNG, JPEG or TIFF" in info.value.message and info.value.path == f


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_raster(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 255, (256, 256), dtype=np.uint8)  # incompressible: cutting loses pixels
    f = tmp_path / f"cut.{fmt.lower()}"
    Image.fromarray(noisy).save(f, format=fmt)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match="cut short"):
        read_image(f)


def test_corrupt_png_header(tmp_path: Path) -> None:
    f = tmp_path / "bad.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ImageReadError):
        read_image(f)


def test_png_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    """A PNG whose header claims 50000 x 50000 pixels is refused from the header alone."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1000)
    f = tmp_path / "bomb.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    with pytest.raises(ImageTooLargeError, match="2,500,000,000 pixels"):
        read_image(f)
    Image.fromarray(_gradient()).save(tmp_path / "small.png")
    with pytest.raises(ImageTooLargeError):
        read_image(tmp_path / "small.png", max_pixels=1000)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


def test_supported_suffixes() -> None:
    assert {".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"} <= set(SUPPORTED_SUFFIXES)
    assert all(s.startswith(".") and s == s.lower() for s in SUPPORTED_SUFFIXES)
