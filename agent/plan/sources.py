"""Where ``tokenergy plan`` gets its measured rates: a Prometheus, or one agent's /metrics.

An edge: it does HTTP through an injected ``httpx.Client`` and takes time from an injected
clock; the arithmetic is in :mod:`agent.plan.model`.

From Prometheus, every rate is the average over the range ``R`` ending at ``at``, summed by
(server, model) over every agent that Prometheus scrapes (``sum by (server, model) (...)``), so
every ratio is a ratio of sums, as in dashboards/prometheus/rules.yml. Two sources of rates:

* ``raw``: the agents' counters, ``rate(tokenergy_..._total[R])``. Exact over the range:
  ``rate`` handles counter resets and the agents' counters are the canonical numbers.
* ``recorded``: the recording rules' ``server_model:tokenergy_...:rate5m`` series, averaged over
  the range with ``avg_over_time``. A global Prometheus that federates only the recorded
  series (as dashboards/README.md documents) has nothing else; there the phase, cache-saving and
  hardware-cost series are absent and shown as ``-``.

``auto`` (the default) takes ``raw`` when the counters are there and ``recorded`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import httpx

from agent.clock import Clock
from agent.plan.exposition import AgentReading, rates, read_agent
from agent.plan.model import Measured, Measurement
from agent.servers.parser import ExpositionError

__all__ = ["Measurement", "SourceError", "from_agent", "from_prometheus"]

Source = Literal["auto", "raw", "recorded"]


class SourceError(Exception):
    """The source cannot give a measurement; ``str(exc)`` is the one line for the user."""


# quantity -> (raw expression with {r} for the range, recorded rule name or None)
_QUERIES: dict[str, tuple[str, str | None]] = {
    "output_tps": (
        'rate(tokenergy_tokens_total{{type="output"}}[{r}])',
        "server_model:tokenergy_output_tokens:rate5m",
    ),
    "input_tps": (
        'rate(tokenergy_tokens_total{{type="input"}}[{r}])',
        "server_model:tokenergy_input_tokens:rate5m",
    ),
    "cached_tps": (
        "rate(tokenergy_cached_input_tokens_total[{r}])",
        "server_model:tokenergy_cached_input_tokens:rate5m",
    ),
    "watts": (
        "rate(tokenergy_energy_joules_total[{r}])",
        "server_model:tokenergy_energy_joules:rate5m",
    ),
    "idle_watts": (
        "rate(tokenergy_idle_energy_joules_total[{r}])",
        "server_model:tokenergy_idle_energy_joules:rate5m",
    ),
    "cost_per_s": ("rate(tokenergy_cost_total[{r}])", "server_model:tokenergy_cost:rate5m"),
    "hardware_cost_per_s": ('rate(tokenergy_cost_total{{component="hardware"}}[{r}])', None),
    "input_phase_watts": (
        'rate(tokenergy_phase_energy_joules_total{{phase="input"}}[{r}])',
        None,
    ),
    "output_phase_watts": (
        'rate(tokenergy_phase_energy_joules_total{{phase="output"}}[{r}])',
        None,
    ),
    "cache_saved_watts": ("rate(tokenergy_cache_saved_energy_joules_total[{r}])", None),
}


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s"


class _Prometheus:
    def __init__(self, client: httpx.Client, url: str, at: float) -> None:
        self.client = client
        self.url = url.rstrip("/")
        self.at = at

    def query(self, expr: str) -> list[dict[str, Any]]:
        try:
            response = self.client.get(
                f"{self.url}/api/v1/query", params={"query": expr, "time": f"{self.at:.3f}"}
            )
        except httpx.HTTPError as exc:
            raise SourceError(f"cannot reach Prometheus at {self.url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise SourceError(
                f"Prometheus at {self.url} answered HTTP {response.status_code} "
                "without a JSON body; is this the Prometheus base URL?"
            ) from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", "unknown error") if isinstance(body, dict) else "not JSON"
            raise SourceError(f"Prometheus at {self.url} refused the query: {error}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def by_key(self, expr: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        out = {}
        for series in self.query(f"sum by ({', '.join(labels)}) ({expr})"):
            value = float(series["value"][1])
            if math.isfinite(value):
                out[tuple(series["metric"].get(name, "") for name in labels)] = value
        return out


def from_prometheus(
    client: httpx.Client, url: str, range_seconds: float, at: float, source: Source = "auto"
) -> Measurement:
    """Measured rates over ``[at - range, at]`` from a Prometheus HTTP API.

    Args:
        client: HTTP client (auth and TLS already set).
        url: Prometheus base URL, e.g. ``http://prometheus:9090``.
        range_seconds: Length of the range, s.
        at: End of the range, Unix time, s.
        source: ``auto``, ``raw`` or ``recorded`` (module docstring).

    Returns:
        The measurement.

    Raises:
        SourceError: Prometheus unreachable or refusing, or no tokenergy data in the range.
    """
    prom = _Prometheus(client, url, at)
    r = _duration(range_seconds)
    keys = ("server", "model")

    def raw(quantity: str) -> dict[tuple[str, ...], float]:
        return prom.by_key(_QUERIES[quantity][0].format(r=r), keys)

    def recorded(quantity: str) -> dict[tuple[str, ...], float]:
        rule = _QUERIES[quantity][1]
        return {} if rule is None else prom.by_key(f"avg_over_time({rule}[{r}])", keys)

    columns: dict[str, dict[tuple[str, ...], float]] = {}
    if source in ("auto", "raw"):
        columns["output_tps"] = raw("output_tps")
    if source == "recorded" or (source == "auto" and not columns["output_tps"]):
        source = "recorded"
        columns["output_tps"] = recorded("output_tps")
    else:
        source = "raw"
    if not columns["output_tps"]:
        raise SourceError(
            f"no tokenergy data in Prometheus at {url} over the {r} before {at:.0f} "
            "(neither tokenergy_tokens_total nor the recording rules' series)"
        )
    fetch: Callable[[str], dict[tuple[str, ...], float]] = raw if source == "raw" else recorded
    for quantity in _QUERIES:
        if quantity not in columns:
            columns[quantity] = fetch(quantity)
    if source == "recorded":
        # Series with no recording rule exist on a leaf Prometheus; read them when present.
        for quantity, (_, rule) in _QUERIES.items():
            if rule is None:
                columns[quantity] = raw(quantity)
    gpus = prom.by_key(f"avg_over_time(tokenergy_server_gpu_share[{r}])", ("server",))
    currency = prom.by_key(f"last_over_time(tokenergy_pricing_info[{r}])", ("currency",))
    return _assemble(
        columns,
        {k[0]: v for k, v in gpus.items()},
        range_seconds,
        f"prometheus ({'raw counters' if source == 'raw' else 'recording rules'})",
        next(iter(currency))[0] if len(currency) == 1 else None,
    )


def _assemble(
    columns: dict[str, dict[tuple[str, ...], float]],
    gpus: dict[str, float],
    seconds: float,
    source: str,
    currency: str | None,
) -> Measurement:
    rows = []
    skipped = []
    server_watts: dict[str, float] = {}
    for (server, _), value in columns["watts"].items():
        server_watts[server] = server_watts.get(server, 0.0) + value
    for key in sorted(columns["output_tps"]):
        server, model = key
        output = columns["output_tps"][key]
        watts = columns["watts"].get(key)
        if watts is None:
            skipped.append((server, model, "no energy series"))
            continue
        if output <= 0:
            skipped.append((server, model, "no output tokens in the range"))
            continue
        total = server_watts.get(server, 0.0)
        share = watts / total if total > 0 else None
        g = gpus.get(server)

        def col(name: str, key: tuple[str, ...] = key) -> float | None:
            return columns[name].get(key)

        rows.append(
            Measured(
                server=server,
                model=model,
                output_tps=output,
                watts=watts,
                input_tps=col("input_tps"),
                cached_tps=col("cached_tps"),
                idle_watts=col("idle_watts"),
                gpus=None if g is None or share is None else g * share,
                cost_per_s=col("cost_per_s"),
                hardware_cost_per_s=col("hardware_cost_per_s"),
                input_phase_watts=col("input_phase_watts"),
                output_phase_watts=col("output_phase_watts"),
                cache_saved_watts=col("cache_saved_watts"),
            )
        )
    if not rows:
        reasons = "; ".join(f"{s}/{m or '-'}: {why}" for s, m, why in skipped)
        raise SourceError(f"no model produced output tokens in the range ({reasons})")
    return Measurement(tuple(rows), seconds, source, currency, tuple(skipped))


def _metrics_url(url: str) -> str:
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https"):
        raise SourceError(f"{url!r} is not an http:// or https:// URL")
    return str(parsed.copy_with(path="/metrics")) if parsed.path in ("", "/") else url


def read_agent_url(client: httpx.Client, url: str) -> AgentReading:
    """GET one agent's /metrics and read it.

    Args:
        client: HTTP client (auth and TLS already set).
        url: The agent's base URL or its /metrics URL.

    Returns:
        The reading.

    Raises:
        SourceError: Unreachable, an HTTP error, or not a tokenergy exposition.
    """
    target = _metrics_url(url)
    try:
        response = client.get(target)
    except httpx.HTTPError as exc:
        raise SourceError(f"cannot reach {target}: {exc or type(exc).__name__}") from None
    if response.status_code != 200:
        raise SourceError(f"{target} answered HTTP {response.status_code}")
    try:
        return read_agent(response.content)
    except (ExpositionError, ValueError) as exc:
        raise SourceError(f"{target}: {exc}") from None


def from_agent(client: httpx.Client, url: str, window_seconds: float, clock: Clock) -> Measurement:
    """Measured rates over a window from one agent: two reads ``window_seconds`` apart.

    Args:
        client: HTTP client (auth and TLS already set).
        url: The agent's base URL or its /metrics URL.
        window_seconds: Time between the two reads, s.
        clock: Monotonic time and sleeping.

    Returns:
        The measurement.

    Raises:
        SourceError: The agent cannot be read, or no model made output tokens in the window.
    """
    first = read_agent_url(client, url)
    t0 = clock.monotonic()
    clock.sleep(window_seconds)
    second = read_agent_url(client, url)
    seconds = clock.monotonic() - t0
    rows = rates(first, second, seconds)
    keep = tuple(r for r in rows if r.output_tps > 0)
    skipped = tuple(
        (r.server, r.model, "no output tokens in the window") for r in rows if r.output_tps <= 0
    )
    if not keep:
        raise SourceError(f"no model produced output tokens in the {seconds:.0f} s window at {url}")
    return Measurement(keep, seconds, "agent", second.currency, skipped)
