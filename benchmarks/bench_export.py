"""Time to write the DICOM results of one study, against re-writing the source file in the same run.

Figures (median of ``--repeat`` runs after one warm-up) on the bundled sample study analysed by
the default models, with the masks of a two-sentence report:

- baseline: pydicom reads and writes the source DICOM file (the floor of any DICOM output);
- SR (TID 1500, every finding and the QC flags), SEG (two binary segments), the view rendered for
  the Secondary Capture, the PDF page, the Encapsulated PDF, each built in memory;
- ``write_results`` end to end: SR + SEG + SC + PDF built and saved.

    python benchmarks/bench_export.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT = "FINDINGS: Right lower zone opacity. The left lung is clear."


def _median(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import pydicom

    from cxr_viewer.core.export import dicom_results as dr
    from cxr_viewer.core.export import report_pdf
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.segment import Segmenter
    from cxr_viewer.core.io import read_image

    sample = REPO / "resources" / "samples" / "siim_cr_chest.dcm"
    engine = InferenceEngine.from_dirs([REPO / "resources" / "models"], device="cpu")
    record = read_image(sample)
    result = engine.analyze(record)
    masks = Segmenter(engine.bundles_for_task("text_segmentation")[0]).segment_report(record, REPORT)
    src = dr.source_dataset(record)

    def baseline() -> None:
        pydicom.dcmread(sample).save_as(io.BytesIO())

    with tempfile.TemporaryDirectory() as tmp:
        pdf_path = report_pdf.write_report(record, result, Path(tmp) / "r.pdf", masks=masks)
        pdf_bytes = pdf_path.read_bytes()
        view = report_pdf.render_view(record, masks=masks)
        rows = {
            "baseline: read + write the source": _median(baseline, args.repeat),
            "SR (TID 1500)": _median(lambda: dr.build_sr(src, result), args.repeat),
            "SEG (2 binary segments)": _median(lambda: dr.build_seg(src, masks, result), args.repeat),
            "view for the SC (render)": _median(lambda: report_pdf.render_view(record, masks=masks), args.repeat),
            "SC (build)": _median(lambda: dr.build_sc(src, view, burned_in_identity=False), args.repeat),
            "PDF page (render)": _median(
                lambda: report_pdf.write_report(record, result, Path(tmp) / "p.pdf", masks=masks), args.repeat),
            "Encapsulated PDF (build)": _median(lambda: dr.build_encapsulated_pdf(src, pdf_bytes), args.repeat),
            "write_results: SR+SEG+SC+PDF saved": _median(
                lambda: dr.write_results(record, result, Path(tmp) / "out", masks=masks), args.repeat),
        }
    base = rows["baseline: read + write the source"]
    print(f"{len(result.findings)} findings, {len(masks)} masks, image {record.shape[1]}x{record.shape[0]}")
    for name, t in rows.items():
        print(f"{name:40s} {t * 1e3:9.1f} ms   {t / base:7.1f}x baseline")


if __name__ == "__main__":
    main()
