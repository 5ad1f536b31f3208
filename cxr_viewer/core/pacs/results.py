"""Send one study's analysis back to the PACS it came from: SR, SEG, SC and the PDF, under the source study."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.pacs.client import DEFAULT_TIMEOUT, StoredFile, send_files
from cxr_viewer.core.pacs.errors import PacsError
from cxr_viewer.core.pacs.nodes import RemoteNode

if TYPE_CHECKING:
    from cxr_viewer.core.inference.results import AnalysisResult
    from cxr_viewer.core.io.record import ImageRecord

__all__ = ["send_results"]


def send_results(remote: RemoteNode, record: "ImageRecord", result: "AnalysisResult", *,
                 masks: Sequence[Any] | None = None, view_png: Any = None, out_dir: str | Path | None = None,
                 calling_ae: str = "CXRVIEWER", timeout: float = DEFAULT_TIMEOUT) -> list[StoredFile]:
    """Write the result objects (:func:`~cxr_viewer.core.export.dicom_results.write_results`) and C-STORE them.

    ``out_dir`` keeps the written files; by default they go to a temporary folder removed afterwards.
    """
    from cxr_viewer.core.export.dicom_results import write_results

    if record.format != "dicom" or record.header is None:
        raise PacsError(
            "Only a DICOM study's results can be sent to a PACS (they are filed under its study); "
            f"{record.source.name if record.source else 'this image'} is not DICOM."
        )
    if out_dir is not None:
        files = write_results(record, result, out_dir, masks=masks, view_png=view_png)
        return send_files(remote, files, calling_ae=calling_ae, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="cxr-results-") as tmp:
        files = write_results(record, result, tmp, masks=masks, view_png=view_png)
        return send_files(remote, files, calling_ae=calling_ae, timeout=timeout)
