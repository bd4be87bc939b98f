"""Pipeline runner: size/linger batching, fan-out, acks, retries, dead letters, backpressure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orbitstream.core.batch import Ack, Row
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.errors import BackpressureError
from orbitstream.sinks.deadletter import FileDeadLetters, read_dead_letter_file
from orbitstream.sinks.memory import MemorySink

T = Table(
    "t",
    (Column("time", ColType.TIMESTAMP), Column("id", ColType.STRING), Column("v", ColType.FLOAT64)),
    time_column="time",
    order_by=("id", "time"),
)
U = Table("u", (Column("time", ColType.TIMESTAMP), Column("x", ColType.INT64)), "time", ("time",))


def rows(n: int, start: int = 0) -> list[Row]:
    return [(start + i, f"e{i % 3}", float(i)) for i in range(start, start + n)]


def make(
    tmp_path: Path,
    *sinks: MemorySink,
    batch_size: int = 10,
    linger: float = 0.05,
    max_rows: int = 1_000_000,
    deployment_retry: float = 300.0,
    max_backoff: float = 0.05,
) -> Pipeline:
    return Pipeline(
        "p",
        [T, U],
        list(sinks),
        limits=PipelineLimits(
            batch_size=batch_size,
            linger_secs=linger,
            max_buffer_rows=max_rows,
            deployment_retry_secs=deployment_retry,
        ),
        retry=RetryPolicy(base_secs=0.01, max_secs=max_backoff),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )


async def wait_for(cond: object, timeout: float = 5.0) -> None:
    assert callable(cond)
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_flushes_at_batch_size_before_linger(tmp_path: Path) -> None:
    sink = MemorySink()
    p = make(tmp_path, sink, batch_size=10, linger=60)
    await p.start()
    p.submit({"t": rows(25)})
    await wait_for(lambda: len(sink.rows("t")) == 20)
    await asyncio.sleep(0.05)
    assert len(sink.rows("t")) == 20  # the last 5 wait for linger or close
    await p.close()
    assert len(sink.rows("t")) == 25
    assert sink.closed


async def test_flushes_after_linger(tmp_path: Path) -> None:
    sink = MemorySink()
    p = make(tmp_path, sink, batch_size=1000, linger=0.05)
    await p.start()
    p.submit({"t": rows(3)})
    assert sink.rows("t") == []
    await wait_for(lambda: len(sink.rows("t")) == 3, timeout=1)
    await p.close()


async def test_ack_waits_for_every_sink_and_table(tmp_path: Path) -> None:
    fast, slow = MemorySink("fast"), MemorySink("slow")
    slow.write_delay_secs = 0.2
    p = make(tmp_path, fast, slow, batch_size=1, linger=10)
    await p.start()
    ack = Ack()
    p.submit({"t": rows(1), "u": [(1, 7)]}, ack)
    await wait_for(lambda: len(fast.rows("t")) == 1 and len(fast.rows("u")) == 1)
    assert not ack.done
    await asyncio.wait_for(ack.wait(), 2)
    assert slow.rows("u") == [(1, 7)]
    await p.close()


async def test_retryable_failures_retry_without_loss_or_duplicates(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.fail_next = 3
    p = make(tmp_path, sink, batch_size=5)
    await p.start()
    p.submit({"t": rows(20)})
    await wait_for(lambda: len(sink.rows("t")) == 20)
    assert sink.attempts == sink.writes + 3  # queued batches may be merged into one write
    assert sorted(int(str(r[0])) for r in sink.rows("t")) == list(range(20))
    assert p.metrics.get("sink_errors", ("memory", "retryable")) == 3
    await p.close()


async def test_down_sink_marks_unhealthy_then_recovers(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=5)
    await p.start()
    p.submit({"t": rows(12)})
    await wait_for(lambda: not p.healthy)
    assert p.health()["memory"]["status"] == "down"
    assert p.health()["memory"]["buffered_rows"] == 12
    sink.down = False
    await wait_for(lambda: len(sink.rows("t")) == 12 and p.healthy, timeout=5)
    assert p.health()["memory"]["buffered_rows"] == 0
    await p.close()


async def test_backpressure_is_all_or_nothing(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=5, max_rows=10)
    await p.start()
    p.submit({"t": rows(8)})
    with pytest.raises(BackpressureError) as info:
        p.submit({"t": rows(2, 100), "u": [(1, 1)]})
    assert info.value.retry_after_secs >= 1
    assert p.lanes[0].rows == 8
    p.submit({"t": rows(2, 200)})  # exactly at the limit is fine
    sink.down = False
    await p.close()
    assert len(sink.rows("t")) == 10
    assert sink.rows("u") == []


async def test_slow_sink_backs_up_only_its_own_lane(tmp_path: Path) -> None:
    fast, stuck = MemorySink("fast"), MemorySink("stuck")
    stuck.down = True
    p = make(tmp_path, fast, stuck, batch_size=2)
    await p.start()
    p.submit({"t": rows(6)})
    await wait_for(lambda: len(fast.rows("t")) == 6)
    assert p.lanes[0].rows == 0 and p.lanes[1].rows == 6
    stuck.down = False
    await p.close()
    assert len(stuck.rows("t")) == 6


async def test_rejected_rows_are_isolated_into_dead_letters(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.reject = lambda r: r[0] in (3, 17)
    p = make(tmp_path, sink, batch_size=20)
    await p.start()
    ack = Ack()
    p.submit({"t": rows(20)}, ack)
    await asyncio.wait_for(ack.wait(), 2)
    stored = sorted(int(str(r[0])) for r in sink.rows("t"))
    assert stored == [i for i in range(20) if i not in (3, 17)]
    assert sorted(d.row["time"] for d in sink.dead_letters) == [3, 17]  # type: ignore[type-var]
    assert all(d.error == "row refused" and d.table == "t" for d in sink.dead_letters)
    assert p.metrics.get("dead_letters", ("memory", "t")) == 2
    await p.close()


async def test_close_spills_to_dead_letter_file_when_sink_stays_down(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=100)
    await p.start()
    p.submit({"t": rows(7)})
    await p.close(timeout_secs=0.2)
    spilled = read_dead_letter_file(tmp_path / "dl.jsonl")
    assert sorted(int(str(d["row"]["time"])) for d in spilled) == list(range(7))  # type: ignore[index]
    assert "shutdown" in str(spilled[0]["error"])
    json.dumps(spilled)  # the file is plain JSON lines


async def test_submit_after_close_is_refused(tmp_path: Path) -> None:
    p = make(tmp_path, MemorySink())
    await p.start()
    await p.close()
    with pytest.raises(BackpressureError):
        p.submit({"t": rows(1)})


async def test_batch_ids_are_unique_and_stable_per_batch(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.fail_next = 1
    p = make(tmp_path, sink, batch_size=5)
    await p.start()
    p.submit({"t": rows(15)})
    await wait_for(lambda: len(sink.rows("t")) == 15)
    assert len(sink.batch_ids) == sink.writes >= 1
    assert all(b.startswith("p:t:memory:") for b in sink.batch_ids)
    await p.close()


def test_retry_policy_backoff_is_capped_and_jittered() -> None:
    import random

    policy = RetryPolicy(base_secs=0.1, max_secs=2.0)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 12)]
    assert all(0.05 <= d <= 2.0 for d in delays)
    assert delays[0] <= 0.1 and max(delays[-3:]) > 1.0
    assert len({round(d, 6) for d in delays}) == len(delays)
    assert RetryPolicy(max_attempts=3).exhausted(3)
    assert not RetryPolicy().exhausted(10**6)


async def test_batches_waiting_for_a_slow_sink_are_merged_into_one_write(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.write_delay_secs = 0.2
    p = make(tmp_path, sink, batch_size=10, linger=60)
    await p.start()
    acks = [Ack() for _ in range(6)]
    p.submit({"t": rows(10)}, acks[0])
    await asyncio.sleep(0.05)  # the writer is busy with the first batch
    for i, ack in enumerate(acks[1:], start=1):
        p.submit({"t": rows(10, i * 10)}, ack)  # five full batches queue behind it
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in acks)), 5)
    assert len(sink.rows("t")) == 60
    assert sink.writes == 2  # the first alone, then the five that queued behind it
    assert any("+" in b for b in sink.batch_ids)
    await p.close()


async def test_deployment_errors_retry_for_a_window_then_dead_letter_the_batch(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    sink.misconfigured = True
    p = make(tmp_path, sink, batch_size=50, linger=0.01, deployment_retry=0.3)
    await p.start()
    ack = Ack()
    p.submit({"t": rows(50)}, ack)
    await asyncio.sleep(0.15)
    assert not ack.done and not p.healthy  # held and retried while an operator may fix it
    await asyncio.wait_for(ack.wait(), 5)
    assert len(sink.dead_letters) == 50 and "gave up" in sink.dead_letters[0].error
    assert sink.attempts > 3  # retried, and never bisected row by row (that would be ~100 calls)
    assert sink.attempts < 60
    sink.misconfigured = False
    p.submit({"t": rows(5, 100)})
    await p.close()
    assert len(sink.rows("t")) == 5


async def test_transient_errors_are_not_bounded_by_the_deployment_window(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=10, linger=0.01, deployment_retry=0.05, max_backoff=0.02)
    await p.start()
    p.submit({"t": rows(10)})
    await asyncio.sleep(0.3)
    assert sink.dead_letters == [] and p.lanes[0].rows == 10
    sink.down = False
    await p.close()
    assert len(sink.rows("t")) == 10
