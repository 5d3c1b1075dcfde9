"""How accurate is integrated power (GPUs without an energy counter) against the truth?

Rerun: python tests/benchmarks/bench_energy_integration.py [--seeds 5] [--window 900]
(about 15-30 s on 2 shared cores).

Each run drives three simulated GPUs with the same load for ``--window`` seconds of virtual
time and reads them through the production path (NvmlBackend + GpuMonitor) at a fixed
sampling interval:

* H100 with the energy counter switched off: the trapezoid rule on NVML power, which on
  Ampere (except GA100) and newer is a 1 s trailing average;
* A100 with the energy counter switched off: the trapezoid rule on instantaneous power
  (GA100 and older);
* H100 with the counter: the baseline (the counter's deltas).

Error = |agent energy - simulated true energy| / true energy over the window, mean (and
max) over ``--seeds`` runs with different burst timings and sampling phases; the last column
is the H100's integrated energy divided by the counter's (the baseline), mean (min-max).
Loads:

* steady: 50-70 % load, changing every 30-90 s;
* bursty: bursts of 50-100 % load lasting 0.05-0.45 s (all shorter than every sampling
  interval), 0.05-3 s apart, idle in between.

The simulated counter is exact by construction (whole mJ), so its error is the floor; real
counters and real power sensors share a ~5 % board gain error (Yang et al.,
SC'24, arXiv 2312.02741), which this benchmark does not model.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time

from agent.clock import ManualClock
from agent.config import GpuSettings
from agent.gpu.monitor import GpuMonitor
from agent.gpu.nvml import NvmlBackend
from agent.simulation.nvml import SimulatedNvml

INTERVALS = (0.5, 1.0, 5.0, 15.0)
GPUS = ("H100-SXM-80GB", "A100-40GB", "H100-SXM-80GB")
COLUMNS = ("integrated, 1 s avg power", "integrated, instant power", "counter (baseline)")


def schedule(load: str, rng: random.Random, window: float) -> list[tuple[float, float]]:
    """(time s, load 0..1) changes over the window."""
    events: list[tuple[float, float]] = []
    t = 0.0
    if load == "steady":
        while t < window:
            events.append((t, rng.uniform(0.5, 0.7)))
            t += rng.uniform(30.0, 90.0)
        return events
    t = rng.uniform(0.0, 1.0)
    while t < window:
        events.append((t, rng.uniform(0.5, 1.0)))
        t += rng.uniform(0.05, 0.45)
        events.append((t, 0.0))
        t += rng.uniform(0.05, 3.0)
    return events


WARMUP_SECONDS = 2.0
"""Load runs this long before the first sample, so the 1 s power average is settled."""


def run(load: str, interval: float, seed: int, window: float) -> tuple[list[float], float]:
    """Relative error of each column for one run, and H100 integrated / counter energy."""
    rng = random.Random(seed)
    clock = ManualClock(start=0.0)
    sim = SimulatedNvml(GPUS, clock, seed=seed)
    sim.set_not_supported(0, "energy")
    sim.set_not_supported(1, "energy")
    log = logging.getLogger("bench")
    log.disabled = True
    monitor = GpuMonitor(NvmlBackend(sim, log), clock, GpuSettings(read_timeout_seconds=5.0), log)
    first_sample = WARMUP_SECONDS + rng.uniform(0.0, interval)  # random sampling phase
    events = schedule(load, rng, first_sample + window)
    try:
        i = 0
        start: list[float] = []
        base: list[float] = []
        t_sample = first_sample
        while t_sample <= first_sample + window + 1e-9:
            while i < len(events) and events[i][0] < t_sample:
                clock.advance(max(0.0, events[i][0] - clock.monotonic()))
                for g in range(len(GPUS)):
                    sim.set_load(g, events[i][1])
                i += 1
            clock.advance(t_sample - clock.monotonic())
            statuses = monitor.poll()
            if not start:
                start = [sim.true_energy_joules(g) for g in range(len(GPUS))]
                base = [0.0 for _ in statuses]  # joules handed over from here on
            else:
                base = [b + s.energy_joules_added for s, b in zip(statuses, base, strict=True)]
            t_sample += interval
        measured = base
        truth = [sim.true_energy_joules(g) - e0 for g, e0 in enumerate(start)]
        errors = [abs(m - t) / t for m, t in zip(measured, truth, strict=True)]
        return errors, measured[0] / measured[2]
    finally:
        monitor.close()


def main() -> None:
    """Print the error table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="runs per row (default 5)")
    parser.add_argument("--window", type=float, default=900.0, help="virtual seconds per run")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"Energy error vs simulated truth: {args.window:.0f} s windows, {args.seeds} seeds; "
        "mean |error| (max)"
    )
    header = f"{'load':<7}{'sampling':>9}" + "".join(f"{c:>28}" for c in COLUMNS)
    tail = "H100 integrated/counter J"
    print(header + f"{tail:>28}")
    print("-" * (len(header) + 28))
    for load in ("steady", "bursty"):
        for interval in INTERVALS:
            runs = [run(load, interval, seed, args.window) for seed in range(args.seeds)]
            cells = []
            for col in range(len(COLUMNS)):
                values = [r[0][col] for r in runs]
                cells.append(f"{statistics.fmean(values):.3%} ({max(values):.3%})")
            ratios = [r[1] for r in runs]
            ratio = f"{statistics.fmean(ratios):.4f}x ({min(ratios):.3f}-{max(ratios):.3f})"
            print(
                f"{load:<7}{interval:>8.1f}s" + "".join(f"{c:>28}" for c in cells) + f"{ratio:>28}"
            )
    print(f"\n({time.perf_counter() - started:.1f} s wall; rerun: python {__file__})")


if __name__ == "__main__":
    main()
