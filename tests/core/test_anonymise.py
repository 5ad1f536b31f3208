"""Anonymised export (PS3.15 Basic profile via dicognito): no identifying value survives, UIDs stay linked,
burned-in text is warned about, and a real session never logs the patient's name or ID."""

from __future__ import annotations

import json
from datetime import datetime
import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageDraw

from cxr_viewer.core.export.anonymise import Anonymiser, export_anonymised, text_like_marks
from cxr_viewer.core.io import read_image
from tests.core.dicom_check import dciodvfy_errors

#: Value representations whose values identify a patient, a visit or an instance.
# Times of day (TM) are shifted with their date by one whole number of hours per export, so one export
# in 24 keeps a time's value (e.g. 000000.00) while its date moves: alone, that identifies nobody.
_IDENTIFYING_VRS = {"PN", "DA", "DT"}
_IDENTIFYING_KEYWORDS = {
    "PatientID", "AccessionNumber", "InstitutionName", "InstitutionAddress", "StationName", "StudyID",
    "DeviceSerialNumber", "OtherPatientIDs", "StudyDescription", "SeriesDescription", "PatientAge",
    "RequestedProcedureID", "PerformedProcedureStepID", "ImageComments", "IssuerOfPatientID",
}


def _identifying_values(ds: pydicom.Dataset) -> set[str]:
    """Every name, date, time, instance UID and identifying text value in ``ds`` (nested too)."""
    out: set[str] = set()

    def visit(_ds: pydicom.Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            return
        kw = elem.keyword or ""
        uid = elem.VR == "UI" and not kw.endswith("ClassUID") and kw != "TransferSyntaxUID"
        if uid or elem.VR in _IDENTIFYING_VRS or kw in _IDENTIFYING_KEYWORDS:
            values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
            out.update(str(v) for v in values if len(str(v)) >= 4)

    ds.walk(visit)
    ds.file_meta.walk(visit)
    return out


def _all_values(ds: pydicom.Dataset) -> set[str]:
    out: set[str] = set()
    ds.walk(lambda _d, e: out.add(str(e.value)) if e.VR != "SQ" else None)
    ds.file_meta.walk(lambda _d, e: out.add(str(e.value)))
    return out


def _samples(repo_root: Path, dicom_dir: Path) -> list[Path]:
    return [repo_root / "resources" / "samples" / "siim_cr_chest.dcm", *sorted(dicom_dir.glob("*.dcm"))]


def test_export_of_samples_keeps_no_identifying_tag(repo_root: Path, dicom_dir: Path, tmp_path: Path) -> None:
    sources = _samples(repo_root, dicom_dir)
    assert len(sources) == 6
    export = export_anonymised(sources, tmp_path / "anon")
    assert len(export.files) == len(sources)
    for src_path, out_path in zip(sources, export.files):
        src = pydicom.dcmread(src_path)
        out = pydicom.dcmread(out_path)
        secrets_ = _identifying_values(src)
        assert secrets_, src_path.name
        survived = secrets_ & _all_values(out)
        assert not survived, f"{src_path.name}: {sorted(survived)[:5]}"
        raw = out_path.read_bytes()
        for kw in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "AccessionNumber"):
            value = str(src.get(kw, "") or "")
            if len(value) >= 4:
                assert value.encode() not in raw, (src_path.name, kw)
        assert out.PatientIdentityRemoved in ("YES", "NO")
        assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert not any(e.tag.is_private for e in out.iterall())
        assert out.PixelData == src.PixelData  # the image itself is unchanged
        assert src_path.stem not in out_path.name
    # dates are shifted, not blanked, and by one offset for the whole export
    shifts = set()
    for src_path, out_path in zip(sources, export.files):
        before, after = pydicom.dcmread(src_path).get("StudyDate"), pydicom.dcmread(out_path).get("StudyDate")
        if before:
            shifts.add((datetime.strptime(before, "%Y%m%d") - datetime.strptime(after, "%Y%m%d")).days)
    # one offset for the whole export; a date may move one day more where its time of day crosses midnight
    assert shifts and min(shifts) > 0 and max(shifts) - min(shifts) <= 1, shifts
    # burned-in text: every sample is warned about (flag absent or YES, or marks found)
    assert len(export.warnings) >= len(sources)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    """A tiny real classifier and report segmenter (random weights): fast, and loaded like trained ones."""
    from cxr_viewer.core.models.testing import make_untrained_bundle
    from tests.qt.bundles import build_segmenter

    models = tmp_path_factory.mktemp("anon_models")
    make_untrained_bundle(models / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64), seed=5)
    build_segmenter(models / "seg")
    return models


def test_results_share_the_anonymised_uids(repo_root: Path, tiny_models: Path, tmp_path: Path) -> None:
    """An image and the SR/SEG/SC/PDF made for it keep referencing each other after de-identification."""
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.segment import Segmenter

    src_path = repo_root / "resources" / "samples" / "siim_cr_chest.dcm"
    engine = InferenceEngine.from_dirs([tiny_models], device="cpu", backend="torch")
    record = read_image(src_path)
    result = engine.analyze(record)
    masks = Segmenter(engine.bundles_for_task("text_segmentation")[0]).segment_report(record, "Left lung opacity.")
    export = export_anonymised([src_path], tmp_path, results=[(record, result, {"masks": masks})])
    image, *derived = (pydicom.dcmread(p) for p in export.files)
    assert [d.Modality for d in derived] == ["SR", "SEG", "OT", "DOC"]
    original = pydicom.dcmread(src_path)
    secrets_ = _identifying_values(original)
    for ds, path in zip(derived, export.files[1:]):
        assert ds.StudyInstanceUID == image.StudyInstanceUID != original.StudyInstanceUID
        assert ds.PatientID == image.PatientID and ds.PatientName == image.PatientName
        assert ds.StudyDate == image.StudyDate
        assert not secrets_ & _all_values(ds), (ds.Modality, sorted(secrets_ & _all_values(ds)))
        assert dciodvfy_errors(path) == [], ds.Modality
    sr, seg, sc, doc = derived
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == image.SeriesInstanceUID
    assert evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert doc.SourceInstanceSequence[0].ReferencedSOPInstanceUID == image.SOPInstanceUID
    assert sc.PatientIdentityRemoved == "YES"  # drawn here, without the patient's identity


def test_same_anonymiser_maps_consistently_and_keys_differ(repo_root: Path) -> None:
    path = repo_root / "resources" / "samples" / "siim_cr_chest.dcm"
    one = Anonymiser()
    a, b, c = (pydicom.dcmread(path) for _ in range(3))
    one.anonymise(a)
    one.anonymise(b)
    Anonymiser().anonymise(c)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.PatientID == b.PatientID
    assert c.SOPInstanceUID != a.SOPInstanceUID


def test_simple_burned_in_text_check() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:512, 0:512]
    body = (0.35 + 0.3 * np.exp(-(((yy - 256) / 180.0) ** 2 + ((xx - 256) / 150.0) ** 2))
            + rng.normal(0, 0.01, (512, 512)))
    clean = np.clip(body, 0, 0.8)
    assert text_like_marks(clean) == 0
    img = Image.fromarray((clean * 255).astype(np.uint8))
    ImageDraw.Draw(img).text((12, 10), "DOE JANE 1970-01-01", fill=255, font_size=18)
    assert text_like_marks(np.asarray(img, dtype=np.float32) / 255) >= 3


def test_a_real_session_never_logs_the_patient(repo_root: Path, tiny_models: Path, tmp_path: Path, caplog,
                                               capsys) -> None:
    """analyze with report masks, PDF and DICOM export on Doe^Jane / PHI-12345: nothing of it in any log."""
    from cxr_viewer.headless import analyze_main

    models = tiny_models
    ds = pydicom.dcmread(repo_root / "resources" / "samples" / "siim_cr_chest.dcm")
    ds.PatientName, ds.PatientID = "Doe^Jane", "PHI-12345"
    case = tmp_path / "Doe^Jane PHI-12345"
    case.mkdir()
    path = case / "Doe^Jane_PHI-12345.dcm"
    ds.save_as(path)
    broken = case / "Doe^Jane_PHI-12345_broken.dcm"
    broken.write_bytes(path.read_bytes()[:5000])  # an error path too
    logging.captureWarnings(True)
    caplog.set_level(logging.DEBUG)
    try:
        rc = analyze_main([str(path), str(broken), "--no-default-models", "--models", str(models), "--backend", "torch",
                           "--report", "Right lower zone opacity.", "--mask-out", str(tmp_path / "masks"),
                           "--cam", "Effusion", "--no-faithfulness", "--pdf-out", str(tmp_path / "pdf"),
                           "--dicom-out", str(tmp_path / "dicom"), "--anonymised-out", str(tmp_path / "anon"),
                           "--json", str(tmp_path / "out.json"), "-vv"])
    finally:
        logging.captureWarnings(False)
    assert rc == 2  # the broken file
    data = json.loads((tmp_path / "out.json").read_text())
    assert data[0]["status"] == "ok" and len(data[0]["dicom"]) == 4 and data[1]["status"] == "error"
    assert pydicom.dcmread(data[0]["dicom"][0]).PatientID == "PHI-12345"  # identified output is for the PACS
    anon = data[0]["anonymised"]
    assert len(anon["files"]) == 5 and anon["warnings"]  # image + SR/SEG/SC/PDF; burned-in text asked about
    for p in anon["files"]:
        raw = Path(p).read_bytes()
        assert b"Doe^Jane" not in raw and b"PHI-12345" not in raw and "Doe" not in p and "PHI" not in p
    logged = caplog.text + capsys.readouterr().err
    assert caplog.records, "DEBUG logging captured nothing"
    for secret in ("Doe", "Jane", "PHI-12345", "12345"):
        assert secret not in logged, secret
    shutil.rmtree(case)
