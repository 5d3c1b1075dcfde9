"""CPU of the agent outside the scrape threads, per component, beside a baseline release.

Issue 16 splits the agent's CPU in two: the scrape threads (fetch + parse of the servers'
bodies) and everything else, which this benchmark measures at the headline setup, 8
simulated H100 x 8 vLLM V1 servers x 3 models x 8 data-parallel engines, default settings
(scrape and snapshot every 5 s, GPU poll every 1 s, Prometheus scraping /metrics every 15 s):

- **sampling cycle, scrapes replayed**: ``Sampler.run_cycle`` as the agent builds it
  (``agent.cli.build_agent``), each server's scraper replaced by one that hands back a
  reading parsed ahead of time (``render_exposition`` bodies of 1.41 MB read by
  ``read_exposition``; every raw series grows each cycle, so every per-series counter step
  runs). What is left is what the cycle costs besides parsing: the hand-off to the scrape
  threads, one GPU poll, the ledger (960 per-series counter steps, anatomy, window ratios)
  and the Snapshot;
- **ledger.advance** alone, the same readings;
- **GPU poll, 8 GPUs**: ``GpuMonitor.poll`` over ``SimulatedNvml``, and the part of it that is
  the simulated NVML's own Python (the same NVML calls made directly, serially): real NVML
  calls are C (microseconds), so ``agent share = poll - simulated NVML`` is what a real node
  pays;
- **/metrics render**: the body the HTTP server answers, text 0.0.4 and OpenMetrics, plain
  and gzip, for a fresh Snapshot (a first request) and for a repeated one (a second
  Prometheus of an HA pair, or a scrape between two snapshots);
- **main thread**: ``tokenergy run``'s main thread waiting for signals, ms per 5 s;
- **5 s period** = a cycle + 4 GPU polls + a third of a /metrics request (text + gzip, fresh
  Snapshot) + the main thread's 5 s.

CPU is ``time.process_time`` (every thread of the process), median of batches. The baseline
is another git revision (default: the release before this work) exported with
``git archive`` and measured by this same script in a subprocess, so both columns come from
the same run on the same host. ``--loop SECONDS`` also runs the real loop (the sampler's own
thread, /metrics GET every 15 s over HTTP) in both and prints CPU per thread.

Rerun: ``PYTHONPATH=. python tests/benchmarks/bench_cycle.py [--cycles 20] [--baseline REV]
[--loop 60]``
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

BASELINE = "4fbdea7"
"""The revision before the issue-16 work outside the scrape path."""

GPUS = 8
SERVERS = 8
MODELS = 3
RANKS = 8
MODEL_STEM = "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8-dynamic"
ACCEPT_OPENMETRICS = "application/openmetrics-text;version=1.0.0"


def cpu_per_call(
    fn: Callable[[], object], n: int, batches: int, before: Callable[[], object] | None = None
) -> list[float]:
    """Process CPU s per call of ``fn`` (every thread of this process), one figure per batch.

    ``before``, given, runs untimed ahead of each call. Standard library only:
    ``bench_overhead.py`` loads it by path, and this script runs beside a baseline tree.
    """
    per = []
    for _ in range(batches):
        used = 0.0
        for _ in range(n):
            if before is not None:
                before()
            t0 = time.process_time()
            fn()
            used += time.process_time() - t0
        per.append(used / n)
    return per


def _cpu_ms(
    fn: Callable[[], object], n: int, batches: int = 5, before: Callable[[], object] | None = None
) -> float:
    """Process CPU ms per call of ``fn``, the least of ``batches``.

    The least batch is the one least disturbed by other jobs on a shared host.
    """
    return min(cpu_per_call(fn, n, batches, before)) * 1e3


def _readings(calls: int) -> dict[str, Iterator[Any]]:
    """Per server, ``calls`` successive readings whose every raw series grows."""
    from agent.clock import SystemClock
    from agent.servers.profiles import read_exposition
    from agent.simulation.servers import SimulatedServer

    names = [f"{MODEL_STEM}-{i}" for i in range(MODELS)]
    clock = SystemClock()
    out: dict[str, Iterator[Any]] = {}
    for i in range(SERVERS):
        sim = SimulatedServer(f"vllm{i}", "vllm", names, wall=clock.wall, ranks=RANKS)
        for m in names:
            sim.advance(
                m,
                prompt_tokens=50_000_000,
                generation_tokens=9_000_000,
                cached_prompt_tokens=20_000_000,
                requests_finished=80_000,
            )
        first = read_exposition(sim.exposition(), "vllm")

        def grown(k: int, first: Any = first) -> Any:
            models = tuple(
                dataclasses.replace(
                    m,
                    series=tuple(s._replace(value=s.value + 97.0 * k) for s in m.series),
                )
                for m in first.models
            )
            return dataclasses.replace(first, models=models)

        out[f"vllm{i}"] = iter([grown(k) for k in range(calls)])
    return out


class _Replay:
    """A scraper that hands back readings made ahead (the parse is not measured here).

    ``burn_ms``: CPU each scrape spends in Python first (holding the GIL, as the parse
    does), so the real loop sees the scrape threads compete with the sampler.
    """

    def __init__(self, readings: Iterator[Any], burn_ms: float = 0.0) -> None:
        self._readings = readings
        self._burn = burn_ms / 1e3

    def scrape(self) -> Any:
        if self._burn:
            end = time.thread_time() + self._burn
            while time.thread_time() < end:
                pass
        return next(self._readings)


def _agent(calls: int, clock: Any, burn_ms: float = 0.0) -> Any:
    """The agent as ``tokenergy run`` builds it on ``clock``, its scrapers replaced by replays."""
    from agent.cli import build_agent
    from agent.config import HttpSettings, ServerSettings, Settings
    from agent.sampler import Sampler
    from agent.simulation.nvml import SimulatedNvml

    settings = Settings(
        servers=[
            ServerSettings(
                name=f"vllm{i}", url=f"http://127.0.0.1:9/{i}", engine="vllm", gpus=[i % GPUS]
            )
            for i in range(SERVERS)
        ],
        http=HttpSettings(listen="127.0.0.1:0"),
    )
    log = logging.getLogger("bench_cycle")
    log.setLevel(logging.ERROR)
    nvml = SimulatedNvml(["H100-SXM-80GB"] * GPUS, clock, seed=1)
    for i in range(GPUS):
        nvml.set_load(i, 0.6 + 0.3 * i / GPUS)
    agent = build_agent(settings, nvml, clock, log)
    old: Sampler = agent.sampler
    replays = {name: _Replay(r, burn_ms) for name, r in _readings(calls).items()}
    # Same settings, the replays as its servers: everything but the fetch and parse is real.
    sampler = Sampler(
        gpus=old._gpus,
        servers=replays,
        ledger=old._ledger,
        discover=old._discover,
        clock=old._clock,
        pricing=old._pricing,
        interval_seconds=old._interval,
        gpu_interval_seconds=old._gpu_interval,
        window_seconds=old._window,
        scrape_deadline_seconds=old._scrape_deadline,
        discovery_interval_seconds=old._discovery_interval,
        log=old._log,
    )
    agent.sampler = sampler
    # /metrics over the new sampler's Snapshots, as build_agent wires it.
    from agent import __version__
    from exporters.http import MetricsServer
    from exporters.prometheus import SnapshotCollector, build_registry

    agent.registry = build_registry(SnapshotCollector(sampler.snapshot, old._clock, __version__))
    agent.server = MetricsServer(
        registry=agent.registry,
        health=lambda: sampler.health(3),
        settings=settings.http,
        log=log,
    )
    return agent, nvml


def _sim_nvml_reads(nvml: Any) -> Callable[[], None]:
    """The simulated NVML calls of one poll of every GPU, made directly and serially."""
    from agent.gpu.nvml import nvmlMemory_v2

    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(GPUS)]

    def reads() -> None:
        for h in handles:
            nvml.nvmlDeviceGetPowerUsage(h)
            nvml.nvmlDeviceGetTotalEnergyConsumption(h)
            nvml.nvmlDeviceGetUtilizationRates(h)
            nvml.nvmlDeviceGetMemoryInfo(h, version=nvmlMemory_v2)
            nvml.nvmlDeviceGetEnforcedPowerLimit(h)
            nvml.nvmlDeviceGetComputeRunningProcesses(h)

    return reads


def _get(port: int, accept: str = "", gzip_ok: bool = False) -> bytes:
    """One /metrics request over a raw socket (a near-free client); returns the body."""
    head = f"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n"
    if gzip_ok:
        head += "Accept-Encoding: gzip\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall((head + "\r\n").encode())
        chunks = []
        while chunk := sock.recv(1 << 20):
            chunks.append(chunk)
    data = b"".join(chunks)
    return data.split(b"\r\n\r\n", 1)[1]


def main_thread_ms(seconds: float) -> float:
    """CPU of ``tokenergy run``'s main thread while it waits for signals, ms per 5 s.

    ``agent.cli.wait_for_signals`` where the tree has it; else the loop ``run_command`` had
    before it (a 0.2 s poll of the stop event).
    """
    import agent.cli as cli

    stop, hup, wake = threading.Event(), threading.Event(), threading.Event()
    used: list[float] = []

    def main() -> None:
        t0 = time.thread_time()
        waits = getattr(cli, "wait_for_signals", None)
        if waits is not None:
            waits(stop, hup, wake, lambda: None)
        else:
            while not stop.wait(0.2):
                if hup.is_set():
                    hup.clear()
        used.append(time.thread_time() - t0)

    thread = threading.Thread(target=main, name="bench-main")
    thread.start()
    time.sleep(seconds)
    stop.set()
    wake.set()
    thread.join()
    return used[0] * 1e3 * 5.0 / seconds


def measure(cycles: int, main_seconds: float = 10.0) -> dict[str, float]:
    """Every component, ms of process CPU per call (the main thread: over ``main_seconds``)."""
    from agent.clock import ManualClock

    batches = 5
    # Each run_cycle and advance takes one reading per server: enough for every batch.
    clock = ManualClock()
    agent, nvml = _agent(cycles * batches * 3 + 2 * cycles + 30, clock)
    out: dict[str, float] = {}
    try:
        agent.server.start()
        agent.monitor.start()
        sampler = agent.sampler

        def cycle() -> None:
            # The clock moves as in the loop: the ratio window holds 12 intervals, discovery
            # runs once a minute, the GPU meters integrate 5 s.
            clock.advance(5.0)
            sampler.run_cycle()

        for _ in range(15):  # a full window
            cycle()
        out["cycle"] = _cpu_ms(cycle, cycles, batches)

        ledger = sampler._ledger
        snap = sampler.snapshot()
        mapping = sampler.mapping()
        replays = sampler._servers
        from agent.readings import ServerStatus

        def advance() -> None:
            clock.advance(5.0)
            statuses = [
                ServerStatus(name=n, up=True, reading=r.scrape()) for n, r in replays.items()
            ]
            ledger.advance(
                clock.monotonic(), snap.gpus, statuses, mapping.assignment, mapping.process_owners
            )

        out["ledger"] = _cpu_ms(advance, cycles, batches)
        cycle()  # a Snapshot of the ledger as it is now

        def poll() -> None:
            clock.advance(1.0)
            agent.monitor.poll()

        out["gpu_poll"] = _cpu_ms(poll, 4 * cycles, batches)
        out["sim_nvml"] = _cpu_ms(_sim_nvml_reads(nvml), 4 * cycles, batches)
        out["gpu_agent"] = out["gpu_poll"] - out["sim_nvml"]

        port = agent.port
        for name, accept, gz in (
            ("text", "", False),
            ("text_gzip", "", True),
            ("om", ACCEPT_OPENMETRICS, False),
            ("om_gzip", ACCEPT_OPENMETRICS, True),
        ):
            get = lambda a=accept, g=gz: _get(port, a, g)  # noqa: E731
            out[f"render_{name}_repeat"] = _cpu_ms(get, cycles)
            out[f"render_{name}_fresh"] = _cpu_ms(get, cycles, before=cycle)
        body = _get(port)
        out["body_kb"] = len(body) / 1e3
        out["body_gzip_kb"] = len(gzip.compress(body, 6)) / 1e3
        out["main_thread"] = main_thread_ms(main_seconds)
        out["period"] = (
            out["cycle"]
            + 4 * out["gpu_poll"]
            + out["render_text_gzip_fresh"] / 3
            + out["main_thread"]
        )
        out["period_real_nvml"] = out["period"] - 5 * out["sim_nvml"]
    finally:
        agent.sampler.close()
        agent.stop()
    return out


def _thread_cpu() -> dict[int, float]:
    """CPU s per thread id of this process, to the nanosecond.

    From ``/proc/self/task/*/schedstat``: the tick-sampled ``stat`` times come in 10 ms
    grains, as coarse as a GPU thread's whole minute.
    """
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return out


def _group(name: str) -> str:
    for stem in ("tokenergy-gpu-", "scrape-", "http_"):
        if name.startswith(stem):
            return stem + "* (all)"
    return name


def loop(seconds: float, burn_ms: float) -> dict[str, float]:
    """The real loop for ``seconds``, /metrics fetched every 15 s; CPU s per thread.

    Each replayed scrape burns ``burn_ms`` of CPU first (the scrape threads' parse).
    """
    from agent.clock import SystemClock

    agent, _ = _agent(int(seconds / 5) + 20, SystemClock(), burn_ms)
    stop = threading.Event()

    def prometheus() -> None:
        while not stop.wait(15.0):
            _get(agent.port, "", True)

    try:
        agent.start()
        client = threading.Thread(target=prometheus, name="bench-prometheus", daemon=True)
        client.start()
        time.sleep(1.0)  # past the start: threads started, first cycle done
        before = _thread_cpu()
        time.sleep(seconds)
        after = _thread_cpu()
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {}
        for tid, cpu in after.items():
            name = _group(names.get(tid, "other"))
            out[name] = out.get(name, 0.0) + cpu - before.get(tid, 0.0)
    finally:
        stop.set()
        agent.stop()
    return out


def _baseline(rev: str, args: Sequence[str]) -> dict[str, Any]:
    """This script's measurement run over ``rev``'s ``agent`` and ``exporters``."""
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", rev, "agent", "exporters"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=tmp)
        done = subprocess.run(
            [sys.executable, __file__, "--json", *args],
            check=True,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
        )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


ROWS = (
    ("cycle", "sampling cycle, scrapes replayed (ms)"),
    ("ledger", "  of which ledger.advance (ms)"),
    ("gpu_poll", "GPU poll, 8 GPUs (ms)"),
    ("sim_nvml", "  of which simulated NVML calls (ms)"),
    ("gpu_agent", "  agent share of a poll (ms)"),
    ("render_text_fresh", "/metrics text, new Snapshot (ms)"),
    ("render_text_gzip_fresh", "/metrics text+gzip, new Snapshot (ms)"),
    ("render_om_fresh", "/metrics OpenMetrics, new Snapshot (ms)"),
    ("render_om_gzip_fresh", "/metrics OpenMetrics+gzip, new Snapshot (ms)"),
    ("render_text_repeat", "/metrics text, same Snapshot (ms)"),
    ("render_text_gzip_repeat", "/metrics text+gzip, same Snapshot (ms)"),
    ("render_om_gzip_repeat", "/metrics OpenMetrics+gzip, same Snapshot (ms)"),
    ("body_kb", "/metrics body, text (kB)"),
    ("main_thread", "run's main thread waiting, ms per 5 s"),
    ("period", "CPU per 5 s period (ms)"),
    ("period_real_nvml", "  less the simulated NVML (ms)"),
)


def table(now: dict[str, float], base: dict[str, float], rev: str) -> str:
    """Each component beside the baseline, with base/now ratios."""
    lines = [
        f"CPU outside the scrape threads: {GPUS} simulated H100, {SERVERS} vLLM V1 servers x "
        f"{MODELS} models x {RANKS} DP engines, defaults (cycle 5 s, GPU poll 1 s, /metrics 15 s)",
        f"{'':<46}{'baseline ' + rev:>18}{'this tree':>11}{'base/now':>10}",
    ]
    for key, label in ROWS:
        b, n = base.get(key, float("nan")), now.get(key, float("nan"))
        ratio = f"{b / n:.2f}x" if n > 0 else "-"
        lines.append(f"{label:<46}{b:>18.3f}{n:>11.3f}{ratio:>10}")
    period = now["period"]
    lines.append(
        f"% of one core outside the scrapes: baseline {base['period'] / 50:.3f} %, "
        f"this tree {period / 50:.3f} % (target <= 7 ms per 5 s = 0.14 %)"
    )
    return "\n".join(lines)


def loop_table(
    now: dict[str, float],
    base: dict[str, float],
    seconds: float,
    main_now: float,
    main_base: float,
) -> str:
    """CPU per thread over the real loop, ms per 5 s, beside the baseline.

    ``main_now`` and ``main_base``: ``tokenergy run``'s main thread, ms per 5 s (the loop
    here runs under the benchmark's own main thread).
    """
    lines = [
        f"real loop, {seconds:g} s (sampler thread, GPU readers, /metrics GET + gzip every "
        "15 s; scrapes replayed): CPU ms per 5 s by thread",
        f"{'thread':<32}{'baseline':>10}{'this tree':>11}",
    ]
    names = sorted(set(now) | set(base), key=lambda k: -max(now.get(k, 0), base.get(k, 0)))
    per = 5.0 / seconds * 1e3
    for name in names:
        lines.append(f"{name:<32}{base.get(name, 0) * per:>10.3f}{now.get(name, 0) * per:>11.3f}")

    def outside(cpu: dict[str, float]) -> float:
        return sum(v for k, v in cpu.items() if k not in ("bench-prometheus", "scrape-* (all)"))

    label = "agent outside the scrape threads"
    lines.append(f"{label:<32}{outside(base) * per:>10.3f}{outside(now) * per:>11.3f}")
    label = "  + run's main thread (above)"
    lines.append(
        f"{label:<32}{outside(base) * per + main_base:>10.3f}"
        f"{outside(now) * per + main_now:>11.3f}   (target <= 7 ms per 5 s)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=20, help="calls per batch (20)")
    parser.add_argument("--baseline", default=BASELINE, help=f"git revision ({BASELINE})")
    parser.add_argument("--loop", type=float, default=0.0, help="real loop seconds (0: none)")
    parser.add_argument(
        "--scrape-ms", type=float, default=5.0, help="CPU per replayed scrape in the loop (5)"
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    own = ["--cycles", str(args.cycles), "--loop", str(args.loop)]
    own += ["--scrape-ms", str(args.scrape_ms)]
    if args.json:
        result: dict[str, Any] = {"measure": measure(args.cycles)}
        if args.loop:
            result["loop"] = loop(args.loop, args.scrape_ms)
        print(json.dumps(result))
        return 0
    base = _baseline(args.baseline, own)
    now = measure(args.cycles)
    print(table(now, base["measure"], args.baseline), flush=True)
    if args.loop:
        mains = now["main_thread"], base["measure"]["main_thread"]
        looped = loop(args.loop, args.scrape_ms)
        print("\n" + loop_table(looped, base["loop"], args.loop, *mains))
    return 0


if __name__ == "__main__":
    sys.exit(main())
