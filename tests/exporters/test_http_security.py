"""MetricsServer security: the TLS matrix, basic auth, secrets kept out of logs, config reload."""

from __future__ import annotations

import base64
import http.client
import logging
import os
import socket
import ssl
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporters.http import MetricsServer
from exporters.webconfig import WebConfig, load_web_config

Make = Callable[..., MetricsServer]
Write = Callable[..., WebConfig]
# A refused TLS client sees one of these, depending on when the server gives up.
REFUSED = (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, OSError)


def client_context(certs: Any, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs.ca_file))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def https(
    port: int, ctx: ssl.SSLContext, path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def plain(
    port: int, path: str = "/metrics", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def tls_config(certs: Any, extra: str = "") -> str:
    return (
        f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.server_key}\n"
        + extra
    )


MTLS = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {ca}\n"


# -- TLS matrix ------------------------------------------------------------------------------------


def test_no_tls_serves_plain_http(make_server: Make, write_web_config: Write) -> None:
    srv = make_server(web_config=write_web_config(""))
    assert srv.scheme == "http"
    assert plain(srv.port)[0] == 200


def test_tls_serves_https_and_refuses_plain_http(
    make_server: Make, write_web_config: Write, certs: Any
) -> None:
    srv = make_server(web_config=write_web_config(tls_config(certs)))
    assert srv.scheme == "https"
    status, body = https(srv.port, client_context(certs))
    assert status == 200 and b"tokenergy_build_info" in body
    with pytest.raises(REFUSED):
        plain(srv.port)
    assert https(srv.port, client_context(certs))[0] == 200, "a bad client did not hurt others"


def test_required_client_cert(make_server: Make, write_web_config: Write, certs: Any) -> None:
    config = write_web_config(tls_config(certs, MTLS.format(ca=certs.ca_file)))
    srv = make_server(web_config=config)
    with pytest.raises(REFUSED):
        https(srv.port, client_context(certs))
    good = client_context(certs, (certs.client_cert, certs.client_key))
    assert https(srv.port, good)[0] == 200


def test_client_cert_from_another_ca_is_refused(
    make_server: Make, write_web_config: Write, certs: Any, tmp_path: Path
) -> None:
    trustme = pytest.importorskip("trustme")
    stranger = trustme.CA().issue_cert("scraper.example")
    stranger.private_key_pem.write_to_path(str(tmp_path / "s.key"))
    stranger.cert_chain_pems[0].write_to_path(str(tmp_path / "s.pem"))
    srv = make_server(web_config=write_web_config(tls_config(certs, MTLS.format(ca=certs.ca_file))))
    with pytest.raises(REFUSED):
        https(srv.port, client_context(certs, (tmp_path / "s.pem", tmp_path / "s.key")))


def test_client_allowed_sans(make_server: Make, write_web_config: Write, certs: Any) -> None:
    extra = MTLS.format(ca=certs.ca_file) + "  client_allowed_sans: [scraper.example]\n"
    srv = make_server(web_config=write_web_config(tls_config(certs, extra)))
    assert https(srv.port, client_context(certs, (certs.client_cert, certs.client_key)))[0] == 200
    intruder = client_context(certs, (certs.other_client_cert, certs.other_client_key))
    with pytest.raises(REFUSED):
        https(srv.port, intruder)


def tls11_client(certs: Any) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(certs.ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer 1.1 so the server decides
    return ctx


def test_tls11_is_refused_by_the_server(
    make_server: Make, write_web_config: Write, certs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tokenergy.test.http")
    srv = make_server(web_config=write_web_config(tls_config(certs)))
    with (
        socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock,
        pytest.raises(ssl.SSLError),
    ):
        tls11_client(certs).wrap_socket(sock, server_hostname="localhost")
    # The server refused it for its version (asyncio drops the alert, so ask the server).
    deadline = time.monotonic() + 2
    while "UNSUPPORTED_PROTOCOL" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "TLS handshake failed" in caplog.text and "UNSUPPORTED_PROTOCOL" in caplog.text
    tls12 = client_context(certs)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert https(srv.port, tls12)[0] == 200


def test_min_version_tls13_refuses_tls12(
    make_server: Make, write_web_config: Write, certs: Any
) -> None:
    srv = make_server(web_config=write_web_config(tls_config(certs, "  min_version: TLS13\n")))
    tls12 = client_context(certs)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(REFUSED):
        https(srv.port, tls12)
    assert https(srv.port, client_context(certs))[0] == 200


def test_idle_tls_connections_do_not_block_handshakes(
    make_server: Make, write_web_config: Write, certs: Any
) -> None:
    srv = make_server(
        web_config=write_web_config(tls_config(certs)), max_connections=1, client_timeout_seconds=5
    )
    idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(10)]
    try:
        t0 = time.monotonic()
        assert https(srv.port, client_context(certs))[0] == 200
        assert time.monotonic() - t0 < 2.0
    finally:
        for s in idle:
            s.close()


def test_certificate_rotation_is_picked_up_by_new_connections(
    make_server: Make, certs: Any, tmp_path: Path
) -> None:
    for name in ("server.pem", "server.key"):
        (tmp_path / name).write_bytes((certs.dir / name).read_bytes())
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n")
    srv = make_server(web_config=load_web_config(path))

    def served_cert() -> bytes:
        with (
            socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock,
            client_context(certs).wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der

    before = served_cert()
    fresh = certs.ca.issue_cert("localhost", "127.0.0.1")
    fresh.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    fresh.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    bump_mtime(tmp_path / "server.pem", tmp_path / "server.key")
    after = served_cert()
    assert after != before
    assert after == ssl.PEM_cert_to_DER_cert(fresh.cert_chain_pems[0].bytes().decode())


def bump_mtime(*paths: Path) -> None:
    """Make a rewrite visible even on file systems with coarse timestamps."""
    for p in paths:
        st = os.stat(p)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


# -- basic auth ------------------------------------------------------------------------------------


@pytest.fixture
def auth_server(make_server: Make, write_web_config: Write, password_hash: str) -> MetricsServer:
    config = write_web_config(
        f"basic_auth_users:\n  prometheus: {password_hash}\n"
        "auth_excluded_paths: [/healthz]\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    return make_server(web_config=config)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (basic("prometheus", "wrong password"), 401),
        (basic("mallory", "whatever"), 401),
        ({"Authorization": "Bearer abc"}, 401),
        ("right", 200),
    ],
)
def test_basic_auth_matrix(
    auth_server: MetricsServer, build: Any, headers: dict[str, str] | str, status: int
) -> None:
    sent = basic("prometheus", build.password) if headers == "right" else headers
    assert isinstance(sent, dict)
    got, got_headers, body = plain(auth_server.port, headers=sent)
    assert got == status
    assert got_headers["x-frame-options"] == "deny"
    if status == 401:
        assert got_headers["www-authenticate"] == 'Basic realm="tokenergy"'
        assert b"tokenergy_" not in body
    else:
        assert b"tokenergy_build_info" in body


def test_configured_headers_are_sent_once_and_never_override_the_response(
    make_server: Make, write_web_config: Write
) -> None:
    config = write_web_config(
        "http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"
        "    Content-Security-Policy: default-src 'none'\n"
    )
    srv = make_server(web_config=config)
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0].decode()
    assert head.count("X-Content-Type-Options:") == 1
    assert "Content-Security-Policy: default-src 'none'" in head
    assert "Content-Type: text/html; charset=utf-8" in head and "Date: " in head


def test_auth_covers_every_path_but_the_excluded_ones(auth_server: MetricsServer) -> None:
    assert plain(auth_server.port, "/")[0] == 401
    assert plain(auth_server.port, "/nope")[0] == 401
    assert plain(auth_server.port, "/healthz")[0] == 200


def test_unknown_user_takes_as_long_as_a_wrong_password(auth_server: MetricsServer) -> None:
    def timed(user: str, i: int) -> float:
        t0 = time.perf_counter()
        # A new password each time, so no result comes from the cache.
        assert plain(auth_server.port, headers=basic(user, f"guess-{i}"))[0] == 401
        return time.perf_counter() - t0

    wrong, unknown = [], []
    for i in range(4):
        wrong.append(timed("prometheus", i))
        unknown.append(timed("nobody", i))
    w, u = statistics.median(wrong), statistics.median(unknown)
    assert min(w, u) > 0.01, "bcrypt ran for both (cost 10 takes tens of ms)"
    assert max(w, u) / min(w, u) < 3, (wrong, unknown)


def test_password_never_appears_in_logs_or_responses(
    auth_server: MetricsServer, build: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = build.password
    replies = [
        plain(auth_server.port, path, headers=h)
        for path in ("/metrics", "/nope", "/", "/healthz")
        for h in (basic("prometheus", secret), basic("prometheus", secret + "x"),
                  basic("ghost", secret))
    ]  # fmt: skip
    assert {r[0] for r in replies} == {200, 401, 404}
    token = basic("prometheus", secret)["Authorization"].split()[1]
    for _status, headers, body in replies:
        blob = body + repr(headers).encode()
        assert secret.encode() not in blob and token.encode() not in blob
    assert caplog.records, "debug logging was on"
    assert secret not in caplog.text and token not in caplog.text


def test_users_reload_when_the_file_changes(
    make_server: Make, tmp_path: Path, password_hash: str, build: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: {password_hash}\n")
    srv = make_server(web_config=load_web_config(path))
    assert plain(srv.port, headers=basic("alice", build.password))[0] == 200

    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(4)).decode()
    path.write_text(f"basic_auth_users:\n  bob: {new_hash}\n")
    bump_mtime(path)
    assert plain(srv.port, headers=basic("bob", "rotated"))[0] == 200
    assert plain(srv.port, headers=basic("alice", build.password))[0] == 401

    # A broken edit keeps the last good config (auth stays on) and is logged once.
    caplog.set_level(logging.ERROR)
    path.write_text("basic_auth_users: [oops\n")
    bump_mtime(path)
    assert plain(srv.port)[0] == 401
    assert plain(srv.port, headers=basic("bob", "rotated"))[0] == 200
    errors = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(errors) == 1


def test_bad_web_config_is_a_clear_startup_error(tmp_path: Path) -> None:
    from agent.config import HttpSettings
    from exporters.webconfig import WebConfigError

    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  certfile: x\n")
    with pytest.raises(WebConfigError, match=r"tls_server_config\.certfile: unknown field"):
        MetricsServer(
            registry=None,  # type: ignore[arg-type]
            health=lambda: (True, []),
            settings=HttpSettings(listen="127.0.0.1:0", web_config_file=path),
            log=logging.getLogger("test"),
        )


def test_concurrent_auth_checks_are_all_answered(auth_server: MetricsServer, build: Any) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        password = build.password if i % 2 else f"bad-{i}"
        status = plain(auth_server.port, headers=basic("prometheus", password))[0]
        with lock:
            results.append(status)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] * 4 + [401] * 4


def test_a_request_sent_with_the_end_of_the_handshake_is_answered_over_tls(
    make_server: Make, write_web_config: Write, certs: Any, password_hash: str
) -> None:
    # TLS 1.3 lets the client send its request right behind its Finished message: the TLS
    # layer can hand it over before start_tls() returns. A 401 answered at once used to go
    # out in plaintext on the raw socket (the client saw WRONG_VERSION_NUMBER).
    config = write_web_config(
        tls_config(certs) + f"basic_auth_users:\n  prometheus: {password_hash}\n"
    )
    srv = make_server(web_config=config)
    ctx = client_context(certs)
    for _ in range(30):
        status, body = https(srv.port, ctx)
        assert status == 401 and b"tokenergy_" not in body
