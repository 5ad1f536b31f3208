"""Reading radiographs: one :func:`read_image` for every format, a header-only folder scan."""

from __future__ import annotations

from cxr_viewer.core.io.dicom import read_header
from cxr_viewer.core.io.reader import read_image
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.io.sniff import SUPPORTED_SUFFIXES

__all__ = ["ImageRecord", "SUPPORTED_SUFFIXES", "read_header", "read_image", "scan_folder"]


def __getattr__(name: str):  # scan.py is imported on first use
    if name == "scan_folder":
        from cxr_viewer.core.io.scan import scan_folder

        return scan_folder
    raise AttributeError(name)
