"""The composition root and the action registry: features find what they need whatever order they come in."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import SIGNAL
from PySide6.QtWidgets import QMenu, QWidget

from cxr_viewer.qt.actions import ActionRegistry, DuplicateNameError
from cxr_viewer.qt.app import FEATURES

QT = Path(__file__).resolve().parents[2] / "cxr_viewer" / "qt"


def test_the_registry_refuses_a_second_action_menu_or_part_under_one_name(qtbot) -> None:
    owner = QWidget()
    qtbot.addWidget(owner)
    reg = ActionRegistry(owner)
    first = reg.add("fit", "&Fit", shortcut="F", tip="Fit the film")
    assert reg["fit"] is first and first in owner.actions()  # its shortcut works window-wide
    assert first.toolTip() == "Fit the film  (F)"
    with pytest.raises(DuplicateNameError, match="'fit' is already registered"):
        reg.add("fit", "Fit again", shortcut="Shift+F")
    with pytest.raises(DuplicateNameError, match="'fit'"):
        reg.register("fit", QMenu().menuAction())
    assert reg["fit"] is first and len(reg) == 1  # the first one stays, untouched
    assert first.shortcut().toString() == "F"
    reg.add_menu("tools", QMenu("&Tools"))
    with pytest.raises(DuplicateNameError, match="menu named 'tools'"):
        reg.add_menu("tools", QMenu("Other"))
    reg.add_part("worklist", object())
    with pytest.raises(DuplicateNameError, match="part named 'worklist'"):
        reg.add_part("worklist", object())
    with pytest.raises(KeyError, match="no action named 'zoom'; known: fit"):
        reg["zoom"]
    with pytest.raises(KeyError, match="no menu named 'view'; known: tools"):
        reg.menu("view")
    assert reg.part("compare") is None


def test_a_callback_waiting_for_a_part_runs_when_it_comes_or_at_once(qtbot) -> None:
    owner = QWidget()
    qtbot.addWidget(owner)
    reg = ActionRegistry(owner)
    seen: list[tuple[str, object]] = []
    reg.when_part("worklist", lambda p: seen.append(("early", p)))
    assert seen == []  # not installed yet
    panel = object()
    reg.add_part("worklist", panel)
    reg.when_part("worklist", lambda p: seen.append(("late", p)))
    assert seen == [("early", panel), ("late", panel)]
    reg.when_part("never", lambda p: seen.append(("never", p)))
    assert len(seen) == 2


def _shape(win) -> dict[str, object]:
    """What a user sees of the features: menus, every action and its keys, the docks."""
    return {
        "menus": [a.text() for a in win.menuBar().actions()],
        "actions": {k: sorted(s.toString() for s in a.shortcuts()) for k, a in win.action_map.items()},
        "docks": sorted(d.objectName() for d in win.panels),
        # the site calibration follows the worklist's entries (the drift check), however late it came
        "worklist listeners": win.worklist_panel.controller.receivers(SIGNAL("entry_ready(PyObject)")),
    }


def test_features_installed_in_another_order_give_the_same_window(qtbot, make_window, tmp_path: Path, nih_png: Path,
                                                                  siim_dicom: Path) -> None:
    default = make_window()
    backwards = make_window(features=tuple(reversed(FEATURES)))
    assert _shape(backwards) == _shape(default)
    assert [a.text() for a in backwards.menuBar().actions()][:2] == ["&File", "E&xport"]  # Export right after File
    assert backwards.export_actions.actions.part("compare") is backwards.reading.compare  # found though made later

    # the reading tools came before the worklist: PgUp/PgDn still follow the worklist once it is the list shown
    win = backwards
    folder = tmp_path / "films"
    folder.mkdir()
    for i in range(2):
        shutil.copy(nih_png, folder / f"film_{i}.png")
    shutil.copy(siim_dicom, folder / "film_2.dcm")
    panel = win.worklist_panel
    panel.open_folder(folder)
    qtbot.waitUntil(lambda: panel.model.rowCount() == 3 and not panel.controller.running, timeout=60_000)
    order = [Path(panel.model.entry_at(panel.proxy.mapToSource(panel.proxy.index(r, 0)).row()).path) for r in range(3)]
    win.open_paths([folder])  # the study browser lists them too
    qtbot.waitUntil(lambda: len(win.study_browser.image_paths()) == 3, timeout=60_000)
    assert win.wait_idle(60)
    win.worklist_dock.show()
    qtbot.waitUntil(lambda: win.worklist_dock.isVisible())
    # both lists on screen: the one the film was opened from leads (the worklist's open_requested, connected late)
    panel.select_row(0)
    qtbot.waitUntil(lambda: win.session.record is not None and Path(win.session.record.source) == order[0], timeout=60_000)
    assert win.reading.active_list() == "worklist"
    assert win.reading.step_image(1) == order[1]
    qtbot.waitUntil(lambda: Path(win.session.record.source) == order[1], timeout=60_000)
    assert panel.current_row() == 1


def test_a_window_without_the_worklist_still_reads_films(qtbot, make_window, helpers, nih_png: Path) -> None:
    win = make_window(features=("reading", "site_calibration"))
    assert win.worklist_panel is None and win.export_actions is None
    assert "worklist_next" not in win.action_map and "mode_angle" in win.action_map
    helpers.load(qtbot, win, nih_png)
    assert win.reading.active_list() == "studies"
    assert "Site Calibration…" in [a.text().replace("&", "") for a in win.action_map.menu("tools").actions()]


def test_unknown_features_are_refused(qtbot, settings_path: Path) -> None:
    from PySide6.QtCore import QSettings

    from cxr_viewer.qt.app import compose

    with pytest.raises(ValueError, match="unknown feature.*worklists.*known: export, worklist"):
        compose(settings=QSettings(str(settings_path), QSettings.Format.IniFormat), features=("worklists",))


def test_no_feature_reaches_into_the_window() -> None:
    """Features get their services from the composition root: no window._private, no getattr(window, ...)."""
    probe = re.compile(r"getattr\((self\.)?(w|win|window), *\"|\b(self\.)?(w|win|window)\._[a-z]")
    offenders = [f"{p.relative_to(QT)}:{n}: {line.strip()}" for p in sorted(QT.rglob("*.py")) if p.name != "main_window.py"
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if probe.search(line)]
    assert offenders == []


def test_no_import_cycle_among_the_qt_modules() -> None:
    """Counting imports made only for type checking too: a cycle there is a design knot all the same."""
    import grimp

    graph = grimp.build_graph("cxr_viewer", cache_dir=None)
    modules = sorted(m for m in graph.modules if m.startswith("cxr_viewer.qt"))
    cycles = [(m, d) for m in modules for d in graph.find_modules_directly_imported_by(m)
              if d.startswith("cxr_viewer.qt") and d != m and graph.chain_exists(importer=d, imported=m)]
    assert cycles == []
