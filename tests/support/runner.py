"""The example plug-in installed as a user would, and ``orbitstream run`` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.conftest import free_port, http, post_json

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "orbitstream-weather"


def install_example(target: Path) -> Path:
    """pip-install the example into ``target`` (put it on PYTHONPATH to use it): the
    project's environment stays untouched."""
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


def plugin_env(plugin: Path, data_dir: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(plugin),
        "ORBITSTREAM_DATA_DIR": str(data_dir),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "ORBITSTREAM_LOG_LEVEL": "warning",
        **extra,
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orbitstream", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


class Running:
    """``orbitstream run PIPELINE…`` (or another ``command`` with its arguments) on a free
    port, until :meth:`stop`."""

    def __init__(self, env: dict[str, str], *pipelines: str, command: str = "run") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(env["ORBITSTREAM_DATA_DIR"]).parent / f"run-{self.port}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orbitstream", command, *pipelines],
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

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.1)
