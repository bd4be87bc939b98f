"""The :class:`~orbitstream.core.protocols.SourceContext` of one pipeline: what its source
may call. The runtime makes one per pipeline; tests make one around a bare pipeline."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from orbitstream.core.batch import Ack, DeadLetter, Row, RowData
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline
from orbitstream.core.protocols import DeadLetterStore, Store
from orbitstream.core.tables import Table

if TYPE_CHECKING:
    from orbitstream.sources.http.server import Router

__all__ = ["PipelineContext"]

logger = logging.getLogger(__name__)


class PipelineContext:
    """A source's view of its pipeline (see :class:`~orbitstream.core.protocols.SourceContext`).

    :param store: the primary store (for restoring state, and the source's dead letters).
    :param router: the HTTP routes sources may add to.
    :param dead_letters: where dead letters go when the store cannot take them.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        tables: Sequence[Table],
        *,
        metrics: Metrics,
        store: Store,
        router: Router,
        dead_letters: DeadLetterStore,
    ) -> None:
        self._pipeline = pipeline
        self._tables = {t.name: t for t in tables}
        self._metrics = metrics
        self._store = store
        self._router = router
        self._dead_letters = dead_letters
        self.health_reports: list[Callable[[], dict[str, object]]] = []

    @property
    def pipeline(self) -> str:
        return self._pipeline.name

    @property
    def tables(self) -> Mapping[str, Table]:
        return self._tables

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def store(self) -> Store:
        return self._store

    @property
    def router(self) -> Router:
        return self._router

    def submit(
        self,
        rows: Mapping[str, RowData],
        ack: Ack | None = None,
        *,
        key: str | None = None,
    ) -> None:
        if key is None:
            self._pipeline.submit(rows, ack)
        else:
            self._pipeline.submit_keyed(rows, key, ack)

    def submit_one(self, table: str, row: Row, ack: Ack | None = None) -> None:
        self._pipeline.submit_one(table, row, ack)

    def has_room(self, rows: int) -> bool:
        return self._pipeline.has_room(rows)

    def admission(self, rows: int) -> Awaitable[None] | None:
        return self._pipeline.admission(rows)

    async def wait_for_room(self, rows: int = 1) -> None:
        await self._pipeline.wait_for_room(rows)

    def flush(self) -> None:
        self._pipeline.flush()

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        for table, n in collections.Counter(letter.table for letter in letters).items():
            self._metrics.inc("dead_letters", (self.pipeline, "source", table), n)
        try:
            await self._store.write_dead_letters(letters)
        except Exception as exc:
            logger.warning(
                "Store could not keep a source's dead letters; using the dead-letter file.",
                extra={"pipeline": self.pipeline, "error": repr(exc)},
            )
            await asyncio.to_thread(self._dead_letters.write, letters)

    def on_health(self, report: Callable[[], dict[str, object]]) -> None:
        self.health_reports.append(report)

    def source_health(self) -> dict[str, object]:
        """What the source reported (each report merged; a failing one is skipped)."""
        out: dict[str, object] = {}
        for report in self.health_reports:
            with contextlib.suppress(Exception):
                out.update(report())
        return out
