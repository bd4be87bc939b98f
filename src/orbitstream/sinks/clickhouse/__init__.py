"""The ClickHouse server sink: batches over the HTTP interface, columnar, deduplicated.

Wire format
-----------
Each batch is one HTTP ``POST`` to the server's HTTP interface (port 8123/8443) through
clickhouse-connect: ``INSERT INTO `db`.`table` (cols…) FORMAT Arrow`` followed by the
batch as an Arrow IPC *file* (column buffers LZ4-compressed inside Arrow when
``compress`` is ``lz4``). Settings travel as URL parameters:
``insert_deduplication_token=<batch id>``, ``insert_deduplicate=1``,
``deduplicate_blocks_in_dependent_materialized_views=1``, ``async_insert=0`` and
``input_format_null_as_default=0``. Tables are created with
``non_replicated_deduplication_window``, so a batch retried after a timeout or a 5xx lands
once, in the table and in the rollups its materialized views feed. Nothing is sent as
JSON: the bytes are the same Arrow encoding the embedded store uses
(:mod:`orbitstream.sinks.arrow`), and they may contain blank lines — the server reads the
body as binary.

DDL is the embedded store's (:mod:`orbitstream.sinks.clickhouse.ddl`), rendered for the
configured database, optionally ``ON CLUSTER`` and with ``Replicated*MergeTree`` engines.
Read queries (dashboard, ``orbitstream query``) are sent with ``readonly=2`` and read back
as ``JSONCompact``, so rows look exactly like the embedded store's.

Errors are classified at the HTTP boundary (:mod:`.transport`): server codes first, then
the HTTP status (a 4xx other than 408/429 is never retried), then network errors
(retryable). Modules: ``settings`` (what to reach, from the environment), ``ddl`` (schema
shared with chDB), ``transport`` (client + classification), ``sink`` (wiring).

clickhouse-connect is imported only when the sink first connects; installing it is
``pip install 'orbitstream[clickhouse]'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orbitstream.sinks.clickhouse.settings import ClickHouseSettings
    from orbitstream.sinks.clickhouse.sink import ClickHouseSink

__all__ = ["ClickHouseSettings", "ClickHouseSink"]


def __getattr__(name: str) -> Any:
    # Lazy, so that the embedded store can import ``.ddl`` without the sink and transport
    # (which import ``orbitstream.sinks.chdb`` back).
    if name == "ClickHouseSettings":
        from orbitstream.sinks.clickhouse.settings import ClickHouseSettings

        return ClickHouseSettings
    if name == "ClickHouseSink":
        from orbitstream.sinks.clickhouse.sink import ClickHouseSink

        return ClickHouseSink
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
