"""Command line and composition root: the only place objects are built and wired together.

Commands: ``tokenergy run`` (the agent), ``tokenergy demo`` (everything simulated, no GPU),
``tokenergy inspect SOURCE`` (read one server's exposition), ``tokenergy check-config FILE``,
``tokenergy plan`` (agent/plan) and ``tokenergy top`` (agent/top).
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from agent import __version__
from agent.clock import Clock, SystemClock
from agent.config import (
    ENGINES,
    ENV_PREFIX,
    OTHER_ENV_VARIABLES,
    ConfigError,
    Settings,
    load_settings,
    split_listen,
)
from agent.logs import describe, redact
from agent.readings import GpuStatus
from exporters.webconfig import WebConfigError

if TYPE_CHECKING:  # the parts are imported when built: `tokenergy --help` stays fast
    from prometheus_client.registry import CollectorRegistry

    from agent.discovery import Discovery
    from agent.gpu.monitor import GpuMonitor
    from agent.sampler import Sampler
    from agent.servers.scraper import ServerScraper
    from exporters.http import MetricsServer


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, help line, arguments and what runs it.

    Attributes:
        name: The word after ``tokenergy``.
        help: One line for ``tokenergy --help``.
        configure: Adds the subcommand's arguments to its parser.
        run: Runs it with the parsed arguments and the logger; returns the exit code.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, logging.Logger], int]


def _bounded_number(
    kind: type[float] | type[int], low: float, high: float | None, hint: str = ""
) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high]; the error names the range."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            wanted = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"{text}: must be {wanted}{hint}")
        return value

    return parse


def _configure_run(run: argparse.ArgumentParser) -> None:
    run.add_argument("--config", type=Path, help="TOML or YAML config file")
    run.add_argument("--listen", help="ADDR:PORT for /metrics (default 0.0.0.0:10110)")
    run.add_argument("--web-config-file", type=Path, help="exporter-toolkit web config (TLS, auth)")
    run.add_argument(
        "--simulate-gpus",
        type=_bounded_number(int, 1, 64, "; omit the flag to read real GPUs through NVML"),
        metavar="N",
        help="use N (1..64) simulated GPUs instead of NVML",
    )


def _configure_demo(demo: argparse.ArgumentParser) -> None:
    from agent.simulation.workload import SCENARIOS

    demo.add_argument(
        "--duration",
        type=_bounded_number(float, 0, None),
        default=0.0,
        help="seconds to run; 0 = until Ctrl-C (default)",
    )
    demo.add_argument("--scenario", default="steady", choices=SCENARIOS)
    demo.add_argument("--listen", default="127.0.0.1:10110", help="ADDR:PORT for /metrics")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument(
        "--interval",
        type=_bounded_number(float, 0.05, 300),
        default=1.0,
        help="sampling interval, s (0.05..300)",
    )
    demo.add_argument(
        "--fault-at",
        type=_bounded_number(float, 0, None),
        default=20.0,
        help="fault scenarios: fault time, s (default 20)",
    )
    demo.add_argument(
        "--recover-after",
        type=_bounded_number(float, 0, None),
        default=15.0,
        help="fault scenarios: fault length, s",
    )
    demo.add_argument("--truth-file", type=Path, help="write the simulator's truth here at exit")
    demo.add_argument("--config", type=Path, help="optional config file (pricing, sampling...)")


def _configure_inspect(inspect: argparse.ArgumentParser) -> None:
    inspect.add_argument("source", help="file, URL or - for standard input")
    inspect.add_argument("--engine", default="auto", choices=ENGINES)
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--ca-file", type=Path, help="CA bundle (PEM) to verify an https URL")


def _configure_check(check: argparse.ArgumentParser) -> None:
    check.add_argument("file", type=Path)


def _inspect_command(args: argparse.Namespace, log: logging.Logger) -> int:
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


def _configure_plan(plan: argparse.ArgumentParser) -> None:
    from agent.plan.command import add_arguments

    add_arguments(plan)


def _plan_command(args: argparse.Namespace, log: logging.Logger) -> int:
    from agent.plan.client import make_http_client
    from agent.plan.command import run_plan

    return run_plan(args, make_http_client, SystemClock(), sys.stdout, sys.stderr)


def _configure_top(top: argparse.ArgumentParser) -> None:
    from agent.top.command import add_arguments

    add_arguments(top)


def _top_command(args: argparse.Namespace, log: logging.Logger) -> int:
    from agent.plan.client import make_http_client
    from agent.top.command import run_top

    return run_top(args, make_http_client, SystemClock(), sys.stdin, sys.stdout, sys.stderr)


def _check_command(args: argparse.Namespace, log: logging.Logger) -> int:
    return check_config(args.file, sys.stdout, sys.stderr, env=os.environ)


LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser(commands: Sequence[Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser for every command.

    Args:
        commands: The subcommands; :data:`COMMANDS` when None. A new subcommand is one
            more :class:`Command` in that tuple.
    """
    parser = argparse.ArgumentParser(
        prog="tokenergy",
        description="What do our LLM tokens cost? GPU energy joined with inference-server tokens.",
    )
    parser.add_argument("--version", action="version", version=f"tokenergy {__version__}")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    # Also accepted after the subcommand; SUPPRESS keeps the top-level value when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS if commands is None else commands:
        child = sub.add_parser(command.name, help=command.help, parents=[common])
        command.configure(child)
        child.set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tokenergy`` command.

    Every failure is one logfmt line on stderr (a usage error is argparse's usage
    message); ``tokenergy`` alone prints the help.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns:
        The process exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stdout)
        return 0
    from agent.logs import logging_for_a_command

    with logging_for_a_command(args.log_level) as log:
        return _run_command(args, log)


def _run_command(args: argparse.Namespace, log: logging.Logger) -> int:
    try:
        code: int = args.handler(args, log)
        return code
    except ConfigError as exc:
        log.error(
            "invalid configuration",
            extra={"source": exc.source, "problems": "; ".join(exc.lines)},
        )
        return 2
    except WebConfigError as exc:
        log.error(
            "invalid web config",
            extra={"source": str(exc.path), "problems": "; ".join(exc.lines)},
        )
        return 2
    except OSError as exc:
        # A port in use or a file that cannot be read: one line, no traceback.
        log.error(str(exc.strerror or exc), extra={"errno": exc.errno or "-"})
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # e.g. no memory for a thread: still one line, never a traceback
        log.error("cannot run", extra={"error": describe(exc)})
        return 1


def check_config(
    path: Path, stdout: TextIO, stderr: TextIO, env: Mapping[str, str] | None = None
) -> int:
    """Validate a config file, with the environment as ``run`` would read it.

    Args:
        path: The TOML or YAML file.
        stdout: Where the summary goes.
        stderr: Where errors go.
        env: ``TOKENERGY_*`` variables applied over the file, as ``run`` applies them;
            None checks the file alone.

    Returns:
        0 when valid, 1 when not.
    """
    try:
        settings = load_settings(path, use_env=env is not None, env=env)
    except ConfigError as exc:
        where = path if exc.source == str(path) else f"{path} with {exc.source}"
        if len(exc.lines) == 1:
            print(f"{where}: {exc.lines[0]}", file=stderr)
        else:
            print(f"{where}: {len(exc.lines)} problem(s):", file=stderr)
            for line in exc.lines:
                print(f"  {line}", file=stderr)
        return 1
    applied = sorted(
        k
        for k in (env or {})
        if k.upper().startswith(ENV_PREFIX) and k.upper() not in OTHER_ENV_VARIABLES
    )
    print(f"{path}: OK", file=stdout)
    if applied:
        print(f"  environment: {', '.join(applied)}", file=stdout)
    print(
        f"  {len(settings.servers)} server(s): "
        + (", ".join(f"{s.name} ({s.engine}) {redact(s.url)}" for s in settings.servers) or "none"),
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
    sampler: Sampler
    monitor: GpuMonitor
    server: MetricsServer
    scrapers: dict[str, ServerScraper]
    registry: CollectorRegistry

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
    from agent.accounting.anatomy import PhaseSettings
    from agent.accounting.counters import counter_limits
    from agent.accounting.ledger import Ledger
    from agent.discovery import PsutilProcessTable, discover
    from agent.gpu.monitor import GpuMonitor
    from agent.gpu.nvml import NvmlBackend
    from agent.sampler import Sampler
    from agent.servers.scraper import ReceiveBuffers, ServerScraper
    from exporters.http import MetricsServer
    from exporters.prometheus import SnapshotCollector, build_registry

    monitor = GpuMonitor(
        NvmlBackend(nvml),
        clock,
        settings.gpu,
        log.getChild("gpu"),
        max_power_ratio=settings.accounting.max_power_ratio,
    )
    # One scraper, connection and TLS context per server: no server can hold another's.
    # Their receive buffers are shared: the sampler scrapes in turn.
    buffers = ReceiveBuffers()
    scrapers = {
        s.name: ServerScraper(s, settings.scrape, buffers=buffers) for s in settings.servers
    }
    processes = PsutilProcessTable()

    def discover_now(gpus: Sequence[GpuStatus]) -> Discovery:
        return discover(settings.servers, gpus, processes)

    pricing = settings.pricing
    sampler = Sampler(
        gpus=monitor,
        servers=scrapers,
        ledger=Ledger(
            pricing,
            settings.sampling.window_seconds,
            limits=counter_limits(settings.accounting),
            phase=PhaseSettings(
                forgetting=settings.accounting.phase_forgetting,
                min_intervals=settings.accounting.phase_min_intervals,
                max_relative_error=settings.accounting.phase_max_relative_error,
            ),
            kv_saturated_ratio=settings.accounting.kv_cache_saturated_ratio,
        ),
        discover=discover_now,
        clock=clock,
        pricing=pricing.info(),
        interval_seconds=settings.sampling.interval_seconds,
        gpu_interval_seconds=settings.gpu.interval_seconds,
        window_seconds=settings.sampling.window_seconds,
        scrape_deadline_seconds=settings.scrape.read_timeout_seconds + 0.5,
        discovery_interval_seconds=settings.sampling.discovery_interval_seconds,
        log=log.getChild("sampler"),
    )
    registry = build_registry(SnapshotCollector(sampler.snapshot, clock, __version__))
    stale = settings.sampling.stale_after_intervals
    server = MetricsServer(
        registry=registry,
        health=lambda: sampler.health(stale),
        settings=settings.http,  # the server loads settings.http.web_config_file
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


def _install_stop_handlers(
    stop: threading.Event,
    hup: threading.Event | None = None,
    wake: threading.Event | None = None,
) -> None:
    """SIGTERM and SIGINT set ``stop``; SIGHUP sets ``hup``, or ``stop`` when None.

    Each signal also sets ``wake``, when given, after its own event. Without a handler
    SIGHUP would kill the process with no clean shutdown.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        (hup if signum == signal.SIGHUP and hup is not None else stop).set()
        if wake is not None:
            wake.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, handler)


SIGNAL_BACKSTOP_SECONDS = 5.0
"""Longest sleep of the main thread between two looks at the stop and reload events, s."""


def wait_for_signals(
    stop: threading.Event,
    hup: threading.Event,
    wake: threading.Event,
    on_hup: Callable[[], None],
) -> None:
    """Sleep until ``stop`` is set, calling ``on_hup`` once for each time ``hup`` was set.

    The handlers of :func:`_install_stop_handlers` set ``wake`` after their own event, so the
    main thread wakes once per signal instead of polling five times a second. On Linux a
    lock wait is interrupted by a signal and the handler runs at once on this thread;
    :data:`SIGNAL_BACKSTOP_SECONDS` bounds the delay where a platform does not interrupt it.

    Args:
        stop: Set to return.
        hup: Set to ask for ``on_hup``; cleared before the call.
        wake: Set after ``stop`` or ``hup``.
        on_hup: What a SIGHUP does.
    """
    while not stop.is_set():
        wake.wait(SIGNAL_BACKSTOP_SECONDS)
        wake.clear()  # before reading the events: a signal from now on wakes the next wait
        if stop.is_set():
            return
        if hup.is_set():
            hup.clear()
            on_hup()


def _raise_open_file_limit(log: logging.Logger) -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit, as Go programs do at start.

    systemd's default soft limit (1024) is low for a server; the hard limit is what the
    administrator granted. The HTTP server fits its connection limit to what is left.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.debug("cannot raise the open-file limit: %s", exc)


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
    """``tokenergy run``: the production agent, until SIGTERM or Ctrl-C (SIGHUP reloads TLS).

    Returns:
        0 on a clean stop.
    """
    settings = load_settings(args.config, _flag_overrides(args))
    _raise_open_file_limit(log)
    clock = SystemClock()
    if settings.gpu.simulated:
        from agent.simulation.nvml import SimulatedNvml

        nvml: Any = SimulatedNvml(["H100-SXM-80GB"] * settings.gpu.simulated, clock)
    else:
        from agent.gpu.nvml import import_pynvml

        nvml = import_pynvml()
    agent = build_agent(settings, nvml, clock, log)
    stop, hup, wake = threading.Event(), threading.Event(), threading.Event()
    _install_stop_handlers(stop, hup, wake)
    try:
        agent.start()
    except BaseException:
        agent.stop()  # what did start (threads, NVML) is stopped; the error is logged by main
        raise
    try:
        _log_start(agent, log)
        # What is alive now (modules, settings, the first cycle's memos) lives as long as the
        # process: out of the collector's full passes, which would walk its 60,000 objects
        # every few minutes for nothing (12 ms each at 8 GPUs x 8 servers, 0.13 ms after).
        gc.freeze()

        def reload() -> None:
            log.info("SIGHUP: re-reading the web config; other settings need a restart")
            agent.server.reload_web_config()

        wait_for_signals(stop, hup, wake, reload)
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


COMMANDS: tuple[Command, ...] = (
    Command("run", "run the node agent", _configure_run, run_command),
    Command(
        "demo", "run agent, simulated GPUs and servers together", _configure_demo, demo_command
    ),
    Command(
        "inspect",
        "read one server's exposition and show its tokens",
        _configure_inspect,
        _inspect_command,
    ),
    Command(
        "check-config",
        "validate a config file (and TOKENERGY_* variables)",
        _configure_check,
        _check_command,
    ),
    Command(
        "plan", "cost, capacity and breakeven from measurements", _configure_plan, _plan_command
    ),
    Command("top", "live view of running agents", _configure_top, _top_command),
)
"""The subcommands, in help order; add one here to add a subcommand."""
