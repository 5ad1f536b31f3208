"""Where resources, bundled models, user models and data live (source tree or frozen app)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "cxr-viewer"


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]  # .../cxr_viewer


def repo_root() -> Path:
    """The source checkout root (parent of the ``cxr_viewer`` package)."""
    return _package_dir().parent


def resources_dir() -> Path:
    """``resources/``: in a PyInstaller app it sits under ``sys._MEIPASS``."""
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    return repo_root() / "resources"


def default_models_dir() -> Path:
    """Bundles shipped with the application."""
    return resources_dir() / "models"


def user_models_dir() -> Path:
    """Per-user bundles (``CXR_VIEWER_MODELS`` overrides), platform-appropriate."""
    env = os.environ.get("CXR_VIEWER_MODELS")
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "models"


def user_data_dir() -> Path:
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_NAME


def user_cache_dir() -> Path:
    """Derived, re-creatable files (ONNX exports keyed by weight hash). ``CXR_VIEWER_CACHE`` overrides."""
    env = os.environ.get("CXR_VIEWER_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local") / APP_NAME / "cache"
        return base
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / APP_NAME


def data_dir() -> Path:
    """Public training/evaluation data: ``CXR_DATA_DIR`` or ``<repo>/../shared/data``."""
    env = os.environ.get("CXR_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return (repo_root().parent / "shared" / "data").resolve()


def user_profiles_dir() -> Path:
    """Site calibration profiles (``CXR_VIEWER_PROFILES`` overrides), beside the user's models."""
    env = os.environ.get("CXR_VIEWER_PROFILES")
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "site_profiles"


def user_corrections_dir() -> Path:
    """The reader's corrections of model findings (``CXR_VIEWER_CORRECTIONS`` overrides)."""
    env = os.environ.get("CXR_VIEWER_CORRECTIONS")
    if env:
        return Path(env).expanduser()
    return user_data_dir() / "corrections"
