"""``orbitstream run starlink`` as a real process against the fake Starlink API (served
from this test process on a thread of its own), on the embedded store (chDB):

- every row the fake served is stored exactly once, through 429/503/401/truncated
  responses and a restart in the middle (SIGTERM, run again);
- alert events across the restart are exactly those of one uninterrupted mapping (the
  open alerts were restored from the store), and so are the terminals' addresses;
- ``/health`` shows the poller, ``/metrics`` its rows;
- ``orbitstream replay starlink ARCHIVE`` adds nothing to the store that has it all.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orbitstream.pipelines.starlink import StarlinkEnvelopeError, StarlinkMapper
from orbitstream.simulate.starlink import FakeStarlink, FakeStarlinkConfig, Fault
from tests.conftest import _has_chdb, http, require
from tests.integration.starlink.conftest import fleet
from tests.integration.starlink.test_end_to_end import expected_rows
from tests.support.runner import Running, cli, wait_until

pytestmark = pytest.mark.integration

T = TypeVar("T")


class ThreadedFake:
    """A :class:`FakeStarlink` on an event loop in a thread of its own (the CLI process
    polls it while the test blocks on HTTP and subprocesses)."""

    def __init__(self, config: FakeStarlinkConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def make() -> FakeStarlink:
            fake = FakeStarlink(config)
            await fake.start("127.0.0.1", 0)
            return fake

        self.fake = self.run(make())

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapped() -> T:
            return fn()

        return self.run(wrapped())

    def close(self) -> None:
        self.run(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def fake() -> Iterator[ThreadedFake]:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    threaded = ThreadedFake(
        FakeStarlinkConfig(
            fleet=fleet(terminals=8, alert_open_probability=0.3, alert_clear_probability=0.3),
            backlog_ticks=10,
            record_bodies=True,
            reorder_columns=True,
        )
    )
    yield threaded
    threaded.close()


def _env(fake: FakeStarlink, tmp: Path) -> dict[str, str]:
    from tests.support.runner import plugin_env

    return plugin_env(
        tmp / "no-plugins",
        tmp / "data",
        CLIENT_ID=fake.client_id,
        CLIENT_SECRET=fake.client_secret,
        STARLINK_TOKEN_URL=fake.token_url,
        STARLINK_STREAM_URL=fake.stream_url,
        BATCH_SIZE="40",
        MAX_LINGER="200",
        STARLINK_RAW_ARCHIVE=str(tmp / "archive"),
        ORBITSTREAM_STARLINK__BACKOFF_BASE_SECS="0.01",
        ORBITSTREAM_STARLINK__BACKOFF_MAX_SECS="0.05",
        ORBITSTREAM_STARLINK__TIMEOUT_MARGIN_SECS="5",
    )


TABLES = ("telemetry", "alerts", "alert_events", "ip_allocations")


def _counts(env: dict[str, str]) -> dict[str, int]:
    """Each table's row count, in one query (one CLI process)."""
    sql = "SELECT " + ", ".join(f"(SELECT count() FROM {t}) AS {t}" for t in TABLES)
    out = cli(env, "query", "-p", "starlink", "-f", "json", sql)
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    return {t: int(row[t]) for t in TABLES}


def test_run_restart_and_replay_store_every_served_row_once(
    fake: ThreadedFake, tmp_path: Path
) -> None:
    f = fake.fake
    env = _env(f, tmp_path)
    for fault in (Fault.STREAM_429, Fault.STREAM_503, Fault.STREAM_401, Fault.STREAM_TRUNCATE):
        fake.call(lambda fault=fault: f.inject(fault, retry_after=0.01))  # type: ignore[misc]

    first = Running(env, "starlink")
    try:
        wait_until(lambda: fake.call(lambda: f.available()) == 0, 30)
        wait_until(lambda: first.query("SELECT count() FROM telemetry", "starlink")[0][0] > 0, 10)
        status, _, body = http("GET", first.url + "/health")
        source = json.loads(body)["pipelines"]["starlink"]["source"]
        assert status == 200 and source["type"] == "starlink" and source["polls"] >= 1
        assert source["halted"] is False and source["token_requests"] >= 2  # one 401
        # stream rows: each received one is accepted, rejected or a dropped copy, once
        # its body is durable ("received" counts a body as it is mapped, the others once
        # it is committed: a scrape during the last write sees the difference)
        seen: list[tuple[dict[str, float], int]] = []

        def settled() -> bool:
            _, _, metrics = http("GET", first.url + "/metrics")
            assert b'orbitstream_accepted_total{pipeline="starlink"}' in metrics
            counts = {
                name: _counter(metrics.decode(), name)
                for name in ("received", "accepted", "rejected", "duplicates")
            }
            _, _, health = http("GET", first.url + "/health")
            polled = int(json.loads(health)["pipelines"]["starlink"]["source"]["rows"])
            seen.append((counts, polled))
            taken = counts["accepted"] + counts["rejected"] + counts["duplicates"]
            return counts["received"] == taken > 0

        wait_until(settled, 10)
        counts, polled = seen[-1]
        assert counts["received"] == polled, seen[-3:]
    finally:
        assert first.stop() == 0, first.log.read_text()[-3000:]
    served_first = len(fake.call(lambda: list(f.served)))

    # more of the stream while the pipeline is down; then the restart
    fake.call(lambda: f.extend(10))
    fake.call(lambda: f.inject(Fault.STREAM_503, retry_after=0.01))
    second = Running(env, "starlink")
    try:
        wait_until(lambda: fake.call(lambda: f.available()) == 0, 30)
        wait_until(lambda: second.query("SELECT 1", "starlink") == [[1]], 10)
    finally:
        assert second.stop() == 0, second.log.read_text()[-3000:]
    served = fake.call(lambda: list(f.served))
    assert len(served) > served_first and not any(r.lost for r in served)

    # every served row exactly once
    want = expected_rows(f)
    rows = _query(env, "SELECT device_id, toUnixTimestamp64Nano(ts_ns) AS t FROM telemetry")
    keys = [(r["device_id"], int(r["t"])) for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == set(want["telemetry"])
    rows = _query(env, "SELECT device_id, toUnixTimestamp64Nano(ts_ns) AS t FROM ip_allocations")
    assert sorted((r["device_id"], int(r["t"])) for r in rows) == sorted(want["ip_allocations"])
    rows = _query(
        env,
        "SELECT device_id, toUnixTimestamp64Nano(ts_ns) AS t, alert_code, alert_name FROM alerts",
    )
    alerts = [(r["device_id"], int(r["t"]), int(r["alert_code"]), r["alert_name"]) for r in rows]
    assert len(alerts) == len(set(alerts)) and set(alerts) == want["alerts"]

    # alert events and addresses: those of one mapper over the same bodies, no restart
    reference = StarlinkMapper()
    want_events: list[tuple[Any, ...]] = []
    want_ips: list[tuple[Any, ...]] = []
    open_at_restart = 0
    for i, resp in enumerate(served):
        assert resp.body is not None
        try:
            mapping = reference.map(resp.body, 0)
        except StarlinkEnvelopeError:  # pragma: no cover - truncated bodies are not served
            continue
        want_events += [(e[1], e[2], e[3], e[5]) for e in mapping.rows["alert_events"]]
        terminal_rows: list[tuple[Any, ...]] = mapping.tuples("telemetry")
        want_ips += [(r[1], r[2], tuple(r[5])) for r in terminal_rows if r[0] == "UserTerminal"]
        reference.commit(mapping)
        if i + 1 == served_first:
            open_at_restart = len(reference.open_alerts())
    assert open_at_restart > 0, "the fleet should have open alerts at the restart"
    rows = _query(
        env,
        "SELECT device_id, toUnixTimestamp64Nano(ts_ns) AS t, alert_code, event FROM alert_events",
    )
    events = [(r["device_id"], int(r["t"]), int(r["alert_code"]), r["event"]) for r in rows]
    assert sorted(events) == sorted(want_events) and len(set(events)) == len(events)
    rows = _query(
        env,
        "SELECT device_id, toUnixTimestamp64Nano(ts_ns) AS t, ipv4 FROM telemetry "
        "WHERE device_type = 'UserTerminal'",
    )
    got_ips = sorted((r["device_id"], int(r["t"]), tuple(r["ipv4"])) for r in rows)
    assert got_ips == sorted(want_ips)

    # the raw archive replayed onto the store that has it all: nothing added
    archive = tmp_path / "archive"
    assert len(list(archive.glob("*.json.gz"))) == len(served)
    before = _counts(env)
    out = cli(env, "replay", "starlink", str(archive))
    assert out.returncode == 0, out.stderr
    assert f"replayed {len(served)} responses" in out.stderr.replace(",", "")
    assert _counts(env) == before

    # into an empty store the archive gives the same rows
    fresh = {**env, "ORBITSTREAM_DATA_DIR": str(tmp_path / "fresh")}
    out = cli(fresh, "replay", "starlink", str(archive))
    assert out.returncode == 0, out.stderr
    assert _counts(fresh) == before

    # a truncated file: named, exit 1, and the other files are still replayed
    files = sorted(archive.glob("*.json.gz"))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for archived in files:
        (damaged / archived.name).write_bytes(archived.read_bytes())
    torn = damaged / files[0].name
    torn.write_bytes(torn.read_bytes()[:40])
    (damaged / "copy.json.gz").write_bytes(files[1].read_bytes())  # renamed: not read
    other = {**env, "ORBITSTREAM_DATA_DIR": str(tmp_path / "other")}
    out = cli(other, "replay", "starlink", str(damaged))
    assert out.returncode == 1, out.stderr
    text = " ".join(out.stderr.split())
    assert f"skipped unreadable archive file {torn}" in text
    assert f"replayed {len(served) - 1} responses" in text.replace(",", "")
    assert "note: 1 file not named like archived responses" in text and "copy.json.gz" in text
    assert 0 < _counts(other)["telemetry"] <= before["telemetry"]


def _counter(metrics: str, name: str) -> float:
    """``orbitstream_<name>_total{pipeline="starlink"}`` (0 when absent)."""
    prefix = f'orbitstream_{name}_total{{pipeline="starlink"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def _query(env: dict[str, str], sql: str) -> list[dict[str, Any]]:
    out = cli(env, "query", "-p", "starlink", "-f", "json", sql)
    assert out.returncode == 0, out.stderr
    rows: list[dict[str, Any]] = json.loads(out.stdout)
    return rows


def test_bad_settings_stop_start_up_naming_the_variable(tmp_path: Path) -> None:
    from tests.support.runner import plugin_env

    env = plugin_env(tmp_path / "none", tmp_path / "data", CLIENT_ID="x", CLIENT_SECRET="y")
    out = cli({**env, "BATCH_SIZE": "65001"}, "run", "starlink")
    assert out.returncode == 2 and "BATCH_SIZE" in out.stderr
    env.pop("CLIENT_ID")
    out = cli(env, "run", "starlink")
    assert out.returncode == 2 and "CLIENT_ID" in out.stderr
    out = cli(env, "pipelines")
    assert out.returncode == 0 and "starlink" in out.stdout


def test_health_says_so_while_the_api_keeps_failing_then_recovers(
    fake: ThreadedFake, tmp_path: Path
) -> None:
    f = fake.fake
    env = _env(f, tmp_path)
    # every poll: a 401 for the cached token and for a fresh one, for a while
    fake.call(lambda: f.inject(Fault.STREAM_401, count=14))
    run = Running(env, "starlink")
    try:

        def unhealthy() -> bool:
            status, _, body = http("GET", run.url + "/health")
            source = json.loads(body)["pipelines"]["starlink"]["source"]
            return status == 503 and "CLIENT_ID" in str(source.get("problem"))

        wait_until(unhealthy, 30)
        # it kept trying with new tokens (bounded: two per refused poll) and reads on
        wait_until(lambda: fake.call(lambda: f.available()) == 0, 30)
        status, _, body = http("GET", run.url + "/health")
        source = json.loads(body)["pipelines"]["starlink"]["source"]
        assert status == 200 and "problem" not in source, source
        assert source["token_requests"] <= 2 * 7 + 2
    finally:
        assert run.stop() == 0, run.log.read_text()[-3000:]
