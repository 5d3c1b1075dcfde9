"""``tokenergy plan``: cost per million tokens, capacity and breakeven from measured ratios.

The composition of the command: parse the options strictly, measure (Prometheus or one
agent), compute (:mod:`agent.plan.report`), show (table, ``--json`` or ``--html FILE``).
Every bad input is one line on stderr and exit status 2 (usage) or 1 (the source), never a
traceback; nothing is computed from a measurement that is not there.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import httpx
from rich.console import Console

from agent.clock import Clock
from agent.plan.client import ClientConfig, ClientConfigError, load_client_config
from agent.plan.model import Measurement, scenario_grid
from agent.plan.report import Options, build_report, report_json
from agent.plan.scenario import (
    ScenarioError,
    parse_demand,
    parse_float_list,
    parse_fraction,
    parse_growth,
    parse_hourly_list,
    parse_range,
)
from agent.plan.sources import SourceError, from_agent, from_prometheus

__all__ = ["add_arguments", "parse_options", "run_plan"]

MakeClient = Callable[[ClientConfig | None, float], httpx.Client]

EXIT_OK = 0
EXIT_SOURCE = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``tokenergy plan`` on its subparser.

    Args:
        parser: The ``plan`` subparser.
    """
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--prometheus", metavar="URL", help="Prometheus base URL (HTTP API)")
    where.add_argument("--agent", metavar="URL", help="one agent's URL (quick look, window rates)")
    parser.add_argument("--range", default="7d", help="Prometheus range, e.g. 7d, 24h (default 7d)")
    parser.add_argument("--at", type=float, help="end of the range, Unix s (default now)")
    parser.add_argument(
        "--source",
        default="auto",
        choices=("auto", "raw", "recorded"),
        help="Prometheus series: raw counters, recording rules, or raw when present (default)",
    )
    parser.add_argument("--window", default="10s", help="--agent: seconds between two reads")
    parser.add_argument("--electricity", default="0.10", help="price per kWh list (0.05,0.10)")
    parser.add_argument("--pue", default="1.3", help="PUE list (1.1,1.3)")
    parser.add_argument(
        "--gpu-hourly", default="measured", help="per GPU-hour list; 'measured' = agents' own"
    )
    parser.add_argument("--margin", help="target margin for the breakeven price, e.g. 30%%")
    parser.add_argument("--price", help="your price per million output tokens")
    parser.add_argument("--demand", help="output tokens demanded now, e.g. 2e9/day, 5000/s")
    parser.add_argument("--growth", default="0%/month", help="demand growth, e.g. 15%%/month")
    parser.add_argument("--months", type=int, default=12, help="months to plan (default 12)")
    parser.add_argument(
        "--utilization", default="80%", help="share of measured tok/s per GPU to plan at"
    )
    parser.add_argument("--capacity-model", help="plan capacity for one model (default: fleet)")
    parser.add_argument("--idle-share", help="what-if: idle share of energy cut to X%%")
    parser.add_argument("--cache-hit", help="what-if: prompt-cache hit ratio raised to Y%%")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--html", type=Path, metavar="FILE", help="write a report with charts")
    parser.add_argument("--http-config", type=Path, help="basic_auth / tls_config YAML")
    parser.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout, s")


def parse_options(args: argparse.Namespace) -> Options:
    """Turn the option strings into validated :class:`Options`.

    Args:
        args: Parsed command line.

    Returns:
        The options.

    Raises:
        ScenarioError: Any malformed or out-of-range value (one line naming the option).
    """
    if args.months < 0 or args.months > 600:
        raise ScenarioError(f"--months: {args.months} must be between 0 and 600")
    utilization = parse_fraction(args.utilization, "--utilization")
    if utilization <= 0:
        raise ScenarioError("--utilization: must be more than 0%")
    price = None
    if args.price is not None:
        price = parse_float_list(args.price, "--price", "currency per million output tokens")
        if len(price) != 1:
            raise ScenarioError("--price: one price, not a list")
    scenarios = scenario_grid(
        parse_float_list(args.electricity, "--electricity", "currency per kWh"),
        parse_float_list(args.pue, "--pue", "power usage effectiveness"),
        parse_hourly_list(args.gpu_hourly),
    )
    if len(scenarios) > 64:
        raise ScenarioError(f"{len(scenarios)} scenarios: at most 64 combinations")
    if any(s.pue < 1.0 for s in scenarios):
        raise ScenarioError("--pue: a PUE is at least 1.0 (facility power / IT power)")
    return Options(
        scenarios=tuple(scenarios),
        margin=None
        if args.margin is None
        else parse_fraction(args.margin, "--margin", allow_one=False),
        price=None if price is None else price[0],
        demand_tps=None if args.demand is None else parse_demand(args.demand),
        growth=parse_growth(args.growth),
        months=args.months,
        utilization=utilization,
        capacity_model=args.capacity_model,
        idle_target=None
        if args.idle_share is None
        else parse_fraction(args.idle_share, "--idle-share", allow_one=False),
        cache_target=None
        if args.cache_hit is None
        else parse_fraction(args.cache_hit, "--cache-hit"),
    )


def _measure(args: argparse.Namespace, client: httpx.Client, clock: Clock) -> Measurement:
    if args.prometheus is not None:
        seconds = parse_range(args.range)
        at = args.at if args.at is not None else clock.wall()
        if not math.isfinite(at):
            raise ScenarioError(f"--at: {at} is not a time")
        return from_prometheus(client, args.prometheus, seconds, at, args.source)
    window = parse_range(args.window, "--window")
    return from_agent(client, args.agent, window, clock)


def run_plan(
    args: argparse.Namespace,
    make_client: MakeClient,
    clock: Clock,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Run ``tokenergy plan``.

    Args:
        args: Parsed command line (see :func:`add_arguments`).
        make_client: Builds the HTTP client from the client config and a timeout.
        clock: Wall time (the default end of the range) and sleeping (``--agent``).
        stdout: Where the tables or JSON go.
        stderr: Where problems go, one line each.

    Returns:
        0, 1 when the source cannot give a measurement, 2 for a bad option.
    """

    def fail(message: str, code: int) -> int:
        stderr.write(f"tokenergy plan: {message}\n")
        return code

    try:
        options = parse_options(args)
        if args.agent is not None:
            parse_range(args.window, "--window")
        else:
            parse_range(args.range)
        config = load_client_config(args.http_config) if args.http_config else None
        client = make_client(config, args.timeout)
    except (ScenarioError, ClientConfigError) as exc:
        return fail(str(exc), EXIT_USAGE)
    try:
        with client:
            measurement = _measure(args, client, clock)
    except ScenarioError as exc:
        return fail(str(exc), EXIT_USAGE)
    except SourceError as exc:
        return fail(str(exc), EXIT_SOURCE)
    # pygal is imported only when plan runs, not whenever the command line is built.
    from agent.plan.render import render_html, render_tables

    report = build_report(measurement, options)
    for problem in report.problems:
        stderr.write(f"tokenergy plan: {problem}\n")
    if args.html is not None:
        try:
            args.html.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            return fail(f"cannot write {args.html}: {exc.strerror or exc}", EXIT_SOURCE)
    if args.json:
        stdout.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        # A pipe gets wide lines (rich would wrap at 80 columns); a terminal its own width.
        width = None if stdout.isatty() else 200
        render_tables(report, Console(file=stdout, width=width, soft_wrap=False))
        if args.html is not None:
            stdout.write(f"report written to {args.html}\n")
    if report.capacity_problem and options.demand_tps is not None:
        stderr.write(f"tokenergy plan: capacity: {report.capacity_problem}\n")
    return EXIT_OK
