"""The one use case: analyse one film with a workspace, and write its clinical record.

:func:`analyse` scores a film (or takes the scores a batch already computed), judges them
with the :class:`~cxr_viewer.core.workspace.Workspace` (site profile, the reader's thresholds,
validation and population: :meth:`~cxr_viewer.core.workspace.Workspace.judge`) and makes the
heatmap and report-conditioned masks asked for. :func:`export_record` writes what the Export
menu writes (PDF, DICOM SR/SEG/SC/PDF) and the anonymised copies from that one
:class:`~cxr_viewer.core.judging.JudgedResult`. ``cxr-viewer analyze`` and ``cxr-viewer pacs
send-results`` are argument parsing and output around these two.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import CXRError, ExportError, NoSegmentationModelError

if TYPE_CHECKING:
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.results import AnalysisResult, Heatmap
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.judging import JudgedResult
    from cxr_viewer.core.workspace import Workspace

__all__ = ["Analysed", "CamRequest", "Exported", "analyse", "export_record", "read_ahead", "scored_files"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CamRequest:
    """A heatmap to make: ``label`` (case, punctuation and a unique prefix forgiven), the CAM method, the
    model to explain when several predict the label, and whether to add the ROAD faithfulness score."""

    label: str
    method: str = "gradcam"
    model: str | None = None
    faithfulness: bool = True


@dataclass
class Analysed:
    """One film analysed and judged, with the heatmap and masks asked for (or why each could not be made)."""

    record: "ImageRecord"
    judged: "JudgedResult"
    heatmap: "Heatmap | None" = None
    cam_error: CXRError | None = None
    masks: tuple[Any, ...] = ()  # report-conditioned masks, one per report sentence
    segmenter: Any = None
    segmentation_model: dict[str, Any] | None = None  # the segmenter's identity and what it executed
    segmentation_error: CXRError | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)  # cam, segment (what was made)


def analyse(
    record: "ImageRecord", workspace: "Workspace", engine: "InferenceEngine", *, result: "AnalysisResult | None" = None,
    cam: CamRequest | None = None, report: str | None = None, cancel: Any = None,
) -> Analysed:  # fmt: skip
    """``record`` scored by ``engine`` (or ``result``, when a batch already scored it) and judged by ``workspace``.

    ``cam``: a heatmap to make; ``report``: report text whose sentences become masks. A heatmap
    or mask that cannot be made is recorded (``cam_error``, ``segmentation_error``); the judged
    findings never depend on it.
    """
    if result is None:
        result = engine.analyze(record, cancel=cancel)
    out = Analysed(record, workspace.judge(result))
    if cam is not None:
        t0 = time.perf_counter()
        try:
            out.heatmap = _heatmap(engine, record, out.judged, cam)
        except CXRError as exc:
            out.cam_error = exc
        out.timing_ms["cam"] = (time.perf_counter() - t0) * 1e3
    if report is not None:
        t0 = time.perf_counter()
        try:
            bundle, seg = _segmenter(engine)
            out.masks = tuple(seg.segment_report(record, report, cancel=cancel))
            out.segmenter = seg
            out.segmentation_model = {**bundle.describe(), "executed": seg.backend.executed.to_dict()}
            out.timing_ms["segment"] = (time.perf_counter() - t0) * 1e3
        except CXRError as exc:
            out.segmentation_error = exc
    return out


def _heatmap(engine: "InferenceEngine", record: "ImageRecord", judged: "JudgedResult", cam: CamRequest) -> "Heatmap":
    from cxr_viewer.core.labels import match_label

    names = [j.label for j in judged.findings if cam.model is None or j.model == cam.model]
    names += [lab for lab, m in engine.research_overlays() if cam.model in (None, m)]  # opt-in maps
    label = match_label(cam.label, names) if names else cam.label
    return engine.cam(record, label, cam.method, model=cam.model, faithfulness=cam.faithfulness)


def _segmenter(engine: "InferenceEngine") -> tuple[Any, Any]:
    bundles = engine.bundles_for_task("text_segmentation")
    if not bundles:
        raise NoSegmentationModelError(
            "No segmentation model is installed, so the report text cannot be turned into masks. "
            "Install a text-segmentation model bundle or drop --report."
        )
    return bundles[0], engine.segmenter(bundles[0])  # one per bundle, held by the engine


# ---------------------------------------------------------------------- many films
def scored_files(
    engine: "InferenceEngine", files: Iterable[str], *, batch: int = 8
) -> Iterator[tuple[str, tuple[Any, float], "AnalysisResult | None"]]:
    """``(path, (record or its error, read ms), result or None)`` per input, in input order.

    One reader thread decodes and preprocesses ``2 * batch`` files ahead, so the models never wait
    for a decode; the inputs read are scored ``batch`` at a time (batched forwards). ``result`` is
    None where the batch could not score an input: :func:`analyse` scores it alone and reports its
    own error.
    """
    files = list(files)
    batch = max(1, int(batch))
    engine.inputs.reserve(4 * batch * max(1, len(engine.bundles)))  # what the reader prepares ahead stays cached
    queue: list[tuple[str, Any, Any]] = []  # (path, (record or error, ms), batched result or None)
    seen = 0
    for path_text, record, read_ms in _prefetched(engine, files, depth=2 * batch):
        queue.append((path_text, (record, read_ms), None))
        seen += 1
        if len(queue) < batch and seen < len(files):
            continue
        yield from _batched(engine, queue)
        queue = []


def read_ahead(engine: "InferenceEngine", path_text: str) -> tuple[Any, float]:
    """Decode one input (on the reader thread) and prepare what the engine will need (content hash, windowed
    pixels, every model's input); returns (record or the CXRError, read ms)."""
    from cxr_viewer.core.io import read_image

    t0 = time.perf_counter()
    try:
        record = read_image(Path(path_text))
    except Exception as exc:  # noqa: BLE001 - handed to the main thread, which reports it for this input
        return exc, 0.0
    read_ms = (time.perf_counter() - t0) * 1e3
    try:
        windowed = record.model_pixels()
        for b in engine.bundles:
            if b.manifest.is_classifier or b.task == "text_segmentation":
                engine.inputs.get(record, b.preprocessing, windowed)
    except Exception:  # noqa: BLE001 - the engine meets (and reports) the same problem on the main thread
        log.debug("preparing %s ahead failed", path_text, exc_info=True)
    return record, read_ms


def _prefetched(engine: "InferenceEngine", files: list[str], depth: int) -> Any:
    """(path, record or CXRError, read ms) in input order, decoded and preprocessed ``depth`` files ahead on
    one reader thread, so the models never wait for a decode."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cxr-reader") as pool:
        pending: deque = deque()
        it = iter(files)
        for path_text in it:
            pending.append((path_text, pool.submit(read_ahead, engine, path_text)))
            if len(pending) >= depth:
                break
        while pending:
            path_text, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read_ahead, engine, nxt)))
            yield (path_text, *fut.result())


def _batched(engine: "InferenceEngine", queue: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The queued inputs that were read, analysed together (batched forwards); a batch that fails is
    left to the one-at-a-time path, which reports each input's own error."""
    ok = [i for i, (_, (record, _ms), _r) in enumerate(queue) if not isinstance(record, BaseException)]
    if len(ok) < 2:
        return queue
    try:
        results = engine.analyze_batch([queue[i][1][0] for i in ok])
    except Exception:  # noqa: BLE001 - one bad file must not stop the batch
        log.debug("batched analysis failed; analysing one at a time", exc_info=True)
        return queue
    out = list(queue)
    for i, res in zip(ok, results):
        out[i] = (queue[i][0], queue[i][1], res)
    return out


@dataclass
class Exported:
    """What :func:`export_record` wrote, as the ``analyze`` JSON lists it: ``outputs`` holds ``measurements``,
    ``report_pdf``, ``dicom`` and ``anonymised`` (paths, or ``{"error": ...}``); ``done``: all asked was written."""

    outputs: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    done: bool = True


def _failure(what: str, exc: BaseException) -> dict[str, Any]:
    """An export that failed, as an ``error`` object that says the findings are complete."""
    if isinstance(exc, CXRError):
        return {"error": exc.to_dict()}
    if not isinstance(exc, OSError):
        log.error("export of %s failed: %s", what, type(exc).__name__)
        log.debug("details", exc_info=True)
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
    return {"error": {"code": "export_failed", "message": f"Could not write the {what} ({text}); "
                      "the findings above are complete."}}  # fmt: skip


def export_record(
    analysed: Analysed, source: str | Path, *, pdf_path: str | Path | None = None,
    dicom_dir: str | Path | None = None, anonymised_dir: str | Path | None = None, report_text: str = "",
) -> Exported:  # fmt: skip
    """The clinical record of one analysed film (the PDF and DICOM results the Export menu writes) and its
    anonymised copies, with the annotations saved beside ``source`` (Ctrl+S).

    An export that fails for any reason (a full disk, a header no object can carry) is recorded as an
    ``error`` object; the judged findings are never lost to it.
    """
    from cxr_viewer.core.export.measurements import measurement_rows
    from cxr_viewer.core.export.record import ClinicalRecord, Identification, annotations_beside, write_record

    record, judged, masks = analysed.record, analysed.judged, list(analysed.masks)
    out = Exported()
    try:
        annotations = tuple(annotations_beside(source, record))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        annotations = ()
        out.warnings.append(f"The annotations saved beside this image were not read: {exc}")
    if annotations:
        out.outputs["measurements"] = [{"kind": r.kind, "name": r.name, "value": r.value}
                                       for r in measurement_rows(annotations)]  # fmt: skip
    try:
        rec = ClinicalRecord(record, judged, Identification.from_record(record), annotations, tuple(masks),
                             analysed.heatmap, report_text=report_text)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - a header no record can be made of: the exports fail, not the result
        rec, out.done = None, not (pdf_path or dicom_dir)
        for key, wanted, what in (("report_pdf", pdf_path, "PDF report"), ("dicom", dicom_dir, "DICOM results")):
            if wanted:
                out.outputs[key] = _failure(what, exc)
    if pdf_path and rec is not None:
        try:
            out.outputs["report_pdf"] = str(write_record(rec, pdf_path=Path(pdf_path))[0])
        except Exception as exc:  # noqa: BLE001 - an export failure never costs the findings
            out.outputs["report_pdf"] = _failure("PDF report", exc)
            out.done = False
    if dicom_dir and rec is not None:
        try:
            out.outputs["dicom"] = [str(p) for p in write_record(rec, dicom_dir=Path(dicom_dir))]
        except Exception as exc:  # noqa: BLE001 - an export failure never costs the findings
            out.outputs["dicom"] = _failure("DICOM results", exc)
            out.done = False
    if anonymised_dir:
        from cxr_viewer.core.export.anonymise import export_anonymised

        try:
            if record.format != "dicom" or record.source is None:
                raise ExportError("Anonymised export needs a DICOM image; this input carries no DICOM header.")
            # no identified PDF here: the anonymised objects get a page drawn without identification
            anon = export_anonymised([record.source], Path(anonymised_dir),
                                     results=[(record, judged, {"masks": [m for m in masks if not m.empty],
                                                                "annotations": annotations})])  # fmt: skip
            out.outputs["anonymised"] = {"files": [str(p) for p in anon.files], "warnings": anon.warnings}
        except Exception as exc:  # noqa: BLE001 - an export failure never costs the findings
            out.outputs["anonymised"] = _failure("anonymised export", exc)
            out.done = False
    return out
