"""HTTP client settings for reading agents and Prometheus: basic auth and TLS.

The file has the shape of the client half of the Prometheus/exporter-toolkit conventions (the
``basic_auth`` and ``tls_config`` blocks of a Prometheus ``scrape_config``, see
https://prometheus.io/docs/prometheus/latest/configuration/configuration/#scrape_config), so
the same values that let Prometheus scrape an agent protected by a web config let ``plan`` and
``top`` read it::

    basic_auth:
      username: prometheus
      password_file: /etc/tokenergy/password
    tls_config:
      ca_file: /etc/tokenergy/ca.pem
      # cert_file / key_file for mutual TLS; insecure_skip_verify: false

Building the client is an edge (it reads the files); the settings model is pure.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

__all__ = ["ClientConfig", "ClientConfigError", "load_client_config", "make_http_client"]


class ClientConfigError(ValueError):
    """A client config that cannot be used; ``str(exc)`` is the one line for the user."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Block):
    """``basic_auth``: a user name and either a password or a file holding it."""

    username: str
    password: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _one_password(self) -> BasicAuth:
        if self.password is not None and self.password_file is not None:
            raise ValueError("set password or password_file, not both")
        return self


class TlsConfig(_Block):
    """``tls_config``: CA bundle, client certificate and key, verification switch."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class ClientConfig(_Block):
    """The whole file; every block is optional."""

    basic_auth: BasicAuth | None = None
    tls_config: TlsConfig | None = None


def load_client_config(path: Path) -> ClientConfig:
    """Read and validate a client config file.

    Args:
        path: YAML file.

    Returns:
        The settings.

    Raises:
        ClientConfigError: Unreadable, not YAML, or an unknown or invalid field.
    """
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ClientConfigError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ClientConfigError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    try:
        return ClientConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        raise ClientConfigError(f"{path}: {where}: {first['msg']}") from None


def make_http_client(config: ClientConfig | None, timeout_seconds: float) -> httpx.Client:
    """Build an HTTP client from the settings (reads the password and certificate files).

    Args:
        config: The settings, or None for plain HTTP(S) with the system CA store.
        timeout_seconds: Connect and read timeout, s.

    Returns:
        A client that ignores proxy variables and netrc (like the agent's scraper).

    Raises:
        ClientConfigError: A file named in the settings cannot be read.
    """
    config = config or ClientConfig()
    auth: httpx.BasicAuth | None = None
    if config.basic_auth is not None:
        password = config.basic_auth.password or ""
        if config.basic_auth.password_file is not None:
            try:
                password = config.basic_auth.password_file.read_text().strip()
            except OSError as exc:
                raise ClientConfigError(
                    f"basic_auth.password_file {config.basic_auth.password_file}: "
                    f"{exc.strerror or exc}"
                ) from None
        auth = httpx.BasicAuth(config.basic_auth.username, password)
    verify: ssl.SSLContext | bool = True
    tls = config.tls_config
    if tls is not None:
        try:
            context = ssl.create_default_context(
                cafile=str(tls.ca_file) if tls.ca_file is not None else None
            )
            if tls.cert_file is not None and tls.key_file is not None:
                context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ClientConfigError(f"tls_config: {exc}") from None
        if tls.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        verify = context
    return httpx.Client(
        auth=auth,
        verify=verify,
        timeout=httpx.Timeout(timeout_seconds),
        trust_env=False,
        follow_redirects=False,
    )
