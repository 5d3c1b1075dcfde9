"""``tokenergy top URL...``: a live terminal view of running agents, in the spirit of nvitop.

An edge: it reads each agent's /metrics over HTTP (an injected client factory, basic auth and
TLS from ``--http-config``), takes time from an injected clock, and draws with rich. On a
terminal it redraws in place and reads single keys (``s`` next sort key, ``r`` reverse,
``q`` quit); when stdout is not a terminal it prints plain logfmt-style lines, one per row
per refresh. Each node is read in its own worker with a timeout, so a node that hangs delays
no other; a node that stops answering is shown as down.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TextIO

import httpx
from rich.console import Console
from rich.live import Live

from agent.clock import Clock
from agent.plan.client import ClientConfig, ClientConfigError, load_client_config
from agent.plan.exposition import AgentReading
from agent.plan.sources import SourceError, read_agent_url
from agent.top.view import SORT_KEYS, Node, TopRow, plain_lines, sort_rows, table, top_rows

__all__ = ["add_arguments", "run_top"]

MakeClient = Callable[[ClientConfig | None, float], httpx.Client]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``tokenergy top`` on its subparser.

    Args:
        parser: The ``top`` subparser.
    """
    parser.add_argument("urls", nargs="+", metavar="URL", help="agent URLs (http://node:10110)")
    parser.add_argument("--interval", type=float, default=2.0, help="refresh every S s (2)")
    parser.add_argument("--count", type=int, default=0, help="stop after N refreshes; 0 = never")
    parser.add_argument("--sort", default="out", choices=SORT_KEYS, help="sort key (default out)")
    parser.add_argument("--reverse", action="store_true", help="smallest first")
    parser.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    parser.add_argument("--http-config", type=Path, help="basic_auth / tls_config YAML")
    parser.add_argument("--timeout", type=float, help="per-read timeout, s (default: interval)")


def _read(client: httpx.Client, url: str) -> AgentReading | str:
    try:
        return read_agent_url(client, url)
    except SourceError as exc:
        return str(exc)


class _Keys:
    """Single key presses from a terminal, read on a daemon thread (cbreak mode)."""

    def __init__(self, stdin: TextIO) -> None:
        self.queue: queue.Queue[str] = queue.Queue()
        self._stdin = stdin

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        import termios
        import tty

        try:
            fd = self._stdin.fileno()
            saved = termios.tcgetattr(fd)
        except (OSError, ValueError, termios.error):
            yield  # not a terminal after all: no keys
            return
        tty.setcbreak(fd)
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                try:
                    data = os.read(fd, 1)
                except OSError:
                    return
                if not data:
                    return
                self.queue.put(data.decode("utf-8", "replace"))

        threading.Thread(target=loop, name="top-keys", daemon=True).start()
        try:
            yield
        finally:
            stop.set()
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def pending(self) -> list[str]:
        keys = []
        while True:
            try:
                keys.append(self.queue.get_nowait())
            except queue.Empty:
                return keys


def run_top(
    args: argparse.Namespace,
    make_client: MakeClient,
    clock: Clock,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Run ``tokenergy top``.

    Args:
        args: Parsed command line (see :func:`add_arguments`).
        make_client: Builds the HTTP client from the client config and a timeout.
        clock: Monotonic time and sleeping.
        stdin: Key presses come from here on a terminal.
        stdout: The screen, or plain lines when it is not a terminal.
        stderr: Bad options, one line.

    Returns:
        0 on ``q``, Ctrl-C or after ``--count`` refreshes; 2 for a bad option.
    """
    if args.interval <= 0 or args.count < 0:
        stderr.write("tokenergy top: --interval must be > 0 and --count >= 0\n")
        return 2
    for url in args.urls:
        if not url.startswith(("http://", "https://")):
            stderr.write(f"tokenergy top: {url!r} is not an http:// or https:// URL\n")
            return 2
    try:
        config = load_client_config(args.http_config) if args.http_config else None
        client = make_client(config, args.timeout or args.interval)
    except ClientConfigError as exc:
        stderr.write(f"tokenergy top: {exc}\n")
        return 2
    nodes = [Node(url) for url in args.urls]
    interactive = stdout.isatty() and not args.plain
    state = {"sort": args.sort, "reverse": args.reverse}
    keys = _Keys(stdin)
    console = Console(file=stdout)
    with client, ThreadPoolExecutor(max_workers=min(16, len(nodes))) as pool:

        def refresh() -> None:
            results = list(pool.map(lambda n: _read(client, n.url), nodes))
            now = clock.monotonic()
            for node, result in zip(nodes, results, strict=True):
                if isinstance(result, str):
                    node.fail(result, now)
                else:
                    node.observe(result, now)

        def rows_now() -> list[TopRow]:
            rows = top_rows(nodes, clock.monotonic())
            return sort_rows(rows, state["sort"], bool(state["reverse"]))

        def currency() -> str | None:
            found = {n.reading.currency for n in nodes if n.reading and n.reading.currency}
            return found.pop() if len(found) == 1 else None

        def wait_and_handle_keys() -> bool:
            """Sleep one interval in small steps; False when the user quits."""
            deadline = clock.monotonic() + args.interval
            while clock.monotonic() < deadline:
                for key in keys.pending():
                    if key in ("q", "Q"):
                        return False
                    if key == "s":
                        i = SORT_KEYS.index(str(state["sort"]))
                        state["sort"] = SORT_KEYS[(i + 1) % len(SORT_KEYS)]
                        return True
                    if key == "r":
                        state["reverse"] = not state["reverse"]
                        return True
                clock.sleep(min(0.1, max(0.0, deadline - clock.monotonic())))
            return True

        done = 0
        try:
            if interactive:
                with keys.reading(), Live(console=console, auto_refresh=False) as live:
                    while True:
                        refresh()
                        done += 1
                        live.update(
                            table(
                                rows_now(), str(state["sort"]), bool(state["reverse"]), currency()
                            ),
                            refresh=True,
                        )
                        if args.count and done >= args.count:
                            break
                        if not wait_and_handle_keys():
                            break
            else:
                while True:
                    refresh()
                    done += 1
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(clock.wall()))
                    for line in plain_lines(rows_now(), stamp):
                        stdout.write(line + "\n")
                    stdout.flush()
                    if args.count and done >= args.count:
                        break
                    clock.sleep(args.interval)
        except KeyboardInterrupt:
            pass
    return 0
