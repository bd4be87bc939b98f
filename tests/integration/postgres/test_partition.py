"""The PostgreSQL sink when the server stops answering mid-write (a network partition,
made by a TCP proxy in front of the real server that stops forwarding):

- a write cancelled then (the shutdown deadline) ends at once — the connection is
  closed, not cancelled on the server and drained — and its retry writes the batch once;
- a write that gets no answer fails after ``write_timeout_secs`` (retryable, naming
  ``ORBITSTREAM_POSTGRES_WRITE_TIMEOUT``), and the sink writes again once the network is
  back;
- a row no index can hold (SQLSTATE 54000) is refused as the row's fault, not retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from orbitstream.core.batch import Batch
from orbitstream.sinks.postgres.settings import PostgresSettings
from orbitstream.sinks.postgres.sink import (
    PostgresRejectedError,
    PostgresRetryableError,
    PostgresSink,
)
from tests.integration.postgres.test_postgres_sink import TEL, count, fetch, now_ns, sat_rows

pytestmark = pytest.mark.integration


class FreezingProxy:
    """Forwards TCP to the PostgreSQL server until :meth:`freeze`, then holds every byte
    in both directions (and new connections) until :meth:`thaw`."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.forwarded = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await self.flowing.wait()  # frozen: stop reading, so the sender blocks
                dst.write(data)
                await dst.drain()
                self.forwarded += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await self.flowing.wait()
                dst.close()


@pytest.fixture
async def proxied(pg_settings: PostgresSettings) -> AsyncIterator[tuple[FreezingProxy, str]]:
    parts = urlsplit(pg_settings.dsn)
    proxy = FreezingProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await proxy.start()
    netloc = f"{parts.username}@127.0.0.1:{port}" if parts.username else f"127.0.0.1:{port}"
    try:
        yield proxy, urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    finally:
        proxy.thaw()
        await proxy.close()


async def _written(sink: PostgresSink, batch: Batch, attempts: int = 5) -> None:
    """Write as the pipeline does: retry what is retryable."""
    for _ in range(attempts - 1):
        try:
            await sink.write(batch)
            return
        except PostgresRetryableError:
            await asyncio.sleep(0.5)
    await sink.write(batch)


async def test_a_write_cancelled_during_a_partition_ends_at_once_and_its_retry_lands_once(
    pg_settings: PostgresSettings, proxied: tuple[FreezingProxy, str]
) -> None:
    proxy, dsn = proxied
    sink = PostgresSink(
        dataclasses.replace(pg_settings, dsn=dsn, max_connections=1, min_connections=1)
    )
    await sink.start([TEL])
    try:
        rows = sat_rows(150_000, now_ns() - 3600 * 10**9, step_ns=10**7)
        batch = Batch(TEL, rows, "partitioned")
        write = asyncio.create_task(sink.write(batch))
        sent = proxy.forwarded
        deadline = time.monotonic() + 30
        while proxy.forwarded < sent + 1_000_000:  # the COPY is under way
            assert time.monotonic() < deadline and not write.done()
            await asyncio.sleep(0.01)
        proxy.freeze()
        await asyncio.sleep(0.5)  # the client is blocked on a full socket
        assert not write.done()
        started = time.monotonic()
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        took = time.monotonic() - started
        # psycopg's own wait sent a cancel request (5 s timeout) and then drove the rest
        # of the batch (5 s more): 10 s measured
        assert took < 2.5, took
        proxy.thaw()
        # the server rolls the half-sent COPY back once it sees the connection closed
        assert await fetch(pg_settings.dsn, "SELECT batch_id FROM orbitstream_batches") == []
        await _written(sink, batch)  # the pooled connection was closed: a new one
        assert await count(pg_settings.dsn) == len(rows)
        ledger = await fetch(pg_settings.dsn, "SELECT batch_id, rows FROM orbitstream_batches")
        assert ledger == [("partitioned", len(rows))]
    finally:
        proxy.thaw()
        await sink.close()


async def test_a_write_without_an_answer_times_out_and_the_sink_writes_again_after(
    pg_settings: PostgresSettings, proxied: tuple[FreezingProxy, str]
) -> None:
    proxy, dsn = proxied
    settings = dataclasses.replace(
        pg_settings, dsn=dsn, max_connections=2, min_connections=1, write_timeout_secs=1.0
    )
    sink = PostgresSink(settings)
    await sink.start([TEL])
    try:
        rows = sat_rows(100, now_ns())
        proxy.freeze()
        started = time.monotonic()
        with pytest.raises(PostgresRetryableError) as info:
            await sink.write(Batch(TEL, rows, "unanswered"))
        assert "ORBITSTREAM_POSTGRES_WRITE_TIMEOUT" in str(info.value)
        assert time.monotonic() - started < 10  # not TCP's many minutes
        proxy.thaw()
        await _written(sink, Batch(TEL, rows, "unanswered"))
        assert await count(pg_settings.dsn) == len(rows)
    finally:
        proxy.thaw()
        await sink.close()


async def test_a_row_no_index_can_hold_is_refused_not_retried(pg_sink: PostgresSink) -> None:
    row = list(sat_rows(1, now_ns())[0])
    row[1] = os.urandom(6000).hex()  # the index entry needs 12 KB: over a page's limit
    with pytest.raises(PostgresRejectedError) as info:
        await pg_sink.write(Batch(TEL, [tuple(row), *sat_rows(5, now_ns(), seed=2)], "huge"))
    assert info.value.sqlstate == "54000"
    assert (info.value.table, info.value.batch_id) == ("telemetry", "huge")
