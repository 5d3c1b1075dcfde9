"""Container health probe: exit 0 when the agent's /healthz answers 200, 1 otherwise.

The slim Python image has no curl, so Docker's HEALTHCHECK runs this with the image's Python.
Standard library only: it must not import the agent (a broken install should fail the probe, not
the probe itself).

The URL is ``TOKENERGY_HEALTHCHECK_URL`` when set; otherwise it is built from the port in
``TOKENERGY_HTTP__LISTEN`` (default 10110) on the loopback address, because the agent listens on
all interfaces by default and the probe runs inside the container. With TLS enabled in the web
config, set ``TOKENERGY_HEALTHCHECK_URL=https://127.0.0.1:10110/healthz``: like the kubelet's HTTPS
probes, this one does not verify the certificate (it asks "is it up", not "who is it"). With
basic auth, list ``/healthz`` in the web config's ``auth_excluded_paths``.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

DEFAULT_LISTEN = "0.0.0.0:10110"
TIMEOUT_SECONDS = 4.0


def probe_url(env: Mapping[str, str]) -> str:
    """The /healthz URL to probe.

    Args:
        env: The process environment.

    Returns:
        An http URL on the loopback address unless ``TOKENERGY_HEALTHCHECK_URL`` says otherwise.
    """
    explicit = env.get("TOKENERGY_HEALTHCHECK_URL")
    if explicit:
        return explicit
    listen = env.get("TOKENERGY_HTTP__LISTEN") or DEFAULT_LISTEN
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def check(url: str, timeout_seconds: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """GET the URL once.

    Args:
        url: The /healthz URL.
        timeout_seconds: Connect and read timeout, s.

    Returns:
        Whether the answer was 200, and a one-line reason.
    """
    context = None
    if url.startswith("https:"):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds, context=context) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, f"{url}: {exc}"
    return status == 200, f"{url}: HTTP {status}"


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Probe once and report.

    Args:
        argv: An optional URL as the only argument, overriding the environment.
        env: The environment; ``os.environ`` by default.

    Returns:
        0 when healthy, 1 when not (Docker's HEALTHCHECK contract).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    url = args[0] if args else probe_url(os.environ if env is None else env)
    healthy, reason = check(url)
    print(reason, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
