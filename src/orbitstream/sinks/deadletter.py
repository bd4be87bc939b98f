"""Dead-letter file: the last resort for rows no sink would take (JSON lines)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from orbitstream.core.batch import DeadLetter

__all__ = ["FileDeadLetters", "read_dead_letter_file"]


class FileDeadLetters:
    """Appends dead letters to ``path`` and fsyncs, so they survive a crash."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def write(self, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(
            json.dumps(
                {
                    "time_ns": letter.time_ns,
                    "pipeline": letter.pipeline,
                    "table": letter.table,
                    "batch_id": letter.batch_id,
                    "row": letter.row,
                    "error": letter.error,
                },
                default=str,
            )
            + "\n"
            for letter in letters
        )
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def read_dead_letter_file(path: Path) -> list[dict[str, object]]:
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
