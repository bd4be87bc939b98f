"""Plug points: what the runtime calls on a sink, a store and a source, and what a source
may call back.

- :class:`Sink` writes batches. :class:`SinkBase` gives the optional parts defaults.
- :class:`Store` is a sink that also answers read queries (the dashboard's own, and users'
  through the read-only guard): chDB, ClickHouse, PostgreSQL.
- :class:`Source` feeds one pipeline; the runtime starts it with a :class:`SourceContext`,
  runs it, and stops it before the pipeline drains.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from orbitstream.core.batch import Ack, Batch, DeadLetter, Row, RowData
from orbitstream.core.tables import Table
from orbitstream.core.times import INT64_NS_RANGE

if TYPE_CHECKING:
    from orbitstream.core.metrics import Metrics
    from orbitstream.sinks.results import Rows
    from orbitstream.sources.http.server import Router

__all__ = [
    "DeadLetterStore",
    "Dialect",
    "Sink",
    "SinkBase",
    "Source",
    "SourceContext",
    "Store",
]

Dialect = Literal["clickhouse", "postgres"]


@runtime_checkable
class Sink(Protocol):
    """A destination that writes one batch per call.

    ``write`` raises :class:`~orbitstream.errors.SinkRetryableError` for transient
    failures and :class:`~orbitstream.errors.SinkRejectedError` when the backend refuses
    the data itself (with ``bad_rows`` when it knows which). Writing the same
    ``batch_id`` twice must store it once.

    :attr max_concurrent_writes: batches of one table the runtime may write at once.
    :attr concurrent_writes_need_backlog: a write of a table beyond the first starts only
        for a backlog one write cannot take (more rows queued than a merged write holds,
        or a batch that is never merged): for stores whose fixed cost per insert makes
        one large write cheaper than two small ones (chDB), so concurrency never splits
        what one write would have merged.
    :attr min_write_interval_secs: when batches come faster than this, the runtime waits
        until this long after the previous write began and writes the batches cut meanwhile
        as one (for stores that pay a large fixed cost per insert: ClickHouse parts).
    :attr time_range_ns: the timestamps the sink can hold (epoch ns, inclusive); the
        runtime refuses others at the door.
    :attr contends_with_input: a write needs this process's interpreter between its
        steps — an event-loop callback per round trip (psycopg), or a writer thread that
        takes the GIL back after every call into the store (chDB, urllib3) — so a process
        busy decoding input slows the writes down: while such a sink is behind, sources
        that ask (``SourceContext.admission``) wait for it. ``False`` only for a sink
        whose writes run outside the interpreter.
    :attr ping_while_writing: ``ping`` answers at once even while writes are stuck (its
        own request, not queued behind them), so ``/health`` pings the sink during long
        writes too.
    :attr cancel_writes_at_deadline: a write may be cancelled (its rows then go to the
        dead-letter file) when it is still going at the shutdown deadline; for sinks whose
        write waits on a remote timeout and is safe to do again (Kafka deliveries;
        PostgreSQL and ClickHouse, whose ledger and dedup tokens drop a batch written
        twice), not for one writing on a thread it cannot stop (chDB).
    :attr configured_by: the settings that choose the backend and its credentials, named when
        it cannot be used at start (``"DATABASE_URL"``).
    :attr only_tables: the names of the tables the sink writes, ``None`` for every table of
        its pipelines: the runtime hands it only those tables' rows, so other tables' rows
        neither wait on it, fill its buffer nor count as written by it.
    """

    name: str
    configured_by: str
    only_tables: frozenset[str] | None
    ping_while_writing: bool
    cancel_writes_at_deadline: bool
    max_concurrent_writes: int
    concurrent_writes_need_backlog: bool
    min_write_interval_secs: float
    time_range_ns: tuple[int, int]
    contends_with_input: bool

    async def start(self, tables: Sequence[Table]) -> None:
        """Connect and create or migrate the tables (the union of every pipeline's that
        writes here, each in its namespace)."""

    async def write(self, batch: Batch) -> None:
        """Write one batch, atomically where the backend allows."""

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        """Keep refused rows with their error (in the same backend when possible)."""

    async def ping(self) -> None:
        """Raise if the backend cannot be reached."""

    async def maintain(self) -> object:
        """Periodic upkeep (partitions, retention); never raises."""

    async def close(self) -> None:
        """Release connections; called once, after the last pipeline has drained."""


@runtime_checkable
class Store(Sink, Protocol):
    """A sink that answers reads: the dashboard's queries and users' read-only queries.

    ``database`` is the namespace a user query runs in (a ClickHouse database, a
    PostgreSQL schema); ``None`` is the store's default.
    """

    query_dialect: Dialect

    async def query(self, sql: str, params: dict[str, object] | None = None) -> Rows:
        """The service's own read query (trusted SQL, parameters bound by the store)."""

    async def user_query(self, sql: str, database: str | None = None) -> Rows:
        """A user's query, checked and run read-only with a time limit."""

    def user_query_sync(self, sql: str, database: str | None = None) -> Rows:
        """:meth:`user_query` for synchronous callers (the CLI without a service)."""

    def close_sync(self) -> None:
        """Release what :meth:`user_query_sync` opened."""


class SinkBase:
    """Defaults for the optional parts of :class:`Sink`: one write at a time, any int64
    nanosecond timestamp, no upkeep."""

    configured_by: str = "the sink's settings"
    only_tables: frozenset[str] | None = None
    ping_while_writing: bool = False
    cancel_writes_at_deadline: bool = False
    max_concurrent_writes: int = 1
    concurrent_writes_need_backlog: bool = False
    min_write_interval_secs: float = 0.0
    time_range_ns: tuple[int, int] = INT64_NS_RANGE
    contends_with_input: bool = True

    async def maintain(self) -> object:
        return None


class DeadLetterStore(Protocol):
    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Persist refused rows (last resort when the sink itself cannot)."""


@runtime_checkable
class SourceContext(Protocol):
    """What the runtime offers the source of one pipeline."""

    @property
    def pipeline(self) -> str:
        """The pipeline's name (batch ids, metrics labels, dead letters)."""

    @property
    def tables(self) -> Mapping[str, Table]:
        """The pipeline's tables by name, with their namespaces."""

    @property
    def metrics(self) -> Metrics: ...

    @property
    def store(self) -> Store:
        """The primary store (to restore the pipeline's state at start)."""

    @property
    def router(self) -> Router:
        """The service's HTTP routes (sources that take HTTP add theirs)."""

    def submit(
        self, rows: Mapping[str, RowData], ack: Ack | None = None, *, key: str | None = None
    ) -> None:
        """Route rows to every sink, all or nothing.

        With ``key`` the rows of each table become one batch of their own whose id is
        derived from the key (``<pipeline>:<table>:<key>``), so a replay of the same input
        is de-duplicated by the stores; without, they join the size/linger batches.

        :raises BackpressureError: a sink has no room; nothing was added.
        """

    def submit_one(self, table: str, row: Row, ack: Ack | None = None) -> None:
        """One row for one table (the fast path of single-record sources)."""

    def has_room(self, rows: int) -> bool:
        """Whether every sink could take ``rows`` more rows now."""

    async def wait_for_room(self, rows: int = 1) -> None:
        """Return once every sink could take ``rows`` rows."""

    def admission(self, rows: int) -> Awaitable[None] | None:
        """Flow control for input of about ``rows`` rows: ``None`` to go on now, else
        an awaitable to wait on first (the writers are behind; see
        :meth:`orbitstream.core.pipeline.Pipeline.admission`)."""

    def flush(self) -> None:
        """Cut every open batch now."""

    async def dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        """Keep input the source could not map (in the primary store's dead letters, else
        the dead-letter file)."""

    def on_health(self, report: Callable[[], dict[str, object]]) -> None:
        """Add the source's own state to ``/health`` (called at each request)."""


@runtime_checkable
class Source(Protocol):
    """Where a pipeline's input comes from: HTTP requests, Kafka partitions, Starlink polls.

    ``start`` connects (and registers routes, restores positions); ``run`` reads until
    :meth:`stop` is called or the source fails (raising
    :class:`~orbitstream.errors.SourceError`); ``stop`` stops taking input, waits for what
    is in flight to be durable, commits positions, and makes ``run`` return.
    """

    name: str

    async def start(self, ctx: SourceContext) -> None: ...

    async def run(self) -> None: ...

    async def stop(self, timeout_secs: float) -> None: ...
