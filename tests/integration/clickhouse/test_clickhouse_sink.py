"""The ClickHouse server sink over real HTTP, against the chDB front (or a real server).

Covers: the same DDL as the embedded store; a 10k-row Arrow batch with blank lines in its
bytes lands whole; retried batches land once (table and rollup); 503, timeouts and
TOO_MANY_PARTS are retried by the pipeline with no loss and no duplicate; NULL in a
non-Nullable column is rejected and only the poison row is dead-lettered; a 4xx is never
retried forever; read-only queries; ping; settings from the environment; the password
never shows. The last tests check the front itself (compressed bodies, sessions, errors).
"""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import logging
import re
import time
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from orbitstream.core.batch import Batch, DeadLetter, Row
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.errors import ConfigError, SinkRejectedError, SinkRetryableError
from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.chdb import ChdbSink
from orbitstream.sinks.clickhouse import ClickHouseSettings, ClickHouseSink
from orbitstream.sinks.clickhouse.ddl import schema_statements
from orbitstream.sinks.clickhouse.transport import (
    ClickHouseRejectedError,
    ClickHouseRetryableError,
    classify,
)
from orbitstream.sinks.clickhouse_sql import ClickHouseDialect
from orbitstream.sinks.results import QueryError
from tests.conftest import http
from tests.integration.clickhouse.conftest import ClickHouseTarget
from tests.support.clickhouse_front import ClickHouseFront, split_insert

pytestmark = pytest.mark.integration

TELEMETRY, ALERTS = tables()
T0 = 1_800_000_000_000_000_000
FAST_RETRY = RetryPolicy(base_secs=0.01, max_secs=0.05)


def satellite_rows(n: int, *, prefix: str = "SAT", blank_lines: bool = False) -> list[Row]:
    ids = [f"{prefix}\n\n{i}\n\n" if blank_lines else f"{prefix}-{i}" for i in range(50)]
    reasons = ("battery_low\n\nx",) if blank_lines else ("battery_low",)
    return [
        (
            T0 + i * 1_000_003,
            ids[i % 50] if blank_lines else f"{prefix}-{i}",
            5.0 + (i % 90),
            1000.0 + i,
            -50.0 - (i % 40),
            i % 7 == 0,
            reasons if i % 7 == 0 else (),
            T0 + i,
        )
        for i in range(n)
    ]


def _as_row(values: tuple[object, ...]) -> Row:
    reasons = values[6]
    assert isinstance(reasons, list)
    return (*values[:6], tuple(reasons), values[7])


class ListDeadLetters:
    """The pipeline's last-resort dead-letter store, in memory."""

    def __init__(self) -> None:
        self.letters: list[DeadLetter] = []

    def write(self, letters: Sequence[DeadLetter]) -> None:
        self.letters.extend(letters)


def make_pipeline(
    sink: ClickHouseSink, store: ListDeadLetters, *, batch_size: int = 1000, metrics: Metrics
) -> Pipeline:
    return Pipeline(
        "satellites",
        [TELEMETRY, ALERTS],
        [sink],
        limits=PipelineLimits(batch_size=batch_size, linger_secs=0.05),
        retry=FAST_RETRY,
        metrics=metrics,
        dead_letters=store,
    )


async def count(sink: ClickHouseSink, table: str = "telemetry", where: str = "1") -> int:
    res = await sink.query(f"SELECT count() FROM {table} WHERE {where}")
    return int(str(res.rows[0][0]))


@pytest.fixture
async def sink(ch_settings: ClickHouseSettings) -> Any:
    s = ClickHouseSink(ch_settings)
    await s.start([TELEMETRY, ALERTS])
    yield s
    await s.close()


# -- schema --------------------------------------------------------------------------------
def _normalized_create(target: ClickHouseTarget, database: str, table: str) -> str:
    raw = target.command(f"SHOW CREATE TABLE `{database}`.`{table}` FORMAT TSVRaw").decode()
    return re.sub(rf"`?{re.escape(database)}`?\.", "<db>.", raw).strip()


async def test_ddl_renders_the_same_tables_as_the_embedded_store(
    ch_settings: ClickHouseSettings, clickhouse_target: ClickHouseTarget, tmp_path: Path
) -> None:
    sink = ClickHouseSink(ch_settings)
    try:
        await sink.start([TELEMETRY, ALERTS])
        await sink.start([TELEMETRY, ALERTS])  # idempotent
    finally:
        await sink.close()
    db = ch_settings.database
    listed = clickhouse_target.command(
        f"SELECT name, engine FROM system.tables WHERE database = '{db}' ORDER BY name FORMAT TSV"
    ).decode()
    assert [tuple(line.split("\t")) for line in listed.splitlines()] == [
        ("alerts", "MergeTree"),
        ("dead_letters", "MergeTree"),
        ("satellite_stats", "View"),
        ("satellite_stats_agg", "AggregatingMergeTree"),
        ("satellite_stats_mv", "MaterializedView"),
        ("telemetry", "MergeTree"),
    ]
    # The embedded store's own statements (unqualified names) run in another database.
    embedded_db = f"{db}_embedded"
    clickhouse_target.command(f"CREATE DATABASE `{embedded_db}`")
    embedded = ChdbSink(tmp_path / "never-opened").schema_statements([TELEMETRY, ALERTS])
    assert embedded == schema_statements(ClickHouseDialect(), [TELEMETRY, ALERTS], 365)
    for sql in embedded:
        clickhouse_target.command(sql, database=embedded_db)
    try:
        for table in (
            "telemetry",
            "alerts",
            "satellite_stats_agg",
            "satellite_stats",
            "dead_letters",
        ):
            ours = _normalized_create(clickhouse_target, db, table)
            theirs = _normalized_create(clickhouse_target, embedded_db, table)
            assert ours == theirs, table
        assert "non_replicated_deduplication_window" in _normalized_create(
            clickhouse_target, db, "telemetry"
        )
    finally:
        clickhouse_target.command(f"DROP DATABASE IF EXISTS `{embedded_db}`")


async def test_an_existing_database_is_used_without_the_grant_to_create_one(
    ch_settings: ClickHouseSettings,
    clickhouse_target: ClickHouseTarget,
    clickhouse_front: ClickHouseFront,
) -> None:
    denied = "Not enough privileges. To execute this query, it's necessary to have the grant CREATE DATABASE"
    clickhouse_front.fail_next_with_code(
        1, code=497, status=403, message=denied, match="CREATE DATABASE"
    )
    with pytest.raises(ClickHouseRetryableError) as info:  # missing, and may not be created
        await _start_and_close(ch_settings)
    assert (info.value.code, info.value.status_code) == (497, 403)
    clickhouse_target.command(f"CREATE DATABASE `{ch_settings.database}`")
    clickhouse_front.fail_next_with_code(
        1, code=497, status=403, message=denied, match="CREATE DATABASE"
    )
    await _start_and_close(ch_settings)  # exists: the tables are created in it
    listed = clickhouse_target.command(
        f"SELECT count() FROM system.tables WHERE database = '{ch_settings.database}'"
    )
    assert listed == b"6\n"


async def _start_and_close(settings: ClickHouseSettings) -> None:
    sink = ClickHouseSink(settings)
    try:
        await sink.start([TELEMETRY, ALERTS])
    finally:
        await sink.close()


# -- writes --------------------------------------------------------------------------------
async def test_10k_rows_whose_arrow_bytes_hold_blank_lines_land_complete(
    sink: ClickHouseSink, clickhouse_target: ClickHouseTarget
) -> None:
    rows = satellite_rows(10_000, blank_lines=True)
    await sink.write(Batch(TELEMETRY, rows, "blank-lines"))
    if clickhouse_target.front is not None:
        inserts = [r for r in clickhouse_target.front.requests if r.written_rows]
        assert inserts[-1].written_rows >= 10_000  # the server counts rollup rows too
        assert inserts[-1].data_has_blank_line  # the bytes on the wire held "\n\n"
    got = await sink.query(
        "SELECT toUnixTimestamp64Nano(time), satellite_id, battery_charge_percent, "
        "storage_usage_mb, signal_strength_dbm, is_anomaly, anomaly_reasons, "
        "toUnixTimestamp64Nano(received_at) FROM telemetry ORDER BY received_at"
    )
    assert len(got.rows) == 10_000
    assert [_as_row(r) for r in got.rows] == rows
    stats = await sink.query("SELECT sum(data_points), sum(anomaly_points) FROM satellite_stats")
    assert stats.rows == [(10_000, sum(1 for r in rows if r[5]))]


async def test_the_same_batch_twice_lands_once_and_the_rollup_counts_it_once(
    sink: ClickHouseSink,
) -> None:
    batch = Batch(TELEMETRY, satellite_rows(1_000), "satellites:telemetry:clickhouse:e:1")
    await sink.write(batch)
    await sink.write(batch)  # a retry after a lost answer: same id, same token
    await sink.write(Batch(TELEMETRY, batch.rows, "satellites:telemetry:clickhouse:e:2"))
    assert await count(sink) == 2_000  # another id is another batch
    stats = await sink.query("SELECT sum(data_points) FROM satellite_stats")
    assert stats.rows == [(2_000,)]


async def test_503_and_timeouts_are_retried_by_the_pipeline_without_loss_or_duplicates(
    ch_settings: ClickHouseSettings, clickhouse_front: ClickHouseFront
) -> None:
    sink = ClickHouseSink(dataclasses.replace(ch_settings, send_receive_timeout_secs=0.5))
    store = ListDeadLetters()
    metrics = Metrics()
    pipeline = make_pipeline(sink, store, metrics=metrics)
    await pipeline.start()
    clickhouse_front.fail_next(3, status=503, match=r"INSERT INTO \S+telemetry")
    # answered too late: the client gives up, the server still inserts, the retry is dropped
    clickhouse_front.delay_next(1, secs=1.2, match=r"INSERT INTO \S+telemetry")
    rows = satellite_rows(2_500)
    pipeline.submit({"telemetry": rows})
    await pipeline.close(timeout_secs=30)
    deadline = time.monotonic() + 5
    while not any(r.injected == "delay" for r in clickhouse_front.requests):
        assert time.monotonic() < deadline, "the delayed insert never finished"
        await asyncio.sleep(0.05)
    check = ClickHouseSink(ch_settings)
    try:
        assert await count(check) == 2_500
        res = await check.query("SELECT uniqExact(satellite_id) FROM telemetry")
        assert res.rows == [(2_500,)]
        assert (await check.query("SELECT sum(data_points) FROM satellite_stats")).rows == [
            (2_500,)
        ]
    finally:
        await check.close()
    injected = [r.injected for r in clickhouse_front.requests if r.injected]
    assert injected.count("status") == 3 and injected.count("delay") == 1
    assert metrics.get("sink_errors", ("satellites", "clickhouse", "retryable")) == 4
    assert store.letters == []


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (252, "retryable"),  # TOO_MANY_PARTS
        (202, "retryable"),  # TOO_MANY_SIMULTANEOUS_QUERIES
        (159, "retryable"),  # TIMEOUT_EXCEEDED (HTTP 408)
        (241, "retryable"),  # MEMORY_LIMIT_EXCEEDED
        (209, "retryable"),  # SOCKET_TIMEOUT (HTTP 503)
        (210, "retryable"),  # NETWORK_ERROR
        (62, "rejected"),  # SYNTAX_ERROR (HTTP 400)
        (60, "retryable"),  # UNKNOWN_TABLE (HTTP 404): a deployment problem, rows are held
        (16, "rejected"),  # NO_SUCH_COLUMN_IN_TABLE
        (349, "rejected"),  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        (117, "rejected"),  # INCORRECT_DATA
    ],
)
async def test_server_error_codes_are_classified(
    sink: ClickHouseSink, clickhouse_front: ClickHouseFront, code: int, kind: str
) -> None:
    status = clickhouse_front.status_for(code)
    clickhouse_front.fail_next_with_code(1, code=code, status=status)
    batch = Batch(TELEMETRY, satellite_rows(10), f"classify-{code}")
    expected = ClickHouseRetryableError if kind == "retryable" else ClickHouseRejectedError
    with pytest.raises(expected) as info:
        await sink.write(batch)
    err = info.value
    assert isinstance(err, ClickHouseRetryableError | ClickHouseRejectedError)
    assert (err.code, err.status_code) == (code, status)
    assert (err.sink, err.table, err.batch_id) == ("clickhouse", "telemetry", batch.batch_id)
    assert f"Code: {code}." in str(err)
    assert await count(sink) == 0  # the store was never touched


def test_classification_without_a_code() -> None:
    assert classify(None, 503) == "retryable"
    assert classify(None, 500) == "retryable"
    assert classify(None, 502) == "retryable"
    assert classify(None, 408) == "retryable"
    assert classify(None, 429) == "retryable"
    assert classify(None, 400) == "rejected"
    assert classify(None, 403) == "rejected"
    assert classify(None, 418) == "rejected"
    assert classify(None, None) == "retryable"
    assert classify(252, 400) == "retryable"  # the code wins


async def test_null_in_a_non_nullable_column_is_rejected_and_only_that_row_is_dead_lettered(
    sink: ClickHouseSink, ch_settings: ClickHouseSettings
) -> None:
    poison = (T0, "SAT-poison", None, 1.0, -50.0, False, (), T0)
    with pytest.raises(SinkRejectedError) as info:
        await sink.write(Batch(TELEMETRY, [poison], "poison"))
    assert isinstance(info.value, ClickHouseRejectedError)
    assert info.value.code in (117, 349)  # INCORRECT_DATA (Arrow) or NULL in ordinary column
    status = info.value.status_code
    assert isinstance(status, int) and 400 <= status < 600

    rows = satellite_rows(200)
    rows[137] = (*rows[137][:2], None, *rows[137][3:])
    store = ListDeadLetters()
    pipeline = make_pipeline(sink, store, batch_size=200, metrics=Metrics())
    await pipeline.start()
    pipeline.submit({"telemetry": rows})
    await pipeline.close(timeout_secs=30)
    check = ClickHouseSink(ch_settings)
    try:
        assert await count(check) == 199
        assert await count(check, where="satellite_id = 'SAT-137'") == 0
        letters = await check.query(
            "SELECT pipeline, table, batch_id, row, error FROM dead_letters"
        )
    finally:
        await check.close()
    assert store.letters == []  # stored in ClickHouse, not in the fallback file
    assert len(letters.rows) == 1
    pipeline_name, table, batch_id, row, error = letters.rows[0]
    assert (pipeline_name, table) == ("satellites", "telemetry")
    assert json.loads(str(row))["satellite_id"] == "SAT-137"
    assert "Code: " in str(error) and str(batch_id).startswith("satellites:telemetry:clickhouse:")


async def test_a_4xx_is_not_retried_forever(
    sink: ClickHouseSink, clickhouse_front: ClickHouseFront
) -> None:
    clickhouse_front.fail_next(1, status=418)
    with pytest.raises(ClickHouseRejectedError) as info:
        await sink.write(Batch(TELEMETRY, satellite_rows(4), "teapot"))
    assert info.value.status_code == 418 and info.value.code is None

    clickhouse_front.reset()
    clickhouse_front.fail_next(10_000, status=418, match="INSERT")  # every insert, forever
    store = ListDeadLetters()
    pipeline = make_pipeline(sink, store, metrics=Metrics())
    await pipeline.start()
    pipeline.submit({"telemetry": satellite_rows(4)})
    started = time.monotonic()
    await pipeline.close(timeout_secs=30)
    assert time.monotonic() - started < 10
    # 4 rows bisected: 1 + 2 + 4 inserts, then 4 dead-letter inserts (also refused)
    assert len([r for r in clickhouse_front.requests if r.injected]) == 7 + 4
    assert sorted(str(letter.row["satellite_id"]) for letter in store.letters) == [
        f"SAT-{i}" for i in range(4)
    ]


async def test_a_front_that_is_down_is_retryable_and_shows_in_ping(
    sink: ClickHouseSink, clickhouse_front: ClickHouseFront
) -> None:
    await sink.ping()
    clickhouse_front.down = True
    with pytest.raises(SinkRetryableError):
        await sink.ping()
    with pytest.raises(ClickHouseRetryableError) as info:
        await sink.write(Batch(TELEMETRY, satellite_rows(5), "down"))
    assert info.value.status_code is None
    clickhouse_front.down = False
    await sink.write(Batch(TELEMETRY, satellite_rows(5), "down"))
    await sink.ping()
    assert await count(sink) == 5


# -- reads ---------------------------------------------------------------------------------
async def test_query_returns_rows_and_refuses_writes(sink: ClickHouseSink) -> None:
    await sink.write(Batch(TELEMETRY, satellite_rows(30), "q"))
    res = await sink.query(
        "SELECT satellite_id, battery_charge_percent FROM telemetry "
        "WHERE satellite_id = {sid:String} AND signal_strength_dbm < {x:Float64};",
        {"sid": "SAT-3", "x": 0.0},
    )
    assert res.columns == ["satellite_id", "battery_charge_percent"]
    assert res.types == ["LowCardinality(String)", "Float64"]
    assert res.rows == [("SAT-3", 8.0)]
    assert res.dicts() == [{"satellite_id": "SAT-3", "battery_charge_percent": 8.0}]
    total = await sink.query("SELECT count() FROM telemetry")
    assert total.rows == [(30,)]  # 64-bit integers as numbers, like the embedded store
    assert sink.query_sync("SELECT 1 AS one").rows == [(1,)]
    for sql in (
        "INSERT INTO telemetry SELECT * FROM telemetry",
        "DROP TABLE telemetry",
        "ALTER TABLE telemetry DELETE WHERE 1",
    ):
        with pytest.raises(QueryError) as info:
            await sink.query(sql)
        assert info.value.code == 164, sql  # READONLY
    with pytest.raises(QueryError) as info:
        await sink.query("SELECT 1; DROP TABLE telemetry")
    assert info.value.code == 62
    with pytest.raises(QueryError) as info:
        await sink.query("SELECT * FROM no_such_table")
    assert info.value.code == 60
    assert await count(sink) == 30


async def test_users_queries_are_read_only_for_real(sink: ClickHouseSink) -> None:
    from tests.integration.test_query_readonly import CLICKHOUSE_REFUSED

    await sink.write(Batch(TELEMETRY, satellite_rows(5), "u"))
    for sql in CLICKHOUSE_REFUSED:
        with pytest.raises(QueryError):
            await sink.user_query(sql)
    assert not await asyncio.to_thread(Path("/tmp/orbitstream-q.csv").exists)
    res = await sink.user_query("SELECT count() AS n FROM telemetry WHERE satellite_id != ';'")
    assert res.rows == [(5,)]
    system = await sink.user_query("SELECT count() > 0 FROM system.tables")
    assert system.rows == [(True,)] or system.rows == [(1,)]
    with pytest.raises(QueryError) as info:
        await sink.user_query("SELECT 1", database="elsewhere")
    assert info.value.code == 81
    assert await count(sink) == 5


# -- settings and secrets -------------------------------------------------------------------
def test_settings_from_env() -> None:
    assert ClickHouseSettings.from_env({}) is None
    assert ClickHouseSettings.from_env({"CLICKHOUSE_USER": "u"}) is None

    s = ClickHouseSettings.from_env(
        {"CLICKHOUSE_URL": "clickhouse://ann:p%40ss@ch.example:9123/metrics"}
    )
    assert s is not None
    assert (s.url, s.user, s.password.get_secret_value(), s.database) == (
        "http://ch.example:9123",
        "ann",
        "p@ss",
        "metrics",
    )
    s = ClickHouseSettings.from_env({"CLICKHOUSE_URL": "clickhouses://ch.example"})
    assert s is not None and (s.url, s.port, s.interface) == (
        "https://ch.example:8443",
        8443,
        "https",
    )
    s = ClickHouseSettings.from_env(
        {
            "CLICKHOUSE_URL": "https://bob:old@ch.example:8443/a",
            "CLICKHOUSE_USER": "carol",
            "CLICKHOUSE_PASSWORD": "new",
            "CLICKHOUSE_DB": "b",
            "ORBITSTREAM_CLICKHOUSE_CLUSTER": "main",
            "ORBITSTREAM_CLICKHOUSE_REPLICATED": "true",
        }
    )
    assert s is not None
    assert (s.url, s.user, s.password.get_secret_value(), s.database) == (
        "https://ch.example:8443",
        "carol",
        "new",
        "b",
    )
    assert (s.cluster, s.replicated) == ("main", True)

    s = ClickHouseSettings.from_env({"CLICKHOUSE_HOST": "10.0.0.5", "CLICKHOUSE_DATABASE": "tel"})
    assert s is not None
    assert (s.url, s.user, s.database, s.replicated) == (
        "http://10.0.0.5:8123",
        "default",
        "tel",
        False,
    )
    s = ClickHouseSettings.from_env(
        {"CLICKHOUSE_HOST": "ch", "CLICKHOUSE_PORT": "18123", "CLICKHOUSE_PASSWORD": "x"}
    )
    assert s is not None and (s.url, s.password.get_secret_value()) == ("http://ch:18123", "x")

    bad = [
        ({"CLICKHOUSE_HOST": "ch", "CLICKHOUSE_PORT": "eighty"}, "CLICKHOUSE_PORT"),
        ({"CLICKHOUSE_HOST": "ch", "CLICKHOUSE_PORT": "70000"}, "CLICKHOUSE_PORT"),
        ({"CLICKHOUSE_HOST": "http://ch:8123"}, "CLICKHOUSE_HOST"),
        ({"CLICKHOUSE_URL": "tcp://ch:9000"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "http://ch:99999"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "http://ch:8123/a/b"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "http://"}, "CLICKHOUSE_URL"),
        (
            {"CLICKHOUSE_URL": "http://ch", "ORBITSTREAM_CLICKHOUSE_REPLICATED": "maybe"},
            "ORBITSTREAM_CLICKHOUSE_REPLICATED",
        ),
        (
            {"CLICKHOUSE_HOST": "ch", "CLICKHOUSE_DB": "a", "CLICKHOUSE_DATABASE": "b"},
            "CLICKHOUSE_DATABASE",
        ),
    ]
    for env, variable in bad:
        with pytest.raises(ConfigError) as info:
            ClickHouseSettings.from_env(env)
        assert info.value.setting == variable, env
        assert variable in str(info.value), env


async def test_the_password_never_shows_in_reprs_errors_or_logs(
    clickhouse_front: ClickHouseFront, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-P4ss-" + uuid.uuid4().hex[:8]
    clickhouse_front.users["orbit"] = secret
    caplog.set_level(logging.DEBUG)
    settings = ClickHouseSettings.from_env(
        {
            "CLICKHOUSE_URL": f"http://orbit:{secret}@127.0.0.1:{clickhouse_front.port}/secret_db",
        }
    )
    assert settings is not None and settings.password.get_secret_value() == secret
    sink = ClickHouseSink(settings)
    texts = [repr(settings), str(settings), repr(sink)]
    try:
        await sink.start([TELEMETRY])
        await sink.write(Batch(TELEMETRY, satellite_rows(10), "secret"))
        clickhouse_front.fail_next_with_code(1, code=252)
        with pytest.raises(SinkRetryableError) as retry:
            await sink.write(Batch(TELEMETRY, satellite_rows(10), "secret-2"))
        texts.append(repr(retry.value))
        with pytest.raises(QueryError) as query_error:
            await sink.query("SELECT * FROM nope")
        texts.append(str(query_error.value))
    finally:
        await sink.close()

    wrong = ClickHouseSink(dataclasses.replace(settings, password=SecretStr(secret + "-wrong")))
    try:
        with pytest.raises(ClickHouseRetryableError) as auth:
            await wrong.start([TELEMETRY])
        assert (auth.value.code, auth.value.status_code) == (516, 403)
        texts.append(str(auth.value))
    finally:
        await wrong.close()
    with pytest.raises(ConfigError) as config:
        ClickHouseSettings.from_env({"CLICKHOUSE_URL": f"http://orbit:{secret}@ch:99999"})
    texts.append(str(config.value))
    texts.extend(str(r.params) + r.query for r in clickhouse_front.requests)
    texts.append(caplog.text)
    texts.extend(repr(r.__dict__) for r in caplog.records)
    assert all(secret not in text for text in texts)
    assert "***" in str(config.value)


# -- the front itself --------------------------------------------------------------------------
def test_split_insert_follows_the_server_parser() -> None:
    text = "INSERT INTO t (a, `values`) SETTINGS x = 'FORMAT' FORMAT CSV \r\n1,2\n\n3,4"
    split = split_insert(text)
    assert split is not None
    assert (text[: split.head_end].rstrip(), split.format) == (
        "INSERT INTO t (a, `values`) SETTINGS x = 'FORMAT'",
        "CSV",
    )
    assert text[split.data_start :] == "1,2\n\n3,4"
    values = split_insert("insert into t values (1, 'a;b'), (2, '')")
    assert values is not None and values.format == "Values"
    assert split_insert("INSERT INTO t SELECT 1") is None
    assert split_insert("SELECT 1 FORMAT CSV") is None
    native = "INSERT INTO t FORMAT Native\n\t\x01rest"  # a tab right after the newline is data
    got = split_insert(native)
    assert got is not None and native[got.data_start :] == "\t\x01rest"


def test_front_speaks_the_http_interface(clickhouse_front: ClickHouseFront) -> None:
    import clickhouse_connect

    url = clickhouse_front.url
    status, headers, body = http("GET", url + "/ping")
    assert (status, body) == (200, b"Ok.\n")
    assert (
        http(
            "POST", url + "/", b"CREATE TABLE t (x UInt32, s String) ENGINE = MergeTree ORDER BY x"
        )[0]
        == 200
    )

    data = b'1,"a\n\nb"\n2,b\n3,c\n'  # a blank line inside the data
    bodies = [
        ("gzip", gzip.compress(data)),
        ("deflate", zlib.compress(data)),
        ("lz4", _lz4(data[:5]) + _lz4(data[5:])),  # two frames, as clickhouse-connect sends
        *([("zstd", _zstd(data))] if _has_zstd() else []),
    ]
    for encoding, encoded in bodies:
        status, _, body = http(
            "POST",
            url + "/?query=INSERT%20INTO%20t%20FORMAT%20CSV",
            encoded,
            {"Content-Encoding": encoding},
        )
        assert status == 200, (encoding, body)
        assert clickhouse_front.requests[-1].written_rows == 3, encoding
        assert clickhouse_front.requests[-1].data_has_blank_line
    status, headers, body = http(
        "POST", url + "/?default_format=TSV", b"SELECT count(), sum(x) FROM t"
    )
    assert (status, body) == (200, b"12\t24\n")
    assert headers["X-ClickHouse-Format"] == "TSV"
    assert {"read_rows", "written_rows", "elapsed_ns"} <= set(
        json.loads(headers["X-ClickHouse-Summary"])
    )
    assert headers["X-ClickHouse-Timezone"] and headers["X-ClickHouse-Query-Id"]
    assert headers["X-ClickHouse-Server-Display-Name"] == clickhouse_front.display_name

    status, headers, _ = http("POST", url + "/?query_id=q1", b"INSERT INTO t VALUES (7, 'x\n\ny')")
    assert status == 200 and "X-ClickHouse-Format" not in headers
    assert headers["X-ClickHouse-Query-Id"] == "q1"
    assert json.loads(headers["X-ClickHouse-Summary"])["written_rows"] == "1"

    status, headers, body = http("POST", url + "/", b"SELECT * FROM missing")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "60")
    assert re.match(
        rb"Code: 60\. DB::Exception: .*\(UNKNOWN_TABLE\) \(version [\d.]+\)\n$", body, re.S
    )
    status, headers, body = http("POST", url + "/", b"SELEC 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    status, _, body = http("POST", url + "/", b"SELECT 1; DROP TABLE t")
    assert status == 400 and b"Multi-statements are not allowed" in body
    status, _, _ = http("GET", url + "/?query=DROP%20TABLE%20t")  # GET is read-only
    assert status == 500 and clickhouse_front.requests[-1].code == 164
    status, headers, _ = http("POST", url + "/?user=nobody", b"SELECT 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (403, "516")
    status, headers, _ = http("POST", url + "/?no_such_setting=1", b"SELECT 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (404, "115")

    # sessions keep SET statements; URL settings apply to one query only
    session = "/?session_id=s1"
    assert http("POST", url + session, b"SET max_threads = 3")[0] == 200
    assert (
        http("POST", url + session + "&max_threads=5", b"SELECT getSetting('max_threads')")[2]
        == b"5\n"
    )
    assert http("POST", url + session, b"SELECT getSetting('max_threads')")[2] == b"3\n"
    assert http("POST", url + "/", b"SELECT getSetting('max_threads')")[2] != b"3\n"
    status, headers, _ = http("POST", url + "/?session_id=nope&session_check=1", b"SELECT 1")
    assert headers["X-ClickHouse-Exception-Code"] == "372"  # SESSION_NOT_FOUND

    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=clickhouse_front.port, compress="lz4", autogenerate_session_id=False
    )
    try:
        client.insert("t", [[100 + i, "n\n\n" * 3] for i in range(5_000)], column_names=["x", "s"])
        native = clickhouse_front.requests[-1]
        assert (native.content_encoding, native.written_rows) == ("lz4", 5_000)
        assert client.query(
            "SELECT count() FROM t WHERE s = {s:String}", parameters={"s": "n\n\n" * 3}
        ).result_rows == [(5_000,)]
        assert clickhouse_front.requests[-1].response_encoding == "lz4"
        assert client.command("SELECT 'a', 'b'") == ["a", "b"]
        assert client.query_arrow("SELECT DISTINCT x FROM t WHERE x < 3 ORDER BY x").column(
            "x"
        ).to_pylist() == [1, 2]
    finally:
        client.close()


def _lz4(data: bytes) -> bytes:
    import lz4.frame  # type: ignore[import-untyped]

    out: bytes = lz4.frame.compress(data)
    return out


def _has_zstd() -> bool:
    try:
        from backports import zstd  # noqa: F401
    except ImportError:
        return False
    return True


def _zstd(data: bytes) -> bytes:
    from backports import zstd

    return bytes(zstd.compress(data))
