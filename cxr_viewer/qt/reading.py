"""Reading-room actions of the main window: drawing tools, overlays, navigation, annotations.

Kept apart from ``main_window.py`` so that window stays the frame (menus, docks,
loading) and this module owns what a radiologist does with one film after another:
measure (distance, angle, ROI, cardiothoracic ratio), annotate (arrow, text), hide
every overlay with one key, step through the study list with PgUp/PgDn or the
mouse's back/forward buttons (in the worklist's order when the worklist is the list
shown), save annotations beside the study (JSON, and a DICOM
presentation state other viewers show), and drive the heatmap from the keyboard.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtWidgets import QMenu, QToolButton

from cxr_viewer.core.imaging import measurements as marks

if TYPE_CHECKING:
    from cxr_viewer.qt.actions import ActionRegistry
    from cxr_viewer.qt.main_window import MainWindow

log = logging.getLogger(__name__)

#: Tools added next to pan/measure/window: (mode, menu text, key).
DRAWING_TOOLS = (
    ("angle", "&Angle", "A"),
    ("roi_ellipse", "ROI &Ellipse (mean, SD, area)", "E"),
    ("roi_rect", "ROI &Rectangle (mean, SD, area)", "Shift+E"),
    ("ctr", "&Cardiothoracic Ratio", "C"),
    ("arrow", "A&rrow", "Shift+A"),
    ("text", "&Text Note", "T"),
)

TABS_HEIGHT = 210  # the heatmap/report tabs under the findings at the default layout

#: Held keys and mouse buttons listed in the shortcuts dialog.
MOUSE_AND_HELD_KEYS = (
    ("Magnifier (loupe under the cursor)", "Hold Z"),
    ("Previous / next image (study list, or worklist order when the Worklist dock is shown)",
     "PgUp / PgDn, mouse back / forward buttons"),
    ("Angle", "Drag one arm, then click the end of the other"),
    ("Cardiothoracic ratio", "Drag the cardiac width, then the thoracic width"),
    ("Cancel a half-drawn tool", "Esc"),
    ("Prior → now column", "Shown in the current | prior layout (F8); ↑/↓ only beyond the score's noise"),
)


class ReadingTools:
    """Installs the reading-room actions on a :class:`MainWindow` and handles them.

    ``actions``: the window's registry; the tools add their actions and menus there and find the
    worklist there (PgUp/PgDn follow its order when it is the list shown), whenever it is installed.
    """

    def __init__(self, window: MainWindow, *, actions: "ActionRegistry", models: Any = None) -> None:
        self.w = window
        self.actions = actions
        self._loaded_from: Path | None = None
        self._last_list = "studies"  # the list the current film was opened from (PgUp/PgDn when both show)
        self._build_actions()
        self._build_menus()
        from cxr_viewer.qt.compare import CompareController

        self.compare = CompareController(window, models=models)
        window.canvas.navigate.connect(self.step_image)
        window.study_browser.open_requested.connect(lambda _p: self._opened_from("studies"))
        actions.when_part("worklist", lambda panel: panel.open_requested.connect(lambda _p: self._opened_from("worklist")))
        window.image_loaded.connect(self._on_image_loaded)
        window.closing.connect(self.shutdown)
        window.mouse_help.extend(MOUSE_AND_HELD_KEYS)
        window.findings_panel.prior_column_toggled.connect(self._on_prior_column)
        self._shown_once = False
        self._auto_tabs_height: int | None = None
        self._auto_width: int | None = None
        self._filter = _ShowFilter(self._on_first_show, self._on_resize)
        window.installEventFilter(self._filter)
        actions.add_part("reading", self)
        actions.add_part("compare", self.compare)  # the Export menu reads the prior's date and changes from it

    # ------------------------------------------------------------------ construction
    def _build_actions(self) -> None:
        w, s, c = self.w, self.w.session, self.w.canvas
        a = self.actions.add
        for mode, text, key in DRAWING_TOOLS:
            act = a(f"mode_{mode}", text, lambda _=False, m=mode: c.set_mode(m), key, checkable=True)
            w.mode_group.addAction(act)
        a("undo_annotation", "&Undo Last Measurement", s.undo_measurement, "Ctrl+Z")
        a("save_annotations", "&Save Annotations", self.save_annotations, "Ctrl+S",
          tip="Save measurements and notes beside the image (JSON, and a DICOM presentation state for DICOM)")
        a("toggle_overlays", "Hide/Show All &Overlays", self.toggle_overlays, "O",
          tip="Hide or show corner text, heatmap, masks and annotations together", checkable=True)
        w.action_map["toggle_overlays"].setChecked(True)
        a("heatmap_toggle", "Show &Heatmap", self.toggle_heatmap, "G", tip="Show or hide the heatmap", checkable=True)
        a("heatmap_style", "Heatmap as &Contours", self.toggle_heatmap_style, "Shift+G",
          tip="Draw the heatmap as iso-lines at the cut-off instead of a colour wash", checkable=True)
        a("next_finding", "Heatmap of &Next Finding", lambda: self.step_finding(1), "N")
        a("prev_finding", "Heatmap of &Previous Finding", lambda: self.step_finding(-1), "Shift+N")
        a("compare", "Compare with &Prior", self.toggle_compare, "F8", checkable=True,
          tip="Current | prior layout: the same patient's earlier film, linked, with score changes")
        a("compare_chosen", "Compare with a &Chosen Film…", self.compare_with_chosen, "Shift+F8",
          tip="Current | prior with a film you pick (for files with no patient ID or date to match on)")
        a("link_views", "&Link Current and Prior", lambda on: self.compare.set_linked(on), "Ctrl+L",
          checkable=True, tip="Link zoom, pan and window/level of the two viewports")
        w.action_map["link_views"].setChecked(True)
        a("next_image", "Next &Image", lambda: self.step_image(1), "PgDown")
        a("prev_image", "Previous Ima&ge", lambda: self.step_image(-1), "PgUp")
        for key, dock, text, keys in (
            ("panel_findings", w.findings_dock, "&Findings Panel", "Ctrl+Shift+F"),
            ("panel_heatmap", w.heatmap_dock, "&Heatmap Panel", "Ctrl+Shift+H"),
            ("panel_report", w.report_dock, "&Report Panel", "Ctrl+Shift+R"),
        ):
            act = dock.toggleViewAction()
            act.setText(text)
            act.setShortcut(keys)
            self.actions.register(key, act)
        style = str(s.preference("heatmap_style") or "fill")
        w.action_map["heatmap_style"].setChecked(style == "contour")
        s.events.heatmap_changed.connect(self._on_heatmap)

    def _build_menus(self) -> None:
        w, menus = self.w, self.actions
        m: QMenu = menus.menu("tools")
        first = m.actions()[3] if len(m.actions()) > 3 else None  # after pan / measure / window
        annotate = QMenu("&Measure and Annotate", m)
        for mode, _, _ in DRAWING_TOOLS:
            annotate.addAction(w.action_map[f"mode_{mode}"])
        annotate.addSeparator()
        annotate.addAction(w.action_map["undo_annotation"])
        annotate.addAction(w.action_map["save_annotations"])
        m.insertMenu(first, annotate) if first is not None else m.addMenu(annotate)
        self.annotate_menu = annotate
        menus.menu("file").insertAction(w.action_map["export_view"], w.action_map["save_annotations"])
        v: QMenu = menus.menu("view")
        v.addSeparator()
        for key in ("compare", "compare_chosen", "link_views", "toggle_overlays", "heatmap_toggle", "heatmap_style", "next_finding", "prev_finding",
                    "next_image", "prev_image"):
            v.addAction(w.action_map[key])
        for key in ("panel_findings", "panel_heatmap", "panel_report"):
            menus.menu("panels").addAction(w.action_map[key])
        button = QToolButton(w.toolbar)
        button.setObjectName("annotateButton")
        button.setText("Annotate")
        button.setToolTip("Angle, ROI, cardiothoracic ratio, arrow and text tools")
        button.setMenu(annotate)
        button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        tb = w.toolbar
        acts = tb.actions()
        after = acts.index(w.action_map["mode_window"]) + 1 if w.action_map["mode_window"] in acts else len(acts)
        if after < len(acts):
            tb.insertWidget(acts[after], button)
        else:
            tb.addWidget(button)
        self.annotate_button = button

    # ------------------------------------------------------------------ overlays and heatmap
    def toggle_overlays(self, on: bool | None = None) -> None:
        c = self.w.canvas
        visible = (not c.overlays_visible) if on is None else bool(on)
        c.set_overlays_visible(visible)
        act = self.w.action_map["toggle_overlays"]
        if act.isChecked() != visible:
            act.blockSignals(True)
            act.setChecked(visible)
            act.blockSignals(False)
        self.w.statusBar().showMessage("Overlays shown" if visible else "Overlays hidden (press O to show)", 4000)

    def toggle_heatmap(self, _checked: bool = False) -> None:
        layer = self.w.session.heatmap
        if layer is None:
            self.w.statusBar().showMessage("No heatmap yet: pick a finding (N for the next one)", 5000)
            self._sync_heatmap_action()
            return
        visible = not layer.visible
        self.w.session.update_heatmap(visible=visible)
        heat = self.w.analysis.heatmap
        if not visible:  # hidden: the next images open without one
            self.w.analysis.set_shown_cam(None)
        elif heat is not None:
            self.w.analysis.set_shown_cam(heat.label, heat.model)

    def toggle_heatmap_style(self, _checked: bool = False) -> None:
        contour = self.w.canvas.heatmap_style != "contour"
        self.w.canvas.set_heatmap_style("contour" if contour else "fill")
        act = self.w.action_map["heatmap_style"]
        if act.isChecked() != contour:
            act.setChecked(contour)

    def _on_heatmap(self, _layer: Any) -> None:
        self._sync_heatmap_action()

    def _sync_heatmap_action(self) -> None:
        layer = self.w.session.heatmap
        act = self.w.action_map["heatmap_toggle"]
        want = layer is not None and layer.visible
        if act.isChecked() != want:
            act.blockSignals(True)
            act.setChecked(want)
            act.blockSignals(False)

    def step_finding(self, delta: int) -> tuple[str, str] | None:
        """Show the heatmap of the next (or previous) finding in the findings list."""
        panel = self.w.findings_panel
        rows = [(m, lab) for m, lab, *_ in panel.rows()]
        if not rows:
            self.w.statusBar().showMessage("No findings yet", 4000)
            return None
        heat = self.w.analysis.heatmap
        current = (heat.model, heat.label) if heat is not None else None
        i = rows.index(current) if current in rows else (-1 if delta > 0 else 0)
        key = rows[(i + delta) % len(rows)]
        item = panel.item_for(*key)
        if item is not None and panel.tree.currentItem() is not item:
            panel.tree.setCurrentItem(item)  # selecting the row asks for its heatmap
            panel.tree.scrollToItem(item)
        else:
            panel.show_heatmap(*key)
        return key

    def compare_with_chosen(self, path: Path | str | None = None) -> bool:
        """Current | prior with a film picked by hand (a file dialog unless ``path`` is given)."""
        if path is None or isinstance(path, bool):
            from PySide6.QtWidgets import QFileDialog

            start = str(self.w.current_path.parent) if self.w.current_path is not None else ""
            path, _ = QFileDialog.getOpenFileName(self.w, "Choose the prior film", start,
                                                  "Images (*.dcm *.png *.jpg *.jpeg *.tif *.tiff);;All files (*)")
            if not path:
                return False
        if self.compare.is_open:
            self.compare.close()
        opened = self.compare.open(Path(path))
        act = self.w.action_map["compare"]
        act.blockSignals(True)
        act.setChecked(opened)
        act.blockSignals(False)
        return opened

    def toggle_compare(self, on: bool | None = None) -> bool:
        """Open (or close) the current | prior layout."""
        want = (not self.compare.is_open) if on is None else bool(on)
        opened = self.compare.open() if want else (self.compare.close() or False)
        act = self.w.action_map["compare"]
        if act.isChecked() != opened:
            act.blockSignals(True)
            act.setChecked(opened)
            act.blockSignals(False)
        return opened

    # ------------------------------------------------------------------ navigation
    def image_list(self) -> list[Path]:
        """The images the study browser lists, in order (the reading list)."""
        return self.w.study_browser.image_paths()

    def active_list(self) -> str:
        """Which list PgUp/PgDn step through: ``"worklist"`` or ``"studies"``.

        The worklist when its dock is the one shown (the front tab) and holds studies; when
        both docks are shown side by side, the list the current film was opened from.
        """
        w = self.w
        panel, dock = self.actions.part("worklist"), self.actions.part("worklist_dock")
        if panel is None or dock is None or not _shown(dock) or panel.model.rowCount() == 0:
            return "studies"
        if not _shown(w.studies_dock) or not self.image_list():
            return "worklist"
        return self._last_list

    def _opened_from(self, which: str) -> None:
        self._last_list = which

    def step_image(self, delta: int) -> Path | None:
        """Open the previous (-1) or next (+1) image of the active list (study browser or worklist)."""
        if self.active_list() == "worklist":
            entry = self.actions.part("worklist").step(delta, self.w.current_path)
            if entry is None:
                self.w.statusBar().showMessage("First study of the worklist" if delta < 0 else
                                               "Last study of the worklist", 4000)
                return None
            return entry.path
        paths = self.image_list()
        if not paths:
            return None
        current = self.w.current_path
        if current in paths:
            i = paths.index(current) + delta
            if not 0 <= i < len(paths):
                self.w.statusBar().showMessage("First image of the list" if i < 0 else "Last image of the list", 4000)
                return None
        else:
            i = 0 if delta > 0 else len(paths) - 1
        self.w.open_file(paths[i])
        return paths[i]

    # ------------------------------------------------------------------ annotations beside the study
    def _on_image_loaded(self, record: Any) -> None:
        path = self.w.current_path
        self._loaded_from = None
        if path is None:
            return
        side = marks.sidecar_path(path)
        if not side.is_file():
            return
        try:
            anns = marks.load_annotations(side, record)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.w.show_error(f"The annotations saved beside {path.name} could not be read ({exc}).", "Annotations")
            return
        self.w.session.set_measurements(anns)
        self._loaded_from = side
        if anns:
            self.w.statusBar().showMessage(f"{len(anns)} saved annotation(s) shown from {side.name}", 8000)

    def save_annotations(self) -> list[Path]:
        """Write the current image's annotations beside it: JSON always, a GSPS for DICOM images."""
        w = self.w
        record, path = w.session.record, w.current_path
        if record is None or path is None:
            w.statusBar().showMessage("Nothing to save: open an image first", 5000)
            return []
        anns = w.session.measurements
        written: list[Path] = []
        try:
            report = w.report_panel.editor.toPlainText()
            written.append(marks.save_annotations(marks.sidecar_path(path), anns, record, report=report or None))
            if record.format == "dicom" and anns:
                from cxr_viewer.core.export.gsps import gsps_path, write_gsps
                from cxr_viewer.core.imaging.windowing import window_in_source_units

                window = window_in_source_units(record, w.session.display.window)
                written.append(write_gsps(gsps_path(path), record, anns, window=window))
        except OSError as exc:
            w.show_error(f"Could not save the annotations beside {path.name}: {exc.strerror or exc}. "
                         "Check that the folder is writable.", "Annotations not saved")
            return written
        except Exception as exc:  # noqa: BLE001 - a DICOM writer error must not lose the JSON or the app
            log.warning("presentation state not written", exc_info=True)
            w.show_error(f"The annotations were saved as JSON, but the DICOM presentation state failed ({exc}).",
                         "Presentation state not written")
            return written
        w.statusBar().showMessage("Saved " + ", ".join(p.name for p in written), 8000)
        return written

    # ------------------------------------------------------------------ tag window, shutdown
    def _on_first_show(self) -> None:
        if self._shown_once:
            return
        self._shown_once = True
        if not self.w.layout_restored:
            self.fit_docks()
        # the DICOM tag window is never reopened by itself at start-up: it opens when asked for (Ctrl+T)

    def fit_docks(self, *, width: bool = True) -> None:
        """Findings get the height and the width their longest name and badge need, the heatmap/report tabs a
        fixed strip: every finding row and badge shows, whole, at the default 1400x900."""
        w = self.w
        if width:
            from cxr_viewer.qt.main_window import LEFT_DOCK_PX

            target = w.findings_panel.preferred_width()
            w.resizeDocks([w.studies_dock, w.findings_dock], [LEFT_DOCK_PX, target], Qt.Orientation.Horizontal)
            self._auto_width = target  # the layout applies it later; what it became is noted then
            QTimer.singleShot(0, self._note_auto_width)
        w.resizeDocks([w.findings_dock, w.heatmap_dock], [max(w.height() - 330, 300), TABS_HEIGHT],
                      Qt.Orientation.Vertical)
        self._auto_tabs_height = w.heatmap_dock.height()

    def _note_auto_width(self) -> None:
        self._auto_width = self.w.findings_dock.width()

    def _width_is_auto(self) -> bool:
        """Whether the findings dock still has the width fit_docks gave it (the user has not dragged it)."""
        return self._auto_width is not None and abs(self.w.findings_dock.width() - self._auto_width) <= 8

    def _on_prior_column(self, shown: bool) -> None:
        """The Prior → now column came or went: the findings dock follows, unless the user has sized it; it is
        always widened enough for the column, so names such as Pneumonia and Pneumothorax are never cut."""
        w = self.w
        if self._width_is_auto():
            self.fit_docks()
        elif shown and w.findings_dock.width() < w.findings_panel.preferred_width(prior=True):
            w.resizeDocks([w.findings_dock], [w.findings_panel.preferred_width(prior=True)], Qt.Orientation.Horizontal)

    def _on_resize(self) -> None:
        # keep the split while the user has not moved it; a dragged separator is left alone
        if self._auto_tabs_height is not None and abs(self.w.heatmap_dock.height() - self._auto_tabs_height) <= 40:
            self.fit_docks(width=self._width_is_auto())

    def shutdown(self) -> None:
        """Stop listening (the prior viewport's work runs on the window's runner, cancelled with it)."""
        self.compare.shutdown()


def _shown(dock: Any) -> bool:
    """Whether a dock is on screen: open, and not a tab hidden behind another (its region is then empty)."""
    return bool(dock.isVisible()) and not dock.visibleRegion().isEmpty()


class _ShowFilter(QObject):
    """Calls back when the watched window is shown (restoring windows that were open) and resized."""

    def __init__(self, on_show: Any, on_resize: Any) -> None:
        super().__init__()
        self._on_show, self._on_resize = on_show, on_resize

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.Show:
            self._on_show()
        elif event.type() == QEvent.Type.Resize:
            self._on_resize()
        return False
