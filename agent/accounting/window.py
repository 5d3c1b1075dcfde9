"""Windowed ratios from the ledger's own per-interval deltas. Pure: no I/O, no clock.

The window keeps a bounded deque of intervals; each holds the agent's own non-negative deltas
per (server, model). Because the deltas already absorb server restarts, driver reloads and
lost GPUs, the ratios are correct across all of them. Sums are recomputed from the kept
intervals at each read (no running sums that subtract), so a window that empties gives exact
zeros and never a tiny leftover that would blow a ratio up.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import reduce
from itertools import repeat
from operator import add

Key = tuple[str, str]
"""(server, model)."""

DEFAULT_MAX_INTERVALS = 65_536
"""Hard bound on kept intervals, whatever the window and the advance rate."""


@dataclass(frozen=True, slots=True)
class IntervalDelta:
    """The agent's deltas for one (server, model) in one interval; every field is >= 0.

    Attributes:
        input_tokens: Prompt tokens.
        output_tokens: Generated tokens.
        energy_joules: Attributed energy, J.
        cost: Energy plus hardware cost, configured currency.
        gpu_seconds: GPU time attributed (by share), s; > 0 means a GPU was attributed.
        input_energy_joules: Part of ``energy_joules`` the input (prefill) took, J; 0 when
            the interval was not split.
        output_energy_joules: Part the output (decode) took, J.
        input_cost: Part of ``cost`` the input took.
        output_cost: Part of ``cost`` the output took.
        split: True when the interval's energy was split between input and output.
    """

    input_tokens: float = 0.0
    output_tokens: float = 0.0
    energy_joules: float = 0.0
    cost: float = 0.0
    gpu_seconds: float = 0.0
    input_energy_joules: float = 0.0
    output_energy_joules: float = 0.0
    input_cost: float = 0.0
    output_cost: float = 0.0
    split: bool = False


@dataclass(frozen=True, slots=True)
class WindowRatios:
    """Ratios of one (server, model) over the window; None where undefined, never NaN/Inf.

    Attributes:
        tokens_per_joule: Output tokens per J; None without output tokens or energy.
        joules_per_token: J per output token; None without output tokens or energy.
        cost_per_million_tokens: All cost per 1e6 output tokens; None without output tokens
            or without any GPU attributed in the window.
        input_tokens_per_second: Prompt tokens/s; None when the window spans no time.
        output_tokens_per_second: Generated tokens/s; None when the window spans no time.
        power_watts: Mean attributed power, W; None when no time or no GPU attributed.
        input_joules_per_input_token: Input (prefill) energy per input token, J, over the
            intervals whose energy was split; None without such intervals or input tokens.
        output_joules_per_output_token: Output (decode) energy per output token, J, likewise.
        input_cost_per_million_input_tokens: Input cost per 1e6 input tokens, likewise.
        output_cost_per_million_output_tokens: Output cost per 1e6 output tokens, likewise.
    """

    tokens_per_joule: float | None = None
    joules_per_token: float | None = None
    cost_per_million_tokens: float | None = None
    input_tokens_per_second: float | None = None
    output_tokens_per_second: float | None = None
    power_watts: float | None = None
    input_joules_per_input_token: float | None = None
    output_joules_per_output_token: float | None = None
    input_cost_per_million_input_tokens: float | None = None
    output_cost_per_million_output_tokens: float | None = None


_Row = tuple[float, float, float, float, float, float, float, float, float, float, float, float]
"""One key's addends in one interval, in :func:`_ratios`' argument order (zeros where the
interval was not split)."""

_NOT_SPLIT = (0.0,) * 6

_SUM_IS_SEQUENTIAL = sys.version_info < (3, 12)
"""``sum`` of floats adds one at a time, left to right, up to Python 3.11 (from 3.12 it
compensates the rounding, Neumaier-style, and gives other bits)."""


def _column_sums(rows: list[_Row]) -> Iterator[float]:
    """Each column of ``rows`` added from 0.0, first row first, one addition at a time."""
    columns: Iterable[tuple[float, ...]] = zip(*rows, strict=True)
    if _SUM_IS_SEQUENTIAL:
        # The same additions in C, with no call per addition: 3-4x faster than reduce.
        return map(sum, columns, repeat(0.0))
    return map(reduce, repeat(add), columns, repeat(0.0))


def _row(duration_seconds: float, d: IntervalDelta) -> _Row:
    split = (
        (
            d.input_tokens,
            d.output_tokens,
            d.input_energy_joules,
            d.output_energy_joules,
            d.input_cost,
            d.output_cost,
        )
        if d.split
        else _NOT_SPLIT
    )
    return (
        duration_seconds,
        d.input_tokens,
        d.output_tokens,
        d.energy_joules,
        d.cost,
        d.gpu_seconds,
        *split,
    )


@dataclass(frozen=True, slots=True)
class _Interval:
    end_seconds: float
    # Key -> its addends, made once when the interval is added (each is read at every
    # advance while it stays in the window).
    rows: Mapping[Key, _Row]


class RatioWindow:
    """A sliding window of per-interval deltas.

    Args:
        window_seconds: Length of the window, s (> 0). An interval is kept while its end is
            within the window of the latest time.
        max_intervals: Most intervals kept, a memory bound.

    Raises:
        ValueError: When ``window_seconds`` is not > 0 or ``max_intervals`` < 1.
    """

    def __init__(self, window_seconds: float, max_intervals: int = DEFAULT_MAX_INTERVALS) -> None:
        if not (math.isfinite(window_seconds) and window_seconds > 0):
            raise ValueError(f"window_seconds must be a finite number > 0, got {window_seconds}")
        if max_intervals < 1:
            raise ValueError(f"max_intervals must be >= 1, got {max_intervals}")
        self.window_seconds = float(window_seconds)
        self._intervals: deque[_Interval] = deque(maxlen=max_intervals)

    def __len__(self) -> int:
        return len(self._intervals)

    def add(
        self, end_seconds: float, duration_seconds: float, deltas: Mapping[Key, IntervalDelta]
    ) -> None:
        """Append one interval and drop those that left the window.

        Args:
            end_seconds: Monotonic time at the end of the interval, s.
            duration_seconds: Length of the interval, s (>= 0).
            deltas: The interval's deltas per key; a key present with zeros counts its time.
        """
        if duration_seconds > 0:
            rows = {key: _row(duration_seconds, d) for key, d in deltas.items()}
            self._intervals.append(_Interval(end_seconds, rows))
        start = end_seconds - self.window_seconds
        while self._intervals and self._intervals[0].end_seconds <= start:
            self._intervals.popleft()

    def ratios(self) -> dict[Key, WindowRatios]:
        """Ratios of every key present in the window.

        Returns:
            ``(server, model) -> WindowRatios``.
        """
        by_key: dict[Key, list[_Row]] = {}
        for interval in self._intervals:
            for key, row in interval.rows.items():
                rows = by_key.get(key)
                if rows is None:
                    by_key[key] = [row]
                else:
                    rows.append(row)
        # Each column added oldest interval first from 0.0, one addition at a time: exactly
        # the sums of a loop.
        return {key: _ratios(*_column_sums(rows)) for key, rows in by_key.items()}


def _ratios(
    seconds: float,
    input_tokens: float,
    output_tokens: float,
    joules: float,
    cost: float,
    gpu_seconds: float,
    split_input_tokens: float,
    split_output_tokens: float,
    input_joules: float,
    output_joules: float,
    input_cost: float,
    output_cost: float,
) -> WindowRatios:
    def per(numerator: float, tokens: float, scale: float = 1.0) -> float | None:
        return numerator / tokens * scale if tokens > 0 and attributed else None

    has_output = output_tokens > 0
    has_energy = joules > 0
    attributed = gpu_seconds > 0
    has_time = seconds > 0
    ratios = (
        output_tokens / joules if has_output and has_energy else None,
        joules / output_tokens if has_output and has_energy else None,
        cost / output_tokens * 1e6 if has_output and attributed else None,
        input_tokens / seconds if has_time else None,
        output_tokens / seconds if has_time else None,
        joules / seconds if has_time and attributed else None,
        per(input_joules, split_input_tokens),
        per(output_joules, split_output_tokens),
        per(input_cost, split_input_tokens, 1e6),
        per(output_cost, split_output_tokens, 1e6),
    )
    # A value that overflowed (denormal denominators) is None, never Inf or NaN.
    isfinite = math.isfinite
    return WindowRatios(*[v if v is None or isfinite(v) else None for v in ratios])
