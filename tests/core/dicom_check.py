"""Helpers for tests of written DICOM objects: dciodvfy (Debian dicom3tools) and poppler."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def need_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run `apt-get install -y {package}` (.ci/run installs it)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The Error lines dciodvfy prints for one file (warnings are returned by :func:`dciodvfy_warnings`)."""
    out = _dciodvfy(path)
    return [line for line in out.splitlines() if line.startswith("Error")]


def dciodvfy_warnings(path: Path) -> list[str]:
    return [line for line in _dciodvfy(path).splitlines() if line.startswith("Warning")]


def _dciodvfy(path: Path) -> str:
    exe = need_tool("dciodvfy", "dicom3tools")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return proc.stdout + proc.stderr
