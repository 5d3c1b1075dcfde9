"""Daemon worker threads, and calls run in turn on one of them (an edge: it owns threads).

Why in turn: waking one thread per call (one per GPU, one per server) makes the woken
threads contend for the GIL. Eight 1.4 MB scrapes on eight threads at once cost 1.5x the CPU
of the same scrapes run one after another on one thread, and 1.25x when the eight threads
merely take turns (tests/benchmarks/bench_overhead.py ``--lane``). :class:`InTurn` runs the
calls one after the other on one worker; when the batch stalls (no call finished within
``patience``: a hung driver call, a server that answers slowly), the calls not started yet
are taken back, and :func:`spread` runs each on an idle worker of its own. A stuck call
then holds one thread and delays the others by ``patience`` at most.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

__all__ = ["InTurn", "Worker", "WorkerPool", "settle", "spread"]

T = TypeVar("T")


def settle(future: Future[T], call: Callable[[], T]) -> None:
    """Run ``call`` and hand its result, or what it raised, to ``future`` (already running).

    The exception goes without its traceback: its frames would keep what the call held (a
    failed scrape's buffers) alive as long as the future is.
    """
    try:
        result = call()
    except BaseException as exc:  # handed to the caller, which classifies it
        future.set_exception(exc.with_traceback(None))
    else:
        future.set_result(result)


class Worker:
    """One daemon thread that runs submitted calls one at a time.

    Daemon, so a call stuck in a driver or a socket never blocks the agent's exit (a
    ``ThreadPoolExecutor`` joins its threads at interpreter exit). ``busy`` is True from a
    submit until the thread has finished that call (set by the submitter, cleared by the
    thread), so a worker seen idle has nothing queued or running.

    Args:
        name: The thread's name.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.busy = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, call: Callable[[], T]) -> Future[T]:
        """Queue ``call``; its outcome arrives in the returned future."""
        future: Future[T] = Future()

        def job() -> None:
            if future.set_running_or_notify_cancel():
                settle(future, call)

        self.run(job)
        return future

    def run(self, job: Callable[[], None]) -> None:
        """Queue ``job``, which must not raise (it hands its outcome over itself)."""
        self.busy = True
        self._jobs.put(job)

    def stop(self) -> None:
        """End the thread after its current call, if any."""
        self._jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()
            self.busy = False


class WorkerPool:
    """Workers made on demand and reused while idle.

    Args:
        prefix: Thread names are ``{prefix}-{n}``.
    """

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._workers: list[Worker] = []

    def idle(self) -> Worker:
        """An idle worker, new if every one is busy."""
        for worker in self._workers:
            if not worker.busy:
                return worker
        worker = Worker(f"{self._prefix}-{len(self._workers)}")
        self._workers.append(worker)
        return worker

    def close(self, wait_seconds: float = 1.0) -> None:
        """Stop every worker; wait up to ``wait_seconds`` in all for the idle ones to end."""
        for worker in self._workers:
            worker.stop()
        end = time.monotonic() + wait_seconds
        for worker in self._workers:
            if not worker.busy:
                worker.thread.join(max(0.0, end - time.monotonic()))


class InTurn(Generic[T]):
    """Calls run one after the other on one worker (see the module docstring).

    Args:
        calls: The calls, in the order to run them.
        worker: An idle worker.
    """

    def __init__(self, calls: Sequence[Callable[[], T]], worker: Worker) -> None:
        self.futures: list[Future[T]] = [Future() for _ in calls]
        self._calls = list(calls)
        self._finished = threading.Event()
        self._ran = 0  # calls finished so far
        worker.run(self._run)

    def _run(self) -> None:
        for future, call in zip(self.futures, self._calls, strict=True):
            if future.set_running_or_notify_cancel():
                settle(future, call)
                self._ran += 1
        self._finished.set()

    def wait(self, patience: float, timeout: float) -> list[int]:
        """Wait for the batch; take back the calls not started if it stalls.

        Args:
            patience: Longest wait for the next call to finish, s (a stall is seen after
                one to two times this).
            timeout: Longest wait in all, s.

        Returns:
            Indices of the calls taken back (their futures cancelled, never to run here);
            empty when every call ran or is running.
        """
        end = time.monotonic() + timeout
        ran = self._ran
        while True:
            left = end - time.monotonic()
            # Woken only at the end or once per `patience`: a waiter woken at every call
            # would take the GIL from the batch's thread each time.
            if left <= 0 or self._finished.wait(min(patience, left)):
                break
            if self._ran == ran:
                break  # no call finished for `patience`: stalled
            ran = self._ran
        # cancel() succeeds only for a call the batch has not started: taken back.
        return [i for i, future in enumerate(self.futures) if future.cancel()]


def spread(
    calls: Sequence[Callable[[], T]], pool: WorkerPool, patience: float, timeout: float
) -> list[Future[T]]:
    """Run ``calls`` in turn on one idle worker; on a stall, the rest each on their own.

    Args:
        calls: The calls.
        pool: Where the workers come from.
        patience: Longest wait for the next call of the batch to finish, s.
        timeout: Longest wait in all before the rest are spread, s.

    Returns:
        One future per call, in order.
    """
    if not calls:
        return []
    batch = InTurn(calls, pool.idle())
    futures = list(batch.futures)
    for i in batch.wait(patience, timeout):
        futures[i] = pool.idle().submit(calls[i])
    return futures
