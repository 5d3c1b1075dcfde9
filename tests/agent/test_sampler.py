"""The sampling loop, with hand-written fakes for the GPU monitor, scrapers and ledger."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from agent.clock import ManualClock, SystemClock
from agent.discovery import Discovery
from agent.readings import (
    AccountingEvent,
    GpuDevice,
    GpuStatus,
    LedgerTotals,
    ModelTotals,
    PricingInfo,
    ServerReading,
    ServerStatus,
    TokenReading,
)
from agent.sampler import Sampler

LOG = logging.getLogger("test")
DEVICE = GpuDevice(index=0, uuid="GPU-0", name="H100", energy_source="counter")


class FakeGpus:
    def __init__(self, up: bool = True, counter: bool = False) -> None:
        self.up = up
        self.counter = counter
        self.polls = 0

    def poll(self) -> tuple[GpuStatus, ...]:
        self.polls += 1
        return (
            GpuStatus(DEVICE, self.up, None, 10.0 * self.polls, None if self.up else "gpu_lost"),
        )

    def devices(self) -> tuple[GpuDevice, ...]:
        return (DEVICE,)

    def driver_version(self) -> str | None:
        return "550.54"

    def nvml_up(self) -> bool:
        return True

    def counters_cover_energy(self) -> bool:
        return self.counter and self.up

    def error_counts(self) -> dict[tuple[str, str], int]:
        return {} if self.up else {("0", "gpu_lost"): self.polls}


class ScrapeFailedError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(f"failed: {reason}")
        self.reason = reason


class FakeScraper:
    def __init__(self, fail: str | None = None, block: threading.Event | None = None) -> None:
        self.fail = fail
        self.block = block
        self.calls = 0

    def scrape(self) -> ServerReading:
        self.calls += 1
        if self.block is not None:
            self.block.wait(10)
        if self.fail:
            raise ScrapeFailedError(self.fail)
        return ServerReading("vllm", (TokenReading("m", 1.0 * self.calls, 2.0 * self.calls),))


@dataclass
class RecordingLedger:
    calls: list[tuple[float, tuple[ServerStatus, ...], dict[str, tuple[str, ...]]]] = field(
        default_factory=list
    )

    def advance(
        self,
        t: float,
        gpus: Sequence[GpuStatus],
        servers: Sequence[ServerStatus],
        assignment: Mapping[str, Sequence[str]],
        process_owners: Mapping[int, str] | None = None,
    ) -> LedgerTotals:
        self.calls.append((t, tuple(servers), {k: tuple(v) for k, v in assignment.items()}))
        return LedgerTotals(models=(ModelTotals("a", "m"),))


def make(
    servers: dict[str, FakeScraper],
    *,
    clock: ManualClock | SystemClock | None = None,
    gpus: FakeGpus | None = None,
    deadline: float = 0.3,
    warnings: Sequence[str] = (),
    interval: float = 5,
    gpu_interval: float = 1,
    ledger: RecordingLedger | None = None,
) -> tuple[Sampler, RecordingLedger, list[int]]:
    ledger = ledger or RecordingLedger()
    discoveries: list[int] = []

    def discover(g: Sequence[GpuStatus]) -> Discovery:
        discoveries.append(len(g))
        return Discovery({"a": ("GPU-0",)}, warnings=tuple(warnings))

    sampler = Sampler(
        gpus=gpus or FakeGpus(),
        servers=servers,
        ledger=ledger,
        discover=discover,
        clock=clock or ManualClock(),
        pricing=PricingInfo("USD", 0.1, 1.3),
        interval_seconds=interval,
        gpu_interval_seconds=gpu_interval,
        window_seconds=60,
        scrape_deadline_seconds=deadline,
        discovery_interval_seconds=30,
        log=LOG,
    )
    return sampler, ledger, discoveries


def test_cycle_publishes_snapshot_with_every_server() -> None:
    sampler, ledger, _ = make({"a": FakeScraper(), "b": FakeScraper(fail="refused")})
    assert sampler.snapshot() is None
    snap = sampler.run_cycle()
    assert sampler.snapshot() is snap
    assert [s.name for s in snap.servers] == ["a", "b"]
    assert snap.servers[0].up and snap.servers[0].reading is not None
    assert not snap.servers[1].up and snap.servers[1].error_reason == "refused"
    assert snap.scrape_errors == (("b", "refused", 1),)
    assert ("server b: refused") in snap.degraded
    assert {c.name: c.success for c in snap.collectors} == {
        "nvml": True,
        "server/a": True,
        "server/b": False,
    }
    assert ledger.calls[0][2] == {"a": ("GPU-0",)}
    sampler.close()


def test_scrape_errors_accumulate_by_reason() -> None:
    bad = FakeScraper(fail="timeout")
    sampler, _, _ = make({"a": bad})
    sampler.run_cycle()
    sampler.run_cycle()
    bad.fail = "parse"
    snap = sampler.run_cycle()
    assert snap.scrape_errors == (("a", "parse", 1), ("a", "timeout", 2))
    sampler.close()


def test_hung_scrape_times_out_and_never_piles_up() -> None:
    release = threading.Event()
    stuck = FakeScraper(block=release)
    healthy = FakeScraper()
    sampler, _, _ = make({"stuck": stuck, "ok": healthy}, clock=SystemClock(), deadline=0.2)
    for _ in range(3):
        snap = sampler.run_cycle()
        by_name = {s.name: s for s in snap.servers}
        assert by_name["stuck"].error_reason == "timeout"
        assert by_name["ok"].up  # one stuck server never touches another
    assert stuck.calls == 1  # no second call while the first hangs
    assert healthy.calls == 3
    release.set()
    snap = sampler.run_cycle()
    assert {s.name: s.up for s in snap.servers}["stuck"]
    sampler.close()


def test_gpu_down_is_degraded_and_counted() -> None:
    sampler, _, _ = make({}, gpus=FakeGpus(up=False))
    snap = sampler.run_cycle()
    assert snap.degraded == ("gpu 0 (GPU-0): gpu_lost",)
    assert snap.nvml_errors == (("0", "gpu_lost", 1),)
    sampler.close()


def test_discovery_runs_at_start_then_at_its_interval() -> None:
    clock = ManualClock()
    sampler, _, discoveries = make({}, clock=clock, warnings=["no GPU processes found"])
    sampler.run_cycle()
    clock.advance(5)
    sampler.run_cycle()
    assert len(discoveries) == 1
    clock.advance(30)
    sampler.run_cycle()
    assert len(discoveries) == 2
    sampler.close()


def test_health_turns_unhealthy_when_cycles_stop() -> None:
    clock = ManualClock()
    sampler, _, _ = make({"b": FakeScraper(fail="refused")}, clock=clock)
    ok, lines = sampler.health(3)
    assert not ok and "no sampling cycle" in lines[0]
    sampler.run_cycle()
    ok, lines = sampler.health(3)
    assert ok and lines == ["server b: refused"]
    clock.advance(16)
    ok, lines = sampler.health(3)
    assert not ok and lines[0].startswith("last sampling cycle 16.0 s ago (limit 15.0 s)")
    sampler.close()


def test_loop_thread_runs_cycles_and_stops() -> None:
    sampler, ledger, _ = make(
        {"a": FakeScraper()}, clock=SystemClock(), interval=0.05, gpu_interval=0.01
    )
    sampler.start()
    deadline = SystemClock().monotonic() + 5
    while len(ledger.calls) < 3 and SystemClock().monotonic() < deadline:
        SystemClock().sleep(0.01)
    sampler.stop()
    sampler.close()
    assert len(ledger.calls) >= 3
    count = len(ledger.calls)
    SystemClock().sleep(0.15)
    assert len(ledger.calls) == count  # stopped means stopped


@pytest.mark.parametrize("reason", ["timeout", "refused", "http_status", "too_large", "parse"])
def test_reason_is_taken_from_the_error(reason: str) -> None:
    sampler, _, _ = make({"a": FakeScraper(fail=reason)})
    assert sampler.run_cycle().servers[0].error_reason == reason
    sampler.close()


def test_stuck_scrapes_hold_only_their_own_slot() -> None:
    # Issue 12: 8 servers stuck (a FIFO token file, a hung mount) used to fill the shared pool
    # of 8 threads, so every other server was reported `timeout` without being scraped.
    release = threading.Event()
    stuck = {f"stuck{i}": FakeScraper(block=release) for i in range(9)}
    healthy, failing = FakeScraper(), FakeScraper(fail="refused")
    servers = {**stuck, "ok": healthy, "bad": failing}
    sampler, _, _ = make(servers, clock=SystemClock(), deadline=0.3)
    try:
        for cycle in range(1, 4):
            by_name = {s.name: s for s in sampler.run_cycle().servers}
            assert by_name["ok"].up
            # A server that fails fast is reported by its own reason, not `timeout`.
            assert by_name["bad"].error_reason == "refused"
            assert {by_name[n].error_reason for n in stuck} == {"timeout"}
            assert (healthy.calls, failing.calls) == (cycle, cycle)
        assert all(s.calls == 1 for s in stuck.values())
        scrape_threads = [t for t in threading.enumerate() if t.name.startswith("scrape-stuck")]
        # Daemons: a scrape stuck in a system call never holds up the process at exit.
        assert len(scrape_threads) == 9 and all(t.daemon for t in scrape_threads)
    finally:
        release.set()
        sampler.close()


class JouleGpus(FakeGpus):
    """Each poll hands over 1 J (the monitor hands each joule out in one poll only)."""

    def poll(self) -> tuple[GpuStatus, ...]:
        self.polls += 1
        return (GpuStatus(DEVICE, True, None, 1.0),)


@dataclass
class EnergyLedger(RecordingLedger):
    booked_joules: float = 0.0
    events: tuple[AccountingEvent, ...] = ()

    def advance(
        self,
        t: float,
        gpus: Sequence[GpuStatus],
        servers: Sequence[ServerStatus],
        assignment: Mapping[str, Sequence[str]],
        process_owners: Mapping[int, str] | None = None,
    ) -> LedgerTotals:
        self.booked_joules += sum(g.energy_joules_added for g in gpus)
        return LedgerTotals(events=self.events)


def test_joules_of_polls_between_cycles_reach_the_ledger_once() -> None:
    gpus, ledger = JouleGpus(), EnergyLedger()
    sampler, _, _ = make(
        {}, clock=SystemClock(), gpus=gpus, interval=0.1, gpu_interval=0.01, ledger=ledger
    )
    sampler.start()
    deadline = SystemClock().monotonic() + 5
    while gpus.polls < 30 and SystemClock().monotonic() < deadline:
        SystemClock().sleep(0.01)
    sampler.stop()
    sampler.run_cycle()  # books what the last polls carried
    sampler.close()
    assert gpus.polls >= 30
    assert ledger.booked_joules == gpus.polls, "every poll's joules, once"


def _loop_briefly(gpus: FakeGpus) -> None:
    """A cycle by hand, then the loop for 0.5 s: cycles every 0.2 s, GPU ticks every 0.02 s."""
    sampler, _, _ = make({}, clock=SystemClock(), gpus=gpus, interval=0.2, gpu_interval=0.02)
    sampler.run_cycle()
    sampler.start()
    SystemClock().sleep(0.5)
    sampler.stop()
    sampler.close()


@pytest.mark.parametrize(("counter", "up"), [(True, True), (False, True), (True, False)])
def test_gpus_are_polled_between_cycles_only_when_power_is_integrated(
    counter: bool, up: bool
) -> None:
    # Counter deltas are exact at any spacing; power integration (or a GPU down) needs the
    # polls between cycles.
    gpus = FakeGpus(up=up, counter=counter)
    _loop_briefly(gpus)
    cycles = 1 + 2  # the one by hand, then one at once and one 0.2 s later (0.4 s: maybe a 4th)
    if counter and up:
        assert cycles <= gpus.polls <= cycles + 1  # one poll per cycle, none between
    else:
        assert gpus.polls >= cycles + 10


class CountingGpus(FakeGpus):
    """Counts the loop's questions; its GPU goes down at the poll numbered ``down_at``."""

    def __init__(self, down_at: int | None = None) -> None:
        super().__init__(up=True, counter=True)
        self.down_at = down_at
        self.asked = 0

    def poll(self) -> tuple[GpuStatus, ...]:
        if self.polls + 1 == self.down_at:
            self.up = False
        return super().poll()

    def counters_cover_energy(self) -> bool:
        self.asked += 1
        return super().counters_cover_energy()


def test_the_loop_sleeps_to_the_next_cycle_while_counters_cover_the_energy() -> None:
    # The GPU ticks between cycles would poll nothing: the thread does not wake for them
    # (10 ticks per cycle here), it asks once per cycle.
    gpus = CountingGpus()
    _loop_briefly(gpus)
    cycles = gpus.polls  # one poll per cycle, none between
    assert 3 <= cycles <= 4
    assert gpus.asked <= cycles + 1, f"{gpus.asked} wake-ups for {cycles} cycles"


def test_polls_between_cycles_resume_after_the_cycle_that_finds_a_gpu_down() -> None:
    gpus = CountingGpus(down_at=3)  # the by-hand cycle, the loop's first, then down
    sampler, _, _ = make({}, clock=SystemClock(), gpus=gpus, interval=0.2, gpu_interval=0.02)
    sampler.run_cycle()
    sampler.start()
    deadline = SystemClock().monotonic() + 5
    while gpus.polls < 3 and SystemClock().monotonic() < deadline:
        SystemClock().sleep(0.005)
    SystemClock().sleep(0.15)  # within the cycle after the one that found the GPU down
    sampler.stop()
    sampler.close()
    assert not gpus.up
    assert gpus.polls >= 3 + 4, "the 1 s polls (here 0.02 s) are back at once"


def test_accounting_events_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    ledger = EnergyLedger(
        events=(
            AccountingEvent("implausible", "a", "m", "input:p", 1, "increase of 1e20"),
            AccountingEvent("too_many_models", "a", "x", "", 37, "37 not tracked"),
            AccountingEvent("series_reset", "a", "m", "input:p", 1, "5 -> 1"),
        )
    )
    sampler, _, _ = make({}, ledger=ledger)
    with caplog.at_level(logging.INFO, LOG.name):
        for _ in range(3):
            snap = sampler.run_cycle()
    sampler.close()
    assert dict(((s, r), n) for s, r, n in snap.scrape_errors) == {
        ("a", "implausible"): 3,
        ("a", "too_many_models"): 111,
    }
    accounting = [r for r in caplog.records if r.getMessage().startswith("accounting:")]
    assert [r.getMessage() for r in accounting] == [
        "accounting: implausible",
        "accounting: too_many_models",
        "accounting: series_reset",
    ]
    assert [r.levelname for r in accounting] == ["WARNING", "WARNING", "INFO"]
