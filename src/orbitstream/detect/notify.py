"""Alerts about processing errors: records a pipeline could not decode, validate or map.

A source reports each bad record with :meth:`ErrorNotifier.report` (cheap, never blocks,
never raises). Per error kind, the first error goes out at once; later ones inside the
window (60 s) are only counted, and when the window ends one summary goes out with their
count and the first offending position (topic, partition, offset), opening the next
window. So there is at most one message per kind per window, never one per bad record;
what is still counted is flushed at :meth:`ErrorNotifier.close`.

Every message is a structured log line (``Processing errors reported.``). With
``AWS_SNS_TOPIC_ARN`` set, :class:`SnsNotifier` also publishes it to that SNS topic from a
background thread: a JSON body, a short subject, and ``pipeline`` / ``kind`` message
attributes for subscription filter policies. A failed publish is logged and counted; it
never reaches the pipeline. Without a topic, :class:`LogNotifier` only logs.

The clock is injectable (``clock=``) so the rate limit is tested without waiting.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orbitstream.aws import AwsSettings
from orbitstream.errors import ConfigError

__all__ = [
    "DEFAULT_WINDOW_SECS",
    "ErrorAlert",
    "ErrorNotifier",
    "ErrorRateLimiter",
    "LogNotifier",
    "SnsNotifier",
    "SnsSettings",
    "SourcePosition",
    "error_notifier",
]

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
DEFAULT_WINDOW_SECS = 60.0
DEFAULT_MAX_KINDS = 100
OVERFLOW_KIND = "other"
MAX_ERROR_CHARS = 1000
_SUBJECT_CHARS = 100
_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e]+")
_TOPIC_ARN = re.compile(r"^arn:[a-z0-9-]+:sns:([a-z0-9-]+):\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")


@dataclass(frozen=True, slots=True)
class SourcePosition:
    """Where a bad record was read: a Kafka topic/partition/offset, or another source's
    name with whatever position it has (an HTTP request id as ``topic``)."""

    topic: str
    partition: int | None = None
    offset: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}

    def __str__(self) -> str:
        text = self.topic
        if self.partition is not None:
            text += f"[{self.partition}]"
        if self.offset is not None:
            text += f"@{self.offset}"
        return text


def _iso(epoch_secs: float) -> str:
    return dt.datetime.fromtimestamp(epoch_secs, dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class ErrorAlert:
    """One message about errors of one kind.

    :param count: errors this message covers (1 for the first, the held-back count for a
        summary).
    :param total: errors of this kind since the notifier started.
    :param first_position: where the first covered error was read.
    :param first_error: that error's text (truncated to 1000 characters).
    :param since: epoch seconds of the first covered error.
    :param until: epoch seconds of the last covered error.
    :param suppressed: ``True`` for a summary of errors the rate limit held back.
    """

    pipeline: str
    kind: str
    count: int
    total: int
    first_position: SourcePosition | None
    first_error: str
    since: float
    until: float
    suppressed: bool
    window_secs: float

    def text(self) -> str:
        """One human sentence."""
        where = f" first at {self.first_position}" if self.first_position else ""
        what = "more " if self.suppressed else ""
        errors = "error" if self.count == 1 else "errors"
        tail = f" ({self.total} in total)" if self.total != self.count else ""
        reason = f": {self.first_error}" if self.first_error else ""
        return f"{self.count} {what}{self.kind} {errors} in pipeline {self.pipeline}{where}{tail}{reason}"

    def subject(self) -> str:
        """An SNS subject: printable ASCII, at most 100 characters."""
        errors = "error" if self.count == 1 else "errors"
        raw = f"OrbitStream {self.pipeline}: {self.count} {self.kind} {errors}"
        return _NOT_PRINTABLE.sub("?", raw)[:_SUBJECT_CHARS]

    def to_dict(self) -> dict[str, object]:
        return {
            "source": "orbitstream",
            "type": "processing_errors",
            "pipeline": self.pipeline,
            "kind": self.kind,
            "count": self.count,
            "total": self.total,
            "suppressed": self.suppressed,
            "first_position": self.first_position.to_dict() if self.first_position else None,
            "first_error": self.first_error,
            "since": _iso(self.since),
            "until": _iso(self.until),
            "window_secs": self.window_secs,
            "text": self.text(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def log_fields(self) -> dict[str, object]:
        pos = self.first_position
        return {
            "pipeline": self.pipeline,
            "kind": self.kind,
            "count": self.count,
            "total": self.total,
            "suppressed": self.suppressed,
            "first_topic": pos.topic if pos else None,
            "first_partition": pos.partition if pos else None,
            "first_offset": pos.offset if pos else None,
            "first_error": self.first_error,
            "window_secs": self.window_secs,
        }


@dataclass(slots=True)
class _Window:
    """Rate-limit state of one kind: a message went out at ``opened_at``; ``held`` errors
    arrived since and wait for the window to end."""

    opened_at: float
    held: int = 0
    first_position: SourcePosition | None = None
    first_error: str = ""
    first_at: float = 0.0
    last_at: float = 0.0

    def hold(self, position: SourcePosition | None, error: str, now: float) -> None:
        if self.held == 0:
            self.first_position = position
            self.first_error = error
            self.first_at = now
        self.held += 1
        self.last_at = now


class ErrorRateLimiter:
    """At most one alert per kind per ``window_secs``, with counts of what was held back.

    Per kind: with no open window, an error is alerted at once and opens a window; inside
    the window errors are held (counted, the first one's position kept); when the window
    ends, held errors go out as one summary that opens the next window, and a window that
    ends quiet closes. Pure bookkeeping: no I/O, no locking (:class:`ErrorNotifier` adds
    both).

    :param pipeline: named in every alert.
    :param window_secs: the minimum time between two alerts of one kind.
    :param clock: epoch seconds now (``time.time``; a fake one in tests).
    :param max_kinds: distinct kinds tracked; errors of further kinds count as ``other``.
    """

    def __init__(
        self,
        pipeline: str,
        *,
        window_secs: float = DEFAULT_WINDOW_SECS,
        clock: Clock = time.time,
        max_kinds: int = DEFAULT_MAX_KINDS,
    ) -> None:
        if not window_secs > 0:
            raise ValueError("window_secs must be positive")
        self.pipeline = pipeline
        self.window_secs = float(window_secs)
        self.clock = clock
        self.max_kinds = max(1, max_kinds)
        self.totals: dict[str, int] = {}  # errors per kind since the start
        self._windows: dict[str, _Window] = {}

    def record(
        self, kind: str, position: SourcePosition | None = None, error: str = ""
    ) -> ErrorAlert | None:
        """Count one error; returns the alert to send now, if any."""
        now = self.clock()
        if kind not in self.totals and len(self.totals) >= self.max_kinds:
            kind = OVERFLOW_KIND
        self.totals[kind] = self.totals.get(kind, 0) + 1
        error = error[:MAX_ERROR_CHARS]
        window = self._windows.get(kind)
        if window is not None and now >= window.opened_at + self.window_secs:
            if window.held:  # ended while nobody looked: its summary goes now, this waits
                alert = self._summary(kind, window, now, exclude_last=True)
                self._windows[kind].hold(position, error, now)
                return alert
            window = None
        if window is None:
            self._windows[kind] = _Window(opened_at=now)
            return ErrorAlert(
                self.pipeline,
                kind,
                1,
                self.totals[kind],
                position,
                error,
                now,
                now,
                False,
                self.window_secs,
            )
        window.hold(position, error, now)
        return None

    def due(self) -> list[ErrorAlert]:
        """Summaries of windows that have ended with errors held back (each opens the next
        window); windows that ended quiet are closed."""
        now = self.clock()
        alerts: list[ErrorAlert] = []
        for kind, window in list(self._windows.items()):
            if now < window.opened_at + self.window_secs:
                continue
            if window.held:
                alerts.append(self._summary(kind, window, now))
            else:
                del self._windows[kind]
        return alerts

    def drain(self) -> list[ErrorAlert]:
        """Summaries of every held-back error, whether or not its window has ended (at
        close: counts are never lost)."""
        now = self.clock()
        alerts = [self._summary(k, w, now) for k, w in list(self._windows.items()) if w.held]
        self._windows.clear()
        return alerts

    def next_deadline(self) -> float | None:
        """When the next window with held-back errors ends (epoch seconds), if any."""
        ends = [w.opened_at + self.window_secs for w in self._windows.values() if w.held]
        return min(ends) if ends else None

    def _summary(
        self, kind: str, window: _Window, now: float, *, exclude_last: bool = False
    ) -> ErrorAlert:
        alert = ErrorAlert(
            self.pipeline,
            kind,
            window.held,
            self.totals[kind] - (1 if exclude_last else 0),
            window.first_position,
            window.first_error,
            window.first_at,
            window.last_at,
            True,
            self.window_secs,
        )
        self._windows[kind] = _Window(opened_at=now)
        return alert


_STOP = object()


class ErrorNotifier:
    """Rate-limited processing-error alerts; subclasses decide where they go.

    :param pipeline: named in every alert.
    :param window_secs: one alert per kind per window (60 s).
    :param clock: epoch seconds now; inject a fake one in tests.
    :param tick_secs: how often the background thread looks for ended windows.
    :param max_kinds: distinct kinds tracked (further ones count as ``other``).
    :param auto_start: start the background thread with the first alert; ``False``
        leaves it to :meth:`start` (tests driving :meth:`flush_due` by hand).
    """

    def __init__(
        self,
        pipeline: str,
        *,
        window_secs: float = DEFAULT_WINDOW_SECS,
        clock: Clock = time.time,
        tick_secs: float = 1.0,
        max_kinds: int = DEFAULT_MAX_KINDS,
        auto_start: bool = True,
    ) -> None:
        self.auto_start = auto_start
        self.limiter = ErrorRateLimiter(
            pipeline, window_secs=window_secs, clock=clock, max_kinds=max_kinds
        )
        self.pipeline = pipeline
        self.tick_secs = tick_secs
        self.sent = 0  # alerts delivered
        self.failed = 0  # alerts whose delivery failed (they are still in the log)
        self.reported = 0  # errors reported
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- the hot path ------------------------------------------------------------
    def report(self, kind: str, position: SourcePosition | None = None, error: str = "") -> None:
        """Count one processing error. Cheap; never blocks on the network, never raises.

        :param kind: the error class (``decode``, ``validate``, ``map``...), a small
            vocabulary: the rate limit is per kind.
        :param position: where the bad record was read.
        :param error: what was wrong with it (the first of each alert is kept).
        """
        try:
            with self._lock:
                self.reported += 1
                alert = self.limiter.record(kind, position, error)
            if alert is not None:
                self._emit(alert)
        except Exception as exc:  # an alerting bug must not stop the pipeline
            logger.warning("Error notifier failed.", extra={"error": repr(exc)})

    def flush_due(self) -> None:
        """Send the summaries of windows that have ended (the background thread calls it
        every ``tick_secs``)."""
        try:
            with self._lock:
                alerts = self.limiter.due()
            for alert in alerts:
                self._emit(alert)
        except Exception as exc:
            logger.warning("Error notifier failed.", extra={"error": repr(exc)})

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """Start the background thread (also started by the first alert)."""
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name=f"notify-{self.pipeline}", daemon=True
                )
                self._thread.start()

    def close(self, timeout_secs: float = 10.0) -> None:
        """Send what is still held back, wait up to ``timeout_secs`` for delivery, stop."""
        with self._lock:
            if self._closed:
                return
            alerts = self.limiter.drain()
        for alert in alerts:
            self._emit(alert)
        if not self._queue.empty():
            self.start()  # alerts wait for delivery
        with self._lock:
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout_secs)
            if thread.is_alive():
                logger.warning(
                    "Error notifier did not finish sending alerts.",
                    extra={"pipeline": self.pipeline, "pending": self._queue.qsize()},
                )
        self._close_transport()

    # -- delivery ----------------------------------------------------------------
    def _emit(self, alert: ErrorAlert) -> None:
        logger.warning("Processing errors reported.", extra=alert.log_fields())
        if not self._has_transport():
            self.sent += 1
        elif not self._closed:
            self._queue.put(alert)
        if self.auto_start:
            self.start()

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.tick_secs)
            except queue.Empty:
                self.flush_due()
                continue
            if item is _STOP:
                return
            if isinstance(item, ErrorAlert):
                self._deliver_safely(item)
            self.flush_due()

    def _deliver_safely(self, alert: ErrorAlert) -> None:
        try:
            self._deliver(alert)
        except Exception as exc:
            self.failed += 1
            logger.warning(
                "Alert delivery failed; it is in the log only.",
                extra={**alert.log_fields(), "error": repr(exc)},
            )
        else:
            self.sent += 1

    def _has_transport(self) -> bool:
        return False

    def _deliver(self, alert: ErrorAlert) -> None:
        """Send one alert beyond the log (runs on the background thread)."""

    def _close_transport(self) -> None:
        return None


class LogNotifier(ErrorNotifier):
    """Alerts as structured log lines only (no topic configured)."""


@dataclass(frozen=True, slots=True)
class SnsSettings:
    """An SNS topic and how to reach it.

    :param topic_arn: ``arn:aws:sns:<region>:<account>:<name>`` (``.fifo`` topics too).
    :param aws: endpoint and credentials; the region defaults to the ARN's.
    :raises ConfigError: the ARN is malformed (``setting`` is ``AWS_SNS_TOPIC_ARN``).
    """

    topic_arn: str
    aws: AwsSettings = field(default_factory=AwsSettings)

    def __post_init__(self) -> None:
        if not _TOPIC_ARN.match(self.topic_arn):
            raise ConfigError(
                "AWS_SNS_TOPIC_ARN must be arn:aws:sns:<region>:<account id>:<topic>, "
                f"got {self.topic_arn!r}",
                setting="AWS_SNS_TOPIC_ARN",
            )

    @property
    def region(self) -> str:
        """The configured region, else the topic's."""
        match = _TOPIC_ARN.match(self.topic_arn)
        assert match is not None
        return self.aws.region or match.group(1)

    @property
    def fifo(self) -> bool:
        return self.topic_arn.endswith(".fifo")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SnsSettings | None:
        """``AWS_SNS_TOPIC_ARN`` plus the standard AWS variables; ``None`` without a topic."""
        arn = (environ.get("AWS_SNS_TOPIC_ARN") or "").strip()
        if not arn:
            return None
        return cls(topic_arn=arn, aws=AwsSettings.from_env(environ, "sns"))


#: SNS error codes meaning the credentials themselves are wrong (not a missing grant).
_SNS_CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
        "ExpiredToken",
        "InvalidAccessKeyId",
    }
)


class SnsNotifier(ErrorNotifier):
    """Alerts as log lines and SNS messages (published from a background thread).

    :param settings: the topic and how to reach it.
    :raises ConfigError: boto3 is not installed.
    """

    def __init__(self, pipeline: str, settings: SnsSettings, **kwargs: Any) -> None:
        super().__init__(pipeline, **kwargs)
        self.settings = settings
        self._client: Any = settings.aws.client("sns", region=settings.region)

    def _has_transport(self) -> bool:
        return True

    def check(self) -> None:
        """Look the topic up once at start (``GetTopicAttributes``, one attempt with short
        timeouts, on a client of its own, closed after): a topic
        that does not exist, or credentials the service refuses, would otherwise be
        noticed only when the first alert fails to go out.

        Not being allowed to read the topic's attributes is only logged: a publisher
        granted ``sns:Publish`` alone may still publish. An endpoint that does not answer
        is logged too (an outage at start is not a configuration error; alerts retry).

        :raises ConfigError: the topic does not exist, or the credentials are invalid.
        """
        from botocore import exceptions as bce

        arn = self.settings.topic_arn
        client: Any = self.settings.aws.client("sns", region=self.settings.region, quick=True)
        try:
            client.get_topic_attributes(TopicArn=arn)
        except bce.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            detail = f"SNS {code}: {error.get('Message', '') or exc}"
            if code in ("NotFound", "NotFoundException"):
                raise ConfigError(
                    f"AWS_SNS_TOPIC_ARN: topic {arn} does not exist ({detail})",
                    setting="AWS_SNS_TOPIC_ARN",
                ) from None
            if code in _SNS_CREDENTIAL_CODES:
                raise ConfigError(
                    f"AWS credentials refused by SNS for topic {arn} ({detail}); check "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION",
                    setting="AWS_SNS_TOPIC_ARN",
                ) from None
            logger.warning(
                "SNS topic not verified at start.",
                extra={"component": "sns", "topic": arn, "error": detail},
            )
        except (bce.BotoCoreError, OSError) as exc:
            if isinstance(exc, bce.NoCredentialsError | bce.NoRegionError):
                raise ConfigError(
                    f"SNS alerts to {arn}: {exc}; check AWS_REGION and the AWS credentials "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)",
                    setting="AWS_SNS_TOPIC_ARN",
                ) from None
            logger.warning(
                "SNS endpoint not reachable at start; alerts will retry.",
                extra={"component": "sns", "topic": arn, "error": f"{type(exc).__name__}: {exc}"},
            )
        finally:
            client.close()

    def _deliver(self, alert: ErrorAlert) -> None:
        body = alert.to_json()
        extra: dict[str, Any] = {}
        if self.settings.fifo:
            extra["MessageGroupId"] = alert.kind[:128] or "errors"
            extra["MessageDeduplicationId"] = hashlib.sha256(body.encode()).hexdigest()[:64]
        self._client.publish(
            TopicArn=self.settings.topic_arn,
            Subject=alert.subject(),
            Message=body,
            MessageAttributes={
                "pipeline": {"DataType": "String", "StringValue": alert.pipeline or "-"},
                "kind": {"DataType": "String", "StringValue": alert.kind or "-"},
            },
            **extra,
        )

    def _close_transport(self) -> None:
        self._client.close()


def error_notifier(pipeline: str, sns: SnsSettings | None, **kwargs: Any) -> ErrorNotifier:
    """An :class:`SnsNotifier` when a topic is configured, else a :class:`LogNotifier`.

    :param kwargs: ``window_secs``, ``clock``, ``tick_secs``, ``max_kinds``.
    """
    if sns is None:
        return LogNotifier(pipeline, **kwargs)
    return SnsNotifier(pipeline, sns, **kwargs)
