"""The active site profile in the real main window: applied to the displayed scores, named in the findings
panel and the status bar, refused with a message when the bundle's weights changed; the reader's keyboard
labels in the worklist; enabling an installed site version in the model manager and rolling back.

Real tiny bundles (tests/qt/bundles.py) and real films; the profiles are fitted by the real site code.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from tests.qt.bundles import build_classifier, tiny_models, open_and_wait  # noqa: F401  (fixture)

WAIT_MS = 300_000


@pytest.fixture(autouse=True)
def _stores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_VIEWER_WORKLIST_DB", str(tmp_path / "worklist.sqlite"))
    monkeypatch.setenv("CXR_VIEWER_PROFILES", str(tmp_path / "profiles"))
    monkeypatch.setenv("CXR_VIEWER_CORRECTIONS", str(tmp_path / "corrections"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


def _open(qtbot, make_window, models: Path, path: Path):
    return open_and_wait(qtbot, make_window, models, path, timeout_ms=WAIT_MS)


def _profile(bundle: dict, label: str = "Effusion", sha: str | None = None):
    """A profile for ``label`` of ``bundle``: Platt recalibration and a target-sensitivity threshold fitted on
    scores of an overconfident model (the real fit), bound to the bundle's weights (or to ``sha``)."""
    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.profile import SiteProfile, save_profile

    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.3, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-z))).astype(float)
    fp, _ = fit_site_finding(label, y, 1 / (1 + np.exp(-(3 * z - 1))), np.arange(400), current_threshold=0.5,
                             target="sensitivity:0.9", method="platt", n_boot=50)  # fmt: skip
    ident = {"name": bundle["name"], "version": bundle["version"], "sha256": sha or bundle["sha256"]}
    return save_profile(SiteProfile("clinic", ident, {label: fp}, note="test site"))


def test_viewer_applies_the_active_profile_and_names_it(qtbot, make_window, tiny_models, nih_png) -> None:  # noqa: F811
    win = _open(qtbot, make_window, tiny_models, nih_png)
    nih = next(m for m in win.analysis.state.models if m["name"] == "nih-tiny")
    raw = {(m, lab): (score, thr) for m, lab, score, thr, _ in win.findings_panel.rows()}
    assert not win.findings_panel.profile_label.isVisible()
    assert win.site_calibration.status_label.text() == "Site profile: none"

    profile = _profile(nih)
    win.site_calibration.set_profile(profile)  # what saving in the wizard or Tools › Use Site Profile… does
    qtbot.waitUntil(lambda: win.analysis.state.site_profile is not None, timeout=WAIT_MS)
    fp = profile.findings["Effusion"]
    rows = {(m, lab): (score, thr, text) for m, lab, score, thr, text in win.findings_panel.rows()}
    score, thr, _ = rows[("nih-tiny", "Effusion")]
    raw_score = raw[("nih-tiny", "Effusion")][0]
    assert score == pytest.approx(float(fp.calibration(np.array([raw_score]))[0]), abs=1e-6)
    assert score != pytest.approx(raw_score, abs=1e-3) and thr == pytest.approx(fp.threshold)
    for key in raw:  # other findings and other models: the model's own scores and thresholds
        if key != ("nih-tiny", "Effusion"):
            assert rows[key][:2] == pytest.approx(raw[key])
    f = next(f for f in list(win.analysis.state.findings) if f.label == "Effusion")
    assert f.raw_score == pytest.approx(raw_score) and f.threshold_method.startswith("site profile clinic v1")
    header = win.findings_panel.profile_label
    assert header.isVisible() and header.text().startswith(f"Site profile clinic v1, {profile.created[:10]}")
    assert "nih-tiny" in header.text()
    assert win.site_calibration.status_label.text() == f"Site profile: clinic v1 ({profile.created[:10]})"
    tip = win.findings_panel.item_for("nih-tiny", "Effusion").toolTip(1)
    assert "site profile clinic v1" in tip and f"raw score {raw_score:.3f}" in tip
    # the viewer's Export menu hands the profile on: its SR and PDF name it
    _, result = win.export_actions._current()
    assert result.site_profile["id"] == "clinic v1" and result.finding("Effusion").score == pytest.approx(score)

    # a user threshold still wins over the site's, on the recalibrated score
    win.analysis.set_threshold("nih-tiny", "Effusion", 0.42)
    f = next(f for f in list(win.analysis.state.findings) if f.label == "Effusion")
    assert f.threshold == 0.42 and f.score == pytest.approx(score)
    win.analysis.set_threshold("nih-tiny", "Effusion", None)

    # the bundle was updated since the profile was fitted: not applied, and the window says why
    stale = _profile(nih, sha="0" * 64)
    win.site_calibration.set_profile(stale)
    qtbot.waitUntil(lambda: win.analysis.state.site_profile_stale, timeout=WAIT_MS)
    assert win.analysis.state.site_profile is None
    rows = {(m, lab): (score, thr) for m, lab, score, thr, _ in win.findings_panel.rows()}
    assert rows.keys() == raw.keys() and all(rows[k] == pytest.approx(raw[k]) for k in raw)  # the model's own again
    assert header.isVisible() and "the model was updated" in header.text() and "Recalibrate" in header.text()
    assert header.text().startswith("⚠ Site profile not applied")
    assert win.site_calibration.banner.isVisible() and "model was updated" in win.site_calibration.banner.label.text()
    assert win.site_calibration.status_label.text() == "Site profile clinic v2: NOT APPLIED"

    # no profile: nothing said, raw scores
    win.site_calibration.set_profile(None)
    assert not header.isVisible() and win.analysis.state.site_profile is None
    assert win.site_calibration.status_label.text() == "Site profile: none"


def _film(path: Path, seed: int, size: int = 80) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = 0.5 + 0.3 * np.sin(x / (2 + seed % 7)) * np.cos(y / (3 + seed % 5)) + 0.1 * rng.standard_normal((size, size))
    Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), mode="L").save(path)
    return path


def test_keyboard_labels_in_the_worklist_feed_the_store_export_and_wizard(qtbot, make_window, tiny_models,  # noqa: F811
                                                                          tmp_path: Path) -> None:  # fmt: skip
    from cxr_viewer.cli import main as viewer_main
    from cxr_viewer.core.corrections import CorrectionStore
    from cxr_viewer.qt.worklist import COL_LABELS, FIXED

    folder = tmp_path / "studies"
    folder.mkdir()
    for i in range(8):
        _film(folder / f"film_{i}.png", seed=i)
    win = make_window(models_dir=tiny_models)
    panel = win.worklist_panel
    panel.open_folder(folder)
    qtbot.waitUntil(lambda: panel.model.rowCount() >= 8 and not panel.controller.running, timeout=WAIT_MS)
    col = len(FIXED) + panel.model.findings.index(("nih-tiny", "Effusion"))
    panel.table.setFocus()
    truth = {}
    for row in range(8):
        panel.select_row(row, open_it=False)
        index = panel.proxy.index(row, col)
        panel.table.clicked.emit(index)  # clicking the Effusion cell chooses the finding to label
        assert panel.label_box.currentData() == ("nih-tiny", "Effusion")
        truth[panel.current_entry().path.name] = row % 2
        qtbot.keyClick(panel.table, Qt.Key.Key_1 if row % 2 else Qt.Key.Key_2)
    panel.select_row(0)  # opens the study
    qtbot.waitUntil(lambda: win.session.record is not None and not win.session.busy, timeout=WAIT_MS)
    assert win.session.display.preset == "Default"
    panel.table.setFocus()
    qtbot.keyClick(panel.table, Qt.Key.Key_2)  # the same label again: the latest word counts
    assert win.session.display.preset == "Default"  # 2 in the worklist labels; it did not pick window preset 2
    assert panel.proxy.index(0, COL_LABELS).data() == "Effusion −"
    # Alt+3 from the window's menu: unsure about Nodule on the same study
    assert panel.choose_label_finding("Nodule")
    win.action_map["worklist_label_unsure"].trigger()
    assert panel.proxy.index(0, COL_LABELS).data() == "Effusion −, Nodule ?"

    store = CorrectionStore()
    stored = store.all()
    assert len(stored) == 10 and {c.kind for c in stored} == {"label"}
    c = stored[0]
    entry = panel.model.entry_at(panel.proxy.mapToSource(panel.proxy.index(0, 0)).row())
    assert c.image == str(entry.path.resolve()) and c.content_hash == entry.content_hash and c.value == 0.0
    assert c.model["name"] == "nih-tiny" and len(c.model["sha256"]) == 64 and c.model_score is not None
    assert c.time and c.reader is not None
    assert stored[-1].label == "Nodule" and stored[-1].value is None

    out = tmp_path / "site.csv"
    assert viewer_main(["export-corrections", "--out", str(out), "--store", str(store.folder)]) == 0
    rows = {Path(r["image"]).name: r for r in csv.DictReader(out.open())}
    assert {n: int(r["Effusion"]) for n, r in rows.items()} == truth
    assert rows[entry.path.name]["Nodule"] == ""  # unsure: unknown
    assert all(r["patient_id"] for r in rows.values())

    # the wizard takes the same labels as its labelled set
    dlg = win.site_calibration.show_wizard()
    dlg.n_boot = 50
    dlg.model_box.setCurrentIndex(dlg.model_box.findText("nih-tiny 0.0.1"))
    dlg.source_box.setCurrentIndex(dlg.source_box.findData("worklist"))
    assert not dlg.folder_edit.isEnabled()
    dlg.score_button.click()
    qtbot.waitUntil(lambda: "Effusion" in dlg.fitted, timeout=WAIT_MS)
    assert dlg.data["n_images"] == 8 and dlg.data["labels"] == ["Effusion", "Nodule"]
    assert "4 positive / 4 negative" in dlg.summary.text()
    json.dumps(dlg.fitted["Effusion"][1]["fit"])  # a real fit, strict JSON
    win.close()

    # the labels are still there in the next session
    win2 = make_window(models_dir=tiny_models)
    assert win2.worklist_panel.controller.labels_of(entry) == {"Effusion": 0.0, "Nodule": None}


def _worklist_rows(panel) -> list:
    return [panel.model.entry_at(panel.proxy.mapToSource(panel.proxy.index(r, 0)).row())
            for r in range(panel.proxy.rowCount())]  # fmt: skip


def test_worklist_follows_the_site_profile_and_the_enabled_set(qtbot, make_window, tiny_models,  # noqa: F811
                                                               tmp_path: Path) -> None:  # fmt: skip
    from cxr_viewer.core.worklist import abnormality
    from cxr_viewer.qt.worklist import COL_ABNORMAL, FIXED

    folder = tmp_path / "studies"
    folder.mkdir()
    for i in range(5):
        _film(folder / f"film_{i}.png", seed=i)
    win = make_window(models_dir=tiny_models)
    panel = win.worklist_panel
    panel.open_folder(folder)
    qtbot.waitUntil(lambda: panel.model.rowCount() >= 5 and not panel.controller.running, timeout=WAIT_MS)
    assert not panel.site_label.isVisible()
    raw = {e.path: e for e in panel.model.entries}
    key = ("nih-tiny", "Effusion")
    nih = next(k for k in panel.controller.worklist.models if k.name == "nih-tiny")
    profile = _profile({"name": nih.name, "version": nih.version, "sha256": nih.sha256})
    fp = profile.findings["Effusion"]

    win.site_calibration.set_profile(profile)  # the viewer's active profile is the worklist's too
    qtbot.waitUntil(lambda: all(e.site_profile for e in panel.model.entries) and not panel.controller.running,
                    timeout=WAIT_MS)  # fmt: skip
    assert panel.site_label.isVisible()
    assert panel.site_label.text().startswith(f"Site profile clinic v1 ({profile.created[:10]}): calibrated scores")
    col = len(FIXED) + panel.model.findings.index(key)
    assert panel.model.headerData(col, Qt.Orientation.Horizontal) == "Effusion (site)"
    assert "site profile clinic v1" in panel.model.headerData(col, Qt.Orientation.Horizontal, Qt.ItemDataRole.ToolTipRole)
    rows = _worklist_rows(panel)
    changed = 0
    for r, e in enumerate(rows):
        f = next(f for f in e.findings if (f.model, f.label) == key)
        r0 = next(f for f in raw[e.path].findings if (f.model, f.label) == key)
        want = float(fp.calibration(np.array([r0.score]))[0])
        assert f.score == pytest.approx(want) and f.threshold == pytest.approx(fp.threshold)
        assert panel.proxy.index(r, col).data() == f"{want:.2f}"
        tip = panel.proxy.index(r, col).data(Qt.ItemDataRole.ToolTipRole)
        assert f"threshold {fp.threshold:.3f}, site profile clinic v1" in tip and f"own score {r0.score:.3f}" in tip
        assert e.abnormality == pytest.approx(abnormality(e.findings)[0])
        changed += abs(e.abnormality - raw[e.path].abnormality) > 1e-3
    assert changed
    shown = [float(panel.proxy.index(r, COL_ABNORMAL).data()) for r in range(len(rows))]
    assert shown == sorted(shown, reverse=True)  # the order follows the recalibrated scores
    assert all(e.computed == () for e in rows)  # from the store: nothing was computed again

    # fitted to other weights: not applied, the dock says why, the model's own scores again
    win.site_calibration.set_profile(_profile({"name": nih.name, "version": nih.version, "sha256": "0" * 64}))
    qtbot.waitUntil(lambda: "not applied" in panel.site_label.text() and not panel.controller.running,
                    timeout=WAIT_MS)  # fmt: skip
    assert "the model was updated" in panel.site_label.text()
    assert all(e.site_profile is None and e.findings == raw[e.path].findings for e in panel.model.entries)
    assert panel.model.headerData(col, Qt.Orientation.Horizontal) == "Effusion"
    win.site_calibration.set_profile(None)
    qtbot.waitUntil(lambda: not panel.site_label.isVisible(), timeout=WAIT_MS)

    # the model manager's choices reach the worklist at once, no restart
    panel.select_row(2, open_it=False)
    selected = panel.current_entry().path
    win.analysis.set_enabled("tb-tiny", False)
    qtbot.waitUntil(lambda: ("tb-tiny", "Tuberculosis") not in panel.model.findings and not panel.controller.running,
                    timeout=WAIT_MS)  # fmt: skip
    assert all({f.model for f in e.findings} == {"nih-tiny"} for e in panel.model.entries)
    assert panel.model.rowCount() == 5 and panel.current_entry().path == selected
    win.analysis.set_enabled("tb-tiny", True)
    qtbot.waitUntil(lambda: ("tb-tiny", "Tuberculosis") in panel.model.findings and not panel.controller.running,
                    timeout=WAIT_MS)  # fmt: skip
    assert all({f.model for f in e.findings} == {"nih-tiny", "tb-tiny"} for e in panel.model.entries)


def _install_site_version(tiny_models: Path, user_models: Path) -> tuple[Path, Path]:
    """The original 'nih-tiny' and a site fine-tune of it installed the way cxr-train finetune --site --install does."""
    from cxr_viewer.core.models.bundle import load_bundle
    from trainer.site_finetune import install_site_version

    models = user_models.parent / "models"
    shutil.copytree(tiny_models / "nih", models / "nih")
    cand = build_classifier(user_models.parent / "cand", "nih-tiny-site", ("Atelectasis", "Cardiomegaly", "Effusion",
                                                                           "Nodule"), trained=True, seed=7)  # fmt: skip
    report = {"gates": {"golden": {"passed": True}, "original_split": {"passed": True},
                        "site_improvement": {"passed": True}}, "site_test": {"n_images": 30}}  # fmt: skip
    dest = install_site_version(cand, load_bundle(models / "nih", device="cpu"), report, user_models)
    return models, dest


def test_model_manager_enables_a_site_version_and_rolls_back(qtbot, make_window, tiny_models, nih_png,  # noqa: F811
                                                             tmp_path: Path, settings_path: Path) -> None:  # fmt: skip
    from cxr_viewer.core.paths import user_models_dir

    models, installed = _install_site_version(tiny_models, user_models_dir())
    win = _open(qtbot, make_window, models, nih_png)
    assert {m["name"] for m in win.analysis.state.models} == {"nih-tiny"}  # installed switched off
    nih = next(m for m in win.analysis.state.models if m["name"] == "nih-tiny")
    win.site_calibration.set_profile(_profile(nih))  # fitted to the original
    qtbot.waitUntil(lambda: win.analysis.state.site_profile is not None, timeout=WAIT_MS)
    films = tmp_path / "studies"
    films.mkdir()
    for i in range(2):
        _film(films / f"film_{i}.png", seed=i)
    panel = win.worklist_panel
    panel.open_folder(films)
    qtbot.waitUntil(lambda: panel.model.rowCount() >= 2 and not panel.controller.running, timeout=WAIT_MS)
    assert {m for m, _lab in panel.model.findings} == {"nih-tiny"}
    dlg = win.show_models()
    qtbot.waitExposed(dlg)
    names = dlg.names()
    assert set(names) == {"nih-tiny", "nih-tiny-site"}
    site_row = names.index("nih-tiny-site")
    item = dlg.list.item(site_row)
    assert item.checkState() == Qt.CheckState.Unchecked and "site version of nih-tiny" in item.text()
    dlg.list.setCurrentRow(site_row)
    assert "Site version" in dlg.card.toPlainText() and "site_improvement" in dlg.card.toPlainText()
    assert dlg.version_button.isVisible() and dlg.version_button.text().startswith("Use this site version")
    dlg.version_button.click()
    assert win.wait_idle(WAIT_MS / 1000)
    qtbot.waitUntil(lambda: {m["name"] for m in win.analysis.state.models} == {"nih-tiny-site"}, timeout=WAIT_MS)
    assert (models / "nih" / "manifest.json").is_file() and installed.is_dir()  # both kept
    states = {dlg.list.item(i).data(Qt.ItemDataRole.UserRole + 1): dlg.list.item(i).checkState()
              for i in range(dlg.list.count())}  # fmt: skip
    assert states == {"nih-tiny": Qt.CheckState.Unchecked, "nih-tiny-site": Qt.CheckState.Checked}
    assert "kept for rollback" in dlg.message.text() or "stays installed" in dlg.message.text()
    # the worklist follows at once: the site version's results, the original's gone
    qtbot.waitUntil(lambda: {m for m, _lab in panel.model.findings} == {"nih-tiny-site"}
                    and not panel.controller.running, timeout=WAIT_MS)  # fmt: skip
    assert all({f.model for f in e.findings} == {"nih-tiny-site"} for e in panel.model.entries)
    assert "not applied" in panel.site_label.text()
    # the profile fitted to the original is not applied, and the viewer offers to recalibrate for this version
    hook = win.site_calibration
    qtbot.waitUntil(lambda: hook.banner.isVisible() and hook.banner.recalibrate_button.isVisible(), timeout=WAIT_MS)
    assert win.analysis.state.site_profile is None
    text = hook.banner.label.text()
    assert "site version nih-tiny-site" in text and "Recalibrate" in text
    assert hook.status_label.text() == "Site profile clinic v1: NOT APPLIED"
    hook.banner.recalibrate_button.click()
    wizard = hook.dialog
    assert wizard is not None and wizard.isVisible()
    assert wizard.manifests[wizard.model_box.currentData()].name == "nih-tiny-site"
    wizard.close()

    # the choice persists: a new window uses the site version
    win.close()
    win2 = _open(qtbot, make_window, models, nih_png)
    assert {m["name"] for m in win2.analysis.state.models} == {"nih-tiny-site"}
    dlg2 = win2.show_models()
    dlg2.list.setCurrentRow(dlg2.names().index("nih-tiny"))
    assert dlg2.version_button.isVisible() and dlg2.version_button.text().startswith("Roll back to this version")
    dlg2.version_button.click()
    assert win2.wait_idle(WAIT_MS / 1000)
    qtbot.waitUntil(lambda: {m["name"] for m in win2.analysis.state.models} == {"nih-tiny"}, timeout=WAIT_MS)
    assert installed.is_dir()  # rolled back, the site version still installed
