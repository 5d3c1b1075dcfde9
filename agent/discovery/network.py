"""Which listening sockets a server URL can reach: host and port matching, no DNS."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

from agent.discovery.processes import Listener

WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "::0"})


def url_host_port(url: str) -> tuple[str, int]:
    """Host and TCP port of a server URL.

    Args:
        url: ``http://host:port/path`` (the port defaults to 80, or 443 for https).

    Returns:
        The lower-cased host (no brackets) and the port.

    Raises:
        ValueError: When the URL has no host or an invalid port.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"server URL {url!r} has no host")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname.lower(), port


def listening_pids(url: str, listeners: Sequence[Listener]) -> set[int]:
    """PIDs of the listeners a connection to ``url`` could reach; empty for a bad URL."""
    try:
        host, port = url_host_port(url)
    except ValueError:
        return set()
    return {lst.pid for lst in listeners if lst.port == port and _same_host(host, lst.ip)}


def _same_host(host: str, listener_ip: str) -> bool:
    """Could a connection to ``host`` reach a socket bound to ``listener_ip`` on this host?"""
    if listener_ip in WILDCARD_ADDRESSES or listener_ip == host:
        return True
    try:
        bound = _unmap(ipaddress.ip_address(listener_ip))
    except ValueError:
        return False
    if host == "localhost":
        return bound.is_loopback
    try:
        target = _unmap(ipaddress.ip_address(host))
    except ValueError:
        # A name other than localhost: resolving it would be I/O; the port decides.
        return True
    return target == bound or (target.is_loopback and bound.is_loopback)


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _unmap(address: _Address) -> _Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
