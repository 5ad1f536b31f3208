"""The command line: `cxr-viewer --screenshot` renders the real window in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from cxr_viewer.qt.app import has_display


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("QT_QPA_PLATFORM", None)  # --screenshot must set offscreen by itself
    e.pop("DISPLAY", None)
    e.pop("WAYLAND_DISPLAY", None)
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # never touch the user's settings
    e.update(env)
    return subprocess.run([sys.executable, "-m", "cxr_viewer.cli", *args], capture_output=True, text=True,
                          timeout=300, env=e, cwd=tmp_path)


def test_screenshot_renders_the_loaded_window(tmp_path, rg1_dicom):
    from PIL import Image

    out = tmp_path / "shot.png"
    proc = _run(["--screenshot", str(out), str(rg1_dicom)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    img = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert img.shape == (900, 1400, 3)
    gray = img.mean(axis=2)
    # dark theme around, a bright radiograph in the middle of the canvas
    assert gray[:, :40].mean() < 60
    centre = gray[300:600, 600:900]
    assert centre.mean() > 90 and centre.std() > 10, "the radiograph is drawn, not an empty canvas"
    assert not (tmp_path / "config").exists() or not any((tmp_path / "config").rglob("*.conf"))
    # patient identity is hidden by default: only --show-demographics writes the patient lines
    # into the canvas' top-left corner (the image may lie under it, so compare the two renders)
    hidden = np.asarray(Image.open(out).convert("L")).astype(int)[60:130, 245:420]
    shown = tmp_path / "shown.png"
    proc = _run(["--screenshot", str(shown), "--show-demographics", str(rg1_dicom)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    corner = np.asarray(Image.open(shown).convert("L")).astype(int)[60:130, 245:420]
    assert corner.max() > 150, "--show-demographics writes the patient lines"
    assert np.mean(np.abs(corner - hidden) > 60) > 0.02, "demographics must be hidden in screenshots by default"


def test_screenshot_bad_file_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 300)
    out = tmp_path / "shot.png"
    proc = _run(["--screenshot", str(out), str(bad)], tmp_path)
    assert proc.returncode == 2
    assert "bad.dcm" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
    proc = _run(["--screenshot", str(out), str(tmp_path / "missing.dcm")], tmp_path)
    assert proc.returncode == 2 and "missing.dcm" in proc.stderr and "Traceback" not in proc.stderr


def test_gui_without_display_opens_no_window(tmp_path, monkeypatch, capsys):
    from cxr_viewer.qt.app import gui_main

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    if sys.platform.startswith("linux"):
        assert not has_display()
        assert gui_main([]) == 2
        assert "--screenshot" in capsys.readouterr().err
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert has_display()


def test_window_start_imports_nothing_heavy(tmp_path):
    code = (
        "import sys\n"
        "from PySide6.QtWidgets import QApplication\n"
        "from PySide6.QtCore import QSettings\n"
        "app = QApplication([])\n"
        "from cxr_viewer.qt.app import compose\n"
        f"w = compose(settings=QSettings({str(tmp_path / 's.ini')!r}, QSettings.Format.IniFormat), persist=False)\n"
        "w.show(); app.processEvents()\n"
        "heavy = [m for m in ('torch', 'torchvision', 'transformers', 'timm', 'matplotlib', 'lightning') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
