"""The site calibration wizard (Tools › Site Calibration…) and the drift banner, in the real main window.

The "site" is adult NIH films for the shipped paediatric pneumonia model: a real site shift.
Set CXR_SCREENSHOT_DIR to keep the screenshots (run under xvfb-run for a real window).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_viewer.core.paths import default_models_dir

PNEUMONIA = default_models_dir() / "chest-resnet18"  # its Pneumonia finding


def _keep(widget, name: str, tmp_path: Path) -> Path:
    out = Path(os.environ.get("CXR_SCREENSHOT_DIR") or tmp_path) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(out))
    return out


@pytest.fixture
def nih_site(data_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    root = data_dir / "nih14_extra"
    labels = pd.read_csv(root / "labels.csv").drop_duplicates("patient_id")
    pick = pd.concat([labels[labels["Pneumonia"] == v].sample(16, random_state=0) for v in (0, 1)])
    out = tmp_path / "site.csv"
    pick[["file", "Pneumonia", "patient_id"]].to_csv(out, index=False)
    return root, out


def test_wizard_scores_fits_and_saves_a_profile(make_window, qtbot, nih_site, tmp_path: Path) -> None:
    from cxr_viewer.core.models.bundle import load_bundle
    from cxr_viewer.core.site.profile import load_profile

    folder, labels = nih_site
    win = make_window(models_dir=default_models_dir())
    win.action_map["site_calibration"].trigger()
    dlg = win.site_calibration.dialog
    assert dlg is not None and dlg.isVisible()
    dlg.n_boot = 150
    dlg.model_box.setCurrentIndex(dlg.model_box.findData(str(PNEUMONIA)))
    dlg.folder_edit.setText(str(folder))
    dlg.labels_edit.setText(str(tmp_path / "missing.csv"))
    dlg.score_button.click()
    assert "could not be read" in dlg.status.text()  # bad input: a message at once, no crash

    dlg.labels_edit.setText(str(labels))
    dlg.score_button.click()
    qtbot.waitUntil(lambda: "Pneumonia" in dlg.fitted, timeout=600_000)
    assert dlg.finding_box.currentText() == "Pneumonia" and dlg.data["n_images"] == 32
    text = dlg.summary.text()
    import re

    assert "16 positive / 16 negative" in text and "AUROC" in text and re.search(r"model card \d\.\d\d", text)
    assert "fewer than 20" in text  # 8 positives in the calibration part: a warning, threshold not validated

    dlg.target_box.setCurrentIndex(dlg.target_box.findData("sensitivity"))
    dlg.target_spin.setValue(0.9)
    qtbot.waitUntil(lambda: dlg.fitted["Pneumonia"][0].target == "sensitivity:0.90", timeout=300_000)
    fp, report = dlg.fitted["Pneumonia"]
    assert report["fit"]["target"] == "sensitivity:0.90" and "ECE" in dlg.summary.text()
    assert len(dlg.figure.axes) == 2 and dlg.figure.axes[0].get_title() == "Pneumonia: ROC on site films"
    dlg.name_edit.setText("adult-ward")
    dlg.note_edit.setText("NIH adults as the site")
    shot = _keep(dlg, "site_wizard.png", tmp_path)
    assert shot.stat().st_size > 20_000

    saved = dlg.save()
    assert saved is not None and saved.id == "adult-ward v1"
    back = load_profile(saved.path)
    assert back.bundle["sha256"] == load_bundle(PNEUMONIA).sha256 and back.findings["Pneumonia"].target == "sensitivity:0.90"
    assert not back.findings["Pneumonia"].validated and back.note == "NIH adults as the site"
    assert win.site_calibration.profile.id == "adult-ward v1"  # the saved profile becomes the active one
    assert win.settings.value("site/profile") == str(saved.path)


def test_drift_banner(make_window, qtbot, tmp_path: Path) -> None:
    from cxr_viewer.core.analysis import site_adjusted
    from cxr_viewer.core.inference.results import AnalysisResult, Finding
    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.profile import SiteProfile, save_profile
    from cxr_viewer.qt.analysis import AnalysisState

    sha = "ab" * 32
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.3, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-z))).astype(float)
    fp, _ = fit_site_finding("pneumonia", y, 1 / (1 + np.exp(-z)), np.arange(400), current_threshold=0.5, n_boot=50)
    profile = save_profile(SiteProfile("ward", {"name": "pneu", "version": "1", "sha256": sha}, {"pneumonia": fp}))
    win = make_window()
    win.site_calibration.set_profile(profile)
    banner = win.site_calibration.banner

    def analysed(score: float, model_sha: str = sha) -> None:
        """What the controller publishes for one image: the result with the active profile applied (or why not)."""
        f = Finding("pneumonia", float(score), 0.5, "pneu", "1")
        models = ({"name": "pneu", "version": "1", "sha256": model_sha, "trained": True},)
        result, message, stale = site_adjusted(profile, AnalysisResult(f"h{score}", (f,), (), models))
        win.analysis.state_changed.emit(AnalysisState(status="done", findings=result.findings, models=models,
                                                      site_profile=result.site_profile, site_profile_message=message,
                                                      site_profile_stale=stale))  # fmt: skip

    for s in 1 / (1 + np.exp(-rng.normal(0, 1.3, 60))):  # same population: no banner
        analysed(s)
    assert not banner.isVisible()
    for s in 1 / (1 + np.exp(-rng.normal(2.0, 0.6, 80))):  # a new population: scores pushed up
        analysed(s)
    qtbot.waitUntil(banner.isVisible, timeout=5000)
    assert "Drift from site profile ward v1" in banner.label.text() and "PSI" in banner.label.text()
    label = win.site_calibration.status_label  # the status bar's word on the profile: inside the window, whole in its tooltip
    assert label.text() == f"Site profile: ward v1 ({profile.created[:10]})" and label.text() in label.toolTip()
    assert label.isVisible() and label.mapTo(win, label.rect().topRight()).x() < win.width() and not label.elided
    _keep(win, "drift_banner.png", tmp_path)
    win.site_calibration.set_profile(profile)
    analysed(0.4, model_sha="cd" * 32)  # the bundle was updated: the profile no longer applies, said in the bar
    assert banner.isVisible() and "model was updated" in banner.label.text()
    assert json.loads(Path(profile.path).read_text())["bundle"]["sha256"] == sha


def _site_data(n: int = 40) -> dict:
    """Scores of a site's labelled films as the wizard's scoring step hands them on: one finding with many
    positives, one (Rare) with two, scored no better than chance."""
    rng = np.random.default_rng(0)
    rare_y = np.zeros(n)
    rare_y[rng.choice(n, 2, replace=False)] = 1
    rare_p = rng.uniform(0, 1, n)
    good_y = (np.arange(n) % 2).astype(float)
    good_p = np.clip(0.3 + 0.4 * good_y + np.random.default_rng(1).normal(0, 0.12, n), 0, 1)
    return {"bundle": {"name": "site-test", "version": "1", "sha256": "0" * 64}, "labels": ["Good", "Rare"],
            "scores": np.stack([good_p, rare_p], axis=1), "truth": np.stack([good_y, rare_y], axis=1),
            "groups": np.array([f"p{i}" for i in range(n)]), "n_images": n,
            "thresholds": {"Good": 0.5, "Rare": 0.5}, "card_prevalence": {"Good": None, "Rare": None},
            "folder": "site", "labels_file": "site.csv"}


def test_wizard_refuses_an_unusable_operating_point_and_says_why(make_window, qtbot, tmp_path: Path) -> None:
    """Two positives: the proposed threshold is 1.00 (sensitivity 0). Save is disabled with the reason, until
    "Save anyway"; the status speaks of the finding on screen; no blank plot before scoring; plurals right."""
    from cxr_viewer.core.site.fit import operating_point_problem

    win = make_window(models_dir=default_models_dir())
    win.action_map["site_calibration"].trigger()
    dlg = win.site_calibration.dialog
    dlg.n_boot = 50
    assert dlg.canvas.isHidden() and dlg.plot_hint.isVisible(), "no empty plot area before scoring"
    assert not dlg.save_button.isEnabled()
    dlg.target_box.setCurrentIndex(dlg.target_box.findData("specificity"))
    dlg.target_spin.setValue(0.95)
    dlg._on_score_step(("scores", _site_data()))
    qtbot.waitUntil(lambda: set(dlg.fitted) == {"Good", "Rare"}, timeout=120_000)
    qtbot.wait(50)
    assert dlg.finding_box.currentText() == "Good"
    assert dlg.status.text().startswith("Good: fitted on"), "the status names the finding on screen"
    assert dlg.canvas.isVisible() and not dlg.plot_hint.isVisible()
    assert operating_point_problem(dlg.fitted["Rare"][1]) and not operating_point_problem(dlg.fitted["Good"][1])
    assert not dlg.save_button.isEnabled()
    assert dlg.save_problem.isVisible() and "Rare" in dlg.save_problem.text() and "1.00" in dlg.save_problem.text()
    assert dlg.save() is None and dlg.saved is None
    dlg.override_box.setChecked(True)
    assert dlg.save_button.isEnabled()
    dlg.finding_box.setCurrentText("Rare")
    qtbot.waitUntil(lambda: dlg.status.text().startswith("Rare: fitted on"), timeout=120_000)
    assert "2 positive / 38 negative films" in dlg.summary.text()
    assert "only 2 positive films" in dlg.summary.text() and "1 positives" not in dlg.summary.text()
