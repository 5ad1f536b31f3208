"""SR / SEG / SC / Encapsulated PDF written by write_results, end to end with the default bundles.

The sample study is analysed by the real engine and the real report segmenter; every object is
checked by dciodvfy (no errors) and read back with pydicom and highdicom.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_viewer.core.errors import ExportError
from cxr_viewer.core.export import report_pdf
from cxr_viewer.core.export.dicom_results import CODING_SCHEME, LesionMap, finding_concept, write_results
from cxr_viewer.core.judging import display_name, judge
from cxr_viewer.core.io import read_image
from tests.core.dicom_check import dciodvfy_errors, need_tool

REPORT = "FINDINGS: Right lower zone opacity. The left lung is clear."


@pytest.fixture(scope="module")
def analysed(repo_root: Path):
    """(record, result, masks) of the bundled sample study, with the default models."""
    from cxr_viewer.core.inference.engine import InferenceEngine
    from cxr_viewer.core.inference.segment import Segmenter

    engine = InferenceEngine.from_dirs([repo_root / "resources" / "models"], device="cpu")
    record = read_image(repo_root / "resources" / "samples" / "siim_cr_chest.dcm")
    result = engine.analyze(record)
    masks = Segmenter(engine.bundles_for_task("text_segmentation")[0]).segment_report(record, REPORT)
    assert len(result.findings) >= 15 and len(masks) == 2
    return record, result, masks


@pytest.fixture(scope="module")
def written(analysed, tmp_path_factory):
    record, result, masks = analysed
    out = tmp_path_factory.mktemp("dicom_results")
    lesion = LesionMap("tuberculosis in the right lung (probability)", masks[0].prob)
    t0 = time.perf_counter()
    paths = write_results(record, result, out, masks=[*masks, lesion])
    print(f"write_results: SR + 2 SEG + SC + PDF in {time.perf_counter() - t0:.2f} s")
    return {p.name.split("_")[0] + ("F" if i == 2 else ""): p for i, p in enumerate(paths)}


def test_every_object_passes_dciodvfy(written) -> None:
    assert set(written) == {"SR", "SEG", "SEGF", "SC", "DOC"}
    for kind, path in written.items():
        assert dciodvfy_errors(path) == [], kind


def test_objects_file_under_the_source_study(analysed, written) -> None:
    record, _, _ = analysed
    src = record.header
    series = set()
    for path in written.values():
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        series.add(ds.SeriesInstanceUID)
        assert path.name == f"{path.name.split('_')[0]}_{ds.SOPInstanceUID}.dcm"
    assert len(series) == len(written)  # one new series per object


def test_sr_round_trip(analysed, written) -> None:
    import highdicom as hd

    record, result, _ = analysed
    sr = hd.sr.srread(written["SR"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    ref = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == record.header.SOPInstanceUID
    groups = sr.content.get_image_measurement_groups()
    by_label = {g.finding_type.meaning: g for g in groups}
    models = {m["name"]: m for m in result.models}
    judged = judge(result)
    for j in judged.findings:
        f = j.finding
        g = by_label[finding_concept(f.label).meaning]
        values = {m.name.meaning: m for m in g.get_measurements()}
        assert values["Probability"].value == pytest.approx(f.score, abs=1e-9)
        assert values["Threshold Value"].value == pytest.approx(f.threshold, abs=1e-9)
        method = values["Threshold Value"].method.meaning  # an LO value: the method, cut at 64 characters
        assert len(method) <= 64
        assert method == f.threshold_method or (method.endswith("...") and f.threshold_method.startswith(method[:-3]))
        assert values["Threshold Value"].method.value == "THRESHOLD_MODEL"
        evaluations = {e.name.meaning: e.value for e in g.get_qualitative_evaluations()}
        # presence only for a validated verdict; otherwise indeterminate, with the state and its reason
        presence = {"positive": "Present", "negative": "Absent"}.get(j.state.value, "Indeterminate")
        assert evaluations["Presence of property"].meaning == presence
        assert evaluations["Finding state"].value == "STATE_" + j.state.value.upper()
        assert g.source_images[0].referenced_sop_instance_uid == record.header.SOPInstanceUID
        texts = {str(getattr(n, "TextValue", "")) for n in _walk(list(g))}  # incl. TID 4019 algorithm id
        assert f.model in texts and f"weights sha256 {models[f.model]['sha256']}" in texts
        assert "threshold source model" in texts
        if not j.validated:
            assert j.reason and j.reason in texts
    assert by_label["Abnormal"].finding_type.scheme_designator == CODING_SCHEME  # a private code where none fits
    # the TB lesion score is a research overlay, not a finding: it has no SR item
    assert not any("tuberculosis" in k.lower() or "tb lesion" in k.lower() for k in by_label)
    assert by_label["Pleural effusion"].finding_type.value == "60046008"  # SNOMED CT where a concept fits
    assert by_label["Pleural effusion"].finding_type.scheme_designator == "SCT"
    qc = by_label["Image quality checks"].get_qualitative_evaluations()
    assert [q.name.value for q in qc] == ([q.code.upper() for q in result.qc] or ["QC"])


def _walk(items):
    for item in items:
        yield item
        yield from _walk(getattr(item, "ContentSequence", []))


def test_seg_round_trip(analysed, written) -> None:
    import highdicom as hd

    record, _, masks = analysed
    seg = hd.seg.segread(written["SEG"])
    assert seg.segmentation_type == hd.seg.SegmentationTypeValues.BINARY
    assert [seg.get_segment_description(i + 1).SegmentDescription for i in range(2)] == [m.text for m in masks]
    assert seg.SourceImageSequence[0].ReferencedSOPInstanceUID == record.header.SOPInstanceUID
    arr = seg.get_pixels_by_source_instance([record.header.SOPInstanceUID], combine_segments=False)
    assert arr.shape == (1, *record.shape, 2)
    for i, m in enumerate(masks):
        assert np.array_equal(arr[0, ..., i].astype(bool), m.mask)
    frac = hd.seg.segread(written["SEGF"])
    assert frac.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL
    assert frac.get_segment_description(1).SegmentDescription.startswith("tuberculosis in the right lung")
    prob = frac.get_pixels_by_source_instance([record.header.SOPInstanceUID])[0, ..., 0]
    assert np.abs(prob.astype(np.float32) - masks[0].prob).max() <= 1 / 255 + 1e-6


def test_sc_and_pdf_round_trip(analysed, written, tmp_path: Path) -> None:
    record, result, _ = analysed
    sc = pydicom.dcmread(written["SC"])
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[2] == 3
    assert sc.pixel_array.shape[1] == 1024 and sc.BurnedInAnnotation == "NO"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == record.header.SOPInstanceUID
    colours = {tuple(c) for c in sc.pixel_array.reshape(-1, 3)[::7]}
    assert (230, 159, 0) in colours  # the first mask's contour colour is burned in
    doc = pydicom.dcmread(written["DOC"])
    pdf = bytes(doc.EncapsulatedDocument)[: doc.EncapsulatedDocumentLength]
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf" and pdf.startswith(b"%PDF")
    assert doc.SourceInstanceSequence[0].ReferencedSOPInstanceUID == record.header.SOPInstanceUID
    (tmp_path / "r.pdf").write_bytes(pdf)
    text = subprocess.run([need_tool("pdftotext", "poppler-utils"), str(tmp_path / "r.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "Research use only" in text
    for f in result.findings:  # display names, never the raw label
        assert display_name(f.label) in text and "Pleural_Thickening" not in text
    for m in result.models:
        assert m["sha256"][:32] in text


def test_report_pdf_and_png_page(analysed, tmp_path: Path) -> None:
    record, result, masks = analysed
    pdf = report_pdf.write_report(record, result, tmp_path / "page.pdf", masks=masks)
    subprocess.run([need_tool("pdftoppm", "poppler-utils"), "-png", "-r", "40", str(pdf), str(tmp_path / "page")],
                   check=True)
    from PIL import Image

    page = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("RGB"))
    assert page.shape[0] > page.shape[1]  # one portrait page
    assert (np.abs(page.astype(int) - (192, 57, 43)).sum(axis=-1) < 30).any()  # the POSITIVE badge colour
    png = report_pdf.write_report(record, result, tmp_path / "page.png")
    assert Image.open(png).size == (1240, 1753)  # A4 at 150 dpi
    with pytest.raises(ValueError):
        report_pdf.write_report(record, result, tmp_path / "page.jpg")


def test_non_dicom_and_wrong_masks_are_refused(analysed, repo_root: Path, tmp_path: Path) -> None:
    record, result, _ = analysed
    png = read_image(repo_root / "resources" / "samples" / "nih_chest.png")
    with pytest.raises(ExportError, match="only be written for a DICOM image"):
        write_results(png, result, tmp_path)
    small = LesionMap("too small", np.zeros((8, 8), np.float32))
    with pytest.raises(ExportError, match="masks must be at the image's size"):
        write_results(record, result, tmp_path, masks=[small])
    with pytest.raises(ExportError, match="cannot be read"):
        write_results(record, result, tmp_path, pdf=tmp_path / "missing.pdf")


def test_sr_json_and_pdf_name_the_site_profile(analysed, tmp_path: Path) -> None:
    """A site profile applied to the result: the SR (TEXT item + algorithm parameter), JSON and PDF name it."""
    import highdicom as hd

    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.profile import SiteProfile, apply_site_profile, save_profile

    record, result, _ = analysed
    chest = next(m for m in result.models if any(f.label == "Pneumonia" and f.model == m["name"] for f in result.findings))
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.3, 300)  # the site's films: a model that is overconfident here
    y = (rng.random(300) < 1 / (1 + np.exp(-z))).astype(float)
    fp, _ = fit_site_finding("Pneumonia", y, 1 / (1 + np.exp(-3 * z)), np.arange(300), current_threshold=0.5,
                             target="sensitivity:0.9", method="platt", n_boot=50)  # fmt: skip
    profile = save_profile(SiteProfile("ward-3", {k: str(chest[k]) for k in ("name", "version", "sha256")},
                                       {"Pneumonia": fp}, note="winter films"), tmp_path / "profiles")  # fmt: skip
    adjusted = apply_site_profile(profile, result)
    assert adjusted.to_dict()["site_profile"]["id"] == "ward-3 v1"
    paths = write_results(record, adjusted, tmp_path / "out")
    sr_path = paths[0]
    assert sr_path.name.startswith("SR_") and dciodvfy_errors(sr_path) == []
    ds = pydicom.dcmread(sr_path)
    texts = [str(n.TextValue) for n in _walk(list(ds.ContentSequence)) if getattr(n, "ValueType", "") == "TEXT"]
    named = [t for t in texts if t.startswith("ward-3 v1, created ")]
    assert len(named) == 1 and profile.created[:10] in named[0] and chest["sha256"][:16] in named[0]
    assert "winter films" in named[0]
    sr = hd.sr.srread(sr_path)
    group = next(g for g in sr.content.get_image_measurement_groups() if g.finding_type.meaning == "Pneumonia")
    values = {m.name.meaning: m for m in group.get_measurements()}
    f = adjusted.finding("Pneumonia", chest["name"])
    assert values["Probability"].value == pytest.approx(f.score) and f.raw_score is not None
    assert values["Threshold Value"].method.meaning == "site profile ward-3 v1: target sensitivity 0.9"
    assert values["Threshold Value"].method.value == "THRESHOLD_SITE_PROFILE"
    params = {str(getattr(n, "TextValue", "")) for n in _walk(list(group))}
    assert f"site profile ward-3 v1 {profile.created[:10]}" in params
    other = next(g for g in sr.content.get_image_measurement_groups() if g.finding_type.meaning == "Pleural effusion")
    assert not any(str(getattr(n, "TextValue", "")).startswith("site profile") for n in _walk(list(other)))
    doc = pydicom.dcmread(paths[-1])
    (tmp_path / "r.pdf").write_bytes(bytes(doc.EncapsulatedDocument)[: doc.EncapsulatedDocumentLength])
    text = subprocess.run([need_tool("pdftotext", "poppler-utils"), str(tmp_path / "r.pdf"), "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "Site calibration profile" in text and "ward-3 v1" in text
    # without a profile, the SR says nothing about one
    plain = pydicom.dcmread(write_results(record, result, tmp_path / "plain")[0])
    assert not any(str(getattr(n, "TextValue", "")).startswith("ward-3") for n in _walk(list(plain.ContentSequence)))
