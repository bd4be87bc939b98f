"""Retry policy: exponential backoff with full jitter, capped."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``delay(n)`` is uniform in ``[base * 2**(n-1) / 2, base * 2**(n-1)]``, capped.

    :param max_attempts: ``None`` retries forever (nothing acknowledged is dropped).
    """

    base_secs: float = 0.1
    max_secs: float = 30.0
    max_attempts: int | None = None

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.max_secs, self.base_secs * float(1 << max(0, min(attempt - 1, 60))))
        r = float((rng or random).random())
        return ceiling / 2 + r * ceiling / 2

    def exhausted(self, attempt: int) -> bool:
        return self.max_attempts is not None and attempt >= self.max_attempts
