"""Admission for heavy reads (exports, stats): a global and a per-key concurrency limit.

Ingestion comes first: readers beyond the limits wait briefly, then get ``429`` with
``Retry-After`` instead of taking PostgreSQL's cores and connections from the pipeline.
No I/O here; the clock is asyncio's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from query_api.errors import ApiError


class Admission:
    """Counts heavy reads in flight, overall and per key.

    Args:
        limit: most heavy reads at once in this process (0 = no limit).
        per_key: most at once per API key (0 = no limit).
        wait_s: how long a request beyond ``limit`` waits for a slot before its 429.
    """

    def __init__(self, limit: int, per_key: int, wait_s: float = 1.0) -> None:
        self.limit = limit
        self.per_key = per_key
        self.wait_s = wait_s
        self.running = 0
        self._by_key: dict[str, int] = {}
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None

    def _refuse(self, why: str) -> ApiError:
        return ApiError(429, "rate_limited", f"{why}; retry later",
                        headers={"Retry-After": str(max(1, round(self.wait_s * 2)))})  # fmt: skip

    @contextlib.asynccontextmanager
    async def admit(self, key: str, what: str) -> AsyncIterator[None]:
        """Hold a slot for one heavy read by ``key`` while the block runs.

        Raises:
            ApiError: 429 ``rate_limited`` (with ``Retry-After``) beyond either limit.
        """
        if self.per_key and self._by_key.get(key, 0) >= self.per_key:
            raise self._refuse(f"at most {self.per_key} {what} at once per key")
        # The key's place is taken before waiting for a global slot, so two requests of
        # one key cannot both pass the per-key check while they wait.
        self._by_key[key] = self._by_key.get(key, 0) + 1
        try:
            if self._slots is not None:
                try:
                    await asyncio.wait_for(self._slots.acquire(), self.wait_s)
                except TimeoutError:
                    raise self._refuse(f"at most {self.limit} {what} at once") from None
            self.running += 1
            try:
                yield
            finally:
                self.running -= 1
                if self._slots is not None:
                    self._slots.release()
        finally:
            left = self._by_key[key] - 1
            if left:
                self._by_key[key] = left
            else:
                del self._by_key[key]
