"""The record a clinician files, end to end: the viewer's Export menu and ``analyze`` write the same record.

A DICOM with full patient and study attributes is opened in the real window with the
default bundles (classifier + report segmenter); the reader adds one measurement of each
kind, pastes a report and draws its regions, opens the prior (current | prior), changes
one threshold and saves the annotations (Ctrl+S). Then the Export menu writes the PDF and
the DICOM results, and ``cxr-viewer analyze --pdf-out --dicom-out`` does the same
headlessly with the annotations saved beside the image. Checked: the identification on
every PDF page (pdftotext), every measurement with value and unit in the SR (highdicom)
and the PDF, every finding's state identical in the findings panel, the PDF and the SR,
dciodvfy clean, dsrdump renders the SR, and a real Orthanc stores every object.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PySide6.QtCore import Qt

from cxr_viewer.core.export.dicom_results import finding_concept
from cxr_viewer.core.export.measurements import measurement_rows
from cxr_viewer.core.imaging.measurements import make_angle, make_ctr, make_distance, make_roi
from cxr_viewer.core.judging import STATE_BADGE, STATE_TEXT, FindingState, display_name
from tests.core.dicom_check import dciodvfy_errors, need_tool
from tests.orthanc import orthanc  # noqa: F401  (fixture)
from tests.record_readers import pdf_states, pdf_text, sr_states
from tests.qt.test_analysis import WAIT_MS

REPORT = "FINDINGS: Right lower zone opacity. No pneumothorax."
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "PatientBirthDate": "19600214", "PatientSex": "F",
           "AccessionNumber": "ACC-0815", "StudyDate": "20240311", "StudyTime": "101500",
           "StudyDescription": "XR CHEST PA", "ReferringPhysicianName": "Smith^John",
           "InstitutionName": "General Hospital"}
IDENTIFICATION = ["Doe Jane", "PID-4711", "1960-02-14", "(64 years)", "female", "ACC-0815", "2024-03-11 10:15",
                  "XR CHEST PA", "Smith John", "General Hospital"]


def _study(folder: Path, sample: Path) -> tuple[Path, Path]:
    """The sample film with full patient/study attributes, and a changed copy of it as its 2023 prior."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    cur = pydicom.dcmread(sample)
    for kw, value in PATIENT.items():
        setattr(cur, kw, value)
    cur.save_as(folder / "current.dcm")
    prior = pydicom.dcmread(sample)
    px = prior.pixel_array.astype(np.float32)
    prior.PixelData = np.clip(px * 0.8 + 20, 0, 255).astype(np.uint8)[:, ::-1].copy().tobytes()
    prior.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    prior.PhotometricInterpretation = "MONOCHROME2"
    for kw, value in PATIENT.items():
        setattr(prior, kw, value)
    prior.StudyDate, prior.AccessionNumber = "20230115", "ACC-0001"
    prior.StudyInstanceUID, prior.SeriesInstanceUID, prior.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    prior.file_meta.MediaStorageSOPInstanceUID = prior.SOPInstanceUID
    prior.save_as(folder / "prior.dcm", enforce_file_format=True)
    return folder / "current.dcm", folder / "prior.dcm"


def _sr_measurements(sr_path: Path) -> list[tuple[str, float, str, str]]:
    """(name, value, UCUM unit, graphic type) of every measurement in the planar ROI groups."""
    import highdicom as hd

    sr = hd.sr.srread(sr_path)
    out = []
    for g in sr.content.get_planar_roi_measurement_groups():
        region = g.roi
        for m in g.get_measurements():
            out.append((m.name.meaning, float(m.value), m.unit.value, str(region.GraphicType)))
    return out


def _check_sr(sr_path: Path, judged_states: dict[tuple[str, str], FindingState], annotations) -> None:
    states = sr_states(sr_path)
    for (model, label), state in judged_states.items():
        assert states[finding_concept(label).meaning] == "STATE_" + state.value.upper(), label
    got = _sr_measurements(sr_path)
    names = {(n, u, t) for n, _v, u, t in got}
    assert ("Length", "mm", "POLYLINE") in names and ("Angle", "deg", "POLYLINE") in names
    assert {("Cardiac width", "mm", "POLYLINE"), ("Thoracic width", "mm", "POLYLINE")} <= names
    assert {("Mean", "1", "ELLIPSE"), ("Standard Deviation", "1", "ELLIPSE"), ("Area", "mm2", "ELLIPSE")} <= names
    values = {n: v for n, v, _u, _t in got}
    dist, angle, roi, ctr = annotations
    assert values["Length"] == pytest.approx(dist.length, rel=1e-5)
    assert values["Angle"] == pytest.approx(angle.degrees, rel=1e-5)
    assert values["Mean"] == pytest.approx(roi.stats.mean, rel=1e-5)
    assert values["Minimum"] == pytest.approx(roi.stats.minimum) and values["Maximum"] == pytest.approx(roi.stats.maximum)
    assert values["Cardiothoracic ratio"] == pytest.approx(ctr.ratio, rel=1e-5)
    assert dciodvfy_errors(sr_path) == []
    dump = subprocess.run([need_tool("dsrdump", "dcmtk"), str(sr_path)], capture_output=True, text=True, check=False)
    assert dump.returncode == 0, dump.stderr
    assert "Imaging Measurement Report" in dump.stdout and "Pleural effusion" in dump.stdout
    assert "SCOORD" in dump.stdout and "Presence of property" in dump.stdout


def _check_pdf(text: str, judged, annotations, *, prior: bool, empty_region: bool) -> None:
    assert text.count("Patient: Doe Jane") == 2  # the header on both pages
    for value in IDENTIFICATION:
        assert value in text, value
    printed = pdf_states(text)
    for j in judged.findings:
        assert printed[j.display_name] == j.state_text, j.label
    assert "Pleural_Thickening" not in text and "Pleural thickening" in text
    order = [printed_name for printed_name in printed]
    ranks = [["POSITIVE", "above · not validated"].index(printed[n]) if printed[n] in ("POSITIVE", "above · not validated")
             else 2 for n in order]
    assert ranks == sorted(ranks)  # POSITIVE first, then above-not-validated, then the rest
    for row in measurement_rows(annotations):
        assert row.name in text and row.value in text, row.name
    assert "mm" in text and "deg" in text
    assert "Right lower zone opacity.: region shown" in text
    assert ("No pneumothorax.: nothing found" in text) == empty_region
    present = {j.state for j in judged.findings}
    for state in present:  # one footnote per state present
        assert sum(line.strip().startswith(STATE_TEXT[state] + ":") for line in text.splitlines()) == 1
    if prior:
        assert "change since the prior of 2023-01-15" in text and "→" in text


@pytest.mark.timeout(1800)
def test_the_record_says_what_the_screen_said(qtbot, make_window, repo_root, tmp_path, monkeypatch, orthanc):  # noqa: F811
    from PySide6.QtWidgets import QFileDialog

    from cxr_viewer.core import pacs
    from cxr_viewer.headless import analyze_main

    cur, prior = _study(tmp_path / "study", repo_root / "resources" / "samples" / "siim_cr_chest.dcm")
    models = repo_root / "resources" / "models"
    win = make_window(models_dir=models)
    win.resize(1400, 900)
    win.open_paths([tmp_path / "study"])
    qtbot.waitUntil(lambda: len(win.study_browser.image_paths()) == 2, timeout=WAIT_MS)
    win.open_file(cur)
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == cur
                    and win.analysis.state.status == "done", timeout=WAIT_MS)
    record = win.session.record

    # the four measurement kinds
    h, w = record.shape
    anns = [make_distance(record, (h * 0.3, w * 0.2), (h * 0.3, w * 0.6)),
            make_angle(record, (h * 0.5, w * 0.3), (h * 0.6, w * 0.4), (h * 0.5, w * 0.5)),
            make_roi(record, "ellipse", (h * 0.4, w * 0.6), (h * 0.5, w * 0.7)),
            make_ctr(record, (h * 0.6, w * 0.35), (h * 0.6, w * 0.6), (h * 0.7, w * 0.15), (h * 0.7, w * 0.85))]
    for a in anns:
        win.session.add_annotation(a)
    # the heatmap the reader looks at
    win.analysis.request_cam("Effusion")
    qtbot.waitUntil(lambda: win.session.heatmap is not None and not win.session.busy, timeout=WAIT_MS)
    heat = win.session.heatmap
    # the report, pasted and drawn
    win.report_panel.set_report(REPORT)
    win.report_panel.draw()
    qtbot.waitUntil(lambda: len(win.session.masks) == 1 and not win.session.busy, timeout=WAIT_MS)  # one region named
    # one threshold of the reader's own
    atel = next(f for f in win.analysis.state.findings if f.label == "Atelectasis")
    win.analysis.set_threshold(atel.model, atel.label, 0.01)
    # the prior, side by side, scored
    qtbot.keyClick(win, Qt.Key.Key_F8)
    compare = win.reading.compare
    assert compare.is_open and compare.prior_date == "20230115"
    qtbot.waitUntil(lambda: bool(compare.deltas), timeout=3 * WAIT_MS)
    # Ctrl+S: the annotations beside the image (JSON + GSPS)
    saved = win.reading.save_annotations()
    assert any(p.name.endswith(".annotations.json") for p in saved)

    judged = win.analysis.state.judged
    assert judged.get("Atelectasis").threshold_source == "user"
    panel = {(m, lab): text for m, lab, _s, _t, text in win.findings_panel.rows()}
    for j in judged.findings:  # the panel shows each state's badge, never another
        assert panel[(j.model, j.label)] == STATE_BADGE[j.state]
    # the TB lesion score is a research overlay, not a finding: no judged row, badge, PDF line or SR item
    assert not any("tuberculosis" in j.label.lower() or "tb lesion" in j.label.lower() for j in judged.findings)

    # Export menu: the report and the DICOM results
    pdf = tmp_path / "menu" / "report.pdf"
    pdf.parent.mkdir()
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(pdf), ""))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "menu" / "dicom"))
    win.action_map["export_report"].trigger()
    assert win.wait_idle(WAIT_MS / 1000) and pdf.is_file()
    win.action_map["export_dicom"].trigger()
    assert win.wait_idle(WAIT_MS / 1000)
    menu_files = list(win.export_actions.last_files)
    assert [p.name.split("_")[0] for p in menu_files] == ["SR", "SEG", "SC", "DOC"]
    text = pdf_text(pdf)
    _check_pdf(text, judged, anns, prior=True, empty_region=False)
    assert f"{heat.label} ({heat.method})" in text  # the heatmap's colour bar on the key image
    for p in menu_files:
        assert dciodvfy_errors(p) == [], p.name
    _check_sr(menu_files[0], judged.states(), anns)
    seg = pydicom.dcmread(menu_files[1])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Right lower zone opacity."]
    doc = pydicom.dcmread(menu_files[3])
    assert doc.BurnedInAnnotation == "YES"  # the identified page names the patient
    (tmp_path / "doc.pdf").write_bytes(bytes(doc.EncapsulatedDocument)[: doc.EncapsulatedDocumentLength])
    _check_pdf(pdf_text(tmp_path / "doc.pdf"), judged, anns, prior=True, empty_region=False)  # the same record as the menu's PDF

    # the anonymised export: the same findings, no identification on its page
    assert win.export_actions.export_anonymised(tmp_path / "anon")
    assert win.wait_idle(WAIT_MS / 1000)
    anon_doc = next(pydicom.dcmread(p) for p in win.export_actions.last_files
                    if pydicom.dcmread(p, stop_before_pixels=True).Modality == "DOC")
    (tmp_path / "anon.pdf").write_bytes(bytes(anon_doc.EncapsulatedDocument)[: anon_doc.EncapsulatedDocumentLength])
    anon_text = pdf_text(tmp_path / "anon.pdf")
    assert "Patient:" not in anon_text and "2024-03-11" not in anon_text
    for value in IDENTIFICATION:
        assert value not in anon_text, value
    assert pdf_states(anon_text) == pdf_states(text)

    # analyze: the same record from the command line, with the annotations saved beside the image
    out = tmp_path / "cli"
    rc = analyze_main([str(cur), "--json", str(out / "a.json"), "--models", str(models), "--no-default-models",
                       "--report", REPORT, "--mask-out", str(out / "masks"), "--pdf-out", str(out / "pdf"),
                       "--dicom-out", str(out / "dicom"), "--threshold", f"{atel.model}:Atelectasis=0.01"])
    assert rc == 0
    (obj,) = json.loads((out / "a.json").read_text())
    assert [m["kind"] for m in obj["measurements"]] == ["distance", "angle", "roi", "ctr"]
    cli_states = {(f["model"], f["label"]): f["state"] for f in obj["findings"]}
    for j in judged.findings:
        f = next(x for x in obj["findings"] if (x["model"], x["label"]) == (j.model, j.label))
        assert f["display_name"] == j.display_name  # the reader's threshold given on the command line too
        assert cli_states[(j.model, j.label)] == j.state.value and f["threshold_source"] == j.threshold_source
    cli_text = pdf_text(Path(obj["report_pdf"]))
    assert "Patient: Doe Jane" in cli_text
    cli_files = [Path(p) for p in obj["dicom"]]
    assert [p.name.split("_")[0] for p in cli_files] == ["SR", "SEG", "SC", "DOC"]
    for p in cli_files:
        assert dciodvfy_errors(p) == [], p.name
    cli_judged = {(f["model"], f["label"]): FindingState(f["state"]) for f in obj["findings"]}
    _check_sr(cli_files[0], cli_judged, anns)
    printed = pdf_states(cli_text)
    for f in obj["findings"]:
        assert printed[display_name(f["label"])] == STATE_TEXT[FindingState(f["state"])]
    assert "No pneumothorax.: nothing found" in cli_text  # the segmenter drew nothing for it here...
    cli_seg = pydicom.dcmread(cli_files[1])
    assert [s.SegmentLabel for s in cli_seg.SegmentSequence] == ["Right lower zone opacity."]  # ...so no segment

    # a real PACS stores every object of the record
    remote = pacs.RemoteNode("127.0.0.1", orthanc.dicom_port, "ORTHANC")
    stored = pacs.send_files(remote, [cur, *menu_files])
    assert len(stored) == 5
    found = orthanc.post("/tools/find", {"Level": "Instance",
                                         "Query": {"StudyInstanceUID": str(record.header.StudyInstanceUID)}})
    assert len(found) == 5
    # the PACS send files the same record (judged result, measurements, regions)
    keep = tmp_path / "sent"
    sent = pacs.send_results(remote, record, judged, masks=[m for m in win.session.masks if m.visible],
                             annotations=anns, out_dir=keep)
    assert len(sent) == 4
    sent_sr = next(p for p in keep.iterdir() if p.name.startswith("SR_"))
    _check_sr(sent_sr, judged.states(), anns)
