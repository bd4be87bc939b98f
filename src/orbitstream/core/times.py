"""The time window a record's timestamp must fall in to be accepted.

Two limits apply together:

- what every configured store can hold. Timestamps travel as int64 epoch nanoseconds
  (Arrow ``timestamp[ns]``, ClickHouse ``DateTime64(9)``: 1677-09-21 … 2262-04-11; measured
  in chDB: every int64 value round-trips). PostgreSQL ``timestamptz`` holds more. A sink
  may declare a narrower range (``time_range_ns``);
- the accepted window around the receive time: ``max_ahead`` (clock skew) and
  ``max_age`` (late data; by default the retention, since older rows would be dropped
  by the store's TTL at once).

A timestamp outside is refused at the door (HTTP 422 naming the field) instead of
failing the batch it would have joined.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["INT64_NS_RANGE", "TimeWindow", "describe_ns"]

INT64_NS_RANGE: tuple[int, int] = (-(2**63) + 1, 2**63 - 1)
_NS = 1_000_000_000


def describe_ns(ns: int) -> str:
    """``ns`` as an RFC 3339 UTC time (or the raw number when out of datetime's range)."""
    import datetime as dt

    try:
        moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    except OverflowError:
        return f"{ns} ns"
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class TimeWindow:
    """Accepted timestamps: ``[now - max_age, now + max_ahead]`` within ``[min_ns, max_ns]``.

    :param max_ahead_ns: ``None``: no limit ahead (only the stores' range).
    :param max_age_ns: ``None``: no limit behind.
    """

    max_ahead_ns: int | None = None
    max_age_ns: int | None = None
    min_ns: int = INT64_NS_RANGE[0]
    max_ns: int = INT64_NS_RANGE[1]

    @classmethod
    def of(
        cls,
        max_ahead_secs: float | None,
        max_age_secs: float | None,
        store_ranges: Iterable[tuple[int, int]] = (),
    ) -> TimeWindow:
        lo, hi = INT64_NS_RANGE
        for s_lo, s_hi in store_ranges:
            lo, hi = max(lo, s_lo), min(hi, s_hi)
        return cls(
            None if max_ahead_secs is None else int(max_ahead_secs * _NS),
            None if max_age_secs is None else int(max_age_secs * _NS),
            lo,
            hi,
        )

    def bounds(self, now_ns: int) -> tuple[int, int]:
        """``(lowest, highest)`` accepted epoch nanoseconds at ``now_ns``."""
        lo, hi = self.min_ns, self.max_ns
        if self.max_age_ns is not None:
            lo = max(lo, now_ns - self.max_age_ns)
        if self.max_ahead_ns is not None:
            hi = min(hi, now_ns + self.max_ahead_ns)
        return lo, hi

    def problem(self, t_ns: int, now_ns: int) -> str | None:
        """Why ``t_ns`` is refused at ``now_ns`` (``None`` when it is accepted)."""
        lo, hi = self.bounds(now_ns)
        if t_ns < lo:
            if lo == self.min_ns:
                return f"timestamp {describe_ns(t_ns)} is before {describe_ns(lo)}, the earliest the stores can hold"
            return (
                f"timestamp {describe_ns(t_ns)} is older than the accepted window "
                f"(ORBITSTREAM_TIMESTAMP_MAX_AGE): earliest accepted now is {describe_ns(lo)}"
            )
        if t_ns > hi:
            if hi == self.max_ns:
                return f"timestamp {describe_ns(t_ns)} is after {describe_ns(hi)}, the latest the stores can hold"
            return (
                f"timestamp {describe_ns(t_ns)} is ahead of the accepted window "
                f"(ORBITSTREAM_TIMESTAMP_MAX_AHEAD): latest accepted now is {describe_ns(hi)}"
            )
        return None
