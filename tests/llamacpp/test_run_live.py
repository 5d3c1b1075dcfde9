"""`tokenergy run` scraping a live llama-server, with a simulated GPU, across a server restart.

The agent (``python -m agent run --simulate-gpus 1``) scrapes llama-server every 0.5 s while
completions flow. Its /metrics is polled all along. After each batch of requests the test waits
for a scrape that follows the last request, so no token falls in an interval that holds a
restart: then ``tokenergy_tokens_total`` must equal the sums the responses report exactly, before
the restart and after it. Then llama-server gets SIGTERM and a new one starts on the same port;
the agent sees it down, then up at zero counters. Last, a quick restart right after a burst of
requests, with no scrape awaited: an agent may lose the tokens of an interval with a restart
but never invent any. No counter the agent serves may go backwards at any time.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

SERVER = "tiny"
INTERVAL_S = 0.5
POLL_S = 0.2
# Requests are spread over several scrape intervals, so scrapes land while they flow.
PAUSE_S = 0.15
WAIT_S = 30.0

Labels = tuple[tuple[str, str], ...]


def parse(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def pick(samples: dict[tuple[str, Labels], float], name: str, **labels: str) -> float | None:
    """Sum of the samples named ``name`` whose labels include ``labels``; None when none."""
    found = [
        v
        for (n, ls), v in samples.items()
        if n == name and all((k, labels[k]) in ls for k in labels)
    ]
    return sum(found) if found else None


@dataclass
class Watch:
    """The agent's /metrics, polled in a thread: the latest samples and every decrease."""

    url: str
    latest: dict[tuple[str, Labels], float] = field(default_factory=dict)
    polls: int = 0
    failures: list[str] = field(default_factory=list)
    decreases: list[str] = field(default_factory=list)
    up_history: list[float] = field(default_factory=list)
    outputs_seen: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def run(self) -> None:
        """Poll until stopped; counters are the samples named ``*_total``."""
        with httpx.Client(timeout=5.0) as client:
            while not self.stop.is_set():
                try:
                    response = client.get(self.url)
                    response.raise_for_status()
                    now = parse(response.text)
                except (httpx.HTTPError, ValueError) as exc:
                    self.failures.append(repr(exc))
                    self.stop.wait(POLL_S)
                    continue
                for key, value in now.items():
                    old = self.latest.get(key)
                    if key[0].endswith("_total") and old is not None and value < old:
                        self.decreases.append(f"{key}: {old} -> {value}")
                output = pick(now, "tokenergy_tokens_total", server=SERVER, type="output")
                if output is not None and output not in self.outputs_seen:
                    self.outputs_seen.append(output)
                up = pick(now, "tokenergy_server_up", server=SERVER)
                if up is not None and (not self.up_history or self.up_history[-1] != up):
                    self.up_history.append(up)
                with self.changed:
                    self.latest = now
                    self.polls += 1
                    self.changed.notify_all()
                self.stop.wait(POLL_S)

    def value(self, name: str, **labels: str) -> float | None:
        """The latest value of one series (summed over unnamed labels)."""
        return pick(self.latest, name, server=SERVER, **labels)

    def wait_for(self, name: str, expected: float, **labels: str) -> bool:
        """Wait until the series equals ``expected``; False after WAIT_S."""
        return self.wait_until(lambda: self.value(name, **labels) == expected)

    def wait_until(self, ready: Callable[[], bool]) -> bool:
        """Wait until ``ready()`` holds on the latest poll; False after WAIT_S."""
        deadline = time.monotonic() + WAIT_S
        with self.changed:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True


@dataclass
class Outcome:
    """What the scenario saw; the tests assert on it."""

    first_output: int
    totals: Any
    before_restart: dict[str, float | None]
    after_restart: dict[str, float | None]
    settled_before: bool
    settled_after: bool
    quick_bounds: dict[str, tuple[int, int]]
    after_quick_restart: dict[str, float | None]
    watch: Watch = field(repr=False)
    energy_joules: float | None
    agent_returncode: int
    agent_stderr: str = field(repr=False)


def tokens(watch: Watch) -> dict[str, float | None]:
    return {
        "input": watch.value("tokenergy_tokens_total", type="input"),
        "output": watch.value("tokenergy_tokens_total", type="output"),
        "cached": watch.value("tokenergy_cached_input_tokens_total"),
    }


@pytest.fixture(scope="module")
def outcome(
    start_llama: Callable[..., Any], kit: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Outcome]:
    server = start_llama()
    config = tmp_path_factory.mktemp("agent") / "agent.toml"
    config.write_text(
        f"[sampling]\ninterval_seconds = {INTERVAL_S}\nwindow_seconds = 10\n\n"
        '[http]\nlisten = "127.0.0.1:0"\n\n'
        f'[[servers]]\nname = "{SERVER}"\nurl = "{server.base}/metrics"\n'
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config), "--simulate-gpus", "1"],
        cwd=kit.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    port: list[int] = []
    started = threading.Event()

    def read_stderr() -> None:
        assert agent.stderr is not None
        for line in agent.stderr:
            lines.append(line)
            found = re.search(r"msg=started .*listen=127\.0\.0\.1:(\d+)", line)
            if found:
                port.append(int(found.group(1)))
                started.set()
        started.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    watch: Watch | None = None
    poller: threading.Thread | None = None
    try:
        assert started.wait(60) and port, f"agent did not start: {''.join(lines)}"
        watch = Watch(f"http://127.0.0.1:{port[0]}/metrics")
        poller = threading.Thread(target=watch.run, daemon=True)
        poller.start()
        # The agent's first sight of the server is its baseline: zero, no request made yet.
        assert watch.wait_for("tokenergy_server_up", 1.0), "".join(lines)

        totals = kit.workload(server, 12, kit.new_totals(), pause=PAUSE_S)
        first_output = totals.output
        settled_before = watch.wait_for("tokenergy_tokens_total", first_output, type="output")
        before = tokens(watch)

        server.stop()
        assert watch.wait_for("tokenergy_server_up", 0.0), "agent never saw llama-server down"
        server.start()
        assert watch.wait_for("tokenergy_server_up", 1.0), "agent never saw llama-server up"

        kit.workload(server, 8, totals, offset=12, pause=PAUSE_S)
        settled_after = watch.wait_for("tokenergy_tokens_total", totals.output, type="output")
        after = tokens(watch)
        energy = watch.value("tokenergy_energy_joules_total")

        # A quick restart, no scrape awaited: the agent may lose what the old process made
        # after its last scrape (at most this batch), never more, and invents nothing.
        unscraped = kit.workload(server, 6, kit.new_totals(), offset=20)
        server.restart()
        fresh = kit.workload(server, 4, kit.new_totals(), offset=26)
        quick_bounds = {
            kind: (
                getattr(totals, kind) + getattr(fresh, kind),
                getattr(totals, kind) + getattr(fresh, kind) + getattr(unscraped, kind),
            )
            for kind in ("input", "output", "cached")
        }
        low = quick_bounds["output"][0]
        watch.wait_until(lambda: (watch.value("tokenergy_tokens_total", type="output") or 0) >= low)
        time.sleep(4 * INTERVAL_S)  # any later scrape would have shown an invented token
        after_quick = tokens(watch)
    finally:
        if watch is not None:
            watch.stop.set()
        if poller is not None:
            poller.join(10)
        agent.terminate()
        try:
            agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait(10)
        reader.join(10)
        server.stop()
    assert watch is not None
    yield Outcome(
        first_output=first_output,
        totals=totals,
        before_restart=before,
        after_restart=after,
        settled_before=settled_before,
        settled_after=settled_after,
        quick_bounds=quick_bounds,
        after_quick_restart=after_quick,
        watch=watch,
        energy_joules=energy,
        agent_returncode=agent.returncode,
        agent_stderr="".join(lines),
    )


def test_output_tokens_equal_the_responses_across_a_restart(outcome: Outcome) -> None:
    assert outcome.settled_before, outcome.before_restart
    assert outcome.before_restart["output"] == outcome.first_output
    assert outcome.settled_after, outcome.after_restart
    assert outcome.after_restart["output"] == outcome.totals.output
    assert outcome.totals.output > outcome.first_output


def test_input_tokens_are_computed_plus_cached(outcome: Outcome) -> None:
    assert outcome.after_restart["input"] == outcome.totals.input


def test_cached_tokens_are_the_cache_hits(outcome: Outcome) -> None:
    assert outcome.totals.cached > 0
    assert outcome.after_restart["cached"] == outcome.totals.cached


@pytest.mark.parametrize("kind", ["input", "output", "cached"])
def test_a_quick_restart_loses_at_most_its_interval_and_invents_nothing(
    outcome: Outcome, kind: str
) -> None:
    low, high = outcome.quick_bounds[kind]
    value = outcome.after_quick_restart[kind]
    assert value is not None
    assert low <= value <= high, (low, value, high)


def test_no_counter_goes_backwards(outcome: Outcome) -> None:
    watch = outcome.watch
    assert watch.failures == []
    assert watch.decreases == []
    # The watch saw the baseline, the first batch and the end: it polled all along.
    seen = watch.outputs_seen
    assert {0.0, outcome.first_output, outcome.totals.output} <= set(seen)
    assert len(seen) > 3  # and scraped while the requests flowed
    assert seen == sorted(seen)


def test_agent_saw_the_restart_and_stopped_cleanly(outcome: Outcome) -> None:
    # Down and up at the awaited restart; the quick one may fall between two scrapes.
    assert outcome.watch.up_history in ([1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 1.0])
    assert outcome.energy_joules is not None and outcome.energy_joules > 0
    assert outcome.agent_returncode == 0, outcome.agent_stderr
    assert "Traceback" not in outcome.agent_stderr
