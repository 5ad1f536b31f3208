"""The model service's queue: every model call on one thread, in the order asked; generators take turns."""

from __future__ import annotations

import threading

import pytest

from cxr_viewer.core.analysis import ModelService


def test_every_call_runs_on_the_one_model_thread_in_order() -> None:
    svc = ModelService()
    try:
        ran: list[tuple[str, int]] = []
        gate, started = threading.Event(), threading.Event()

        def job(pool, name: str) -> int:  # noqa: ANN001
            assert pool is svc.pool
            if name == "first":
                started.set()
                gate.wait(5)  # holds the model thread while the others queue behind it
            ran.append((name, threading.get_ident()))
            return len(ran)

        threads = [threading.Thread(target=svc.call, args=(job, "first"))]
        threads[0].start()
        assert started.wait(5)
        for name in ("viewer", "worklist", "prior"):
            t = threading.Thread(target=svc.call, args=(job, name))
            t.start()
            threads.append(t)
            while svc._executor._work_queue.qsize() < len(threads) - 1:  # queued in this order
                threading.Event().wait(0.005)
        gate.set()
        for t in threads:
            t.join(5)
        assert [n for n, _ in ran] == ["first", "viewer", "worklist", "prior"]
        assert len({tid for _, tid in ran}) == 1 and ran[0][1] != threading.get_ident()
        # a call made from the model thread itself runs inline (no deadlock waiting on its own queue)
        assert svc.call(lambda pool: svc.call(lambda p: p is pool)) is True
    finally:
        svc.shutdown()


def test_generators_take_turns_step_by_step_and_errors_reach_the_caller() -> None:
    svc = ModelService()
    try:
        order: list[str] = []

        def steps(pool, name: str, n: int):  # noqa: ANN001, ANN202
            for i in range(n):
                order.append(f"{name}{i}")
                yield name, i

        a, b = svc.iterate(steps, "a", 3), svc.iterate(steps, "b", 2)
        got = [next(a), next(b), next(a), next(b), next(a)]
        assert got == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)]
        assert list(a) == [] and list(b) == []
        assert order == ["a0", "b0", "a1", "b1", "a2"]

        def broken(pool):  # noqa: ANN001, ANN202
            yield "progress", "loading"
            raise ValueError("bad weights")

        it = svc.iterate(broken)
        assert next(it) == ("progress", "loading")
        with pytest.raises(ValueError, match="bad weights"):
            next(it)
    finally:
        svc.shutdown()
