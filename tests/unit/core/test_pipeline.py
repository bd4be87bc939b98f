"""Pipeline runner: size/linger batching, fan-out, acks, retries, dead letters, backpressure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orbitstream.core.batch import Ack, Batch, Row
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline, PipelineLimits
from orbitstream.core.protocols import Sink
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.tables import ColType, Column, Table
from orbitstream.errors import BackpressureError
from orbitstream.sinks.deadletter import FileDeadLetters, read_dead_letter_file
from orbitstream.sinks.memory import MemorySink
from orbitstream.sinks.select import SelectedTables

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
    *sinks: Sink,
    batch_size: int = 10,
    linger: float = 0.05,
    max_rows: int = 1_000_000,
    deployment_retry: float = 300.0,
    max_backoff: float = 0.05,
    max_merge_rows: int = 50_000,
    admit_max_wait: float = 2.0,
    health_check: float = 5.0,
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
            max_merge_rows=max_merge_rows,
            health_check_secs=health_check,
            admit_max_wait_secs=admit_max_wait,
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


async def test_a_sink_of_some_tables_is_handed_only_their_rows(tmp_path: Path) -> None:
    store, republish = MemorySink("store"), MemorySink("republish")
    republish.down = True  # what it is handed stays in its buffer
    p = make(tmp_path, store, SelectedTables(republish, ["u"]), batch_size=5, max_rows=10)
    await p.start()
    ack = Ack()
    p.submit({"t": rows(8), "u": [(1, 1)]}, ack)
    p.submit_one("t", (99, "e", 1.0))
    await wait_for(lambda: len(store.rows("t")) == 9)
    # with the t rows counted, the republish buffer (10 rows) would refuse these
    p.submit_keyed({"t": rows(8, 50)}, "k")
    assert p.lanes[1].rows == 1
    assert set(p.lanes[1].batchers) == {"u"}
    republish.down = False
    await asyncio.wait_for(ack.wait(), 5)
    await p.close()
    assert republish.rows("t") == [] and republish.rows("u") == [(1, 1)]
    assert len(store.rows("t")) == 17 and store.rows("u") == [(1, 1)]
    assert p.metrics.get("written_rows", ("p", "republish", "t")) == 0
    assert p.metrics.get("written_rows", ("p", "republish", "u")) == 1
    assert p.metrics.get("written_rows", ("p", "store", "t")) == 17


async def test_rows_of_a_table_no_sink_takes_complete_their_ack(tmp_path: Path) -> None:
    sink = MemorySink()
    p = make(tmp_path, SelectedTables(sink, ["t"]), batch_size=1)
    await p.start()
    ack = Ack()
    p.submit({"u": [(1, 1)]}, ack)
    await asyncio.wait_for(ack.wait(), 2)
    assert p.lanes[0].rows == 0
    await p.close()
    assert sink.rows("u") == []


async def test_retryable_failures_retry_without_loss_or_duplicates(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.fail_next = 3
    p = make(tmp_path, sink, batch_size=5)
    await p.start()
    p.submit({"t": rows(20)})
    await wait_for(lambda: len(sink.rows("t")) == 20)
    assert sink.attempts == sink.writes + 3  # queued batches may be merged into one write
    assert sorted(int(str(r[0])) for r in sink.rows("t")) == list(range(20))
    assert p.metrics.get("sink_errors", ("p", "memory", "retryable")) == 3
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


async def test_an_empty_buffer_takes_a_submit_larger_than_the_buffer(tmp_path: Path) -> None:
    """A submit over ``max_buffer_rows`` gets in once the buffer is empty (were it refused
    while empty, it could never get in and its source would wait forever); a second one
    waits for the first to drain."""
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=5, max_rows=10)
    await p.start()
    assert p.has_room(25)
    p.submit({"t": rows(25)})
    assert p.lanes[0].rows == 25
    assert not p.has_room(1)
    with pytest.raises(BackpressureError):
        p.submit_one("t", (1000, "e", 1.0))
    with pytest.raises(BackpressureError):
        p.submit_keyed({"t": rows(25, 100)}, "k")
    sink.down = False
    await asyncio.wait_for(p.wait_for_room(25), 5)  # woken once the first one drained
    p.submit_keyed({"t": rows(25, 100)}, "k")
    await p.close()
    assert len(sink.rows("t")) == 50


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
    assert p.metrics.get("dead_letters", ("p", "memory", "t")) == 2
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


async def test_a_shutdown_during_a_long_back_off_spills_at_the_deadline(tmp_path: Path) -> None:
    """A sink down for long backs off for minutes between attempts; a shutdown then must
    spill at its deadline, not sleep out the back-off, and make no further attempt on
    a sink still down once the deadline has passed (an S3 call may wait out the SDK's
    own retries)."""
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=100, max_backoff=600.0)
    p.lanes[0].retry = RetryPolicy(base_secs=600.0, max_secs=600.0)
    await p.start()
    p.submit({"t": rows(5)})
    await wait_for(lambda: sink.attempts >= 1)
    p.submit(
        {"u": [(i, i) for i in range(3)]}
    )  # arrives while the lane is down; its batch is cut at close
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(p.close(timeout_secs=0.3), 30)
    assert loop.time() - began < 10  # not the 600 s back-off
    spilled = read_dead_letter_file(tmp_path / "dl.jsonl")
    assert sorted((str(d["table"]), int(str(d["row"]["time"]))) for d in spilled) == [  # type: ignore[index]
        *(("t", i) for i in range(5)),
        *(("u", i) for i in range(3)),
    ]
    # the "t" batch: its first attempt only (its back-off ends at the deadline, and a
    # sink still down past it gets no further attempt); the "u" batch, cut at the close
    # before the deadline: at most one
    assert 1 <= sink.attempts <= 2


async def test_submit_after_close_is_refused(tmp_path: Path) -> None:
    p = make(tmp_path, MemorySink())
    await p.start()
    await p.close()
    with pytest.raises(BackpressureError):
        p.submit({"t": rows(1)})


async def test_batch_ids_are_unique_and_stable_per_batch(tmp_path: Path) -> None:
    seen: list[tuple[str, tuple[object, ...]]] = []

    class Recording(MemorySink):
        async def write(self, batch: Batch) -> None:
            seen.append((batch.batch_id, tuple(r[0] for r in batch.rows)))
            await super().write(batch)

    sink = Recording()
    sink.fail_next = 2  # the first batch is attempted three times
    p = make(tmp_path, sink, batch_size=5, linger=60)
    await p.start()
    for k in range(3):  # three full batches, written one by one
        p.submit({"t": rows(5, 5 * k)})
        await wait_for(lambda k=k: len(sink.rows("t")) == 5 * (k + 1))
    await p.close()
    assert len(seen) == 5
    first = [batch_id for batch_id, _ in seen[:3]]
    assert len(set(first)) == 1  # a retried batch keeps its id (dedup on replay)
    assert {content for _, content in seen[:3]} == {tuple(range(5))}
    ids = [first[0], seen[3][0], seen[4][0]]
    assert len(set(ids)) == 3  # different batches never share one
    assert all(b.startswith("p:t:memory:") for b in ids)


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


async def test_acks_report_dead_lettered_rows_of_their_own_message(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.reject = lambda r: r[0] == 23
    p = make(tmp_path, sink, batch_size=20, linger=0.05)
    await p.start()
    first, second = Ack(), Ack()
    p.submit({"t": rows(10)}, first)  # times 0-9
    p.submit({"t": rows(10, 10)}, second)  # times 20-29 share the batch; 23 is refused
    await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), 5)
    assert first.committed and first.dead_lettered == {}
    assert not second.committed and second.dead_lettered == {"memory": 1}
    assert second.errors == ["memory: row refused"]
    assert len(sink.rows("t")) == 19
    await p.close()


async def test_rows_the_sink_names_are_dead_lettered_without_bisecting(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.reject = lambda r: r[0] in (5, 6, 40)
    sink.name_bad_rows = True
    p = make(tmp_path, sink, batch_size=64, linger=0.01)
    await p.start()
    p.submit({"t": rows(64)})
    await wait_for(lambda: len(sink.rows("t")) == 61)
    assert sorted(int(str(d.row["time"])) for d in sink.dead_letters) == [5, 6, 40]
    assert sink.attempts == 4  # the batch, then the three runs between refused rows
    await p.close()


async def test_an_unclassified_error_rejects_the_rows_instead_of_retrying(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    sink.unclassified_next = 10**9  # every write fails the same way (an encoding bug)
    p = make(tmp_path, sink, batch_size=4, linger=0.01)
    await p.start()
    ack = Ack()
    p.submit({"t": rows(4)}, ack)
    await asyncio.wait_for(ack.wait(), 5)  # never retried forever
    assert len(sink.dead_letters) == 4 and "int too big" in sink.dead_letters[0].error
    assert p.metrics.get("sink_errors", ("p", "memory", "rejected")) >= 1
    assert p.metrics.get("sink_errors", ("p", "memory", "retryable")) == 0
    sink.unclassified_next = 0
    p.submit({"t": rows(3, 100)})  # later rows land
    await wait_for(lambda: len(sink.rows("t")) == 3)
    await p.close()


async def test_dead_letters_that_cannot_be_stored_stay_buffered(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()  # the dead-letter "file" is a directory: writing it fails
    sink = MemorySink()
    sink.reject = lambda r: r[0] == 1
    sink.dead_letters_fail = 10**9
    p = Pipeline(
        "p",
        [T, U],
        [sink],
        limits=PipelineLimits(batch_size=3, linger_secs=0.01),
        retry=RetryPolicy(base_secs=0.01, max_secs=0.02),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(blocked),
    )
    await p.start()
    ack = Ack()
    p.submit({"t": rows(3)}, ack)
    await wait_for(lambda: not p.healthy)
    health = p.health()["memory"]
    assert health["status"] == "down" and "dead letters" in str(health["last_error"])
    assert health["buffered_rows"] == 3 and not ack.done  # held, not lost
    sink.dead_letters_fail = 0
    await asyncio.wait_for(ack.wait(), 5)
    assert p.healthy and [d.row["time"] for d in sink.dead_letters] == [1]
    assert p.lanes[0].rows == 0
    await p.close()


async def test_a_writer_never_ends_silently(tmp_path: Path) -> None:
    sink = MemorySink()
    p = make(tmp_path, sink, batch_size=5, linger=0.01)
    await p.start()
    lane = p.lanes[0]
    real = lane._write_with_retry
    calls = 0

    async def broken_once(batch: Batch) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug in the lane")
        await real(batch)

    lane._write_with_retry = broken_once  # type: ignore[method-assign]
    ack = Ack()
    p.submit({"t": rows(5)}, ack)
    await asyncio.wait_for(ack.wait(), 5)
    assert ack.committed and len(sink.rows("t")) == 5 and calls == 2
    assert lane.rows == 0  # counted once
    p.submit({"t": rows(5, 5)})  # the writer is still there
    await wait_for(lambda: len(sink.rows("t")) == 10)
    await p.close()


async def test_health_notices_a_store_that_goes_down_while_idle(tmp_path: Path) -> None:
    sink = MemorySink()
    p = Pipeline(
        "p",
        [T],
        [sink],
        limits=PipelineLimits(health_check_secs=0.05),
        retry=RetryPolicy(base_secs=0.01, max_secs=0.02),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )
    await p.start()
    assert p.healthy
    sink.down = True  # nothing is written meanwhile: only a ping can tell
    await wait_for(lambda: not p.healthy)
    assert "down" in str(p.health()["memory"]["last_error"])
    sink.down = False
    await wait_for(lambda: p.healthy)
    await p.close()


@pytest.mark.parametrize("answers_meanwhile", [True, False])
async def test_health_pings_a_sink_whose_writes_hang_when_it_can_answer_meanwhile(
    tmp_path: Path, answers_meanwhile: bool
) -> None:
    """A Kafka-like sink: a write to a broker that went away hangs until the message
    timeout (30 s by default), and /health said up meanwhile; its ping is its own request."""

    class Hanging(MemorySink):
        async def write(self, batch: Batch) -> None:
            while self.down:
                await asyncio.sleep(0.01)
            await super().write(batch)

    sink = Hanging()
    sink.ping_while_writing = answers_meanwhile
    p = make(tmp_path, sink, batch_size=5, linger=0.01, health_check=0.05)
    await p.start()
    sink.down = True
    p.submit({"t": rows(5)})
    if answers_meanwhile:
        await wait_for(lambda: not p.healthy)
        sink.down = False
        await wait_for(lambda: p.healthy and len(sink.rows("t")) == 5)
    else:
        await asyncio.sleep(0.5)
        assert p.healthy  # a store whose ping would queue behind the write: not asked
        sink.down = False
        await wait_for(lambda: len(sink.rows("t")) == 5)
    await p.close()


async def test_the_deployment_window_is_the_lanes_not_each_batchs(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.misconfigured = True
    p = make(tmp_path, sink, batch_size=10, linger=0.01, deployment_retry=0.2)
    await p.start()
    first = Ack()
    p.submit({"t": rows(10)}, first)
    await asyncio.wait_for(first.wait(), 5)  # held for the window, then dead-lettered
    held_for = sink.attempts
    later = [Ack() for _ in range(5)]
    for i, ack in enumerate(later):
        p.submit({"t": rows(10, 100 * (i + 1))}, ack)
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in later)), 1)  # no new windows
    assert len(sink.dead_letters) == 60
    assert sink.attempts - held_for <= 5  # one attempt each (or fewer, merged)
    sink.misconfigured = False  # fixed: the next write succeeds and closes the window
    p.submit({"t": rows(2, 9000)})
    await wait_for(lambda: len(sink.rows("t")) == 2)
    assert p.lanes[0].deployment_since is None
    await p.close()


async def test_spilled_rows_are_reported_to_their_acks(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=100)
    await p.start()
    ack = Ack()
    p.submit({"t": rows(7)}, ack)
    await p.close(timeout_secs=0.2)
    assert ack.done and not ack.committed and ack.spilled == {"memory": 7}


async def test_a_sink_with_a_minimum_write_interval_gets_fewer_larger_writes(
    tmp_path: Path,
) -> None:
    """Batches cut faster than the sink's interval are merged into the next write (their
    rows, acks and count intact); batches that cannot merge are never held back."""
    sink = MemorySink()
    sink.min_write_interval_secs = 0.3
    p = make(tmp_path, sink, batch_size=10, linger=60)
    await p.start()
    acks = [Ack() for _ in range(6)]
    for i, ack in enumerate(acks):
        p.submit({"t": rows(10, i * 10)}, ack)
        await asyncio.sleep(0.02)  # cut one by one, each while the sink is idle
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in acks)), 5)
    assert len(sink.rows("t")) == 60 and all(a.committed for a in acks)
    assert sink.writes == 2  # the first at once, the five cut within its interval together
    await p.close()


async def test_the_write_interval_does_not_hold_batches_that_cannot_merge(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    sink.min_write_interval_secs = 5.0  # would be noticed
    p = Pipeline(
        "p",
        [T, U],
        [sink],
        limits=PipelineLimits(batch_size=10, linger_secs=60, max_merge_rows=10),
        retry=RetryPolicy(base_secs=0.01, max_secs=0.05),
        metrics=Metrics(),
        dead_letters=FileDeadLetters(tmp_path / "dl.jsonl"),
    )
    await p.start()
    acks = [Ack() for _ in range(3)]
    for i, ack in enumerate(acks):
        p.submit({"t": rows(10, i * 10)}, ack)  # full batches, merging is off
    keyed = Ack()
    p.submit_keyed({"t": rows(4, 100)}, "k-1", keyed)  # keyed: never merged, never held
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in [*acks, keyed])), 2)
    assert sink.writes == 4 and len(sink.rows("t")) == 34
    await p.close()


class _ConcurrentSink(MemorySink):
    """Two writes at once, each held until released; records the sizes of the writes
    and how many were in flight at most."""

    max_concurrent_writes = 2

    def __init__(self, need_backlog: bool) -> None:
        super().__init__()
        self.concurrent_writes_need_backlog = need_backlog
        self.release = asyncio.Event()
        self.in_flight = 0
        self.peak = 0
        self.sizes: list[int] = []

    async def write(self, batch: Batch) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.release.wait()
            self.sizes.append(batch.size)
            await super().write(batch)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("need_backlog", [True, False])
async def test_a_second_write_waits_for_a_backlog_one_write_cannot_take(
    tmp_path: Path, need_backlog: bool
) -> None:
    """With Sink.concurrent_writes_need_backlog, batches cut while the first write is going
    are merged into the next write instead of going out as a concurrent small one; a
    second write runs once more is queued than one write takes, and for keyed batches
    (never merged). Without it, a second write takes what is queued at once."""
    sink = _ConcurrentSink(need_backlog)
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=40)
    await p.start()
    first = Ack()
    p.submit({"t": rows(10)}, first)
    await wait_for(lambda: sink.in_flight == 1)
    acks = [Ack() for _ in range(3)]
    for i, ack in enumerate(acks, start=1):
        p.submit({"t": rows(10, i * 10)}, ack)  # 30 rows queued: less than a write takes
    await asyncio.sleep(0.05)
    assert sink.in_flight == (1 if need_backlog else 2)
    if need_backlog:
        more = Ack()
        p.submit({"t": rows(10, 40)}, more)  # 40 queued: one write's worth
        await wait_for(lambda: sink.in_flight == 2)
        acks.append(more)
    sink.release.set()
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in [first, *acks])), 5)
    sent = [r for k in range(len(acks) + 1) for r in rows(10, 10 * k)]
    assert sorted(map(str, sink.rows("t"))) == sorted(map(str, sent))
    if need_backlog:
        assert sorted(sink.sizes) == [10, 40]  # the first, then the four merged
    else:
        assert sorted(sink.sizes) == [10, 30]  # the second went out beside the first
    # keyed batches are never merged: each queued one is a backlog of its own
    sink.release.clear()
    keyed = [Ack() for _ in range(3)]
    for i, ack in enumerate(keyed):
        p.submit_keyed({"t": rows(2, 200 + 2 * i)}, f"k-{i}", ack)
    await wait_for(lambda: sink.in_flight == 2)
    sink.release.set()
    await asyncio.wait_for(asyncio.gather(*(a.wait() for a in keyed)), 5)
    assert sink.peak == 2
    await p.close()


async def test_a_waiting_second_writer_ends_at_close(tmp_path: Path) -> None:
    sink = _ConcurrentSink(True)
    sink.release.set()
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=40)
    await p.start()
    ack = Ack()
    p.submit({"t": rows(15)}, ack)  # one full batch and 5 rows the close cuts
    await asyncio.wait_for(p.close(), 5)
    assert ack.committed and len(sink.rows("t")) == 15


# -- admission: input waits while the writers are behind ---------------------------------


async def test_input_waits_while_the_writers_are_behind_then_goes_in_arrival_order(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    sink.write_delay_secs = 0.05
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=10)
    await p.start()
    assert p.lanes[0].admit_rows == 40  # 4 batches per writer
    assert p.admission(40) is None  # an empty buffer takes it
    assert p.admission(1000) is None  # even input over the mark: there is nothing to wait for
    p.submit({"t": rows(40)})
    order: list[int] = []

    async def source(i: int) -> None:
        waiting = p.admission(10)
        assert waiting is not None  # 40 buffered + 10 > the mark
        await waiting
        order.append(i)
        p.submit({"t": rows(10, 100 + 10 * i)})

    tasks = [asyncio.create_task(source(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert order == [] and p.lanes[0].rows == 40  # nothing went in ahead of the writers
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == [0, 1, 2]
    await p.close()
    assert len(sink.rows("t")) == 70


async def test_input_waits_behind_earlier_waiters_even_with_room(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.write_delay_secs = 0.05
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=10)
    await p.start()
    p.submit({"t": rows(40)})
    first = p.admission(10)
    assert first is not None
    waiting = asyncio.ensure_future(first)
    await asyncio.sleep(0)
    later = p.admission(1)
    assert later is not None  # it queues behind the first, never overtakes it
    second = asyncio.ensure_future(later)
    done, _ = await asyncio.wait([waiting, second], return_when=asyncio.FIRST_COMPLETED)
    assert waiting in done
    await asyncio.wait_for(second, 5)
    await p.close()


async def test_a_down_sink_is_not_waited_for(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.down = True
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=10)
    await p.start()
    p.submit({"t": rows(40)})
    await wait_for(lambda: not p.lanes[0].up)
    assert p.admission(10) is None  # the buffer takes it (and refuses it when full)
    sink.down = False
    await p.close()
    assert len(sink.rows("t")) == 40


async def test_input_waits_no_longer_than_the_limit(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.write_delay_secs = 1.0  # writing, up, and far behind
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=10, admit_max_wait=0.1)
    await p.start()
    p.submit({"t": rows(40)})
    waiting = p.admission(10)
    assert waiting is not None
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(waiting, 5)
    assert asyncio.get_running_loop().time() - started >= 0.09
    p.submit({"t": rows(10, 40)})  # goes into the buffer, as without admission
    assert p.lanes[0].rows == 50
    sink.write_delay_secs = 0.0
    await p.close()
    assert len(sink.rows("t")) == 50


async def test_closing_releases_the_waiting_input(tmp_path: Path) -> None:
    sink = MemorySink()
    sink.write_delay_secs = 0.05
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=10, admit_max_wait=30)
    await p.start()
    p.submit({"t": rows(40)})
    waiting = p.admission(10)
    assert waiting is not None
    task = asyncio.ensure_future(waiting)
    await asyncio.sleep(0)
    closing = asyncio.create_task(p.close())
    await asyncio.wait_for(task, 1)  # released at once, not after the 30 s limit
    with pytest.raises(BackpressureError):
        p.submit({"t": rows(10, 40)})
    await closing
    assert len(sink.rows("t")) == 40


async def test_a_sink_writing_outside_the_interpreter_never_makes_input_wait(
    tmp_path: Path,
) -> None:
    sink = MemorySink()
    sink.contends_with_input = False
    sink.write_delay_secs = 0.05
    p = make(tmp_path, sink, batch_size=10, linger=60, max_merge_rows=10)
    await p.start()
    p.submit({"t": rows(100)})
    assert p.lanes[0].admit_rows is None
    assert p.admission(10) is None
    await p.close()
