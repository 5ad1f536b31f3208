"""Adds the worklist dock, its shortcuts (next / previous study in the list order, mark as read,
label) and its menu to a main window."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QEvent, QObject, Qt

from cxr_viewer.qt.worklist.controller import WorklistController
from cxr_viewer.qt.worklist.model import LABEL_KEYS
from cxr_viewer.qt.worklist.panel import WorklistPanel

if TYPE_CHECKING:
    from cxr_viewer.core.analysis import ModelService
    from cxr_viewer.qt.actions import ActionRegistry
    from cxr_viewer.core.workspace import Workspace
    from cxr_viewer.qt.main_window import MainWindow

WORKLIST_HEIGHT_PX = 280  # the bottom panel's height when it opens


class _CloseWatcher(QObject):
    def __init__(self, controller: WorklistController, parent: QObject) -> None:
        super().__init__(parent)
        self.controller = controller

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Close:
            self.controller.shutdown()
        return False


def install_worklist(window: "MainWindow", *, actions: "ActionRegistry", models: "ModelService | None" = None,
                     workspace: "Workspace | None" = None) -> WorklistPanel:
    """Add the worklist dock, its shortcuts and menu entries to ``window``; returns the panel.

    ``actions``: the window's registry; the panel and its dock become its parts ``"worklist"`` and
    ``"worklist_dock"``, which the reading tools and the site calibration find there.

    ``models``: the process's one model service; the worklist scores on its engine and queue, and its
    result store becomes the service's cache (opening a listed study shows the stored result).
    ``workspace``: the reader's; the worklist follows its site profile, thresholds, models and corrections.
    """
    analysis = window.analysis
    cfg = analysis.config()
    # a window that keeps nothing (a headless screenshot run) writes no result store into the user's cache
    controller = WorklistController(window.settings, list(cfg.dirs), disabled=sorted(cfg.disabled),
                                    device=cfg.device, backend=cfg.backend, parent=window, enabled=sorted(cfg.enabled),
                                    store_path=None if window.persist else Path(":memory:"), models=models,
                                    config=analysis.config if models is not None else None,
                                    workspace=workspace if workspace is not None else analysis.workspace)
    if models is not None:
        models.use_results(controller.worklist)
    panel = WorklistPanel(controller, window)
    panel.open_requested.connect(window.open_file)
    controller.error.connect(lambda title, message: window.show_error(message, title))
    # A full-width panel under the film (the findings keep the right edge whole): room for the patient, date and
    # view columns at 1400x900. Hidden until a folder is analysed or it is asked for (View > Panels, Ctrl+Shift+K).
    window.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.BottomDockWidgetArea)
    window.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
    # hidden until asked for; a saved layout that showed it brings it back
    dock = window.add_panel(panel, "Worklist", Qt.DockWidgetArea.BottomDockWidgetArea, hidden=True)
    dock.toggleViewAction().setShortcut("Ctrl+Shift+K")

    def bring_forward() -> None:
        if dock.isHidden():
            dock.show()
            window.resizeDocks([dock], [WORKLIST_HEIGHT_PX], Qt.Orientation.Vertical)
        dock.raise_()

    panel.shown_requested.connect(bring_forward)
    panel.labelled.connect(lambda text: window.statusBar().showMessage(text, 6000))
    a = actions.add
    a("worklist_next", "&Next Study in Worklist", panel.next_study, "Ctrl+PgDown", tip="Open the next study in the list order")
    a("worklist_previous", "&Previous Study in Worklist", panel.previous_study, "Ctrl+PgUp",
      tip="Open the previous study in the list order")
    a("worklist_mark_read", "&Mark Study as Read", panel.mark_read, "Ctrl+Return",
      tip="Mark the selected worklist study as read (again to unmark)")
    a("worklist_open", "Open Folder as &Worklist…", panel._choose_folder, "Ctrl+Shift+L",
      tip="Analyse every study of a folder in the background, most abnormal first")
    for (_key, value, word), n in zip(LABEL_KEYS, (1, 2, 3)):
        a(f"worklist_label_{word}", f"Label Finding {word.capitalize()}", lambda _=False, v=value: panel.label_selected(v),
          f"Alt+{n}", tip=f"Label the chosen finding {word} on the selected worklist study ({n} in the worklist)")
    menu = actions.add_menu("worklist", window.menuBar().addMenu("&Worklist"))
    for key in ("worklist_open", "worklist_next", "worklist_previous", "worklist_mark_read", None,
                "worklist_label_positive", "worklist_label_negative", "worklist_label_unsure"):
        if key is None:
            menu.addSeparator()
            continue
        menu.addAction(actions[key])
    menu.addSeparator()
    menu.addAction("&Query PACS…", panel.show_query)
    menu.addAction("DICOM &Network Settings…", panel.show_settings)
    recv = menu.addAction("&Receive Studies over DICOM")
    recv.setCheckable(True)
    recv.toggled.connect(panel.receive_box.setChecked)
    controller.receiving_changed.connect(recv.setChecked)
    actions.add_part("worklist", panel)
    actions.add_part("worklist_dock", dock)
    window.installEventFilter(_CloseWatcher(controller, window))
    if str(window.settings.value("pacs/receive", "false")).lower() == "true" and window.interactive:
        panel.receive_box.setChecked(True)
    return panel
