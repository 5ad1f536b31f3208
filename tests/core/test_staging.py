"""Replacing a bundle folder or file: an interrupted write never destroys the previous copy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_viewer.core.staging import STAGING_DIR, recover, staged_dir, staged_file

REPO = Path(__file__).resolve().parents[2]


def _good(dest: Path) -> None:
    dest.mkdir(parents=True)
    (dest / "manifest.json").write_text('{"v": 1}')
    (dest / "model.safetensors").write_bytes(b"old weights")


def test_success_swaps_the_whole_folder(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "b"
    _good(dest)
    with staged_dir(dest) as stage:
        assert stage.parent.name == STAGING_DIR and stage.parent.parent == dest.parent
        (stage / "manifest.json").write_text('{"v": 2}')
    assert (dest / "manifest.json").read_text() == '{"v": 2}'
    assert not (dest / "model.safetensors").exists()  # replaced whole, not merged
    assert sorted(p.name for p in dest.parent.iterdir()) == ["b"]  # no staging left behind


def test_failure_keeps_the_previous_folder(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "b"
    _good(dest)
    with pytest.raises(RuntimeError), staged_dir(dest) as stage:
        (stage / "manifest.json").write_text('{"v": 2}')
        raise RuntimeError("disk full")
    assert (dest / "manifest.json").read_text() == '{"v": 1}'
    assert (dest / "model.safetensors").read_bytes() == b"old weights"
    assert not any((dest.parent / STAGING_DIR).glob("*"))


def test_new_destination_and_files(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "new"
    with staged_dir(dest) as stage:
        (stage / "x").write_text("1")
    assert (dest / "x").read_text() == "1"
    z = tmp_path / "models" / "b.zip"
    z.write_bytes(b"old zip")
    with pytest.raises(OSError), staged_file(z) as part:
        part.write_bytes(b"half")
        raise OSError("copy failed")
    assert z.read_bytes() == b"old zip"
    with staged_file(z) as part:
        part.write_bytes(b"new zip")
    assert z.read_bytes() == b"new zip"


def test_interrupted_two_rename_swap_is_recovered(tmp_path: Path) -> None:
    dest = tmp_path / "models" / "b"
    _good(dest)
    aside = tmp_path / "models" / STAGING_DIR / "b.old-123"
    aside.parent.mkdir()
    dest.rename(aside)  # what a kill between the two renames leaves
    recover(dest)
    assert (dest / "model.safetensors").read_bytes() == b"old weights"


def test_sigkill_while_writing_leaves_the_old_bundle_and_no_visible_copy(tmp_path: Path) -> None:
    from cxr_viewer.core.models.bundle import find_bundles

    dest = tmp_path / "models" / "b"
    _good(dest)
    code = (
        "import os, signal, sys\n"
        "from cxr_viewer.core.staging import staged_dir\n"
        "with staged_dir(sys.argv[1]) as stage:\n"
        "    (stage / 'manifest.json').write_text('{\"v\": 2}')\n"
        "    (stage / 'model.safetensors').write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(dest)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (dest / "model.safetensors").read_bytes() == b"old weights"
    assert [i.path.name for i in find_bundles([dest.parent])] == ["b"]  # the half-written copy is not a bundle
