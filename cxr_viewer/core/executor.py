"""One executor for every kind of long work: a request gets a generation and a cancel token.

Shaped like napari's layer slicer. A request names its ``channel`` (``"analysis"``,
``"cam"``, ``"worklist"``…); a newer request of the same channel supersedes the older one:
the older one's :class:`~cxr_viewer.core.inference.results.CancelToken` fires, its
generation is no longer current, a generator stops at its next step, and whatever it still
returns (a result, an item, an error) is dropped. A request without a channel supersedes
nothing and is dropped only when it is cancelled itself.

The work runs on a small private thread pool; what it hands back (items, the result,
errors) reaches the caller through ``deliver``, a function that runs a callback where the
caller wants it: inline here, on the GUI thread in the Qt bridge
(:class:`cxr_viewer.qt.workers.TaskRunner`, through a queued Qt signal). Whether a
request is still current is decided there, at delivery, so a request made while a result
was on its way still wins. :meth:`Executor.force_sync` runs everything inline on the
calling thread (tests), like napari's ``force_sync``.

Running work is counted on a :class:`BusyCounter` of its own (the status bar's "busy"),
not on the viewer's state.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal

from cxr_viewer.core.inference.results import CancelToken

log = logging.getLogger(__name__)

__all__ = ["BusyCounter", "Executor", "Job", "inline"]


def inline(callback: Callable[[], None]) -> None:
    """The default ``deliver``: run the callback where the work finished."""
    callback()


class BusyCounter:
    """How much long work is running; ``changed(True)`` when the first starts, ``changed(False)`` when the last ends."""

    changed = Signal(bool)

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._count > 0

    @property
    def count(self) -> int:
        return self._count

    def begin(self) -> None:
        with self._lock:
            self._count += 1
            first = self._count == 1
        if first:
            self.changed.emit(True)

    def end(self) -> None:
        with self._lock:
            if self._count == 0:
                log.warning("end of work counted with no work running")
                return
            self._count -= 1
            last = self._count == 0
        if last:
            self.changed.emit(False)

    @contextmanager
    def working(self) -> Iterator[None]:
        self.begin()
        try:
            yield
        finally:
            self.end()


@dataclass(eq=False)
class Job:
    """One request: its channel, its generation and the token the work reads to stop early."""

    id: int
    channel: str | None
    generation: int
    token: CancelToken = field(default_factory=CancelToken)
    future: Future | None = None

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled


@dataclass(eq=False)
class _Callbacks:
    on_result: Callable[[Any], None] | None
    on_error: Callable[[BaseException], None] | None
    on_item: Callable[[Any], None] | None


class Executor:
    """Requests -> generation -> cancel token; superseded requests cancelled, stale results dropped.

    ``threads``: how many requests run side by side (1: in the order asked).
    ``deliver``: runs each callback (see the module docstring). ``busy``: the counter the
    running requests are counted on (a new one when not given).
    """

    #: a request failed and nobody asked to hear it (no ``on_error``), or a callback raised
    error = Signal(object)
    #: the last running request finished
    idle = Signal()

    def __init__(self, *, threads: int = 1, name: str = "cxr-work", busy: BusyCounter | None = None,
                 deliver: Callable[[Callable[[], None]], None] = inline) -> None:  # fmt: skip
        self.busy = busy if busy is not None else BusyCounter()
        self.deliver = deliver
        self.sync = False
        self._threads = max(1, int(threads))
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        self._ids = itertools.count(1)
        self._generations = itertools.count(1)
        self._current: dict[str, Job] = {}
        self._active: set[Job] = set()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ requests
    def request(self, channel: str | None = None) -> Job:
        """A new request of ``channel``: the channel's last request is cancelled and no longer current."""
        with self._lock:
            job = Job(next(self._ids), channel, next(self._generations))
            if channel is not None:
                old = self._current.get(channel)
                self._current[channel] = job
        if channel is not None and old is not None:
            old.token.cancel()
        return job

    def is_current(self, job: Job) -> bool:
        """Whether what ``job`` hands back is still wanted (not cancelled, not superseded)."""
        if job.token.cancelled:
            return False
        return job.channel is None or self._current.get(job.channel) is job

    def current(self, channel: str) -> Job | None:
        """The channel's current request (None when it was cancelled or never asked)."""
        job = self._current.get(channel)
        return job if job is not None and self.is_current(job) else None

    def cancel(self, channel: str) -> None:
        """Cancel the channel's request; what it still hands back is dropped."""
        with self._lock:
            job = self._current.pop(channel, None)
        if job is not None:
            job.token.cancel()

    def cancel_all(self) -> None:
        """Cancel every request, of every channel and none."""
        with self._lock:
            jobs = list(self._current.values()) + list(self._active)
            self._current.clear()
        for job in jobs:
            job.token.cancel()

    @property
    def pending(self) -> int:
        """Requests submitted and not yet finished (their last callback not yet delivered)."""
        return len(self._active)

    # ------------------------------------------------------------------ running
    def submit(self, fn: Callable[..., Any], *args: Any, channel: str | None = None, job: Job | None = None,
               on_result: Callable[[Any], None] | None = None, on_error: Callable[[BaseException], None] | None = None,
               on_item: Callable[[Any], None] | None = None) -> Job:  # fmt: skip
        """Run ``fn(*args)`` for a new request of ``channel`` (or for ``job``, made by :meth:`request`).

        A generator's items go to ``on_item`` one by one, and it stops at the next step once the
        request is cancelled; its return value (or ``fn``'s) goes to ``on_result``; an exception
        to ``on_error`` (to :attr:`error` without one). Nothing reaches a stale request's callbacks.
        """
        job = job if job is not None else self.request(channel)
        calls = _Callbacks(on_result, on_error, on_item)
        with self._lock:
            self._active.add(job)
        self.busy.begin()
        if self.sync:
            self._run(job, fn, args, calls, inline)
            return job
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix=self._name)
        try:
            job.future = self._pool.submit(self._run, job, fn, args, calls, self.deliver)
        except RuntimeError as exc:  # shut down: the request fails like any other
            self._finish(job, calls, None, exc)
        return job

    @contextmanager
    def force_sync(self) -> Iterator[None]:
        """Run every request submitted inside the block inline, on the calling thread."""
        before, self.sync = self.sync, True
        try:
            yield
        finally:
            self.sync = before

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running requests' work is done (their callbacks may still be on their way)."""
        futures = [j.future for j in list(self._active) if j.future is not None]
        _done, not_done = wait_futures(futures, timeout=timeout)
        return not not_done

    def shutdown(self) -> None:
        """Cancel everything and drop what is queued; a call already running finishes on its own."""
        self.cancel_all()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ worker side
    def _run(self, job: Job, fn: Callable[..., Any], args: tuple[Any, ...], calls: _Callbacks,
             deliver: Callable[[Callable[[], None]], None]) -> None:  # fmt: skip
        result: Any = None
        error: BaseException | None = None
        try:
            if job.token.cancelled:
                job.token.raise_if_cancelled()
            result = fn(*args)
            if inspect.isgenerator(result):
                gen, result = result, None
                try:
                    while not job.token.cancelled:
                        try:
                            item = next(gen)
                        except StopIteration as stop:
                            result = stop.value
                            break
                        if calls.on_item is not None:
                            deliver(lambda item=item: self._item(job, calls, item))
                finally:
                    gen.close()
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the caller
            error = exc
        deliver(lambda: self._finish(job, calls, result, error))

    # ------------------------------------------------------------------ caller side (where ``deliver`` runs)
    def _item(self, job: Job, calls: _Callbacks, item: Any) -> None:
        if self.is_current(job) and calls.on_item is not None:
            self._call(calls.on_item, item)

    def _finish(self, job: Job, calls: _Callbacks, result: Any, error: BaseException | None) -> None:
        try:
            if not self.is_current(job):
                log.debug("dropped what a superseded request returned (request %d)", job.id)
            elif error is not None:
                if calls.on_error is not None:
                    self._call(calls.on_error, error)
                else:
                    self.error.emit(error)
            elif calls.on_result is not None:
                self._call(calls.on_result, result)
        finally:
            with self._lock:
                self._active.discard(job)
                if job.channel is not None and self._current.get(job.channel) is job:
                    del self._current[job.channel]  # done: a later cancel of the channel has nothing to stop
                idle = not self._active
            self.busy.end()
            if idle:
                self.idle.emit()

    def _call(self, fn: Callable[[Any], None], value: Any) -> None:
        try:
            fn(value)
        except Exception as exc:  # noqa: BLE001 - a broken callback must not stop the others
            log.exception("error while handling the result of long work")
            self.error.emit(exc)
