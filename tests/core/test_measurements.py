"""Qt-free measurement/annotation models, pixel readout, label matching, corner text and the GSPS writer."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cxr_viewer.core.errors import CXRError, UnknownLabelError
from cxr_viewer.core.imaging import measurements as m
from cxr_viewer.core.imaging.corner_text import (
    demographic_lines,
    image_lines,
    opposite,
    patient_orientation,
)
from cxr_viewer.core.imaging.pixel import pixel_readout, value_scale
from cxr_viewer.core.io import read_image
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.labels import match_label, normalise


@pytest.fixture(scope="module")
def siim(repo_root: Path) -> ImageRecord:
    return read_image(repo_root / "resources" / "samples" / "siim_cr_chest.dcm")


@pytest.fixture
def rescaled_dicom(tmp_path: Path, repo_root: Path) -> Path:
    """The sample film with a linear modality LUT (slope 2, intercept -100) and a named unit."""
    ds = pydicom.dcmread(repo_root / "resources" / "samples" / "siim_cr_chest.dcm")
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 2, -100, "OD"
    out = tmp_path / "rescaled.dcm"
    ds.save_as(out)
    return out


def stored_pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array.astype(np.float64)


def test_readout_gives_stored_value_without_modality_lut(siim, repo_root):
    raw = stored_pixels(repo_root / "resources" / "samples" / "siim_cr_chest.dcm")
    for r, c in ((500, 500), (10, 900), (1000, 3)):
        ro = pixel_readout(siim, r, c)
        assert ro.modality == raw[r, c] and not ro.has_modality_lut
        assert ro.text() == f"row {r}, col {c}: stored {raw[r, c]:.0f}"


def test_readout_gives_stored_and_modality_values_with_rescale(rescaled_dicom):
    rec = read_image(rescaled_dicom)
    raw = stored_pixels(rescaled_dicom)
    ro = pixel_readout(rec, 500, 500)
    assert ro.stored == raw[500, 500]
    assert ro.modality == pytest.approx(raw[500, 500] * 2 - 100)
    assert ro.unit == "OD" and ro.has_modality_lut
    assert f"stored {raw[500, 500]:.0f}, modality {raw[500, 500] * 2 - 100:.0f} OD" in ro.text()


def test_png_speaks_its_own_units(repo_root, tmp_path):
    """An 8-bit PNG reads 0-255 and a 12-bit film in a 16-bit PNG its stored values: the pixel readout and the
    corner's window/level alike (never "C 0.500 W 1.000")."""
    from PIL import Image

    from cxr_viewer.core.imaging.corner_text import display_lines
    from cxr_viewer.core.session import DisplayState

    path = repo_root / "resources" / "samples" / "nih_chest.png"
    rec = read_image(path)
    raw = np.asarray(Image.open(path).convert("L"))
    assert pixel_readout(rec, 10, 10).text() == f"row 10, col 10: stored {raw[10, 10]}"
    state = DisplayState(window=(0.0, 1.0))
    assert display_lines(rec, state)[0].startswith("C 128  W 256")
    deep = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    rec = read_image(tmp_path / "deep.png")
    assert pixel_readout(rec, 63, 63).text() == f"row 63, col 63: stored {deep[63, 63]}"
    assert display_lines(rec, state)[0].startswith("C 2048  W 4096")


def test_monochrome1_readout_is_the_stored_value(dicom_dir):
    path = dicom_dir / "pydicom-data_RG1_UNCR.dcm"
    rec = read_image(path)
    raw = stored_pixels(path)
    r, c = int(rec.shape[0] * 0.36), int(rec.shape[1] * 0.43)  # (700, 800) in the full-size film
    assert pixel_readout(rec, r, c).modality == raw[r, c]  # inverted for display, not in the readout


def test_roi_statistics_match_numpy_in_modality_units(rescaled_dicom):
    rec = read_image(rescaled_dicom)
    values = stored_pixels(rescaled_dicom) * 2 - 100
    rect = m.make_roi(rec, "rectangle", (100, 200), (149, 279))  # rows 100..149, cols 200..279 inclusive
    block = values[100:150, 200:280]
    assert rect.stats.count == block.size
    assert rect.stats.mean == pytest.approx(block.mean())
    assert rect.stats.sd == pytest.approx(block.std())
    assert (rect.stats.minimum, rect.stats.maximum) == (block.min(), block.max())
    assert rect.stats.unit == "OD"
    assert rect.stats.area_mm2 == pytest.approx(49 * 79 * 0.168 * 0.168)
    ell = m.make_roi(rec, "ellipse", (300, 300), (500, 500))
    rr, cc = np.mgrid[0:1024, 0:1024]
    inside = (rr - 400) ** 2 + (cc - 400) ** 2 <= 100**2
    assert ell.stats.count == int(inside.sum())
    assert ell.stats.mean == pytest.approx(values[inside].mean())
    assert ell.stats.area_mm2 == pytest.approx(math.pi * 100 * 100 * 0.168**2)
    assert "mm²" in ell.label and "mean" in ell.label


def test_roi_without_spacing_reports_pixels(repo_root):
    rec = read_image(repo_root / "resources" / "samples" / "nih_chest.png")
    roi = m.make_roi(rec, "rectangle", (10, 10), (19, 29))
    assert roi.stats.area_mm2 is None and roi.stats.unit == ""  # the PNG's own 0-255 values
    assert roi.stats.mean == pytest.approx(float(rec.pixels[10:20, 10:30].mean()) * 255, rel=1e-5)
    assert "area 171 px" in roi.label and roi.stats.count == 200  # drawn area between centres; pixels whose centres are inside


def test_angle_and_ctr(siim):
    right = m.make_angle(siim, (0, 100), (100, 100), (100, 300))
    assert right.degrees == pytest.approx(90.0) and right.label == "90.0°"
    assert m.make_angle(siim, (0, 0), (100, 100), (200, 200)).degrees == pytest.approx(180.0)
    ctr = m.make_ctr(siim, (500, 300), (520, 700), (600, 100), (590, 900))  # the second points drift off the row
    assert ctr.cardiac == ((500.0, 300.0), (500.0, 700.0)) and ctr.thoracic[1] == (600.0, 900.0)
    assert ctr.ratio == pytest.approx(400 / 800)
    assert ctr.unit == "mm" and ctr.cardiac_width == pytest.approx(400 * 0.168)
    assert ctr.label == "CTR 0.50"


def test_json_round_trip_recomputes_values(siim, tmp_path):
    anns = [m.make_distance(siim, (1, 2), (30, 40)), m.make_angle(siim, (0, 100), (100, 100), (100, 300)),
            m.make_roi(siim, "ellipse", (300, 300), (400, 420)), m.make_ctr(siim, (500, 300), (500, 700), (600, 100), (600, 900)),
            m.ArrowAnnotation((10, 10), (60, 80), "here"), m.TextAnnotation((70, 70), "note")]
    path = m.save_annotations(m.sidecar_path(tmp_path / "film.dcm"), anns, siim)
    assert path.name == "film.dcm.annotations.json"
    back = m.load_annotations(path, siim)
    assert back == anns
    other = ImageRecord.from_array(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="another size"):
        m.load_annotations(path, other)


def test_match_label_the_way_users_type():
    names = ["Atelectasis", "Pleural_Thickening", "Pneumonia", "Pneumothorax", "pneumonia", "Tuberculosis (lesion score)"]
    assert normalise("Tuberculosis (lesion score)") == "tuberculosis lesion score"
    assert match_label("tuberculosis", names) == "Tuberculosis (lesion score)"
    assert match_label("TUBERCULOSIS-lesion", names) == "Tuberculosis (lesion score)"
    assert match_label("pleural thick", names) == "Pleural_Thickening"
    assert match_label("pneumonia", names) == "pneumonia"  # exact first
    assert match_label("PNEUMONIA", names) == "Pneumonia"
    with pytest.raises(UnknownLabelError, match="several findings") as exc:
        match_label("pneumo", names)
    assert "'Pneumothorax'" in exc.value.message
    with pytest.raises(UnknownLabelError, match="The loaded models predict") as exc:
        match_label("fracture", names)
    assert "'Tuberculosis (lesion score)'" in exc.value.message


def test_corner_text_and_orientation(dicom_dir, siim):
    rg1 = read_image(dicom_dir / "pydicom-data_RG1_UNCR.dcm")
    assert patient_orientation(rg1) == ("L", "F") and opposite("LF") == "RH"
    # the SIIM film was shrunk to 1024 px without its spacing changing: 17 cm across, flagged
    assert image_lines(siim) == ["1024 × 1024 px", "0.168 mm/px", "⚠ spacing implausible: film 17 × 17 cm"]
    lines = demographic_lines(siim)
    assert any(line.startswith("Study 1901-01-01") for line in lines)


def test_gsps_references_the_image_and_holds_every_shape(siim, tmp_path, repo_root):
    from cxr_viewer.core.export.gsps import gsps_path, write_gsps

    src = tmp_path / "film.dcm"
    shutil.copy(repo_root / "resources" / "samples" / "siim_cr_chest.dcm", src)
    anns = [m.make_distance(siim, (100, 100), (200, 300)), m.make_roi(siim, "ellipse", (300, 300), (400, 500)),
            m.make_angle(siim, (0, 0), (100, 100), (0, 200)), m.make_ctr(siim, (500, 300), (500, 700), (600, 100), (600, 900)),
            m.ArrowAnnotation((10, 10), (50, 50), "look"), m.TextAnnotation((70, 70), "hello")]
    out = write_gsps(gsps_path(src), siim, anns, window=(128.0, 256.0))
    assert out.name == "film.gsps.dcm"
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1" and ds.Modality == "PR"
    assert ds.StudyInstanceUID == siim.header.StudyInstanceUID
    ref = ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == siim.header.SOPInstanceUID
    ga = ds.GraphicAnnotationSequence[0]
    types = [g.GraphicType for g in ga.GraphicObjectSequence]
    assert types.count("ELLIPSE") == 1 and types.count("POLYLINE") == 6  # distance, angle, 2 CTR widths, arrow + head
    line = next(g for g in ga.GraphicObjectSequence if g.GraphicType == "POLYLINE")
    assert list(line.GraphicData) == [100.5, 100.5, 300.5, 200.5]  # column, row; pixel centres at +0.5
    texts = [t.UnformattedTextValue for t in ga.TextObjectSequence]
    assert "hello" in texts and "look" in texts and any(t.startswith("CTR 0.50") for t in texts)
    voi = ds.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowCenter) == 128.0 and float(voi.WindowWidth) == 256.0


def test_gsps_refuses_a_png(repo_root):
    from cxr_viewer.core.export.gsps import build_gsps

    rec = read_image(repo_root / "resources" / "samples" / "nih_chest.png")
    with pytest.raises(CXRError, match="only reference a DICOM image"):
        build_gsps(rec, [m.TextAnnotation((1, 1), "x")])


def test_find_prior_and_deltas_beyond_noise(tmp_path, repo_root):
    from types import SimpleNamespace as NS

    from cxr_viewer.core.compare import MIN_NOISE, augmentations, find_prior, score_deltas, score_noise

    def inst(name):
        return NS(path=tmp_path / name)

    patients = [NS(patient_id="A", is_file_group=False, studies=[
        NS(date="20200101", instances=[inst("a2020.dcm")]), NS(date="20220101", instances=[inst("a2022.dcm")]),
        NS(date="20240101", instances=[inst("a2024.dcm")])]),
        NS(patient_id="B", is_file_group=False, studies=[NS(date="20230101", instances=[inst("b.dcm")])])]
    match = find_prior(patients, "A", "20240101", tmp_path / "a2024.dcm")
    assert match.path == tmp_path / "a2022.dcm" and match.study_date == "20220101"
    assert find_prior(patients, "A", "20200101") is None
    assert find_prior(patients, "", "20240101") is None
    rec = read_image(repo_root / "resources" / "samples" / "nih_chest.png")
    augs = augmentations(rec, 4)
    assert len(augs) == 4 and all(a.shape == rec.shape for a in augs)
    assert all(0.001 < float(np.abs(a.pixels - rec.pixels).mean()) < 0.1 for a in augs), "small changes, not none"
    noise = score_noise(lambda r: {("m", "x"): float(r.pixels.mean())}, rec, n=5)
    assert 0 < noise[("m", "x")] < 0.05
    f = lambda model, label, score: NS(model=model, label=label, score=score)  # noqa: E731
    deltas = score_deltas([f("m", "x", 0.70), f("m", "y", 0.52)], [f("m", "x", 0.40), f("m", "y", 0.50)],
                          {("m", "x"): 0.05, ("m", "y"): 0.0})
    assert deltas[("m", "x")].text() == "0.40 → 0.70 ↑" and deltas[("m", "x")].significant
    assert deltas[("m", "y")].text() == "0.50 → 0.52" and not deltas[("m", "y")].significant  # within MIN_NOISE
    assert MIN_NOISE * 2 > 0.02
    # a finding whose bundle records no noise: the change is shown, never an arrow, and the tooltip says why
    [unmeasured] = score_deltas([f("m", "z", 0.9)], [f("m", "z", 0.1)], {}).values()
    assert unmeasured.noise is None and not unmeasured.significant and unmeasured.text() == "0.10 → 0.90"
    assert "records no score noise" in unmeasured.tooltip()


def test_arrows_only_for_changes_that_matter():
    """Beyond a tiny recorded noise is not enough: the change must cross the threshold or cover half the way to it."""
    from types import SimpleNamespace as NS

    from cxr_viewer.core.compare import MATTER_FRACTION, score_deltas

    def f(label, score, thr):
        return NS(model="m", label=label, score=score, threshold=thr)

    noise = {("m", k): 0.001 for k in ("hernia", "emph", "eff", "nod", "pneu", "unk")}
    cur = [f("hernia", 0.00, 0.138), f("emph", 0.02, 0.111), f("eff", 0.30, 0.233), f("nod", 0.07, 0.091),
           f("pneu", 0.05, 0.50), f("unk", 0.40, None)]
    pri = [f("hernia", 0.08, 0.138), f("emph", 0.07, 0.111), f("eff", 0.10, 0.233), f("nod", 0.02, 0.091),
           f("pneu", 0.12, 0.50), f("unk", 0.30, None)]
    d = {k[1]: v for k, v in score_deltas(cur, pri, noise).items()}
    assert all(v.beyond_noise for v in d.values())
    # far below the threshold and moving away from it: beyond the noise, but no arrow
    assert not d["hernia"].significant and d["hernia"].text() == "0.08 → 0.00"
    assert not d["emph"].significant and "no arrow" in d["emph"].tooltip()
    assert d["eff"].changes_state and d["eff"].arrow == "↑" and "crossing the threshold" in d["eff"].tooltip()
    # 0.02 -> 0.07 covers 0.05 of the 0.071 to the threshold (> MATTER_FRACTION): an arrow without a crossing
    assert MATTER_FRACTION <= 0.05 / 0.071 and not d["nod"].changes_state and d["nod"].arrow == "↑"
    assert not d["pneu"].significant  # 0.12 -> 0.05: away from 0.50
    assert d["unk"].significant  # no threshold known: the noise alone decides


def test_recorded_noise_is_read_from_the_manifest_for_its_own_weights():
    from cxr_viewer.core.compare import NOISE_KEY, recorded_noise
    from cxr_viewer.core.models.manifest import Manifest

    base = {"name": "m", "version": "1", "task": "multilabel", "labels": ["a", "b", "c"],
            "architecture": {"name": "classifier", "kwargs": {"num_classes": 3}}, "weights": {"sha256": "AB12"}}
    rec = {"weights_sha256": "ab12", "labels": {"a": {"value": 0.01}, "b": {"value": float("nan")}, "c": "x"}}
    m = Manifest.from_dict({**base, NOISE_KEY: rec})
    assert recorded_noise(m) == {"a": 0.01} == recorded_noise(m.to_dict())  # non-finite or malformed: not believed
    assert recorded_noise(Manifest.from_dict(base)) == {}
    other = Manifest.from_dict({**base, NOISE_KEY: {**rec, "weights_sha256": "ffff"}})
    assert recorded_noise(other) == {}, "noise measured on other weights says nothing about these"
    assert recorded_noise({**base, NOISE_KEY: [1, 2]}) == {}


def test_implausible_spacing_is_flagged_with_its_plane():
    """A header spacing that makes an adult chest 17 cm wide is doubted on screen, naming the plane it is given at."""
    from cxr_viewer.core.imaging.corner_text import image_lines
    from cxr_viewer.core.imaging.geometry import spacing_problem
    from cxr_viewer.core.io.record import ImageRecord

    px = np.zeros((2000, 1700), np.float32)
    ok = ImageRecord(pixels=px, source=None, format="dicom", spacing_mm=(0.2, 0.2), spacing_source="PixelSpacing")
    assert spacing_problem(ok) is None and not any("implausible" in t for t in image_lines(ok))
    small = ImageRecord(pixels=px, source=None, format="dicom", spacing_mm=(0.1, 0.1), spacing_source="ImagerPixelSpacing")
    why = spacing_problem(small)
    assert why and "17 × 20 cm" in why and "imager (detector) plane" in why
    assert "⚠ spacing implausible: film 17 × 20 cm" in image_lines(small)
    assert "at the patient" in spacing_problem(ImageRecord(pixels=px, source=None, format="dicom", spacing_mm=(0.5, 0.5),
                                                  spacing_source="PixelSpacing"))
    assert spacing_problem(ImageRecord(pixels=px, source=None, format="png")) is None  # no spacing: nothing to doubt
