"""A sink that takes only some of a pipeline's tables.

A pipeline's own sinks receive every table of the pipeline; :class:`SelectedTables` wraps
one so that it starts with, and writes, only the named tables (the network pipeline
republishes ``nodes``, ``interfaces`` and ``addresses`` to Kafka, not its counter series
or the chunk log). The runtime hands it no rows of the other tables (``Sink.only_tables``),
so they neither wait on it nor count as written by it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from orbitstream.core.batch import Batch, DeadLetter
from orbitstream.core.protocols import Sink
from orbitstream.core.tables import Table

__all__ = ["SelectedTables"]


class SelectedTables:
    """``sink`` restricted to ``tables`` (names).

    :param name: the lane's name in metrics and ``/health`` (default: the sink's).
    """

    def __init__(self, sink: Sink, tables: Iterable[str], *, name: str | None = None) -> None:
        self.sink = sink
        self.tables = frozenset(tables)
        inner: frozenset[str] | None = getattr(sink, "only_tables", None)
        self.only_tables: frozenset[str] | None = (
            self.tables if inner is None else self.tables & inner
        )
        self.name = name or sink.name
        self.configured_by = sink.configured_by
        self.ping_while_writing = sink.ping_while_writing
        self.cancel_writes_at_deadline = sink.cancel_writes_at_deadline
        self.max_concurrent_writes = sink.max_concurrent_writes
        self.concurrent_writes_need_backlog = sink.concurrent_writes_need_backlog
        self.min_write_interval_secs = sink.min_write_interval_secs
        self.time_range_ns = sink.time_range_ns
        self.contends_with_input = sink.contends_with_input

    async def start(self, tables: Sequence[Table]) -> None:
        await self.sink.start([t for t in tables if t.name in self.tables])

    async def write(self, batch: Batch) -> None:
        if batch.table.name in self.tables:
            await self.sink.write(batch)

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        mine = [d for d in letters if d.table in self.tables]
        if mine:
            await self.sink.write_dead_letters(mine)

    async def ping(self) -> None:
        await self.sink.ping()

    async def maintain(self) -> object:
        return await self.sink.maintain()

    async def close(self) -> None:
        await self.sink.close()
