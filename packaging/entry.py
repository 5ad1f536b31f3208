"""Entry point of the frozen application: the ``cxr-viewer`` command, plus a start-up probe.

With ``CXR_VIEWER_STARTUP_PROBE=1`` the first turn of the Qt event loop after the
main window is shown prints ``STARTUP_READY <seconds since process start>`` and
quits: ``packaging/check_bundle.py`` measures launch-to-usable-window with it.
With ``CXR_VIEWER_GUI_CHECK=1``, ``--screenshot`` also prints what the window's
session holds when it is grabbed (``GUI_FINDINGS``, ``GUI_ERROR``), so the check can
tell an analysed window from one showing an error. Both only wrap Qt methods; the
application code is unchanged.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time

T0 = time.perf_counter()


def _install_probe() -> None:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMainWindow

    original = QApplication.exec

    def probed_exec(*_args: object) -> int:  # exec is static in PySide6; called on the instance here
        def ready() -> None:
            windows = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible()]
            if not windows:
                QTimer.singleShot(10, ready)
                return
            print(f"STARTUP_READY {time.perf_counter() - T0:.3f} {windows[0].windowTitle()!r}", flush=True)
            QApplication.quit()

        QTimer.singleShot(0, ready)
        return original()

    QApplication.exec = probed_exec  # type: ignore[method-assign]


def _install_gui_check() -> None:
    from PySide6.QtWidgets import QWidget

    original = QWidget.grab

    def grab(self: QWidget, *args: object) -> object:
        analysis = getattr(self, "analysis", None)  # the window's analysis controller: the film's judged state
        if analysis is not None and hasattr(analysis, "state"):
            findings = sorted(analysis.state.findings, key=lambda f: -f.score)
            print(f"GUI_FINDINGS {len(findings)} " + " ".join(f"{f.label}={f.score:.4f}" for f in findings[:5]), flush=True)
            print(f"GUI_ERROR {getattr(self, 'last_error', None)!r}", flush=True)
        return original(self, *args)

    QWidget.grab = grab  # type: ignore[method-assign]


def main() -> int:
    multiprocessing.freeze_support()
    if os.environ.get("CXR_VIEWER_STARTUP_PROBE") == "1":
        _install_probe()
    if os.environ.get("CXR_VIEWER_GUI_CHECK") == "1":
        _install_gui_check()
    from cxr_viewer.cli import main as cli_main

    return int(cli_main(sys.argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
