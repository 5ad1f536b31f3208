"""Hostile stores and profiles on real files: the worklist store (a real SQLite file), site profiles,
corrections and every CSV the program writes. Each test rebuilds an attack and checks the class holds."""

from __future__ import annotations

import csv
import json
import math
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from cxr_viewer.core.csvio import FORMULA_STARTS, neutralise, restore
from cxr_viewer.core.models.testing import make_untrained_bundle
from cxr_viewer.core.models.calibration import Calibration
from cxr_viewer.core.worklist import ResultStore, Worklist
from cxr_viewer.core.worklist.store import SCHEMA_VERSION, StoreError

SAMPLES = Path(__file__).resolve().parents[2] / "resources" / "samples"
SHA = "ab" * 32


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from cxr_viewer.cli import main; sys.exit(main(sys.argv[1:]))",
                           *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_untrained_bundle(root / "nih", name="nih", labels=["Effusion", "Nodule"], size=(64, 64),
                          backbone="resnet10t", seed=1)
    return root


def _variant(src: Path, out: Path, **attrs: object) -> Path:
    ds = pydicom.dcmread(src)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(out)
    return out


# ------------------------------------------------------------------ 1. the store keyed on the analysis key
def test_same_pixels_other_header_never_inherit_findings_or_qc(tmp_path: Path, models: Path) -> None:
    d = tmp_path / "studies"
    d.mkdir()
    plain = d / "a_plain.dcm"
    shutil.copy(SAMPLES / "siim_cr_chest.dcm", plain)
    ds = pydicom.dcmread(plain)
    variants = {
        "b_window.dcm": {"WindowCenter": 100, "WindowWidth": 50},
        "c_modality.dcm": {"Modality": "CT"},
        "d_view.dcm": {"ViewPosition": "LL"},
        "e_age.dcm": {"PatientAge": "004Y"},
    }
    for name, attrs in variants.items():
        _variant(plain, d / name, **attrs)
    assert all(pydicom.dcmread(d / n).PixelData == ds.PixelData for n in variants)  # the same pixels

    def entries(db: Path, files: list[Path]) -> dict[str, tuple]:
        wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
        out = {}
        for f in files:
            e = wl.entry(f)
            out[f.name] = (tuple((x.label, round(x.score, 6)) for x in e.findings), tuple(q.code for q in e.qc))
        wl.store.close()
        return out

    files = sorted(d.iterdir())
    shared = entries(tmp_path / "shared.sqlite", files)
    for f in files:  # each file alone in a fresh store: what it shows must not depend on its neighbours
        alone = entries(tmp_path / f"alone_{f.stem}.sqlite", [f])
        assert shared[f.name] == alone[f.name], f.name
    assert "not_radiograph" in shared["c_modality.dcm"][1] and "not_radiograph" not in shared["a_plain.dcm"][1]
    assert "lateral_view" in shared["d_view.dcm"][1] and "paediatric" in shared["e_age.dcm"][1]
    assert shared["b_window.dcm"][0] != shared["a_plain.dcm"][0]  # another window: another model input


# ------------------------------------------------------------------ 8. the database is not trusted
def _v1_store(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                            content_hash TEXT, metadata TEXT NOT NULL DEFAULT '{}', error TEXT);
        CREATE TABLE images (content_hash TEXT PRIMARY KEY, qc TEXT NOT NULL DEFAULT '[]', read_at REAL);
        CREATE TABLE results (content_hash TEXT NOT NULL, model_sha256 TEXT NOT NULL, model_name TEXT NOT NULL,
                              model_version TEXT NOT NULL, findings TEXT NOT NULL, created REAL NOT NULL,
                              PRIMARY KEY (content_hash, model_sha256));
        INSERT INTO meta VALUES ('schema_version', '1');
        INSERT INTO images VALUES ('h1', '[]', 12.0);
        INSERT INTO results VALUES ('h1', 'aa', 'nih', '1', '[]', 0);
    """)
    db.commit()
    db.close()


def test_schema_is_checked_migrated_or_refused(tmp_path: Path) -> None:
    v1 = tmp_path / "v1.sqlite"
    _v1_store(v1)
    with ResultStore(v1) as store:
        assert store.count_results() == 0 and store.is_read("h1")  # old results dropped, read marks kept
    assert sqlite3.connect(v1).execute("SELECT value FROM meta").fetchone()[0] == str(SCHEMA_VERSION)

    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE files (x INTEGER)")  # another program's database
    db.commit()
    db.close()
    newer = tmp_path / "newer.sqlite"
    ResultStore(newer).close()
    db = sqlite3.connect(newer)
    db.execute("UPDATE meta SET value = '99'")
    db.commit()
    db.close()
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is no database " * 100)
    for bad, words in ((other, "another program"), (newer, "newer"), (garbage, "not a database")):
        with pytest.raises(StoreError, match=words):
            ResultStore(bad)
        folder = tmp_path / "empty"
        folder.mkdir(exist_ok=True)
        run = _cli("worklist", str(folder), "--csv", str(tmp_path / "o.csv"), "--db", str(bad), "--no-default-models")
        assert run.returncode == 2 and "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) == 1, run.stderr


def test_damaged_rows_are_recomputed_never_shown(tmp_path: Path, models: Path) -> None:
    d = tmp_path / "studies"
    d.mkdir()
    f = d / "film.dcm"
    shutil.copy(SAMPLES / "siim_cr_chest.dcm", f)
    db = tmp_path / "wl.sqlite"
    wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
    honest = wl.entry(f)
    wl.store.close()
    for tamper in ("UPDATE results SET findings = replace(findings, '\"score\": ', '\"score\": 1e999, \"x\": ')",
                   "UPDATE results SET findings = '[{not json'",
                   "UPDATE results SET findings = '[{\"label\": \"Effusion\", \"score\": 7, \"threshold\": 0.5, "
                   "\"model\": \"nih\"}]'",
                   "UPDATE analyses SET qc = '{\"deep\": ' || '[' || '1' || ']' || '}'",
                   "UPDATE files SET metadata = '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]'"):
        con = sqlite3.connect(db)
        con.execute(tamper)
        con.commit()
        con.close()
        wl = Worklist(ResultStore(db), model_dirs=[models], device="cpu", backend="torch")
        e = wl.entry(f)
        wl.store.close()
        assert e.ok and all(math.isfinite(x.score) and 0 <= x.score <= 1 for x in e.findings), tamper
        assert [(x.label, round(x.score, 6)) for x in e.findings] == [(x.label, round(x.score, 6)) for x in honest.findings]
        assert [q.code for q in e.qc] == [q.code for q in honest.qc]


# ------------------------------------------------------------------ 9. CSV formula injection
def test_every_formula_start_is_neutralised_and_numbers_are_not() -> None:
    for start in FORMULA_STARTS:
        cell = start + "HYPERLINK(\"http://x\",\"y\")"
        assert neutralise(cell) == "'" + cell and restore(neutralise(cell)) == cell
    assert neutralise("-0.25") == "-0.25" and neutralise(-0.25) == -0.25 and neutralise("+1e3") == "+1e3"
    assert neutralise("Doe^Jane") == "Doe^Jane"


def test_worklist_and_corrections_csv_carry_no_live_formula(tmp_path: Path, models: Path) -> None:
    d = tmp_path / "studies"
    d.mkdir()
    _variant(SAMPLES / "siim_cr_chest.dcm", d / "evil.dcm", PatientName='=HYPERLINK("http://evil","x")',
             PatientID="@SUM(1+1)")
    out = tmp_path / "wl.csv"
    run = _cli("worklist", str(d), "--csv", str(out), "--db", str(tmp_path / "db.sqlite"), "--no-default-models",
               "--models", str(models), "--backend", "torch")
    assert run.returncode == 0, run.stderr
    cells = [c for row in csv.reader(out.open()) for c in row]
    assert any("HYPERLINK" in c for c in cells)
    assert not [c for c in cells if c.startswith(FORMULA_STARTS)], cells

    from cxr_viewer.core.corrections import Correction, CorrectionStore

    store = CorrectionStore(tmp_path / "corr")
    store.add(Correction(str((d / "evil.dcm").resolve()), "+Effusion", 1.0, patient_id="=cmd|' /C calc'!A0"))
    manifest = tmp_path / "m.csv"
    store.export_manifest(manifest)
    cells = [c for row in csv.reader(manifest.open()) for c in row]
    assert "'=cmd|' /C calc'!A0" in cells and "'+Effusion" in cells
    assert not [c for c in cells if c.startswith(FORMULA_STARTS)]


# ------------------------------------------------------------------ 10. corrections export trusts nothing
def test_corrections_export_refuses_paths_outside_the_study_folders(tmp_path: Path) -> None:
    from cxr_viewer.core.corrections import Correction, CorrectionStore

    study = tmp_path / "study"
    study.mkdir()
    film = study / "film.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(film)
    elsewhere = tmp_path / "elsewhere.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(elsewhere)
    store = CorrectionStore(tmp_path / "corr")
    store.add(Correction(str(film), "Effusion", 1.0, patient_id="P1"))
    store.add(Correction("/etc/passwd", "Effusion", 1.0, patient_id="P2"))
    store.add(Correction(str(film), "Nodule", 1.0, kind="mask_edit", mask="../../../../etc/shadow", patient_id="P1"))
    store.add(Correction(str(study / ".." / ".." / "x.png"), "Effusion", 0.0))
    store.add(Correction(str(elsewhere), "Effusion", 0.0, patient_id="P3"))
    with store.path.open("a") as fh:
        fh.write("[" * 100_000 + "]" * 100_000 + "\n")  # RecursionError in a plain json.loads
        fh.write('{"image": {"a": {"b": {"c": {"d": {"e": 1}}}}}, "label": "x", "value": 1}\n')
        fh.write('{"image": "' + str(film) + '", "label": "Effusion", "value": 1, "model_score": 1e999}\n')
    out = tmp_path / "m.csv"
    run = _cli("export-corrections", "--out", str(out), "--store", str(store.folder), "--study-root", str(study))
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    summary = json.loads(run.stdout)
    text = out.read_text()
    assert "passwd" not in text and "shadow" not in text and "elsewhere" not in text and ".." not in text
    assert summary["images"] == 1 and sum(summary["refused"].values()) == 4, summary


# ------------------------------------------------------------------ 6-7. site profiles parsed and checked
def _profile_dict(calibration: object) -> dict:
    return {"schema_version": 1, "kind": "cxr-viewer site profile", "name": "ward", "version": 1,
            "bundle": {"name": "nih", "version": "1", "sha256": SHA},
            "findings": {"Effusion": {"calibration": calibration, "threshold": 0.5, "target": "youden"}}}


HOSTILE_PROFILES = {
    "400 digits": '{"schema_version": ' + "9" * 400 + "}",
    "5000 digits": '{"schema_version": 1, "version": ' + "9" * 5000 + "}",
    "a list": "[1, 2, 3]",
    "a string": '"profile"',
    "deep": "[" * 100_000 + "]" * 100_000,
    "findings a list": json.dumps({**_profile_dict({"method": "none"}), "findings": [1, 2]}),
    "summary a list": json.dumps({**_profile_dict({"method": "none"}),
                                  "findings": {"E": {"threshold": 0.5, "summary": [1, 2]}}}),
    "knots huge": json.dumps(_profile_dict({"method": "isotonic", "knots_x": [0.0, 1.0], "knots_y": [5, 1e300]})),
    "knots unsorted": json.dumps(_profile_dict({"method": "isotonic", "knots_x": [0.9, 0.1], "knots_y": [0.2, 0.8]})),
    "knots descending": json.dumps(_profile_dict({"method": "isotonic", "knots_x": [0.1, 0.9], "knots_y": [0.9, 0.1]})),
    "platt slope": json.dumps(_profile_dict({"method": "platt", "a": 1e308, "b": 0.0})),
    "platt inf": '{"schema_version": 1, "findings": {"E": {"threshold": 0.5, "calibration": {"method": "platt", '
                 '"a": Infinity}}}}',
    "knots a dict": json.dumps(_profile_dict({"method": "isotonic", "knots_x": {"a": 1}, "knots_y": [0.5]})),
    "calibration a list": json.dumps(_profile_dict([1, 2])),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_PROFILES))
def test_hostile_site_profile_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    from cxr_viewer.core.errors import CXRError
    from cxr_viewer.core.site.profile import load_profile

    p = tmp_path / "bad.json"
    p.write_text(HOSTILE_PROFILES[case])
    with pytest.raises(CXRError) as err:
        load_profile(p)
    assert "\n" not in err.value.message and len(err.value.message) < 600


def test_hostile_site_profile_exits_2_from_the_cli(tmp_path: Path, models: Path) -> None:
    img = tmp_path / "film.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(img)
    for case in ("5000 digits", "deep", "knots huge", "a list"):
        p = tmp_path / "bad.json"
        p.write_text(HOSTILE_PROFILES[case])
        run = _cli("analyze", str(img), "--site-profile", str(p), "--no-default-models", "--models", str(models),
                   "--backend", "torch")
        assert run.returncode == 2 and "Traceback" not in run.stderr, (case, run.stderr[-1500:])
        assert len([ln for ln in run.stderr.splitlines() if ln.startswith("cxr-viewer")]) == 1


def test_calibrated_scores_never_leave_the_unit_interval() -> None:
    extremes = np.array([0.0, 1e-300, 1e-12, 0.5, 1 - 1e-12, 1.0])
    for cal in (Calibration("platt", a=1000.0, b=-1000.0), Calibration("platt", a=-1000.0, b=1000.0),
                Calibration("temperature", a=0.001), Calibration("isotonic", knots_x=(0.2, 0.2, 0.8), knots_y=(0, 0.5, 1))):
        q = cal(extremes)
        assert np.isfinite(q).all() and (q >= 0).all() and (q <= 1).all(), cal
