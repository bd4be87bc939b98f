"""Parquet archive: one Parquet file per table per flush, on a local directory or S3.

Layout (Hive-style, so pyarrow datasets and ClickHouse's ``s3()`` see ``date`` and
``hour`` as partition columns)::

    <prefix>/<table>/date=YYYY-MM-DD/hour=HH/<batch-id>.parquet
    <prefix>/dead_letters/date=YYYY-MM-DD/hour=HH/<batch-id>-<digest>.jsonl

``date`` and ``hour`` (UTC) come from the batch's first row's time column, and the file
name from its batch id (made safe for object keys by :func:`safe_batch_id`), so a batch
replayed with the same id writes the same object again: the archive is idempotent.
A batch whose rows span an hour boundary lives under its first row's hour.

Files are built from :func:`orbitstream.sinks.arrow.to_arrow` (maps and lists as Arrow
map/list columns), compressed with zstd level 3 by default (``bench/parquet.py`` measures
it against snappy). Local files are written to a hidden temporary name, fsynced and renamed
into place; an S3 ``PutObject`` is atomic by itself (with ``Content-MD5``).

Errors: a row that cannot be encoded -> :class:`~orbitstream.errors.SinkRejectedError`;
network failures, throttling and 5xx -> :class:`~orbitstream.errors.SinkRetryableError`;
a missing bucket, denied access, bad credentials or another 4xx about the request ->
retryable with ``deployment=True`` (held for a bounded time, then dead-lettered whole).

Settings (:meth:`ParquetSettings.from_env`): ``ORBITSTREAM_PARQUET_URL`` (a directory,
``file:///dir`` or ``s3://bucket/prefix``), else ``AWS_S3_BUCKET`` with
``ORBITSTREAM_PARQUET_PREFIX``; ``ORBITSTREAM_PARQUET_COMPRESSION`` (``zstd``/``snappy``);
``ORBITSTREAM_S3_ADDRESSING_STYLE`` (``auto``/``path``/``virtual``); the endpoint, region
and credentials from the standard AWS variables (:mod:`orbitstream.aws`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import errno
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from orbitstream.aws import AwsSettings
from orbitstream.core.batch import Batch, DeadLetter
from orbitstream.core.protocols import SinkBase
from orbitstream.core.tables import ColType, Table
from orbitstream.errors import ConfigError, SinkError, SinkRejectedError, SinkRetryableError
from orbitstream.sinks.arrow import to_arrow

__all__ = [
    "DEAD_LETTERS_DIR",
    "Compression",
    "ParquetSettings",
    "ParquetSink",
    "classify_s3_error",
    "dead_letter_key",
    "encode_parquet",
    "object_key",
    "partition_path",
    "safe_batch_id",
]

logger = logging.getLogger(__name__)

Compression = Literal["zstd", "snappy"]
AddressingStyle = Literal["auto", "path", "virtual"]
DEAD_LETTERS_DIR = "dead_letters"
DEFAULT_COMPRESSION: Compression = "zstd"
#: zstd level when none is set: level 3 writes 15-30 % smaller files than pyarrow's
#: default (1) for about the same encode time (bench/parquet.py).
DEFAULT_ZSTD_LEVEL = 3
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
_COMPRESSIONS = ("zstd", "snappy")
_ADDRESSING = ("auto", "path", "virtual")
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")
_SEGMENT = re.compile(r"^[A-Za-z0-9._=-]+$")
_PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_ID_CHARS = 160
_NS = 1_000_000_000


# -- settings ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ParquetSettings:
    """Where and how the archive is written.

    :param url: ``s3://bucket[/prefix]``, ``file:///dir`` or a directory path.
    :param compression: Parquet page compression, ``zstd`` (default) or ``snappy``.
    :param compression_level: zstd level (1-22); ``None`` for :data:`DEFAULT_ZSTD_LEVEL`.
    :param aws: endpoint, region and credentials (S3 only).
    :param addressing_style: S3 bucket addressing; ``path`` suits most S3-compatible stores.
    :param max_concurrent_writes: files of one table in flight at once.
    :param setting: the variable the destination came from (named in start-up errors).
    :raises ConfigError: a value is invalid; ``setting`` names the variable.
    """

    url: str
    compression: Compression = DEFAULT_COMPRESSION
    compression_level: int | None = None
    aws: AwsSettings = field(default_factory=AwsSettings)
    addressing_style: AddressingStyle = "auto"
    max_concurrent_writes: int = 1
    setting: str = "ORBITSTREAM_PARQUET_URL"

    def __post_init__(self) -> None:
        if self.compression not in _COMPRESSIONS:
            raise ConfigError(
                f"compression must be zstd or snappy, got {self.compression!r}",
                setting="ORBITSTREAM_PARQUET_COMPRESSION",
            )
        if self.compression_level is not None and not (
            self.compression == "zstd" and 1 <= self.compression_level <= 22
        ):
            raise ConfigError(
                "compression_level is 1-22 and only for zstd", setting="compression_level"
            )
        if self.addressing_style not in _ADDRESSING:
            raise ConfigError(
                f"addressing style must be auto, path or virtual, got {self.addressing_style!r}",
                setting="ORBITSTREAM_S3_ADDRESSING_STYLE",
            )
        if not (isinstance(self.max_concurrent_writes, int) and self.max_concurrent_writes >= 1):
            raise ConfigError("max_concurrent_writes must be >= 1", setting="max_concurrent_writes")
        if self.is_s3:
            _ = self.bucket, self.prefix  # validates
        elif not self.local_root.as_posix().strip():
            raise ConfigError("the Parquet directory is empty", setting="ORBITSTREAM_PARQUET_URL")

    @property
    def level(self) -> int | None:
        """The codec level the files are written with."""
        if self.compression == "zstd":
            return self.compression_level or DEFAULT_ZSTD_LEVEL
        return None

    @property
    def is_s3(self) -> bool:
        return self.url.strip().lower().startswith("s3://")

    @property
    def bucket(self) -> str:
        """The bucket of an ``s3://`` URL."""
        parts = urlsplit(self.url.strip())
        bucket = parts.netloc
        if not _BUCKET.match(bucket):
            raise ConfigError(
                f"invalid S3 bucket name {bucket!r} in {self.url!r}", setting="AWS_S3_BUCKET"
            )
        return bucket

    @property
    def prefix(self) -> str:
        """The key prefix of an ``s3://`` URL, without leading or trailing ``/`` (may be empty)."""
        path = unquote(urlsplit(self.url.strip()).path).strip("/")
        return _check_prefix(path, "ORBITSTREAM_PARQUET_PREFIX")

    @property
    def local_root(self) -> Path:
        """The directory of a local archive."""
        text = self.url.strip()
        if text.lower().startswith("file://"):
            return Path(unquote(urlsplit(text).path))
        return Path(text).expanduser()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ParquetSettings | None:
        """Settings from the environment; ``None`` when no archive is configured.

        :raises ConfigError: a variable has a bad value, or the URL and bucket disagree.
        """

        def get(name: str) -> str | None:
            value = environ.get(name)
            return value.strip() if value is not None and value.strip() else None

        url = get("ORBITSTREAM_PARQUET_URL")
        bucket = get("AWS_S3_BUCKET")
        prefix = get("ORBITSTREAM_PARQUET_PREFIX")
        if url is None and bucket is None:
            return None
        if url is None:
            assert bucket is not None
            if "/" in bucket or ":" in bucket:
                raise ConfigError(
                    f"AWS_S3_BUCKET must be a bucket name, got {bucket!r} "
                    "(put a prefix in ORBITSTREAM_PARQUET_PREFIX)",
                    setting="AWS_S3_BUCKET",
                )
            url = f"s3://{bucket}/{_check_prefix((prefix or '').strip('/'), 'ORBITSTREAM_PARQUET_PREFIX')}"
        else:
            if prefix is not None:
                raise ConfigError(
                    "ORBITSTREAM_PARQUET_PREFIX goes with AWS_S3_BUCKET; put the prefix in "
                    "ORBITSTREAM_PARQUET_URL instead",
                    setting="ORBITSTREAM_PARQUET_PREFIX",
                )
            if bucket is not None and url.lower().startswith("s3://"):
                in_url = urlsplit(url).netloc
                if in_url != bucket:
                    raise ConfigError(
                        f"ORBITSTREAM_PARQUET_URL names bucket {in_url!r} but AWS_S3_BUCKET "
                        f"is {bucket!r}: set only one",
                        setting="AWS_S3_BUCKET",
                    )
        compression = (get("ORBITSTREAM_PARQUET_COMPRESSION") or DEFAULT_COMPRESSION).lower()
        style = (get("ORBITSTREAM_S3_ADDRESSING_STYLE") or "auto").lower()
        return cls(
            url=url,
            compression=compression,  # type: ignore[arg-type]  # checked in __post_init__
            aws=AwsSettings.from_env(environ, "s3"),
            addressing_style=style,  # type: ignore[arg-type]
            setting="AWS_S3_BUCKET"
            if get("ORBITSTREAM_PARQUET_URL") is None
            else "ORBITSTREAM_PARQUET_URL",
        )


def _check_prefix(prefix: str, setting: str) -> str:
    if not prefix:
        return ""
    for segment in prefix.split("/"):
        if segment in ("", ".", "..") or not _SEGMENT.match(segment):
            raise ConfigError(
                f"invalid key prefix {prefix!r}: use letters, digits and . _ = - "
                "between single slashes",
                setting=setting,
            )
    return prefix


# -- layout --------------------------------------------------------------------------
def safe_batch_id(batch_id: str) -> str:
    """A file name for a batch id, usable as an S3 key segment and a local file name.

    Ids made only of letters, digits, ``.``, ``_`` and ``-`` (starting with a letter or
    digit, at most 160 characters) are kept as they are. Any other id keeps a readable
    part (unsafe runs become ``-``) and gains a digest of the whole id, so two different
    ids never share a name. The result never contains ``/``, glob characters or quotes,
    and never starts with ``.`` or ``_`` (names pyarrow's dataset discovery skips).
    """
    if len(batch_id) <= _MAX_ID_CHARS and _PLAIN_ID.match(batch_id):
        return batch_id
    readable = _UNSAFE.sub("-", batch_id).strip("._-")[:_MAX_ID_CHARS].rstrip("._-")
    digest = hashlib.sha256(batch_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable or 'batch'}-{digest}"


def partition_path(time_ns: int) -> str:
    """``date=YYYY-MM-DD/hour=HH`` (UTC) for an epoch-nanosecond time.

    :raises ValueError: the time is outside what a date can show (years 1-9999).
    """
    if isinstance(time_ns, bool) or not isinstance(time_ns, int):
        raise ValueError(f"time must be epoch nanoseconds (int), got {type(time_ns).__name__}")
    secs = time_ns // _NS
    try:
        when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=secs)
    except OverflowError as exc:
        raise ValueError(f"time {time_ns} ns is out of range") from exc
    return f"date={when:%Y-%m-%d}/hour={when:%H}"


def _join(prefix: str, *parts: str) -> str:
    return "/".join(p for p in (prefix, *parts) if p)


def object_key(prefix: str, table: str, batch_id: str, time_ns: int) -> str:
    """``<prefix>/<table>/date=…/hour=…/<safe batch id>.parquet``.

    :raises ValueError: ``time_ns`` is not a usable time.
    """
    return _join(prefix, table, partition_path(time_ns), f"{safe_batch_id(batch_id)}.parquet")


def dead_letter_key(prefix: str, letters: Sequence[DeadLetter], body: bytes) -> str:
    """``<prefix>/dead_letters/date=…/hour=…/<safe batch id>-<digest>.jsonl``; the hour is
    the first letter's, the digest is of the body (the same letters land on the same key)."""
    first = letters[0]
    digest = hashlib.sha256(body).hexdigest()[:12]
    name = f"{safe_batch_id(first.batch_id)}-{digest}.jsonl"
    return _join(prefix, DEAD_LETTERS_DIR, partition_path(first.time_ns), name)


# -- encoding ------------------------------------------------------------------------
def encode_parquet(
    batch: Batch,
    compression: Compression | Literal["none"] = DEFAULT_COMPRESSION,
    level: int | None = None,
) -> bytes:
    """The batch as the bytes of one Parquet file (one row group).

    :param compression: page codec (``none`` only for measurements).
    :param level: codec level; ``None`` for pyarrow's default.

    :raises ValueError: a value does not fit its column (wrong type, NULL in a column
        that is not nullable, a map that is not a dict...).
    """
    try:
        table = to_arrow(batch)
    except (pa.ArrowException, TypeError, OverflowError) as exc:
        raise ValueError(f"cannot encode rows as Arrow: {exc}") from exc
    for col, arr in zip(batch.table.columns, table.columns, strict=True):
        if not col.nullable and arr.null_count:
            raise ValueError(f"NULL in column {col.name}, which is not nullable")
    table = table.replace_schema_metadata(
        {"orbitstream.table": batch.table.name, "orbitstream.batch_id": batch.batch_id}
    )
    out = pa.BufferOutputStream()
    try:
        pq.write_table(
            table,
            out,
            compression=compression,
            compression_level=level,
            row_group_size=max(1, table.num_rows),
        )
    except pa.ArrowException as exc:
        raise ValueError(f"cannot write Parquet: {exc}") from exc
    data: bytes = out.getvalue().to_pybytes()
    return data


def _dead_letter_lines(letters: Sequence[DeadLetter]) -> bytes:
    return "".join(
        json.dumps(
            {
                "time_ns": letter.time_ns,
                "pipeline": letter.pipeline,
                "table": letter.table,
                "batch_id": letter.batch_id,
                "row": letter.row,
                "error": letter.error,
            },
            default=str,
            ensure_ascii=False,
        )
        + "\n"
        for letter in letters
    ).encode("utf-8", "backslashreplace")


# -- error classification ------------------------------------------------------------
#: S3 error codes about the deployment (bucket, credentials, region, clock), not the rows.
DEPLOYMENT_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "AuthorizationHeaderMalformed",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "InvalidToken",
        "NotSignedUp",
        "PermanentRedirect",
        "RequestTimeTooSkewed",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
#: Transient conditions: the same request may succeed later.
TRANSIENT_CODES = frozenset(
    {
        "BadDigest",  # the body was corrupted on the way
        "InternalError",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
#: The object itself is refused: retrying the same rows cannot help.
REJECT_CODES = frozenset({"EntityTooLarge"})


def classify_s3_error(
    exc: BaseException, *, sink: str = "", table: str = "", batch_id: str = ""
) -> SinkError:
    """Turn a botocore or OS error into the sink error the pipeline acts on.

    Order: :data:`REJECT_CODES` -> rejected; :data:`TRANSIENT_CODES`, HTTP 5xx, 408 and
    429, connection errors and timeouts -> retryable; :data:`DEPLOYMENT_CODES`, any other
    4xx or 3xx, missing credentials or region, TLS failures -> retryable with
    ``deployment=True`` (S3 never looks inside the object, so a 4xx is about the request:
    bucket, keys, policy, region). Local files: permission, read-only file system, not a
    directory -> deployment; other OS errors (a full disk included) -> retryable.
    """
    kind, message, status = _classify(exc)
    cls = SinkRejectedError if kind == "rejected" else SinkRetryableError
    return cls(
        message,
        sink=sink,
        table=table,
        batch_id=batch_id,
        status_code=status,
        deployment=kind == "deployment",
    )


def _classify(exc: BaseException) -> tuple[str, str, int | str | None]:
    """``(kind, message, status)``; kind is ``rejected``, ``retryable`` or ``deployment``."""
    try:
        from botocore import exceptions as bce
    except ImportError:  # pragma: no cover - a local archive without boto3 installed
        pass
    else:
        if isinstance(exc, bce.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = f"S3 {code or status}: {error.get('Message', '') or exc}"
            status_code: int | str | None = code or status
            if code in REJECT_CODES:
                return "rejected", message, status_code
            if code in TRANSIENT_CODES or (
                isinstance(status, int) and (status >= 500 or status in (408, 429))
            ):
                return "retryable", message, status_code
            return "deployment", message, status_code
        if isinstance(exc, bce.BotoCoreError):
            transient = (
                (
                    isinstance(
                        exc, bce.ConnectionError | bce.HTTPClientError | bce.IncompleteReadError
                    )
                    and not isinstance(exc, bce.SSLError)
                )
                # a credential provider that failed to answer (instance metadata, ECS/EKS
                # agents still starting): unlike no credentials at all, it may work later
                or isinstance(
                    exc,
                    bce.ChecksumError | bce.FlexibleChecksumError | bce.CredentialRetrievalError,
                )
            )
            kind = "retryable" if transient else "deployment"
            return kind, f"S3 request failed: {exc}", type(exc).__name__
    if isinstance(exc, OSError):
        deployment = exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR)
        return (
            "deployment" if deployment else "retryable",
            f"cannot write file: {exc}",
            errno.errorcode.get(exc.errno or 0),
        )
    return "retryable", f"{type(exc).__name__}: {exc}", None


# -- destinations --------------------------------------------------------------------
class _Destination(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def check(self) -> None: ...

    def close(self) -> None: ...


class _LocalFiles:
    """A directory; each file is written under a hidden name, fsynced, then renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def check(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(self.root))
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "directory is not writable", str(self.root))

    def close(self) -> None:
        return None


class _S3Objects:
    """A bucket and key prefix, through one thread-safe boto3 client."""

    def __init__(self, settings: ParquetSettings) -> None:
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.client = settings.aws.client(
            "s3",
            s3={"addressing_style": settings.addressing_style},
            # Content-MD5 instead of the newer default CRC checksums: every S3-compatible
            # store understands it.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self.client.put_object(
            Bucket=self.bucket, Key=key, Body=data, ContentMD5=md5, ContentType=content_type
        )

    def check(self) -> None:
        """``HeadBucket``; a 403 there may only mean no ``s3:ListBucket`` grant, so a tiny
        probe object is written before calling it a failure."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 403:
                if status == 404:  # HEAD has no body: name the condition
                    exc.response.setdefault("Error", {})["Code"] = "NoSuchBucket"
                raise
            self.put(_join(self.prefix, "_orbitstream", "ping"), b"", "text/plain")

    def close(self) -> None:
        self.client.close()


# -- the sink ------------------------------------------------------------------------
class ParquetSink(SinkBase):
    """Archives every batch as one Parquet file (see the module docstring for the layout).

    :param settings: destination and format.
    :param name: sink name (metrics, logs, batch ids).
    :raises ConfigError: S3 is configured but boto3 is missing.
    """

    def __init__(self, settings: ParquetSettings, *, name: str = "parquet") -> None:
        self.settings = settings
        self.name = name
        self.max_concurrent_writes = settings.max_concurrent_writes
        self.configured_by = (
            f"{settings.setting}, AWS_ENDPOINT_URL, AWS_REGION and the AWS credentials"
            if settings.is_s3
            else settings.setting
        )
        self.prefix = settings.prefix if settings.is_s3 else ""
        self._destination: _Destination = (
            _S3Objects(settings) if settings.is_s3 else _LocalFiles(settings.local_root)
        )
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{name}-io")
        self._tables: dict[str, Table] = {}
        self._closed = False

    async def start(self, tables: Sequence[Table]) -> None:
        """Check the tables can be archived and the destination is reachable.

        :raises ConfigError: a table has no timestamp time column or is named
            ``dead_letters``.
        :raises SinkRetryableError: the bucket or directory cannot be used (yet).
        """
        for table in tables:
            if table.name == DEAD_LETTERS_DIR:
                raise ConfigError(
                    f"table name {DEAD_LETTERS_DIR!r} is reserved by the Parquet archive",
                    setting="tables",
                )
            if table.column(table.time_column).type is not ColType.TIMESTAMP:
                raise ConfigError(
                    f"table {table.name}: the Parquet archive partitions by the time column, "
                    f"which must be a timestamp ({table.time_column} is not)",
                    setting="tables",
                )
            self._tables[table.name] = table
        await self.ping()

    def key_for(self, batch: Batch) -> str:
        """The object key (or path under the directory) of a non-empty batch.

        :raises SinkRejectedError: the first row's time is not a usable timestamp.
        """
        time_ns = batch.rows_at([0])[0][batch.table.index(batch.table.time_column)]
        try:
            return object_key(self.prefix, batch.table.name, batch.batch_id, time_ns)  # type: ignore[arg-type]
        except ValueError as exc:
            raise SinkRejectedError(
                str(exc), sink=self.name, table=batch.table.name, batch_id=batch.batch_id
            ) from exc

    def write_sync(self, batch: Batch) -> str | None:
        """Encode and store one batch (blocks); returns its key, ``None`` when empty."""
        if not batch.size:
            return None
        started = time.perf_counter()
        key = self.key_for(batch)
        try:
            data = encode_parquet(batch, self.settings.compression, self.settings.level)
        except ValueError as exc:
            raise SinkRejectedError(
                str(exc), sink=self.name, table=batch.table.name, batch_id=batch.batch_id
            ) from exc
        self._put(key, data, PARQUET_CONTENT_TYPE, batch.table.name, batch.batch_id)
        logger.debug(
            "Parquet file written.",
            extra={
                "component": self.name,
                "component_kind": "sink",
                "table": batch.table.name,
                "batch_id": batch.batch_id,
                "key": key,
                "records": batch.size,
                "bytes": len(data),
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        return key

    def _put(self, key: str, data: bytes, content_type: str, table: str, batch_id: str) -> None:
        if self._closed:
            raise SinkRetryableError(
                "sink is closed", sink=self.name, table=table, batch_id=batch_id
            )
        try:
            self._destination.put(key, data, content_type)
        except Exception as exc:
            raise classify_s3_error(exc, sink=self.name, table=table, batch_id=batch_id) from exc

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def write(self, batch: Batch) -> None:
        """Write one batch as one file (replaces the file of an earlier write of its id).

        :raises SinkRejectedError: a row cannot be encoded.
        :raises SinkRetryableError: the store failed or refused the request.
        """
        if not batch.size:
            return
        await self._run(self.write_sync, batch)

    def write_dead_letters_sync(self, letters: Sequence[DeadLetter]) -> str | None:
        """Store refused rows as one JSON-lines object; returns its key."""
        if not letters:
            return None
        body = _dead_letter_lines(letters)
        key = dead_letter_key(self.prefix, letters, body)
        self._put(key, body, "application/x-ndjson", letters[0].table, letters[0].batch_id)
        return key

    async def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if letters:
            await self._run(self.write_dead_letters_sync, letters)

    def ping_sync(self) -> None:
        try:
            self._destination.check()
        except Exception as exc:
            raise classify_s3_error(exc, sink=self.name) from exc

    async def ping(self) -> None:
        """Check the bucket (or directory) exists and can be written.

        :raises SinkRetryableError: it cannot (``deployment=True`` for a missing bucket or
            denied access).
        """
        await self._run(self.ping_sync)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        self._destination.close()
