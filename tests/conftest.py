"""Shared fixtures.

Real data comes from ``tests/data/`` (a small committed mirror of the shared data folder's
layout, see its README); ``CXR_DATA_DIR`` points the data-driven tests at the full folder instead.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# Never read or write the developer's own user models folder or caches from tests.
_TEST_HOME = tempfile.mkdtemp(prefix="cxr-viewer-tests-")
os.environ["CXR_VIEWER_MODELS"] = os.path.join(_TEST_HOME, "user_models")
os.environ["CXR_VIEWER_PROFILES"] = os.path.join(_TEST_HOME, "site_profiles")
os.environ["CXR_VIEWER_CORRECTIONS"] = os.path.join(_TEST_HOME, "corrections")
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_TEST_HOME, "cache"))

REPO_ROOT = Path(__file__).resolve().parents[1]


TEST_DATA = REPO_ROOT / "tests" / "data"


def data_root() -> Path:
    """``CXR_DATA_DIR`` when set (the full shared data folder: larger runs), else the committed ``tests/data``."""
    return Path(os.environ.get("CXR_DATA_DIR") or TEST_DATA).resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "nih14" / "labels.csv").is_file():
        pytest.fail(f"CXR_DATA_DIR={root} is not a data folder (no nih14/labels.csv); unset it to use tests/data")
    return root


@pytest.fixture(scope="session")
def dicom_dir(data_dir: Path) -> Path:
    return data_dir / "dicom"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
