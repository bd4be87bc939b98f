"""Start-up failures are one clear line naming the setting, never a traceback or a
misleading message: a taken port, an unreachable Kafka broker."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from orbitstream.errors import SourceError
from orbitstream.simulate.publisher import ensure_topic
from tests.support.runner import cli

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    "argv", [("serve",), ("run", "starlink"), ("demo", "--pipeline", "starlink")]
)
def test_a_taken_port_names_the_port_setting(tmp_path: Path, argv: tuple[str, ...]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "ORBITSTREAM_DATA_DIR": str(tmp_path),
            "ORBITSTREAM_HOST": "127.0.0.1",
            "PORT": str(port),
            "CLIENT_ID": "id",
            "CLIENT_SECRET": "secret",
            "STARLINK_TOKEN_URL": f"http://127.0.0.1:{port}/token",
            "STARLINK_STREAM_URL": f"http://127.0.0.1:{port}/stream",
        }
        done = (
            cli(env, *argv, "--data-dir", str(tmp_path)) if argv[0] == "demo" else cli(env, *argv)
        )
    out = done.stdout + done.stderr
    assert done.returncode == 2, out  # not a crash (a segfault was 139) or a hang
    assert f"cannot listen on 127.0.0.1:{port}" in out and "PORT" in out, out
    assert "Traceback" not in out
    assert "poll" not in out.lower()  # found before anything started (nothing was read)


def test_an_unreachable_broker_is_a_source_error_naming_the_setting() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(SourceError, match="KAFKA_BOOTSTRAP_SERVERS"):
            ensure_topic(f"127.0.0.1:{port}", "t", timeout_secs=1.0)


def test_with_no_broker_the_service_serves_health_and_logs_the_client_once(
    tmp_path: Path,
) -> None:
    """``run sessions`` with a broker that refuses connections: PORT answers at once (the
    topics are created after the server is up: that waits 15 s for an answer), /health
    says the broker is down within seconds and stays so, and librdkafka's lines come as structured records, one per
    client and kind (it repeats its connection failure every few tens of ms, and wrote
    hundreds of raw ``%3|…|FAIL|`` lines to stderr)."""
    import json
    import time

    from tests.conftest import http
    from tests.support.runner import Running

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        env = {
            **os.environ,
            "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
            "ORBITSTREAM_HOST": "127.0.0.1",
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
        }
        started = time.monotonic()
        service = Running(env, "sessions")
        try:
            assert time.monotonic() - started < 12  # well before one topic's 15 s
            deadline = time.monotonic() + 40
            while True:
                status, _, body = http("GET", service.url + "/health", timeout=2)
                doc = json.loads(body)
                source = doc["pipelines"]["sessions"]["source"]
                if source.get("problem"):
                    break
                assert time.monotonic() < deadline, doc
                time.sleep(0.5)
            assert status == 503 and "no Kafka broker reachable" in source["problem"], doc
            # unhealthy 5 s after start (it said healthy for ~25 s: the consumer, whose
            # reports it read, starts only after the 15 s topic creation gives up), and
            # still unhealthy once the consumer has taken over
            assert time.monotonic() - started < 5 + 8, doc
            while time.monotonic() - started < 24:
                status, _, body = http("GET", service.url + "/health", timeout=2)
                assert status == 503, body
                time.sleep(1.0)
        finally:
            assert service.stop() == 0
    lines = service.log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("%")], lines[:5]
    records = [json.loads(line) for line in lines if line.startswith("{")]
    client = [r for r in records if r.get("message") == "Kafka client reports."]
    assert client and all("Connection refused" in r["detail"] for r in client), client
    kinds = [(r["client"], r["facility"], r["level"]) for r in client]
    assert len(kinds) == len(set(kinds)), kinds  # rate-limited: one per minute each
