"""The HTTP boundary: a clickhouse-connect client, run on worker threads, and error
classification into :class:`~orbitstream.errors.SinkRetryableError` (retry the batch) or
:class:`~orbitstream.errors.SinkRejectedError` (the data itself is refused).

Classification, in order:

1. a ClickHouse code in :data:`RETRYABLE_CODES` (too many parts, timeouts, memory,
   network, concurrency limits, replica trouble) -> retryable;
2. a code in :data:`REJECT_CODES` (parse, type and schema errors: the embedded store's
   list plus NULL-in-ordinary-column, unknown column/table/database, syntax) -> rejected;
3. any other HTTP 4xx except 408 and 429 -> rejected: a 4xx is never retried forever;
4. everything else (HTTP 5xx, connection refused or reset, read timeouts) -> retryable.

clickhouse-connect raises the same exception class for every HTTP status, so the client's
error handler is wrapped to note the status on the exception it raises; without that
hook (another clickhouse-connect version) the status is read from the message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from orbitstream.errors import ConfigError
from orbitstream.sinks.clickhouse.settings import ClickHouseSettings
from orbitstream.sinks.clickhouse_errors import (
    REJECT_CODES,
    RETRYABLE_CODES,
    ClickHouseRejectedError,
    ClickHouseRetryableError,
    classify,
    describe_error,
    sink_error,
)

__all__ = [
    "REJECT_CODES",
    "RETRYABLE_CODES",
    "ClickHouseRejectedError",
    "ClickHouseRetryableError",
    "ClickHouseTransport",
    "classify",
    "describe_error",
    "sink_error",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _note_http_status(client: Any) -> None:
    """Wrap the client's HTTP error handler so raised errors carry ``http_status``."""
    backend = getattr(client, "_backend", None)
    original = getattr(backend, "error_handler", None)
    if backend is None or not callable(original):
        return

    def error_handler(response: Any, retried: bool = False) -> None:
        try:
            original(response, retried)
        except Exception as exc:
            exc.http_status = getattr(response, "status", None)  # type: ignore[attr-defined]
            raise

    backend.error_handler = error_handler


class ClickHouseTransport:
    """One clickhouse-connect HTTP client (no session, so it is safe across threads) and
    the worker threads that run its blocking calls.

    :param settings: server, credentials, timeouts, compression.
    :param max_workers: concurrent requests (writers of different tables, queries).
    """

    def __init__(self, settings: ClickHouseSettings, *, max_workers: int = 4) -> None:
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="clickhouse")
        self._client: Any = None
        self._lock = threading.Lock()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------
    def client(self) -> Any:
        """The connected client (created on first use; raises if the server is unreachable)."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._closed:
                raise ClickHouseRetryableError("ClickHouse transport is closed", sink="clickhouse")
            if self._client is None:
                self._client = self._connect()
            return self._client

    def _connect(self) -> Any:
        try:
            import clickhouse_connect
        except ImportError as exc:
            raise ConfigError(
                "the ClickHouse sink needs clickhouse-connect: pip install 'orbitstream[clickhouse]'",
                setting="CLICKHOUSE_URL",
            ) from exc
        from urllib3 import Timeout

        s = self.settings
        try:
            client: Any = clickhouse_connect.get_client(
                interface=s.interface,
                host=s.host,
                port=s.port,
                username=s.user,
                password=s.password.get_secret_value(),
                database=None,  # may not exist yet: the sink creates it, then it is set below
                compress=False if s.compress == "none" else s.compress,
                connect_timeout=max(1, math.ceil(s.connect_timeout_secs)),
                send_receive_timeout=max(1, math.ceil(s.send_receive_timeout_secs)),
                autogenerate_session_id=False,
                client_name="orbitstream",
                dedicated_pool=True,
            )
        except Exception as exc:
            logger.warning(
                "ClickHouse connection failed.",
                extra={"component": "clickhouse", "endpoint": s.url, "error": repr(exc)},
            )
            raise
        client.database = s.database
        client.timeout = Timeout(connect=s.connect_timeout_secs, read=s.send_receive_timeout_secs)
        _note_http_status(client)
        logger.info(
            "ClickHouse connected.",
            extra={
                "component": "clickhouse",
                "endpoint": s.url,
                "database": s.database,
                "server_version": getattr(client, "server_version", None),
            },
        )
        return client

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # closing must not fail a shutdown
                logger.debug("ClickHouse client close failed.", extra={"error": repr(exc)})
        self._pool.shutdown(wait=True)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run a blocking call on the transport's worker threads."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    # -- requests (blocking; raise clickhouse-connect errors, classified by callers) ---
    def command(self, sql: str, *, use_database: bool = True) -> None:
        self.client().command(sql, use_database=use_database)

    def insert_arrow(
        self,
        table: str,
        arrow_table: Any,
        settings: Mapping[str, object],
        *,
        database: str | None = None,
    ) -> int:
        """Insert an Arrow table (``FORMAT Arrow``) into ``database`` (default: the
        configured one); returns the rows the server wrote."""
        summary = self.client().insert_arrow(
            table,
            arrow_table,
            database=database or self.settings.database,
            settings=dict(settings),
        )
        return int(getattr(summary, "written_rows", 0) or 0)

    def query_bytes(
        self,
        sql: str,
        params: Mapping[str, object] | None,
        settings: Mapping[str, object],
        fmt: str | None,
        *,
        use_database: bool = True,
        database: str | None = None,
    ) -> bytes:
        """Run ``sql``; ``database`` (when given) is its current database."""
        all_settings = dict(settings)
        if database is not None:
            all_settings["database"] = database
        data: bytes = self.client().raw_query(
            sql,
            parameters=dict(params) if params else None,
            settings=all_settings,
            fmt=fmt,
            use_database=use_database and database is None,
        )
        return data

    def ping(self) -> bool:
        return bool(self.client().ping())
