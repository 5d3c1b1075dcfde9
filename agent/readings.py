"""Core value types that flow through the agent, one direction: readings -> ledger -> Snapshot.

Pure module: frozen, slotted dataclasses only. No I/O, no clock reads, no threads.
Units are SI base units and are part of every field name (watts, joules, bytes, seconds).
``None`` means "not supported" or "not known": never NaN and never 0 as a stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

EnergySource = Literal["counter", "integrated"]
"""Where a GPU's energy comes from: the NVML energy counter, or power integrated over time."""

CounterKind = Literal["input", "output", "cached", "prefill_seconds", "decode_seconds"]
"""The upstream counters the agent tracks per model: prompt, generated and cached prompt tokens,
and the cumulative time requests spent in prefill and in decode, s."""


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """Identity and capabilities of one GPU, probed once at start.

    Attributes:
        index: NVML device index (as ``nvidia-smi -i``).
        uuid: NVML UUID, e.g. ``GPU-8f6c...``; the stable key for every series.
        name: Marketing name from NVML, e.g. ``NVIDIA H100 80GB HBM3``.
        energy_source: ``counter`` when the NVML energy counter works, else ``integrated``.
        mig_enabled: True when MIG mode is on; the device is still read as a whole GPU.
    """

    index: int
    uuid: str
    name: str
    energy_source: EnergySource
    mig_enabled: bool = False


@dataclass(frozen=True, slots=True)
class GpuProcess:
    """A compute process on a GPU.

    Attributes:
        pid: Host PID as NVML reports it (host PID namespace).
        used_memory_bytes: GPU memory used by the process, bytes, when known.
        utilization_ratio: The process's share of SM utilization, 0..1, when NVML reports it.
    """

    pid: int
    used_memory_bytes: int | None = None
    utilization_ratio: float | None = None


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One read of one GPU, converted to SI units at the NVML boundary.

    Attributes:
        index: NVML device index.
        uuid: NVML UUID.
        power_watts: Board power draw, W.
        energy_joules: Raw NVML energy counter, J since driver load; None when unsupported.
            This raw value resets on a driver reload; the agent-owned monotonic counter is
            ``LedgerTotals.gpu_energy_joules_total``.
        utilization_ratio: GPU (SM) utilization, 0..1.
        memory_used_bytes: Device memory in use, bytes.
        memory_total_bytes: Device memory size, bytes.
        power_limit_watts: Enforced power limit, W.
        processes: Compute processes with their host PIDs.
    """

    index: int
    uuid: str
    power_watts: float | None
    energy_joules: float | None
    utilization_ratio: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    power_limit_watts: float | None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True, slots=True)
class GpuStatus:
    """What the agent knows of one GPU after a poll.

    Attributes:
        device: Identity and capabilities.
        up: True when the last read succeeded within its deadline.
        reading: The latest successful reading (may be stale when ``up`` is False).
        energy_joules_added: Energy measured since this GPU's previous status, J (>= 0): NVML
            counter deltas (resets and glitches absorbed) or integrated power. Handed out once;
            the ledger accumulates it into ``LedgerTotals.gpu_energy_joules_total``.
        error: Short class of the last error (e.g. ``gpu_lost``, ``timeout``), or None.
    """

    device: GpuDevice
    up: bool
    reading: GpuReading | None
    energy_joules_added: float
    error: str | None = None


class CounterSeries(NamedTuple):
    """One raw upstream counter series behind a :class:`TokenReading` field.

    Upstream counters reset per series (one data-parallel rank restarts, one label set is
    recreated), so reset detection must work on each series, never on their sum.

    Attributes:
        kind: Which field of the reading this series adds to.
        key: Stable identity of the series within its model and kind: the sample name and its
            labels other than the model label, e.g. ``vllm:prompt_tokens_total{engine="3"}``.
        value: The series' cumulative value (tokens, or seconds for the phase-time kinds).
    """

    kind: CounterKind
    key: str
    value: float


@dataclass(frozen=True, slots=True)
class TokenReading:
    """Normalized token counters and load gauges of one model on one server.

    Counters are the server's own cumulative values (they reset when the server restarts);
    the ledger turns them into monotonic agent counters. None = not exposed by this engine.

    Attributes:
        model: Served model name; "" for servers without a model label (llama.cpp).
        input_tokens: Prompt (prefill) tokens processed, cumulative.
        output_tokens: Generated tokens, cumulative.
        cached_input_tokens: Prompt tokens served from a prefix/prompt cache, cumulative.
        requests_running: Requests currently running (gauge).
        requests_waiting: Requests currently queued (gauge).
        kv_cache_usage_ratio: KV-cache usage, 0..1 (gauge).
        prefill_seconds: Cumulative time requests spent in prefill, s (vLLM's
            ``request_prefill_time_seconds_sum``, llama.cpp's ``prompt_seconds_total``).
        decode_seconds: Cumulative time requests spent in decode, s.
        series: The raw counter series that add up to the counter fields above; empty when
            each field is a single series (then the field itself is the series).
    """

    model: str
    input_tokens: float | None
    output_tokens: float | None
    cached_input_tokens: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage_ratio: float | None = None
    prefill_seconds: float | None = None
    decode_seconds: float | None = None
    series: tuple[CounterSeries, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerReading:
    """Everything read from one scrape of one inference server.

    Attributes:
        engine: Engine profile name that interpreted the exposition (``vllm``, ``sglang``...).
        models: One reading per served model.
        start_time_seconds: Server process start time, Unix seconds, where exposed; a change
            means the server restarted even if no counter went down.
    """

    engine: str
    models: tuple[TokenReading, ...]
    start_time_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ServerStatus:
    """What the agent knows of one configured server after a cycle.

    Attributes:
        name: Configured server name (the ``server`` label).
        up: True when the last scrape succeeded and parsed.
        reading: The last successful reading, or None when the last scrape failed.
        error_reason: One of ``timeout``, ``dns``, ``refused``, ``http_status``,
            ``too_large``, ``parse`` or ``error`` (token or CA file unusable), when the last
            scrape failed.
    """

    name: str
    up: bool
    reading: ServerReading | None
    error_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ModelTotals:
    """Agent-owned counters and windowed ratios of one (server, model).

    Counters never decrease within one agent process. Ratios are over the ratio window and
    are None (no series) when the window has no output tokens; they are never NaN or Inf.

    Attributes:
        server: Server name.
        model: Model name ("" when the server has no model label).
        input_tokens_total: Prompt tokens, monotonic.
        output_tokens_total: Generated tokens, monotonic.
        cached_input_tokens_total: Prompt tokens served from cache, monotonic.
        energy_joules_total: Energy attributed to this (server, model), J.
        idle_energy_joules_total: Part of the above spent over intervals with no tokens, J.
        energy_cost_total: Energy cost, configured currency.
        hardware_cost_total: GPU-hour cost by share, configured currency.
        carbon_grams_total: g CO2e, or None when no carbon intensity is configured.
        tokens_per_joule: Output tokens per joule over the window (= tokens/s per W).
        joules_per_token: Joules per output token over the window.
        cost_per_million_tokens: All cost per million output tokens over the window.
        input_tokens_per_second: Prompt token rate over the window, tokens/s.
        output_tokens_per_second: Output token rate over the window, tokens/s.
        power_watts: Mean attributed power over the window, W.
        input_energy_joules_total: Part of the energy the input (prefill) took, J.
        output_energy_joules_total: Part of the energy the output (decode) took, J.
        unsplit_energy_joules_total: Part no estimator could split yet, J; input + output +
            unsplit = ``energy_joules_total``.
        input_cost_total: Input part of energy plus hardware cost.
        output_cost_total: Output part of the cost.
        unsplit_cost_total: Unsplit part of the cost.
        cache_saved_energy_joules_total: Energy the prompt cache saved: cached prompt tokens
            times the energy of a computed one, J.
        cache_saved_cost_total: That energy at the interval's cost per joule.
        kv_cache_saturated_seconds_total: Time the KV cache was saturated while requests
            waited, s.
        phase_method: Estimator of the last split: ``regression``, ``time`` or ``none``.
        input_joules_per_input_token: Input energy per input token over the window, J.
        output_joules_per_output_token: Output energy per output token over the window, J.
        input_cost_per_million_input_tokens: Input cost per million input tokens.
        output_cost_per_million_output_tokens: Output cost per million output tokens.
    """

    server: str
    model: str
    input_tokens_total: float = 0.0
    output_tokens_total: float = 0.0
    cached_input_tokens_total: float = 0.0
    energy_joules_total: float = 0.0
    idle_energy_joules_total: float = 0.0
    energy_cost_total: float = 0.0
    hardware_cost_total: float = 0.0
    carbon_grams_total: float | None = None
    tokens_per_joule: float | None = None
    joules_per_token: float | None = None
    cost_per_million_tokens: float | None = None
    input_tokens_per_second: float | None = None
    output_tokens_per_second: float | None = None
    power_watts: float | None = None
    input_energy_joules_total: float = 0.0
    output_energy_joules_total: float = 0.0
    unsplit_energy_joules_total: float = 0.0
    input_cost_total: float = 0.0
    output_cost_total: float = 0.0
    unsplit_cost_total: float = 0.0
    cache_saved_energy_joules_total: float = 0.0
    cache_saved_cost_total: float = 0.0
    kv_cache_saturated_seconds_total: float = 0.0
    phase_method: str | None = None
    input_joules_per_input_token: float | None = None
    output_joules_per_output_token: float | None = None
    input_cost_per_million_input_tokens: float | None = None
    output_cost_per_million_output_tokens: float | None = None


@dataclass(frozen=True, slots=True)
class PhaseFit:
    """A server's fitted energy model (input/output regression), when it is trusted.

    Attributes:
        server: Server name.
        joules_per_input_token: Energy of one computed (not cached) prompt token, J.
        joules_per_input_token_stderr: Its standard error, J.
        joules_per_output_token: Energy of one generated token, J.
        joules_per_output_token_stderr: Its standard error, J.
        idle_watts: Power with no token in flight, W.
    """

    server: str
    joules_per_input_token: float
    joules_per_input_token_stderr: float
    joules_per_output_token: float
    joules_per_output_token_stderr: float
    idle_watts: float


@dataclass(frozen=True, slots=True)
class GpuShare:
    """The share of one GPU attributed to one server (the attribution map in force).

    Attributes:
        server: Server name.
        gpu_index: NVML device index.
        uuid: GPU UUID.
        share: Fraction of the GPU's energy given to the server, 0..1.
    """

    server: str
    gpu_index: int
    uuid: str
    share: float


AccountingReason = Literal[
    "implausible",
    "series_reset",
    "restart",
    "too_many_models",
    "too_many_series",
    "label_too_long",
    "model_expired",
]
"""Why the accounting reports an event: a value it refused (``implausible``), a counter reset it
absorbed (``series_reset``, ``restart``), or a model or series it did not track
(``too_many_models``, ``too_many_series``, ``label_too_long``) or stopped tracking
(``model_expired``)."""


@dataclass(frozen=True, slots=True)
class AccountingEvent:
    """Something the pure accounting saw in one advance, for the edge to log and count.

    Attributes:
        reason: What happened.
        source: The server name, or the GPU UUID for GPU energy events.
        model: The model concerned ("" when none or for GPUs).
        series: The series concerned (``kind:key``, e.g.
            ``input:vllm:prompt_tokens_total{engine="3"}``), "" when none.
        count: How many models or series the event stands for (drops are grouped per advance).
        detail: One short human-readable line with the figures.
    """

    reason: AccountingReason
    source: str
    model: str = ""
    series: str = ""
    count: int = 1
    detail: str = ""


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    """The ledger's output after one advance.

    Attributes:
        models: Per (server, model) counters and ratios.
        shares: The GPU-to-server attribution in force.
        unattributed_energy_joules_total: Energy of GPUs (or GPU shares) serving no server, J.
        unattributed_energy_cost_total: Energy cost of that energy, configured currency.
        unattributed_hardware_cost_total: GPU-hour cost of GPUs serving no server.
        unattributed_carbon_grams_total: g CO2e of that energy, or None when carbon is off.
        gpu_energy_joules_total: GPU UUID -> energy booked for that GPU since the agent
            started, J; monotonic across driver reloads (the ledger is its only accumulator).
        events: What this advance saw that the edge should log or count (empty mostly).
        phase_fits: Per server, the input/output energy regression, where it is trusted.
    """

    models: tuple[ModelTotals, ...] = ()
    shares: tuple[GpuShare, ...] = ()
    unattributed_energy_joules_total: float = 0.0
    unattributed_energy_cost_total: float = 0.0
    unattributed_hardware_cost_total: float = 0.0
    unattributed_carbon_grams_total: float | None = None
    gpu_energy_joules_total: tuple[tuple[str, float], ...] = ()
    events: tuple[AccountingEvent, ...] = ()
    phase_fits: tuple[PhaseFit, ...] = ()


@dataclass(frozen=True, slots=True)
class CollectorHealth:
    """Health of one source in the last cycle (node_exporter's scrape_collector_* pattern).

    Attributes:
        name: ``nvml`` or ``server/<name>``.
        success: True when the source answered within its deadline.
        duration_seconds: Time the source took, s.
    """

    name: str
    success: bool
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class PricingInfo:
    """The cost settings in force, exported as ``tokenergy_pricing_info``.

    Attributes:
        currency: ISO 4217 code, e.g. ``USD``.
        electricity_per_kwh: Price of one kWh at the meter, currency/kWh.
        pue: Power usage effectiveness, >= 1.
        carbon_g_per_kwh: Grid carbon intensity, g CO2e/kWh, or None when off.
    """

    currency: str
    electricity_per_kwh: float
    pue: float
    carbon_g_per_kwh: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Immutable result of one sampling cycle; the only thing /metrics renders.

    Attributes:
        taken_at_seconds: Monotonic clock reading when the cycle completed, s.
        gpus: Status of every GPU.
        servers: Status of every configured server.
        ledger: Accounting totals and ratios.
        collectors: Per-source health of the last cycle.
        scrape_errors: ``(server, reason) -> count`` since start.
        nvml_errors: ``(gpu index, error class) -> count`` since start.
        pricing: Cost settings in force.
        window_seconds: Window of the ratio gauges, s.
        driver_version: NVIDIA driver version, when known.
        degraded: Human-readable names of degraded parts, for /healthz.
    """

    taken_at_seconds: float
    gpus: tuple[GpuStatus, ...]
    servers: tuple[ServerStatus, ...]
    ledger: LedgerTotals
    collectors: tuple[CollectorHealth, ...]
    pricing: PricingInfo
    window_seconds: float
    scrape_errors: tuple[tuple[str, str, int], ...] = ()
    nvml_errors: tuple[tuple[str, str, int], ...] = ()
    driver_version: str | None = None
    degraded: tuple[str, ...] = field(default=())
