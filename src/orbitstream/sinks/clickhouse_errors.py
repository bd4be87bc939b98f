"""ClickHouse errors, classified in one place for the embedded store (chDB) and the server.

A ClickHouse error carries a code (``Code: 252. DB::Exception: …``); over HTTP also a
status. In order:

1. a code in :data:`RETRYABLE_CODES` (too many parts, timeouts, memory, network,
   concurrency limits, replica trouble) -> retryable; the ones in
   :data:`DEPLOYMENT_CODES` (a missing table or database, bad credentials, a missing
   grant) are marked ``deployment``: held for a bounded time, then dead-lettered whole;
2. a code in :data:`REJECT_CODES` (parse, type and schema errors) -> rejected;
3. any other HTTP 4xx except 408 and 429 -> rejected: a 4xx is never retried forever;
4. everything else (HTTP 5xx, connection refused or reset, read timeouts, an unknown
   code from the embedded store) -> retryable.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from orbitstream.errors import SinkError, SinkRejectedError, SinkRetryableError

__all__ = [
    "DEPLOYMENT_CODES",
    "REJECT_CODES",
    "RETRYABLE_CODES",
    "ClickHouseRejectedError",
    "ClickHouseRetryableError",
    "Kind",
    "classify",
    "describe_error",
    "error_code",
    "sink_error",
]

Kind = Literal["retryable", "rejected"]

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
    frozenset(
        {
            6,  # CANNOT_PARSE_TEXT
            26,  # CANNOT_PARSE_QUOTED_STRING
            27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
            32,  # ATTEMPT_TO_READ_AFTER_EOF
            33,  # CANNOT_READ_ALL_DATA
            38,  # CANNOT_PARSE_DATE
            41,  # CANNOT_PARSE_DATETIME
            53,  # TYPE_MISMATCH
            69,  # ARGUMENT_OUT_OF_BOUND
            70,  # CANNOT_CONVERT_TYPE
            72,  # CANNOT_PARSE_NUMBER
            117,  # INCORRECT_DATA
            130,  # CANNOT_READ_ARRAY_FROM_TEXT
            131,  # TOO_LARGE_STRING_SIZE
            190,  # SIZES_OF_ARRAYS_DONT_MATCH
            349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
            394,  # QUERY_WAS_CANCELLED
            432,  # UNKNOWN_CODEC
            1001,  # STD_EXCEPTION
        }
    )
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


def error_code(exc: BaseException) -> int | None:
    """The ClickHouse code in an exception's message (``Code: 60. …``), if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    m = _CODE_IN_MESSAGE.search(str(exc))
    return int(m.group(1)) if m else None
