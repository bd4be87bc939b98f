"""Settings of the PostgreSQL / TimescaleDB sink.

The DSN comes from ``DATABASE_URL`` (``postgres://`` or ``postgresql://``). It may hold a
password: :attr:`PostgresSettings.redacted_dsn` is what logs and errors show, and the
dataclass ``repr`` never prints the DSN itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from orbitstream.errors import ConfigError
from orbitstream.redaction import redact_url

__all__ = ["SCHEMES", "PostgresSettings", "TimescaleMode", "redact_dsn"]

TimescaleMode = Literal["auto", "on", "off"]
SCHEMES = ("postgres://", "postgresql://")
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_MASK = "***"


def redact_dsn(dsn: str) -> str:
    """The DSN with any password (in the user info or the query string) masked, whatever
    characters the password holds."""
    return redact_url(dsn)


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """Connection, retention and layout settings.

    :param dsn: libpq URI, ``postgres://user:pass@host:5432/db`` (``DATABASE_URL``).
    :param max_connections: pool size (``MAX_CONNECTIONS``).
    :param min_connections: connections kept open while idle.
    :param retention_days: raw rows older than this are dropped (whole daily partitions,
        or TimescaleDB's retention policy); a table's own ``ttl_days`` wins when set;
        ``None`` keeps everything.
    :param rollup_retention_days: the same for rollup buckets.
    :param partitions_ahead_days: daily partitions created ahead of today (plain path).
    :param timescale: ``auto`` uses TimescaleDB when the server offers it; ``on`` requires
        it; ``off`` always uses native partitioning.
    :param ledger_retention_days: how long batch ids are remembered for deduplication.
    :param connect_timeout_secs: connecting, and waiting for a free pooled connection.
    :param rollup_refresh_secs: plain layout: how often the rollups' materialized buckets
        are brought up to date (the rollup view reads the newer buckets from the raw rows).
    :param write_timeout_secs: the longest one batch's write may take, from sending it to
        the server's answer; past it the connection is closed (the server rolls back
        what it had not committed; the ledger tells a retry what it had) and the write
        is retryable. Without it a write to a server that stopped answering (a network
        partition) would hang until TCP gave up, many minutes later.
    :param query_timeout_secs: ``statement_timeout`` of read-only queries.
    :param maintenance_lock_timeout_secs: ``lock_timeout`` when creating or dropping a
        partition (it briefly locks the parent table).
    :param query_role: the read-only login users' queries run as (created by the service).
    :param query_dsn: a DSN of a read-only login to use instead
        (``ORBITSTREAM_QUERY_DATABASE_URL``).
    """

    dsn: str = field(repr=False)
    max_connections: int = 50
    min_connections: int = 1
    retention_days: int | None = 30
    rollup_retention_days: int | None = 365
    partitions_ahead_days: int = 3
    timescale: TimescaleMode = "auto"
    ledger_retention_days: int = 7
    connect_timeout_secs: float = 10.0
    write_timeout_secs: float = 60.0
    query_timeout_secs: float = 30.0
    maintenance_lock_timeout_secs: float = 5.0
    rollup_refresh_secs: float = 5.0
    application_name: str = "orbitstream"
    query_role: str = "orbitstream_reader"
    query_dsn: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.dsn.strip().lower().startswith(SCHEMES):
            raise ConfigError(
                "DATABASE_URL for PostgreSQL must start with postgres:// or postgresql://",
                setting="DATABASE_URL",
            )
        if self.max_connections < 1:
            raise ConfigError("MAX_CONNECTIONS must be at least 1", setting="MAX_CONNECTIONS")
        if not 0 <= self.min_connections <= self.max_connections:
            raise ConfigError(
                "min_connections must be between 0 and MAX_CONNECTIONS",
                setting="MAX_CONNECTIONS",
            )
        for name in ("retention_days", "rollup_retention_days"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1 day", setting=name)
        if not 0 <= self.partitions_ahead_days <= 366:
            raise ConfigError(
                "partitions_ahead_days must be between 0 and 366", setting="partitions_ahead_days"
            )
        if self.timescale not in ("auto", "on", "off"):
            raise ConfigError("timescale must be auto, on or off", setting="timescale")
        if not self.write_timeout_secs > 0:
            raise ConfigError(
                "write_timeout_secs must be more than 0",
                setting="ORBITSTREAM_POSTGRES_WRITE_TIMEOUT",
            )
        if self.ledger_retention_days < 1:
            raise ConfigError(
                "ledger_retention_days must be at least 1", setting="ledger_retention_days"
            )

    @property
    def redacted_dsn(self) -> str:
        """The DSN safe to log (password masked)."""
        return redact_dsn(self.dsn)

    def __repr__(self) -> str:
        return (
            f"PostgresSettings(dsn={self.redacted_dsn!r}, max_connections={self.max_connections}, "
            f"retention_days={self.retention_days}, "
            f"rollup_retention_days={self.rollup_retention_days}, "
            f"partitions_ahead_days={self.partitions_ahead_days}, timescale={self.timescale!r})"
        )
