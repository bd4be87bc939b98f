"""A plug-in installed from examples/ appears in ``orbitstream pipelines`` and runs with
``orbitstream run``, with no edit to OrbitStream; two pipelines in one process share one
embedded store (each in its namespace), with per-pipeline metrics and health."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, http, post_json

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "orbitstream-weather"
GOOD = {"battery_charge_percent": 50.0, "storage_usage_mb": 1.0, "signal_strength_dbm": -40.0}


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example installed (pip, as a user would) into a directory of its own, put on
    PYTHONPATH for the processes below: the project's environment stays untouched."""
    target = tmp_path_factory.mktemp("plugin")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(EXAMPLE),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert any(target.glob("orbitstream_example_weather-*.dist-info"))
    return target


def _env(plugin: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(plugin),
        "ORBITSTREAM_DATA_DIR": str(data_dir),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "ORBITSTREAM_LOG_LEVEL": "warning",
        **extra,
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_plugin_is_listed(plugin_path: Path, tmp_path: Path) -> None:
    out = _cli(_env(plugin_path, tmp_path / "d"), "pipelines")
    assert out.returncode == 0, out.stderr
    assert "weather" in out.stdout and "weather-stations" in out.stdout
    assert "readings" in out.stdout and "satellites" in out.stdout
    bare = _cli({**_env(plugin_path, tmp_path / "d"), "PYTHONPATH": ""}, "pipelines")
    assert "weather" not in bare.stdout  # it is the installed package that adds it


class Running:
    def __init__(self, env: dict[str, str], *pipelines: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(env["ORBITSTREAM_DATA_DIR"]).parent / f"run-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orbitstream", "run", *pipelines],
                env={**env, "PORT": str(self.port)},
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if http("GET", self.url + "/health", timeout=2)[0] in (200, 503):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("did not start")

    def query(self, sql: str, pipeline: str) -> list[list[Any]]:
        status, doc = post_json(self.url + "/api/query", {"sql": sql, "pipeline": pipeline})
        assert status == 200, doc
        rows: list[list[Any]] = doc["rows"]
        return rows

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


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
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait()


def _wait(cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)


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
