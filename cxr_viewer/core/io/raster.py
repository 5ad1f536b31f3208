"""PNG / JPEG / TIFF radiographs -> :class:`ImageRecord`.

Exported radiographs arrive as 8-bit grayscale, 16-bit grayscale (often holding
only 10-14 significant bits), RGB copies of grayscale, palette images, or images
with an alpha channel. All become float32 [0, 1] grayscale with a notice saying
what was changed. The declared size is checked before any pixel is decoded.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np

from cxr_viewer.core.errors import (
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedFileError,
    UnsupportedImageError,
)
from cxr_viewer.core.io.dicom import blank_metadata
from cxr_viewer.core.io.record import ImageRecord

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000


def read_raster(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, fmt: str | None = None) -> ImageRecord:
    """Read a PNG, JPEG or TIFF file as a grayscale record (first page of a multi-page TIFF)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise EmptyFileError(f"The file {path.name} is empty (0 bytes). Copy or export it again.", path=path)
    except FileNotFoundError:
        raise ImageReadError(f"The file {path.name} does not exist (was it moved or deleted?).", path=path) from None

    notices: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                fmt = fmt or (im.format or "").lower()
                _check_size(im.size, max_pixels, path)
                if fmt == "tiff" and _needs_tifffile(im):
                    return _read_tiff_fallback(path, max_pixels, notices)
                frames = int(getattr(im, "n_frames", 1) or 1)
                if frames > 1:
                    notices.append(f"This file holds {frames} pages; showing the first.")
                arr, mode_notices, top = _pil_to_gray(im)
                notices.extend(mode_notices)
    except Image.DecompressionBombError as exc:  # Pillow's own guard fired before ours could
        m = re.search(r"\((\d+) pixels\)", str(exc))
        claimed = f" of {int(m.group(1)):,} pixels" if m else ""
        raise ImageTooLargeError(
            f"The image {path.name} declares a size{claimed}, far larger than any radiograph "
            f"(limit {max_pixels:,} pixels). The file is probably damaged.",
            path=path,
        ) from None
    except UnidentifiedImageError:
        if fmt == "tiff":
            return _read_tiff_fallback(path, max_pixels, notices)
        raise NotAnImageError(
            f"The file {path.name} is not a readable PNG, JPEG or TIFF image.", path=path
        ) from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if fmt == "tiff" and not isinstance(exc, EOFError):
            return _read_tiff_fallback(path, max_pixels, notices)
        raise TruncatedFileError(
            f"The image {path.name} is damaged or cut short and cannot be read completely. "
            "Copy or export it again.",
            path=path,
        ) from exc
    return _record(arr, path, fmt or "png", notices, top)


def _check_size(size: tuple[int, int], max_pixels: int, path: Path) -> None:
    width, height = int(size[0]), int(size[1])
    if width <= 0 or height <= 0:
        raise NotAnImageError(f"The image {path.name} declares an empty size ({width} x {height}).", path=path)
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"The image {path.name} declares {width} x {height} pixels, far larger than any radiograph "
            f"(limit {max_pixels:,} pixels). The file is probably damaged.",
            path=path,
        )


def _needs_tifffile(im: "object") -> bool:
    """Pillow reads 16-bit colour TIFF as 8-bit RGB (losing bits); tifffile keeps them."""
    bits = getattr(im, "tag_v2", {}).get(258)  # BitsPerSample
    try:
        deepest = max(bits) if isinstance(bits, tuple) else int(bits or 8)
    except (TypeError, ValueError):
        return False
    return deepest > 8 and not (im.mode.startswith("I") or im.mode == "F")


def _pil_to_gray(im: "object") -> tuple[np.ndarray, list[str], float | None]:
    """A Pillow image -> (2-D array of intensities as float32 in [0, 1]), notices, and the stored value that 1.0
    stands for (255 for 8-bit, 2**bits - 1 for 16-bit; None when the values were stretched over their own range)."""
    from PIL import ImageOps

    notices: list[str] = []
    transposed = ImageOps.exif_transpose(im)
    if transposed is not None and transposed is not im:
        if transposed.size != im.size or getattr(im, "getexif", None) and im.getexif().get(0x0112, 1) != 1:
            notices.append("Rotated as the file's EXIF orientation asks.")
        im = transposed
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
        mode = "RGBA"
        palette_note = True
    else:
        palette_note = False
    if mode == "1":
        arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        return arr, ["Black-and-white (1-bit) image."], 255.0
    if mode in ("L", "LA"):
        arr = np.asarray(im, dtype=np.uint8)
        if mode == "LA":
            arr, note = _drop_alpha(arr[..., 0].astype(np.float32), arr[..., 1])
            notices.extend(note)
            return arr / 255.0, notices, 255.0
        return _scaled(arr, 255.0), notices, 255.0
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "I" and arr.size and (arr.min() < 0 or arr.max() > 65535):
            return _minmax(arr.astype(np.float64), notices), notices, None
        if mode == "F":
            return _minmax(arr.astype(np.float64), notices), notices, None
        return scale_16bit(arr), notices, _top_16bit(arr)
    if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        if mode not in ("RGB", "RGBA"):
            im = im.convert("RGB")
        arr = np.asarray(im, dtype=np.uint8)
        alpha = arr[..., 3] if arr.shape[-1] == 4 else None
        rgb = arr[..., :3]
        gray = _rgb_to_gray(rgb, notices, palette_note)
        if alpha is not None:
            gray, note = _drop_alpha(gray, alpha)
            notices.extend(note)
        return gray / 255.0, notices, 255.0
    raise UnsupportedImageError(f"Images with pixel mode '{mode}' are not supported.")


def _rgb_to_gray(rgb: np.ndarray, notices: list[str], palette: bool) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):
        if palette:
            notices.append("Palette image with gray colours: read as grayscale.")
        return r.astype(np.float32)
    kind = "Palette colour" if palette else "Colour"
    notices.append(f"{kind} image: converted to grayscale (luminance).")
    return r.astype(np.float32) * 0.299 + g.astype(np.float32) * 0.587 + b.astype(np.float32) * 0.114


def _drop_alpha(gray: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Transparent regions are shown black (no density); opaque alpha is ignored silently."""
    if alpha.min() == 255:
        return gray, []
    return gray * (alpha.astype(np.float32) / 255.0), ["Transparent parts of the image are shown black."]


def scale_16bit(arr: np.ndarray) -> np.ndarray:
    """Scale unsigned integers by the bit depth they actually use.

    A 12-bit detector image stored in a 16-bit PNG holds values up to 4095; dividing
    by 65535 would make it nearly black, so the divisor is the smallest ``2**n - 1``
    (n >= 8) that covers the maximum.
    """
    return _scaled(np.asarray(arr), _top_16bit(arr))


def _top_16bit(arr: np.ndarray) -> float:
    """The smallest ``2**n - 1`` (n >= 8) that covers the array's maximum: what 1.0 stands for."""
    arr = np.asarray(arr)
    top = int(arr.max()) if arr.size else 0
    return float((1 << max(8, top.bit_length())) - 1)


def _scaled(arr: np.ndarray, top: float) -> np.ndarray:
    """``arr / top`` as float32, divided in place: one full-size float copy, not two."""
    out = arr.astype(np.float32)
    out /= np.float32(top)
    return out


def _minmax(arr: np.ndarray, notices: list[str] | None = None) -> np.ndarray:
    """Any numeric array -> [0, 1] over its own range; NaN/Inf cleaned (with a notice), never passed on."""
    finite = np.isfinite(arr)
    if not finite.all():
        if not finite.any():
            raise UnsupportedImageError(
                "The image holds no usable pixel values: every value is NaN or infinite."
            )
        lo, hi = float(arr[finite].min()), float(arr[finite].max())
        if notices is not None:
            bad = int(arr.size - np.count_nonzero(finite))
            notices.append(f"{bad:,} pixel value(s) are not numbers (NaN or infinite): NaN and -inf are shown "
                           "as the lowest value, +inf as the highest.")
        arr = np.nan_to_num(arr, nan=lo, posinf=hi, neginf=lo)
    if not arr.size:
        return np.zeros(arr.shape, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float32)
    if not np.isfinite(hi - lo):  # a range wider than float64 holds
        arr, lo, hi = arr * 0.5, lo * 0.5, hi * 0.5
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _read_tiff_fallback(path: Path, max_pixels: int, notices: list[str]) -> ImageRecord:
    """TIFF variants Pillow cannot decode (16-bit RGB, float, some compressions) via tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = tuple(int(s) for s in page.shape)
            height, width = shape[0], shape[1]
            _check_size((width, height), max_pixels, path)
            if len(tif.pages) > 1:
                notices.append(f"This file holds {len(tif.pages)} pages; showing the first.")
            arr = page.asarray()
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise TruncatedFileError(
            f"The TIFF image {path.name} is damaged or in a form that cannot be read.", path=path
        ) from exc
    arr = np.asarray(arr)
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4):
            if np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]):
                arr = arr[..., 0]
            else:
                notices.append("Colour image: converted to grayscale (luminance).")
                lum = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
                arr = np.rint(lum).astype(arr.dtype) if arr.dtype.kind == "u" else lum
        else:
            arr = arr[0]
    if arr.ndim != 2:
        raise UnsupportedImageError(f"The TIFF image {path.name} has an unsupported layout {arr.shape}.", path=path)
    top: float | None = None
    if arr.dtype.kind == "u":
        top = 255.0 if arr.dtype.itemsize == 1 else _top_16bit(arr)
        gray = _scaled(arr, top)
    else:
        if arr.dtype.kind == "f" and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1:
            gray = arr.astype(np.float32)
        else:
            gray = _minmax(arr.astype(np.float64), notices)
    return _record(gray, path, "tiff", notices, top)


def _record(arr: np.ndarray, path: Path, fmt: str, notices: list[str], top: float | None = None) -> ImageRecord:
    """``top``: the stored value 1.0 stands for; recorded as ``value_range`` so window/level and the pixel
    readout speak the file's own units (0-255 for 8-bit, stored values for 16-bit)."""
    fmt = {"jpg": "jpeg", "mpo": "jpeg", "tif": "tiff"}.get(fmt, fmt)
    pixels = np.asarray(arr, dtype=np.float32)  # the reader's own array: clipped in place, no copy
    np.clip(pixels, 0.0, 1.0, out=pixels)
    h, w = pixels.shape
    log.debug("read a %s image: %dx%d", fmt, h, w)
    return ImageRecord(
        pixels=np.ascontiguousarray(pixels),
        source=path,
        format=fmt,
        metadata={**blank_metadata(), "rows": h, "columns": w,
                  **({"value_range": (0.0, float(top))} if top else {})},
        notices=tuple(notices),
    )
