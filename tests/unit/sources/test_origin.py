"""Who may call the query endpoint: loopback as ipaddress decides, same origin, known hosts."""

from __future__ import annotations

import pytest

from orbitstream.sources.http.origin import is_loopback, origin_problem
from orbitstream.sources.http.server import Request


@pytest.mark.parametrize(
    ("client", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped, as a dual-stack socket reports it
        ("::ffff:10.0.0.1", False),
        ("10.0.0.1", False),
        ("127.0.0.1.evil.example", False),
        ("localhost", False),  # a name is not an address
        ("", False),
        ("fe80::1%lo", False),
    ],
)
def test_loopback_is_decided_by_ipaddress(client: str, loopback: bool) -> None:
    assert is_loopback(client) is loopback


def _req(**headers: str) -> Request:
    return Request("POST", "/api/query", "", headers, b"", "127.0.0.1")


def test_same_origin_and_known_hosts_pass() -> None:
    assert origin_problem(_req(host="127.0.0.1:8080")) is None
    assert origin_problem(_req(host="localhost:8080", origin="http://localhost:8080")) is None
    assert origin_problem(_req(host="[::1]:8080")) is None
    assert origin_problem(_req(host="ops.example:8080"), ["ops.example"]) is None
    assert origin_problem(_req(host="127.0.0.1:8080", **{"sec-fetch-site": "same-origin"})) is None


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({}, "Host header is required"),
        ({"host": "evil.example:8080"}, "ORBITSTREAM_ALLOWED_HOSTS"),
        ({"host": "127.0.0.1:8080", "origin": "http://evil.example"}, "cross-origin"),
        ({"host": "127.0.0.1:8080", "origin": "null"}, "cross-origin"),
        ({"host": "127.0.0.1:8080", "origin": "http://127.0.0.1:9999"}, "cross-origin"),
        ({"host": "127.0.0.1:8080", "sec-fetch-site": "cross-site"}, "cross-site"),
        ({"host": "127.0.0.1:notaport"}, "Host header"),
    ],
)
def test_cross_origin_and_unknown_hosts_are_refused(headers: dict[str, str], fragment: str) -> None:
    problem = origin_problem(_req(**headers))
    assert problem is not None and fragment in problem
