"""Plug points: what a sink and a dead-letter store must provide."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from orbitstream.core.batch import Batch, DeadLetter
from orbitstream.core.tables import Table

__all__ = ["DeadLetterStore", "QueryResult", "Queryable", "Sink"]


@runtime_checkable
class Sink(Protocol):
    """A destination that writes one batch per call.

    ``write`` raises :class:`~orbitstream.errors.SinkRetryableError` for transient
    failures and :class:`~orbitstream.errors.SinkRejectedError` when the backend
    refuses the data itself. Writing the same ``batch_id`` twice must store it once.
    """

    name: str

    async def start(self, tables: Sequence[Table]) -> None:
        """Connect and create or migrate the tables."""

    async def write(self, batch: Batch) -> None:
        """Write one batch, atomically where the backend allows."""

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep refused rows with their error (in the same backend when possible)."""

    async def ping(self) -> None:
        """Raise if the backend cannot be reached."""

    async def close(self) -> None:
        """Release connections; called after the last write."""


class QueryResult(Protocol):
    columns: list[str]
    rows: list[tuple[object, ...]]


@runtime_checkable
class Queryable(Protocol):
    """A store that can answer read-only SQL (for dashboards and ``orbitstream query``)."""

    async def query(self, sql: str, params: dict[str, object] | None = None) -> QueryResult:
        """Run a read-only query."""


class DeadLetterStore(Protocol):
    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Persist refused rows (last resort when the sink itself cannot)."""
