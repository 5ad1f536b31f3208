"""Fixtures for driving the real main window offscreen, with settings kept in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, QSettings, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication, QWidget

LOAD_TIMEOUT_MS = 60_000


@pytest.fixture(autouse=True)
def _private_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Any QSettings built without a path lands in tmp_path, never in the user's config;
    the user models folder, the model cache and the worklist's result store too."""
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    for scope in (QSettings.Scope.UserScope, QSettings.Scope.SystemScope):
        QSettings.setPath(QSettings.Format.IniFormat, scope, str(tmp_path / "qsettings"))
    monkeypatch.setenv("CXR_VIEWER_MODELS", str(tmp_path / "user_models"))
    monkeypatch.setenv("CXR_VIEWER_CACHE", str(tmp_path / "cache"))
    # the worklist's result store is the model service's cache: each test has its own, never the user's
    monkeypatch.setenv("CXR_VIEWER_WORKLIST_DB", str(tmp_path / "worklist.sqlite"))


@pytest.fixture
def settings_path(tmp_path: Path) -> Path:
    return tmp_path / "viewer.ini"


@pytest.fixture
def make_window(qtbot, settings_path: Path):
    """Factory for a shown MainWindow using a temp settings file; closed after the test."""
    from cxr_viewer.qt.app import compose
    from cxr_viewer.qt.main_window import MainWindow
    from cxr_viewer.qt.theme import apply_dark_theme

    apply_dark_theme(QApplication.instance())
    made = []

    def _make(**kwargs) -> "MainWindow":
        settings = QSettings(str(settings_path), QSettings.Format.IniFormat)
        # Viewer tests run no models unless they bring their own folder of bundles.
        kwargs.setdefault("models_dir", settings_path.parent / "no_models")
        win = compose(settings=settings, **kwargs)  # the window as the app builds it, every feature on it
        qtbot.addWidget(win)
        win.resize(1200, 800)
        win.show()
        qtbot.waitExposed(win)
        made.append(win)
        return win

    yield _make
    for win in made:
        win.analysis.shutdown(5000)
        win.runner.cancel_all()
        win.runner.wait(5000)


@pytest.fixture
def window(make_window):
    return make_window()


@pytest.fixture(scope="session")
def rg1_dicom(dicom_dir: Path) -> Path:
    """NEMA RG1 CR: MONOCHROME1, 15 bits, 1955x1841 (a quarter of that in tests/data), PixelSpacing 0
    (so no usable spacing), orientation L/F."""
    return dicom_dir / "pydicom-data_RG1_UNCR.dcm"


@pytest.fixture(scope="session")
def siim_dicom(repo_root: Path) -> Path:
    """SIIM CR: 1024x1024 with PixelSpacing 0.168 mm."""
    return repo_root / "resources" / "samples" / "siim_cr_chest.dcm"


@pytest.fixture(scope="session")
def nih_png(repo_root: Path) -> Path:
    """NIH PNG: no pixel spacing."""
    return repo_root / "resources" / "samples" / "nih_chest.png"


def load(qtbot, win, path: Path) -> None:
    """Open a file through the window and wait for the worker to deliver it."""
    win.open_paths([path])
    qtbot.waitUntil(lambda: not win.session.busy and win.session.record is not None
                    and win.session.record.source == Path(path), timeout=LOAD_TIMEOUT_MS)
    win.canvas.flush()


def mouse(widget: QWidget, kind: QEvent.Type, pos: QPoint, button: Qt.MouseButton,
          buttons: Qt.MouseButton | None = None) -> None:
    """Send one real QMouseEvent to a widget (the canvas viewport)."""
    held = buttons if buttons is not None else (button if kind != QEvent.Type.MouseButtonRelease else Qt.MouseButton.NoButton)
    local = QPointF(pos)
    ev = QMouseEvent(kind, local, QPointF(widget.mapToGlobal(pos)), button, held, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, ev)


def drag(widget: QWidget, start: QPoint, end: QPoint, button: Qt.MouseButton, steps: int = 5) -> None:
    mouse(widget, QEvent.Type.MouseButtonPress, start, button)
    for i in range(1, steps + 1):
        p = start + (end - start) * (i / steps)
        mouse(widget, QEvent.Type.MouseMove, p, Qt.MouseButton.NoButton, button)
    mouse(widget, QEvent.Type.MouseButtonRelease, end, button)


def wheel(widget: QWidget, pos: QPoint, clicks: int = 1) -> None:
    ev = QWheelEvent(QPointF(pos), QPointF(widget.mapToGlobal(pos)), QPoint(0, 0), QPoint(0, 120 * clicks),
                     Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, ev)


@pytest.fixture
def helpers() -> Iterator[object]:
    class H:
        load = staticmethod(load)
        mouse = staticmethod(mouse)
        drag = staticmethod(drag)
        wheel = staticmethod(wheel)

    yield H
