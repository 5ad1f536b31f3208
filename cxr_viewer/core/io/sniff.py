"""Recognise a file's format from its first bytes, not its name.

Radiology folders are full of extension-less DICOM files and of PNGs renamed
``.dcm``; the content decides which reader runs.
"""

from __future__ import annotations

import struct
from pathlib import Path

#: Suffixes the viewer offers in file dialogs and the folder scan tries first.
#: Files without a suffix are tried too (DICOM files often have none).
SUPPORTED_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".dic", ".png", ".jpg", ".jpeg", ".tif", ".tiff")

HEAD_BYTES = 132

# Explicit VR codes: a DICOM file without preamble starts with a group 0002 or 0008 element.
_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD",
    b"OF", b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI",
    b"UL", b"UN", b"UR", b"US", b"UT", b"UV",
}


def sniff_bytes(head: bytes) -> str | None:
    """Return ``"dicom" | "png" | "jpeg" | "tiff"`` for the leading bytes, or ``None``."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if _looks_like_bare_dicom(head):
        return "dicom"
    return None


def _looks_like_bare_dicom(head: bytes) -> bool:
    """DICOM written without the 128-byte preamble (old ACR-NEMA style or raw datasets)."""
    if head.startswith(b"DICM"):
        return True
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x00FF:
        return False
    if head[4:6] in _VRS:  # explicit VR little endian
        return True
    (length,) = struct.unpack("<I", head[4:8])  # implicit VR: a plausible element length
    return length < 0x10000


def sniff_file(path: Path) -> str | None:
    """Format of the file at ``path`` from its first bytes (``None`` if unrecognised)."""
    with open(path, "rb") as fh:
        return sniff_bytes(fh.read(HEAD_BYTES))
