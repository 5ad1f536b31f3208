"""Analysis results as DICOM objects other systems can display (highdicom).

For one analysed DICOM image :func:`write_results` writes, each in a new series of
the ORIGINAL study (same Study Instance UID, patient and study attributes copied
from the source header) and each referencing the source image's SOP instance:

- a Comprehensive 3D SR holding a TID 1500 measurement report: one measurement
  group per finding (score, operating threshold with its method as the measurement
  method, Present/Absent as a qualitative evaluation, the model as algorithm
  identification with its weights sha256), plus one group of QC flags; when a site
  profile was applied (``result.site_profile``), a TEXT item "Site calibration profile"
  names it (name, version, date, the bundle it was fitted to) and the algorithm
  identification of each recalibrated finding carries it as a parameter;
- a Segmentation (BINARY) of the report-conditioned masks, one segment per
  sentence, the sentence as segment label/description; lesion maps
  (:class:`LesionMap`) go into a second, FRACTIONAL (probability) Segmentation;
- a Secondary Capture (RGB) of the view with its overlays and legends, for PACS
  that cannot show SEG;
- an Encapsulated PDF of the one-page report (:mod:`.report_pdf`).

Codes that DICOM does not define (our finding labels, "model score", QC flag codes)
come from the local coding scheme :data:`CODING_SCHEME` ("99" designators are
private by PS3.16 8.2), declared in each object's Coding Scheme Identification.

``profile`` de-identifies every object before it is written (see
:mod:`cxr_viewer.core.export.anonymise`); pass the same
:class:`~cxr_viewer.core.export.anonymise.Anonymiser` used for the source images so
the UIDs stay consistent across the study and these derived objects.
"""

from __future__ import annotations

import datetime as _dt
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import ExportError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from cxr_viewer.core.inference.results import AnalysisResult, Finding
    from cxr_viewer.core.io.record import ImageRecord

__all__ = [
    "CODING_SCHEME", "LesionMap", "SERIES_NUMBERS", "source_dataset", "write_results",
    "build_sr", "build_seg", "build_sc", "build_encapsulated_pdf",
]

log = logging.getLogger(__name__)

#: Private coding scheme for our own concepts (PS3.16 8.2: "99" prefix = local).
CODING_SCHEME = "99CXRV"
MANUFACTURER = "cxr-viewer project"
MODEL_NAME = "cxr-viewer"
#: Series numbers of the derived series, far from what modalities use.
SERIES_NUMBERS = {"SR": 9001, "SEG": 9002, "SEG_FRACTIONAL": 9003, "SC": 9004, "DOC": 9005}
_LO = 64  # DICOM LO value length


@dataclass(frozen=True, eq=False)
class LesionMap:
    """A probability map (float HxW in [0, 1]) stored as a FRACTIONAL segment, with its description."""

    text: str
    prob: np.ndarray


def _software_version() -> str:
    try:
        from cxr_viewer import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def _lo(text: str) -> str:
    """A value fitting a DICOM LO element (64 characters, no backslash or control characters)."""
    text = " ".join(str(text).replace("\\", "/").split())
    return text if len(text) <= _LO else text[: _LO - 3] + "..."


def _code_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").upper() or "X"


def _code(value: str, meaning: str) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(_code_value(value), CODING_SCHEME, _lo(meaning))


def _scheme_item() -> Any:
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=CODING_SCHEME, name="cxr-viewer local codes", version="1",
        responsible_organization=MANUFACTURER,
    )


def source_dataset(record: "ImageRecord") -> "Dataset":
    """The source image's header (pixel data dropped by the reader), checked for what results need."""
    ds = getattr(record, "header", None)
    if record.format != "dicom" or ds is None:
        raise ExportError(
            "DICOM results can only be written for a DICOM image (this one came from a "
            f"{record.format.upper()} file). Export the PDF or PNG report instead."
        )
    missing = [kw for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
               if not str(ds.get(kw, "") or "").strip()]
    if missing:
        raise ExportError(
            "The source DICOM file lacks " + ", ".join(missing) + ", so results cannot be filed under its "
            "study. Export it again from the PACS, or export the PDF report instead."
        )
    ds = ds.copy()
    _repair_age(ds)
    ds.Rows, ds.Columns = (int(ds.get("Rows") or record.shape[0]), int(ds.get("Columns") or record.shape[1]))
    return ds


def _repair_age(ds: "Dataset") -> None:
    """Patient's Age is copied into every result object: store it as a valid AS value ("62" -> "062Y") or not at all."""
    age = str(ds.get("PatientAge", "") or "").strip()
    if not age or re.fullmatch(r"\d{3}[DWMY]", age):
        return
    m = re.fullmatch(r"(\d{1,3})\s*([DWMY]?)", age.upper())
    if m:
        ds.PatientAge = f"{int(m.group(1)):03d}{m.group(2) or 'Y'}"
    else:
        del ds.PatientAge


def _model_index(result: "AnalysisResult") -> dict[str, dict[str, Any]]:
    return {str(m.get("name")): dict(m) for m in result.models}


def _lo_text(text: str) -> str:
    """An SR TEXT value (UT): any length, no control characters."""
    return "".join(c for c in text if c >= " ")


def _algorithm(f: "Finding", models: dict[str, dict[str, Any]], backend: dict[str, str],
               profile: dict[str, Any] | None = None) -> Any:  # fmt: skip
    from highdicom.sr import AlgorithmIdentification

    m = models.get(f.model, {})
    params = [f"weights sha256 {m.get('sha256') or 'unknown'}"]
    if profile is not None and f.threshold_method.startswith("site profile "):
        params.append(_lo(f"site profile {profile.get('name')} v{profile.get('version')} "
                          f"{str(profile.get('created', ''))[:10]}".strip()))  # fmt: skip
    if f.model in backend:
        params.append(f"backend {backend[f.model]}")
    if not f.trained:
        params.append("untrained weights")
    if f.validated is False:
        params.append("not validated: " + (f.note or "see the model card"))
    return AlgorithmIdentification(name=_lo(f.model), version=_lo(f.model_version or m.get("version") or "unknown"),
                                   parameters=params)


def build_sr(src: "Dataset", result: "AnalysisResult", *, series_uid: str | None = None, sop_uid: str | None = None) -> Any:
    """A Comprehensive 3D SR with one TID 1500 measurement report of every finding and the QC flags."""
    import highdicom as hd
    from highdicom.sr import (
        CodedConcept,
        DeviceObserverIdentifyingAttributes,
        Measurement,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME,
        ),
    )
    context = ObservationContext(observer_device_context=device)
    present = CodedConcept("52101004", "SCT", "Present")
    absent = CodedConcept("2667000", "SCT", "Absent")
    no_units = CodedConcept("1", "UCUM", "no units")
    score_name = _code("MODEL_SCORE", "Model score")
    threshold_name = _code("OP_THRESHOLD", "Operating threshold")
    source_ref = SourceImageForMeasurementGroup(
        referenced_sop_class_uid=str(src.SOPClassUID), referenced_sop_instance_uid=str(src.SOPInstanceUID),
    )
    models = _model_index(result)
    groups = []
    for f in result.findings:
        concept = _code(f.label, f.label.replace("_", " "))
        algo = _algorithm(f, models, result.backend, result.site_profile)
        groups.append(MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=_lo(f"{f.model} {f.label}")),
            finding_type=concept,
            algorithm_id=algo,
            source_images=[source_ref],
            measurements=[
                Measurement(name=score_name, value=float(f.score), unit=no_units, algorithm_id=algo),
                Measurement(name=threshold_name, value=float(f.threshold), unit=no_units,
                            method=_code(f.threshold_method or "unspecified", f.threshold_method or "unspecified")),
            ],
            qualitative_evaluations=[QualitativeEvaluation(name=concept, value=present if f.positive else absent)],
        ))
    qc_items = [
        QualitativeEvaluation(name=_code(q.code, q.message), value=_code(f"QC_{q.severity}", q.severity))
        for q in result.qc
    ] or [QualitativeEvaluation(name=_code("QC", "Image quality checks"), value=_code("QC_PASSED", "passed"))]
    groups.append(MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="image quality"),
        finding_type=_code("QC", "Image quality checks"),
        source_images=[source_ref],
        qualitative_evaluations=qc_items,
    ))
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=CodedConcept("168731009", "SCT", "Chest X-ray"),
        imaging_measurements=groups,
    )
    if result.site_profile is not None:  # which site calibration the scores and thresholds come from
        from highdicom.sr import RelationshipTypeValues, TextContentItem

        from cxr_viewer.core.site_profile import profile_text

        report[0].ContentSequence.append(TextContentItem(
            name=_code("SITE_PROFILE", "Site calibration profile"), value=_lo_text(profile_text(result.site_profile)),
            relationship_type=RelationshipTypeValues.CONTAINS,
        ))  # fmt: skip
    return hd.sr.Comprehensive3DSR(
        evidence=[src], content=report[0],
        series_instance_uid=series_uid or hd.UID(), series_number=SERIES_NUMBERS["SR"],
        sop_instance_uid=sop_uid or hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description="cxr-viewer findings (research use only)",
        coding_schemes=[_scheme_item()],
    )


def _algorithm_sequence(result: "AnalysisResult", model_task: str = "text_segmentation") -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    m = next((dict(x) for x in result.models if x.get("task") == model_task), None)
    if m is None:
        return hd.AlgorithmIdentificationSequence(name=MODEL_NAME, family=codes.cid7162.ArtificialIntelligence,
                                                  version=_software_version())
    return hd.AlgorithmIdentificationSequence(
        name=_lo(str(m.get("name"))), family=codes.cid7162.ArtificialIntelligence,
        version=_lo(str(m.get("version") or "unknown")), parameters={"weights sha256": str(m.get("sha256") or "")},
    )


def build_seg(
    src: "Dataset",
    masks: Sequence[Any],
    result: "AnalysisResult",
    *,
    fractional: bool = False,
    series_uid: str | None = None,
    sop_uid: str | None = None,
) -> Any:
    """One Segmentation of the masks, one segment per sentence (BINARY, or FRACTIONAL probability maps)."""
    import highdicom as hd
    from highdicom.sr import CodedConcept

    rows, cols = int(src.Rows), int(src.Columns)
    planes = []
    descriptions = []
    algo = _algorithm_sequence(result)
    for i, m in enumerate(masks, start=1):
        values = np.asarray(m.prob if fractional else (m.binary() if hasattr(m, "binary") else m.mask))
        if values.shape != (rows, cols):
            raise ExportError(
                f"Mask {i} is {values.shape[1]}×{values.shape[0]} pixels but the image is {cols}×{rows}; "
                "masks must be at the image's size."
            )
        planes.append(np.clip(values.astype(np.float32), 0, 1) if fractional else values.astype(bool))
        negative = bool(getattr(m, "negative", False))
        category = (CodedConcept("91723000", "SCT", "Anatomical Structure") if negative
                    else CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure"))
        desc = hd.seg.SegmentDescription(
            segment_number=i, segment_label=_lo(m.text), segmented_property_category=category,
            segmented_property_type=_code("REPORT_REGION", "Region named in the report"),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
        )
        desc.SegmentDescription = _lo(m.text)
        descriptions.append(desc)
    if not planes:
        raise ExportError("There are no masks to store: paste a report and segment it first.")
    pixel_array = np.stack(planes, axis=-1)[None]
    kind = "SEG_FRACTIONAL" if fractional else "SEG"
    kwargs: dict[str, Any] = {}
    if fractional:
        kwargs.update(fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY, max_fractional_value=255)
    seg = hd.seg.Segmentation(
        source_images=[src], pixel_array=pixel_array,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or hd.UID(), series_number=SERIES_NUMBERS[kind],
        sop_instance_uid=sop_uid or hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME, software_versions=_software_version(),
        device_serial_number="none", omit_empty_frames=False,
        content_label="LESIONMAP" if fractional else "REPORTMASKS",
        content_description="cxr-viewer report-conditioned masks (research use only)",
        series_description=("cxr-viewer lesion maps" if fractional else "cxr-viewer report masks") + " (research use only)",
        coding_schemes=[_scheme_item()],
        **kwargs,
    )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "FrameOfReferenceUID" not in src and "PixelMeasuresSequence" in shared:
        # A projection image: the SEG overlays its source pixel for pixel. highdicom writes Pixel Spacing
        # here without a Slice Thickness, which its own reader (and so other tools) then refuse.
        del shared.PixelMeasuresSequence
    if "PatientOrientation" not in seg:  # General Image, type 2C for images without a patient position
        seg.PatientOrientation = src.get("PatientOrientation") or ""
    return seg


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _reference_source(ds: "Dataset", src: "Dataset") -> None:
    """Source Image Sequence pointing at the analysed image (PS3.3 C.7.6.1.1.4, purpose from CID 7202)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    item = Dataset()
    item.ReferencedSOPClassUID = src.SOPClassUID
    item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "121322", "DCM"
    code.CodeMeaning = "Source image for image processing operation"
    item.PurposeOfReferenceCodeSequence = DicomSequence([code])
    ds.SourceImageSequence = DicomSequence([item])


def build_sc(src: "Dataset", view: np.ndarray, *, burned_in_identity: bool, series_uid: str | None = None,
             sop_uid: str | None = None) -> Any:
    """A Secondary Capture (RGB, 8 bit) of the view with its overlays and legends."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    rgb = np.ascontiguousarray(np.asarray(view, dtype=np.uint8))
    if rgb.ndim != 3 or rgb.shape[2] not in (3, 4):
        raise ExportError("The view picture must be an RGB image (height × width × 3).")
    rgb = np.ascontiguousarray(rgb[..., :3])
    orientation = src.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=src, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid or hd.UID(),
        series_number=SERIES_NUMBERS["SC"], sop_instance_uid=sop_uid or hd.UID(), instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),  # replaced below: highdicom wants a value, the source may have none
        series_description="cxr-viewer view with overlays (research use only)",
    )
    # Type 2C: the source's orientation when it has one, else empty (the view keeps the image's orientation).
    sc.PatientOrientation = list(orientation) if orientation is not None and len(orientation) == 2 else ""
    if "Laterality" not in sc:  # General Series, type 2C: empty when the source does not say
        sc.Laterality = src.get("Laterality") or ""
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES" if burned_in_identity else "NO"
    sc.DerivationDescription = "View of the source image with cxr-viewer overlays and legends burned in"
    deriv = Dataset()
    deriv.CodeValue, deriv.CodingSchemeDesignator, deriv.CodeMeaning = "113076", "DCM", "Segmentation"
    sc.DerivationCodeSequence = DicomSequence([deriv])
    _reference_source(sc, src)
    return sc


def build_encapsulated_pdf(src: "Dataset", pdf_bytes: bytes, *, title: str = "cxr-viewer analysis report",
                           series_uid: str | None = None, sop_uid: str | None = None) -> Any:
    """An Encapsulated PDF instance in a new series of the source study."""
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import EncapsulatedPDFStorage

    if not pdf_bytes.startswith(b"%PDF"):
        raise ExportError("The report file is not a PDF, so it cannot be stored as an Encapsulated PDF.")
    date, time = _now()
    doc = hd.SOPClass(
        study_instance_uid=src.StudyInstanceUID, series_instance_uid=series_uid or hd.UID(),
        series_number=SERIES_NUMBERS["DOC"], sop_instance_uid=sop_uid or hd.UID(),
        sop_class_uid=EncapsulatedPDFStorage, instance_number=1, modality="DOC", manufacturer=MANUFACTURER,
        transfer_syntax_uid="1.2.840.10008.1.2.1", series_description="cxr-viewer report (research use only)",
        manufacturer_model_name=MODEL_NAME, software_versions=_software_version(),
        content_date=date, content_time=time,
    )
    doc.copy_patient_and_study_information(src)
    doc.ConversionType = "WSD"
    doc.AcquisitionDateTime = date + time
    doc.BurnedInAnnotation = "NO"  # the report page carries no patient name or ID
    doc.DocumentTitle = _lo(title)
    doc.ConceptNameCodeSequence = DicomSequence()
    doc.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = pdf_bytes + (b"\x00" if len(pdf_bytes) % 2 else b"")
    doc.EncapsulatedDocument = data
    doc.EncapsulatedDocumentLength = len(pdf_bytes)
    item = Dataset()
    item.ReferencedSOPClassUID = src.SOPClassUID
    item.ReferencedSOPInstanceUID = src.SOPInstanceUID
    doc.SourceInstanceSequence = DicomSequence([item])
    return doc


def _as_written(ds: "Dataset") -> "Dataset":
    import io

    import pydicom

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def _view_array(view_png: Any) -> np.ndarray:
    if isinstance(view_png, (str, Path)):
        from PIL import Image

        try:
            with Image.open(view_png) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as exc:
            raise ExportError(f"The view picture {Path(view_png).name} cannot be read as an image.") from exc
    return np.asarray(view_png)


def write_results(
    record: "ImageRecord",
    result: "AnalysisResult",
    out_dir: str | Path,
    *,
    masks: Sequence[Any] | None = None,
    view_png: Any = None,
    pdf: str | Path | None = None,
    profile: Any = None,
) -> list[Path]:
    """Write SR, SEG (when there are masks), SC and Encapsulated PDF for one analysed DICOM image.

    ``masks``: report-conditioned masks (:class:`~cxr_viewer.core.inference.segment.Mask` or session
    ``MaskLayer``, each with its sentence ``text``) for a BINARY SEG; :class:`LesionMap` items go to a
    FRACTIONAL SEG. ``view_png``: an RGB array or an image file of the view with overlays (taken to show the
    patient's identity: Burned In Annotation YES), or a :class:`~.report_pdf.ViewPicture` that says
    whether it does; when None the view is drawn here (image + masks + legends, no identity). ``pdf``: the report PDF; when None
    it is written here. ``profile``: an :class:`~cxr_viewer.core.export.anonymise.Anonymiser`
    applied to every object before writing. Returns the files written, SR first.
    """
    src = source_dataset(record)
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"Cannot create the folder {out}: {exc.strerror or exc}.") from exc
    # the de-identifier is handed in (anonymise.export_anonymised makes it): no import back into anonymise
    anonymiser = profile
    if anonymiser is not None and not callable(getattr(anonymiser, "anonymise", None)):
        raise ExportError("The de-identification profile must be an Anonymiser (see core.export.anonymise).")
    masks = list(masks or [])

    with _quiet_about_names():
        return _write_results(record, result, src, out, masks, view_png, pdf, anonymiser)


@contextmanager
def _quiet_about_names() -> Iterator[None]:
    """highdicom warns about odd patient names by quoting them: that text must not reach stderr or a log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def _write_results(record: "ImageRecord", result: "AnalysisResult", src: "Dataset", out: Path,
                   masks: list[Any], view_png: Any, pdf: str | Path | None, anonymiser: Any) -> list[Path]:
    from cxr_viewer.core.export import report_pdf

    binary = [m for m in masks if not isinstance(m, LesionMap)]
    lesion = [m for m in masks if isinstance(m, LesionMap)]
    objects: list[tuple[str, Any]] = [("SR", build_sr(src, result))]
    if binary:
        objects.append(("SEG", build_seg(src, binary, result)))
    if lesion:
        objects.append(("SEG", build_seg(src, lesion, result, fractional=True)))
    if view_png is None:
        view_png = report_pdf.render_view_picture(record, masks=binary)
    if isinstance(view_png, report_pdf.ViewPicture):
        view, burned_identity = view_png.rgb, view_png.shows_identity
    else:
        view = _view_array(view_png)
        burned_identity = True  # a screenshot of the viewer may show the patient's name in a corner
    objects.append(("SC", build_sc(src, view, burned_in_identity=burned_identity)))
    if pdf is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pdf_bytes = report_pdf.write_report(record, result, Path(tmp) / "report.pdf", masks=binary).read_bytes()
    else:
        try:
            pdf_bytes = Path(pdf).read_bytes()
        except OSError as exc:
            raise ExportError(f"The report PDF {Path(pdf).name} cannot be read.") from exc
    objects.append(("DOC", build_encapsulated_pdf(src, pdf_bytes)))

    written = []
    for kind, ds in objects:
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: notes and sentences are not all Latin-1
        if anonymiser is not None:
            ds = _as_written(ds)  # de-identify exactly what would be written (plain DICOM values)
            anonymiser.anonymise(ds, check_burned_in=kind == "SC" and burned_identity)
        path = out / f"{kind}_{ds.SOPInstanceUID}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as exc:
            raise ExportError(f"Could not write {path.name}: {exc.strerror or exc}. Check the folder is writable.") from exc
        written.append(path)
    log.info("wrote %d DICOM result objects", len(written))
    return written
