"""Measure one real GPU through the agent's own path: idle W, loaded W, counter J vs integrated J.

Run: python tests/gpu/measure.py [--idle 10] [--load 30] [--interval 0.5]
(tests/gpu/run.sh runs it after the gpu tests). Needs an NVIDIA GPU, NVML and torch with CUDA.

It reads the GPU that CUDA device 0 is, through NvmlBackend + GpuMonitor on the real clock,
every ``--interval`` s: first idle, then under a float16 matrix-multiply load on a background
thread. Over the loaded phase it compares the NVML energy counter's delta with power
integrated by the trapezoid rule (the agent's fallback for GPUs without a counter).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import resource
import statistics
import sys
import threading
import time
from typing import Any

from agent.clock import SystemClock
from agent.config import GpuSettings
from agent.gpu.energy import EnergyMeter
from agent.gpu.monitor import GpuMonitor
from agent.gpu.nvml import NvmlBackend, import_pynvml


def matmul_load(torch: Any, stop: threading.Event) -> None:
    """Keep CUDA device 0 busy until ``stop`` is set."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    while not stop.is_set():
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()


def sample(monitor: GpuMonitor, index: int, seconds: float, interval: float) -> dict[str, Any]:
    """Poll for ``seconds``; power, counter and integrated energy of one GPU."""
    meter = EnergyMeter()  # integrated only: fed power, never the counter
    powers: list[float] = []
    poll_ms: list[float] = []
    counters: list[float] = []
    totals: list[float] = []
    integrated = 0.0
    agent_total = 0.0
    started = time.monotonic()
    next_at = started
    while True:
        now = time.monotonic()
        if now - started > seconds:
            break
        t0 = time.perf_counter()
        statuses = monitor.poll()
        poll_ms.append((time.perf_counter() - t0) * 1000.0)
        status = next(s for s in statuses if s.device.index == index)
        reading = status.reading
        if status.up and reading is not None and reading.power_watts is not None:
            powers.append(reading.power_watts)
            integrated += meter.step(time.monotonic(), None, reading.power_watts).added_joules
            if reading.energy_joules is not None:
                counters.append(reading.energy_joules)
            # The agent's counter is the sum of what the monitor hands over, as the ledger does.
            agent_total += status.energy_joules_added
            totals.append(agent_total)
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    return {
        "mean_power_watts": statistics.fmean(powers) if powers else None,
        "samples": len(powers),
        "counter_joules": counters[-1] - counters[0] if len(counters) > 1 else None,
        "agent_counter_joules": totals[-1] - totals[0] if len(totals) > 1 else None,
        "integrated_joules": integrated,
        "poll_ms_p50": statistics.median(poll_ms),
        "poll_ms_max": max(poll_ms),
        "monotonic": totals == sorted(totals),
    }


def main() -> int:
    """Print the measurements as a table and one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=float, default=10.0, help="idle phase, s")
    parser.add_argument("--load", type=float, default=30.0, help="loaded phase, s")
    parser.add_argument("--interval", type=float, default=0.5, help="poll interval, s")
    args = parser.parse_args()
    try:
        torch: Any = importlib.import_module("torch")
    except ImportError:
        print("torch is not installed: cannot generate a load", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("torch sees no CUDA device", file=sys.stderr)
        return 2
    log = logging.getLogger("tokenergy.measure")
    backend = NvmlBackend(import_pynvml(), log)
    monitor = GpuMonitor(backend, SystemClock(), GpuSettings(), log)
    monitor.start()
    if not monitor.nvml_up():
        print("NVML did not initialise", file=sys.stderr)
        return 2
    uuid = str(getattr(torch.cuda.get_device_properties(0), "uuid", "")).removeprefix("GPU-")
    index = next((d.index for d in monitor.devices() if d.uuid.removeprefix("GPU-") == uuid), 0)
    device = next(d for d in monitor.devices() if d.index == index)
    try:
        idle = sample(monitor, index, args.idle, args.interval)
        stop = threading.Event()
        worker = threading.Thread(target=matmul_load, args=(torch, stop), daemon=True)
        worker.start()
        time.sleep(3.0)  # ramp up: clocks and the 1 s power average settle
        loaded = sample(monitor, index, args.load, args.interval)
        stop.set()
        worker.join(30.0)
    finally:
        monitor.close()
    counter_j = loaded["counter_joules"]
    integrated_j = loaded["integrated_joules"]
    diff = (integrated_j - counter_j) / counter_j if counter_j else None
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(
        f"GPU {index}: {device.name} ({device.uuid}), driver {monitor.driver_version()}, "
        f"energy source {device.energy_source}, poll every {args.interval} s"
    )
    print(
        f"{'phase':<8}{'seconds':>8}{'mean W':>10}{'counter J':>12}{'integrated J':>14}"
        f"{'diff':>9}{'poll p50 ms':>13}{'poll max ms':>13}"
    )
    for name, phase, seconds in (("idle", idle, args.idle), ("loaded", loaded, args.load)):
        c = phase["counter_joules"]
        i = phase["integrated_joules"]
        d = f"{(i - c) / c:+.2%}" if c else "n/a"
        print(
            f"{name:<8}{seconds:>8.0f}{phase['mean_power_watts'] or 0:>10.1f}"
            f"{c if c is not None else float('nan'):>12.1f}{i:>14.1f}{d:>9}"
            f"{phase['poll_ms_p50']:>13.2f}{phase['poll_ms_max']:>13.2f}"
        )
    print(
        f"agent counter monotonic: {idle['monotonic'] and loaded['monotonic']}; "
        f"max RSS {rss_mib:.0f} MiB"
    )
    print(
        json.dumps(
            {
                "gpu": device.name,
                "idle": idle,
                "loaded": loaded,
                "integrated_vs_counter": diff,
                "max_rss_mib": rss_mib,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
