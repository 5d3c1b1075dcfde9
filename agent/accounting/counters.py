"""Token counter deltas across server restarts. Pure: no I/O, no clock, no threads.

A server's token counters are its own cumulative values; they fall back to zero when the
server restarts. :class:`TokenCounters` turns successive readings into non-negative deltas so
that the agent's own counters never decrease, never lose tokens and never count one twice.

Policy (the rules the ledger relies on):

- **First sight is a baseline.** The first successful reading of a server holds history from
  before the agent watched it; those counts are recorded as the base and *not* counted. Models
  that first appear on a server already seen are new while the agent watches, so they count
  from zero.
- **Restart.** A server restarted when ``ServerReading.start_time_seconds`` changed, or when
  any counter of a model present in both this and the previous successful reading went down.
  Every counter of the server is then rebased to zero: the new raw value is the tokens since
  the restart and is counted in full; models absent at the restart are rebased to zero too, so
  their counts are taken in full when they reappear.
- **One counter lower than its base** without a detected restart (a model unloaded and
  reloaded while absent, a counter series recreated) is taken as a reset of that counter only
  (Prometheus ``rate()`` semantics): its raw value is counted.
- **Down or missing.** A server that is down (``up`` False or no reading) contributes nothing
  and keeps its bases; on its return the growth since its last reading is counted once. A
  restart that happened while it was down is found by the rules above; one that neither changed
  ``start_time_seconds`` nor left any counter lower than before cannot be seen, and the tokens
  before it are then under-counted (never over-counted), as with Prometheus ``increase()``.
- **A model that disappears** keeps its bases, so when it reappears only its growth counts.
- **Not a number.** A raw value that is None, negative, NaN or infinite is "not known": it
  counts nothing and leaves the base as it was.

A server-wide restart rule (rather than per counter) is used because a restart resets every
counter at once: a counter that grew past its old value since the restart would otherwise be
under-counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.readings import ServerStatus, TokenReading

COUNTER_KINDS: tuple[str, ...] = ("input", "output", "cached")
"""The token counters tracked per model: prompt, generated and cached prompt tokens."""

START_TIME_TOLERANCE_SECONDS = 1e-3
"""A start time that moves by less than this is the same process (float formatting), s."""


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """Tokens counted for one model in one interval; every field is >= 0.

    Attributes:
        input_tokens: Prompt tokens.
        output_tokens: Generated tokens.
        cached_input_tokens: Prompt tokens served from cache.
    """

    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cached_input_tokens: float = 0.0


@dataclass(frozen=True, slots=True)
class ServerObservation:
    """What one interval says about one server's tokens.

    Attributes:
        observed: True when the server was up with a reading in this interval.
        first_sight: True when this reading was the server's baseline (tokens not known).
        restarted: True when a restart was detected in this reading.
        deltas: Tokens per model present in this reading (first sight: all zero).
        models: The models the server's energy goes to: those in this reading, or, when it is
            down or reports none, the last non-empty set seen; empty when never seen.
    """

    observed: bool
    first_sight: bool
    restarted: bool
    deltas: dict[str, TokenDelta]
    models: tuple[str, ...]

    @property
    def tokens_known(self) -> bool:
        """True when the interval's token counts are known (up and not the baseline)."""
        return self.observed and not self.first_sight

    def total_tokens(self) -> float:
        """Input plus output tokens of every model in the interval."""
        return sum(d.input_tokens + d.output_tokens for d in self.deltas.values())


@dataclass(slots=True)
class _ServerState:
    start_time_seconds: float | None = None
    bases: dict[str, dict[str, float]] = field(default_factory=dict)
    last_present: frozenset[str] = frozenset()
    models: tuple[str, ...] = ()


def _raw(reading: TokenReading, kind: str) -> float | None:
    value = {
        "input": reading.input_tokens,
        "output": reading.output_tokens,
        "cached": reading.cached_input_tokens,
    }[kind]
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return float(value)


class TokenCounters:
    """Restart-aware token deltas for every server (see the module docstring for the policy)."""

    def __init__(self) -> None:
        self._servers: dict[str, _ServerState] = {}

    def seen(self, server: str) -> bool:
        """True once the server has had one successful reading.

        Args:
            server: Server name.

        Returns:
            Whether a baseline exists for the server.
        """
        return server in self._servers

    def known_models(self, server: str) -> tuple[str, ...]:
        """Every model ever seen on a server, sorted.

        Args:
            server: Server name.

        Returns:
            The model names; empty when the server was never seen.
        """
        state = self._servers.get(server)
        return tuple(sorted(state.bases)) if state else ()

    def observe(self, name: str, status: ServerStatus | None) -> ServerObservation:
        """Take one interval's status of a server and return its token deltas.

        Args:
            name: Server name.
            status: The server's status this interval; None when it was not reported.

        Returns:
            The interval's deltas and the models its energy goes to.
        """
        state = self._servers.get(name)
        if status is None or not status.up or status.reading is None:
            models = state.models if state else ()
            return ServerObservation(False, False, False, {}, models)

        reading = status.reading
        # Last reading wins where a model is listed twice (the profile should never do that).
        present = {m.model: m for m in reading.models}
        if state is None:
            state = _ServerState(start_time_seconds=reading.start_time_seconds)
            for model, token_reading in present.items():
                state.bases[model] = _bases_of(token_reading, {})
            state.last_present = frozenset(present)
            state.models = tuple(sorted(present))
            self._servers[name] = state
            return ServerObservation(
                True, True, False, {m: TokenDelta() for m in present}, state.models
            )

        restarted = self._restarted(state, reading.start_time_seconds, present)
        if restarted:
            for bases in state.bases.values():
                for kind in bases:
                    bases[kind] = 0.0
        if reading.start_time_seconds is not None:
            state.start_time_seconds = reading.start_time_seconds

        deltas: dict[str, TokenDelta] = {}
        for model, token_reading in present.items():
            bases = state.bases.setdefault(model, {})
            counted: dict[str, float] = {}
            for kind in COUNTER_KINDS:
                raw = _raw(token_reading, kind)
                if raw is None:
                    counted[kind] = 0.0
                    continue
                base = bases.get(kind, 0.0)
                counted[kind] = raw - base if raw >= base else raw
                bases[kind] = raw
            deltas[model] = TokenDelta(counted["input"], counted["output"], counted["cached"])
        state.last_present = frozenset(present)
        if present:
            state.models = tuple(sorted(present))
        return ServerObservation(True, False, restarted, deltas, state.models)

    @staticmethod
    def _restarted(
        state: _ServerState, start_time: float | None, present: dict[str, TokenReading]
    ) -> bool:
        if (
            start_time is not None
            and state.start_time_seconds is not None
            and abs(start_time - state.start_time_seconds) > START_TIME_TOLERANCE_SECONDS
        ):
            return True
        for model in state.last_present & present.keys():
            bases = state.bases.get(model, {})
            for kind in COUNTER_KINDS:
                raw = _raw(present[model], kind)
                if raw is not None and kind in bases and raw < bases[kind]:
                    return True
        return False


def _bases_of(reading: TokenReading, into: dict[str, float]) -> dict[str, float]:
    for kind in COUNTER_KINDS:
        raw = _raw(reading, kind)
        if raw is not None:
            into[kind] = raw
    return into
