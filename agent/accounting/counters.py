"""Per-series counter deltas across restarts, gaps and glitches. Pure: no I/O, no clock, no threads.

A server's counters are its own cumulative values. They reset per *series*: one data-parallel
rank (vLLM's ``engine``, SGLang's ``dp_rank``) restarting resets its own series only, and a
whole-server restart resets every series. :class:`TokenCounters` turns successive readings into
non-negative deltas so that the agent's own counters never decrease, never count a token twice
and never invent one.

Policy (the rules the ledger relies on):

- **Series.** Every raw series (``TokenReading.series``: model, kind, key) has its own base;
  where a reading lists no series for a kind, the field itself is one series keyed by its kind.
  Nothing is ever tested on a sum.
- **First sight is a baseline.** The first successful reading of a server holds history from
  before the agent watched it: recorded as bases, *not* counted. A series of such a model that
  shows up later (a rank missing from the first scrape) may hold that history too and is a
  baseline as well. A model that first appears on a server already seen is new while the
  agent watches: all its series count from zero, unless the agent has forgotten or refused a
  model of that server (expired or over the cap): it cannot tell such a model from one it
  forgot, so it takes a baseline.
- **Reset.** A series lower than its base was reset (that series only, Prometheus ``rate()``
  semantics): its raw value is counted. Tokens made between the last scrape and the reset are
  lost at the server and are not guessed.
- **Start time is evidence, not a verdict.** A start time that advanced by more than
  ``start_time_tolerance_seconds`` while a series dropped is reported as a ``restart``; a start
  time alone never rebases anything, so workers with different start times or a start time
  computed as now minus uptime cannot make the agent recount a lifetime. A restart after which
  a series already grew past its old value is under-counted by that old value (never more than
  the interval's true increase); it is never over-counted.
- **Missing.** A down server, or a series missing from one scrape, contributes nothing and keeps
  its base; when it comes back at or above it only the growth counts, below it is that
  series' reset.
- **Glitch guard.** An increase larger than the ceiling for its interval (tokens per second per
  GPU, or phase seconds per second per GPU, times the seconds since the series was last read,
  at least 1 s) is not counted and is reported as ``implausible``. The base stays on the last
  good value, so a lone absurd sample changes nothing; if the next value keeps counting from
  the new level (above the absurd one, by a plausible increase), the series is rebased there
  and counts normally from it.
- **Impossible baseline.** A baseline above the ceiling rate times ``MAX_UPTIME_SECONDS`` is
  not taken (reported ``implausible``); the series takes its baseline from a later reading.
- **Not a number.** A raw value that is None, negative, NaN or infinite is "not known": the
  series counts nothing and keeps its base.
- **Cardinality.** At most ``max_models_per_server`` models and ``max_series_per_model`` series
  per model are tracked; model names longer than ``max_label_length`` are not tracked. What is
  not tracked is not counted and is reported (grouped per advance). A model absent for
  ``model_expiry_seconds`` is forgotten and listed in ``ServerObservation.retired`` so the
  ledger can fold its totals into :data:`OTHER_MODEL`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter

from agent.config import AccountingSettings
from agent.readings import (
    AccountingEvent,
    AccountingReason,
    CounterKind,
    ServerStatus,
    TokenReading,
)

COUNTER_KINDS: tuple[CounterKind, ...] = (
    "input",
    "output",
    "cached",
    "prefill_seconds",
    "decode_seconds",
)
"""The counters tracked per model: prompt, generated and cached prompt tokens, phase times."""

TOKEN_KINDS: frozenset[CounterKind] = frozenset({"input", "output", "cached"})
"""The kinds counted in tokens (the others are seconds)."""

OTHER_MODEL = "_other"
"""The model label that holds the totals of models the agent no longer tracks (expired)."""

MAX_UPTIME_SECONDS = 1e8
"""Longest a server process is taken to live, s (about 3 years): a baseline above the ceiling
rate times this is impossible and is not taken."""

MIN_GUARD_INTERVAL_SECONDS = 1.0
"""Shortest interval the glitch ceiling is computed over, s: scrape timing jitter must never
make a normal increase look impossible."""


@dataclass(frozen=True, slots=True)
class CounterLimits:
    """The guards of :class:`TokenCounters`; defaults as ``AccountingSettings``.

    Attributes:
        max_tokens_per_second_per_gpu: Ceiling of a token series' growth, tokens/s per GPU.
        max_phase_seconds_per_second_per_gpu: Ceiling of a phase-time series' growth, s/s
            per GPU.
        start_time_tolerance_seconds: Start-time movement read as the same process, s.
        max_models_per_server: Most models tracked per server.
        max_series_per_model: Most raw series tracked per model.
        max_label_length: Longest model name tracked, characters.
        model_expiry_seconds: Absence after which a model is forgotten, s.
    """

    max_tokens_per_second_per_gpu: float = 1e7
    max_phase_seconds_per_second_per_gpu: float = 1e5
    start_time_tolerance_seconds: float = 10.0
    max_models_per_server: int = 100
    max_series_per_model: int = 512
    max_label_length: int = 256
    model_expiry_seconds: float = 3600.0


def counter_limits(settings: AccountingSettings) -> CounterLimits:
    """The counters' guards from the ``accounting`` settings.

    Args:
        settings: The validated ``accounting`` section.

    Returns:
        The same values as a :class:`CounterLimits`.
    """
    return CounterLimits(
        max_tokens_per_second_per_gpu=settings.max_tokens_per_second_per_gpu,
        max_phase_seconds_per_second_per_gpu=settings.max_phase_seconds_per_second_per_gpu,
        start_time_tolerance_seconds=settings.start_time_tolerance_seconds,
        max_models_per_server=settings.max_models_per_server,
        max_series_per_model=settings.max_series_per_model,
        max_label_length=settings.max_label_length,
        model_expiry_seconds=settings.model_expiry_seconds,
    )


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """What one model counted in one interval; every field is >= 0.

    Attributes:
        input_tokens: Prompt tokens.
        output_tokens: Generated tokens.
        cached_input_tokens: Prompt tokens served from cache.
        prefill_seconds: Time requests spent in prefill, s.
        decode_seconds: Time requests spent in decode, s.
    """

    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cached_input_tokens: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerObservation:
    """What one interval says about one server's tokens.

    Attributes:
        observed: True when the server was up with a reading in this interval.
        first_sight: True when this reading was the server's baseline (tokens not known).
        restarted: True when a whole-server restart was seen (start time and a drop agree).
        deltas: Counts per tracked model present in this reading (first sight: all zero).
        models: The models the server's energy goes to: the tracked ones in this reading, or,
            when it is down or reports none, the last non-empty set seen; empty when never seen.
        retired: Models forgotten in this interval (absent too long); their totals belong
            to :data:`OTHER_MODEL` from now on.
        events: What to log and count: glitches, resets, drops.
    """

    observed: bool
    first_sight: bool
    restarted: bool
    deltas: dict[str, TokenDelta]
    models: tuple[str, ...]
    retired: tuple[str, ...] = ()
    events: tuple[AccountingEvent, ...] = ()

    @property
    def tokens_known(self) -> bool:
        """True when the interval's token counts are known (up and not the baseline)."""
        return self.observed and not self.first_sight

    def total_tokens(self) -> float:
        """Input plus output tokens of every model in the interval."""
        return sum(d.input_tokens + d.output_tokens for d in self.deltas.values())


@dataclass(slots=True)
class _Series:
    """One raw series: its last good value and, after a glitch, the refused value."""

    base: float
    t: float
    refused: float | None = None


_Ident = tuple[CounterKind, str]
"""A raw series' identity within its model: (kind, key)."""

_IDENT = attrgetter("kind", "key")
_VALUE = attrgetter("value")
_FIELDS = attrgetter(
    "input_tokens", "output_tokens", "cached_input_tokens", "prefill_seconds", "decode_seconds"
)
"""A reading's counter fields, in :data:`COUNTER_KINDS` order."""


@dataclass(slots=True)
class _Plan:
    """How to count one model's readings while its series layout stays the same.

    A scrape lists the same series in the same order cycle after cycle; the plan keeps what
    :func:`raw_series` and the sort by identity work out from that layout, so a cycle only
    reads the values. Built again whenever the layout changes.

    Attributes:
        layout: The reading's ``(kind, key)`` per listed series, in listed order.
        idents: The identities counted, sorted: the order :func:`raw_series` then ``sorted``
            give (a key listed twice once, a kind with no listed series as its field).
        pick: From the listed values followed by the five counter fields, the value of each
            of ``idents`` (a key listed twice: its last value).
        repeated: Position in ``idents`` -> every index of a key listed more than once, in
            listed order (its last valid value counts).
        segments: ``(kind, start, stop)``: the positions in ``idents`` of each kind listed
            (sorted identities group by kind).
        series: Each ident's tracked series, None until tracked.
    """

    layout: list[_Ident]
    idents: list[_Ident]
    pick: itemgetter[tuple[float | None, ...]]
    repeated: dict[int, list[int]]
    segments: list[tuple[CounterKind, int, int]]
    series: list[_Series | None]


def _plan(layout: list[_Ident], known: dict[_Ident, _Series]) -> _Plan:
    """The counting plan of one model's series layout (see :class:`_Plan`)."""
    sources: dict[_Ident, list[int]] = {}
    for i, ident in enumerate(layout):
        sources.setdefault(ident, []).append(i)
    listed = {kind for kind, _ in layout}
    for j, kind in enumerate(COUNTER_KINDS):
        if kind not in listed:
            sources[(kind, kind)] = [len(layout) + j]
    idents = sorted(sources)  # never empty: a kind is listed or is its field
    indices = [sources[ident][-1] for ident in idents]
    repeated = {j: sources[ident] for j, ident in enumerate(idents) if len(sources[ident]) > 1}
    if len(indices) == 1:
        # itemgetter of one index returns the item, not a 1-tuple: ask for it twice (the
        # count stops at the end of ``idents``).
        indices.append(indices[0])
    segments: list[tuple[CounterKind, int, int]] = []
    for j, (kind, _) in enumerate(idents):
        if segments and segments[-1][0] == kind:
            segments[-1] = (kind, segments[-1][1], j + 1)
        else:
            segments.append((kind, j, j + 1))
    series = [known.get(ident) for ident in idents]
    return _Plan(layout, idents, itemgetter(*indices), repeated, segments, series)


def _last_valid(values: list[float | None], indices: list[int] | None) -> float | None:
    """The last valid of a repeated key's values (None when none is, or not repeated)."""
    for i in reversed(indices or ()):
        value = values[i]
        if value is not None and 0 <= value < math.inf:
            return value
    return None


@dataclass(slots=True)
class _Model:
    last_seen: float
    # Admitted at first sight or after the server forgot or refused something: a series it
    # shows later may hold history from before the agent watched it, so each is a baseline.
    # A model first seen later is new while watched: every series of it counts from zero.
    baselines: bool
    series: dict[tuple[CounterKind, str], _Series] = field(default_factory=dict)
    plan: _Plan | None = None


@dataclass(slots=True)
class _ServerState:
    start_time_seconds: float | None
    models: dict[str, _Model] = field(default_factory=dict)
    energy_models: tuple[str, ...] = ()
    # True once a model or series was refused or forgotten: new ones are then baselines.
    forgetful: bool = False


def _valid(value: float | None) -> float | None:
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return float(value)


def raw_series(reading: TokenReading) -> dict[tuple[CounterKind, str], float]:
    """The valid raw series of one model's reading.

    Args:
        reading: One model's reading.

    Returns:
        ``(kind, key) -> value`` for every series with a finite value >= 0; a kind with no
        listed series is the field itself, keyed by the kind. A key listed twice keeps its
        last value.
    """
    out: dict[tuple[CounterKind, str], float] = {}
    series = reading.series
    for s in series:
        value = s.value
        # _valid inlined (run for every raw series of every scrape): NaN and +/-Inf fail.
        if value is not None and 0 <= value < math.inf:
            out[(s.kind, s.key)] = float(value)
    listed = {s.kind for s in series}
    fields: dict[CounterKind, float | None] = {
        "input": reading.input_tokens,
        "output": reading.output_tokens,
        "cached": reading.cached_input_tokens,
        "prefill_seconds": reading.prefill_seconds,
        "decode_seconds": reading.decode_seconds,
    }
    for kind, raw in fields.items():
        if kind not in listed:
            field_value = _valid(raw)
            if field_value is not None:
                out[(kind, kind)] = field_value
    return out


class TokenCounters:
    """Per-series, restart-aware, glitch-guarded deltas for every server (policy above).

    Args:
        limits: The guards; defaults as ``AccountingSettings``.
    """

    def __init__(self, limits: CounterLimits | None = None) -> None:
        self._limits = limits or CounterLimits()
        self._servers: dict[str, _ServerState] = {}

    def observe(
        self, name: str, status: ServerStatus | None, t: float, gpus: int = 1
    ) -> ServerObservation:
        """Take one interval's status of a server and return its deltas.

        Args:
            name: Server name.
            status: The server's status this interval; None when it was not reported.
            t: Monotonic time of the reading, s.
            gpus: GPUs the server uses (the glitch ceiling scales with it; at least 1).

        Returns:
            The interval's deltas, the models its energy goes to, and the events seen.
        """
        state = self._servers.get(name)
        if status is None or not status.up or status.reading is None:
            models = state.energy_models if state else ()
            return ServerObservation(False, False, False, {}, models)

        reading = status.reading
        events = _Events(name)
        # Last reading wins where a model is listed twice (the profile should never do that).
        present = {m.model: m for m in reading.models}
        first = state is None
        if state is None:
            state = _ServerState(start_time_seconds=None)
            self._servers[name] = state
        retired = self._expire(state, present, t, events)
        tracked = self._admit(state, present, first, t, events)
        dropped = False
        deltas: dict[str, TokenDelta] = {}
        gpus = max(1, gpus)
        # The ceiling rate of each kind for this server (rate x GPUs, as _step computes it).
        rates = {kind: self._rate(kind) * gpus for kind in COUNTER_KINDS}
        for model in tracked:
            counted, model_dropped = self._count_model(
                state, model, present[model], t, gpus, rates, first, events
            )
            dropped |= model_dropped
            deltas[model] = counted
        restarted = self._start_time_moved(state, reading.start_time_seconds) and dropped
        if restarted:
            events.add("restart", detail=f"start time {reading.start_time_seconds}")
        if present:
            state.energy_models = tuple(sorted(tracked)) or state.energy_models
        state.energy_models = tuple(m for m in state.energy_models if m in state.models)
        return ServerObservation(
            True,
            first,
            restarted,
            deltas,
            state.energy_models,
            retired,
            events.done(),
        )

    # -- models ---------------------------------------------------------------------------

    def _expire(
        self, state: _ServerState, present: dict[str, TokenReading], t: float, events: _Events
    ) -> tuple[str, ...]:
        limit = self._limits.model_expiry_seconds
        gone = sorted(
            m for m, s in state.models.items() if m not in present and t - s.last_seen > limit
        )
        for model in gone:
            del state.models[model]
            state.forgetful = True
            events.add("model_expired", model=model, detail=f"absent for more than {limit:g} s")
        return tuple(gone)

    def _admit(
        self,
        state: _ServerState,
        present: dict[str, TokenReading],
        first: bool,
        t: float,
        events: _Events,
    ) -> list[str]:
        tracked: list[str] = []
        for model in sorted(present):
            if model in state.models:
                tracked.append(model)
                continue
            if len(model) > self._limits.max_label_length:
                events.drop("label_too_long", model[:64] + "...")
                continue
            if len(state.models) >= self._limits.max_models_per_server:
                state.forgetful = True
                events.drop("too_many_models", model)
                continue
            state.models[model] = _Model(last_seen=t, baselines=first or state.forgetful)
            tracked.append(model)
        return tracked

    # -- series ---------------------------------------------------------------------------

    def _count_model(
        self,
        state: _ServerState,
        model: str,
        reading: TokenReading,
        t: float,
        gpus: int,
        rates: dict[CounterKind, float],
        first: bool,
        events: _Events,
    ) -> tuple[TokenDelta, bool]:
        entry = state.models[model]
        entry.last_seen = t
        sums: dict[CounterKind, float] = dict.fromkeys(COUNTER_KINDS, 0.0)
        dropped = False
        listed = reading.series
        layout = list(map(_IDENT, listed))
        plan = entry.plan
        if plan is None or plan.layout != layout:
            plan = entry.plan = _plan(layout, entry.series)
        values = list(map(_VALUE, listed))
        values.extend(_FIELDS(reading))
        picked = plan.pick(values)
        tracked = plan.series
        inf = math.inf
        floor = MIN_GUARD_INTERVAL_SECONDS
        # The series in identity order, each with its value: sorted(raw_series(reading)).
        for kind, start, stop in plan.segments:
            rate = rates[kind]
            total = 0.0
            for j in range(start, stop):
                value = picked[j]
                series = tracked[j]
                if (
                    value.__class__ is float
                    and 0.0 <= value < inf
                    and series is not None
                    and series.refused is None
                ):
                    base = series.base
                    if value >= base:
                        # The common step, as _step takes it: a tracked series, no reset, no
                        # glitch pending, within the ceiling (same arithmetic: the same
                        # verdict to the bit).
                        increase = value - base
                        elapsed = t - series.t
                        if elapsed < floor:
                            elapsed = floor
                        if increase <= rate * elapsed:
                            series.base = value
                            series.t = t
                            total += increase
                            continue
                # Not a number (None, NaN, negative, infinite): not known, nothing counted.
                if value is None or not 0 <= value < inf:
                    value = _last_valid(values, plan.repeated.get(j))
                    if value is None:
                        continue
                raw = float(value)
                counted, was_reset = self._count_series(
                    state, entry, plan, j, raw, t, gpus, first, model, events
                )
                total += counted
                dropped |= was_reset
            sums[kind] = total
        return (
            TokenDelta(
                input_tokens=sums["input"],
                output_tokens=sums["output"],
                cached_input_tokens=sums["cached"],
                prefill_seconds=sums["prefill_seconds"],
                decode_seconds=sums["decode_seconds"],
            ),
            dropped,
        )

    def _count_series(
        self,
        state: _ServerState,
        entry: _Model,
        plan: _Plan,
        j: int,
        raw: float,
        t: float,
        gpus: int,
        first: bool,
        model: str,
        events: _Events,
    ) -> tuple[float, bool]:
        """One series' value, past the common step: tracking, baseline, reset, glitch.

        Returns:
            ``(counted, was a reset)``.
        """
        kind, key = plan.idents[j]
        series = plan.series[j]
        if series is None:
            if len(entry.series) >= self._limits.max_series_per_model:
                state.forgetful = True
                events.drop("too_many_series", model, f"{kind}:{key}")
                return 0.0, False
            baseline = first or entry.baselines
            if baseline and raw > self._rate(kind) * gpus * MAX_UPTIME_SECONDS:
                events.add(
                    "implausible",
                    model=model,
                    series=f"{kind}:{key}",
                    detail=f"baseline {raw:.6g} is more than a lifetime can hold; not used",
                )
                return 0.0, False
            series = _Series(base=raw if baseline else 0.0, t=t)
            entry.series[(kind, key)] = series
            plan.series[j] = series
            if baseline:
                return 0.0, False
        return self._step(series, kind, raw, t, gpus, model, key, events)

    def _step(
        self,
        series: _Series,
        kind: CounterKind,
        raw: float,
        t: float,
        gpus: int,
        model: str,
        key: str,
        events: _Events,
    ) -> tuple[float, bool]:
        """Count one series' new value; returns (counted, was a reset)."""
        ceiling = self._rate(kind) * gpus * max(t - series.t, MIN_GUARD_INTERVAL_SECONDS)
        reset = raw < series.base
        increase = raw if reset else raw - series.base
        if increase <= ceiling:
            if reset:
                events.add(
                    "series_reset",
                    model=model,
                    series=f"{kind}:{key}",
                    detail=f"{series.base:.17g} -> {raw:.17g}",
                )
            series.base, series.t, series.refused = raw, t, None
            return increase, reset
        refused = series.refused
        if refused is not None and refused < raw and raw - refused <= ceiling:
            # The counter kept counting from the level it jumped to: count from there on.
            series.base, series.t, series.refused = raw, t, None
            return raw - refused, False
        events.add(
            "implausible",
            model=model,
            series=f"{kind}:{key}",
            detail=(
                f"{'reset to' if reset else 'increase of'} {increase:.6g} in "
                f"{t - series.t:.6g} s over the ceiling {ceiling:.6g} ({gpus} GPU(s)); "
                f"not counted"
            ),
        )
        series.refused = raw
        return 0.0, False

    def _rate(self, kind: CounterKind) -> float:
        if kind in TOKEN_KINDS:
            return self._limits.max_tokens_per_second_per_gpu
        return self._limits.max_phase_seconds_per_second_per_gpu

    def _start_time_moved(self, state: _ServerState, start: float | None) -> bool:
        if start is None or not math.isfinite(start):
            return False
        # The first valid start time seen is the reference; nothing to compare it with yet.
        last = state.start_time_seconds
        if last is None or start > last:
            # Keep the newest start time seen: an older worker answering is not a restart.
            state.start_time_seconds = start
        return last is not None and start - last > self._limits.start_time_tolerance_seconds


class _Events:
    """Collects the events of one observation; drops are grouped per reason."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._events: list[AccountingEvent] = []
        self._drops: dict[AccountingReason, tuple[int, str, str]] = {}

    def add(
        self, reason: AccountingReason, *, model: str = "", series: str = "", detail: str = ""
    ) -> None:
        self._events.append(AccountingEvent(reason, self._source, model, series, 1, detail))

    def drop(self, reason: AccountingReason, model: str, series: str = "") -> None:
        count, first_model, first_series = self._drops.get(reason, (0, model, series))
        self._drops[reason] = (count + 1, first_model, first_series)

    def done(self) -> tuple[AccountingEvent, ...]:
        grouped = [
            AccountingEvent(
                reason,
                self._source,
                model,
                series,
                count,
                f"{count} not tracked (limit reached), e.g. {model!r}; not counted",
            )
            for reason, (count, model, series) in sorted(self._drops.items())
        ]
        return (*self._events, *grouped)
