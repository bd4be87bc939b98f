"""The network and sessions pipelines end to end, as a user runs them: ``orbitstream
simulate network|sessions`` publishes to a real broker (Tansu), ``orbitstream run network
sessions`` consumes both topics in one process into one embedded chDB store, republishes
to Kafka, archives Parquet to S3 and alerts to SNS (moto). The expected rows are computed
by mapping the very messages on the raw topics; the store must hold exactly those, the
malformed ones must be on the dead-letter topics with their headers, and a worker
restarted with SIGTERM must not write anything twice."""

from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orbitstream.pipelines.network import NetworkMapper
from orbitstream.pipelines.sessions import SessionsMapper
from orbitstream.sources.kafka import KafkaMessage
from tests.conftest import free_port, http
from tests.integration.kafka.support import SESSION_TIMEOUT_MS, header_map, read_all
from tests.support.moto_server import CREDENTIALS, REGION, aws_client
from tests.support.runner import Running, cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NETWORK_TABLES = tuple(t.name for t in NetworkMapper.tables)


@dataclass
class Names:
    sessions_topic: str
    network_topic: str
    sessions_dlt: str
    network_dlt: str
    node_topic: str
    bucket: str
    sns_arn: str
    queue_url: str


@pytest.fixture
def names(moto_endpoint: str) -> Names:
    tag = uuid.uuid4().hex[:8]
    s3 = aws_client("s3", moto_endpoint)
    bucket = f"archive-{tag}"
    s3.create_bucket(Bucket=bucket)
    sns = aws_client("sns", moto_endpoint)
    sqs = aws_client("sqs", moto_endpoint)
    arn = sns.create_topic(Name=f"alerts-{tag}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"alerts-{tag}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
    return Names(
        sessions_topic=f"sessions-{tag}",
        network_topic=f"network-{tag}",
        sessions_dlt=f"sessions-dlt-{tag}",
        network_dlt=f"network-dlt-{tag}",
        node_topic=f"nodes-{tag}",
        bucket=bucket,
        sns_arn=arn,
        queue_url=queue_url,
    )


def _env(tmp_path: Path, bootstrap: str, moto: str, n: Names) -> dict[str, str]:
    tag = n.sessions_topic.rsplit("-", 1)[1]
    env = {
        **os.environ,
        "ORBITSTREAM_DATA_DIR": str(tmp_path / "data"),
        "ORBITSTREAM_HOST": "127.0.0.1",
        "ORBITSTREAM_LOG_LEVEL": "info",
        "ORBITSTREAM_LOG_FORMAT": "text",
        "BATCH_TIMEOUT": "100ms",
        "KAFKA_BOOTSTRAP": bootstrap,
        "ORBITSTREAM_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "ORBITSTREAM_KAFKA_LINGER": "200ms",
        "ORBITSTREAM_KAFKA_CHUNK_MESSAGES": "400",
        "ORBITSTREAM_KAFKA_REVOKE_TIMEOUT": "10s",
        "KAFKA_TOPIC": n.sessions_topic,
        "ORBITSTREAM_SESSIONS__CONSUMER_GROUP": f"jupiter-{tag}",
        "ORBITSTREAM_SESSIONS__DEAD_LETTER_TOPIC": n.sessions_dlt,
        "KAFKA_RAW_TOPIC": n.network_topic,
        "ORBITSTREAM_NETWORK__CONSUMER_GROUP": f"network-{tag}",
        "ORBITSTREAM_NETWORK__DEAD_LETTER_TOPIC": n.network_dlt,
        "KAFKA_NODE_TOPIC": n.node_topic,
        "KAFKA_INTERFACE_TOPIC": f"interfaces-{tag}",
        "KAFKA_ADDRESS_TOPIC": f"addresses-{tag}",
        "AWS_ENDPOINT_URL": moto,
        "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
        "AWS_S3_BUCKET": n.bucket,
        "AWS_SNS_TOPIC_ARN": n.sns_arn,
    }
    env.pop("KAFKA_CONSUMER_GROUP", None)
    return env


def _simulate(env: dict[str, str], what: str, *args: str) -> None:
    out = cli(env, "simulate", what, "--partitions", "2", *args)
    assert out.returncode == 0, out.stdout + out.stderr


def _messages(bootstrap: str, topic: str, n: int) -> list[KafkaMessage]:
    got = read_all(bootstrap, topic, n)
    assert len(got) == n
    out = [
        KafkaMessage(
            m.topic() or "",
            m.partition() or 0,
            m.offset() or 0,
            m.key(),
            m.value() or b"",
            m.timestamp()[1],
        )
        for m in got
    ]
    return sorted(out, key=lambda m: (m.partition, m.offset))


def _expected_sessions(msgs: list[KafkaMessage]) -> dict[str, int]:
    res = SessionsMapper().map_chunk(msgs)
    base = {r[0] for r in res.rows.get("sessions_base", [])}
    return {
        "sessions_base": len(base),
        "session_events": len(res.rows.get("session_events", [])),
        "session_movements": len(res.rows.get("session_movements", [])),
        "dead": len(res.dead),
    }


def _expected_network(msgs: list[KafkaMessage]) -> tuple[dict[str, int], Counter[str]]:
    mapper = NetworkMapper()
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    nodes: set[object] = set()
    for p in sorted({m.partition for m in msgs}):
        res = mapper.map_chunk([m for m in msgs if m.partition == p])
        for table, rows in res.rows.items():
            counts[table] += len(rows)
        nodes.update(r[0] for r in res.rows.get("nodes", []))
        kinds.update(d.kind for d in res.dead)
        counts["dead"] += len(res.dead)
        counts["unmapped_paths"] += sum(res.unknown_paths.values())
        counts["ignored"] += res.ignored
    counts["distinct_nodes"] = len(nodes)
    return dict(counts), kinds


def _count(run: Running, pipeline: str, sql: str) -> int:
    return int(run.query(sql, pipeline)[0][0])


def _store_counts(run: Running) -> dict[str, int]:
    q = "SELECT count() FROM "
    return {
        "sessions_base": _count(run, "sessions", q + "sessions_base FINAL"),
        "session_events": _count(run, "sessions", q + "session_events"),
        "session_movements": _count(run, "sessions", q + "session_movements"),
        "nodes": _count(run, "network", q + "nodes FINAL"),
        "interfaces": _count(run, "network", q + "interfaces"),
        "addresses": _count(run, "network", q + "addresses"),
        "interface_counters": _count(run, "network", q + "interface_counters"),
    }


def _want(sessions: dict[str, int], network: dict[str, int]) -> dict[str, int]:
    out = {k: v for k, v in sessions.items() if k != "dead"}
    out.update({k: network.get(k, 0) for k in NETWORK_TABLES})
    out["nodes"] = network["distinct_nodes"]  # latest state per node (FINAL)
    return out


def _wait_counts(run: Running, want: dict[str, int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    have = _store_counts(run)
    while have != want and time.monotonic() < deadline:
        time.sleep(0.2)
        have = _store_counts(run)
    assert have == want, run.log.read_text()[-4000:]


def _metric_values(text: str) -> dict[tuple[str, str], float]:
    """``orbitstream_<name>_total{pipeline="P"…}`` samples by (name, pipeline); source
    errors as ("source_errors:<kind>", pipeline)."""
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        m = re.match(r"orbitstream_(\w+)_total\{([^}]*)\} (\S+)$", line)
        if m is None:
            continue
        name, labels, value = m.groups()
        tags = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if "pipeline" not in tags:
            continue
        key = f"{name}:{tags['kind']}" if "kind" in tags else name
        out[(key, tags["pipeline"])] = out.get((key, tags["pipeline"]), 0.0) + float(value)
    return out


def _sns_messages(moto: str, queue_url: str, at_least: int, timeout: float = 20) -> list[Any]:
    sqs = aws_client("sqs", moto)
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for msg in resp.get("Messages", []):
            got.append(json.loads(json.loads(msg["Body"])["Message"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])
        if len(got) >= at_least and not resp.get("Messages"):
            break
    return got


def test_simulate_run_both_pipelines_restart_without_duplicates(
    tmp_path: Path, kafka_bootstrap: str, moto_endpoint: str, names: Names
) -> None:
    import pyarrow.parquet as pq

    env = _env(tmp_path, kafka_bootstrap, moto_endpoint, names)
    _simulate(env, "sessions", "-n", "1500", "--malformed-rate", "0.03", "--seed", "5")
    _simulate(env, "network", "-n", "300", "--malformed-rate", "0.05", "--seed", "5")
    s_msgs = _messages(kafka_bootstrap, names.sessions_topic, 1500)
    n_msgs = _messages(kafka_bootstrap, names.network_topic, 300)
    sessions = _expected_sessions(s_msgs)
    network, kinds = _expected_network(n_msgs)
    assert sessions["dead"] > 0 and network["dead"] > 0 and network["interface_counters"] > 0

    run = Running(env, "network", "sessions")
    try:
        want = _want(sessions, network)
        _wait_counts(run, want)
        # /metrics counts each source's messages, and the rejected ones by kind
        _, _, text = http("GET", run.url + "/metrics")
        got = _metric_values(text.decode())
        assert got[("received", "sessions")] == 1500
        assert got[("rejected", "sessions")] == sessions["dead"]
        assert got[("accepted", "sessions")] == 1500 - sessions["dead"]
        assert got[("received", "network")] == 300
        assert got[("rejected", "network")] == network["dead"]
        # tolerated input is counted: paths the mapper does not know (the simulator adds
        # .node.srl.system.information to some messages) and messages with nothing to map
        assert network["unmapped_paths"] > 0
        assert got[("unmapped_paths", "network")] == network["unmapped_paths"]
        assert got.get(("ignored_messages", "network"), 0) == network["ignored"]
        health = json.loads(http("GET", run.url + "/health")[2])
        source = health["pipelines"]["network"]["source"]
        assert source["unmapped_paths"] == network["unmapped_paths"], source
        errors = sum(v for (name, _), v in got.items() if name.startswith("source_errors:"))
        assert errors == sessions["dead"] + network["dead"]
        # one SNS message per error kind (the rate limit holds the rest for a minute)
        alerts = _sns_messages(moto_endpoint, names.queue_url, len(kinds))
        assert Counter(a["kind"] for a in alerts) == Counter(dict.fromkeys(kinds, 1))
        assert all(a["pipeline"] == "network" for a in alerts)
    finally:
        assert run.stop() == 0, run.log.read_text()[-3000:]

    # malformed messages are on the dead-letter topics, with where they came from
    for dlt, topic, n in (
        (names.sessions_dlt, names.sessions_topic, sessions["dead"]),
        (names.network_dlt, names.network_topic, network["dead"]),
    ):
        letters = read_all(kafka_bootstrap, dlt, n, timeout=20)
        assert len(letters) == n
        for m in letters:
            h = header_map(m)
            assert h["orbitstream.source.topic"].decode() == topic
            assert int(h["orbitstream.source.offset"]) >= 0
            assert h["orbitstream.error"]

    # republished nodes: one message per node row
    assert (
        len(read_all(kafka_bootstrap, names.node_topic, network["nodes"], 20)) == network["nodes"]
    )

    # the Parquet archive holds every network row, readable by pyarrow
    s3 = aws_client("s3", moto_endpoint)
    per_table: Counter[str] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=names.bucket):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            assert key.endswith(".parquet") and "/date=" in key and "/hour=" in key
            body = s3.get_object(Bucket=names.bucket, Key=key)["Body"].read()
            per_table[key.split("/", 1)[0]] += pq.read_table(io.BytesIO(body)).num_rows
    assert dict(per_table) == {t: network[t] for t in NETWORK_TABLES}

    # more input while the worker is down; after a restart every row is there once
    _simulate(env, "sessions", "-n", "500", "--seed", "6")
    s_msgs = _messages(kafka_bootstrap, names.sessions_topic, 2000)
    sessions = _expected_sessions(s_msgs)
    run = Running(env, "network", "sessions")
    try:
        want = _want(sessions, network)
        _wait_counts(run, want)
        time.sleep(1.0)  # nothing more arrives (no replayed chunk written twice)
        assert _store_counts(run) == want
        distinct = _count(
            run,
            "sessions",
            "SELECT count() FROM (SELECT DISTINCT session_id, time, status FROM session_events)",
        )
        assert distinct == want["session_events"]
    finally:
        assert run.stop() == 0, run.log.read_text()[-3000:]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"AWS_S3_BUCKET": "no-such-bucket"}, "AWS_S3_BUCKET"),
        ({"AWS_SECRET_ACCESS_KEY": ""}, "AWS credentials"),
        # a topic that does not exist: noticed at start, not when the first alert fails
        (
            {"AWS_SNS_TOPIC_ARN": "arn:aws:sns:us-east-1:123456789012:no-such-topic"},
            "does not exist",
        ),
    ],
)
def test_an_unusable_bucket_or_topic_stops_the_start_naming_the_setting(
    tmp_path: Path,
    kafka_bootstrap: str,
    moto_endpoint: str,
    names: Names,
    change: dict[str, str],
    named: str,
) -> None:
    """A bucket that does not exist is a deployment error, not an outage: ``run network``
    exits 2 at once with the S3 error and the settings to check (it retried for the whole
    ORBITSTREAM_START_TIMEOUT, its log naming no setting, and never served PORT)."""
    env = {**_env(tmp_path, kafka_bootstrap, moto_endpoint, names), **change}
    if not change.get("AWS_SECRET_ACCESS_KEY", "x"):
        env.pop("AWS_SECRET_ACCESS_KEY")
        env.pop("AWS_ACCESS_KEY_ID")
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
        env["AWS_CONFIG_FILE"] = str(tmp_path / "none")
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    started = time.monotonic()
    done = cli({**env, "PORT": str(free_port())}, "run", "network")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert time.monotonic() - started < 30, out  # not ORBITSTREAM_START_TIMEOUT (60 s)
    assert named in out and "Traceback" not in out, out
    if "AWS_SNS_TOPIC_ARN" in change:
        assert "AWS_SNS_TOPIC_ARN" in out, out
