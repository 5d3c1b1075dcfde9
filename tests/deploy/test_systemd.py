"""The systemd unit: verified by systemd itself where available, hardened, and wired to the CLI."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/tokenergy.service"
EXPOSURE_MAX = 2.0
"""Highest `systemd-analyze security` exposure accepted (0 = locked down, 10 = unprotected)."""


def directives(section: str) -> list[tuple[str, str]]:
    """(key, value) pairs of one section, in order; repeated keys kept (systemd allows them)."""
    current = None
    found: list[tuple[str, str]] = []
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            continue
        if current == section:
            key, _, value = line.partition("=")
            found.append((key.strip(), value.strip()))
    return found


def values(key: str, section: str = "Service") -> list[str]:
    return [v for k, v in directives(section) if k == key]


def one(key: str, section: str = "Service") -> str:
    (value,) = values(key, section)
    return value


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("DevicePolicy", "closed"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("ProtectKernelModules", "yes"),
        ("RestrictSUIDSGID", "yes"),
    ],
)
def test_hardening_directive(key: str, expected: str) -> None:
    assert one(key) == expected


def test_devices_are_the_nvidia_groups_only() -> None:
    """Only the NVIDIA device groups NVML needs.

    rw on major 195 (named nvidia, or nvidia-frontend on older drivers), read on nvidia-caps for
    MIG; nothing else, and PrivateDevices would hide them all.
    """
    assert values("DeviceAllow") == [
        "char-nvidia rw",
        "char-nvidia-frontend rw",
        "char-nvidia-caps r",
    ]
    assert values("PrivateDevices") in ([], ["no"])


def test_execstart_parses_with_the_cli_and_reads_the_example_config() -> None:
    argv = shlex.split(one("ExecStart"))
    assert argv[0] == "/usr/local/bin/tokenergy"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run"
    assert args.config == Path("/etc/tokenergy/config.toml")
    assert f"deploy/systemd/config.toml {args.config}" in UNIT.read_text()  # the install line
    load_settings(ROOT / "deploy/systemd/config.toml", use_env=False)
    assert one("EnvironmentFile").startswith("-"), "the environment file must stay optional"


def _unit_with_real_binary(tmp_path: Path) -> Path:
    """A copy whose ExecStart names an executable that exists here (verify checks it)."""
    binary = Path(sys.executable).parent / "tokenergy"
    if not binary.is_file():
        pytest.skip("the tokenergy console script is not installed in this environment")
    copy = tmp_path / "tokenergy.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/tokenergy", str(binary)))
    return copy


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    unit = _unit_with_real_binary(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False
    )
    # verify exits 0 on unknown keys and bad values too, printing a warning: both must be clean.
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if unit.name in line]
    assert warnings == []


def test_systemd_analyze_security_exposure_is_low(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (apt-get install systemd)")
    unit = _unit_with_real_binary(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    if "--offline" in result.stderr or "Unknown option" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd >= 250")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    assert float(match.group(1)) <= EXPOSURE_MAX, result.stdout
