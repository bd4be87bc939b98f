"""The query endpoint and ``orbitstream query`` are read-only for real: no file, URL or
program access, no second statement, no settings changed, no session state left behind,
a time limit on every query, and only same-origin JSON requests from loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcess, http, post_json

pytestmark = pytest.mark.integration

GOOD = {
    "satellite_id": "Q-1",
    "battery_charge_percent": 50.0,
    "storage_usage_mb": 10.0,
    "signal_strength_dbm": -40.0,
}
# Each must be refused by the embedded store and ClickHouse (measured: readonly=1 alone
# lets the scalar file(), INTO OUTFILE and a second statement through).
CLICKHOUSE_REFUSED = [
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "SELECT file('/etc/hostname')",
    "INSERT INTO FUNCTION file('/tmp/orbitstream-q.csv', 'CSV') SELECT 1",
    "SELECT 1 INTO OUTFILE '/tmp/orbitstream-q.txt'",
    "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV', 'a Int32')",
    "SELECT * FROM executable('ls', 'TSV', 'x String')",
    "SELECT * FROM s3('http://127.0.0.1:1/b/k', 'CSV', 'a Int32')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM merge('system', '^one$')",
    "SELECT count() FROM telemetry; SELECT file('/etc/hostname')",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT * FROM telemetry FORMAT Native",
    "SET readonly = 0",
    "CREATE TABLE sneaky (a Int32) ENGINE = Memory",
    "DROP TABLE telemetry",
    "INSERT INTO telemetry SELECT * FROM telemetry",
    "SELECT dictGet('d', 'a', 1)",
    "SELECT sleepEachRow(3) FROM numbers(10)",
    "SELECT * FROM `other_db`.`t`",
]
CLICKHOUSE_ALLOWED = [
    ("SELECT count() FROM telemetry", None),
    ("SELECT count() FROM default.telemetry", None),
    ("SELECT name FROM system.tables WHERE name = 'telemetry'", [["telemetry"]]),
    ("SELECT sum(number) FROM numbers(10)", [[45]]),
    ("WITH t AS (SELECT 1 AS x) SELECT x FROM t UNION ALL SELECT 2 ORDER BY 1", [[1], [2]]),
    ("SELECT 'a;b', 'FORMAT x' -- a comment; DROP TABLE telemetry", [["a;b", "FORMAT x"]]),
]


def query(svc: ServiceProcess, sql: str) -> tuple[int, dict[str, Any]]:
    return post_json(svc.url + "/api/query", {"sql": sql})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    svc = ServiceProcess(
        tmp_path_factory.mktemp("q") / "data",
        {"BATCH_TIMEOUT": "50ms", "ORBITSTREAM_QUERY_TIMEOUT": "2s"},
    ).start()
    try:
        assert post_json(svc.url + "/telemetry", GOOD)[0] == 202
        assert svc.wait_count(1) == 1
        yield svc
    finally:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()


@pytest.mark.parametrize("sql", CLICKHOUSE_REFUSED)
def test_embedded_store_refuses(embedded: ServiceProcess, sql: str) -> None:
    for path in ("/tmp/orbitstream-q.csv", "/tmp/orbitstream-q.txt"):
        Path(path).unlink(missing_ok=True)
    status, doc = query(embedded, sql)
    assert status == 400, doc
    assert doc["error"] and "vm" not in json.dumps(doc.get("rows", []))
    assert not Path("/tmp/orbitstream-q.csv").exists()
    assert not Path("/tmp/orbitstream-q.txt").exists()


@pytest.mark.parametrize(("sql", "rows"), CLICKHOUSE_ALLOWED)
def test_embedded_store_answers_reads(
    embedded: ServiceProcess, sql: str, rows: list[list[Any]] | None
) -> None:
    status, doc = query(embedded, sql)
    assert status == 200, doc
    if rows is not None:
        assert doc["rows"] == rows
    assert embedded.count() == 1  # the store is unchanged


def test_every_query_has_a_time_limit_and_the_dashboard_stays_up(
    embedded: ServiceProcess,
) -> None:
    result: dict[str, Any] = {}

    def slow() -> None:
        result["answer"] = query(
            embedded, "SELECT sum(cityHash64(number)) FROM numbers(100000000000)"
        )

    worker = threading.Thread(target=slow)
    started = time.monotonic()
    worker.start()
    time.sleep(0.3)
    status, _, _ = http("GET", embedded.url + "/api/dashboard/summary", timeout=10)
    assert status == 200  # answered while the slow query runs
    worker.join(30)
    status, doc = result["answer"]
    assert status == 400 and doc["code"] == 159  # TIMEOUT_EXCEEDED, after 2 s
    assert time.monotonic() - started < 15


def test_only_same_origin_json_from_loopback(embedded: ServiceProcess) -> None:
    url = embedded.url + "/api/query"
    body = json.dumps({"sql": "SELECT 1"}).encode()
    # what a web page can send cross-origin without a preflight: refused, not a 500
    status, _, raw = http(
        "POST", url, body, {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    )
    assert status in (403, 415), raw
    status, _, raw = http(
        "POST", url, body, {"Content-Type": "application/json", "Origin": "http://evil.example"}
    )
    assert status == 403 and b"cross-origin" in raw
    status, _, raw = http("POST", url, body, {"Content-Type": "text/plain"})
    assert status == 415
    # DNS rebinding: a page's own host name pointed at 127.0.0.1
    status, _, raw = http(
        "POST", url, body, {"Content-Type": "application/json", "Host": "evil.example"}
    )
    assert status == 403 and b"ORBITSTREAM_ALLOWED_HOSTS" in raw
    same = f"http://127.0.0.1:{embedded.port}"
    status, _, raw = http("POST", url, body, {"Content-Type": "application/json", "Origin": same})
    assert status == 200, raw
    status, _, raw = http("POST", url, b'{"sql": 1}', {"Content-Type": "application/json"})
    assert status == 400 and json.loads(raw)["errors"][0]["field"] == "sql"
    status, _, raw = http("POST", url, b"[" * 100000, {"Content-Type": "application/json"})
    assert status == 400


def test_cli_direct_path_is_read_only_too(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "ORBITSTREAM_LOG_LEVEL": "warning",
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "orbitstream", "migrate"], env=env, capture_output=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr
    for sql in ("SELECT file('/etc/hostname')", "SELECT 1; SELECT 2"):
        out = subprocess.run(
            [sys.executable, "-m", "orbitstream", "query", sql],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1 and "query failed" in out.stderr, out.stderr
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "orbitstream",
            "query",
            "SELECT count() AS n FROM telemetry",
            "-f",
            "json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout) == [{"n": 0}], ok.stderr


# -- PostgreSQL ------------------------------------------------------------------------
POSTGRES_REFUSED = [
    ("SELECT pg_read_file('/etc/hostname')", "42501"),
    ("COPY (SELECT 1) TO PROGRAM 'touch /tmp/orbitstream-pwned'", None),
    ("SELECT * FROM schema_migrations", "42501"),
    ("SELECT * FROM orbitstream_batches", "42501"),
    ("DELETE FROM telemetry", None),
    ("SELECT 1; DELETE FROM telemetry", None),
    ("SELECT set_config('role', 'postgres', false), pg_read_file('/etc/hostname')", None),
    ("SELECT pg_sleep(10)", "57014"),
    ("CREATE TABLE sneaky (a int)", None),
]


@pytest.fixture(scope="module")
def on_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    from tests.integration.postgres.conftest import fresh_database

    with fresh_database() as dsn:
        svc = ServiceProcess(
            tmp_path_factory.mktemp("qpg") / "data",
            {"DATABASE_URL": dsn, "BATCH_TIMEOUT": "50ms", "ORBITSTREAM_QUERY_TIMEOUT": "1s"},
        ).start()
        try:
            assert post_json(svc.url + "/telemetry", GOOD)[0] == 202
            assert svc.wait_count(1) == 1
            yield svc
        finally:
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.kill()
                svc.proc.wait()


@pytest.mark.parametrize(("sql", "sqlstate"), POSTGRES_REFUSED)
def test_postgres_refuses(on_postgres: ServiceProcess, sql: str, sqlstate: str | None) -> None:
    status, doc = query(on_postgres, sql)
    assert status == 400, doc
    if sqlstate is not None:
        assert doc["code"] == int(sqlstate), doc
    assert not Path("/tmp/orbitstream-pwned").exists()
    assert on_postgres.count() >= 1


def test_postgres_session_state_never_survives_a_query(on_postgres: ServiceProcess) -> None:
    for sql in (
        "SET statement_timeout = 1",
        "SELECT set_config('statement_timeout', '1', false)",
        "SELECT pg_advisory_lock(42)",
    ):
        assert query(on_postgres, sql)[0] == 200
    # none of it reached the next query (a 1 ms statement timeout would fail this one)
    status, doc = query(on_postgres, "SELECT pg_sleep(0.05), current_setting('statement_timeout')")
    assert status == 200 and doc["rows"][0][1] == "1s", doc
    # writes still work (a leaked 1 ms statement_timeout on a writer would stall them)
    before = on_postgres.count()
    tag = f"Q-{uuid.uuid4().hex[:6]}"
    status, doc = post_json(
        on_postgres.url + "/telemetry/batch", [{**GOOD, "satellite_id": tag}] * 50
    )
    assert status == 202, doc
    assert on_postgres.wait_count(before + 50) == before + 50
    status, doc = query(on_postgres, "SELECT count(*) FROM telemetry")
    assert status == 200 and doc["rows"] == [[before + 50]]
    status, doc = query(
        on_postgres,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 42",
    )
    assert status == 200 and doc["rows"] == [[0]]  # released with its connection
    assert http("GET", on_postgres.url + "/health")[0] == 200


def test_postgres_reads_the_projects_tables(on_postgres: ServiceProcess) -> None:
    for sql in (
        "SELECT count(*) FROM telemetry",
        "SELECT count(*) FROM alerts",
        "SELECT count(*) FROM satellite_stats",
        "SELECT count(*) FROM dead_letters",
        "SELECT current_user",
    ):
        status, doc = query(on_postgres, sql)
        assert status == 200, (sql, doc)
    assert query(on_postgres, "SELECT current_user")[1]["rows"] == [["orbitstream_reader"]]


@pytest.mark.parametrize(
    ("pipeline", "hint"),
    [
        ("satellites", "`orbitstream serve` or `orbitstream demo`"),
        ("starlink", "`orbitstream run starlink` or `orbitstream demo --pipeline starlink`"),
        ("sessions", "`orbitstream run sessions`"),
    ],
)
def test_a_query_before_any_store_names_the_command_that_makes_one(
    tmp_path: Path, pipeline: str, hint: str
) -> None:
    env = {**os.environ, "ORBITSTREAM_DATA_DIR": str(tmp_path / "none")}
    out = subprocess.run(
        [sys.executable, "-m", "orbitstream", "query", "-p", pipeline, "SELECT 1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = " ".join(out.stdout.split() + out.stderr.split())  # the console wraps lines
    assert out.returncode == 2 and "ORBITSTREAM_DATA_DIR" in text and hint in text, text
    assert not (tmp_path / "none").exists()  # a query creates nothing
