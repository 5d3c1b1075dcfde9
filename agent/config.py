"""Configuration: one pydantic model root, env prefix ``TOKENERGY_``, sections behind ``__``.

Sources, highest priority first: command-line flags (passed as init values), environment
variables (``TOKENERGY_SAMPLING__INTERVAL_SECONDS=5``), an optional TOML or YAML file, defaults.
Unknown fields are errors everywhere, an unknown ``TOKENERGY_*`` variable included, so a typo
never silently falls back to a default.

The file and the environment are read here, not by pydantic-settings' sources, so that every
problem is one line naming its place: a syntax error with its line and column (never a
snippet of the file, which may hold a password), a variable with its name, bad JSON with its
position. Only :func:`load_settings` reads (a file, ``os.environ``); validation is pure.
Every duration has a floor (no busy loop) and a ceiling; URLs are checked as the scraper reads them.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.logs import redact
from agent.readings import PricingInfo
from agent.urls import parse_http_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

Engine = Literal["auto", "vllm", "sglang", "tgi", "llamacpp", "triton", "lmdeploy", "dynamo", "nim"]
ENGINES: tuple[str, ...] = get_args(Engine)

DEFAULT_PORT = 10110
"""Default HTTP port. The 9100-9999 exporter range is exhausted (see reference), so 10000+."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _duration(default: float, floor: float, ceiling: float, description: str) -> Any:
    """A duration field, s, with a floor (no busy loop) and a ceiling (no endless wait)."""
    return Field(default, ge=floor, le=ceiling, description=description)


def check_http_url(value: str) -> None:
    """Check a URL the way the scraper reads it: http or https, a host, a valid port.

    Args:
        value: The URL.

    Raises:
        ValueError: Naming what is wrong (the URL itself is not repeated: it may hold a
            password).
    """
    parse_http_url(value)


class GpuSettings(_Section):
    """How GPUs are read."""

    simulated: int = Field(
        0, ge=0, le=64, description="Number of simulated GPUs instead of NVML; 0 = real NVML."
    )
    interval_seconds: float = _duration(
        1.0,
        0.05,
        60,
        "GPU read interval between sampling cycles, s, while some GPU's power is integrated "
        "(no energy counter) or a GPU is down; faster than scrapes so that integration is "
        "accurate.",
    )
    read_timeout_seconds: float = _duration(
        2.0, 0.01, 60, "Deadline of one device read, s; a hung call goes stale."
    )
    reinit_backoff_seconds: float = _duration(
        1.0, 0.01, 3600, "First wait before re-initialising NVML after a driver error, s."
    )
    reinit_backoff_max_seconds: float = _duration(
        60.0, 0.1, 86400, "Longest wait between NVML re-initialisations, s."
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
        check_http_url(value)
        return value


DEFAULT_WINDOW_SECONDS = 60.0
"""Default window of the ratio gauges, s: several scrapes, yet live enough for a panel."""


class SamplingSettings(_Section):
    """The sampling loop."""

    interval_seconds: float = _duration(5.0, 0.05, 300, "Server scrape and snapshot interval, s.")
    window_seconds: float = _duration(
        DEFAULT_WINDOW_SECONDS, 0.05, 3600, "Window of the ratio gauges (tokens per joule...), s."
    )
    discovery_interval_seconds: float = _duration(
        30.0, 0.1, 86400, "How often GPU-to-server discovery runs again, s."
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

    connect_timeout_seconds: float = _duration(1.0, 0.01, 60, "TCP connect timeout, s.")
    read_timeout_seconds: float = _duration(3.0, 0.01, 120, "Deadline for the whole response, s.")
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
    kv_cache_saturated_ratio: float = Field(
        0.9,
        gt=0,
        le=1,
        description=(
            "KV-cache usage at or above which a server with waiting requests counts as "
            "saturated (tokenergy_kv_cache_saturated_seconds_total), 0..1."
        ),
    )
    phase_forgetting: float = Field(
        0.995,
        gt=0.5,
        le=1,
        description=(
            "Forgetting factor per interval of the input/output energy regression; 0.995 "
            "remembers about 200 intervals."
        ),
    )
    phase_min_intervals: int = Field(
        24, ge=3, le=100_000, description="Intervals with tokens before the regression is used."
    )
    phase_max_relative_error: float = Field(
        0.1,
        gt=0,
        le=1,
        description=(
            "Largest relative standard error of J per input and per output token for the "
            "regression to split energy; above it the time estimator (or none) is used."
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

    def info(self) -> PricingInfo:
        """The settings as exported in ``tokenergy_pricing_info`` (carbon None when off)."""
        return PricingInfo(
            currency=self.currency,
            electricity_per_kwh=self.electricity_per_kwh,
            pue=self.pue,
            carbon_g_per_kwh=self.carbon_g_per_kwh or None,
        )


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
    client_timeout_seconds: float = _duration(
        10.0, 0.1, 300, "A client that sends or reads slower than this is dropped, s."
    )
    header_timeout_seconds: float = _duration(
        5.0,
        0.1,
        60,
        "A client must finish its TLS handshake and request head this soon after connecting, "
        "s (capped at client_timeout_seconds); idle and slow connections are shed first.",
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


ENV_PREFIX = "TOKENERGY_"
OTHER_ENV_VARIABLES = frozenset({"TOKENERGY_HEALTHCHECK_URL"})
"""``TOKENERGY_*`` variables read by other tools (the container health check), not settings."""


def is_service_link(name: str) -> bool:
    """True for a Kubernetes service-link variable, which is not a setting.

    Kubernetes gives every pod ``<SERVICE>_SERVICE_HOST``, ``<SERVICE>_SERVICE_PORT[_<PORT>]``,
    ``<SERVICE>_PORT`` and ``<SERVICE>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]`` for each Service
    in its namespace: a Service named ``tokenergy`` (the DaemonSet's own) makes
    ``TOKENERGY_PORT=tcp://...``. Settings always use ``__`` between levels, so a name without
    it and of that shape is never one.

    Args:
        name: The variable's name.
    """
    upper = name.upper()
    if "__" in upper:
        return False
    if upper.endswith(("_SERVICE_HOST", "_PORT")) or "_SERVICE_PORT" in upper:
        return True
    parts = upper.split("_")
    return any(a == "PORT" and b.isdigit() for a, b in itertools.pairwise(parts))


def load_settings(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    use_env: bool = True,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, a file, the environment and overrides.

    Args:
        config_file: Optional ``.toml``, ``.yaml`` or ``.yml`` file.
        overrides: Values from command-line flags, nested dicts per section; highest priority.
        use_env: Read ``TOKENERGY_*`` environment variables (tests turn this off).
        env: The environment to read; the process's own when None.

    Returns:
        Validated, frozen settings.

    Raises:
        ConfigError: When the file is missing, unreadable, malformed or invalid, or a
            ``TOKENERGY_*`` variable is unknown or malformed. Every problem is listed.
    """
    source = str(config_file) if config_file else "settings"
    data = read_config_file(config_file) if config_file is not None else {}
    origins: dict[tuple[str, ...], str] = {}
    if use_env:
        from_env, origins, problems = settings_from_env(os.environ if env is None else env)
        if problems:
            raise ConfigError("the environment", problems)
        data = _deep_merge(data, from_env)
        if config_file is None:
            source = "the environment" if from_env else source
    data = _deep_merge(data, overrides or {})
    return validate_settings(data, source, origins)


def validate_settings(
    data: Mapping[str, Any], source: str, origins: Mapping[tuple[str, ...], str] | None = None
) -> Settings:
    """Validate merged settings data (pure: no file and no environment is read).

    Args:
        data: Sections as nested dicts.
        source: What the data came from, for the error.
        origins: Setting path -> environment variable, to name the variable in errors.

    Returns:
        The settings.

    Raises:
        ConfigError: Listing every problem.
    """
    try:
        return Settings.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc, origins=origins)) from None


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a dict of sections.

    Args:
        path: The file; its suffix picks the format.

    Returns:
        The file's top-level mapping.

    Raises:
        ConfigError: One line naming the problem: missing, a directory, unknown suffix,
            unreadable, a syntax error (with its line and column, never a snippet of the
            file, which may hold a password), or a top level that is not a mapping.
    """
    source = str(path)
    if path.is_dir():
        raise ConfigError(source, ["is a directory; give the config file itself"])
    if not path.is_file():
        raise ConfigError(source, ["no such file"])
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(source, [f"unknown file type {suffix!r}: use .toml, .yaml or .yml"])
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(source, [f"cannot read: {reason}"]) from None
    if suffix == ".toml":
        try:
            data: dict[str, Any] = tomllib.loads(text)
            return data
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"cannot read: not valid TOML: {exc}"]) from None
    raw = parse_yaml(text, source, lambda lines: ConfigError(source, lines))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            source,
            [f"the top level must be a mapping of sections, not a {type(raw).__name__}"],
        )
    return raw


def parse_yaml(text: str, source: str, error: Callable[[list[str]], Exception]) -> Any:
    """``yaml.safe_load`` whose syntax errors are one line with the line and column.

    Args:
        text: The YAML document.
        source: The file name, for the message.
        error: Builds the exception to raise from the message lines.

    Returns:
        The loaded document.

    Raises:
        Exception: What ``error`` builds, e.g. ``not valid YAML at line 3, column 9:
            expected ',' or ']', but got ':'``. PyYAML's own message quotes the
            offending lines, which may hold a password, so only its problem is kept.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or type(exc).__name__
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise error([f"not valid YAML{where}: {redact(str(problem))}"]) from None


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _models_in(annotation: Any) -> list[Any]:
    """The annotation and, for a union or Annotated, the types inside it."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Annotated:
        return _models_in(args[0])
    return [annotation, *(a for arg in args for a in _models_in(arg))]


def _is_complex(annotation: Any) -> bool:
    """Whether a value of this type comes from the environment as JSON (model, list, dict)."""
    for candidate in _models_in(annotation):
        origin = typing.get_origin(candidate)
        if origin in (list, dict, tuple, set) or candidate in (list, dict):
            return True
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return True
    return False


def _env_target(parts: list[str]) -> tuple[list[str], Any] | str:
    """Resolve ``TOKENERGY_A__B__C`` parts to field names and the field's type.

    Returns:
        (field path, annotation), or a message saying which part is unknown.
    """
    annotation: Any = Settings
    for i, part in enumerate(parts):
        candidates = _models_in(annotation)
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        dict_args = next(
            (typing.get_args(c) for c in candidates if typing.get_origin(c) is dict), None
        )
        if model is not None:
            fields = model.model_fields
            if part not in fields:
                hint = difflib.get_close_matches(part, list(fields), n=1)
                fixed = [*parts[:i], hint[0], *parts[i + 1 :]] if hint else []
                maybe = f"; did you mean {ENV_PREFIX}{'__'.join(fixed).upper()}?" if hint else ""
                return f"no setting {part!r} here{maybe}"
            annotation = fields[part].annotation
        elif dict_args is not None:
            annotation = dict_args[1] if len(dict_args) == 2 else Any
        else:
            return f"{'.'.join(parts[:i])} has no sub-setting {part!r}"
    return parts, annotation


def settings_from_env(
    env: Mapping[str, str],
) -> tuple[dict[str, Any], dict[tuple[str, ...], str], list[str]]:
    """Read ``TOKENERGY_SECTION__FIELD`` variables into nested settings data.

    Names are case-insensitive; ``__`` separates levels; lists, dicts and whole sections
    are JSON (``TOKENERGY_SERVERS='[{"name": "a", "url": "..."}]'``). Values are never
    echoed in errors: they may be secrets.

    Args:
        env: The environment.

    Returns:
        (data, setting path -> variable name, one problem line per unknown or malformed
        variable).
    """
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in OTHER_ENV_VARIABLES:
            continue
        if is_service_link(name):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(parts):
            problems.append(f"{name}: malformed name; use {ENV_PREFIX}SECTION__FIELD")
            continue
        target = _env_target(parts)
        if isinstance(target, str):
            problems.append(f"{name}: unknown setting: {target}")
            continue
        path, annotation = target
        value: Any = env[name]
        if _is_complex(annotation):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                problems.append(
                    f"{name}: not valid JSON at line {exc.lineno}, column {exc.colno} "
                    f"(character {exc.pos}): {exc.msg}"
                )
                continue
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{name}: conflicts with another variable setting {part!r}")
                break
            node = child
        else:
            node[path[-1]] = value
            origins[tuple(path)] = name
    return data, origins, problems


def _known_fields(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """Field names accepted at ``loc``'s parent, for 'did you mean' hints."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", {})
        if part not in fields:
            return []
        current = next(
            (
                c
                for c in _models_in(fields[part].annotation)
                if isinstance(c, type) and issubclass(c, BaseModel)
            ),
            None,
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(
    exc: ValidationError,
    *,
    model: type[BaseModel] | None = None,
    secret: Callable[[tuple[int | str, ...]], bool] = lambda loc: False,
    origins: Mapping[tuple[str, ...], str] | None = None,
) -> list[str]:
    """Turn a pydantic error into lines naming the field, the bad value and what is accepted.

    The one formatter for the agent's settings and the web config file.

    Args:
        exc: The validation error.
        model: The root model, for 'did you mean' hints on unknown fields (the settings
            when None).
        secret: Whether the value at a location must never be shown (e.g. passwords).
        origins: Setting path -> environment variable it came from, named in the line.

    Returns:
        One line per problem, e.g.
        ``sampling.interval_seconds = -1: Input should be greater than or equal to 0.05``.
        Values are shortened and passwords in URLs masked.
    """
    root = Settings if model is None else model
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        hidden = secret(loc)
        shown = "(hidden)" if hidden else redact(repr(err.get("input")))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = str(err["msg"]).removeprefix("Value error, ")
        origin = _origin(loc, origins or {})
        if err["type"] == "extra_forbidden":
            known = _known_fields(root, loc)
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            accepted = f"; did you mean {hint[0]!r}?" if hint else ""
            if known:
                accepted += f" Known fields here: {', '.join(known)}"
            value = "" if hidden else f" (value {shown})"
            line = f"{path}: unknown field{value}{accepted}"
        elif err["type"] == "missing":
            line = f"{path}: required field is missing"
        elif hidden:
            line = f"{path}: {msg} (value hidden)"
        else:
            line = f"{path} = {shown}: {msg}"
        lines.append(line + (f" (from {origin})" if origin else ""))
    return lines


def _origin(loc: tuple[int | str, ...], origins: Mapping[tuple[str, ...], str]) -> str | None:
    keys = tuple(str(p) for p in loc)
    for size in range(len(keys), 0, -1):
        if keys[:size] in origins:
            return origins[keys[:size]]
    return None
