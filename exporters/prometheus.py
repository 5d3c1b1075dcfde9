"""Prometheus collector: turns the latest Snapshot into metric families on every scrape.

One custom collector builds fresh families from the Snapshot it is handed on each
``collect()`` (the "const metrics" pattern of the writing-exporters guide): no instrumented
gauges are set in loops, so concurrent scrapes cannot race and a vanished label value can
never linger. It never calls NVML or a server; it reads an immutable Snapshot, so a scrape
costs the same however many run at once.

Rules enforced here, for every family:

- Only metrics listed in :mod:`exporters.catalogue` can be emitted, with its help and labels.
- ``None`` means "not known": no sample, never a made-up 0. NaN and +/-Inf are dropped too
  (an exported NaN is stored by Prometheus as data, not as "absent"), and so is a negative
  counter value.
- A family with no samples is not emitted; a repeated label set keeps its first value only.
- Label values are escaped on output (backslash, newline, double quote), so a hostile model
  name cannot inject lines.

The collector is registered in its own registry (:func:`build_registry`), never in the global
``REGISTRY`` (which would also add the python_* and process_* collectors and call
``collect()`` at registration). /metrics does not go through ``collect()``: the registry's
``exposition()`` writes the same bytes as prometheus_client's encoders from the same samples,
without building its family objects (4-6x less CPU), and keeps each format's body for the
Snapshot in force, so a request for a Snapshot already written only writes its age.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from agent.clock import Clock
from agent.config import DEFAULT_WINDOW_SECONDS
from agent.readings import Snapshot
from exporters.catalogue import BY_NAME, METRICS, MetricSpec


class _Families:
    """Collects samples per catalogue entry and builds the families at the end."""

    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._samples: dict[str, dict[tuple[str, ...], float]] = {}

    def add(self, name: str, labels: Sequence[str], value: float | None) -> None:
        """Add one sample; unknown (None), non-finite or negative-counter values are dropped.

        Args:
            name: Catalogue name of the metric.
            labels: Label values, in the catalogue's label order.
            value: The value, in the metric's unit.

        Raises:
            KeyError: When ``name`` is not in the catalogue (a programming error).
            ValueError: When the number of label values does not match the catalogue.
        """
        spec = BY_NAME[name]
        if len(labels) != len(spec.labels):
            raise ValueError(f"{name} takes labels {spec.labels}, got {len(labels)} values")
        if value is None:
            return
        number = float(value)
        if not math.isfinite(number) or (spec.type == "counter" and number < 0):
            return
        # Label values are nearly always ASCII: one check for the whole set.
        if "".join(labels).isascii():
            clean = tuple(labels)
        else:
            clean = tuple(v if v.isascii() else _utf8(v) for v in labels)
        samples = self._samples.get(name)
        if samples is None:
            samples = self._samples[name] = {}
        samples.setdefault(clean, number)

    def families(self) -> Iterator[Metric]:
        """The non-empty families, in catalogue order."""
        for spec in METRICS:
            samples = self._samples.get(spec.name)
            if not samples:
                continue
            family: GaugeMetricFamily | CounterMetricFamily
            doc = spec.help_text(self._window)
            if spec.type == "counter":
                family = CounterMetricFamily(spec.name, doc, labels=spec.labels, unit=spec.unit)
            else:
                family = GaugeMetricFamily(spec.name, doc, labels=spec.labels, unit=spec.unit)
            for label_values, value in samples.items():
                family.add_metric(list(label_values), value)
            yield family

    def encode(self, openmetrics: bool, labels: _LabelCache) -> list[tuple[str, str]]:
        """The non-empty families as exposition text, in catalogue order.

        Args:
            openmetrics: OpenMetrics 1.0 (without its ``# EOF``) instead of text 0.0.4.
            labels: Written label sets, reused from request to request.

        Returns:
            ``(catalogue name, text)`` per family, byte for byte what prometheus_client's
            ``generate_latest`` (or its OpenMetrics one) writes for :meth:`families`.
        """
        out: list[tuple[str, str]] = []
        for spec in METRICS:
            samples = self._samples.get(spec.name)
            if not samples:
                continue
            layout = _LAYOUTS[spec.name]
            doc = spec.help_text(self._window)
            if openmetrics:
                head = (
                    f"# HELP {layout.family} {_escape(doc)}\n"
                    f"# TYPE {layout.family} {spec.type}\n"
                    + (f"# UNIT {layout.family} {spec.unit}\n" if spec.unit else "")
                )
            else:
                doc = doc.replace("\\", r"\\").replace("\n", r"\n")
                head = f"# HELP {layout.sample} {doc}\n# TYPE {layout.sample} {spec.type}\n"
            lines = [head]
            prefix = labels.prefix
            for label_values, value in samples.items():
                # _go(value), inlined: run for every sample.
                text = repr(value)
                if value > 0 and text.find(".") > 6:
                    text = _go(value)
                lines.append(prefix(layout, label_values) + text + "\n")
            out.append((spec.name, "".join(lines)))
        return out


@dataclass(frozen=True, slots=True)
class _Layout:
    """How prometheus_client names one catalogue entry and orders its labels."""

    family: str  # OpenMetrics family name (HELP, TYPE, UNIT)
    sample: str  # name of the samples, and of the family in text 0.0.4
    names: tuple[str, ...]  # label names, sorted (as prometheus_client writes them)
    order: tuple[int, ...]  # catalogue positions of those names


def _layout(spec: MetricSpec) -> _Layout:
    # The family classes apply the naming rules (``_total`` and unit suffixes) once here.
    family: Metric = (CounterMetricFamily if spec.type == "counter" else GaugeMetricFamily)(
        spec.name, spec.help, labels=spec.labels, unit=spec.unit
    )
    order = tuple(sorted(range(len(spec.labels)), key=lambda i: spec.labels[i]))
    return _Layout(
        family=family.name,
        sample=family.name + "_total" if spec.type == "counter" else family.name,
        names=tuple(spec.labels[i] for i in order),
        order=order,
    )


_LAYOUTS = {spec.name: _layout(spec) for spec in METRICS}

MAX_CACHED_LABEL_SETS = 65_536
"""Written label sets kept between requests (a bound, far above the cardinality caps)."""


class _LabelCache:
    """``name{label="value",...} `` per (family, label values), written once.

    Label sets repeat from request to request (the same servers, models and GPUs), so the
    escaping and joining is done once per label set, not once per sample and request.
    """

    def __init__(self, limit: int = MAX_CACHED_LABEL_SETS) -> None:
        self._limit = limit
        self._written: dict[tuple[str, tuple[str, ...]], str] = {}

    def prefix(self, layout: _Layout, values: tuple[str, ...]) -> str:
        key = (layout.sample, values)
        written = self._written.get(key)
        if written is None:
            if not values:
                written = layout.sample + " "
            else:
                pairs = (
                    f'{name}="{_escape(values[i])}"'
                    for name, i in zip(layout.names, layout.order, strict=True)
                )
                written = layout.sample + "{" + ",".join(pairs) + "} "
            if len(self._written) >= self._limit:
                self._written.clear()  # label churn: start over rather than grow
            self._written[key] = written
        return written


def _escape(value: str) -> str:
    """Label value (and OpenMetrics help) escaping: backslash, newline, double quote."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _go(value: float) -> str:
    """``floatToGoString`` for the finite values the families hold, without its checks."""
    text = repr(value)
    # Go switches to exponents sooner than Python (prometheus_client.utils.floatToGoString).
    if value > 0 and text.find(".") > 6:
        return str(floatToGoString(value))  # type: ignore[no-untyped-call]
    return text


def _utf8(text: str) -> str:
    """``text`` made encodable as UTF-8: a lone surrogate becomes ``?``.

    No label value can then make the exposition fail to encode.
    """
    return text.encode("utf-8", "replace").decode("utf-8")


def _number(value: float) -> str:
    """A label-friendly rendering of a setting (``0.1``, ``1.3``, ``2``)."""
    return f"{value:g}"


def snapshot_families(
    snapshot: Snapshot | None, now_seconds: float, version: str
) -> Iterator[Metric]:
    """Build every metric family for one Snapshot.

    Args:
        snapshot: The Snapshot to render, or None before the first cycle completed.
        now_seconds: Current monotonic time, s, for ``sample_age_seconds``.
        version: Agent version for ``build_info``.

    Yields:
        Metric families in catalogue order; before the first Snapshot only ``build_info``.
    """
    out = _collect(snapshot, version)
    if snapshot is not None:
        out.add(AGE, [], _age(snapshot, now_seconds))
    yield from out.families()


AGE = "tokenergy_sample_age_seconds"
"""The one family that changes between two requests for the same Snapshot."""


def _age(snapshot: Snapshot, now_seconds: float) -> float:
    return max(0.0, now_seconds - snapshot.taken_at_seconds)


def _collect(snapshot: Snapshot | None, version: str) -> _Families:
    """Every sample of one Snapshot but its age (which depends on the time of the request)."""
    out = _Families(snapshot.window_seconds if snapshot is not None else DEFAULT_WINDOW_SECONDS)
    out.add("tokenergy_build_info", [version], 1)
    if snapshot is None:
        return out

    nvml = [c for c in snapshot.collectors if c.name == "nvml"]
    if nvml:
        out.add("tokenergy_nvml_up", [], 1 if nvml[0].success else 0)

    gpu_energy = dict(snapshot.ledger.gpu_energy_joules_total)
    for gpu in snapshot.gpus:
        dev = gpu.device
        ids = [str(dev.index), dev.uuid]
        out.add("tokenergy_gpu_info", [*ids, dev.name, dev.energy_source], 1)
        out.add("tokenergy_gpu_up", ids, 1 if gpu.up else 0)
        out.add("tokenergy_gpu_energy_joules_total", ids, gpu_energy.get(dev.uuid))
        reading = gpu.reading
        # A stale reading of a GPU that is down would pass for live data: show none.
        if gpu.up and reading is not None:
            out.add("tokenergy_gpu_power_watts", ids, reading.power_watts)
            out.add("tokenergy_gpu_utilization_ratio", ids, reading.utilization_ratio)
            out.add("tokenergy_gpu_memory_used_bytes", ids, reading.memory_used_bytes)
            out.add("tokenergy_gpu_memory_total_bytes", ids, reading.memory_total_bytes)
            out.add("tokenergy_gpu_power_limit_watts", ids, reading.power_limit_watts)

    # Per-model gauges only for the models the ledger tracks: the cardinality bound holds
    # for every family, whatever a server lists.
    tracked = {(m.server, m.model) for m in snapshot.ledger.models}
    for server in snapshot.servers:
        out.add("tokenergy_server_up", [server.name], 1 if server.up else 0)
        if server.reading is None:
            continue
        for tokens in server.reading.models:
            if (server.name, tokens.model) not in tracked:
                continue
            key = [server.name, tokens.model]
            out.add("tokenergy_server_info", [server.name, server.reading.engine, tokens.model], 1)
            out.add("tokenergy_server_requests", [*key, "running"], tokens.requests_running)
            out.add("tokenergy_server_requests", [*key, "waiting"], tokens.requests_waiting)
            out.add("tokenergy_server_kv_cache_usage_ratio", key, tokens.kv_cache_usage_ratio)

    ledger = snapshot.ledger
    for share in ledger.shares:
        out.add(
            "tokenergy_server_gpu_share",
            [share.server, str(share.gpu_index), share.uuid],
            share.share,
        )
    for m in ledger.models:
        key = [m.server, m.model]
        out.add("tokenergy_tokens_total", [*key, "input"], m.input_tokens_total)
        out.add("tokenergy_tokens_total", [*key, "output"], m.output_tokens_total)
        out.add("tokenergy_cached_input_tokens_total", key, m.cached_input_tokens_total)
        out.add("tokenergy_energy_joules_total", key, m.energy_joules_total)
        out.add("tokenergy_idle_energy_joules_total", key, m.idle_energy_joules_total)
        out.add("tokenergy_cost_total", [*key, "energy"], m.energy_cost_total)
        out.add("tokenergy_cost_total", [*key, "hardware"], m.hardware_cost_total)
        out.add("tokenergy_carbon_grams_total", key, m.carbon_grams_total)
        out.add("tokenergy_tokens_per_joule", key, m.tokens_per_joule)
        out.add("tokenergy_joules_per_token", key, m.joules_per_token)
        out.add("tokenergy_cost_per_million_tokens", key, m.cost_per_million_tokens)
        for phase, joules, cost in (
            ("input", m.input_energy_joules_total, m.input_cost_total),
            ("output", m.output_energy_joules_total, m.output_cost_total),
            ("unsplit", m.unsplit_energy_joules_total, m.unsplit_cost_total),
        ):
            out.add("tokenergy_phase_energy_joules_total", [*key, phase], joules)
            out.add("tokenergy_phase_cost_total", [*key, phase], cost)
        out.add("tokenergy_cache_saved_energy_joules_total", key, m.cache_saved_energy_joules_total)
        out.add("tokenergy_cache_saved_cost_total", key, m.cache_saved_cost_total)
        out.add(
            "tokenergy_kv_cache_saturated_seconds_total", key, m.kv_cache_saturated_seconds_total
        )
        out.add("tokenergy_joules_per_input_token", key, m.input_joules_per_input_token)
        out.add("tokenergy_joules_per_output_token", key, m.output_joules_per_output_token)
        cost_in = m.input_cost_per_million_input_tokens
        cost_out = m.output_cost_per_million_output_tokens
        out.add("tokenergy_cost_per_million_input_tokens", key, cost_in)
        out.add("tokenergy_cost_per_million_output_tokens", key, cost_out)
        if cost_in and cost_out is not None:
            out.add("tokenergy_output_input_cost_factor", key, cost_out / cost_in)
        if m.phase_method is not None:
            out.add("tokenergy_phase_split_info", [*key, m.phase_method], 1.0)
    for fit in ledger.phase_fits:
        for phase, value, stderr in (
            ("input", fit.joules_per_input_token, fit.joules_per_input_token_stderr),
            ("output", fit.joules_per_output_token, fit.joules_per_output_token_stderr),
        ):
            out.add("tokenergy_marginal_joules_per_token", [fit.server, phase], value)
            out.add("tokenergy_marginal_joules_per_token_stderr", [fit.server, phase], stderr)
    out.add(
        "tokenergy_unattributed_energy_joules_total", [], ledger.unattributed_energy_joules_total
    )
    out.add("tokenergy_unattributed_cost_total", ["energy"], ledger.unattributed_energy_cost_total)
    out.add(
        "tokenergy_unattributed_cost_total", ["hardware"], ledger.unattributed_hardware_cost_total
    )
    out.add("tokenergy_unattributed_carbon_grams_total", [], ledger.unattributed_carbon_grams_total)

    pricing = snapshot.pricing
    out.add(
        "tokenergy_pricing_info",
        [
            pricing.currency,
            _number(pricing.electricity_per_kwh),
            _number(pricing.pue),
            _number(pricing.carbon_g_per_kwh or 0.0),
        ],
        1,
    )

    for health in snapshot.collectors:
        out.add("tokenergy_collector_success", [health.name], 1 if health.success else 0)
        out.add("tokenergy_collector_duration_seconds", [health.name], health.duration_seconds)
    for server_name, reason, count in snapshot.scrape_errors:
        out.add("tokenergy_scrape_errors_total", [server_name, reason], count)
    for gpu_index, error, count in snapshot.nvml_errors:
        out.add("tokenergy_nvml_errors_total", [gpu_index, error], count)
    return out


@dataclass(frozen=True, slots=True)
class _Body:
    """One Snapshot's exposition in one format, but for its age (written per request)."""

    snapshot: Snapshot | None
    before: bytes  # the families before tokenergy_sample_age_seconds
    after: bytes  # those after it (and OpenMetrics' ``# EOF``)


_RANK = {spec.name: i for i, spec in enumerate(METRICS)}
_AGE_RANK = _RANK[AGE]


class SnapshotCollector(Collector):
    """Custom collector rendering the latest Snapshot on every ``collect()``.

    :meth:`exposition` writes the same bytes as prometheus_client's encoders over this
    collector, faster, and keeps each format's bytes for the Snapshot in force: a second
    request for the same Snapshot (an HA pair of Prometheus servers, a scrape interval
    shorter than the sampling interval) only writes its age.

    Args:
        snapshot: Returns the latest Snapshot, or None before the first cycle completed.
            Called once per scrape; must be cheap and must not block (the sampler's getter).
        clock: Monotonic clock for ``tokenergy_sample_age_seconds``.
        version: Agent version for ``tokenergy_build_info``.
    """

    def __init__(self, snapshot: Callable[[], Snapshot | None], clock: Clock, version: str) -> None:
        self._snapshot = snapshot
        self._clock = clock
        self._version = version
        self._labels = _LabelCache()
        # Per format (False: text 0.0.4, True: OpenMetrics), the latest Snapshot's body.
        self._bodies: dict[bool, _Body] = {}

    def collect(self) -> Iterator[Metric]:
        """Fresh families for the Snapshot in force now."""
        snap = self._snapshot()
        yield from snapshot_families(snap, self._clock.monotonic(), self._version)

    def describe(self) -> Iterator[Metric]:
        """Nothing: the family set depends on the Snapshot, so no clash check at register."""
        return iter(())

    def exposition(self, openmetrics: bool = False) -> bytes:
        """The exposition of the Snapshot in force now, UTF-8.

        Args:
            openmetrics: OpenMetrics 1.0 instead of the text format 0.0.4.

        Returns:
            Byte for byte what ``generate_latest`` (prometheus_client's text or OpenMetrics
            one, names escaped as ``underscores`` or ``allow-utf-8``) writes for a registry
            holding this collector.
        """
        snap = self._snapshot()
        now = self._clock.monotonic()
        body = self._bodies.get(openmetrics)
        if body is None or body.snapshot is not snap:
            body = self._write(snap, openmetrics)
            # Requests run on several threads: a race writes the same body twice, no harm.
            self._bodies[openmetrics] = body
        if snap is None:
            return body.before + body.after
        age = _Families(snap.window_seconds)
        age.add(AGE, [], _age(snap, now))
        middle = "".join(text for _, text in age.encode(openmetrics, self._labels))
        return body.before + middle.encode("utf-8") + body.after

    def _write(self, snap: Snapshot | None, openmetrics: bool) -> _Body:
        families = _collect(snap, self._version).encode(openmetrics, self._labels)
        before = "".join(text for name, text in families if _RANK[name] < _AGE_RANK)
        after = "".join(text for name, text in families if _RANK[name] > _AGE_RANK)
        if openmetrics:
            after += "# EOF\n"
        return _Body(snap, before.encode("utf-8"), after.encode("utf-8"))


class SnapshotRegistry(CollectorRegistry):
    """A private registry of one :class:`SnapshotCollector` that writes its own exposition.

    Args:
        collector: The collector.
    """

    def __init__(self, collector: SnapshotCollector) -> None:
        super().__init__(auto_describe=False)
        self.register(collector)
        self._collector = collector

    def exposition(self, openmetrics: bool = False) -> bytes:
        """:meth:`SnapshotCollector.exposition` of the collector."""
        return self._collector.exposition(openmetrics)


def build_registry(collector: Collector) -> CollectorRegistry:
    """A private registry holding only ``collector``.

    Args:
        collector: Usually a :class:`SnapshotCollector`.

    Returns:
        A new ``CollectorRegistry`` (never the process-global ``REGISTRY``); a
        :class:`SnapshotRegistry` for a :class:`SnapshotCollector`.
    """
    if isinstance(collector, SnapshotCollector):
        return SnapshotRegistry(collector)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
