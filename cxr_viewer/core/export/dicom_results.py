"""Analysis results as DICOM objects other systems can display (highdicom).

For one analysed DICOM image :func:`write_results` writes, each in a new series of
the ORIGINAL study (same Study Instance UID, patient and study attributes copied
from the source header) and each referencing the source image's SOP instance:

- a Comprehensive 3D SR holding a TID 1500 measurement report of the one judged result
  (:mod:`cxr_viewer.core.judging`): one measurement group per finding (finding in SNOMED CT
  where a concept fits, score, threshold with its source, presence Present/Absent only for a
  validated verdict, otherwise Indeterminate with the coded state and its reason, the model as
  algorithm identification with its weights sha256), one group of QC flags, and the reader's
  measurements as planar groups with their SCOORD on the source image; the site profile
  applied is named in a TEXT item (see docs/dicom-conformance.md);
- a Segmentation (BINARY) of the report-conditioned masks, one segment per
  sentence that drew something, the sentence as segment label/description; lesion maps
  (:class:`LesionMap`) go into a second, FRACTIONAL (probability) Segmentation;
- a Secondary Capture (RGB) of the view with its overlays and legends, for PACS
  that cannot show SEG;
- an Encapsulated PDF of the one-page report (:mod:`.report_pdf`).

Codes with no standard concept (some finding labels, the finding states, QC flag codes)
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

    from cxr_viewer.core.inference.results import AnalysisResult
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
    valid_for_vr(ds)
    ds.Rows, ds.Columns = (int(ds.get("Rows") or record.shape[0]), int(ds.get("Columns") or record.shape[1]))
    return ds


#: Longest value of each string VR (PS3.5 6.2); a PN limit is per component group.
_VR_MAX = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "DS": 16, "IS": 12, "AS": 4, "ST": 1024,
           "LT": 10240, "UC": 1 << 16, "UT": 1 << 20, "UR": 1 << 16}
_MULTI_LINE = {"ST", "LT", "UT"}
_CS = re.compile(r"[A-Z0-9 _]{0,16}")
_TM = re.compile(r"([01]\d|2[0-3])([0-5]\d([0-5]\d(\.\d{1,6})?)?)?")


def _valid_date(text: str) -> bool:
    try:
        _dt.datetime.strptime(text, "%Y%m%d")
    except ValueError:
        return False
    return len(text) == 8


def _clean_text(text: str, vr: str) -> str:
    keep = "\r\n\t\f" if vr in _MULTI_LINE else ""
    text = "".join(c for c in text if c >= " " or c in keep).replace("\\", "/")
    if vr == "PN":
        groups = text.split("=")[:3]
        return "=".join("^".join(part[:_VR_MAX["PN"]] for part in g.split("^")[:5])[:_VR_MAX["PN"]] for g in groups)
    return text[: _VR_MAX.get(vr, len(text))].rstrip() if vr not in _MULTI_LINE else text[: _VR_MAX[vr]]


def _one_valid(value: Any, vr: str) -> Any:
    """``value`` valid for ``vr``, or None when it cannot be made valid (the element is then emptied)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    text = _clean_text(str(value), vr)
    if vr == "DA":
        return text if _valid_date(text) else None
    if vr == "TM":
        return text if _TM.fullmatch(text) else None
    if vr == "DT":
        return text if re.fullmatch(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?", text) \
            and (len(text) < 8 or _valid_date(text[:8])) else None
    if vr == "CS":
        return text.upper() if _CS.fullmatch(text.upper()) else None
    if vr == "AS":
        return text if re.fullmatch(r"\d{3}[DWMY]", text) else None
    return text


def _single_valued(tag: Any) -> bool:
    from pydicom.datadict import dictionary_VM

    try:
        return dictionary_VM(tag) == "1"
    except KeyError:
        return False


def valid_for_vr(ds: "Dataset") -> None:
    """Make every string value of ``ds`` (nested too) valid for its VR, in place: decoded from its
    character set (the objects we write are UTF-8), control characters and stray backslashes
    removed, cut to the VR's length, and dates, times, ages and code strings that cannot be
    repaired emptied. A hostile header (a 10,000-character name, markup, a garbage date, an
    unknown character set) then never reaches a written object invalid."""
    try:
        ds.decode()
    except Exception:  # noqa: BLE001 - an unknown or broken character set: values stay as read
        log.debug("source header could not be decoded from its character set", exc_info=True)
    from pydicom.datadict import dictionary_VR

    for elem in list(ds):
        if elem.VR == "UN" and not elem.tag.is_private and isinstance(elem.value, bytes):
            try:  # a value the reader kept raw (too long to decode): back to its own VR, to be cut below
                vr = dictionary_VR(elem.tag)
            except KeyError:
                continue
            if vr in _VR_MAX or vr in ("DA", "TM", "DT"):
                ds.add_new(elem.tag, vr, elem.value[: 1 << 16].decode("latin-1").rstrip("\x00 "))
                elem = ds[elem.tag]
        if elem.VR == "SQ":
            for item in elem.value or ():
                valid_for_vr(item)
            continue
        if elem.VR not in _VR_MAX and elem.VR not in ("DA", "TM", "DT"):
            continue
        if elem.value is None or elem.value == "":
            continue
        if elem.VR in ("DS", "IS"):
            continue  # numbers: pydicom holds them as numbers already
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        if len(values) > 1 and _single_valued(elem.tag):  # a stray backslash split one value in many
            values = ["/".join(str(v) for v in values)]
        fixed = [_one_valid(v, elem.VR) for v in values]
        if elem.VR == "PN":
            from pydicom.valuerep import PersonName

            fixed = [None if v is None else PersonName(v) for v in fixed]
        if elem.keyword == "Modality" and (len(fixed) != 1 or not fixed[0]):
            elem.value = "OT"
        elif elem.keyword == "PatientSex" and fixed != ["M"] and fixed != ["F"] and fixed != ["O"]:
            elem.value = ""
        elif any(v is None for v in fixed):
            elem.value = ""
        else:
            elem.value = fixed if len(fixed) > 1 else fixed[0]
    ds.SpecificCharacterSet = "ISO_IR 192"


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


def _lo_text(text: str) -> str:
    """An SR TEXT value (UT): any length, no control characters."""
    return "".join(c for c in text if c >= " ")


#: Findings with a standard concept (SNOMED CT), looked up in DICOM PS3.16 context groups (pydicom's
#: code dictionary) or the SNOMED CT browser; the rest stay in :data:`CODING_SCHEME` (docs/dicom-conformance.md).
SNOMED_FINDINGS: dict[str, tuple[str, str]] = {
    "atelectasis": ("46621007", "Atelectasis"),
    "cardiomegaly": ("8186001", "Cardiomegaly"),
    "effusion": ("60046008", "Pleural effusion"),
    "pleural effusion": ("60046008", "Pleural effusion"),
    "pneumothorax": ("36118008", "Pneumothorax"),
    "pneumonia": ("233604007", "Pneumonia"),
    "consolidation": ("95436008", "Lung consolidation"),
    "edema": ("19242006", "Pulmonary edema"),
    "emphysema": ("87433001", "Pulmonary emphysema"),
    "fibrosis": ("112674009", "Fibrosis"),
    "mass": ("4147007", "Mass"),
    "nodule": ("27925004", "Nodule"),
}
#: Private codes of the six finding states (a receiving system can tell them apart).
STATE_CODES = {
    "positive": "STATE_POSITIVE", "negative": "STATE_NEGATIVE", "not_validated": "STATE_NOT_VALIDATED",
    "above_not_validated": "STATE_ABOVE_NOT_VALIDATED", "outside_population": "STATE_OUTSIDE_POPULATION",
    "not_applicable": "STATE_NOT_APPLICABLE",
}


def finding_concept(label: str) -> Any:
    """The coded concept of a finding: SNOMED CT where one fits, else the private scheme."""
    from highdicom.sr import CodedConcept

    from cxr_viewer.core.judging import display_name

    key = " ".join(label.replace("_", " ").replace("-", " ").lower().split())
    if key in SNOMED_FINDINGS:
        value, meaning = SNOMED_FINDINGS[key]
        return CodedConcept(value, "SCT", meaning)
    return _code(label, display_name(label))


def _algorithm(j: Any, models: dict[str, dict[str, Any]], backend: dict[str, str],
               profile: dict[str, Any] | None = None) -> Any:  # fmt: skip
    """Algorithm identification of one judged finding: name, version, weights sha256, site profile, threshold source."""
    from highdicom.sr import AlgorithmIdentification

    f = j.finding
    m = models.get(f.model, {})
    params = [f"weights sha256 {m.get('sha256') or 'unknown'}", f"threshold source {j.threshold_source}"]
    if profile is not None and j.threshold_source == "site_profile":
        params.append(_lo(f"site profile {profile.get('name')} v{profile.get('version')} "
                          f"{str(profile.get('created', ''))[:10]}".strip()))  # fmt: skip
    if f.model in backend:
        params.append(f"backend {backend[f.model]}")
    if not f.trained:
        params.append("untrained weights")
    return AlgorithmIdentification(name=_lo(f.model), version=_lo(f.model_version or m.get("version") or "unknown"),
                                   parameters=params)


_UCUM = {"mm": ("mm", "millimeter"), "deg": ("deg", "degree"), "mm2": ("mm2", "square millimeter"),
         "HU": ("[hnsf'U]", "Hounsfield unit"), "px": ("{pixels}", "pixels"), "px2": ("{pixels}", "pixels")}


def _unit(unit: str) -> Any:
    from highdicom.sr import CodedConcept

    value, meaning = _UCUM.get(unit, ("1", f"no units ({unit})" if unit and unit != "0-1" else "no units"))
    return CodedConcept(value, "UCUM", _lo(meaning))


def _points(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """(row, col) image points as SCOORD data: (column, row), pixel centres at .5 (PS3.3 C.18.6.1.1)."""
    return np.asarray([[float(c) + 0.5, float(r) + 0.5] for r, c in points], dtype=np.float32)


def _measurement_groups(src: "Dataset", annotations: Sequence[Any]) -> list[Any]:
    """TID 1410 planar measurement groups with their SCOORD on the source image, one per measurement."""
    import highdicom as hd
    from highdicom.sr import (
        CodedConcept,
        ImageRegion,
        Measurement,
        PlanarROIMeasurementsAndQualitativeEvaluations,
        SourceImageForRegion,
        TrackingIdentifier,
    )

    from cxr_viewer.core.export.measurements import measurement_rows

    source = SourceImageForRegion(referenced_sop_class_uid=str(src.SOPClassUID),
                                  referenced_sop_instance_uid=str(src.SOPInstanceUID))
    length = CodedConcept("410668003", "SCT", "Length")
    width = CodedConcept("103355008", "SCT", "Width")
    groups = []
    for i, row in enumerate(measurement_rows(annotations), start=1):
        ann = row.annotation
        kind = row.kind
        if kind == "distance":
            region = ImageRegion("POLYLINE", _points(ann.points), source)
            items = [Measurement(name=length, value=float(ann.length), unit=_unit(ann.unit))]
            finding = CodedConcept("121206", "DCM", "Distance")
        elif kind == "angle":
            region = ImageRegion("POLYLINE", _points(ann.points), source)
            items = [Measurement(name=CodedConcept("1483009", "SCT", "Angle"), value=float(ann.degrees),
                                 unit=_unit("deg"))]
            finding = CodedConcept("1483009", "SCT", "Angle")
        elif kind == "ctr":  # two groups, each width with its own line; the ratio goes with the cardiac one
            ratio = Measurement(name=_code("CTR", "Cardiothoracic ratio"), value=float(ann.ratio),
                                unit=CodedConcept("{ratio}", "UCUM", "ratio"))
            for part, line, value, extra in (("cardiac", ann.cardiac, ann.cardiac_width, [ratio]),
                                             ("thoracic", ann.thoracic, ann.thoracic_width, [])):
                groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=_lo(f"measurement {i}: {row.name} {part}")),
                    referenced_region=ImageRegion("POLYLINE", _points(line), source), finding_type=width,
                    measurements=[Measurement(name=_code(f"{part.upper()}_WIDTH", f"{part.capitalize()} width"),
                                              value=float(value), unit=_unit(ann.unit)), *extra],
                ))  # fmt: skip
            continue
        elif kind == "roi":
            (r0, c0), (r1, c1) = ann.p0, ann.p1
            if ann.shape == "ellipse":
                rm, cm = (r0 + r1) / 2, (c0 + c1) / 2
                pts = [(rm, min(c0, c1)), (rm, max(c0, c1)), (min(r0, r1), cm), (max(r0, r1), cm)]
                region = ImageRegion("ELLIPSE", _points(pts), source)
            else:
                pts = [(r0, c0), (r0, c1), (r1, c1), (r1, c0), (r0, c0)]
                region = ImageRegion("POLYLINE", _points(pts), source)
            st = ann.stats
            unit = _unit(st.unit)
            items = [Measurement(name=CodedConcept("373098007", "SCT", "Mean"), value=float(st.mean), unit=unit),
                     Measurement(name=CodedConcept("386136009", "SCT", "Standard Deviation"), value=float(st.sd),
                                 unit=unit),
                     Measurement(name=CodedConcept("255605001", "SCT", "Minimum"), value=float(st.minimum), unit=unit),
                     Measurement(name=CodedConcept("56851009", "SCT", "Maximum"), value=float(st.maximum), unit=unit),
                     Measurement(name=CodedConcept("42798000", "SCT", "Area"),
                                 value=float(st.area_mm2 if st.area_mm2 is not None else st.area_px),
                                 unit=_unit("mm2" if st.area_mm2 is not None else "px2"))]
            finding = CodedConcept("42798000", "SCT", "Area")
        else:
            continue
        groups.append(PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=_lo(f"measurement {i}: {row.name}")),
            referenced_region=region, finding_type=finding, measurements=items,
        ))
    return groups


def build_sr(src: "Dataset", result: Any, *, series_uid: str | None = None, sop_uid: str | None = None,
             annotations: Sequence[Any] = ()) -> Any:  # fmt: skip
    """A Comprehensive 3D SR: one TID 1500 measurement report of every judged finding, the QC flags
    and the reader's measurements (``annotations``, with their SCOORD on the source image)."""
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
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    from cxr_viewer.core.judging import FindingState, judged_from

    judged = judged_from(result)
    device = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=MODEL_NAME, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME,
        ),
    )
    context = ObservationContext(observer_device_context=device)
    presence = CodedConcept("121052", "DCM", "Presence of property")
    present = CodedConcept("52101004", "SCT", "Present")
    absent = CodedConcept("272519000", "SCT", "Absent")
    indeterminate = CodedConcept("82334004", "SCT", "Indeterminate")
    no_units = CodedConcept("1", "UCUM", "no units")
    score_name = CodedConcept("122157", "DCM", "Probability")
    threshold_name = CodedConcept("122411", "DCM", "Threshold Value")
    state_name = _code("FINDING_STATE", "Finding state")
    source_ref = SourceImageForMeasurementGroup(
        referenced_sop_class_uid=str(src.SOPClassUID), referenced_sop_instance_uid=str(src.SOPInstanceUID),
    )
    models = {str(m.get("name")): dict(m) for m in judged.models}
    backend = dict(judged.result.backend)
    groups = []
    for j in judged.findings:
        f = j.finding
        algo = _algorithm(j, models, backend, judged.site_profile)
        evaluations = [QualitativeEvaluation(name=state_name, value=_code(STATE_CODES[j.state.value], j.state_text))]
        if j.state is FindingState.POSITIVE:
            evaluations.insert(0, QualitativeEvaluation(name=presence, value=present))
        elif j.state is FindingState.NEGATIVE:
            evaluations.insert(0, QualitativeEvaluation(name=presence, value=absent))
        else:  # no presence assertion: indeterminate, with the reason
            evaluations.insert(0, QualitativeEvaluation(name=presence, value=indeterminate))
        measurements = []
        if j.state is not FindingState.NOT_APPLICABLE:
            measurements = [
                Measurement(name=score_name, value=float(f.score), unit=no_units, algorithm_id=algo),
                Measurement(name=threshold_name, value=float(f.threshold), unit=no_units,
                            method=CodedConcept(f"THRESHOLD_{j.threshold_source.upper()}", CODING_SCHEME,
                                                _lo(f.threshold_method or f"threshold from {j.source_text}"))),
            ]
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier=_lo(f"{f.model} {f.label}")),
            finding_type=finding_concept(f.label), algorithm_id=algo, source_images=[source_ref],
            measurements=measurements, qualitative_evaluations=evaluations,
        )
        if j.reason:
            group[0].ContentSequence.append(TextContentItem(
                name=_code("STATE_REASON", "Reason for the finding state"), value=_lo_text(j.reason),
                relationship_type=RelationshipTypeValues.CONTAINS,
            ))  # fmt: skip
        groups.append(group)
    qc_items = [
        QualitativeEvaluation(name=_code(q.code, q.message), value=_code(f"QC_{q.severity}", q.severity))
        for q in judged.qc
    ] or [QualitativeEvaluation(name=_code("QC", "Image quality checks"), value=_code("QC_PASSED", "passed"))]
    groups.append(MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=hd.UID(), identifier="image quality"),
        finding_type=_code("QC", "Image quality checks"),
        source_images=[source_ref],
        qualitative_evaluations=qc_items,
    ))
    groups.extend(_measurement_groups(src, annotations))
    report = MeasurementReport(
        observation_context=context,
        procedure_reported=CodedConcept("168731009", "SCT", "Chest X-ray"),
        imaging_measurements=groups,
    )
    if judged.site_profile is not None:  # which site calibration the scores and thresholds come from
        from cxr_viewer.core.site.profile import profile_text

        report[0].ContentSequence.append(TextContentItem(
            name=_code("SITE_PROFILE", "Site calibration profile"), value=_lo_text(profile_text(judged.site_profile)),
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
                           series_uid: str | None = None, sop_uid: str | None = None,
                           identified: bool = False) -> Any:  # fmt: skip
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
    doc.BurnedInAnnotation = "YES" if identified else "NO"  # an identified record prints the patient on every page
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
    annotations: Sequence[Any] = (),
    pdf_identified: bool = False,
) -> list[Path]:
    """Write SR, SEG (when there are masks), SC and Encapsulated PDF for one analysed DICOM image.

    ``masks``: report-conditioned masks (:class:`~cxr_viewer.core.inference.segment.Mask` or session
    ``MaskLayer``, each with its sentence ``text``) for a BINARY SEG; :class:`LesionMap` items go to a
    FRACTIONAL SEG. ``view_png``: an RGB array or an image file of the view with overlays (taken to show the
    patient's identity: Burned In Annotation YES), or a :class:`~.report_pdf.ViewPicture` that says
    whether it does; when None the view is drawn here (image + masks + legends, no identity). ``pdf``: the report PDF; when None
    it is written here. ``profile``: an :class:`~cxr_viewer.core.export.anonymise.Anonymiser`
    applied to every object before writing. ``annotations``: the reader's measurements, stored as TID 1500
    measurement groups in the SR. ``pdf_identified``: the given PDF prints the patient's identity. Masks that
    drew nothing are not written as segments. Returns the files written, SR first.
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
        return _write_results(record, result, src, out, masks, view_png, pdf, anonymiser, tuple(annotations),
                              pdf_identified and anonymiser is None)


@contextmanager
def _quiet_about_names() -> Iterator[None]:
    """highdicom warns about odd patient names by quoting them: that text must not reach stderr or a log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def _write_results(record: "ImageRecord", result: Any, src: "Dataset", out: Path, masks: list[Any], view_png: Any,
                   pdf: str | Path | None, anonymiser: Any, annotations: tuple[Any, ...],
                   identified: bool) -> list[Path]:  # fmt: skip
    from cxr_viewer.core.export import report_pdf
    from cxr_viewer.core.export.clinical import drew
    from cxr_viewer.core.judging import judged_from

    result = judged_from(result)
    binary = [m for m in masks if not isinstance(m, LesionMap) and drew(m)]  # an empty region is no segment
    lesion = [m for m in masks if isinstance(m, LesionMap)]
    objects: list[tuple[str, Any]] = [("SR", build_sr(src, result, annotations=annotations))]
    if binary:
        objects.append(("SEG", build_seg(src, binary, result)))
    if lesion:
        objects.append(("SEG", build_seg(src, lesion, result, fractional=True)))
    if view_png is None:
        view_png = report_pdf.render_view_picture(record, masks=binary, annotations=annotations)
    if isinstance(view_png, report_pdf.ViewPicture):
        view, burned_identity = view_png.rgb, view_png.shows_identity
    else:
        view = _view_array(view_png)
        burned_identity = True  # a screenshot of the viewer may show the patient's name in a corner
    objects.append(("SC", build_sc(src, view, burned_in_identity=burned_identity)))
    if anonymiser is not None:  # the page is drawn again from a record without identity or real dates
        record, pdf = anonymiser.deidentified_record(record), None
    if pdf is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pdf_bytes = report_pdf.write_report(record, result, Path(tmp) / "report.pdf", masks=binary,
                                                annotations=annotations).read_bytes()
        identified = False
    else:
        try:
            pdf_bytes = Path(pdf).read_bytes()
        except OSError as exc:
            raise ExportError(f"The report PDF {Path(pdf).name} cannot be read.") from exc
    objects.append(("DOC", build_encapsulated_pdf(src, pdf_bytes, identified=identified)))

    written = []
    for kind, ds in objects:
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: notes and sentences are not all Latin-1
        if anonymiser is not None:
            ds = _as_written(ds)  # de-identify exactly what would be written (plain DICOM values)
            anonymiser.anonymise(ds, check_burned_in=kind == "SC" and burned_identity)
        path = out / f"{kind}_{ds.SOPInstanceUID}.dcm"
        try:
            from cxr_viewer.core.staging import staged_file

            with staged_file(path) as part:
                ds.save_as(part, enforce_file_format=True)
        except OSError as exc:
            raise ExportError(f"Could not write {path.name}: {exc.strerror or exc}. Check the folder is writable.") from exc
        written.append(path)
    log.info("wrote %d DICOM result objects", len(written))
    return written
