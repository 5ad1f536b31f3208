"""``cxr-viewer [FILES_OR_FOLDERS...]``: start the window, or render it offscreen to a PNG.

``--screenshot OUT.png FILE`` builds the real main window on Qt's offscreen
platform, waits for every background task, grabs the window and exits: 0 on
success, 2 when the file cannot be shown (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCREENSHOT_SIZE = (1400, 900)  # the window's own default size

#: Every way to run cxr-viewer, listed by ``cxr-viewer --help`` (each sub-command has its own --help).
COMMANDS_HELP = """\
commands (each has its own --help, e.g. cxr-viewer worklist --help):
  cxr-viewer [FILES_OR_FOLDERS...]        open the viewer window
  cxr-viewer analyze FILE... --json OUT   headless analysis as JSON
                                          --cam LABEL, --cam-out DIR, --cam-method M, --report TEXT,
                                          --mask-out DIR, --models DIR, --device cpu|cuda|auto, ...
  cxr-viewer worklist DIR --csv OUT       analyse a folder through the result store, highest abnormality first
  cxr-viewer listen --port N --ae-title T --out DIR
                                          receive studies from a modality or PACS by DICOM C-STORE
  cxr-viewer pacs echo|find|retrieve|send query, retrieve from and send results to a configured PACS
  cxr-viewer export-corrections --out site.csv
                                          the reader's stored corrections as a cxr-train manifest
  cxr-viewer --self-test                  check every installed model bundle's hash and golden scores
  cxr-viewer --screenshot OUT.png FILE    render the real window offscreen to a PNG and exit

without a display (no DISPLAY/WAYLAND_DISPLAY, or QT_QPA_PLATFORM=offscreen):
  cxr-viewer [FILES_OR_FOLDERS...] [--out DIR] [--heatmap FINDING] [--size WxH] [--models DIR]
                                          writes DIR/screenshot.png and DIR/analysis.json (one object per
                                          image; a folder's images all); default DIR: cxr-viewer-output,
                                          the bundled sample without FILES
"""
LOAD_TIMEOUT_S = 180.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cxr-viewer",
        description="Chest X-ray viewer. Open DICOM, PNG or JPEG files, or folders of studies.",
        epilog=COMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="*", metavar="FILES_OR_FOLDERS", help="images or folders to open")
    p.add_argument("--screenshot", metavar="OUT.png", type=Path,
                   help="render the main window offscreen with the files loaded, save it as PNG and exit")
    p.add_argument("--show-demographics", action="store_true",
                   help="show patient name/ID/age/date on the image in --screenshot (hidden by default)")
    p.add_argument("--models", metavar="DIR", type=Path, help="folder of model bundles to use")
    p.add_argument("--heatmap", metavar="FINDING",
                   help="in --screenshot, draw this finding's heatmap (heatmaps are off until asked for)")
    p.add_argument("--out", metavar="DIR", type=Path,
                   help="without a display: folder for screenshot.png and analysis.json (default cxr-viewer-output)")
    p.add_argument("--size", metavar="WxH", default=f"{SCREENSHOT_SIZE[0]}x{SCREENSHOT_SIZE[1]}",
                   help="window size for --screenshot (default %(default)s)")
    return p


def has_display() -> bool:
    """Whether a window can be shown: a display server, or Qt told to draw offscreen."""
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform and platform.split(":")[0] in ("offscreen", "minimal", "vnc", "eglfs", "linuxfb"):
        return True
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # Windows and macOS always have a window server


def _fail(message: str) -> int:
    print(f"cxr-viewer: {message}", file=sys.stderr)
    return 2


def _parse_size(text: str) -> tuple[int, int] | None:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return (w, h) if 320 <= w <= 8000 and 240 <= h <= 8000 else None


def gui_main(argv: "list[str] | argparse.Namespace | None" = None) -> int:
    """The window (or ``--screenshot``); ``argv`` may be arguments already parsed by :func:`build_parser`."""
    if isinstance(argv, argparse.Namespace):
        args = argv
    else:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.models is not None and not args.models.is_dir():
        return _fail(f"the models folder {args.models} does not exist")
    if args.screenshot is not None:
        return _screenshot(args)
    if not has_display():
        return _fail(
            "no display found, so no window can open. Use `cxr-viewer --screenshot OUT.png FILE` "
            "to render an image, or `cxr-viewer analyze FILE --json` for results."
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = _application()
    window = compose(models_dir=args.models)
    window.show()
    if args.paths:
        window.open_paths(args.paths)  # the first analysis loads the models itself
    else:
        from PySide6.QtCore import QTimer

        # models loaded and warmed on the worker once the window is up, so the first image waits for none of it
        QTimer.singleShot(0, window.analysis.warm_up)
    rc = int(app.exec())
    exit_now(rc)
    return rc  # pragma: no cover - exit_now does not return


#: The features installed on the window, in their default order (any order works: they find each other's
#: parts through the window's action registry, whenever those are installed).
FEATURES = ("export", "worklist", "reading", "site_calibration")


def compose(settings: Any = None, *, models: Any = None, workspace: Any = None,
            features: Sequence[str] = FEATURES, **kwargs: Any) -> Any:
    """The composition root: the process's one model service and the reader's workspace, built once; the
    window (the frame); then each feature, built with the services it needs (the window's action registry,
    the recent files, the model service, the workspace); then the reader's saved layout.

    ``models`` / ``workspace``: given ones are used instead (tests, benchmarks); ``features``: which to
    install and in what order; ``kwargs`` go to :class:`~cxr_viewer.qt.main_window.MainWindow`.
    """
    from PySide6.QtCore import QSettings

    from cxr_viewer.core.analysis import ModelService
    from cxr_viewer.core.workspace import Workspace
    from cxr_viewer.qt.analysis import QtSettings
    from cxr_viewer.qt.main_window import APPLICATION, ORGANIZATION, MainWindow

    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(FEATURES)}")
    settings = settings if settings is not None else QSettings(ORGANIZATION, APPLICATION)
    owns_models = models is None  # a service built here ends with the window; a given one with its giver
    models = models if models is not None else ModelService()
    # the workspace holds the film shown (its session) and that film's analysis
    if workspace is None:
        workspace = Workspace(QtSettings(settings), session=kwargs.pop("session", None))
    window = MainWindow(settings=settings, models=models, workspace=workspace, owns_models=owns_models, **kwargs)
    for name in features:
        _install(name, window, models=models, workspace=workspace)
    window.restore_layout()
    return window


def _install(name: str, window: Any, *, models: Any, workspace: Any) -> None:
    """One feature on ``window``; each registers its actions, menus and parts in ``window.action_map``."""
    actions = window.action_map
    if name == "export":  # Export menu: reports, DICOM results, anonymised study
        from cxr_viewer.qt.export_menu import install_export_menu

        install_export_menu(window, actions=actions, recent=window.recent)
    elif name == "worklist":  # the triage worklist dock: the one model service, its result store as the cache
        from cxr_viewer.qt.worklist import install_worklist

        install_worklist(window, actions=actions, models=models, workspace=workspace)
    elif name == "reading":  # measurement tools, overlays, navigation, annotations, current | prior
        from cxr_viewer.qt.reading import ReadingTools

        ReadingTools(window, actions=actions, models=models)
    elif name == "site_calibration":  # site profile: wizard, Tools entries, drift banner
        from cxr_viewer.qt.site_wizard import SiteCalibrationHook

        SiteCalibrationHook(window, actions=actions, models=models, workspace=workspace)


def exit_now(rc: int) -> None:
    """End the process at once after the window closed (settings are already written).

    A model call still running on a worker thread (a heatmap, a warm-up) cannot be
    interrupted, and Qt's thread pool and Python's exit would both wait for it: tens
    of seconds on a busy CPU. Logs and streams are flushed, then the process ends.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


#: Qt platform-plugin chatter that says nothing to a user (offscreen and some X servers print it on start-up).
QUIET_QT_MESSAGES = ("This plugin does not support propagateSizeHints()", "This plugin does not support raise()")
_previous_handler = None


def _qt_message(mode, context, message: str) -> None:  # noqa: ANN001 - Qt's handler signature
    if message in QUIET_QT_MESSAGES:
        return
    if _previous_handler is not None:
        _previous_handler(mode, context, message)
    else:
        print(message, file=sys.stderr)


def install_message_filter() -> None:
    """Drop the platform plugin's harmless "does not support ..." lines; everything else still prints."""
    global _previous_handler
    from PySide6.QtCore import qInstallMessageHandler

    if _previous_handler is None:
        _previous_handler = qInstallMessageHandler(_qt_message) or None


def _application():  # -> QApplication
    from PySide6.QtWidgets import QApplication

    install_message_filter()

    from cxr_viewer.qt.main_window import APPLICATION, ORGANIZATION
    from cxr_viewer.qt.theme import apply_dark_theme

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "cxr-viewer"])
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationName(APPLICATION)
    app.setApplicationDisplayName("cxr-viewer")
    apply_dark_theme(app)
    return app


def _screenshot(args: argparse.Namespace) -> int:
    if not args.paths:
        return _fail("--screenshot needs a file or folder to show")
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        return _fail(f"{Path(missing[0]).name} does not exist (was it moved or deleted?)")
    size = _parse_size(args.size)
    if size is None:
        return _fail(f"--size must look like {SCREENSHOT_SIZE[0]}x{SCREENSHOT_SIZE[1]}, not {args.size!r}")
    out = Path(args.screenshot)
    if not out.parent.exists():
        return _fail(f"the folder {out.parent} does not exist")
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # must be set before the QApplication exists
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = _application()
    from PySide6.QtCore import QSettings

    with tempfile.TemporaryDirectory() as tmp:
        # A throwaway settings file: a screenshot neither reads nor changes the user's layout.
        settings = QSettings(str(Path(tmp) / "screenshot.ini"), QSettings.Format.IniFormat)
        window = compose(settings=settings, interactive=False, persist=False, models_dir=args.models)
        if args.heatmap:
            window.analysis.set_shown_cam(args.heatmap)  # asked before the film opens: drawn on it
        window.session.set_preference("show_demographics", bool(args.show_demographics))
        window.resize(*size)
        window.show()
        app.processEvents()
        window.open_paths(args.paths)
        if not window.wait_idle(LOAD_TIMEOUT_S):
            window.close()
            return _fail("timed out waiting for the image to load")
        if window.session.record is None:
            message = window.last_error or "nothing could be shown"
            window.close()
            return _fail(message)
        app.processEvents()
        if (window.width(), window.height()) != size:  # the docks' minimum sizes win over a small --size
            print(f"cxr-viewer: the window cannot be made {size[0]}x{size[1]}; the screenshot is "
                  f"{window.width()}x{window.height()}", file=sys.stderr)
        ok = window.grab().save(str(out), "PNG")
        window.close()
        app.processEvents()
    if not ok:
        return _fail(f"could not write {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(gui_main())
