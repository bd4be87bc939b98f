"""Who may call the query endpoint: loopback clients, same-origin requests, known hosts.

A web page in the user's browser can send a ``text/plain`` POST to any address, the
service's loopback one included, and DNS rebinding lets a page's own host name resolve
to 127.0.0.1. So the query endpoint takes only ``application/json`` (which a cross-origin
page cannot send without a CORS preflight this service never answers), refuses a request
whose ``Origin`` is not the service's own (the ``Host`` it was sent to), and refuses a
``Host`` that is neither an IP address, ``localhost`` nor a configured host name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection
from urllib.parse import urlsplit

from orbitstream.sources.http.server import Request

__all__ = ["is_loopback", "origin_problem"]


def is_loopback(client: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        ip = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _host_name(host: str) -> str | None:
    """The name of a ``Host`` header value (``None`` when it is malformed)."""
    try:
        parts = urlsplit(f"//{host}")
        name = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return None
    return name


def _known(name: str, allowed_hosts: Collection[str]) -> bool:
    if name == "localhost" or name in allowed_hosts:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def origin_problem(request: Request, allowed_hosts: Collection[str] = ()) -> str | None:
    """Why ``request`` may not use the query endpoint (``None`` when it may)."""
    host = request.headers.get("host", "").strip().lower()
    name = _host_name(host) if host else None
    if name is None:
        return "a valid Host header is required"
    if not _known(name, {h.lower() for h in allowed_hosts}):
        return (
            f"host {name!r} is not this service's (use an IP address or localhost, or list it "
            "in ORBITSTREAM_ALLOWED_HOSTS)"
        )
    origin = request.headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            return f"cross-origin requests are refused (Origin {origin!r})"
    if request.headers.get("sec-fetch-site", "same-origin").lower() not in ("same-origin", "none"):
        return "cross-site requests are refused"
    return None
