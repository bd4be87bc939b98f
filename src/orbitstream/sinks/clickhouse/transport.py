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
import re
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from orbitstream.errors import ConfigError, SinkError, SinkRejectedError, SinkRetryableError
from orbitstream.sinks.chdb import REJECT_CODES as _EMBEDDED_REJECT_CODES
from orbitstream.sinks.clickhouse.settings import ClickHouseSettings

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

#: Transient server conditions: the same request may succeed later.
RETRYABLE_CODES = frozenset(
    {
        159,  # TIMEOUT_EXCEEDED
        202,  # TOO_MANY_SIMULTANEOUS_QUERIES
        203,  # NO_FREE_CONNECTION
        209,  # SOCKET_TIMEOUT
        210,  # NETWORK_ERROR
        241,  # MEMORY_LIMIT_EXCEEDED
        242,  # TABLE_IS_READ_ONLY (replica lost its Keeper session)
        252,  # TOO_MANY_PARTS
        285,  # TOO_FEW_LIVE_REPLICAS
        319,  # UNKNOWN_STATUS_OF_INSERT
        394,  # QUERY_WAS_CANCELLED (server shutting down, client gone)
        425,  # SYSTEM_ERROR
        999,  # KEEPER_EXCEPTION
    }
)
#: Deployment problems, not bad rows (every batch would fail alike): the rows are held and
#: retried for a bounded time, then the whole batch is dead-lettered (never bisected).
DEPLOYMENT_CODES = frozenset(
    {
        60,  # UNKNOWN_TABLE
        81,  # UNKNOWN_DATABASE
        192,  # UNKNOWN_USER
        497,  # ACCESS_DENIED
        516,  # AUTHENTICATION_FAILED
    }
)
RETRYABLE_CODES = RETRYABLE_CODES | DEPLOYMENT_CODES
#: The data or the statement is wrong: retrying the same rows cannot succeed.
REJECT_CODES = (
    _EMBEDDED_REJECT_CODES
    | frozenset(
        {
            8,  # THERE_IS_NO_COLUMN
            10,  # NOT_FOUND_COLUMN_IN_BLOCK
            16,  # NO_SUCH_COLUMN_IN_TABLE
            20,  # NUMBER_OF_COLUMNS_DOESNT_MATCH
            44,  # ILLEGAL_COLUMN
            47,  # UNKNOWN_IDENTIFIER
            60,  # UNKNOWN_TABLE
            62,  # SYNTAX_ERROR
            81,  # UNKNOWN_DATABASE
            349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        }
    )
) - RETRYABLE_CODES
_RETRYABLE_STATUSES = frozenset({408, 429})
# The server's HTTP status for codes whose retry decision depends on it, for errors raised
# before the status hook is installed (while the client connects).
_STATUS_OF_CODE = {
    194: 401,  # REQUIRED_PASSWORD
    192: 403,  # UNKNOWN_USER
    193: 403,  # WRONG_PASSWORD
    497: 403,  # ACCESS_DENIED
    512: 403,  # SET_NON_GRANTED_ROLE
    516: 403,  # AUTHENTICATION_FAILED
    36: 400,  # BAD_ARGUMENTS
    115: 404,  # UNKNOWN_SETTING
}
_STATUS_IN_MESSAGE = re.compile(r"HTTP status (\d{3})")
_CODE_IN_MESSAGE = re.compile(r"\bCode:\s*(\d+)")
_SERVER_TEXT = re.compile(r"(Code: \d+\..*?)(?:\s*\(for url [^)]*\))?\s*$", re.S)
_FOR_URL = re.compile(r"\s*\(for url [^)]*\)")

Kind = Literal["retryable", "rejected"]


class ClickHouseRetryableError(SinkRetryableError):
    """A transient failure; ``code`` is the ClickHouse error code, ``status_code`` the HTTP
    status (both ``None`` when the server never answered)."""

    def __init__(self, message: str, *, code: int | None = None, **context: Any) -> None:
        super().__init__(message, deployment=code in DEPLOYMENT_CODES, **context)
        self.code = code


class ClickHouseRejectedError(SinkRejectedError):
    """The server refused the data or the statement; retrying cannot help."""

    def __init__(self, message: str, *, code: int | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.code = code


def classify(code: int | None, status: int | None) -> Kind:
    """``retryable`` or ``rejected`` from a ClickHouse code and an HTTP status."""
    if code in RETRYABLE_CODES:
        return "retryable"
    if code in REJECT_CODES:
        return "rejected"
    if status is not None and 400 <= status < 500 and status not in _RETRYABLE_STATUSES:
        return "rejected"
    return "retryable"


def describe_error(exc: BaseException) -> tuple[str, int | None, int | None, Kind]:
    """``(message, code, http_status, kind)`` for any exception raised at this boundary."""
    code: int | None = getattr(exc, "code", None)
    if not isinstance(code, int):
        code = None
    status: int | None = getattr(exc, "http_status", None)
    text = str(exc)
    if status is None:
        m = _STATUS_IN_MESSAGE.search(text)
        status = int(m.group(1)) if m else None
    if code is None:
        m = _CODE_IN_MESSAGE.search(text)
        code = int(m.group(1)) if m else None
    if status is None and code is not None:
        status = _STATUS_OF_CODE.get(code)
    server = _SERVER_TEXT.search(text)
    message = server.group(1).strip() if server else _FOR_URL.sub("", text).strip()
    message = message or type(exc).__name__
    if code is not None or status is not None:
        return message, code, status, classify(code, status)
    return message, None, None, _local_kind(exc)


def _local_kind(exc: BaseException) -> Kind:
    """No server answer: network trouble is retryable, client-side data errors are not."""
    try:
        from clickhouse_connect.driver.exceptions import Error, OperationalError
    except ImportError:  # pragma: no cover - the transport cannot exist without it
        pass
    else:
        if isinstance(exc, Error):
            return "retryable" if isinstance(exc, OperationalError) else "rejected"
    if isinstance(exc, OSError | TimeoutError | ConnectionError):
        return "retryable"
    if isinstance(exc, ValueError | TypeError | OverflowError | KeyError):
        return "rejected"  # pyarrow's ArrowInvalid/ArrowTypeError are ValueError/TypeError
    return "retryable"


def sink_error(exc: BaseException, *, sink: str, table: str = "", batch_id: str = "") -> SinkError:
    """The classified sink error for ``exc`` (raise it ``from exc``)."""
    message, code, status, kind = describe_error(exc)
    cls = ClickHouseRejectedError if kind == "rejected" else ClickHouseRetryableError
    return cls(message, code=code, sink=sink, table=table, batch_id=batch_id, status_code=status)


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

    def insert_arrow(self, table: str, arrow_table: Any, settings: Mapping[str, object]) -> int:
        """Insert an Arrow table (``FORMAT Arrow``); returns the rows the server wrote."""
        summary = self.client().insert_arrow(
            table, arrow_table, database=self.settings.database, settings=dict(settings)
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
