"""Frame headers of compressed image streams, read before anything is decoded.

A compressed DICOM frame carries its own idea of its size: the JPEG start-of-frame
segment (ITU T.81 B.2.2; JPEG-LS SOF55, ITU T.87 C.2.2) and the JPEG 2000 SIZ
marker segment (ITU T.800 A.5.1; HTJ2K keeps it). Decoders allocate what the
stream says, not what Rows/Columns say, so a 100 KB file whose stream claims
30000 x 30000 pixels would take gigabytes. Reading the header first lets the
reader refuse a stream that disagrees with the DICOM header, at no cost.

Pure byte parsing: no decoder is imported here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["StreamHeader", "j2k_header", "jpeg_header", "stream_header"]

#: JPEG start-of-frame markers (T.81 Table B.1: C0-CF except DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55 (F7).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
#: Markers without a length field (T.81 B.1.1.3): TEM, RSTn, SOI, EOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8, 0xD9})
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


@dataclass(frozen=True)
class StreamHeader:
    """What a compressed frame says about itself."""

    kind: str  # "JPEG" | "JPEG-LS" | "JPEG 2000"
    rows: int
    columns: int
    components: int
    precision: int  # bits per sample

    @property
    def pixels(self) -> int:
        return self.rows * self.columns * max(self.components, 1)


def jpeg_header(data: bytes) -> StreamHeader | None:
    """The first start-of-frame of a JPEG or JPEG-LS stream, or ``None`` when there is none."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None  # marker segments follow each other directly until the scan
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte (T.81 B.1.1.2)
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            seg = data[i + 4 : i + 2 + length]
            if len(seg) < 6:
                return None
            precision, rows, columns, components = struct.unpack(">BHHB", seg[:6])
            return StreamHeader("JPEG-LS" if marker == 0xF7 else "JPEG", rows, columns, components, precision)
        if marker == 0xDA:  # start of scan before any frame header: not a valid stream
            return None
        i += 2 + length
    return None


def j2k_header(data: bytes) -> StreamHeader | None:
    """The SIZ segment of a JPEG 2000 / HTJ2K codestream (bare, or inside a JP2 file), or ``None``."""
    at = data.find(_J2K_SOC_SIZ)
    if at < 0:
        return None
    seg = data[at + 4 :]
    if len(seg) < 38:
        return None
    _lsiz, _rsiz, xsiz, ysiz, xosiz, yosiz = struct.unpack(">HHIIII", seg[:20])
    (csiz,) = struct.unpack(">H", seg[36:38])
    precision = (seg[38] & 0x7F) + 1 if len(seg) > 38 else 0
    columns, rows = xsiz - xosiz, ysiz - yosiz
    if columns < 0 or rows < 0:
        return None
    return StreamHeader("JPEG 2000", rows, columns, csiz, precision)


def stream_header(data: bytes) -> StreamHeader | None:
    """Header of a JPEG, JPEG-LS or JPEG 2000 frame, whichever ``data`` starts as."""
    if data.startswith(b"\xff\xd8"):
        return jpeg_header(data)
    return j2k_header(data[:4096])
