"""An in-memory sink: a test double with fault injection, and a reference for the sink
contract (dedup by batch id, retryable vs rejected errors, dead letters)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from orbitstream.core.batch import Batch, DeadLetter, Row
from orbitstream.core.protocols import SinkBase
from orbitstream.core.tables import Table
from orbitstream.errors import SinkRejectedError, SinkRetryableError

__all__ = ["MemorySink"]


class MemorySink(SinkBase):
    """Keeps rows per table; ``down`` makes writes fail as retryable; ``reject`` marks rows
    the "backend" refuses (a predicate on the row)."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.tables: dict[str, list[Row]] = {}
        self.batch_ids: set[str] = set()
        self.dead_letters: list[DeadLetter] = []
        self.down = False
        self.fail_next = 0
        self.misconfigured = False  # a deployment error (e.g. a missing table)
        self.reject: Callable[[Row], bool] | None = None
        self.name_bad_rows = False  # say which rows are refused (an encoder's error would)
        self.unclassified_next = 0  # raise a plain exception (not a classified sink error)
        self.dead_letters_fail = 0  # fail storing dead letters this many times
        self.write_delay_secs = 0.0
        self.writes = 0
        self.attempts = 0
        self.started_with: list[str] = []
        self.closed = False

    async def start(self, tables: Sequence[Table]) -> None:
        self.started_with = [t.name for t in tables]
        for t in tables:
            self.tables.setdefault(t.name, [])

    async def write(self, batch: Batch) -> None:
        self.attempts += 1
        if self.write_delay_secs:
            await asyncio.sleep(self.write_delay_secs)
        if self.down:
            raise SinkRetryableError(
                "sink is down", sink=self.name, table=batch.table.name, batch_id=batch.batch_id
            )
        if self.misconfigured:
            raise SinkRetryableError(
                "table does not exist",
                sink=self.name,
                table=batch.table.name,
                batch_id=batch.batch_id,
                deployment=True,
            )
        if self.fail_next > 0:
            self.fail_next -= 1
            raise SinkRetryableError(
                "transient failure", sink=self.name, table=batch.table.name, batch_id=batch.batch_id
            )
        if self.unclassified_next > 0:
            self.unclassified_next -= 1
            raise OverflowError("int too big to convert")
        if self.reject is not None and any(self.reject(r) for r in batch.rows):
            bad = tuple(i for i, r in enumerate(batch.rows) if self.reject(r))
            raise SinkRejectedError(
                "row refused",
                bad_rows=bad if self.name_bad_rows else None,
                sink=self.name,
                table=batch.table.name,
                batch_id=batch.batch_id,
            )
        if batch.batch_id in self.batch_ids:
            return  # deduplicated, like insert_deduplication_token
        self.batch_ids.add(batch.batch_id)
        self.tables.setdefault(batch.table.name, []).extend(batch.rows)
        self.writes += 1

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if self.dead_letters_fail > 0:
            self.dead_letters_fail -= 1
            raise SinkRetryableError("dead-letter table unavailable", sink=self.name)
        self.dead_letters.extend(letters)

    async def ping(self) -> None:
        if self.down:
            raise SinkRetryableError("sink is down", sink=self.name)

    async def close(self) -> None:
        self.closed = True

    def rows(self, table: str) -> list[Row]:
        return self.tables.get(table, [])
