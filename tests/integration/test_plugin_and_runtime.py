"""A plug-in installed from examples/ appears in ``orbitstream pipelines`` and runs with
``orbitstream run``, with no edit to OrbitStream; two pipelines in one process share one
embedded store (each in its namespace), with per-pipeline metrics and health."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import http, post_json
from tests.support.runner import Running, plugin_env
from tests.support.runner import cli as _cli
from tests.support.runner import wait_until as _wait

pytestmark = pytest.mark.integration

GOOD = {"battery_charge_percent": 50.0, "storage_usage_mb": 1.0, "signal_strength_dbm": -40.0}
_env = plugin_env


def test_the_plugin_is_listed(plugin_path: Path, tmp_path: Path) -> None:
    out = _cli(_env(plugin_path, tmp_path / "d"), "pipelines")
    assert out.returncode == 0, out.stderr
    assert "weather" in out.stdout and "weather-stations" in out.stdout
    assert "readings" in out.stdout and "satellites" in out.stdout
    bare = _cli({**_env(plugin_path, tmp_path / "d"), "PYTHONPATH": ""}, "pipelines")
    assert "weather" not in bare.stdout  # it is the installed package that adds it


@pytest.fixture
def both(plugin_path: Path, tmp_path: Path) -> Iterator[Running]:
    env = _env(
        plugin_path,
        tmp_path / "data",
        ORBITSTREAM_WEATHER__STATIONS="4",
        ORBITSTREAM_WEATHER__INTERVAL_SECS="0.2",
        BATCH_TIMEOUT="50ms",
    )
    run = Running(env, "satellites", "weather")
    yield run
    run.kill()


def test_two_pipelines_share_one_store_in_their_namespaces(both: Running) -> None:
    status, doc = post_json(
        both.url + "/telemetry/batch", [{"satellite_id": f"S-{i}", **GOOD} for i in range(25)]
    )
    assert status == 202 and doc["accepted"] == 25
    _wait(lambda: both.query("SELECT count() FROM telemetry", "satellites") == [[25]])
    _wait(lambda: both.query("SELECT count() FROM readings", "weather")[0][0] >= 8)
    # qualified names reach the other namespace; the same table name does not collide
    assert both.query("SELECT count() > 0 FROM weather.readings", "satellites") == [[True]] or (
        both.query("SELECT count() > 0 FROM weather.readings", "satellites") == [[1]]
    )
    stations = both.query("SELECT uniqExact(station_id) FROM readings", "weather")
    assert stations == [[4]]
    status, _, raw = http("GET", both.url + "/health")
    health = json.loads(raw)
    assert status == 200 and set(health["pipelines"]) == {"satellites", "weather"}
    assert health["pipelines"]["weather"]["namespace"] == "weather"
    assert health["pipelines"]["weather"]["source"]["type"] == "weather-stations"
    assert int(health["pipelines"]["weather"]["source"]["ticks"]) >= 2
    metrics = http("GET", both.url + "/metrics")[2].decode()
    assert (
        'orbitstream_written_rows_total{pipeline="weather",sink="chdb",table="readings"}' in metrics
    )
    assert 'orbitstream_buffer_rows{pipeline="satellites",sink="chdb"}' in metrics
    assert 'orbitstream_buffer_rows{pipeline="weather",sink="chdb"}' in metrics
    pipelines = json.loads(http("GET", both.url + "/api/pipelines")[2])["pipelines"]
    by_name = {p["name"]: p for p in pipelines}
    assert by_name["weather"]["rows_total"] >= 8 and by_name["satellites"]["rows_total"] >= 25
    assert by_name["satellites"]["info"]["thresholds"][0]["threshold"] == 10.0
    assert both.stop() == 0  # both drained, the shared store closed once


def test_the_plugin_runs_alone_and_its_rows_are_queryable_after(
    plugin_path: Path, tmp_path: Path
) -> None:
    env = _env(
        plugin_path,
        tmp_path / "data",
        ORBITSTREAM_WEATHER__STATIONS="3",
        ORBITSTREAM_WEATHER__INTERVAL_SECS="0.1",
        BATCH_TIMEOUT="50ms",
    )
    run = Running(env, "weather")
    try:
        _wait(lambda: run.query("SELECT count() FROM readings", "weather")[0][0] >= 9)
        assert http("GET", run.url + "/api/dashboard/summary")[0] == 404  # no satellites here
    finally:
        assert run.stop() == 0
    out = _cli(
        env, "query", "--pipeline", "weather", "SELECT count() AS n FROM readings", "-f", "json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["n"] >= 9
    bad = _cli(env, "query", "--pipeline", "nosuch", "SELECT 1")
    assert bad.returncode == 2 and "unknown pipeline 'nosuch'" in bad.stderr


def test_a_query_in_a_namespace_that_does_not_exist_names_the_settings(tmp_path: Path) -> None:
    """Querying with other settings than the pipeline ran with (here CLICKHOUSE_DB) finds
    no database: the error says where the tables were looked for and which settings
    choose it; a misspelt table gets the store's error alone."""
    env = plugin_env(tmp_path / "no-plugins", tmp_path / "data")
    assert _cli(env, "migrate").returncode == 0
    out = _cli(
        {**env, "CLICKHOUSE_DB": "fleet"}, "query", "-p", "starlink", "SELECT 1 FROM telemetry"
    )
    text = " ".join(out.stdout.split() + out.stderr.split())
    assert out.returncode == 1, text
    assert "fleet" in text and "hint:" in text and "CLICKHOUSE_DB" in text, text
    assert "ORBITSTREAM_STARLINK__NAMESPACE" in text
    for sql in ("SELECT 1 FROM no_such_table", "SELECT 1 FROM nodb.telemetry"):
        out = _cli(env, "query", "-p", "starlink", sql)
        assert out.returncode == 1 and "hint:" not in out.stdout + out.stderr, sql
    out = _cli(env, "query", "-p", "starlink", "SELECT count() FROM telemetry")
    assert out.returncode == 0, out.stdout + out.stderr
