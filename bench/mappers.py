"""Mapper benchmark: the sessions and network mappers' cost per message, next to a bare
``msgspec.json.decode`` of the same messages measured in the same run, and end to end into
chDB (map + Arrow encode + insert of every table, per chunk of messages).

Messages come from the seeded simulators (generated before timing). Prints a table with
messages/s, µs per message and the ratio to the bare decode of the same messages.

Usage: ``.venv/bin/python bench/mappers.py [--quick]``
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from orbitstream.core.batch import Batch
from orbitstream.pipelines.mapping import Mapper, MapResult
from orbitstream.pipelines.network import NetworkMapper
from orbitstream.pipelines.sessions import SessionsMapper
from orbitstream.simulate.network import FabricConfig, NetworkSimulator
from orbitstream.simulate.sessions import SessionsConfig, SessionsSimulator


@dataclass(slots=True)
class Msg:
    topic: str
    partition: int
    offset: int
    timestamp_ns: int
    value: bytes | None


def best_of(runs: int, fn: Callable[[], object]) -> float:
    """The fastest of ``runs`` timings of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def chunks(msgs: Sequence[Msg], size: int) -> list[Sequence[Msg]]:
    return [msgs[i : i + size] for i in range(0, len(msgs), size)]


def bare(msgs: Sequence[Msg]) -> None:
    decode = msgspec.json.decode
    for m in msgs:
        with contextlib.suppress(msgspec.DecodeError):  # malformed ones cost the same
            decode(m.value or b"")


def run_chunks(make: Callable[[], Mapper], msgs: Sequence[Msg], size: int) -> None:
    mapper = make()
    for chunk in chunks(msgs, size):
        mapper.commit(mapper.map_chunk(chunk))


def run_single(make: Callable[[], Mapper], msgs: Sequence[Msg]) -> None:
    mapper = make()
    for m in msgs:
        mapper.commit(mapper.map(m.value, m))


def run_store(
    make: Callable[[], Mapper], msgs: Sequence[Msg], size: int, root: Path
) -> tuple[float, int]:
    """Map chunk by chunk and write every table's rows to a fresh chDB store (opened and
    migrated before the clock starts, after one warm-up insert); (seconds, rows written)."""
    from orbitstream.sinks.chdb import ChdbSink

    path = Path(tempfile.mkdtemp(dir=root))
    mapper = make()
    store = ChdbSink(path)
    store.migrate_sync(list(mapper.tables))
    by_name = {t.name: t for t in mapper.tables}
    written = 0
    try:
        warm = make().map_chunk(msgs[:100])  # first Arrow encode / insert pay one-off costs
        for name, rows in warm.rows.items():
            store.write_sync(Batch(by_name[name], rows, f"warm:{name}"))
        gc.collect()
        started = time.perf_counter()
        for n, chunk in enumerate(chunks(msgs, size)):
            result: MapResult = mapper.map_chunk(chunk)
            for name, rows in result.rows.items():
                store.write_sync(Batch(by_name[name], rows, f"bench:{name}:{n}"))
                written += len(rows)
            mapper.commit(result)
        elapsed = time.perf_counter() - started
    finally:
        store.close_sync()
        shutil.rmtree(path, ignore_errors=True)
    return elapsed, written


Line = tuple[str, str, int, float, float]


def measure(
    label: str, msgs: Sequence[Msg], make: Callable[[], Mapper], chunk: int, runs: int, root: Path
) -> list[Line]:
    """Every stage of one workload; the first is the baseline."""
    size = sum(len(m.value or b"") for m in msgs) / len(msgs)
    base = best_of(runs, lambda: bare(msgs))
    stages = [
        ("bare msgspec.json.decode (baseline)", base),
        ("map_chunk", best_of(runs, lambda: run_chunks(make, msgs, chunk))),
        ("map, one message at a time", best_of(runs, lambda: run_single(make, msgs))),
    ]
    secs, written = run_store(make, msgs, chunk, root)
    stages.append((f"map_chunk + chDB insert ({chunk:,}-message chunks)", secs))
    print(f"{label}: {written:,} rows written to chDB for {len(msgs):,} messages")
    return [
        (f"{label} ({size:,.0f} B/msg)", stage, len(msgs), secs, base) for stage, secs in stages
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages and runs")
    args = parser.parse_args()
    n_sessions = 50_000 if args.quick else 200_000
    n_network = 2_000 if args.quick else 10_000
    runs = 2 if args.quick else 3

    sim = SessionsSimulator(SessionsConfig(vehicles=200, seed=1, malformed_rate=0.01))
    sessions = [
        Msg("sessions-topic", 0, i, 0, m.value) for i, m in enumerate(sim.messages(n_sessions))
    ]
    fabric = NetworkSimulator(FabricConfig(spines=4, leaves=16, seed=1, malformed_rate=0.01))
    network = [
        Msg("network-data", 0, i, m.timestamp_ns, m.value)
        for i, m in enumerate(fabric.messages(n_network))
    ]
    root = Path(tempfile.mkdtemp(prefix="orbitstream-bench-"))
    try:
        lines = measure("sessions", sessions, SessionsMapper, 50_000, runs, root)
        lines += measure("network", network, NetworkMapper, 1_000, runs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'workload':<26} {'stage':<48} {'msgs/s':>11} {'µs/msg':>8} {'× bare':>7}")
    for label, stage, n, secs, base in lines:
        print(
            f"{label:<26} {stage:<48} {n / secs:>11,.0f} {secs / n * 1e6:>8.2f} {secs / base:>7.2f}"
        )


if __name__ == "__main__":
    main()
