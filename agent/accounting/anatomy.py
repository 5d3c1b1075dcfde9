"""Where a server's energy goes: input (prefill) against output (decode). Pure.

No I/O, no clock reads, no threads. The ledger hands :class:`PhaseAnatomy` each interval's
attributed energy and token deltas per server; it answers, per (server, model), what fraction of
the interval's energy the input tokens took, and by which estimator.

Two estimators, chosen per interval:

- **regression**: the server's energy per interval is modelled as
  ``E = a * computed_input_tokens + b * output_tokens + p0 * dt`` (J; ``a`` and ``b`` in J per
  token, ``p0`` in W) and fitted online by recursive least squares with exponential forgetting,
  from the natural variation of the workload mix. Cached prompt tokens are left out of the
  computed input: a cache hit costs no prefill. ``a``, ``b`` and ``p0`` are kept non-negative
  (a negative estimate is projected to 0). Each coefficient has a standard error from the
  fit's covariance and residual variance; the split is used only when both ``a`` and ``b`` are
  known to within :attr:`PhaseSettings.max_relative_error` (the workload mix varied enough to
  separate them). The interval's energy, idle part included, is then shared in proportion to
  ``a * computed_input`` and ``b * output``.
- **time**: where the engine exposes the time its requests spent in each phase (vLLM's
  ``request_prefill_time_seconds`` and ``request_decode_time_seconds``, llama.cpp's
  ``prompt_seconds_total`` and ``tokens_predicted_seconds_total``), the energy is shared in
  proportion to those times, as OpenCost shares GPU-hours between prefill and decode. Request
  times overlap when requests are batched, so this is a proxy: the regression is preferred
  whenever it has separated ``a`` and ``b``.

When neither applies (no phase times, a mix that never varied) the interval's energy is not
split: the ledger books it as ``unsplit``, so input + output + unsplit always equals the
attributed energy exactly.

Prompt-cache savings follow from the same coefficients: a cached prompt token would have cost
``a`` joules had it been computed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Method = Literal["regression", "time", "none"]
"""How an interval's energy was split between input and output: the estimator's name."""

# Token counts are scaled to thousands inside the fit so that the three regressors have
# comparable magnitudes (tokens per interval ~1e3-1e5, seconds ~5): RLS loses precision on
# badly scaled columns.
_TOKEN_SCALE = 1000.0


@dataclass(frozen=True, slots=True)
class PhaseSettings:
    """Knobs of the input/output split.

    Attributes:
        forgetting: RLS forgetting factor per interval, 0..1; 0.995 remembers ~200 intervals
            (about 17 minutes at a 5 s interval), long enough to see the mix vary, short
            enough to follow a new model or engine version.
        min_intervals: Intervals with tokens needed before the regression may be used.
        max_relative_error: Largest standard error of ``a`` and of ``b``, relative to the
            value, for the regression to be used (0.1 = known to within 10 %).
    """

    forgetting: float = 0.995
    min_intervals: int = 24
    max_relative_error: float = 0.1


@dataclass(frozen=True, slots=True)
class PhaseCoefficients:
    """The fitted energy model of one server.

    Attributes:
        joules_per_input_token: ``a``: energy of one computed (not cached) prompt token, J.
        joules_per_output_token: ``b``: energy of one generated token, J.
        idle_watts: ``p0``: power drawn with no token in flight, W.
        input_relative_error: Standard error of ``a`` over ``a`` (inf when ``a`` is 0).
        output_relative_error: Standard error of ``b`` over ``b`` (inf when ``b`` is 0).
        intervals: Effective number of intervals the fit rests on (forgetting applied).
    """

    joules_per_input_token: float
    joules_per_output_token: float
    idle_watts: float
    input_relative_error: float
    output_relative_error: float
    intervals: float


@dataclass(frozen=True, slots=True)
class PhaseDelta:
    """One model's tokens and phase times in one interval (all >= 0).

    Attributes:
        input_tokens: Prompt tokens, cache hits included.
        cached_input_tokens: Prompt tokens served from a cache.
        output_tokens: Generated tokens.
        prefill_seconds: Time requests spent in prefill, s; None when not exposed.
        decode_seconds: Time requests spent in decode, s; None when not exposed.
    """

    input_tokens: float = 0.0
    cached_input_tokens: float = 0.0
    output_tokens: float = 0.0
    prefill_seconds: float | None = None
    decode_seconds: float | None = None

    @property
    def computed_input_tokens(self) -> float:
        """Prompt tokens that were computed: input less cache hits, >= 0."""
        return max(0.0, self.input_tokens - self.cached_input_tokens)


@dataclass(frozen=True, slots=True)
class PhaseShare:
    """How one model's energy in one interval divides.

    Attributes:
        method: The estimator used.
        input_fraction: Fraction of the energy the input tokens took, 0..1; None when
            ``method`` is ``none`` (the energy stays unsplit).
        joules_per_input_token: The marginal energy of a computed prompt token, J, from the
            regression; None with the other estimators.
    """

    method: Method
    input_fraction: float | None
    joules_per_input_token: float | None = None

    def cache_savings_joules(self, energy_joules: float, delta: PhaseDelta) -> float:
        """Energy the interval's cache hits saved: cached tokens x J per computed prompt token.

        Args:
            energy_joules: The model's energy in the interval, J.
            delta: The model's tokens in the interval.

        Returns:
            Joules not spent thanks to the prompt cache; 0 when unknown or no hit.
        """
        cached = delta.cached_input_tokens
        if cached <= 0 or self.input_fraction is None:
            return 0.0
        if self.joules_per_input_token is not None:
            return cached * self.joules_per_input_token
        computed = delta.computed_input_tokens
        if computed <= 0:
            return 0.0
        # Time estimator: the interval's own energy per computed prompt token.
        return cached * energy_joules * self.input_fraction / computed


class PhaseRegression:
    """Exponentially weighted least squares for ``E = a*I + b*O + p0*dt``, non-negative.

    This is the estimate recursive least squares with a forgetting factor tracks, computed from
    its forgetting-weighted sufficient statistics (``X'WX``, ``X'Wy``, ``y'Wy``) and solved
    afresh each interval: three unknowns make that cheap, it never winds up (the classic RLS
    covariance blows up along directions the data stop exciting), and non-negativity is exact
    (the best of the feasible active sets), not a projection.

    Args:
        settings: Forgetting factor and the thresholds of :meth:`separated`.
    """

    def __init__(self, settings: PhaseSettings = PhaseSettings()) -> None:
        if not 0.0 < settings.forgetting <= 1.0:
            raise ValueError(f"forgetting must be in (0, 1], got {settings.forgetting}")
        self._settings = settings
        self._xx = [[0.0] * 3 for _ in range(3)]
        self._xy = [0.0] * 3
        self._yy = 0.0
        self._weight = 0.0  # effective number of intervals
        # Residuals of consecutive intervals are correlated (a workload mix lasts longer than
        # one interval): their lag-1 correlation widens the standard errors, Newey-West style.
        self._fit: tuple[float, float, float] | None = None
        self._solved: PhaseCoefficients | None = None  # the solve of the current statistics
        self._last_residual: float | None = None
        self._rr = 0.0
        self._rl = 0.0

    def update(
        self, dt_seconds: float, energy_joules: float, computed_input: float, output: float
    ) -> None:
        """Take one interval of one server.

        Args:
            dt_seconds: Interval length, s (> 0).
            energy_joules: Energy attributed to the server over the interval, J.
            computed_input: Prompt tokens computed in the interval (cache hits excluded).
            output: Tokens generated in the interval.
        """
        values = (dt_seconds, energy_joules, computed_input, output)
        if not all(math.isfinite(v) and v >= 0 for v in values) or dt_seconds <= 0:
            return
        lam = self._settings.forgetting
        x = (computed_input / _TOKEN_SCALE, output / _TOKEN_SCALE, dt_seconds)
        if self._fit is not None:
            residual = energy_joules - sum(t * v for t, v in zip(self._fit, x, strict=True))
            self._rr = lam * self._rr + residual * residual
            if self._last_residual is not None:
                self._rl = lam * self._rl + residual * self._last_residual
            self._last_residual = residual
        for i in range(3):
            self._xy[i] = lam * self._xy[i] + x[i] * energy_joules
            for j in range(3):
                self._xx[i][j] = lam * self._xx[i][j] + x[i] * x[j]
        self._yy = lam * self._yy + energy_joules * energy_joules
        self._weight = lam * self._weight + 1.0
        self._solved = None
        fit = self.coefficients()
        if fit is not None:
            self._fit = (
                fit.joules_per_input_token * _TOKEN_SCALE,
                fit.joules_per_output_token * _TOKEN_SCALE,
                fit.idle_watts,
            )

    def coefficients(self) -> PhaseCoefficients | None:
        """The current fit, or None before any interval (or when nothing can be solved).

        Returns:
            ``a``, ``b``, ``p0`` in J/token and W with their relative standard errors; a
            coefficient held at 0 by the non-negativity bound has an infinite one.
        """
        if self._solved is not None:
            return self._solved
        best: tuple[float, tuple[int, ...], list[float], list[float]] | None = None
        for active in _ACTIVE_SETS:
            solved = _solve(self._xx, self._xy, self._yy, active)
            if solved is None:
                continue
            sse, theta, diagonal = solved
            if best is None or sse < best[0]:
                best = (max(sse, 0.0), active, theta, diagonal)
        if best is None:
            return None
        sse, active, theta, diagonal = best
        variance = sse / max(self._weight - len(active), 1.0)
        rho = min(max(self._rl / self._rr, 0.0), 0.9) if self._rr > 0 else 0.0
        variance *= (1.0 + rho) / (1.0 - rho)
        full = [0.0, 0.0, 0.0]
        errors = [math.inf, math.inf, math.inf]
        for i, k in enumerate(active):
            full[k] = theta[i]
            if theta[i] > 0:
                errors[k] = math.sqrt(max(diagonal[i], 0.0) * variance) / theta[i]
        self._solved = PhaseCoefficients(
            joules_per_input_token=full[0] / _TOKEN_SCALE,
            joules_per_output_token=full[1] / _TOKEN_SCALE,
            idle_watts=full[2],
            input_relative_error=errors[0],
            output_relative_error=errors[1],
            intervals=self._weight,
        )
        return self._solved

    def separated(self) -> PhaseCoefficients | None:
        """The fit when it is trustworthy enough to split energy with, else None."""
        if self._weight < self._settings.min_intervals:
            return None
        fit = self.coefficients()
        if fit is None:
            return None
        worst = max(fit.input_relative_error, fit.output_relative_error)
        return fit if worst <= self._settings.max_relative_error else None


# Every non-empty subset of (a, b, p0), the full model first.
_ACTIVE_SETS: tuple[tuple[int, ...], ...] = ((0, 1, 2), (0, 1), (0, 2), (1, 2), (0,), (1,), (2,))


def _solve(
    xx: list[list[float]], xy: list[float], yy: float, active: tuple[int, ...]
) -> tuple[float, list[float], list[float]] | None:
    """Least squares on the ``active`` columns of the sufficient statistics, non-negative.

    The block of ``X'WX`` on ``active`` is inverted by Gauss-Jordan elimination with partial
    pivoting (the first row of largest magnitude), written out for one, two and three
    columns (8 servers solve 7 blocks every cycle); every sum is ``sum`` over the terms in
    the textbook order, so the result is that of the loop form to the last bit.

    Args:
        xx: ``X'WX``, 3 x 3.
        xy: ``X'Wy``.
        yy: ``y'Wy``.
        active: The columns solved for (1 to 3 of 0, 1, 2), in order.

    Returns:
        ``(sse, theta, diagonal of the block's inverse)``; None when the block is
        ill-conditioned (a pivot at most 1e-12 of the largest diagonal entry: the columns
        are nearly collinear) or a coefficient comes out negative.
    """
    n = len(active)
    if n == 1:
        (k,) = active
        m = xx[k][k]
        scale = abs(m)
        if scale <= 0 or scale <= 1e-12 * scale:
            return None
        inv = 1.0 / m
        t = sum((inv * xy[k],))
        if t < 0:
            return None
        return yy - 2 * sum((t * xy[k],)) + sum((t * m * t,)), [t], [inv]
    if n == 2:
        k0, k1 = active
        a, b, c, d = xx[k0][k0], xx[k0][k1], xx[k1][k0], xx[k1][k1]
        scale = max(abs(a), abs(d))
        if scale <= 0:
            return None
        # [[a, b | 1, 0], [c, d | 0, 1]]; row 0 is r, row 1 is q once the pivot is up.
        if abs(c) > abs(a):
            r0, r1, r2, r3, q0, q1, q2, q3 = c, d, 0.0, 1.0, a, b, 1.0, 0.0
        else:
            r0, r1, r2, r3, q0, q1, q2, q3 = a, b, 1.0, 0.0, c, d, 0.0, 1.0
        if abs(r0) <= 1e-12 * scale:
            return None
        r1, r2, r3 = r1 / r0, r2 / r0, r3 / r0
        if q0 != 0.0:
            q1, q2, q3 = q1 - q0 * r1, q2 - q0 * r2, q3 - q0 * r3
        if abs(q1) <= 1e-12 * scale:
            return None
        q2, q3 = q2 / q1, q3 / q1
        if r1 != 0.0:
            r2, r3 = r2 - r1 * q2, r3 - r1 * q3
        y0, y1 = xy[k0], xy[k1]
        t0 = sum((r2 * y0, r3 * y1))
        t1 = sum((q2 * y0, q3 * y1))
        if t0 < 0 or t1 < 0:
            return None
        sse = (
            yy
            - 2 * sum((t0 * y0, t1 * y1))
            + sum((t0 * a * t0, t0 * b * t1, t1 * c * t0, t1 * d * t1))
        )
        return sse, [t0, t1], [r2, q3]
    k0, k1, k2 = active
    (a00, a01, a02), (a10, a11, a12), (a20, a21, a22) = (
        (xx[i][k0], xx[i][k1], xx[i][k2]) for i in active
    )
    scale = max(abs(a00), abs(a11), abs(a22))
    if scale <= 0:
        return None
    # Rows r, q, s of [A | I]; the left columns a pivot has cleared are never read again.
    r = (a00, a01, a02, 1.0, 0.0, 0.0)
    q = (a10, a11, a12, 0.0, 1.0, 0.0)
    s = (a20, a21, a22, 0.0, 0.0, 1.0)
    pivot, largest = 0, abs(a00)
    if abs(a10) > largest:
        pivot, largest = 1, abs(a10)
    if abs(a20) > largest:
        pivot, largest = 2, abs(a20)
    if pivot == 1:
        r, q = q, r
    elif pivot == 2:
        r, s = s, r
    if largest <= 1e-12 * scale:
        return None
    p = r[0]
    r1, r2, r3, r4, r5 = r[1] / p, r[2] / p, r[3] / p, r[4] / p, r[5] / p
    f, q1, q2, q3, q4, q5 = q
    if f != 0.0:
        q1, q2, q3, q4, q5 = q1 - f * r1, q2 - f * r2, q3 - f * r3, q4 - f * r4, q5 - f * r5
    f, s1, s2, s3, s4, s5 = s
    if f != 0.0:
        s1, s2, s3, s4, s5 = s1 - f * r1, s2 - f * r2, s3 - f * r3, s4 - f * r4, s5 - f * r5
    if abs(s1) > abs(q1):
        q1, q2, q3, q4, q5, s1, s2, s3, s4, s5 = s1, s2, s3, s4, s5, q1, q2, q3, q4, q5
    if abs(q1) <= 1e-12 * scale:
        return None
    q2, q3, q4, q5 = q2 / q1, q3 / q1, q4 / q1, q5 / q1
    if r1 != 0.0:
        r2, r3, r4, r5 = r2 - r1 * q2, r3 - r1 * q3, r4 - r1 * q4, r5 - r1 * q5
    if s1 != 0.0:
        s2, s3, s4, s5 = s2 - s1 * q2, s3 - s1 * q3, s4 - s1 * q4, s5 - s1 * q5
    if abs(s2) <= 1e-12 * scale:
        return None
    s3, s4, s5 = s3 / s2, s4 / s2, s5 / s2
    if r2 != 0.0:
        r3, r4, r5 = r3 - r2 * s3, r4 - r2 * s4, r5 - r2 * s5
    if q2 != 0.0:
        q3, q4, q5 = q3 - q2 * s3, q4 - q2 * s4, q5 - q2 * s5
    y0, y1, y2 = xy[k0], xy[k1], xy[k2]
    t0 = sum((r3 * y0, r4 * y1, r5 * y2))
    t1 = sum((q3 * y0, q4 * y1, q5 * y2))
    t2 = sum((s3 * y0, s4 * y1, s5 * y2))
    if t0 < 0 or t1 < 0 or t2 < 0:
        return None
    sse = (
        yy
        - 2 * sum((t0 * y0, t1 * y1, t2 * y2))
        + sum(
            (
                t0 * a00 * t0,
                t0 * a01 * t1,
                t0 * a02 * t2,
                t1 * a10 * t0,
                t1 * a11 * t1,
                t1 * a12 * t2,
                t2 * a20 * t0,
                t2 * a21 * t1,
                t2 * a22 * t2,
            )
        )
    )
    return sse, [t0, t1, t2], [r3, q4, s5]


@dataclass(slots=True)
class _Server:
    regression: PhaseRegression
    # Forgetting-weighted sums of the mix: how an interval with no token shares its energy.
    computed: float = 0.0
    output: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


@dataclass(slots=True)
class PhaseAnatomy:
    """The input/output split for every server (see the module docstring).

    Attributes:
        settings: Estimator settings, shared by every server.
    """

    settings: PhaseSettings = field(default_factory=PhaseSettings)
    _servers: dict[str, _Server] = field(default_factory=dict)

    def observe(
        self,
        server: str,
        dt_seconds: float,
        energy_joules: float,
        deltas: Mapping[str, PhaseDelta],
    ) -> None:
        """Feed one interval of one server whose tokens are known.

        Args:
            server: Server name.
            dt_seconds: Interval length, s.
            energy_joules: Energy attributed to the server over the interval, J.
            deltas: The interval's tokens and phase times per model.
        """
        state = self._servers.get(server)
        if state is None:
            state = self._servers[server] = _Server(PhaseRegression(self.settings))
        computed = math.fsum(d.computed_input_tokens for d in deltas.values())
        output = math.fsum(d.output_tokens for d in deltas.values())
        state.regression.update(dt_seconds, energy_joules, computed, output)
        lam = self.settings.forgetting
        state.computed = lam * state.computed + computed
        state.output = lam * state.output + output
        state.prefill_seconds = lam * state.prefill_seconds + math.fsum(
            d.prefill_seconds or 0.0 for d in deltas.values()
        )
        state.decode_seconds = lam * state.decode_seconds + math.fsum(
            d.decode_seconds or 0.0 for d in deltas.values()
        )

    def coefficients(self, server: str) -> PhaseCoefficients | None:
        """The server's regression fit (trusted or not), or None before any interval."""
        state = self._servers.get(server)
        return None if state is None else state.regression.coefficients()

    def trusted(self, server: str) -> PhaseCoefficients | None:
        """The server's regression fit when it separates input from output, else None."""
        state = self._servers.get(server)
        return None if state is None else state.regression.separated()

    def share(self, server: str, delta: PhaseDelta) -> PhaseShare:
        """How one model's interval energy divides between input and output.

        Args:
            server: Server name.
            delta: The model's tokens and phase times in the interval.

        Returns:
            The estimator and the input fraction (None when the energy stays unsplit). An
            interval with no token takes the server's recent mix: its idle energy is shared
            as the tokens it waits for share the busy energy.
        """
        state = self._servers.get(server)
        if state is None:
            return PhaseShare("none", None)
        fit = state.regression.separated()
        if fit is not None:
            a, b = fit.joules_per_input_token, fit.joules_per_output_token
            fraction = _fraction(a * delta.computed_input_tokens, b * delta.output_tokens)
            if fraction is None:
                fraction = _fraction(a * state.computed, b * state.output)
            if fraction is not None:
                return PhaseShare("regression", fraction, a)
        fraction = None
        if delta.prefill_seconds is not None and delta.decode_seconds is not None:
            fraction = _fraction(delta.prefill_seconds, delta.decode_seconds)
        if fraction is None:
            fraction = _fraction(state.prefill_seconds, state.decode_seconds)
        if fraction is not None:
            return PhaseShare("time", fraction)
        return PhaseShare("none", None)


def _fraction(part: float, other: float) -> float | None:
    """``part / (part + other)`` for non-negative finite weights; None when both are 0."""
    total = part + other
    if not math.isfinite(total) or total <= 0:
        return None
    return min(1.0, max(0.0, part / total))
