"""The ledger: every joule to a server (or ``unattributed``), every token priced. Pure.

No I/O, no clock reads, no threads. :meth:`Ledger.advance` takes the readings at monotonic
time ``t`` and returns new cumulative counters and windowed ratios as ``LedgerTotals``.

Rules (agent/README.md tells them to people):

- **Tokens.** Per (server, model): input, output and cached input tokens, monotonic across
  server restarts; policy in :mod:`agent.accounting.counters` (per-series resets, first sight
  is a baseline, a down server contributes nothing, implausible increases are not counted).
- **Bounded cardinality.** A model the counters stop tracking (absent for
  ``model_expiry_seconds``) leaves the output: its totals (tokens, energy, idle energy, cost,
  carbon) are added to the server's ``_other`` model in the same advance, so every per-server
  sum (what ``sum by (server)`` sees) is unchanged by the move and conservation still holds
  exactly. Models over the per-server cap are not tracked at all: their tokens are not counted
  and the server's energy goes to the models it tracks.
- **Finite by construction.** Token deltas are bounded by the glitch ceiling times the
  interval, GPU deltas are finite; an addition whose result would not be finite is refused
  and reported, so no total can ever become Inf or NaN.
- **GPU energy.** ``GpuStatus.energy_joules_added``: the joules the GPU's meter measured
  since the previous cycle (counter resets and glitches already absorbed there). The ledger
  is the only place that accumulates energy: per GPU (``gpu_energy_joules_total``, monotonic
  across driver reloads) and per account. A value that is not finite or is negative (which
  the meter never hands out) counts nothing.
- **Attribution.** Each GPU's delta goes to the servers whose assignment lists its UUID,
  split by per-process utilization where known, else evenly (:func:`shares.gpu_split`); with
  no server it goes to ``unattributed``. A server's part is split among its models by input
  plus output tokens in the interval, evenly when none (:func:`shares.model_split`).
- **Down servers.** A server that is down still holds its GPUs: its part goes evenly to its
  last known models. A server never seen (no successful reading yet), or one that never
  reported a model, has no (server, model) series to book to: its part goes to
  ``unattributed`` until it is seen. Its share is then not listed in ``shares``.
- **Idle energy.** Energy booked to a server in an interval whose reading is known (up, not
  the baseline) and shows no input and no output tokens is also counted as idle energy.
  Intervals in which the server is down are not called idle: their tokens are not known yet.
- **Conservation.** Every piece is the GPU delta times fractions that are >= 0 and sum to 1,
  so attributed + unattributed equals the sum of GPU deltas to float rounding (~1e-15
  relative), and no counter ever takes a negative piece.
- **Cost.** Energy cost, hardware cost and carbon per :mod:`agent.accounting.cost`.
  GPU-hours accrue over the wall interval between advances for every GPU listed at both
  ends, up or down (a down GPU is still paid for), and follow the same split as energy;
  GPUs that serve no server book their cost as unattributed cost, so all cost adds up to the
  cost of every GPU.
- **Ratios.** Windowed over ``window_seconds`` from the ledger's own deltas
  (:mod:`agent.accounting.window`); None when undefined, never NaN or Inf.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.accounting.anatomy import PhaseAnatomy, PhaseDelta, PhaseSettings
from agent.accounting.cost import CostModel
from agent.accounting.counters import (
    OTHER_MODEL,
    CounterLimits,
    ServerObservation,
    TokenCounters,
)
from agent.accounting.shares import even_split, gpu_split, model_split
from agent.accounting.window import (
    DEFAULT_MAX_INTERVALS,
    IntervalDelta,
    Key,
    RatioWindow,
    WindowRatios,
)
from agent.config import PricingSettings
from agent.readings import (
    AccountingEvent,
    GpuShare,
    GpuStatus,
    LedgerTotals,
    ModelTotals,
    PhaseFit,
    ServerStatus,
)


@dataclass(slots=True)
class _Account:
    """Mutable running totals of one (server, model) or of ``unattributed``."""

    input_tokens: float = 0.0
    output_tokens: float = 0.0
    cached_input_tokens: float = 0.0
    energy_joules: float = 0.0
    idle_energy_joules: float = 0.0
    energy_cost: float = 0.0
    hardware_cost: float = 0.0
    carbon_grams: float = 0.0
    # Where the energy and cost went: input (prefill), output (decode), or not split yet.
    input_energy: float = 0.0
    output_energy: float = 0.0
    unsplit_energy: float = 0.0
    input_cost: float = 0.0
    output_cost: float = 0.0
    unsplit_cost: float = 0.0
    cache_saved_energy: float = 0.0
    cache_saved_cost: float = 0.0
    kv_saturated_seconds: float = 0.0
    phase_method: str | None = None

    def absorb(self, other: _Account) -> None:
        """Add every total of ``other`` (a retired model folding into ``_other``)."""
        for name in _TOTALS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_TOTALS = tuple(f.name for f in dataclasses.fields(_Account) if f.type in ("float", float))


@dataclass(slots=True)
class _ServerPart:
    """One server's part of all GPUs in one interval."""

    energy_joules: float = 0.0
    hardware_cost: float = 0.0
    gpu_seconds: float = 0.0


class Ledger:
    """Cumulative, restart-proof accounting of tokens, energy and cost.

    Args:
        pricing: Cost settings (price per kWh, PUE, hourly rates, carbon intensity).
        window_seconds: Window of the ratio gauges, s (> 0).
        max_intervals: Most intervals the ratio window keeps (memory bound).
        limits: Glitch ceilings, restart tolerance and cardinality bounds of the counters.
        phase: Settings of the input/output energy split (:mod:`agent.accounting.anatomy`).
        kv_saturated_ratio: KV-cache usage, 0..1, at or above which a server with waiting
            requests is saturated.

    Raises:
        ValueError: When ``window_seconds`` is not a finite number > 0.
    """

    def __init__(
        self,
        pricing: PricingSettings,
        window_seconds: float,
        *,
        max_intervals: int = DEFAULT_MAX_INTERVALS,
        limits: CounterLimits | None = None,
        phase: PhaseSettings | None = None,
        kv_saturated_ratio: float = 0.9,
    ) -> None:
        self._cost = CostModel(pricing)
        self._anatomy = PhaseAnatomy(phase or PhaseSettings())
        self._kv_saturated_ratio = kv_saturated_ratio
        self._window = RatioWindow(window_seconds, max_intervals)
        self._tokens = TokenCounters(limits)
        self._gpu_energy: dict[str, float] = {}
        self._gpu_energy_all = 0.0
        self._gpus_listed: frozenset[str] = frozenset()
        self._accounts: dict[Key, _Account] = {}
        self._unattributed = _Account()
        self._events: list[AccountingEvent] = []
        self._last_t: float | None = None

    def advance(
        self,
        t: float,
        gpus: Sequence[GpuStatus],
        servers: Sequence[ServerStatus],
        assignment: Mapping[str, Sequence[str]],
        process_owners: Mapping[int, str] | None = None,
    ) -> LedgerTotals:
        """Account the interval that ends at ``t``.

        Args:
            t: Monotonic time of the readings, s; never lower than the previous call's.
            gpus: Status of every GPU the agent knows.
            servers: Status of every configured server.
            assignment: Server name -> UUIDs of the GPUs it uses.
            process_owners: Host PID -> server name, for per-process utilization shares.

        Returns:
            Cumulative counters, windowed ratios and the GPU shares in force.

        Raises:
            ValueError: When ``t`` is not finite or goes back, or a GPU UUID or a server
                name is listed twice.
        """
        if not math.isfinite(t):
            raise ValueError(f"advance: t must be a finite monotonic time, got {t}")
        if self._last_t is not None and t < self._last_t:
            raise ValueError(
                f"advance: t went back from {self._last_t} s to {t} s; it must be monotonic"
            )
        _check_unique("GPU uuid", (g.device.uuid for g in gpus))
        _check_unique("server name", (s.name for s in servers))
        dt = 0.0 if self._last_t is None else t - self._last_t
        self._last_t = t
        self._events = []
        keys_before = frozenset(self._accounts)
        interval: dict[Key, IntervalDelta] = {}

        observations = self._observe_servers(t, servers, assignment, interval)
        self._count_kv_saturation(dt, servers)
        parts = self._split_gpus(dt, gpus, assignment, process_owners, observations)
        self._book_parts(dt, parts, observations, interval)

        for key in keys_before:
            if key in self._accounts:  # not a model retired in this advance
                interval.setdefault(key, _NO_DELTA)
        self._window.add(t, dt, interval)
        return self._totals(parts)

    # -- tokens -------------------------------------------------------------------------

    def _observe_servers(
        self,
        t: float,
        servers: Sequence[ServerStatus],
        assignment: Mapping[str, Sequence[str]],
        interval: dict[Key, IntervalDelta],
    ) -> dict[str, ServerObservation]:
        by_name = {s.name: s for s in servers}
        observations: dict[str, ServerObservation] = {}
        accounts = self._accounts
        for name in sorted(by_name.keys() | assignment.keys()):
            gpus = len(set(assignment.get(name, ())))
            obs = self._tokens.observe(name, by_name.get(name), t, gpus)
            observations[name] = obs
            self._events.extend(obs.events)
            for model in obs.retired:
                retired = self._accounts.pop((name, model), None)
                if retired is not None:
                    self._accounts.setdefault((name, OTHER_MODEL), _Account()).absorb(retired)
            # An account is made once (not a spare one per model per cycle for setdefault).
            for model in obs.models:
                if (name, model) not in accounts:
                    accounts[(name, model)] = _Account()
            for model, delta in obs.deltas.items():
                account = accounts.get((name, model))
                if account is None:
                    account = accounts[(name, model)] = _Account()
                if not _all_finite(
                    account.input_tokens + delta.input_tokens,
                    account.output_tokens + delta.output_tokens,
                    account.cached_input_tokens + delta.cached_input_tokens,
                ):
                    self._events.append(
                        AccountingEvent(
                            "implausible", name, model, detail="a token total would overflow"
                        )
                    )
                    continue
                account.input_tokens += delta.input_tokens
                account.output_tokens += delta.output_tokens
                account.cached_input_tokens += delta.cached_input_tokens
                if delta.input_tokens or delta.output_tokens:
                    interval[(name, model)] = IntervalDelta(
                        input_tokens=delta.input_tokens, output_tokens=delta.output_tokens
                    )
        return observations

    def _count_kv_saturation(self, dt: float, servers: Sequence[ServerStatus]) -> None:
        # Read at the end of the interval: a server saturated then counts the whole interval
        # (a sampled state, like any gauge scraped every interval).
        for status in servers:
            if not status.up or status.reading is None or dt <= 0:
                continue
            for reading in status.reading.models:
                account = self._accounts.get((status.name, reading.model))
                usage, waiting = reading.kv_cache_usage_ratio, reading.requests_waiting
                if account is None or usage is None or waiting is None:
                    continue
                if usage >= self._kv_saturated_ratio and waiting > 0:
                    account.kv_saturated_seconds += dt

    # -- energy and GPU time ------------------------------------------------------------

    @staticmethod
    def _gpu_energy_delta(gpu: GpuStatus) -> float:
        joules = gpu.energy_joules_added
        # The meter never hands out a bad value; a bug upstream must still not book one.
        if not math.isfinite(joules) or joules < 0:
            return 0.0
        return joules

    def _split_gpus(
        self,
        dt: float,
        gpus: Sequence[GpuStatus],
        assignment: Mapping[str, Sequence[str]],
        process_owners: Mapping[int, str] | None,
        observations: Mapping[str, ServerObservation],
    ) -> dict[str, tuple[_ServerPart, list[GpuShare]]]:
        users: dict[str, list[str]] = {}
        for server in sorted(assignment):
            for uuid in dict.fromkeys(assignment[server]):
                users.setdefault(uuid, []).append(server)

        parts: dict[str, tuple[_ServerPart, list[GpuShare]]] = {}
        listed_before = self._gpus_listed
        for gpu in sorted(gpus, key=lambda g: (g.device.index, g.device.uuid)):
            uuid = gpu.device.uuid
            joules = self._gpu_energy_delta(gpu)
            total = self._gpu_energy.get(uuid, 0.0)
            # Every account holds a part of the grand total: keeping it finite keeps them all.
            if not math.isfinite(self._gpu_energy_all + joules):
                self._events.append(
                    AccountingEvent("implausible", uuid, detail="GPU energy total would overflow")
                )
                joules = 0.0
            self._gpu_energy[uuid] = total + joules
            self._gpu_energy_all += joules
            gpu_seconds = dt if uuid in listed_before else 0.0
            hardware = self._cost.hardware_cost(gpu_seconds, gpu.device.name)
            split = gpu_split(users.get(uuid, []), gpu.reading, gpu.up, process_owners)
            if not split:
                self._book_unattributed(joules, hardware)
                continue
            for server, fraction in split.items():
                obs = observations.get(server)
                if obs is None or not obs.models:
                    self._book_unattributed(joules * fraction, hardware * fraction)
                    continue
                part, shares = parts.setdefault(server, (_ServerPart(), []))
                part.energy_joules += joules * fraction
                part.hardware_cost += hardware * fraction
                part.gpu_seconds += gpu_seconds * fraction
                shares.append(GpuShare(server, gpu.device.index, uuid, fraction))
        self._gpus_listed = frozenset(g.device.uuid for g in gpus)
        return parts

    def _book_unattributed(self, joules: float, hardware_cost: float) -> None:
        account = self._unattributed
        account.energy_joules += joules
        account.energy_cost += self._cost.energy_cost(joules)
        account.hardware_cost += hardware_cost
        account.carbon_grams += self._cost.carbon_grams(joules) or 0.0

    def _book_parts(
        self,
        dt: float,
        parts: Mapping[str, tuple[_ServerPart, list[GpuShare]]],
        observations: Mapping[str, ServerObservation],
        interval: dict[Key, IntervalDelta],
    ) -> None:
        for server, (part, _) in parts.items():
            obs = observations[server]
            phases = {model: _phase_delta(obs, model) for model in obs.models}
            if obs.tokens_known:
                fractions = model_split(obs.models, obs.deltas)
                self._anatomy.observe(server, dt, part.energy_joules, phases)
            else:
                fractions = even_split(obs.models)
            idle = obs.tokens_known and obs.total_tokens() == 0
            for model, fraction in fractions.items():
                key = (server, model)
                account = self._accounts[key]
                joules = part.energy_joules * fraction
                energy_cost = self._cost.energy_cost(joules)
                hardware_cost = part.hardware_cost * fraction
                account.energy_joules += joules
                account.energy_cost += energy_cost
                account.hardware_cost += hardware_cost
                account.carbon_grams += self._cost.carbon_grams(joules) or 0.0
                if idle:
                    account.idle_energy_joules += joules
                phase = phases.get(model, _NO_PHASE)
                split = self._book_phases(
                    account, server, phase, joules, energy_cost + hardware_cost
                )
                tokens = interval.get(key, _NO_DELTA)
                interval[key] = IntervalDelta(
                    input_tokens=tokens.input_tokens,
                    output_tokens=tokens.output_tokens,
                    energy_joules=joules,
                    cost=energy_cost + hardware_cost,
                    gpu_seconds=part.gpu_seconds * fraction,
                    input_energy_joules=split[0],
                    output_energy_joules=split[1],
                    input_cost=split[2],
                    output_cost=split[3],
                    split=split[4],
                )

    def _book_phases(
        self, account: _Account, server: str, phase: PhaseDelta, joules: float, cost: float
    ) -> tuple[float, float, float, float, bool]:
        """Split one model's interval energy and cost; book the parts and cache savings."""
        share = self._anatomy.share(server, phase)
        account.phase_method = share.method
        fraction = share.input_fraction
        if fraction is None:
            account.unsplit_energy += joules
            account.unsplit_cost += cost
            return 0.0, 0.0, 0.0, 0.0, False
        # The output part is the remainder, so input + output is the energy exactly.
        input_joules, input_cost = joules * fraction, cost * fraction
        output_joules, output_cost = joules - input_joules, cost - input_cost
        account.input_energy += input_joules
        account.output_energy += output_joules
        account.input_cost += input_cost
        account.output_cost += output_cost
        saved = share.cache_savings_joules(joules, phase)
        if saved > 0 and joules > 0:
            account.cache_saved_energy += saved
            account.cache_saved_cost += saved * cost / joules
        return input_joules, output_joules, input_cost, output_cost, True

    # -- output -------------------------------------------------------------------------

    def _totals(self, parts: Mapping[str, tuple[_ServerPart, list[GpuShare]]]) -> LedgerTotals:
        carbon = self._cost.carbon_enabled
        ratios = self._window.ratios()
        models = []
        for key in sorted(self._accounts):
            a = self._accounts[key]
            r = ratios.get(key, _NO_RATIOS)
            models.append(
                ModelTotals(
                    server=key[0],
                    model=key[1],
                    input_tokens_total=a.input_tokens,
                    output_tokens_total=a.output_tokens,
                    cached_input_tokens_total=a.cached_input_tokens,
                    energy_joules_total=a.energy_joules,
                    idle_energy_joules_total=a.idle_energy_joules,
                    energy_cost_total=a.energy_cost,
                    hardware_cost_total=a.hardware_cost,
                    carbon_grams_total=a.carbon_grams if carbon else None,
                    tokens_per_joule=r.tokens_per_joule,
                    joules_per_token=r.joules_per_token,
                    cost_per_million_tokens=r.cost_per_million_tokens,
                    input_tokens_per_second=r.input_tokens_per_second,
                    output_tokens_per_second=r.output_tokens_per_second,
                    power_watts=r.power_watts,
                    input_energy_joules_total=a.input_energy,
                    output_energy_joules_total=a.output_energy,
                    unsplit_energy_joules_total=a.unsplit_energy,
                    input_cost_total=a.input_cost,
                    output_cost_total=a.output_cost,
                    unsplit_cost_total=a.unsplit_cost,
                    cache_saved_energy_joules_total=a.cache_saved_energy,
                    cache_saved_cost_total=a.cache_saved_cost,
                    kv_cache_saturated_seconds_total=a.kv_saturated_seconds,
                    phase_method=a.phase_method,
                    input_joules_per_input_token=r.input_joules_per_input_token,
                    output_joules_per_output_token=r.output_joules_per_output_token,
                    input_cost_per_million_input_tokens=r.input_cost_per_million_input_tokens,
                    output_cost_per_million_output_tokens=r.output_cost_per_million_output_tokens,
                )
            )
        shares = sorted(
            (share for _, server_shares in parts.values() for share in server_shares),
            key=lambda s: (s.gpu_index, s.uuid, s.server),
        )
        u = self._unattributed
        return LedgerTotals(
            models=tuple(models),
            shares=tuple(shares),
            unattributed_energy_joules_total=u.energy_joules,
            unattributed_energy_cost_total=u.energy_cost,
            unattributed_hardware_cost_total=u.hardware_cost,
            unattributed_carbon_grams_total=u.carbon_grams if carbon else None,
            gpu_energy_joules_total=tuple(sorted(self._gpu_energy.items())),
            events=tuple(self._events),
            phase_fits=self._phase_fits(),
        )

    def _phase_fits(self) -> tuple[PhaseFit, ...]:
        fits = []
        for server in sorted({key[0] for key in self._accounts}):
            fit = self._anatomy.trusted(server)
            if fit is None:
                continue
            a, b = fit.joules_per_input_token, fit.joules_per_output_token
            fits.append(
                PhaseFit(
                    server=server,
                    joules_per_input_token=a,
                    joules_per_input_token_stderr=a * fit.input_relative_error,
                    joules_per_output_token=b,
                    joules_per_output_token_stderr=b * fit.output_relative_error,
                    idle_watts=fit.idle_watts,
                )
            )
        return tuple(fits)


_NO_DELTA = IntervalDelta()
_NO_PHASE = PhaseDelta()
_NO_RATIOS = WindowRatios()
"""Shared empty values (frozen), not one built per key per cycle."""


def _phase_delta(obs: ServerObservation, model: str) -> PhaseDelta:
    """One model's interval as the input/output split reads it (empty when not known)."""
    delta = obs.deltas.get(model) if obs.tokens_known else None
    if delta is None:
        return _NO_PHASE
    timed = delta.prefill_seconds > 0 or delta.decode_seconds > 0
    return PhaseDelta(
        input_tokens=delta.input_tokens,
        cached_input_tokens=min(delta.cached_input_tokens, delta.input_tokens),
        output_tokens=delta.output_tokens,
        prefill_seconds=delta.prefill_seconds if timed else None,
        decode_seconds=delta.decode_seconds if timed else None,
    )


def _all_finite(a: float, b: float, c: float) -> bool:
    isfinite = math.isfinite
    return isfinite(a) and isfinite(b) and isfinite(c)


def _check_unique(what: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"advance: {what} {value!r} is listed twice")
        seen.add(value)
