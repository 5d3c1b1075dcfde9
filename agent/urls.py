"""HTTP URLs as the agent reads them: one reading for the settings check and the scraper.

Pure module: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["HttpUrl", "parse_http_url"]

_EXAMPLE = "e.g. http://127.0.0.1:8000/metrics"


@dataclass(frozen=True)
class HttpUrl:
    """One http or https URL, read.

    Attributes:
        scheme: ``http`` or ``https``.
        host: The host, without brackets around an IPv6 address.
        port: The TCP port (80 or 443 when the URL has none).
        target: Path and query, as sent in the request line.
        username: User from the URL's user information, decoded, or None.
        password: Password from the URL's user information, decoded, or None.
    """

    scheme: str
    host: str
    port: int
    target: str
    username: str | None
    password: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        """Scheme, host and port: what a connection (and a credential) belongs to."""
        return (self.scheme, self.host, self.port)

    def shown(self) -> str:
        """The URL without user information, for messages."""
        return f"{self.origin_text()}{self.target}"

    def origin_text(self) -> str:
        """``scheme://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_http_url(text: str) -> HttpUrl:
    """Read an http or https URL.

    Args:
        text: The URL.

    Returns:
        The URL, read.

    Raises:
        ValueError: Naming what is wrong; never repeating the URL, which may hold a
            password.
    """
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in text):
        # urlsplit would drop a tab or newline silently and ask for another path.
        raise ValueError("spaces or control characters in the URL (percent-encode them)")
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unclosed IPv6 bracket
        raise ValueError(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"must start with http:// or https://, {_EXAMPLE}")
    if not parts.hostname:
        raise ValueError(f"has no host, {_EXAMPLE}")
    try:
        port = parts.port
    except ValueError:
        port_text = parts.netloc.rpartition(":")[2]
        if port_text.isdigit():
            raise ValueError(f"port {port_text} is not in 1..65535") from None
        raise ValueError(f"not a valid URL: port {port_text!r} is not a number") from None
    if port == 0:
        raise ValueError("port 0 is not in 1..65535")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return HttpUrl(
        scheme=parts.scheme,
        host=parts.hostname,
        port=port if port is not None else (443 if parts.scheme == "https" else 80),
        target=target,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
