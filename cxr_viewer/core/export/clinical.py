"""The clinical record of one read film: what the reader had, as plain data (no writer imports).

A :class:`ClinicalRecord` gathers what the reader had: the image, its one
:class:`~cxr_viewer.core.judging.JudgedResult`, the patient's :class:`Identification`
(None for an anonymised record: then no identifying value is drawn), the measurements,
the report text with its masks, the heatmap shown, and the current | prior comparison.
:func:`write_record` writes the PDF and, for a DICOM source, the DICOM results (SR, SEG,
SC, Encapsulated PDF) from it (:mod:`cxr_viewer.core.export.record`).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxr_viewer.core.io.record import ImageRecord
    from cxr_viewer.core.judging import JudgedResult

__all__ = ["ClinicalRecord", "Identification", "PriorComparison", "annotations_beside", "drew"]


def _iso_date(d: str) -> str:
    d = str(d or "").strip()
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) >= 8 and d[:8].isdigit() else d


def _time(t: str) -> str:
    t = str(t or "").strip()
    return f"{t[:2]}:{t[2:4]}" if len(t) >= 4 and t[:4].isdigit() else t


def _age(birth: str, on: str, stated: str) -> str:
    stated = str(stated or "").strip()
    if len(stated) == 4 and stated[:3].isdigit() and stated[3] in "DWMY":
        unit = {"D": "days", "W": "weeks", "M": "months", "Y": "years"}[stated[3]]
        return f"{int(stated[:3])} {unit}"
    try:
        b = _dt.date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
        d = _dt.date(int(on[:4]), int(on[4:6]), int(on[6:8]))
    except (TypeError, ValueError):
        return ""
    years = d.year - b.year - ((d.month, d.day) < (b.month, b.day))
    return f"{years} years" if years >= 0 else ""


@dataclass(frozen=True)
class Identification:
    """Who and which study a printed record belongs to; passed for an identified record, omitted when anonymised."""

    patient_name: str = ""
    patient_id: str = ""
    birth_date: str = ""  # ISO
    age: str = ""
    sex: str = ""
    accession: str = ""
    study_date: str = ""  # ISO
    study_time: str = ""
    study_description: str = ""
    referring_physician: str = ""
    institution: str = ""

    @classmethod
    def from_record(cls, record: "ImageRecord") -> "Identification | None":
        """The identification in a DICOM header (None for PNG/JPEG, which carry none)."""
        ds = getattr(record, "header", None)
        if ds is None:
            return None

        def get(kw: str) -> str:
            value = ds.get(kw, "")
            return "" if value is None else str(value).strip()

        name = get("PatientName").replace("^", " ").strip()
        birth, study = get("PatientBirthDate"), get("StudyDate")
        return cls(
            patient_name=" ".join(name.split()), patient_id=get("PatientID"), birth_date=_iso_date(birth),
            age=_age(birth, study, get("PatientAge")), sex={"M": "male", "F": "female", "O": "other"}.get(
                get("PatientSex").upper(), get("PatientSex")),
            accession=get("AccessionNumber"), study_date=_iso_date(study), study_time=_time(get("StudyTime")),
            study_description=get("StudyDescription"),
            referring_physician=" ".join(get("ReferringPhysicianName").replace("^", " ").split()),
            institution=get("InstitutionName"),
        )

    def lines(self) -> list[str]:
        """The header block: three lines, fields that are absent left out."""
        birth = " ".join(p for p in (self.birth_date, f"({self.age})" if self.age else "") if p)
        line1 = "   ".join(p for p in (
            self.patient_name and f"Patient: {self.patient_name}", self.patient_id and f"ID: {self.patient_id}",
            birth and f"Born: {birth}", self.sex and f"Sex: {self.sex}") if p)  # fmt: skip
        when = " ".join(p for p in (self.study_date, self.study_time) if p)
        line2 = "   ".join(p for p in (
            self.accession and f"Accession: {self.accession}", when and f"Study: {when}",
            self.study_description) if p)  # fmt: skip
        line3 = "   ".join(p for p in (
            self.referring_physician and f"Referring: {self.referring_physician}",
            self.institution and f"Institution: {self.institution}") if p)  # fmt: skip
        return [line for line in (line1, line2, line3) if line]


@dataclass(frozen=True)
class PriorComparison:
    """The current | prior comparison as shown: the prior's date and each finding's change (ScoreDelta)."""

    prior_date: str
    deltas: Mapping[tuple[str, str], Any] = field(default_factory=dict)  # (model, label) -> ScoreDelta

    def text(self, model: str, label: str) -> str:
        d = self.deltas.get((model, label))
        return "" if d is None else str(d.text())


@dataclass(frozen=True, eq=False)
class ClinicalRecord:
    record: "ImageRecord"
    judged: "JudgedResult"
    identification: Identification | None = None
    annotations: Sequence[Any] = ()
    masks: Sequence[Any] = ()  # report-conditioned masks (segmenter Mask or session MaskLayer), visible ones
    heatmap: Any = None
    window: tuple[float, float] | None = None
    report_text: str = ""
    prior: PriorComparison | None = None
    title: str = "Chest X-ray analysis"

    def drawn_masks(self) -> list[Any]:
        """Only the regions that drew something (an empty mask is reported as "nothing found")."""
        return [m for m in self.masks if drew(m)]

    def empty_masks(self) -> list[Any]:
        return [m for m in self.masks if not drew(m)]


def drew(mask: Any) -> bool:
    """Did this region draw anything (a mask with at least one pixel)?"""
    import numpy as np

    values = mask.binary() if hasattr(mask, "binary") else getattr(mask, "mask", None)
    return values is not None and bool(np.asarray(values).any())


def annotations_beside(image_path: str | Path, record: "ImageRecord") -> list[Any]:
    """The annotations saved beside an image with Ctrl+S (``NAME.annotations.json``), or none."""
    from cxr_viewer.core.imaging.measurements import load_annotations, sidecar_path

    path = sidecar_path(image_path)
    if not path.is_file():
        return []
    return load_annotations(path, record)
