"""Replacing a folder or file so that an interrupted write never destroys the good copy.

Everything is written into a staging place beside the destination, on the same file
system, and swapped in at the end: one ``rename`` for a file, one atomic exchange for a
folder on Linux (``renameat2(RENAME_EXCHANGE)``), two renames elsewhere (the window
between them is recovered by :func:`recover` on the next write). A kill, a full disk
or an exception during the write leaves the previous bundle exactly as it was.

Staging lives in a hidden ``.staging`` folder *inside* the destination's parent, two
levels below a models folder, so the bundle scan (which looks one level deep) never
mistakes a half-written copy for a model.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["STAGING_DIR", "recover", "staged_dir", "staged_file", "write_atomic"]

log = logging.getLogger(__name__)

STAGING_DIR = ".staging"
_OLD = ".old-"


def _staging_root(dest: Path) -> Path:
    root = dest.parent / STAGING_DIR
    root.mkdir(parents=True, exist_ok=True)
    return root


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2``); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # an older kernel or a file system without exchange: fall back
    raise OSError(err, os.strerror(err), str(b))


def recover(dest: str | Path) -> None:
    """Put back a previous copy that an interrupted two-rename swap left aside (no-op when none)."""
    dest = Path(dest)
    root = dest.parent / STAGING_DIR
    if dest.exists() or not root.is_dir():
        return
    olds = sorted(root.glob(f"{dest.name}{_OLD}*"), key=lambda p: p.stat().st_mtime_ns)
    if olds:
        olds[-1].rename(dest)
        log.warning("restored %s from an interrupted replacement", dest.name)


@contextlib.contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty folder to fill; on success it replaces ``dest`` in one swap, on failure it is removed."""
    dest = Path(dest)
    recover(dest)
    stage = Path(tempfile.mkdtemp(prefix=f"{dest.name}.", dir=_staging_root(dest)))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} exists and is not a folder")
    if dest.exists():
        if _exchange(stage, dest):
            shutil.rmtree(stage, ignore_errors=True)  # the old copy, now at the staging path
            _tidy(dest)
            return
        old = Path(tempfile.mkdtemp(prefix=f"{dest.name}{_OLD}", dir=stage.parent))
        old.rmdir()
        dest.rename(old)
        stage.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(dest)
    _tidy(dest)


def _tidy(dest: Path) -> None:
    with contextlib.suppress(OSError):
        (dest.parent / STAGING_DIR).rmdir()  # only when empty


@contextlib.contextmanager
def staged_file(dest: str | Path) -> Iterator[Path]:
    """Yield a path to write; on success it replaces ``dest`` with one rename, on failure it is removed.

    The path is a hidden ``.NAME.XXXX.part`` in ``dest``'s own folder (same file system, so the
    rename is atomic): a kill or an error at any point leaves either the old file or the new
    one at ``dest``, never a part of one. Every output file the program writes goes through here.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name[:80]}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    part = Path(name)
    with contextlib.suppress(OSError):  # mkstemp makes it private; an output gets the usual permissions
        os.chmod(part, 0o666 & ~_umask())
    try:
        yield part
        with open(part, "rb+") as fh:  # on disk before the rename: a power cut leaves no empty file
            os.fsync(fh.fileno())
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def write_atomic(dest: str | Path, data: bytes | str, *, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``dest`` through :func:`staged_file`; returns ``dest``."""
    dest = Path(dest)
    with staged_file(dest) as part:
        if isinstance(data, str):
            part.write_text(data, encoding=encoding)
        else:
            part.write_bytes(data)
    return dest
