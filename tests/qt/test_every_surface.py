"""One judged result per film, on every surface.

Twelve real films committed with the project (3 DICOM, 4 PNG, 5 JPEG: adults, a child, a
film whose grey scale looks inverted, a low-resolution one) are read with the shipped
bundles (ONNX Runtime on the CPU) while a site profile is active (Effusion recalibrated)
and the reader has set one threshold of their own (Infiltration), both through the core
``Workspace`` of a real window. Each surface then takes its own path to the result, as a
reader would, and every finding's state and score is read back from what it shows or writes:

* the findings panel of the real window (each film opened from the worklist's store),
* the worklist's table model (the dock of the same window) and the CSV ``cxr-viewer worklist`` writes,
* current | prior (each film opened as the prior of the next: the prior is judged as the current film),
* the PDF the Export menu writes for each film (pdftotext), and its SR for each DICOM film (highdicom),
* the SR the worklist's Send Results stores in a real Orthanc (fetched back over its REST API),
* ``cxr-viewer analyze`` JSON, its PDF (pdftotext) and its SR (highdicom, read back),
* the SR that ``cxr-viewer pacs send-results`` stores in a real Orthanc (fetched back over its REST API).

All must agree, for every finding of every film, in every state the films produce
(POSITIVE, negative, not validated, above · not validated, outside population).
"""

from __future__ import annotations

import csv
import json
import shutil
import urllib.request
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from cxr_viewer.core.export.dicom_results import finding_concept
from cxr_viewer.core.judging import STATE_BADGE, STATE_TEXT, FindingState, display_name
from tests.orthanc import orthanc  # noqa: F401  (fixture)
from tests.record_readers import pdf_rows, pdf_text, sr_findings

FILMS = (  # committed real films: resources/samples and tests/data (see their READMEs for sources and licences)
    "resources/samples/siim_cr_chest.dcm",
    "tests/data/dicom/pydicom-data_RG1_UNCR.dcm",
    "tests/data/dicom/torchxrayvision_Fake_MONOCHROME1_from_siim.dcm",  # looks inverted: outside population
    "resources/samples/nih_chest.png",
    "tests/data/nih14/originals/00000075_000.png",
    "tests/data/tbx11k_sample/images/h0001.png",
    "tests/data/shenzhen_sample/images/CHNCXR_0001_0.png",
    "tests/data/nih14/images/00000011_007.jpg",
    "tests/data/nih14/images/00004001_000.jpg",
    "tests/data/covid_ieee8023/images/19abe1f3.jpg",
    "tests/data/tbx11k/images/tb0005.jpg",
    "tests/data/pneumonia_kermany/images/NORMAL/IM-0115-0001.jpeg",
)
MODEL = "chest-resnet18"
SITE_LABEL = "Effusion"  # recalibrated by the site profile
USER_LABEL, USER_THRESHOLD = "Infiltration", 0.20  # the reader's own threshold, well below the model's (0.303 in 0.3.0)
WAIT_MS = 600_000  # a busy 2-core machine
STATE_OF_TEXT = {text: state for state, text in STATE_TEXT.items()}
STATE_OF_BADGE = {badge: state for state, badge in STATE_BADGE.items()}
STATE_OF_CODE = {"STATE_" + state.value.upper(): state for state in FindingState}

Verdicts = dict[tuple[str, str], tuple[FindingState, float]]  # (model, label) -> (state, score)


def _films(folder: Path, root: Path) -> list[Path]:
    folder.mkdir()
    out = []
    for rel in FILMS:
        dst = folder / Path(rel).name
        shutil.copyfile(root / rel, dst)
        out.append(dst)
    return out


def _agree(surface: str, film: str, got: Verdicts, truth: Verdicts, *, places: float) -> None:
    """``got`` names every finding of ``truth`` with its state and its score (to the surface's printed precision)."""
    assert set(got) == set(truth), f"{surface}, {film}: findings {sorted(set(got) ^ set(truth))} differ"
    for key, (state, score) in truth.items():
        assert got[key][0] is state, f"{surface}, {film}, {key[1]}: {got[key][0].value} but the panel says {state.value}"
        assert got[key][1] == pytest.approx(score, abs=places), f"{surface}, {film}, {key[1]}: score {got[key][1]} vs {score}"


def _by_name(labels: list[str], named: dict[str, tuple], name_of) -> dict[str, tuple]:  # noqa: ANN001
    return {lab: named[name_of(lab)] for lab in labels if name_of(lab) in named}


def _pdf_verdicts(path: Path, labels: list[str]) -> Verdicts:
    rows = _by_name(labels, pdf_rows(pdf_text(path)), display_name)
    return {(MODEL, lab): (STATE_OF_TEXT[state], score) for lab, (state, score, _thr) in rows.items()}


PRESENCE = {FindingState.POSITIVE: "Present", FindingState.NEGATIVE: "Absent"}  # any other state: Indeterminate


def _sr_verdicts(path: Path, labels: list[str]) -> Verdicts:
    rows = _by_name(labels, sr_findings(path), lambda lab: finding_concept(lab).meaning)
    out = {}
    for lab, (code, score, presence) in rows.items():
        state = STATE_OF_CODE[code]
        assert presence == PRESENCE.get(state, "Indeterminate"), f"{path.name}, {lab}: {state.value} coded {presence}"
        out[(MODEL, lab)] = (state, score)
    return out


def _judged(panel, film: Path) -> Verdicts:  # noqa: ANN001
    """The worklist entry of ``film`` as judged now (state and score of each finding)."""
    entry = next(panel.model.entry_at(r) for r in range(panel.model.rowCount())
                 if panel.model.entry_at(r).path.name == film.name)
    return {(j.model, j.label): (j.state, j.score) for j in entry.judged.findings}


def _stored_srs(server) -> list[str]:  # noqa: ANN001
    """Orthanc's ids of every SR instance it stores."""
    return list(server.post("/tools/find", {"Level": "Instance", "Query": {"Modality": "SR"}}))


def _orthanc_file(server, instance: str, out: Path) -> Path:  # noqa: ANN001
    with urllib.request.urlopen(f"{server.url}/instances/{instance}/file", timeout=30) as r:
        out.write_bytes(r.read())
    return out


@pytest.mark.timeout(1800)
def test_every_surface_shows_the_one_judged_result(qtbot, make_window, repo_root: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, orthanc) -> None:  # noqa: F811
    from cxr_viewer.core.models.bundle import read_manifest
    from cxr_viewer.core.site.profile import load_profile
    from cxr_viewer.headless import analyze_main
    from cxr_viewer.netcli import pacs_main, worklist_main
    from cxr_viewer.qt.worklist import FIXED, SORT_ROLE
    from tests.core.test_worklist import _site_profile

    films = _films(tmp_path / "films", repo_root)
    models = repo_root / "resources" / "models"
    manifest = read_manifest(models / MODEL)
    sha = manifest.ref.sha256
    labels = list(manifest.labels)
    profile = _site_profile(manifest.ref, SITE_LABEL, tmp_path / "profiles")
    cli_judging = ["--models", str(models), "--no-default-models", "--site-profile", str(profile.path),
                   "--threshold", f"{MODEL}:{USER_LABEL}={USER_THRESHOLD}"]

    # one window: the site profile and the reader's threshold set once, on its workspace
    win = make_window(models_dir=models)
    ws = win.workspace
    ws.set_site_profile(load_profile(profile.path))
    ws.set_threshold(MODEL, sha, USER_LABEL, USER_THRESHOLD)

    # the worklist dock scores the folder (the model service's store keeps each film's one analysis)
    panel = win.worklist_panel
    panel.open_folder(tmp_path / "films")
    qtbot.waitUntil(lambda: panel.model.rowCount() == len(films) and not panel.controller.running, timeout=WAIT_MS)
    table = panel.model
    worklist: dict[str, Verdicts] = {}
    for r in range(table.rowCount()):
        entry = table.entry_at(r)
        assert entry.ok, entry.error
        row: Verdicts = {}
        for c in range(len(FIXED), table.columnCount()):
            key = table.findings[c - len(FIXED)]
            tip = table.data(table.index(r, c), Qt.ItemDataRole.ToolTipRole)
            score = table.data(table.index(r, c), SORT_ROLE)
            row[key] = (STATE_OF_TEXT[tip.rsplit(": ", 1)[1]], float(score))
            brush = table.data(table.index(r, c), Qt.ItemDataRole.ForegroundRole)  # red exactly when POSITIVE
            assert (brush is not None and brush.color().name() == "#ff6b6b") == (row[key][0] is FindingState.POSITIVE)
        worklist[entry.path.name] = row

    # the findings panel, film by film (each opened from the store), each with the film before it as its prior
    panel_truth: dict[str, Verdicts] = {}
    prior_seen: dict[str, Verdicts] = {}
    menu_sr: dict[str, Path] = {}
    compare = win.reading.compare
    (tmp_path / "menu").mkdir()
    for i, film in enumerate(films):
        win.open_file(film)
        qtbot.waitUntil(lambda f=film: win.session.record is not None and win.session.record.source == f
                        and win.analysis.state.status == "done", timeout=WAIT_MS)
        shown: Verdicts = {}
        for model, label, score, threshold, text in win.findings_panel.rows():
            shown[(model, label)] = (STATE_OF_BADGE[text], score)
            assert threshold == pytest.approx(win.analysis.state.judged.get(label, model).threshold)
        panel_truth[film.name] = shown
        prior = films[i - 1]
        assert compare.open(prior)
        qtbot.waitUntil(lambda: compare.prior_result is not None and bool(compare.deltas), timeout=WAIT_MS)
        prior_seen[prior.name] = {(f.model, f.label): (f.state, compare.deltas[(f.model, f.label)].prior)
                                  for f in compare.prior_findings}
        # the Export menu's report of what the window shows (with the prior beside it), and its DICOM results
        assert win.export_actions.export_report(tmp_path / "menu" / f"{film.stem}.pdf")
        assert win.wait_idle(WAIT_MS / 1000)
        if film.suffix == ".dcm":
            assert win.export_actions.export_dicom(tmp_path / "menu" / film.stem)
            assert win.wait_idle(WAIT_MS / 1000)
            menu_sr[film.name] = next(p for p in win.export_actions.last_files if p.name.startswith("SR_"))

    # the judging this test set up reached the films: the site profile's finding and the reader's threshold
    sources = {j.threshold_source for j in win.analysis.state.judged.findings}
    assert {"site_profile", "user", "model"} <= sources
    states = {s for verdicts in panel_truth.values() for s, _score in verdicts.values()}
    assert {FindingState.POSITIVE, FindingState.NEGATIVE, FindingState.NOT_VALIDATED,
            FindingState.ABOVE_NOT_VALIDATED, FindingState.OUTSIDE_POPULATION} <= states

    for film in films:
        truth = panel_truth[film.name]
        _agree("worklist row", film.name, worklist[film.name], truth, places=1e-6)
        assert panel_truth[film.name] == _judged(win.worklist_panel, film)  # the row is the stored result, judged
        _agree("current | prior", film.name, prior_seen[film.name], truth, places=1e-6)
        _agree("Export menu PDF", film.name, _pdf_verdicts(tmp_path / "menu" / f"{film.stem}.pdf", labels), truth,
               places=5.1e-4)
        if film.name in menu_sr:
            _agree("Export menu SR", film.name, _sr_verdicts(menu_sr[film.name], labels), truth, places=1e-6)

    # the worklist's Send Results: what the PACS stores for each DICOM study, as its row shows it
    settings = panel.controller.settings
    for key, value in (("pacs/remote_host", "127.0.0.1"), ("pacs/remote_port", orthanc.dicom_port),
                       ("pacs/remote_ae", "ORTHANC")):
        settings.setValue(key, value)
    for film in films:
        if film.suffix != ".dcm":
            continue
        before = set(_stored_srs(orthanc))
        entry = next(panel.model.entry_at(r) for r in range(panel.model.rowCount())
                     if panel.model.entry_at(r).path.name == film.name)
        with qtbot.waitSignal(panel.controller.message, timeout=WAIT_MS,
                              check_params_cb=lambda text: "stored on the PACS" in text):
            panel.controller.send_results(entry)
        (new,) = set(_stored_srs(orthanc)) - before
        sr = _orthanc_file(orthanc, new, tmp_path / f"worklist_sent_{film.stem}.dcm")
        _agree("worklist send, SR in the PACS", film.name, _sr_verdicts(sr, labels), panel_truth[film.name],
               places=1e-6)

    # the reader resets their threshold on the workspace: the panel and every listed row follow, nothing is scored
    flipped = [f for f in films if panel_truth[f.name][(MODEL, USER_LABEL)][0] is FindingState.POSITIVE
               and panel_truth[f.name][(MODEL, USER_LABEL)][1] < manifest.thresholds[USER_LABEL]["value"]]
    assert flipped, "the reader's threshold changed no verdict: choose another"
    ws.set_threshold(MODEL, sha, USER_LABEL, None)
    qtbot.waitUntil(lambda: not panel.controller.running and all(
        _judged(panel, f)[(MODEL, USER_LABEL)][0] is FindingState.NEGATIVE for f in flipped), timeout=WAIT_MS)
    assert win.analysis.state.judged.get(USER_LABEL, MODEL).threshold_source == "model"
    ws.set_threshold(MODEL, sha, USER_LABEL, USER_THRESHOLD)
    qtbot.waitUntil(lambda: not panel.controller.running and all(
        _judged(panel, f) == panel_truth[f.name] for f in films), timeout=WAIT_MS)

    # the worklist's CSV, from the command line (the same store, the same judging)
    assert worklist_main([str(tmp_path / "films"), "--csv", str(tmp_path / "worklist.csv"), *cli_judging]) == 0
    with (tmp_path / "worklist.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(films)
    for row in rows:
        name = Path(row["file"]).name
        got = {}
        for lab in labels:
            score = next(k for k in row if k == lab or (k.startswith(f"{lab} (") and not k.endswith(" state")))
            state = next(k for k in row if k == f"{lab} state" or (k.startswith(f"{lab} (") and k.endswith(" state")))
            got[(MODEL, lab)] = (STATE_OF_TEXT[row[state]], float(row[score]))
        _agree("worklist CSV", name, got, panel_truth[name], places=5.1e-5)

    # analyze: JSON, its PDF and (for DICOM) its SR
    out = tmp_path / "analyze"
    rc = analyze_main([*map(str, films), "--json", str(out / "a.json"), "--pdf-out", str(out / "pdf"),
                       "--dicom-out", str(out / "dicom"), *cli_judging])
    assert rc == 2  # DICOM results are written for DICOM films only; each PNG/JPEG says so
    objs = json.loads((out / "a.json").read_text())
    assert len(objs) == len(films)
    for obj in objs:
        name = Path(obj["file"]).name
        assert obj["status"] == "ok"
        assert isinstance(obj["dicom"], list) == name.endswith(".dcm"), obj["dicom"]
        truth = panel_truth[name]
        got = {(f["model"], f["label"]): (FindingState(f["state"]), f["score"]) for f in obj["findings"]}
        _agree("analyze JSON", name, got, truth, places=1e-6)
        for f in obj["findings"]:
            expected = {SITE_LABEL: "site_profile", USER_LABEL: "user"}.get(f["label"], "model")
            assert f["threshold_source"] == expected, (name, f["label"])
        _agree("analyze PDF", name, _pdf_verdicts(Path(obj["report_pdf"]), labels), truth, places=5.1e-4)
        if name.endswith(".dcm"):
            sr = next(Path(p) for p in obj["dicom"] if Path(p).name.startswith("SR_"))
            _agree("analyze SR", name, _sr_verdicts(sr, labels), truth, places=1e-6)

    # pacs send-results: what a real Orthanc stores, fetched back
    dicoms = [f for f in films if f.suffix == ".dcm"]
    kept = tmp_path / "sent"
    rc = pacs_main(["send-results", "--host", "127.0.0.1", "--port", str(orthanc.dicom_port), "--out", str(kept),
                    *map(str, dicoms), *cli_judging])
    assert rc == 0
    stored = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]: i for i in _stored_srs(orthanc)}
    import pydicom

    for i, film in enumerate(dicoms, start=1):  # send-results keeps the i-th file's objects in NNN/
        local = next((kept / f"{i:03d}").glob("SR_*.dcm"))
        uid = str(pydicom.dcmread(local, stop_before_pixels=True).SOPInstanceUID)
        assert uid in stored, f"{film.name}: its SR is not in the PACS"
        sr = _orthanc_file(orthanc, stored[uid], tmp_path / f"orthanc_{film.stem}.dcm")
        _agree("SR in the PACS", film.name, _sr_verdicts(sr, labels), panel_truth[film.name], places=1e-6)
