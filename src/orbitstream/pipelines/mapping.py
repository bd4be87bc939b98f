"""What the Kafka pipelines' mappers take and return.

A mapper is pure: ``map(value, position)`` turns one message (its value bytes and where
it came from) into a :class:`MapResult` — rows per table name (tuples in the table's
column order) and :class:`DeadRecord`\\ s for messages that cannot be processed, with the
reason. A message is either mapped whole or dead whole, so a dead-letter replay never
doubles rows. ``map_chunk`` does the same for consecutive messages at once (one result,
rows in message order), which is what a consumer hands on per partition chunk.

The message position is structural (:class:`Position`): any object with ``topic``,
``partition``, ``offset`` and ``timestamp_ns`` (the broker's message timestamp, epoch
nanoseconds, ``0`` when unknown) fits; :class:`MessagePosition` is a plain one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from orbitstream.core.batch import Row
from orbitstream.core.tables import Table

__all__ = [
    "DeadRecord",
    "MapResult",
    "Mapper",
    "Message",
    "MessagePosition",
    "Position",
    "merge_rows",
]


class Position(Protocol):
    """Where a message came from (a Kafka message fits)."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp_ns(self) -> int: ...


class Message(Position, Protocol):
    """A consumed message: its position and value bytes (a Kafka message fits)."""

    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class MessagePosition:
    """A message's topic, partition, offset and broker timestamp (epoch ns, 0 = unknown)."""

    topic: str
    partition: int
    offset: int
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """A message (or one point of an array message) that cannot be processed.

    :param position: where it came from (for the dead-letter headers and alerts).
    :param value: the message bytes, unchanged (republished to the dead-letter topic);
        for one bad point of an array whose others were stored, that point's JSON.
    :param kind: a short, low-cardinality error kind (``decode``, ``invalid_id``...),
        what alerts count and rate-limit by.
    :param reason: a readable explanation naming the offending field.
    :param element: for one bad point of an array message, its index in the array (the
        dead-letter topic gets it as a header: one message, several dead points).
    """

    position: Position
    value: bytes
    kind: str
    reason: str
    element: int | None = None


@dataclass(slots=True)
class MapResult:
    """Rows per table and dead records of one message or one chunk of messages.

    :param rows: table name -> rows; tables without rows are absent.
    :param dead: messages that cannot be processed, in message order.
    :param unknown_paths: paths that are tolerated but not mapped, with their counts.
    :param messages: how many messages went in.
    :param ignored: messages that were valid but carried nothing to map (only unknown
        paths, empty entry lists); counted, neither rows nor dead.
    :param partial: messages with rows *and* dead records (an array of points with some
        bad ones: each bad point is a dead record of its own).
    """

    rows: dict[str, list[Row]] = field(default_factory=dict)
    dead: list[DeadRecord] = field(default_factory=list)
    unknown_paths: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    ignored: int = 0
    partial: int = 0

    @property
    def row_count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def count_unknown(self, path: str) -> None:
        self.unknown_paths[path] = self.unknown_paths.get(path, 0) + 1


def merge_rows(into: dict[str, list[Row]], rows: dict[str, list[Row]]) -> None:
    """Append ``rows`` to ``into`` per table (order kept)."""
    for name, table_rows in rows.items():
        have = into.get(name)
        if have is None:
            into[name] = list(table_rows)
        else:
            have.extend(table_rows)


class Mapper(Protocol):
    """What the runtime needs from a pipeline's mapper.

    ``map``/``map_chunk`` see the committed state plus results not yet committed or
    rolled back; ``commit`` is called once a result's rows are durable in every sink,
    ``discard`` when one result was not taken (backpressure), and ``rollback`` when they will not be (partition revoked, shutdown without flush), so the
    messages are replayed from the committed state.
    """

    tables: tuple[Table, ...]

    def map(self, value: bytes | None, position: Position) -> MapResult: ...

    def map_chunk(self, messages: Iterable[Message]) -> MapResult: ...

    def commit(self, result: MapResult) -> None: ...

    def discard(self, result: MapResult) -> None: ...

    def rollback(self, topic: str | None = None, partition: int | None = None) -> int: ...
