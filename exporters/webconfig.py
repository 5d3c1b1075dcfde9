"""TLS and basic auth from a web config file in Prometheus exporter-toolkit's format.

The same YAML that node_exporter, dcgm-exporter and the rest accept with
``--web.config.file`` (exporter-toolkit ``docs/web-configuration.md``)::

    tls_server_config:
      cert_file: server.crt            # relative paths are relative to this file
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
      min_version: TLS12               # default TLS12
    http_server_config:
      headers:
        Strict-Transport-Security: max-age=31536000
    basic_auth_users:
      prometheus: $2b$10$...           # bcrypt hash, never the password

What is supported, and what is refused with an error that names the key:

- ``tls_server_config``: ``cert_file``, ``key_file``, ``client_ca_file``, inline
  ``client_ca``, ``client_auth_type`` (``NoClientCert``, ``VerifyClientCertIfGiven``,
  ``RequireAndVerifyClientCert``), ``client_allowed_sans`` (exact match, needs
  ``RequireAndVerifyClientCert``), ``min_version``/``max_version`` (``TLS10``..``TLS13``),
  ``prefer_server_cipher_suites``. Refused: inline ``cert``/``key`` (Python's ssl loads
  keys from files), ``cipher_suites``/``curve_preferences`` (OpenSSL's defaults are kept),
  and the ``RequestClientCert``/``RequireAnyClientCert`` modes, which accept a client
  certificate without verifying it.
- ``http_server_config``: ``headers`` (the toolkit's five security headers, same allowed
  values); ``http2`` is accepted and has no effect (the server speaks HTTP/1.1 only).
- ``basic_auth_users``: user -> bcrypt hash (``$2a$``, ``$2b$`` or ``$2y$``).
- ``auth_excluded_paths``: paths served without basic auth (e.g. ``/healthz`` for probes).
- ``rate_limit`` is refused (not implemented).

Any other key is an error naming it. Loading reads the files, so a missing certificate or
a key that does not match is a startup error, not a failed scrape later.

:class:`BasicAuth` checks credentials the way exporter-toolkit does: an unknown user is
checked against a dummy hash of the highest cost in the file, and every uncached refusal is
held as long as a check at that cost takes (so mixed costs tell no user names); bcrypt runs
at most two checks at once (it is CPU-heavy by design); results are cached per (user, stored
hash, SHA-256 of the offered password) so a scraper that sends the same credentials every
15 s pays for bcrypt once, and a cached answer needs no bcrypt thread at all. Plain
passwords are never stored or logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import bcrypt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.config import format_validation_error, parse_yaml

ClientAuth = Literal["NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]

_TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# exporter-toolkit's list (web/handler.go): only these headers, and fixed values for two.
_EXTRA_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")

HASH_HOWTO = (
    "make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'` or "
    "`python -c 'import bcrypt,getpass; "
    "print(bcrypt.hashpw(getpass.getpass().encode(), bcrypt.gensalt(10)).decode())'`"
)


class WebConfigError(Exception):
    """A web config file that cannot be used; ``lines`` has one message per problem."""

    def __init__(self, path: Path, lines: list[str]) -> None:
        super().__init__(f"web config {path}: " + "; ".join(lines))
        self.path = path
        self.lines = lines


# -- the file's shape (pydantic does the key checking) ---------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TlsModel(_Strict):
    cert_file: str = ""
    key_file: str = ""
    cert: str = ""
    key: str = ""
    client_auth_type: str = "NoClientCert"
    client_ca_file: str = ""
    client_ca: str = ""
    client_allowed_sans: list[str] | None = None
    cipher_suites: list[str] | None = None
    curve_preferences: list[str] | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    prefer_server_cipher_suites: bool = True


class _HttpModel(_Strict):
    http2: bool = True
    headers: dict[str, str] = Field(default_factory=dict)


class _FileModel(_Strict):
    tls_server_config: _TlsModel | None = None
    http_server_config: _HttpModel = _HttpModel()
    basic_auth_users: dict[str, str] | None = None
    auth_excluded_paths: list[str] = Field(default_factory=list)
    rate_limit: dict[str, Any] | None = None


# -- the loaded configuration ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TlsConfig:
    """TLS settings in force, with the server context built from them.

    Attributes:
        cert_file: Server certificate chain (PEM).
        key_file: Server private key (PEM).
        client_auth: Client certificate policy.
        client_ca_file: CA bundle that verifies client certificates, if any.
        client_allowed_sans: When not empty, a client certificate must carry one of these
            SANs (DNS name, e-mail, IP address or URI, exact match).
        min_version: Lowest TLS version accepted.
        max_version: Highest TLS version accepted.
        context: The ``ssl.SSLContext`` for server-side sockets.
    """

    cert_file: Path
    key_file: Path
    client_auth: ClientAuth
    client_ca_file: Path | None
    client_allowed_sans: tuple[str, ...]
    min_version: ssl.TLSVersion
    max_version: ssl.TLSVersion
    context: ssl.SSLContext


@dataclass(frozen=True, eq=False)
class WebConfig:
    """A loaded, validated web config.

    Attributes:
        path: The file it came from (watched for changes by the server).
        tls: TLS settings, or None for plain HTTP.
        users: User name -> bcrypt hash; empty = no basic auth.
        headers: Extra response headers.
        auth_excluded_paths: Paths served without basic auth.
        signature: Size and modification time of the file and of every file it names, to
            notice a change (certificate rotation) cheaply.
    """

    path: Path
    tls: TlsConfig | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    auth_excluded_paths: frozenset[str] = frozenset()
    signature: tuple[tuple[str, int, int, int], ...] = ()

    def files(self) -> tuple[Path, ...]:
        """The web config file and the files it names."""
        found = [self.path]
        if self.tls is not None:
            found += [self.tls.cert_file, self.tls.key_file]
            if self.tls.client_ca_file is not None:
                found.append(self.tls.client_ca_file)
        return tuple(found)


def file_signature(paths: tuple[Path, ...]) -> tuple[tuple[str, int, int, int], ...]:
    """Identity of files as (path, inode, size, mtime in ns); missing files get -1s.

    Args:
        paths: Files to stat.

    Returns:
        One tuple per path; changes when a file is replaced or rewritten.
    """
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(p), st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)


def _secret(loc: tuple[int | str, ...]) -> bool:
    """Values under basic_auth_users may be passwords pasted by mistake: never shown."""
    return bool(loc) and loc[0] == "basic_auth_users"


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _tls_config(model: _TlsModel, base: Path, problems: list[str]) -> TlsConfig | None:
    where = "tls_server_config"
    errors: list[str] = []
    try:
        return _build_tls(model, base, where, errors)
    finally:
        problems.extend(errors)


def _build_tls(model: _TlsModel, base: Path, where: str, errors: list[str]) -> TlsConfig | None:
    for key in ("cert", "key"):
        if getattr(model, key):
            errors.append(f"{where}.{key}: inline keys are not supported; use {key}_file")
    for key in ("cipher_suites", "curve_preferences"):
        if getattr(model, key) is not None:
            errors.append(
                f"{where}.{key}: not supported; remove it (OpenSSL's secure defaults apply)"
            )
    auth = model.client_auth_type
    allowed: tuple[str, ...] = (
        "NoClientCert",
        "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert",
    )
    if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
        errors.append(
            f"{where}.client_auth_type: {auth} accepts a client certificate without verifying "
            "it and is not supported; use RequireAndVerifyClientCert"
        )
    elif auth not in allowed:
        errors.append(f"{where}.client_auth_type: {auth!r} is not one of {', '.join(allowed)}")
    versions = {}
    for key in ("min_version", "max_version"):
        value = getattr(model, key)
        if value not in _TLS_VERSIONS:
            errors.append(f"{where}.{key}: {value!r} is not one of {', '.join(_TLS_VERSIONS)}")
        else:
            versions[key] = _TLS_VERSIONS[value]
    if len(versions) == 2 and versions["min_version"] > versions["max_version"]:
        errors.append(f"{where}: min_version {model.min_version} is above max_version")
    if not model.cert_file:
        errors.append(f"{where}.cert_file: required when TLS is configured")
    if not model.key_file:
        errors.append(f"{where}.key_file: required when TLS is configured")
    has_ca = bool(model.client_ca_file or model.client_ca)
    if auth == "NoClientCert" and has_ca:
        errors.append(
            f"{where}: a client CA is set but client_auth_type is NoClientCert; "
            "set client_auth_type: RequireAndVerifyClientCert"
        )
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not has_ca:
        errors.append(f"{where}.client_ca_file: required with client_auth_type {auth}")
    if model.client_allowed_sans is not None and auth != "RequireAndVerifyClientCert":
        errors.append(
            f"{where}.client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert"
        )
    if errors:
        return None

    cert_file = _resolve(base, model.cert_file)
    key_file = _resolve(base, model.key_file)
    ca_file = _resolve(base, model.client_ca_file) if model.client_ca_file else None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = versions["min_version"]
    context.maximum_version = versions["max_version"]
    if model.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except (OSError, ssl.SSLError) as exc:
        errors.append(
            f"{where}.cert_file/key_file: cannot load {cert_file} with {key_file}: "
            f"{exc.strerror or exc}"
        )
        return None
    if auth != "NoClientCert":
        try:
            if ca_file is not None:
                context.load_verify_locations(cafile=ca_file)
            else:
                context.load_verify_locations(cadata=model.client_ca)
        except (OSError, ssl.SSLError) as exc:
            errors.append(f"{where}.client_ca_file: cannot load {ca_file}: {exc.strerror or exc}")
            return None
        context.verify_mode = (
            ssl.CERT_REQUIRED if auth == "RequireAndVerifyClientCert" else ssl.CERT_OPTIONAL
        )
    client_auth: ClientAuth = (
        "RequireAndVerifyClientCert"
        if auth == "RequireAndVerifyClientCert"
        else "VerifyClientCertIfGiven"
        if auth == "VerifyClientCertIfGiven"
        else "NoClientCert"
    )
    return TlsConfig(
        cert_file=cert_file,
        key_file=key_file,
        client_auth=client_auth,
        client_ca_file=ca_file,
        client_allowed_sans=tuple(model.client_allowed_sans or ()),
        min_version=versions["min_version"],
        max_version=versions["max_version"],
        context=context,
    )


def _users(raw: dict[str, str], errors: list[str]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in raw.items():
        if ":" in user or not user:
            errors.append(f"basic_auth_users.{user}: a user name cannot be empty or contain ':'")
        elif not _BCRYPT_HASH.match(hashed):
            # Never echo the value: it may be a plain password pasted by mistake.
            errors.append(f"basic_auth_users.{user}: not a bcrypt hash; {HASH_HOWTO}")
        else:
            users[user] = hashed.encode("ascii")
    return users


def _headers(raw: dict[str, str], errors: list[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in raw.items():
        if name not in _EXTRA_HEADERS:
            errors.append(
                f"http_server_config.headers.{name}: this header cannot be configured; "
                f"allowed: {', '.join(_EXTRA_HEADERS)}"
            )
        elif _EXTRA_HEADERS[name] and value not in _EXTRA_HEADERS[name]:
            errors.append(
                f"http_server_config.headers.{name}: {value!r} is not one of "
                f"{', '.join(_EXTRA_HEADERS[name])}"
            )
        elif not value.isascii() or not value.isprintable():
            errors.append(
                f"http_server_config.headers.{name}: the value must be printable ASCII on one line"
            )
        else:
            out.append((name, value))
    return tuple(out)


def load_web_config(path: Path) -> WebConfig:
    """Read and validate a web config file, and load the files it names.

    Args:
        path: The YAML file. Relative paths inside it are relative to its directory.

    Returns:
        The validated config, with its TLS context built.

    Raises:
        WebConfigError: When the file is missing, is not YAML, has an unknown or unsupported
            key or a bad value, or names a certificate or key that cannot be loaded. Every
            problem found is listed, each naming its key.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WebConfigError(path, [f"cannot read: {exc}"]) from None
    raw = parse_yaml(text, str(path), lambda lines: WebConfigError(path, lines))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WebConfigError(path, ["the top level must be a mapping of keys"])
    try:
        model = _FileModel.model_validate(raw)
    except ValidationError as exc:
        raise WebConfigError(
            path, format_validation_error(exc, model=_FileModel, secret=_secret)
        ) from None

    errors: list[str] = []
    if model.rate_limit is not None:
        errors.append("rate_limit: not supported; remove it (use a proxy to rate-limit)")
    for excluded in model.auth_excluded_paths:
        if not excluded.startswith("/"):
            errors.append(f"auth_excluded_paths: {excluded!r} must start with '/'")
    users = _users(model.basic_auth_users or {}, errors)
    headers = _headers(model.http_server_config.headers, errors)
    tls = None
    if model.tls_server_config is not None and model.tls_server_config.model_fields_set:
        tls = _tls_config(model.tls_server_config, path.parent, errors)
    if errors:
        raise WebConfigError(path, errors)
    config = WebConfig(
        path=path,
        tls=tls,
        users=users,
        headers=headers,
        auth_excluded_paths=frozenset(model.auth_excluded_paths),
    )
    return replace(config, signature=file_signature(config.files()))


def peer_has_allowed_san(peercert: Mapping[str, Any] | None, allowed: tuple[str, ...]) -> bool:
    """Whether a verified client certificate carries one of the allowed SANs.

    Args:
        peercert: ``SSLObject.getpeercert()`` of the client (None without a certificate).
        allowed: Allowed SAN values (DNS name, e-mail, IP address, URI), exact match.

    Returns:
        True when ``allowed`` is empty, or when the certificate has a matching SAN.
    """
    if not allowed:
        return True
    if not peercert:
        return False

    def norm(value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            return value

    wanted = {norm(v) for v in allowed}
    sans = peercert.get("subjectAltName", ())
    return any(norm(str(value)) in wanted for _kind, value in sans)


# -- basic auth --------------------------------------------------------------------------------


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes (exporter-toolkit style).

    Thread-safe. Three steps, so a server can keep bcrypt off its rendering workers:
    :meth:`cached` answers from the cache (microseconds, safe on an event loop),
    :meth:`verify` runs bcrypt (at most ``max_concurrent`` at once) and says how long to hold
    a refusal, :meth:`check` does both and holds the refusal itself.

    Timing: an unknown user is checked against a dummy hash of the highest cost among the
    users, and every refusal is held until as long as a check at that cost takes, so a
    user with a cheaper hash is not told apart from an unknown one by its speed.

    Args:
        cache_size: Most (user, hash, password digest) results kept, oldest dropped first.
        max_concurrent: Most bcrypt checks running at once.
    """

    def __init__(self, cache_size: int = 1024, max_concurrent: int = 2) -> None:
        self._bcrypt_slots = threading.BoundedSemaphore(max_concurrent)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, bytes, bytes], bool] = OrderedDict()
        self._cache_size = cache_size
        self._dummies: dict[int, bytes] = {}
        self._seconds_at_cost: dict[int, float] = {}

    def prepare(self, users: Mapping[str, bytes]) -> None:
        """Make the dummy hash for the users' highest bcrypt cost now, and time it.

        Args:
            users: User name -> bcrypt hash.
        """
        self._dummy(users)

    @staticmethod
    def _cost(users: Mapping[str, bytes]) -> int:
        return max((int(h[4:6]) for h in users.values()), default=10)

    def _dummy(self, users: Mapping[str, bytes]) -> bytes:
        cost = self._cost(users)
        with self._lock:
            dummy = self._dummies.get(cost)
        if dummy is None:
            t0 = time.perf_counter()
            dummy = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(cost))
            elapsed = time.perf_counter() - t0
            with self._lock:
                self._dummies.setdefault(cost, dummy)
                self._seconds_at_cost.setdefault(cost, elapsed)
                dummy = self._dummies[cost]
        return dummy

    @staticmethod
    def _key(
        users: Mapping[str, bytes], credentials: tuple[str, bytes]
    ) -> tuple[str, bytes, bytes]:
        # No bcrypt here (it may run on an event loop): an unknown user keys on b"".
        user, password = credentials
        return user, users.get(user, b""), hashlib.sha256(password).digest()

    def cached(self, users: Mapping[str, bytes], authorization: str | None) -> bool | None:
        """The answer without bcrypt, when there is one.

        Args:
            users: User name -> bcrypt hash, from the web config in force.
            authorization: The ``Authorization`` header value, or None.

        Returns:
            True or False from the cache, False for a missing or malformed header, None
            when bcrypt must run (:meth:`verify`).
        """
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False
        key = self._key(users, credentials)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def verify(self, users: Mapping[str, bytes], authorization: str | None) -> tuple[bool, float]:
        """Run bcrypt for a header :meth:`cached` could not answer, and cache the result.

        Args:
            users: User name -> bcrypt hash.
            authorization: The ``Authorization`` header value, or None.

        Returns:
            (accepted, seconds to hold a refusal before answering it: the time a check at
            the highest cost takes, less the time this one took; 0 when accepted).
        """
        started = time.perf_counter()
        credentials = _parse_basic(authorization)
        if credentials is None:
            return False, 0.0
        user, password = credentials
        key = self._key(users, credentials)
        known = user in users
        hashed = key[1] if known else self._dummy(users)
        with self._bcrypt_slots:
            t0 = time.perf_counter()
            try:
                matched = bcrypt.checkpw(password, hashed)
            except ValueError:
                # Longer than bcrypt's 72 bytes: spend the same time, then refuse.
                bcrypt.checkpw(b"", hashed)
                matched = False
            took = time.perf_counter() - t0
        result = known and matched
        cost = self._cost(users)
        with self._lock:
            if not known:  # a check at the highest cost: keep its time current
                self._seconds_at_cost[cost] = took
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            slowest = self._seconds_at_cost.get(cost, 0.0)
        if result:
            return True, 0.0
        return False, max(0.0, slowest - (time.perf_counter() - started))

    def check(self, users: Mapping[str, bytes], authorization: str | None) -> bool:
        """Whether the header carries the right password of a known user (blocking).

        Args:
            users: User name -> bcrypt hash, from the web config in force.
            authorization: The ``Authorization`` header value, or None.

        Returns:
            True only for a known user with the right password. An unknown user costs one
            bcrypt check against a dummy hash; every uncached refusal takes as long as a
            check at the highest cost.
        """
        found = self.cached(users, authorization)
        if found is not None:
            return found
        ok, hold = self.verify(users, authorization)
        if hold > 0:
            time.sleep(hold)
        return ok


def _parse_basic(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    raw_user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        user = raw_user.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return user, password
