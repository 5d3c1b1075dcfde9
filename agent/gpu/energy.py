"""The agent-owned GPU energy meter: a monotonic joule counter fed one reading at a time.

Pure module: no I/O, no clock reads, no threads. The caller passes the monotonic time of each
reading, so the meter runs the same in virtual time (tests) and real time (the agent).

Each interval between two consecutive readings is counted exactly once:

* by the NVML energy counter when both readings carry it (Volta and newer): the delta;
* else by the trapezoid rule on power when both readings carry power: ``(P0 + P1) / 2 * dt``;
* else not at all (recorded in ``unmeasured_seconds``).

A counter that goes down by more than a tiny glitch tolerance was reset (driver reload, GPU
reset): NVML counts from 0 at the reload, so the new value itself is the energy since the
reload and is added in full. Nothing is doubled and the total never decreases. When NVML had
to be re-initialised (see :meth:`EnergyMeter.note_possible_reset`), a reload that left the
counter above its old value is recognised by comparing with the integrated power. The energy
spent between the last reading before a reload and the reload itself is not seen by the
counter and is not guessed.
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


@dataclass(frozen=True, slots=True)
class MeterStep:
    """How the meter counted the interval ending at one reading.

    Attributes:
        added_joules: Energy added for the interval, J (>= 0).
        source: ``counter``, ``integrated``, or None when the interval was not measured.
        reset: True when the NVML counter was found reset in this interval.
    """

    added_joules: float
    source: EnergySource | None
    reset: bool = False


class EnergyMeter:
    """Monotonic energy of one GPU from NVML counter deltas or integrated power.

    Args:
        glitch_tolerance_ratio: Largest counter decrease, as a fraction of the last counter
            value, read as a glitch (ignored) rather than a reset.

    Raises:
        ValueError: When ``glitch_tolerance_ratio`` is negative or not finite.
    """

    def __init__(self, glitch_tolerance_ratio: float = DEFAULT_GLITCH_TOLERANCE_RATIO) -> None:
        if not math.isfinite(glitch_tolerance_ratio) or glitch_tolerance_ratio < 0:
            raise ValueError(
                f"glitch_tolerance_ratio must be a finite number >= 0, got {glitch_tolerance_ratio}"
            )
        self._tolerance = glitch_tolerance_ratio
        self._total_joules = 0.0
        self._last_t: float | None = None
        # Highest counter value since the last reset: the baseline for the next delta.
        self._last_counter_joules: float | None = None
        self._last_power_watts: float | None = None
        self._resets = 0
        self._unmeasured_seconds = 0.0
        self._last_source: EnergySource | None = None
        self._maybe_reset = False

    @property
    def total_joules(self) -> float:
        """Energy counted since the first reading, J; never decreases."""
        return self._total_joules

    @property
    def resets(self) -> int:
        """How many NVML counter resets (driver reloads) were seen."""
        return self._resets

    @property
    def unmeasured_seconds(self) -> float:
        """Total length of intervals with neither counter nor power at both ends, s."""
        return self._unmeasured_seconds

    @property
    def last_source(self) -> EnergySource | None:
        """How the last interval was counted, or None before the second reading."""
        return self._last_source

    def note_possible_reset(self) -> None:
        """Say that the next counter interval may span a driver reload (NVML was re-initialised).

        A reload is normally seen as the counter going down. It is invisible when the new
        counter (energy since the reload) has already passed the old value, which happens
        when the driver had been loaded only shortly before. After this call, for the next
        counter interval that does not go down, the meter takes whichever of "delta" and
        "whole new value" is closer to the power integrated over the interval.
        """
        self._maybe_reset = True

    def update(
        self, t_seconds: float, energy_joules: float | None, power_watts: float | None
    ) -> float:
        """Feed one reading and return the new total.

        Args:
            t_seconds: Monotonic time of the reading, s; never earlier than the previous one.
            energy_joules: Raw NVML energy counter, J since driver load, or None when
                unsupported or unread.
            power_watts: Power draw, W, or None when unknown.

        Returns:
            The total energy counted so far, J.

        Raises:
            ValueError: When the time goes back, or a value is negative or not finite.
        """
        self.step(t_seconds, energy_joules, power_watts)
        return self._total_joules

    def step(
        self, t_seconds: float, energy_joules: float | None, power_watts: float | None
    ) -> MeterStep:
        """Feed one reading and say how its interval was counted.

        Args:
            t_seconds: Monotonic time of the reading, s.
            energy_joules: Raw NVML energy counter, J, or None.
            power_watts: Power draw, W, or None.

        Returns:
            The energy added and how it was measured.

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
                result = self._counter_step(energy_joules, estimate)
            elif power_watts is not None and self._last_power_watts is not None:
                added = 0.5 * (power_watts + self._last_power_watts) * dt
                result = MeterStep(added, "integrated")
            else:
                self._unmeasured_seconds += dt

        self._maybe_reset = False
        self._total_joules += result.added_joules
        self._last_t = t_seconds
        self._last_power_watts = power_watts
        if result.source is not None:
            self._last_source = result.source
        if energy_joules is None:
            # A gap in the counter: the next counter value is a new baseline, so the interval
            # covered by power here is never counted again by a counter delta.
            self._last_counter_joules = None
        elif result.source != "counter":
            self._last_counter_joules = energy_joules
        return result

    def _counter_step(self, energy_joules: float, estimate_joules: float | None) -> MeterStep:
        last = self._last_counter_joules
        assert last is not None
        maybe_reset, self._maybe_reset = self._maybe_reset, False
        if energy_joules >= last:
            self._last_counter_joules = energy_joules
            delta = energy_joules - last
            if (
                maybe_reset
                and estimate_joules is not None
                and abs(energy_joules - estimate_joules) < abs(delta - estimate_joules)
            ):
                self._resets += 1
                return MeterStep(energy_joules, "counter", reset=True)
            return MeterStep(delta, "counter")
        if last - energy_joules <= self._tolerance * last:
            # Glitch: keep the higher baseline so the next delta is not counted twice.
            return MeterStep(0.0, "counter")
        self._resets += 1
        self._last_counter_joules = energy_joules
        return MeterStep(energy_joules, "counter", reset=True)


def _check(name: str, value: float, *, allow_negative: bool = False) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if not allow_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
