"""List the radiographs in a folder, grouped patient -> study -> series -> instance.

Only DICOM headers are read (``stop_before_pixels`` plus ``specific_tags``), so a
folder of hundreds of files lists in about a second. PNG/JPEG/TIFF files carry no
patient or study, so each becomes a one-image study under one "Image files" entry.
Nothing here raises for a bad file: it lands in ``ScanResult.skipped`` with a reason.

The ``label`` of each level is what a study browser shows. Identifying values
(patient name and ID) are kept out of ``repr`` so that logging an object never
writes them to a log file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from cxr_viewer.core.errors import CXRError
from cxr_viewer.core.io.sniff import SUPPORTED_SUFFIXES, sniff_file

log = logging.getLogger(__name__)

_SCAN_TAGS = [  # what the scan uses from each header
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "StudyDate",
    "StudyDescription", "SeriesDescription", "SeriesNumber", "InstanceNumber", "Modality",
    "ViewPosition", "PatientName", "PatientID", "PatientSex", "Rows", "Columns", "NumberOfFrames",
    "SpecificCharacterSet",
]
_RASTER_PATIENT_KEY = "\x00raster"
_SKIP_DIRS = {".git", "__pycache__", "$RECYCLE.BIN", "System Volume Information"}


@dataclass
class Instance:
    """One image file."""

    path: Path
    format: str  # "dicom" | "png" | "jpeg" | "tiff"
    sop_instance_uid: str = ""
    instance_number: int | None = None
    view_position: str = ""
    rows: int | None = None
    columns: int | None = None
    frames: int = 1

    @property
    def label(self) -> str:
        parts = [f"#{self.instance_number}" if self.instance_number is not None else self.path.name]
        if self.view_position:
            parts.append(self.view_position)
        if self.rows and self.columns:
            parts.append(f"{self.columns}x{self.rows}")
        if self.frames > 1:
            parts.append(f"{self.frames} frames")
        return " ".join(parts)


@dataclass
class Series:
    series_instance_uid: str
    modality: str = ""
    description: str = ""
    number: int | None = None
    instances: list[Instance] = field(default_factory=list)

    @property
    def label(self) -> str:
        head = " ".join(p for p in (self.modality, self.description) if p) or "Series"
        if self.number is not None:
            head = f"{self.number}: {head}"
        n = len(self.instances)
        return f"{head} ({n} image{'s' if n != 1 else ''})"


@dataclass
class Study:
    study_instance_uid: str
    date: str = ""  # DICOM DA, YYYYMMDD
    description: str = ""
    series: list[Series] = field(default_factory=list)

    @property
    def instances(self) -> list[Instance]:
        return [i for s in self.series for i in s.instances]

    @property
    def label(self) -> str:
        date = _format_date(self.date)
        parts = [p for p in (date, self.description) if p]
        return " ".join(parts) or "Study (no date)"


@dataclass
class Patient:
    patient_id: str = field(default="", repr=False)
    name: str = field(default="", repr=False)
    sex: str = ""
    studies: list[Study] = field(default_factory=list)
    is_file_group: bool = False  # the "Image files" entry for PNG/JPEG/TIFF

    @property
    def label(self) -> str:
        if self.is_file_group:
            return "Image files (no patient data)"
        name = self.name.replace("^", " ").strip()
        return name or self.patient_id or "Unknown patient"

    @property
    def instances(self) -> list[Instance]:
        return [i for s in self.studies for i in s.instances]


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


class ScanResult(list):
    """A ``list[Patient]`` that also carries the files it could not use."""

    def __init__(self, patients: Iterable[Patient] = (), *, root: Path | None = None,
                 skipped: list[SkippedFile] | None = None) -> None:
        super().__init__(patients)
        self.root = root
        self.skipped: list[SkippedFile] = skipped if skipped is not None else []

    @property
    def instance_count(self) -> int:
        return sum(len(p.instances) for p in self)


def scan_folder(path: str | Path, recursive: bool = True) -> ScanResult:
    """Group the images under ``path`` into patients/studies/series; bad files go to ``skipped``."""
    root = Path(path)
    result = ScanResult(root=root)
    if not root.is_dir():
        result.skipped.append(SkippedFile(root, "not a folder"))
        return result
    patients: dict[str, Patient] = {}
    studies: dict[tuple[str, str], Study] = {}
    series: dict[tuple[str, str, str], Series] = {}
    for file in _iter_files(root, recursive, result.skipped):
        try:
            kind = sniff_file(file)
        except OSError as exc:
            result.skipped.append(SkippedFile(file, f"cannot be opened ({exc.strerror or type(exc).__name__})"))
            continue
        if kind is None:
            reason = "empty file" if _is_empty(file) else "not a DICOM, PNG, JPEG or TIFF image"
            result.skipped.append(SkippedFile(file, reason))
            continue
        try:
            if kind == "dicom":
                _add_dicom(file, patients, studies, series)
            else:
                _add_raster(file, kind, patients, studies, series)
        except _Skip as skip:
            result.skipped.append(SkippedFile(file, str(skip)))
        except CXRError as exc:
            result.skipped.append(SkippedFile(file, exc.message))
        except Exception as exc:  # noqa: BLE001 - one bad file must never stop a scan
            log.debug("scan: a file failed with %s", type(exc).__name__)
            result.skipped.append(SkippedFile(file, f"unreadable ({type(exc).__name__})"))
    result.extend(_sorted(patients.values()))
    log.info("scanned %d images in %d patients, skipped %d files", result.instance_count, len(result), len(result.skipped))
    return result


class _Skip(Exception):
    pass


def _is_empty(file: Path) -> bool:
    try:
        return file.stat().st_size == 0
    except OSError:
        return False


def _iter_files(root: Path, recursive: bool, skipped: list[SkippedFile]) -> Iterable[Path]:
    def onerror(exc: OSError) -> None:
        skipped.append(SkippedFile(Path(exc.filename or root), "folder cannot be read"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name in ("DICOMDIR", "Thumbs.db", "desktop.ini"):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix and suffix not in SUPPORTED_SUFFIXES and not _maybe_dicom_suffix(suffix):
                skipped.append(SkippedFile(Path(dirpath) / name, f"'{suffix}' files are not images"))
                continue
            yield Path(dirpath) / name
        if not recursive:
            break


def iter_image_files(root: str | Path, recursive: bool = True) -> tuple[list[Path], list[SkippedFile]]:
    """The files under ``root`` a scan would look at (hidden, system and non-image suffixes left out), sorted."""
    skipped: list[SkippedFile] = []
    return list(_iter_files(Path(root), recursive, skipped)), skipped


def _maybe_dicom_suffix(suffix: str) -> bool:
    """DICOM files often have numeric 'extensions' (``IM.1.2.840``) or ``.ima``."""
    return suffix in (".ima", ".img", ".dc3") or suffix[1:].isdigit()


def _add_dicom(file: Path, patients: dict, studies: dict, series: dict) -> None:
    from cxr_viewer.core.io.dicom import _dcmread  # the file was sniffed as DICOM already

    # specific_tags=_SCAN_TAGS was measured slower than a full header read (pydicom parses
    # every element header either way and converts values lazily), so it is not used.
    ds = _dcmread(file, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        what = ""
        sop = ds.get("SOPClassUID")
        if sop is not None:
            what = f": {getattr(sop, 'name', sop)}"
        raise _Skip(f"DICOM without an image{what}")
    pid, pname = _text(ds, "PatientID"), _text(ds, "PatientName")
    pkey = pid or pname or "\x00unknown"
    patient = patients.get(pkey)
    if patient is None:
        patient = patients[pkey] = Patient(patient_id=pid, name=pname, sex=_text(ds, "PatientSex"))
    study_uid = _text(ds, "StudyInstanceUID")
    skey = (pkey, study_uid or "\x00unknown")
    study = studies.get(skey)
    if study is None:
        study = studies[skey] = Study(study_uid, date=_text(ds, "StudyDate"), description=_text(ds, "StudyDescription"))
        patient.studies.append(study)
    series_uid = _text(ds, "SeriesInstanceUID")
    rkey = (*skey, series_uid or "\x00unknown")
    ser = series.get(rkey)
    if ser is None:
        ser = series[rkey] = Series(
            series_uid, modality=_text(ds, "Modality"), description=_text(ds, "SeriesDescription"),
            number=_int(ds, "SeriesNumber"),
        )
        study.series.append(ser)
    ser.instances.append(Instance(
        path=file, format="dicom", sop_instance_uid=_text(ds, "SOPInstanceUID"),
        instance_number=_int(ds, "InstanceNumber"), view_position=_text(ds, "ViewPosition"),
        rows=_int(ds, "Rows"), columns=_int(ds, "Columns"), frames=max(1, _int(ds, "NumberOfFrames") or 1),
    ))


def _add_raster(file: Path, kind: str, patients: dict, studies: dict, series: dict) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _Skip(f"damaged {kind.upper()} image") from exc
    patient = patients.get(_RASTER_PATIENT_KEY)
    if patient is None:
        patient = patients[_RASTER_PATIENT_KEY] = Patient(is_file_group=True)
    key = str(file)
    study = Study(study_instance_uid="", description=file.name)
    ser = Series(series_instance_uid="", modality=kind.upper())
    ser.instances.append(Instance(path=file, format=kind, rows=height, columns=width))
    study.series.append(ser)
    studies[(_RASTER_PATIENT_KEY, key)] = study
    patient.studies.append(study)


def _sorted(patients: Iterable[Patient]) -> list[Patient]:
    out = sorted(patients, key=lambda p: (p.is_file_group, p.label.lower(), p.patient_id))
    for p in out:
        p.studies.sort(key=lambda s: (s.date or "99999999", s.description, s.study_instance_uid))
        for st in p.studies:
            st.series.sort(key=lambda s: (s.number if s.number is not None else 1 << 30, s.series_instance_uid))
            for se in st.series:
                se.instances.sort(key=lambda i: (i.instance_number if i.instance_number is not None else 1 << 30,
                                                 i.path.name))
    return out


def _format_date(da: str) -> str:
    da = da.strip()
    if len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return da


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _int(ds, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None
