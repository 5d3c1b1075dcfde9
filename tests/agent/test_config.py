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
