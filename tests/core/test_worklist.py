"""The triage worklist on real files with tiny real models: store reuse, per-model recomputation, CSV."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_viewer.cli import main as cli_main
from cxr_viewer.core.inference.engine import InferenceEngine
from cxr_viewer.core.models.testing import make_untrained_bundle
from cxr_viewer.core.worklist import ResultStore, Worklist, abnormality

SAMPLES = Path(__file__).resolve().parents[2] / "resources" / "samples"


def _png(path: Path, seed: int, size: int = 96) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = 0.5 + 0.3 * np.sin(x / (3 + seed)) * np.cos(y / (4 + seed)) + 0.1 * rng.standard_normal((size, size))
    Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), mode="L").save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "studies"
    d.mkdir()
    for i in range(4):
        _png(d / f"film_{i}.png", seed=i)
    shutil.copy(SAMPLES / "siim_cr_chest.dcm", d / "siim.dcm")
    (d / "notes.txt").write_text("not an image")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return d


def _models(root: Path, tb_seed: int = 2) -> Path:
    make_untrained_bundle(root / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64),
                          backbone="resnet10t", seed=1)
    make_untrained_bundle(root / "tb", name="tb", labels=["Tuberculosis"], size=(64, 64), task="binary",
                          backbone="resnet10t", seed=tb_seed)
    return root


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return _models(tmp_path / "models")


class Counter:
    """Counts real engine.analyze calls (and which models each asked for)."""

    def __init__(self, engine: InferenceEngine) -> None:
        self.calls: list[list[str] | None] = []
        real = engine.analyze

        def analyze(record, *, cancel=None, models=None):
            self.calls.append(None if models is None else list(models))
            return real(record, cancel=cancel, models=models)

        engine.analyze = analyze  # type: ignore[method-assign]


def test_second_open_recomputes_nothing_and_loads_no_model(folder: Path, models: Path, tmp_path: Path) -> None:
    db = tmp_path / "wl.sqlite"
    wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
    counter = Counter(wl.engine())
    first = wl.open_folder(folder)
    ok = [e for e in first if e.ok]
    assert len(ok) == 5 and len(counter.calls) == 5  # 4 PNG + 1 DICOM, one engine call each
    assert [e.path.name for e in first if not e.ok] == ["broken.png"]  # listed with its reason, last
    assert "notes.txt" not in {e.path.name for e in first}
    assert all({f.model for f in e.findings} == {"nih", "tb"} for e in ok)
    scores = [e.abnormality for e in ok]
    assert scores == sorted(scores, reverse=True)  # highest abnormality first
    assert first[-1].abnormality is None

    # a new store object and a new worklist (as after a restart): nothing runs, no engine is even built
    wl2 = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
    second = wl2.open_folder(folder)
    assert wl2._engine is None
    assert all(e.computed == () for e in second)
    assert [(e.path, e.abnormality) for e in second] == [(e.path, e.abnormality) for e in first]
    assert [f.score for e in second for f in e.findings] == pytest.approx([f.score for e in first for f in e.findings])

    # same pixels under a new name, or a touched file: read again, but no model runs
    shutil.copy(folder / "film_0.png", folder / "film_0_copy.png")
    os.utime(folder / "film_1.png", ns=(1, 1))
    wl3 = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
    third = wl3.open_folder(folder)
    assert wl3._engine is None and len([e for e in third if e.ok]) == 6


def test_changed_model_recomputes_only_its_findings(folder: Path, models: Path, tmp_path: Path) -> None:
    db = tmp_path / "wl.sqlite"
    wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
    before = {e.path: e for e in wl.open_folder(folder) if e.ok}
    shutil.rmtree(models / "tb")
    make_untrained_bundle(models / "tb", name="tb", labels=["Tuberculosis"], size=(64, 64), task="binary",
                          backbone="resnet10t", seed=7)  # new weights -> new sha256
    wl2 = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
    counter = Counter(wl2.engine())
    after = {e.path: e for e in wl2.open_folder(folder) if e.ok}
    assert counter.calls == [["tb"]] * 5  # only the changed model ran, once per image
    for path, e in after.items():
        nih = lambda entry: [(f.label, round(f.score, 6)) for f in entry.findings if f.model == "nih"]  # noqa: E731
        assert nih(e) == nih(before[path])
        assert e.computed == ("tb",)
    changed = [abs(after[p].findings[-1].score - before[p].findings[-1].score) for p in after]
    assert max(changed) > 1e-4  # the new tb weights really scored again


def test_abnormal_finding_is_the_score_when_a_model_has_one(folder: Path, tmp_path: Path) -> None:
    root = tmp_path / "m"
    make_untrained_bundle(root / "abn", name="abn", labels=["Abnormal", "Effusion"], size=(64, 64),
                          backbone="resnet10t", seed=3)
    wl = Worklist(ResultStore(tmp_path / "db.sqlite"), model_dirs=[root], device="cpu", backend="torch")
    assert wl.basis == "Abnormal"
    entries = [e for e in wl.open_folder(folder) if e.ok]
    for e in entries:
        assert e.abnormality == pytest.approx(next(f.score for f in e.findings if f.label == "Abnormal"))
    assert [e.abnormality for e in entries] == sorted((e.abnormality for e in entries), reverse=True)
    assert abnormality([])[0] is None


def test_mark_read_persists(folder: Path, models: Path, tmp_path: Path) -> None:
    db = tmp_path / "wl.sqlite"
    wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
    top = wl.open_folder(folder)[0]
    assert not top.read and wl.mark_read(top).read
    again = Worklist(ResultStore(db), model_dirs=[models]).open_folder(folder)
    assert [e.read for e in again if e.path == top.path] == [True]


def test_worklist_cli_writes_sorted_csv(folder: Path, models: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "wl.csv"
    args = ["worklist", str(folder), "--csv", str(out), "--models", str(models), "--no-default-models",
            "--db", str(tmp_path / "db.sqlite"), "--device", "cpu"]
    assert cli_main(args) == 2  # broken.png is listed as unreadable
    assert "5 analysed now" in capsys.readouterr().err
    rows = list(csv.reader(out.open()))
    header = rows[0]
    assert header[:7] == ["file", "patient", "study date", "modality/view", "QC", "abnormality (max finding score)",
                          "read"]
    assert header[7:] == ["Effusion", "Nodule", "Tuberculosis", "Effusion state", "Nodule state", "Tuberculosis state"]
    body = rows[1:]
    assert len(body) == 6
    scores = [float(r[5]) for r in body if r[5]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    for r in body[:5]:  # abnormality = the highest finding score of the row
        assert float(r[5]) == pytest.approx(max(float(x) for x in r[7:10]), abs=1e-4)
        # each finding's judged state (the QC flags of these synthetic films put some outside the population)
        from cxr_viewer.core.judging import STATE_TEXT

        assert all(state in STATE_TEXT.values() for state in r[10:13])
    dicom_row = next(r for r in body if r[0].endswith("siim.dcm"))
    assert dicom_row[3] == "CR PA" or dicom_row[3].startswith("CR")
    assert body[-1][0].endswith("broken.png") and body[-1][4].startswith("error:")

    assert cli_main([*args, "--hide-patient"]) == 2
    assert "0 analysed now, 5 from the store" in capsys.readouterr().err
    hidden = list(csv.reader(out.open()))
    assert "patient" not in hidden[0] and len(hidden[0]) == len(header) - 1


def test_worklist_cli_refuses_a_missing_folder(tmp_path: Path, capsys) -> None:
    assert cli_main(["worklist", str(tmp_path / "nope"), "--csv", str(tmp_path / "x.csv")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_result_objects_beside_the_films_are_left_out(folder: Path, models: Path, tmp_path: Path) -> None:
    from cxr_viewer.core.export.dicom_results import write_results
    from cxr_viewer.core.io import read_image

    engine = InferenceEngine.from_dirs([models], device="cpu", backend="torch")
    record = read_image(folder / "siim.dcm")
    written = write_results(record, engine.analyze(record), folder / "results")
    assert len(written) >= 3  # SR, SC, PDF
    wl = Worklist(ResultStore(tmp_path / "db.sqlite"), engine=engine)
    names = {e.path.name for e in wl.open_folder(folder)}
    assert names == {"film_0.png", "film_1.png", "film_2.png", "film_3.png", "siim.dcm", "broken.png"}


def _site_profile(model, label: str, folder: Path, sha: str | None = None):
    """A real profile of ``label``: Platt and a target-sensitivity threshold fitted to an overconfident model's
    scores (they move up by about 0.1 near 0.5), bound to ``model``'s weights (or to ``sha``)."""
    from cxr_viewer.core.site.fit import fit_site_finding
    from cxr_viewer.core.site.profile import SiteProfile, save_profile

    rng = np.random.default_rng(3)
    z = rng.normal(0, 1.3, 400)
    y = (rng.random(400) < 1 / (1 + np.exp(-z))).astype(float)
    fp, _ = fit_site_finding(label, y, 1 / (1 + np.exp(-(3 * z - 1))), np.arange(400), current_threshold=0.5,
                             target="sensitivity:0.9", method="platt", n_boot=20)  # fmt: skip
    ident = {"name": model.name, "version": model.version, "sha256": sha or model.sha256}
    return save_profile(SiteProfile("clinic", ident, {label: fp}, note="test site"), folder)


def test_site_profile_recalibrates_the_worklist_and_its_order(folder: Path, models: Path, tmp_path: Path) -> None:
    db = tmp_path / "wl.sqlite"
    raw = {e.path: e for e in Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
           .open_folder(folder) if e.ok}  # fmt: skip
    nih = next(k for k in Worklist(ResultStore(db), model_dirs=[models]).models if k.name == "nih")
    profile = _site_profile(nih, "Effusion", tmp_path / "profiles")
    fp = profile.findings["Effusion"]
    wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch", site_profile=profile)
    assert wl.site_status() == ("", False)
    entries = wl.open_folder(folder)
    assert wl._engine is None and all(e.computed == () for e in entries)  # the store's raw scores, no model run
    ok = [e for e in entries if e.ok]
    changed = 0
    for e in ok:
        assert e.site_profile["id"] == "clinic v1"
        before = {(f.model, f.label): f for f in raw[e.path].findings}
        for f in e.findings:
            r = before[(f.model, f.label)]
            if (f.model, f.label) == ("nih", "Effusion"):  # the same rule as analyze and the viewer
                assert f.score == pytest.approx(float(fp.calibration(np.array([r.score]))[0]))
                assert f.raw_score == pytest.approx(r.score) and f.threshold == pytest.approx(fp.threshold)
                assert f.threshold_method == "site profile clinic v1: target sensitivity 0.9"
            else:
                assert (f.score, f.threshold, f.raw_score) == (r.score, r.threshold, None)
        assert e.abnormality == pytest.approx(abnormality(e.findings)[0])
        changed += abs(e.abnormality - raw[e.path].abnormality) > 1e-3
    assert changed  # the abnormality and the order follow the recalibrated score
    assert [e.abnormality for e in ok] == sorted((e.abnormality for e in ok), reverse=True)

    # a profile fitted to other weights, or to a model not enabled: not applied, and why
    wl.site_profile = _site_profile(nih, "Effusion", tmp_path / "profiles", sha="0" * 64)
    message, stale = wl.site_status()
    assert stale and "the model was updated" in message
    assert all(e.site_profile is None and all(f.raw_score is None for f in e.findings) for e in wl.open_folder(folder))
    wl.site_profile = profile
    assert wl.set_models(disabled=["nih"], enabled=[]) and not wl.set_models(disabled=["nih"], enabled=[])
    message, stale = wl.site_status()
    assert not stale and "not installed or not enabled" in message
    assert {f.model for e in wl.open_folder(folder) if e.ok for f in e.findings} == {"tb"}


def test_worklist_cli_applies_a_site_profile(folder: Path, models: Path, tmp_path: Path, capsys) -> None:
    nih = next(k for k in Worklist(ResultStore(tmp_path / "x.sqlite"), model_dirs=[models]).models if k.name == "nih")
    profile = _site_profile(nih, "Effusion", tmp_path / "profiles")
    out = tmp_path / "wl.csv"
    args = ["worklist", str(folder), "--csv", str(out), "--models", str(models), "--no-default-models",
            "--db", str(tmp_path / "db.sqlite"), "--device", "cpu", "--backend", "torch"]
    assert cli_main(args) == 2  # broken.png
    raw = {r[0]: r for r in list(csv.reader(out.open()))[1:]}
    capsys.readouterr()
    assert cli_main([*args, "--site-profile", str(profile.path)]) == 2
    assert "site profile clinic v1 applied" in capsys.readouterr().err
    rows = list(csv.reader(out.open()))
    header, body = rows[0], rows[1:]
    assert header[5] == "abnormality (max finding score; site profile clinic v1)"
    assert header[7:10] == ["Effusion (site profile clinic v1)", "Nodule", "Tuberculosis"]
    assert header[10:] == ["Effusion state", "Nodule state", "Tuberculosis state"]
    fp = profile.findings["Effusion"]
    for r in body[:5]:
        want = float(fp.calibration(np.array([float(raw[r[0]][7])]))[0])
        assert float(r[7]) == pytest.approx(want, abs=1e-4) and r[8:10] == raw[r[0]][8:10] and r[11:] == raw[r[0]][11:]
        assert float(r[5]) == pytest.approx(max(float(x) for x in r[7:10]), abs=1e-4)
    scores = [float(r[5]) for r in body if r[5]]
    assert scores == sorted(scores, reverse=True)
    # refused, like analyze: the model was updated since the profile was fitted
    stale = _site_profile(nih, "Effusion", tmp_path / "profiles", sha="0" * 64)
    assert cli_main([*args, "--site-profile", str(stale.path)]) == 2
    assert "the model was updated" in capsys.readouterr().err


def test_the_store_keeps_each_findings_population_verdict(tmp_path: Path) -> None:
    """A stored finding comes back "outside population" as it was scored, so the viewer (which opens a listed
    study from the store) and the worklist row give the state a fresh analysis gives."""
    from cxr_viewer.core.inference.results import Finding, FindingState

    store = ResultStore(tmp_path / "wl.sqlite")
    out = Finding("Effusion", 0.9, 0.5, "nih", "1", "fixed", True, validated=True,
                  outside="outside the model's population: patient age 4 years, trained on 18-90 years")
    inside = Finding("Nodule", 0.9, 0.5, "nih", "1", "fixed", True, validated=True)
    store.put_findings("k", {"name": "nih", "version": "1", "sha256": "s"}, [out, inside])
    store.close()
    back = {f.label: f for f in ResultStore(tmp_path / "wl.sqlite").findings("k", ["s"])["s"]}
    assert back["Effusion"].outside == out.outside and back["Effusion"].state is FindingState.OUTSIDE_POPULATION
    assert back["Nodule"].outside == "" and back["Nodule"].state is FindingState.POSITIVE


def test_intake_lists_a_folder_entry_by_entry_and_stops_when_cancelled(folder: Path, tmp_path: Path) -> None:
    """The worklist dock's work without Qt: what it yields, in order; an unreadable file is an entry; Cancel stops it.

    No models: the order of what is yielded, not the scores, is what the dock relies on here.
    """
    from cxr_viewer.core.errors import AnalysisCancelledError
    from cxr_viewer.core.inference.results import CancelToken
    from cxr_viewer.core.worklist.intake import intake

    (tmp_path / "no_models").mkdir()
    wl = Worklist(ResultStore(tmp_path / "wl.sqlite"), model_dirs=[tmp_path / "no_models"], device="cpu", backend="torch")
    asked: list[str] = []
    events = list(intake(wl, folder, [], CancelToken(), reconfigure=lambda w: asked.append(w.basis)))
    assert asked == [wl.basis]  # reconfigured first, on the caller's thread
    kinds = [k for k, _ in events]
    assert kinds[:3] == ["site", "basis", "progress"] and events[0][1] == (None, "", False) and events[2][1] == (0, 6)
    entries = [v for k, v in events if k == "entry"]
    assert len(entries) == 6 and kinds[3:] == ["entry", "progress"] * 6  # each entry followed by its progress
    assert [v for k, v in events if k == "progress"][-1] == (6, 6)
    broken = [e for e in entries if not e.ok]
    assert [e.path.name for e in broken] == ["broken.png"] and broken[0].error  # listed with its reason

    token = CancelToken()
    run = intake(wl, folder, [], token)
    assert [next(run)[0] for _ in range(3)] == ["site", "basis", "progress"]
    token.cancel()  # Cancel pressed before the first film
    with pytest.raises(AnalysisCancelledError):
        next(run)
