"""The application installs a tested set: requirements/*.txt lock every package, with hashes, and agree
with pyproject.toml. Regenerate with scripts/lock.sh after changing a dependency."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# The platform the locks are made for (scripts/lock.sh): CPython 3.11 on Linux x86_64.
LOCK_ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7",
            "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
LOCKS = {"viewer.txt": [], "dev.txt": ["dev"], "bundle.txt": ["dev", "bundle"]}


def parse_lock(path: Path) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[Version, int]] = {}
    text = path.read_text()
    for block in re.split(r"\n(?=\S)", text):
        head = block.split("\n", 1)[0]
        if head.startswith("#") or not head.strip():
            continue
        m = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;\\]+)", head)
        assert m, f"{path.name}: not a pinned line: {head!r}"
        pins[canonicalize_name(m.group(1))] = (Version(m.group(2)), block.count("--hash=sha256:"))
    return pins


def requirements_for(extras: list[str]) -> list[Requirement]:
    """pyproject's requirements for the base and ``extras``, following the project's own extras."""
    out: list[Requirement] = []
    todo, seen = list(extras), set()
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for r in PROJECT["optional-dependencies"][extra]:
            req = Requirement(r)
            if canonicalize_name(req.name) == "cxr-viewer":
                todo.extend(req.extras)
            else:
                reqs.append(req)
    for req in reqs:
        if req.marker is None or req.marker.evaluate(LOCK_ENV):
            out.append(req)
    return out


@pytest.mark.parametrize("lock,extras", LOCKS.items())
def test_lock_pins_every_pyproject_requirement_within_its_range(lock: str, extras: list[str]) -> None:
    pins = parse_lock(REPO / "requirements" / lock)
    missing, outside = [], []
    for req in requirements_for(extras):
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            missing.append(str(req))
        elif not req.specifier.contains(pin[0], prereleases=True):
            outside.append(f"{req} (locked {pin[0]})")
    assert not missing and not outside, (
        f"requirements/{lock} disagrees with pyproject.toml; run scripts/lock.sh. "
        f"missing: {missing}; outside the range: {outside}")


@pytest.mark.parametrize("lock", LOCKS)
def test_every_locked_package_is_pinned_with_hashes(lock: str) -> None:
    pins = parse_lock(REPO / "requirements" / lock)
    assert len(pins) > 20
    unhashed = [name for name, (_, hashes) in pins.items() if hashes == 0]
    assert not unhashed, unhashed
    assert "cxr-viewer" not in pins, "the project itself is installed editable on top, not locked"


def test_the_viewer_lock_has_no_torch_and_a_pyside_without_the_none_leak() -> None:
    viewer, dev = parse_lock(REPO / "requirements" / "viewer.txt"), parse_lock(REPO / "requirements" / "dev.txt")
    assert "torch" not in viewer and "nvidia-cublas" not in viewer
    assert str(dev["torch"][0]) == "2.14.1" and str(dev["torchvision"][0]) == "0.29.1"
    for pins in (viewer, dev):
        assert pins["pyside6-essentials"][0].release[:2] != (6, 12)
        assert pins["pyside6-essentials"][0] == pins["shiboken6"][0]
    shared = set(viewer) & set(dev)
    assert all(viewer[n][0] == dev[n][0] for n in shared), "the viewer and dev locks pin one version of each package"


def test_commands_install_through_the_locks() -> None:
    """The README's two commands, CI and the frozen app's build all install from requirements/."""
    readme = (REPO / "README.md").read_text()
    assert "requirements/viewer.txt" in readme and "scripts/test.sh" in readme
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
    assert "--require-hashes -r requirements/dev.txt" in (REPO / "scripts" / "test.sh").read_text()
    assert "requirements/bundle.txt" in (REPO / "packaging" / "build.sh").read_text()
