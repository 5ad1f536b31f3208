"""The Export menu on the real window: DICOM results, report, anonymised export, clear errors."""

from __future__ import annotations

from pathlib import Path

import pydicom

from tests.core.dicom_check import dciodvfy_errors
from tests.qt.bundles import tiny_models  # noqa: F401  (fixture)
from tests.qt.test_analysis import WAIT_MS, analysed_window


def test_export_menu_writes_results_off_the_gui_thread(qtbot, make_window, tiny_models, siim_dicom,
                                                       tmp_path: Path) -> None:
    win = analysed_window(qtbot, make_window, tiny_models, siim_dicom)
    menu = win.export_actions.menu
    assert menu.title() == "E&xport"
    assert [a.text() for a in menu.actions()] == [
        "&Report as PDF or PNG…", "&DICOM Results (SR, SEG, SC, PDF)…", "&Anonymised Study with Results…"]
    titles = [a.text() for a in win.menuBar().actions()]
    assert titles.index("E&xport") == titles.index("&File") + 1

    assert win.export_actions.export_dicom(tmp_path / "dicom")
    assert win.session.busy or win.runner.pending  # the work runs in the background
    assert win.wait_idle(WAIT_MS / 1000)
    files = win.export_actions.last_files
    assert [p.name.split("_")[0] for p in files] == ["SR", "SC", "DOC"]  # no report masks yet: no SEG
    src = pydicom.dcmread(siim_dicom, stop_before_pixels=True)
    for p in files:
        ds = pydicom.dcmread(p)
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert dciodvfy_errors(p) == []
    assert "wrote 3 file(s)" in win.statusBar().currentMessage()

    assert win.export_actions.export_report(tmp_path / "page.png")
    assert win.wait_idle(WAIT_MS / 1000) and (tmp_path / "page.png").stat().st_size > 10_000

    assert win.export_actions.export_anonymised(tmp_path / "anon")
    assert win.wait_idle(WAIT_MS / 1000)
    anon = [pydicom.dcmread(p) for p in win.export_actions.last_files]
    assert len(anon) == 4 and len({d.StudyInstanceUID for d in anon}) == 1
    assert anon[0].StudyInstanceUID != src.StudyInstanceUID and anon[0].PatientID != src.PatientID
    assert win.export_actions.last_warnings  # burned-in text is at least asked about


def test_export_of_a_png_fails_with_a_clear_message(qtbot, make_window, tiny_models, nih_png, tmp_path: Path) -> None:
    win = analysed_window(qtbot, make_window, tiny_models, nih_png)
    assert win.export_actions.export_dicom(tmp_path / "dicom")
    assert win.wait_idle(WAIT_MS / 1000)
    assert "only be written for a DICOM image" in (win.last_error or "")
    assert not win.export_actions.export_anonymised(tmp_path / "anon")
    assert "needs a DICOM image" in (win.last_error or "")
    assert win.export_actions.export_report(tmp_path / "r.pdf")  # the report works for any image
    assert win.wait_idle(WAIT_MS / 1000) and (tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")
