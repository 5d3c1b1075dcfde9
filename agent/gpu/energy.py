"""The GPU energy meter: how much energy one GPU used in each interval between two readings.

Pure module: no I/O, no clock reads, no threads. The caller passes the monotonic time of each
reading, so the meter runs the same in virtual time (tests) and real time (the agent).

The meter hands out per-interval joules and keeps no total: the ledger is the only place that
accumulates energy (``tokenergy_gpu_energy_joules_total`` is the ledger's per-GPU sum). Each
interval between two consecutive readings is counted exactly once:

* by the NVML energy counter when both readings carry it (Volta and newer): the delta;
* else by the trapezoid rule on power when both readings carry power: ``(P0 + P1) / 2 * dt``;
* else not at all.

A counter that goes down by more than a tiny glitch tolerance was reset (driver reload, GPU
reset): NVML counts from 0 at the reload, so the new value itself is the energy since the
reload and is counted in full. When NVML had to be re-initialised (see
:meth:`EnergyMeter.note_possible_reset`), a reload that left the counter above its old value is
recognised by comparing with the integrated power. The energy spent between the last reading
before a reload and the reload itself is not seen by the counter and is not guessed.

Glitch guard: a counter increase (or a reset value) larger than ``max_power_ratio`` times the
power limit over the interval (at least 1 s) is physically impossible; it is not counted and
the step says ``implausible``. The baseline stays on the last good value, so a lone absurd
sample changes nothing; a counter that keeps counting from the new level (plausibly) is
rebased there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agent.readings import EnergySource

DEFAULT_GLITCH_TOLERANCE_RATIO = 1e-4
"""A decrease no larger than this fraction of the last counter value is a glitch, not a reset.

Treating a glitch (e.g. 200 J then 199.99 J) as a reset would add the whole counter value,
a huge overcount (IBM/CAST#399 saw 9.22e18 energy values that way); a real reload drops the
counter to about the energy since the reload, far below this band.
"""


DEFAULT_MAX_POWER_RATIO = 2.0
"""A counter increase above this many times the power limit over its interval is a glitch."""

FALLBACK_POWER_LIMIT_WATTS = 2000.0
"""Power limit assumed for the glitch guard when NVML reports none, W (above any GPU's)."""

MIN_GUARD_INTERVAL_SECONDS = 1.0
"""Shortest interval the glitch ceiling is computed over, s (the counter updates in steps)."""


@dataclass(frozen=True, slots=True)
class MeterStep:
    """How the meter counted the interval ending at one reading.

    Attributes:
        added_joules: Energy used in the interval, J (>= 0).
        source: ``counter``, ``integrated``, or None when the interval was not measured.
        reset: True when the NVML counter was found reset in this interval.
        implausible: True when the counter moved by more than the power limit allows; the
            interval then counts nothing.
    """

    added_joules: float
    source: EnergySource | None
    reset: bool = False
    implausible: bool = False


class EnergyMeter:
    """Per-interval energy of one GPU from NVML counter deltas or integrated power.

    Args:
        glitch_tolerance_ratio: Largest counter decrease, as a fraction of the last counter
            value, read as a glitch (ignored) rather than a reset.
        max_power_ratio: A counter increase above this many times the power limit over the
            interval is not counted (``MeterStep.implausible``).

    Raises:
        ValueError: When a ratio is not finite, ``glitch_tolerance_ratio`` is negative or
            ``max_power_ratio`` is below 1.
    """

    def __init__(
        self,
        glitch_tolerance_ratio: float = DEFAULT_GLITCH_TOLERANCE_RATIO,
        max_power_ratio: float = DEFAULT_MAX_POWER_RATIO,
    ) -> None:
        if not math.isfinite(glitch_tolerance_ratio) or glitch_tolerance_ratio < 0:
            raise ValueError(
                f"glitch_tolerance_ratio must be a finite number >= 0, got {glitch_tolerance_ratio}"
            )
        if not math.isfinite(max_power_ratio) or max_power_ratio < 1:
            raise ValueError(f"max_power_ratio must be a finite number >= 1, got {max_power_ratio}")
        self._tolerance = glitch_tolerance_ratio
        self._max_power_ratio = max_power_ratio
        self._last_t: float | None = None
        # Highest counter value since the last reset: the baseline for the next delta.
        self._last_counter_joules: float | None = None
        # Time of that baseline, s, and a value refused by the glitch guard since.
        self._counter_t = 0.0
        self._refused_joules: float | None = None
        self._last_power_watts: float | None = None
        self._previous_good: float | None = None
        self._maybe_reset = False

    def note_possible_reset(self) -> None:
        """Say that the next counter interval may span a driver reload (NVML was re-initialised).

        A reload is normally seen as the counter going down. It is invisible when the new
        counter (energy since the reload) has already passed the old value, which happens
        when the driver had been loaded only shortly before. After this call, for the next
        counter interval that does not go down, the meter takes whichever of "delta" and
        "whole new value" is closer to the power integrated over the interval.
        """
        self._maybe_reset = True

    def step(
        self,
        t_seconds: float,
        energy_joules: float | None,
        power_watts: float | None,
        power_limit_watts: float | None = None,
    ) -> MeterStep:
        """Feed one reading and return the energy of the interval it ends.

        Args:
            t_seconds: Monotonic time of the reading, s; never earlier than the previous one.
            energy_joules: Raw NVML energy counter, J since driver load, or None when
                unsupported or unread.
            power_watts: Power draw, W, or None when unknown.
            power_limit_watts: Enforced power limit, W, for the glitch guard; None = unknown
                (:data:`FALLBACK_POWER_LIMIT_WATTS` is used).

        Returns:
            The energy used in the interval since the previous reading and how it was
            measured (zero for the first reading).

        Raises:
            ValueError: When the time goes back, or a value is negative or not finite.
        """
        _check("t_seconds", t_seconds, allow_negative=True)
        if energy_joules is not None:
            _check("energy_joules", energy_joules)
        if power_watts is not None:
            _check("power_watts", power_watts)
        if self._last_t is not None and t_seconds < self._last_t:
            raise ValueError(
                f"reading time went back: {t_seconds} s after {self._last_t} s "
                "(feed readings in time order from a monotonic clock)"
            )

        result = MeterStep(0.0, None)
        if self._last_t is not None:
            dt = t_seconds - self._last_t
            if energy_joules is not None and self._last_counter_joules is not None:
                estimate = None
                if power_watts is not None and self._last_power_watts is not None:
                    estimate = 0.5 * (power_watts + self._last_power_watts) * dt
                limit = power_limit_watts or FALLBACK_POWER_LIMIT_WATTS
                since = max(t_seconds - self._counter_t, MIN_GUARD_INTERVAL_SECONDS)
                ceiling = self._max_power_ratio * limit * since
                result = self._guarded(self._counter_step(energy_joules, estimate), ceiling)
                if not result.implausible:
                    self._counter_t = t_seconds
            elif power_watts is not None and self._last_power_watts is not None:
                added = 0.5 * (power_watts + self._last_power_watts) * dt
                result = MeterStep(added, "integrated")

        self._maybe_reset = False
        self._last_t = t_seconds
        self._last_power_watts = power_watts
        if energy_joules is None:
            # A gap in the counter: the next counter value is a new baseline, so the interval
            # covered by power here is never counted again by a counter delta.
            self._last_counter_joules = None
            self._refused_joules = None
        elif result.source != "counter":
            self._last_counter_joules = energy_joules
            self._counter_t = t_seconds
            self._refused_joules = None
        return result

    def _guarded(self, step: MeterStep, ceiling_joules: float) -> MeterStep:
        """Refuse a counter step above the ceiling, keeping the last good baseline."""
        if step.added_joules <= ceiling_joules:
            self._refused_joules = None
            return step
        value, self._last_counter_joules = self._last_counter_joules, self._previous_good
        refused, self._refused_joules = self._refused_joules, value
        if (
            refused is not None
            and value is not None
            and refused < value
            and value - refused <= ceiling_joules
        ):
            # The counter kept counting from the level it jumped to: rebase there.
            self._last_counter_joules, self._refused_joules = value, None
            return MeterStep(value - refused, "counter")
        return MeterStep(0.0, "counter", implausible=True)

    def _counter_step(self, energy_joules: float, estimate_joules: float | None) -> MeterStep:
        last = self._last_counter_joules
        assert last is not None
        self._previous_good = last
        maybe_reset, self._maybe_reset = self._maybe_reset, False
        if energy_joules >= last:
            self._last_counter_joules = energy_joules
            delta = energy_joules - last
            if (
                maybe_reset
                and estimate_joules is not None
                and abs(energy_joules - estimate_joules) < abs(delta - estimate_joules)
            ):
                return MeterStep(energy_joules, "counter", reset=True)
            return MeterStep(delta, "counter")
        if last - energy_joules <= self._tolerance * last:
            # Glitch: keep the higher baseline so the next delta is not counted twice.
            return MeterStep(0.0, "counter")
        self._last_counter_joules = energy_joules
        return MeterStep(energy_joules, "counter", reset=True)


def _check(name: str, value: float, *, allow_negative: bool = False) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if not allow_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
