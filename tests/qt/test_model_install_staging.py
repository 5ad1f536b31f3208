"""Installing a bundle copies it into a staging place and swaps it in whole: a copy that fails half-way
keeps the installed version, and no half-copied bundle is ever listed."""

from __future__ import annotations

import os
from pathlib import Path

from tests.qt.bundles import build_classifier

WAIT_MS = 180_000


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_failed_reinstall_keeps_the_installed_bundle(qtbot, make_window, tmp_path: Path) -> None:
    from cxr_viewer.core.models.bundle import find_bundles

    win = make_window(models_dir=tmp_path / "none")
    good = build_classifier(tmp_path / "good", "extra-tiny", ("Pneumonia",), trained=True, seed=5, task="binary")
    win.analysis.add_bundle(good)
    assert win.wait_idle(WAIT_MS / 1000)
    user = Path(win.analysis.model_dirs()[-1])
    installed = user / "extra-tiny-0.0.1"
    before = _files(installed)
    assert "model.safetensors" in before

    # the same name and version again, but one of its files cannot be copied (a dangling link)
    again = build_classifier(tmp_path / "again", "extra-tiny", ("Pneumonia",), trained=True, seed=6, task="binary")
    os.symlink(tmp_path / "nowhere", again / "notes.txt")
    errors: list[tuple[str, str]] = []
    win.analysis.error.connect(lambda title, text: errors.append((title, text)))
    win.analysis.add_bundle(again)
    assert win.wait_idle(WAIT_MS / 1000)
    assert errors and errors[-1][0] == "Model not added"
    assert _files(installed) == before  # the previous install is untouched
    assert [i.path.name for i in find_bundles([user])] == ["extra-tiny-0.0.1"]
