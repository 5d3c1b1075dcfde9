"""Where the cost goes, against the simulator's truth: input vs output energy, cache savings.

Setup: the demo's three servers (vLLM on 2 H100, SGLang and llama.cpp on one H100 each) under
the ``bursty`` scenario, whose request mix changes every second (prompts 0.3x to 1.8x the
mean). The simulated GPUs' power follows the work the tokens take: every computed prompt
token and every generated token has its own energy (``agent.simulation.workload``), so the
truth is known exactly (``agent.simulation.world.phase_truth_of``). The real monitor reads
the simulated NVML every second and the real ledger advances every 5 s (the defaults), on a
virtual clock: ``--minutes`` of virtual time take seconds.

Printed per server, after ``--minutes`` (default 10), for ``--seeds`` seeds:

- the regression's J per computed input token and per output token against the truth, its
  stated standard error, and whether the truth lies within 2 standard errors;
- the method in force at the end (``regression``, ``time`` or ``none``);
- J per input token and per output token as exported (the whole energy, idle included, split
  by the estimate) against the same split made with the true coefficients, over the second
  half of the run (the first half lets the fit settle: until it is trusted, the time-based
  estimate is in force);
- the prompt-cache savings against the energy the simulator did not spend (cached tokens x
  the true J per computed input token), over the same half.

Baseline, side by side: the time-based estimate (vLLM's and llama.cpp's prefill and decode
times), which is what OpenCost-style splits by phase time would report.

Rerun: ``python tests/benchmarks/bench_anatomy.py [--minutes 10] [--seeds 3]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.accounting.ledger import Ledger
from agent.clock import ManualClock
from agent.config import GpuSettings, PricingSettings
from agent.gpu.monitor import GpuMonitor
from agent.gpu.nvml import NvmlBackend
from agent.readings import GpuStatus, ServerReading, ServerStatus, TokenReading
from agent.simulation.nvml import GPU_PROFILES, SimulatedNvml
from agent.simulation.workload import DEMO_SERVERS, TICK_SECONDS, Workload
from agent.simulation.world import phase_truth_of

GPU = "H100-SXM-80GB"
CYCLE_TICKS = 100  # 5 s
POLL_TICKS = 20  # 1 s
# Phase times as the engines report them: per request, summed over concurrent requests, so
# decode time dwarfs prefill time whatever energy each takes (vLLM's request_*_time_seconds).
PREFILL_SECONDS_PER_REQUEST = 0.2
DECODE_SECONDS_PER_REQUEST = 3.9


@dataclass
class Result:
    """One server in one seeded run."""

    server: str
    method: str
    a_true: float
    b_true: float
    a: float | None
    a_se: float | None
    b: float | None
    b_se: float | None
    in_j: float | None
    out_j: float | None
    in_j_true: float
    out_j_true: float
    saved: float
    saved_true: float
    time_in_fraction: float | None
    true_in_fraction: float


def simulate(seed: int, minutes: float) -> list[Result]:
    """One seeded run; returns one result per server."""
    clock = ManualClock(start=0.0)
    n_gpus = 1 + max(g for s in DEMO_SERVERS for g in s.gpus)
    sim = SimulatedNvml([GPU] * n_gpus, clock, seed=seed)
    log = logging.getLogger("bench_anatomy")
    log.disabled = True
    monitor = GpuMonitor(NvmlBackend(sim, log), clock, GpuSettings(read_timeout_seconds=30.0), log)
    monitor.start()
    workload = Workload("bursty", seed)
    assignment = {s.name: [sim.uuid(g) for g in s.gpus] for s in DEMO_SERVERS}
    ledger = Ledger(PricingSettings(), 600.0)
    totals_raw = {
        s.name: [0.0, 0.0, 0.0, 0.0, 0.0] for s in DEMO_SERVERS
    }  # in, out, cached, pf, dc
    work = {s.name: [0.0, 0.0] for s in DEMO_SERVERS}  # computed input, output since baseline
    end_tick = round(minutes * 60 / TICK_SECONDS)
    # The first half lets the regression settle; the second half is compared with the truth.
    settle_tick = end_tick // 2 // CYCLE_TICKS * CYCLE_TICKS
    first_totals = None
    totals = None
    added: dict[str, float] = {}
    latest: dict[str, GpuStatus] = {}
    try:
        for k in range(end_tick + 1):
            clock.advance(k * TICK_SECONDS - clock.monotonic())
            if k % POLL_TICKS == 0:
                # As the sampler does: joules of the polls between cycles reach the next one.
                for status in monitor.poll():
                    uuid = status.device.uuid
                    carried = added.get(uuid, 0.0) + status.energy_joules_added
                    added[uuid] = carried
                    latest[uuid] = status
            if k % CYCLE_TICKS == 0:
                pending = [replace(g, energy_joules_added=added[u]) for u, g in latest.items()]
                added.clear()
                servers = []
                for s in DEMO_SERVERS:
                    i, o, c, pf, dc = totals_raw[s.name]
                    reading = TokenReading(
                        s.model, i, o, cached_input_tokens=c, prefill_seconds=pf, decode_seconds=dc
                    )
                    servers.append(ServerStatus(s.name, True, ServerReading(s.engine, (reading,))))
                totals = ledger.advance(clock.monotonic(), pending, servers, assignment)
                if first_totals is None and k >= settle_tick:
                    first_totals = totals
                    work = {s.name: [0.0, 0.0] for s in DEMO_SERVERS}
            # The tick's work drives the GPUs; its tokens reach the counters.
            for s in DEMO_SERVERS:
                load = workload.tick(s.name, k)
                for gpu, util in zip(s.gpus, load.utilization, strict=True):
                    sim.set_load(gpu, util)
                raw = totals_raw[s.name]
                raw[0] += load.prompt_tokens
                raw[1] += load.generation_tokens
                raw[2] += load.cached_prompt_tokens
                raw[3] += PREFILL_SECONDS_PER_REQUEST * load.finished
                raw[4] += DECODE_SECONDS_PER_REQUEST * load.finished
                if first_totals is not None:
                    work[s.name][0] += load.prompt_tokens - load.cached_prompt_tokens
                    work[s.name][1] += load.generation_tokens
    finally:
        monitor.close()
    assert totals is not None and first_totals is not None
    fits = {f.server: f for f in totals.phase_fits}
    out = []
    for s in DEMO_SERVERS:
        truth = phase_truth_of(s, GPU_PROFILES[GPU])
        a_t, b_t = truth["joules_per_input_token"], truth["joules_per_output_token"]
        (m,) = [x for x in totals.models if x.server == s.name]
        (m0,) = [x for x in first_totals.models if x.server == s.name]
        computed, generated = work[s.name]
        true_in_fraction = a_t * computed / (a_t * computed + b_t * generated)
        input_energy = m.input_energy_joules_total - m0.input_energy_joules_total
        output_energy = m.output_energy_joules_total - m0.output_energy_joules_total
        split_energy = input_energy + output_energy
        inputs = m.input_tokens_total - m0.input_tokens_total
        outputs = m.output_tokens_total - m0.output_tokens_total
        cached = m.cached_input_tokens_total - m0.cached_input_tokens_total
        energy = m.energy_joules_total - m0.energy_joules_total
        fit = fits.get(s.name)
        raw = totals_raw[s.name]
        out.append(
            Result(
                server=s.name,
                method=m.phase_method or "-",
                a_true=a_t,
                b_true=b_t,
                a=fit.joules_per_input_token if fit else None,
                a_se=fit.joules_per_input_token_stderr if fit else None,
                b=fit.joules_per_output_token if fit else None,
                b_se=fit.joules_per_output_token_stderr if fit else None,
                in_j=input_energy / inputs if split_energy > 0 else None,
                out_j=output_energy / outputs if split_energy > 0 else None,
                in_j_true=energy * true_in_fraction / inputs,
                out_j_true=energy * (1 - true_in_fraction) / outputs,
                saved=m.cache_saved_energy_joules_total - m0.cache_saved_energy_joules_total,
                saved_true=cached * a_t,
                time_in_fraction=raw[3] / (raw[3] + raw[4]) if raw[3] + raw[4] > 0 else None,
                true_in_fraction=true_in_fraction,
            )
        )
    return out


def _pct(value: float | None, truth: float) -> str:
    return "-" if value is None else f"{100 * (value - truth) / truth:+.1f} %"


def main(argv: list[str] | None = None) -> int:
    """Run the seeds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    print(
        f"bursty demo, {args.minutes:g} min of virtual time, seeds 1..{args.seeds}; errors "
        "are (estimate - truth) / truth"
    )
    header = (
        "seed", "server", "method", "J/in tok (marginal)", "J/out tok (marginal)",
        "truth in 2 se", "J/input tok", "J/output tok", "cache saved J", "input share",
        "time-based input share",
    )  # fmt: skip
    print(" | ".join(header))
    worst = 0.0
    for seed in range(1, args.seeds + 1):
        for r in simulate(seed, args.minutes):
            covered = (
                r.a is not None
                and r.a_se is not None
                and r.b is not None
                and r.b_se is not None
                and abs(r.a - r.a_true) <= 2 * r.a_se
                and abs(r.b - r.b_true) <= 2 * r.b_se
            )
            for value, truth in ((r.in_j, r.in_j_true), (r.out_j, r.out_j_true)):
                if value is not None:
                    worst = max(worst, abs(value - truth) / truth)
            print(
                " | ".join(
                    [
                        str(seed),
                        r.server,
                        r.method,
                        f"{r.a if r.a is not None else math.nan:.4f} vs {r.a_true:.4f} "
                        f"({_pct(r.a, r.a_true)})",
                        f"{r.b if r.b is not None else math.nan:.4f} vs {r.b_true:.4f} "
                        f"({_pct(r.b, r.b_true)})",
                        "yes" if covered else "no",
                        _pct(r.in_j, r.in_j_true),
                        _pct(r.out_j, r.out_j_true),
                        f"{r.saved:,.0f} vs {r.saved_true:,.0f} ({_pct(r.saved, r.saved_true)})",
                        f"{r.true_in_fraction:.3f}",
                        "-" if r.time_in_fraction is None else f"{r.time_in_fraction:.3f}",
                    ]
                )
            )
    print(f"worst error of exported J per input or output token: {100 * worst:.1f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
