"""The Qt bridge of the core executor: slow calls leave the GUI thread, what they hand back returns to it.

Requests, generations, cancellation, stale results and the busy counter are the core
:class:`~cxr_viewer.core.executor.Executor`'s; this module only makes its callbacks run on the
GUI thread and turns its events into Qt signals.

The callbacks travel through one queued signal of the runner (what superqt's
``ensure_main_thread`` does with a new QObject per call; those per-call objects, made on a
worker thread and moved to the GUI thread, crashed the process under the every-surface test).
A runner deleted while its work ran (the window closed) receives nothing: the work's result is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from shiboken6 import isValid

from cxr_viewer.core.executor import BusyCounter, Executor, Job

log = logging.getLogger(__name__)

__all__ = ["Task", "TaskRunner"]

#: what :meth:`TaskRunner.submit` returns: the request (its channel, generation and cancel token)
Task = Job


class TaskRunner(QObject):
    """Runs work on a small private thread pool (the core executor); callbacks arrive on the GUI thread.

    ``busy``: the counter running work is counted on (the window's; a private one when not given,
    so the worklist's long batches never make the viewer busy).
    """

    idle = Signal()
    #: a request without ``on_error`` failed, or a callback raised: the exception
    error = Signal(object)
    _posted = Signal(object)  # a callback from a worker thread, run on the runner's (the GUI) thread

    def __init__(self, busy: BusyCounter | None = None, parent: QObject | None = None, max_threads: int = 2) -> None:
        super().__init__(parent)
        self._posted.connect(self._run_posted, Qt.ConnectionType.QueuedConnection)
        self.executor = Executor(threads=max_threads, name="cxr-qt", busy=busy, deliver=self._deliver)
        self.executor.idle.connect(self._on_idle)
        self.executor.error.connect(self._on_error)
        self.destroyed.connect(self.executor.shutdown)  # idle threads end with their runner

    @property
    def busy(self) -> BusyCounter:
        return self.executor.busy

    @property
    def pending(self) -> int:
        return self.executor.pending

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        channel: str | None = None,
        job: Job | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
    ) -> Task:
        """Run ``fn(*args)`` off the GUI thread; a generator's items go to ``on_progress``."""
        return self.executor.submit(fn, *args, channel=channel, job=job, on_result=on_result, on_error=on_error,
                                    on_item=on_progress)

    def request(self, channel: str | None = None) -> Job:
        """A new request of ``channel`` (superseding its last), to build the work's arguments before :meth:`submit`."""
        return self.executor.request(channel)

    def is_current(self, task: Task) -> bool:
        return self.executor.is_current(task)

    def cancel(self, channel: str) -> None:
        self.executor.cancel(channel)

    def cancel_all(self) -> None:
        self.executor.cancel_all()

    def set_sync(self, sync: bool = True) -> None:
        """Run requests inline on the calling thread (tests), like napari's ``force_sync``."""
        self.executor.sync = bool(sync)

    def wait(self, msecs: int = 5000) -> bool:
        """Block until the running work is done (used on shutdown); its callbacks are still queued."""
        return self.executor.wait(msecs / 1000.0)

    # ------------------------------------------------------------------ the bridge
    def _deliver(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the GUI thread, unless the runner is gone by then (the window closed)."""
        try:
            self._posted.emit(callback)
        except RuntimeError:  # the runner was deleted while a model call could not be interrupted
            log.debug("work finished after its runner was deleted; result dropped")

    def _run_posted(self, callback: Callable[[], None]) -> None:
        if isValid(self):
            callback()

    def _on_idle(self) -> None:
        if isValid(self):
            self.idle.emit()

    def _on_error(self, exc: BaseException) -> None:
        if isValid(self):
            self.error.emit(exc)
