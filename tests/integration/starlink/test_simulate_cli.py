"""``orbitstream simulate starlink --serve`` as a process: it prints the variables a
pipeline needs, and they work against the token and stream endpoints it serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import http

pytestmark = pytest.mark.integration


def test_serve_prints_working_credentials_and_urls() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orbitstream",
            "simulate",
            "starlink",
            "--serve",
            "--port",
            "0",
            "--terminals",
            "3",
            "--backlog-ticks",
            "2",
            "--tick-interval",
            "0",
            "--client-id",
            "acct-1",
            "--client-secret",
            "pw-1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ORBITSTREAM_LOG_LEVEL": "warning"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().strip() for _ in range(4)]
        env = dict(line.split("=", 1) for line in lines)
        assert env["CLIENT_ID"] == "acct-1" and env["CLIENT_SECRET"] == "pw-1"
        form = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": "acct-1", "client_secret": "pw-1"}
        ).encode()
        status, _, body = http(
            "POST",
            env["STARLINK_TOKEN_URL"],
            form,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 200, body
        token = json.loads(body)["access_token"]
        status, _, body = http(
            "POST",
            env["STARLINK_STREAM_URL"],
            b'{"batchSize": 1000, "maxLingerMs": 100}',
            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        assert status == 200, body
        doc = json.loads(body)
        assert len(doc["data"]["values"]) > 0
        assert set(doc["data"]["columnNamesByDeviceType"]) >= {"u", "r", "i"}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "served" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--serve"),
        (("--serve", "--faults", "stream_999=0.1"), "unknown fault"),
        (("--serve", "--retry-after", "soon"), "--retry-after"),
        (("--serve", "--retry-after", "0.5"), "whole seconds"),
    ],
)
def test_bad_invocations_exit_2(args: tuple[str, ...], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orbitstream", "simulate", "starlink", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and message in out.stderr + out.stdout


@contextmanager
def _fake(*args: str) -> Iterator[tuple[dict[str, str], str]]:
    """The fake as a process with ``args``: its variables and a minted token."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "orbitstream", "simulate", "starlink", "--serve", "--port", "0",
         "--terminals", "4", "--backlog-ticks", "6", "--tick-interval", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        env = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(4))
        form = urllib.parse.urlencode(
            {"grant_type": "client_credentials", "client_id": env["CLIENT_ID"],
             "client_secret": env["CLIENT_SECRET"]}
        ).encode()  # fmt: skip
        status, _, body = http(
            "POST", env["STARLINK_TOKEN_URL"], form,
            {"Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert status == 200, body
        yield env, json.loads(body)["access_token"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def _poll(env: dict[str, str], token: str, size: int = 20) -> tuple[int, dict[str, str], bytes]:
    return http(
        "POST",
        env["STARLINK_STREAM_URL"],
        json.dumps({"batchSize": size, "maxLingerMs": 50}).encode(),
        {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(("retry_after", "header"), [("none", None), ("7", "7")])
def test_random_429s_with_and_without_retry_after(retry_after: str, header: str | None) -> None:
    with _fake("--faults", "stream_429=1", "--retry-after", retry_after) as (env, token):
        status, headers, _ = _poll(env, token)
    assert status == 429
    assert {k.lower(): v for k, v in headers.items()}.get("retry-after") == header


def test_alert_map_changes_and_legacy_fields_from_the_command_line() -> None:
    with _fake("--alert-map-every", "1", "--legacy-fields", "--alert-rate", "0.5") as (env, tok):
        docs = []
        for _ in range(3):
            status, _, body = _poll(env, tok)
            assert status == 200, body
            docs.append(json.loads(body))
    maps = [json.dumps(d["metadata"]["enums"]["AlertsByDeviceType"], sort_keys=True) for d in docs]
    assert len(set(maps)) == 3, maps  # a new alert map in every response
    assert all("aggregateValues" in d["data"] for d in docs), docs[0].keys()
    assert all("LastPartitionUtcTimestampNs" in d["metadata"] for d in docs)
