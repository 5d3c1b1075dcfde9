"""Configuration: sources and their priority, validation messages, check-config."""

import io
from pathlib import Path

import pytest

from agent.cli import check_config
from agent.config import ConfigError, PricingSettings, load_settings, split_listen

GOOD = """
[sampling]
interval_seconds = 5
window_seconds = 120

[pricing]
currency = "EUR"
electricity_per_kwh = 0.2
gpu_hourly = { default = 1.0, H100 = 2.5, "H100 NVL" = 3.0 }

[[servers]]
name = "llama-8b"
url = "http://127.0.0.1:8000/metrics"
engine = "vllm"
gpus = [0, "GPU-abc"]
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_file_is_read(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, GOOD), use_env=False)
    assert settings.sampling.window_seconds == 120
    assert settings.pricing.currency == "EUR"
    assert settings.servers[0].gpus == [0, "GPU-abc"]
    # Untouched sections keep their defaults.
    assert settings.http.listen == "0.0.0.0:10110"


def test_yaml_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, "sampling:\n  interval_seconds: 2\n", "c.yaml")
    assert load_settings(path, use_env=False).sampling.interval_seconds == 2


def test_priority_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("TOKENERGY_SAMPLING__INTERVAL_SECONDS", "7")
    monkeypatch.setenv("TOKENERGY_HTTP__LISTEN", "127.0.0.1:1")
    settings = load_settings(path, {"http": {"listen": "127.0.0.1:2"}})
    assert settings.sampling.interval_seconds == 7  # env beats file
    assert settings.sampling.window_seconds == 120  # file value kept where env is silent
    assert settings.http.listen == "127.0.0.1:2"  # flag beats env


def test_servers_from_env_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TOKENERGY_SERVERS", '[{"name": "a", "url": "http://127.0.0.1:8000/metrics"}]'
    )
    assert load_settings().servers[0].name == "a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[sampling]\ninterval_secnds = 5\n", "sampling.interval_secnds: unknown field"),
        ("[sampling]\ninterval_secnds = 5\n", "did you mean 'interval_seconds'"),
        ("[pricing]\npue = 0.5\n", "pricing.pue = 0.5: Input should be greater than or equal to 1"),
        ("[pricing]\ncurrency = 'dollars'\n", "pricing.currency = 'dollars'"),
        ("[pricing]\ngpu_hourly = { H100 = 2.0 }\n", "must contain a `default` rate"),
        ("[http]\nlisten = 'localhost'\n", "http.listen = 'localhost': must be ADDR:PORT"),
        ("[[servers]]\nname = 'a'\nurl = 'ftp://x'\n", "servers.0.url = 'ftp://x'"),
        ("[[servers]]\nname = 'a'\n", "servers.0.url: required field is missing"),
        (
            "[[servers]]\nname='a'\nurl='http://x/'\n[[servers]]\nname='a'\nurl='http://y/'\n",
            "server names must be unique; repeated: a",
        ),
        ("[[servers]]\nname='a'\nurl='http://x/'\nengine='vllmm'\n", "servers.0.engine = 'vllmm'"),
        (
            "[sampling]\ninterval_seconds = 30\nwindow_seconds = 10\n",
            "window_seconds (10.0) must be >= interval_seconds (30.0)",
        ),
        ("[tpyo]\nx = 1\n", "tpyo: unknown field"),
        ("[sampling\n", "cannot read"),
    ],
)
def test_errors_name_field_value_and_fix(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), use_env=False)
    assert any(expected in line for line in caught.value.lines), caught.value.lines


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="unknown file type"):
        load_settings(write(tmp_path, "", "c.ini"))


def test_check_config_reports_every_problem(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    bad = write(tmp_path, "[pricing]\npue = 0\nelectricity_per_kwh = -1\n")
    assert check_config(bad, out, err) == 1
    assert "2 problem(s)" in err.getvalue()
    assert "pricing.pue = 0" in err.getvalue()
    assert "pricing.electricity_per_kwh = -1" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert check_config(write(tmp_path, GOOD), out, err) == 0
    assert "OK" in out.getvalue() and "llama-8b (vllm)" in out.getvalue()


@pytest.mark.parametrize(
    ("name", "rate"),
    [
        ("NVIDIA H100 80GB HBM3", 2.5),
        ("NVIDIA H100 NVL", 3.0),  # the longest matching key wins
        ("NVIDIA L4", 1.0),
        ("nvidia h100 pcie", 2.5),  # case-insensitive
    ],
)
def test_hourly_rate_matches_nvml_name(name: str, rate: float) -> None:
    pricing = PricingSettings(gpu_hourly={"default": 1.0, "H100": 2.5, "H100 NVL": 3.0})
    assert pricing.hourly_rate(name) == rate


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:9", ("127.0.0.1", 9)), (":10110", ("0.0.0.0", 10110)), ("[::1]:80", ("::1", 80))],
)
def test_split_listen(value: str, expected: tuple[str, int]) -> None:
    assert split_listen(value) == expected


@pytest.mark.parametrize("value", ["nohost", "a:b", "a:70000"])
def test_split_listen_rejects(value: str) -> None:
    with pytest.raises(ValueError, match="ADDR:PORT"):
        split_listen(value)


# -- issue 12: bounds, URLs, the environment, file syntax, secrets -----------------------------


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [
        ("sampling", "interval_seconds", 1e-6),
        ("sampling", "interval_seconds", 301),
        ("gpu", "interval_seconds", 0.001),
        ("gpu", "read_timeout_seconds", 1e-9),
        ("gpu", "reinit_backoff_max_seconds", 1e9),
        ("scrape", "connect_timeout_seconds", 0.0),
        ("scrape", "read_timeout_seconds", 1e6),
        ("http", "client_timeout_seconds", 1e-9),
        ("http", "header_timeout_seconds", 3600),
        ("sampling", "discovery_interval_seconds", float("inf")),
        ("sampling", "window_seconds", float("nan")),
    ],
)
def test_every_duration_has_a_floor_and_a_ceiling(section: str, field: str, value: float) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {section: {field: value}}, use_env=False)
    assert any(line.startswith(f"{section}.{field} = ") for line in caught.value.lines)


@pytest.mark.parametrize(
    "url", ["HTTP://127.0.0.1:8000/metrics", "Https://h/m", "http://[::1]:8000/metrics"]
)
def test_urls_the_scraper_reads_are_accepted(url: str) -> None:
    settings = load_settings(None, {"servers": [{"name": "a", "url": url}]}, use_env=False)
    assert settings.servers[0].url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1/metrics", "not a valid URL"),
        ("ftp://x/m", "must start with http:// or https://"),
        ("http:///m", "has no host"),
        ("http://h:70000/m", "port 70000 is not in 1..65535"),
        ("127.0.0.1:8000/metrics", "must start with http:// or https://"),
        ("http://h:0/m", "port 0 is not in 1..65535"),
        ("http://h:x8/m", "port 'x8' is not a number"),
        ("http://h/two words", "spaces or control characters in the URL"),
    ],
)
def test_urls_the_scraper_cannot_use_are_refused(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"servers": [{"name": "a", "url": url}]}, use_env=False)
    assert reason in caught.value.lines[0], caught.value.lines


def test_url_password_is_masked_in_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            None, {"servers": [{"name": "a", "url": "http://u:pw-9431@[::1/m"}]}, use_env=False
        )
    assert "pw-9431" not in str(caught.value) and "u:***@" in str(caught.value)


def test_environment_sections_fields_dicts_and_json() -> None:
    env = {
        "TOKENERGY_SAMPLING__INTERVAL_SECONDS": "7",
        "tokenergy_http__listen": "127.0.0.1:5",
        "TOKENERGY_PRICING__GPU_HOURLY__DEFAULT": "3",
        "TOKENERGY_PRICING__GPU_HOURLY__H100": "4",
        "TOKENERGY_SERVERS": '[{"name": "a", "url": "http://127.0.0.1:1/metrics"}]',
        "TOKENERGY_HEALTHCHECK_URL": "http://127.0.0.1:1/healthz",  # the health check's own
        "OTHER": "x",
    }
    settings = load_settings(None, env=env)
    assert settings.sampling.interval_seconds == 7
    assert settings.http.listen == "127.0.0.1:5"
    assert settings.pricing.gpu_hourly == {"default": 3.0, "h100": 4.0}
    assert settings.servers[0].name == "a"


SUGGESTED = "did you mean TOKENERGY_SAMPLING__INTERVAL_SECONDS?"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TOKENERGY_SAMPLNG__INTERVAL_SECONDS", "5", SUGGESTED),
        ("TOKENERGY_SAMPLING__INTERVAL_SECS", "5", SUGGESTED),
        ("TOKENERGY_SAMPLING__INTERVAL_SECONDS__X", "5", "interval_seconds has no sub-setting 'x'"),
        ("TOKENERGY_SAMPLING____X", "5", "malformed name"),
        ("TOKENERGY_SERVERS", '[{"name": "a",}]', "not valid JSON at line 1, column 15"),
        ("TOKENERGY_HTTP", "{", "not valid JSON at line 1, column 2"),
    ],
)
def test_environment_problems_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={name: value})
    assert caught.value.source == "the environment"
    assert caught.value.lines[0].startswith(f"{name}: ") and expected in caught.value.lines[0]


def test_bad_environment_value_names_its_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"TOKENERGY_HTTP__MAX_CONNECTIONS": "many"})
    assert caught.value.lines[0].startswith("http.max_connections = 'many'")
    assert caught.value.lines[0].endswith("(from TOKENERGY_HTTP__MAX_CONNECTIONS)")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sampling:\n  interval_seconds: [5\n", "not valid YAML at line 3, column 1:"),
        ("password: pw-777: x\n", "not valid YAML at line 1, column 17: mapping values"),
        ("- a\n", "the top level must be a mapping of sections, not a list"),
        ("just text\n", "the top level must be a mapping of sections, not a str"),
    ],
)
def test_yaml_errors_are_one_line_with_position_and_no_snippet(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text, "c.yaml"), use_env=False)
    assert caught.value.lines == [caught.value.lines[0]] and expected in caught.value.lines[0]
    assert "pw-777" not in str(caught.value)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_settings(tmp_path, use_env=False)


def test_check_config_applies_the_environment_it_is_given(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    path = write(tmp_path, GOOD)
    env = {"TOKENERGY_SAMPLING__INTERVAL_SECONDS": "0.01"}
    assert check_config(path, out, err, env=env) == 1
    assert "sampling.interval_seconds = '0.01'" in err.getvalue()
    assert "TOKENERGY_SAMPLING__INTERVAL_SECONDS" in err.getvalue()
    out, err = io.StringIO(), io.StringIO()
    assert check_config(path, out, err, env={"TOKENERGY_SAMPLING__INTERVAL_SECONDS": "9"}) == 0
    assert "sampling every 9 s" in out.getvalue()
    assert "environment: TOKENERGY_SAMPLING__INTERVAL_SECONDS" in out.getvalue()


def test_the_engine_choices_are_the_profiles() -> None:
    # The config's Literal and the profiles' table are written apart: this keeps them one list.
    from typing import get_args

    from agent.config import Engine
    from agent.servers.profiles import ENGINE_NAMES

    assert set(get_args(Engine)) == {"auto", *ENGINE_NAMES}


def test_kubernetes_service_links_of_a_service_named_tokenergy_are_not_settings() -> None:
    # The DaemonSet's own Service is named tokenergy: every pod in its namespace gets these.
    from agent.config import load_settings

    links = {
        "TOKENERGY_PORT": "tcp://10.0.0.7:10110",
        "TOKENERGY_SERVICE_HOST": "10.0.0.7",
        "TOKENERGY_SERVICE_PORT": "10110",
        "TOKENERGY_SERVICE_PORT_METRICS": "10110",
        "TOKENERGY_PORT_10110_TCP": "tcp://10.0.0.7:10110",
        "TOKENERGY_PORT_10110_TCP_PROTO": "tcp",
        "TOKENERGY_PORT_10110_TCP_PORT": "10110",
        "TOKENERGY_PORT_10110_TCP_ADDR": "10.0.0.7",
        "TOKENERGY_GRAFANA_SERVICE_HOST": "10.0.0.8",
    }
    settings = load_settings(None, None, env={**links, "TOKENERGY_SAMPLING__WINDOW_SECONDS": "30"})
    assert settings.sampling.window_seconds == 30
    # A misspelt section is still refused.
    with pytest.raises(ConfigError):
        load_settings(None, None, env={**links, "TOKENERGY_SAMPLNG__INTERVAL_SECONDS": "5"})
