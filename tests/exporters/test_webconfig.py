"""Web config (exporter-toolkit format) parsing, and the basic-auth checker."""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from exporters.webconfig import BasicAuth, WebConfig, WebConfigError, load_web_config

Write = Callable[..., WebConfig]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def tls_yaml(certs: Any, extra: str = "") -> str:
    return (
        "tls_server_config:\n"
        f"  cert_file: {certs.server_cert}\n"
        f"  key_file: {certs.server_key}\n" + extra
    )


def test_empty_file_means_plain_http_without_auth(write_web_config: Write) -> None:
    config = write_web_config("")
    assert config.tls is None and not config.users and config.headers == ()


def test_full_config_loads(write_web_config: Write, certs: Any, password_hash: str) -> None:
    config = write_web_config(
        tls_yaml(
            certs,
            f"  client_auth_type: RequireAndVerifyClientCert\n"
            f"  client_ca_file: {certs.ca_file}\n"
            "  client_allowed_sans: [scraper.example]\n"
            "  min_version: TLS13\n",
        )
        + "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n"
        + f"basic_auth_users:\n  prometheus: {password_hash}\n"
        + "auth_excluded_paths: [/healthz]\n"
    )
    assert config.tls is not None
    assert config.tls.client_auth == "RequireAndVerifyClientCert"
    assert config.tls.context.verify_mode == ssl.CERT_REQUIRED
    assert config.tls.context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert config.tls.client_allowed_sans == ("scraper.example",)
    assert config.users == {"prometheus": password_hash.encode()}
    assert config.headers == (("X-Frame-Options", "deny"),)
    assert config.auth_excluded_paths == frozenset({"/healthz"})
    assert set(config.files()) == {config.path, certs.server_cert, certs.server_key, certs.ca_file}


def test_tls_defaults_to_tls12_minimum_and_no_client_cert(
    write_web_config: Write, certs: Any
) -> None:
    config = write_web_config(tls_yaml(certs))
    assert config.tls is not None
    assert config.tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.tls.context.verify_mode == ssl.CERT_NONE


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, certs: Any) -> None:
    (tmp_path / "tls").mkdir()
    for src in (certs.server_cert, certs.server_key):
        (tmp_path / "tls" / src.name).write_bytes(src.read_bytes())
    path = tmp_path / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: tls/server.pem\n  key_file: tls/server.key\n")
    config = load_web_config(path)
    assert config.tls is not None and config.tls.cert_file == tmp_path / "tls" / "server.pem"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("tls_server_config:\n  cert_fle: x\n", "tls_server_config.cert_fle: unknown field"),
        ("basic_auth_user:\n  a: b\n", "basic_auth_user: unknown field"),
        ("http_server_config:\n  http3: true\n", "http_server_config.http3: unknown field"),
        ("rate_limit:\n  burst: 1\n", "rate_limit: not supported"),
        ("tls_server_config:\n  cert: inline\n  key_file: k\n  cert_file: c\n",
         "tls_server_config.cert: inline keys are not supported"),
        ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
         "tls_server_config.cipher_suites: not supported"),
        ("tls_server_config:\n  key_file: k\n", "tls_server_config.cert_file: required"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n"
         "  client_auth_type: RequestClientCert\n", "without verifying"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: Bogus\n",
         "'Bogus' is not one of"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS14\n",
         "tls_server_config.min_version: 'TLS14'"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n"
         "  max_version: TLS12\n", "min_version TLS13 is above max_version"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n"
         "  client_auth_type: RequireAndVerifyClientCert\n", "client_ca_file: required"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n",
         "client_auth_type is NoClientCert"),
        ("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_allowed_sans: [a]\n",
         "client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert"),
        ("http_server_config:\n  headers:\n    Server: x\n",
         "http_server_config.headers.Server: this header cannot be configured"),
        ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "'allow' is not one of"),
        ("http_server_config:\n  headers:\n    Content-Security-Policy: \"caf\u00e9\"\n",
         "printable ASCII"),
        ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice: not a bcrypt hash"),
        ("basic_auth_users:\n  'a:b': $2b$10$" + "a" * 53 + "\n", "cannot be empty or contain ':'"),
        ("auth_excluded_paths: [healthz]\n", "must start with '/'"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("tls_server_config: [\n", "not valid YAML"),
    ],
)  # fmt: skip
def test_bad_config_is_a_clear_error_naming_the_key(
    write_web_config: Write, text: str, named: str
) -> None:
    with pytest.raises(WebConfigError) as err:
        write_web_config(text)
    assert named in str(err.value)
    assert "web.yml" in str(err.value)


def test_plain_password_is_never_echoed_in_the_error(write_web_config: Write) -> None:
    with pytest.raises(WebConfigError) as err:
        write_web_config("basic_auth_users:\n  alice: my-secret-pass\n")
    assert "my-secret-pass" not in str(err.value)
    assert "htpasswd" in str(err.value), "the error says how to make a hash"


def test_missing_or_mismatched_certificate_is_a_startup_error(
    write_web_config: Write, certs: Any, tmp_path: Path
) -> None:
    with pytest.raises(WebConfigError, match="cannot load"):
        write_web_config(
            f"tls_server_config:\n  cert_file: {tmp_path}/nope.pem\n"
            f"  key_file: {certs.server_key}\n"
        )
    with pytest.raises(WebConfigError, match="cannot load"):
        write_web_config(
            f"tls_server_config:\n  cert_file: {certs.server_cert}\n"
            f"  key_file: {certs.client_key}\n"
        )


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="cannot read"):
        load_web_config(tmp_path / "absent.yml")


def test_several_problems_are_all_listed(write_web_config: Write) -> None:
    with pytest.raises(WebConfigError) as err:
        write_web_config(
            "rate_limit: {burst: 1}\nbasic_auth_users: {bob: plain}\nauth_excluded_paths: [x]\n"
        )
    assert len(err.value.lines) == 3


# -- BasicAuth ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users() -> dict[str, bytes]:
    # Cost 4 keeps these unit tests fast; timing is tested over HTTP with cost 10.
    return {"alice": bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))}


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (basic("alice", "s3cret"), True),
        (basic("alice", "wrong"), False),
        (basic("mallory", "s3cret"), False),
        (basic("alice", ""), False),
        (basic("", ""), False),
        (None, False),
        ("", False),
        ("Bearer abc", False),
        ("Basic !!!notbase64", False),
        ("Basic " + base64.b64encode(b"no-colon").decode(), False),
        ("Basic " + base64.b64encode(b"\xff\xfe:s3cret").decode(), False),
        (basic("alice", "s3cret" + "x" * 80), False),
        ("basic " + base64.b64encode(b"alice:s3cret").decode(), True),
        (basic("alice", "s3cret:with:colons"), False),
    ],
)
def test_basic_auth_decisions(users: dict[str, bytes], header: str | None, ok: bool) -> None:
    assert BasicAuth().check(users, header) is ok


def test_password_with_colons_is_split_at_the_first_colon() -> None:
    users = {"bob": bcrypt.hashpw(b"a:b:c", bcrypt.gensalt(4))}
    assert BasicAuth().check(users, basic("bob", "a:b:c"))


def test_results_are_cached_and_cache_is_bounded(users: dict[str, bytes]) -> None:
    auth = BasicAuth(cache_size=3)
    for i in range(5):
        assert not auth.check(users, basic("alice", f"wrong{i}"))
    assert len(auth._cache) == 3
    assert auth.check(users, basic("alice", "s3cret"))
    assert auth.check(users, basic("alice", "s3cret"))
    # The cache key holds a digest of the password, never the password itself.
    assert all(b"s3cret" not in key[2] and "s3cret" not in key[0] for key in auth._cache)


def test_changed_hash_is_not_served_from_the_cache(users: dict[str, bytes]) -> None:
    auth = BasicAuth()
    assert auth.check(users, basic("alice", "s3cret"))
    rotated = {"alice": bcrypt.hashpw(b"new", bcrypt.gensalt(4))}
    assert not auth.check(rotated, basic("alice", "s3cret"))
    assert auth.check(rotated, basic("alice", "new"))


def test_unknown_user_is_checked_against_a_dummy_of_the_same_cost(users: dict[str, bytes]) -> None:
    auth = BasicAuth()
    auth.prepare(users)
    assert list(auth._dummies) == [4]
    assert not auth.check(users, basic("mallory", "s3cret"))
    assert list(auth._dummies) == [4]


def test_cached_answers_need_no_bcrypt_and_verify_fills_the_cache(users: dict[str, bytes]) -> None:
    auth = BasicAuth()
    header = basic("alice", "s3cret")
    assert auth.cached(users, header) is None, "never seen: bcrypt must run"
    assert auth.cached(users, None) is False and auth.cached(users, "Bearer x") is False
    assert auth.verify(users, header) == (True, 0.0)
    assert auth.cached(users, header) is True
    assert auth.cached(users, basic("alice", "wrong")) is None
    assert auth.verify(users, basic("alice", "wrong"))[0] is False
    assert auth.cached(users, basic("alice", "wrong")) is False


def test_refusals_are_held_as_long_as_the_costliest_hash() -> None:
    users = {
        "cheap": bcrypt.hashpw(b"a", bcrypt.gensalt(4)),
        "dear": bcrypt.hashpw(b"b", bcrypt.gensalt(10)),
    }
    auth = BasicAuth()
    auth.prepare(users)
    assert list(auth._dummies) == [10], "the dummy has the highest cost in the file"
    ok, hold = auth.verify(users, basic("cheap", "guess"))
    assert not ok and hold > 0.005, "a cost-4 refusal waits for the cost-10 time"
    t0 = time.perf_counter()
    assert not auth.check(users, basic("cheap", "guess-2"))
    cheap = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert not auth.check(users, basic("nobody", "guess-2"))
    unknown = time.perf_counter() - t0
    assert cheap > 0.5 * unknown, (cheap, unknown)


@pytest.mark.parametrize(
    "text",
    [
        "basic_auth_users:\n  alice: 84736251\n",
        "basic_auth_users:\n  alice: [pw-84736251]\n",
        "basic_auth_users:\n  alice: pw-84736251: x\n",
        'basic_auth_users: {alice: "pw-84736251\n',
    ],
)
def test_no_error_quotes_a_pasted_password(write_web_config: Write, text: str) -> None:
    with pytest.raises(WebConfigError) as err:
        write_web_config(text)
    assert "84736251" not in str(err.value), str(err.value)
    assert "basic_auth_users" in str(err.value) or "not valid YAML at line" in str(err.value)
