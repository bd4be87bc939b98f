"""The Parquet archive against a real S3 endpoint (moto's server, reached through boto3 with
an endpoint URL): files readable by pyarrow and by ClickHouse's ``s3()`` table function
(chDB), replays overwrite the same key, one file per table per flush through the real
pipeline, maps and lists round-trip, and failures are classified."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from orbitstream.core.batch import Ack, Batch, Row
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.errors import SinkRetryableError
from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sinks.parquet import ParquetSettings, ParquetSink, safe_batch_id
from tests.conftest import _has_chdb, free_port, require
from tests.support.moto_server import CREDENTIALS, REGION, aws_client, aws_settings
from tests.support.rows import MIXED, T0, mixed_rows, telemetry_rows

pytestmark = pytest.mark.integration

TELEMETRY, ALERTS = tables()
KEY = CREDENTIALS["aws_access_key_id"]
SECRET = CREDENTIALS["aws_secret_access_key"]


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"archive-{uuid.uuid4().hex[:12]}"
    aws_client("s3", moto_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
async def sink(moto_endpoint: str, bucket: str) -> AsyncIterator[ParquetSink]:
    s = ParquetSink(
        ParquetSettings(url=f"s3://{bucket}/orbit/network", aws=aws_settings(moto_endpoint))
    )
    await s.start([TELEMETRY, ALERTS, MIXED])
    yield s
    await s.close()


@pytest.fixture
def chdb_conn(tmp_path: Path) -> Iterator[Any]:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    import chdb

    conn = chdb.connect(str(tmp_path / "chdb"))  # type: ignore[no-untyped-call]
    yield conn
    conn.close()


def keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    s3 = aws_client("s3", endpoint)
    found: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(obj["Key"] for obj in page.get("Contents", []))
    return sorted(found)


def read_object(endpoint: str, bucket: str, key: str) -> Any:
    body = aws_client("s3", endpoint).get_object(Bucket=bucket, Key=key)["Body"].read()
    return pq.read_table(io.BytesIO(body))


def ch_query(
    conn: Any, endpoint: str, bucket: str, path: str, select: str, tail: str = ""
) -> list[Any]:
    """ClickHouse's ``s3()`` table function over the objects at ``path`` (globs allowed)."""
    url = f"{endpoint}/{bucket}/{path}"
    sql = f"SELECT {select} FROM s3('{url}', '{KEY}', '{SECRET}', 'Parquet') {tail}"
    rows: list[Any] = json.loads(conn.query(sql, "JSONCompact").bytes())["data"]
    return rows


async def test_file_lands_at_its_hive_key_and_pyarrow_reads_it(
    sink: ParquetSink, moto_endpoint: str, bucket: str
) -> None:
    rows = telemetry_rows(500)
    await sink.write(Batch(TELEMETRY, rows, "network:telemetry:parquet:1-2:1"))
    expected = (
        "orbit/network/telemetry/date=2027-01-15/hour=08/"
        f"{safe_batch_id('network:telemetry:parquet:1-2:1')}.parquet"
    )
    assert keys(moto_endpoint, bucket) == [expected]
    table = read_object(moto_endpoint, bucket, expected)
    assert table.num_rows == 500
    assert table.column("satellite_id").to_pylist() == [r[1] for r in rows]
    assert table.column("time").cast("int64").to_pylist() == [r[0] for r in rows]
    # The same file through pyarrow's own S3 client, as a Hive-partitioned dataset.
    fs = pafs.S3FileSystem(
        access_key=KEY,
        secret_key=SECRET,
        endpoint_override=moto_endpoint,
        scheme="http",
        region=REGION,
    )
    ds = pads.dataset(
        f"{bucket}/orbit/network/telemetry", filesystem=fs, format="parquet", partitioning="hive"
    )
    got = ds.to_table()
    assert got.num_rows == 500
    assert set(got.column("date").to_pylist()) == {"2027-01-15"}
    assert set(got.column("hour").to_pylist()) == {8}


async def test_clickhouse_s3_function_reads_the_files(
    sink: ParquetSink, moto_endpoint: str, bucket: str, chdb_conn: Any
) -> None:
    await sink.write(Batch(TELEMETRY, telemetry_rows(300), "b1"))
    await sink.write(Batch(TELEMETRY, telemetry_rows(200, T0 + 3600 * 10**9), "b2"))
    rows = ch_query(
        chdb_conn,
        moto_endpoint,
        bucket,
        "orbit/network/telemetry/**.parquet",
        "hour, count(), sum(is_anomaly), min(time), any(toTypeName(time)), "
        "any(toTypeName(satellite_id))",
        "GROUP BY hour ORDER BY hour",
    )
    assert [[int(v) for v in r[:3]] for r in rows] == [[8, 300, 30], [9, 200, 20]]
    assert rows[0][3] == "2027-01-15 08:00:00.000000000"
    assert rows[0][4] == "DateTime64(9, 'UTC')" and rows[0][5] == "String"


async def test_maps_lists_and_wide_integers_round_trip(
    sink: ParquetSink, moto_endpoint: str, bucket: str, chdb_conn: Any
) -> None:
    rows = mixed_rows(40)
    await sink.write(Batch(MIXED, rows, "mixed-1"))
    (key,) = keys(moto_endpoint, bucket, "orbit/network/mixed/")
    back = read_object(moto_endpoint, bucket, key).to_pylist()
    for row, got in zip(rows, back, strict=True):
        assert (got["counter"], got["delta"], got["up"]) == row[2:5]
        assert tuple(got["tags"]) == row[5]
        assert dict(got["metrics"]) == row[6] and dict(got["info"]) == row[7]
        assert got["note"] == row[8]
    ch = ch_query(
        chdb_conn,
        moto_endpoint,
        bucket,
        key,
        "counter, delta, tags, metrics, info, note, toTypeName(metrics), toTypeName(counter)",
        "ORDER BY time",
    )
    for row, got in zip(rows, ch, strict=True):
        assert int(got[0]) == row[2] and int(got[1]) == row[3]
        assert tuple(got[2]) == row[5]
        assert got[3] == row[6] and got[4] == row[7] and got[5] == row[8]
    assert ch[0][6].startswith("Map(String, ") and ch[0][7] == "UInt64"


async def test_a_replayed_batch_overwrites_the_same_key(
    sink: ParquetSink, moto_endpoint: str, bucket: str
) -> None:
    await sink.write(Batch(TELEMETRY, telemetry_rows(100), "network:telemetry:p0:0-99"))
    first = keys(moto_endpoint, bucket)
    await sink.write(Batch(TELEMETRY, telemetry_rows(100), "network:telemetry:p0:0-99"))
    assert keys(moto_endpoint, bucket) == first
    # Rows differing on a replay would still replace, not add: the id decides the key.
    await sink.write(Batch(TELEMETRY, telemetry_rows(3), "network:telemetry:p0:0-99"))
    assert keys(moto_endpoint, bucket) == first
    assert read_object(moto_endpoint, bucket, first[0]).num_rows == 3


def _pipeline(sink: ParquetSink, tmp_path: Path, batch_size: int = 10_000) -> Pipeline:
    return Pipeline(
        "network",
        [TELEMETRY, ALERTS],
        [sink],
        limits=PipelineLimits(batch_size=batch_size, linger_secs=30.0),
        retry=RetryPolicy(base_secs=0.01, max_secs=0.1),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )


def _alert_rows(n: int) -> list[Row]:
    return [
        (T0 + i, "network", f"leaf{i}", "if_down", "firing", 0.0, 1.0, "down") for i in range(n)
    ]


async def test_one_file_per_table_per_flush_through_the_pipeline(
    moto_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    sink = ParquetSink(ParquetSettings(url=f"s3://{bucket}/orbit", aws=aws_settings(moto_endpoint)))
    p = _pipeline(sink, tmp_path)
    await p.start()
    for flush in range(2):
        ack = Ack()
        # Several submits per flush: still one file per table.
        for k in range(5):
            p.submit(
                {
                    "telemetry": telemetry_rows(100, T0 + (flush * 500 + k * 100) * 1000),
                    "alerts": _alert_rows(3),
                },
                ack if k == 4 else None,
            )
        p.flush()
        await asyncio.wait_for(ack.wait(), 30)
        telemetry = keys(moto_endpoint, bucket, "orbit/telemetry/")
        alerts = keys(moto_endpoint, bucket, "orbit/alerts/")
        assert (len(telemetry), len(alerts)) == (flush + 1, flush + 1)
    await p.close()
    assert sum(read_object(moto_endpoint, bucket, k).num_rows for k in telemetry) == 1000
    assert sum(read_object(moto_endpoint, bucket, k).num_rows for k in alerts) == 30


async def test_poison_row_goes_to_dead_letters_and_neighbours_land(
    moto_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    sink = ParquetSink(ParquetSettings(url=f"s3://{bucket}/orbit", aws=aws_settings(moto_endpoint)))
    p = _pipeline(sink, tmp_path, batch_size=64)
    await p.start()
    rows = telemetry_rows(64)
    rows[17] = (rows[17][0], None, *rows[17][2:])  # NULL in a required column
    ack = Ack()
    p.submit({"telemetry": rows}, ack)
    await asyncio.wait_for(ack.wait(), 30)
    await p.close()
    files = keys(moto_endpoint, bucket, "orbit/telemetry/")
    assert sum(read_object(moto_endpoint, bucket, k).num_rows for k in files) == 63
    (dead,) = keys(moto_endpoint, bucket, "orbit/dead_letters/")
    assert dead.startswith("orbit/dead_letters/date=") and dead.endswith(".jsonl")
    body = aws_client("s3", moto_endpoint).get_object(Bucket=bucket, Key=dead)["Body"].read()
    (line,) = body.decode().splitlines()
    doc = json.loads(line)
    assert doc["table"] == "telemetry" and doc["row"]["satellite_id"] is None
    assert doc["row"]["time"] == rows[17][0] and "satellite_id" in doc["error"]
    assert not (tmp_path / "dl.jsonl").exists()  # the sink kept them itself


async def test_missing_bucket_is_a_deployment_error(moto_endpoint: str) -> None:
    settings = ParquetSettings(
        url=f"s3://missing-{uuid.uuid4().hex[:10]}/orbit", aws=aws_settings(moto_endpoint)
    )
    sink = ParquetSink(settings)
    with pytest.raises(SinkRetryableError) as at_start:
        await sink.start([TELEMETRY])
    assert at_start.value.deployment and at_start.value.status_code == "NoSuchBucket"
    with pytest.raises(SinkRetryableError) as at_write:
        await sink.write(Batch(TELEMETRY, telemetry_rows(5), "b"))
    assert at_write.value.deployment and at_write.value.status_code == "NoSuchBucket"
    assert at_write.value.table == "telemetry" and at_write.value.batch_id == "b"
    with pytest.raises(SinkRetryableError) as at_ping:
        await sink.ping()
    assert at_ping.value.deployment
    await sink.close()


async def test_unreachable_endpoint_is_retryable_not_deployment() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sink = ParquetSink(
        ParquetSettings(
            url="s3://archive-bucket/orbit",
            aws=aws_settings(dead, max_attempts=1, connect_timeout_secs=1),
        )
    )
    with pytest.raises(SinkRetryableError) as info:
        await sink.write(Batch(TELEMETRY, telemetry_rows(5), "b"))
    assert not info.value.deployment
    assert info.value.status_code == "EndpointConnectionError"
    await sink.close()


async def test_ping_checks_the_bucket(sink: ParquetSink, moto_endpoint: str, bucket: str) -> None:
    await sink.ping()
    s3 = aws_client("s3", moto_endpoint)
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(SinkRetryableError) as info:
        await sink.ping()
    assert info.value.deployment
    s3.create_bucket(Bucket=bucket)  # the fixture's sink closes normally
