"""Exports under attack, through `cxr-viewer analyze` as a user runs it: a marker planted in every free-text
attribute (private tags, nested sequences and the PDF's own text included) never reaches an anonymised byte,
hostile header values never cost the findings and never make an invalid object, and a killed export never
leaves a part of a file at its final name."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.core.dicom_check import dciodvfy_errors, need_tool

SAMPLES = Path(__file__).resolve().parents[2] / "resources" / "samples"
TEXT_VRS = {"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE"}
#: Attributes the profile does not list and that a reader needs to make sense of the image.
NOT_LISTED = {"Modality", "BodyPartExamined", "ViewPosition", "Manufacturer", "ManufacturerModelName",
              "SoftwareVersions", "SpecificCharacterSet", "ConversionType", "ImageType", "Laterality",
              "PatientOrientation", "PhotometricInterpretation"}
REAL_DATES = {"StudyDate": "19870412", "SeriesDate": "19870413", "AcquisitionDate": "19870414",
              "ContentDate": "19870415", "PatientBirthDate": "19500101", "AdmittingDate": "19870411"}


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from cxr_viewer.cli import main; sys.exit(main(sys.argv[1:]))",
                           *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cxr_viewer.core.models.testing import make_untrained_bundle
    from tests.qt.bundles import build_segmenter

    models = tmp_path_factory.mktemp("hostile_models")
    make_untrained_bundle(models / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64), seed=5)
    build_segmenter(models / "seg")
    return models


def _marker(i: int) -> str:
    return f"QZ{i:05d}K"


def planted(out: Path) -> tuple[Path, set[str]]:
    """The sample film with a unique marker in every free-text attribute of the DICOM dictionary, in private
    tags and nested sequences, and real dates; returns the file and the markers."""
    ds = pydicom.dcmread(SAMPLES / "siim_cr_chest.dcm")
    markers: set[str] = set()
    i = 0
    for tag, (vr, _vm, _name, _retired, kw) in sorted(DicomDictionary.items()):
        if vr not in TEXT_VRS or not kw or kw in NOT_LISTED or (tag >> 16) < 0x0008 or (tag >> 16) == 0xFFFE or tag in ds:
            continue
        i += 1
        value = _marker(i) + ("^Q" if vr == "PN" else "")
        ds.add_new(tag, vr, value)
        markers.add(_marker(i))
    block = ds.private_block(0x0011, "HOSPITAL INC", create=True)
    block.add_new(0x01, "LO", _marker(90001))
    block.add_new(0x02, "UT", "free text " + _marker(90002))
    markers |= {_marker(90001), _marker(90002)}

    def code(value: int, meaning: int) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = _marker(value), "99LOCAL", _marker(meaning)
        markers.update({_marker(value), _marker(meaning)})
        return item

    ds.ProcedureCodeSequence = Sequence([code(90010, 90011)])
    request = Dataset()
    request.RequestedProcedureDescription = _marker(90020)
    request.ScheduledProtocolCodeSequence = Sequence([code(90021, 90022)])
    inner = Dataset()
    inner.PatientComments = "deep " + _marker(90023)
    request.ReferencedStudySequence = Sequence([inner])
    ds.RequestAttributesSequence = Sequence([request])
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = ds.SOPClassUID, pydicom.uid.generate_uid()
    ref.ImageComments = _marker(90030)
    ds.ReferencedImageSequence = Sequence([ref])
    markers |= {_marker(90020), _marker(90023), _marker(90030)}
    for kw, value in REAL_DATES.items():
        setattr(ds, kw, value)
    ds.PatientName = "Q7Smith^Q7Jane"
    markers |= {"Q7Smith", "Q7Jane"}
    ds.save_as(out)
    return out, markers


def _pdf_text(pdf: bytes, tmp: Path) -> str:
    exe = need_tool("pdftotext", "poppler-utils")
    f = tmp / "doc.pdf"
    f.write_bytes(pdf)
    return subprocess.run([exe, str(f), "-"], capture_output=True, text=True, timeout=120, check=True).stdout


def _date_forms(d: str) -> list[str]:
    return [d, f"{d[:4]}-{d[4:6]}-{d[6:]}", f"{d[6:]}.{d[4:6]}.{d[:4]}", f"{d[4:6]}/{d[6:]}/{d[:4]}"]


def test_no_planted_marker_or_real_date_reaches_an_anonymised_byte(tmp_path: Path, tiny_models: Path) -> None:
    src, markers = planted(tmp_path / "planted.dcm")
    assert len(markers) > 500
    anon, pdfs = tmp_path / "anon", tmp_path / "pdf"
    run = _cli("analyze", str(src), "--json", str(tmp_path / "r.json"), "--anonymised-out", str(anon),
               "--pdf-out", str(pdfs), "--report", "Left lower lobe opacity.", "--no-default-models",
               "--models", str(tiny_models), "--backend", "torch")
    obj = json.loads((tmp_path / "r.json").read_text())[0]
    assert obj["status"] == "ok" and "error" not in obj.get("anonymised", {}), (obj, run.stderr[-2000:])
    files = sorted(anon.iterdir())
    kinds = sorted(pydicom.dcmread(f).Modality for f in files)
    assert kinds == sorted(["CR", "SR", "SEG", "OT", "DOC"]), kinds
    texts = []
    for f in files:
        raw = f.read_bytes()
        texts.append(raw.decode("latin-1"))
        ds = pydicom.dcmread(f)
        if ds.Modality == "DOC":
            pdf_text = _pdf_text(bytes(ds.EncapsulatedDocument), tmp_path)
            assert "Effusion" in pdf_text  # the page is there, and readable
            texts.append(pdf_text)
    blob = "\n".join(texts)
    leaked = sorted(m for m in markers if m in blob)
    assert not leaked, leaked[:20]
    for kw, d in REAL_DATES.items():
        for form in _date_forms(d):
            assert form not in blob, (kw, form)
    for f in files:
        if pydicom.dcmread(f).Modality != "CR":
            assert dciodvfy_errors(f) == [], f.name


HOSTILE_HEADERS = {
    "markup name": {"PatientName": "<script>alert(1)</script>^<b>x</b>&amp;\x1b[31m"},
    "long name": {"PatientName": "A" * 1_000_000},
    "name 10k": {"PatientName": "B" * 10_000, "PatientID": "C" * 5000, "StudyDescription": "D" * 100_000},
    "strange modality": {"Modality": "X\\Y<>!"},
    "iso 2022": {"SpecificCharacterSet": ["ISO 2022 IR 6", "ISO 2022 IR 87"],
                 "PatientName": "Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"},
    "garbage dates": {"StudyDate": "20231345", "StudyTime": "99:99", "PatientBirthDate": "notadate",
                      "SeriesDate": "1"},
    "garbage age": {"PatientAge": "ABCD", "PatientSex": "Q" * 40},
    "control chars": {"AccessionNumber": "\x00\x01\x02" * 10, "ReferringPhysicianName": "\\" * 300},
    "wrong charset": {"SpecificCharacterSet": "ISO_IR 999", "PatientName": "Müller^Jörg"},
    "uid junk": {"StudyID": "S" * 200, "InstitutionName": "I" * 5000},
}


def _hostile(src: Path, out: Path, attrs: dict) -> Path:
    ds = pydicom.dcmread(src)
    for kw, value in attrs.items():
        tag = pydicom.datadict.tag_for_keyword(kw)
        vr = pydicom.datadict.dictionary_VR(tag)
        if isinstance(value, str):
            value = value.encode("latin-1", "replace") if kw == "PatientName" and "ISO 2022" in str(
                attrs.get("SpecificCharacterSet", "")) else value
        ds.add_new(tag, vr, value)
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        ds.save_as(out)
    finally:
        pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
    return out


def test_hostile_headers_never_cost_the_findings_and_exports_stay_valid(tmp_path: Path, tiny_models: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    files = [str(_hostile(SAMPLES / "siim_cr_chest.dcm", inputs / f"{i:02d}.dcm", attrs))
             for i, attrs in enumerate(HOSTILE_HEADERS.values())]
    common = ["--no-default-models", "--models", str(tiny_models), "--backend", "torch"]
    alone = _cli("analyze", *files, "--json", str(tmp_path / "alone.json"), *common)
    base = {o["file"]: o for o in json.loads((tmp_path / "alone.json").read_text())}
    assert all(o["status"] == "ok" for o in base.values()), alone.stderr[-2000:]
    out = tmp_path / "dicom"
    _cli("analyze", *files, "--json", str(tmp_path / "r.json"), "--dicom-out", str(out), "--pdf-out",
         str(tmp_path / "pdf"), *common)
    results = json.loads((tmp_path / "r.json").read_text())
    for obj, name in zip(results, HOSTILE_HEADERS):
        assert obj["status"] == "ok", (name, obj.get("error"))
        assert [f["score"] for f in obj["findings"]] == [f["score"] for f in base[obj["file"]]["findings"]], name
        if isinstance(obj.get("dicom"), dict):  # an export that cannot be made is named on that result
            assert obj["dicom"]["error"]["code"] != "internal_error", name
    written = sorted(out.glob("*.dcm"))
    assert len(written) == 3 * len(HOSTILE_HEADERS)  # SR, SC and PDF for every hostile film
    for f in written:
        ds = pydicom.dcmread(f)
        assert dciodvfy_errors(f) == [], (f.name, ds.Modality, dciodvfy_errors(f)[:3])
        assert len(str(ds.get("PatientName", ""))) <= 64 * 5 and len(str(ds.get("PatientID", ""))) <= 64


def test_export_failure_is_recorded_on_the_result_not_lost(tmp_path: Path, tiny_models: Path) -> None:
    src = SAMPLES / "siim_cr_chest.dcm"
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the export folder should be")
    run = _cli("analyze", str(src), "--json", str(tmp_path / "r.json"), "--dicom-out", str(blocked / "x"),
               "--pdf-out", str(blocked / "y"), "--no-default-models", "--models", str(tiny_models), "--backend", "torch")
    obj = json.loads((tmp_path / "r.json").read_text())[0]
    assert obj["status"] == "ok" and obj["findings"], obj
    assert obj["report_pdf"]["error"]["code"] == "export_failed" and obj["dicom"]["error"]
    assert run.returncode == 2 and "Traceback" not in run.stderr


def test_a_killed_export_leaves_no_part_of_a_file_at_its_name(tmp_path: Path, tiny_models: Path) -> None:
    src = SAMPLES / "siim_cr_chest.dcm"
    files = [str(src)] * 6
    for delay in (2.5, 4.0, 6.0):
        out = tmp_path / f"out{delay}"
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from cxr_viewer.cli import main; "
                                 "sys.exit(main(sys.argv[1:]))", "analyze", *files, "--json", str(out / "r.json"),
                                 "--pdf-out", str(out / "pdf"), "--dicom-out", str(out / "dcm"),
                                 "--no-default-models", "--models", str(tiny_models), "--backend", "torch"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for f in out.rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                data = f.read_bytes()
                assert data, f"0-byte {f}"
                if f.suffix == ".pdf":
                    assert data.rstrip().endswith(b"%%EOF"), f
                    assert re.match(rb"%PDF-", data)
                if f.suffix == ".dcm":
                    pydicom.dcmread(f)  # complete
                if f.suffix == ".json":
                    json.loads(data)
