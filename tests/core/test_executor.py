"""The one executor for long work: supersede, cancel, errors, the busy counter and the synchronous switch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cxr_viewer.core.errors import AnalysisCancelledError
from cxr_viewer.core.executor import BusyCounter, Executor
from cxr_viewer.core.inference.results import CancelToken

WAIT_S = 10.0


class MainThread:
    """Stands in for the GUI thread: the worker posts callbacks here, the test runs them when it chooses."""

    def __init__(self) -> None:
        self.posted: queue.Queue[Callable[[], None]] = queue.Queue()

    def deliver(self, callback: Callable[[], None]) -> None:
        self.posted.put(callback)

    def run_until(self, done: Callable[[], bool]) -> None:
        while not done():
            self.posted.get(timeout=WAIT_S)()

    def drain(self, ex: Executor) -> None:
        assert ex.wait(WAIT_S)
        self.run_until(lambda: ex.pending == 0)


@pytest.fixture
def main() -> MainThread:
    return MainThread()


@pytest.fixture
def ex(main: MainThread) -> Iterator[Executor]:
    executor = Executor(threads=2, deliver=main.deliver)
    yield executor
    executor.shutdown()


def test_a_new_request_supersedes_the_last_of_its_channel_and_its_result_is_dropped(ex: Executor,
                                                                                      main: MainThread) -> None:
    started, release = threading.Event(), threading.Event()
    results: list[str] = []

    def slow(token_seen: list[CancelToken]) -> str:
        started.set()
        assert release.wait(WAIT_S)
        return "old"

    seen: list[CancelToken] = []
    first = ex.submit(slow, seen, channel="cam", on_result=results.append)
    assert started.wait(WAIT_S)
    second = ex.submit(lambda: "new", channel="cam", on_result=results.append)
    other = ex.submit(lambda: "segment", channel="segment", on_result=results.append)
    assert first.cancelled and not second.cancelled and not other.cancelled  # other channels untouched
    assert second.generation > first.generation
    assert not ex.is_current(first) and ex.is_current(second)
    release.set()
    main.drain(ex)
    assert sorted(results) == ["new", "segment"]  # the superseded request's result never arrived


def test_a_request_made_while_a_result_is_on_its_way_still_wins(ex: Executor, main: MainThread) -> None:
    results: list[str] = []
    first = ex.submit(lambda: "old", channel="analysis", on_result=results.append)
    assert ex.wait(WAIT_S) and first.future is not None and first.future.done()  # finished, not yet delivered
    ex.submit(lambda: "new", channel="analysis", on_result=results.append)
    main.drain(ex)
    assert results == ["new"]


def test_a_generator_stops_at_its_next_step_once_cancelled(ex: Executor, main: MainThread) -> None:
    steps: list[int] = []
    items: list[int] = []
    gate = threading.Event()
    closed = threading.Event()

    def work() -> Iterator[int]:
        try:
            for i in range(1000):
                steps.append(i)
                yield i
                if i == 2:
                    assert gate.wait(WAIT_S)
        finally:
            closed.set()

    ex.submit(work, channel="worklist", on_item=items.append)
    main.run_until(lambda: len(items) == 3)
    ex.cancel("worklist")
    gate.set()
    assert closed.wait(WAIT_S)
    main.drain(ex)
    assert items == [0, 1, 2] and len(steps) <= 4  # at most the step under way when it was cancelled


def test_the_token_reaches_the_work_and_a_cancelled_error_is_dropped(ex: Executor, main: MainThread) -> None:
    errors: list[BaseException] = []
    job = ex.request("segment")
    started = threading.Event()

    def work(token: CancelToken) -> None:
        started.set()
        while True:
            token.raise_if_cancelled()
            threading.Event().wait(0.01)

    ex.submit(work, job.token, job=job, on_error=errors.append)
    assert started.wait(WAIT_S)
    ex.cancel_all()
    main.drain(ex)
    assert job.cancelled and errors == []  # the work stopped; nobody is told of a cancelled request


def test_errors_reach_the_caller(ex: Executor, main: MainThread) -> None:
    errors: list[BaseException] = []
    unheard: list[BaseException] = []
    ex.error.connect(unheard.append)

    def fails() -> None:
        raise ValueError("broken file")

    def fails_midway() -> Iterator[int]:
        yield 1
        raise OSError("disk gone")

    ex.submit(fails, channel="a", on_error=errors.append)
    ex.submit(fails_midway, channel="b", on_error=errors.append, on_item=lambda _i: None)
    ex.submit(fails)  # no on_error: the executor's error signal carries it
    ex.submit(lambda: 1, on_result=lambda _v: 1 / 0)  # a broken callback is reported, the rest goes on
    main.drain(ex)
    assert sorted(type(e).__name__ for e in errors) == ["OSError", "ValueError"]
    assert sorted(type(e).__name__ for e in unheard) == ["ValueError", "ZeroDivisionError"]


def test_the_busy_counter_counts_running_work_and_says_when_it_changes(ex: Executor, main: MainThread) -> None:
    changes: list[bool] = []
    ex.busy.changed.connect(changes.append)
    idle: list[bool] = []
    ex.idle.connect(lambda: idle.append(True))
    release = threading.Event()
    ex.submit(lambda: release.wait(WAIT_S), channel="a")
    ex.submit(lambda: release.wait(WAIT_S), channel="b")
    assert ex.busy.busy and ex.busy.count == 2 and ex.pending == 2
    release.set()
    main.drain(ex)
    assert not ex.busy.busy and changes == [True, False] and idle == [True]


def test_a_shared_busy_counter_and_an_extra_end_is_ignored() -> None:
    busy = BusyCounter()
    a, b = Executor(busy=busy), Executor(busy=busy)
    with a.force_sync(), b.force_sync():
        seen: list[bool] = []
        a.submit(lambda: b.submit(lambda: seen.append(busy.count == 2)))
        assert seen == [True] and not busy.busy
    busy.end()  # more ends than begins: not negative
    assert busy.count == 0
    with busy.working():
        assert busy.busy
    assert not busy.busy


def test_sync_mode_runs_inline_on_the_calling_thread() -> None:
    ex = Executor()
    threads: list[int] = []
    items: list[Any] = []
    results: list[Any] = []

    def work() -> Iterator[str]:
        threads.append(threading.get_ident())
        yield "progress"
        return "done"

    with ex.force_sync():
        ex.submit(work, channel="analysis", on_item=items.append, on_result=results.append)
        errors: list[BaseException] = []
        ex.submit(lambda: (_ for _ in ()).throw(AnalysisCancelledError("stop")), on_error=errors.append)
    assert threads == [threading.get_ident()] and items == ["progress"] and results == ["done"]
    assert [type(e) for e in errors] == [AnalysisCancelledError]  # a current request hears its own error
    assert ex.pending == 0 and not ex.busy.busy and ex._pool is None  # no thread was started


def test_after_shutdown_a_request_fails_instead_of_hanging(main: MainThread) -> None:
    ex = Executor(deliver=main.deliver)
    ex.submit(lambda: None)
    main.drain(ex)
    ex.shutdown()
    errors: list[BaseException] = []
    ex.submit(lambda: None, on_error=errors.append)
    assert [type(e) for e in errors] == [RuntimeError] and ex.pending == 0 and not ex.busy.busy
