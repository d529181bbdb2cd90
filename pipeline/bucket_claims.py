"""PostgreSQL adapter of :class:`~pipeline.sinks.BucketClaims`: session-level advisory
locks, one per tenant bucket, taken with ``pg_try_advisory_lock`` (never waiting) on one
connection the worker keeps for them.

Why a session lock on its own connection, not a transaction lock in the flush: the bucket
must be claimed *before* the worker takes its events (a worker that took events it then
could not flush prepared, deduplicated and offered them twice: measured with 4 workers,
~10,000 skipped tenants per worker and 300,000 events, the worker's CPU per event 1.6x
that of one worker). A dead worker's connection closes and PostgreSQL drops its locks; a
pooled connection handed back is reset (``pg_advisory_unlock_all``) by asyncpg.

Locks are ``(CLASS_ID, bucket)`` pairs, a key space of their own (the service's other
advisory locks use single ``bigint`` keys). Each claiming worker also holds
``(CLASS_ID, PRESENCE)`` shared, so a claim learns how many workers claim: a worker
alone flushes its oldest events first (``pipeline.ordering``: cheaper per event), and
turns to bucket slices once another worker appears. Session locks count: claiming a bucket this
session already holds succeeds and needs one more release, which is what lets a flush
release its claim after the same worker's next flush of that bucket claimed it again.

Turns: a worker with nothing to flush (``wait``: no flush of its own running, and this
claim got nothing) *waits for* the buckets it tried: it holds ``(WAIT_CLASS_ID, bucket)``
shared until it claims the bucket. A claim passes the buckets
whose turn this worker has had (``yield_to``: it kept them flushing for a while, see
``pipeline.worker``); of those, the ones another session waits for are skipped, so they
come free at the end of the running flush and the waiting worker takes them. Without
turns, a worker that keeps a bucket busy (one hot tenant, a backlog) claims it again
before every release, and another worker's events of that bucket wait until the first
one runs dry (measured: with one hot tenant and two workers, the second stored nothing
until the end of the drain, its ~19,000 events held meanwhile). Only an idle worker
waits (a worker with a flush running has work; measured on 2 cores, waits by busy
workers too cost 4 workers 10% more worker CPU per event than none, idle-only waits 4%:
the workers' shares of the events even out, 50/50 with 2 instead of 80/20, so each
worker's flushes get smaller).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

CLASS_ID = 0x61756462  # "audb": the first key of every bucket claim
# How long the worker waits for a pool connection for its claims before flushing without.
ACQUIRE_TIMEOUT_S = 0.5
# After a failure, flush without claims this long before trying again.
RETRY_AFTER_S = 5.0

# Not a bucket: every claiming worker holds it shared while it has its connection, so
# the claim query can say how many workers claim (a worker alone flushes oldest-first).
PRESENCE = 1 << 20
WAIT_CLASS_ID = 0x61756477  # "audw": a worker waits for the bucket (shared)

# The buckets in the order given, each tried at most once and at most $2 claimed (no
# ORDER BY: the locks are taken while scanning, LIMIT stops it). CASE keeps the order of
# evaluation: a bucket to yield is never locked (a lock taken on a row that a later
# condition dropped would stay held).
_CLAIM = f"""
SELECT array(SELECT b FROM unnest($1::int4[]) AS b
             WHERE CASE WHEN b = ANY($3::int4[]) AND b = ANY(ARRAY(
                            SELECT objid::int4 FROM pg_locks
                            WHERE locktype = 'advisory' AND granted
                              AND classid = {WAIT_CLASS_ID} AND objsubid = 2
                              AND pid <> pg_backend_pid()))
                        THEN false
                        ELSE pg_try_advisory_lock({CLASS_ID}, b) END
             LIMIT $2) AS claimed,
       (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
          AND classid = {CLASS_ID} AND objid = {PRESENCE} AND objsubid = 2) AS workers
"""
# Start waiting for $1, stop waiting for $2 (shared locks never conflict with each other).
_WAITS = f"""
SELECT (SELECT count(*) FROM unnest($1::int4[]) AS b
          WHERE pg_try_advisory_lock_shared({WAIT_CLASS_ID}, b)),
       (SELECT count(*) FROM unnest($2::int4[]) AS b
          WHERE pg_advisory_unlock_shared({WAIT_CLASS_ID}, b))
"""
_PRESENT = f"SELECT pg_advisory_lock_shared({CLASS_ID}, {PRESENCE})"
_RELEASE = f"SELECT count(*) FROM unnest($1::int4[]) AS b WHERE pg_advisory_unlock({CLASS_ID}, b)"


class PgBucketClaims:
    """Bucket claims on one connection of ``pool``, held from the first claim until
    :meth:`close` (or a failure: then dropped, and claims pause :data:`RETRY_AFTER_S`).

    Args:
        pool: the pipeline's pool (one of its connections is kept).
        clock: monotonic seconds (for the retry pause).
    """

    def __init__(self, pool: asyncpg.Pool, clock: Any = None) -> None:
        self._pool = pool
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._paused_until = 0.0
        self._clock = clock or time.monotonic
        self.peers = 0  # workers claiming (this one included), as of the last claim
        self.waiting: set[int] = set()  # buckets this session waits for (see the module)

    async def claim(self, buckets: Sequence[int], want: int, yield_to: Sequence[int] = (),
                    wait: bool = False) -> list[int] | None:  # fmt: skip
        """See :meth:`pipeline.sinks.BucketClaims.claim`.

        Then (with ``wait``, when nothing was claimed) waits for the buckets it tried, and
        stops waiting for those it got (one more statement, only when that changes)."""
        if not buckets or want <= 0:
            return []
        buckets = list(buckets)
        async with self._lock:
            conn = await self._connection()
            if conn is None:
                return None
            try:
                row = await conn.fetchrow(_CLAIM, buckets, want, list(yield_to), timeout=5)
                claimed: list[int] = list(row["claimed"])
                # (nothing claimed: every bucket was tried)
                start = ([b for b in dict.fromkeys(buckets) if b not in self.waiting]
                         if wait and not claimed else [])  # fmt: skip
                stop = [b for b in claimed if b in self.waiting]
                if start or stop:
                    await conn.fetchrow(_WAITS, start, stop, timeout=5)
                    self.waiting.update(start)
                    self.waiting.difference_update(stop)
            except Exception as exc:
                await self._drop(exc)
                return None
        self.peers = int(row["workers"])
        return claimed

    async def release(self, buckets: Sequence[int]) -> None:
        """See :meth:`pipeline.sinks.BucketClaims.release`."""
        if not buckets:
            return
        async with self._lock:
            conn = self._conn
            if conn is None:  # dropped since: its locks went with it
                return
            try:
                await conn.fetchval(_RELEASE, list(buckets), timeout=5)
            except Exception as exc:
                await self._drop(exc)

    async def close(self) -> None:
        """Hand the connection back (its claims end with asyncpg's reset)."""
        async with self._lock:
            await self._drop(None)

    async def _connection(self) -> Any:
        if self._conn is not None:
            return self._conn
        if self._clock() < self._paused_until:
            return None
        try:
            self._conn = await self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
            await self._conn.execute(_PRESENT, timeout=5)
        except Exception as exc:
            await self._drop(exc)
            return None
        return self._conn

    async def _drop(self, exc: BaseException | None) -> None:
        conn, self._conn = self._conn, None
        self.waiting.clear()  # (a session's locks end with it)
        if exc is not None:
            self._paused_until = self._clock() + RETRY_AFTER_S
            log.info("bucket claims paused (%s): flushing without them", _why(exc))
        if conn is None:
            return
        try:
            await self._pool.release(conn, timeout=5)
        except Exception:  # broken: the pool closes it (and the server drops its locks)
            conn.terminate()


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
