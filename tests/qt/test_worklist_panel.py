"""The worklist dock in the real main window: background analysis, sorting, shortcuts, studies arriving by C-STORE."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt

from cxr_viewer.qt.worklist import COL_ABNORMAL, COL_PATIENT, COL_READ
from tests.orthanc import free_port, orthanc  # noqa: F401  (fixture)
from tests.qt.bundles import tiny_models  # noqa: F401  (fixture)
SLOW_MS = 600_000  # the first analysis imports torch and loads the models: minutes on a busy 2-core machine

SAMPLES = Path(__file__).resolve().parents[2] / "resources" / "samples"


def _png(path: Path, seed: int, size: int = 80) -> Path:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = 0.5 + 0.3 * np.sin(x / (2 + seed % 7)) * np.cos(y / (3 + seed % 5)) + 0.1 * rng.standard_normal((size, size))
    Image.fromarray(np.clip(img * 255, 0, 255).astype(np.uint8), mode="L").save(path)
    return path


@pytest.fixture(autouse=True)
def _store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXR_VIEWER_WORKLIST_DB", str(tmp_path / "worklist.sqlite"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "studies"
    d.mkdir()
    for i in range(4):
        _png(d / f"film_{i}.png", seed=i)
    shutil.copy(SAMPLES / "siim_cr_chest.dcm", d / "siim.dcm")
    return d


def _rows(panel) -> list[tuple[str, float]]:
    out = []
    for r in range(panel.proxy.rowCount()):
        e = panel.model.entry_at(panel.proxy.mapToSource(panel.proxy.index(r, 0)).row())
        out.append((e.path.name, e.abnormality))
    return out


def _wait_done(qtbot, panel, n: int) -> None:
    qtbot.waitUntil(lambda: panel.model.rowCount() >= n and not panel.controller.running, timeout=SLOW_MS)


def test_folder_becomes_a_sorted_worklist_with_shortcuts(qtbot, make_window, tiny_models, folder: Path) -> None:  # noqa: F811
    win = make_window(models_dir=tiny_models)
    panel = win.worklist_panel
    assert win.worklist_dock.windowTitle() == "Worklist"
    panel.open_folder(folder)
    assert panel.progress.isVisibleTo(panel) or panel.controller.running  # progress shows while it works
    assert not win.session.busy  # the worklist never makes the viewer busy
    _wait_done(qtbot, panel, 5)
    rows = _rows(panel)
    assert len(rows) == 5
    scores = [s for _n, s in rows]
    assert scores == sorted(scores, reverse=True)  # highest abnormality first by default
    assert not panel.progress.isVisible() and not panel.cancel_button.isVisible()
    headers = [panel.model.headerData(c, Qt.Orientation.Horizontal) for c in range(panel.model.columnCount())]
    assert headers[:6] == ["Abnormality", "Read", "Patient", "Study date", "Modality/View", "QC"]
    assert {"Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "Tuberculosis"} <= set(headers)

    # sortable by any column: by Tuberculosis ascending
    col = headers.index("Tuberculosis")
    panel.table.sortByColumn(col, Qt.SortOrder.AscendingOrder)
    tb = [float(panel.proxy.index(r, col).data()) for r in range(5)]
    assert tb == sorted(tb)
    panel.table.sortByColumn(COL_ABNORMAL, Qt.SortOrder.DescendingOrder)

    # Ctrl+PgDown opens the first study in list order, again the second, Ctrl+PgUp goes back
    win.action_map["worklist_next"].trigger()
    first = folder / rows[0][0]
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == first,
                    timeout=SLOW_MS)
    win.action_map["worklist_next"].trigger()
    second = folder / rows[1][0]
    qtbot.waitUntil(lambda: win.session.record.source == second, timeout=SLOW_MS)
    win.action_map["worklist_previous"].trigger()
    qtbot.waitUntil(lambda: win.session.record.source == first, timeout=SLOW_MS)
    assert win.action_map["worklist_next"].shortcut().toString() == "Ctrl+PgDown"
    # one key, one action: no shortcut is claimed twice in the window
    keys = [a.shortcut().toString() for a in win.action_map.values() if not a.shortcut().isEmpty()]
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)

    # mark as read: shown in the row and kept in the store
    win.action_map["worklist_mark_read"].trigger()
    assert panel.current_entry().read
    assert panel.proxy.index(0, COL_READ).data() == "✓"
    assert panel.controller.store.is_read(panel.current_entry().content_hash)

    panel.hide_patient.setChecked(True)
    assert panel.table.isColumnHidden(COL_PATIENT)


def test_page_keys_and_mouse_buttons_follow_the_worklist_order_when_it_is_shown(qtbot, make_window, tiny_models,  # noqa: F811
                                                                                folder: Path) -> None:
    from PySide6.QtCore import QEvent, QPointF
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    win = make_window(models_dir=tiny_models)
    panel = win.worklist_panel
    panel.open_folder(folder)
    _wait_done(qtbot, panel, 5)
    order = [folder / name for name, _ in _rows(panel)]  # most abnormal first: not the file-name order
    # the study browser holds the same films in its own (name) order
    win.open_paths([folder])
    qtbot.waitUntil(lambda: len(win.study_browser.image_paths()) == 5, timeout=SLOW_MS)
    assert win.wait_idle(120)
    assert win.study_browser.image_paths() != order, "the test needs the two orders to differ"
    win.worklist_dock.hide()
    qtbot.waitUntil(lambda: win.reading.active_list() == "studies")  # the worklist is not on screen
    win.worklist_dock.show()
    win.studies_dock.hide()
    qtbot.waitUntil(lambda: win.reading.active_list() == "worklist")  # the worklist is the list shown
    win.open_file(order[1])
    qtbot.waitUntil(lambda: win.session.record is not None and win.session.record.source == order[1], timeout=SLOW_MS)
    qtbot.keyClick(win, Qt.Key.Key_PageDown)
    qtbot.waitUntil(lambda: win.session.record.source == order[2], timeout=SLOW_MS)
    assert panel.current_row() == 2, "the worklist selection follows"
    qtbot.keyClick(win, Qt.Key.Key_PageUp)
    qtbot.waitUntil(lambda: win.session.record.source == order[1], timeout=SLOW_MS)
    qtbot.keyClick(win, Qt.Key.Key_PageUp)
    qtbot.waitUntil(lambda: win.session.record.source == order[0], timeout=SLOW_MS)
    qtbot.keyClick(win, Qt.Key.Key_PageUp)  # the first stays, and the status bar says so
    assert win.wait_idle(60) and win.session.record.source == order[0]
    assert "First study of the worklist" in win.statusBar().currentMessage()
    vp = win.canvas.viewport()
    for button, want in ((Qt.MouseButton.ForwardButton, order[1]), (Qt.MouseButton.BackButton, order[0])):
        ev = QMouseEvent(QEvent.Type.MouseButtonPress, QPointF(vp.rect().center()), QPointF(vp.mapToGlobal(vp.rect().center())),
                         button, button, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(vp, ev)
        qtbot.waitUntil(lambda w=want: win.session.record.source == w, timeout=SLOW_MS)
    win.worklist_dock.hide()
    win.studies_dock.show()  # the study browser alone again: PgDn follows its order
    qtbot.waitUntil(lambda: win.reading.active_list() == "studies")
    browser = win.study_browser.image_paths()
    i = browser.index(order[0])
    j = i + 1 if i + 1 < len(browser) else i - 1
    qtbot.keyClick(win, Qt.Key.Key_PageDown if j > i else Qt.Key.Key_PageUp)
    qtbot.waitUntil(lambda: win.session.record.source == browser[j], timeout=SLOW_MS)


def test_reopening_recomputes_nothing_and_cancel_stops(qtbot, make_window, tiny_models, folder: Path,  # noqa: F811
                                                       tmp_path: Path) -> None:
    win = make_window(models_dir=tiny_models)
    panel = win.worklist_panel
    panel.open_folder(folder)
    _wait_done(qtbot, panel, 5)
    assert sum(1 for e in panel.model.entries if e.computed) == 5
    panel.open_folder(folder)
    _wait_done(qtbot, panel, 5)
    assert [e.computed for e in panel.model.entries] == [()] * 5  # all from the store

    many = tmp_path / "many"
    many.mkdir()
    for i in range(40):
        _png(many / f"m_{i:02d}.png", seed=100 + i)
    panel.open_folder(many)
    qtbot.waitUntil(lambda: panel.model.rowCount() >= 1, timeout=SLOW_MS)
    assert panel.cancel_button.isVisible()
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.controller.running, timeout=SLOW_MS)
    assert panel.model.rowCount() < 40
    assert not panel.progress.isVisible()


def test_studies_pushed_over_dicom_appear_as_they_arrive(qtbot, make_window, tiny_models, tmp_path: Path) -> None:  # noqa: F811
    from cxr_viewer.core import pacs

    win = make_window(models_dir=tiny_models)
    port = free_port()
    win.settings.setValue("pacs/port", port)
    win.settings.setValue("pacs/ae_title", "VIEWERTEST")
    win.settings.setValue("pacs/inbox", str(tmp_path / "inbox"))
    panel = win.worklist_panel
    panel.receive_box.setChecked(True)
    assert panel.controller.receiver is not None and panel.receive_box.text() == f"Receive (VIEWERTEST:{port})"

    done = threading.Event()
    result: list = []

    def push() -> None:
        try:
            result.extend(pacs.send_files(pacs.RemoteNode("127.0.0.1", port, "VIEWERTEST"),
                                          [SAMPLES / "siim_cr_chest.dcm"]))
        finally:
            done.set()

    threading.Thread(target=push, daemon=True).start()  # a modality pushing while the GUI runs
    qtbot.waitUntil(done.is_set, timeout=30_000)
    assert len(result) == 1
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1 and bool(panel.model.entries[0].findings), timeout=SLOW_MS)
    e = panel.model.entries[0]
    assert e.path.is_relative_to(tmp_path / "inbox") and e.modality_view.startswith("CR")

    # a port already in use: a clear message, the toggle goes back off, the app runs on
    panel.receive_box.setChecked(False)
    assert panel.controller.receiver is None
    import socket

    busy = socket.socket()
    busy.bind(("0.0.0.0", 0))
    busy.listen(1)
    win.settings.setValue("pacs/port", busy.getsockname()[1])
    errors: list = []
    panel.controller.error.connect(lambda title, msg: errors.append(msg))
    panel.receive_box.setChecked(True)
    busy.close()
    assert not panel.receive_box.isChecked() and errors and "cannot listen on port" in errors[0]


def test_query_retrieve_and_send_results_from_the_dock(qtbot, make_window, tiny_models, tmp_path: Path,  # noqa: F811
                                                       orthanc) -> None:  # noqa: F811
    from cxr_viewer.core import pacs

    remote = pacs.RemoteNode("127.0.0.1", orthanc.dicom_port, "ORTHANC")
    pacs.send_files(remote, [SAMPLES / "siim_cr_chest.dcm"])
    win = make_window(models_dir=tiny_models)
    for key, value in (("pacs/remote_host", "127.0.0.1"), ("pacs/remote_port", orthanc.dicom_port),
                       ("pacs/remote_ae", "ORTHANC"), ("pacs/inbox", str(tmp_path / "inbox"))):
        win.settings.setValue(key, value)
    panel = win.worklist_panel
    dlg = panel.show_query()
    dlg.modality.setText("CR")
    with qtbot.waitSignal(panel.controller.studies_found, timeout=60_000):
        qtbot.mouseClick(dlg.search, Qt.MouseButton.LeftButton)
    assert dlg.table.rowCount() >= 1 and "found" in dlg.note.text()
    dlg.table.selectRow(0)
    qtbot.mouseClick(dlg.retrieve, Qt.MouseButton.LeftButton)  # no receiver running: C-GET
    qtbot.waitUntil(lambda: panel.model.rowCount() == 1 and bool(panel.model.entries[0].findings), timeout=SLOW_MS)
    dlg.close()

    panel.select_row(0, open_it=False)
    uid = panel.model.entries[0].metadata["study_instance_uid"]
    before = len(orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": uid}}))
    messages: list[str] = []
    panel.controller.message.connect(messages.append)
    qtbot.mouseClick(panel.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: any("stored on the PACS" in m for m in messages), timeout=SLOW_MS)
    after = len(orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": uid}}))
    assert after - before == 3  # SR, SC and PDF (no report masks in the worklist)

    # the PACS gone: a clear message in a dialog-bound signal, the window keeps running
    win.settings.setValue("pacs/remote_port", free_port())
    errors: list[str] = []
    panel.controller.error.connect(lambda title, msg: errors.append(msg))
    qtbot.mouseClick(panel.send_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(errors), timeout=60_000)
    assert "No DICOM server answered" in errors[0]


def _names_fit(table, col: int) -> bool:
    """Every cell of a column shows whole: the column is as wide as its widest text (and header)."""
    return table.columnWidth(col) >= max(table.sizeHintForColumn(col),
                                         table.horizontalHeader().sectionSizeHint(col)) - 2


def test_worklist_at_1400x900_shows_its_columns_and_readable_buttons(qtbot, make_window, tiny_models,  # noqa: F811
                                                                      tmp_path: Path) -> None:  # fmt: skip
    """Opening a folder brings the panel forward; at the default window every fixed column is in view and whole
    (two NIH films of one patient are told apart), the label buttons read whole, and the film keeps its room."""
    d = tmp_path / "nih"
    d.mkdir()
    for i, name in enumerate(("00000013_005.png", "00000013_026.png", "00000032_001.png")):
        _png(d / name, seed=i)
    win = make_window(models_dir=tiny_models)
    win.resize(1400, 900)
    qtbot.waitUntil(lambda: (win.width(), win.height()) == (1400, 900))
    panel = win.worklist_panel
    assert not win.worklist_dock.isVisible()  # nothing to show yet: the film has the room
    win.action_map["worklist_open"]  # the menu entry exists; the dialog itself is skipped
    panel.open_folder(d)
    assert win.worklist_dock.isVisible() and not win.worklist_dock.visibleRegion().isEmpty(), "progress in view"
    _wait_done(qtbot, panel, 3)
    qtbot.wait(100)
    table = panel.table
    vp = table.viewport().rect()
    from cxr_viewer.qt.worklist import COL_DATE, COL_MODALITY

    for col in (COL_ABNORMAL, COL_READ, COL_PATIENT, COL_DATE, COL_MODALITY):
        x = table.columnViewportPosition(col)
        assert 0 <= x and x + table.columnWidth(col) <= vp.width(), f"column {col} is out of view"
        assert _names_fit(table, col), f"column {col} is cut"
    patients = {panel.proxy.index(r, COL_PATIENT).data() for r in range(3)}
    assert len(patients) == 3, patients
    for b in panel.label_buttons:
        assert b.width() >= b.sizeHint().width() - 1, f"{b.text()!r} is cut"
    canvas = win.canvas.viewport()
    assert canvas.width() >= 500 and canvas.height() >= 380, "the film keeps a readable size"


def test_labels_are_explicit_and_confirmed(qtbot, make_window, tiny_models, folder: Path) -> None:  # noqa: F811
    """1 / 2 / 3 label only while the table has the keyboard (a visible line says so); every label is confirmed in the
    status bar; on the image the same keys are window presets, and the status bar says which preset."""
    win = make_window(models_dir=tiny_models)
    panel = win.worklist_panel
    panel.open_folder(folder)
    _wait_done(qtbot, panel, 5)
    panel.select_row(0, open_it=False)
    win.canvas.setFocus()
    qtbot.waitUntil(lambda: win.canvas.hasFocus())
    assert panel.label_mode.text().startswith("Table: 1 / 2 / 3 label")
    qtbot.keyClick(win.canvas, Qt.Key.Key_2)
    assert "Window preset" in win.statusBar().currentMessage()
    assert not panel.controller.labels_of(panel.current_entry())
    panel.table.setFocus()
    qtbot.waitUntil(lambda: panel.table.hasFocus())
    finding = panel.label_box.currentText()
    assert panel.label_mode.text().startswith(f"Labelling {finding}")
    qtbot.keyClick(panel.table, Qt.Key.Key_1)
    assert win.statusBar().currentMessage() == f"Labelled {finding} positive on {panel.current_entry().path.name}"
    assert list(panel.controller.labels_of(panel.current_entry()).values()) == [1.0]


def test_a_store_of_another_program_is_named_and_the_worklist_still_works(qtbot, tmp_path: Path) -> None:
    from PySide6.QtCore import QSettings

    from cxr_viewer.qt.worklist import WorklistController

    bad = tmp_path / "not-a-store.sqlite"
    bad.write_bytes(b"this is no database " * 50)
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    controller = WorklistController(settings, [], store_path=bad)
    messages: list[tuple[str, str]] = []
    controller.error.connect(lambda title, text: messages.append((title, text)))
    qtbot.waitUntil(lambda: bool(messages), timeout=5000)
    assert "not a database" in messages[0][1] and controller.store.path is None  # in memory meanwhile
    assert bad.read_bytes().startswith(b"this is no database")  # the user's file is left as it was
