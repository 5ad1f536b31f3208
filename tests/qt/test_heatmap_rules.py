"""When a heatmap is drawn, in what colours, and on whose film.

- a map is drawn by default (the reader's "Show" choice, carried to the next film) only where that
  finding is POSITIVE or above its threshold, and only on films of the same patient;
- the choice is never written to the settings: after a restart no map comes back;
- the colours are scaled to the finding's score;
- a research overlay is offered last in the Heatmap box, never pre-selected, never a finding row, and is
  drawn in a calm colour map scaled to its rank among validation normals.
Real tiny bundles (tests/qt/bundles.py) on the SIIM sample DICOM, copied under three patients.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

WAIT_MS = 180_000
OVERLAY = "TB lesion map (research)"


@pytest.fixture(scope="module")
def rule_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classifier (Effusion always above its threshold, Atelectasis never) and a research-overlay segmenter."""
    from tests.qt.bundles import build_classifier, build_derived_segmenter

    root = tmp_path_factory.mktemp("rule_models")
    build_classifier(root / "nih", "nih-tiny", ("Atelectasis", "Effusion"), trained=True, seed=1,
                     thresholds={"Atelectasis": 1.0, "Effusion": 0.0})
    seg = build_derived_segmenter(root / "seg", OVERLAY, "not validated: no same-source negatives",
                                  ["tuberculosis in the right lung"])
    path = seg / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    m["derived_findings"][0].update({"role": "research_overlay", "reference": {
        "what": "test normals", "quantiles": [float(v) for v in np.linspace(0.0, 1.0, 11) ** 3]}})
    path.write_text(json.dumps(m), encoding="utf-8")  # the weights' sha256 still holds
    return root


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory, siim_dicom: Path) -> dict[str, Path]:
    """The SIIM film as P1 and P2 (patient P, two instances) and Q (another patient)."""
    import pydicom
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("films")
    out = {}
    for name, pid in (("P1", "PAT-P"), ("P2", "PAT-P"), ("Q", "PAT-Q")):
        ds = pydicom.dcmread(siim_dicom)
        ds.PatientID = pid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(root / f"{name}.dcm")
        out[name] = root / f"{name}.dcm"
    return out


def _open(qtbot, win, path: Path) -> None:
    win.open_paths([path])
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == path
                    and win.analysis.state.status == "done" and not win.session.busy, timeout=WAIT_MS)
    qtbot.wait(200)
    qtbot.waitUntil(lambda: not win.session.busy, timeout=WAIT_MS)


def _window(make_window, models: Path):
    import torch

    torch.set_num_threads(2)
    win = make_window(models_dir=models)
    win.analysis.backend = "torch"
    return win


def _ask(qtbot, win, label: str, model: str) -> None:
    win.findings_panel.show_heatmap(model, label) if label != OVERLAY else win.heatmap_panel.choose(label, model)
    qtbot.waitUntil(lambda: win.analysis.heatmap is not None and win.analysis.heatmap.label == label
                    and not win.session.busy, timeout=WAIT_MS)


def test_the_show_choice_follows_the_patient_and_the_threshold(qtbot, make_window, rule_models, films) -> None:
    win = _window(make_window, rule_models)
    _open(qtbot, win, films["P1"])
    assert win.session.heatmap is None  # opt-in
    _ask(qtbot, win, "Effusion", "nih-tiny")
    _open(qtbot, win, films["P2"])  # the same patient, Effusion above its threshold: drawn without asking
    assert win.analysis.heatmap is not None and win.analysis.heatmap.label == "Effusion"
    assert win.session.heatmap is not None
    _open(qtbot, win, films["Q"])  # another patient: nothing carried over
    assert win.analysis.heatmap is None and win.session.heatmap is None and win.analysis.shown_cam is None
    _open(qtbot, win, films["P1"])  # and the choice is gone, not waiting for patient P
    assert win.session.heatmap is None
    # a finding below its threshold is drawn when asked, but not carried to the next film
    _ask(qtbot, win, "Atelectasis", "nih-tiny")
    f = next(f for f in win.analysis.state.findings if f.label == "Atelectasis")
    assert not f.above_threshold
    _open(qtbot, win, films["P2"])
    assert win.analysis.heatmap is None and win.session.heatmap is None


def test_no_map_comes_back_after_a_restart(qtbot, make_window, rule_models, films) -> None:
    win = _window(make_window, rule_models)
    _open(qtbot, win, films["P1"])
    _ask(qtbot, win, "Effusion", "nih-tiny")
    assert not win.settings.value("heatmap/show")
    win.close()
    again = _window(make_window, rule_models)  # the same settings file
    assert again.analysis.shown_cam is None
    _open(qtbot, again, films["P1"])
    assert again.analysis.heatmap is None and again.session.heatmap is None


def test_colours_are_scaled_to_the_score(qtbot, make_window, rule_models, films) -> None:
    from cxr_viewer.qt.overlays import colormap_lut, heatmap_rgba

    win = _window(make_window, rule_models)
    _open(qtbot, win, films["P1"])
    for label in ("Atelectasis", "Effusion"):
        # EigenCAM: a random tiny network's Grad-CAM may be all zero; the colour rule is the same for every method
        win.heatmap_panel.choose(label, "nih-tiny", method="eigencam")
        qtbot.waitUntil(lambda: win.analysis.heatmap is not None and win.analysis.heatmap.label == label
                        and not win.session.busy, timeout=WAIT_MS)
        score = next(f.score for f in win.analysis.state.findings if f.label == label)
        layer = win.session.heatmap
        assert layer.peak == pytest.approx(score, abs=1e-6) and layer.data.max() == pytest.approx(1.0)
        rgba = heatmap_rgba(layer)
        lut = colormap_lut(layer.colormap)
        top = lut[int(score * 255 + 0.5)]
        hottest = rgba[np.unravel_index(int(np.argmax(layer.data)), layer.data.shape)]
        assert np.array_equal(hottest[:3], top[:3]), "the map's maximum has the colour of the score, not of 1.0"
        if score < 0.9:
            assert not np.any(np.all(rgba[..., :3] == lut[255][:3], axis=-1)), "no pixel wears the top colour"


def test_research_overlay_is_offered_last_never_preselected_and_never_a_finding(qtbot, make_window, rule_models,
                                                                               films) -> None:
    from cxr_viewer.qt.analysis import RESEARCH_COLORMAP

    win = _window(make_window, rule_models)
    _open(qtbot, win, films["P1"])
    assert sorted(r[1] for r in win.findings_panel.rows()) == ["Atelectasis", "Effusion"]
    assert all(f.label != OVERLAY for f in list(win.analysis.state.findings))
    combo = win.heatmap_panel.finding_combo
    items = [combo.itemData(i) for i in range(combo.count())]
    assert items[-1] == (OVERLAY, "seg-derived") and items.count((OVERLAY, "seg-derived")) == 1
    assert combo.currentData() != (OVERLAY, "seg-derived")
    _ask(qtbot, win, OVERLAY, "seg-derived")
    heat, layer = win.analysis.heatmap, win.session.heatmap
    assert heat.research and layer.colormap == RESEARCH_COLORMAP
    assert layer.peak == pytest.approx(heat.reference_rank)
    qtbot.waitUntil(lambda: "RESEARCH ONLY" in win.heatmap_panel.info_label.text(), timeout=WAIT_MS)
    assert f"{heat.reference_rank:.0%} of validation normal films" in win.heatmap_panel.info_label.text()
    # choosing it never turns it into a finding row, and the patient's next film does not get it unasked
    assert all(r[1] != OVERLAY for r in win.findings_panel.rows())
    _open(qtbot, win, films["P2"])
    assert win.session.heatmap is None
