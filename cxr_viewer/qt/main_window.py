"""The main window: menus, toolbar, status bar, docks, loading and persistence.

All state lives in the :class:`Session`; this window wires widgets to it, sends
slow work (reading, scanning, thumbnails) to a :class:`TaskRunner`, and turns
errors into non-blocking messages. The window is the frame: the features (Export
menu, worklist, reading tools, site calibration) are installed on it by the
composition root (:func:`cxr_viewer.qt.app.compose`), which hands each the services
it needs. They dock panels with :meth:`MainWindow.add_panel`, add actions and menus
to :attr:`MainWindow.action_map` (an :class:`~cxr_viewer.qt.actions.ActionRegistry`)
and may queue their own work with :meth:`MainWindow.submit`; :meth:`wait_idle` then
waits for it as well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QEventLoop, QSettings, QSize, Qt, QThread, Signal
from PySide6.QtGui import QActionGroup, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QDockWidget,
    QFileDialog,
    QHeaderView,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QTableWidget,
    QTableWidgetItem,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from cxr_viewer.core.analysis import ModelService
from cxr_viewer.core.errors import CXRError
from cxr_viewer.core.io.record import ImageRecord
from cxr_viewer.core.session import DEFAULT_PREFERENCES, DisplayState, Session
from cxr_viewer.core.workspace import Workspace
from cxr_viewer.qt.actions import ActionRegistry, RecentFiles
from cxr_viewer.qt.analysis import DEVICES, AnalysisController, QtSettings
from cxr_viewer.qt.canvas import ImageCanvas, PixelInfo, dropped_paths
from cxr_viewer.qt.icons import icon
from cxr_viewer.qt.panels.findings import FindingsPanel
from cxr_viewer.qt.panels.heatmap import HeatmapPanel
from cxr_viewer.qt.panels.report import ReportPanel
from cxr_viewer.qt.study_browser import StudyBrowser, make_thumbnail, thumbnail_array
from cxr_viewer.qt.tag_browser import TagBrowser, TagWindow
from cxr_viewer.qt.workers import Task, TaskRunner

log = logging.getLogger(__name__)

ORGANIZATION = "cxr-viewer"
APPLICATION = "cxr-viewer"
IMAGE_FILTER = "Chest X-rays (*.dcm *.dicom *.dic *.png *.jpg *.jpeg *.tif *.tiff);;All files (*)"
PRESET_KEYS = ("1", "2", "3", "4", "5", "6")
QUIT_WAIT_MS = 300  # how long closing waits for background work before leaving it behind
#: Studies / worklist dock width at the default layout (thumbnail captions wrap; the findings get the rest they need).
LEFT_DOCK_PX = 200

#: Mouse gestures listed in the shortcuts dialog next to the keyboard actions (features add theirs to
#: :attr:`MainWindow.mouse_help`).
MOUSE_HELP = (
    ("Window / level", "Right-drag (left/right: width, up/down: level)"),
    ("Zoom around the cursor", "Mouse wheel"),
    ("Pan", "Middle-drag, or left-drag with the Pan tool"),
    ("Measure a distance", "Measure tool: drag, or click start and end"),
    ("Fit to window", "Double-click"),
)


def user_message(exc: BaseException, path: Path | None = None) -> str:
    """A sentence for the radiologist; domain errors already carry one."""
    if isinstance(exc, CXRError):
        return exc.message
    name = path.name if path is not None else "the file"
    if isinstance(exc, MemoryError):
        return f"Not enough memory to open {name}. Close other programs and try again."
    return f"Could not open {name} because of an unexpected error ({type(exc).__name__}). Details are in the log."


def _part(key: str, doc: str) -> Any:
    """A read-only window attribute for the feature part registered under ``key`` (None when not installed)."""
    return property(lambda self: self.action_map.part(key), doc=doc)


class MainWindow(QMainWindow):
    """The viewer window. ``interactive=False`` (screenshots, batch) never opens dialogs."""

    idle = Signal()  # all background work has finished
    closing = Signal()  # the window is closing (settings saved): features stop their work
    image_loaded = Signal(object)  # ImageRecord
    load_failed = Signal(str)  # the message shown to the user

    def __init__(
        self,
        session: Session | None = None,
        settings: QSettings | None = None,
        *,
        interactive: bool = True,
        persist: bool = True,
        models_dir: Path | None = None,
        models: ModelService | None = None,
        workspace: Workspace | None = None,
        owns_models: bool | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.settings = settings if settings is not None else QSettings(ORGANIZATION, APPLICATION)
        # the reader's workspace: the film shown and its analysis (the session is the workspace's), the enabled
        # models, site profile, thresholds and corrections; one, read by every feature
        self.workspace = workspace if workspace is not None else Workspace(QtSettings(self.settings), session=session)
        self.session = self.workspace.session
        if session is not None and session is not self.session:
            raise ValueError("a window shows its workspace's session: pass the session to the Workspace")
        self.interactive = interactive
        self.persist = persist
        self.models_dir = models_dir
        self.last_error: str | None = None
        self.error_dialog: QMessageBox | None = None
        self._current_path: Path | None = None
        self._panels: list[QDockWidget] = []
        self._hidden_docks: list[QDockWidget] = []
        self._state_restored = False
        # every action by key (the shortcuts dialog lists them), the menus, and the features' parts by name
        self.action_map = ActionRegistry(self)
        self.recent = RecentFiles(self.settings, persist=persist, parent=self)  # also where file dialogs start
        self.mouse_help: list[tuple[str, str]] = list(MOUSE_HELP)  # (gesture, how) rows of the shortcuts dialog

        self.setWindowTitle("cxr-viewer")
        self.setAcceptDrops(True)
        self.setDockOptions(QMainWindow.DockOption.AnimatedDocks | QMainWindow.DockOption.AllowTabbedDocks)
        self.runner = TaskRunner(self.session.work, self)  # counted on the viewer's busy counter
        self.runner.error.connect(self.session.report_error)
        # THE model service of this process (one pool, one engine, one model queue): built by the composition
        # root (cxr_viewer.qt.app) and handed to every feature that scores a film; reading never waits for it.
        self._owns_models = models is None if owns_models is None else owns_models  # shut down on close
        self.models = models if models is not None else ModelService()
        self.analysis = AnalysisController(self.session, self.settings, models_dir=models_dir, models=self.models,
                                           workspace=self.workspace, parent=self)
        self.models_dialog: QDialog | None = None

        self.canvas = ImageCanvas(self.session, self)
        self.setCentralWidget(self.canvas)
        self._build_docks()
        self._build_actions()
        self._build_menus()
        self._build_toolbar()
        self._build_status_bar()
        self._build_analysis_panels()
        self._connect()
        # the features (Export menu, worklist, reading tools, site calibration) come from the composition root,
        # which then calls restore_layout()

    def restore_layout(self) -> None:
        """Every dock is in place: size them, then restore the reader's saved layout and preferences."""
        # the film in the middle, every finding row and its badge on the right
        self.resizeDocks([self.studies_dock, self.findings_dock], [LEFT_DOCK_PX, self.findings_panel.preferred_width()],
                         Qt.Orientation.Horizontal)
        self._restore_settings()
        self.canvas.set_mode("pan")

    @property
    def current_path(self) -> Path | None:
        """The file of the film on screen (None before the first one opens)."""
        return self._current_path

    @property
    def layout_restored(self) -> bool:
        """Whether the reader's saved dock layout was restored (else features lay their docks out)."""
        return self._state_restored

    # The features' parts as the composition root installed them (None when one is not), for scripts and
    # tests; features themselves look each other up in the registry. Typed loosely: the window (below the
    # features in qt's layers) imports none of them.
    export_actions = _part("export", "The Export menu's :class:`~cxr_viewer.qt.export_menu.ExportActions`.")
    worklist_panel = _part("worklist", "The worklist dock's :class:`~cxr_viewer.qt.worklist.WorklistPanel`.")
    worklist_dock = _part("worklist_dock", "The worklist's dock.")
    reading = _part("reading", "The :class:`~cxr_viewer.qt.reading.ReadingTools` (``compare``: current | prior).")
    site_calibration = _part("site_calibration", "The :class:`~cxr_viewer.qt.site_wizard.SiteCalibrationHook` "
                             "(wizard, active profile, drift banner).")

    # ------------------------------------------------------------------ construction
    def _build_docks(self) -> None:
        self.study_browser = StudyBrowser(self)
        self.studies_dock = self._dock(self.study_browser, "Studies", "dock_studies", Qt.DockWidgetArea.LeftDockWidgetArea)
        self.tag_browser = TagBrowser(self)
        # A resizable window of its own (not a squashed dock strip); ``tags_dock`` is kept as its name.
        self.tags_window = TagWindow(self.tag_browser, self.settings, self)
        self.tags_dock = self.tags_window
        self.resizeDocks([self.studies_dock], [LEFT_DOCK_PX], Qt.Orientation.Horizontal)

    def _dock(self, widget: QWidget, title: str, name: str, area: Qt.DockWidgetArea) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)  # needed for saveState/restoreState
        dock.setWidget(widget)
        dock.setFeatures(
            QDockWidget.DockWidgetFeature.DockWidgetClosable
            | QDockWidget.DockWidgetFeature.DockWidgetMovable
            | QDockWidget.DockWidgetFeature.DockWidgetFloatable
        )
        self.addDockWidget(area, dock)
        return dock

    def _preset(self, name: str) -> None:
        """A window preset, said in the status bar (the same keys label studies while the worklist table has focus)."""
        self.session.apply_preset(name)
        self.statusBar().showMessage(f"Window preset: {name}", 3000)

    def add_panel(self, widget: QWidget, title: str, area: Qt.DockWidgetArea = Qt.DockWidgetArea.RightDockWidgetArea,
                  *, hidden: bool = False) -> QDockWidget:
        """Dock a panel (findings, heatmap controls, report...) on the right; returns its dock.

        ``hidden``: not shown until asked for, unless the reader's saved layout shows it.
        """
        slug = "".join(ch if ch.isalnum() else "_" for ch in title.lower())
        dock = self._dock(widget, title, f"panel_{slug}", area)
        self._panels.append(dock)
        restored = self._state_restored and self.restoreDockWidget(dock)
        if not restored:
            dock.show()  # a panel the saved layout does not know yet
        self._panels_menu.addAction(dock.toggleViewAction())
        if hidden and not restored:
            dock.hide()  # until its feature asks for it; a saved layout that showed it brings it back
        return dock

    @property
    def panels(self) -> list[QDockWidget]:
        return list(self._panels)

    def _build_actions(self) -> None:
        s, c = self.session, self.canvas
        a = self.action_map.add
        a("open_file", "&Open File…", self.open_file_dialog, QKeySequence.StandardKey.Open, "open", "Open a DICOM, PNG or JPEG file")
        a("open_folder", "Open &Folder…", self.open_folder_dialog, "Ctrl+Shift+O", "folder", "Scan a folder into the study browser")
        a("export_view", "&Export View as PNG…", self.export_view_dialog, "Ctrl+E", "export", "Save what the canvas shows as a PNG")
        a("quit", "&Quit", self.close, "Ctrl+Q")  # the platform key set of some desktops (and offscreen) has none

        a("fit", "&Fit to Window", c.fit, "F", "fit")
        a("actual_size", "Actual &Size (1:1)", c.actual_size, "Ctrl+0", "actual", "One image pixel per screen pixel")
        a("zoom_in", "Zoom &In", lambda: c.zoom_by(float(s.preference("zoom_step"))), ["+", "=", "Ctrl++"], "zoom_in")
        a("zoom_out", "Zoom &Out", lambda: c.zoom_by(1.0 / float(s.preference("zoom_step"))), ["-", "Ctrl+-"], "zoom_out")
        a("rotate_cw", "Rotate &Right 90°", lambda: s.rotate(90), "R", "rotate")
        a("rotate_ccw", "Rotate &Left 90°", lambda: s.rotate(-90), "Shift+R")
        a("flip_h", "Flip &Horizontal", s.flip_horizontal, "H", "flip_h")
        a("flip_v", "Flip &Vertical", s.flip_vertical, "V", "flip_v")
        a("invert", "&Invert", s.toggle_invert, "I", "invert", "Invert grey levels", checkable=True)
        a("reset", "&Reset View", s.reset_display, "Home", "reset", "Default window, no rotation, fitted")
        a("demographics", "Show &Demographics", lambda on: s.set_preference("show_demographics", on), "D",
          tip="Show patient name, ID, age and date on the image", checkable=True)
        a("toggle_panels", "Hide/Show &Panels", self.toggle_panels, "Ctrl+B")
        a("fullscreen", "F&ull Screen", self.toggle_fullscreen, "F11")

        self.preset_group = QActionGroup(self)
        self.preset_group.setExclusionPolicy(QActionGroup.ExclusionPolicy.ExclusiveOptional)
        from cxr_viewer.core.session import window_presets

        for key, name in zip(PRESET_KEYS, window_presets()):
            act = a(f"preset_{name}", f"{name}", lambda _=False, n=name: self._preset(n), key,
                    tip=f"Window preset: {name}", checkable=True)
            self.preset_group.addAction(act)

        self.mode_group = QActionGroup(self)
        for mode, text, key, ic in (
            ("pan", "&Pan Tool", "P", "pan"),
            ("measure", "&Measure Distance", "M", "measure"),
            ("window", "&Window/Level Tool", "W", "window"),
        ):
            act = a(f"mode_{mode}", text, lambda _=False, m=mode: c.set_mode(m), key, ic, checkable=True)
            self.mode_group.addAction(act)
        self.action_map["mode_pan"].setChecked(True)
        a("clear_measurements", "&Clear Measurements", s.clear_measurements, ["Delete", "Backspace"])
        tags = self.tags_window.toggleViewAction()
        tags.setText("DICOM &Tag Browser")
        tags.setShortcut(QKeySequence("Ctrl+T"))
        tags.setIcon(icon("tags"))
        tags.setToolTip("DICOM tag browser  (Ctrl+T)")
        self.action_map.register("tag_browser", tags)
        studies = self.studies_dock.toggleViewAction()
        studies.setText("&Study Browser")
        studies.setShortcut(QKeySequence("Ctrl+Shift+B"))
        self.action_map.register("study_browser", studies)

        a("models", "&Models…", self.show_models, "Ctrl+Shift+M", tip="Installed models: model cards, enable, add")
        a("reanalyze", "Analyse &Again", self.analysis.rerun, "Ctrl+R", tip="Run the models on this image again")
        self.device_group = QActionGroup(self)
        for dev in DEVICES:
            act = a(f"device_{dev}", {"auto": "&Automatic (GPU when present)", "cpu": "&CPU",
                                      "cuda": "NVIDIA &CUDA GPU", "mps": "Apple &MPS GPU"}[dev],
                    lambda _=False, d=dev: self.set_device(d), checkable=True,
                    tip=f"Run the models on: {dev}")
            self.device_group.addAction(act)
        self.action_map[f"device_{self.analysis.device}"].setChecked(True)

        a("shortcuts", "&Keyboard Shortcuts", self.show_shortcuts, ["F1", "?"])
        a("about", "&About cxr-viewer", self.show_about)

    def _build_menus(self) -> None:
        bar, menus = self.menuBar(), self.action_map
        m = menus.add_menu("file", bar.addMenu("&File"))
        m.addAction(self.action_map["open_file"])
        m.addAction(self.action_map["open_folder"])
        self.recent_menu = menus.add_menu("recent", m.addMenu("Open &Recent"))
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        m.addSeparator()
        m.addAction(self.action_map["export_view"])
        m.addSeparator()
        m.addAction(self.action_map["quit"])
        self.file_menu = m

        m = menus.add_menu("view", bar.addMenu("&View"))
        for key in ("fit", "actual_size", "zoom_in", "zoom_out"):
            m.addAction(self.action_map[key])
        m.addSeparator()
        for key in ("rotate_cw", "rotate_ccw", "flip_h", "flip_v", "invert"):
            m.addAction(self.action_map[key])
        m.addSeparator()
        presets = menus.add_menu("presets", m.addMenu("Window &Presets"))
        for act in self.preset_group.actions():
            presets.addAction(act)
        self.presets_menu = presets
        m.addAction(self.action_map["reset"])
        m.addSeparator()
        m.addAction(self.action_map["demographics"])
        panels = menus.add_menu("panels", m.addMenu("P&anels"))
        panels.addAction(self.action_map["study_browser"])
        panels.addAction(self.action_map["tag_browser"])
        self._panels_menu = panels
        m.addAction(self.action_map["toggle_panels"])
        m.addAction(self.action_map["fullscreen"])
        self.view_menu = m

        m = menus.add_menu("tools", bar.addMenu("&Tools"))
        for act in self.mode_group.actions():
            m.addAction(act)
        m.addAction(self.action_map["clear_measurements"])
        m.addSeparator()
        m.addAction(self.action_map["tag_browser"])
        m.addSeparator()
        m.addAction(self.action_map["models"])
        m.addAction(self.action_map["reanalyze"])
        device = menus.add_menu("device", m.addMenu("Compute &Device"))
        for act in self.device_group.actions():
            device.addAction(act)
        self.device_menu = device
        self.tools_menu = m

        m = menus.add_menu("help", bar.addMenu("&Help"))
        m.addAction(self.action_map["shortcuts"])
        m.addAction(self.action_map["about"])

    def _build_toolbar(self) -> None:
        tb = QToolBar("Main toolbar", self)
        tb.setObjectName("toolbar_main")
        tb.setIconSize(QSize(22, 22))
        tb.setMovable(False)
        for key in ("open_file", "open_folder", None, "mode_pan", "mode_measure", "mode_window", "presets", None,
                    "fit", "actual_size", "zoom_in", "zoom_out", None, "rotate_cw", "flip_h", "flip_v", "invert",
                    "reset", None, "tag_browser", "export_view"):
            if key is None:
                tb.addSeparator()
            elif key == "presets":
                self.preset_button = QToolButton(tb)
                self.preset_button.setObjectName("presetButton")
                self.preset_button.setMenu(self.presets_menu)
                self.preset_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
                self.preset_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
                self.preset_button.setToolTip("Window presets (keys 1-6)")
                self.preset_button.setText("Default")
                self.preset_button.setMinimumWidth(96)
                tb.addWidget(self.preset_button)
            else:
                tb.addAction(self.action_map[key])
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, tb)
        self.toolbar = tb

    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        sb.setSizeGripEnabled(False)
        self.busy_bar = QProgressBar(self)
        self.busy_bar.setRange(0, 0)  # indeterminate: reading has no meaningful percentage
        self.busy_bar.setFixedWidth(110)
        self.busy_bar.setTextVisible(False)
        self.busy_bar.hide()
        self.pixel_label = QLabel("", self)
        self.window_label = QLabel("", self)
        self.zoom_label = QLabel("", self)
        self.spacing_label = QLabel("", self)
        self.analysis_label = QLabel("", self)
        self.analysis_label.setObjectName("analysisProgress")
        for w in (self.pixel_label, self.window_label, self.zoom_label, self.spacing_label, self.analysis_label):
            w.setTextFormat(Qt.TextFormat.PlainText)
        self.pixel_label.setMinimumWidth(230)
        self.notes_label = QLabel("")
        self.notes_label.setObjectName("fileNotes")
        self.notes_label.setStyleSheet("color:#ffd591;")
        self.notes_label.hide()
        sb.addPermanentWidget(self.notes_label)
        sb.addPermanentWidget(self.analysis_label)
        sb.addPermanentWidget(self.busy_bar)
        sb.addPermanentWidget(self.pixel_label)
        sb.addPermanentWidget(self.window_label)
        sb.addPermanentWidget(self.zoom_label)
        sb.addPermanentWidget(self.spacing_label)
        sb.showMessage("Ready: drop a chest X-ray or a folder, or press Ctrl+O")

    def _build_analysis_panels(self) -> None:
        """Findings on the right, heatmap controls and the report below them."""
        self.findings_panel = FindingsPanel(self.analysis, self)
        self.heatmap_panel = HeatmapPanel(self.analysis, self.session, self)
        self.report_panel = ReportPanel(self.analysis, self.session, self)
        self.findings_dock = self.add_panel(self.findings_panel, "Findings")
        self.heatmap_dock = self.add_panel(self.heatmap_panel, "Heatmap")
        self.report_dock = self.add_panel(self.report_panel, "Report")
        if not self._state_restored:
            self.tabifyDockWidget(self.heatmap_dock, self.report_dock)
            self.heatmap_dock.raise_()
            self.resizeDocks([self.findings_dock], [self.findings_panel.preferred_width()], Qt.Orientation.Horizontal)
            # every finding row and badge above the fold at the default 1400x900
            self.resizeDocks([self.findings_dock, self.heatmap_dock], [600, 220], Qt.Orientation.Vertical)

    def _connect(self) -> None:
        ev = self.session.events
        ev.display_changed.connect(self._on_display)
        ev.record_changed.connect(self._on_record)
        ev.studies_changed.connect(self.study_browser.set_patients)
        ev.open_files_changed.connect(self.study_browser.set_opened_files)
        ev.busy_changed.connect(self._on_busy)
        ev.error.connect(self._on_session_error)
        ev.preferences_changed.connect(self._on_preference)
        self.canvas.pixel_hovered.connect(self._on_pixel)
        self.canvas.files_dropped.connect(self.open_paths)
        self.canvas.mode_changed.connect(self._on_mode)
        self.study_browser.open_requested.connect(self.open_file)
        self.image_loaded.connect(self.analysis.analyze)
        self.analysis.error.connect(lambda title, message: self.show_error(message, title))
        self.analysis.progress.connect(self._on_analysis_progress)

    def _disconnect(self) -> None:
        ev = self.session.events
        for sig, slot in (
            (ev.display_changed, self._on_display),
            (ev.record_changed, self._on_record),
            (ev.studies_changed, self.study_browser.set_patients),
            (ev.open_files_changed, self.study_browser.set_opened_files),
            (ev.busy_changed, self._on_busy),
            (ev.error, self._on_session_error),
            (ev.preferences_changed, self._on_preference),
        ):
            sig.disconnect(slot)
        self.canvas.disconnect_session()
        self.heatmap_panel.disconnect_session()
        self.report_panel.disconnect_session()

    # ------------------------------------------------------------------ opening
    def open_paths(self, paths: Iterable[str | Path]) -> None:
        """Open files and folders (command line, drop, dialogs): folders go to the study browser."""
        files: list[Path] = []
        for p in (Path(x) for x in paths):
            if p.is_dir():
                self.open_folder(p)
            else:
                files.append(p)
        for p in files[1:]:
            if p.is_file():
                self.session.add_open_file(p)
        if files:
            self.open_file(files[0])

    def open_file(self, path: str | Path) -> Task:
        """Read an image off the GUI thread; a newer request supersedes this one."""
        path = Path(path)
        self.statusBar().showMessage(f"Opening {path.name}…")
        return self.runner.submit(
            _read_image, path, channel="load",
            on_result=lambda rec, p=path: self._on_loaded(p, rec),
            on_error=lambda exc, p=path: self._on_load_error(p, exc),
        )

    def open_folder(self, folder: str | Path) -> Task:
        """Scan a folder (headers only) into the study browser, then make thumbnails."""
        folder = Path(folder)
        self.statusBar().showMessage(f"Scanning {folder.name}…")
        return self.runner.submit(
            _scan_folder, folder,
            on_result=lambda result, f=folder: self._on_scanned(f, result),
            on_error=lambda exc, f=folder: self.show_error(user_message(exc, f), "Could not scan the folder"),
        )

    def _on_loaded(self, path: Path, record: ImageRecord) -> None:
        self._current_path = path
        self.session.set_record(record)
        self.add_recent(path)
        self.setWindowTitle(f"{path.name} — cxr-viewer")
        lo, hi = self.session.display.window
        if not self.study_browser.has_thumbnail(path):
            self.study_browser.set_thumbnail(path, thumbnail_array(record.pixels, lo, hi))
        self.study_browser.select_path(path)
        n = len(record.notices)
        # the notes stay in the status bar while this file is open (a message would be gone before it is hovered)
        self.notes_label.setText(f"{n} note{'s' if n > 1 else ''} on this file (hover to read)" if n else "")
        self.notes_label.setToolTip("\n".join(record.notices))
        self.notes_label.setVisible(bool(n))
        self.statusBar().showMessage(f"Opened {path.name}", 15000)
        self.image_loaded.emit(record)

    def _on_load_error(self, path: Path, exc: BaseException) -> None:
        if not isinstance(exc, CXRError):
            log.error("unexpected error while reading an image", exc_info=exc)
        self.show_error(user_message(exc, path), "Could not open image")

    def _on_scanned(self, folder: Path, result: Any) -> None:
        patients = list(result)
        skipped = list(getattr(result, "skipped", []))
        if patients:
            self.session.add_studies(patients)
            msg = f"Found {sum(len(p.instances) for p in patients)} image(s) in {folder.name}"
            if skipped:
                msg += f"; skipped {len(skipped)} file(s) that are not readable images"
            self.statusBar().showMessage(msg, 15000)
            if self.session.record is None:
                first = patients[0].instances[0].path
                self.open_file(first)
            self._queue_thumbnails()
        else:
            reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:3])
            self.show_error(
                f"No readable chest X-ray images were found in {folder.name}." + (f" ({reasons})" if reasons else ""),
                "Nothing to show",
            )

    def _queue_thumbnails(self) -> None:
        paths = self.study_browser.missing_thumbnails()
        if paths:
            self.runner.submit(_thumbnails, paths, on_progress=self._on_thumbnail)

    def _on_thumbnail(self, item: tuple[Path, Any]) -> None:
        path, thumb = item
        if thumb is not None:
            self.study_browser.set_thumbnail(path, thumb)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Task:
        """Queue other background work (e.g. analysis); it counts for busy/idle."""
        return self.runner.submit(fn, *args, **kwargs)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Process events until no background work is left (screenshots, tests)."""
        deadline = time.monotonic() + timeout_s
        app = QApplication.instance()
        while time.monotonic() < deadline:
            app.processEvents(QEventLoop.ProcessEventsFlag.AllEvents, 50)
            if not self.session.busy and self.runner.pending == 0:
                app.processEvents()
                self.canvas.flush()
                return True
            QThread.msleep(5)
        return False

    # ------------------------------------------------------------------ dialogs
    def open_file_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Open chest X-ray", self.recent.last_dir(), IMAGE_FILTER)
        if paths:
            self.open_paths(paths)

    def open_folder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open folder of studies", self.recent.last_dir())
        if folder:
            self.open_folder(folder)

    def export_view_dialog(self) -> None:
        if self.session.record is None:
            self.statusBar().showMessage("Nothing to export: open an image first", 5000)
            return
        stem = self._current_path.stem if self._current_path else "view"
        path, _ = QFileDialog.getSaveFileName(self, "Export view as PNG", str(Path(self.recent.last_dir()) / f"{stem}_view.png"), "PNG image (*.png)")
        if path:
            self.export_view(path)

    def export_view(self, path: str | Path) -> bool:
        """Save the canvas as shown (window, zoom, overlays, corner text) to a PNG."""
        self.canvas.flush()
        path = Path(path).with_suffix(".png") if Path(path).suffix.lower() != ".png" else Path(path)
        ok = self.canvas.viewport().grab().save(str(path), "PNG")
        if ok:
            self.statusBar().showMessage(f"Saved view to {path.name}", 8000)
        else:
            self.show_error(f"Could not write {path.name}. Check that the folder exists and is writable.", "Export failed")
        return ok

    def show_error(self, message: str, title: str = "Problem") -> None:
        """Tell the user without blocking: status bar always, a modeless dialog when interactive."""
        self.last_error = message
        self.statusBar().showMessage(message, 20000)
        if self.interactive:
            if self.error_dialog is not None:
                self.error_dialog.close()
            box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
            box.setWindowModality(Qt.WindowModality.NonModal)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose, False)
            box.show()
            self.error_dialog = box
        self.load_failed.emit(message)

    def shortcut_rows(self) -> list[tuple[str, str]]:
        """(action, keys) for every action that has a shortcut, then the mouse gestures."""
        rows = []
        for act in self.action_map.values():
            keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in act.shortcuts())
            if keys:
                rows.append((act.text().replace("&", ""), keys))
        return rows + list(self.mouse_help)

    def show_shortcuts(self) -> QDialog:
        dlg = QDialog(self)
        dlg.setWindowTitle("Keyboard shortcuts")
        rows = self.shortcut_rows()
        table = QTableWidget(len(rows), 2, dlg)
        table.setHorizontalHeaderLabels(["Action", "Shortcut"])
        table.verticalHeader().hide()
        table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        for r, (name, keys) in enumerate(rows):
            table.setItem(r, 0, QTableWidgetItem(name))
            table.setItem(r, 1, QTableWidgetItem(keys))
        # the keys keep their width, the action names wrap: nothing needs a sideways scroll
        table.setWordWrap(True)
        table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setStretchLastSection(False)
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, dlg)
        buttons.rejected.connect(dlg.close)
        layout = QVBoxLayout(dlg)
        layout.addWidget(table)
        layout.addWidget(buttons)
        dlg.resize(620, 600)
        dlg.setModal(False)
        dlg.show()
        self.shortcuts_dialog = dlg
        return dlg

    def show_models(self) -> QDialog:
        """Tools › Models…: model cards, enable/disable, add a bundle (non-modal)."""
        from cxr_viewer.qt.panels.models import ModelManagerDialog

        if self.models_dialog is None:
            self.models_dialog = ModelManagerDialog(self.analysis, self)
        else:
            self.models_dialog.refresh()
        self.models_dialog.show()
        self.models_dialog.raise_()
        return self.models_dialog

    def set_device(self, device: str) -> None:
        """Device preference for the models (auto/cpu/cuda/mps), kept in the settings."""
        self.analysis.set_device(device)
        act = self.action_map.get(f"device_{device}")
        if act is not None and not act.isChecked():
            act.setChecked(True)
        self.statusBar().showMessage(f"Models will run on: {device}", 8000)

    def _on_analysis_progress(self, text: str) -> None:
        self.analysis_label.setText(text)

    def show_about(self) -> None:
        from cxr_viewer import __version__

        box = QMessageBox(QMessageBox.Icon.Information, "About cxr-viewer",
                          f"cxr-viewer {__version__}\n\nChest X-ray viewer with local analysis; "
                          "everything runs on this computer.\n\nResearch use only. Not a medical device.",
                          QMessageBox.StandardButton.Ok, self)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.show()

    # ------------------------------------------------------------------ view actions
    def toggle_panels(self) -> None:
        """Hide every dock for a full-size image; pressing again brings the same ones back."""
        docks = [d for d in self.findChildren(QDockWidget) if d.parent() is self]
        visible = [d for d in docks if d.isVisible()]
        if visible:
            self._hidden_docks = visible
            for d in visible:
                d.hide()
        else:
            for d in self._hidden_docks or [self.studies_dock]:
                d.show()
            self._hidden_docks = []

    def toggle_fullscreen(self) -> None:
        self.showNormal() if self.isFullScreen() else self.showFullScreen()

    # ------------------------------------------------------------------ session -> widgets
    def _on_record(self, record: ImageRecord | None) -> None:
        self.tag_browser.set_record(record)
        self.spacing_label.setText(_spacing_text(record))
        self.spacing_label.setToolTip(_spacing_tip(record))

    def _on_display(self, state: DisplayState) -> None:
        from cxr_viewer.core.imaging.windowing import window_in_source_units

        state = self.session.display  # the latest: a fit re-emits from inside the canvas's handler
        c, w = state.center_width
        source = window_in_source_units(self.session.record, state.window)
        if source is not None:
            self.window_label.setText(f"C {source[0]:.0f}  W {source[1]:.0f}")
            self.window_label.setToolTip(f"Window centre/width in the file's own values (C {c:.3f}, W {w:.3f} of the range)")
        else:
            self.window_label.setText(f"C {c:.3f}  W {w:.3f}")
            self.window_label.setToolTip("Window centre/width as a fraction of the image's value range")
        self.zoom_label.setText(f"Zoom {state.zoom * 100:.0f}%")
        inv = self.action_map["invert"]
        if inv.isChecked() != state.invert:
            inv.blockSignals(True)
            inv.setChecked(state.invert)
            inv.blockSignals(False)
        for act in self.preset_group.actions():
            want = act.text() == state.preset
            if act.isChecked() != want:
                act.setChecked(want)
        self.preset_button.setText(f"{state.preset or 'Custom'} window")

    def _on_pixel(self, info: PixelInfo | None) -> None:
        if info is None:
            self.pixel_label.setText("")
        else:
            self.pixel_label.setText(info.text())

    def _on_busy(self, busy: bool) -> None:
        self.busy_bar.setVisible(busy)
        if not busy:
            self.idle.emit()

    def _on_mode(self, mode: str) -> None:
        act = self.action_map.get(f"mode_{mode}")
        if act is not None and not act.isChecked():
            act.setChecked(True)

    def _on_session_error(self, exc: BaseException) -> None:
        self.show_error(user_message(exc), "Problem")

    def _on_preference(self, key: str, value: Any) -> None:
        if key == "show_demographics":
            act = self.action_map["demographics"]
            if act.isChecked() != bool(value):
                act.setChecked(bool(value))
            self.study_browser.set_show_identity(bool(value))
        if self.persist:
            self.settings.setValue(f"preferences/{key}", value)

    # ------------------------------------------------------------------ recent files and settings
    def recent_files(self) -> list[Path]:
        return self.recent.files()

    def add_recent(self, path: Path) -> None:
        self.recent.add(path)

    def _fill_recent_menu(self) -> None:
        menu: QMenu = self.recent_menu
        menu.clear()
        recent = self.recent_files()
        for i, path in enumerate(recent, start=1):
            act = menu.addAction(f"&{i % 10} {path.name}")
            act.setToolTip(str(path.parent))
            act.setEnabled(path.exists())
            act.triggered.connect(lambda _=False, p=path: self.open_paths([p]))
        if not recent:
            menu.addAction("(none)").setEnabled(False)
        else:
            menu.addSeparator()
            menu.addAction("Clear list", self.recent.clear)

    def _restore_settings(self) -> None:
        st = self.settings
        for key, default in DEFAULT_PREFERENCES.items():
            value = st.value(f"preferences/{key}", default, type=type(default))
            self.session.set_preference(key, value)
        show = bool(self.session.preference("show_demographics"))
        self.action_map["demographics"].setChecked(show)
        self.study_browser.set_show_identity(show)
        self.canvas.set_show_demographics(show)
        geometry = st.value("window/geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1400, 900)
        state = st.value("window/state")
        if isinstance(state, QByteArray) and not state.isEmpty():
            self._state_restored = self.restoreState(state)

    def save_settings(self) -> None:
        if not self.persist:
            return
        self.settings.setValue("window/geometry", self.saveGeometry())
        self.settings.setValue("window/state", self.saveState())
        for key, value in self.session.preferences.items():
            self.settings.setValue(f"preferences/{key}", value)
        self.settings.sync()

    # ------------------------------------------------------------------ Qt events
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        paths = dropped_paths(event)
        if paths:
            event.acceptProposedAction()
            self.open_paths(paths)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.tags_window.save_state()
        self.save_settings()  # first: nothing below may lose the user's layout
        self.hide()  # the window goes at once; the work it leaves is cancelled, not awaited
        self.tags_window.hide()
        self.closing.emit()  # the features stop their work (current | prior, annotations...)
        # A model call in flight cannot be interrupted; wait briefly, then leave it to the process exit
        # (cxr_viewer.qt.app.gui_main ends the process without joining such threads).
        self.analysis.shutdown(QUIT_WAIT_MS)
        self.runner.cancel_all()
        self.runner.wait(QUIT_WAIT_MS)
        if self._owns_models:
            self.models.shutdown()
        if self.error_dialog is not None:
            self.error_dialog.close()
        self._disconnect()
        super().closeEvent(event)


# --------------------------------------------------------------------------- worker functions
def _read_image(path: Path) -> ImageRecord:
    from cxr_viewer.core.io import read_image

    return read_image(path)


def _scan_folder(folder: Path) -> Any:
    from cxr_viewer.core.io import scan_folder

    return scan_folder(folder)


def _thumbnails(paths: list[Path]) -> Iterator[tuple[Path, Any]]:
    for path in paths:
        try:
            yield make_thumbnail(path)
        except Exception:  # noqa: BLE001 - a bad file keeps its placeholder, the rest go on
            log.debug("no thumbnail for one file", exc_info=True)
            yield path, None


def _spacing_text(record: ImageRecord | None) -> str:
    if record is None:
        return ""
    if record.spacing_mm is None:
        return "Spacing: unknown (px)"
    from cxr_viewer.core.imaging.geometry import spacing_problem

    r, c = record.spacing_mm
    text = f"Spacing {r:.3f} mm" if abs(r - c) < 1e-6 else f"Spacing {r:.3f} × {c:.3f} mm"
    return ("⚠ " + text + " (implausible)") if spacing_problem(record) else text


def _spacing_tip(record: ImageRecord | None) -> str:
    if record is None:
        return ""
    from cxr_viewer.core.imaging.geometry import describe_spacing, spacing_problem

    problem = spacing_problem(record)
    return describe_spacing(record) + (f"\n{problem}" if problem else "")
