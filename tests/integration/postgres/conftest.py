"""PostgreSQL fixtures: the machine's server (or ``ORBITSTREAM_TEST_POSTGRES_URL``), a
random database per test, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.postgres.settings import PostgresSettings, redact_dsn
from orbitstream.sinks.postgres.sink import PostgresSink
from tests.conftest import require

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("ORBITSTREAM_TEST_POSTGRES_URL") or DEFAULT_URL


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def require_server(url: str) -> None:
    """Skip locally, fail in CI, when the PostgreSQL server does not answer."""
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
        reachable = True
    except psycopg.Error:
        reachable = False
    require(reachable, f"PostgreSQL at {redact_dsn(url)} (set ORBITSTREAM_TEST_POSTGRES_URL)")


@pytest.fixture(scope="session")
def pg_server() -> str:
    url = server_url()
    require_server(url)
    return url


@pytest.fixture
def pg_dbname() -> str:
    return f"os_test_{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def fresh_database(dbname: str | None = None) -> Iterator[str]:
    """A new database on the test server (dropped afterwards); yields its DSN."""
    url = server_url()
    require_server(url)
    name = dbname or f"os_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_dsn(pg_server: str, pg_dbname: str) -> Iterator[str]:
    with fresh_database(pg_dbname) as dsn:
        yield dsn


@pytest.fixture
def pg_settings(pg_dsn: str, pg_dbname: str) -> PostgresSettings:
    return PostgresSettings(
        dsn=pg_dsn,
        max_connections=8,
        connect_timeout_secs=5,
        application_name=f"orbitstream-{pg_dbname}",
    )


@pytest.fixture
async def pg_sink(pg_settings: PostgresSettings) -> AsyncIterator[PostgresSink]:
    sink = PostgresSink(pg_settings)
    await sink.start(tables())
    try:
        yield sink
    finally:
        await sink.close()
