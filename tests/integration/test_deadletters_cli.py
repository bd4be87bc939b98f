"""`orbitstream deadletters` lists the store's dead_letters table and the spill file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orbitstream.core.batch import DeadLetter
from orbitstream.pipelines.satellites import tables
from orbitstream.sinks.chdb import ChdbSink
from orbitstream.sinks.deadletter import FileDeadLetters

pytestmark = pytest.mark.integration


def test_deadletters_lists_table_and_file(tmp_path: Path) -> None:
    async def seed() -> None:
        store = ChdbSink(tmp_path / "chdb")
        await store.start(list(tables()))
        await store.write_dead_letters(
            [
                DeadLetter(
                    "satellites",
                    "telemetry",
                    "b-1",
                    {"satellite_id": "X", "n": 1},
                    "Code: 117 refused",
                ),
            ]
        )
        await store.close()

    asyncio.run(seed())
    FileDeadLetters(tmp_path / "dead_letters.jsonl").write(
        [
            DeadLetter(
                "satellites", "alerts", "b-2", {"entity_id": "Y"}, "sink unavailable at shutdown"
            ),
        ]
    )
    env = {**os.environ, "ORBITSTREAM_DATA_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "orbitstream", "deadletters", "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [(r["batch_id"], r["table_name"]) for r in rows] == [
        ("b-1", "telemetry"),
        ("b-2", "alerts"),
    ]
    assert "Code: 117" in rows[0]["error"] and json.loads(rows[0]["row"]) == {
        "satellite_id": "X",
        "n": 1,
    }
    assert "shutdown" in rows[1]["error"]


def test_no_dead_letters_is_an_empty_json_list(tmp_path: Path) -> None:
    async def seed() -> None:
        store = ChdbSink(tmp_path / "chdb")
        await store.start(list(tables()))
        await store.close()

    asyncio.run(seed())
    env = {**os.environ, "ORBITSTREAM_DATA_DIR": str(tmp_path)}
    run = [sys.executable, "-m", "orbitstream", "deadletters"]
    out = subprocess.run([*run, "-f", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []  # parseable, as `query -f json` prints
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "no dead letters" in out.stderr and not out.stdout


@pytest.mark.parametrize("command", [("deadletters",), ("query", "SELECT 1")])
def test_a_service_that_holds_the_store_but_does_not_answer_is_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    """While a service stops it keeps its data directory (its buffers are being written)
    but no longer answers on its port: the commands printed a traceback for as long."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening
        port = closed.getsockname()[1]
        (tmp_path / "service.json").write_text(
            json.dumps({"pid": os.getpid(), "port": port, "url": f"http://127.0.0.1:{port}"})
        )
        env = {**os.environ, "ORBITSTREAM_DATA_DIR": str(tmp_path)}
        out = subprocess.run(
            [sys.executable, "-m", "orbitstream", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "does not answer" in text and "try again" in text and "Traceback" not in text
