"""Fixtures for the exporter tests: hand-built Snapshots, running servers, test certificates.

Snapshots are built by hand (no sampler, no ledger) so each test states exactly the input it
renders. Servers started through ``make_server`` are stopped at teardown even when a test
fails, so no listener or thread outlives its test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from agent.clock import ManualClock
from agent.config import HttpSettings
from agent.readings import (
    CollectorHealth,
    GpuDevice,
    GpuReading,
    GpuShare,
    GpuStatus,
    LedgerTotals,
    ModelTotals,
    PhaseFit,
    PricingInfo,
    ServerReading,
    ServerStatus,
    Snapshot,
    TokenReading,
)
from exporters.http import MetricsServer
from exporters.prometheus import SnapshotCollector, build_registry
from exporters.webconfig import WebConfig, load_web_config

LOG = logging.getLogger("tokenergy.test.http")
TAKEN_AT = 1000.0
PASSWORD = "correct horse battery staple"


def gpu(
    index: int,
    *,
    up: bool = True,
    energy_source: str = "counter",
    power_watts: float | None = 350.0,
    energy_joules_added: float = 5.0,
    error: str | None = None,
) -> GpuStatus:
    """One GPU's status with a plausible H100 reading."""
    device = GpuDevice(
        index=index,
        uuid=f"GPU-{index:04d}",
        name="NVIDIA H100 80GB HBM3",
        energy_source="counter" if energy_source == "counter" else "integrated",
    )
    reading = GpuReading(
        index=index,
        uuid=device.uuid,
        power_watts=power_watts,
        energy_joules=99_000.0,
        utilization_ratio=0.75,
        memory_used_bytes=60 * 2**30,
        memory_total_bytes=80 * 2**30,
        power_limit_watts=700.0,
    )
    return GpuStatus(
        device=device, up=up, reading=reading, energy_joules_added=energy_joules_added, error=error
    )


def server(
    name: str, engine: str, models: tuple[TokenReading, ...], *, up: bool = True
) -> ServerStatus:
    """One server's status; a down server has no reading."""
    if not up:
        return ServerStatus(name=name, up=False, reading=None, error_reason="timeout")
    return ServerStatus(name=name, up=True, reading=ServerReading(engine=engine, models=models))


def tokens(model: str, **kw: float | None) -> TokenReading:
    """A token reading with defaults for every gauge."""
    values: dict[str, Any] = {
        "input_tokens": 1000.0,
        "output_tokens": 500.0,
        "cached_input_tokens": 100.0,
        "requests_running": 3.0,
        "requests_waiting": 1.0,
        "kv_cache_usage_ratio": 0.25,
    }
    values.update(kw)
    return TokenReading(model=model, **values)


def totals(server_name: str, model: str, **kw: float | None) -> ModelTotals:
    """Ledger totals for one (server, model) with consistent defaults."""
    values: dict[str, Any] = {
        "input_tokens_total": 1000.0,
        "output_tokens_total": 500.0,
        "cached_input_tokens_total": 100.0,
        "energy_joules_total": 2500.0,
        "idle_energy_joules_total": 300.0,
        "energy_cost_total": 0.00009,
        "hardware_cost_total": 0.0021,
        "carbon_grams_total": 0.26,
        "tokens_per_joule": 0.2,
        "joules_per_token": 5.0,
        "cost_per_million_tokens": 4.38,
        "input_energy_joules_total": 600.0,
        "output_energy_joules_total": 1800.0,
        "unsplit_energy_joules_total": 100.0,
        "input_cost_total": 0.0005,
        "output_cost_total": 0.0015,
        "unsplit_cost_total": 0.00019,
        "cache_saved_energy_joules_total": 55.0,
        "cache_saved_cost_total": 0.00004,
        "kv_cache_saturated_seconds_total": 12.5,
        "phase_method": "regression",
        "input_joules_per_input_token": 0.6,
        "output_joules_per_output_token": 3.6,
        "input_cost_per_million_input_tokens": 0.5,
        "output_cost_per_million_output_tokens": 3.0,
    }
    values.update(kw)
    return ModelTotals(server=server_name, model=model, **values)


VLLM_MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def rich_snapshot(**kw: Any) -> Snapshot:
    """A Snapshot exercising every metric in the catalogue.

    Carbon is on, one GPU and one server are down, a llama.cpp server has no model label,
    and errors have been counted.
    """
    snap = Snapshot(
        taken_at_seconds=TAKEN_AT,
        gpus=(gpu(0), gpu(1, energy_source="integrated"), gpu(2, up=False, error="gpu_lost")),
        servers=(
            server("vllm", "vllm", (tokens(VLLM_MODEL), tokens("lora-a", requests_waiting=0.0))),
            server("llamacpp", "llamacpp", (tokens("", cached_input_tokens=None),)),
            server("sglang", "sglang", (), up=False),
        ),
        ledger=LedgerTotals(
            models=(
                totals("vllm", VLLM_MODEL),
                totals("vllm", "lora-a", tokens_per_joule=0.1, joules_per_token=10.0),
                totals("llamacpp", ""),
                totals(
                    "sglang",
                    "Qwen/Qwen2.5-7B-Instruct",
                    tokens_per_joule=None,
                    joules_per_token=None,
                    cost_per_million_tokens=None,
                ),
            ),
            shares=(
                GpuShare("vllm", 0, "GPU-0000", 1.0),
                GpuShare("llamacpp", 1, "GPU-0001", 0.5),
                GpuShare("sglang", 1, "GPU-0001", 0.5),
            ),
            unattributed_energy_joules_total=777.0,
            unattributed_energy_cost_total=0.00003,
            unattributed_hardware_cost_total=0.0007,
            unattributed_carbon_grams_total=0.08,
            phase_fits=(PhaseFit("vllm", 0.012, 0.0006, 0.1, 0.002, 140.0),),
            gpu_energy_joules_total=(
                ("GPU-0000", 12_345.0),
                ("GPU-0001", 12_345.0),
                ("GPU-0002", 12_345.0),
            ),
        ),
        collectors=(
            CollectorHealth("nvml", True, 0.012),
            CollectorHealth("server/vllm", True, 0.034),
            CollectorHealth("server/llamacpp", True, 0.021),
            CollectorHealth("server/sglang", False, 3.0),
        ),
        pricing=PricingInfo(
            currency="USD", electricity_per_kwh=0.1, pue=1.3, carbon_g_per_kwh=400.0
        ),
        window_seconds=60.0,
        scrape_errors=(("sglang", "timeout", 4),),
        nvml_errors=(("2", "gpu_lost", 1),),
        driver_version="550.54.15",
        degraded=("gpu 2 (GPU-0002): gpu_lost", "server sglang: timeout"),
    )
    return replace(snap, **kw)


def empty_snapshot() -> Snapshot:
    """A Snapshot of an agent that has seen nothing: no GPU, no server, no totals."""
    return Snapshot(
        taken_at_seconds=1000.0,
        gpus=(),
        servers=(),
        ledger=LedgerTotals(),
        collectors=(),
        pricing=PricingInfo(currency="USD", electricity_per_kwh=0.1, pue=1.3),
        window_seconds=30.0,
    )


class Build:
    """The builders above, handed to tests as the ``build`` fixture."""

    gpu = staticmethod(gpu)
    server = staticmethod(server)
    tokens = staticmethod(tokens)
    totals = staticmethod(totals)
    rich_snapshot = staticmethod(rich_snapshot)
    empty_snapshot = staticmethod(empty_snapshot)
    taken_at = TAKEN_AT
    vllm_model = VLLM_MODEL
    password = PASSWORD


@pytest.fixture(scope="session")
def build() -> type[Build]:
    return Build


@dataclass
class Rendered:
    """A registry over one fixed Snapshot, and the clock it reads."""

    registry: Any
    clock: ManualClock

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.registry.get_sample_value(name, labels or {})  # type: ignore[no-any-return]


@pytest.fixture
def render() -> Callable[..., Rendered]:
    """Build a registry that serves ``snapshot``; the clock starts ``age`` s after it."""

    def make(snapshot: Snapshot | None, age: float = 2.5, version: str = "1.2.3") -> Rendered:
        clock = ManualClock(start=TAKEN_AT + age)
        registry = build_registry(SnapshotCollector(lambda: snapshot, clock, version))
        return Rendered(registry, clock)

    return make


Health = Callable[[], tuple[bool, list[str]]]


@pytest.fixture
def make_server() -> Iterator[Callable[..., MetricsServer]]:
    """Start a MetricsServer on 127.0.0.1:0 (by default) rendering a rich Snapshot."""
    started: list[MetricsServer] = []

    def make(
        *,
        snapshot: Snapshot | None = None,
        health: Health | None = None,
        web_config: WebConfig | None = None,
        listen: str = "127.0.0.1:0",
        max_connections: int = 4,
        client_timeout_seconds: float = 5.0,
        **kw: Any,
    ) -> MetricsServer:
        snap = snapshot if snapshot is not None else rich_snapshot()
        clock = ManualClock(start=TAKEN_AT + 1.0)
        registry = build_registry(SnapshotCollector(lambda: snap, clock, "1.2.3"))
        settings = HttpSettings(
            listen=listen,
            max_connections=max_connections,
            client_timeout_seconds=client_timeout_seconds,
        )
        srv = MetricsServer(
            registry=registry,
            health=health or (lambda: (True, [])),
            settings=settings,
            log=LOG,
            web_config=web_config,
            **kw,
        )
        srv.start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop(grace_seconds=1.0)


@dataclass
class Certs:
    """PEM files of a test CA, a server certificate and a client certificate."""

    dir: Path
    ca: Any
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    trustme = pytest.importorskip("trustme")
    base = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    srv = ca.issue_cert("localhost", "127.0.0.1", "::1")
    srv.private_key_pem.write_to_path(str(base / "server.key"))
    srv.cert_chain_pems[0].write_to_path(str(base / "server.pem"))
    client = ca.issue_cert("scraper.example")
    client.private_key_pem.write_to_path(str(base / "client.key"))
    client.cert_chain_pems[0].write_to_path(str(base / "client.pem"))
    other = ca.issue_cert("intruder.example")
    other.private_key_pem.write_to_path(str(base / "other.key"))
    other.cert_chain_pems[0].write_to_path(str(base / "other.pem"))
    return Certs(
        dir=base,
        ca=ca,
        ca_file=base / "ca.pem",
        server_cert=base / "server.pem",
        server_key=base / "server.key",
        client_cert=base / "client.pem",
        client_key=base / "client.key",
        other_client_cert=base / "other.pem",
        other_client_key=base / "other.key",
    )


@pytest.fixture(scope="session")
def password_hash() -> str:
    """The bcrypt hash of :data:`PASSWORD` at cost 10 (exporter-toolkit's example cost)."""
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


@pytest.fixture
def write_web_config(tmp_path: Path) -> Callable[[str], WebConfig]:
    """Write a web config YAML next to nothing else and load it."""

    def make(text: str, name: str = "web.yml") -> WebConfig:
        path = tmp_path / name
        path.write_text(text)
        return load_web_config(path)

    return make
