"""The Parquet archive without a network: key layout, batch-id sanitizing, settings,
encoding (bytes out, read back with pyarrow), error classification, and the sink on a
local directory."""

from __future__ import annotations

import datetime as dt
import errno
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from botocore import exceptions as bce
from hypothesis import given
from hypothesis import strategies as st

from orbitstream.aws import AwsSettings
from orbitstream.core.batch import Batch, DeadLetter
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.errors import ConfigError, SinkRejectedError, SinkRetryableError
from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.parquet import (
    ParquetSettings,
    ParquetSink,
    classify_s3_error,
    dead_letter_key,
    encode_parquet,
    object_key,
    partition_path,
    safe_batch_id,
)
from tests.support.rows import MIXED, T0, mixed_rows, telemetry_rows

TELEMETRY, ALERTS = tables()
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# -- layout ------------------------------------------------------------------------
def test_partition_path_is_the_utc_date_and_hour() -> None:
    assert partition_path(T0) == "date=2027-01-15/hour=08"
    assert partition_path(T0 + 3_599_999_999_999) == "date=2027-01-15/hour=08"
    assert partition_path(T0 + 3_600_000_000_000) == "date=2027-01-15/hour=09"
    assert partition_path(0) == "date=1970-01-01/hour=00"
    assert partition_path(-1) == "date=1969-12-31/hour=23"


@given(st.integers(min_value=-(2**62), max_value=2**63 - 1))
def test_partition_path_matches_datetime(ns: int) -> None:
    when = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    assert partition_path(ns) == f"date={when:%Y-%m-%d}/hour={when:%H}"


@pytest.mark.parametrize("bad", [True, 1.5, "1800000000000000000", None])
def test_partition_path_refuses_what_is_not_epoch_ns(bad: Any) -> None:
    with pytest.raises(ValueError, match="epoch nanoseconds"):
        partition_path(bad)


def test_partition_path_refuses_dates_past_year_9999() -> None:
    with pytest.raises(ValueError, match="out of range"):
        partition_path(300_000_000_000 * 1_000_000_000)


def test_object_key_layout_with_and_without_prefix() -> None:
    assert (
        object_key("archive/network", "interfaces", "b-1", T0)
        == "archive/network/interfaces/date=2027-01-15/hour=08/b-1.parquet"
    )
    assert object_key("", "nodes", "b-1", T0) == "nodes/date=2027-01-15/hour=08/b-1.parquet"


def test_plain_batch_ids_are_kept() -> None:
    for plain in ("b-1", "network.interfaces.0-17", "A_b.c-9"):
        assert safe_batch_id(plain) == plain


def test_unsafe_batch_ids_keep_a_readable_part_and_gain_a_digest() -> None:
    name = safe_batch_id("satellites:telemetry:parquet:123-1700000000:7")
    assert re.fullmatch(r"satellites-telemetry-parquet-123-1700000000-7-[0-9a-f]{16}", name)
    # Ids that would sanitize alike stay apart.
    names = {safe_batch_id(i) for i in ("a:b", "a/b", "a b", "a*b", "a-b", "a+b", "a_b")}
    assert len(names) == 7
    assert safe_batch_id("a:b") == safe_batch_id("a:b")  # deterministic: replays overwrite


def test_sanitized_names_never_hide_from_dataset_readers_nor_escape_their_folder() -> None:
    for raw in (".hidden", "_meta", "../../etc/passwd", "/abs", "", "???", "x" * 5000, "é:ü"):
        name = safe_batch_id(raw)
        assert SAFE_NAME.match(name), (raw, name)
        assert len(name) <= 160 + 17


@given(st.text(max_size=300))
def test_any_id_becomes_a_safe_bounded_name(raw: str) -> None:
    name = safe_batch_id(raw)
    assert SAFE_NAME.match(name)
    assert len(name) <= 177


@given(st.text(max_size=40), st.text(max_size=40))
def test_different_ids_never_share_a_name(a: str, b: str) -> None:
    if a != b:
        assert safe_batch_id(a) != safe_batch_id(b)


def test_dead_letter_key_is_under_dead_letters_and_content_addressed() -> None:
    letters = [DeadLetter("p", "telemetry", "x:1", {"a": 1}, "bad", time_ns=T0)]
    k1 = dead_letter_key("arch", letters, b"one")
    assert k1.startswith("arch/dead_letters/date=2027-01-15/hour=08/x-1-")
    assert k1.endswith(".jsonl")
    assert k1 == dead_letter_key("arch", letters, b"one")
    assert k1 != dead_letter_key("arch", letters, b"two")


# -- settings ----------------------------------------------------------------------
def test_settings_from_bucket_and_prefix() -> None:
    s = ParquetSettings.from_env(
        {
            "AWS_S3_BUCKET": "telemetry-archive",
            "ORBITSTREAM_PARQUET_PREFIX": "/network/",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "AWS_REGION": "eu-west-1",
            "AWS_ACCESS_KEY_ID": "AKIA",
            "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        }
    )
    assert s is not None and s.is_s3
    assert (s.bucket, s.prefix) == ("telemetry-archive", "network")
    assert s.aws.endpoint_url == "http://127.0.0.1:9000"
    assert s.aws.region == "eu-west-1"
    assert (s.compression, s.level) == ("zstd", 3)
    assert "s3cr3t" not in repr(s)


def test_settings_from_url() -> None:
    s = ParquetSettings.from_env({"ORBITSTREAM_PARQUET_URL": "s3://bkt/a/b"})
    assert s is not None and (s.bucket, s.prefix) == ("bkt", "a/b")
    local = ParquetSettings.from_env({"ORBITSTREAM_PARQUET_URL": "file:///var/lib/arch"})
    assert local is not None and not local.is_s3 and local.local_root == Path("/var/lib/arch")
    plain = ParquetSettings.from_env(
        {"ORBITSTREAM_PARQUET_URL": "/tmp/a", "ORBITSTREAM_PARQUET_COMPRESSION": "SNAPPY"}
    )
    assert plain is not None and plain.compression == "snappy" and plain.level is None
    assert ParquetSettings.from_env({}) is None


def test_per_service_endpoint_wins() -> None:
    s = ParquetSettings.from_env(
        {
            "AWS_S3_BUCKET": "bkt",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
            "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:2",
        }
    )
    assert s is not None and s.aws.endpoint_url == "http://127.0.0.1:2"


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"AWS_S3_BUCKET": "a"}, "AWS_S3_BUCKET"),
        ({"AWS_S3_BUCKET": "bkt/prefix"}, "AWS_S3_BUCKET"),
        (
            {"AWS_S3_BUCKET": "bkt", "ORBITSTREAM_PARQUET_PREFIX": "a//b"},
            "ORBITSTREAM_PARQUET_PREFIX",
        ),
        (
            {"AWS_S3_BUCKET": "bkt", "ORBITSTREAM_PARQUET_PREFIX": "a/../b"},
            "ORBITSTREAM_PARQUET_PREFIX",
        ),
        (
            {"AWS_S3_BUCKET": "bkt", "ORBITSTREAM_PARQUET_PREFIX": "a*"},
            "ORBITSTREAM_PARQUET_PREFIX",
        ),
        ({"ORBITSTREAM_PARQUET_URL": "s3://one", "AWS_S3_BUCKET": "two"}, "AWS_S3_BUCKET"),
        (
            {"ORBITSTREAM_PARQUET_URL": "/x", "ORBITSTREAM_PARQUET_PREFIX": "p"},
            "ORBITSTREAM_PARQUET_PREFIX",
        ),
        (
            {"AWS_S3_BUCKET": "bkt", "ORBITSTREAM_PARQUET_COMPRESSION": "gzip"},
            "ORBITSTREAM_PARQUET_COMPRESSION",
        ),
        (
            {"AWS_S3_BUCKET": "bkt", "ORBITSTREAM_S3_ADDRESSING_STYLE": "dns"},
            "ORBITSTREAM_S3_ADDRESSING_STYLE",
        ),
        ({"AWS_S3_BUCKET": "bkt", "AWS_ENDPOINT_URL": "localhost:9000"}, "AWS_ENDPOINT_URL"),
        (
            {"AWS_S3_BUCKET": "bkt", "AWS_ENDPOINT_URL": "http://u:p@localhost:9000"},
            "AWS_ENDPOINT_URL",
        ),
        ({"AWS_S3_BUCKET": "bkt", "AWS_ACCESS_KEY_ID": "AKIA"}, "AWS_SECRET_ACCESS_KEY"),
        ({"AWS_S3_BUCKET": "bkt", "AWS_SECRET_ACCESS_KEY": "x"}, "AWS_ACCESS_KEY_ID"),
        ({"AWS_S3_BUCKET": "bkt", "AWS_REGION": "US East"}, "AWS_REGION"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], setting: str) -> None:
    with pytest.raises(ConfigError) as info:
        ParquetSettings.from_env(env)
    assert info.value.setting == setting


def test_compression_level_only_for_zstd() -> None:
    with pytest.raises(ConfigError):
        ParquetSettings(url="/tmp/x", compression="snappy", compression_level=3)
    assert ParquetSettings(url="/tmp/x", compression_level=9).level == 9


def test_aws_secret_never_shows() -> None:
    aws = AwsSettings.from_env({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "hunter2"})
    assert "hunter2" not in repr(aws) and "hunter2" not in str(aws)
    assert aws.secret_access_key is not None
    assert aws.secret_access_key.get_secret_value() == "hunter2"


# -- encoding ----------------------------------------------------------------------
def _read(data: bytes) -> Any:
    return pq.read_table(pa.BufferReader(data))


def test_encoded_file_reads_back_with_every_type() -> None:
    rows = mixed_rows(20)
    data = encode_parquet(Batch(MIXED, rows, "b-1"))
    assert data[:4] == b"PAR1" and data[-4:] == b"PAR1"
    table = _read(data)
    assert table.column_names == list(MIXED.column_names)
    back = table.to_pylist()
    for row, got in zip(rows, back, strict=True):
        assert got["time"] == pa.scalar(row[0], pa.timestamp("ns", tz="UTC")).as_py()
        assert got["counter"] == row[2] and got["delta"] == row[3] and got["up"] == row[4]
        assert tuple(got["tags"]) == row[5]
        assert dict(got["metrics"]) == row[6]
        assert dict(got["info"]) == row[7]
        assert got["note"] == row[8]
    assert table.schema.metadata[b"orbitstream.batch_id"] == b"b-1"
    assert table.schema.field("counter").type == pa.uint64()
    assert not table.schema.field("entity").nullable and table.schema.field("note").nullable


@pytest.mark.parametrize(("codec", "name"), [("zstd", "ZSTD"), ("snappy", "SNAPPY")])
def test_codec_is_the_one_asked_for(codec: Any, name: str) -> None:
    data = encode_parquet(Batch(TELEMETRY, telemetry_rows(100), "b"), codec)
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    assert meta.num_row_groups == 1 and meta.num_rows == 100
    assert meta.row_group(0).column(1).compression == name


def test_null_in_a_required_column_is_an_encoding_error() -> None:
    rows = telemetry_rows(5)
    rows[3] = (rows[3][0], None, *rows[3][2:])
    with pytest.raises(ValueError, match="satellite_id"):
        encode_parquet(Batch(TELEMETRY, rows, "b"))


@pytest.mark.parametrize(
    ("index", "value"), [(2, "not a number"), (6, 42), (0, "yesterday"), (5, {"a": 1})]
)
def test_wrong_value_types_are_encoding_errors(index: int, value: object) -> None:
    rows = telemetry_rows(3)
    bad = list(rows[1])
    bad[index] = value
    rows[1] = tuple(bad)
    with pytest.raises(ValueError, match="cannot encode"):
        encode_parquet(Batch(TELEMETRY, rows, "b"))


# -- error classification ----------------------------------------------------------
def _client_error(code: str, status: int) -> bce.ClientError:
    """The exception botocore raises for an error response (as parsed from S3's XML)."""
    response: Any = {
        "Error": {"Code": code, "Message": code},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return bce.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (_client_error("NoSuchBucket", 404), "deployment"),
        (_client_error("AccessDenied", 403), "deployment"),
        (_client_error("InvalidAccessKeyId", 403), "deployment"),
        (_client_error("PermanentRedirect", 301), "deployment"),
        (_client_error("InvalidArgument", 400), "deployment"),
        (_client_error("SlowDown", 503), "retryable"),
        (_client_error("InternalError", 500), "retryable"),
        (_client_error("RequestTimeout", 400), "retryable"),
        (_client_error("", 502), "retryable"),
        (_client_error("TooManyRequests", 429), "retryable"),
        (_client_error("EntityTooLarge", 400), "rejected"),
        (bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "retryable"),
        (bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), "retryable"),
        (bce.ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), "retryable"),
        (bce.NoCredentialsError(), "deployment"),
        (bce.CredentialRetrievalError(provider="container-role", error_msg="timeout"), "retryable"),
        (bce.NoRegionError(), "deployment"),
        (bce.SSLError(endpoint_url="https://x", error=OSError("bad cert")), "deployment"),
        (PermissionError(errno.EACCES, "denied"), "deployment"),
        (OSError(errno.EROFS, "read-only"), "deployment"),
        (OSError(errno.ENOSPC, "full"), "retryable"),
        (RuntimeError("boom"), "retryable"),
    ],
)
def test_errors_are_classified(exc: BaseException, kind: str) -> None:
    err = classify_s3_error(exc, sink="parquet", table="t", batch_id="b")
    assert (err.sink, err.table, err.batch_id) == ("parquet", "t", "b")
    if kind == "rejected":
        assert isinstance(err, SinkRejectedError)
    else:
        assert isinstance(err, SinkRetryableError)
        assert err.deployment is (kind == "deployment")


# -- the sink on a local directory -------------------------------------------------
def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_local_write_replay_and_layout(tmp_path: Path) -> None:
    root = tmp_path / "archive"

    sink = ParquetSink(ParquetSettings(url=str(root)))
    await sink.start([TELEMETRY, ALERTS])
    await sink.write(Batch(TELEMETRY, [], "empty"))
    assert _files(root) == []
    await sink.write(Batch(TELEMETRY, telemetry_rows(50), "sat:telemetry:1"))
    first = _files(root)
    assert first == [
        f"telemetry/date=2027-01-15/hour=08/{safe_batch_id('sat:telemetry:1')}.parquet"
    ]
    # A replay with the same id (here with other rows) replaces the file, never adds one.
    await sink.write(Batch(TELEMETRY, telemetry_rows(7), "sat:telemetry:1"))
    assert _files(root) == first
    assert _read((root / first[0]).read_bytes()).num_rows == 7
    await sink.write(Batch(TELEMETRY, telemetry_rows(3, T0 + 86_400 * 10**9), "sat:t:2"))
    await sink.close()

    dataset = pads.dataset(root / "telemetry", format="parquet", partitioning="hive")
    table = dataset.to_table()
    assert table.num_rows == 10
    assert sorted(set(table.column("date").to_pylist())) == ["2027-01-15", "2027-01-16"]
    assert set(table.column("hour").to_pylist()) == {8}


async def test_local_rejects_bad_rows_and_keeps_dead_letters(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    rows = telemetry_rows(3)
    rows[1] = (rows[1][0], None, *rows[1][2:])
    letters = [
        DeadLetter("sat", "telemetry", "sat:telemetry:1.1", r, "NULL", time_ns=T0)
        for r in TELEMETRY.row_dicts(rows[1:2])
    ]

    sink = ParquetSink(ParquetSettings(url=f"file://{root}"))
    await sink.start([TELEMETRY])
    with pytest.raises(SinkRejectedError) as info:
        await sink.write(Batch(TELEMETRY, rows, "sat:telemetry:1"))
    assert info.value.table == "telemetry" and info.value.batch_id == "sat:telemetry:1"
    await sink.write_dead_letters(letters)
    await sink.write_dead_letters([])
    await sink.close()

    files = _files(root)
    assert len(files) == 1 and files[0].startswith("dead_letters/date=2027-01-15/hour=08/")
    lines = (root / files[0]).read_text().splitlines()
    doc = json.loads(lines[0])
    assert len(lines) == 1
    assert doc["batch_id"] == "sat:telemetry:1.1" and doc["row"]["satellite_id"] is None
    assert doc["row"]["anomaly_reasons"] == [] and doc["error"] == "NULL"


async def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    root = tmp_path / "archive"

    sink = ParquetSink(ParquetSettings(url=str(root)))
    await sink.start([TELEMETRY])
    for k in range(5):
        await sink.write(Batch(TELEMETRY, telemetry_rows(10), f"b{k % 2}"))
    await sink.close()

    names = [p.name for p in root.rglob("*") if p.is_file()]
    assert sorted(names) == ["b0.parquet", "b1.parquet"]


async def test_a_file_where_the_directory_should_be_is_a_deployment_error(tmp_path: Path) -> None:
    blocker = tmp_path / "archive"
    blocker.write_text("not a directory")

    sink = ParquetSink(ParquetSettings(url=str(blocker)))
    with pytest.raises(SinkRetryableError) as info:
        await sink.start([TELEMETRY])
    assert info.value.deployment
    await sink.close()


async def test_start_refuses_tables_it_cannot_archive(tmp_path: Path) -> None:
    reserved = Table(
        "dead_letters", (Column("time", ColType.TIMESTAMP),), time_column="time", order_by=()
    )
    untimed = Table("counts", (Column("n", ColType.INT64),), time_column="n", order_by=())

    sink = ParquetSink(ParquetSettings(url=str(tmp_path / "a")))
    for table in (reserved, untimed):
        with pytest.raises(ConfigError):
            await sink.start([table])
    await sink.close()


async def test_a_bad_first_timestamp_is_rejected(tmp_path: Path) -> None:
    sink = ParquetSink(ParquetSettings(url=str(tmp_path / "a")))
    await sink.start([TELEMETRY])
    rows = telemetry_rows(2)
    rows[0] = (None, *rows[0][1:])
    with pytest.raises(SinkRejectedError, match="epoch nanoseconds"):
        await sink.write(Batch(TELEMETRY, rows, "b"))
    await sink.close()
