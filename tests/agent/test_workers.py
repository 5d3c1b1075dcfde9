"""Worker threads and calls run in turn (agent/workers.py)."""

from __future__ import annotations

import functools
import threading
import time

import pytest

from agent.workers import InTurn, Worker, WorkerPool, spread


def test_in_turn_runs_every_call_in_order_on_one_thread() -> None:
    pool = WorkerPool("t")
    seen: list[tuple[int, int]] = []

    def call(i: int) -> int:
        seen.append((i, threading.get_ident()))
        return i * i

    try:
        batch = InTurn([functools.partial(call, i) for i in range(6)], pool.idle())
        assert batch.wait(patience=1.0, timeout=5.0) == []
        assert [f.result(1) for f in batch.futures] == [0, 1, 4, 9, 16, 25]
        assert [i for i, _ in seen] == list(range(6))
        assert len({ident for _, ident in seen}) == 1
        assert threading.get_ident() not in {ident for _, ident in seen}
    finally:
        pool.close()


def test_a_stalled_call_has_the_rest_taken_back_and_run_on_threads_of_their_own() -> None:
    pool = WorkerPool("t")
    release = threading.Event()
    threads: dict[str, int] = {}

    def stuck() -> str:
        threads["stuck"] = threading.get_ident()
        release.wait(10)
        return "late"

    def quick(name: str) -> str:
        threads[name] = threading.get_ident()
        return name

    calls = [lambda: quick("a"), stuck, lambda: quick("b"), lambda: quick("c")]
    try:
        started = time.monotonic()
        futures = spread(calls, pool, patience=0.1, timeout=5.0)
        assert [f.result(2) for f in (futures[0], futures[2], futures[3])] == ["a", "b", "c"]
        waited = time.monotonic() - started
        assert waited < 1.0  # the patience, not the stuck call
        # a and the stuck call ran on the batch's thread; b and c each on another one.
        assert threads["a"] == threads["stuck"]
        assert len({threads["stuck"], threads["b"], threads["c"]}) == 3
        assert not futures[1].done()
        release.set()
        assert futures[1].result(2) == "late"
    finally:
        release.set()
        pool.close()


def test_no_call_is_taken_back_once_it_started() -> None:
    pool = WorkerPool("t")
    gate = threading.Event()
    try:
        batch = InTurn([lambda: gate.wait(5) and 1], pool.idle())
        time.sleep(0.05)  # started
        assert batch.wait(patience=0.05, timeout=1.0) == []
        gate.set()
        assert batch.futures[0].result(2) == 1
    finally:
        gate.set()
        pool.close()


def test_an_exception_reaches_its_future_without_the_frames_that_raised_it() -> None:
    pool = WorkerPool("t")

    def fails() -> int:
        held = bytearray(1 << 20)  # what a failed scrape would keep alive in its frames
        raise ValueError(f"bad {len(held)}")

    try:
        batch = InTurn([fails, lambda: 2], pool.idle())
        batch.wait(1.0, 5.0)
        with pytest.raises(ValueError, match="bad 1048576") as info:
            batch.futures[0].result(1)
        frames = []
        tb = info.value.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        assert "fails" not in frames
        assert batch.futures[1].result(1) == 2  # the batch goes on after a failure
    finally:
        pool.close()


def test_the_pool_reuses_idle_workers_and_adds_one_when_all_are_busy() -> None:
    pool = WorkerPool("t")
    gate = threading.Event()
    try:
        first = pool.idle()
        first.submit(lambda: None).result(1)
        deadline = time.monotonic() + 1
        while first.busy and time.monotonic() < deadline:
            time.sleep(0.001)
        assert pool.idle() is first
        first.submit(lambda: gate.wait(5))
        second = pool.idle()
        assert second is not first
        assert second.thread.daemon and second.thread.name == "t-1"
    finally:
        gate.set()
        pool.close()
    first.thread.join(2)
    assert not first.thread.is_alive()


def test_a_worker_runs_its_calls_one_at_a_time() -> None:
    worker = Worker("t")
    inside = 0
    most = 0
    guard = threading.Lock()

    def call() -> None:
        nonlocal inside, most
        with guard:
            inside += 1
            most = max(most, inside)
        time.sleep(0.005)
        with guard:
            inside -= 1

    futures = [worker.submit(call) for _ in range(5)]
    for future in futures:
        future.result(2)
    worker.stop()
    assert most == 1
