"""A throwaway PostgreSQL cluster from the machine's binaries (initdb + pg_ctl on a free
port), so outage tests can stop and restart a server without touching the shared one."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import free_port, require

__all__ = ["TempCluster", "pg_bin", "started_cluster"]


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class TempCluster:
    """``start()``, ``stop()`` (fast shutdown), ``start()`` again, ``destroy()``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="orbitstream-pg-"))
        self.datadir = self.base / "data"
        self.log = self.base / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
            os.chmod(self.base, 0o755)
        initdb = pg_bin("initdb")
        if initdb is None:
            raise RuntimeError("initdb not found")
        self._run([initdb, "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "--no-sync"])

    def _run(self, cmd: list[str]) -> None:
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl is not None
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.base} "
            "-c fsync=off -c synchronous_commit=off -c max_connections=100"
        )
        self._run(
            [
                pg_ctl,
                "-D",
                str(self.datadir),
                "-l",
                str(self.log),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )

    def stop(self, mode: str = "fast") -> None:
        pg_ctl = pg_bin("pg_ctl")
        assert pg_ctl is not None
        self._run([pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"])

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def started_cluster() -> Iterator[TempCluster]:
    """A started :class:`TempCluster`, destroyed afterwards (skipped locally, failed in
    CI, without the server binaries)."""
    require(
        pg_bin("initdb") is not None and pg_bin("pg_ctl") is not None,
        "PostgreSQL server binaries (initdb, pg_ctl)",
    )
    c = TempCluster()
    c.start()
    try:
        yield c
    finally:
        c.destroy()
