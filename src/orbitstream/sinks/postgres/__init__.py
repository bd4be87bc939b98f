"""PostgreSQL / TimescaleDB sink (``DATABASE_URL=postgres://…``).

Wire format: each batch is one PostgreSQL binary ``COPY`` stream —
``COPY <table> (<columns>) FROM STDIN (FORMAT BINARY)`` — built in Python by
:mod:`.encoding`: the 19-byte header (``PGCOPY\\n\\377\\r\\n\\0``, flags, extension
length), per row an int16 field count and per field an int32 length (-1 for NULL) and
the value in PostgreSQL's binary send format (``timestamptz`` as int64 microseconds
since 2000-01-01 UTC, ``double precision`` as big-endian float8, ``boolean`` as one
byte, ``text`` as UTF-8, ``text[]`` in binary array format, maps as ``jsonb`` version 1),
then the int16 -1 trailer. No per-value adaptation happens in the driver.

Each batch is committed in one transaction together with its id in the batch ledger
``orbitstream_batches`` and, on the plain layout, its contribution to the rollup
tables: a retried or replayed batch id is skipped, so every batch lands exactly once
(effectively-once on top of the pipeline's at-least-once delivery).

Layout (:mod:`.ddl`, applied by :mod:`.migrations`): TimescaleDB hypertables with
compression, retention and continuous aggregates when the extension is available;
otherwise native daily range partitions with a DEFAULT partition, BRIN and btree
indexes, and incrementally updated rollup tables behind views of the same names.

Modules: :mod:`.settings` (``PostgresSettings``), :mod:`.encoding` (pure, bytes out),
:mod:`.ddl` (pure, SQL out), :mod:`.migrations` (``migrate``, ``maintain``),
:mod:`.sink` (``PostgresSink``; imports psycopg, so it is loaded on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orbitstream.sinks.postgres.encoding import CopyEncoder, EncodeError, encode_batch
from orbitstream.sinks.postgres.settings import PostgresSettings, redact_dsn

if TYPE_CHECKING:
    from orbitstream.sinks.postgres.migrations import maintain, migrate
    from orbitstream.sinks.postgres.sink import (
        PostgresRejectedError,
        PostgresRetryableError,
        PostgresSink,
    )

__all__ = [
    "CopyEncoder",
    "EncodeError",
    "PostgresRejectedError",
    "PostgresRetryableError",
    "PostgresSettings",
    "PostgresSink",
    "encode_batch",
    "maintain",
    "migrate",
    "redact_dsn",
]

_LAZY = {
    "PostgresSink": "sink",
    "PostgresRetryableError": "sink",
    "PostgresRejectedError": "sink",
    "migrate": "migrations",
    "maintain": "migrations",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
