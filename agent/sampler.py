"""The sampling loop: read GPUs and scrape servers -> ledger -> immutable Snapshot.

Impure edge: owns one thread for the loop and a pool of scrape threads: a cycle's scrapes run
in turn on one of them, and on a stall the servers not started yet on threads of their own
(:mod:`agent.workers`); at most one scrape per server is in flight.
Everything it touches (GPU monitor, scrapers, ledger, discovery, clock) is passed in by the
composition root.
/metrics never calls into this module's sources: it renders the latest published Snapshot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Protocol

from agent.clock import Clock
from agent.discovery import Discovery, describe_mapping
from agent.readings import (
    AccountingEvent,
    CollectorHealth,
    GpuDevice,
    GpuStatus,
    LedgerTotals,
    PricingInfo,
    ServerReading,
    ServerStatus,
    Snapshot,
)
from agent.workers import InTurn, WorkerPool


class GpuSource(Protocol):
    """What the sampler needs from the GPU side (``agent.gpu.monitor.GpuMonitor``)."""

    def poll(self) -> tuple[GpuStatus, ...]:
        """Read every GPU within its deadline."""
        ...

    def devices(self) -> tuple[GpuDevice, ...]:
        """The devices found at start."""
        ...

    def driver_version(self) -> str | None:
        """The NVIDIA driver version, when known."""
        ...

    def nvml_up(self) -> bool:
        """True when NVML is initialised."""
        ...

    def counters_cover_energy(self) -> bool:
        """True when every GPU's energy comes from its counter (no polls between cycles)."""
        ...

    def error_counts(self) -> dict[tuple[str, str], int]:
        """``(gpu index, error class) -> count`` since start."""
        ...


class ServerSource(Protocol):
    """One server's scraper (``agent.servers.scraper.ServerScraper``)."""

    def scrape(self) -> ServerReading:
        """Fetch and interpret the server's exposition; raises ``ScrapeError``."""
        ...


class LedgerLike(Protocol):
    """The accounting ledger (``agent.accounting.ledger.Ledger``)."""

    def advance(
        self,
        t: float,
        gpus: Sequence[GpuStatus],
        servers: Sequence[ServerStatus],
        assignment: Mapping[str, Sequence[str]],
        process_owners: Mapping[int, str] | None = None,
    ) -> LedgerTotals:
        """Account the interval ending at monotonic time ``t``, s."""
        ...


COUNTED_REASONS = frozenset({"implausible", "too_many_models", "too_many_series", "label_too_long"})
"""Accounting events counted in ``tokenergy_scrape_errors_total`` (values the agent refused)."""

GROUPED_REASONS = frozenset({"too_many_models", "too_many_series", "label_too_long"})
"""Events logged once per server whatever the model or series (they churn by nature)."""

SCRAPE_PATIENCE_SECONDS = 0.2
"""Longest wait for the next of a cycle's scrapes (run in turn on one thread) to finish
before the servers not started yet are scraped on threads of their own, s (at most a
quarter of the scrape deadline): a server that answers slowly delays the others by this
much at most."""

MAX_LOGGED_EVENTS = 4096
"""Distinct (source, reason, model, series) logged; past it events are counted, not logged."""


Discover = Callable[[Sequence[GpuStatus]], Discovery]
"""Given the GPUs' latest status, return the attribution map (impure: reads processes)."""


def classify_error(exc: BaseException) -> str:
    """The ``reason`` label for a scrape failure.

    Args:
        exc: What the scraper raised.

    Returns:
        The error's own ``reason`` attribute when it has one, else ``error``.
    """
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else "error"


class Sampler:
    """Runs sampling cycles on its own thread and publishes immutable Snapshots.

    GPUs are polled every ``gpu_interval_seconds`` (power integration needs it), servers are
    scraped and the ledger advanced every ``interval_seconds``. Every source has a deadline.
    Each server's scrape runs on a thread of its own (a daemon, so a scrape stuck in a
    system call never holds up shutdown): a stuck server occupies only its own slot, never a
    shared pool. A scrape that overruns the deadline is reported as ``timeout`` and is not
    started again until the stuck one returns, so stuck calls never pile up.

    Args:
        gpus: The GPU monitor.
        servers: Server name -> scraper, in configuration order.
        ledger: The accounting ledger.
        discover: Returns the attribution map; called at start and every
            ``discovery_interval_seconds``.
        clock: Monotonic clock.
        pricing: Cost settings in force (for ``pricing_info``).
        interval_seconds: Scrape and snapshot interval, s.
        gpu_interval_seconds: GPU poll interval, s.
        window_seconds: Window of the ratio gauges, s.
        scrape_deadline_seconds: Longest wait for one server's scrape, s.
        discovery_interval_seconds: How often discovery runs again, s.
        log: Logger.
    """

    def __init__(
        self,
        *,
        gpus: GpuSource,
        servers: Mapping[str, ServerSource],
        ledger: LedgerLike,
        discover: Discover,
        clock: Clock,
        pricing: PricingInfo,
        interval_seconds: float,
        gpu_interval_seconds: float,
        window_seconds: float,
        scrape_deadline_seconds: float,
        discovery_interval_seconds: float,
        log: logging.Logger,
    ) -> None:
        self._gpus = gpus
        self._servers = dict(servers)
        self._ledger = ledger
        self._discover = discover
        self._clock = clock
        self._pricing = pricing
        self._interval = interval_seconds
        self._gpu_interval = min(gpu_interval_seconds, interval_seconds)
        self._window = window_seconds
        self._scrape_deadline = scrape_deadline_seconds
        self._discovery_interval = discovery_interval_seconds
        self._log = log
        # A cycle's scrapes run in turn on one worker; on a stall the rest get their own
        # (agent/workers.py). At most one scrape per server is in flight.
        self._pool = WorkerPool("scrape")
        self._batch: tuple[InTurn[ServerReading], list[str]] | None = None
        self._inflight: dict[str, Future[ServerReading]] = {}
        self._closed = False
        self._last_server: dict[str, ServerStatus] = {}
        self._scrape_errors: dict[tuple[str, str], int] = {}
        self._mapping: Discovery | None = None
        self._next_discovery = float("-inf")
        self._seen_warnings: set[str] = set()
        self._logged_events: set[tuple[str, str, str, str]] = set()
        self._last_gpus: tuple[GpuStatus, ...] = ()
        # GPU UUID -> joules polled between cycles, not yet handed to the ledger.
        self._carry: dict[str, float] = {}
        self._snapshot: Snapshot | None = None
        self._cycle_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- published state -------------------------------------------------------------------

    def snapshot(self) -> Snapshot | None:
        """The latest Snapshot, or None before the first cycle completed."""
        return self._snapshot

    def health(self, stale_after_intervals: int) -> tuple[bool, list[str]]:
        """Liveness for /healthz.

        Args:
            stale_after_intervals: Intervals without a completed cycle before unhealthy.

        Returns:
            ``(ok, lines)``: ok is False when no cycle completed within the limit; lines name
            the degraded parts.
        """
        snap = self._snapshot
        if snap is None:
            return False, ["no sampling cycle has completed yet"]
        age = self._clock.monotonic() - snap.taken_at_seconds
        limit = stale_after_intervals * self._interval
        lines = list(snap.degraded)
        if age > limit:
            return False, [f"last sampling cycle {age:.1f} s ago (limit {limit:.1f} s)", *lines]
        return True, lines

    def mapping(self) -> Discovery | None:
        """The attribution map in force."""
        return self._mapping

    # -- the loop ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread; the first cycle runs at once unless one already ran."""
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout_seconds: float = 5.0) -> None:
        """Stop the loop thread; ``run_cycle`` still works until :meth:`close`.

        Args:
            timeout_seconds: Longest wait for the running cycle to finish, s.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_seconds)
            self._thread = None

    def close(self) -> None:
        """Start no more scrapes and end the scrape threads; stuck ones are not waited for."""
        self._closed = True
        self._pool.close(1.0)

    def _run(self) -> None:
        # A cycle run by hand before start() (the start-up log line) counts as the first one.
        done = self._snapshot
        next_cycle = (
            self._clock.monotonic() if done is None else done.taken_at_seconds + self._interval
        )
        next_gpu = next_cycle + self._gpu_interval
        while not self._stop.is_set():
            now = self._clock.monotonic()
            if now >= next_cycle:
                try:
                    self.run_cycle()
                except Exception:  # one bad cycle must never end the loop
                    self._log.exception("sampling cycle failed")
                next_cycle += self._interval
                # After a long stall, skip missed cycles instead of running them back to back.
                if next_cycle < self._clock.monotonic():
                    next_cycle = self._clock.monotonic() + self._interval
                next_gpu = self._clock.monotonic() + self._gpu_interval
            elif now >= next_gpu:
                try:
                    # Counter deltas are exact at any spacing: the polls between cycles
                    # only serve GPUs whose power is integrated (or that are down).
                    if not self._gpus.counters_cover_energy():
                        self._poll_between_cycles()
                except Exception:
                    self._log.exception("GPU poll failed")
                next_gpu += self._gpu_interval
                if next_gpu < self._clock.monotonic():
                    next_gpu = self._clock.monotonic() + self._gpu_interval
            wake = min(next_cycle, next_gpu)
            if next_gpu < next_cycle and self._counters_cover_energy():
                # The GPU ticks before the next cycle would poll nothing, and only a poll (the
                # cycle's, this thread's) can change that: sleep to the cycle. Each wake-up
                # costs the thread ~0.1 ms of CPU on a VM (timer, scheduler), 4 per cycle.
                wake = next_cycle
            wait = wake - self._clock.monotonic()
            if wait > 0:
                self._stop.wait(wait)

    def _counters_cover_energy(self) -> bool:
        """The GPU source's answer; False when it fails (the tick then logs the failure)."""
        try:
            return self._gpus.counters_cover_energy()
        except Exception:
            return False

    def _poll_between_cycles(self) -> None:
        """Poll the GPUs between cycles (power integration); the next cycle books the joules."""
        with self._cycle_lock:
            statuses = self._gpus.poll()
            for g in statuses:
                uuid = g.device.uuid
                self._carry[uuid] = self._carry.get(uuid, 0.0) + g.energy_joules_added
            # Kept as polled (their joules are in the carry): zeroed only if ever used.
            self._last_gpus = statuses

    def run_cycle(self) -> Snapshot:
        """Run one full cycle now and publish its Snapshot.

        Returns:
            The new Snapshot.
        """
        with self._cycle_lock:
            return self._cycle()

    def _cycle(self) -> Snapshot:
        started = self._clock.monotonic()
        todo = [n for n in self._servers if n not in self._inflight and not self._closed]
        if todo:
            batch = InTurn([self._scrape_call(n) for n in todo], self._pool.idle())
            self._inflight.update(zip(todo, batch.futures, strict=True))
            self._batch = (batch, todo)
        collectors: list[CollectorHealth] = []

        gpu_started = self._clock.monotonic()
        try:
            gpus = self._gpus.poll()
            gpu_ok = self._gpus.nvml_up()
        except Exception:
            self._log.exception("GPU poll failed")
            # The last statuses, their joules already handed over (the carry holds the rest).
            gpus = tuple(replace(g, energy_joules_added=0.0) for g in self._last_gpus)
            gpu_ok = False
        # The joules of the polls since the last cycle go to the ledger with this one.
        gpus = tuple(
            replace(
                g, energy_joules_added=g.energy_joules_added + self._carry.pop(g.device.uuid, 0.0)
            )
            for g in gpus
        )
        self._last_gpus = gpus
        collectors.append(CollectorHealth("nvml", gpu_ok, self._clock.monotonic() - gpu_started))

        servers = self._collect_scrapes(started, collectors)

        now = self._clock.monotonic()
        if now >= self._next_discovery:
            self._refresh_mapping(gpus)
            self._next_discovery = now + self._discovery_interval
        mapping = self._mapping or Discovery(assignment={})
        totals = self._ledger.advance(
            now, gpus, servers, mapping.assignment, mapping.process_owners
        )
        self._account_events(totals.events)
        snap = Snapshot(
            taken_at_seconds=self._clock.monotonic(),
            gpus=gpus,
            servers=servers,
            ledger=totals,
            collectors=tuple(collectors),
            pricing=self._pricing,
            window_seconds=self._window,
            scrape_errors=tuple((s, r, n) for (s, r), n in sorted(self._scrape_errors.items())),
            nvml_errors=tuple((g, e, n) for (g, e), n in sorted(self._gpus.error_counts().items())),
            driver_version=self._gpus.driver_version(),
            degraded=self._degraded(gpu_ok, gpus, servers),
        )
        self._snapshot = snap
        return snap

    def _collect_scrapes(
        self, started: float, collectors: list[CollectorHealth]
    ) -> tuple[ServerStatus, ...]:
        deadline = started + self._scrape_deadline
        if self._batch is not None:
            batch, names = self._batch
            self._batch = None
            left = max(0.0, deadline - self._clock.monotonic())
            patience = min(SCRAPE_PATIENCE_SECONDS, self._scrape_deadline / 4)
            for i in batch.wait(patience, left):
                # Not started when the batch stalled: scraped on a thread of its own.
                name = names[i]
                self._inflight[name] = self._pool.idle().submit(self._scrape_call(name))
        statuses: list[ServerStatus] = []
        # One wake-up when the last scrape is in (or at the deadline), not one per scrape.
        wait(self._inflight.values(), timeout=max(0.0, deadline - self._clock.monotonic()))
        for name, future in list(self._inflight.items()):
            remaining = max(0.0, deadline - self._clock.monotonic())
            try:
                reading = future.result(timeout=remaining)
            except FutureTimeout:
                # Still running: report a timeout, keep the future so no second call starts.
                statuses.append(self._failed(name, "timeout", "scrape exceeded its deadline"))
                collectors.append(
                    CollectorHealth(f"server/{name}", False, self._clock.monotonic() - started)
                )
                continue
            except Exception as exc:
                del self._inflight[name]
                statuses.append(self._failed(name, classify_error(exc), str(exc)))
                collectors.append(
                    CollectorHealth(f"server/{name}", False, self._clock.monotonic() - started)
                )
                continue
            del self._inflight[name]
            status = ServerStatus(name=name, up=True, reading=reading)
            if name in self._last_server and not self._last_server[name].up:
                self._log.info("server recovered", extra={"server": name})
            self._last_server[name] = status
            statuses.append(status)
            collectors.append(
                CollectorHealth(f"server/{name}", True, self._clock.monotonic() - started)
            )
        order = list(self._servers)
        statuses.sort(key=lambda s: order.index(s.name))
        return tuple(statuses)

    def _scrape_call(self, name: str) -> Callable[[], ServerReading]:
        """The server's scrape, run under a thread name that says whose it is."""
        scrape = self._servers[name].scrape

        def call() -> ServerReading:
            thread = threading.current_thread()
            own = thread.name
            thread.name = f"scrape-{name}"  # in thread dumps and log records
            try:
                return scrape()
            finally:
                thread.name = own

        return call

    def _failed(self, name: str, reason: str, message: str) -> ServerStatus:
        key = (name, reason)
        self._scrape_errors[key] = self._scrape_errors.get(key, 0) + 1
        previous = self._last_server.get(name)
        if previous is None or previous.up or previous.error_reason != reason:
            # Log a change of state once, not every cycle.
            self._log.warning(
                "scrape failed", extra={"server": name, "reason": reason, "error": message}
            )
        status = ServerStatus(name=name, up=False, reading=None, error_reason=reason)
        self._last_server[name] = status
        return status

    def _account_events(self, events: Sequence[AccountingEvent]) -> None:
        """Count what the accounting refused and log each kind of event once per series."""
        for event in events:
            if event.reason in COUNTED_REASONS:
                key = (event.source, event.reason)
                self._scrape_errors[key] = self._scrape_errors.get(key, 0) + event.count
            if event.reason in GROUPED_REASONS:  # e.g. new model names every scrape: log once
                logged = (event.source, event.reason, "", "")
            else:
                logged = (event.source, event.reason, event.model, event.series)
            if logged in self._logged_events or len(self._logged_events) >= MAX_LOGGED_EVENTS:
                continue
            self._logged_events.add(logged)
            log = self._log.warning if event.reason in COUNTED_REASONS else self._log.info
            log(
                "accounting: %s",
                event.reason,
                extra={
                    "server": event.source,
                    "model": event.model,
                    "series": event.series,
                    "count": event.count,
                    "detail": event.detail,
                },
            )

    def _refresh_mapping(self, gpus: Sequence[GpuStatus]) -> None:
        try:
            found = self._discover(gpus)
        except Exception:
            self._log.exception("GPU-to-server discovery failed; keeping the previous map")
            return
        for warning in found.warnings:
            if warning not in self._seen_warnings:
                self._seen_warnings.add(warning)
                self._log.warning(warning)
        previous = self._mapping
        if previous is None or _normalise(previous.assignment) != _normalise(found.assignment):
            self._log.info("GPU-to-server map", extra={"mapping": describe_mapping(found, gpus)})
        self._mapping = found

    @staticmethod
    def _degraded(
        gpu_ok: bool, gpus: Sequence[GpuStatus], servers: Sequence[ServerStatus]
    ) -> tuple[str, ...]:
        lines: list[str] = []
        if not gpu_ok:
            lines.append("nvml: not initialised")
        lines += [
            f"gpu {g.device.index} ({g.device.uuid}): {g.error or 'down'}" for g in gpus if not g.up
        ]
        lines += [f"server {s.name}: {s.error_reason or 'down'}" for s in servers if not s.up]
        return tuple(lines)


def _normalise(assignment: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(sorted(v)) for k, v in sorted(assignment.items())}
