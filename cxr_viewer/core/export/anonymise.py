"""De-identified export: DICOM PS3.15 Basic Application Level Confidentiality Profile.

The work is done by ``dicognito`` (a maintained implementation of the profile's
actions): every person name replaced, patient and order IDs replaced, every date
and date-time shifted back by one offset per export (so intervals survive, the
"Retain Longitudinal Temporal Information with Modified Dates" option), addresses
and institutions replaced, and every instance UID remapped by a keyed hash.

One :class:`Anonymiser` is one export: it maps the same UID, name or date the same
way in every object it sees, so a study's images and the SR/SEG/SC/PDF objects made
for it (:func:`~cxr_viewer.core.export.dicom_results.write_results` with
``profile=anonymiser``) still reference each other after de-identification. Its key
is random and never written, so pseudonyms cannot be reversed from the output.

What ``dicognito`` leaves and the profile removes (PS3.15 Table E.1-1 action "X"),
we remove here, at every nesting level: private tags (the profile's default, without the
Retain Safe Private option), unknown-VR elements, the attributes in
:data:`PROFILE_REMOVE_EXTRA`, every coded sequence that is not one of the concept
sequences our objects are made of (``ProcedureCodeSequence`` and its free-text
``CodeMeaning`` among them), and every free-text value (LO, SH, ST, LT, UT, UC, UR, AE)
except the few in :data:`KEEP_TEXT` that are either pseudonyms dicognito wrote or text
this program wrote itself. Removing all free text but a short list is stricter than
the table's row by row actions and keeps holding when a modality fills an attribute the
table does not name. The report PDF of an anonymised export is drawn again from a
record stripped of every identifying value (:meth:`Anonymiser.deidentified_record`), so
the page prints no name, ID or real date. Burned-in text
cannot be removed by editing tags: :func:`burned_in_warnings` reads the Burned In
Annotation attribute and runs a simple pixel check, and every warning is returned to
the caller (shown in the GUI, printed by the CLI).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxr_viewer.core.errors import ExportError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from cxr_viewer.core.inference.results import AnalysisResult
    from cxr_viewer.core.io.record import ImageRecord

__all__ = ["Anonymiser", "AnonymisedExport", "PROFILE_REMOVE_EXTRA", "burned_in_warnings",
           "export_anonymised", "text_like_marks"]

log = logging.getLogger(__name__)

PROFILES = ("basic",)

#: PS3.15 Table E.1-1 attributes with action X that dicognito keeps (free text and device identity).
PROFILE_REMOVE_EXTRA: tuple[str, ...] = (
    "StudyDescription", "SeriesDescription", "ImageComments", "StudyComments", "PatientComments",
    "AdditionalPatientHistory", "AdmittingDiagnosesDescription", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "ProtocolName", "DerivationDescription",
    "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "MedicalAlerts", "Allergies",
    "PregnancyStatus", "SmokingStatus", "PatientState", "RequestAttributesSequence", "ReasonForStudy",
    "InterpretationText", "TextComments", "AcquisitionComments", "ContentCreatorName",
    "PerformingPhysicianName", "IssuerOfPatientID", "OtherPatientIDsSequence", "PatientBirthTime",
    "PatientBirthName", "PatientMotherBirthName", "CountryOfResidence", "RegionOfResidence",
    "ResponsiblePerson", "ResponsiblePersonRole", "ResponsibleOrganization", "AdmissionID",
)

#: Action X/Z/D attributes that some IODs require (type 1): replaced by a dummy value instead.
PROFILE_DUMMY: dict[str, str] = {"DeviceSerialNumber": "removed"}

#: Action Z attributes the result IODs require (type 2): kept, emptied.
PROFILE_EMPTY = frozenset({"PatientSex", "StudyID", "AccessionNumber"})

#: Value representations of free text, removed unless kept below.
TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "UR", "AE"})

#: Free text that stays: pseudonyms dicognito wrote (or dummies), in any object.
KEEP_TEXT = frozenset({"PatientID", "DeviceSerialNumber"})

#: Free text of coded concepts: kept inside the concept sequences our objects are made of
#: (:data:`KEEP_CODE_SEQUENCES`), removed anywhere else.
CODE_TEXT = frozenset({
    "CodeValue", "CodeMeaning", "CodingSchemeDesignator", "CodingSchemeVersion", "LongCodeValue", "URNCodeValue",
    "ContextIdentifier", "MappingResource", "ContextGroupVersion", "TemplateIdentifier", "MappingResourceName",
    "CodingSchemeName", "CodingSchemeResponsibleOrganization",
})

#: Text this program writes into its result objects: kept only in an object that says it is ours.
OWN_TEXT = frozenset({
    "TextValue", "SegmentLabel", "SegmentDescription", "SegmentAlgorithmName", "ContentDescription", "DocumentTitle",
    "MIMETypeOfEncapsulatedDocument", "AlgorithmName", "AlgorithmVersion", "AlgorithmParameters", "AlgorithmSource",
})

#: Our own equipment identity in result objects (kept only when the object says it is ours).
OWN_EQUIPMENT = ("Manufacturer", "ManufacturerModelName", "SoftwareVersions")

#: Coded sequences our result objects are made of: their codes stay; any other coded sequence goes.
KEEP_CODE_SEQUENCES = frozenset({
    "ConceptNameCodeSequence", "ConceptCodeSequence", "MeasurementUnitsCodeSequence",
    "SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence",
    "SegmentedPropertyTypeModifierCodeSequence", "AnatomicRegionSequence", "AnatomicRegionModifierSequence",
    "PrimaryAnatomicStructureSequence", "PurposeOfReferenceCodeSequence", "DeidentificationMethodCodeSequence",
    "AlgorithmFamilyCodeSequence", "AlgorithmNameCodeSequence", "ViewCodeSequence", "ViewModifierCodeSequence",
    "DerivationCodeSequence", "MeasurementMethodCodeSequence", "QuantityDefinitionSequence",
    "ContentTemplateSequence", "CodingSchemeIdentificationSequence", "PatientOrientationCodeSequence",
    "PatientOrientationModifierCodeSequence",
})

#: Coded sequences that a result IOD requires (type 2): emptied, not removed.
EMPTY_SEQUENCES = frozenset({"PerformedProcedureCodeSequence"})

#: Header fields of an image record that identify nobody (what a de-identified record keeps).
SAFE_RECORD_FIELDS = ("modality", "view_position", "body_part", "photometric", "bits_stored", "rows", "columns",
                      "frames", "value_range", "value_inverted")

#: Basic Application Confidentiality Profile + Retain Longitudinal Temporal Information with Modified Dates.
_METHOD_CODES = (("113100", "Basic Application Confidentiality Profile"),
                 ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"))


@dataclass
class Anonymiser:
    """One de-identification session (one export); reuse it for a study and everything derived from it."""

    seed: str = field(default_factory=lambda: secrets.token_hex(16), repr=False)

    def __post_init__(self) -> None:
        from dicognito.anonymizer import Anonymizer as _Dicognito

        self._engine = _Dicognito(seed=self.seed)

    @classmethod
    def for_profile(cls, profile: str) -> "Anonymiser":
        if str(profile).lower() not in PROFILES:
            raise ExportError(f"Unknown de-identification profile {profile!r}; use one of: {', '.join(PROFILES)}.")
        return cls()

    def anonymise(self, ds: "Dataset", *, check_burned_in: bool = True) -> list[str]:
        """De-identify ``ds`` in place; returns warnings about what tags cannot fix (burned-in text).

        ``check_burned_in=False`` is for objects this program drew itself without patient identity.
        """
        warnings = burned_in_warnings(ds) if check_burned_in else []
        ds.remove_private_tags()
        ds.walk(_remove_or_dummy)
        self._engine.anonymize(ds)
        _clean(ds, own=_is_own(ds))
        _record_method(ds)
        if warnings:
            ds.PatientIdentityRemoved = "NO"
        return warnings


    @staticmethod
    def deidentified_record(record: "ImageRecord") -> "ImageRecord":
        """``record`` without anything that identifies the patient or the study: no header, no file
        name, and only the header fields in :data:`SAFE_RECORD_FIELDS` (no name, ID or date). What
        the report of an anonymised export is drawn from."""
        from dataclasses import replace

        md = record.metadata or {}
        return replace(record, source=None, header=None, notices=(),
                       metadata={k: md[k] for k in SAFE_RECORD_FIELDS if k in md})


_REMOVE = frozenset(PROFILE_REMOVE_EXTRA)


def _is_own(ds: "Dataset") -> bool:
    from cxr_viewer.core.export.dicom_results import MANUFACTURER

    return str(ds.get("Manufacturer", "")) == MANUFACTURER


def _clean(ds: "Dataset", *, own: bool, parent: str = "") -> None:
    """The free-text and coded-sequence rules of this module, at every nesting level."""
    for elem in list(ds):
        kw = elem.keyword
        if elem.tag.is_private or elem.VR == "UN" or kw in _REMOVE:
            del ds[elem.tag]
        elif elem.VR == "SQ":
            if kw.endswith(("CodeSequence", "CodeSeq")) and kw not in KEEP_CODE_SEQUENCES:
                if kw in EMPTY_SEQUENCES:
                    elem.value = []
                else:
                    del ds[elem.tag]
                continue
            for item in elem.value:
                _clean(item, own=own, parent=kw)
        elif kw in PROFILE_EMPTY:
            elem.value = ""
        elif elem.VR in TEXT_VRS:
            if kw in KEEP_TEXT or (own and (kw in OWN_EQUIPMENT or kw in OWN_TEXT)) or (
                    kw in CODE_TEXT and parent in KEEP_CODE_SEQUENCES):
                continue
            del ds[elem.tag]


def _remove_or_dummy(dataset: "Dataset", elem: Any) -> None:
    """Profile actions for what dicognito leaves, at every nesting level."""
    if elem.keyword in _REMOVE:
        del dataset[elem.tag]
    elif elem.keyword in PROFILE_DUMMY and elem.value:
        elem.value = PROFILE_DUMMY[elem.keyword]


def _record_method(ds: "Dataset") -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds.PatientIdentityRemoved = "YES" if ds.get("BurnedInAnnotation", "NO") == "NO" else "NO"
    ds.LongitudinalTemporalInformationModified = "MODIFIED"
    items = []
    for value, meaning in _METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = DicomSequence(items)


def text_like_marks(pixels: np.ndarray, *, border: float = 0.18) -> int:
    """How many small, bright, text-sized marks sit in the image's border bands (a simple check).

    Burned-in labels are near-white glyphs a few pixels to a few percent of the image high, near the
    edges. This counts connected components of the brightest pixels there that have glyph-like size;
    a count of 3 or more is worth a look. It is a prompt for the user, not a guarantee either way.
    """
    import cv2

    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        return 0
    lo, hi = float(np.percentile(img, 1)), float(img.max())
    if hi - lo <= 1e-6:
        return 0
    bright = (img >= hi - 0.04 * (hi - lo)).astype(np.uint8)
    h, w = img.shape
    band = np.zeros_like(bright)
    bh, bw = max(1, int(h * border)), max(1, int(w * border))
    band[:bh], band[-bh:], band[:, :bw], band[:, -bw:] = 1, 1, 1, 1
    n, _, stats, _ = cv2.connectedComponentsWithStats(bright * band, connectivity=8)
    min_side, max_side = max(3, int(0.004 * h)), max(6, int(0.08 * h))
    count = 0
    for i in range(1, n):
        _, _, ww, hh, area = stats[i]
        if min_side <= hh <= max_side and ww <= 3 * max_side and area >= 6 and area <= 0.8 * ww * hh:
            count += 1
    return count


def burned_in_warnings(ds: "Dataset", pixels: np.ndarray | None = None) -> list[str]:
    """Warnings about text in the pixels: the Burned In Annotation attribute, then the simple pixel check."""
    out = []
    flag = str(ds.get("BurnedInAnnotation", "") or "").upper()
    has_pixels = "PixelData" in ds or pixels is not None
    if flag == "YES":
        out.append("The image says it has burned-in annotation (Burned In Annotation = YES): text in the pixels "
                   "may identify the patient. Check the exported images before sharing them.")
    elif not flag and has_pixels:
        out.append("The image does not say whether it has burned-in text (no Burned In Annotation attribute). "
                   "Check the exported images before sharing them.")
    if pixels is None and "PixelData" in ds and str(ds.get("Modality", "")) not in {"SR", "SEG", "DOC"}:
        try:
            arr = ds.pixel_array
            pixels = arr[0] if arr.ndim == 3 and arr.shape[-1] not in (3, 4) else arr
            if pixels.ndim == 3:
                pixels = pixels.mean(axis=-1)
        except Exception:  # noqa: BLE001 - an undecodable image is reported, not fatal
            out.append("The pixels could not be decoded to check for burned-in text; check them before sharing.")
            pixels = None
    if pixels is not None and flag != "YES":
        marks = text_like_marks(pixels)
        if marks >= 3:
            out.append(f"{marks} small bright marks near the image edges look like burned-in text (markers or "
                       "labels); check the exported image before sharing it.")
    return out


@dataclass
class AnonymisedExport:
    """What an anonymised export wrote, and what the user must check by eye."""

    files: list[Path]
    warnings: list[str]


def _read_full(path: Path) -> "Dataset":
    from cxr_viewer.core.io.dicom import _dcmread

    return _dcmread(path, stop_before_pixels=False)


def export_anonymised(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    *,
    results: Sequence[tuple["ImageRecord", "AnalysisResult", dict[str, Any]]] = (),
    anonymiser: Anonymiser | None = None,
) -> AnonymisedExport:
    """De-identify DICOM files (a study) and, with the same key, the result objects made for them.

    ``results``: ``(record, result, options)`` per analysed image, ``options`` being the keyword
    arguments of :func:`~cxr_viewer.core.export.dicom_results.write_results` (``masks``, ``pdf``;
    a viewer screenshot is not taken here: the view is redrawn without patient identity).
    Output files are named by their new SOP Instance UID, never by the source file name.
    """
    from cxr_viewer.core.export.dicom_results import write_results

    anon = anonymiser or Anonymiser()
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"Cannot create the folder {out}: {exc.strerror or exc}.") from exc
    files: list[Path] = []
    warnings: list[str] = []
    for i, src in enumerate(sources, start=1):
        ds = _read_full(Path(src))
        for w in anon.anonymise(ds):
            warnings.append(f"image {i}: {w}")
        path = out / f"IMG_{ds.SOPInstanceUID}.dcm"
        try:
            from cxr_viewer.core.staging import staged_file

            with staged_file(path) as part:
                ds.save_as(part, enforce_file_format=False)
        except OSError as exc:
            raise ExportError(f"Could not write {path.name}: {exc.strerror or exc}.") from exc
        files.append(path)
    for record, result, options in results:
        opts = {k: v for k, v in dict(options).items() if k in {"masks", "pdf"}}
        files.extend(write_results(record, result, out, profile=anon, **opts))
    log.info("anonymised export: %d files, %d warnings", len(files), len(warnings))
    return AnonymisedExport(files=files, warnings=warnings)
