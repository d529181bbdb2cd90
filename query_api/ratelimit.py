"""Per-key request rate limiting: a token bucket per API key (pure; the clock is injected).

Every authenticated request of a tenant key takes one token from that key's bucket, on
every protocol (REST, Connect, gRPC). A bucket holds at most ``burst`` tokens and refills
at ``rate`` tokens per second; a request finding it empty is refused with 429 and told
how long to wait. The admin token is the operator's and is not limited.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class RateLimited(Exception):
    """The bucket is empty.

    Attributes:
        retry_after: seconds until one token is available again.
    """

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit exceeded; retry in {retry_after:.3f} s")
        self.retry_after = retry_after


class RateLimiter:
    """Token buckets keyed by API key id.

    Args:
        rate: tokens added per second (> 0).
        burst: bucket capacity (>= 1): requests allowed back to back after a pause.
        clock: monotonic seconds (injected in tests).
    """

    def __init__(self, rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> None:
        """Spend one token of ``key``'s bucket.

        Raises:
            RateLimited: when the bucket is empty (nothing is spent).
        """
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            raise RateLimited((1.0 - tokens) / self.rate)
        self._buckets[key] = (tokens - 1.0, now)


def retry_after_header(exc: RateLimited) -> str:
    """``Retry-After`` value for ``exc``: whole seconds, at least 1."""
    return str(max(1, math.ceil(exc.retry_after)))
