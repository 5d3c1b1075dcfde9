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
        best: tuple[float, tuple[int, ...], list[float], list[list[float]]] | None = None
        for active in _ACTIVE_SETS:
            xx = [[self._xx[i][j] for j in active] for i in active]
            inverse = _inverse(xx)
            if inverse is None:
                continue
            theta = [
                sum(inverse[i][j] * self._xy[active[j]] for j in range(len(active)))
                for i in range(len(active))
            ]
            if any(t < 0 for t in theta):
                continue
            sse = (
                self._yy
                - 2 * sum(t * self._xy[k] for t, k in zip(theta, active, strict=True))
                + sum(
                    theta[i] * xx[i][j] * theta[j]
                    for i in range(len(active))
                    for j in range(len(active))
                )
            )
            if best is None or sse < best[0]:
                best = (max(sse, 0.0), active, theta, inverse)
        if best is None:
            return None
        sse, active, theta, inverse = best
        variance = sse / max(self._weight - len(active), 1.0)
        rho = min(max(self._rl / self._rr, 0.0), 0.9) if self._rr > 0 else 0.0
        variance *= (1.0 + rho) / (1.0 - rho)
        full = [0.0, 0.0, 0.0]
        errors = [math.inf, math.inf, math.inf]
        for i, k in enumerate(active):
            full[k] = theta[i]
            if theta[i] > 0:
                errors[k] = math.sqrt(max(inverse[i][i], 0.0) * variance) / theta[i]
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


def _inverse(m: list[list[float]]) -> list[list[float]] | None:
    """Inverse of a small symmetric positive semi-definite matrix; None when ill-conditioned."""
    n = len(m)
    scale = max((abs(m[i][i]) for i in range(n)), default=0.0)
    if scale <= 0:
        return None
    a = [row[:] + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(m)]
    for col in range(n):
        # The first row of largest magnitude (as max() picks it), without a call per row.
        pivot, largest = col, abs(a[col][col])
        for r in range(col + 1, n):
            if abs(a[r][col]) > largest:
                pivot, largest = r, abs(a[r][col])
        # A pivot this small against the diagonal means the columns are (nearly) collinear.
        if abs(a[pivot][col]) <= 1e-12 * scale:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        p = a[col][col]
        a[col] = [v / p for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0.0:
                f = a[r][col]
                a[r] = [v - f * w for v, w in zip(a[r], a[col], strict=True)]
    return [row[n:] for row in a]


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
