"""Command line and composition root: the only place objects are built and wired together.

Commands: ``tokenergy run`` (the agent), ``tokenergy demo`` (everything simulated, no GPU),
``tokenergy inspect SOURCE`` (read one server's exposition), ``tokenergy check-config FILE``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.config import ENGINES, ConfigError, Settings, load_settings, split_listen
from agent.readings import PricingInfo
from exporters.webconfig import WebConfigError


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    parser = argparse.ArgumentParser(
        prog="tokenergy",
        description="What do our LLM tokens cost? GPU energy joined with inference-server tokens.",
    )
    parser.add_argument("--version", action="version", version=f"tokenergy {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the node agent")
    run.add_argument("--config", type=Path, help="TOML or YAML config file")
    run.add_argument("--listen", help="ADDR:PORT for /metrics (default 0.0.0.0:10110)")
    run.add_argument("--web-config-file", type=Path, help="exporter-toolkit web config (TLS, auth)")
    run.add_argument(
        "--simulate-gpus", type=int, metavar="N", help="use N simulated GPUs instead of NVML"
    )

    demo = sub.add_parser("demo", help="run agent, simulated GPUs and servers together")
    demo.add_argument(
        "--duration", type=float, default=0.0, help="seconds to run; 0 = until Ctrl-C (default)"
    )
    from agent.simulation.workload import SCENARIOS

    demo.add_argument("--scenario", default="steady", choices=SCENARIOS)
    demo.add_argument("--listen", default="127.0.0.1:10110", help="ADDR:PORT for /metrics")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--interval", type=float, default=1.0, help="sampling interval, s")
    demo.add_argument(
        "--fault-at", type=float, default=20.0, help="fault scenarios: fault time, s (default 20)"
    )
    demo.add_argument(
        "--recover-after", type=float, default=15.0, help="fault scenarios: fault length, s"
    )
    demo.add_argument("--truth-file", type=Path, help="write the simulator's truth here at exit")
    demo.add_argument("--config", type=Path, help="optional config file (pricing, sampling...)")

    inspect = sub.add_parser("inspect", help="read one server's exposition and show its tokens")
    inspect.add_argument("source", help="file, URL or - for standard input")
    inspect.add_argument("--engine", default="auto", choices=ENGINES)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--ca-file", type=Path, help="CA bundle (PEM) to verify an https URL")

    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenergy`` command.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        The process exit code.
    """
    args = build_parser().parse_args(argv)
    from agent.logs import configure_logging

    log = configure_logging(args.log_level)
    try:
        if args.command == "check-config":
            return check_config(args.file, sys.stdout, sys.stderr)
        if args.command == "inspect":
            from agent.servers.inspect import inspect_command

            return inspect_command(
                args.source,
                args.engine,
                args.json,
                sys.stdin.buffer,
                sys.stdout,
                sys.stderr,
                ca_file=args.ca_file,
            )
        if args.command == "run":
            return run_command(args, log)
        if args.command == "demo":
            return demo_command(args, log)
    except ConfigError as exc:
        print(f"tokenergy: invalid configuration in {exc.source}:", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        return 2
    except WebConfigError as exc:
        print(f"tokenergy: invalid web config {exc.path}:", file=sys.stderr)
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        return 2
    except OSError as exc:
        # A port in use or a file that cannot be read: one line, no traceback.
        print(f"tokenergy: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def check_config(path: Path, stdout: TextIO, stderr: TextIO) -> int:
    """Validate a config file and print a summary or every problem.

    Args:
        path: The TOML or YAML file.
        stdout: Where the summary goes.
        stderr: Where errors go.

    Returns:
        0 when valid, 1 when not.
    """
    try:
        settings = load_settings(path, use_env=False)
    except ConfigError as exc:
        print(f"{path}: {len(exc.lines)} problem(s):", file=stderr)
        for line in exc.lines:
            print(f"  {line}", file=stderr)
        return 1
    print(f"{path}: OK", file=stdout)
    print(
        f"  {len(settings.servers)} server(s): "
        + (", ".join(f"{s.name} ({s.engine}) {s.url}" for s in settings.servers) or "none"),
        file=stdout,
    )
    print(
        f"  sampling every {settings.sampling.interval_seconds:g} s, "
        f"ratio window {settings.sampling.window_seconds:g} s; listen {settings.http.listen}",
        file=stdout,
    )
    return 0


# -- composition ---------------------------------------------------------------------------


@dataclass
class Agent:
    """Every running part of the agent, wired; built by :func:`build_agent`."""

    settings: Settings
    sampler: Any
    monitor: Any
    server: Any
    scrapers: dict[str, Any]
    registry: Any

    @property
    def port(self) -> int:
        """The bound HTTP port."""
        return int(self.server.port)

    def start(self) -> None:
        """Start HTTP first (so /healthz answers during a slow NVML init), then sampling."""
        self.server.start()
        self.monitor.start()
        self.sampler.run_cycle()
        self.sampler.start()

    def stop(self) -> None:
        """Stop sampling, the HTTP server and NVML, in that order."""
        self.sampler.stop()
        self.sampler.close()
        self.server.stop()
        self.monitor.close()
        for scraper in self.scrapers.values():
            scraper.close()


def build_agent(settings: Settings, nvml: Any, clock: Clock, log: logging.Logger) -> Agent:
    """Build the agent from settings and its edges.

    Args:
        settings: Validated settings.
        nvml: The NVML module: ``pynvml`` or a ``SimulatedNvml``.
        clock: The clock every part shares.
        log: The agent's logger.

    Returns:
        The wired, not yet started, agent.
    """
    from agent.accounting.counters import counter_limits
    from agent.accounting.ledger import Ledger
    from agent.discovery import PsutilProcessTable, discover
    from agent.gpu.monitor import GpuMonitor
    from agent.gpu.nvml import NvmlBackend
    from agent.readings import GpuStatus
    from agent.sampler import Sampler
    from agent.servers.scraper import ServerScraper
    from exporters.http import MetricsServer
    from exporters.prometheus import SnapshotCollector, build_registry
    from exporters.webconfig import load_web_config

    monitor = GpuMonitor(
        NvmlBackend(nvml),
        clock,
        settings.gpu,
        log.getChild("gpu"),
        max_power_ratio=settings.accounting.max_power_ratio,
    )
    # One scraper, connection and TLS context per server: no server can hold another's.
    scrapers = {s.name: ServerScraper(s, settings.scrape) for s in settings.servers}
    processes = PsutilProcessTable()

    def discover_now(gpus: Sequence[GpuStatus]) -> Any:
        return discover(settings.servers, gpus, processes)

    pricing = settings.pricing
    sampler = Sampler(
        gpus=monitor,
        servers=scrapers,
        ledger=Ledger(
            pricing,
            settings.sampling.window_seconds,
            limits=counter_limits(settings.accounting),
        ),
        discover=discover_now,
        clock=clock,
        pricing=PricingInfo(
            currency=pricing.currency,
            electricity_per_kwh=pricing.electricity_per_kwh,
            pue=pricing.pue,
            carbon_g_per_kwh=pricing.carbon_g_per_kwh or None,
        ),
        interval_seconds=settings.sampling.interval_seconds,
        gpu_interval_seconds=settings.gpu.interval_seconds,
        window_seconds=settings.sampling.window_seconds,
        scrape_deadline_seconds=settings.scrape.read_timeout_seconds + 0.5,
        discovery_interval_seconds=settings.sampling.discovery_interval_seconds,
        log=log.getChild("sampler"),
    )
    registry = build_registry(SnapshotCollector(sampler.snapshot, clock, __version__))
    web_config = (
        load_web_config(settings.http.web_config_file) if settings.http.web_config_file else None
    )
    stale = settings.sampling.stale_after_intervals
    server = MetricsServer(
        registry=registry,
        health=lambda: sampler.health(stale),
        settings=settings.http,
        web_config=web_config,
        log=log.getChild("http"),
    )
    return Agent(
        settings=settings,
        sampler=sampler,
        monitor=monitor,
        server=server,
        scrapers=scrapers,
        registry=registry,
    )


def _install_stop_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if getattr(args, "listen", None):
        overrides.setdefault("http", {})["listen"] = args.listen
    if getattr(args, "web_config_file", None):
        overrides.setdefault("http", {})["web_config_file"] = args.web_config_file
    if getattr(args, "simulate_gpus", None) is not None:
        overrides.setdefault("gpu", {})["simulated"] = args.simulate_gpus
    return overrides


def run_command(args: argparse.Namespace, log: logging.Logger) -> int:
    """``tokenergy run``: the production agent, until SIGTERM or Ctrl-C.

    Returns:
        0 on a clean stop.
    """
    settings = load_settings(args.config, _flag_overrides(args))
    clock = SystemClock()
    if settings.gpu.simulated:
        from agent.simulation.nvml import SimulatedNvml

        nvml: Any = SimulatedNvml(["H100-SXM-80GB"] * settings.gpu.simulated, clock)
    else:
        from agent.gpu.nvml import import_pynvml

        nvml = import_pynvml()
    agent = build_agent(settings, nvml, clock, log)
    stop = threading.Event()
    _install_stop_handlers(stop)
    agent.start()
    _log_start(agent, log)
    try:
        stop.wait()
    finally:
        agent.stop()
        log.info("stopped")
    return 0


def _log_start(agent: Agent, log: logging.Logger) -> None:
    """One line at start: what was found (GPUs, servers and the map between them)."""
    from agent.discovery import Discovery, describe_mapping

    snap = agent.sampler.snapshot() or agent.sampler.run_cycle()
    mapping = agent.sampler.mapping()
    gpus = ", ".join(
        f"{g.device.index}:{g.device.name}({g.device.energy_source})" for g in snap.gpus
    )
    servers = ", ".join(
        f"{s.name}:{s.reading.engine if s.reading else 'down:' + str(s.error_reason)}"
        for s in snap.servers
    )
    host, _ = split_listen(agent.settings.http.listen)
    log.info(
        "started",
        extra={
            "version": __version__,
            "listen": f"{host}:{agent.port}",
            "gpus": gpus or "none",
            "driver": snap.driver_version or "unknown",
            "servers": servers or "none",
            "mapping": describe_mapping(mapping or Discovery(assignment={}), snap.gpus),
        },
    )


def demo_command(args: argparse.Namespace, log: logging.Logger) -> int:
    """``tokenergy demo``: simulated GPUs and servers, the real agent scraping them over HTTP.

    Returns:
        0 on a clean stop.
    """
    from agent.demo import run_demo

    return run_demo(
        scenario=args.scenario,
        seed=args.seed,
        duration_seconds=args.duration,
        listen=args.listen,
        interval_seconds=args.interval,
        truth_file=args.truth_file,
        config_file=args.config,
        fault_at_seconds=args.fault_at,
        recover_after_seconds=args.recover_after,
        clock=SystemClock(),
        log=log,
        out=sys.stdout,
        build=build_agent,
        install_stop=_install_stop_handlers,
    )
