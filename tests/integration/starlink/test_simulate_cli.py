"""``orbitstream simulate starlink --serve`` as a process: it prints the variables a
pipeline needs, and they work against the token and stream endpoints it serves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse

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
    [((), "--serve"), (("--serve", "--faults", "stream_999=0.1"), "unknown fault")],
)
def test_bad_invocations_exit_2(args: tuple[str, ...], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orbitstream", "simulate", "starlink", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and message in out.stderr + out.stdout
