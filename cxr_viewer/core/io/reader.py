"""The one front door for reading a radiograph file: dispatch on content."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from cxr_viewer.core.errors import (
    CXRError,
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
    TruncatedFileError,
)
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.io.sniff import HEAD_BYTES, sniff_bytes

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Read a DICOM, PNG, JPEG or TIFF file, whatever its name says, as an :class:`ImageRecord`.

    Raises a subclass of :class:`~cxr_viewer.core.errors.ImageReadError` whose message
    says what is wrong with the file; never anything else for bad input.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError(f"{path.name} is a folder; open it as a folder to list its studies.", path=path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except FileNotFoundError:
        raise ImageReadError(f"The file {path.name} does not exist (was it moved or deleted?).", path=path) from None
    except PermissionError:
        raise ImageReadError(f"You have no permission to read {path.name}.", path=path) from None
    except OSError as exc:
        raise ImageReadError(f"The file {path.name} cannot be opened: {exc.strerror or exc}.", path=path) from exc
    if not head:
        raise EmptyFileError(f"The file {path.name} is empty (0 bytes). Copy or export it again.", path=path)
    kind = sniff_bytes(head)
    if kind is None and _is_text(head):
        raise NotAnImageError(
            f"The file {path.name} holds plain text ({path.stat().st_size:,} bytes), not an image: it is not a "
            "DICOM, PNG, JPEG or TIFF file, whatever its name says.",
            path=path,
        )
    if kind in (None, "tiff") and len(head) < HEAD_BYTES:  # a DICOM cut inside its preamble may look like TIFF
        from cxr_viewer.core.io.dicom import too_short_message

        raise TruncatedFileError(too_short_message(path, len(head)), path=path)
    if kind is None:
        raise NotAnImageError(
            f"The file {path.name} is not a DICOM, PNG, JPEG or TIFF image "
            "(its contents do not match any of these formats, whatever its name says).",
            path=path,
        )
    try:
        with warnings.catch_warnings():
            # pydicom and Pillow warn about odd values while parsing; our notices say what matters
            warnings.simplefilter("ignore", UserWarning)
            if kind == "dicom":
                from cxr_viewer.core.io.dicom import read_dicom

                return read_dicom(path, max_pixels=max_pixels)
            from cxr_viewer.core.io.raster import read_raster

            return read_raster(path, max_pixels=max_pixels, fmt=kind)
    except CXRError as exc:
        if exc.path is None:  # raised by a helper that does not know the file
            exc.path = path
        raise
    except MemoryError:
        raise ImageTooLargeError(
            f"There is not enough memory to open {path.name}. Close other images or programs and try again.",
            path=path,
        ) from None
    except Exception as exc:  # noqa: BLE001 - damaged files reach library code paths in endless ways
        log.debug("unexpected %s while reading a %s file", type(exc).__name__, kind, exc_info=True)
        raise ImageReadError(
            f"The {kind.upper()} file {path.name} cannot be read: {_cause(exc)}. Copy or export it again "
            f"(reader error: {type(exc).__name__}).",
            path=path,
        ) from exc


def _cause(exc: BaseException) -> str:
    """What an unexpected library exception means for the file, in words (its text may hold header values,
    so it is not echoed: it goes to the debug log only)."""
    if isinstance(exc, RecursionError):
        return "its structure nests too deeply (a damaged or crafted file)"
    if isinstance(exc, (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError)):
        return "it holds a value that cannot be interpreted (damaged or written by faulty software)"
    if isinstance(exc, (EOFError, OSError)):
        return "its contents end early or cannot be read from the disk"
    if isinstance(exc, (ZeroDivisionError, ArithmeticError)):
        return "its header gives sizes that do not add up"
    return "the reader met a form of the file it does not handle"


def _is_text(head: bytes) -> bool:
    """Whether the first bytes read as text (UTF-8, printable or white space): a note, a CSV, a report."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        try:  # the head may end inside a multi-byte character
            text = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return bool(text.strip()) and all(c.isprintable() or c in "\r\n\t\f" for c in text)
