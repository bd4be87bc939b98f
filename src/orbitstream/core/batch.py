"""Batches of rows for one table, and the ack handles that follow them to the sinks."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

from orbitstream.core.tables import Table

__all__ = ["Ack", "Batch", "BatchStatus", "DeadLetter", "Row"]

Row = tuple[object, ...]


class BatchStatus(enum.Enum):
    """What became of a batch (Vector's finalization states)."""

    DELIVERED = "delivered"
    ERRORED = "errored"
    REJECTED = "rejected"


class Ack:
    """Resolves once every (sink, table) part of one source message is durable.

    Created by a source that wants to wait (HTTP ``sink`` ack mode, Kafka offsets,
    the Starlink poller). ``parts`` is set by the pipeline when it routes the rows.
    """

    __slots__ = ("_future", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._future: asyncio.Future[None] = (loop or asyncio.get_running_loop()).create_future()
        self._pending = 0

    def add_parts(self, n: int) -> None:
        self._pending += n
        if self._pending == 0 and not self._future.done():
            self._future.set_result(None)

    def part_done(self) -> None:
        self._pending -= 1
        if self._pending <= 0 and not self._future.done():
            self._future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(exc)

    @property
    def done(self) -> bool:
        return self._future.done()

    async def wait(self) -> None:
        await asyncio.shield(self._future)


@dataclass(slots=True)
class Batch:
    """Rows for one table bound for one sink.

    :param batch_id: deterministic id; a retried or replayed batch keeps it, so the
        backend can drop the duplicate (ClickHouse dedup token, PostgreSQL ledger).
    """

    table: Table
    rows: list[Row]
    batch_id: str
    acks: list[Ack] = field(default_factory=list)
    created_at: float = field(default_factory=time.monotonic)
    attempts: int = 0

    @property
    def size(self) -> int:
        return len(self.rows)

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.table.row_bytes

    def columns(self) -> list[list[object]]:
        """The rows transposed into one list per column (cheap: ``zip`` in C)."""
        if not self.rows:
            return [[] for _ in self.table.columns]
        return [list(col) for col in zip(*self.rows, strict=True)]

    def merge(self, other: Batch) -> Batch:
        """One batch with both batches' rows and acks (same table)."""
        first = self.batch_id.split("+", 1)[0]
        last = other.batch_id.split("+")[-1]
        return Batch(
            self.table,
            self.rows + other.rows,
            f"{first}+{last}",
            self.acks + other.acks,
            self.created_at,
        )

    def split(self) -> tuple[Batch, Batch]:
        """Two halves with derived ids (used to isolate a rejected row)."""
        mid = len(self.rows) // 2
        return (
            Batch(self.table, self.rows[:mid], f"{self.batch_id}.0"),
            Batch(self.table, self.rows[mid:], f"{self.batch_id}.1"),
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row a backend refused, kept with the reason."""

    pipeline: str
    table: str
    batch_id: str
    row: dict[str, object]
    error: str
    time_ns: int = field(default_factory=time.time_ns)
