"""Processing-error alerts: the rate limit (driven by a fake clock), message contents, the
log-only notifier, and settings. SNS delivery itself is tested against a real moto server
in tests/integration/aws/."""

from __future__ import annotations

import itertools
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orbitstream.detect.notify import (
    ErrorAlert,
    ErrorRateLimiter,
    LogNotifier,
    SnsSettings,
    SourcePosition,
    error_notifier,
)
from orbitstream.errors import ConfigError

START = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, secs: float) -> None:
        self.now += secs


def pos(offset: int, partition: int = 0) -> SourcePosition:
    return SourcePosition("network-data", partition, offset)


def test_first_error_alerts_at_once_then_one_summary_per_window() -> None:
    clock = FakeClock()
    limiter = ErrorRateLimiter("network", clock=clock)
    first = limiter.record("decode", pos(100), "bad JSON")
    assert first is not None
    assert (first.kind, first.count, first.total, first.suppressed) == ("decode", 1, 1, False)
    assert first.first_position == pos(100) and first.first_error == "bad JSON"
    for k in range(999):
        clock.advance(0.05)
        assert limiter.record("decode", pos(101 + k), f"bad {k}") is None
    assert limiter.due() == []  # 49.95 s: the window is still open
    clock.advance(10.1)
    (summary,) = limiter.due()
    assert (summary.count, summary.total, summary.suppressed) == (999, 1000, True)
    assert summary.first_position == pos(101) and summary.first_error == "bad 0"
    assert summary.since == pytest.approx(START + 0.05)
    assert summary.until == pytest.approx(START + 49.95)
    assert limiter.due() == []  # sent once


def test_a_quiet_window_closes_and_the_next_error_alerts_at_once() -> None:
    clock = FakeClock()
    limiter = ErrorRateLimiter("network", clock=clock)
    assert limiter.record("decode", pos(1)) is not None
    clock.advance(60)
    assert limiter.due() == []
    clock.advance(5)
    again = limiter.record("decode", pos(2))
    assert again is not None and not again.suppressed and again.total == 2


def test_summaries_keep_coming_once_per_window_while_errors_continue() -> None:
    clock = FakeClock()
    limiter = ErrorRateLimiter("network", clock=clock)
    sent: list[tuple[float, ErrorAlert]] = []
    for second in range(0, 300):
        alert = limiter.record("map", pos(second), "no interface name")
        if alert:
            sent.append((clock.now, alert))
        sent.extend((clock.now, a) for a in limiter.due())
        clock.advance(1)
    times = [t - START for t, _ in sent]
    assert times == [0, 60, 120, 180, 240]
    assert [a.count for _, a in sent] == [1, 59, 60, 60, 60]
    # The error that finds its window ended is held in the window its summary opens.
    assert [a.first_position for _, a in sent] == [pos(0), pos(1), pos(60), pos(120), pos(180)]
    rest = limiter.drain()
    assert [(a.count, a.first_position) for a in rest] == [(60, pos(240))]
    assert sum(a.count for _, a in sent) + 60 == 300


def test_kinds_are_limited_independently() -> None:
    clock = FakeClock()
    limiter = ErrorRateLimiter("sessions", clock=clock)
    assert limiter.record("decode", pos(1)) is not None
    assert limiter.record("validate", pos(2)) is not None
    assert limiter.record("decode", pos(3)) is None
    assert limiter.record("validate", pos(4)) is None
    assert limiter.record("validate", pos(5)) is None
    clock.advance(60)
    got = {a.kind: a.count for a in limiter.due()}
    assert got == {"decode": 1, "validate": 2}


def test_an_ended_window_is_summarized_by_the_next_error_if_nobody_flushed() -> None:
    clock = FakeClock()
    limiter = ErrorRateLimiter("network", clock=clock)
    limiter.record("decode", pos(1))
    limiter.record("decode", pos(2))
    limiter.record("decode", pos(3))
    clock.advance(75)
    summary = limiter.record("decode", pos(4))
    assert summary is not None and summary.suppressed
    assert (summary.count, summary.total, summary.first_position) == (2, 3, pos(2))
    clock.advance(30)  # the new error waits for the window the summary opened
    assert limiter.due() == []
    clock.advance(30)
    (held,) = limiter.due()
    assert (held.count, held.total, held.first_position) == (1, 4, pos(4))


def test_drain_sends_what_is_held_even_mid_window() -> None:
    clock = FakeClock()
    limiter = ErrorRateLimiter("network", clock=clock)
    limiter.record("decode", pos(1))
    limiter.record("decode", pos(2))
    limiter.record("validate", pos(3))
    clock.advance(5)
    drained = limiter.drain()
    assert [(a.kind, a.count) for a in drained] == [("decode", 1)]
    assert limiter.drain() == []
    assert limiter.next_deadline() is None


def test_too_many_kinds_fold_into_other() -> None:
    limiter = ErrorRateLimiter("network", clock=FakeClock(), max_kinds=3)
    kinds = [a.kind for k in range(6) if (a := limiter.record(f"k{k}", None))]
    assert kinds == ["k0", "k1", "k2", "other"]
    assert limiter.totals == {"k0": 1, "k1": 1, "k2": 1, "other": 3}


def test_long_errors_are_truncated() -> None:
    limiter = ErrorRateLimiter("network", clock=FakeClock())
    alert = limiter.record("decode", None, "x" * 5000)
    assert alert is not None and len(alert.first_error) == 1000


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["decode", "validate", "map"]),
            st.floats(min_value=0, max_value=200, allow_nan=False),
            st.booleans(),
        ),
        max_size=200,
    )
)
def test_rate_limit_holds_and_no_error_is_lost(
    events: list[tuple[str, float, bool]],
) -> None:
    """Any interleaving of errors and flushes: per kind, alerts are at least one window
    apart (except the final drain), and their counts add up to every reported error."""
    clock = FakeClock()
    limiter = ErrorRateLimiter("p", clock=clock, window_secs=60)
    sent: list[tuple[float, ErrorAlert]] = []
    for kind, gap, flush in events:
        clock.advance(gap)
        alert = limiter.record(kind, None)
        if alert:
            sent.append((clock.now, alert))
        if flush:
            sent.extend((clock.now, a) for a in limiter.due())
    final = limiter.drain()
    for kind in ("decode", "validate", "map"):
        times = [t for t, a in sent if a.kind == kind]
        assert all(b - a >= 60 for a, b in itertools.pairwise(times))
        reported = sum(1 for k, _, _ in events if k == kind)
        counted = sum(a.count for _, a in sent if a.kind == kind)
        counted += sum(a.count for a in final if a.kind == kind)
        assert counted == reported
        if reported:
            last = max(
                [a for _, a in sent if a.kind == kind] + [a for a in final if a.kind == kind],
                key=lambda a: a.total,
            )
            assert last.total == reported


def test_alert_message_contents() -> None:
    alert = ErrorAlert(
        "network", "decode", 42, 43, pos(7, 3), "bad JSON", START, START + 59, True, 60.0
    )
    doc = json.loads(alert.to_json())
    assert doc["kind"] == "decode" and doc["count"] == 42 and doc["total"] == 43
    assert doc["suppressed"] is True and doc["pipeline"] == "network"
    assert doc["first_position"] == {"topic": "network-data", "partition": 3, "offset": 7}
    assert doc["since"] == "2027-01-15T08:00:00.000+00:00"
    assert "42 more decode errors" in doc["text"] and "network-data[3]@7" in doc["text"]
    assert alert.subject() == "OrbitStream network: 42 decode errors"
    odd = ErrorAlert("n\u00e9t\nwork", "k" * 200, 1, 1, None, "", START, START, False, 60.0)
    subject = odd.subject()
    assert len(subject) <= 100 and subject.isascii() and "\n" not in subject


def test_log_notifier_logs_one_line_per_alert_not_per_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    notifier = LogNotifier("network", clock=clock, auto_start=False)
    with caplog.at_level(logging.WARNING, logger="orbitstream.detect.notify"):
        for k in range(500):
            notifier.report("decode", pos(k, 2), "bad JSON")
        notifier.flush_due()
        clock.advance(60)
        notifier.flush_due()
        notifier.report("decode", pos(900, 2), "bad JSON")
        notifier.close()
    lines = [r for r in caplog.records if r.getMessage() == "Processing errors reported."]
    assert [(r.__dict__["count"], r.__dict__["suppressed"]) for r in lines] == [
        (1, False),
        (499, True),
        (1, True),
    ]
    assert lines[1].__dict__["first_offset"] == 1 and lines[1].__dict__["first_partition"] == 2
    assert lines[0].__dict__["first_topic"] == "network-data"
    assert notifier.reported == 501 and notifier.sent == 3


def test_report_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock is gone")

    notifier = LogNotifier("network", clock=broken_clock, auto_start=False)
    with caplog.at_level(logging.WARNING, logger="orbitstream.detect.notify"):
        notifier.report("decode", pos(1))
        notifier.flush_due()
    assert [r.getMessage() for r in caplog.records] == ["Error notifier failed."] * 2


def test_sns_settings() -> None:
    s = SnsSettings.from_env(
        {"AWS_SNS_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:orbitstream-alerts"}
    )
    assert s is not None and s.region == "eu-west-1" and not s.fifo
    s2 = SnsSettings.from_env(
        {
            "AWS_SNS_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:alerts.fifo",
            "AWS_REGION": "us-east-2",
            "AWS_ENDPOINT_URL_SNS": "http://127.0.0.1:4566",
        }
    )
    assert s2 is not None and s2.region == "us-east-2" and s2.fifo
    assert s2.aws.endpoint_url == "http://127.0.0.1:4566"
    assert SnsSettings.from_env({"AWS_SNS_TOPIC_ARN": " "}) is None
    for bad in ("alerts", "arn:aws:sqs:us-east-1:123456789012:q", "arn:aws:sns:us-east-1:12:t"):
        with pytest.raises(ConfigError) as info:
            SnsSettings.from_env({"AWS_SNS_TOPIC_ARN": bad})
        assert info.value.setting == "AWS_SNS_TOPIC_ARN"


def test_without_a_topic_the_notifier_only_logs() -> None:
    notifier = error_notifier("network", None, auto_start=False)
    assert isinstance(notifier, LogNotifier)
    notifier.close()
