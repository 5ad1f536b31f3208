"""Worklist intake: the work behind the worklist dock, without Qt.

A folder (or files received over DICOM) is listed entry by entry through the
:class:`~cxr_viewer.core.worklist.Worklist` (its store holds the models' own scores), and a
listed study's results go back to the PACS judged as its row shows them. The Qt controller
runs these on its worker and only relays what they yield; ``cxr-viewer worklist`` and the
tests can call them directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_viewer.core.errors import AnalysisCancelledError, CXRError
from cxr_viewer.core.inference.results import CancelToken
from cxr_viewer.core.worklist.worklist import Worklist, WorklistEntry

if TYPE_CHECKING:
    from cxr_viewer.core.pacs import RemoteNode

__all__ = ["default_inbox", "intake", "send_results"]


def default_inbox() -> Path:
    """Where studies received over DICOM are written unless the reader chose a folder."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "cxr-viewer" / "inbox"


def intake(worklist: Worklist, folder: Path | None, paths: Sequence[Path], token: CancelToken,
           reconfigure: Callable[[Worklist], Any] | None = None) -> Iterator[tuple[str, Any]]:
    """Entries one by one, with ("progress", (done, total)) between them.

    Yields, in order: ("site", (profile, message, stale)), ("basis", text), ("progress", (0, n)),
    then ("entry", WorklistEntry) and ("progress", (i, n)) per file. ``reconfigure(worklist)``
    runs first (a new site profile, a new enabled set), on the caller's thread: a worker, so it
    never waits for a model being loaded on the GUI thread. A cancelled ``token`` stops it
    between files with :class:`AnalysisCancelledError`; a file that cannot be read becomes an
    entry carrying the message.
    """
    from cxr_viewer.core.io.scan import iter_image_files

    if reconfigure is not None:
        reconfigure(worklist)
    message, stale = worklist.site_status()
    yield "site", (worklist.site_profile, message, stale)
    files = list(paths)
    if folder is not None:
        files += iter_image_files(folder)[0]
    known = worklist.store.files()
    yield "basis", worklist.basis
    yield "progress", (0, len(files))
    for i, f in enumerate(files, start=1):
        token.raise_if_cancelled()
        try:
            entry = worklist.entry(f, cancel=token, known=known)
        except AnalysisCancelledError:
            raise
        except CXRError as exc:
            entry = WorklistEntry(Path(f), None, error=exc.message)
        if entry is not None:
            yield "entry", entry
        yield "progress", (i, len(files))


def send_results(worklist: Worklist, remote: "RemoteNode", path: Path, calling_ae: str) -> int:
    """C-STORE the results of the study at ``path`` (judged as its row shows them); the number of objects stored."""
    from cxr_viewer.core.export.record import annotations_beside
    from cxr_viewer.core.io import read_image
    from cxr_viewer.core.pacs import send_results as store_results

    record = read_image(path)
    judged = worklist.judge(worklist.analyze(record))  # as the row shows it: the SR names the profile
    try:
        annotations = annotations_beside(path, record)
    except (OSError, ValueError, KeyError, TypeError):
        annotations = []  # a damaged sidecar does not stop the results
    return len(store_results(remote, record, judged, calling_ae=calling_ae, annotations=annotations))
