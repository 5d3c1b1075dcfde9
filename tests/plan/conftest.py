"""A real Prometheus scraping two demo agents, for `tokenergy plan`; and a PNG reader.

The stack mirrors tests/dashboards' end-to-end harness (same demo commands, same shortened
copy of dashboards/prometheus/rules.yml: ``[5m]`` -> ``[20s]``, ``[1h]`` -> ``[30s]`` against
a 1 s scrape and evaluation interval), reduced to what `plan` needs: one Prometheus.
Helpers are handed out by fixtures: test modules are imported with ``--import-mode=importlib``
and cannot import each other.
"""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = ROOT / "dashboards" / "prometheus" / "rules.yml"
SHORT_RANGES = {"5m": "20s", "10m": "25s", "1h": "30s"}
DEMO_SECONDS = 45
SEEDS = (1, 2)


@dataclass(frozen=True)
class PromStack:
    url: str
    client: httpx.Client
    instances: tuple[str, ...]
    t: float
    """An instant just before the agents stopped, Unix s: every range below 30 s ends in the run."""

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.client.get("/api/v1/query", params={"query": expr, "time": f"{self.t:.3f}"})
        data = body.json()
        assert data["status"] == "success", (expr, data)
        result: list[dict[str, Any]] = data["data"]["result"]
        return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _short_rules() -> str:
    def replace(match: re.Match[str]) -> str:
        return f"[{SHORT_RANGES[match.group(1)]}]"

    return re.sub(r"\[(\w+)\]", replace, RULES_FILE.read_text())


@pytest.fixture(scope="session")
def prom_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromStack]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package prometheus)")
    work = tmp_path_factory.mktemp("plan_prometheus")
    ports = [_free_port() for _ in SEEDS]
    instances = tuple(f"127.0.0.1:{p}" for p in ports)
    (work / "rules.yml").write_text(_short_rules())
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yml")],
        "scrape_configs": [
            {"job_name": "tokenergy", "static_configs": [{"targets": list(instances)}]}
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    client = httpx.Client(base_url=f"http://127.0.0.1:{prom_port}", timeout=10.0)
    try:
        with (work / "prometheus.log").open("wb") as log:
            processes.append(
                subprocess.Popen(
                    [
                        binary,
                        f"--config.file={work / 'prometheus.yml'}",
                        f"--storage.tsdb.path={work / 'data'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        demos = []
        for seed, port in zip(SEEDS, ports, strict=True):
            with (work / f"demo-{seed}.log").open("wb") as log:
                demo = subprocess.Popen(
                    [sys.executable, "-m", "agent", "demo", "--duration", str(DEMO_SECONDS),
                     "--scenario", "steady", "--seed", str(seed), "--listen", f"127.0.0.1:{port}"],
                    stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                )  # fmt: skip
            processes.append(demo)
            demos.append(demo)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/-/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (work / "prometheus.log").read_text()[-2000:]
            time.sleep(0.2)
        for demo, seed in zip(demos, SEEDS, strict=True):
            assert demo.wait(timeout=DEMO_SECONDS + 60) == 0, (
                work / f"demo-{seed}.log"
            ).read_text()[-2000:]
        now = time.time()
        last = []
        for instance in instances:
            body = client.get(
                "/api/v1/query",
                params={"query": f'tokenergy_build_info{{instance="{instance}"}}[2m]',
                        "time": f"{now:.3f}"},
            ).json()  # fmt: skip
            series = body["data"]["result"]
            assert series, f"Prometheus never scraped {instance}"
            last.append(float(series[0]["values"][-1][0]))
        yield PromStack(f"http://127.0.0.1:{prom_port}", client, instances, min(last) - 0.5)
    finally:
        client.close()
        for process in processes:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


def read_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes).

    Returns:
        Width, height, and the rows as RGB bytes.
    """
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height, bpp = 8, bytearray(), 0, 0, 3
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind_, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            if kind_ == 1:
                line[i] = (line[i] + a) & 255
            elif kind_ == 2:
                line[i] = (line[i] + b) & 255
            elif kind_ == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind_ == 4:
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line[j] for j in range(stride) if bpp == 3 or j % 4 != 3))
        prev = line
    return width, height, rows


@pytest.fixture(scope="session")
def png_reader() -> Callable[[bytes], tuple[int, int, list[bytes]]]:
    return read_png
