"""The Qt bridge of the one executor: work leaves the GUI thread, what it hands back returns to it."""

from __future__ import annotations

import threading

from shiboken6 import delete, isValid

from cxr_viewer.core.executor import BusyCounter
from cxr_viewer.qt.workers import TaskRunner

WAIT_MS = 10_000


def test_callbacks_run_on_the_gui_thread_and_a_superseded_result_is_dropped(qtbot) -> None:
    busy = BusyCounter()
    runner = TaskRunner(busy, max_threads=2)
    release = threading.Event()
    seen: list[tuple[str, int, int]] = []

    def work(name: str) -> tuple[str, int]:
        if name == "old":
            release.wait(WAIT_MS / 1000)
        return name, threading.get_ident()

    runner.submit(work, "old", channel="cam", on_result=lambda r: seen.append((*r, threading.get_ident())))
    runner.submit(work, "new", channel="cam", on_result=lambda r: seen.append((*r, threading.get_ident())))
    assert busy.busy and runner.pending == 2
    release.set()
    with qtbot.waitSignal(runner.idle, timeout=WAIT_MS):
        pass
    assert [s[0] for s in seen] == ["new"]
    _name, worker, gui = seen[0]
    assert worker != gui == threading.main_thread().ident
    assert not busy.busy and runner.pending == 0


def test_an_error_nobody_handles_reaches_the_error_signal(qtbot) -> None:
    runner = TaskRunner()

    def fails() -> None:
        raise OSError("the share went away")

    with qtbot.waitSignal(runner.error, timeout=WAIT_MS) as caught:
        runner.submit(fails)
    assert isinstance(caught.args[0], OSError)


def test_work_that_outlives_its_runner_is_dropped(qtbot) -> None:
    runner = TaskRunner()
    release = threading.Event()
    got: list[object] = []
    job = runner.submit(lambda: release.wait(WAIT_MS / 1000), on_result=got.append)
    delete(runner)  # the window closed while the work ran
    assert not isValid(runner)
    release.set()
    assert job.future is not None
    job.future.result(timeout=WAIT_MS / 1000)
    qtbot.wait(50)  # the delivery, had it been posted to a live runner, would have run by now
    assert got == []
