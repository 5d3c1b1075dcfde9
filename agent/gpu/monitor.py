"""GPU monitor: reads every GPU with a deadline, owns the energy meters, re-inits NVML. Threads.

``GpuMonitor`` is the edge between a ``GpuBackend`` and the sampler:

* one daemon reader thread per GPU plus one for NVML init/shutdown, started by :meth:`start`;
  at most one call is outstanding per GPU, so a hung NVML call never piles up threads;
* :meth:`poll` waits for all reads together, at most ``read_timeout_seconds`` of real time; a
  GPU whose call has not returned is reported stale (``up=False``, error ``timeout``) and gets
  no new call until the hung one returns;
* a GPU that fails (lost, read error) is down while the others go on;
* after a driver-level error, or when NVML is missing at start, NVML is initialised again with
  exponential backoff on the injected clock (``reinit_backoff_seconds`` doubling up to
  ``reinit_backoff_max_seconds``);
* per GPU UUID an :class:`~agent.gpu.energy.EnergyMeter` turns readings into per-interval
  joules; each poll hands over the joules measured since the previous poll
  (``GpuStatus.energy_joules_added``) and keeps no total: the ledger accumulates;
* an energy increase the power limit cannot explain is not counted, is counted in
  ``nvml_errors_total{error="implausible"}`` and logged once;
* each problem is logged once when it starts and once when it ends, not per cycle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from typing import Any

from agent.clock import Clock
from agent.config import GpuSettings
from agent.gpu.backend import GpuBackend
from agent.gpu.energy import DEFAULT_MAX_POWER_RATIO, EnergyMeter
from agent.gpu.errors import GpuError, GpuReadError, GpuTimeout
from agent.readings import GpuDevice, GpuReading, GpuStatus
from agent.workers import InTurn, Worker

BATCH_PATIENCE_SECONDS = 0.05
"""How long one poll's reads run one after the other before the GPUs not started yet are
read on threads of their own, s (an NVML read takes microseconds to a few milliseconds)."""

NVML_WIDE = ""
"""The ``gpu`` key of errors that concern NVML as a whole (init failures), not one GPU."""


@dataclass
class _Track:
    """What the monitor knows of one GPU, keyed by UUID (indices can change on re-init)."""

    device: GpuDevice
    meter: EnergyMeter = field(default_factory=EnergyMeter)
    # Joules measured since the last poll handed them over.
    pending_joules: float = 0.0
    reading: GpuReading | None = None
    up: bool = False
    error: str | None = None


class GpuMonitor:
    """Polls a ``GpuBackend`` with deadlines and keeps per-GPU monotonic energy.

    Args:
        backend: The GPU backend (``NvmlBackend`` over pynvml or the simulated NVML).
        clock: Monotonic clock for reading times (energy integration) and re-init backoff.
        settings: ``read_timeout_seconds`` (real-time deadline of one poll, s),
            ``reinit_backoff_seconds`` and ``reinit_backoff_max_seconds`` (clock time, s).
        log: Logger.
        max_power_ratio: Energy-counter glitch guard: an increase above this many times the
            power limit over its interval is not counted.
    """

    def __init__(
        self,
        backend: GpuBackend,
        clock: Clock,
        settings: GpuSettings,
        log: logging.Logger,
        max_power_ratio: float = DEFAULT_MAX_POWER_RATIO,
    ) -> None:
        self._max_power_ratio = max_power_ratio
        self._backend = backend
        self._clock = clock
        self._deadline_seconds = settings.read_timeout_seconds
        self._backoff_base = settings.reinit_backoff_seconds
        self._backoff_max = max(settings.reinit_backoff_max_seconds, self._backoff_base)
        self._backoff = self._backoff_base
        self._log = log
        self._lock = threading.RLock()
        self._tracks: dict[str, _Track] = {}
        self._index_to_uuid: dict[int, str] = {}
        self._workers: dict[int, Worker] = {}
        self._pending: dict[int, Future[tuple[GpuReading, float]]] = {}
        self._control: Worker | None = None
        self._open_future: Future[None] | None = None
        self._ever_opened = False
        self._nvml_up = False
        self._nvml_error: str | None = "unavailable"
        self._next_open_at: float | None = None
        self._driver_version: str | None = None
        self._errors: dict[tuple[str, str], int] = {}
        self._problems: set[tuple[str, str]] = set()
        self._started = False
        self._closed = False

    # -- public API -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the NVML thread and try to open NVML once; never raises.

        When NVML is missing or slow, the monitor stays down (``nvml_up() == False``) and
        :meth:`poll` retries with backoff.
        """
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            self._control = Worker("tokenergy-nvml")
            self._try_open(self._clock.monotonic(), time.monotonic() + self._deadline_seconds)

    def poll(self) -> tuple[GpuStatus, ...]:
        """Read every GPU once, within about ``read_timeout_seconds`` of real time.

        Returns:
            One status per GPU ever seen, by index. A GPU whose read failed or is still
            running is ``up=False`` with its last reading and a frozen energy counter.
        """
        with self._lock:
            if not self._started:
                self.start()
            if self._closed:
                return self._statuses()
            now = self._clock.monotonic()
            deadline = time.monotonic() + self._deadline_seconds
            if not self._nvml_up:
                self._try_open(now, deadline)
            if self._nvml_up:
                self._read_all(now, deadline)
            return self._statuses()

    def counters_cover_energy(self) -> bool:
        """True when every GPU is up and its last reading carried the NVML energy counter.

        The joules between two counter readings are exact however far apart the readings
        are, so polls between sampling cycles then add nothing; the sampler makes them only
        while some GPU's energy is integrated from power (no counter) or a GPU is down.
        """
        with self._lock:
            return (
                self._nvml_up
                and bool(self._tracks)
                and all(
                    t.up and t.reading is not None and t.reading.energy_joules is not None
                    for t in self._tracks.values()
                )
            )

    def devices(self) -> tuple[GpuDevice, ...]:
        """Every GPU seen since start, by index."""
        with self._lock:
            return tuple(t.device for t in self._sorted_tracks())

    def driver_version(self) -> str | None:
        """NVIDIA driver version, when known."""
        with self._lock:
            return self._driver_version

    def nvml_up(self) -> bool:
        """True while NVML is initialised and usable."""
        with self._lock:
            return self._nvml_up

    def error_counts(self) -> dict[tuple[str, str], int]:
        """``(gpu index as str, error kind) -> count`` since start.

        A GPU's failed or timed-out read counts once per poll; NVML-wide failures (init)
        count under the gpu key ``""``.
        """
        with self._lock:
            return dict(self._errors)

    def close(self) -> None:
        """Shut NVML down (within the deadline) and stop the threads; never raises."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._nvml_up = False
            self._nvml_error = "closed"
            workers = list(self._workers.values())
            control = self._control
        if control is not None:
            if self._ever_opened:
                done = control.submit(self._backend.close)
                wait([done], timeout=self._deadline_seconds)
            control.stop()
        for worker in workers:
            worker.stop()
        # One shared deadline: threads stuck in a hung call are daemons and are left behind.
        end = time.monotonic() + self._deadline_seconds
        for w in [*workers, *([control] if control else [])]:
            w.thread.join(timeout=max(0.0, end - time.monotonic()))

    # -- opening NVML ---------------------------------------------------------------------

    def _try_open(self, now: float, deadline: float) -> None:
        if self._open_future is None:
            if self._next_open_at is not None and now < self._next_open_at:
                return
            assert self._control is not None
            self._open_future = self._control.submit(
                self._reopen if self._ever_opened else self._backend.open
            )
        wait([self._open_future], timeout=max(0.0, deadline - time.monotonic()))
        if not self._open_future.done():
            self._nvml_error = GpuTimeout.kind
            self._count(NVML_WIDE, GpuTimeout.kind)
            self._problem(
                NVML_WIDE,
                "nvml",
                "NVML init has not returned within %.3g s; retrying when it does",
                self._deadline_seconds,
            )
            return
        future, self._open_future = self._open_future, None
        exc = future.exception()
        if exc is None:
            self._opened()
            return
        kind = exc.kind if isinstance(exc, GpuError) else GpuReadError.kind
        self._nvml_error = kind
        self._count(NVML_WIDE, kind)
        wait_s = self._schedule_reopen(now)
        self._problem(NVML_WIDE, "nvml", "NVML unavailable (%s); next try in %.3g s", exc, wait_s)

    def _reopen(self) -> None:
        self._backend.close()
        self._backend.open()

    def _opened(self) -> None:
        if not self._ever_opened:
            self._log.info(
                "NVML up: %d GPU(s), driver %s",
                len(self._backend.devices()),
                self._backend.driver_version() or "unknown",
            )
        if self._ever_opened:
            # NVML was re-initialised: the driver may have been reloaded in between.
            for track in self._tracks.values():
                track.meter.note_possible_reset()
        self._ever_opened = True
        self._nvml_up = True
        self._nvml_error = None
        self._backoff = self._backoff_base
        self._next_open_at = None
        self._driver_version = self._backend.driver_version()
        devices = self._backend.devices()
        self._index_to_uuid = {}
        for device in devices:
            known = self._tracks.get(device.uuid)
            if known is None:
                meter = EnergyMeter(max_power_ratio=self._max_power_ratio)
                self._tracks[device.uuid] = _Track(device, meter)
            else:
                known.device = device
            self._index_to_uuid[device.index] = device.uuid
            if device.index not in self._workers:
                self._workers[device.index] = Worker(f"tokenergy-gpu-{device.index}")
        present = {d.uuid for d in devices}
        for uuid, track in self._tracks.items():
            if uuid not in present:
                track.up = False
                track.error = "gpu_lost" if track.error == "gpu_lost" else "missing"
        self._resolved(
            NVML_WIDE,
            "nvml",
            "NVML up: %d GPU(s), driver %s",
            len(devices),
            self._driver_version or "unknown",
        )

    def _schedule_reopen(self, now: float) -> float:
        wait_s = self._backoff
        self._next_open_at = now + wait_s
        self._backoff = min(self._backoff * 2.0, self._backoff_max)
        return wait_s

    # -- reading --------------------------------------------------------------------------

    def _read_all(self, now: float, deadline: float) -> None:
        self._harvest(now)
        todo = [i for i in sorted(self._index_to_uuid) if i not in self._pending]
        if todo and self._nvml_up:
            self._read_batch(todo, deadline)
        if self._pending:
            wait(list(self._pending.values()), timeout=max(0.0, deadline - time.monotonic()))
        self._harvest(now)
        for index in self._pending:
            uuid = self._index_to_uuid.get(index)
            track = self._tracks.get(uuid) if uuid else None
            if track is None:
                continue
            track.up = False
            track.error = GpuTimeout.kind
            self._count(str(index), GpuTimeout.kind)
            self._problem(
                str(index),
                GpuTimeout.kind,
                "GPU %d: NVML read has not returned within %.3g s; reported stale, "
                "no new call until it returns",
                index,
                self._deadline_seconds,
            )

    def _read_batch(self, todo: list[int], deadline: float) -> None:
        """Read ``todo`` one after the other on one idle worker, spreading the rest on stalls.

        One thread wakes per poll instead of one per GPU: 8 threads woken at once contend
        for the GIL, which cost several times the reads themselves. The GPUs the batch has
        not started after :data:`BATCH_PATIENCE_SECONDS` are taken back (their futures
        cancelled) and read on idle workers of their own within the same deadline, so a
        hung call still holds one thread and one GPU only (:class:`agent.workers.InTurn`).
        Each hung call holds the one worker it runs on and no new call of its GPU starts
        until it returns, so there is an idle worker for every GPU left to read.
        """
        idle = [w for _, w in sorted(self._workers.items()) if not w.busy]
        if not idle:
            return
        batch = InTurn([self._read_job(i) for i in todo], idle.pop(0))
        self._pending.update(zip(todo, batch.futures, strict=True))
        patience = min(BATCH_PATIENCE_SECONDS, max(0.0, deadline - time.monotonic()))
        for position in batch.wait(patience, patience):
            if not idle:
                break
            index = todo[position]
            self._pending[index] = idle.pop(0).submit(self._read_job(index))

    def _read_job(self, index: int) -> Callable[[], tuple[GpuReading, float]]:
        def job() -> tuple[GpuReading, float]:
            reading = self._backend.read(index)
            return reading, self._clock.monotonic()

        return job

    def _harvest(self, now: float) -> None:
        for index, future in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[index]
            exc = future.exception()
            if exc is None:
                reading, t = future.result()
                self._accept(index, reading, t)
            else:
                self._reject(index, exc, now)

    def _accept(self, index: int, reading: GpuReading, t: float) -> None:
        track = self._tracks.get(reading.uuid)
        if track is None:
            return  # a device from an earlier NVML session that is gone now
        try:
            step = track.meter.step(
                t, reading.energy_joules, reading.power_watts, reading.power_limit_watts
            )
        except ValueError as exc:
            self._count(str(index), GpuReadError.kind)
            self._problem(str(index), "meter", "GPU %d: reading rejected: %s", index, exc)
            return
        if step.implausible:
            self._count(str(index), "implausible")
            self._problem(
                str(index),
                "implausible",
                "GPU %d: energy counter %.6g J is more than the power limit allows since the "
                "last good reading; not counted",
                index,
                reading.energy_joules,
            )
        elif self._problems:  # none logged: nothing to resolve (the usual case)
            self._resolved(
                str(index), "implausible", "GPU %d: energy counter plausible again", index
            )
        track.pending_joules += step.added_joules
        track.reading = reading
        track.up = True
        track.error = None
        if self._problems:
            for kind in ("gpu_lost", "timeout", "driver", "read_error", "unavailable", "meter"):
                self._resolved(str(index), kind, "GPU %d (%s) read again", index, reading.uuid)

    def _reject(self, index: int, exc: BaseException, now: float) -> None:
        uuid = self._index_to_uuid.get(index)
        track = self._tracks.get(uuid) if uuid else None
        if isinstance(exc, GpuError):
            kind = exc.kind
        else:
            kind = GpuReadError.kind
            self._log.error("GPU %d: unexpected error in the NVML read", index, exc_info=exc)
        self._count(str(index), kind)
        if track is not None:
            track.up = False
            track.error = kind
        if kind == "driver":
            if self._nvml_up:
                self._nvml_up = False
                self._nvml_error = kind
                wait_s = self._schedule_reopen(now)
                self._problem(
                    NVML_WIDE,
                    "nvml",
                    "NVML driver error (%s); re-initialising in %.3g s",
                    exc,
                    wait_s,
                )
            return
        self._problem(str(index), kind, "GPU %d: %s", index, exc)

    # -- status and bookkeeping -----------------------------------------------------------

    def _sorted_tracks(self) -> list[_Track]:
        return sorted(self._tracks.values(), key=lambda t: (t.device.index, t.device.uuid))

    def _statuses(self) -> tuple[GpuStatus, ...]:
        out = []
        for track in self._sorted_tracks():
            up = track.up and self._nvml_up
            error = track.error if self._nvml_up or track.error == "gpu_lost" else self._nvml_error
            out.append(
                GpuStatus(
                    device=track.device,
                    up=up,
                    reading=track.reading,
                    energy_joules_added=track.pending_joules,
                    error=None if up else (error or "down"),
                )
            )
            track.pending_joules = 0.0  # handed over: each joule goes out in one poll only
        return tuple(out)

    def _count(self, gpu: str, kind: str) -> None:
        key = (gpu, kind)
        self._errors[key] = self._errors.get(key, 0) + 1

    def _problem(self, gpu: str, kind: str, message: str, *args: Any) -> None:
        """Log a problem when it starts; repeats of the same problem stay quiet."""
        if (gpu, kind) in self._problems:
            return
        self._problems.add((gpu, kind))
        self._log.warning(message, *args)

    def _resolved(self, gpu: str, kind: str, message: str, *args: Any) -> None:
        """Log the end of a problem that was logged."""
        if (gpu, kind) not in self._problems:
            return
        self._problems.discard((gpu, kind))
        self._log.info(message, *args)
