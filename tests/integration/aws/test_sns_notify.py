"""Processing-error alerts through a real SNS endpoint (moto's server): an SQS queue
subscribed to the topic reads back what was published, so the tests see exactly the
messages a subscriber would get — one per kind per window, with counts."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from orbitstream.detect.notify import SnsNotifier, SnsSettings, SourcePosition, error_notifier
from orbitstream.errors import ConfigError
from tests.conftest import free_port
from tests.support.moto_server import aws_client, aws_settings

pytestmark = pytest.mark.integration

START = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@dataclass
class Subscription:
    topic_arn: str
    sqs: Any
    queue_url: str

    def receive(self, expected: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The SNS envelopes delivered so far, waiting until ``expected`` arrived."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            resp = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
            )
            for msg in resp.get("Messages", []):
                got.append(json.loads(msg["Body"]))
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
        return got

    def nothing_more(self) -> bool:
        resp = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        )
        return not resp.get("Messages")


@pytest.fixture
def subscription(moto_endpoint: str) -> Iterator[Subscription]:
    sns = aws_client("sns", moto_endpoint)
    sqs = aws_client("sqs", moto_endpoint)
    name = f"alerts-{uuid.uuid4().hex[:10]}"
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    yield Subscription(topic, sqs, queue_url)
    sqs.delete_queue(QueueUrl=queue_url)
    sns.delete_topic(TopicArn=topic)


def _body(envelope: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(envelope["Message"])
    return doc


async def test_one_message_per_kind_per_window_with_counts(
    moto_endpoint: str, subscription: Subscription
) -> None:
    clock = FakeClock()
    notifier = SnsNotifier(
        "network",
        SnsSettings(subscription.topic_arn, aws_settings(moto_endpoint)),
        clock=clock,
    )
    for offset in range(1000):
        notifier.report(
            "decode", SourcePosition("network-data", offset % 4, offset), "invalid JSON"
        )
    for offset in range(5):
        notifier.report("validate", SourcePosition("network-data", 0, 5000 + offset), "no name")

    first = subscription.receive(2)
    assert subscription.nothing_more()  # 1005 bad records, 2 messages
    by_kind = {_body(e)["kind"]: e for e in first}
    assert set(by_kind) == {"decode", "validate"}
    decode = _body(by_kind["decode"])
    assert (decode["count"], decode["suppressed"], decode["pipeline"]) == (1, False, "network")
    assert decode["first_position"] == {"topic": "network-data", "partition": 0, "offset": 0}
    assert by_kind["decode"]["Subject"] == "OrbitStream network: 1 decode error"
    attrs = by_kind["decode"]["MessageAttributes"]
    assert attrs["kind"]["Value"] == "decode" and attrs["pipeline"]["Value"] == "network"

    clock.now += 60  # the window ends: one summary per kind, with what was held back
    notifier.flush_due()
    summaries = {_body(e)["kind"]: _body(e) for e in subscription.receive(2)}
    assert summaries["decode"]["count"] == 999 and summaries["decode"]["suppressed"] is True
    assert summaries["decode"]["first_position"] == {
        "topic": "network-data",
        "partition": 1,
        "offset": 1,
    }
    assert summaries["decode"]["total"] == 1000
    assert summaries["validate"]["count"] == 4
    assert subscription.nothing_more()

    for offset in range(3):  # inside the next window: held, then flushed at close
        notifier.report("decode", SourcePosition("network-data", 2, 7000 + offset), "bad")
    assert subscription.nothing_more()
    notifier.close()
    (last,) = subscription.receive(1)
    assert _body(last)["count"] == 3 and _body(last)["total"] == 1003
    assert notifier.sent == 5 and notifier.failed == 0


async def test_the_background_thread_flushes_when_the_window_ends(
    moto_endpoint: str, subscription: Subscription
) -> None:
    notifier = SnsNotifier(
        "sessions",
        SnsSettings(subscription.topic_arn, aws_settings(moto_endpoint)),
        window_secs=1.0,
        tick_secs=0.1,
    )
    try:
        for offset in range(50):
            notifier.report("map", SourcePosition("sessions-topic", 0, offset), "bad status")
        got = subscription.receive(2, timeout=15)  # no flush_due() call here: real time
        assert [(_body(e)["count"], _body(e)["suppressed"]) for e in got] == [
            (1, False),
            (49, True),
        ]
    finally:
        notifier.close()


async def test_sns_failures_are_logged_and_never_raised(
    moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = f"arn:aws:sns:us-east-1:123456789012:missing-{uuid.uuid4().hex[:8]}"
    unreachable = aws_settings(f"http://127.0.0.1:{free_port()}", max_attempts=1)
    with caplog.at_level(logging.WARNING, logger="orbitstream.detect.notify"):
        for settings in (
            SnsSettings(missing, aws_settings(moto_endpoint)),
            SnsSettings(missing, unreachable),
        ):
            notifier = error_notifier("network", settings)
            assert isinstance(notifier, SnsNotifier)
            for offset in range(100):
                notifier.report("decode", SourcePosition("network-data", 0, offset), "bad")
            notifier.close()
            assert (notifier.sent, notifier.failed, notifier.reported) == (0, 2, 100)
    failures = [r for r in caplog.records if r.getMessage().startswith("Alert delivery failed")]
    assert len(failures) == 4
    assert {r.__dict__["kind"] for r in failures} == {"decode"}
    logged = [r for r in caplog.records if r.getMessage() == "Processing errors reported."]
    assert [r.__dict__["count"] for r in logged] == [1, 99, 1, 99]  # still in the log


def test_the_topic_is_checked_at_start(
    moto_endpoint: str, subscription: Subscription, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic that exists passes; one that does not is a ConfigError naming the setting
    (not an alert failing an hour later); an endpoint that does not answer is only logged
    (an outage at start is no configuration error)."""
    SnsNotifier("network", SnsSettings(subscription.topic_arn, aws_settings(moto_endpoint))).check()
    missing = subscription.topic_arn.rsplit(":", 1)[0] + ":no-such-topic"
    with pytest.raises(ConfigError) as info:
        SnsNotifier("network", SnsSettings(missing, aws_settings(moto_endpoint))).check()
    assert info.value.setting == "AWS_SNS_TOPIC_ARN"
    assert "no-such-topic" in str(info.value) and "does not exist" in str(info.value)
    down = aws_settings(f"http://127.0.0.1:{free_port()}", max_attempts=1)
    with caplog.at_level(logging.WARNING, logger="orbitstream.detect.notify"):
        SnsNotifier("network", SnsSettings(subscription.topic_arn, down)).check()
    assert any("not reachable" in r.getMessage() for r in caplog.records)
