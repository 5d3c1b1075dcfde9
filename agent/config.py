"""Configuration: one pydantic-settings root, env prefix ``TOKENERGY_``, sections behind ``__``.

Sources, highest priority first: command-line flags (passed as init values), environment
variables (``TOKENERGY_SAMPLING__INTERVAL_SECONDS=5``), an optional TOML or YAML file, defaults.
Unknown fields are errors everywhere, so a typo never silently falls back to a default.

This module reads a file only in :func:`load_settings`; validation itself is pure.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
    YamlConfigSettingsSource,
)

Engine = Literal["auto", "vllm", "sglang", "tgi", "llamacpp", "triton", "lmdeploy", "dynamo", "nim"]
ENGINES: tuple[str, ...] = get_args(Engine)

DEFAULT_PORT = 10110
"""Default HTTP port. The 9100-9999 exporter range is exhausted (see reference), so 10000+."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSettings(_Section):
    """How GPUs are read."""

    simulated: int = Field(
        0, ge=0, le=64, description="Number of simulated GPUs instead of NVML; 0 = real NVML."
    )
    interval_seconds: float = Field(
        1.0,
        gt=0,
        le=60,
        description="GPU read interval, s. Faster than scrapes so integrated power is accurate.",
    )
    read_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="Deadline of one device read, s; a hung call goes stale."
    )
    reinit_backoff_seconds: float = Field(
        1.0, gt=0, description="First wait before re-initialising NVML after a driver error, s."
    )
    reinit_backoff_max_seconds: float = Field(
        60.0, gt=0, description="Longest wait between NVML re-initialisations, s."
    )


class ServerSettings(_Section):
    """One inference server to scrape."""

    name: str = Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Unique name; the `server` label.",
    )
    url: str = Field(description="Full URL of the server's Prometheus endpoint (http or https).")
    engine: Engine = Field("auto", description="Engine profile; `auto` detects it.")
    gpus: list[int | str] | Literal["auto"] | None = Field(
        None,
        description=(
            "GPU indices or UUIDs this server uses; `auto` discovers them from processes; "
            "omitted with a single server = the GPUs named by the server process's "
            "NVIDIA_VISIBLE_DEVICES or found by process discovery, else every GPU the agent sees."
        ),
    )
    bearer_token_file: Path | None = Field(
        None, description="File holding a bearer token; re-read at every scrape."
    )
    ca_file: Path | None = Field(None, description="CA bundle to verify an https server.")
    model: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description=(
            "llama.cpp router mode (`llama-server --models-dir`): the model to scrape; adds "
            "`model=NAME&autoload=false` to the URL's query, so a scrape never loads a model."
        ),
    )
    cross_origin_redirects: bool = Field(
        False,
        description=(
            "Follow a redirect to another scheme, host or port (never with the bearer token); "
            "off by default, so a server cannot make the agent probe other addresses."
        ),
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(
                "must start with http:// or https://, e.g. http://127.0.0.1:8000/metrics"
            )
        return value


class SamplingSettings(_Section):
    """The sampling loop."""

    interval_seconds: float = Field(
        5.0, gt=0, le=300, description="Server scrape and snapshot interval, s."
    )
    window_seconds: float = Field(
        60.0, gt=0, le=3600, description="Window of the ratio gauges (tokens per joule...), s."
    )
    discovery_interval_seconds: float = Field(
        30.0, gt=0, description="How often GPU-to-server discovery runs again, s."
    )
    stale_after_intervals: int = Field(
        3, ge=1, description="/healthz answers 503 after this many intervals without a cycle."
    )

    @model_validator(mode="after")
    def _window_covers_interval(self) -> SamplingSettings:
        if self.window_seconds < self.interval_seconds:
            raise ValueError(
                f"window_seconds ({self.window_seconds}) must be >= interval_seconds "
                f"({self.interval_seconds})"
            )
        return self


class ScrapeSettings(_Section):
    """HTTP scraping of inference servers and the parser's limits."""

    connect_timeout_seconds: float = Field(1.0, gt=0, le=60, description="TCP connect timeout, s.")
    read_timeout_seconds: float = Field(
        3.0, gt=0, le=120, description="Deadline for the whole response, s."
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Largest body accepted, bytes, after decompression."
    )
    max_line_bytes: int = Field(
        256 * 1024, gt=0, description="Longest exposition line accepted, bytes."
    )
    max_series_per_family: int = Field(
        10_000, gt=0, description="Most series accepted in one metric family."
    )


class AccountingSettings(_Section):
    """Guards of the accounting: glitches, restart evidence and cardinality bounds."""

    max_tokens_per_second_per_gpu: float = Field(
        1e7,
        gt=0,
        description=(
            "Largest plausible token rate per GPU of a server, tokens/s; a counter increase "
            "above it for its interval is a glitch and is not counted."
        ),
    )
    max_phase_seconds_per_second_per_gpu: float = Field(
        1e5,
        gt=0,
        description=(
            "Largest plausible growth of a prefill/decode time counter per GPU, s/s (the "
            "requests in one phase at once); above it the increase is not counted."
        ),
    )
    max_power_ratio: float = Field(
        2.0,
        ge=1.0,
        description=(
            "An NVML energy increase above this many times the power limit over its interval "
            "is a glitch and is not counted."
        ),
    )
    start_time_tolerance_seconds: float = Field(
        10.0,
        ge=0,
        description=(
            "A server start time that moves by less than this is the same process, s (worker "
            "processes and now-minus-uptime start times differ by seconds)."
        ),
    )
    max_models_per_server: int = Field(
        100, ge=1, description="Most models tracked per server; more fold into model `_other`."
    )
    max_series_per_model: int = Field(
        512, ge=1, description="Most raw counter series (ranks, label sets) tracked per model."
    )
    max_label_length: int = Field(
        256, ge=1, description="Longest model name tracked, characters; longer ones are dropped."
    )
    model_expiry_seconds: float = Field(
        3600.0,
        gt=0,
        description=(
            "A model absent this long leaves /metrics; its totals fold into model `_other`, s."
        ),
    )


class PricingSettings(_Section):
    """Cost model settings (see README, Pricing)."""

    currency: str = Field("USD", pattern=r"^[A-Z]{3}$", description="ISO 4217 currency code.")
    electricity_per_kwh: float = Field(
        0.10, ge=0, le=10, description="Electricity price, currency per kWh at the meter."
    )
    pue: float = Field(1.3, ge=1.0, le=3.0, description="Power usage effectiveness.")
    gpu_hourly: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {
            "default": 2.00,
            "H100": 2.50,
            "H200": 3.50,
            "A100": 1.50,
            "L4": 0.70,
        },
        description=(
            "Hourly rate per GPU model, currency per GPU-hour, matched as a substring of the NVML "
            "name (longest key wins); `default` for the rest."
        ),
    )
    carbon_g_per_kwh: float = Field(
        0.0, ge=0, le=2000, description="Grid carbon intensity, g CO2e per kWh; 0 = off."
    )

    @field_validator("gpu_hourly")
    @classmethod
    def _has_default(cls, value: dict[str, float]) -> dict[str, float]:
        if "default" not in value:
            raise ValueError("must contain a `default` rate, e.g. { default = 2.0, H100 = 2.5 }")
        return value

    def hourly_rate(self, gpu_name: str) -> float:
        """Hourly rate of a GPU, matched on its NVML name.

        Args:
            gpu_name: NVML device name, e.g. ``NVIDIA H100 80GB HBM3``.

        Returns:
            Rate in currency per GPU-hour: the longest key found in the name
            (case-insensitive), else ``default``.
        """
        lowered = gpu_name.lower()
        matches = [k for k in self.gpu_hourly if k != "default" and k.lower() in lowered]
        if not matches:
            return self.gpu_hourly["default"]
        return self.gpu_hourly[max(matches, key=len)]


class HttpSettings(_Section):
    """The agent's own HTTP endpoint."""

    listen: str = Field(
        f"0.0.0.0:{DEFAULT_PORT}",
        description="ADDR:PORT to bind; [::]:PORT for IPv6. See README, Security.",
    )
    web_config_file: Path | None = Field(
        None, description="exporter-toolkit web config (TLS, basic auth), YAML."
    )
    max_connections: int = Field(
        16, ge=1, le=1024, description="Requests served at once; more wait, then get 503."
    )
    client_timeout_seconds: float = Field(
        10.0, gt=0, description="A client that sends or reads slower than this is dropped, s."
    )

    @field_validator("listen")
    @classmethod
    def _addr_port(cls, value: str) -> str:
        split_listen(value)
        return value


def split_listen(value: str) -> tuple[str, int]:
    """Split ``ADDR:PORT`` (``[::1]:PORT`` for IPv6, ``:PORT`` for all interfaces).

    Args:
        value: The listen address.

    Returns:
        The host (``0.0.0.0`` when empty) and the port.

    Raises:
        ValueError: When the value is not ADDR:PORT with a port in 0..65535.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("must be ADDR:PORT with a port in 0..65535, e.g. 127.0.0.1:10110")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


class Settings(BaseSettings):
    """The whole agent configuration."""

    model_config = SettingsConfigDict(
        env_prefix="TOKENERGY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    gpu: GpuSettings = GpuSettings()
    servers: list[ServerSettings] = Field(default_factory=list)
    sampling: SamplingSettings = SamplingSettings()
    scrape: ScrapeSettings = ScrapeSettings()
    accounting: AccountingSettings = AccountingSettings()
    pricing: PricingSettings = PricingSettings()
    http: HttpSettings = HttpSettings()

    @field_validator("servers")
    @classmethod
    def _unique_names(cls, value: list[ServerSettings]) -> list[ServerSettings]:
        names = [s.name for s in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"server names must be unique; repeated: {', '.join(dupes)}")
        return value


class ConfigError(Exception):
    """A configuration that cannot be used; ``lines`` has one message per problem."""

    def __init__(self, source: str, lines: list[str]) -> None:
        super().__init__(f"{source}: " + "; ".join(lines))
        self.source = source
        self.lines = lines


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    use_env: bool = True,
) -> Settings:
    """Build the settings from defaults, a file, the environment and overrides.

    Args:
        config_file: Optional ``.toml``, ``.yaml`` or ``.yml`` file.
        overrides: Values from command-line flags, nested dicts per section; highest priority.
        use_env: Read ``TOKENERGY_*`` environment variables (tests turn this off).

    Returns:
        Validated, frozen settings.

    Raises:
        ConfigError: When the file is missing, unreadable, malformed or invalid.
    """
    source = str(config_file) if config_file else "settings"
    file_source: type[PydanticBaseSettingsSource] | None = None
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(source, [f"no such file: {config_file}"])
        suffix = config_file.suffix.lower()
        if suffix == ".toml":
            file_source = TomlConfigSettingsSource
        elif suffix in (".yaml", ".yml"):
            file_source = YamlConfigSettingsSource
        else:
            raise ConfigError(source, [f"unknown file type {suffix!r}: use .toml, .yaml or .yml"])

    class _Loaded(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings]
            if use_env:
                sources.append(env_settings)
            if file_source is TomlConfigSettingsSource:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            elif file_source is YamlConfigSettingsSource:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    try:
        loaded = _Loaded(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None
    except (ValueError, OSError) as exc:  # malformed TOML/YAML surfaces as these
        raise ConfigError(source, [f"cannot read: {exc}"]) from None
    return Settings.model_validate(loaded.model_dump())


def _known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names accepted at ``loc``'s parent, for 'did you mean' hints."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        annotation = fields[part].annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(exc: ValidationError) -> list[str]:
    """Turn a pydantic error into lines naming the field, the bad value and what is accepted.

    Args:
        exc: The validation error.

    Returns:
        One line per problem, e.g.
        ``sampling.interval_seconds = -1: Input should be greater than 0``.
    """
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc) or "(root)"
        value = err.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _known_fields(Settings, loc)
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            accepted = f"; did you mean {hint[0]!r}?" if hint else ""
            if known:
                accepted += f" Known fields here: {', '.join(known)}"
            lines.append(f"{path}: unknown field (value {shown}){accepted}")
        elif err["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            lines.append(f"{path} = {shown}: {msg}")
    return lines
