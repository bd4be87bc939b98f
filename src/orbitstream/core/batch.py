"""Batches of rows for one table, and the ack handles that follow them to the sinks."""

from __future__ import annotations

import asyncio
import bisect
import enum
import time
from collections.abc import Sequence
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
    """Resolves once every (sink, table) part of one source message is finished.

    Created by a source that wants to wait (HTTP ``sink`` ack mode, Kafka offsets,
    the Starlink poller). ``add_parts`` is called by the pipeline when it routes the rows.
    A part finishes committed, or with some of its rows in dead letters
    (:attr:`dead_lettered`, per sink) or spilled to the dead-letter file at shutdown
    (:attr:`spilled`): only :attr:`committed` means every row is in every store.
    """

    __slots__ = ("_future", "_pending", "dead_lettered", "errors", "spilled")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._future: asyncio.Future[None] = (loop or asyncio.get_running_loop()).create_future()
        self._pending = 0
        self.dead_lettered: dict[str, int] = {}
        self.spilled: dict[str, int] = {}
        self.errors: list[str] = []

    def add_parts(self, n: int) -> None:
        self._pending += n
        if self._pending == 0 and not self._future.done():
            self._future.set_result(None)

    def part_done(self) -> None:
        self._pending -= 1
        if self._pending <= 0 and not self._future.done():
            self._future.set_result(None)

    def rows_dead_lettered(self, sink: str, rows: int, error: str) -> None:
        """``rows`` of this message were refused by ``sink`` and kept in dead letters."""
        self.dead_lettered[sink] = self.dead_lettered.get(sink, 0) + rows
        if len(self.errors) < 10:
            self.errors.append(f"{sink}: {error}")

    def rows_spilled(self, sink: str, rows: int) -> None:
        """``rows`` could not be written to ``sink`` before shutdown (kept in the file)."""
        self.spilled[sink] = self.spilled.get(sink, 0) + rows

    @property
    def committed(self) -> bool:
        """Finished, and every row committed in every sink."""
        return self._future.done() and not self.dead_lettered and not self.spilled

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
    :param acks: the acks of the messages whose rows are in the batch; ``ack_ends[i]``
        is the end (exclusive row index) of ``acks[i]``'s rows, so refused rows can be
        reported to the message they came from.
    """

    table: Table
    rows: list[Row]
    batch_id: str
    acks: list[Ack] = field(default_factory=list)
    created_at: float = field(default_factory=time.monotonic)
    attempts: int = 0
    ack_ends: list[int] = field(default_factory=list)
    keyed: bool = False  # its id derives from the source's input: never merged

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
        offset = len(self.rows)
        return Batch(
            self.table,
            self.rows + other.rows,
            f"{first}+{last}",
            self.acks + other.acks,
            self.created_at,
            ack_ends=self.ack_ends + [offset + end for end in other.ack_ends],
        )

    def _spans(self, start: int, stop: int) -> tuple[list[Ack], list[int]]:
        """The acks of rows ``[start, stop)`` and their ends relative to ``start``."""
        acks: list[Ack] = []
        ends: list[int] = []
        begin = 0
        for ack, end in zip(self.acks, self.ack_ends, strict=False):
            if end > start and begin < stop:
                acks.append(ack)
                ends.append(min(end, stop) - start)
            begin = end
        return acks, ends

    def slice(self, start: int, stop: int, suffix: str) -> Batch:
        """Rows ``[start, stop)`` as a batch of their own, with the acks they belong to."""
        acks, ends = self._spans(start, stop)
        return Batch(
            self.table,
            self.rows[start:stop],
            f"{self.batch_id}{suffix}",
            acks,
            ack_ends=ends,
            keyed=self.keyed,
        )

    def split(self) -> tuple[Batch, Batch]:
        """Two halves with derived ids (used to isolate a rejected row)."""
        mid = len(self.rows) // 2
        return self.slice(0, mid, ".0"), self.slice(mid, len(self.rows), ".1")

    def acks_of(self, indices: Sequence[int]) -> dict[int, int]:
        """``{position in acks: rows among indices}`` for the given row indices."""
        out: dict[int, int] = {}
        for index in indices:
            pos = bisect.bisect_right(self.ack_ends, index)
            if pos < len(self.acks):
                out[pos] = out.get(pos, 0) + 1
        return out


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A row a backend refused, kept with the reason."""

    pipeline: str
    table: str
    batch_id: str
    row: dict[str, object]
    error: str
    time_ns: int = field(default_factory=time.time_ns)
