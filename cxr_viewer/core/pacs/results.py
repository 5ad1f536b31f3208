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
    from cxr_viewer.core.judging import JudgedResult

__all__ = ["send_results"]


def send_results(remote: RemoteNode, record: "ImageRecord", result: "AnalysisResult | JudgedResult", *,
                 masks: Sequence[Any] | None = None, view_png: Any = None, out_dir: str | Path | None = None,
                 calling_ae: str = "CXRVIEWER", timeout: float = DEFAULT_TIMEOUT,
                 annotations: Sequence[Any] = (), report_text: str = "") -> list[StoredFile]:  # fmt: skip
    """Write the record's DICOM objects (:func:`~cxr_viewer.core.export.record.write_record`: SR, SEG, SC
    and the identified PDF, as the Export menu writes them) and C-STORE them.

    ``result``: the :class:`~cxr_viewer.core.judging.JudgedResult` shown (an ``AnalysisResult`` is judged
    with the thresholds it carries). ``out_dir`` keeps the written files; by default they go to a temporary
    folder removed afterwards. ``view_png`` is accepted for compatibility; the view is drawn from the record.
    """
    from cxr_viewer.core.export.record import ClinicalRecord, Identification, write_record
    from cxr_viewer.core.judging import judged_from

    if record.format != "dicom" or record.header is None:
        raise PacsError(
            "Only a DICOM study's results can be sent to a PACS (they are filed under its study); "
            f"{record.source.name if record.source else 'this image'} is not DICOM."
        )
    rec = ClinicalRecord(record, judged_from(result), Identification.from_record(record), tuple(annotations),
                         tuple(masks or ()), report_text=report_text)
    if out_dir is not None:
        files = [p for p in write_record(rec, dicom_dir=out_dir)]
        return send_files(remote, files, calling_ae=calling_ae, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="cxr-results-") as tmp:
        files = write_record(rec, dicom_dir=tmp)
        return send_files(remote, files, calling_ae=calling_ae, timeout=timeout)
