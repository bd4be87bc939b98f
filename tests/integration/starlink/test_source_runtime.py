"""The starlink source on the runtime (in process, chDB plus a sink that can go down):
while a sink is down nothing more is read from the stream and ``/health`` says polling is
halted; once it recovers polling resumes and every served row is in both sinks once."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from orbitstream.settings import load_settings
from orbitstream.sinks.memory import MemorySink
from tests.conftest import _has_chdb, free_port, http, require
from tests.integration.starlink.conftest import FakeFactory, fleet
from tests.integration.starlink.test_end_to_end import expected_rows

pytestmark = pytest.mark.integration


async def _until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.05)


async def _health(url: str) -> tuple[int, dict[str, object]]:
    status, _, body = await asyncio.to_thread(http, "GET", url + "/health")
    doc: dict[str, object] = json.loads(body)
    return status, doc


async def test_polling_halts_while_a_sink_is_down_and_resumes(
    fake_factory: FakeFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    from orbitstream.runtime import Runtime

    caplog.set_level(logging.INFO, logger="orbitstream.sources.starlink_api")
    fake = await fake_factory(fleet=fleet(terminals=6), backlog_ticks=4)
    for name, value in {
        "CLIENT_ID": fake.client_id,
        "CLIENT_SECRET": fake.client_secret,
        "STARLINK_TOKEN_URL": fake.token_url,
        "STARLINK_STREAM_URL": fake.stream_url,
        "BATCH_SIZE": "30",
        "MAX_LINGER": "100",
    }.items():
        monkeypatch.setenv(name, value)
    flaky = MemorySink("flaky")
    settings = load_settings(
        data_dir=tmp_path / "d",
        port=free_port(),
        host="127.0.0.1",
        engine={"retry_max_backoff_secs": 0.2},
    )
    svc = Runtime(settings, ["starlink"], extra_sinks=[flaky])
    port = await svc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        await _until(lambda: fake.available() == 0)
        flaky.down = True
        fake.extend(4)
        # the poll in hand waits for its ack; after it nothing is read
        await asyncio.sleep(2.5)
        held = fake.position()
        requests = fake.count("stream")
        await asyncio.sleep(1.0)
        assert fake.position() == held and fake.count("stream") == requests
        assert fake.available() > 0, "rows are still waiting in the stream"
        status, doc = await _health(url)
        pipeline = doc["pipelines"]["starlink"]  # type: ignore[index]
        assert status == 503 and pipeline["status"] == "unhealthy"
        assert pipeline["sinks"]["flaky"]["status"] == "down"
        assert pipeline["source"]["state"] == "delivering" and pipeline["source"]["halted"]
        # the log says so too, at once (not after the 30 s between repeats)
        assert any("polling halted" in r.getMessage() for r in caplog.records)

        flaky.down = False
        await _until(lambda: fake.available() == 0)
        await _until(lambda: svc.running[0].pipeline.healthy)
        status, doc = await _health(url)
        assert status == 200
        assert doc["pipelines"]["starlink"]["source"]["halted"] is False  # type: ignore[index]
        assert any("polling resumed" in r.getMessage() for r in caplog.records)
        await _until(lambda: svc.running[0].pipeline.health()["flaky"]["buffered_rows"] == 0)
    finally:
        await svc.stop()

    want = expected_rows(fake)
    got = [(str(r[1]), int(str(r[2]))) for r in flaky.rows("telemetry")]
    assert len(got) == len(set(got)) and set(got) == set(want["telemetry"])
    from orbitstream.sinks.chdb import ChdbSink

    store = ChdbSink(tmp_path / "d" / "chdb")
    try:
        res = store.query_sync(
            "SELECT device_id, toUnixTimestamp64Nano(ts_ns) FROM starlink.telemetry"
        )
    finally:
        store.close_sync()
    stored = [(str(d), int(str(t))) for d, t in res.rows]
    assert len(stored) == len(set(stored)) and set(stored) == set(want["telemetry"])


async def test_a_200_body_that_is_not_json_is_kept_in_dead_letters(
    fake_factory: FakeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API may advance past the rows of a 200 it garbled (a truncated body, an error
    page): the raw body is kept in the store's dead letters before the poll is retried,
    and every row served afterwards is stored."""
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    from orbitstream.runtime import Runtime
    from orbitstream.simulate.starlink import Fault

    fake = await fake_factory(fleet=fleet(terminals=4), backlog_ticks=3)
    fake.inject(Fault.STREAM_TRUNCATE, advance=True)  # its rows are gone from the stream
    fake.inject(Fault.STREAM_INVALID_JSON)
    for name, value in {
        "CLIENT_ID": fake.client_id,
        "CLIENT_SECRET": fake.client_secret,
        "STARLINK_TOKEN_URL": fake.token_url,
        "STARLINK_STREAM_URL": fake.stream_url,
        "BATCH_SIZE": "10",
        "MAX_LINGER": "50",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(data_dir=tmp_path / "d", port=free_port(), host="127.0.0.1")
    svc = Runtime(settings, ["starlink"])
    await svc.start()
    try:
        await _until(lambda: fake.available() == 0, 30)
        await _until(lambda: svc.running[0].pipeline.health()["chdb"]["buffered_rows"] == 0)
        store = svc.stores[0]
        letters = (
            await store.query(
                "SELECT error, JSONExtractString(row, 'body'), JSONExtractInt(row, 'bytes') "
                "FROM default.dead_letters WHERE pipeline = 'starlink'"
            )
        ).rows
        rows = (
            await store.query(
                "SELECT device_id, toUnixTimestamp64Nano(ts_ns) FROM starlink.telemetry"
            )
        ).rows
    finally:
        await svc.stop()
    assert len(letters) == 2, letters
    assert all("not JSON" in str(e) and int(str(n)) > 0 for e, _, n in letters)
    assert any(str(b).startswith("<html>") for _, b, _ in letters)
    lost = [resp for resp in fake.served if resp.lost]
    assert len(lost) == 1 and lost[0].rows  # the truncated body's rows left the stream
    want = {
        (row["DeviceId"], row["UtcTimestampNs"])
        for resp in fake.served
        if not resp.lost
        for code, row in resp.named_rows()
        if code != "i"
    }
    got = [(str(d), int(str(t))) for d, t in rows]
    assert len(got) == len(set(got)) and set(got) == want
