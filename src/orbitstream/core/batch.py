"""Batches of rows for one table, and the ack handles that follow them to the sinks."""

from __future__ import annotations

import asyncio
import bisect
import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import pyarrow as pa

from orbitstream.core import columns
from orbitstream.core.tables import Row, Table

__all__ = [
    "Ack",
    "Batch",
    "BatchStatus",
    "DeadLetter",
    "Row",
    "RowData",
    "is_columnar",
    "join_parts",
]


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


RowData = list[Row] | Any
"""Rows of one table as a source hands them over: tuples (``list[Row]``), or one
``pyarrow.RecordBatch`` with :func:`~orbitstream.core.columns.arrow_schema` of the table
(the columnar hot path)."""


def is_columnar(data: object) -> TypeGuard[Any]:
    """Whether ``data`` is a record batch (not a list of tuple rows)."""
    return isinstance(data, pa.RecordBatch)


def join_parts(table: Table, parts: Sequence[RowData]) -> RowData:
    """The rows of ``parts`` (tuple lists and record batches) in order, as one list or one
    record batch: tuples stay tuples, record batches are concatenated, a mix becomes a
    record batch, or tuples when some tuple row cannot be encoded (it is the sink's to
    refuse, with its index)."""
    if len(parts) == 1:
        return parts[0]
    columnar = [is_columnar(p) for p in parts]
    if not any(columnar):
        out: list[Row] = []
        for part in parts:
            out.extend(part)
        return out
    if all(columnar):
        return columns.concat(table, parts)
    try:
        return columns.concat(
            table,
            [
                p if c else columns.record_batch(table, p)
                for p, c in zip(parts, columnar, strict=True)
            ],
        )
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        rows: list[Row] = []
        for part, c in zip(parts, columnar, strict=True):
            rows.extend(columns.rows_of(table, part) if c else part)
        return rows


class Batch:
    """Rows for one table bound for one sink, as tuples or as one Arrow record batch
    (whichever the source produced; each sink takes the form it encodes fastest:
    :attr:`rows` or :attr:`data`, converted once on demand).

    :param rows: a list of tuple rows, or a ``pyarrow.RecordBatch`` of the table.
    :param batch_id: deterministic id; a retried or replayed batch keeps it, so the
        backend can drop the duplicate (ClickHouse dedup token, PostgreSQL ledger).
    :param acks: the acks of the messages whose rows are in the batch; ``ack_ends[i]``
        is the end (exclusive row index) of ``acks[i]``'s rows, so refused rows can be
        reported to the message they came from.
    :param keyed: its id derives from the source's input: never merged with others.
    """

    __slots__ = (
        "_columnar",
        "_data",
        "_rows",
        "ack_ends",
        "acks",
        "attempts",
        "batch_id",
        "created_at",
        "keyed",
        "size",
        "table",
    )

    def __init__(
        self,
        table: Table,
        rows: RowData,
        batch_id: str,
        acks: list[Ack] | None = None,
        created_at: float | None = None,
        attempts: int = 0,
        ack_ends: list[int] | None = None,
        keyed: bool = False,
    ) -> None:
        self.table = table
        if is_columnar(rows):
            self._data: Any = rows
            self._rows: list[Row] | None = None
            self._columnar = True
            self.size = int(rows.num_rows)
        else:
            self._columnar = False
            self._data = None
            self._rows = rows if isinstance(rows, list) else list(rows)
            self.size = len(self._rows)
        self.batch_id = batch_id
        self.acks = acks if acks is not None else []
        self.created_at = created_at if created_at is not None else time.monotonic()
        self.attempts = attempts
        self.ack_ends = ack_ends if ack_ends is not None else []
        self.keyed = keyed

    def __repr__(self) -> str:
        form = "columnar" if self.columnar else "rows"
        return f"Batch({self.table.name!r}, {self.size} {form}, {self.batch_id!r})"

    @property
    def columnar(self) -> bool:
        """The rows came as a record batch (:attr:`data` is free; :attr:`rows` is built)."""
        return self._columnar

    @property
    def rows(self) -> list[Row]:
        """The rows as tuples (converted from the record batch once, on first use)."""
        if self._rows is None:
            self._rows = columns.rows_of(self.table, self._data)
        return self._rows

    @property
    def data(self) -> Any:
        """The rows as a ``pyarrow.RecordBatch`` (built from the tuples once, on first use).

        :raises pyarrow.ArrowException: a tuple value does not fit its column (see
            :func:`orbitstream.sinks.arrow.bad_rows`); also ``ValueError``, ``TypeError``,
            ``OverflowError`` for rows of the wrong width or type.
        """
        if self._data is None:
            assert self._rows is not None
            self._data = columns.record_batch(self.table, self._rows)
        return self._data

    @property
    def nbytes(self) -> int:
        """The buffer accounting's size estimate (the same for both forms)."""
        return self.size * self.table.row_bytes

    def columns(self) -> list[list[object]]:
        """The rows transposed into one list per column (cheap: ``zip`` in C)."""
        if not self.size:
            return [[] for _ in self.table.columns]
        return [list(col) for col in zip(*self.rows, strict=True)]

    def rows_at(self, indices: Sequence[int]) -> list[Row]:
        """Rows ``indices`` as tuples (without converting the others)."""
        if self._rows is not None:
            rows = self._rows
            return [rows[i] for i in indices]
        taken = self._data.take(pa.array(list(indices), type=pa.int64()))
        return columns.rows_of(self.table, taken)

    def _native(self) -> RowData:
        return self._data if self._columnar else self._rows

    def merge(self, other: Batch) -> Batch:
        """One batch with both batches' rows and acks (same table)."""
        first = self.batch_id.split("+", 1)[0]
        last = other.batch_id.split("+")[-1]
        offset = self.size
        return Batch(
            self.table,
            join_parts(self.table, [self._native(), other._native()]),
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
        """Rows ``[start, stop)`` as a batch of their own, with the acks they belong to
        (a record batch is sliced without copying)."""
        acks, ends = self._spans(start, stop)
        stop = min(stop, self.size)
        start = min(start, stop)
        part: RowData = (
            self._data.slice(start, stop - start) if self._columnar else self.rows[start:stop]
        )
        return Batch(
            self.table,
            part,
            f"{self.batch_id}{suffix}",
            acks,
            ack_ends=ends,
            keyed=self.keyed,
        )

    def split(self) -> tuple[Batch, Batch]:
        """Two halves with derived ids (used to isolate a rejected row)."""
        mid = self.size // 2
        return self.slice(0, mid, ".0"), self.slice(mid, self.size, ".1")

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
