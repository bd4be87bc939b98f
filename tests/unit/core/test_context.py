"""A pipeline's context: a source's dead letters counted per table; the dashboard's error
count takes each refused record once."""

from __future__ import annotations

from pathlib import Path

from orbitstream.core.batch import DeadLetter
from orbitstream.core.context import PipelineContext
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sinks.memory import MemorySink
from orbitstream.sources.http.server import Router

COLS = (Column("t", ColType.TIMESTAMP), Column("x", ColType.FLOAT64))
A = Table(name="a", columns=COLS, time_column="t", order_by=("t",))
B = Table(name="b", columns=COLS, time_column="t", order_by=("t",))


async def test_a_sources_dead_letters_are_counted_by_their_own_table(tmp_path: Path) -> None:
    sink = MemorySink()
    metrics = Metrics()
    dead = FileDeadLetters(tmp_path / "dl.jsonl")
    pipeline = Pipeline("p", [A, B], [sink], limits=PipelineLimits(), retry=RetryPolicy(), metrics=metrics,
                        dead_letters=dead)  # fmt: skip
    ctx = PipelineContext(
        pipeline,
        (A, B),
        metrics=metrics,
        store=sink,  # type: ignore[arg-type]
        router=Router(),
        dead_letters=dead,
    )
    letters = [DeadLetter("p", "b", "id", {"x": 1}, "bad")] + [
        DeadLetter("p", "a", "id", {"x": i}, "bad") for i in range(3)
    ]
    await ctx.dead_letter(letters)
    counted = metrics.counters["dead_letters"]
    assert counted == {("p", "source", "b"): 1, ("p", "source", "a"): 3}  # not 4 for "b"
    assert len(sink.dead_letters) == 4
