"""One compliance suite every store sink must pass (chDB, PostgreSQL, ClickHouse over HTTP).

Each backend fixture provides the sink, a way to count rows, and fault injectors: a
transient failure the sink must classify as retryable, and an outage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orbitstream.core.batch import Ack, Batch, Row
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.errors import BackpressureError, SinkRejectedError, SinkRetryableError
from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.deadletter import FileDeadLetters

pytestmark = pytest.mark.integration

TELEMETRY, ALERTS = tables()
BASE_NS = 1_800_000_000_000_000_000


def telemetry_rows(n: int, start: int = 0, prefix: str = "C") -> list[Row]:
    return [
        (
            BASE_NS + i * 1000,
            f"{prefix}-{i % 7}",
            float(i % 100),
            100.0 + i,
            -50.0 - i % 40,
            i % 10 == 0,
            ("battery_low",) if i % 10 == 0 else (),
            BASE_NS + i,
        )
        for i in range(start, start + n)
    ]


def alert_rows(n: int) -> list[Row]:
    return [
        (BASE_NS + i, "satellites", f"E-{i}", "battery_low", "firing", 5.0, 10.0, "m")
        for i in range(n)
    ]


@dataclass
class Backend:
    sink: Any
    count: Callable[[str], Awaitable[int]]
    dead_letters: Callable[[], Awaitable[int]]
    transient_failure: Callable[[], None]  # the next write fails in a retryable way, once
    set_down: Callable[[bool], None]


async def _chdb_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    from orbitstream.sinks.chdb import ChdbSink

    sink = ChdbSink(tmp_path / "chdb")
    await sink.start([TELEMETRY, ALERTS])
    state = {"fail": 0, "down": False}
    real_insert = sink._insert

    def insert(
        table: str,
        settings: str,
        data: bytes,
        namespace: str | None = None,
        writer: Any = None,
    ) -> int:
        if state["down"]:
            raise RuntimeError("Code: 210. DB::Exception: Connection refused (NETWORK_ERROR)")
        if state["fail"]:
            state["fail"] -= 1
            raise RuntimeError("Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)")
        return real_insert(table, settings, data, namespace, writer)

    sink._insert = insert  # type: ignore[method-assign]

    async def count(table: str) -> int:
        return int(str((await sink.query(f"SELECT count() FROM {table}")).rows[0][0]))

    def down(flag: bool) -> None:
        state["down"] = flag

    def transient() -> None:
        state["fail"] = 1

    yield Backend(sink, count, lambda: count("dead_letters"), transient, down)
    await sink.close()


BACKENDS: dict[str, Callable[[Path], AsyncIterator[Backend]]] = {"chdb": _chdb_backend}


@pytest.fixture(params=["chdb", "postgres", "clickhouse"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    from tests.integration.compliance import backends

    factory = {**BACKENDS, **backends.EXTRA}.get(request.param)
    assert factory is not None, f"no backend {request.param}"
    async for b in factory(tmp_path):
        yield b


def pipeline(
    tmp_path: Path, b: Backend, *, batch_size: int = 100, max_rows: int = 1_000_000
) -> Pipeline:
    return Pipeline(
        "compliance",
        [TELEMETRY, ALERTS],
        [b.sink],
        limits=PipelineLimits(batch_size=batch_size, linger_secs=0.05, max_buffer_rows=max_rows),
        retry=RetryPolicy(base_secs=0.01, max_secs=0.1),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )


async def test_empty_flush_is_a_noop(backend: Backend) -> None:
    await backend.sink.write(Batch(TELEMETRY, [], "empty"))
    assert await backend.count("telemetry") == 0


async def test_same_batch_twice_lands_once(backend: Backend) -> None:
    batch = Batch(TELEMETRY, telemetry_rows(1000), "twice")
    await backend.sink.write(batch)
    await backend.sink.write(Batch(TELEMETRY, list(batch.rows), "twice"))
    assert await backend.count("telemetry") == 1000


async def test_the_same_table_in_two_namespaces_is_two_tables(backend: Backend) -> None:
    other = TELEMETRY.in_namespace("orbit_ns_test")
    await backend.sink.start([TELEMETRY, ALERTS, other])  # start again: idempotent
    await backend.sink.write(Batch(TELEMETRY, telemetry_rows(30), "ns-default"))
    await backend.sink.write(Batch(other, telemetry_rows(70), "ns-other"))
    await backend.sink.write(Batch(other, telemetry_rows(70), "ns-other"))  # deduplicated
    assert await backend.count("telemetry") == 30
    assert await backend.count("orbit_ns_test.telemetry") == 70


async def test_retryable_failure_retries_then_succeeds(backend: Backend, tmp_path: Path) -> None:
    backend.transient_failure()
    with pytest.raises(SinkRetryableError):
        await backend.sink.write(Batch(TELEMETRY, telemetry_rows(10), "direct"))
    p = pipeline(tmp_path, backend)
    await p.start()
    backend.transient_failure()
    ack = Ack()
    p.submit({"telemetry": telemetry_rows(500, 100)}, ack)
    await asyncio.wait_for(ack.wait(), 30)
    assert p.metrics.get("sink_errors", ("compliance", backend.sink.name, "retryable")) >= 1
    await p.close()
    assert await backend.count("telemetry") == 500


async def test_poison_row_goes_to_dead_letters_neighbours_land(
    backend: Backend, tmp_path: Path
) -> None:
    rows = telemetry_rows(200)
    poison = list(rows[57])
    poison[1] = None  # satellite_id is NOT NULL in every backend
    rows[57] = tuple(poison)
    p = pipeline(tmp_path, backend, batch_size=200)
    await p.start()
    ack = Ack()
    p.submit({"telemetry": rows}, ack)
    await asyncio.wait_for(ack.wait(), 30)
    await p.close()
    assert await backend.count("telemetry") == 199
    assert await backend.dead_letters() == 1
    assert p.metrics.get("dead_letters", ("compliance", backend.sink.name, "telemetry")) == 1


async def test_sink_reports_health(backend: Backend) -> None:
    await backend.sink.ping()


async def test_backpressure_is_honoured_during_an_outage(backend: Backend, tmp_path: Path) -> None:
    p = pipeline(tmp_path, backend, batch_size=50, max_rows=300)
    await p.start()
    backend.set_down(True)
    accepted = 0
    refused: BackpressureError | None = None
    for k in range(100):
        try:
            p.submit({"telemetry": telemetry_rows(50, k * 50)})
        except BackpressureError as exc:
            refused = exc
            break
        accepted += 50
        await asyncio.sleep(0.01)
    assert refused is not None and refused.retry_after_secs >= 1
    assert accepted == 300
    deadline = time.monotonic() + 5
    while p.healthy and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not p.healthy
    backend.set_down(False)
    await p.close(timeout_secs=30)
    assert await backend.count("telemetry") == 300


async def test_concurrent_flushes_of_different_tables_do_not_interfere(backend: Backend) -> None:
    writes = [
        backend.sink.write(Batch(TELEMETRY, telemetry_rows(2000, k * 2000), f"t{k}"))
        for k in range(3)
    ]
    writes.append(backend.sink.write(Batch(ALERTS, alert_rows(500), "a0")))
    await asyncio.gather(*writes)
    assert await backend.count("telemetry") == 6000
    assert await backend.count("alerts") == 500


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (0, 2**80),  # a timestamp no int64 holds (in ns, nor in µs)
        (0, -(2**80)),
        (2, "fifty"),  # a str in a Float64 column
        (6, ("ok", 7)),  # a non-str in a string list
    ],
)
async def test_a_row_the_store_cannot_encode_is_refused_never_retried(
    backend: Backend, tmp_path: Path, column: int, value: object
) -> None:
    rows = telemetry_rows(50)
    bad = list(rows[17])
    bad[column] = value
    rows[17] = tuple(bad)
    with pytest.raises(SinkRejectedError) as info:
        await backend.sink.write(Batch(TELEMETRY, rows, f"enc-{column}"))
    assert info.value.bad_rows == (17,)  # named: no bisecting through the store
    p = pipeline(tmp_path, backend)
    await p.start()
    ack = Ack()
    p.submit({"telemetry": rows}, ack)
    await asyncio.wait_for(ack.wait(), 30)
    await p.close()
    assert ack.dead_lettered == {backend.sink.name: 1}
    assert await backend.count("telemetry") == 49
    assert await backend.dead_letters() == 1
    assert p.metrics.get("sink_errors", ("compliance", backend.sink.name, "retryable")) == 0
