"""Publish simulated messages to Kafka: an idempotent, keyed producer with rate and duration.

The generators (``simulate/network.py``, ``simulate/sessions.py``) are pure and yield
:class:`SimMessage`\\ s; :func:`publish` sends them with confluent-kafka
(``enable.idempotence``, ``acks=all``), keyed, paced to ``rate`` messages/s when given,
and waits for every delivery report before returning.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from orbitstream.errors import ConfigError, SourceError
from orbitstream.logging import kafka_client_log

__all__ = [
    "NotAhead",
    "PublishStats",
    "SimMessage",
    "TopicOutcome",
    "ensure_topic",
    "ensure_topics",
    "publish",
]

logger = logging.getLogger(__name__)


class NotAhead:
    """Keeps simulated time from running ahead of the wall clock.

    A generator sends faster than its simulated schedule (``--rate`` above the natural
    rate, or no rate at all) compresses time: its timestamps would soon lie hours in the
    future, and a later run starting at "now" would send samples older than those
    already stored. ``cap(t)`` is ``t`` while the schedule is behind the clock, else the
    clock; always at least 1 µs after the previous one (the stores keep microseconds).

    :param clock: epoch nanoseconds now (``time.time_ns``); ``None`` caps nothing.
    """

    __slots__ = ("_clock", "_last")

    def __init__(self, clock: Callable[[], int] | None = time.time_ns) -> None:
        self._clock = clock
        self._last = 0

    def __call__(self, t_ns: int) -> int:
        if self._clock is None:
            return t_ns
        t = min(t_ns, self._clock())
        if t < self._last + 1000:
            t = self._last + 1000
        self._last = t
        return t


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One simulated message.

    :param key: the Kafka key (node name, session id) so an entity stays on one partition.
    :param value: the message bytes.
    :param timestamp_ns: simulated time of the message (epoch ns).
    :param malformed: the defect injected on purpose (``None`` for a good message).
    """

    key: bytes
    value: bytes
    timestamp_ns: int
    malformed: str | None = None


@dataclass(frozen=True, slots=True)
class PublishStats:
    """What :func:`publish` did."""

    sent: int
    failed: int
    malformed: int
    duration_secs: float

    @property
    def rate(self) -> float:
        return self.sent / self.duration_secs if self.duration_secs > 0 else 0.0


def _producer_config(bootstrap: str, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "queue.buffering.max.messages": 500_000,
    }
    config.update(extra or {})
    return config


def ensure_topic(
    bootstrap: str, topic: str, partitions: int = 1, *, timeout_secs: float = 15.0
) -> bool:
    """Create ``topic`` unless it exists; returns whether it was created."""
    (outcome,) = ensure_topics(bootstrap, (topic,), partitions, timeout_secs=timeout_secs).values()
    if outcome.error is not None:
        raise outcome.error
    return outcome.created


class TopicOutcome(NamedTuple):
    """What :func:`ensure_topics` did for one topic.

    :param created: the topic was created (``False``: it existed, or an error).
    :param error: what kept it from being created, ``None`` when it exists now.
    :param answered: the broker answered (``False``: no answer before the deadline, or the
        wait was stopped).
    """

    created: bool
    error: SourceError | None = None
    answered: bool = True


def ensure_topics(
    bootstrap: str,
    topics: Sequence[str],
    partitions: int = 1,
    *,
    timeout_secs: float = 15.0,
    stop: threading.Event | None = None,
) -> dict[str, TopicOutcome]:
    """Create each of ``topics`` unless it exists, in one request with one deadline:
    per topic, a :class:`TopicOutcome`. ``stop`` set ends
    the wait early (a service stopping while no broker answers)."""
    try:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "simulating to Kafka needs confluent-kafka: pip install 'orbitstream[kafka]'",
            setting="KAFKA_BOOTSTRAP",
        ) from exc
    admin = AdminClient(kafka_client_log({"bootstrap.servers": bootstrap}))
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in dict.fromkeys(topics)])
    deadline = time.monotonic() + timeout_secs
    # polled, so the client's log lines are delivered
    while not all(f.done() for f in futures.values()):
        if time.monotonic() >= deadline or (stop is not None and stop.is_set()):
            break
        admin.poll(0.1)
    out: dict[str, TopicOutcome] = {}
    for topic, future in futures.items():
        if not future.done():
            future.cancel()
            why = "stopped" if stop is not None and stop.is_set() else f"within {timeout_secs:g} s"
            out[topic] = TopicOutcome(
                False,
                SourceError(
                    f"could not create topic {topic}: no answer from the Kafka broker at {bootstrap} "
                    f"{why} (KAFKA_BOOTSTRAP_SERVERS)"
                ),
                answered=False,
            )
            continue
        try:
            future.result(0)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                out[topic] = TopicOutcome(False)
            else:
                out[topic] = TopicOutcome(
                    False, SourceError(f"could not create topic {topic}: {exc}")
                )
            continue
        out[topic] = TopicOutcome(True)
    return out


def publish(
    messages: Iterable[SimMessage],
    *,
    bootstrap: str,
    topic: str,
    rate: float | None = None,
    duration_secs: float | None = None,
    max_messages: int | None = None,
    producer_config: Mapping[str, Any] | None = None,
    flush_timeout_secs: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> PublishStats:
    """Send ``messages`` to ``topic`` until they end, ``max_messages`` or ``duration_secs``.

    :param rate: messages per second (``None``: as fast as the producer takes them).
    :param producer_config: extra librdkafka settings (override the defaults).
    :raises SourceError: delivery reports were still missing after ``flush_timeout_secs``.
    """
    try:
        from confluent_kafka import Producer
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "simulating to Kafka needs confluent-kafka: pip install 'orbitstream[kafka]'",
            setting="KAFKA_BOOTSTRAP",
        ) from exc
    producer = Producer(kafka_client_log(_producer_config(bootstrap, producer_config)))
    failed = 0
    errors: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal failed
        if err is not None:
            failed += 1
            if len(errors) < 5:
                errors.append(str(err))

    sent = 0
    malformed = 0
    started = clock()
    deadline = None if duration_secs is None else started + duration_secs
    for msg in messages:
        if max_messages is not None and sent >= max_messages:
            break
        now = clock()
        if deadline is not None and now >= deadline:
            break
        if rate is not None and rate > 0:
            due = started + sent / rate
            if due > now:
                producer.poll(0)
                sleep(due - now)
        while True:
            try:
                producer.produce(topic, value=msg.value, key=msg.key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.05)
        sent += 1
        if msg.malformed is not None:
            malformed += 1
        if sent % 1000 == 0:
            producer.poll(0)
    left = producer.flush(flush_timeout_secs)
    duration = clock() - started
    if left:
        raise SourceError(f"{left} messages to {topic} not confirmed after {flush_timeout_secs} s")
    stats = PublishStats(sent - failed, failed, malformed, duration)
    logger.info(
        "Simulated messages published.",
        extra={
            "topic": topic,
            "records": stats.sent,
            "failed": failed,
            "malformed": malformed,
            "duration_ms": round(duration * 1000, 1),
            "errors": errors,
        },
    )
    return stats
