"""OrbitStream's exception hierarchy: every exception the project raises on purpose.

::

    OrbitStreamError
    ├── ConfigError                    a bad setting; names the variable, TOML key or flag
    ├── SourceError                    a source could not read or decode its input
    │   ├── StarlinkEnvelopeError      (pipelines.starlink) a response is not the documented shape
    │   └── StarlinkError              (sources.starlink_api) the API answered an error
    │       ├── StarlinkRetryableError       429, 5xx, timeouts: back off and poll again
    │       │   └── StarlinkInvalidResponseError   truncated or non-JSON body
    │       ├── StarlinkTokenError           the token request failed (status and body)
    │       ├── StarlinkAuthError            a fresh token is refused
    │       ├── StarlinkPermissionError      403
    │       └── StarlinkRequestError         the request itself is wrong (4xx)
    ├── RecordError                    one record is invalid
    │   └── RecordRejected             ...and goes to the dead-letter store, never crashing a run
    │       └── EncodeError            (sinks.postgres.encoding) a value the column cannot hold
    ├── StaleMappingError              (pipelines.starlink) a mapping committed out of order
    ├── QueryError                     a read query was refused or failed (``code``: the store's)
    ├── ServerUnreachableError         (simulate.driver) the ingest API cannot be reached
    ├── BackpressureError              buffers are full; retry after ``retry_after_secs``
    └── SinkError                      a sink could not write a batch (sink, table, batch_id)
        ├── SinkRetryableError         transient: network, timeout, 5xx, too many parts -> retry
        │   ├── ClickHouseRetryableError   (sinks.clickhouse_errors) with the server's code
        │   └── PostgresRetryableError     (sinks.postgres.sink) with the SQLSTATE
        └── SinkRejectedError          the store refuses the rows: dead letters, never retried
            ├── ClickHouseRejectedError
            └── PostgresRejectedError

Not errors: :class:`orbitstream.sources.http.server.Refusal` is how a streaming handler
answers early; modules keep private exceptions for control flow.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackpressureError",
    "ConfigError",
    "OrbitStreamError",
    "QueryError",
    "RecordError",
    "RecordRejected",
    "SinkError",
    "SinkRejectedError",
    "SinkRetryableError",
    "SourceError",
]


class OrbitStreamError(Exception):
    """Root of every error OrbitStream raises on purpose."""


class ConfigError(OrbitStreamError):
    """A setting is missing or invalid.

    :param setting: the environment variable, TOML key or CLI flag at fault.
    """

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class SourceError(OrbitStreamError):
    """A source failed to read or decode its input."""


class RecordError(OrbitStreamError):
    """A single record is invalid."""


class RecordRejected(RecordError):
    """A record was refused and belongs in the dead-letter store."""


class QueryError(OrbitStreamError):
    """A read query was refused or failed (syntax, unknown table, read-only violation...).

    :param code: the store's error code (ClickHouse code; PostgreSQL SQLSTATE as an int
        when it is all digits).
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class SinkError(OrbitStreamError):
    """A sink failed to write a batch.

    :param sink: name of the sink.
    :param table: table the batch was for.
    :param batch_id: the batch's deterministic id.
    """

    deployment: bool = False

    def __init__(
        self,
        message: str,
        *,
        sink: str = "",
        table: str = "",
        batch_id: str = "",
        status_code: int | str | None = None,
        deployment: bool | None = None,
    ) -> None:
        super().__init__(message)
        if deployment is not None:
            self.deployment = deployment
        self.sink = sink
        self.table = table
        self.batch_id = batch_id
        self.status_code = status_code


class SinkRetryableError(SinkError):
    """A transient failure: the same batch may be retried.

    ``deployment`` marks failures about the deployment rather than the rows (a missing
    table or database, bad credentials, a missing grant): retried for a bounded time
    (``ORBITSTREAM_DEPLOYMENT_ERROR_RETRY``) so an operator can fix it, then the whole
    batch goes to dead letters — a 4xx is never retried forever.
    """

    deployment: bool = False


class SinkRejectedError(SinkError):
    """The backend refused the data itself: retrying cannot help.

    :param bad_rows: indices (in the batch) of the rows at fault when the sink knows them
        (an encoder that names the row); the pipeline then dead-letters exactly those and
        writes the rest. ``None``: unknown, the pipeline bisects the batch.
    """

    def __init__(
        self,
        message: str,
        *,
        bad_rows: tuple[int, ...] | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.bad_rows = bad_rows


class BackpressureError(OrbitStreamError):
    """Buffers are full; the caller should retry after ``retry_after_secs``."""

    def __init__(self, message: str, *, retry_after_secs: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_secs = retry_after_secs
