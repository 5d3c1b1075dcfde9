"""``tokenergy demo``: the real agent scraping simulated servers over HTTP, on simulated GPUs.

Impure edge (threads, HTTP, terminal). The order of start-up matters for the ground truth:
the simulated servers start with zero counters and the GPUs idle, the agent takes its first
(baseline) sample, and only then does the workload start. The agent baselines what it sees at
first sight, so the truth is taken at that same instant and subtracted at the end.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from agent.clock import Clock
from agent.config import Settings, load_settings
from agent.readings import ModelTotals, Snapshot

STEP_SECONDS = 0.05
"""Simulation step, s: short enough for sub-second power swings in the bursty scenario."""


def table_rows(snapshot: Snapshot) -> list[dict[str, str]]:
    """Rows of the live table, one per (server, model), formatted with units.

    Args:
        snapshot: The agent's latest Snapshot.

    Returns:
        Rows with columns server, model, in tok/s, out tok/s, W, tok/J, cost per million
        tokens (all cost per output token), the input part per million input tokens and the
        output part per million output tokens (``-`` until the split has an estimator), idle.
    """
    up = {s.name: s.up for s in snapshot.servers}
    currency = snapshot.pricing.currency
    rows = []
    for m in snapshot.ledger.models:
        rows.append(
            {
                "server": m.server + ("" if up.get(m.server, False) else " (down)"),
                "model": m.model or "-",
                "in tok/s": _num(m.input_tokens_per_second, "{:,.0f}"),
                "out tok/s": _num(m.output_tokens_per_second, "{:,.0f}"),
                "W": _num(m.power_watts, "{:,.0f}"),
                "tok/J": _num(m.tokens_per_joule, "{:.2f}"),
                f"{currency}/Mtok": _num(m.cost_per_million_tokens, "{:.3f}"),
                "in/Mtok": _num(m.input_cost_per_million_input_tokens, "{:.3f}"),
                "out/Mtok": _num(m.output_cost_per_million_output_tokens, "{:.3f}"),
                "idle": _idle(m),
            }
        )
    return rows


def _short_model(model: str, width: int = 16) -> str:
    """A model name for an 80-column table: its last path segment, cut to ``width``."""
    tail = model.rstrip("/").rsplit("/", 1)[-1] or model
    return tail if len(tail) <= width else tail[: width - 1] + "…"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _idle(m: ModelTotals) -> str:
    if m.energy_joules_total <= 0:
        return "-"
    return f"{100 * m.idle_energy_joules_total / m.energy_joules_total:.0f}%"


def _unattributed_line(snapshot: Snapshot) -> str:
    spare_w = sum(
        (g.reading.power_watts or 0.0)
        for g in snapshot.gpus
        if g.reading is not None
        and not any(s.uuid == g.device.uuid for s in snapshot.ledger.shares)
    )
    return (
        f"unattributed GPUs: {spare_w:,.0f} W now, "
        f"{snapshot.ledger.unattributed_energy_joules_total / 1000:,.1f} kJ so far"
    )


class LiveView:
    """The terminal view: a rich live table on a terminal, plain lines otherwise.

    Args:
        out: Where to write.
        scenario: Shown in the title.
    """

    def __init__(self, out: TextIO, scenario: str) -> None:
        self._out = out
        self._scenario = scenario
        self._live: Any = None
        if out.isatty():
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=out), auto_refresh=False, transient=False)
            self._live.start()

    def show(self, snapshot: Snapshot | None, elapsed_seconds: float) -> None:
        """Render one update.

        Args:
            snapshot: Latest Snapshot (None before the first cycle).
            elapsed_seconds: Time since the workload started, s.
        """
        if snapshot is None:
            return
        rows = table_rows(snapshot)
        if self._live is not None:
            from rich import box
            from rich.table import Table

            table = Table(
                title=f"tokenergy demo · {self._scenario} · {elapsed_seconds:,.0f} s",
                caption=_unattributed_line(snapshot)
                + f"\n{snapshot.pricing.currency}/M: all cost per million output tokens; "
                "in/M, out/M: the input and output parts per million input and output tokens",
                box=box.SIMPLE_HEAD,
                show_edge=False,
                pad_edge=False,
                collapse_padding=True,
            )
            widths = {"server": 8, "model": 12}
            # Short headers keep the table within 80 columns; the caption says what they are.
            currency = snapshot.pricing.currency
            short = {
                "in tok/s": "in/s",
                "out tok/s": "out/s",
                f"{currency}/Mtok": f"{currency}/M",
                "in/Mtok": "in/M",
                "out/Mtok": "out/M",
            }
            for column in rows[0] if rows else ["server"]:
                table.add_column(
                    short.get(column, column),
                    justify="left" if column in widths else "right",
                    min_width=widths.get(column),
                )
            for row in rows:
                # Fits 80 columns: the model's last path segment, the full name is in /metrics.
                shown = {**row, "model": _short_model(row["model"])}
                table.add_row(*shown.values())
            self._live.update(table, refresh=True)
            return
        for row in rows:
            self._out.write(
                f"t={elapsed_seconds:.0f}s "
                + " ".join(f"{k.replace(' ', '_')}={v}" for k, v in row.items())
                + "\n"
            )
        self._out.flush()

    def close(self) -> None:
        """Stop the live display."""
        if self._live is not None:
            self._live.stop()


class PausableClock:
    """The simulation's clock: real time that can be held still.

    Holding the simulated world still while the agent takes a sample makes the ground truth
    and the agent's reading refer to the same instant, so the truth file compares like with
    like. While paused, ``monotonic`` returns the pause instant; on resume it jumps ahead.

    Args:
        base: The real clock.
    """

    def __init__(self, base: Clock) -> None:
        self._base = base
        self._paused_at: float | None = None
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        """Real monotonic seconds, or the pause instant while paused."""
        with self._lock:
            return self._paused_at if self._paused_at is not None else self._base.monotonic()

    def wall(self) -> float:
        """Real Unix time, s."""
        return self._base.wall()

    def sleep(self, seconds: float) -> None:
        """Sleep in real time."""
        self._base.sleep(seconds)

    def pause(self) -> float:
        """Hold time still; returns the held instant, s."""
        with self._lock:
            if self._paused_at is None:
                self._paused_at = self._base.monotonic()
            return self._paused_at

    def resume(self) -> None:
        """Let time run again."""
        with self._lock:
            self._paused_at = None


def run_demo(
    *,
    scenario: str,
    seed: int,
    duration_seconds: float,
    listen: str,
    interval_seconds: float,
    truth_file: Path | None,
    config_file: Path | None,
    fault_at_seconds: float,
    recover_after_seconds: float,
    clock: Clock,
    log: logging.Logger,
    out: TextIO,
    build: Callable[[Settings, Any, Clock, logging.Logger], Any],
    install_stop: Callable[[threading.Event], None],
) -> int:
    """Run the demo until ``duration_seconds`` pass or a stop signal arrives.

    Args:
        scenario: Workload scenario name.
        seed: Workload seed.
        duration_seconds: How long to run, s; 0 runs until stopped.
        listen: ADDR:PORT for the agent's /metrics.
        interval_seconds: Agent sampling interval, s.
        truth_file: Where to write the ground truth at exit, or None.
        config_file: Optional config file for pricing and sampling settings.
        fault_at_seconds: When a fault scenario's fault happens, s after the start.
        recover_after_seconds: How long a recoverable fault lasts, s.
        clock: The clock shared by the simulation and the agent.
        log: Logger.
        out: Where the live table goes.
        build: The composition root's agent builder.
        install_stop: Installs SIGTERM/SIGINT handlers that set the event.

    Returns:
        0 on a clean stop.
    """
    from agent.simulation.world import DemoWorld, demo_servers_config

    sim_clock = PausableClock(clock)
    world = DemoWorld(
        scenario,
        seed,
        sim_clock,
        fault_at_seconds=fault_at_seconds,
        recover_after_seconds=recover_after_seconds,
    )
    world.start()
    overrides: dict[str, Any] = {
        "servers": demo_servers_config(world),
        "http": {"listen": listen},
        "sampling": {
            "interval_seconds": interval_seconds,
            "window_seconds": max(60.0, interval_seconds),
        },
        "gpu": {"interval_seconds": min(1.0, interval_seconds)},
    }
    settings = load_settings(config_file, overrides)
    agent = build(settings, world.nvml, clock, log)
    stop = threading.Event()
    install_stop(stop)
    view: LiveView | None = None
    driver: threading.Thread | None = None
    driver_stop = threading.Event()
    try:
        agent.server.start()
        agent.monitor.start()
        world.step(sim_clock.pause())
        agent.sampler.run_cycle()  # baseline: servers at zero, workload not started
        truth_base = world.truth()
        sim_clock.resume()
        started = sim_clock.monotonic()
        world.begin(started)

        def drive() -> None:
            while not driver_stop.is_set():
                world.step(sim_clock.monotonic())
                driver_stop.wait(STEP_SECONDS)

        driver = threading.Thread(target=drive, name="simulation", daemon=True)
        driver.start()
        agent.sampler.start()
        log.info(
            "demo running",
            extra={
                "scenario": scenario,
                "metrics": f"http://{listen.rsplit(':', 1)[0]}:{agent.port}/metrics",
                "servers": " ".join(f"{s['name']}={s['url']}" for s in overrides["servers"]),
            },
        )
        view = LiveView(out, scenario)
        while not stop.is_set():
            elapsed = clock.monotonic() - started
            if duration_seconds and elapsed >= duration_seconds:
                break
            view.show(agent.sampler.snapshot(), elapsed)
            wait = interval_seconds
            if duration_seconds:
                wait = min(wait, duration_seconds - elapsed)
            stop.wait(max(0.01, wait))
    finally:
        driver_stop.set()
        if driver is not None:
            driver.join(5)
        agent.sampler.stop()
        if view is not None:
            view.close()
        if truth_file is not None:
            _write_truth(truth_file, agent, world, truth_base, sim_clock)
        agent.stop()
        world.stop()
    return 0


def _write_truth(
    path: Path, agent: Any, world: Any, truth_base: dict[str, Any], sim_clock: PausableClock
) -> None:
    """One last agent sample, then the truth and the agent's exposition of that instant."""
    from prometheus_client import generate_latest

    from agent.simulation.world import truth_delta

    world.step(sim_clock.pause())
    agent.sampler.run_cycle()
    truth = truth_delta(world.truth(), truth_base)
    truth["exposition"] = generate_latest(agent.registry).decode()
    truth["notes"] = (
        "Every number counts from the agent's first (baseline) sample, as the agent's own "
        "counters do; the world is held still for that sample and for the last one. "
        "lost_input_tokens and lost_output_tokens were made between a server's (or a "
        "data-parallel rank's) last scrape and its restart: no scraper could see them, so the "
        "agent's tokens_total should equal input_tokens - lost_input_tokens (likewise output)."
    )
    path.write_text(json.dumps(truth, indent=2, sort_keys=True))


__all__: Sequence[str] = ("LiveView", "run_demo", "table_rows")
