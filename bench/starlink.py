"""Starlink benchmark: one 65,000-row stream response, fetched, mapped and stored.

Per round: the fake Starlink API (``orbitstream.simulate.starlink``, real loopback HTTP)
serves a full 65,000-row response; :class:`StarlinkClient` fetches it (token already
minted: the steady state) and :meth:`StarlinkIngest.deliver` — the service's own path —
maps it and makes it durable in a :class:`ChdbSink` through a real :class:`Pipeline`
(parts of ~20,000 rows handed to the sink as they are mapped; batch ids, dedup tokens,
acks). Printed beside the total, measured in the same run on the same body:

- **map alone** — :meth:`StarlinkMapper.map` of the body (decode included), columnar
  (the default) and as tuples (``columnar=False``, what the sink must then convert);
- **bare insert** — the mapped rows, Arrow-encoded *before* the clock starts, sent with
  ``send_insert`` into identical tables without our settings: the store's own cost.

Timings are wall-clock per round (median and best over ``--rounds``, after a warm-up
round); ratios are to the median total. The process uses the service's collector settings
(``gc.set_threshold(50_000, 50, 100)`` + ``gc.freeze()`` after start-up). The fake's own
work (rendering and sending the body) is part of *fetch*.

Usage: ``.venv/bin/python bench/starlink.py [--rounds 5] [--routers-per-terminal 1.0]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from orbitstream.core.batch import Batch
from orbitstream.core.context import PipelineContext
from orbitstream.core.metrics import Metrics
from orbitstream.core.pipeline import Pipeline
from orbitstream.core.retry import RetryPolicy
from orbitstream.core.times import TimeWindow
from orbitstream.pipelines.starlink import StarlinkMapper, tables
from orbitstream.runtime import pipeline_limits
from orbitstream.settings import Settings
from orbitstream.simulate.starlink import FakeStarlink, FakeStarlinkConfig, FleetConfig
from orbitstream.sinks.arrow import to_ipc_stream
from orbitstream.sinks.chdb import ChdbSink
from orbitstream.sinks.deadletter import FileDeadLetters
from orbitstream.sources.http.server import Router
from orbitstream.sources.starlink import StarlinkIngest
from orbitstream.sources.starlink_api import StarlinkClient, StarlinkSettings

ROWS = 65_000
TARGET_SECS = 1.0


def _rows_per_tick(terminals: int, routers: float) -> float:
    return terminals * (1 + routers) * 1.02 + terminals / 20


async def bench(rounds: int, routers: float, terminals: int, columnar: bool = True) -> None:
    ticks = int(ROWS * (rounds + 1) / _rows_per_tick(terminals, routers)) + 2
    start_ns = time.time_ns() - ticks * 15_000_000_000  # recent: inside the tables' TTL
    fleet = FleetConfig(
        terminals=terminals, routers_per_terminal=routers, seed=11, start_ns=start_ns
    )
    fake = FakeStarlink(FakeStarlinkConfig(fleet=fleet, backlog_ticks=ticks))
    await fake.start()
    settings = StarlinkSettings(
        client_id=fake.client_id,
        client_secret=SecretStr(fake.client_secret),
        token_url=fake.token_url,
        stream_url=fake.stream_url,
        batch_size=ROWS,
        max_linger_ms=1000,
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-starlink-"))
    sink = ChdbSink(tmp / "store")
    decls = tables(retention_days=30)
    await sink.start(decls)

    # identical tables without our insert settings, for the bare insert
    def _bare_ddl() -> None:
        for t in decls:
            sink._writer.conn.query(f"CREATE TABLE bare_{t.name} AS {t.name}")

    await sink._writer.run(_bare_ddl)
    metrics = Metrics()
    dead = FileDeadLetters(tmp / "dead_letters.jsonl")
    pipeline = Pipeline(
        "starlink",
        decls,
        [sink],
        limits=pipeline_limits(Settings.model_validate({}).engine),
        retry=RetryPolicy(),
        metrics=metrics,
        dead_letters=dead,
    )
    await pipeline.start(30.0, start_sinks=False)
    ctx = PipelineContext(
        pipeline, decls, metrics=metrics, store=sink, router=Router(), dead_letters=dead
    )
    mapper = StarlinkMapper(columnar=columnar)
    ingest = StarlinkIngest(mapper, {t.name: t for t in decls}, TimeWindow(), metrics)
    gc.collect()
    gc.set_threshold(50_000, 50, 100)
    gc.freeze()
    keys = ("fetch", "deliver", "total", "map", "map_tuples", "bare")
    results: dict[str, list[float]] = {k: [] for k in keys}
    shapes: list[str] = []
    delivered = 0
    async with StarlinkClient(settings) as client:
        await client.access_token()
        for rnd in range(rounds + 1):
            t0 = time.perf_counter()
            batch = await client.fetch()
            t1 = time.perf_counter()
            out = await ingest.deliver(ctx, batch.body, batch.received_ns)
            t2 = time.perf_counter()
            assert batch.rows == ROWS and out.committed, (batch.rows, out)
            delivered += out.rows.get("telemetry", 0)
            # the baselines, on the same body, from the state before it was delivered
            before = StarlinkMapper()
            started = time.perf_counter()
            mapping = before.map(batch.body, batch.received_ns)
            map_secs = time.perf_counter() - started
            started = time.perf_counter()
            StarlinkMapper(columnar=False).map(batch.body, batch.received_ns)
            tuple_secs = time.perf_counter() - started
            encoded = [
                (t.name, to_ipc_stream(Batch(t, mapping.rows[t.name], "x")))
                for t in decls
                if len(mapping.rows[t.name])
            ]

            def _bare(encoded: list[tuple[str, bytes]] = encoded) -> float:
                started = time.perf_counter()
                for name, data in encoded:
                    ins = sink._writer.conn.send_insert(f"INSERT INTO bare_{name}", "ArrowStream")
                    ins.append(data)
                    ins.finish()
                return time.perf_counter() - started

            bare_secs = await sink._writer.run(_bare)
            if rnd == 0:
                shapes.append(
                    f"{len(batch.body) / 1e6:.1f} MB body; rows per table {out.rows}; "
                    f"{out.duplicates} near-duplicates, {out.dead} dead"
                )
                continue  # warm-up
            for key, secs in zip(
                keys, (t1 - t0, t2 - t1, t2 - t0, map_secs, tuple_secs, bare_secs), strict=True
            ):
                results[key].append(secs)
    await pipeline.close(30.0, close_sinks=False)
    stored = await sink.query("SELECT count() FROM telemetry")
    await sink.close()
    await fake.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    count = int(stored.rows[0][0])  # type: ignore[call-overload]
    assert count == delivered, (count, delivered)
    _report(results, shapes, terminals, routers, rounds, count)


def _report(
    results: dict[str, list[float]],
    shapes: list[str],
    terminals: int,
    routers: float,
    rounds: int,
    stored: int,
) -> None:
    med: Callable[[str], float] = lambda k: statistics.median(results[k])  # noqa: E731
    total = med("total")
    print(
        f"Starlink: {ROWS:,}-row responses, fleet of {terminals} terminals, "
        f"{routers:g} routers per terminal, {rounds} rounds (+1 warm-up)"
    )
    print(f"  {shapes[0]}; telemetry rows stored: {stored:,}")
    print(f"  {'step':<34}{'median ms':>10}{'best ms':>10}{'x total':>9}")
    labels = [
        ("fetch", "fetch (HTTP from the fake)"),
        ("deliver", "map + durable in chDB (deliver)"),
        ("total", "total"),
        ("map", "baseline: mapping alone"),
        ("map_tuples", "  the same, as tuples"),
        ("bare", "baseline: bare chDB insert"),
    ]
    for key, label in labels:
        m = med(key)
        print(f"  {label:<34}{m * 1000:>10.1f}{min(results[key]) * 1000:>10.1f}{m / total:>9.2f}")
    verdict = "meets" if total < TARGET_SECS else "MISSES"
    print(f"  total {total * 1000:.0f} ms {verdict} the {TARGET_SECS:g} s target")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--terminals", type=int, default=2000)
    ap.add_argument("--routers-per-terminal", type=float, default=1.0)
    ap.add_argument(
        "--tuples", action="store_true", help="deliver with the tuple mapper (columnar=False)"
    )
    args = ap.parse_args()
    asyncio.run(bench(args.rounds, args.routers_per_terminal, args.terminals, not args.tuples))


if __name__ == "__main__":
    main()
