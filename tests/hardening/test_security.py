"""§7 E: security of the whole agent (bind, auth wiring, SSRF, secrets, request abuse).

The TLS and basic-auth matrix (TLS 1.1 refused, client certificates, unknown user timed like a
wrong password, password never logged) is tested on the HTTP server itself in
tests/exporters/test_http_security.py; here the web config goes in through the agent's
settings, and the scrape side (bearer tokens, redirects) runs through ``build_agent``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import psutil
import pytest

from agent.config import DEFAULT_PORT, Settings

TOKEN_A = "tok-A-7f3c9e1d2b4a6f8e0c1d3b5a7f9e2c4d"
TOKEN_B = "tok-B-0a2c4e6f8b1d3f5a7c9e1b3d5f7a9c2e"


def _basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        reply = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                reply += chunk
    return reply


def _requires(token: str, kit: Any) -> Any:
    """An upstream reply that answers 200 only to ``Bearer <token>``, 401 otherwise."""

    def reply(path: str, headers: dict[str, str]) -> Any:
        if headers.get("authorization") != f"Bearer {token}":
            return kit.Reply(401, b"unauthorized\n")
        return kit.Reply(200, kit.vllm_body(100, prompt=100))

    return reply


# -- 32: bind address, 10: graceful stop, 35: secrets in the logs, in a real process -------------


def test_default_listen_address_is_the_documented_one() -> None:
    """Case 32: the default is all interfaces on the documented port (README, Security)."""
    assert Settings().http.listen == f"0.0.0.0:{DEFAULT_PORT}" == "0.0.0.0:10110"


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, seconds: float) -> bytes:
    assert proc.stderr is not None
    seen = b""
    end = time.monotonic() + seconds
    fd = proc.stderr.fileno()
    while marker not in seen and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen += chunk
    return seen


def test_run_subprocess_binds_only_where_told_hides_its_token_and_stops_on_sigterm(
    make_upstream: Any, kit: Any, tmp_path: Path
) -> None:
    """Cases 10, 32, 35: a real ``tokenergy run`` process.

    It listens on 127.0.0.1 only, sends the bearer token to its upstream yet never writes it
    to stderr or /metrics (even when the upstream refuses it), and exits 0 within 5 s of
    SIGTERM.
    """
    upstream = make_upstream(_requires("something-else", kit))  # refuses: errors get logged
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_A + "\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[[servers]]\nname = "vllm"\nurl = "{upstream.url}"\nbearer_token_file = "{token_file}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENERGY_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "--log-level",
            "debug",
            "run",
            "--config",
            str(config),
            "--simulate-gpus",
            "2",
            "--listen",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        log = _read_until(proc, b"msg=started", 20.0)
        assert b"msg=started" in log, log.decode(errors="replace")
        listen = next(p for p in log.split() if p.startswith(b"listen=")).split(b"=", 1)[1]
        host, port = listen.decode().rsplit(":", 1)
        assert host == "127.0.0.1"
        listening = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.Process(proc.pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN
        }
        assert listening == {("127.0.0.1", int(port))}, "nothing else listens"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'tokenergy_server_up{server="vllm"} 0.0' in metrics
        assert any(h.get("authorization") == f"Bearer {TOKEN_A}" for _, h in upstream.requests)

        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert took < 5.0, f"exit took {took:.1f} s"
    stderr = (log + rest).decode(errors="replace")
    assert "scrape failed" in stderr and "http_status" in stderr, "the refusal was logged"
    assert TOKEN_A not in stderr and TOKEN_A not in metrics
    assert "msg=stopped" in stderr


# -- 33: basic auth through the agent's settings ------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (_basic("prometheus", "wrong"), 401),
        (_basic("mallory", "wrong"), 401),
        (_basic("prometheus", "s3cret-pass"), 200),
    ],
    ids=["none", "wrong-password", "unknown-user", "right"],
)
def test_web_config_from_settings_guards_metrics(
    make_agent: Any,
    tmp_path: Path,
    headers: dict[str, str],
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Case 33 (wiring): ``http.web_config_file`` turns basic auth on for the whole agent."""
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: {hashed}\n")
    caplog.set_level(logging.DEBUG)
    harness = make_agent(http={"web_config_file": str(web)})
    harness.cycle(0)
    response = harness.get(headers=headers)
    assert response.status_code == status
    assert ("tokenergy_gpu_up" in response.text) == (status == 200)
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")
    assert "s3cret-pass" not in caplog.text and "wrong" not in caplog.text


# -- 34: no SSRF --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query", ["target", "url", "module", "name[]"], ids=["target", "url", "module", "name"]
)
def test_query_parameters_never_make_the_agent_fetch_anything(
    make_agent: Any, make_upstream: Any, kit: Any, query: str
) -> None:
    """Case 34: ``?target=`` and friends are ignored; the fake metadata server sees nothing."""
    metadata = make_upstream(lambda path, headers: kit.Reply(200, b"secret-role-creds\n"))
    harness = make_agent()
    harness.cycle(0)
    plain = kit.Samples.parse(harness.get().text)
    target = f"http://127.0.0.1:{metadata.port}/latest/meta-data/"
    response = harness.get(params={query: target})
    assert response.status_code == 200
    assert "secret-role-creds" not in response.text
    assert kit.Samples.parse(response.text) == plain, "the same /metrics, parameter ignored"
    assert metadata.requests == []


def test_cross_host_redirect_is_followed_without_the_token(
    make_agent: Any, make_upstream: Any, kit: Any, tmp_path: Path
) -> None:
    """Case 34: a cross-host redirect, when allowed, never hands the token to the other host.

    Not allowed by default: see tests/hardening/test_zoo.py (the redirect to another port).
    """
    elsewhere = make_upstream(lambda path, headers: kit.Reply(200, kit.vllm_body(5)))
    redirector = make_upstream(
        lambda path, headers: kit.Reply(302, b"", {"Location": elsewhere.url})
    )
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_A)
    harness = make_agent(
        servers=[
            {
                "name": "vllm",
                "url": redirector.url,
                "bearer_token_file": str(token_file),
                "cross_origin_redirects": True,
            }
        ]
    )
    harness.cycle(0)
    assert redirector.requests[0][1]["authorization"] == f"Bearer {TOKEN_A}"
    assert elsewhere.requests, "the redirect was followed"
    assert all("authorization" not in h for _, h in elsewhere.requests)
    assert TOKEN_A not in harness.get().text


# -- 35: secrets -------------------------------------------------------------------------------


def test_rotated_token_is_used_at_the_next_scrape_and_never_shown(
    make_agent: Any,
    make_upstream: Any,
    kit: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Case 35: token read from a file per scrape; rotation works; never in logs or /metrics."""
    accepted = {"token": TOKEN_A}
    upstream = make_upstream(lambda path, headers: _requires(accepted["token"], kit)(path, headers))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN_A + "\n")
    caplog.set_level(logging.DEBUG)
    harness = make_agent(
        servers=[{"name": "vllm", "url": upstream.url, "bearer_token_file": str(token_file)}]
    )
    harness.cycle(0)
    assert harness.metrics().value("tokenergy_server_up", server="vllm") == 1

    accepted["token"] = TOKEN_B  # the upstream rotates first: the old token is refused
    harness.cycle()
    down = harness.metrics()
    assert down.value("tokenergy_server_up", server="vllm") == 0
    assert down.value("tokenergy_scrape_errors_total", server="vllm", reason="http_status") == 1

    token_file.write_text(TOKEN_B + "\n")  # then the file: the next scrape uses it
    harness.cycle()
    assert harness.metrics().value("tokenergy_server_up", server="vllm") == 1
    assert upstream.requests[-1][1]["authorization"] == f"Bearer {TOKEN_B}"

    token_file.write_text(f"{TOKEN_A} {TOKEN_B}\n")  # unusable: the error names no token
    harness.cycle()
    everything = caplog.text + harness.get().text + harness.get("/healthz").text
    everything += "".join(str(r.__dict__) for r in caplog.records)
    assert "bearer token file" in everything, "the unusable file was reported"
    assert TOKEN_A not in everything and TOKEN_B not in everything


# -- 38: request abuse ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n", b"431"),
        (
            b"GET /metrics?"
            + b"&".join(b"name[]=x%d" % i for i in range(10_000))
            + b" HTTP/1.1\r\n\r\n",
            b"431",
        ),
        (
            b"GET /metrics?"
            + b"&".join(b"name[]=x%d" % i for i in range(1_000))
            + b" HTTP/1.1\r\n\r\n",
            b"200",
        ),
        (b"GET /debug/pprof/ HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /api/v1/config HTTP/1.1\r\n\r\n", b"404"),
        (b"GET /metrics/../config HTTP/1.1\r\n\r\n", b"404"),
        (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"405"),
        (b"PUT /metrics HTTP/1.1\r\n\r\n", b"405"),
        (b"DELETE / HTTP/1.1\r\n\r\n", b"405"),
        (b"TRACE / HTTP/1.1\r\n\r\n", b"405"),
        (b"CONNECT 169.254.169.254:80 HTTP/1.1\r\n\r\n", b"400"),  # no proxying
    ],
    ids=[
        "long-url",
        "10000-params",
        "1000-params",
        "pprof",
        "api",
        "dotdot",
        "post",
        "put",
        "delete",
        "trace",
        "connect",
    ],
)
def test_request_abuse_gets_bounded_clear_answers(
    make_agent: Any, request_bytes: bytes, status: bytes
) -> None:
    """Case 38: long URLs, many parameters, unknown paths, other methods."""
    harness = make_agent()
    harness.cycle(0)
    cpu0 = time.process_time()
    reply = _raw(harness.agent.port, request_bytes)
    assert reply.split(b" ", 2)[1] == status, reply[:200]
    assert time.process_time() - cpu0 < 1.0, "bounded work"
    assert (b"tokenergy_gpu_up" in reply) == (status == b"200")
    assert harness.get().status_code == 200, "the agent goes on"
