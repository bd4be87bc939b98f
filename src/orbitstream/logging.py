"""Structured logging: one JSON object per line (or key=value text for a terminal).

Messages are constant sentences; data goes in ``extra={...}`` fields.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import Any

__all__ = ["KafkaClientLog", "configure_logging", "kafka_client_log"]

_RESERVED = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)
_SECRET_HINTS = ("password", "secret", "token", "authorization")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _RESERVED or key.startswith("_"):
            continue
        if any(h in key.lower() for h in _SECRET_HINTS) and not isinstance(
            value, int | float | None
        ):
            value = "***"  # a secret is text: counts and durations (token_requests) show
        out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """Render a record as a single JSON line with its extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_fields(record))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable ``time level message key=value`` lines."""

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = (
            f"{time.strftime('%H:%M:%S', time.localtime(record.created))} "
            f"{record.levelname.lower():7} {record.getMessage()} {fields}"
        ).rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Install one stderr handler on the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_orbitstream", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler._orbitstream = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)


# Libraries that log a line without its detail ("Unexpected Http Driver Exception") just
# before raising the error our sinks classify and log with the detail themselves.
_QUIET = ("clickhouse_connect.driver._backend", "psycopg.pool")


class KafkaClientLog:
    """librdkafka's own log lines as structured records, rate-limited.

    Given to every confluent-kafka client as its ``logger`` (librdkafka then logs
    through ``poll()`` instead of writing raw ``%3|…|FAIL|…`` lines to stderr). An
    unreachable broker makes librdkafka repeat the same line every few tens of
    milliseconds: the first line of each (client, facility, level) is logged, then at
    most one per ``window_secs`` with the number of lines left out since
    (``suppressed``)."""

    def __init__(
        self, window_secs: float = 60.0, *, name: str = "orbitstream.kafka.client"
    ) -> None:
        self.window_secs = window_secs
        self.logger = logging.getLogger(name)
        self._seen: dict[tuple[int, str, str], list[float]] = {}  # key -> [logged at, left out]
        self._lock = threading.Lock()

    def log(self, level: int, fmt: str, *args: Any) -> None:
        """What confluent-kafka calls: ``log(level, "%s [%s] %s", facility, client, text)``."""
        facility, client, text = (*(str(a) for a in args), "", "", "")[:3]
        key = (level, client, facility)
        now = time.monotonic()
        with self._lock:
            entry = self._seen.get(key)
            if entry is not None and now - entry[0] < self.window_secs:
                entry[1] += 1
                return
            suppressed = int(entry[1]) if entry is not None else 0
            if len(self._seen) >= 1024:
                self._seen.clear()
            self._seen[key] = [now, 0]
        self.logger.log(
            level,
            "Kafka client reports.",
            extra={
                "component": "kafka",
                "client": client,
                "facility": facility,
                "detail": text,
                "suppressed": suppressed,
            },
        )


_KAFKA_LOG = KafkaClientLog()


def kafka_client_log(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with :class:`KafkaClientLog` as its ``logger`` (a user's own stands)."""
    out = dict(config)
    out.setdefault("logger", _KAFKA_LOG)
    return out
