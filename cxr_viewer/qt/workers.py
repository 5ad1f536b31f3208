"""Background work for the viewer: slow calls leave the GUI thread, results come back to it.

A task of a given ``channel`` supersedes the previous task of that channel: its
generation number goes up, and whatever the older task returns is dropped (and a
generator task stops at its next step). Results, progress and errors are always
delivered on the GUI thread through queued Qt signals.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QThreadPool, Signal

from cxr_viewer.core.session import Session

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Task:
    """One unit of background work; ``cancelled`` is read by generator tasks between steps."""

    id: int
    channel: str | None
    generation: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    on_result: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_progress: Callable[[Any], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


class TaskRunner(QObject):
    """Runs tasks on a small private thread pool and counts them as session work."""

    _done = Signal(object, object, object)  # task, result, exception
    _step = Signal(object, object)  # task, yielded value
    idle = Signal()

    def __init__(self, session: Session, parent: QObject | None = None, max_threads: int = 2) -> None:
        super().__init__(parent)
        self._session = session
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._ids = itertools.count(1)
        self._generations: dict[str, int] = {}
        self._active: set[Task] = set()
        self._done.connect(self._on_done)
        self._step.connect(self._on_step)

    @property
    def pending(self) -> int:
        return len(self._active)

    def submit(
        self,
        fn: Callable[..., Any],
        *args: Any,
        channel: str | None = None,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_progress: Callable[[Any], None] | None = None,
    ) -> Task:
        """Run ``fn(*args)`` off the GUI thread; a generator's items go to ``on_progress``."""
        generation = 0
        if channel is not None:
            generation = self._generations.get(channel, 0) + 1
            self._generations[channel] = generation
            for old in self._active:
                if old.channel == channel:
                    old.cancelled.set()
        task = Task(next(self._ids), channel, generation, fn, args, on_result, on_error, on_progress)
        self._active.add(task)
        self._session.begin_work()
        # A plain callable, not QRunnable.create(): Qt deletes an auto-deleting runnable after it
        # runs, and PySide keeps its stale Python wrapper, which a later QObject allocated at the
        # same address can then be handed back as (seen as 'QRunnable has no attribute setText').
        self._pool.start(lambda: self._run(task))
        return task

    def is_current(self, task: Task) -> bool:
        if task.cancelled.is_set():
            return False
        return task.channel is None or self._generations.get(task.channel) == task.generation

    def cancel_all(self) -> None:
        for task in self._active:
            task.cancelled.set()

    def wait(self, msecs: int = 5000) -> bool:
        """Block until the pool's threads are done (used on shutdown)."""
        return self._pool.waitForDone(msecs)

    # worker thread -----------------------------------------------------------
    def _run(self, task: Task) -> None:
        try:
            result = task.fn(*task.args)
            if inspect.isgenerator(result):
                for item in result:
                    if task.cancelled.is_set():
                        result.close()
                        break
                    self._emit(self._step, task, item)
                result = None
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the UI
            self._emit(self._done, task, None, exc)
        else:
            self._emit(self._done, task, result, None)

    @staticmethod
    def _emit(signal: Any, *args: Any) -> None:
        # The window may have closed (and its runner been deleted) while a model call could not be interrupted:
        # a result nobody can receive any more is dropped, not raised on a worker thread.
        try:
            signal.emit(*args)
        except RuntimeError:
            log.debug("task finished after its runner was deleted; result dropped")

    # GUI thread ----------------------------------------------------------------
    def _on_step(self, task: Task, item: Any) -> None:
        if self.is_current(task) and task.on_progress is not None:
            self._call(task.on_progress, item)

    def _on_done(self, task: Task, result: Any, exc: BaseException | None) -> None:
        try:
            if self.is_current(task):
                if exc is not None:
                    if task.on_error is not None:
                        self._call(task.on_error, exc)
                    else:
                        self._session.report_error(exc)
                elif task.on_result is not None:
                    self._call(task.on_result, result)
            else:
                log.debug("dropped a stale result (task %d)", task.id)
        finally:
            self._active.discard(task)
            self._session.end_work()
            if not self._active:
                self.idle.emit()

    def _call(self, fn: Callable[[Any], None], value: Any) -> None:
        try:
            fn(value)
        except Exception as exc:  # noqa: BLE001 - a broken callback must not kill the event loop
            log.exception("error while handling a background result")
            self._session.report_error(exc)
