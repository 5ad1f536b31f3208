"""The clinical record of one read film, written the same way by the Export menu and ``analyze``.

:func:`write_record` writes the PDF and, for a DICOM source, the DICOM results (SR, SEG,
SC, Encapsulated PDF) of one :class:`~cxr_viewer.core.export.clinical.ClinicalRecord`:
one code path for the GUI, ``cxr-viewer analyze`` and the PACS send.
"""

from __future__ import annotations

from pathlib import Path

from cxr_viewer.core.export.clinical import (
    ClinicalRecord,
    Identification,
    PriorComparison,
    annotations_beside,
)

__all__ = ["ClinicalRecord", "Identification", "PriorComparison", "annotations_beside", "write_record"]


def write_record(rec: ClinicalRecord, *, pdf_path: str | Path | None = None,
                 dicom_dir: str | Path | None = None) -> list[Path]:  # fmt: skip
    """Write the PDF (``pdf_path``) and/or the DICOM results (``dicom_dir``: SR, SEG, SC and the same PDF)."""
    import tempfile

    from cxr_viewer.core.export import report_pdf
    from cxr_viewer.core.export.dicom_results import source_dataset, write_results

    written: list[Path] = []
    if dicom_dir is not None:
        source_dataset(rec.record)  # a PNG is refused before anything is drawn
    if pdf_path is not None:
        written.append(report_pdf.write_record_pdf(rec, pdf_path))
    if dicom_dir is not None:
        view = report_pdf.render_view_picture(rec.record, masks=rec.drawn_masks(), heatmap=rec.heatmap,
                                              window=rec.window, annotations=rec.annotations)
        with tempfile.TemporaryDirectory() as tmp:
            pdf = written[0] if written and written[0].suffix.lower() == ".pdf" else \
                report_pdf.write_record_pdf(rec, Path(tmp) / "report.pdf")
            written += write_results(rec.record, rec.judged, dicom_dir, masks=list(rec.masks), view_png=view,
                                     pdf=pdf, annotations=rec.annotations,
                                     pdf_identified=rec.identification is not None)
    return written
