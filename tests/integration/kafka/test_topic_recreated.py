"""A topic that comes back empty — deleted and created again, or a broker that lost its
storage — starts its offsets at 0 again. The chunk boundaries and batch ids recorded for
the old topic must not apply to the new one: its messages were stored as "already written"
(dropped by the stores' dedup) and nothing said so."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.integration.kafka.support import SESSION_TIMEOUT_MS
from tests.support.kafka import TansuBroker
from tests.support.runner import Running, cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _events(run: Running) -> int:
    return int(run.query("SELECT count() FROM session_events", "sessions")[0][0])


def _run_until(env: dict[str, str], want: int, timeout: float = 60) -> None:
    run = Running(env, "sessions")
    try:
        deadline = time.monotonic() + timeout
        while (got := _events(run)) < want and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1.0)  # nothing more arrives
        assert _events(run) == want, (got, want, run.log.read_text()[-3000:])
    finally:
        assert run.stop() == 0, run.log.read_text()[-3000:]


def test_a_recreated_topic_is_not_mistaken_for_a_replay(
    tmp_path: Path, broker: TansuBroker
) -> None:
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "BATCH_TIMEOUT": "100ms",
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "ORBITSTREAM_KAFKA_LINGER": "200ms",
        "ORBITSTREAM_KAFKA_CHUNK_MESSAGES": "100",
        "KAFKA_TOPIC": "sessions-recreated",
    }
    env.pop("KAFKA_CONSUMER_GROUP", None)
    sim = ("simulate", "sessions", "--partitions", "2", "--malformed-rate", "0")
    out = cli(env, *sim, "-n", "600", "--seed", "1")
    assert out.returncode == 0, out.stderr
    _run_until(env, 600)
    # the broker comes back without its data (memory storage): same topic name, new
    # topic id, offsets from 0, and the group's committed offsets are gone
    broker.stop()
    broker.start()
    out = cli(env, *sim, "-n", "400", "--seed", "2")
    assert out.returncode == 0, out.stderr
    _run_until(env, 1000)  # was 600: offsets 0..399 matched the old chunks' batch ids
