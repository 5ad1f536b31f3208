"""DICOM radiographs -> :class:`ImageRecord`, as small pure steps.

The order follows the DICOM grayscale pipeline (PS3.4 N.2.1): stored values ->
modality LUT (PS3.3 C.11.1) -> VOI LUT / window (PS3.3 C.11.2) -> presentation
(MONOCHROME1 means "bright = low value", PS3.3 C.7.6.3.1.2). We apply the modality
LUT and the MONOCHROME1 inversion to the pixels and keep the VOI window apart as
``ImageRecord.default_window`` so the display can re-window the full range.

Every size check happens before pixel data is decoded, so a header claiming an
absurd image cannot make us allocate it.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import warnings
from collections.abc import Iterator, MutableSequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import (
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    InconsistentImageError,
    MissingDecoderError,
    NoPixelDataError,
    NotAnImageError,
    TruncatedFileError,
    UnsupportedImageError,
)
from cxr_viewer.core.io.record import ImageRecord

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)


class _DebugRelay(logging.Handler):
    """Re-emit a library's records (decoder tracebacks included) as DEBUG records of one of our loggers."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__(logging.DEBUG)
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        if self.target.isEnabledFor(logging.DEBUG):
            relayed = logging.makeLogRecord({**record.__dict__, "name": self.target.name, "levelno": logging.DEBUG,
                                             "levelname": "DEBUG", "msg": f"[{record.name}] {record.getMessage()}",
                                             "args": None})
            self.target.handle(relayed)


def route_pydicom_logs() -> None:
    """pydicom logs every failed decoder plugin with a traceback at ERROR; our reader turns the failure into a
    clear message, so those records go to our log at debug level instead of the user's terminal."""
    lib = logging.getLogger("pydicom")
    if any(isinstance(h, _DebugRelay) for h in lib.handlers):
        return
    lib.addHandler(_DebugRelay(logging.getLogger("cxr_viewer.core.io.decoders")))
    lib.propagate = False


route_pydicom_logs()

DEFAULT_MAX_PIXELS = 100_000_000
#: Decoded bytes of the one frame we read, at most (100 M pixels of 32-bit data).
DEFAULT_MAX_DECODED_BYTES = 400_000_000
#: A Deflated Explicit VR dataset (PS3.5 A.5) may inflate to at most this (the pixels plus a generous header).
MAX_INFLATED_BYTES = DEFAULT_MAX_DECODED_BYTES + 64_000_000
#: How far into a compressed frame its header (SOF / SIZ) is looked for.
_STREAM_HEAD_BYTES = 1 << 20
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_DATA_TAG_BYTES = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian

#: pip packages that decode each compressed transfer syntax (in order of preference).
_DECODER_PACKAGES: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.50": ("pylibjpeg-libjpeg", "pillow"),  # JPEG baseline
    "1.2.840.10008.1.2.4.51": ("pylibjpeg-libjpeg",),  # JPEG extended 12-bit
    "1.2.840.10008.1.2.4.57": ("pylibjpeg-libjpeg",),  # JPEG lossless
    "1.2.840.10008.1.2.4.70": ("pylibjpeg-libjpeg",),  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80": ("pyjpegls", "pylibjpeg-libjpeg"),  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": ("pyjpegls", "pylibjpeg-libjpeg"),  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": ("pylibjpeg-openjpeg",),  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": ("pylibjpeg-openjpeg",),  # JPEG 2000
    "1.2.840.10008.1.2.4.201": ("pylibjpeg-openjpeg",),  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": ("pylibjpeg-openjpeg",),  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": ("pylibjpeg-openjpeg",),  # HTJ2K
    "1.2.840.10008.1.2.5": ("pylibjpeg-rle",),  # RLE lossless
}

#: Header tags the folder scan and the metadata panel need (read without pixels).
HEADER_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate",
    "StudyTime", "StudyDescription", "SeriesDescription", "SeriesNumber", "InstanceNumber",
    "AccessionNumber", "Modality", "ViewPosition", "BodyPartExamined", "PatientName", "PatientID",
    "PatientSex", "PatientAge", "PatientBirthDate", "Manufacturer", "Rows", "Columns",
    "NumberOfFrames", "PhotometricInterpretation", "BitsStored",
)


# --------------------------------------------------------------------------- reading
def read_dicom(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageRecord:
    """Read the first frame of a DICOM file as an :class:`ImageRecord`."""
    path = Path(path)
    ds = _dcmread(path, stop_before_pixels=False)
    notices: list[str] = []

    pixel_kw = next((kw for kw in _PIXEL_KEYWORDS if kw in ds), None)
    if pixel_kw is None:
        if _file_contains(path, _PIXEL_DATA_TAG_BYTES):
            raise TruncatedFileError(
                f"The DICOM file {path.name} is cut short: its image data ends early. "
                "Copy or export it again from the PACS.",
                path=path,
            )
        raise NoPixelDataError(_no_pixels_message(ds, path), path=path)

    check_frame_size(ds, max_pixels, path)
    check_pixel_format(ds, path, pixel_kw)
    check_transfer_syntax(ds, path)
    if pixel_kw == "PixelData":
        check_decoder(ds, path)
        check_native_length(ds, path, notices)
        check_encapsulated(ds, path, max_pixels, notices)

    frames = number_of_frames(ds)
    if frames > 1:
        notices.append(f"This file holds {frames} frames; showing the first.")

    stored = decode_first_frame(ds, path)
    values, value_notices = stored_to_values(stored, ds)
    notices.extend(value_notices)
    values, finite_note = finite_values(values, path)
    if finite_note:
        notices.append(finite_note)

    lo, hi = float(values.min()), float(values.max())
    window_vals, window_note = voi_window(ds, values)
    if window_note:
        notices.append(window_note)

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    invert = photometric == "MONOCHROME1"
    if not invert and photometric == "MONOCHROME2" and str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        invert = True
        notices.append("The file asks for an inverted display (Presentation LUT INVERSE); inverted so bone is bright.")
    elif invert:
        notices.append("MONOCHROME1 image (bright = low value): inverted so bone is bright.")

    pixels = normalise(values, lo, hi, invert=invert)
    default_window = None
    if window_vals is not None and hi > lo:
        default_window = values_window_to_unit(window_vals, lo, hi, invert=invert)
        c, w = default_window
        if not (np.isfinite(c) and np.isfinite(w)) or w > _MAX_WINDOW_SPAN or abs(c) > _MAX_WINDOW_SPAN:
            default_window = None
            centers, widths = _multi(ds.get("WindowCenter")), _multi(ds.get("WindowWidth"))
            given = f" (centre {_g(centers[0])}, width {_g(widths[0])})" if centers and widths else ""
            notices.append(f"The file's window{given} lies far outside its pixel values; showing the full range.")

    spacing, spacing_source, spacing_note = pixel_spacing(ds)
    if spacing_note:
        notices.append(spacing_note)

    metadata = header_metadata(ds)
    # The modality-LUT value range behind [0, 1]: lets the display speak the file's own units.
    metadata["value_range"] = (lo, hi)
    metadata["value_inverted"] = invert
    for kw in _PIXEL_KEYWORDS:
        if kw in ds:
            del ds[kw]
    log.debug("read a DICOM image: %dx%d, %s", pixels.shape[0], pixels.shape[1], photometric)
    return ImageRecord(
        pixels=pixels,
        source=path,
        format="dicom",
        spacing_mm=spacing,
        spacing_source=spacing_source,
        default_window=default_window,
        metadata=metadata,
        notices=tuple(notices),
        header=ds,
    )


def read_header(path: str | Path, *, specific_tags: list[str] | None = None) -> "Dataset":
    """Header of a DICOM file without its pixel data (fast; for scans and the tag browser)."""
    from cxr_viewer.core.io.sniff import sniff_file

    from cxr_viewer.core.io.sniff import HEAD_BYTES

    path = Path(path)
    try:
        kind = sniff_file(path)
    except OSError:
        kind = "dicom"  # let _dcmread report the missing or unreadable file
    if kind in (None, "tiff") and path.exists() and 0 < path.stat().st_size < HEAD_BYTES:
        raise TruncatedFileError(too_short_message(path, path.stat().st_size), path=path)
    if kind != "dicom" and path.exists() and path.stat().st_size > 0:
        what = f"a {kind.upper()} image" if kind else "not a DICOM file"
        raise NotAnImageError(f"The file {path.name} is {what}, so it has no DICOM header.", path=path)
    return _dcmread(path, stop_before_pixels=True, specific_tags=specific_tags)


class _RedactFileNames(logging.Filter):
    """Keeps the names of files being read out of pydicom's log records: they often carry patient names or IDs."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._names: dict[str, int] = {}

    @contextmanager
    def reading(self, path: Path) -> Iterator[None]:
        parts = [str(path), str(path.absolute()), path.name, path.parent.name]
        names = sorted({p for p in parts if len(p) >= 3}, key=len, reverse=True)
        with self._lock:
            for n in names:
                self._names[n] = self._names.get(n, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for n in names:
                    self._names[n] -= 1
                    if not self._names[n]:
                        del self._names[n]

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            names = sorted(self._names, key=len, reverse=True)
        if names:
            msg = record.getMessage()
            for n in names:
                msg = msg.replace(n, "<file>")
            record.msg, record.args = msg, ()
        return True


_REDACT = _RedactFileNames()
logging.getLogger("pydicom").addFilter(_REDACT)


def _dcmread(path: Path, *, stop_before_pixels: bool, specific_tags: list[str] | None = None) -> "Dataset":
    with _REDACT.reading(path):
        return _dcmread_unlogged(path, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags)


def _dcmread_unlogged(path: Path, *, stop_before_pixels: bool, specific_tags: list[str] | None) -> "Dataset":
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageReadError(f"The file {path.name} does not exist (was it moved or deleted?).", path=path) from None
    except OSError as exc:
        raise ImageReadError(f"The file {path.name} cannot be opened: {exc.strerror or exc}.", path=path) from exc
    if size == 0:
        raise EmptyFileError(f"The file {path.name} is empty (0 bytes). Copy or export it again.", path=path)
    check_inflated_size(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(
                path, force=True, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags
            )
    except InvalidDicomError as exc:
        raise NotAnImageError(f"The file {path.name} is not a DICOM image.", path=path) from exc
    except RecursionError:
        raise UnsupportedImageError(
            f"The DICOM file {path.name} cannot be read: its header nests sequences inside sequences too deeply "
            "(far beyond any real image; the file is damaged or crafted).",
            path=path,
        ) from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, struct_error()) as exc:
        if isinstance(exc, PermissionError):
            raise ImageReadError(f"You have no permission to read {path.name}.", path=path) from exc
        raise TruncatedFileError(
            f"The DICOM file {path.name} is damaged or cut short and cannot be read. "
            "Copy or export it again from the PACS.",
            path=path,
        ) from exc


def check_inflated_size(path: Path) -> None:
    """pydicom inflates a Deflated Explicit VR dataset whole, unbounded: a 1 MB file could become gigabytes.
    Inflate it here first, in chunks and counting, and refuse it once it passes :data:`MAX_INFLATED_BYTES`."""
    import zlib

    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble
    except ImportError:  # pragma: no cover - pydicom moved its helpers; dcmread still reads the file
        return
    with open(path, "rb") as fh:
        try:
            read_preamble(fh, force=True)
            meta = _read_file_meta_info(fh)
        except Exception:  # noqa: BLE001 - no readable meta group: dcmread reports the file as it is
            return
        if str(meta.get("TransferSyntaxUID", "")).strip() != "1.2.840.10008.1.2.1.99":
            return
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total, chunk = 0, fh.read(1 << 20)
        while chunk and not inflater.eof:
            try:
                total += len(inflater.decompress(chunk, 1 << 22))
            except zlib.error:
                return  # damaged: dcmread says so
            if total > MAX_INFLATED_BYTES:
                raise ImageTooLargeError(
                    f"The DICOM file {path.name} is {path.stat().st_size:,} bytes but its deflated contents grow "
                    f"past {MAX_INFLATED_BYTES / 1e6:,.0f} MB when unpacked, more than any radiograph needs. "
                    "It was not opened; the file is damaged or crafted.",
                    path=path,
                )
            chunk = inflater.unconsumed_tail or fh.read(1 << 20)


def too_short_message(path: Path, size: int) -> str:
    """A file cut inside the first 132 bytes: a DICOM preamble may look like a TIFF header, so say what we know."""
    return (f"The file {path.name} is only {size} bytes long: too short to be a DICOM file (which begins with "
            "132 bytes of preamble and 'DICM') or to hold a radiograph. It is cut short; copy or export it again.")


def struct_error() -> type[Exception]:
    import struct

    return struct.error


def _file_contains(path: Path, needle: bytes) -> bool:
    try:
        with open(path, "rb") as fh:
            return needle in fh.read()
    except OSError:
        return False


def _no_pixels_message(ds: "Dataset", path: Path) -> str:
    kind = ""
    try:
        from pydicom.uid import UID

        sop = ds.get("SOPClassUID")
        if sop:
            kind = f" (a '{UID(str(sop)).name}' object)"
    except Exception:  # noqa: BLE001 - a naming nicety only
        kind = ""
    return (
        f"The DICOM file {path.name}{kind} holds no image pixels: it may be a report, a "
        "presentation state or a file that was cut short. Open the image file of the study instead."
    )


# --------------------------------------------------------------------------- checks
def number_of_frames(ds: "Dataset") -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def check_frame_size(ds: "Dataset", max_pixels: int, path: Path) -> None:
    """Refuse an image whose declared frame is larger than ``max_pixels`` (before decoding)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise UnsupportedImageError(
            f"The DICOM file {path.name} does not say how many rows and columns its image has.", path=path
        ) from None
    if rows <= 0 or cols <= 0:
        raise UnsupportedImageError(f"The DICOM file {path.name} declares an empty image ({rows} x {cols}).", path=path)
    if rows * cols * samples > max_pixels:
        raise ImageTooLargeError(
            f"The DICOM file {path.name} declares an image of {cols} x {rows} pixels, far larger than any "
            f"radiograph (limit {max_pixels:,} pixels). The file is probably damaged.",
            path=path,
        )
    bits = _int(ds, "BitsAllocated") or 16
    if "FloatPixelData" in ds:
        bits = 32
    elif "DoubleFloatPixelData" in ds:
        bits = 64
    decoded = rows * cols * samples * max((bits + 7) // 8, 1)
    if decoded > DEFAULT_MAX_DECODED_BYTES:
        raise ImageTooLargeError(
            f"The DICOM file {path.name} declares an image of {cols} x {rows} pixels at {bits} bits, "
            f"{decoded / 1e6:,.0f} MB once decoded, more than any radiograph needs "
            f"(limit {DEFAULT_MAX_DECODED_BYTES / 1e6:,.0f} MB). The file is probably damaged.",
            path=path,
        )


#: Photometric interpretations we can turn into grayscale (PS3.3 C.7.6.3.1.2, current values only).
SUPPORTED_PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_420",
    "YBR_ICT", "YBR_RCT",
})


def check_pixel_format(ds: "Dataset", path: Path, pixel_kw: str = "PixelData") -> None:
    """Values the standard allows but we do not read (or that no encoder writes) are *unsupported*, said
    before decoding, so they are never reported as damage."""
    def unsupported(what: str) -> UnsupportedImageError:
        return UnsupportedImageError(f"The DICOM file {path.name} {what}, which cxr-viewer does not support.",
                                     path=path)

    allocated = _int(ds, "BitsAllocated")
    stored = _int(ds, "BitsStored")
    if pixel_kw == "FloatPixelData" and allocated not in (None, 32):
        raise unsupported(f"holds 32-bit float pixel data but declares BitsAllocated {allocated}")
    if pixel_kw == "DoubleFloatPixelData" and allocated not in (None, 64):
        raise unsupported(f"holds 64-bit float pixel data but declares BitsAllocated {allocated}")
    if pixel_kw == "PixelData":
        if allocated is not None and allocated not in (1, 8, 16, 32):
            raise unsupported(f"stores its pixels in {allocated}-bit words (BitsAllocated {allocated}; "
                              "readable values are 1, 8, 16 and 32)")
        if stored is not None and (stored < 1 or stored > (allocated or 16)):
            raise unsupported(f"declares {stored} significant bits per pixel (BitsStored {stored}) in "
                              f"{allocated or 16}-bit words")
        representation = _int(ds, "PixelRepresentation")
        if representation not in (None, 0, 1):
            raise unsupported(f"declares PixelRepresentation {representation} (0 unsigned or 1 signed are defined)")
    samples = _int(ds, "SamplesPerPixel")
    if samples not in (None, 1, 3):
        raise unsupported(f"has {samples} samples per pixel (1 for grayscale or 3 for colour are defined)")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise unsupported(f"uses the photometric interpretation '{photometric}'")


def check_transfer_syntax(ds: "Dataset", path: Path) -> None:
    """A damaged or private Transfer Syntax UID cannot be decoded: say so plainly."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    if value is not None and not UID(str(value)).is_transfer_syntax:
        raise UnsupportedImageError(
            f"The DICOM file {path.name} declares an unknown encoding (Transfer Syntax '{value}'), "
            "so its image cannot be decoded. The file may be damaged; export it again.",
            path=path,
        )


def check_decoder(ds: "Dataset", path: Path) -> None:
    """Fail early, naming the package to install, when a compressed syntax has no decoder."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    tsyntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    if tsyntax.is_transfer_syntax and not tsyntax.is_encapsulated:
        return
    name = tsyntax.name if tsyntax.is_transfer_syntax else str(tsyntax)
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise UnsupportedImageError(
            f"The DICOM file {path.name} is compressed as '{name}', which cxr-viewer cannot decode "
            "(no Python decoder exists for it). Ask the PACS to export it uncompressed or as JPEG 2000.",
            path=path,
        ) from None
    if decoder.is_available:
        return
    packages = _DECODER_PACKAGES.get(str(tsyntax), ("python-gdcm",))
    raise MissingDecoderError(
        f"The DICOM file {path.name} is compressed as '{name}' and no decoder for it is installed. "
        f"Install one with: pip install {packages[0]}",
        path=path,
    )


def check_native_length(ds: "Dataset", path: Path, notices: list[str]) -> None:
    """Compare uncompressed pixel data with the size the header declares."""
    from pydicom.uid import UID

    tsyntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    if tsyntax.is_encapsulated:
        return
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    frame_px = rows * cols * samples
    if photometric == "YBR_FULL_422":
        frame_px = rows * cols * 2
    frame_bytes = (frame_px * bits + 7) // 8
    have = len(ds.PixelData)
    frames = number_of_frames(ds)
    if have < frame_bytes:
        raise TruncatedFileError(
            f"The DICOM file {path.name} is cut short: it holds {have:,} bytes of image data but its "
            f"header declares {frame_bytes:,}. Copy or export it again from the PACS.",
            path=path,
        )
    expected = (frame_px * bits * frames + 7) // 8
    if have > expected + (expected & 1):  # one pad byte makes an odd length even (PS3.5 8.1.1)
        raise InconsistentImageError(
            f"The DICOM file {path.name} holds {have:,} bytes of image data, but its header ({cols} x {rows} "
            f"pixels, {samples} sample(s), {bits} bits allocated, {frames} frame(s)) declares {expected:,}. "
            "Header and data disagree, so the image would be read as noise; it was not opened. "
            "Export it again from the PACS.",
            path=path,
        )
    if bits != 1 and have < frame_bytes * frames:
        present = max(have // frame_bytes, 1)
        notices.append(f"The file is cut short: only {present:,} of its {frames:,} frames are present.")
        ds.NumberOfFrames = present  # the decoder then sizes its work by what the file holds


#: Transfer syntaxes whose frames start with a JPEG / JPEG-LS SOF, or hold a JPEG 2000 SIZ.
_JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
})
_J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",
})


def check_encapsulated(ds: "Dataset", path: Path, max_pixels: int, notices: list[str]) -> None:
    """Compare a compressed frame's own header (JPEG SOF, JPEG 2000 SIZ) with Rows/Columns before decoding.

    Decoders allocate what the stream declares, so a stream that claims more than
    the DICOM header is refused here; a frame count larger than the fragments
    present is cut down to them (with a notice) so no decoder plans for it.
    """
    from io import BytesIO

    from pydicom.encaps import parse_fragments
    from pydicom.uid import UID

    from cxr_viewer.core.io.codestream import j2k_header, jpeg_header

    tsyntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    if not tsyntax.is_encapsulated:
        return
    data = ds.PixelData
    damaged = TruncatedFileError(
        f"The image data in {path.name} could not be decoded; the file is damaged or cut short. "
        "Copy or export it again from the PACS.",
        path=path,
    )
    try:
        buf = BytesIO(data)
        group, elem, bot_length = struct.unpack("<HHL", buf.read(8))
        if (group, elem) != (0xFFFE, 0xE000) or 8 + bot_length > len(data):
            raise ValueError("no basic offset table item")
        buf.seek(8 + bot_length)
        n_fragments, offsets = parse_fragments(buf)
    except (ValueError, struct.error):
        raise damaged from None
    if n_fragments == 0:
        raise damaged
    frames = number_of_frames(ds)
    if frames > n_fragments:
        notices.append(f"The header declares {frames:,} frames but the file holds only {n_fragments:,}; "
                       "showing the first.")
        ds.NumberOfFrames = n_fragments
    if str(tsyntax) not in _JPEG_SYNTAXES | _J2K_SYNTAXES:
        return  # RLE: its decoder sizes its output from Rows/Columns, already checked
    head = bytearray()
    for offset in offsets:
        length = struct.unpack("<L", data[offset + 4 : offset + 8])[0]
        head += data[offset + 8 : offset + 8 + min(length, _STREAM_HEAD_BYTES - len(head))]
        if len(head) >= _STREAM_HEAD_BYTES or str(tsyntax) in _J2K_SYNTAXES and len(head) >= 65536:
            break
    header = jpeg_header(bytes(head)) if str(tsyntax) in _JPEG_SYNTAXES else j2k_header(bytes(head[:65536]))
    if header is None:
        raise damaged
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"The compressed image in {path.name} declares {header.columns} x {header.rows} pixels, far larger "
            f"than any radiograph (limit {max_pixels:,} pixels). It was not decoded; the file is damaged or crafted.",
            path=path,
        )
    if (header.rows, header.columns) != (rows, cols) or header.components != samples:
        raise InconsistentImageError(
            f"The DICOM file {path.name} says its image is {cols} x {rows} pixels ({samples} sample(s) per pixel) "
            f"but its {header.kind} data holds {header.columns} x {header.rows} ({header.components} component(s)). "
            "Header and data disagree, so it was not decoded; the file is damaged. Export it again from the PACS.",
            path=path,
        )


# --------------------------------------------------------------------------- pixels
def decode_first_frame(ds: "Dataset", path: Path) -> np.ndarray:
    """Decoded stored values of frame 0 (RGB for colour images)."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    tsyntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1")))
    try:
        if any(kw in ds for kw in ("FloatPixelData", "DoubleFloatPixelData")) or not tsyntax.is_transfer_syntax:
            from pydicom.pixels import pixel_array

            arr = pixel_array(ds, index=0)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr, _meta = get_decoder(tsyntax).as_array(ds, index=0)
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; all mean "cannot decode"
        log.debug("decoder failed: %s", type(exc).__name__)
        raise TruncatedFileError(
            f"The image data in {path.name} could not be decoded; the file is damaged or cut short. "
            "Copy or export it again from the PACS.",
            path=path,
        ) from exc
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] not in (3, 4) and arr.shape[0] >= 1:  # frames slipped through
        arr = arr[0]
    return arr


def fix_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep only the ``bits_stored`` low bits (PS3.5 8.1.1), sign-extending signed data.

    Old files may carry overlays or garbage in the unused high bits; pydicom already
    handles most cases, and this step is idempotent when it did.
    """
    if arr.dtype.kind not in "iu":
        return arr
    width = arr.dtype.itemsize * 8
    if bits_stored <= 0 or bits_stored >= width:
        return arr
    mask = (1 << bits_stored) - 1
    # in a type no wider than needed: a 100 M pixel image must not grow an int64 copy (800 MB)
    work_type = np.int32 if width <= 16 else np.int64
    if not signed and arr.dtype.kind == "u":
        if not np.any(arr > mask):  # pydicom usually masked already: nothing to do, no copy
            return arr
        return arr & arr.dtype.type(mask)
    work = arr.astype(work_type) & mask
    if signed:
        sign = 1 << (bits_stored - 1)
        work ^= sign
        work -= sign
    return work


def to_luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of an RGB array, as float."""
    rgb = rgb.astype(np.float32, copy=False)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def stored_to_values(stored: np.ndarray, ds: "Dataset") -> tuple[np.ndarray, list[str]]:
    """Stored values -> modality values (float64 HxW); colour collapses to luminance."""
    from pydicom.pixels.processing import apply_color_lut, apply_modality_lut

    notices: list[str] = []
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)
        notices.append("Palette colour image: converted to grayscale (luminance).")
        return to_luminance(rgb).astype(np.float64), notices
    if samples > 1 or stored.ndim == 3:
        notices.append(f"Colour image ({photometric}): converted to grayscale (luminance).")
        return to_luminance(stored[..., :3]).astype(np.float64), notices
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedImageError(
            f"This DICOM image uses the photometric interpretation '{photometric}', which cxr-viewer does not show."
        )
    bits_stored = int(ds.get("BitsStored", stored.dtype.itemsize * 8) or 0)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    arr = fix_bits(stored, bits_stored, signed)
    check_rescale(ds, arr)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is refused above; float data is cleaned later
        values = apply_modality_lut(arr, ds)
    # integers of up to 24 bits are exact in float32: half the memory of float64 for the common case
    exact32 = values.dtype.kind in "iu" and values.dtype.itemsize <= 2 or values.dtype == np.float32
    values = np.asarray(values, dtype=np.float32 if exact32 else np.float64)
    return values, notices


def check_rescale(ds: "Dataset", stored: np.ndarray) -> None:
    """Rescale Slope/Intercept (PS3.3 C.11.1.1.2) that are not numbers, or overflow the values, are refused."""
    if "ModalityLUTSequence" in ds or not ("RescaleSlope" in ds or "RescaleIntercept" in ds):
        return
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise UnsupportedImageError("The file's Rescale Slope or Intercept is not a number, so its pixel "
                                    "values cannot be interpreted. The file is damaged.") from None
    top = float(np.abs(stored).max()) if stored.size and stored.dtype.kind in "iuf" else 0.0
    if not (np.isfinite(slope) and np.isfinite(intercept)) or abs(slope) * top + abs(intercept) > 1e300:
        raise UnsupportedImageError(
            f"The file's Rescale Slope ({_g(slope)}) and Intercept ({_g(intercept)}) make its pixel values "
            "overflow, so they cannot be interpreted. The file is damaged."
        )


def voi_window(ds: "Dataset", values: np.ndarray) -> tuple[tuple[float, float] | None, str | None]:
    """The file's default VOI as ``(lo, hi)`` in modality units, with an explanatory notice.

    Window centre/width (PS3.3 C.11.2.1.2) wins over a VOI LUT sequence when both
    are present, as pydicom does by default. A VOI LUT that is not a straight line is
    approximated by the range over which it rises.
    """
    centers, widths = _multi(ds.get("WindowCenter")), _multi(ds.get("WindowWidth"))
    if centers and widths:
        c, w = centers[0], widths[0]
        func = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        if w <= 0 or not np.isfinite(c) or not np.isfinite(w):
            return None, "The file's window width is not valid; showing the full range."
        if func == "LINEAR_EXACT":
            lo, hi = c - w / 2.0, c + w / 2.0
        else:  # LINEAR (PS3.3 C.11.2.1.2.1); SIGMOID approximated by the same line
            lo, hi = c - 0.5 - (w - 1) / 2.0, c - 0.5 + (w - 1) / 2.0
            if hi <= lo:
                hi = lo + 1.0
        note = None
        if len(centers) > 1:
            explanation = _multi_str(ds.get("WindowCenterWidthExplanation"))
            which = f" ('{explanation[0]}')" if explanation else ""
            note = f"The file offers {len(centers)} windows; using the first{which}."
        if func == "SIGMOID":
            note = ((note + " ") if note else "") + "Its sigmoid window is shown as a linear one."
        return (float(lo), float(hi)), note
    seq = ds.get("VOILUTSequence")
    if seq:
        try:
            item = seq[0]
            descriptor = [int(v) for v in item.LUTDescriptor]
            first = descriptor[1]
            lut = _lut_values(item)
            if lut.size < 2 or lut.max() == lut.min():
                return None, "The file's VOI LUT is flat; showing the full range."
            rising = np.nonzero(lut > lut.min())[0]
            top = np.nonzero(lut < lut.max())[0]
            lo = first + max(int(rising[0]) - 1, 0)
            hi = first + min(int(top[-1]) + 1, lut.size - 1)
            note = "The file's VOI lookup table is approximated by a linear window."
            if len(seq) > 1:
                note = f"The file offers {len(seq)} VOI lookup tables; using the first. " + note
            return (float(lo), float(max(hi, lo + 1))), note
        except (AttributeError, IndexError, TypeError, ValueError):
            return None, "The file's VOI lookup table cannot be read; showing the full range."
    return None, None


def _lut_values(item: Any) -> np.ndarray:
    """LUT Data as numbers: OW data holds one 16-bit word per entry (PS3.3 C.11.2.1.1)."""
    n_entries = int(item.LUTDescriptor[0]) or 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        if len(data) >= 2 * n_entries:
            return np.frombuffer(data, dtype="<u2", count=n_entries).astype(np.float64)
        return np.frombuffer(data, dtype=np.uint8, count=min(n_entries, len(data))).astype(np.float64)
    if isinstance(data, (int, float)):
        return np.asarray([data], dtype=np.float64)
    return np.asarray(list(data), dtype=np.float64)


def _multi(value: Any) -> list[float]:
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (list, tuple, MutableSequence)) else [value]
    out = []
    for v in items:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            return []
    return out


def _multi_str(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


#: A default window more than this many times wider than the image's value range (or centred that far
#: outside it) shows nothing but one grey: it is ignored with a notice.
_MAX_WINDOW_SPAN = 1000.0


def _g(value: float) -> str:
    """A number for a notice: short, whatever its size."""
    return f"{value:.4g}"


def finite_values(values: np.ndarray, path: Path) -> tuple[np.ndarray, str | None]:
    """Clean NaN/Inf out of modality values (float pixel data, overflowing rescale), with a notice.

    NaN and -inf become the lowest finite value, +inf the highest; an image with no
    finite value at all is refused.
    """
    finite = np.isfinite(values)
    if finite.all():
        return values, None
    if not finite.any():
        raise UnsupportedImageError(
            f"The DICOM file {path.name} holds no usable pixel values: every value is NaN or infinite "
            "(its float pixel data or rescale values are not numbers).",
            path=path,
        )
    bad = int(values.size - np.count_nonzero(finite))
    lo, hi = float(values[finite].min()), float(values[finite].max())
    values = np.nan_to_num(values, nan=lo, posinf=hi, neginf=lo)
    return values, (f"{bad:,} pixel value(s) are not numbers (NaN or infinite): NaN and -inf are shown as the "
                    "lowest value, +inf as the highest.")


def normalise(values: np.ndarray, lo: float, hi: float, *, invert: bool) -> np.ndarray:
    """Modality values -> float32 [0, 1] over their own range; inverted for MONOCHROME1."""
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    if not np.isfinite(hi - lo):  # a range wider than float64 holds: halve everything first
        values, lo, hi = values * 0.5, lo * 0.5, hi * 0.5
    if max(abs(lo), abs(hi)) > 1e30 or np.float32(hi) <= np.float32(lo):  # beyond float32: float64 (rare)
        out = ((values - lo) / (hi - lo)).astype(np.float32)
    else:
        out = values.astype(np.float32)  # one float32 copy, scaled in place
        out -= np.float32(lo)
        out /= np.float32(hi) - np.float32(lo)  # the same float32 span: the top value maps to exactly 1
        np.clip(out, 0.0, 1.0, out=out)  # float32 rounding may step a hair outside [0, 1]
    if invert:
        np.subtract(np.float32(1.0), out, out=out)
    return out


def values_window_to_unit(window: tuple[float, float], lo: float, hi: float, *, invert: bool) -> tuple[float, float]:
    """``(lo, hi)`` of a window in modality units -> ``(center, width)`` in the record's [0, 1] units."""
    span = hi - lo
    if not np.isfinite(span):
        window, lo, span = (window[0] * 0.5, window[1] * 0.5), lo * 0.5, hi * 0.5 - lo * 0.5
    with np.errstate(over="ignore", invalid="ignore"):  # an absurd window may overflow: the caller checks
        a, b = (np.float64(window[0]) - lo) / span, (np.float64(window[1]) - lo) / span
        if invert:
            a, b = 1.0 - b, 1.0 - a
        return float((a + b) / 2.0), float(max(b - a, 1e-6))


# --------------------------------------------------------------------------- header
def pixel_spacing(ds: "Dataset") -> tuple[tuple[float, float] | None, str | None, str | None]:
    """(row, column) spacing in mm, where it came from, and a notice if it is missing or odd.

    ``PixelSpacing`` is at the patient (or calibrated) where the file provides it;
    ``ImagerPixelSpacing`` is at the detector, so distances read larger than in the
    patient by the geometric magnification, which ``EstimatedRadiographicMagnificationFactor``
    corrects when present (PS3.3 10.7.1.3).
    """

    def raw(keyword: str) -> tuple[float, float] | None:
        value = ds.get(keyword)
        try:
            return float(value[0]), float(value[1])
        except (TypeError, ValueError, IndexError):
            return None

    def plausible(rc: tuple[float, float] | None) -> bool:
        return rc is not None and all(np.isfinite(v) and SPACING_RANGE_MM[0] <= v <= SPACING_RANGE_MM[1] for v in rc)

    spacing = raw("PixelSpacing")
    if plausible(spacing):
        return spacing, "PixelSpacing", None
    imager = raw("ImagerPixelSpacing")
    if plausible(imager):
        assert imager is not None
        try:
            mag = float(ds.get("EstimatedRadiographicMagnificationFactor") or 0)
        except (TypeError, ValueError):
            mag = 0.0
        if 0.5 <= mag <= 10.0 and plausible(corrected := (imager[0] / mag, imager[1] / mag)):
            return corrected, "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor", None
        return imager, "ImagerPixelSpacing", None
    if "PixelSpacing" in ds or "ImagerPixelSpacing" in ds:
        given = spacing or imager
        shown = f" ({_g(given[0])} x {_g(given[1])} mm)" if given is not None else ""
        return None, None, (f"The file's pixel spacing{shown} is not a plausible size for a radiograph's pixels; "
                            "it is ignored and measurements are in pixels.")
    return None, None, "The file gives no pixel spacing; measurements are in pixels."


#: Pixel sizes accepted as a radiograph's (mm): detectors are 0.05-0.2 mm, digitised film up to about 1 mm.
SPACING_RANGE_MM = (0.001, 10.0)

_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)


def parse_age(value: Any) -> float | None:
    """DICOM Age String (``"045Y"``, ``"006M"``, ``"003W"``, ``"010D"``) -> years."""
    if value is None:
        return None
    m = _AGE.match(str(value))
    if not m:
        return None
    n, unit = int(m.group(1)), (m.group(2) or "Y").upper()
    return {"Y": float(n), "M": n / 12.0, "W": n * 7 / 365.25, "D": n / 365.25}[unit]


def _text(ds: "Dataset", keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MutableSequence)):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def _int(ds: "Dataset", keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def blank_metadata() -> dict[str, Any]:
    """The metadata keys every record carries (empty for PNG/JPEG/TIFF)."""
    return {
        "modality": "", "view_position": "", "body_part": "", "patient_age_years": None, "patient_sex": "",
        "photometric": "", "bits_stored": None, "rows": None, "columns": None, "frames": 1,
        "transfer_syntax": "", "study_instance_uid": "", "series_instance_uid": "", "sop_instance_uid": "",
        "study_date": "", "study_description": "", "series_description": "", "manufacturer": "",
        "patient_name": "", "patient_id": "",
    }


def header_metadata(ds: "Dataset") -> dict[str, Any]:
    """Plain values for the overlay and the JSON output. Patient name and ID are for display only."""
    return {
        "modality": _text(ds, "Modality"),
        "view_position": _text(ds, "ViewPosition"),
        "body_part": _text(ds, "BodyPartExamined"),
        "patient_age_years": parse_age(ds.get("PatientAge")),
        "patient_sex": _text(ds, "PatientSex"),
        "photometric": _text(ds, "PhotometricInterpretation"),
        "bits_stored": _int(ds, "BitsStored"),
        "rows": _int(ds, "Rows"),
        "columns": _int(ds, "Columns"),
        "frames": number_of_frames(ds),
        "transfer_syntax": _transfer_syntax_name(ds),
        "study_instance_uid": _text(ds, "StudyInstanceUID"),
        "series_instance_uid": _text(ds, "SeriesInstanceUID"),
        "sop_instance_uid": _text(ds, "SOPInstanceUID"),
        "study_date": _text(ds, "StudyDate"),
        "study_description": _text(ds, "StudyDescription"),
        "series_description": _text(ds, "SeriesDescription"),
        "manufacturer": _text(ds, "Manufacturer"),
        "patient_name": _text(ds, "PatientName"),
        "patient_id": _text(ds, "PatientID"),
    }


def _transfer_syntax_name(ds: "Dataset") -> str:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return "" if uid is None else str(getattr(uid, "name", uid))
