"""How close is the agent's joules per output token to the truth, against today's DIY PromQL?

Virtual time (``ManualClock``), the demo's ``bursty`` workload (``agent.simulation.workload``:
bursts of 0.1-0.55 s at 95 % demand in 70 % of the seconds, 12 % demand in between) on the
demo's servers: vLLM on 2 x H100, SGLang and llama.cpp on one H100 each. The simulated H100
reports power as a 1 s trailing average, like real H100s (``agent.simulation.nvml``); its
energy counter is exact. Tokens and power move every 50 ms tick.

Compared, per server and window, with the truth (exact simulated energy of the server's GPUs /
exact output tokens, over the same window):

- **tokenergy**: the production path, ``GpuMonitor`` (NVML energy counter) polled every 1 s,
  ``Ledger`` advanced every 5 s (the defaults); J/token = increase of the server's
  ``energy_joules_total`` / increase of its ``output_tokens_total`` between the two cycles
  that bound the window;
- **tokenergy, counter off**: the same with the energy counter unsupported, so the monitor
  integrates the 1 s-average power sampled every 1 s (trapezoid rule);
- **DIY dcgm-exporter**: ``avg_over_time(DCGM_FI_DEV_POWER_USAGE[w]) /
  rate(vllm:generation_tokens_total[w])`` with Prometheus scraping every 15 s and
  dcgm-exporter collecting power every 15 s or every 30 s (its default, ``-c 30000``, so
  every other scrape repeats the value; dcgm-exporter's --collect-interval, pkg/cmd/app.go);
- **DIY NVML counter**: ``increase(energy[w]) / increase(tokens[w])`` with the NVML energy
  counter read at the same 15 s scrapes.

Sampling phases are random per seed; windows are back to back on the agent's 5 s grid. The
token counters are read exactly (the parser's exactness is tested elsewhere), so every error
here is energy sampling and window alignment. Not modelled, common to every method: the
±5 % board gain error of real sensors and the H100's 25 %-of-the-time power sampling
(Yang et al., SC'24, arXiv 2312.02741), which would make the power-based rows worse, not the
counter rows.

Rerun: ``python tests/benchmarks/bench_accuracy.py [--seeds 3] [--minutes 30]``
(about 30-60 s on 2 shared cores).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from agent.accounting.ledger import Ledger
from agent.clock import ManualClock
from agent.config import GpuSettings, PricingSettings
from agent.gpu.monitor import GpuMonitor
from agent.gpu.nvml import NvmlBackend
from agent.readings import GpuStatus, ServerReading, ServerStatus, TokenReading
from agent.simulation.nvml import SimulatedNvml
from agent.simulation.workload import DEMO_SERVERS, TICK_SECONDS, Workload

GPUS = ("H100-SXM-80GB",) * 4
CYCLE_TICKS = 100  # 5 s sampling interval (the default)
POLL_TICKS = 20  # 1 s GPU interval (the default)
SCRAPE_TICKS = 300  # Prometheus scrape interval, 15 s
WINDOWS_SECONDS = (60.0, 300.0)
BASELINE = "DIY avg_over_time(power)/rate, dcgm 30 s"
METHODS = (
    "tokenergy (NVML counter, 1 s poll, 5 s cycle)",
    "tokenergy, counter off (1 s power, integrated)",
    "DIY avg_over_time(power)/rate, dcgm 15 s",
    "DIY avg_over_time(power)/rate, dcgm 30 s",
    "DIY increase(NVML counter)/increase(tokens), 15 s",
)


@dataclass
class Series:
    """Samples of one observer: time s -> per-server (energy J or power W, output tokens)."""

    t: list[float] = field(default_factory=list)
    values: list[dict[str, tuple[float, float]]] = field(default_factory=list)


@dataclass
class Run:
    """Everything one seeded run recorded."""

    truth: Series
    agent: Series
    agent_no_counter: Series
    dcgm15: Series
    dcgm30: Series
    counter15: Series


def _rig(clock: ManualClock, seed: int, counter: bool) -> tuple[SimulatedNvml, GpuMonitor]:
    sim = SimulatedNvml(GPUS, clock, seed=seed)
    if not counter:
        for i in range(len(GPUS)):
            sim.set_not_supported(i, "energy")
    log = logging.getLogger("bench_accuracy")
    log.disabled = True
    monitor = GpuMonitor(NvmlBackend(sim, log), clock, GpuSettings(read_timeout_seconds=30.0), log)
    monitor.start()
    return sim, monitor


def simulate(seed: int, seconds: float) -> Run:
    """One seeded run of ``seconds`` of virtual time; returns every observer's samples."""
    rng = random.Random(seed)
    clock = ManualClock(start=0.0)
    sim, monitor = _rig(clock, seed, counter=True)
    sim_p, monitor_p = _rig(clock, seed, counter=False)
    workload = Workload("bursty", seed)
    servers = DEMO_SERVERS
    models = {s.name: s.model for s in servers}
    gpus_of = {s.name: s.gpus for s in servers}
    assignment = {s.name: [sim.uuid(g) for g in s.gpus] for s in servers}
    assignment_p = {s.name: [sim_p.uuid(g) for g in s.gpus] for s in servers}
    pricing = PricingSettings()
    ledger, ledger_p = Ledger(pricing, 60.0), Ledger(pricing, 60.0)
    # Random phases (whole ticks) of the agent's loop, Prometheus' scrapes, dcgm's collections.
    agent_phase = rng.randrange(POLL_TICKS)
    scrape_phase = rng.randrange(SCRAPE_TICKS)
    dcgm_phase = {15: rng.randrange(SCRAPE_TICKS), 30: rng.randrange(2 * SCRAPE_TICKS)}
    dcgm_power: dict[int, dict[int, float]] = {15: {}, 30: {}}
    tokens = {s.name: 0 for s in servers}
    pending: dict[str, float] = {}
    pending_p: dict[str, float] = {}
    run = Run(Series(), Series(), Series(), Series(), Series(), Series())
    handles = [sim.nvmlDeviceGetHandleByIndex(i) for i in range(len(GPUS))]
    # One warm-up minute so the 1 s power average and every observer have settled.
    start_tick = round(60.0 / TICK_SECONDS)
    end_tick = start_tick + round(seconds / TICK_SECONDS)
    try:
        for k in range(end_tick + 1):
            clock.advance(k * TICK_SECONDS - clock.monotonic())
            t = clock.monotonic()
            # -- observers read the state at t (tokens of ticks < k) -------------------------
            for every, phase in ((15, dcgm_phase[15]), (30, dcgm_phase[30])):
                if (k - phase) % (every * 20) == 0:
                    dcgm_power[every] = {
                        i: sim.nvmlDeviceGetPowerUsage(h) / 1e3 for i, h in enumerate(handles)
                    }
            if k >= start_tick:
                if (k - agent_phase) % POLL_TICKS == 0:
                    # As the sampler does: every poll's joules go to the next cycle.
                    statuses = _carry(monitor.poll(), pending)
                    statuses_p = _carry(monitor_p.poll(), pending_p)
                    if (k - agent_phase) % CYCLE_TICKS == 0:
                        pending.clear()
                        pending_p.clear()
                        # The truth at the very instant of the agent's cycle.
                        run.truth.t.append(t)
                        run.truth.values.append(
                            {
                                n: (sum(sim.true_energy_joules(g) for g in gpus_of[n]), tokens[n])
                                for n in tokens
                            }
                        )
                        for series, led, st, asg in (
                            (run.agent, ledger, statuses, assignment),
                            (run.agent_no_counter, ledger_p, statuses_p, assignment_p),
                        ):
                            _cycle(series, led, t, st, asg, models, tokens)
                if (k - scrape_phase) % SCRAPE_TICKS == 0:
                    for every, series in ((15, run.dcgm15), (30, run.dcgm30)):
                        power = dcgm_power[every]
                        series.t.append(t)
                        series.values.append(
                            {n: (sum(power[g] for g in gpus_of[n]), tokens[n]) for n in tokens}
                        )
                    run.counter15.t.append(t)
                    run.counter15.values.append(
                        {
                            n: (
                                sum(
                                    sim.nvmlDeviceGetTotalEnergyConsumption(handles[g]) / 1e3
                                    for g in gpus_of[n]
                                ),
                                tokens[n],
                            )
                            for n in tokens
                        }
                    )
            if k == end_tick:
                break
            # -- tick k happens over [t, t + tick) -------------------------------------------
            for s in servers:
                load = workload.tick(s.name, k)
                tokens[s.name] += load.generation_tokens
                for g, u in zip(s.gpus, load.utilization, strict=True):
                    sim.set_load(g, u)
                    sim_p.set_load(g, u)
    finally:
        monitor.close()
        monitor_p.close()
    return run


def _carry(statuses: Sequence[GpuStatus], pending: dict[str, float]) -> list[GpuStatus]:
    """Add one poll's joules to ``pending``; statuses carrying everything not yet booked."""
    for s in statuses:
        pending[s.device.uuid] = pending.get(s.device.uuid, 0.0) + s.energy_joules_added
    return [replace(s, energy_joules_added=pending[s.device.uuid]) for s in statuses]


def _cycle(
    series: Series,
    ledger: Ledger,
    t: float,
    statuses: Sequence[GpuStatus],
    assignment: dict[str, list[str]],
    models: dict[str, str],
    tokens: dict[str, int],
) -> None:
    readings = [
        ServerStatus(
            name=n,
            up=True,
            reading=ServerReading(
                engine="sim",
                models=(
                    TokenReading(model=models[n], input_tokens=0.0, output_tokens=float(tokens[n])),
                ),
            ),
        )
        for n in tokens
    ]
    totals = ledger.advance(t, statuses, readings, assignment)
    series.t.append(t)
    series.values.append(
        {m.server: (m.energy_joules_total, m.output_tokens_total) for m in totals.models}
    )


def _window(series: Series, a: float, b: float) -> list[int]:
    return [i for i, t in enumerate(series.t) if a - 1e-9 <= t <= b + 1e-9]


def _counter_ratio(series: Series, a: float, b: float, server: str) -> float | None:
    idx = _window(series, a, b)
    if len(idx) < 2:
        return None
    e0, n0 = series.values[idx[0]][server]
    e1, n1 = series.values[idx[-1]][server]
    return (e1 - e0) / (n1 - n0) if n1 > n0 else None


def _gauge_ratio(series: Series, a: float, b: float, server: str) -> float | None:
    """avg_over_time(power) / rate(tokens) over the samples inside the window."""
    idx = _window(series, a, b)
    if len(idx) < 2:
        return None
    power = statistics.fmean(series.values[i][server][0] for i in idx)
    n0, n1 = series.values[idx[0]][server][1], series.values[idx[-1]][server][1]
    rate = (n1 - n0) / (series.t[idx[-1]] - series.t[idx[0]])
    return power / rate if rate > 0 else None


def errors(run: Run, window_seconds: float) -> list[list[float]]:
    """Relative error of each method (rows of METHODS) over every window and server.

    Windows are back to back on the agent's cycle grid; the truth is taken at the same instants.
    """
    out: list[list[float]] = [[] for _ in METHODS]
    step = round(window_seconds / (CYCLE_TICKS * TICK_SECONDS))
    for i in range(0, len(run.truth.t) - step, step):
        a, b = run.truth.t[i], run.truth.t[i + step]
        for server, (ea, na) in run.truth.values[i].items():
            eb, nb = run.truth.values[i + step][server]
            if nb <= na:
                continue
            truth = (eb - ea) / (nb - na)
            estimates = (
                _counter_ratio(run.agent, a, b, server),
                _counter_ratio(run.agent_no_counter, a, b, server),
                _gauge_ratio(run.dcgm15, a, b, server),
                _gauge_ratio(run.dcgm30, a, b, server),
                _counter_ratio(run.counter15, a, b, server),
            )
            for row, estimate in enumerate(estimates):
                if estimate is not None and math.isfinite(estimate):
                    out[row].append((estimate - truth) / truth)
    return out


def _pct(x: float) -> str:
    """A fraction as a percentage; scientific below 0.001 %."""
    return f"{x * 100:.1e}%" if x < 1e-5 else f"{x:.3%}"


@dataclass(frozen=True)
class Row:
    """One method at one window length: mean and worst |relative error| over every window."""

    method: str
    window_seconds: float
    windows: int
    mean_abs: float
    worst_abs: float


def summarise(runs: Sequence[Run]) -> list[Row]:
    """Pool every seed's windows per (method, window length)."""
    rows = []
    for window in WINDOWS_SECONDS:
        pooled: list[list[float]] = [[] for _ in METHODS]
        for run in runs:
            for row, errs in enumerate(errors(run, window)):
                pooled[row] += errs
        for method, errs in zip(METHODS, pooled, strict=True):
            if errs:
                absolute = [abs(e) for e in errs]
                rows.append(
                    Row(method, window, len(errs), statistics.fmean(absolute), max(absolute))
                )
    return rows


def table(rows: Sequence[Row], seeds: int, seconds: float, wall: float) -> str:
    """The printed table: methods down, window lengths across, ratio to tokenergy."""
    lines = [
        f"J/output token vs simulated truth: bursty workload, 3 servers on 4 simulated H100, "
        f"{seeds} seed(s) x {seconds / 60:g} virtual min; |relative error| mean (worst)",
        "",
    ]
    head = f"{'method':<52}"
    for w in WINDOWS_SECONDS:
        head += f"{f'{w / 60:g} min windows':>26}{'DIY30/this':>11}"
    lines.append(head)
    base = {
        w: next((r for r in rows if r.method == BASELINE and r.window_seconds == w), None)
        for w in WINDOWS_SECONDS
    }
    for method in METHODS:
        line = f"{method:<52}"
        for w in WINDOWS_SECONDS:
            r = next((r for r in rows if r.method == method and r.window_seconds == w), None)
            ref = base[w]
            if r is None or ref is None:
                line += f"{'-':>26}{'-':>11}"
                continue
            cell = f"{_pct(r.mean_abs)} ({_pct(r.worst_abs)})"
            ratio = ref.mean_abs / r.mean_abs if r.mean_abs > 0 else math.inf
            shown = ">1000x" if ratio > 1000 else f"{ratio:.3g}x"
            line += f"{cell:>26}{shown:>11}"
        lines.append(line)
    counts = ", ".join(
        f"{w / 60:g} min: {next((r.windows for r in rows if r.window_seconds == w), 0)}"
        for w in WINDOWS_SECONDS
    )
    lines += [
        f"windows per method (servers x windows x seeds): {counts}",
        "DIY30/this = mean |error| of the DIY default (dcgm-exporter 30 s, Prometheus 15 s) / "
        "this row's: how many times smaller this row's error is",
        f"({wall:.1f} s wall; rerun: python tests/benchmarks/bench_accuracy.py "
        "[--seeds 3] [--minutes 30])",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=30.0, help="virtual minutes per seed")
    args = parser.parse_args(argv)
    print(measure(args.seeds, args.minutes * 60.0))
    return 0


def measure(seeds: int, seconds: float) -> str:
    """Run every seed and return the table."""
    started = time.perf_counter()
    runs = [simulate(seed, seconds) for seed in range(seeds)]
    return table(summarise(runs), seeds, seconds, time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
