"""The metric catalogue: every series tokenergy exports, in one table.

This table is the contract that dashboards, recording rules, alerts and tests depend on
(exporters/README.md lists it). The Prometheus collector can only emit what is listed here,
and the README's metric table is generated from it (:func:`render_markdown_table`) and checked
against it by a test.

Naming follows the Prometheus guides: prefix ``tokenergy_``, base units with a plural unit
suffix (joules, watts, bytes, seconds, grams, ratio), ``_total`` on counters, ``_info`` gauges
of value 1 for metadata, no colons, no hostname-like labels. Help strings name the unit, the
source (the NVML call or the engine's own metric) and, for windowed ratios, the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter"]

WINDOW_PLACEHOLDER = "{window}"
"""Stands for the ratio window in help templates, e.g. ``the last 60 s``."""


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exported metric family.

    Attributes:
        name: Full exposed name with prefix and, for counters, the ``_total`` suffix.
        type: ``gauge`` or ``counter``.
        unit: OpenMetrics unit, a suffix of the name (``joules``...), or "" for none.
        labels: Label names, in exposition order.
        help: Help text; may contain :data:`WINDOW_PLACEHOLDER`.
    """

    name: str
    type: MetricType
    unit: str
    labels: tuple[str, ...]
    help: str

    def help_text(self, window_seconds: float) -> str:
        """The help string with the ratio window filled in.

        Args:
            window_seconds: Window of the ratio gauges, s.

        Returns:
            Help text, e.g. ``... over the last 60 s ...``.
        """
        return self.help.replace(WINDOW_PLACEHOLDER, f"the last {window_seconds:g} s")


_GPU = ("gpu", "uuid")
_MODEL = ("server", "model")
_NO_TOKENS = "absent when the window has no output tokens"

METRICS: tuple[MetricSpec, ...] = (
    # -- the agent itself ------------------------------------------------------------------
    MetricSpec(
        "tokenergy_build_info",
        "gauge",
        "",
        ("version",),
        "Version of this tokenergy agent; always 1.",
    ),
    MetricSpec(
        "tokenergy_sample_age_seconds",
        "gauge",
        "seconds",
        (),
        "Age in s of the sampling cycle being served (monotonic time since it completed); "
        "absent before the first cycle.",
    ),
    MetricSpec(
        "tokenergy_nvml_up",
        "gauge",
        "",
        (),
        "1 when NVML is initialised and answered in the last cycle, else 0.",
    ),
    # -- GPUs ------------------------------------------------------------------------------
    MetricSpec(
        "tokenergy_gpu_info",
        "gauge",
        "",
        ("gpu", "uuid", "name", "energy_source"),
        "GPU identity from NVML (index, UUID, name) and the source of its energy: counter "
        "(nvmlDeviceGetTotalEnergyConsumption) or integrated (power integrated over time); "
        "always 1.",
    ),
    MetricSpec(
        "tokenergy_gpu_up",
        "gauge",
        "",
        _GPU,
        "1 when the last NVML read of the GPU succeeded within its deadline, else 0.",
    ),
    MetricSpec(
        "tokenergy_gpu_power_watts",
        "gauge",
        "watts",
        _GPU,
        "Board power draw in W at the last read (NVML nvmlDeviceGetPowerUsage); "
        "absent while the GPU is down.",
    ),
    MetricSpec(
        "tokenergy_gpu_energy_joules_total",
        "counter",
        "joules",
        _GPU,
        "Energy used by the GPU in J since the agent started: NVML energy counter deltas "
        "(nvmlDeviceGetTotalEnergyConsumption), or integrated power where the counter is "
        "unsupported; monotonic across driver reloads.",
    ),
    MetricSpec(
        "tokenergy_gpu_utilization_ratio",
        "gauge",
        "ratio",
        _GPU,
        "GPU utilization 0..1: fraction of NVML's last sample period (1/6 s to 1 s) with a "
        "kernel running (nvmlDeviceGetUtilizationRates); absent while the GPU is down.",
    ),
    MetricSpec(
        "tokenergy_gpu_memory_used_bytes",
        "gauge",
        "bytes",
        _GPU,
        "Device memory in use in bytes, reserved plus allocated (NVML nvmlDeviceGetMemoryInfo); "
        "absent while the GPU is down.",
    ),
    MetricSpec(
        "tokenergy_gpu_memory_total_bytes",
        "gauge",
        "bytes",
        _GPU,
        "Device memory size in bytes (NVML nvmlDeviceGetMemoryInfo); absent while the GPU is down.",
    ),
    MetricSpec(
        "tokenergy_gpu_power_limit_watts",
        "gauge",
        "watts",
        _GPU,
        "Enforced power limit in W (NVML nvmlDeviceGetEnforcedPowerLimit); "
        "absent while the GPU is down.",
    ),
    # -- inference servers -----------------------------------------------------------------
    MetricSpec(
        "tokenergy_server_up",
        "gauge",
        "",
        ("server",),
        "1 when the last scrape of the server's metrics endpoint succeeded and parsed, else 0.",
    ),
    MetricSpec(
        "tokenergy_server_info",
        "gauge",
        "",
        ("server", "engine", "model"),
        "Engine profile and served model of a server, from its last successful scrape; always 1.",
    ),
    MetricSpec(
        "tokenergy_server_gpu_share",
        "gauge",
        "",
        ("server", "gpu", "uuid"),
        "Fraction 0..1 of the GPU's energy attributed to the server (by per-process "
        "utilization where NVML reports it, else evenly).",
    ),
    MetricSpec(
        "tokenergy_server_requests",
        "gauge",
        "",
        ("server", "model", "state"),
        "Requests in the server at its last scrape, state=running or waiting (queued), "
        "from the engine's own gauges; absent when the engine does not report them.",
    ),
    MetricSpec(
        "tokenergy_server_kv_cache_usage_ratio",
        "gauge",
        "ratio",
        _MODEL,
        "KV-cache usage 0..1 at the server's last scrape, from the engine's own gauge; "
        "absent when the engine does not report it.",
    ),
    # -- tokens, energy, cost per (server, model) ------------------------------------------
    MetricSpec(
        "tokenergy_tokens_total",
        "counter",
        "",
        ("server", "model", "type"),
        "Tokens processed by the model, type=input (prompt) or output (generated), counted "
        "from the server's own counters; monotonic across server restarts.",
    ),
    MetricSpec(
        "tokenergy_cached_input_tokens_total",
        "counter",
        "",
        _MODEL,
        "Prompt tokens served from the prefix/prompt cache, part of type=input; stays 0 "
        "where the engine does not report cache hits.",
    ),
    MetricSpec(
        "tokenergy_energy_joules_total",
        "counter",
        "joules",
        _MODEL,
        "GPU energy in J attributed to the model on the server: each GPU's energy times the "
        "server's share, split among the server's models by their tokens.",
    ),
    MetricSpec(
        "tokenergy_idle_energy_joules_total",
        "counter",
        "joules",
        _MODEL,
        "Part of tokenergy_energy_joules_total, in J, spent over intervals in which the "
        "server produced no tokens.",
    ),
    MetricSpec(
        "tokenergy_cost_total",
        "counter",
        "",
        ("server", "model", "component"),
        "Cost attributed to the model, in the currency of tokenergy_pricing_info: "
        "component=energy (kWh x PUE x price per kWh) or hardware (GPU-hours by share x "
        "hourly rate).",
    ),
    MetricSpec(
        "tokenergy_carbon_grams_total",
        "counter",
        "grams",
        _MODEL,
        "Emissions in g CO2e attributed to the model (kWh x PUE x carbon intensity); "
        "only when a carbon intensity is set.",
    ),
    MetricSpec(
        "tokenergy_unattributed_energy_joules_total",
        "counter",
        "joules",
        (),
        "GPU energy in J of GPUs, or shares of GPUs, that serve no configured server.",
    ),
    MetricSpec(
        "tokenergy_unattributed_cost_total",
        "counter",
        "",
        ("component",),
        "Cost of GPUs, or shares of GPUs, that serve no server, in the currency of "
        "tokenergy_pricing_info: component=energy or hardware.",
    ),
    MetricSpec(
        "tokenergy_unattributed_carbon_grams_total",
        "counter",
        "grams",
        (),
        "Emissions in g CO2e of the unattributed GPU energy; only when a carbon intensity is set.",
    ),
    MetricSpec(
        "tokenergy_tokens_per_joule",
        "gauge",
        "",
        _MODEL,
        f"Output tokens per J over {WINDOW_PLACEHOLDER} (= tokens/s per W); {_NO_TOKENS}.",
    ),
    MetricSpec(
        "tokenergy_joules_per_token",
        "gauge",
        "",
        _MODEL,
        f"J per output token over {WINDOW_PLACEHOLDER}; {_NO_TOKENS}.",
    ),
    MetricSpec(
        "tokenergy_cost_per_million_tokens",
        "gauge",
        "",
        _MODEL,
        f"All cost (energy + hardware) per million output tokens over {WINDOW_PLACEHOLDER}, "
        f"in the currency of tokenergy_pricing_info; {_NO_TOKENS}.",
    ),
    # -- where the cost goes: input vs output, prompt cache, memory pressure ---------------
    MetricSpec(
        "tokenergy_phase_energy_joules_total",
        "counter",
        "joules",
        (*_MODEL, "phase"),
        "Part of tokenergy_energy_joules_total in J taken by phase=input (prefill) or output "
        "(decode), or unsplit while no estimator can split it (tokenergy_phase_split_info); "
        "the three add up to tokenergy_energy_joules_total.",
    ),
    MetricSpec(
        "tokenergy_phase_cost_total",
        "counter",
        "",
        (*_MODEL, "phase"),
        "Part of tokenergy_cost_total (energy + hardware) taken by phase=input, output or "
        "unsplit, in the currency of tokenergy_pricing_info.",
    ),
    MetricSpec(
        "tokenergy_cache_saved_energy_joules_total",
        "counter",
        "joules",
        _MODEL,
        "Energy in J the prompt cache saved: cached input tokens times the measured energy of "
        "a computed input token.",
    ),
    MetricSpec(
        "tokenergy_cache_saved_cost_total",
        "counter",
        "",
        _MODEL,
        "Cost the prompt cache saved: tokenergy_cache_saved_energy_joules_total at the "
        "interval's cost per joule, in the currency of tokenergy_pricing_info.",
    ),
    MetricSpec(
        "tokenergy_kv_cache_saturated_seconds_total",
        "counter",
        "seconds",
        _MODEL,
        "Time in s the server's KV cache was at or above accounting.kv_cache_saturated_ratio "
        "while requests waited: memory-bound, batches cannot grow.",
    ),
    MetricSpec(
        "tokenergy_joules_per_input_token",
        "gauge",
        "",
        _MODEL,
        f"Input (prefill) energy in J per input token over {WINDOW_PLACEHOLDER}; absent when "
        "the window has no input tokens or no split energy.",
    ),
    MetricSpec(
        "tokenergy_joules_per_output_token",
        "gauge",
        "",
        _MODEL,
        f"Output (decode) energy in J per output token over {WINDOW_PLACEHOLDER} "
        "(tokenergy_joules_per_token counts all energy); absent when the window has no "
        "output tokens or no split energy.",
    ),
    MetricSpec(
        "tokenergy_cost_per_million_input_tokens",
        "gauge",
        "",
        _MODEL,
        f"Input part of the cost per million input tokens over {WINDOW_PLACEHOLDER}, in the "
        "currency of tokenergy_pricing_info; absent without input tokens or split energy.",
    ),
    MetricSpec(
        "tokenergy_cost_per_million_output_tokens",
        "gauge",
        "",
        _MODEL,
        f"Output part of the cost per million output tokens over {WINDOW_PLACEHOLDER}, in "
        "the currency of tokenergy_pricing_info; absent without output tokens or split energy.",
    ),
    MetricSpec(
        "tokenergy_output_input_cost_factor",
        "gauge",
        "",
        _MODEL,
        "How many input tokens one output token costs over "
        f"{WINDOW_PLACEHOLDER}: tokenergy_cost_per_million_output_tokens / "
        "tokenergy_cost_per_million_input_tokens.",
    ),
    MetricSpec(
        "tokenergy_phase_split_info",
        "gauge",
        "",
        (*_MODEL, "method"),
        "How the last interval's energy was split between input and output: method=regression "
        "(energy fitted on computed input and output tokens), time (the engine's prefill and "
        "decode times) or none (unsplit); always 1.",
    ),
    MetricSpec(
        "tokenergy_marginal_joules_per_token",
        "gauge",
        "",
        ("server", "phase"),
        "Energy in J of one more computed input (phase=input) or output (phase=output) "
        "token, from the server's regression of energy on tokens; only while its standard "
        "error is small enough to trust.",
    ),
    MetricSpec(
        "tokenergy_marginal_joules_per_token_stderr",
        "gauge",
        "",
        ("server", "phase"),
        "Standard error in J of tokenergy_marginal_joules_per_token.",
    ),
    MetricSpec(
        "tokenergy_pricing_info",
        "gauge",
        "",
        ("currency", "electricity_per_kwh", "pue", "carbon_g_per_kwh"),
        "Cost settings in force: ISO 4217 currency, electricity price per kWh, PUE, carbon "
        "intensity in g CO2e per kWh (0 = off); always 1.",
    ),
    # -- health of the sources -------------------------------------------------------------
    MetricSpec(
        "tokenergy_collector_success",
        "gauge",
        "",
        ("collector",),
        "1 when the source (nvml or server/<name>) answered within its deadline in the last "
        "cycle, else 0.",
    ),
    MetricSpec(
        "tokenergy_collector_duration_seconds",
        "gauge",
        "seconds",
        ("collector",),
        "Time in s the source (nvml or server/<name>) took in the last cycle.",
    ),
    MetricSpec(
        "tokenergy_scrape_errors_total",
        "counter",
        "",
        ("server", "reason"),
        "Failed scrapes of a server since the agent started, by reason: timeout, dns, refused, "
        "http_status, too_large, parse, error; and values the accounting refused: implausible "
        "(a counter increase above the configured ceiling, not counted), too_many_models, "
        "too_many_series, label_too_long (models or series not tracked, per scrape).",
    ),
    MetricSpec(
        "tokenergy_nvml_errors_total",
        "counter",
        "",
        ("gpu", "error"),
        "NVML errors since the agent started, by GPU index and error class.",
    ),
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}

_TABLE_WINDOW = "the ratio window (`sampling.window_seconds`, default 60 s)"


def render_markdown_table() -> str:
    """exporters/README.md's metric table, generated from :data:`METRICS`.

    Returns:
        A GitHub-flavoured Markdown table (name, type, unit, labels, help), one row per
        metric, ending in a newline.
    """
    lines = [
        "| metric | type | unit | labels | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in METRICS:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        unit = spec.unit or "—"
        text = spec.help.replace(WINDOW_PLACEHOLDER, _TABLE_WINDOW).replace("|", "\\|")
        lines.append(f"| `{spec.name}` | {spec.type} | {unit} | {labels} | {text} |")
    return "\n".join(lines) + "\n"
