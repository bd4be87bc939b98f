"""The stream advances when it answers, whether anyone still listens or not: a poll given
up on is a batch lost.

- SIGTERM during a long poll (``MAX_LINGER`` longer than ``ORBITSTREAM_SHUTDOWN_TIMEOUT``)
  waits for its answer and writes it before exiting;
- ``kill -9`` while a store is down: the body in hand was read but is not in the store.
  With ``STARLINK_RAW_ARCHIVE`` it is on disk; the restart writes it before polling again,
  without anyone running ``replay``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from orbitstream.simulate.starlink import FakeStarlinkConfig
from tests.conftest import _has_chdb, http, require
from tests.integration.starlink.conftest import fleet
from tests.integration.starlink.test_end_to_end import expected_rows
from tests.integration.starlink.test_run_cli import ThreadedFake, _env, _query
from tests.support.pgcluster import TempCluster, started_cluster
from tests.support.runner import Running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cluster() -> Iterator[TempCluster]:
    with started_cluster() as c:
        yield c


def _telemetry(url: str) -> list[tuple[str, int]]:
    with psycopg.connect(url, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT device_id, (extract(epoch FROM ts_ns) * 1000000)::bigint "
            "FROM starlink.telemetry"
        ).fetchall()
    return [(str(d), int(t)) for d, t in rows]


def _source(run: Running) -> dict[str, object]:
    _, _, body = http("GET", run.url + "/health")
    source: dict[str, object] = json.loads(body)["pipelines"]["starlink"]["source"]
    return source


def _halted(run: Running) -> bool:
    return bool(_source(run)["halted"])


def _on_postgres(
    cluster: TempCluster, tmp_path: Path, **extra: str
) -> tuple[ThreadedFake, dict[str, str]]:
    """A fake fleet and the environment of ``run starlink`` on the cluster (archive on)."""
    threaded = ThreadedFake(
        FakeStarlinkConfig(fleet=fleet(terminals=6), backlog_ticks=4, record_bodies=True)
    )
    env = {
        **_env(threaded.fake, tmp_path),
        "DATABASE_URL": cluster.url.replace("postgresql:", "postgres:"),
        "ORBITSTREAM_RETRY_MAX_BACKOFF": "500ms",
        **extra,
    }
    return threaded, env


def _hold_a_body(threaded: ThreadedFake, cluster: TempCluster, env: dict[str, str]) -> Running:
    """``run starlink`` until the fake is drained into PostgreSQL, then PostgreSQL
    stopped and more rows served: the next body is read, archived and held (polling
    halted). Returns the running process."""
    f = threaded.fake
    run = Running(env, "starlink")
    try:
        wait_until(lambda: threaded.call(lambda: f.available()) == 0, 30)
        wait_until(lambda: len(_telemetry(cluster.url)) > 0, 15)
        cluster.stop()
        threaded.call(lambda: f.extend(4))
        wait_until(lambda: _halted(run), 30)
    except BaseException:
        run.kill()
        raise
    return run


def _restart_stores_every_row_once(
    threaded: ThreadedFake, cluster: TempCluster, env: dict[str, str]
) -> str:
    """PostgreSQL back, ``run starlink`` again: every row the fake served is stored once
    (the held body included). Returns the second run's log."""
    f = threaded.fake
    cluster.start()
    second = Running(env, "starlink")
    try:
        wait_until(lambda: threaded.call(lambda: f.available()) == 0, 30)
        want = threaded.call(lambda: expected_rows(f))
        expected = {(d, t // 1000) for d, t in want["telemetry"]}  # µs in PostgreSQL
        wait_until(lambda: set(_telemetry(cluster.url)) == expected, 30)
        got = _telemetry(cluster.url)
        assert len(got) == len(set(got))
        return second.log.read_text()
    finally:
        assert second.stop() == 0, second.log.read_text()[-3000:]


def test_kill_9_while_the_store_is_down_then_the_restart_writes_the_archived_body(
    cluster: TempCluster, tmp_path: Path
) -> None:
    threaded, env = _on_postgres(cluster, tmp_path, ORBITSTREAM_POSTGRES__CONNECT_TIMEOUT_SECS="1")
    f = threaded.fake
    try:
        first = _hold_a_body(threaded, cluster, env)
        held = threaded.call(lambda: f.position())
        first.kill()  # SIGKILL: no shutdown, no spill
        assert threaded.call(lambda: f.position()) == held
        archive = tmp_path / "archive"
        pending = [
            p.name
            for p in archive.glob("*.json.gz")
            if p.name > (archive / "durable").read_text().strip()
        ]
        assert pending, "the held body is archived after the durable mark"

        log = _restart_stores_every_row_once(threaded, cluster, env)
        assert "bodies read before the last stop but not known to be stored" in log
        mark = (archive / "durable").read_text().strip()
        assert mark == max(p.name for p in archive.glob("*.json.gz"))
    finally:
        threaded.close()


def test_sigterm_during_a_long_poll_waits_for_its_answer_and_writes_it(tmp_path: Path) -> None:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    threaded = ThreadedFake(
        FakeStarlinkConfig(fleet=fleet(terminals=4), backlog_ticks=2, record_bodies=True)
    )
    f = threaded.fake
    env = {
        **_env(f, tmp_path),
        "MAX_LINGER": "6000",  # the API holds a poll up to 6 s
        "ORBITSTREAM_SHUTDOWN_TIMEOUT": "1s",
    }
    try:
        run = Running(env, "starlink")
        try:
            wait_until(lambda: threaded.call(lambda: f.available()) == 0, 30)
            # the fake counts a poll when it answers it: once one was answered empty
            # (the linger ran out), the next one is sent at once and held for 6 s
            polls = threaded.call(lambda: f.count("stream"))
            wait_until(lambda: threaded.call(lambda: f.count("stream")) > polls, 10)
            wait_until(lambda: _source(run)["state"] == "polling", 10)
            time.sleep(0.5)  # the request has reached the fake, which holds it
        finally:
            # a poll is in flight, waiting for rows; they come after the SIGTERM and the
            # API answers with them at the end of the linger, 5 s past the timeout
            run.proc.send_signal(15)
            threaded.call(lambda: f.extend(1))
            code = run.proc.wait(60)
        assert code == 0, run.log.read_text()[-3000:]
        # the API answers that poll (to whoever still listens) and moves on
        wait_until(lambda: threaded.call(lambda: f.available()) == 0, 15)
        served = threaded.call(lambda: list(f.served))
        assert served[-1].body is not None and not any(r.lost for r in served)
        want = threaded.call(lambda: expected_rows(f))
        rows = _query(env, "SELECT device_id, toUnixTimestamp64Nano(ts_ns) AS t FROM telemetry")
        got = [(r["device_id"], int(r["t"])) for r in rows]
        assert len(got) == len(set(got)) and set(got) == set(want["telemetry"])
    finally:
        threaded.close()


def test_sigterm_with_the_store_down_keeps_to_the_shutdown_timeout_and_loses_nothing(
    cluster: TempCluster, tmp_path: Path
) -> None:
    """The body in hand waits for a store that is down: the stop keeps to
    ORBITSTREAM_SHUTDOWN_TIMEOUT (no poll is in flight to wait for), within the
    ``stop_secs`` it logged at start; the write still waiting for PostgreSQL is cancelled
    and spilled; the archived body is written by the next start."""
    threaded, env = _on_postgres(
        cluster,
        tmp_path,
        ORBITSTREAM_SHUTDOWN_TIMEOUT="3s",
        ORBITSTREAM_POSTGRES__CONNECT_TIMEOUT_SECS="20",  # a write waits long for it
        ORBITSTREAM_LOG_LEVEL="info",
        ORBITSTREAM_LOG_FORMAT="json",
    )
    try:
        first = _hold_a_body(threaded, cluster, env)
        began = time.monotonic()
        first.proc.send_signal(15)
        code = first.proc.wait(90)
        took = time.monotonic() - began
        log = first.log.read_text()
        assert code == 0, log[-3000:]
        started = next(
            json.loads(line)
            for line in log.splitlines()
            if line.startswith("{") and json.loads(line)["message"] == "Service started."
        )
        assert took < started["stop_secs"], (took, started["stop_secs"])
        assert took < 3 + 5, took  # the shutdown timeout and the closing margin
        assert (tmp_path / "data" / "dead_letters.jsonl").exists()  # spilled, kept

        _restart_stores_every_row_once(threaded, cluster, env)
    finally:
        threaded.close()
