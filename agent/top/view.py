"""What ``tokenergy top`` shows: per node, server and model, rates between two reads.

Pure module: no I/O, no clock. A :class:`Node` is fed readings (or failures) with the time
they were taken and keeps what the screen needs: the rates of the last interval, a short
history for the sparkline, and whether the node answers. A node that stops answering keeps
its rows, shown as down, so it is not silently dropped from the screen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.table import Table
from rich.text import Text

from agent.plan.exposition import AgentReading, rates

__all__ = [
    "SORT_KEYS",
    "Node",
    "TopRow",
    "plain_lines",
    "sort_rows",
    "sparkline",
    "table",
    "top_rows",
]

HISTORY = 30
"""Intervals kept for the sparkline."""

SORT_KEYS = ("out", "in", "watts", "tpj", "cost", "idle", "kv", "waiting", "name")
"""Sort keys, in the order the ``s`` key cycles through them."""

_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None], width: int = 12) -> str:
    """A bar per value (the last ``width``), scaled to the largest; unknown = space.

    Args:
        values: Oldest first.
        width: Most bars shown.

    Returns:
        The sparkline text.
    """
    shown = list(values)[-width:]
    known = [v for v in shown if v is not None and math.isfinite(v)]
    top = max(known, default=0.0)
    out = []
    for v in shown:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif top <= 0:
            out.append(_BARS[0])
        else:
            out.append(_BARS[min(len(_BARS) - 1, int(v / top * (len(_BARS) - 1) + 0.5))])
    return "".join(out)


@dataclass
class _Series:
    history: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY))
    in_tps: float | None = None
    out_tps: float | None = None
    watts: float | None = None
    cost_per_s: float | None = None
    idle_watts: float | None = None


class Node:
    """One agent as ``top`` sees it.

    Args:
        url: The agent's URL, as given.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.reading: AgentReading | None = None
        self.taken_at: float | None = None
        self.error: str | None = None
        self.failed_since: float | None = None
        self.series: dict[tuple[str, str], _Series] = {}

    @property
    def up(self) -> bool:
        """True when the last read succeeded."""
        return self.error is None and self.reading is not None

    def observe(self, reading: AgentReading, t: float) -> None:
        """Take a successful read.

        Args:
            reading: What the agent's /metrics said.
            t: When it was taken, monotonic s.
        """
        if self.reading is not None and self.taken_at is not None and t > self.taken_at:
            measured = {
                (m.server, m.model): m for m in rates(self.reading, reading, t - self.taken_at)
            }
            for key in reading.models:
                s = self.series.setdefault(key, _Series())
                m = measured.get(key)
                s.in_tps = None if m is None else m.input_tps
                s.out_tps = None if m is None else m.output_tps
                s.watts = None if m is None else m.watts
                s.cost_per_s = None if m is None else m.cost_per_s
                s.idle_watts = None if m is None else m.idle_watts
                s.history.append(s.out_tps)
        else:
            for key in reading.models:
                self.series.setdefault(key, _Series())
        self.reading = reading
        self.taken_at = t
        self.error = None
        self.failed_since = None

    def fail(self, reason: str, t: float) -> None:
        """Take a failed read: the node is down; its rows stay, without rates.

        Args:
            reason: One line saying why.
            t: When, monotonic s.
        """
        if self.error is None:
            self.failed_since = t
        self.error = reason
        for s in self.series.values():
            s.in_tps = s.out_tps = s.watts = s.cost_per_s = s.idle_watts = None
            s.history.append(None)
        # The next good read starts a new interval: no rate across the outage.
        self.reading = None
        self.taken_at = None


@dataclass(frozen=True)
class TopRow:
    """One line of the screen."""

    node: str
    server: str
    model: str
    status: str
    in_tps: float | None
    out_tps: float | None
    watts: float | None
    tokens_per_joule: float | None
    cost_per_million: float | None
    idle_share: float | None
    kv_cache: float | None
    waiting: float | None
    history: tuple[float | None, ...]
    detail: str = ""
    """Why the node is down, when it is."""


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def top_rows(nodes: Sequence[Node], now: float) -> list[TopRow]:
    """Every row of every node, down nodes included.

    Args:
        nodes: The nodes.
        now: Current monotonic time, s (for "down for N s").

    Returns:
        The rows, in node order then (server, model) order.
    """
    out = []
    for node in nodes:
        detail = ""
        if not node.up:
            since = "" if node.failed_since is None else f" {now - node.failed_since:.0f}s"
            status = f"DOWN{since}"
            detail = node.error or "no answer yet"
        else:
            status = "up"
        reading = node.reading
        if not node.series:
            blank = TopRow(
                node.url, "-", "-", status, None, None, None, None, None, None, None, None,
                history=(), detail=detail,
            )  # fmt: skip
            out.append(blank)
            continue
        for key, s in sorted(node.series.items()):
            server, model = key
            row_status = status
            if reading is not None and reading.server_up.get(server) is False:
                row_status = "server down"
            kv = waiting = None
            if reading is not None:
                kv = reading.kv_cache.get(key)
                waiting = reading.waiting.get(key)
            cost = _div(s.cost_per_s, s.out_tps)
            out.append(
                TopRow(
                    node=node.url,
                    server=server,
                    model=model,
                    status=row_status,
                    in_tps=s.in_tps,
                    out_tps=s.out_tps,
                    watts=s.watts,
                    tokens_per_joule=_div(s.out_tps, s.watts),
                    cost_per_million=None if cost is None else cost * 1e6,
                    idle_share=_div(s.idle_watts, s.watts),
                    kv_cache=kv,
                    waiting=waiting,
                    history=tuple(s.history),
                    detail=detail,
                )
            )
    return out


_SORT_FIELD = {
    "out": "out_tps",
    "in": "in_tps",
    "watts": "watts",
    "tpj": "tokens_per_joule",
    "cost": "cost_per_million",
    "idle": "idle_share",
    "kv": "kv_cache",
    "waiting": "waiting",
}


def sort_rows(rows: Sequence[TopRow], key: str, reverse: bool = False) -> list[TopRow]:
    """Rows sorted by a key: numbers largest first (``reverse`` flips), unknowns last.

    Args:
        rows: The rows.
        key: One of :data:`SORT_KEYS`.
        reverse: Smallest first instead (for ``name``: Z to A).

    Returns:
        A new list.

    Raises:
        ValueError: An unknown key.
    """
    if key not in SORT_KEYS:
        raise ValueError(f"unknown sort key {key!r}; use one of {', '.join(SORT_KEYS)}")
    if key == "name":
        return sorted(rows, key=lambda r: (r.node, r.server, r.model), reverse=reverse)
    name = _SORT_FIELD[key]
    known = [r for r in rows if getattr(r, name) is not None]
    unknown = [r for r in rows if getattr(r, name) is None]
    known.sort(key=lambda r: (getattr(r, name), r.node, r.server, r.model), reverse=not reverse)
    return known + unknown


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


HEADERS = (
    "node", "server", "model", "status", "in tok/s", "out tok/s", "W", "tok/J", "$/Mtok",
    "idle", "KV", "wait", "out tok/s history",
)  # fmt: skip


def _cells(row: TopRow, plain: bool = False) -> tuple[str, ...]:
    """Display cells; ``plain`` drops thousands separators and percent signs (for parsing)."""
    count = ".0f" if plain else ",.0f"
    share = ".3f" if plain else ".0%"
    return (
        row.node,
        row.server,
        row.model or "-",
        row.status,
        _f(row.in_tps, count),
        _f(row.out_tps, count),
        _f(row.watts, count),
        _f(row.tokens_per_joule, ".2f"),
        _f(row.cost_per_million, ".3f"),
        _f(row.idle_share, share),
        _f(row.kv_cache, share),
        _f(row.waiting, ".0f"),
        sparkline(row.history),
    )


def table(rows: Sequence[TopRow], sort_key: str, reverse: bool, currency: str | None) -> Table:
    """The screen as a rich table.

    Args:
        rows: Sorted rows.
        sort_key: Shown in the title.
        reverse: Shown in the title.
        currency: Replaces ``$`` in the cost header when known.

    Returns:
        The table.
    """
    title = Text(
        f"tokenergy top  sort: {sort_key}{' (reversed)' if reverse else ''}  "
        "[s] next sort  [r] reverse  [q] quit"
    )
    reasons = sorted({f"{r.node}: {r.detail}" for r in rows if r.detail})
    caption = Text("\n".join(reasons), style="red") if reasons else None
    t = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for i, head in enumerate(HEADERS):
        if head == "$/Mtok" and currency:
            head = f"{currency}/Mtok"
        t.add_column(head, justify="left" if i < 4 or i == len(HEADERS) - 1 else "right")
    for row in rows:
        style = "red" if row.status != "up" else None
        t.add_row(*_cells(row), style=style)
    return t


def _logfmt(value: str) -> str:
    if value and not any(c in value for c in ' ="\\'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plain_lines(rows: Sequence[TopRow], stamp: str) -> list[str]:
    """The screen as plain tab-free lines (for a pipe or a log), one per row.

    Args:
        rows: Sorted rows.
        stamp: A timestamp put first on every line.

    Returns:
        The lines, without newlines.
    """
    lines = []
    names = ("node", "server", "model", "status", "in_tps", "out_tps", "watts", "tok_per_j",
             "cost_per_mtok", "idle", "kv", "waiting")  # fmt: skip
    for row in rows:
        pairs = [f"{k}={_logfmt(v)}" for k, v in zip(names, _cells(row, plain=True), strict=False)]
        if row.detail:
            pairs.append(f"error={_logfmt(row.detail)}")
        lines.append(f"{stamp} " + " ".join(pairs))
    return lines
